//! `verify`: walks the whole log chain and reports the first fault precisely.
//!
//! Besides each record's checksum and its link to the one before, the walk checks that the
//! last record is the head the log recorded at its last commit, so that records cut from the
//! end are caught too.

use std::path::{Path, PathBuf};

use kubechat_audit_pipeline::chain::{Fault, Head, Verifier};

use crate::keys;
use crate::log::{Log, LogError};

/// Why a verification could not be completed or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is not intact.
    #[error("{0}")]
    Fault(Fault),
    /// The records are intact but the end of the log was cut.
    #[error("seq {first_missing}: missing (the log's recorded head is seq {recorded}, the last record is seq {found})")]
    Truncated {
        first_missing: u64,
        recorded: u64,
        found: u64,
    },
    #[error("seq {0}: unreadable record chunk: {1}")]
    Unreadable(u64, String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("no HMAC keys found in {0}; pass --hmac-key FILE")]
    NoKeys(PathBuf),
}

/// Verifies the log in `data_dir/log` with the keys in `keys_dir` plus `extra_keys`.
pub fn verify_log(
    log_dir: &Path,
    keys_dir: &Path,
    extra_keys: &[PathBuf],
) -> Result<Head, VerifyError> {
    let ring = keys::key_ring(keys_dir, extra_keys)?;
    if ring.is_empty() {
        return Err(VerifyError::NoKeys(keys_dir.to_owned()));
    }
    let log = Log::open_existing(log_dir)?;
    let mut v = Verifier::new(Some(&ring));
    for r in log.records_from(0) {
        let r = r.map_err(|e| match e {
            LogError::Decode { key, source } => VerifyError::Unreadable(key, source.to_string()),
            other => VerifyError::Log(other),
        })?;
        v.push(r).map_err(VerifyError::Fault)?;
    }
    let head = v.finish().map_err(VerifyError::Fault)?;
    if let Some((recorded, checksum)) = log.head()? {
        if recorded != head.seq {
            return Err(VerifyError::Truncated {
                first_missing: head.seq + 1,
                recorded,
                found: head.seq,
            });
        }
        if checksum != head.checksum {
            return Err(VerifyError::Fault(Fault::Changed { seq: head.seq }));
        }
    }
    Ok(head)
}
