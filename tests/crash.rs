//! Crash safety of the log: `serve` takes a continuous stream from several connections and
//! is killed with SIGKILL at seeded random moments, many times, restarting on the same data
//! directory each time. After every kill: each acknowledged event is in the log exactly once
//! with the content that was sent and the checksum that was acknowledged, `verify` passes
//! (so `seq` has no gaps and the chain is intact), retries of unacknowledged events are
//! either stored once or answered with their original `seq`, and sled never wrote a blob
//! file (blob files are not fsynced by sled 0.34).
//!
//! Set CRASH_SEED to replay a run and CRASH_ROUNDS to change the number of kills.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubechat_audit::log::Log;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::server::*;

type Acks = Arc<Mutex<HashMap<String, (u64, String)>>>;

/// Streams events until the connection dies; records every acknowledgement.
fn producer(
    addr: std::net::SocketAddr,
    salt: u64,
    start: u64,
    acks: Acks,
    sent: Arc<Mutex<Vec<Value>>>,
) {
    let mut p = TcpProducer::connect(addr);
    let window = 64u64;
    let mut in_flight = std::collections::VecDeque::new();
    let mut n = start;
    loop {
        while (in_flight.len() as u64) < window {
            let ev = event(salt, n);
            n += 1;
            sent.lock().unwrap().push(ev.clone());
            let mut line = serde_json::to_vec(&ev).unwrap();
            line.push(b'\n');
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.send_raw(&line))).is_err()
            {
                return;
            }
            in_flight.push_back(ev["event_id"].as_str().unwrap().to_owned());
        }
        let Some(a) = p.answer() else { return };
        let id = in_flight.pop_front().unwrap();
        let Some(seq) = a["seq"].as_u64() else {
            panic!("valid event {id} refused: {a}");
        };
        assert_eq!(a["event_id"], id.as_str(), "answers come in order");
        acks.lock()
            .unwrap()
            .insert(id, (seq, a["checksum"].as_str().unwrap().to_owned()));
    }
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("crash test seed: {seed} (rerun with CRASH_SEED={seed})");
    let result = std::panic::catch_unwind(|| run(seed, rounds));
    if let Err(e) = result {
        eprintln!("crash test FAILED with seed {seed}");
        std::panic::resume_unwind(e);
    }
}

fn run(seed: u64, rounds: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acks: Acks = Arc::new(Mutex::new(HashMap::new()));
    let sent: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let mut unacked_retries: Vec<Value> = Vec::new();

    for round in 0..rounds {
        let server = Server::start(&data);
        // Retry a few events that were sent but never acknowledged: they must be stored once.
        if !unacked_retries.is_empty() {
            let mut p = TcpProducer::connect(server.tcp);
            for ev in &unacked_retries {
                p.send(ev);
            }
            for ev in &unacked_retries {
                let a = p.answer().expect("answer to a retry");
                let id = ev["event_id"].as_str().unwrap().to_owned();
                let seq = a["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("retry refused: {a}"));
                let mut acks = acks.lock().unwrap();
                if let Some((old, _)) = acks.get(&id) {
                    assert_eq!(*old, seq, "a retry is answered with its original seq");
                }
                acks.insert(id, (seq, a["checksum"].as_str().unwrap().to_owned()));
            }
        }
        let producers: Vec<_> = (0..3u64)
            .map(|c| {
                let (acks, sent, addr) = (acks.clone(), sent.clone(), server.tcp);
                std::thread::spawn(move || producer(addr, 1000 + round * 10 + c, 0, acks, sent))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(50..700)));
        server.kill9();
        for p in producers {
            if let Err(e) = p.join() {
                std::panic::resume_unwind(e);
            }
        }

        // The log, read directly: every acknowledged event exactly once, as sent.
        let (ok, text) = verify(&data);
        assert!(ok, "round {round}: verify failed after SIGKILL: {text}");
        let log = Log::open_existing(&data.join("log")).unwrap();
        let mut by_id: HashMap<String, (u64, String, Value)> = HashMap::new();
        for (expected_seq, r) in (1..).zip(log.records_from(1)) {
            let r = r.unwrap();
            assert_eq!(r.seq, expected_seq, "round {round}: no gaps");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let id = body["event_id"].as_str().unwrap().to_owned();
            assert!(
                by_id
                    .insert(id.clone(), (r.seq, r.checksum_hex(), body))
                    .is_none(),
                "round {round}: {id} stored twice"
            );
        }
        drop(log);
        let sent_by_id: HashMap<String, Value> = sent
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e.clone()))
            .collect();
        let acks_now = acks.lock().unwrap().clone();
        for (id, (seq, checksum)) in &acks_now {
            let (s, c, body) = by_id.get(id).unwrap_or_else(|| {
                panic!("round {round}: acknowledged {id} (seq {seq}) is not in the log")
            });
            assert_eq!(
                (s, c),
                (seq, checksum),
                "round {round}: {id} stored as acknowledged"
            );
            let orig = &sent_by_id[id];
            for k in [
                "user_id",
                "action",
                "kubernetes_command",
                "success",
                "timestamp",
                "session_id",
                "metadata",
                "event_type",
            ] {
                assert_eq!(body[k], orig[k], "round {round}: {id} field {k} as sent");
            }
        }
        // Nothing appears that was not sent.
        let sent_ids: HashSet<&String> = sent_by_id.keys().collect();
        assert!(
            by_id.keys().all(|id| sent_ids.contains(id)),
            "round {round}: the log holds an event nobody sent"
        );
        let blobs = std::fs::read_dir(data.join("log/blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "sled wrote blob files, which it does not fsync");

        unacked_retries = sent_by_id
            .iter()
            .filter(|(id, _)| !acks_now.contains_key(*id))
            .take(20)
            .map(|(_, e)| e.clone())
            .collect();
        eprintln!(
            "round {round}: {} acknowledged so far, {} records in the log",
            acks_now.len(),
            by_id.len()
        );
    }
    assert!(acks.lock().unwrap().len() > 100, "the stream made progress");
}
