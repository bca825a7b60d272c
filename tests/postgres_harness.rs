//! Pins down the PostgreSQL test harness in `tests/support/postgres.rs`, which every test that
//! needs a database relies on:
//!
//! - `shared()` is one real server per test process, reachable over TCP on 127.0.0.1;
//! - `fresh_database()` hands out distinct, usable databases whose URLs tokio-postgres accepts;
//! - `execute()` returns query results and reports SQL errors as `Err`;
//! - a dedicated server can be stopped (connections fail) and started again on the same port
//!   with its data intact, and dropping it stops the server and removes its files.

mod support;

use std::path::Path;
use std::time::Duration;

use support::postgres::{self, PgServer};

#[test]
fn shared_is_one_server_per_process() {
    let a = postgres::shared();
    let b = postgres::shared();
    assert!(std::ptr::eq(a, b), "shared() must return the same server");
    assert_ne!(a.port(), 0);
    assert_eq!(
        a.superuser_url("postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", a.port())
    );
    assert_eq!(a.execute("postgres", "SHOW fsync").unwrap(), "off");
    assert_eq!(
        a.execute("postgres", "SHOW server_encoding").unwrap(),
        "UTF8"
    );
    assert_eq!(
        a.execute("postgres", "SELECT current_user").unwrap(),
        "postgres"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_databases_are_distinct_and_usable() {
    let server = postgres::shared();
    let one = server.fresh_database();
    let two = server.fresh_database();
    assert_ne!(one.name, two.name);
    assert_ne!(one.url, two.url);
    assert_eq!(one.url, server.superuser_url(&one.name));

    let a = one.connect().await;
    let b = two.connect().await;
    for (client, db) in [(&a, &one), (&b, &two)] {
        let name: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, db.name);
        client
            .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, body text NOT NULL)")
            .await
            .unwrap();
    }

    // Rows written to one database must not appear in the other.
    a.execute("INSERT INTO t VALUES ($1, $2)", &[&1_i64, &"in one"])
        .await
        .unwrap();
    a.execute("INSERT INTO t VALUES ($1, $2)", &[&2_i64, &"also in one"])
        .await
        .unwrap();
    b.execute("INSERT INTO t VALUES ($1, $2)", &[&7_i64, &"in two"])
        .await
        .unwrap();

    let rows = a
        .query("SELECT id, body FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(1, "in one".to_string()), (2, "also in one".to_string())]
    );
    let rows = b.query("SELECT id, body FROM t", &[]).await.unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(7, "in two".to_string())]);

    // The sync helper sees the same data.
    assert_eq!(
        server.execute(&one.name, "SELECT count(*) FROM t").unwrap(),
        "2"
    );
}

#[test]
fn execute_returns_results_and_errors() {
    let server = postgres::shared();
    let db = server.fresh_database();

    // DDL and DML print nothing; each row is a line, columns separated by '|'.
    let out = server
        .execute(
            &db.name,
            "CREATE TABLE kv (k text PRIMARY KEY, v int);\n\
             INSERT INTO kv VALUES ('a', 1), ('b', 2);\n\
             SELECT k, v FROM kv ORDER BY k;",
        )
        .unwrap();
    assert_eq!(out, "a|1\nb|2");
    assert_eq!(
        server.execute(&db.name, "SELECT 'x' WHERE false").unwrap(),
        ""
    );

    let err = server.execute(&db.name, "SELEC 1").unwrap_err();
    assert!(err.contains("syntax error"), "{err}");

    let err = server
        .execute(&db.name, "INSERT INTO kv VALUES ('a', 3)")
        .unwrap_err();
    assert!(err.contains("duplicate key"), "{err}");

    // ON_ERROR_STOP: nothing after the failing statement runs.
    let err = server
        .execute(
            &db.name,
            "INSERT INTO kv VALUES ('c', 3);\n\
             SELECT 1/0;\n\
             INSERT INTO kv VALUES ('d', 4);",
        )
        .unwrap_err();
    assert!(err.contains("division by zero"), "{err}");
    assert_eq!(
        server
            .execute(&db.name, "SELECT string_agg(k, ',' ORDER BY k) FROM kv")
            .unwrap(),
        "a,b,c"
    );

    let err = server.execute("no_such_database", "SELECT 1").unwrap_err();
    assert!(err.contains("no_such_database"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_server_stops_and_starts_on_the_same_port() {
    let server = PgServer::start_dedicated();
    assert_ne!(server.port(), postgres::shared().port());
    let port = server.port();
    let db = server.fresh_database();
    {
        let client = db.connect().await;
        client
            .batch_execute("CREATE TABLE survives (n int); INSERT INTO survives VALUES (42);")
            .await
            .unwrap();
    }

    server.stop();
    assert_eq!(server.port(), port);
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&db.url, tokio_postgres::NoTls),
    )
    .await
    .expect("a connection to a stopped server fails fast");
    assert!(refused.is_err(), "connecting to a stopped server must fail");
    assert!(server.execute(&db.name, "SELECT 1").is_err());

    server.start();
    assert_eq!(server.port(), port, "a restart keeps the port");
    let client = db.connect().await;
    let n: i32 = client
        .query_one("SELECT n FROM survives", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42, "a restart keeps the data");
    drop(client);

    // Stopping twice in a row works too, as an outage test may take it away again.
    server.stop();
    server.start();
    assert_eq!(
        server.execute(&db.name, "SELECT n FROM survives").unwrap(),
        "42"
    );
}

#[test]
fn dropping_a_dedicated_server_stops_it_and_removes_its_files() {
    let server = PgServer::start_dedicated();
    let data_dir = server.data_dir().to_path_buf();
    let pid: i32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    let server_dir = data_dir.parent().unwrap().to_path_buf();

    drop(server);

    assert!(!Path::new(&server_dir).exists(), "{server_dir:?} remains");
    // pg_ctl -w has waited for the postmaster to exit; allow a moment for the kernel anyway.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(pid), "postmaster {pid} still running");
}

/// Whether `pid` is running; a zombie waiting for its parent to reap it counts as gone.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
