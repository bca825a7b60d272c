//! Key files: the chain's HMAC keys and, for archives, the Ed25519 signing key.
//!
//! ```text
//! <keys dir>/                         mode 0700
//!   hmac-<key_id>.key                 mode 0600, 64 hex digits (32 secret bytes) and a newline
//! ```
//!
//! Key ids are `<yyyymmdd>-<6 hex>`, so the newest key sorts last. A record names the key
//! that sealed it, so adding a key and making it active rotates without breaking `verify`,
//! which loads every key in the directory. Secrets are never logged or printed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kubechat_audit_pipeline::chain::{ChainKey, KeyRing, KEY_BYTES};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} is not 64 hex digits")]
    Format(PathBuf),
    #[error(
        "key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("no HMAC key with id {0:?} in {1}")]
    Missing(String, PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads one HMAC key file; the key id is taken from the file name.
pub fn read_hmac_key(path: &Path) -> Result<ChainKey, KeyError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut secret = [0u8; KEY_BYTES];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| KeyError::Format(path.to_owned()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let id = name
        .strip_prefix("hmac-")
        .and_then(|n| n.strip_suffix(".key"))
        .unwrap_or(name)
        .to_owned();
    Ok(ChainKey::new(id, secret))
}

/// Every HMAC key in `dir`, sorted by id.
pub fn load_hmac_keys(dir: &Path) -> Result<Vec<ChainKey>, KeyError> {
    let mut keys = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("hmac-") && name.ends_with(".key") {
            keys.push(read_hmac_key(&path)?);
        }
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(keys)
}

/// A key ring of every key in `dir` plus any extra key files.
pub fn key_ring(dir: &Path, extra: &[PathBuf]) -> Result<KeyRing, KeyError> {
    let mut keys = load_hmac_keys(dir)?;
    for p in extra {
        keys.push(read_hmac_key(p)?);
    }
    Ok(KeyRing::new(keys))
}

/// The key new records are sealed with: `wanted`, else the newest, else a new one.
pub fn active_hmac_key(dir: &Path, wanted: Option<&str>) -> Result<ChainKey, KeyError> {
    let keys = load_hmac_keys(dir)?;
    match wanted {
        Some(id) => keys
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::Missing(id.to_owned(), dir.to_owned())),
        None => match keys.into_iter().next_back() {
            Some(k) => Ok(k),
            None => generate_hmac_key(dir),
        },
    }
}

/// Generates a new HMAC key in `dir` (created with mode 0700) with mode 0600.
pub fn generate_hmac_key(dir: &Path) -> Result<ChainKey, KeyError> {
    ensure_private_dir(dir)?;
    let mut secret = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let mut tag = [0u8; 3];
    rand::rng().fill_bytes(&mut tag);
    let today = time::OffsetDateTime::now_utc().date();
    let id = format!(
        "{:04}{:02}{:02}-{}",
        today.year(),
        u8::from(today.month()),
        today.day(),
        hex::encode(tag)
    );
    let path = dir.join(format!("hmac-{id}.key"));
    write_private(&path, format!("{}\n", hex::encode(secret)).as_bytes())?;
    Ok(ChainKey::new(id, secret))
}

/// Creates `dir` with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes a new file with mode 0600 and syncs it and its directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_private_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let k = active_hmac_key(&keys, None).unwrap();
        let again = active_hmac_key(&keys, None).unwrap();
        assert_eq!(k.id, again.id);
        assert_eq!(k.secret(), again.secret());
        let file = keys.join(format!("hmac-{}.key", k.id));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_hmac_key(&file), Err(KeyError::Mode { .. })));
    }
}
