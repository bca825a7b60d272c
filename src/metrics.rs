//! Prometheus metrics: names, buckets, and the `/metrics` endpoint.
//!
//! Names follow `kubechat_audit_<what>_<unit>`; labels are few and bounded (transport,
//! stage). Counters are bumped once per commit or request, never per event.

use std::time::Duration;

use kubechat_audit_pipeline::stage::{Batch, ChannelDepths, Sealed};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::log::CommitStats;

pub const EVENTS_RECEIVED: &str = "kubechat_audit_events_received_total";
pub const EVENTS_ACCEPTED: &str = "kubechat_audit_events_accepted_total";
pub const EVENTS_DUPLICATE: &str = "kubechat_audit_events_duplicate_total";
pub const EVENTS_REJECTED: &str = "kubechat_audit_events_rejected_total";
pub const LOG_FLUSH_SECONDS: &str = "kubechat_audit_log_flush_seconds";
pub const LOG_GROUP_COMMIT_EVENTS: &str = "kubechat_audit_log_group_commit_events";
pub const LOG_COMMITS: &str = "kubechat_audit_log_commits_total";
pub const LOG_BYTES_FLUSHED: &str = "kubechat_audit_log_flushed_bytes_total";
pub const CHANNEL_DEPTH: &str = "kubechat_audit_channel_depth_requests";
pub const CHAIN_HEAD_SEQ: &str = "kubechat_audit_chain_head_seq";
pub const PIPELINE_POISONED: &str = "kubechat_audit_pipeline_poisoned";
pub const CONNECTIONS_OPEN: &str = "kubechat_audit_connections_open";
pub const HTTP_OVERLOADED: &str = "kubechat_audit_http_overloaded_total";
pub const PROJECTION_COMMITTED_SEQ: &str = "kubechat_audit_projection_committed_seq";
pub const PROJECTION_LAG_EVENTS: &str = "kubechat_audit_projection_lag_events";
pub const PROJECTION_LAG_SECONDS: &str = "kubechat_audit_projection_lag_seconds";
pub const PROJECTION_COMMIT_SECONDS: &str = "kubechat_audit_projection_commit_seconds";
pub const PROJECTION_BATCH_EVENTS: &str = "kubechat_audit_projection_batch_events";
pub const PROJECTION_RETRIES: &str = "kubechat_audit_projection_retries_total";
pub const PROJECTION_STATE: &str = "kubechat_audit_projection_state";
pub const ARCHIVE_SEGMENTS_SEALED: &str = "kubechat_audit_archive_segments_sealed_total";
pub const ARCHIVE_RAW_BYTES: &str = "kubechat_audit_archive_raw_bytes_total";
pub const ARCHIVE_COMPRESSED_BYTES: &str = "kubechat_audit_archive_compressed_bytes_total";
pub const ARCHIVE_LAG_EVENTS: &str = "kubechat_audit_archive_lag_events";
pub const LOG_TRIMMED_RECORDS: &str = "kubechat_audit_log_trimmed_records_total";
pub const LOG_FIRST_SEQ: &str = "kubechat_audit_log_first_seq";

const FLUSH_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const GROUP_COMMIT_BUCKETS_EVENTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Installs the global recorder and returns the handle that renders it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(LOG_FLUSH_SECONDS.into()),
            FLUSH_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(LOG_GROUP_COMMIT_EVENTS.into()),
            GROUP_COMMIT_BUCKETS_EVENTS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PROJECTION_COMMIT_SECONDS.into()),
            FLUSH_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PROJECTION_BATCH_EVENTS.into()),
            GROUP_COMMIT_BUCKETS_EVENTS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        EVENTS_RECEIVED,
        "Inputs received, by transport (before validation)."
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        "Events made durable in the log, by transport."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Retries answered with an existing seq, by transport."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Inputs rejected and kept as dead letters, by transport."
    );
    describe_histogram!(
        LOG_FLUSH_SECONDS,
        Unit::Seconds,
        "Time to write and flush one group commit."
    );
    describe_histogram!(
        LOG_GROUP_COMMIT_EVENTS,
        Unit::Count,
        "Inputs per group commit."
    );
    describe_counter!(LOG_COMMITS, "Group commits made durable.");
    describe_counter!(
        LOG_BYTES_FLUSHED,
        Unit::Bytes,
        "Bytes sled reported flushed."
    );
    describe_gauge!(CHANNEL_DEPTH, "Requests waiting in front of each stage.");
    describe_gauge!(CHAIN_HEAD_SEQ, "The seq of the last durable record.");
    describe_gauge!(
        PIPELINE_POISONED,
        "1 once a fatal error stopped acknowledgements."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Open producer connections, by transport.");
    describe_counter!(
        HTTP_OVERLOADED,
        "HTTP requests answered 503 because the pipeline was full."
    );
    describe_gauge!(
        PROJECTION_COMMITTED_SEQ,
        "The last seq a projection has committed (archive: sealed)."
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "Durable records the PostgreSQL projection has not committed yet."
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest record the PostgreSQL projection has not committed."
    );
    describe_histogram!(
        PROJECTION_COMMIT_SECONDS,
        Unit::Seconds,
        "Time to write and commit one projection batch."
    );
    describe_histogram!(
        PROJECTION_BATCH_EVENTS,
        Unit::Count,
        "Records per projection batch."
    );
    describe_counter!(
        PROJECTION_RETRIES,
        "Retries after retriable projection errors."
    );
    describe_gauge!(
        PROJECTION_STATE,
        "1 for each projection's current state (running, retrying, failed, stopped)."
    );
    describe_counter!(
        ARCHIVE_SEGMENTS_SEALED,
        "Archive segments sealed (signed manifest written)."
    );
    describe_counter!(
        ARCHIVE_RAW_BYTES,
        Unit::Bytes,
        "Record bytes written to archive segments, before compression."
    );
    describe_counter!(
        ARCHIVE_COMPRESSED_BYTES,
        Unit::Bytes,
        "Bytes written to archive segment files."
    );
    describe_gauge!(
        ARCHIVE_LAG_EVENTS,
        "Durable records not yet in a sealed archive segment."
    );
    describe_counter!(
        LOG_TRIMMED_RECORDS,
        "Records removed from the log after archiving and projection."
    );
    describe_gauge!(LOG_FIRST_SEQ, "The first seq the log still holds.");
}

/// Records one durable group commit.
pub fn record_commit(elapsed: Duration, stats: &CommitStats, group: &[Batch<Sealed>]) {
    histogram!(LOG_FLUSH_SECONDS).record(elapsed.as_secs_f64());
    histogram!(LOG_GROUP_COMMIT_EVENTS)
        .record((stats.records + stats.duplicates + stats.dead_letters) as f64);
    counter!(LOG_COMMITS).increment(1);
    counter!(LOG_BYTES_FLUSHED).increment(stats.bytes as u64);
    let mut head = None;
    for b in group {
        let t = b.ctx.transport.as_str();
        let (mut acc, mut dup, mut rej) = (0u64, 0u64, 0u64);
        for item in &b.items {
            match item {
                Sealed::New { record, .. } => {
                    acc += 1;
                    head = Some(record.seq);
                }
                Sealed::Duplicate { .. } => dup += 1,
                Sealed::Rejected(_) => rej += 1,
            }
        }
        if acc > 0 {
            counter!(EVENTS_ACCEPTED, "transport" => t).increment(acc);
        }
        if dup > 0 {
            counter!(EVENTS_DUPLICATE, "transport" => t).increment(dup);
        }
        if rej > 0 {
            counter!(EVENTS_REJECTED, "transport" => t).increment(rej);
        }
    }
    if let Some(seq) = head {
        gauge!(CHAIN_HEAD_SEQ).set(seq as f64);
    }
}

/// Samples the stage channel depths.
pub fn record_depths(depths: &ChannelDepths) {
    for (stage, n) in depths.sample() {
        gauge!(CHANNEL_DEPTH, "stage" => stage).set(n as f64);
    }
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let h = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    h.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
