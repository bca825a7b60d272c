//! `serve`: wires the log, the stages, ingest and metrics together, and shuts them down.
//!
//! Start-up prints one JSON line on stdout naming the bound addresses (so that scripts and
//! tests using port 0 can find them). SIGTERM or SIGINT starts a graceful shutdown: stop
//! accepting, let every admitted request reach the log and be answered, flush, exit 0. A
//! poisoned pipeline (failed flush, panicked stage) stops acknowledging at once and exits 2.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubechat_audit_pipeline::stage::{self, Capacities, Checksummer, Poison};
use metrics::gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::{http, tcp, Ingest};
use crate::keys;
use crate::log::{spawn_writer, Log, Window, WriterConfig};
use crate::metrics as m;
use crate::projection::archive;
use crate::projection::postgres::{self as pg, Connector};

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A signal asked for it; everything admitted was made durable and answered.
    Graceful,
    /// A fatal error stopped acknowledgements.
    Poisoned(String),
}

/// Runs the service until a signal or a fatal error.
pub async fn run(cfg: Config) -> anyhow::Result<Ended> {
    cfg.check()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let key = keys::active_hmac_key(&cfg.keys_dir(), cfg.keys.hmac_key_id.as_deref())?;
    let log = Arc::new(Log::open(&cfg.log_dir())?);
    let recovered = log.recover(|| uuid::Uuid::new_v4().to_string())?;
    tracing::info!(
        chain_id = %recovered.chain_id,
        key_id = %key.id,
        next_seq = recovered.state.next_seq,
        data_dir = %cfg.data_dir.display(),
        "log recovered"
    );
    let handle = m::install()?;
    gauge!(m::CHAIN_HEAD_SEQ).set((recovered.state.next_seq - 1) as f64);
    gauge!(m::PIPELINE_POISONED).set(0.0);
    gauge!(m::LOG_FIRST_SEQ).set(log.first_seq()? as f64);

    let poison = Poison::default();
    let known = log.scan_ids()?;
    tracing::info!(
        event_ids = known.len(),
        "event ids in the log's window loaded for idempotence"
    );
    let checksummer = Checksummer::new(
        key,
        recovered.chain_id.clone(),
        recovered.state,
        known,
        Box::new(Window(log.clone())),
    );
    let p = &cfg.pipeline;
    let caps = Capacities {
        validate: p.validate_capacity,
        enrich: p.enrich_capacity,
        checksum: p.checksum_capacity,
        log: p.log_capacity,
    };
    let (tx, out_rx, mut threads, depths) = stage::spawn(caps, checksummer, poison.clone())?;
    threads.push(spawn_writer(
        log.clone(),
        out_rx,
        WriterConfig {
            group_commit_events_max: cfg.log.group_commit_events_max,
            durability: cfg.log.durability,
        },
        recovered.next_dead_letter_id,
        poison.clone(),
    )?);

    let tcp_listener = TcpListener::bind(cfg.listen.tcp_addr)
        .await
        .with_context(|| format!("binding TCP {}", cfg.listen.tcp_addr))?;
    let http_listener = TcpListener::bind(cfg.listen.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", cfg.listen.http_addr))?;
    let metrics_listener = TcpListener::bind(cfg.listen.metrics_addr)
        .await
        .with_context(|| format!("binding metrics {}", cfg.listen.metrics_addr))?;
    let addrs = serde_json::json!({
        "tcp": tcp_listener.local_addr()?.to_string(),
        "http": http_listener.local_addr()?.to_string(),
        "metrics": metrics_listener.local_addr()?.to_string(),
        "chain_id": recovered.chain_id,
    });
    println!("{addrs}");
    tracing::info!(%addrs, "listening");

    let ingest = Arc::new(Ingest::new(tx, poison.clone(), cfg.limits.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let connector = match &cfg.postgres.url {
        Some(url) => Some(Connector::new(url, &cfg.postgres)?),
        None => None,
    };
    let projection = match &connector {
        Some(c) => Some(pg::spawn(
            c.clone(),
            cfg.postgres.clone(),
            log.clone(),
            recovered.chain_id.clone(),
            cfg.archive_dir(),
        )?),
        None => None,
    };
    let archive = if cfg.archive.enabled {
        let key = keys::signing_key(&cfg.keys_dir())?;
        let policy = archive::TrimPolicy {
            enabled: cfg.log.trim,
            safety_events: cfg.log.trim_safety_events,
            also_wait_for: if connector.is_some() {
                vec![pg::write::PROJECTION]
            } else {
                Vec::new()
            },
        };
        Some(archive::spawn(
            cfg.archive.clone(),
            cfg.archive_dir(),
            log.clone(),
            recovered.chain_id.clone(),
            key,
            policy,
        )?)
    } else {
        None
    };
    let queries = connector
        .as_ref()
        .map(|c| pg::query::routes(c, cfg.postgres.query_pool_size, &recovered.chain_id));
    let app = http::router(ingest.clone(), queries);
    let tcp_task = tokio::spawn(tcp::serve(
        tcp_listener,
        ingest.clone(),
        shutdown_rx.clone(),
    ));
    let http_task = tokio::spawn(http::serve(
        http_listener,
        app,
        ingest.clone(),
        shutdown_rx.clone(),
    ));
    let mut metrics_shutdown = shutdown_rx.clone();
    let metrics_task = tokio::spawn(m::serve(metrics_listener, handle, async move {
        let _ = metrics_shutdown.changed().await;
    }));

    let ended = wait_for_end(&poison, &depths).await?;
    ingest.start_draining();
    let _ = shutdown_tx.send(true);
    let drain = Duration::from_secs(cfg.limits.shutdown_drain_secs);
    let drained = async {
        let _ = tcp_task.await;
        let _ = http_task.await;
    };
    if matches!(ended, Ended::Graceful) && tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing ingest");
    }
    // Requests already admitted are still processed and answered; then the stages stop.
    ingest.close();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = tokio::time::timeout(drain, joined).await;
    if let Some(a) = archive {
        // Everything acknowledged is in the log now: seal it into a final segment.
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.stop()).await {
            tracing::warn!(error = %e, "the archive projection had stopped on an error");
        }
    }
    if let Some(p) = projection {
        // It stops after its current batch; on the next start it resumes from its offset.
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || p.stop()).await {
            tracing::warn!(error = %e, "the postgres projection had stopped on an error");
        }
    }
    let _ = metrics_task.await;
    match poison.reason() {
        Some(reason) => Ok(Ended::Poisoned(reason)),
        None => {
            let head = log.head()?.map(|(s, _)| s).unwrap_or(0);
            tracing::info!(head_seq = head, "stopped cleanly");
            Ok(ended)
        }
    }
}

async fn wait_for_end(poison: &Poison, depths: &stage::ChannelDepths) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(Ended::Graceful) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(Ended::Graceful) }
            _ = tick.tick() => {
                if let Some(reason) = poison.reason() {
                    gauge!(m::PIPELINE_POISONED).set(1.0);
                    tracing::error!(%reason, "pipeline poisoned; no further events are acknowledged");
                    return Ok(Ended::Poisoned(reason));
                }
                ticks += 1;
                if ticks % 20 == 0 {
                    m::record_depths(depths);
                }
            }
        }
    }
}
