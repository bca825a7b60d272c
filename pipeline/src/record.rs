//! The stored record: what the log keeps for every accepted event, and what archives hold.
//!
//! A record is the canonical JSON `body` the chain hashes plus the fields the chain needs
//! outside it. In the log, records are grouped into batches, one sled value per group
//! commit; the byte layout (bincode 2, big-endian, fixed-width integers) is:
//!
//! ```text
//! RecordBatch  := version:u8 (=1) count:u64 Record{count}
//! Record       := seq:u64 received_at_unix_ns:i64 key_id:String
//!                 prev_checksum:[u8;32] checksum:[u8;32] body:Bytes
//! String/Bytes := len:u64 byte{len}
//! ```
//!
//! `body` is RFC 8785 canonical JSON of the record document: the event's fields plus
//! `event_id`, `seq`, `chain_id`, `key_id`, `received_at`, `source`, `classification` and
//! `retention_class`. The JSON line form (archives, `dead-letters`, exports) is that document
//! with `prev_checksum` and `checksum` added in hex. `schemas/record.md` is the reference.

use bincode::{Decode, Encode};
use serde_json::Value;
use time::OffsetDateTime;

use crate::canonical::{write_string, write_value};
use crate::enrich::EnrichedEvent;

/// The current batch format version.
pub const BATCH_VERSION: u8 = 1;

/// One sealed event.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StoredRecord {
    pub seq: u64,
    pub received_at_unix_ns: i64,
    pub key_id: String,
    pub prev_checksum: [u8; 32],
    pub checksum: [u8; 32],
    pub body: Vec<u8>,
}

/// Errors reading stored bytes back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record batch is malformed: {0}")]
    Malformed(String),
    #[error("record batch has version {0}, this build reads version {BATCH_VERSION}")]
    Version(u8),
    #[error("record batch has {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
}

/// Encodes the records of one group commit.
pub fn encode_batch(records: &[StoredRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.body.len() + 120).sum::<usize>() + 9);
    out.push(BATCH_VERSION);
    bincode::encode_into_std_write(records, &mut out, config())
        .expect("writing to a Vec cannot fail");
    out
}

/// Decodes one batch value.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<StoredRecord>, DecodeError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Malformed("empty value".into()))?;
    if version != BATCH_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (records, used): (Vec<StoredRecord>, usize) = bincode::decode_from_slice(rest, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(DecodeError::Trailing(rest.len() - used));
    }
    Ok(records)
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nine fractional digits.
pub fn format_unix_ns(ns: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .expect("an i64 of nanoseconds is always in range");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Writes the canonical body of an enriched event at `seq`.
///
/// The members are written directly in RFC 8785 order (all names are ASCII, so byte order
/// is UTF-16 order); `body_value` builds the same document as a [`Value`] and a test holds
/// the two equal.
pub fn write_body(out: &mut Vec<u8>, ev: &EnrichedEvent, chain_id: &str, key_id: &str, seq: u64) {
    let e = &ev.event;
    let mut first = true;
    let mut name = |out: &mut Vec<u8>, n: &str| {
        out.push(if first { b'{' } else { b',' });
        first = false;
        write_string(out, n);
        out.push(b':');
    };
    name(out, "action");
    write_string(out, &e.action);
    name(out, "chain_id");
    write_string(out, chain_id);
    name(out, "classification");
    write_string(out, ev.classification.as_str());
    name(out, "event_id");
    write_string(out, &ev.event_id.hyphenated().to_string());
    name(out, "event_type");
    write_string(out, e.event_type.as_str());
    if let Some(ip) = &e.ip_address {
        name(out, "ip_address");
        write_string(out, &ip.to_string());
    }
    name(out, "key_id");
    write_string(out, key_id);
    if let Some(cmd) = &e.kubernetes_command {
        name(out, "kubernetes_command");
        write_string(out, cmd);
    }
    if let Some(m) = &e.metadata {
        name(out, "metadata");
        write_value(out, &Value::Object(m.clone()));
    }
    name(out, "received_at");
    write_string(out, &format_unix_ns(ev.received_at_unix_ns));
    name(out, "retention_class");
    write_string(out, ev.retention_class.as_str());
    name(out, "seq");
    out.extend_from_slice(itoa(seq).as_bytes());
    if let Some(sid) = &e.session_id {
        name(out, "session_id");
        write_string(out, &sid.hyphenated().to_string());
    }
    name(out, "source");
    out.extend_from_slice(b"{\"peer\":");
    write_string(out, &ev.peer.to_string());
    out.extend_from_slice(b",\"transport\":");
    write_string(out, ev.transport.as_str());
    out.push(b'}');
    name(out, "success");
    out.extend_from_slice(if e.success { b"true" } else { b"false" });
    name(out, "timestamp");
    write_string(out, &e.timestamp);
    if let Some(ua) = &e.user_agent {
        name(out, "user_agent");
        write_string(out, ua);
    }
    name(out, "user_id");
    write_string(out, &e.user_id);
    out.push(b'}');
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// The record document as a JSON value (the slow, obvious form of [`write_body`]).
pub fn body_value(ev: &EnrichedEvent, chain_id: &str, key_id: &str, seq: u64) -> Value {
    let e = &ev.event;
    let mut m = serde_json::Map::new();
    m.insert("action".into(), e.action.clone().into());
    m.insert("chain_id".into(), chain_id.into());
    m.insert("classification".into(), ev.classification.as_str().into());
    m.insert("event_id".into(), ev.event_id.to_string().into());
    m.insert("event_type".into(), e.event_type.as_str().into());
    if let Some(ip) = &e.ip_address {
        m.insert("ip_address".into(), ip.to_string().into());
    }
    m.insert("key_id".into(), key_id.into());
    if let Some(c) = &e.kubernetes_command {
        m.insert("kubernetes_command".into(), c.clone().into());
    }
    if let Some(md) = &e.metadata {
        m.insert("metadata".into(), Value::Object(md.clone()));
    }
    m.insert(
        "received_at".into(),
        format_unix_ns(ev.received_at_unix_ns).into(),
    );
    m.insert("retention_class".into(), ev.retention_class.as_str().into());
    m.insert("seq".into(), seq.into());
    if let Some(s) = &e.session_id {
        m.insert("session_id".into(), s.to_string().into());
    }
    m.insert(
        "source".into(),
        serde_json::json!({"peer": ev.peer.to_string(), "transport": ev.transport.as_str()}),
    );
    m.insert("success".into(), e.success.into());
    m.insert("timestamp".into(), e.timestamp.clone().into());
    if let Some(ua) = &e.user_agent {
        m.insert("user_agent".into(), ua.clone().into());
    }
    m.insert("user_id".into(), e.user_id.clone().into());
    Value::Object(m)
}

/// The record document with typed fields: what projections read from a body, and what a
/// verifier rebuilds from a projection's columns.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordDoc {
    pub action: String,
    pub chain_id: String,
    pub classification: String,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<std::net::IpAddr>,
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub received_at: String,
    pub retention_class: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<uuid::Uuid>,
    pub source: Source,
    pub success: bool,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub user_id: String,
}

/// Where an event came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub peer: String,
    pub transport: String,
}

impl RecordDoc {
    pub fn parse(body: &[u8]) -> Result<RecordDoc, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// The canonical body this document hashes to.
    pub fn canonical(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("a record document is plain JSON");
        crate::canonical::to_vec(&v)
    }
}

impl StoredRecord {
    /// The JSON line form: the body with `prev_checksum` and `checksum` added (no newline).
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 160);
        self.write_json_line(&mut out);
        out
    }

    /// Appends the JSON line form to `out` (no newline).
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        debug_assert_eq!(self.body.last(), Some(&b'}'));
        out.extend_from_slice(&self.body[..self.body.len() - 1]);
        out.extend_from_slice(b",\"prev_checksum\":\"");
        out.extend_from_slice(hex::encode(self.prev_checksum).as_bytes());
        out.extend_from_slice(b"\",\"checksum\":\"");
        out.extend_from_slice(hex::encode(self.checksum).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// Parses the body (for readers that need fields, such as projections).
    pub fn body_json(&self) -> Result<serde_json::Map<String, Value>, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn checksum_hex(&self) -> String {
        hex::encode(self.checksum)
    }
}

/// A JSON line read back into a record: the inverse of [`StoredRecord::to_json_line`], for
/// archive readers.
///
/// A line exactly as [`StoredRecord::write_json_line`] wrote it is split without
/// re-canonicalizing (its body is the bytes before the checksum members); any other faithful
/// JSON form of a record is parsed and its body re-canonicalized. Either way a changed body
/// fails the checksum.
pub fn record_from_json_line(line: &[u8]) -> Result<StoredRecord, String> {
    fast_record(line).map_or_else(|| slow_record(line), Ok)
}

/// `,"prev_checksum":"<64 hex>","checksum":"<64 hex>"}`
const SUFFIX_LEN: usize = 18 + 64 + 14 + 64 + 2;

fn fast_record(line: &[u8]) -> Option<StoredRecord> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        seq: u64,
        #[serde(borrow)]
        received_at: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        key_id: std::borrow::Cow<'a, str>,
    }
    let n = line.len();
    if n < SUFFIX_LEN + 2 {
        return None;
    }
    let suffix = &line[n - SUFFIX_LEN..];
    if !suffix.starts_with(b",\"prev_checksum\":\"")
        || &suffix[82..96] != b"\",\"checksum\":\""
        || !suffix.ends_with(b"\"}")
    {
        return None;
    }
    let prev_checksum = hex32(&suffix[18..82])?;
    let checksum = hex32(&suffix[96..160])?;
    let mut body = Vec::with_capacity(n - SUFFIX_LEN + 1);
    body.extend_from_slice(&line[..n - SUFFIX_LEN]);
    body.push(b'}');
    let head: Head = serde_json::from_slice(&body).ok()?;
    let received_at_unix_ns = crate::event::parse_timestamp(&head.received_at).ok()?;
    Some(StoredRecord {
        seq: head.seq,
        received_at_unix_ns,
        key_id: head.key_id.into_owned(),
        prev_checksum,
        checksum,
        body,
    })
}

/// Decodes 64 lower- or upper-case hex digits (the hot path of archive verification).
fn hex32(text: &[u8]) -> Option<[u8; 32]> {
    const fn table() -> [u8; 256] {
        let mut t = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    }
    const HEX: [u8; 256] = table();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        if (hi | lo) & 0xf0 != 0 {
            return None;
        }
        *o = hi << 4 | lo;
    }
    Some(out)
}

fn slow_record(line: &[u8]) -> Result<StoredRecord, String> {
    let mut doc: serde_json::Map<String, Value> =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut take_hex = |name: &str| -> Result<[u8; 32], String> {
        let v = doc.remove(name).ok_or_else(|| format!("missing {name}"))?;
        let s = v
            .as_str()
            .ok_or_else(|| format!("{name} is not a string"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("{name}: {e}"))?;
        Ok(out)
    };
    let checksum = take_hex("checksum")?;
    let prev_checksum = take_hex("prev_checksum")?;
    let seq = doc
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("missing or invalid seq")?;
    let key_id = doc
        .get("key_id")
        .and_then(Value::as_str)
        .ok_or("missing key_id")?
        .to_owned();
    let received = doc
        .get("received_at")
        .and_then(Value::as_str)
        .ok_or("missing received_at")?;
    let received_at_unix_ns = crate::event::parse_timestamp(received)?;
    let mut body = Vec::with_capacity(line.len());
    write_value(&mut body, &Value::Object(doc));
    Ok(StoredRecord {
        seq,
        received_at_unix_ns,
        key_id,
        prev_checksum,
        checksum,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical;
    use crate::enrich::{enrich, RequestContext, Transport};
    use crate::event::validate_value;
    use serde_json::json;

    pub(crate) fn sample(extra: Value) -> EnrichedEvent {
        let mut v = json!({
            "event_id": "0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e",
            "session_id": "4f1e2d3c-b4a5-4697-8877-665544332211",
            "user_id": "alice",
            "event_type": "command_execution",
            "action": "kubectl.delete",
            "kubernetes_command": "kubectl delete pod web-1 -n \"prod\"",
            "success": false,
            "timestamp": "2026-12-03T10:00:00+01:00",
            "ip_address": "2001:DB8::1",
            "user_agent": "kubechat/1.2",
            "metadata": {"z": [1.5, 2, "x\u{1}"], "a": {"k": null}}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        let ctx = RequestContext {
            transport: Transport::Tcp,
            peer: "127.0.0.1:5000".parse().unwrap(),
            received_at_unix_ns: 1_796_292_000_123_456_789,
        };
        enrich(validate_value(v).unwrap(), &ctx, || unreachable!())
    }

    #[test]
    fn direct_body_equals_canonical_value() {
        for extra in [json!({}), json!({"metadata": {"ü": "€", "a": [[[]]]}})] {
            let ev = sample(extra);
            let mut direct = Vec::new();
            write_body(&mut direct, &ev, "chain-a", "k1", 42);
            let slow = canonical::to_vec(&body_value(&ev, "chain-a", "k1", 42));
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }

    #[test]
    fn typed_document_round_trips_to_the_same_canonical_body() {
        for extra in [
            json!({}),
            json!({"metadata": {"b": [1e15, -0.5]}, "ip_address": "::ffff:1.2.3.4"}),
        ] {
            let mut body = Vec::new();
            write_body(&mut body, &sample(extra), "c", "k", 9);
            let doc = RecordDoc::parse(&body).unwrap();
            assert_eq!(
                String::from_utf8(doc.canonical()).unwrap(),
                String::from_utf8(body).unwrap()
            );
        }
    }

    #[test]
    fn batches_round_trip_and_reject_trailing_bytes() {
        let mut body = Vec::new();
        write_body(&mut body, &sample(json!({})), "c", "k", 7);
        let rec = StoredRecord {
            seq: 7,
            received_at_unix_ns: -5,
            key_id: "k".into(),
            prev_checksum: [1; 32],
            checksum: [2; 32],
            body,
        };
        let bytes = encode_batch(&[rec.clone(), rec.clone()]);
        assert_eq!(
            decode_batch(&bytes).unwrap(),
            vec![rec.clone(), rec.clone()]
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_batch(&longer),
            Err(DecodeError::Trailing(1))
        ));
        // The layout is the documented one: version, then a u64 big-endian count.
        assert_eq!(&bytes[..9], &[1, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&bytes[9..17], &7u64.to_be_bytes());
    }

    #[test]
    fn json_line_round_trips() {
        let mut body = Vec::new();
        write_body(&mut body, &sample(json!({})), "c", "k", 7);
        let rec = StoredRecord {
            seq: 7,
            received_at_unix_ns: 1_796_292_000_123_456_789,
            key_id: "k".into(),
            prev_checksum: [3; 32],
            checksum: [4; 32],
            body,
        };
        assert_eq!(record_from_json_line(&rec.to_json_line()).unwrap(), rec);
        // Another faithful form (members reordered, spaces) reads back to the same record.
        let v: Value = serde_json::from_slice(&rec.to_json_line()).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert!(fast_record(&pretty).is_none());
        assert_eq!(record_from_json_line(&pretty).unwrap(), rec);
    }

    #[test]
    fn hex32_decodes_both_cases_and_refuses_anything_else() {
        let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        let lower = hex::encode(&bytes);
        assert_eq!(hex32(lower.as_bytes()).unwrap().to_vec(), bytes);
        assert_eq!(
            hex32(lower.to_uppercase().as_bytes()).unwrap().to_vec(),
            bytes
        );
        let mut bad = lower.into_bytes();
        bad[7] = b'g';
        assert!(hex32(&bad).is_none());
        assert!(hex32(&bad[..62]).is_none());
    }

    #[test]
    fn formats_received_at_with_nanoseconds() {
        assert_eq!(
            format_unix_ns(1_796_292_000_123_456_789),
            "2026-12-03T10:00:00.123456789Z"
        );
        assert_eq!(format_unix_ns(0), "1970-01-01T00:00:00.000000000Z");
    }
}
