//! One projection transaction: the rows of a batch of records and the new offset, together.

use std::pin::pin;

use kubechat_audit_pipeline::record::StoredRecord;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::rows::{sessions, EventRow, EVENT_COLUMNS};

/// The projection's name in `projection_offsets`.
pub const PROJECTION: &str = "postgres";

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("postgres: {}", super::retry::describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// A record that cannot become a row (a bug or a corrupt log): permanent.
    #[error("{0}")]
    Record(String),
    /// Someone else moved this chain's offset: two writers on one chain.
    #[error("the offset of chain {chain_id} is {found}, expected {expected}: is another instance writing this chain?")]
    OffsetMoved {
        chain_id: String,
        expected: i64,
        found: i64,
    },
}

const EVENT_TYPES: [Type; 23] = [
    Type::TEXT,
    Type::INT8,
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INET,
    Type::TEXT,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// Reads a chain's committed offset (0 when it has none).
pub async fn read_offset(
    client: &impl tokio_postgres::GenericClient,
    chain_id: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT seq FROM kubechat_audit.projection_offsets WHERE chain_id = $1 AND projection = $2",
            &[&chain_id, &PROJECTION],
        )
        .await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

/// Converts records to rows, checking that they continue `offset` without a gap.
pub fn to_rows(records: &[StoredRecord], offset: i64) -> Result<Vec<EventRow>, WriteError> {
    let mut rows = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let expected = offset + 1 + i as i64;
        if r.seq as i64 != expected {
            return Err(WriteError::Record(format!(
                "expected seq {expected} from the log, got seq {}",
                r.seq
            )));
        }
        rows.push(EventRow::from_record(r).map_err(WriteError::Record)?);
    }
    Ok(rows)
}

/// Writes rows for `offset+1 ..= offset+rows.len()` and moves the offset, in one transaction.
pub async fn write_batch(
    client: &mut Client,
    chain_id: &str,
    offset: i64,
    rows: &[EventRow],
) -> Result<i64, WriteError> {
    let Some(last) = rows.last() else {
        return Ok(offset);
    };
    let new_offset = last.seq;
    let tx = client.transaction().await?;

    let sink = tx
        .copy_in(&format!(
            "COPY kubechat_audit.audit_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, &EVENT_TYPES));
    for r in rows {
        w.as_mut().write(&r.values()).await?;
    }
    w.finish().await?;

    let commands: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.event_type == "command_execution")
        .collect();
    if !commands.is_empty() {
        let sink = tx
            .copy_in(
                "COPY kubechat_operational.command_history (chain_id, seq, event_id, session_id, user_id, kubernetes_command, kubernetes_context, success, \"timestamp\") FROM STDIN (FORMAT binary)",
            )
            .await?;
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::BOOL,
            Type::TIMESTAMPTZ,
        ];
        let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
        for r in commands {
            let cmd = r.kubernetes_command.clone().unwrap_or_default();
            let ctx = r.kubernetes_context();
            w.as_mut()
                .write(&[
                    &r.chain_id,
                    &r.seq,
                    &r.event_id,
                    &r.session_id,
                    &r.user_id,
                    &cmd,
                    &ctx,
                    &r.success,
                    &r.timestamp,
                ])
                .await?;
        }
        w.finish().await?;
    }

    let s = sessions(rows);
    if !s.is_empty() {
        let ids: Vec<_> = s.iter().map(|x| x.session_id).collect();
        let users: Vec<_> = s.iter().map(|x| x.user_id.as_str()).collect();
        let ctxs: Vec<_> = s.iter().map(|x| x.kubernetes_context.as_deref()).collect();
        let created: Vec<_> = s.iter().map(|x| x.created_at).collect();
        let updated: Vec<_> = s.iter().map(|x| x.updated_at).collect();
        let status: Vec<_> = s
            .iter()
            .map(|x| if x.completed { "completed" } else { "active" })
            .collect();
        let counts: Vec<_> = s.iter().map(|x| x.event_count).collect();
        let firsts: Vec<_> = s.iter().map(|x| x.first_event.as_str()).collect();
        let ctx_events: Vec<_> = s.iter().map(|x| x.context_event.as_deref()).collect();
        tx.execute(
            "INSERT INTO kubechat_operational.chat_sessions AS cs
                 (session_id, user_id, kubernetes_context, created_at, updated_at, status, event_count, first_event, context_event)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::int8[], $8::text[], $9::text[])
             ON CONFLICT (session_id) DO UPDATE SET
                 user_id = CASE WHEN EXCLUDED.first_event < cs.first_event THEN EXCLUDED.user_id ELSE cs.user_id END,
                 first_event = LEAST(cs.first_event, EXCLUDED.first_event),
                 kubernetes_context = CASE WHEN EXCLUDED.context_event IS NOT NULL
                                            AND (cs.context_event IS NULL OR EXCLUDED.context_event > cs.context_event)
                                       THEN EXCLUDED.kubernetes_context ELSE cs.kubernetes_context END,
                 context_event = GREATEST(cs.context_event, EXCLUDED.context_event),
                 created_at = LEAST(cs.created_at, EXCLUDED.created_at),
                 updated_at = GREATEST(cs.updated_at, EXCLUDED.updated_at),
                 status = CASE WHEN cs.status = 'completed' OR EXCLUDED.status = 'completed' THEN 'completed' ELSE 'active' END,
                 event_count = cs.event_count + EXCLUDED.event_count",
            &[&ids, &users, &ctxs, &created, &updated, &status, &counts, &firsts, &ctx_events],
        )
        .await?;
    }

    // The offset moves only from where this writer found it.
    let moved = tx
        .execute(
            "INSERT INTO kubechat_audit.projection_offsets AS o (chain_id, projection, seq) VALUES ($1, $2, $3)
             ON CONFLICT (chain_id, projection) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()
             WHERE o.seq = $4",
            &[&chain_id, &PROJECTION, &new_offset, &offset],
        )
        .await?;
    if moved != 1 {
        let found = read_offset(&tx, chain_id).await?;
        return Err(WriteError::OffsetMoved {
            chain_id: chain_id.to_owned(),
            expected: offset,
            found,
        });
    }
    tx.commit().await?;
    Ok(new_offset)
}

/// After a permanent error, finds the first row PostgreSQL refuses, inserting one row at a
/// time, each in a transaction that is rolled back.
pub async fn first_refused(client: &mut Client, rows: &[EventRow]) -> Option<(i64, String)> {
    let stmt = format!(
        "INSERT INTO kubechat_audit.audit_events ({EVENT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)"
    );
    for r in rows {
        let tx = client.transaction().await.ok()?;
        let res = tx.execute(&stmt, &r.values()).await;
        let _ = tx.rollback().await;
        if let Err(e) = res {
            return Some((
                r.seq,
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            ));
        }
    }
    None
}
