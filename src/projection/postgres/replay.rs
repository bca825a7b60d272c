//! `replay --projection postgres`: rebuilds the projection tables from the log.
//!
//! Replay writes through the same [`write_batch`] as live ingestion, so the rows it builds
//! are the rows live ingestion builds. It needs empty tables; `truncate` empties them first,
//! which only the owner can do (the writer role cannot, by design) and which clears every
//! chain's rows: with several instances sharing a database, replay each of them afterwards.

use kubechat_audit_pipeline::record::StoredRecord;
use tokio_postgres::Client;

use super::write::{to_rows, write_batch, WriteError};
use crate::log::Log;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the projection tables are not empty ({0} rows in kubechat_audit.audit_events); pass --truncate to empty them first (as the owner role)")]
    NotEmpty(i64),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("postgres: {}", super::retry::describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("reading records: {0}")]
    Source(String),
}

const TABLES: &str = "kubechat_audit.audit_events, kubechat_audit.projection_offsets, kubechat_operational.chat_sessions, kubechat_operational.command_history";

/// Empties the projection tables. Triggers refuse TRUNCATE, so they are switched off for
/// the duration of one transaction (DDL is transactional in PostgreSQL).
pub async fn truncate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let parts = tx
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.inhparent = 'kubechat_audit.audit_events'::regclass",
            &[],
        )
        .await?;
    let mut tables: Vec<String> = vec![
        "kubechat_audit.audit_events".into(),
        "kubechat_operational.command_history".into(),
    ];
    tables.extend(parts.iter().map(|r| r.get::<_, String>(0)));
    for t in &tables {
        tx.batch_execute(&format!("ALTER TABLE {t} DISABLE TRIGGER USER"))
            .await?;
    }
    tx.batch_execute(&format!("TRUNCATE {TABLES}")).await?;
    for t in &tables {
        tx.batch_execute(&format!("ALTER TABLE {t} ENABLE TRIGGER USER"))
            .await?;
    }
    tx.commit().await
}

/// Rebuilds the tables from every record in the log; `progress(done, total)` after each batch.
pub async fn replay(
    client: &mut Client,
    log: &Log,
    archive_dir: &std::path::Path,
    chain_id: &str,
    batch: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kubechat_audit.audit_events", &[])
        .await?
        .get(0);
    let offsets: i64 = client
        .query_one(
            "SELECT count(*) FROM kubechat_audit.projection_offsets",
            &[],
        )
        .await?
        .get(0);
    if rows > 0 || offsets > 0 {
        return Err(ReplayError::NotEmpty(rows));
    }
    let total = log.durable_head();
    let mut offset = 0i64;
    let mut pending: Vec<StoredRecord> = Vec::with_capacity(batch);
    // Archived records first (the log may be trimmed), then the log.
    for r in crate::projection::archive::reader::records_from(archive_dir, log, 1)
        .map_err(ReplayError::Source)?
    {
        pending.push(r.map_err(ReplayError::Source)?);
        if pending.len() == batch {
            offset = write_batch(client, chain_id, offset, &to_rows(&pending, offset)?).await?;
            pending.clear();
            progress(offset as u64, total);
        }
    }
    if !pending.is_empty() {
        offset = write_batch(client, chain_id, offset, &to_rows(&pending, offset)?).await?;
        progress(offset as u64, total);
    }
    log.mirror_offset(super::write::PROJECTION, offset as u64)?;
    Ok(offset as u64)
}
