//! Benchmarks of the PostgreSQL projection against a real PostgreSQL started from the local
//! server binaries (the test harness in `tests/support/postgres.rs`, a dedicated server).
//!
//! ```text
//! cargo bench --bench postgres
//! PG_BENCH_EVENTS=200000 PG_BENCH_QUERY_EVENTS=1000000 PG_BENCH_QUERY_REPS=200 \
//!     PG_BENCH_SHARED_BUFFERS=512MB PG_BENCH_SEED=7 cargo bench --bench postgres
//! ```
//!
//! No criterion: plain `Instant` timing loops. Results go to `benches/POSTGRES-RESULTS.md`.
//!
//! 1. **Projection throughput.** `PG_BENCH_EVENTS` records are sealed exactly as the pipeline
//!    does (`validate_bytes`, `enrich`, `Checksummer::seal_event`) from realistic ~500-byte
//!    events, then written in batches of `PG_BENCH_BATCH` (4096, the default
//!    `batch_events_max`) with `write::to_rows` + `write::write_batch`: what the live
//!    projection does per batch.
//! 2. **Raw COPY reference**, in the same run and interleaved batch by batch with (1) so that
//!    the machine's noise falls on both: the same rows (prebuilt, so conversion is not
//!    counted) into a second fresh database with the same schema, one binary COPY of the 23
//!    `audit_events` columns per transaction and nothing else.
//! 3. **Where the projection's extra time goes**: a third database gets the same batches
//!    through `write_batch_instrumented`, a copy of `write_batch` with a stopwatch between
//!    its statements. It is a copy because `write_batch` is one function that cannot be timed
//!    statement by statement from outside; its SQL is copied from
//!    `src/projection/postgres/write.rs` and must be kept in step with it. The bench checks
//!    that it is: after the batches, the instrumented database must hold exactly what the
//!    projection database holds (a digest of every row of `audit_events`, `command_history`,
//!    `chat_sessions`, and the offset), or the run stops.
//! 4. **Query latency.** The projection database is filled up to `PG_BENCH_QUERY_EVENTS`
//!    through `write_batch` (~1000 users, all event types, ~1 session per 20 events,
//!    producer timestamps over 30 days, receive times over 64 days so that three monthly
//!    partitions hold rows), vacuumed and analyzed; then every query shape of the HTTP API
//!    runs `PG_BENCH_QUERY_REPS` times with random parameters. Each request is timed as the
//!    handler in `src/projection/postgres/query.rs` does its database work: for a time range
//!    without `user_id`/`session_id`, first the seq-band statement (`min(seq)`, `max(seq)` of
//!    the matching rows), then the page statement with `seq >= lo AND seq <= hi` added; for
//!    other shapes, the page statement alone. The statements are built by a mirror of the
//!    handler's builder (so that the slowest instance can be EXPLAINed statement by
//!    statement), and two checks hold the mirror honest on the first 20 instances of each
//!    case: its answers must equal those of the real handler (`query::routes`, called
//!    in-process on the same database), and, where a band is used, those of the single
//!    statement without the band (the handler's query before the band, the reference).
//!    A shape whose p99 misses 100 ms (`PG_BENCH_P99_GOAL_MS`) gets an `EXPLAIN (ANALYZE,
//!    BUFFERS)` of both statements of its slowest instance, and (unless
//!    `PG_BENCH_EXPERIMENTS=0`) candidate changes are tried on the same instances, their
//!    answers checked against the reference.
//!
//! A shape stops early once it has spent 10 s (5 s in the experiments), so that a slow
//! shape cannot blow the run's time; the `n` column says how many instances ran. Each
//! shape's slowest instance is timed three more times, which tells an intrinsically slow
//! instance from a hiccup of the machine.
//!
//! The harness runs the server with `fsync=off` and `synchronous_commit=off` (both the
//! projection and the raw reference benefit alike); `shared_buffers` is raised from the
//! harness's 16MB to `PG_BENCH_SHARED_BUFFERS` with a restart. The machine these numbers are
//! taken on is small and shared: compare lines of one run with each other.

#[path = "../tests/support/postgres.rs"]
mod pg;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use kubechat_audit::config::Limits;
use kubechat_audit::ingest::Ingest;
use kubechat_audit::projection::postgres::query::{routes, PAGE_EVENTS_DEFAULT};
use kubechat_audit::projection::postgres::rows::{sessions, EventRow, EVENT_COLUMNS};
use kubechat_audit::projection::postgres::schema::migrate;
use kubechat_audit::projection::postgres::write::{to_rows, write_batch, PROJECTION};
use kubechat_audit::projection::postgres::{Connector, PostgresConfig};
use kubechat_audit_pipeline::chain::{ChainKey, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, uuid_v7_at, RequestContext, Transport};
use kubechat_audit_pipeline::event::validate_bytes;
use kubechat_audit_pipeline::record::{format_unix_ns, StoredRecord};
use kubechat_audit_pipeline::stage::{ChainState, Checksummer, LogWindow, Poison, Sealed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};
use tower::ServiceExt;
use uuid::Uuid;

const CHAIN_ID: &str = "3f2a9c4e-5b1d-4e8f-9a7c-bench0000001";
const KEY_ID: &str = "bench-key-1";
/// Size of every generated event line, in bytes.
const LINE_BYTES: usize = 500;
/// The p99 goal for a query, in milliseconds (`PG_BENCH_P99_GOAL_MS` overrides it, e.g. to
/// exercise the EXPLAIN and experiment paths on a small data set).
fn goal_ms() -> f64 {
    env_or("PG_BENCH_P99_GOAL_MS", 100.0)
}
/// The projection/raw COPY throughput goal.
const RATIO_GOAL: f64 = 0.8;
/// Users that own sessions (`user-0000` .. `user-0999`), plus a few service accounts.
const USERS: u32 = 1000;
const SERVICE_ACCOUNTS: u32 = 10;
/// Mean events per session (so ~50,000 sessions per million events).
const SESSION_EVENTS_MEAN: u32 = 20;
/// Sessions open at once.
const ACTIVE_SESSIONS: usize = 128;
/// Share of events that are system events outside any session.
const SYSTEM_SHARE: f64 = 0.12;
const DAY_NS: i64 = 86_400 * 1_000_000_000;
const HOUR_NS: i64 = 3_600 * 1_000_000_000;
/// Producer timestamps span this much; receive times span `RECEIVED_SPAN_NS`.
const TIMESTAMP_SPAN_NS: i64 = 30 * DAY_NS;
const RECEIVED_SPAN_NS: i64 = 64 * DAY_NS;
/// Longest a single query shape may run before its loop stops early, so that a
/// pathological shape cannot blow the run's time budget (its n then says how many ran).
const CASE_BUDGET: Duration = Duration::from_secs(10);
/// The same for each rerun of a missed shape in the experiments, which rerun at most
/// `EXPERIMENT_INSTANCES` of its instances.
const EXPERIMENT_CASE_BUDGET: Duration = Duration::from_secs(5);
const EXPERIMENT_INSTANCES: usize = 100;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------
// Data: realistic events, sealed as the pipeline seals them.

struct NoIds;

/// A log that has trimmed nothing: the checksum stage keeps every id it seals.
impl LogWindow for NoIds {
    fn first_seq(&self) -> u64 {
        1
    }
}

struct ActiveSession {
    index: usize,
    id: Uuid,
    user: u32,
    context: &'static str,
    ip: String,
    left: u32,
    started: bool,
}

/// What the query phase needs to know about one session.
#[derive(Clone, Copy)]
struct SessionInfo {
    id: Uuid,
    first_seq: i64,
    last_seq: i64,
}

/// Generates the event stream in `seq` order and seals it.
struct Generator {
    rng: StdRng,
    total: u64,
    next: u64,
    ts_start_ns: i64,
    received_start_ns: i64,
    active: Vec<ActiveSession>,
    sessions: Vec<SessionInfo>,
    /// The producer timestamp of every generated seq (index seq-1), in ns.
    timestamps: Vec<i64>,
    checksummer: Checksummer,
    line_bytes: u64,
}

const CONTEXTS: [&str; 6] = [
    "prod-eu-west-1",
    "prod-us-east-1",
    "staging-eu-west-1",
    "dev-shared",
    "payments-prod",
    "search-prod",
];
const VERBS: [&str; 7] = [
    "get", "describe", "logs", "apply", "scale", "delete", "rollout",
];
const NAMESPACES: [&str; 6] = [
    "prod",
    "staging",
    "payments",
    "kube-system",
    "web",
    "search",
];
const SYSTEM_ACTIONS: [&str; 4] = [
    "controller.reconcile",
    "policy.sync",
    "cert.rotate",
    "node.drain",
];

impl Generator {
    fn new(seed: u64, total: u64, now_ns: i64) -> Generator {
        let key = ChainKey::new(KEY_ID, [7u8; 32]);
        let checksummer = Checksummer::new(
            key,
            CHAIN_ID.into(),
            ChainState {
                next_seq: 1,
                prev: GENESIS,
            },
            Vec::new(),
            Box::new(NoIds),
        );
        Generator {
            rng: StdRng::seed_from_u64(seed),
            total,
            next: 1,
            ts_start_ns: now_ns - TIMESTAMP_SPAN_NS - HOUR_NS,
            received_start_ns: now_ns - RECEIVED_SPAN_NS - HOUR_NS,
            active: Vec::new(),
            sessions: Vec::new(),
            timestamps: Vec::with_capacity(total as usize),
            checksummer,
            line_bytes: 0,
        }
    }

    fn new_session(&mut self, seq: i64) -> ActiveSession {
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let index = self.sessions.len();
        self.sessions.push(SessionInfo {
            id,
            first_seq: seq,
            last_seq: seq,
        });
        ActiveSession {
            index,
            id,
            user: self.rng.random_range(0..USERS),
            context: CONTEXTS[self.rng.random_range(0..CONTEXTS.len())],
            ip: format!(
                "10.{}.{}.{}",
                self.rng.random_range(0..256),
                self.rng.random_range(0..256),
                self.rng.random_range(1..255)
            ),
            left: self.rng.random_range(4..=2 * SESSION_EVENTS_MEAN - 4),
            started: false,
        }
    }

    /// The next event as the producer would send it.
    fn event_line(&mut self, seq: u64) -> (Vec<u8>, i64) {
        let frac = (seq - 1) as f64 / self.total as f64;
        let ts_ns = self.ts_start_ns
            + (frac * TIMESTAMP_SPAN_NS as f64) as i64
            + self.rng.random_range(0..2_000_000_000i64);
        let received_ns = self.received_start_ns
            + (frac * RECEIVED_SPAN_NS as f64) as i64
            + self.rng.random_range(0..1_000_000i64);
        // Producers send milliseconds.
        let ts_full = format_unix_ns(ts_ns - ts_ns.rem_euclid(1_000_000));
        let timestamp = format!("{}Z", &ts_full[..23]);
        let rng = &mut self.rng;
        let event_id = if rng.random_bool(0.5) {
            Some(
                uuid::Builder::from_random_bytes(rng.random())
                    .into_uuid()
                    .hyphenated()
                    .to_string(),
            )
        } else {
            None
        };
        let mut v = if self.rng.random_bool(SYSTEM_SHARE) {
            let rng = &mut self.rng;
            serde_json::json!({
                "user_id": format!("system:serviceaccount:kube-system:controller-{}", rng.random_range(0..SERVICE_ACCOUNTS)),
                "event_type": "system_event",
                "action": SYSTEM_ACTIONS[rng.random_range(0..SYSTEM_ACTIONS.len())],
                "success": rng.random_bool(0.97),
                "timestamp": timestamp,
                "user_agent": "kubechat-controller/1.4.2",
                "metadata": {
                    "cluster": CONTEXTS[rng.random_range(0..CONTEXTS.len())],
                    "request_id": format!("{:016x}", rng.random::<u64>()),
                    "pad": "",
                }
            })
        } else {
            if self.active.len() < ACTIVE_SESSIONS {
                let s = self.new_session(seq as i64);
                self.active.push(s);
            }
            let slot = self.rng.random_range(0..self.active.len());
            let s = &mut self.active[slot];
            let info = &mut self.sessions[s.index];
            info.last_seq = seq as i64;
            s.left -= 1;
            let first = !s.started;
            s.started = true;
            let last = s.left == 0;
            let user = format!("user-{:04}@example.com", s.user);
            let (session_id, context, ip) = (s.id, s.context, s.ip.clone());
            let rng = &mut self.rng;
            let mut v = if first || last || rng.random_bool(0.03) {
                let action = if first {
                    "login"
                } else if last {
                    if rng.random_bool(0.7) {
                        "logout"
                    } else {
                        "session_end"
                    }
                } else {
                    "token_refresh"
                };
                serde_json::json!({
                    "event_type": "auth_event",
                    "action": action,
                    "success": rng.random_bool(0.95),
                })
            } else {
                let verb = VERBS[rng.random_range(0..VERBS.len())];
                let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
                serde_json::json!({
                    "event_type": "command_execution",
                    "action": format!("kubectl.{verb}"),
                    "kubernetes_command": format!(
                        "kubectl {verb} deployment/web-{}-{:05x} -n {ns}",
                        rng.random_range(0..64),
                        rng.random_range(0..0xfffff)
                    ),
                    "success": rng.random_bool(0.9),
                })
            };
            v["session_id"] = session_id.hyphenated().to_string().into();
            v["user_id"] = user.into();
            v["timestamp"] = timestamp.into();
            v["ip_address"] = ip.into();
            v["user_agent"] = "kubechat-web/2.3.1 (Mozilla/5.0)".into();
            let team = ["platform", "payments", "search", "identity"][rng.random_range(0..4)];
            v["metadata"] = serde_json::json!({
                "kubernetes_context": context,
                "request_id": format!("{:016x}", rng.random::<u64>()),
                "labels": {"team": team},
                "pad": "",
            });
            if last {
                self.active.swap_remove(slot);
            }
            v
        };
        if let Some(id) = event_id {
            v["event_id"] = id.into();
        }
        let base = serde_json::to_vec(&v).expect("JSON").len();
        if base < LINE_BYTES {
            let pad: String = (0..LINE_BYTES - base)
                .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
                .collect();
            v["metadata"]["pad"] = pad.into();
        }
        self.timestamps.push(ts_ns);
        (serde_json::to_vec(&v).expect("JSON"), received_ns)
    }

    /// The next `n` records (fewer at the end of the stream), sealed as the pipeline does.
    fn records(&mut self, n: usize) -> Vec<StoredRecord> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.next <= self.total {
            let seq = self.next;
            let (line, received_ns) = self.event_line(seq);
            self.line_bytes += line.len() as u64;
            let event = validate_bytes(&line).unwrap_or_else(|r| panic!("seq {seq}: {r}"));
            let port = 40_000 + (seq % 20_000) as u16;
            let ctx = RequestContext {
                transport: if seq % 3 == 0 {
                    Transport::Http
                } else {
                    Transport::Tcp
                },
                peer: SocketAddr::from(([10, 20, (seq % 7) as u8, 5], port)),
                received_at_unix_ns: received_ns,
            };
            let enriched = enrich(event, &ctx, || uuid_v7_at(received_ns));
            match self.checksummer.seal_event(enriched) {
                Ok(Sealed::New { record, .. }) => out.push(record),
                other => panic!("seq {seq}: not sealed: {other:?}"),
            }
            self.next += 1;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Writers: the raw COPY reference and the instrumented copy of write_batch.

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The column types of `audit_events` in `EVENT_COLUMNS` order, as the server has them (the
/// binary COPY needs them; `write.rs` keeps its own list, which must agree with the schema
/// for the projection to work at all).
async fn event_column_types(client: &Client) -> Vec<Type> {
    client
        .prepare(&format!(
            "SELECT {EVENT_COLUMNS} FROM kubechat_audit.audit_events LIMIT 0"
        ))
        .await
        .expect("prepare")
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect()
}

/// The binary COPY of `audit_events` rows, as `write_batch` does it.
async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    types: &[Type],
    rows: &[EventRow],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY kubechat_audit.audit_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, types));
    for r in rows {
        w.as_mut().write(&r.values()).await?;
    }
    w.finish().await?;
    Ok(())
}

/// The reference: one transaction, one binary COPY of the audit_events rows, nothing else.
async fn raw_copy(
    client: &mut Client,
    types: &[Type],
    rows: &[EventRow],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    copy_events(&tx, types, rows).await?;
    tx.commit().await
}

/// Time per part of `write_batch`, summed over batches.
#[derive(Default)]
struct Parts {
    begin: Duration,
    copy_events: Duration,
    copy_commands: Duration,
    sessions_fold: Duration,
    sessions_upsert: Duration,
    offset: Duration,
    commit: Duration,
}

impl Parts {
    fn total(&self) -> Duration {
        self.begin
            + self.copy_events
            + self.copy_commands
            + self.sessions_fold
            + self.sessions_upsert
            + self.offset
            + self.commit
    }
}

/// `write::write_batch` with a stopwatch between its statements, for the breakdown of where
/// the projection's time goes. `write_batch` is one function and cannot be timed statement
/// by statement from outside, hence this copy: its statements, their order and their SQL
/// are copied from `src/projection/postgres/write.rs`, and any change there must be made
/// here too. `same_contents` fails the run if the two write different rows.
///
/// Differences, none of which writes anything different: the `sessions()` arrays are built
/// before the `is_empty` test so that the fold is timed apart from the upsert, and a moved
/// offset is an assertion (the bench's database has a single writer).
async fn write_batch_instrumented(
    client: &mut Client,
    types: &[Type],
    offset: i64,
    rows: &[EventRow],
    parts: &mut Parts,
) -> Result<i64, tokio_postgres::Error> {
    let new_offset = rows.last().expect("a non-empty batch").seq;
    let mut t = Instant::now();
    let mut lap = |slot: &mut Duration| {
        let now = Instant::now();
        *slot += now - t;
        t = now;
    };
    let tx = client.transaction().await?;
    lap(&mut parts.begin);
    copy_events(&tx, types, rows).await?;
    lap(&mut parts.copy_events);

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
    lap(&mut parts.copy_commands);

    let s = sessions(rows);
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
    lap(&mut parts.sessions_fold);
    if !s.is_empty() {
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
    lap(&mut parts.sessions_upsert);

    let moved = tx
        .execute(
            "INSERT INTO kubechat_audit.projection_offsets AS o (chain_id, projection, seq) VALUES ($1, $2, $3)
             ON CONFLICT (chain_id, projection) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()
             WHERE o.seq = $4",
            &[&CHAIN_ID, &PROJECTION, &new_offset, &offset],
        )
        .await?;
    assert_eq!(moved, 1, "the offset moved under the instrumented writer");
    lap(&mut parts.offset);
    tx.commit().await?;
    lap(&mut parts.commit);
    Ok(new_offset)
}

/// A digest of everything `write_batch` writes, one line per table.
const CONTENTS: &str = "\
    SELECT 'audit_events: ' || count(*) || ' rows, digest ' || \
           coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.chain_id, t.seq)), '-') \
    FROM kubechat_audit.audit_events t; \
    SELECT 'command_history: ' || count(*) || ' rows, digest ' || \
           coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.chain_id, t.seq)), '-') \
    FROM kubechat_operational.command_history t; \
    SELECT 'chat_sessions: ' || count(*) || ' rows, digest ' || \
           coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.session_id)), '-') \
    FROM kubechat_operational.chat_sessions t; \
    SELECT 'projection_offsets: ' || \
           coalesce(string_agg(chain_id || '/' || projection || ' = ' || seq, ', ' \
                               ORDER BY chain_id, projection), '-') \
    FROM kubechat_audit.projection_offsets";

/// Holds `write_batch_instrumented` in step with `write_batch`: after the same batches, the
/// database each wrote must hold the same rows. Returns the contents, one line per table.
fn same_contents(server: &pg::PgServer, projection_db: &str, instrumented_db: &str) -> String {
    let want = server.execute(projection_db, CONTENTS).expect("contents");
    let got = server.execute(instrumented_db, CONTENTS).expect("contents");
    assert_eq!(
        got, want,
        "write_batch_instrumented wrote something else than write_batch: \
         bring it in step with src/projection/postgres/write.rs"
    );
    want
}

// ---------------------------------------------------------------------------------------
// Queries: the handler's statements, mirrored.
//
// Requests are timed through this mirror of `query::run`'s statement building rather than
// through the handler itself, so that the numbers are the handler's database work (both
// round trips where it makes two) as in the earlier results, and so that a slow instance
// can be EXPLAINed statement by statement. `check_answers` holds the mirror to the real
// handler: any change to the statements in `query.rs` must be made here too.

/// The filters of one `GET /v1/events` request.
#[derive(Clone, Default, Debug)]
struct Filter {
    user_id: Option<String>,
    event_type: Option<&'static str>,
    session_id: Option<Uuid>,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    after_seq: i64,
}

impl Filter {
    /// Whether the handler finds the seq band first: a time range without a user or session
    /// filter (`time_only` in `query::run`).
    fn finds_band(&self) -> bool {
        (self.from.is_some() || self.to.is_some())
            && self.user_id.is_none()
            && self.session_id.is_none()
    }

    /// The request's query string, for the real handler.
    fn query_string(&self) -> String {
        let mut q = vec![format!("after_seq={}", self.after_seq)];
        if let Some(u) = &self.user_id {
            q.push(format!("user_id={}", url_encode(u)));
        }
        if let Some(t) = self.event_type {
            q.push(format!("event_type={t}"));
        }
        if let Some(sid) = self.session_id {
            q.push(format!("session_id={sid}"));
        }
        for (name, t) in [("from", self.from), ("to", self.to)] {
            if let Some(t) = t {
                let text = format_unix_ns(t.unix_timestamp_nanos() as i64);
                q.push(format!("{name}={}", url_encode(&text)));
            }
        }
        q.join("&")
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The handler's page size when a request names none (every request here).
const LIMIT: i64 = PAGE_EVENTS_DEFAULT;

/// `query.rs`'s `Where`: conditions with bind parameters, `?` numbered as added.
#[derive(Default)]
struct Where {
    conds: Vec<String>,
    params: Params,
}

impl Where {
    fn add(&mut self, cond: &str, p: Box<dyn ToSql + Sync + Send>) {
        self.params.push(p);
        self.conds
            .push(cond.replace('?', &format!("${}", self.params.len())));
    }

    fn sql(&self) -> String {
        self.conds.join(" AND ")
    }
}

/// The conditions `query::run` builds for `f`: same conditions, same order, same
/// placeholders.
fn conditions(f: &Filter) -> Where {
    let mut w = Where::default();
    w.add("chain_id = ?", Box::new(CHAIN_ID.to_owned()));
    w.add("seq > ?", Box::new(f.after_seq));
    if let Some(u) = &f.user_id {
        w.add("user_id = ?", Box::new(u.clone()));
    }
    if let Some(t) = f.event_type {
        w.add("event_type = ?", Box::new(t.to_owned()));
    }
    if let Some(sid) = f.session_id {
        w.add("session_id = ?", Box::new(sid));
    }
    if let Some(t) = f.from {
        w.add("\"timestamp\" >= ?", Box::new(t));
    }
    if let Some(t) = f.to {
        w.add("\"timestamp\" < ?", Box::new(t));
    }
    w
}

/// The band statement over the conditions `w`, as `query::run` words it.
fn band_sql(w: &Where) -> String {
    format!(
        "SELECT min(seq), max(seq) FROM (SELECT seq FROM kubechat_audit.audit_events WHERE {} OFFSET 0) band",
        w.sql()
    )
}

/// The page statement: `f`'s conditions, then the band if there is one, then the limit.
fn page_query(f: &Filter, band: Option<(i64, i64)>) -> (String, Params) {
    let mut w = conditions(f);
    if let Some((lo, hi)) = band {
        w.add("seq >= ?", Box::new(lo));
        w.add("seq <= ?", Box::new(hi));
    }
    let where_sql = w.sql();
    w.params.push(Box::new(LIMIT));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM kubechat_audit.audit_events WHERE {where_sql} ORDER BY seq LIMIT ${}",
        w.params.len()
    );
    (sql, w.params)
}

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Inline SQL for a filter, for people to paste into psql.
fn describe(f: &Filter) -> String {
    let mut s = format!("after_seq={}", f.after_seq);
    if let Some(u) = &f.user_id {
        s += &format!(" user_id={u}");
    }
    if let Some(t) = f.event_type {
        s += &format!(" event_type={t}");
    }
    if let Some(x) = f.session_id {
        s += &format!(" session_id={x}");
    }
    if let (Some(a), Some(b)) = (f.from, f.to) {
        s += &format!(
            " from={} to={} ({:.1} h)",
            format_unix_ns(a.unix_timestamp_nanos() as i64),
            format_unix_ns(b.unix_timestamp_nanos() as i64),
            (b - a).as_seconds_f64() / 3600.0
        );
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Unfiltered,
    User,
    EventType,
    Session,
    TimeRange,
    UserTimeRange,
    EventTypeTimeRange,
}

impl Shape {
    const ALL: [Shape; 7] = [
        Shape::Unfiltered,
        Shape::User,
        Shape::EventType,
        Shape::Session,
        Shape::TimeRange,
        Shape::UserTimeRange,
        Shape::EventTypeTimeRange,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::Unfiltered => "no filter (chain only)",
            Shape::User => "user_id",
            Shape::EventType => "event_type",
            Shape::Session => "session_id",
            Shape::TimeRange => "from/to",
            Shape::UserTimeRange => "user_id + from/to",
            Shape::EventTypeTimeRange => "event_type + from/to",
        }
    }
}

/// What random parameters are drawn from.
struct QueryData {
    total: i64,
    sessions: Vec<SessionInfo>,
    timestamps: Vec<i64>,
    ts_min: i64,
    ts_max: i64,
}

impl QueryData {
    /// The first seq whose producer timestamp is at or after `ns` (timestamps are in seq
    /// order up to a 2 s jitter).
    fn seq_at(&self, ns: i64) -> i64 {
        self.timestamps.partition_point(|&t| t < ns) as i64 + 1
    }

    fn time_range(&self, rng: &mut StdRng) -> (i64, i64) {
        // Log-uniform width from 1 hour to 7 days, anywhere in the 30 days.
        let width = (HOUR_NS as f64 * (168f64).powf(rng.random::<f64>())) as i64;
        let from = rng.random_range(self.ts_min..self.ts_max - width);
        (from, from + width)
    }

    fn filter(&self, shape: Shape, deep: bool, rng: &mut StdRng) -> Filter {
        let t = |ns: i64| OffsetDateTime::from_unix_timestamp_nanos(ns as i128).expect("in range");
        let user = |rng: &mut StdRng| format!("user-{:04}@example.com", rng.random_range(0..USERS));
        let types = ["command_execution", "auth_event", "system_event"];
        // A cursor deep in the table: somewhere in its second half.
        let deep_seq = |rng: &mut StdRng| rng.random_range(self.total / 2..self.total * 19 / 20);
        let mut f = Filter::default();
        match shape {
            Shape::Unfiltered => {}
            Shape::User => f.user_id = Some(user(rng)),
            Shape::EventType => f.event_type = Some(types[rng.random_range(0..3)]),
            Shape::Session => {
                let s = self.sessions[rng.random_range(0..self.sessions.len())];
                f.session_id = Some(s.id);
                if deep {
                    // A page inside the session's trail, as paging through it would ask.
                    f.after_seq = rng.random_range(s.first_seq..=s.last_seq);
                }
            }
            Shape::TimeRange | Shape::UserTimeRange | Shape::EventTypeTimeRange => {
                let (a, b) = self.time_range(rng);
                f.from = Some(t(a));
                f.to = Some(t(b));
                if shape == Shape::UserTimeRange {
                    f.user_id = Some(user(rng));
                }
                if shape == Shape::EventTypeTimeRange {
                    f.event_type = Some(types[rng.random_range(0..3)]);
                }
                if deep {
                    // Paging through the range: a cursor inside its seq band.
                    f.after_seq = self.seq_at(rng.random_range(a..b));
                }
            }
        }
        if deep && matches!(shape, Shape::Unfiltered | Shape::User | Shape::EventType) {
            f.after_seq = deep_seq(rng);
        }
        f
    }
}

struct Latencies {
    ms: Vec<f64>,
    rows: u64,
    slowest: (f64, Filter),
    /// Where the slowest instance came in the run (0-based).
    slowest_at: usize,
    /// Every instance run, in order, so that an experiment can rerun the same ones.
    filters: Vec<Filter>,
}

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    fn max(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }
}

/// How a request is turned into statements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Exactly what `query.rs` sends today: for a time range without user or session, the
    /// band statement over the chain, cursor and time conditions, then the page statement
    /// with every condition and `seq >= lo AND seq <= hi` added (none when the band is
    /// empty); otherwise the page statement alone.
    Handler,
    /// The page statement alone, without a band: the handler's query before the band was
    /// introduced, and the definition of the right answer.
    Reference,
}

impl Mode {
    /// The band statement `self` sends first for `f`, if any.
    fn band_query(self, f: &Filter) -> Option<(String, Params)> {
        if !f.finds_band() {
            return None;
        }
        let w = match self {
            Mode::Reference => return None,
            Mode::Handler => conditions(&Filter {
                event_type: None,
                ..f.clone()
            }),
        };
        Some((band_sql(&w), w.params))
    }
}

/// The band of the request, if `mode` asks for one.
enum Band {
    NotAsked,
    /// No row matches: the handler answers an empty page without a page statement.
    Empty,
    Seqs(i64, i64),
}

async fn find_band(client: &Client, f: &Filter, mode: Mode) -> Band {
    let Some((sql, params)) = mode.band_query(f) else {
        return Band::NotAsked;
    };
    let row = client
        .query_one(&sql, &refs(&params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
        (Some(lo), Some(hi)) => Band::Seqs(lo, hi),
        _ => Band::Empty,
    }
}

/// One request's database work as `mode` does it, in order: the band statement if any, then
/// the page statement. Both with the SQL text, as the handler sends them (a fresh prepare
/// each time, so a custom plan).
async fn request(client: &Client, f: &Filter, mode: Mode) -> Vec<Row> {
    let band = match find_band(client, f, mode).await {
        Band::NotAsked => None,
        Band::Empty => return Vec::new(),
        Band::Seqs(lo, hi) => Some((lo, hi)),
    };
    let (sql, params) = page_query(f, band);
    client
        .query(&sql, &refs(&params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One request, timed from before its first statement to after its last.
async fn timed_request(client: &Client, f: &Filter, mode: Mode) -> (f64, Vec<Row>) {
    let started = Instant::now();
    let rows = request(client, f, mode).await;
    (started.elapsed().as_secs_f64() * 1e3, rows)
}

async fn time_query(client: &Client, f: &Filter, mode: Mode) -> (f64, usize) {
    let (ms, rows) = timed_request(client, f, mode).await;
    (ms, rows.len())
}

/// An answer: the page's seqs and the `next_after_seq` the handler derives from them.
fn answer(rows: &[Row]) -> (Vec<i64>, Option<i64>) {
    let seqs: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(1)).collect();
    let next = if seqs.len() as i64 == LIMIT {
        seqs.last().copied()
    } else {
        None
    };
    (seqs, next)
}

/// The real handler: `query::routes` over the same database, called in-process (no socket).
struct RealHandler {
    router: Router,
}

impl RealHandler {
    fn new(url: &str) -> RealHandler {
        let connector = Connector::new(url, &PostgresConfig::default()).expect("connector");
        // The query routes never touch the pipeline; the router's state needs one anyway.
        let (tx, _) = crossbeam_channel::bounded(1);
        let ingest = Arc::new(Ingest::new(tx, Poison::default(), Limits::default()));
        RealHandler {
            router: routes(&connector, 1, CHAIN_ID).with_state(ingest),
        }
    }

    async fn answer(&self, f: &Filter) -> (Vec<i64>, Option<i64>) {
        let uri = format!("/v1/events?{}", f.query_string());
        let req = Request::builder()
            .uri(&uri)
            .body(Body::empty())
            .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {uri}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let seqs = v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect();
        (seqs, v["next_after_seq"].as_i64())
    }
}

/// Runs `filters` one after the other (stopping early once `budget` is spent).
async fn run_case(
    client: &Client,
    warmup: &[Filter],
    filters: Vec<Filter>,
    mode: Mode,
    budget: Duration,
) -> Latencies {
    // A few untimed queries first, so that the first timed ones do not pay for cold
    // catalog caches.
    for f in warmup {
        time_query(client, f, mode).await;
    }
    let mut out = Latencies {
        ms: Vec::with_capacity(filters.len()),
        rows: 0,
        slowest: (0.0, Filter::default()),
        slowest_at: 0,
        filters: Vec::with_capacity(filters.len()),
    };
    let started = Instant::now();
    for f in filters {
        let (ms, n) = time_query(client, &f, mode).await;
        out.rows += n as u64;
        if ms > out.slowest.0 {
            out.slowest = (ms, f.clone());
            out.slowest_at = out.ms.len();
        }
        out.ms.push(ms);
        out.filters.push(f);
        if started.elapsed() > budget {
            break;
        }
    }
    out
}

async fn explain_sql(client: &Client, sql: &str, params: &Params) -> Vec<String> {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
    client
        .query(&sql, &refs(params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of each statement `mode` sends for `f`.
async fn explain(client: &Client, f: &Filter, mode: Mode) -> Vec<String> {
    let mut out = Vec::new();
    let band = match mode.band_query(f) {
        None => None,
        Some((sql, params)) => {
            out.push("-- the band statement:".to_owned());
            out.extend(explain_sql(client, &sql, &params).await);
            match find_band(client, f, mode).await {
                Band::Seqs(lo, hi) => {
                    out.push(format!(
                        "-- then the page statement, with the band seq {lo}..={hi}:"
                    ));
                    Some((lo, hi))
                }
                _ => {
                    out.push("-- the band is empty: no page statement".to_owned());
                    return out;
                }
            }
        }
    };
    let (sql, params) = page_query(f, band);
    out.extend(explain_sql(client, &sql, &params).await);
    out
}

/// The slowest instance of a case, timed three more times: tells an intrinsically slow
/// instance from one that met a hiccup of the machine.
async fn rerun_slowest(client: &Client, l: &Latencies, mode: Mode) -> String {
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(format!(
            "{:.1}",
            time_query(client, &l.slowest.1, mode).await.0
        ));
    }
    format!(
        "{:.1} ms as instance #{}; run again: {} ms",
        l.slowest.0,
        l.slowest_at,
        again.join(", ")
    )
}

/// Prints a plan, indented under its heading.
fn print_plan(plan: &[String]) {
    for line in plan {
        println!("    {line}");
    }
}

fn print_latency_header() {
    println!(
        "  {:<24} {:<11} {:>5} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "shape", "page", "n", "p50 ms", "p99 ms", "max ms", "rows/q", "goal"
    );
}

fn print_latency(shape: Shape, deep: bool, l: &Latencies) {
    let p99 = l.pct(0.99);
    println!(
        "  {:<24} {:<11} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>6}",
        shape.name(),
        if deep { "deep cursor" } else { "first" },
        l.ms.len(),
        l.pct(0.5),
        p99,
        l.max(),
        l.rows as f64 / l.ms.len() as f64,
        if p99 < goal_ms() { "met" } else { "MISSED" }
    );
}

// ---------------------------------------------------------------------------------------

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn prepare_db(server: &pg::PgServer) -> (pg::TestDb, Client) {
    let db = server.fresh_database();
    let mut client = connect(&db.url).await;
    migrate(&mut client).await.expect("migrations apply");
    client
        .query_one("SELECT kubechat_audit.ensure_partitions(3, 3)", &[])
        .await
        .expect("ensure_partitions");
    (db, client)
}

fn main() {
    let events: usize = env_or("PG_BENCH_EVENTS", 200_000);
    let query_events: usize = env_or("PG_BENCH_QUERY_EVENTS", 1_000_000);
    let reps: usize = env_or("PG_BENCH_QUERY_REPS", 200);
    let batch: usize = env_or("PG_BENCH_BATCH", 4096);
    let seed: u64 = env_or("PG_BENCH_SEED", 7);
    let shared_buffers: String = env_or("PG_BENCH_SHARED_BUFFERS", "512MB".to_owned());
    let experiments: bool = env_or("PG_BENCH_EXPERIMENTS", 1u8) != 0;
    let total = events.max(query_events);
    let run_started = Instant::now();

    println!("PostgreSQL projection benchmark");
    println!(
        "  PG_BENCH_EVENTS={events} PG_BENCH_QUERY_EVENTS={query_events} PG_BENCH_QUERY_REPS={reps} \
         PG_BENCH_BATCH={batch} PG_BENCH_SEED={seed} PG_BENCH_SHARED_BUFFERS={shared_buffers}"
    );

    let server = pg::PgServer::start_dedicated();
    server
        .execute(
            "postgres",
            &format!("ALTER SYSTEM SET shared_buffers = '{shared_buffers}'"),
        )
        .expect("ALTER SYSTEM");
    server.stop();
    server.start();
    let settings = server
        .execute(
            "postgres",
            "SELECT version(); SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ' ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', 'full_page_writes', 'max_wal_size', 'work_mem', 'wal_level', 'checkpoint_timeout')",
        )
        .expect("settings");
    for line in settings.lines() {
        println!("  {line}");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64;
        let mut gen = Generator::new(seed, total as u64, now_ns);

        // ---- 1. Sealed records, as the pipeline makes them.
        let started = Instant::now();
        let records = gen.records(events);
        let gen_time = started.elapsed();
        let body_bytes: usize = records.iter().map(|r| r.body.len()).sum();
        println!();
        println!(
            "records: {} sealed in {} ({:.0}/s single-threaded: validate + enrich + seal); \
             event lines {:.0} B, record bodies {:.0} B on average",
            records.len(),
            secs(gen_time),
            rate(records.len(), gen_time),
            gen.line_bytes as f64 / records.len() as f64,
            body_bytes as f64 / records.len() as f64,
        );

        // ---- 2 and 3. Projection vs raw COPY vs instrumented, interleaved batch by batch.
        let (db_proj, mut proj) = prepare_db(&server).await;
        let (db_raw, mut raw) = prepare_db(&server).await;
        let (db_instr, mut instr) = prepare_db(&server).await;
        let mut conv = Duration::ZERO;
        let mut proj_write = Duration::ZERO;
        let mut raw_write = Duration::ZERO;
        let mut parts = Parts::default();
        let types = event_column_types(&proj).await;
        let mut batch_ms = Vec::new();
        let mut offset = 0i64;
        let mut instr_offset = 0i64;
        for (i, chunk) in records.chunks(batch).enumerate() {
            let t = Instant::now();
            let rows = to_rows(chunk, offset).expect("to_rows");
            conv += t.elapsed();
            // Rotate who goes first, so that none always runs right after another's commit.
            for k in 0..3 {
                match (i + k) % 3 {
                    0 => {
                        let t = Instant::now();
                        offset = write_batch(&mut proj, CHAIN_ID, offset, &rows)
                            .await
                            .expect("write_batch");
                        let d = t.elapsed();
                        proj_write += d;
                        batch_ms.push(d.as_secs_f64() * 1e3);
                    }
                    1 => {
                        let t = Instant::now();
                        raw_copy(&mut raw, &types, &rows).await.expect("raw COPY");
                        raw_write += t.elapsed();
                    }
                    _ => {
                        instr_offset = write_batch_instrumented(
                            &mut instr,
                            &types,
                            instr_offset,
                            &rows,
                            &mut parts,
                        )
                        .await
                        .expect("instrumented write_batch");
                    }
                }
            }
        }
        drop(records);
        let n = offset as usize;
        let proj_total = conv + proj_write;
        let proj_rate = rate(n, proj_total);
        let raw_rate = rate(n, raw_write);
        batch_ms.sort_by(f64::total_cmp);
        println!();
        println!("projection throughput ({n} events, batches of {batch}, interleaved with the raw COPY reference):");
        println!(
            "  projection  to_rows + write_batch  {:>9.0} rows/s  ({} = to_rows {} + write_batch {})",
            proj_rate,
            secs(proj_total),
            secs(conv),
            secs(proj_write)
        );
        println!(
            "              write_batch alone      {:>9.0} rows/s  (per batch: p50 {:.0} ms, max {:.0} ms)",
            rate(n, proj_write),
            batch_ms[batch_ms.len() / 2],
            batch_ms[batch_ms.len() - 1]
        );
        println!(
            "  raw COPY    audit_events only      {:>9.0} rows/s  ({})",
            raw_rate,
            secs(raw_write)
        );
        let ratio = proj_rate / raw_rate;
        println!(
            "  ratio projection/raw               {:>9.2}         goal >= {RATIO_GOAL}: {}",
            ratio,
            if ratio >= RATIO_GOAL { "met" } else { "MISSED" }
        );
        println!(
            "  ratio write_batch alone/raw        {:>9.2}",
            rate(n, proj_write) / raw_rate
        );
        let it = parts.total() + conv;
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / it.as_secs_f64();
        println!();
        println!(
            "where the projection's time goes (instrumented copy of write_batch on a third database; {:.0} rows/s with to_rows):",
            rate(n, it)
        );
        for (name, d) in [
            ("to_rows (decode record bodies)", conv),
            ("BEGIN", parts.begin),
            ("COPY audit_events", parts.copy_events),
            ("COPY command_history", parts.copy_commands),
            ("sessions() fold (client CPU)", parts.sessions_fold),
            ("chat_sessions upsert", parts.sessions_upsert),
            ("projection_offsets upsert", parts.offset),
            ("COMMIT", parts.commit),
        ] {
            println!("  {name:<34} {:>9} {:>5.1}%", secs(d), pct(d));
        }
        let extra = it.saturating_sub(parts.copy_events);
        println!(
            "  {:<34} {:>9} {:>5.1}%   (everything but COPY audit_events)",
            "extra over raw COPY",
            secs(extra),
            pct(extra)
        );
        // What-ifs, from the parts above: the projection's own time minus a part measured on
        // the instrumented database. Estimates, not measurements.
        let est = |minus: Duration| rate(n, proj_total.saturating_sub(minus)) / raw_rate;
        println!(
            "  estimated ratio projection/raw if to_rows overlapped the previous batch's write: {:.2}; \
             without command_history: {:.2}; both: {:.2}",
            est(conv),
            est(parts.copy_commands),
            est(conv + parts.copy_commands)
        );
        let t = Instant::now();
        let contents = same_contents(&server, &db_proj.name, &db_instr.name);
        println!(
            "  the instrumented copy wrote the same as write_batch (checked in {}):",
            secs(t.elapsed())
        );
        for line in contents.lines() {
            println!("    {line}");
        }
        drop(raw);
        drop(instr);
        for db in [&db_raw, &db_instr] {
            server
                .execute("postgres", &format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name))
                .expect("drop database");
        }

        // ---- 4. Query latency over `query_events` rows.
        let load_started = Instant::now();
        let (tx, rx) = sync_channel::<Vec<EventRow>>(4);
        let (gen_tx, gen_rx) = sync_channel::<Generator>(1);
        let already = n;
        let producer = std::thread::spawn(move || {
            let mut offset = already as i64;
            loop {
                let recs = gen.records(batch);
                if recs.is_empty() {
                    break;
                }
                let rows = to_rows(&recs, offset).expect("to_rows");
                offset += rows.len() as i64;
                if tx.send(rows).is_err() {
                    break;
                }
            }
            drop(tx);
            let _ = gen_tx.send(gen);
        });
        let mut loaded = 0usize;
        while let Ok(rows) = rx.recv() {
            loaded += rows.len();
            offset = write_batch(&mut proj, CHAIN_ID, offset, &rows)
                .await
                .expect("write_batch");
        }
        producer.join().expect("generator thread");
        let gen = gen_rx.recv().expect("generator back");
        let load_time = load_started.elapsed();
        println!();
        if loaded > 0 {
            println!(
                "query data: {loaded} more events through write_batch in {} ({:.0} rows/s, \
                 generation concurrent on another thread), {} in all",
                secs(load_time),
                rate(loaded, load_time),
                offset
            );
        }
        let t = Instant::now();
        // VACUUM refuses to run in the implicit transaction of a multi-statement batch.
        for table in [
            "kubechat_audit.audit_events",
            "kubechat_operational.chat_sessions",
            "kubechat_operational.command_history",
        ] {
            proj.batch_execute(&format!("VACUUM (ANALYZE) {table}"))
                .await
                .expect("vacuum analyze");
        }
        println!("  VACUUM (ANALYZE) in {}", secs(t.elapsed()));
        let layout = server
            .execute(
                &db_proj.name,
                "SELECT c.relname || ': ' || c.reltuples::bigint || ' rows, heap ' || \
                        pg_size_pretty(pg_relation_size(c.oid)) || ', indexes ' || \
                        pg_size_pretty(pg_indexes_size(c.oid)) \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'kubechat_audit.audit_events'::regclass AND c.reltuples > 0 \
                 ORDER BY c.relname; \
                 SELECT 'sessions: ' || count(*) || ', users: ' || (SELECT count(DISTINCT user_id) FROM kubechat_audit.audit_events) \
                 FROM kubechat_operational.chat_sessions; \
                 SELECT 'event types: ' || string_agg(event_type || ' ' || n, ', ' ORDER BY event_type) \
                 FROM (SELECT event_type, count(*) AS n FROM kubechat_audit.audit_events GROUP BY 1) t; \
                 SELECT 'timestamp ' || min(\"timestamp\") || ' .. ' || max(\"timestamp\") || '; received_at ' \
                        || min(received_at) || ' .. ' || max(received_at) FROM kubechat_audit.audit_events",
            )
            .expect("layout");
        for line in layout.lines() {
            println!("  {line}");
        }

        let data = QueryData {
            total: offset,
            ts_min: *gen.timestamps.iter().min().expect("events"),
            ts_max: *gen.timestamps.iter().max().expect("events"),
            sessions: gen.sessions.clone(),
            timestamps: gen.timestamps.clone(),
        };
        drop(gen);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        println!();
        println!(
            "query latency ({reps} random instances per shape, LIMIT {LIMIT} ORDER BY seq, the handler's \
             statements, both round trips timed where it makes two; time ranges 1 h .. 7 d log-uniform; \
             goal p99 < {} ms):",
            goal_ms()
        );
        print_latency_header();
        let mut cases = Vec::new();
        for shape in Shape::ALL {
            for deep in [false, true] {
                let warmup: Vec<Filter> =
                    (0..5).map(|_| data.filter(shape, deep, &mut rng)).collect();
                let filters: Vec<Filter> =
                    (0..reps).map(|_| data.filter(shape, deep, &mut rng)).collect();
                let l = run_case(&proj, &warmup, filters, Mode::Handler, CASE_BUDGET).await;
                print_latency(shape, deep, &l);
                cases.push((shape, deep, l));
            }
        }
        let epoch = Some(OffsetDateTime::UNIX_EPOCH);
        let example = Filter {
            event_type: Some("auth_event"),
            from: epoch,
            to: epoch,
            ..Filter::default()
        };
        let (band, _) = Mode::Handler.band_query(&example).expect("a band");
        let (page, _) = page_query(&example, Some((1, 1)));
        println!("  statements of an event_type + from/to request: {band}; then {page}");
        let (single, _) = page_query(
            &Filter {
                user_id: Some("u".into()),
                from: epoch,
                to: epoch,
                ..Filter::default()
            },
            None,
        );
        println!("  statement of a user_id + from/to request: {single}");

        let handler = RealHandler::new(&db_proj.url);
        check_answers(&proj, &handler, &cases).await;

        let missed: Vec<_> = cases
            .into_iter()
            .filter(|(_, _, l)| l.pct(0.99) >= goal_ms())
            .collect();
        for (shape, deep, l) in &missed {
            println!();
            let f = &l.slowest.1;
            println!(
                "EXPLAIN (ANALYZE, BUFFERS) of the slowest {} / {} instance ({}): {}",
                shape.name(),
                if *deep { "deep cursor" } else { "first page" },
                rerun_slowest(&proj, l, Mode::Handler).await,
                describe(f)
            );
            print_plan(&explain(&proj, f, Mode::Handler).await);
        }

        if experiments && !missed.is_empty() {
            experiment(&proj, &missed).await;
        }
        println!();
        println!("total bench time {}", secs(run_started.elapsed()));
    });
    // Dropping the server stops it and removes its files.
    drop(server);
}

/// Instances of each case whose answers are checked.
const CHECK_INSTANCES: usize = 20;

/// Holds the mirror to the handler, on the first `CHECK_INSTANCES` instances of every case:
/// its answers (the page's seqs and `next_after_seq`) must equal those of the real handler,
/// and, where the handler finds a band, those of the reference (the single statement
/// without the band). For the banded cases, prints what the reference took on the same
/// instances, back to back with the handler's statements: the query before the band was
/// introduced, in the same run.
async fn check_answers(client: &Client, handler: &RealHandler, cases: &[(Shape, bool, Latencies)]) {
    let mut vs_handler = 0;
    let mut vs_reference = 0;
    let mut banded = Vec::new();
    for (shape, deep, l) in cases {
        let (mut now, mut before) = (Vec::new(), Vec::new());
        for f in l.filters.iter().take(CHECK_INSTANCES) {
            let (ms, rows) = timed_request(client, f, Mode::Handler).await;
            let got = answer(&rows);
            assert_eq!(
                got,
                handler.answer(f).await,
                "the bench's mirror of query.rs and the handler answer {f:?} differently: \
                 bring the mirror in step with src/projection/postgres/query.rs"
            );
            vs_handler += 1;
            if f.finds_band() {
                let (ref_ms, ref_rows) = timed_request(client, f, Mode::Reference).await;
                assert_eq!(
                    got,
                    answer(&ref_rows),
                    "the seq band changed the answer to {f:?}"
                );
                vs_reference += 1;
                now.push(ms);
                before.push(ref_ms);
            }
        }
        if !now.is_empty() {
            banded.push((*shape, *deep, now, before));
        }
    }
    println!();
    println!(
        "checks: the bench's statements gave the real handler's answers (query::routes, in-process) \
         on all {vs_handler} instances checked; the banded answers equal the single statement's \
         on all {vs_reference}"
    );
    if banded.is_empty() {
        return;
    }
    println!(
        "  on those banded instances, back to back (ms, p50 / max): the handler now vs the single \
         statement (the handler before the band)"
    );
    let p50_max = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("{:.2} / {:.2}", v[(v.len() - 1) / 2], v[v.len() - 1])
    };
    for (shape, deep, mut now, mut before) in banded {
        println!(
            "  {:<24} {:<11} n={:<3} now {:>17}   before {:>17}",
            shape.name(),
            if deep { "deep cursor" } else { "first" },
            now.len(),
            p50_max(&mut now),
            p50_max(&mut before)
        );
    }
}

/// Checks that `mode` answers as the reference does, on the first `CHECK_INSTANCES`
/// instances of every missed case; returns how many instances were checked.
async fn check_mode(client: &Client, missed: &[(Shape, bool, Latencies)], mode: Mode) -> usize {
    let mut checked = 0;
    for (_, _, l) in missed {
        for f in l.filters.iter().take(CHECK_INSTANCES) {
            let want = answer(&request(client, f, Mode::Reference).await);
            let got = answer(&request(client, f, mode).await);
            assert_eq!(got, want, "{mode:?} changed the answer to {f:?}");
            checked += 1;
        }
    }
    checked
}

/// A candidate change tried on the missed cases: an index to add, and how requests are made.
struct Candidate {
    /// Name and columns of an index to add for the candidate (dropped afterwards).
    index: Option<(&'static str, &'static str)>,
    mode: Mode,
    what: &'static str,
}

/// Candidate changes for the shapes that missed, each run on the same instances.
async fn experiment(client: &Client, missed: &[(Shape, bool, Latencies)]) {
    const CANDIDATES: [Candidate; 1] = [Candidate {
        index: Some((
            "bench_chain_type_time_seq",
            "(chain_id, event_type, \"timestamp\", seq)",
        )),
        mode: Mode::Handler,
        what: "the handler's statements unchanged",
    }];
    println!();
    println!(
        "experiments: candidate changes, each missed case rerun on its first {EXPERIMENT_INSTANCES} instances \
         (at most {} s per case)",
        EXPERIMENT_CASE_BUDGET.as_secs()
    );
    for Candidate { index, mode, what } in CANDIDATES {
        let t = Instant::now();
        println!();
        match index {
            Some((name, columns)) => {
                let ddl = format!(
                    "CREATE INDEX IF NOT EXISTS {name} ON kubechat_audit.audit_events {columns}"
                );
                client.batch_execute(&ddl).await.expect("create index");
                client
                    .batch_execute("ANALYZE kubechat_audit.audit_events")
                    .await
                    .expect("analyze");
                println!(
                    "  + index {columns}, {what} ({} to build)",
                    secs(t.elapsed())
                );
            }
            None => println!("  {what}"),
        }
        let checked = check_mode(client, missed, mode).await;
        println!("    answers equal the single statement's on all {checked} instances checked");
        print_latency_header();
        let mut slow = Vec::new();
        for (shape, deep, before) in missed {
            let n = EXPERIMENT_INSTANCES.min(before.filters.len());
            let l = run_case(
                client,
                &before.filters[..5.min(n)],
                before.filters[..n].to_vec(),
                mode,
                EXPERIMENT_CASE_BUDGET,
            )
            .await;
            print_latency(*shape, *deep, &l);
            println!("      slowest: {}", rerun_slowest(client, &l, mode).await);
            slow.push(l);
        }
        // The plan of the slowest instance of the first missed case, as evidence.
        if let Some(l) = slow.first() {
            println!(
                "    plan of the slowest {} instance ({}):",
                missed[0].0.name(),
                describe(&l.slowest.1)
            );
            print_plan(&explain(client, &l.slowest.1, mode).await);
        }
        if let Some((name, _)) = index {
            client
                .batch_execute(&format!("DROP INDEX kubechat_audit.{name}"))
                .await
                .expect("drop index");
        }
    }
}
