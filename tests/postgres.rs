//! The PostgreSQL projection against a real PostgreSQL started by the test harness: every
//! acknowledged event appears in `audit_events` exactly once with the fields of its log
//! record, the derived tables agree with the events, the audit tables refuse change, a
//! changed row is caught by `verify --postgres-url`, an outage of PostgreSQL costs only lag,
//! SIGKILL of `serve` neither duplicates nor loses rows, replay rebuilds identical tables,
//! and the query API pages through one chain's events.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kubechat_audit::log::Log;
use kubechat_audit::projection::postgres::rows::EventRow;
use serde_json::{json, Value};
use support::postgres::{shared, PgServer};
use support::server::*;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(pg: &PgServer, db: &str, sql: &str) -> i64 {
    pg.execute(db, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The projection's committed offset; 0 until its migrations have run.
fn projected(pg: &PgServer, db: &str) -> i64 {
    pg.execute(
        db,
        "SELECT coalesce(max(seq), 0) FROM kubechat_audit.projection_offsets",
    )
    .map(|s| s.trim().parse().unwrap_or(0))
    .unwrap_or(0)
}

/// Events with sessions, contexts, commands and a logout.
fn session_event(n: u64) -> Value {
    let mut e = event(77, n);
    let session = uuid::Uuid::from_u64_pair(77, n % 4).to_string();
    e["session_id"] = json!(session);
    e["metadata"] = json!({"kubernetes_context": format!("cluster-{}", n % 3), "n": n});
    if n == 30 {
        e["event_type"] = json!("auth_event");
        e["action"] = json!("logout");
    }
    e
}

fn send_all(server: &Server, events: &[Value]) -> Vec<u64> {
    let mut tcp = TcpProducer::connect(server.tcp);
    for e in events {
        tcp.send(e);
    }
    events
        .iter()
        .map(|_| tcp.answer().unwrap()["seq"].as_u64().expect("accepted"))
        .collect()
}

/// Every row of the chain equals its log record, exactly once.
fn assert_rows_equal_log(pg: &PgServer, db: &str, data: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = pg.superuser_url(db);
    let rows: Vec<EventRow> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let sql = format!(
            "SELECT {} FROM kubechat_audit.audit_events ORDER BY seq",
            kubechat_audit::projection::postgres::rows::EVENT_COLUMNS
        );
        client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(EventRow::from_pg)
            .collect()
    });
    let log = Log::open_existing(&data.join("log")).unwrap();
    let records: Vec<_> = log.records_from(1).map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), records.len(), "one row per record");
    for (row, rec) in rows.iter().zip(&records) {
        assert_eq!(
            row.to_record().unwrap(),
            *rec,
            "row {} equals its record",
            row.seq
        );
    }
}

#[test]
fn events_arrive_exactly_once_with_their_fields_and_derived_tables() {
    let pg = shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
    let events: Vec<Value> = (0..60).map(session_event).collect();
    let seqs = send_all(&server, &events[..40]);
    let body: String = events[40..].iter().map(|e| e.to_string() + "\n").collect();
    let (status, v) = post_events(server.http, body.as_bytes(), "application/x-ndjson");
    assert_eq!(status, 200, "{v}");
    assert_eq!(seqs.len(), 40);
    wait_until(
        "the projection to catch up",
        Duration::from_secs(30),
        || projected(pg, &db.name) == 60,
    );

    // The query API, while serve runs.
    let (status, _, text) = http_request(
        server.http,
        "GET",
        "/v1/events?user_id=user-1&limit=3",
        None,
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let page: Value = serde_json::from_str(&text).unwrap();
    let got: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|e| e["user_id"] == "user-1"));
    let next = page["next_after_seq"].as_i64().unwrap();
    let (_, _, text) = http_request(
        server.http,
        "GET",
        &format!("/v1/events?user_id=user-1&limit=3&after_seq={next}"),
        None,
        &[],
    );
    let page2: Value = serde_json::from_str(&text).unwrap();
    assert!(
        page2["events"][0]["seq"].as_i64().unwrap() > next,
        "paging moves forward"
    );
    let session = uuid::Uuid::from_u64_pair(77, 1);
    let (_, _, text) = http_request(
        server.http,
        "GET",
        &format!("/v1/sessions/{session}/events?limit=1000"),
        None,
        &[],
    );
    let trail: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(trail["events"].as_array().unwrap().len(), 15, "{trail}");
    let (status, _, text) =
        http_request(server.http, "GET", "/v1/events?event_type=nope", None, &[]);
    assert_eq!(status, 400);
    assert!(text.contains("event_type"));
    let (status, _, text) = http_request(
        server.http,
        "GET",
        "/v1/events?from=2026-12-03T09:00:00Z&to=2026-12-03T09:30:00Z",
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["events"]
            .as_array()
            .unwrap()
            .len(),
        60,
        "all events are at 09:00:00.5Z"
    );
    let (status, _, text) = http_request(
        server.http,
        "GET",
        "/v1/events?from=2026-12-04T00:00:00Z&event_type=auth_event",
        None,
        &[],
    );
    assert_eq!(status, 200);
    let empty: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(empty["events"].as_array().unwrap().len(), 0, "{empty}");
    assert!(empty["next_after_seq"].is_null());
    let (_, _, text) = http_request(
        server.http,
        "GET",
        "/v1/events?from=2026-12-03T09:00:00Z&limit=7&after_seq=50",
        None,
        &[],
    );
    let band: Value = serde_json::from_str(&text).unwrap();
    let seqs: Vec<i64> = band["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        vec![51, 52, 53, 54, 55, 56, 57],
        "time-range paging by seq"
    );
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("kubechat_audit_projection_committed_seq{projection=\"postgres\"} 60"),
        "{metrics}"
    );
    assert!(server.terminate().success());

    assert_rows_equal_log(pg, &db.name, &data);
    let commands = events
        .iter()
        .filter(|e| e["event_type"] == "command_execution")
        .count() as i64;
    assert_eq!(
        count(
            pg,
            &db.name,
            "SELECT count(*) FROM kubechat_operational.command_history"
        ),
        commands
    );
    assert_eq!(
        count(
            pg,
            &db.name,
            "SELECT count(*) FROM kubechat_audit.security_logs"
        ),
        events
            .iter()
            .filter(|e| e["event_type"] == "auth_event")
            .count() as i64
    );
    // Sessions: computed here from what was sent.
    let mut expect: HashMap<String, (i64, String, bool)> = HashMap::new();
    for (n, e) in events.iter().enumerate() {
        let s = expect
            .entry(e["session_id"].as_str().unwrap().to_owned())
            .or_insert((0, e["user_id"].as_str().unwrap().to_owned(), false));
        s.0 += 1;
        s.2 |= n == 30;
    }
    let rows = pg
        .execute(&db.name, "SELECT session_id, event_count, user_id, status, kubernetes_context FROM kubechat_operational.chat_sessions ORDER BY session_id")
        .unwrap();
    assert_eq!(rows.lines().count(), expect.len());
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (n, user, done) = &expect[f[0]];
        assert_eq!(f[1].parse::<i64>().unwrap(), *n, "{line}");
        assert_eq!(f[2], user, "the session's user is its earliest event's");
        assert_eq!(f[3], if *done { "completed" } else { "active" }, "{line}");
        assert!(f[4].starts_with("cluster-"), "{line}");
    }

    let out = cli(&[
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &db.url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("postgres chain") && text.contains("60 rows"),
        "{text}"
    );
}

#[test]
fn audit_tables_refuse_change_and_verify_catches_a_superuser_edit() {
    let pg = shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
    send_all(&server, &(0..10).map(|n| event(5, n)).collect::<Vec<_>>());
    wait_until("the projection", Duration::from_secs(30), || {
        projected(pg, &db.name) == 10
    });
    assert!(server.terminate().success());

    let role = format!("w_{}", db.name);
    pg.execute(
        &db.name,
        &format!("CREATE ROLE {role} LOGIN; GRANT kubechat_audit_writer TO {role};"),
    )
    .unwrap();
    let as_writer = |sql: &str| pg.execute(&db.name, &format!("SET ROLE {role}; {sql}"));
    for sql in [
        "UPDATE kubechat_audit.audit_events SET user_id = 'mallory' WHERE seq = 3",
        "DELETE FROM kubechat_audit.audit_events WHERE seq = 3",
        "TRUNCATE kubechat_audit.audit_events",
        "UPDATE kubechat_operational.command_history SET success = true",
    ] {
        let err = as_writer(sql).expect_err(sql);
        assert!(
            err.contains("permission denied") || err.contains("insert-only"),
            "{sql}: {err}"
        );
    }
    // Even the owner is refused by the triggers.
    let err = pg
        .execute(
            &db.name,
            "UPDATE kubechat_audit.audit_events SET user_id = 'mallory' WHERE seq = 3",
        )
        .unwrap_err();
    assert!(err.contains("insert-only"), "{err}");
    assert_eq!(
        as_writer("SELECT count(*) FROM kubechat_audit.audit_events").unwrap(),
        "10"
    );

    // A superuser edit with triggers disabled is caught, naming the seq.
    pg.execute(
        &db.name,
        "SET session_replication_role = replica; UPDATE kubechat_audit.audit_events SET user_id = 'mallory' WHERE seq = 7;",
    )
    .unwrap();
    let out = cli(&[
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &db.url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("seq 7: changed"), "{text}");

    // A deleted row is named as missing.
    pg.execute(&db.name, "SET session_replication_role = replica; UPDATE kubechat_audit.audit_events SET user_id = 'user-0' WHERE seq = 7; DELETE FROM kubechat_audit.audit_events WHERE seq = 4;")
        .unwrap();
    let out = cli(&[
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &db.url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("seq 4: missing"), "{text}");
}

#[test]
fn a_postgres_outage_costs_only_lag() {
    let pg = PgServer::start_dedicated();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
    send_all(&server, &(0..50).map(|n| event(8, n)).collect::<Vec<_>>());
    wait_until("the projection", Duration::from_secs(30), || {
        projected(&pg, &db.name) == 50
    });
    pg.stop();
    // Ingestion keeps acknowledging while PostgreSQL is away.
    let seqs = send_all(&server, &(50..250).map(|n| event(8, n)).collect::<Vec<_>>());
    assert_eq!(seqs, (51..=250).collect::<Vec<_>>());
    wait_until("lag to show", Duration::from_secs(10), || {
        let m = server.metrics_text();
        m.contains("kubechat_audit_projection_lag_events{projection=\"postgres\"} 200")
            && m.contains(
                "kubechat_audit_projection_state{projection=\"postgres\",state=\"retrying\"} 1",
            )
    });
    pg.start();
    wait_until("the backlog to drain", Duration::from_secs(60), || {
        projected(&pg, &db.name) == 250
    });
    assert!(server.terminate().success());
    assert_eq!(
        count(
            &pg,
            &db.name,
            "SELECT count(*) FROM kubechat_audit.audit_events"
        ),
        250
    );
    assert_rows_equal_log(&pg, &db.name, &data);
}

#[test]
fn sigkill_mid_stream_neither_duplicates_nor_loses_rows() {
    let pg = shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for round in 0..4u64 {
        let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
        let addr = server.tcp;
        let producer = std::thread::spawn(move || {
            let mut p = TcpProducer::connect(addr);
            for n in 0..100_000 {
                p.send(&event(100 + round, n));
                if n % 64 == 63 {
                    for _ in 0..64 {
                        if p.answer().is_none() {
                            return;
                        }
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        server.kill9();
        let _ = producer.join();
    }
    // Let the projection finish from where the last kill left it.
    let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
    let head = {
        let (_, _, m) = http_request(server.metrics, "GET", "/metrics", None, &[]);
        m.lines()
            .find_map(|l| l.strip_prefix("kubechat_audit_chain_head_seq "))
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap() as i64
    };
    assert!(head > 0);
    wait_until(
        "the projection to reach the head",
        Duration::from_secs(60),
        || projected(pg, &db.name) == head,
    );
    assert!(server.terminate().success());
    assert_eq!(
        count(
            pg,
            &db.name,
            "SELECT count(*) FROM kubechat_audit.audit_events"
        ),
        head
    );
    assert_eq!(
        count(
            pg,
            &db.name,
            "SELECT count(DISTINCT seq) FROM kubechat_audit.audit_events"
        ),
        head
    );
    assert_rows_equal_log(pg, &db.name, &data);
}

fn dump(pg: &PgServer, db: &str) -> String {
    let mut out = String::new();
    for sql in [
        "SELECT t FROM (SELECT a.*::text AS t, seq FROM kubechat_audit.audit_events a) x ORDER BY seq",
        "SELECT t FROM (SELECT c.*::text AS t, seq FROM kubechat_operational.command_history c) x ORDER BY seq",
        "SELECT s::text FROM kubechat_operational.chat_sessions s ORDER BY session_id",
        "SELECT chain_id || ' ' || projection || ' ' || seq FROM kubechat_audit.projection_offsets ORDER BY 1",
    ] {
        out += &pg.execute(db, sql).unwrap();
        out += "\n--\n";
    }
    out
}

#[test]
fn replay_rebuilds_identical_tables() {
    let pg = shared();
    let live = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    // Small live batches, so that replay's batching differs from live ingestion's.
    std::fs::write(&cfg, "[postgres]\nbatch_events_max = 7\nlinger_ms = 0\n").unwrap();
    let server = Server::start_with(
        &data,
        &[
            "--postgres-url",
            &live.url,
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    let events: Vec<Value> = (0..120).map(session_event).collect();
    for chunk in events.chunks(13) {
        send_all(&server, chunk);
    }
    wait_until("the projection", Duration::from_secs(30), || {
        projected(pg, &live.name) == 120
    });
    assert!(server.terminate().success());

    let rebuilt = pg.fresh_database();
    let out = cli(&[
        "replay",
        "--projection",
        "postgres",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &rebuilt.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("120 / 120"),
        "progress is shown"
    );
    assert_eq!(dump(pg, &live.name), dump(pg, &rebuilt.name));

    // Replay refuses non-empty tables unless told to truncate them (as the owner).
    let out = cli(&[
        "replay",
        "--projection",
        "all",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &live.url,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--truncate"));
    let out = cli(&[
        "replay",
        "--projection",
        "all",
        "--truncate",
        "--data-dir",
        data.to_str().unwrap(),
        "--postgres-url",
        &live.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dump(pg, &live.name), dump(pg, &rebuilt.name));
    // Migrations are safe to run twice.
    let out = cli(&["migrate", "--postgres-url", &live.url]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied: []"));
}

#[test]
fn a_permanent_error_stops_the_projection_naming_the_seq_while_ingest_goes_on() {
    let pg = shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--postgres-url", &db.url], &[]);
    send_all(&server, &(0..5).map(|n| event(9, n)).collect::<Vec<_>>());
    wait_until("the projection", Duration::from_secs(30), || {
        projected(pg, &db.name) == 5
    });
    // A rule the database enforces and the pipeline does not know: the row is refused.
    pg.execute(&db.name, "ALTER TABLE kubechat_audit.audit_events ADD CONSTRAINT no_mallory CHECK (user_id <> 'mallory')")
        .unwrap();
    let mut bad = event(9, 5);
    bad["user_id"] = json!("mallory");
    let mut batch = vec![bad];
    batch.extend((6..10).map(|n| event(9, n)));
    let seqs = send_all(&server, &batch);
    assert_eq!(seqs, vec![6, 7, 8, 9, 10], "ingest keeps acknowledging");
    wait_until("the failed state", Duration::from_secs(30), || {
        server
            .metrics_text()
            .contains("kubechat_audit_projection_state{projection=\"postgres\",state=\"failed\"} 1")
    });
    assert!(
        server.stderr_text().contains("seq 6"),
        "the error names the seq: {}",
        server.stderr_text()
    );
    assert_eq!(
        projected(pg, &db.name),
        5,
        "nothing after the refused row was skipped over"
    );
    assert_eq!(send_all(&server, &[event(9, 10)]), vec![11]);
    assert!(server.terminate().success());
}

#[test]
fn several_chains_share_one_database_and_verify_on_their_own() {
    let pg = shared();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut chains = Vec::new();
    let servers: Vec<(Server, std::path::PathBuf)> = (0..2)
        .map(|i| {
            let data = dir.path().join(format!("data-{i}"));
            (
                Server::start_with(&data, &["--postgres-url", &db.url], &[]),
                data,
            )
        })
        .collect();
    for (i, (s, _)) in servers.iter().enumerate() {
        send_all(
            s,
            &(0..30)
                .map(|n| session_event(n + 100 * i as u64))
                .collect::<Vec<_>>(),
        );
        chains.push(s.chain_id.clone());
    }
    assert_ne!(chains[0], chains[1]);
    wait_until("both chains projected", Duration::from_secs(30), || {
        count(
            pg,
            &db.name,
            "SELECT count(*) FROM kubechat_audit.projection_offsets WHERE seq = 30",
        ) == 2
    });
    for (s, data) in servers {
        assert!(s.terminate().success());
        let out = cli(&[
            "verify",
            "--data-dir",
            data.to_str().unwrap(),
            "--postgres-url",
            &db.url,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        count(
            pg,
            &db.name,
            "SELECT count(*) FROM kubechat_audit.audit_events"
        ),
        60
    );
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl command line tool.
fn make_certs(dir: &Path) {
    let run = |args: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cd '{}' && openssl {args}", dir.display()))
            .output()
            .expect("the openssl command line tool (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=kubechat-test-ca");
    run("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run("x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext");
    run("req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt -days 2 -subj /CN=someone-else");
}

#[test]
fn tls_to_postgres_verifies_the_server_certificate() {
    let pg = PgServer::start_dedicated();
    let db = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    for f in ["server.crt", "server.key"] {
        let dest = pg.data_dir().join(f);
        std::fs::copy(dir.path().join(f), &dest).unwrap();
        let _ = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dest)
            .status();
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    pg.execute(&db.name, "ALTER SYSTEM SET ssl = on").unwrap();
    pg.execute(&db.name, "SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let cfg = dir.path().join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[postgres]\ntls = \"verify\"\nca_file = \"{}\"\n",
            dir.path().join("ca.crt").display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        &["--config", cfg.to_str().unwrap(), "--postgres-url", &db.url],
        &[],
    );
    send_all(&server, &(0..5).map(|n| event(21, n)).collect::<Vec<_>>());
    wait_until("the projection over TLS", Duration::from_secs(30), || {
        projected(&pg, &db.name) == 5
    });
    let ssl = pg
        .execute(&db.name, "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'kubechat-audit'")
        .unwrap();
    assert_eq!(ssl.trim(), "t", "the projection's connections use TLS");
    assert!(server.terminate().success());

    // A CA that did not sign the server's certificate: no connection, no rows, retrying.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[postgres]\ntls = \"verify\"\nca_file = \"{}\"\n",
            dir.path().join("other.crt").display()
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &data,
        &[
            "--config",
            other.to_str().unwrap(),
            "--postgres-url",
            &db.url,
        ],
        &[],
    );
    send_all(&server, &[event(21, 5)]);
    wait_until("the retrying state", Duration::from_secs(30), || {
        server.metrics_text().contains(
            "kubechat_audit_projection_state{projection=\"postgres\",state=\"retrying\"} 1",
        )
    });
    assert_eq!(projected(&pg, &db.name), 5);
    assert!(server.terminate().success());
}

#[test]
fn a_missing_database_fails_the_projection_with_the_servers_words() {
    let pg = shared();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.superuser_url("no_such_database");
    let server = Server::start_with(&dir.path().join("data"), &["--postgres-url", &url], &[]);
    wait_until("the failed state", Duration::from_secs(30), || {
        server
            .metrics_text()
            .contains("kubechat_audit_projection_state{projection=\"postgres\",state=\"failed\"} 1")
    });
    assert!(
        server.stderr_text().contains("does not exist"),
        "{}",
        server.stderr_text()
    );
    // Ingest is unaffected.
    assert_eq!(send_all(&server, &[event(30, 0)]), vec![1]);
    assert!(server.terminate().success());
}
