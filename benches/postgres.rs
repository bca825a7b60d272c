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
//!    through an instrumented copy of `write_batch` (its SQL copied from
//!    `src/projection/postgres/write.rs`; keep the two in step) that times each statement.
//! 4. **Query latency.** The projection database is filled up to `PG_BENCH_QUERY_EVENTS`
//!    through `write_batch` (~1000 users, all event types, ~1 session per 20 events,
//!    producer timestamps over 30 days, receive times over 64 days so that three monthly
//!    partitions hold rows), vacuumed and analyzed; then every query shape of the HTTP API
//!    runs `PG_BENCH_QUERY_REPS` times with random parameters, with the exact SQL and bind
//!    parameters `src/projection/postgres/query.rs` builds (the builder is mirrored here).
//!    A shape whose p99 misses 100 ms (`PG_BENCH_P99_GOAL_MS`) gets an `EXPLAIN (ANALYZE,
//!    BUFFERS)` of its slowest instance, and (unless `PG_BENCH_EXPERIMENTS=0`) candidate
//!    indexes and a query rewrite are tried on the same instances; the rewrite's answers are
//!    checked against the handler's query.
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubechat_audit::projection::postgres::rows::{sessions, EventRow, EVENT_COLUMNS};
use kubechat_audit::projection::postgres::schema::migrate;
use kubechat_audit::projection::postgres::write::{to_rows, write_batch};
use kubechat_audit_pipeline::chain::{ChainKey, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, uuid_v7_at, RequestContext, Transport};
use kubechat_audit_pipeline::event::validate_bytes;
use kubechat_audit_pipeline::record::{format_unix_ns, StoredRecord};
use kubechat_audit_pipeline::stage::{ChainState, Checksummer, IdLookup, Sealed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};
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

/// The column types of `audit_events` in `EVENT_COLUMNS` order (as `write.rs` has them).
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

impl IdLookup for NoIds {
    fn lookup(&self, _id: &Uuid) -> Result<Option<(u64, [u8; 32])>, String> {
        Ok(None)
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
        let recent = kubechat_audit::config::Config::default().recent_ids();
        let checksummer = Checksummer::new(
            key,
            CHAIN_ID.into(),
            ChainState {
                next_seq: 1,
                prev: GENESIS,
            },
            recent,
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

fn event_values(r: &EventRow) -> [&(dyn ToSql + Sync); 23] {
    [
        &r.chain_id,
        &r.seq,
        &r.event_id,
        &r.session_id,
        &r.user_id,
        &r.event_type,
        &r.action,
        &r.kubernetes_command,
        &r.success,
        &r.timestamp,
        &r.timestamp_text,
        &r.ip_address,
        &r.user_agent,
        &r.metadata,
        &r.received_at,
        &r.received_at_unix_ns,
        &r.source_transport,
        &r.source_peer,
        &r.classification,
        &r.retention_class,
        &r.key_id,
        &r.prev_checksum,
        &r.checksum,
    ]
}

async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[EventRow],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY kubechat_audit.audit_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, &EVENT_TYPES));
    for r in rows {
        w.as_mut().write(&event_values(r)).await?;
    }
    w.finish().await?;
    Ok(())
}

/// The reference: one transaction, one binary COPY of the audit_events rows, nothing else.
async fn raw_copy(client: &mut Client, rows: &[EventRow]) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    copy_events(&tx, rows).await?;
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

/// `write::write_batch` with a stopwatch between its statements. The SQL is copied from
/// `src/projection/postgres/write.rs`.
async fn write_batch_instrumented(
    client: &mut Client,
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
    copy_events(&tx, rows).await?;
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
            &[&CHAIN_ID, &"postgres", &new_offset, &offset],
        )
        .await?;
    assert_eq!(moved, 1, "the offset moved under the instrumented writer");
    lap(&mut parts.offset);
    tx.commit().await?;
    lap(&mut parts.commit);
    Ok(new_offset)
}

// ---------------------------------------------------------------------------------------
// Queries: the handler's SQL builder, mirrored.

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

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The SQL and parameters `query::run` builds for `f` (same conditions, same order, same
/// placeholders, default limit 100).
fn build_query(f: &Filter) -> (String, Params) {
    let mut params: Params = vec![Box::new(CHAIN_ID.to_owned()), Box::new(f.after_seq)];
    let mut conds = vec!["chain_id = $1".to_owned(), "seq > $2".to_owned()];
    let mut add = |cond: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        conds.push(cond.replace('?', &format!("${}", params.len())));
    };
    if let Some(u) = &f.user_id {
        add("user_id = ?", Box::new(u.clone()));
    }
    if let Some(t) = f.event_type {
        add("event_type = ?", Box::new(t.to_owned()));
    }
    if let Some(sid) = f.session_id {
        add("session_id = ?", Box::new(sid));
    }
    if let Some(t) = f.from {
        add("\"timestamp\" >= ?", Box::new(t));
    }
    if let Some(t) = f.to {
        add("\"timestamp\" < ?", Box::new(t));
    }
    params.push(Box::new(100i64));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM kubechat_audit.audit_events WHERE {} ORDER BY seq LIMIT ${}",
        conds.join(" AND "),
        params.len()
    );
    (sql, params)
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

/// How a request is turned into SQL.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Exactly what `query.rs` sends today.
    Handler,
    /// A proposed rewrite for requests with `from`/`to`: first the seq band of the time
    /// range (`min(seq)`, `max(seq)` from an index-only scan of `(chain_id, "timestamp",
    /// seq)`), then the handler's query with `seq >= lo AND seq <= hi` added, so that the
    /// seq-ordered scan starts at the band and partitions outside it answer at once.
    SeqBand,
}

/// The band query of [`Mode::SeqBand`].
fn band_query(f: &Filter) -> (String, Params) {
    let params: Params = vec![
        Box::new(CHAIN_ID.to_owned()),
        Box::new(f.after_seq),
        Box::new(f.from.expect("a time range")),
        Box::new(f.to.expect("a time range")),
    ];
    (
        // OFFSET 0 keeps the planner from answering min/max by walking the primary key in
        // seq order (the very scan this avoids): the aggregate reads the time range from
        // the (chain_id, "timestamp", seq) index only.
        "SELECT min(seq), max(seq) FROM (SELECT seq FROM kubechat_audit.audit_events \
         WHERE chain_id = $1 AND seq > $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4 \
         OFFSET 0) band"
            .to_owned(),
        params,
    )
}

/// The handler's query with the band added before its LIMIT.
fn banded_query(f: &Filter, lo: i64, hi: i64) -> (String, Params) {
    let (sql, mut params) = build_query(f);
    let limit = params.pop().expect("the limit");
    let n = params.len();
    params.push(Box::new(lo));
    params.push(Box::new(hi));
    params.push(limit);
    let sql = sql.replace(
        &format!(" ORDER BY seq LIMIT ${}", n + 1),
        &format!(
            " AND seq >= ${} AND seq <= ${} ORDER BY seq LIMIT ${}",
            n + 1,
            n + 2,
            n + 3
        ),
    );
    (sql, params)
}

async fn band(client: &Client, f: &Filter) -> Option<(i64, i64)> {
    let (sql, params) = band_query(f);
    let row = client
        .query_one(&sql, &refs(&params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    Some((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
}

async fn time_query(client: &Client, f: &Filter, mode: Mode) -> (f64, usize) {
    let started = Instant::now();
    let (sql, params) = match mode {
        Mode::SeqBand if f.from.is_some() => match band(client, f).await {
            None => return (started.elapsed().as_secs_f64() * 1e3, 0),
            Some((lo, hi)) => banded_query(f, lo, hi),
        },
        _ => build_query(f),
    };
    // As the handler does: `query` with the SQL text (a fresh prepare, so a custom plan).
    let rows = client
        .query(&sql, &refs(&params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (started.elapsed().as_secs_f64() * 1e3, rows.len())
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

async fn explain(client: &Client, f: &Filter, mode: Mode) -> Vec<String> {
    match mode {
        Mode::SeqBand if f.from.is_some() => {
            let (sql, params) = band_query(f);
            let mut out = explain_sql(client, &sql, &params).await;
            if let Some((lo, hi)) = band(client, f).await {
                out.push(format!("-- then, with the band seq {lo}..={hi}:"));
                let (sql, params) = banded_query(f, lo, hi);
                out.extend(explain_sql(client, &sql, &params).await);
            }
            out
        }
        _ => {
            let (sql, params) = build_query(f);
            explain_sql(client, &sql, &params).await
        }
    }
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
                        raw_copy(&mut raw, &rows).await.expect("raw COPY");
                        raw_write += t.elapsed();
                    }
                    _ => {
                        instr_offset =
                            write_batch_instrumented(&mut instr, instr_offset, &rows, &mut parts)
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
        let counts = server
            .execute(
                &db_proj.name,
                "SELECT (SELECT count(*) FROM kubechat_audit.audit_events) || ' events, ' || \
                 (SELECT count(*) FROM kubechat_operational.command_history) || ' commands, ' || \
                 (SELECT count(*) FROM kubechat_operational.chat_sessions) || ' sessions'",
            )
            .expect("counts");
        println!("  projection database: {counts}");
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
            "query latency ({reps} random instances per shape, LIMIT 100 ORDER BY seq, the handler's SQL; \
             time ranges 1 h .. 7 d log-uniform; goal p99 < {} ms):",
            goal_ms()
        );
        print_latency_header();
        let mut missed = Vec::new();
        for shape in Shape::ALL {
            for deep in [false, true] {
                let warmup: Vec<Filter> =
                    (0..5).map(|_| data.filter(shape, deep, &mut rng)).collect();
                let filters: Vec<Filter> =
                    (0..reps).map(|_| data.filter(shape, deep, &mut rng)).collect();
                let l = run_case(&proj, &warmup, filters, Mode::Handler, CASE_BUDGET).await;
                print_latency(shape, deep, &l);
                if l.pct(0.99) >= goal_ms() {
                    missed.push((shape, deep, l));
                }
            }
        }
        let (example_sql, _) = build_query(&Filter {
            user_id: Some("u".into()),
            from: Some(OffsetDateTime::UNIX_EPOCH),
            to: Some(OffsetDateTime::UNIX_EPOCH),
            ..Filter::default()
        });
        println!("  SQL (user_id + from/to): {example_sql}");

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

/// Checks that the seq-band rewrite returns exactly the handler's rows, on the first 20
/// instances of every missed case; returns how many instances were checked.
async fn same_results(client: &Client, missed: &[(Shape, bool, Latencies)]) -> usize {
    let mut checked = 0;
    for (_, _, l) in missed {
        for f in l.filters.iter().take(20) {
            let (sql, params) = build_query(f);
            let seqs = |rows: Vec<tokio_postgres::Row>| -> Vec<i64> {
                rows.iter().map(|r| r.get::<_, i64>(1)).collect()
            };
            let want = seqs(client.query(&sql, &refs(&params)).await.expect("query"));
            let got = match band(client, f).await {
                None => Vec::new(),
                Some((lo, hi)) => {
                    let (sql, params) = banded_query(f, lo, hi);
                    seqs(client.query(&sql, &refs(&params)).await.expect("query"))
                }
            };
            assert_eq!(
                got, want,
                "the seq-band rewrite changed the answer to {f:?}"
            );
            checked += 1;
        }
    }
    checked
}

/// Candidate changes for the shapes that missed, each run on the same instances.
async fn experiment(client: &Client, missed: &[(Shape, bool, Latencies)]) {
    const CANDIDATES: [(&str, &str, Mode); 3] = [
        (
            "bench_chain_seq_time",
            "(chain_id, seq, \"timestamp\")",
            Mode::Handler,
        ),
        (
            "bench_chain_time_seq",
            "(chain_id, \"timestamp\", seq)",
            Mode::Handler,
        ),
        (
            "bench_chain_time_seq",
            "(chain_id, \"timestamp\", seq)",
            Mode::SeqBand,
        ),
    ];
    println!();
    println!(
        "experiments: candidate changes, each missed case rerun on its first {EXPERIMENT_INSTANCES} instances \
         (at most {} s per case)",
        EXPERIMENT_CASE_BUDGET.as_secs()
    );
    for (name, columns, mode) in CANDIDATES {
        let t = Instant::now();
        let ddl =
            format!("CREATE INDEX IF NOT EXISTS {name} ON kubechat_audit.audit_events {columns}");
        client.batch_execute(&ddl).await.expect("create index");
        client
            .batch_execute("ANALYZE kubechat_audit.audit_events")
            .await
            .expect("analyze");
        println!();
        println!(
            "  + index {columns}, {} ({} to build)",
            match mode {
                Mode::Handler => "the handler's query unchanged",
                Mode::SeqBand => "the seq-band rewrite of the query",
            },
            secs(t.elapsed())
        );
        if mode == Mode::SeqBand {
            let checked = same_results(client, missed).await;
            println!("    the rewrite returned the same rows as the handler's query on all {checked} instances checked");
        }
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
        if mode != Mode::Handler || name == "bench_chain_seq_time" {
            client
                .batch_execute(&format!("DROP INDEX kubechat_audit.{name}"))
                .await
                .expect("drop index");
        }
    }
}
