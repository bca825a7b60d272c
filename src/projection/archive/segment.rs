//! Writing and reading segment files.
//!
//! A segment is a file of zstd frames; the concatenated frames decompress to NDJSON, one
//! stored record per line in its JSON line form (`zstd -dc SEGMENT | jq` reads it). The
//! open segment grows one frame per batch under a temporary name; sealing syncs it, renames
//! it, writes and syncs the signed manifest, renames that, and syncs the directory. The
//! manifest is the commit point: a segment without one is an unsealed leftover.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kubechat_audit_pipeline::record::{format_unix_ns, record_from_json_line, StoredRecord};
use sha2::{Digest, Sha256};

use super::manifest::{Manifest, MANIFEST_FORMAT};
use crate::keys::SigningKey;

/// The name the open segment is written under.
pub const OPEN_NAME: &str = "open-segment.tmp";

/// The segment being written.
pub struct OpenSegment {
    file: File,
    path: PathBuf,
    level: i32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    pub raw_bytes: u64,
    pub bytes: u64,
    sha256: Sha256,
    blake3: blake3::Hasher,
    first_received_at: i64,
    last_received_at: i64,
    prev_checksum: [u8; 32],
    last_checksum: [u8; 32],
    pub opened: Instant,
    line: Vec<u8>,
}

impl OpenSegment {
    /// Starts a segment whose first record follows `prev_checksum`.
    pub fn create(dir: &Path, level: i32, prev_checksum: [u8; 32]) -> std::io::Result<OpenSegment> {
        let path = dir.join(OPEN_NAME);
        // Audit data: readable by the service's group (backup, auditors), not by others.
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&path)?;
        Ok(OpenSegment {
            file,
            path,
            level,
            first_seq: 0,
            last_seq: 0,
            count: 0,
            raw_bytes: 0,
            bytes: 0,
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
            first_received_at: 0,
            last_received_at: 0,
            prev_checksum,
            last_checksum: prev_checksum,
            opened: Instant::now(),
            line: Vec::new(),
        })
    }

    /// Appends records as one zstd frame. They must continue the segment.
    pub fn append(&mut self, records: &[StoredRecord]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.line.clear();
        for r in records {
            assert_eq!(
                r.prev_checksum, self.last_checksum,
                "archived records chain (seq {})",
                r.seq
            );
            assert!(
                self.count == 0 || r.seq == self.last_seq + 1,
                "archived records are consecutive"
            );
            if self.count == 0 {
                self.first_seq = r.seq;
                self.first_received_at = r.received_at_unix_ns;
            }
            r.write_json_line(&mut self.line);
            self.line.push(b'\n');
            self.last_seq = r.seq;
            self.last_checksum = r.checksum;
            self.last_received_at = r.received_at_unix_ns;
            self.count += 1;
        }
        let frame = zstd::bulk::compress(&self.line, self.level)?;
        self.file.write_all(&frame)?;
        self.sha256.update(&frame);
        self.blake3.update(&frame);
        self.raw_bytes += self.line.len() as u64;
        self.bytes += frame.len() as u64;
        Ok(())
    }

    /// Seals the segment: sync, rename, signed manifest, sync the directory.
    pub fn seal(self, dir: &Path, chain_id: &str, key: &SigningKey) -> std::io::Result<Manifest> {
        assert!(self.count > 0, "only a segment with records is sealed");
        self.file.sync_all()?;
        let seg_name = Manifest::segment_name(self.first_seq, self.last_seq);
        fs::rename(&self.path, dir.join(&seg_name))?;
        // The segment's name must be durable before the manifest that commits it.
        File::open(dir)?.sync_all()?;
        let mut m = Manifest {
            format: MANIFEST_FORMAT.into(),
            chain_id: chain_id.into(),
            segment: seg_name,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            count: self.count,
            first_received_at: format_unix_ns(self.first_received_at),
            last_received_at: format_unix_ns(self.last_received_at),
            prev_segment_last_checksum: hex::encode(self.prev_checksum),
            last_checksum: hex::encode(self.last_checksum),
            raw_bytes: self.raw_bytes,
            bytes: self.bytes,
            sha256: hex::encode(self.sha256.finalize()),
            blake3: self.blake3.finalize().to_hex().to_string(),
            signing_key_id: String::new(),
            signature: None,
        };
        m.sign(key);
        let name = Manifest::file_name(m.first_seq, m.last_seq);
        let tmp = dir.join(format!("{name}.tmp"));
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&tmp)?;
            serde_json::to_writer_pretty(&mut f, &m)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(&name))?;
        File::open(dir)?.sync_all()?;
        Ok(m)
    }

    /// Abandons the open segment (it is rebuilt from the log).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes leftovers of an interrupted seal or an open segment: temporary files and segments
/// without a manifest. Returns the names removed.
pub fn clean(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for name in &names {
        let orphan = name.ends_with(".ndjson.zst")
            && !names.contains(&name.replace(".ndjson.zst", ".manifest.json"));
        if name.ends_with(".tmp") || orphan {
            fs::remove_file(dir.join(name))?;
            removed.push(name.clone());
        }
    }
    if !removed.is_empty() {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// Why the manifests of a directory could not be listed.
#[derive(Debug)]
pub enum ListError {
    /// The directory cannot be read.
    Io(String),
    /// A manifest file is not a valid manifest (a fault in the archive).
    Invalid(String),
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListError::Io(m) | ListError::Invalid(m) => f.write_str(m),
        }
    }
}

impl From<ListError> for String {
    fn from(e: ListError) -> String {
        e.to_string()
    }
}

/// Every manifest in `dir`, ordered by `first_seq`. A missing directory holds none.
pub fn manifests(dir: &Path) -> Result<Vec<(PathBuf, Manifest)>, ListError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ListError::Io(format!("{}: {e}", dir.display()))),
    };
    for e in entries {
        let path = e.map_err(|e| ListError::Io(e.to_string()))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".manifest.json") {
            let text =
                fs::read(&path).map_err(|e| ListError::Io(format!("{}: {e}", path.display())))?;
            let m: Manifest = match serde_json::from_slice::<serde_json::Value>(&text) {
                // A manifest is a JSON object; serde would also take an array of its values.
                Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v),
                Ok(_) => Err(serde::de::Error::custom("not a JSON object")),
                Err(e) => Err(e),
            }
            .map_err(|e| {
                ListError::Invalid(format!("manifest {name}: not a valid manifest: {e}"))
            })?;
            if m.format != MANIFEST_FORMAT {
                return Err(ListError::Invalid(format!(
                    "manifest {name}: unknown format {:?}",
                    m.format
                )));
            }
            if name != Manifest::file_name(m.first_seq, m.last_seq)
                || m.segment != Manifest::segment_name(m.first_seq, m.last_seq)
            {
                return Err(ListError::Invalid(format!(
                    "manifest {name}: its file name or segment name does not match its range seq {}..={}",
                    m.first_seq, m.last_seq
                )));
            }
            out.push((path, m));
        }
    }
    out.sort_by_key(|(_, m)| (m.first_seq, m.last_seq));
    Ok(out)
}

/// Decompresses a segment (all its frames) into at most `raw_bytes_max` bytes: the output
/// buffer is that size and zstd refuses to write past it.
pub fn decompress(bytes: &[u8], raw_bytes_max: u64) -> Result<Vec<u8>, String> {
    let cap = usize::try_from(raw_bytes_max).map_err(|_| "raw size out of range".to_owned())?;
    // Not `Decompressor::decompress`: it sizes its buffer by the first frame alone.
    let mut out = Vec::with_capacity(cap);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(bytes, &mut out))
        .map_err(|e| {
            format!("does not decompress within the {raw_bytes_max} bytes its manifest states: {e}")
        })?;
    Ok(out)
}

/// Parses a segment's decompressed lines into records.
pub fn parse_records(raw: &[u8]) -> impl Iterator<Item = Result<StoredRecord, String>> + '_ {
    lines(raw)
        .enumerate()
        .map(|(i, l)| record_from_json_line(l).map_err(|e| format!("line {}: {e}", i + 1)))
}

/// The non-empty lines of `raw`.
pub fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut start = 0;
    memchr::memchr_iter(b'\n', raw)
        .chain(std::iter::once(raw.len()))
        .map(move |end| {
            let line = &raw[start..end];
            start = end + 1;
            line
        })
        .filter(|l| !l.is_empty())
}
