//! The PostgreSQL projection.
//!
//! It tails the log in its own thread (with its own single-threaded tokio runtime) from the
//! offset committed in PostgreSQL, and writes batches (`batch_events_max`, `linger_ms`) with
//! binary COPY: the rows and the new offset in one transaction, so a crash never duplicates
//! or skips. Retriable errors back off and retry forever while ingest keeps acknowledging
//! into the log; a permanent error stops the projection with an error naming the `seq`, and
//! the `kubechat_audit_projection_state` metric says `failed`.
//!
//! - [`config`]: settings and connections (TLS optional).
//! - [`schema`]: migrations from `schemas/postgres/`.
//! - [`rows`]: records to rows and back.
//! - [`write`]: one batch transaction.
//! - [`retry`]: which errors are retriable.
//! - [`verify`]: recompute the chain over the rows and compare with the log.
//! - [`replay`]: rebuild the tables from the log.
//! - [`query`]: the HTTP query API.

pub mod config;
pub mod query;
pub mod replay;
pub mod retry;
pub mod rows;
pub mod schema;
pub mod verify;
pub mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};

pub use config::{Connector, PostgresConfig};

use self::retry::{classify, Class};
use self::write::{first_refused, read_offset, to_rows, write_batch, WriteError, PROJECTION};
use crate::log::Log;
use crate::metrics as m;
use crate::projection::{Backoff, Handle, State};

fn set_state(s: State) {
    crate::projection::set_state(PROJECTION, s);
}

/// Starts the projection thread.
pub fn spawn(
    connector: Connector,
    cfg: PostgresConfig,
    log: Arc<Log>,
    chain_id: String,
    archive_dir: std::path::PathBuf,
) -> std::io::Result<Handle> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new().name("projection-postgres".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let result = rt.block_on(run(connector, cfg, log, chain_id, archive_dir, flag));
        match &result {
            Ok(()) => set_state(State::Stopped),
            Err(e) => {
                set_state(State::Failed);
                tracing::error!(error = %e, "postgres projection stopped on a permanent error; ingestion continues into the log");
            }
        }
        result
    })?;
    Ok(Handle::new(PROJECTION, stop, thread))
}

async fn run(
    connector: Connector,
    cfg: PostgresConfig,
    log: Arc<Log>,
    chain_id: String,
    archive_dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut backoff = Backoff::new(Duration::from_millis(cfg.retry_backoff_max_ms));
    let linger = Duration::from_millis(cfg.linger_ms);
    let mut last_partition_check: Option<Instant> = None;
    let mut migrated = false;
    // The last offset seen, for lag reports while PostgreSQL is away.
    let mut known_offset: i64 = 0;
    set_state(State::Running);
    'connect: while !stop.load(Ordering::SeqCst) {
        let mut client = match connector.connect().await {
            Ok(c) => c,
            // A refused password or a missing database will not fix itself.
            Err(e) if classify(&e) == Class::Permanent => {
                return Err(format!("connecting: {}", retry::describe(&e)))
            }
            Err(e) => {
                retry_pause(&retry::describe(&e), &mut backoff, &stop, || {
                    report_lag(&log, known_offset, log.durable_head())
                })
                .await;
                continue;
            }
        };
        if !migrated {
            match schema::migrate(&mut client).await {
                Ok(_) => migrated = true,
                Err(schema::MigrateError::Pg(e)) if classify(&e) == Class::Retriable => {
                    retry_pause(&retry::describe(&e), &mut backoff, &stop, || {
                        report_lag(&log, known_offset, log.durable_head())
                    })
                    .await;
                    continue;
                }
                Err(e) => return Err(format!("migrating the schema: {e}")),
            }
        }
        let mut offset = match read_offset(&client, &chain_id).await {
            Ok(o) => o,
            Err(e) if classify(&e) == Class::Retriable => {
                retry_pause(&retry::describe(&e), &mut backoff, &stop, || {
                    report_lag(&log, known_offset, log.durable_head())
                })
                .await;
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "reading the projection offset: {}",
                    retry::describe(&e)
                ))
            }
        };
        known_offset = offset;
        set_state(State::Running);
        loop {
            if stop.load(Ordering::SeqCst) {
                break 'connect;
            }
            if last_partition_check.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                if let Err(e) =
                    schema::ensure_partitions(&client, cfg.partitions_ahead_months).await
                {
                    tracing::warn!(error = %e, "could not create partitions ahead of time; rows go to the default partition");
                }
                last_partition_check = Some(Instant::now());
            }
            let head = log.wait_past(offset as u64, Duration::from_millis(200));
            report_lag(&log, offset, head);
            if head <= offset as u64 {
                continue;
            }
            // Linger for a fuller batch unless one is already waiting.
            let head = if head - (offset as u64) < cfg.batch_events_max as u64 && !linger.is_zero()
            {
                tokio::time::sleep(linger).await;
                log.durable_head()
            } else {
                head
            };
            let upto = head.min(offset as u64 + cfg.batch_events_max as u64);
            // Below the log's trim point (a projection added late), read the archive.
            let records: Vec<_> = match crate::projection::archive::reader::records_from(
                &archive_dir,
                &log,
                offset as u64 + 1,
            )
            .and_then(|it| {
                it.take_while(|r| r.as_ref().map(|r| r.seq <= upto).unwrap_or(true))
                    .collect::<Result<Vec<_>, _>>()
            }) {
                Ok(r) => r,
                Err(e) => return Err(format!("reading records after seq {offset}: {e}")),
            };
            let rows = match to_rows(&records, offset) {
                Ok(r) => r,
                Err(e) => return Err(e.to_string()),
            };
            let started = Instant::now();
            match write_batch(&mut client, &chain_id, offset, &rows).await {
                Ok(new_offset) => {
                    histogram!(m::PROJECTION_COMMIT_SECONDS, "projection" => PROJECTION)
                        .record(started.elapsed().as_secs_f64());
                    histogram!(m::PROJECTION_BATCH_EVENTS, "projection" => PROJECTION)
                        .record(rows.len() as f64);
                    offset = new_offset;
                    known_offset = offset;
                    gauge!(m::PROJECTION_COMMITTED_SEQ, "projection" => PROJECTION)
                        .set(offset as f64);
                    if let Err(e) = log.mirror_offset(PROJECTION, offset as u64) {
                        tracing::warn!(error = %e, "could not mirror the projection offset into the log");
                    }
                    backoff.reset();
                }
                Err(WriteError::Pg(e)) if classify(&e) == Class::Retriable => {
                    retry_pause(&retry::describe(&e), &mut backoff, &stop, || {
                        report_lag(&log, known_offset, log.durable_head())
                    })
                    .await;
                    continue 'connect;
                }
                Err(WriteError::Pg(e)) => {
                    let detail = e
                        .as_db_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_else(|| e.to_string());
                    let culprit = first_refused(&mut client, &rows).await;
                    return Err(match culprit {
                        Some((seq, why)) => {
                            format!("postgres refused the row for seq {seq}: {why}")
                        }
                        None => format!(
                            "postgres refused the batch seq {}..={}: {detail}",
                            offset + 1,
                            offset + rows.len() as i64
                        ),
                    });
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(())
}

async fn retry_pause(error: &str, backoff: &mut Backoff, stop: &AtomicBool, lag: impl Fn()) {
    set_state(State::Retrying);
    lag();
    counter!(m::PROJECTION_RETRIES, "projection" => PROJECTION).increment(1);
    let wait = backoff.step();
    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "postgres unavailable; retrying (the log keeps accepting)");
    let until = Instant::now() + wait;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report_lag(log: &Log, offset: i64, head: u64) {
    let lag = head.saturating_sub(offset as u64);
    gauge!(m::PROJECTION_LAG_EVENTS, "projection" => PROJECTION).set(lag as f64);
    let seconds = if lag == 0 {
        0.0
    } else {
        match log.record(offset as u64 + 1) {
            Ok(Some(r)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                ((now - r.received_at_unix_ns).max(0) as f64) / 1e9
            }
            _ => 0.0,
        }
    };
    gauge!(m::PROJECTION_LAG_SECONDS, "projection" => PROJECTION).set(seconds);
}
