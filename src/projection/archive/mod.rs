//! The archive projection: rolling zstd segments with signed manifests, for 7 to 10 year
//! retention, verifiable offline. `schemas/archive.md` is the format reference.
//!
//! It tails the log from the last sealed segment, appending one zstd frame per batch to the
//! open segment, and seals it when it reaches `segment_bytes_max` raw bytes or
//! `segment_age_secs`, and on graceful shutdown. After a crash the open segment is discarded
//! and rebuilt from the log, which is never trimmed past the last sealed segment. After each
//! seal the log is trimmed below what every projection has committed, less a safety margin.
//!
//! - [`manifest`]: the signed manifest.
//! - [`segment`]: writing, sealing, reading segments.
//! - [`verify`]: offline verification of a directory.
//! - [`reader`]: records from archives then the log.
//! - [`export`]: a time window as NDJSON.

pub mod export;
pub mod manifest;
pub mod reader;
pub mod segment;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kubechat_audit_pipeline::chain::GENESIS;
use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};

use self::segment::{clean, manifests, OpenSegment};
use crate::keys::SigningKey;
use crate::log::Log;
use crate::metrics as m;
use crate::projection::{set_state, Backoff, Handle, State};

/// The archive's name for offsets and metrics.
pub const PROJECTION: &str = "archive";

/// `[archive]` in the configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    pub enabled: bool,
    /// `<data_dir>/archive` when absent.
    pub dir: Option<PathBuf>,
    /// A segment is sealed once it holds this many decompressed bytes...
    pub segment_bytes_max: u64,
    /// ...or is this old.
    pub segment_age_secs: u64,
    pub zstd_level: i32,
    /// Most records per zstd frame.
    pub batch_events_max: usize,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig {
            enabled: true,
            dir: None,
            segment_bytes_max: 64 * 1024 * 1024,
            segment_age_secs: 3600,
            zstd_level: 3,
            batch_events_max: 4096,
        }
    }
}

/// How the log is trimmed behind the projections.
#[derive(Clone, Debug)]
pub struct TrimPolicy {
    pub enabled: bool,
    /// Records kept below the lowest committed offset.
    pub safety_events: u64,
    /// Other projections whose mirrored offsets bound the trim (e.g. "postgres").
    pub also_wait_for: Vec<&'static str>,
}

/// Where the archive stands: the last sealed `seq` and its checksum.
pub fn sealed_through(dir: &Path) -> Result<(u64, [u8; 32]), String> {
    match manifests(dir).map_err(String::from)?.last() {
        None => Ok((0, GENESIS)),
        Some((_, m)) => {
            let mut c = [0u8; 32];
            hex::decode_to_slice(&m.last_checksum, &mut c)
                .map_err(|e| format!("{}: {e}", m.segment))?;
            Ok((m.last_seq, c))
        }
    }
}

/// Starts the archive thread.
pub fn spawn(
    cfg: ArchiveConfig,
    dir: PathBuf,
    log: Arc<Log>,
    chain_id: String,
    key: SigningKey,
    trim: TrimPolicy,
) -> std::io::Result<Handle> {
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("projection-archive".into())
        .spawn(move || {
            set_state(PROJECTION, State::Running);
            let r = run(&cfg, &dir, &log, &chain_id, &key, &trim, &flag);
            match &r {
                Ok(()) => set_state(PROJECTION, State::Stopped),
                Err(e) => {
                    set_state(PROJECTION, State::Failed);
                    tracing::error!(error = %e, "archive projection stopped");
                }
            }
            r
        })?;
    Ok(Handle::new(PROJECTION, stop, thread))
}

fn run(
    cfg: &ArchiveConfig,
    dir: &Path,
    log: &Log,
    chain_id: &str,
    key: &SigningKey,
    trim: &TrimPolicy,
    stop: &AtomicBool,
) -> Result<(), String> {
    let removed = clean(dir).map_err(|e| format!("cleaning {}: {e}", dir.display()))?;
    if !removed.is_empty() {
        tracing::info!(
            ?removed,
            "removed an unsealed segment; it is rebuilt from the log"
        );
    }
    let (mut sealed, mut sealed_checksum) = sealed_through(dir)?;
    let log_first = log.first_seq().map_err(|e| e.to_string())?;
    if sealed + 1 < log_first {
        return Err(format!(
            "the archive ends at seq {sealed} but the log starts at seq {log_first}: records in between are in neither"
        ));
    }
    let mut position = sealed;
    let mut open: Option<OpenSegment> = None;
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let age = Duration::from_secs(cfg.segment_age_secs.max(1));
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let result: Result<(), String> = (|| {
            let head = if stopping {
                log.durable_head()
            } else {
                log.wait_past(position, Duration::from_millis(200))
            };
            gauge!(m::ARCHIVE_LAG_EVENTS).set(head.saturating_sub(sealed) as f64);
            while head > position {
                let upto = head.min(position + cfg.batch_events_max as u64);
                let records: Vec<_> = log
                    .records_from(position + 1)
                    .take_while(|r| r.as_ref().map(|r| r.seq <= upto).unwrap_or(true))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                if records.first().map(|r| r.seq) != Some(position + 1) {
                    return Err(format!(
                        "the log does not hold seq {} for the archive",
                        position + 1
                    ));
                }
                let seg = match open.as_mut() {
                    Some(s) => s,
                    None => open.insert(
                        OpenSegment::create(dir, cfg.zstd_level, sealed_checksum)
                            .map_err(|e| e.to_string())?,
                    ),
                };
                let (raw0, bytes0) = (seg.raw_bytes, seg.bytes);
                seg.append(&records)
                    .map_err(|e| format!("writing the open segment: {e}"))?;
                counter!(m::ARCHIVE_RAW_BYTES).increment(seg.raw_bytes - raw0);
                counter!(m::ARCHIVE_COMPRESSED_BYTES).increment(seg.bytes - bytes0);
                position = seg.last_seq;
                if seg.raw_bytes >= cfg.segment_bytes_max {
                    break;
                }
            }
            let due = open.as_ref().is_some_and(|s| {
                s.count > 0
                    && (stopping
                        || s.raw_bytes >= cfg.segment_bytes_max
                        || s.opened.elapsed() >= age)
            });
            if due {
                let seg = open.take().expect("due implies open");
                let manifest = seg
                    .seal(dir, chain_id, key)
                    .map_err(|e| format!("sealing a segment: {e}"))?;
                sealed = manifest.last_seq;
                hex::decode_to_slice(&manifest.last_checksum, &mut sealed_checksum)
                    .map_err(|e| e.to_string())?;
                counter!(m::ARCHIVE_SEGMENTS_SEALED).increment(1);
                gauge!(m::PROJECTION_COMMITTED_SEQ, "projection" => PROJECTION).set(sealed as f64);
                tracing::info!(segment = %manifest.segment, records = manifest.count, "sealed an archive segment");
                log.mirror_offset(PROJECTION, sealed)
                    .map_err(|e| e.to_string())?;
                trim_log(log, sealed, trim)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                backoff.reset();
                set_state(PROJECTION, State::Running);
            }
            Err(e) => {
                // Disk full, a failing disk: drop the open segment, rebuild it from the log
                // after a pause. The log keeps everything not yet sealed.
                let wait = backoff.step();
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "archive projection error; retrying");
                counter!(m::PROJECTION_RETRIES, "projection" => PROJECTION).increment(1);
                set_state(PROJECTION, State::Retrying);
                if let Some(seg) = open.take() {
                    seg.discard();
                }
                position = sealed;
                if stopping {
                    return Err(e);
                }
                std::thread::sleep(wait);
                continue;
            }
        }
        // A graceful stop ends only once everything durable is sealed.
        if stopping && open.is_none() && position >= log.durable_head() {
            return Ok(());
        }
    }
}

/// Trims the log below the lowest of the archive's sealed seq and every other projection's
/// mirrored offset, less the safety margin.
fn trim_log(log: &Log, sealed: u64, policy: &TrimPolicy) -> Result<(), String> {
    if !policy.enabled {
        return Ok(());
    }
    let mut low = sealed;
    for p in &policy.also_wait_for {
        low = low.min(log.offset(p).map_err(|e| e.to_string())?.unwrap_or(0));
    }
    let target = low.saturating_sub(policy.safety_events);
    loop {
        let removed = log.trim_through(target).map_err(|e| e.to_string())?;
        if removed == 0 {
            break;
        }
        counter!(m::LOG_TRIMMED_RECORDS).increment(removed);
        // Let the log writer have sled between batches (sled holds a global lock for each).
        std::thread::sleep(Duration::from_millis(2));
    }
    gauge!(m::LOG_FIRST_SEQ).set(log.first_seq().map_err(|e| e.to_string())? as f64);
    Ok(())
}
