//! What the pipeline adds to a valid event before it is sealed.
//!
//! The compliance classification and the retention class follow the customer's "Data
//! Retention Policies": security events are kept 7 years, compliance events 10 years; system
//! activity is audit data and so falls under the 7-year audit minimum.

use std::fmt;
use std::net::SocketAddr;

use uuid::Uuid;

use crate::event::{AuditEvent, EventType};

/// The transport an event arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request came from and when it arrived; stamped once per request by ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// Wall-clock receive time, nanoseconds since the Unix epoch.
    pub received_at_unix_ns: i64,
}

/// The compliance category of an event; names the PostgreSQL view it appears in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// Authentication and access decisions (`security_logs`).
    Security,
    /// Changes and commands against clusters (`compliance_events`).
    Compliance,
    /// Platform activity (`system_activities`).
    System,
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Security => "security",
            Classification::Compliance => "compliance",
            Classification::System => "system",
        }
    }
}

/// How long an event must be kept, from the customer's retention schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionClass {
    /// "security_events: 7 years minimum".
    Security7y,
    /// "compliance_events: 10 years for regulated industries".
    Compliance10y,
}

impl RetentionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionClass::Security7y => "security_7y",
            RetentionClass::Compliance10y => "compliance_10y",
        }
    }

    pub fn years(self) -> u32 {
        match self {
            RetentionClass::Security7y => 7,
            RetentionClass::Compliance10y => 10,
        }
    }
}

/// Classifies an event. One function, so that the mapping is stated once.
pub fn classify(event_type: EventType) -> (Classification, RetentionClass) {
    match event_type {
        EventType::AuthEvent => (Classification::Security, RetentionClass::Security7y),
        EventType::CommandExecution => (Classification::Compliance, RetentionClass::Compliance10y),
        EventType::SystemEvent => (Classification::System, RetentionClass::Security7y),
    }
}

/// A valid event with everything the pipeline knows about it, except its place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrichedEvent {
    pub event: AuditEvent,
    /// The producer's `event_id`, or a UUIDv7 assigned here.
    pub event_id: Uuid,
    /// Whether the producer sent `event_id` (only those take part in idempotence).
    pub event_id_from_producer: bool,
    pub received_at_unix_ns: i64,
    pub transport: Transport,
    pub peer: SocketAddr,
    pub classification: Classification,
    pub retention_class: RetentionClass,
}

/// Enriches one valid event. `new_id` supplies an id when the producer sent none.
pub fn enrich(
    event: AuditEvent,
    ctx: &RequestContext,
    new_id: impl FnOnce() -> Uuid,
) -> EnrichedEvent {
    let (classification, retention_class) = classify(event.event_type);
    let (event_id, event_id_from_producer) = match event.event_id {
        Some(id) => (id, true),
        None => (new_id(), false),
    };
    EnrichedEvent {
        event,
        event_id,
        event_id_from_producer,
        received_at_unix_ns: ctx.received_at_unix_ns,
        transport: ctx.transport,
        peer: ctx.peer,
        classification,
        retention_class,
    }
}

/// A UUIDv7 for the given receive time.
pub fn uuid_v7_at(received_at_unix_ns: i64) -> Uuid {
    let ns = received_at_unix_ns.max(0) as u64;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ns / 1_000_000_000,
        (ns % 1_000_000_000) as u32,
    );
    Uuid::new_v7(ts)
}
