//! The test vector in `schemas/chain.md` is what this crate computes.
//!
//! The chain specification promises that an external verifier can re-implement the chain from
//! `schemas/` alone, and backs that with a worked example. This test reads the example out of
//! the markdown at run time (the fenced blocks whose info string starts with `vector-`) and
//! recomputes every part of it: the record body from the producer's event, the length prefix
//! and fixed-width trailer of the MAC message, both checksums through `chain::mac`, the JSON
//! line form, and a keyed `chain::Verifier` walk over the two records. Editing the document or
//! the code without the other fails here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kubechat_audit_pipeline::canonical;
use kubechat_audit_pipeline::chain::{
    self, ChainKey, Fault, KeyRing, Verifier, GENESIS, KEY_BYTES,
};
use kubechat_audit_pipeline::enrich::{enrich, RequestContext, Transport};
use kubechat_audit_pipeline::event::validate_value;
use kubechat_audit_pipeline::record::{self, StoredRecord};
use serde_json::Value;

/// The fenced blocks of a markdown text whose info string starts with `vector-`, by info
/// string. A block's text is its lines joined by `\n`, without the final newline.
fn vector_blocks(md: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```").map(str::trim) else {
            continue;
        };
        let mut text = Vec::new();
        for inner in lines.by_ref() {
            if inner.trim_end() == "```" {
                break;
            }
            text.push(inner);
        }
        if info.starts_with("vector-") {
            let previous = blocks.insert(info.to_owned(), text.join("\n"));
            assert!(previous.is_none(), "chain.md has two `{info}` blocks");
        }
    }
    blocks
}

/// The `name = value` lines of a `vector-record-N` block.
fn fields(block: &str) -> BTreeMap<&str, &str> {
    block
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once(" = ")
                .unwrap_or_else(|| panic!("not `name = value`: {l:?}"));
            (k.trim(), v.trim())
        })
        .collect()
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .unwrap_or_else(|e| panic!("{s:?} is not 32 bytes of hex: {e}"));
    out
}

struct Vector {
    key: [u8; KEY_BYTES],
    records: Vec<VectorRecord>,
}

struct VectorRecord {
    n: usize,
    event: Value,
    fields: BTreeMap<String, String>,
    body: String,
    line: String,
}

impl VectorRecord {
    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("vector-record-{} has no `{name}`", self.n))
    }

    fn seq(&self) -> u64 {
        self.field("seq").parse().expect("seq is an integer")
    }

    fn received_at_unix_ns(&self) -> i64 {
        self.field("received_at_unix_ns")
            .parse()
            .expect("received_at_unix_ns is an integer")
    }

    fn stored(&self) -> StoredRecord {
        StoredRecord {
            seq: self.seq(),
            received_at_unix_ns: self.received_at_unix_ns(),
            key_id: self.field("key_id").to_owned(),
            prev_checksum: hex32(self.field("prev_checksum")),
            checksum: hex32(self.field("checksum")),
            body: self.body.as_bytes().to_vec(),
        }
    }
}

fn load() -> Vector {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/chain.md");
    let md = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let blocks = vector_blocks(&md);
    let block = |name: &str| -> &String {
        blocks
            .get(name)
            .unwrap_or_else(|| panic!("{} has no `{name}` block", path.display()))
    };

    let key_bytes = hex::decode(block("vector-key").trim()).expect("vector-key is hex");
    let key: [u8; KEY_BYTES] = key_bytes.try_into().expect("vector-key is 32 bytes");

    let mut records = Vec::new();
    for n in 1.. {
        if !blocks.contains_key(&format!("vector-record-{n}")) {
            break;
        }
        let event = serde_json::from_str(block(&format!("vector-event-{n}")))
            .unwrap_or_else(|e| panic!("vector-event-{n} is not JSON: {e}"));
        let fields = fields(block(&format!("vector-record-{n}")))
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        records.push(VectorRecord {
            n,
            event,
            fields,
            body: block(&format!("vector-body-{n}")).clone(),
            line: block(&format!("vector-line-{n}")).clone(),
        });
    }
    assert_eq!(records.len(), 2, "chain.md documents two records");
    Vector { key, records }
}

#[test]
fn documented_key_is_the_sequence_0_to_31() {
    let v = load();
    let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert_eq!(v.key, expected);
}

#[test]
fn bodies_are_what_the_pipeline_writes_for_the_documented_events() {
    let v = load();
    for r in &v.records {
        let transport = match r.field("transport") {
            "tcp" => Transport::Tcp,
            "http" => Transport::Http,
            other => panic!("unknown transport {other:?}"),
        };
        let ctx = RequestContext {
            transport,
            peer: r.field("peer").parse().expect("peer is ip:port"),
            received_at_unix_ns: r.received_at_unix_ns(),
        };
        let event = validate_value(r.event.clone())
            .unwrap_or_else(|e| panic!("vector-event-{} is invalid: {e}", r.n));
        let enriched = enrich(event, &ctx, || {
            panic!("vector-event-{} must carry its event_id", r.n)
        });
        let mut body = Vec::new();
        record::write_body(
            &mut body,
            &enriched,
            r.field("chain_id"),
            r.field("key_id"),
            r.seq(),
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r.body,
            "vector-body-{}",
            r.n
        );

        // The body is already canonical, and it carries the fields the MAC takes beside it.
        let doc: Value = serde_json::from_str(&r.body).expect("the body is JSON");
        assert_eq!(
            canonical::to_vec(&doc),
            r.body.as_bytes(),
            "vector-body-{} is not canonical",
            r.n
        );
        assert_eq!(doc["seq"].as_u64(), Some(r.seq()));
        assert_eq!(doc["key_id"].as_str(), Some(r.field("key_id")));
        assert_eq!(doc["chain_id"].as_str(), Some(r.field("chain_id")));
        assert_eq!(doc["received_at"].as_str(), Some(r.field("received_at")));
        assert_eq!(
            record::format_unix_ns(r.received_at_unix_ns()),
            r.field("received_at")
        );
    }
}

#[test]
fn mac_message_parts_are_as_documented() {
    let v = load();
    for r in &v.records {
        let len = u32::try_from(r.body.len()).unwrap();
        assert_eq!(
            hex::encode(len.to_be_bytes()),
            r.field("body_length_prefix"),
            "record {}",
            r.n
        );
        let mut trailer = hex32(r.field("prev_checksum")).to_vec();
        trailer.extend_from_slice(&r.received_at_unix_ns().to_be_bytes());
        trailer.extend_from_slice(&r.seq().to_be_bytes());
        assert_eq!(
            hex::encode(trailer),
            r.field("mac_trailer"),
            "record {}",
            r.n
        );
    }
}

#[test]
fn checksums_are_the_documented_ones() {
    let v = load();
    let mut prev = GENESIS;
    for r in &v.records {
        assert_eq!(r.seq(), r.n as u64, "the vector starts the chain at seq 1");
        assert_eq!(
            hex32(r.field("prev_checksum")),
            prev,
            "record {} links to the one before",
            r.n
        );
        let sum = chain::mac(
            &v.key,
            r.body.as_bytes(),
            &prev,
            r.received_at_unix_ns(),
            r.seq(),
        );
        assert_eq!(
            hex::encode(sum),
            r.field("checksum"),
            "checksum of record {}",
            r.n
        );

        let key = ChainKey::new(r.field("key_id"), v.key);
        let sealed = chain::seal(
            &key,
            r.body.as_bytes().to_vec(),
            prev,
            r.received_at_unix_ns(),
            r.seq(),
        );
        assert_eq!(
            sealed,
            r.stored(),
            "seal agrees with mac for record {}",
            r.n
        );
        prev = sum;
    }
}

#[test]
fn json_lines_are_the_documented_ones() {
    let v = load();
    for r in &v.records {
        let stored = r.stored();
        assert_eq!(
            String::from_utf8(stored.to_json_line()).unwrap(),
            r.line,
            "vector-line-{}",
            r.n
        );
        assert_eq!(
            record::record_from_json_line(r.line.as_bytes()).unwrap(),
            stored,
            "vector-line-{} reads back",
            r.n
        );
    }
}

#[test]
fn verifier_accepts_the_vector_and_names_a_change() {
    let v = load();
    let key_id = v.records[0].field("key_id");
    let ring = KeyRing::new([ChainKey::new(key_id, v.key)]);
    let stored: Vec<StoredRecord> = v.records.iter().map(VectorRecord::stored).collect();

    let mut verifier = Verifier::new(Some(&ring));
    for r in stored.clone() {
        verifier.push(r).expect("the vector verifies");
    }
    let head = verifier.finish().expect("the vector verifies");
    assert_eq!(head.count, 2);
    assert_eq!(head.seq, 2);
    assert_eq!(hex::encode(head.checksum), v.records[1].field("checksum"));

    // One flipped success flag in record 2 is a change at seq 2.
    let mut changed = stored.clone();
    let body = String::from_utf8(changed[1].body.clone()).unwrap();
    changed[1].body = body
        .replace("\"success\":false", "\"success\":true")
        .into_bytes();
    assert_ne!(changed[1].body, stored[1].body);
    let mut verifier = Verifier::new(Some(&ring));
    let mut result = Ok(());
    for r in changed {
        result = result.and(verifier.push(r));
    }
    let result = result.and_then(|()| verifier.finish().map(|_| ()));
    assert_eq!(result, Err(Fault::Changed { seq: 2 }));

    // A verifier without the key id names it.
    let other = KeyRing::new([ChainKey::new("another-key", v.key)]);
    let mut verifier = Verifier::new(Some(&other));
    let result = stored
        .into_iter()
        .try_for_each(|r| verifier.push(r))
        .and_then(|()| verifier.finish().map(|_| ()));
    assert_eq!(
        result,
        Err(Fault::UnknownKey {
            seq: 1,
            key_id: key_id.to_owned()
        })
    );
}
