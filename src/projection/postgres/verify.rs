//! `verify --postgres-url`: recomputes the chain over a chain's rows in `seq` order and
//! compares them with the log.
//!
//! Each row's body is rebuilt from its columns and its checksum recomputed with the HMAC key,
//! so a changed column is caught even when the stored checksum was left alone; the rows
//! must run from seq 1 without a gap or an extra row up to the projection's committed offset,
//! and each row's checksum must equal the log's for that seq.

use futures_util::TryStreamExt;
use kubechat_audit_pipeline::chain::{Fault, KeyRing, Verifier};
use tokio_postgres::Client;

use super::rows::{EventRow, EVENT_COLUMNS};
use super::write::read_offset;
use crate::log::Log;

/// What a passing verification saw.
#[derive(Debug)]
pub struct Summary {
    pub rows: u64,
    pub head_seq: u64,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PgVerifyError {
    #[error("postgres row {0}")]
    Fault(Fault),
    #[error("postgres row seq {seq}: changed ({why})")]
    Unreadable { seq: i64, why: String },
    #[error("postgres row seq {seq}: differs from the log (checksum {row} in postgres, {log} in the log)")]
    DiffersFromLog { seq: u64, row: String, log: String },
    #[error("postgres row seq {seq}: missing (the projection's committed offset is {offset})")]
    MissingTail { seq: u64, offset: i64 },
    #[error("postgres row seq {seq}: extra (beyond the projection's committed offset {offset})")]
    Extra { seq: u64, offset: i64 },
    #[error("postgres: {}", super::retry::describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),
}

/// Verifies chain `chain_id`'s rows against the keys and the log.
pub async fn verify_rows(
    client: &Client,
    log: &Log,
    ring: &KeyRing,
    chain_id: &str,
) -> Result<Summary, PgVerifyError> {
    let offset = read_offset(client, chain_id).await?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM kubechat_audit.audit_events WHERE chain_id = $1 ORDER BY seq, received_at");
    let rows = client.query_raw(&sql, [chain_id]).await?;
    let mut rows = std::pin::pin!(rows);
    let mut v = Verifier::new(Some(ring));
    let mut logged = log.records_from(1).peekable();
    let mut count = 0u64;
    while let Some(row) = rows.try_next().await? {
        let row = EventRow::from_pg(&row);
        let rec = row
            .to_record()
            .map_err(|why| PgVerifyError::Unreadable { seq: row.seq, why })?;
        // The log's record at this seq, if it still holds it.
        while logged
            .peek()
            .is_some_and(|r| r.as_ref().is_ok_and(|r| r.seq < rec.seq))
        {
            logged.next();
        }
        if let Some(Ok(l)) = logged.peek() {
            if l.seq == rec.seq && l.checksum != rec.checksum {
                return Err(PgVerifyError::DiffersFromLog {
                    seq: rec.seq,
                    row: hex::encode(rec.checksum),
                    log: hex::encode(l.checksum),
                });
            }
        }
        count += 1;
        v.push(rec).map_err(PgVerifyError::Fault)?;
    }
    let head = v.finish().map_err(PgVerifyError::Fault)?;
    if (head.seq as i64) < offset {
        return Err(PgVerifyError::MissingTail {
            seq: head.seq + 1,
            offset,
        });
    }
    if (head.seq as i64) > offset {
        return Err(PgVerifyError::Extra {
            seq: offset as u64 + 1,
            offset,
        });
    }
    Ok(Summary {
        rows: count,
        head_seq: head.seq,
        offset,
    })
}
