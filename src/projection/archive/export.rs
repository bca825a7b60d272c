//! `archive export`: streams the records of a time window as NDJSON.
//!
//! The window is on the producer's `timestamp` (`from` inclusive, `to` exclusive); `user`
//! and `event_type` narrow it further. Lines are written as stored, checksums included, so
//! an exported record can still be checked against the chain. Export does not verify the
//! archive: run `archive verify` for that.

use std::io::Write;
use std::path::Path;

use kubechat_audit_pipeline::event::parse_timestamp;

use super::segment::{decompress, manifests};

/// What to export.
pub struct Filter {
    pub from_unix_ns: i64,
    pub to_unix_ns: i64,
    pub user_id: Option<String>,
    pub event_type: Option<String>,
}

/// Writes every matching record line to `out`; returns how many.
pub fn export(dir: &Path, filter: &Filter, out: &mut impl Write) -> Result<u64, String> {
    let mut n = 0;
    for (_, m) in manifests(dir).map_err(String::from)? {
        let bytes =
            std::fs::read(dir.join(&m.segment)).map_err(|e| format!("{}: {e}", m.segment))?;
        let raw = decompress(&bytes, m.raw_bytes).map_err(|e| format!("{}: {e}", m.segment))?;
        for line in super::segment::lines(&raw) {
            let doc: View =
                serde_json::from_slice(line).map_err(|e| format!("{}: {e}", m.segment))?;
            let ts = parse_timestamp(&doc.timestamp)?;
            let keep = ts >= filter.from_unix_ns
                && ts < filter.to_unix_ns
                && filter.user_id.as_ref().is_none_or(|u| *u == doc.user_id)
                && filter
                    .event_type
                    .as_ref()
                    .is_none_or(|t| *t == doc.event_type);
            if keep {
                out.write_all(line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| e.to_string())?;
                n += 1;
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(n)
}

/// The fields a filter looks at; the rest of the line is passed through untouched.
#[derive(serde::Deserialize)]
struct View {
    timestamp: String,
    user_id: String,
    event_type: String,
}
