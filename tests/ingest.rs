//! End to end through the real binary: every valid event sent over TCP or HTTP is
//! acknowledged once durable with consecutive `seq`s; every bad input gets a specific error
//! naming its field, is kept in the dead letters with its reason, and leaves the valid
//! events of the same request untouched; retries are answered with the original `seq`, also
//! across restarts; the chain continues exactly after a restart.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::server::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an acknowledgement: {v}"))
}

#[test]
fn tcp_and_http_acknowledge_every_valid_event_in_order() {
    let dir = tmp();
    let data = dir.path().join("data");
    let server = Server::start(&data);

    let mut tcp = TcpProducer::connect(server.tcp);
    // Pipelined: everything first, then the answers.
    for n in 0..200 {
        tcp.send(&event(1, n));
    }
    let seqs: Vec<u64> = (0..200).map(|_| seq(&tcp.answer().unwrap())).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());

    let (status, one) = post_events(
        server.http,
        &serde_json::to_vec(&event(2, 0)).unwrap(),
        "application/json",
    );
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["accepted"], 1);
    assert_eq!(seq(&one["results"][0]), 201);

    let arr: Vec<Value> = (1..=5).map(|n| event(2, n)).collect();
    let (status, many) = post_events(
        server.http,
        &serde_json::to_vec(&arr).unwrap(),
        "application/json",
    );
    assert_eq!(status, 200);
    let got: Vec<u64> = many["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(seq)
        .collect();
    assert_eq!(got, vec![202, 203, 204, 205, 206]);

    let nd: String = (6..=8).map(|n| event(2, n).to_string() + "\n").collect();
    let (status, nd) = post_events(server.http, nd.as_bytes(), "application/x-ndjson");
    assert_eq!(status, 200);
    assert_eq!(nd["accepted"], 3);

    // The acknowledgement carries the checksum of the stored record.
    let ack = &nd["results"][2];
    assert_eq!(ack["checksum"].as_str().unwrap().len(), 64);
    assert_eq!(ack["event_id"], event(2, 8)["event_id"]);

    let metrics = server.metrics_text();
    for name in [
        "kubechat_audit_events_received_total",
        "kubechat_audit_events_accepted_total{transport=\"tcp\"} 200",
        "kubechat_audit_events_accepted_total{transport=\"http\"} 9",
        "kubechat_audit_log_flush_seconds_bucket",
        "kubechat_audit_log_group_commit_events_bucket",
        "kubechat_audit_chain_head_seq 209",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    // sled allows one process per directory: verify says so instead of failing obscurely.
    let (ok, text) = verify(&data);
    assert!(!ok && text.contains("in use by another process"), "{text}");
    assert!(server.terminate().success());
    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
    assert!(text.contains("209 events, head seq 209"), "{text}");
}

/// (label, input line, expected field)
fn bad_inputs() -> Vec<(&'static str, String, &'static str)> {
    let base = event(9, 0);
    let with = |k: &str, v: Value| {
        let mut e = base.clone();
        e[k] = v;
        e.to_string()
    };
    let without = |k: &str| {
        let mut e = base.clone();
        e.as_object_mut().unwrap().remove(k);
        e.to_string()
    };
    vec![
        ("not json", "{\"user_id\": ".into(), "$"),
        ("array root", "[1,2]".into(), "$"),
        ("unknown field", with("colour", json!("red")), "colour"),
        ("missing user_id", without("user_id"), "user_id"),
        ("empty action", with("action", json!("")), "action"),
        (
            "success as string",
            with("success", json!("true")),
            "success",
        ),
        (
            "bad event_type",
            with("event_type", json!("login")),
            "event_type",
        ),
        (
            "bad timestamp",
            with("timestamp", json!("yesterday")),
            "timestamp",
        ),
        (
            "timestamp without offset",
            with("timestamp", json!("2026-12-03T10:00:00")),
            "timestamp",
        ),
        ("bad uuid", with("event_id", json!("1234")), "event_id"),
        (
            "bad ip",
            with("ip_address", json!("999.1.1.1")),
            "ip_address",
        ),
        (
            "long user_id",
            with("user_id", json!("u".repeat(257))),
            "user_id",
        ),
        (
            "metadata not object",
            with("metadata", json!([1])),
            "metadata",
        ),
        (
            "huge number",
            with("metadata", json!({"n": 1e300})),
            "metadata.n",
        ),
    ]
}

#[test]
fn bad_input_gets_a_specific_error_and_is_kept_without_hurting_its_neighbours() {
    let dir = tmp();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let cases = bad_inputs();

    // TCP: each bad line between two good ones.
    let mut tcp = TcpProducer::connect(server.tcp);
    let mut n = 0;
    for (_, line, _) in &cases {
        tcp.send(&event(3, n));
        tcp.send_raw(format!("{line}\n").as_bytes());
        n += 1;
    }
    tcp.send(&event(3, n));
    for (label, _, field) in &cases {
        let good = tcp.answer().unwrap();
        assert!(
            good.get("seq").is_some(),
            "{label}: neighbour not accepted: {good}"
        );
        let bad = tcp.answer().unwrap();
        assert_eq!(bad["error"]["field"], *field, "{label}: {bad}");
        assert!(!bad["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(tcp.answer().unwrap().get("seq").is_some());

    // HTTP: the same cases in one NDJSON body with good events around them.
    let mut body = String::new();
    for (i, (_, line, _)) in cases.iter().enumerate() {
        body += &(event(4, i as u64).to_string() + "\n" + line + "\n");
    }
    let (status, v) = post_events(server.http, body.as_bytes(), "application/x-ndjson");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], cases.len());
    assert_eq!(v["rejected"], cases.len());
    for (i, (label, _, field)) in cases.iter().enumerate() {
        assert!(v["results"][2 * i].get("seq").is_some(), "{label}");
        assert_eq!(v["results"][2 * i + 1]["error"]["field"], *field, "{label}");
    }

    // A body that is not JSON at all, one that is empty, and one with only bad events.
    let (status, v) = post_events(server.http, b"this is not json", "application/json");
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );
    let (status, _) = post_events(server.http, b"", "application/json");
    assert_eq!(status, 400);
    let (status, v) = post_events(server.http, b"[{\"user_id\": 1}]", "application/json");
    assert_eq!(status, 422, "{v}");

    // An overlong TCP line is refused without buffering it, and the connection goes on.
    let mut tcp = TcpProducer::connect(server.tcp);
    let long = format!("{{\"user_id\":\"{}\"}}\n", "x".repeat(70_000));
    tcp.send_raw(long.as_bytes());
    tcp.send(&event(5, 0));
    let a = tcp.answer().unwrap();
    assert_eq!(a["error"]["field"], "$");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit"),
        "{a}"
    );
    assert!(tcp.answer().unwrap().get("seq").is_some());

    assert!(server.terminate().success());
    let dead = dead_letters(&data);
    // TCP cases, HTTP cases, the non-JSON body, the empty body, the all-bad body, the long line.
    assert_eq!(dead.len(), 2 * cases.len() + 4, "{dead:#?}");
    for (label, line, field) in &cases {
        let kept = dead
            .iter()
            .filter(|d| d["raw"] == line.as_str() && d["field"] == *field)
            .count();
        assert_eq!(
            kept, 2,
            "{label}: each rejection is kept with its input and reason"
        );
    }
    let long_dead = dead
        .iter()
        .find(|d| d["raw_truncated"] == true)
        .expect("the long line is kept");
    assert_eq!(long_dead["raw_len"], 70_000 + 14);
    assert!(dead.iter().all(|d| d["received_at"].is_string()
        && d["peer"].is_string()
        && d["transport"].is_string()));
    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
}

#[test]
fn oversized_bodies_are_413() {
    let dir = tmp();
    let server = Server::start(&dir.path().join("data"));
    let big = vec![b' '; 17 * 1024 * 1024];
    let (status, _, body) = http_request(
        server.http,
        "POST",
        "/v1/events",
        Some(&big),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(status, 413, "{body}");
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    let (status, v) = post_events(
        server.http,
        &serde_json::to_vec(&many).unwrap(),
        "application/json",
    );
    assert_eq!(status, 413);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10001 events"),
        "{v}"
    );
    let (status, _, _) = http_request(server.http, "GET", "/healthz", None, &[]);
    assert_eq!(status, 200);
    let (status, _, _) = http_request(server.http, "GET", "/readyz", None, &[]);
    assert_eq!(status, 200);
}

#[test]
fn retries_get_their_original_seq_also_after_a_restart() {
    let dir = tmp();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let mut tcp = TcpProducer::connect(server.tcp);
    // The same event twice in one pipelined burst, and again later.
    tcp.send(&event(6, 1));
    tcp.send(&event(6, 1));
    tcp.send(&event(6, 2));
    let a = tcp.answer().unwrap();
    let b = tcp.answer().unwrap();
    let c = tcp.answer().unwrap();
    assert_eq!(seq(&a), 1);
    assert_eq!(seq(&b), 1);
    assert_eq!(b["duplicate"], true);
    assert_eq!(a["checksum"], b["checksum"]);
    assert_eq!(seq(&c), 2);
    let (_, v) = post_events(
        server.http,
        &serde_json::to_vec(&event(6, 2)).unwrap(),
        "application/json",
    );
    assert_eq!(v["results"][0]["seq"], 2);
    assert!(server.terminate().success());

    let server = Server::start(&data);
    let mut tcp = TcpProducer::connect(server.tcp);
    tcp.send(&event(6, 1));
    tcp.send(&event(6, 3));
    let again = tcp.answer().unwrap();
    assert_eq!(seq(&again), 1);
    assert_eq!(again["checksum"], a["checksum"]);
    assert_eq!(
        seq(&tcp.answer().unwrap()),
        3,
        "the chain continues after the restart"
    );
    assert!(server.terminate().success());
    let (ok, text) = verify(&data);
    assert!(ok && text.contains("3 events"), "{text}");
}

#[test]
fn the_chain_continues_exactly_across_restarts() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut seen = HashSet::new();
    for round in 0..3u64 {
        let server = Server::start(&data);
        let mut tcp = TcpProducer::connect(server.tcp);
        for n in 0..50 {
            tcp.send(&event(10 + round, n));
        }
        for _ in 0..50 {
            assert!(seen.insert(seq(&tcp.answer().unwrap())));
        }
        let chain = server.chain_id.clone();
        assert!(server.terminate().success());
        let (ok, text) = verify(&data);
        assert!(ok, "round {round}: {text}");
        let server = Server::start(&data);
        assert_eq!(server.chain_id, chain, "the chain id is kept");
        server.kill9();
    }
    assert_eq!(seen, (1..=150).collect());
}

#[test]
fn a_full_pipeline_answers_http_503_with_retry_after() {
    let dir = tmp();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\ninflight_requests_max = 1\n").unwrap();
    let server = Server::start_with(
        &data,
        &["--config", cfg.to_str().unwrap()],
        &[("KUBECHAT_AUDIT_FAILPOINTS", "commit_delay_ms=1500")],
    );
    let addr = server.http;
    let slow = std::thread::spawn(move || {
        post_events(
            addr,
            &serde_json::to_vec(&event(7, 0)).unwrap(),
            "application/json",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = http_request(
        server.http,
        "POST",
        "/v1/events",
        Some(&serde_json::to_vec(&event(7, 1)).unwrap()),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
        "{headers:?}"
    );
    let (status, v) = slow.join().unwrap();
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_failed_commit_is_fatal_and_nothing_unflushed_is_acknowledged() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut server = Server::start_with(
        &data,
        &[],
        &[("KUBECHAT_AUDIT_FAILPOINTS", "commit_error_after=3")],
    );
    let mut tcp = TcpProducer::connect(server.tcp);
    let mut acked = Vec::new();
    let mut refused = 0;
    for n in 0..10 {
        tcp.send(&event(8, n));
        match tcp.answer() {
            Some(a) if a.get("seq").is_some() => acked.push(seq(&a)),
            Some(a) => {
                assert!(
                    a["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("not stored"),
                    "{a}"
                );
                refused += 1;
                break;
            }
            None => break,
        }
    }
    assert_eq!(acked, vec![1, 2, 3]);
    assert_eq!(refused, 1);
    let status = server
        .wait(Duration::from_secs(30))
        .expect("serve exits after a failed commit");
    assert_eq!(status.code(), Some(2), "{}", server.stderr_text());
    assert!(server.stderr_text().contains("injected by failpoint"));
    let (ok, text) = verify(&data);
    assert!(ok && text.contains("3 events"), "{text}");
    // After a restart without the fault, the chain goes on from seq 4.
    let server = Server::start(&data);
    let mut tcp = TcpProducer::connect(server.tcp);
    tcp.send(&event(8, 3));
    assert_eq!(seq(&tcp.answer().unwrap()), 4);
    assert!(server.terminate().success());
}
