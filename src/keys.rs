//! Key files: the chain's HMAC keys and, for archives, the Ed25519 signing key.
//!
//! ```text
//! <keys dir>/                         mode 0700
//!   hmac-<key_id>.key                 mode 0600, 64 hex digits (32 secret bytes) and a newline
//!   ed25519-<key_id>.key              mode 0600, the 32-byte Ed25519 seed in hex: signs archive
//!                                     manifests
//!   ed25519-<key_id>.pub              the public key, as JSON (what `keys public` prints):
//!                                     {"algorithm":"ed25519","key_id":"…","public_key":"<64 hex>"}
//! ```
//!
//! HMAC key ids are `<yyyymmdd>-<6 hex>`, so the newest key sorts last. A record names the key
//! that sealed it, so adding a key and making it active rotates without breaking `verify`,
//! which loads every key in the directory. An Ed25519 key id is the first 16 hex digits of
//! the SHA-256 of the public key, so a manifest names exactly the key that signed it.
//! Secrets are never logged or printed.

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

/// The archive signing key.
pub struct SigningKey {
    pub key_id: String,
    pub key: ed25519_dalek::SigningKey,
}

/// A public key that verifies archive manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: String,
    pub key: ed25519_dalek::VerifyingKey,
}

/// The key id of an Ed25519 public key.
pub fn ed25519_key_id(public: &ed25519_dalek::VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public.as_bytes())[..8])
}

impl PublicKey {
    /// The JSON form written to `ed25519-<key_id>.pub` and printed by `keys public`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"algorithm": "ed25519", "key_id": self.key_id, "public_key": hex::encode(self.key.as_bytes())}).to_string()
    }

    /// Reads a public key file (the JSON form, or 64 hex digits alone).
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let hex_text = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => v["public_key"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| KeyError::Format(path.to_owned()))?,
            Err(_) => text.trim().to_owned(),
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text.trim(), &mut bytes)
            .map_err(|_| KeyError::Format(path.to_owned()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::Format(path.to_owned()))?;
        Ok(PublicKey {
            key_id: ed25519_key_id(&key),
            key,
        })
    }
}

impl SigningKey {
    pub fn public(&self) -> PublicKey {
        let key = self.key.verifying_key();
        PublicKey {
            key_id: self.key_id.clone(),
            key,
        }
    }
}

/// The archive signing key in `dir`: the newest one, or a new one.
pub fn signing_key(dir: &Path) -> Result<SigningKey, KeyError> {
    let mut found = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("ed25519-") && name.ends_with(".key") {
                let modified = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map_err(io(&path))?;
                found.push((modified, path));
            }
        }
    }
    found.sort();
    if let Some((_, path)) = found.pop() {
        let meta = fs::metadata(&path).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Mode { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Format(path.clone()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        return Ok(SigningKey {
            key_id: ed25519_key_id(&key.verifying_key()),
            key,
        });
    }
    ensure_private_dir(dir)?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let signing = SigningKey {
        key_id: ed25519_key_id(&key.verifying_key()),
        key,
    };
    write_private(
        &dir.join(format!("ed25519-{}.key", signing.key_id)),
        format!("{}\n", hex::encode(seed)).as_bytes(),
    )?;
    let pub_path = dir.join(format!("ed25519-{}.pub", signing.key_id));
    write_private(
        &pub_path,
        format!("{}\n", signing.public().to_json()).as_bytes(),
    )?;
    fs::set_permissions(&pub_path, fs::Permissions::from_mode(0o644)).map_err(io(&pub_path))?;
    Ok(signing)
}

/// Every archive public key in `dir` (for `verify` of a data directory).
pub fn public_keys(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let mut keys = Vec::new();
    if !dir.exists() {
        return Ok(keys);
    }
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("ed25519-") && name.ends_with(".pub") {
            keys.push(PublicKey::read(&path)?);
        }
    }
    Ok(keys)
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

    #[test]
    fn signing_keys_persist_and_their_public_half_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = signing_key(dir.path()).unwrap();
        let b = signing_key(dir.path()).unwrap();
        assert_eq!(a.key_id, b.key_id);
        let pubs = public_keys(dir.path()).unwrap();
        assert_eq!(pubs, vec![a.public()]);
        let private = dir.path().join(format!("ed25519-{}.key", a.key_id));
        assert_eq!(
            fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
