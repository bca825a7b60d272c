//! From stored records to rows, and from rows back to the record a verifier checks.

use std::collections::HashMap;
use std::net::IpAddr;

use kubechat_audit_pipeline::event::parse_timestamp;
use kubechat_audit_pipeline::record::{RecordDoc, Source, StoredRecord};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// One `audit_events` row.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub chain_id: String,
    pub seq: i64,
    pub event_id: Uuid,
    pub session_id: Option<Uuid>,
    pub user_id: String,
    pub event_type: String,
    pub action: String,
    pub kubernetes_command: Option<String>,
    pub success: bool,
    pub timestamp: OffsetDateTime,
    pub timestamp_text: String,
    pub ip_address: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub metadata: Option<Value>,
    pub received_at: OffsetDateTime,
    pub received_at_unix_ns: i64,
    pub source_transport: String,
    pub source_peer: String,
    pub classification: String,
    pub retention_class: String,
    pub key_id: String,
    pub prev_checksum: String,
    pub checksum: String,
}

/// The columns of `audit_events`, in [`EventRow`] order.
pub const EVENT_COLUMNS: &str = "chain_id, seq, event_id, session_id, user_id, event_type, action, kubernetes_command, success, \"timestamp\", timestamp_text, ip_address, user_agent, metadata, received_at, received_at_unix_ns, source_transport, source_peer, classification, retention_class, key_id, prev_checksum, checksum";

fn ns_to_time(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .expect("an i64 of nanoseconds is in range")
}

impl EventRow {
    /// The row for a stored record.
    pub fn from_record(r: &StoredRecord) -> Result<EventRow, String> {
        let doc = RecordDoc::parse(&r.body)
            .map_err(|e| format!("seq {}: record body is not a record document: {e}", r.seq))?;
        if doc.seq != r.seq {
            return Err(format!("seq {}: record body names seq {}", r.seq, doc.seq));
        }
        let ts = parse_timestamp(&doc.timestamp).map_err(|e| format!("seq {}: {e}", r.seq))?;
        Ok(EventRow {
            chain_id: doc.chain_id,
            seq: r.seq as i64,
            event_id: doc.event_id,
            session_id: doc.session_id,
            user_id: doc.user_id,
            event_type: doc.event_type,
            action: doc.action,
            kubernetes_command: doc.kubernetes_command,
            success: doc.success,
            timestamp: ns_to_time(ts),
            timestamp_text: doc.timestamp,
            ip_address: doc.ip_address,
            user_agent: doc.user_agent,
            metadata: doc.metadata.map(Value::Object),
            received_at: ns_to_time(r.received_at_unix_ns),
            received_at_unix_ns: r.received_at_unix_ns,
            source_transport: doc.source.transport,
            source_peer: doc.source.peer,
            classification: doc.classification,
            retention_class: doc.retention_class,
            key_id: r.key_id.clone(),
            prev_checksum: hex::encode(r.prev_checksum),
            checksum: hex::encode(r.checksum),
        })
    }

    /// The column values, in [`EVENT_COLUMNS`] order, for COPY or INSERT.
    pub fn values(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 23] {
        [
            &self.chain_id,
            &self.seq,
            &self.event_id,
            &self.session_id,
            &self.user_id,
            &self.event_type,
            &self.action,
            &self.kubernetes_command,
            &self.success,
            &self.timestamp,
            &self.timestamp_text,
            &self.ip_address,
            &self.user_agent,
            &self.metadata,
            &self.received_at,
            &self.received_at_unix_ns,
            &self.source_transport,
            &self.source_peer,
            &self.classification,
            &self.retention_class,
            &self.key_id,
            &self.prev_checksum,
            &self.checksum,
        ]
    }

    /// Reads a row selected with [`EVENT_COLUMNS`].
    pub fn from_pg(row: &tokio_postgres::Row) -> EventRow {
        EventRow {
            chain_id: row.get(0),
            seq: row.get(1),
            event_id: row.get(2),
            session_id: row.get(3),
            user_id: row.get(4),
            event_type: row.get(5),
            action: row.get(6),
            kubernetes_command: row.get(7),
            success: row.get(8),
            timestamp: row.get(9),
            timestamp_text: row.get(10),
            ip_address: row.get(11),
            user_agent: row.get(12),
            metadata: row.get(13),
            received_at: row.get(14),
            received_at_unix_ns: row.get(15),
            source_transport: row.get(16),
            source_peer: row.get(17),
            classification: row.get(18),
            retention_class: row.get(19),
            key_id: row.get(20),
            prev_checksum: row.get(21),
            checksum: row.get(22),
        }
    }

    /// The stored record this row claims to be: the body rebuilt from the columns. Columns
    /// that duplicate chained ones (`timestamp`, `received_at`) must agree with them.
    pub fn to_record(&self) -> Result<StoredRecord, String> {
        let seq = self.seq;
        let unhex = |name: &str, s: &str| -> Result<[u8; 32], String> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).map_err(|e| format!("seq {seq}: {name}: {e}"))?;
            Ok(out)
        };
        let micros = |t: OffsetDateTime| t.unix_timestamp_nanos().div_euclid(1000);
        let ts = parse_timestamp(&self.timestamp_text).map_err(|e| format!("seq {seq}: {e}"))?;
        if micros(self.timestamp) != (ts as i128).div_euclid(1000) {
            return Err(format!(
                "seq {seq}: column timestamp does not match timestamp_text"
            ));
        }
        if micros(self.received_at) != (self.received_at_unix_ns as i128).div_euclid(1000) {
            return Err(format!(
                "seq {seq}: column received_at does not match received_at_unix_ns"
            ));
        }
        let metadata = match &self.metadata {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err(format!("seq {seq}: metadata is not an object")),
        };
        let doc = RecordDoc {
            action: self.action.clone(),
            chain_id: self.chain_id.clone(),
            classification: self.classification.clone(),
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            ip_address: self.ip_address,
            key_id: self.key_id.clone(),
            kubernetes_command: self.kubernetes_command.clone(),
            metadata,
            received_at: kubechat_audit_pipeline::record::format_unix_ns(self.received_at_unix_ns),
            retention_class: self.retention_class.clone(),
            seq: seq as u64,
            session_id: self.session_id,
            source: Source {
                peer: self.source_peer.clone(),
                transport: self.source_transport.clone(),
            },
            success: self.success,
            timestamp: self.timestamp_text.clone(),
            user_agent: self.user_agent.clone(),
            user_id: self.user_id.clone(),
        };
        Ok(StoredRecord {
            seq: seq as u64,
            received_at_unix_ns: self.received_at_unix_ns,
            key_id: self.key_id.clone(),
            prev_checksum: unhex("prev_checksum", &self.prev_checksum)?,
            checksum: unhex("checksum", &self.checksum)?,
            body: doc.canonical(),
        })
    }

    /// `metadata.kubernetes_context`, when it is a string.
    pub fn kubernetes_context(&self) -> Option<String> {
        self.metadata
            .as_ref()?
            .get("kubernetes_context")?
            .as_str()
            .map(str::to_owned)
    }

    /// A key that orders events by time, then chain, then seq, as text.
    fn order_key(&self) -> String {
        let ns = self.timestamp.unix_timestamp_nanos() - i64::MIN as i128;
        format!("{ns:039}/{}/{:020}", self.chain_id, self.seq)
    }
}

/// One `chat_sessions` contribution, aggregated over a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub user_id: String,
    pub kubernetes_context: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub completed: bool,
    pub event_count: i64,
    pub first_event: String,
    pub context_event: Option<String>,
}

/// Actions that end a session.
pub const SESSION_END_ACTIONS: [&str; 2] = ["logout", "session_end"];

/// Folds a batch's events into one contribution per session. The fold is associative and
/// commutative, like the SQL upsert that merges contributions, so batching cannot change
/// the result.
pub fn sessions(rows: &[EventRow]) -> Vec<SessionRow> {
    let mut by_id: HashMap<Uuid, SessionRow> = HashMap::new();
    for r in rows {
        let Some(sid) = r.session_id else { continue };
        let key = r.order_key();
        let ctx = r.kubernetes_context();
        let contrib = SessionRow {
            session_id: sid,
            user_id: r.user_id.clone(),
            context_event: ctx.as_ref().map(|_| key.clone()),
            kubernetes_context: ctx,
            created_at: r.timestamp,
            updated_at: r.timestamp,
            completed: SESSION_END_ACTIONS.contains(&r.action.as_str()),
            event_count: 1,
            first_event: key,
        };
        match by_id.get_mut(&sid) {
            None => {
                by_id.insert(sid, contrib);
            }
            Some(s) => merge(s, contrib),
        }
    }
    let mut out: Vec<SessionRow> = by_id.into_values().collect();
    // A stable order keeps row locks taken in one order across concurrent writers.
    out.sort_by_key(|s| s.session_id);
    out
}

fn merge(s: &mut SessionRow, c: SessionRow) {
    if c.first_event < s.first_event {
        s.first_event = c.first_event;
        s.user_id = c.user_id;
    }
    if c.context_event.is_some() && c.context_event > s.context_event {
        s.context_event = c.context_event;
        s.kubernetes_context = c.kubernetes_context;
    }
    s.created_at = s.created_at.min(c.created_at);
    s.updated_at = s.updated_at.max(c.updated_at);
    s.completed |= c.completed;
    s.event_count += c.event_count;
}
