//! A model-based property test of the log: random sequences of group commits (new records,
//! retries, rejections), reopenings, trims and lookups, checked against a plain in-memory
//! model after every step.

use std::collections::HashMap;

use kubechat_audit_pipeline::chain::{seal, ChainKey, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, RequestContext, Transport};
use kubechat_audit_pipeline::event::{validate_value, Rejection};
use kubechat_audit_pipeline::record::{write_body, StoredRecord};
use kubechat_audit_pipeline::stage::{DeadLetter, Sealed};
use proptest::prelude::*;
use uuid::Uuid;

use super::{Durability, Log};

#[derive(Clone, Debug)]
enum Op {
    /// A group commit of `n` new events (some with producer ids), `dups` retries of known
    /// ids, and `bad` rejections.
    Commit {
        n: usize,
        dups: usize,
        bad: usize,
    },
    Reopen,
    /// Trim below this fraction of the head.
    Trim(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..40, 0usize..3, 0usize..3).prop_map(|(n, dups, bad)| Op::Commit { n, dups, bad }),
        1 => Just(Op::Reopen),
        1 => (0u8..=100).prop_map(Op::Trim),
    ]
}

struct Model {
    records: Vec<StoredRecord>,
    ids: HashMap<Uuid, u64>,
    dead: usize,
    trimmed: u64,
}

fn ctx() -> RequestContext {
    RequestContext {
        transport: Transport::Tcp,
        peer: "127.0.0.1:1".parse().unwrap(),
        received_at_unix_ns: 1_700_000_000_000_000_000,
    }
}

fn new_record(key: &ChainKey, id: Uuid, seq: u64, prev: [u8; 32]) -> StoredRecord {
    let ev = validate_value(serde_json::json!({
        "event_id": id.to_string(),
        "user_id": "u",
        "event_type": "auth_event",
        "action": "login",
        "success": true,
        "timestamp": "2026-12-03T10:00:00Z"
    }))
    .unwrap();
    let ev = enrich(ev, &ctx(), || unreachable!());
    let mut body = Vec::new();
    write_body(&mut body, &ev, "chain", &key.id, seq);
    seal(key, body, prev, ctx().received_at_unix_ns, seq)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let key = ChainKey::new("k", [3; 32]);
        let mut log = Log::open(dir.path()).unwrap();
        let mut rec = log.recover(|| "chain".into()).unwrap();
        let mut model = Model { records: Vec::new(), ids: HashMap::new(), dead: 0, trimmed: 0 };
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Commit { n, dups, bad } => {
                    let mut items = Vec::new();
                    let mut prev = model.records.last().map(|r| r.checksum).unwrap_or(GENESIS);
                    for i in 0..n {
                        next_id += 1;
                        let id = Uuid::from_u64_pair(7, next_id);
                        let seq = model.records.len() as u64 + 1 + i as u64;
                        let r = new_record(&key, id, seq, prev);
                        prev = r.checksum;
                        items.push(Sealed::New { record: r, event_id: id });
                    }
                    for it in &items {
                        if let Sealed::New { record, event_id } = it {
                            model.records.push(record.clone());
                            model.ids.insert(*event_id, record.seq);
                        }
                    }
                    let known: Vec<(Uuid, u64)> = model.ids.iter().take(dups).map(|(k, v)| (*k, *v)).collect();
                    for (id, seq) in known {
                        items.push(Sealed::Duplicate { seq, event_id: id, checksum: [0; 32] });
                    }
                    for _ in 0..bad {
                        items.push(Sealed::Rejected(Box::new(DeadLetter {
                            rejection: Rejection::new("$", "bad"),
                            raw: b"x".to_vec(),
                            raw_len: 1,
                            transport: Transport::Http,
                            peer: "127.0.0.1:2".parse().unwrap(),
                            received_at_unix_ns: 0,
                        })));
                        model.dead += 1;
                    }
                    log.commit(&[&items], &mut rec.next_dead_letter_id, Durability::Flushed).unwrap();
                }
                Op::Reopen => {
                    drop(log);
                    log = Log::open(dir.path()).unwrap();
                    rec = log.recover(|| unreachable!("the chain id is kept")).unwrap();
                }
                Op::Trim(pct) => {
                    let target = model.records.len() as u64 * pct as u64 / 100;
                    while log.trim_through(target).unwrap() > 0 {}
                    // Whole chunks only: the log may keep more than asked, never less.
                    let first = log.first_seq().unwrap();
                    prop_assert!(first <= target.max(model.trimmed) + 1);
                    prop_assert!(first > model.trimmed);
                    model.trimmed = first - 1;
                }
            }
            // The log agrees with the model.
            let head = model.records.last().map(|r| (r.seq, r.checksum));
            prop_assert_eq!(log.head().unwrap(), head);
            let stored: Vec<StoredRecord> = log.records_from(1).map(|r| r.unwrap()).collect();
            prop_assert_eq!(&stored[..], &model.records[model.trimmed as usize..]);
            // The ids the checksum stage loads at start-up are those of the records held.
            let ids: Vec<(u64, Uuid)> = log.scan_ids().unwrap().into_iter().map(|(s, id, _)| (s, id)).collect();
            let mut expected: Vec<(u64, Uuid)> = model.ids.iter().map(|(id, s)| (*s, *id)).filter(|(s, _)| *s > model.trimmed).collect();
            expected.sort();
            prop_assert_eq!(ids, expected);
            prop_assert_eq!(log.dead_letters().count(), model.dead);
            if let Some(last) = model.records.last().filter(|r| r.seq > model.trimmed) {
                let got = log.record(last.seq).unwrap();
                prop_assert_eq!(got.as_ref(), Some(last));
            }
        }
    }
}
