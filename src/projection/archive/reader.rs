//! Reading records back: from sealed segments, then from the log, for projections and
//! replay that must start below the log's trim point.

use std::path::Path;

use kubechat_audit_pipeline::record::StoredRecord;

use super::segment::{decompress, manifests, parse_records};
use crate::log::Log;

/// Every record from `from` on: those the log no longer holds from the archive in
/// `archive_dir`, the rest from the log.
pub fn records_from<'a>(
    archive_dir: &Path,
    log: &'a Log,
    from: u64,
) -> Result<Box<dyn Iterator<Item = Result<StoredRecord, String>> + 'a>, String> {
    let log_first = log.first_seq().map_err(|e| e.to_string())?;
    let tail = log
        .records_from(from.max(log_first))
        .map(|r| r.map_err(|e| e.to_string()));
    if from >= log_first {
        return Ok(Box::new(tail));
    }
    let segments: Vec<_> = manifests(archive_dir)
        .map_err(String::from)?
        .into_iter()
        .filter(|(_, m)| m.last_seq >= from && m.first_seq < log_first)
        .collect();
    let dir = archive_dir.to_owned();
    let archived = segments.into_iter().flat_map(move |(_, m)| {
        let records: Vec<Result<StoredRecord, String>> = match std::fs::read(dir.join(&m.segment))
            .map_err(|e| format!("{}: {e}", m.segment))
            .and_then(|b| decompress(&b, m.raw_bytes))
        {
            Ok(raw) => parse_records(&raw)
                .filter(|r| {
                    r.as_ref()
                        .map_or(true, |r| r.seq >= from && r.seq < log_first)
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        records
    });
    Ok(Box::new(archived.chain(tail)))
}
