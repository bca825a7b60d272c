//! `verify`: walks the whole chain of a data directory, archives first, then the log, and
//! reports the first fault precisely.
//!
//! The archive is checked as `archive verify` checks it (signatures, digests, continuity),
//! with the HMAC keys as well. The log continues from where it was trimmed; where archive
//! and log overlap, the log's record at the archive's last `seq` must carry the archive's
//! last checksum, which ties the two together. Finally the last record must be the head the
//! log recorded at its last commit, so that records cut from the end are caught too.

use std::path::{Path, PathBuf};

use kubechat_audit_pipeline::chain::{Fault, Verifier, FIRST_SEQ, GENESIS};

use crate::keys;
use crate::log::{Log, LogError};
use crate::projection::archive::verify::{verify_dir, ArchiveFault, ArchiveHead};

/// Why a verification could not be completed or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is not intact.
    #[error("{0}")]
    Fault(Fault),
    #[error("{0}")]
    Archive(ArchiveFault),
    /// The records are intact but the end of the log was cut.
    #[error("seq {first_missing}: missing (the log's recorded head is seq {recorded}, the last record is seq {found})")]
    Truncated {
        first_missing: u64,
        recorded: u64,
        found: u64,
    },
    #[error("seq {0}: unreadable record chunk: {1}")]
    Unreadable(u64, String),
    #[error(
        "seq {seq}: the log's record differs from the archive's (the log and the archive disagree)"
    )]
    Disagree { seq: u64 },
    #[error("seq {from} through {through}: missing (in neither the archive nor the log)")]
    Gap { from: u64, through: u64 },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("no HMAC keys found in {0}; pass --hmac-key FILE")]
    NoKeys(PathBuf),
}

impl VerifyError {
    /// True when the data is wrong (exit 1), false when verification could not run (exit 2).
    pub fn is_fault(&self) -> bool {
        !matches!(
            self,
            VerifyError::Log(_) | VerifyError::Keys(_) | VerifyError::NoKeys(_)
        )
    }
}

/// What a passing verification covered.
#[derive(Debug)]
pub struct Report {
    pub archive: ArchiveHead,
    /// Records checked in the log.
    pub log_records: u64,
    pub head_seq: u64,
    pub head_checksum: [u8; 32],
}

/// Verifies the archive in `archive_dir` (if any) and the log in `log_dir`.
pub fn verify_data_dir(
    log_dir: &Path,
    archive_dir: &Path,
    keys_dir: &Path,
    extra_keys: &[PathBuf],
) -> Result<Report, VerifyError> {
    let ring = keys::key_ring(keys_dir, extra_keys)?;
    if ring.is_empty() {
        return Err(VerifyError::NoKeys(keys_dir.to_owned()));
    }
    let trusted = keys::public_keys(keys_dir)?;
    let archive = verify_dir(
        archive_dir,
        &trusted,
        Some(&ring),
        Default::default(),
        |_, _, _| {},
    )
    .map_err(VerifyError::Archive)?;
    let log = Log::open_existing(log_dir)?;
    let (start, prev) = match log.trimmed()? {
        Some((seq, checksum)) => (seq + 1, checksum),
        None => (FIRST_SEQ, GENESIS),
    };
    if start > archive.last_seq + 1 {
        return Err(VerifyError::Gap {
            from: archive.last_seq + 1,
            through: start - 1,
        });
    }
    let mut v = Verifier::resume(Some(&ring), start, prev);
    let mut count = 0u64;
    for r in log.records_from(start) {
        let r = r.map_err(|e| match e {
            LogError::Decode { key, source } => VerifyError::Unreadable(key, source.to_string()),
            other => VerifyError::Log(other),
        })?;
        if archive.segments > 0 && r.seq == archive.last_seq && r.checksum != archive.last_checksum
        {
            return Err(VerifyError::Disagree { seq: r.seq });
        }
        count += 1;
        v.push(r).map_err(VerifyError::Fault)?;
    }
    let head = v.finish().map_err(VerifyError::Fault)?;
    // With nothing left in the log, the chain ends where the archive does.
    let (head_seq, head_checksum) = if count == 0 && archive.last_seq >= head.seq {
        (archive.last_seq, archive.last_checksum)
    } else {
        (head.seq, head.checksum)
    };
    if let Some((recorded, checksum)) = log.head()? {
        if recorded > head_seq {
            return Err(VerifyError::Truncated {
                first_missing: head_seq + 1,
                recorded,
                found: head_seq,
            });
        }
        if recorded == head_seq && checksum != head_checksum {
            return Err(VerifyError::Fault(Fault::Changed { seq: head_seq }));
        }
    }
    Ok(Report {
        archive,
        log_records: count,
        head_seq,
        head_checksum,
    })
}
