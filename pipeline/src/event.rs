//! The audit event a producer sends, and its validation.
//!
//! Validation works on a parsed [`serde_json::Value`] rather than through serde's derive so
//! that every rejection names the field and what was wrong with it, unknown fields are
//! rejected by name, and the rules read one to one against
//! `schemas/audit-event.schema.json`. The first problem found is reported; fields are checked
//! in a fixed order (unknown fields, then the schema's property order), so the same input
//! always gets the same answer.

use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::limits::*;

/// What kind of event this is (the customer's `event_type` enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    CommandExecution,
    AuthEvent,
    SystemEvent,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::CommandExecution,
        EventType::AuthEvent,
        EventType::SystemEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CommandExecution => "command_execution",
            EventType::AuthEvent => "auth_event",
            EventType::SystemEvent => "system_event",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid audit event, as the producer sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub event_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub user_id: String,
    pub event_type: EventType,
    pub action: String,
    pub kubernetes_command: Option<String>,
    pub success: bool,
    /// The producer's RFC 3339 text, kept verbatim (offset included).
    pub timestamp: String,
    /// The same instant, in nanoseconds since the Unix epoch.
    pub timestamp_unix_ns: i64,
    pub ip_address: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// Why an input was rejected: which field, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// A dotted path to the field (`metadata.labels.team`), or `$` for the whole input.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every field the schema knows, in the order they are checked.
pub const FIELDS: [&str; 11] = [
    "event_id",
    "session_id",
    "user_id",
    "event_type",
    "action",
    "kubernetes_command",
    "success",
    "timestamp",
    "ip_address",
    "user_agent",
    "metadata",
];

/// Parses and validates one encoded event.
pub fn validate_bytes(bytes: &[u8]) -> Result<AuditEvent, Rejection> {
    if bytes.len() > EVENT_BYTES_MAX {
        return Err(Rejection::new(
            "$",
            format!(
                "event is {} bytes, more than the limit of {EVENT_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::new("$", format!("not valid JSON: {e}")))?;
    validate_value(value)
}

/// Validates one parsed event.
pub fn validate_value(value: Value) -> Result<AuditEvent, Rejection> {
    let Value::Object(mut obj) = value else {
        return Err(Rejection::new(
            "$",
            format!("an event must be a JSON object, not {}", kind(&value)),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Rejection::new(
            unknown.clone(),
            "unknown field (see schemas/audit-event.schema.json for the accepted fields)",
        ));
    }

    let event_id = opt_uuid(&mut obj, "event_id")?;
    let session_id = opt_uuid(&mut obj, "session_id")?;
    let user_id = req_string(&mut obj, "user_id", 1, USER_ID_CHARS_MAX)?;
    let event_type = match obj.remove("event_type") {
        None => return Err(missing("event_type")),
        Some(Value::String(s)) => EventType::parse(&s).ok_or_else(|| {
            Rejection::new(
                "event_type",
                format!("{s:?} is not one of command_execution, auth_event, system_event"),
            )
        })?,
        Some(other) => return Err(wrong_type("event_type", "a string", &other)),
    };
    let action = req_string(&mut obj, "action", 1, ACTION_CHARS_MAX)?;
    let kubernetes_command = opt_string(
        &mut obj,
        "kubernetes_command",
        1,
        KUBERNETES_COMMAND_CHARS_MAX,
    )?;
    if event_type == EventType::CommandExecution && kubernetes_command.is_none() {
        return Err(Rejection::new(
            "kubernetes_command",
            "missing required field (required when event_type is command_execution)",
        ));
    }
    let success = match obj.remove("success") {
        None => return Err(missing("success")),
        Some(Value::Bool(b)) => b,
        Some(other) => return Err(wrong_type("success", "a boolean", &other)),
    };
    let (timestamp, timestamp_unix_ns) = match obj.remove("timestamp") {
        None => return Err(missing("timestamp")),
        Some(Value::String(s)) => {
            let ns = parse_timestamp(&s).map_err(|m| Rejection::new("timestamp", m))?;
            (s, ns)
        }
        Some(other) => return Err(wrong_type("timestamp", "an RFC 3339 string", &other)),
    };
    let ip_address = match opt_string(&mut obj, "ip_address", 1, IP_ADDRESS_CHARS_MAX)? {
        None => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            Rejection::new(
                "ip_address",
                format!("{s:?} is not an IPv4 or IPv6 address"),
            )
        })?),
    };
    let user_agent = opt_string(&mut obj, "user_agent", 0, USER_AGENT_CHARS_MAX)?;
    let metadata = match obj.remove("metadata") {
        None => None,
        Some(Value::Object(m)) => {
            check_container_len("metadata", m.len(), true)?;
            for (k, v) in &m {
                check_metadata_entry("metadata", k, v, 2)?;
            }
            Some(m)
        }
        Some(other) => return Err(wrong_type("metadata", "an object", &other)),
    };
    debug_assert!(obj.is_empty(), "every known field was taken");

    Ok(AuditEvent {
        event_id,
        session_id,
        user_id,
        event_type,
        action,
        kubernetes_command,
        success,
        timestamp,
        timestamp_unix_ns,
        ip_address,
        user_agent,
        metadata,
    })
}

/// Parses an RFC 3339 timestamp with an explicit offset (`Z` or `+hh:mm`), at most nine
/// fractional digits, no leap second, and returns nanoseconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    // The shape is checked by hand so that the accepted language is exactly the schema's
    // pattern; the calendar (February 30th) is then checked by the `time` parser.
    let shape_ok = b.len() >= 20
        && digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..10])
        && (b[10] == b'T' || b[10] == b't')
        && digits(&b[11..13])
        && b[13] == b':'
        && digits(&b[14..16])
        && b[16] == b':'
        && digits(&b[17..19]);
    let bad = || {
        format!(
            "{s:?} is not an RFC 3339 timestamp with an offset, such as 2026-01-02T03:04:05.123Z"
        )
    };
    if !shape_ok {
        return Err(bad());
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return Err(format!(
                "{s:?} must have between 1 and 9 fractional second digits"
            ));
        }
        rest = &rest[1 + n..];
    }
    let offset_ok = matches!(rest, [b'Z'] | [b'z'])
        || (rest.len() == 6
            && (rest[0] == b'+' || rest[0] == b'-')
            && digits(&rest[1..3])
            && rest[3] == b':'
            && digits(&rest[4..6]));
    if !offset_ok {
        return Err(bad());
    }
    let field = |r: std::ops::Range<usize>| -> u32 {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(99)
    };
    if field(17..19) > 59 {
        return Err(format!("{s:?} has a leap second, which is not accepted"));
    }
    if rest.len() == 6 {
        let off_h = field(b.len() - 5..b.len() - 3);
        let off_m = field(b.len() - 2..b.len());
        if off_h > 23 || off_m > 59 {
            return Err(format!("{s:?} has an offset out of range"));
        }
    }
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not a valid date and time: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos())
        .map_err(|_| format!("{s:?} is out of the supported range"))
}

fn digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn missing(field: &str) -> Rejection {
    Rejection::new(field, "missing required field")
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> Rejection {
    Rejection::new(field, format!("must be {expected}, not {}", kind(got)))
}

fn check_chars(field: &str, s: &str, min: usize, max: usize) -> Result<(), Rejection> {
    // Characters are Unicode scalar values, as JSON Schema's maxLength counts them.
    let n = s.chars().count();
    if s.contains('\0') {
        // PostgreSQL text and jsonb cannot hold U+0000; refuse it at the door rather than
        // let a projection fail on it later.
        return Err(Rejection::new(
            field,
            "contains U+0000 (NUL), which is not accepted",
        ));
    }
    if n < min {
        return Err(Rejection::new(field, "must not be empty"));
    }
    if n > max {
        return Err(Rejection::new(
            field,
            format!("is {n} characters long, more than the limit of {max}"),
        ));
    }
    Ok(())
}

fn req_string(
    obj: &mut Map<String, Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<String, Rejection> {
    opt_string(obj, field, min, max)?.ok_or_else(|| missing(field))
}

fn opt_string(
    obj: &mut Map<String, Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, Rejection> {
    match obj.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) => {
            check_chars(field, &s, min, max)?;
            Ok(Some(s))
        }
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn opt_uuid(obj: &mut Map<String, Value>, field: &str) -> Result<Option<Uuid>, Rejection> {
    match obj.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) => {
            let b = s.as_bytes();
            let hyphenated = b.len() == 36
                && b.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                });
            if !hyphenated {
                return Err(Rejection::new(
                    field,
                    format!("{s:?} is not a UUID in the hyphenated form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
                ));
            }
            Ok(Some(Uuid::parse_str(&s).map_err(|e| {
                Rejection::new(field, format!("{s:?} is not a UUID: {e}"))
            })?))
        }
        Some(other) => Err(wrong_type(field, "a UUID string", &other)),
    }
}

fn check_container_len(path: &str, len: usize, object: bool) -> Result<(), Rejection> {
    let (max, what) = if object {
        (METADATA_PROPERTIES_MAX, "properties")
    } else {
        (METADATA_ITEMS_MAX, "items")
    };
    if len > max {
        return Err(Rejection::new(
            path,
            format!("has {len} {what}, more than the limit of {max}"),
        ));
    }
    Ok(())
}

fn check_metadata_entry(parent: &str, key: &str, v: &Value, depth: usize) -> Result<(), Rejection> {
    let path = format!("{parent}.{key}");
    if key.contains('\0') {
        return Err(Rejection::new(
            path,
            "property name contains U+0000 (NUL), which is not accepted",
        ));
    }
    let n = key.chars().count();
    if n > METADATA_KEY_CHARS_MAX {
        return Err(Rejection::new(
            path,
            format!("property name is {n} characters long, more than the limit of {METADATA_KEY_CHARS_MAX}"),
        ));
    }
    check_metadata_value(&path, v, depth)
}

fn check_metadata_value(path: &str, v: &Value, depth: usize) -> Result<(), Rejection> {
    match v {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) => {
            let ok = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => (i.unsigned_abs() as f64) <= METADATA_NUMBER_ABS_MAX,
                (_, Some(u), _) => (u as f64) <= METADATA_NUMBER_ABS_MAX,
                (_, _, Some(f)) => f.abs() <= METADATA_NUMBER_ABS_MAX,
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(Rejection::new(
                    path,
                    format!(
                        "number {n} is outside ±9007199254740991 (2^53-1); send it as a string"
                    ),
                ))
            }
        }
        Value::String(s) => check_chars(path, s, 0, METADATA_STRING_CHARS_MAX),
        Value::Array(_) | Value::Object(_) if depth > METADATA_DEPTH_MAX => Err(Rejection::new(
            path,
            format!("metadata nests deeper than {METADATA_DEPTH_MAX} levels"),
        )),
        Value::Array(items) => {
            check_container_len(path, items.len(), false)?;
            for (i, item) in items.iter().enumerate() {
                check_metadata_value(&format!("{path}[{i}]"), item, depth + 1)?;
            }
            Ok(())
        }
        Value::Object(m) => {
            check_container_len(path, m.len(), true)?;
            for (k, item) in m {
                check_metadata_entry(path, k, item, depth + 1)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "user_id": "alice@example.com",
            "event_type": "command_execution",
            "action": "kubectl.get",
            "kubernetes_command": "kubectl get pods -n prod",
            "success": true,
            "timestamp": "2026-12-03T10:00:00.123456Z"
        })
    }

    fn reject(mut v: Value, f: impl FnOnce(&mut Map<String, Value>)) -> Rejection {
        f(v.as_object_mut().unwrap());
        validate_value(v).unwrap_err()
    }

    #[test]
    fn accepts_a_minimal_event() {
        let ev = validate_value(base()).unwrap();
        assert_eq!(ev.event_type, EventType::CommandExecution);
        assert_eq!(ev.timestamp_unix_ns % 1_000_000_000, 123_456_000);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        assert_eq!(
            reject(base(), |m| {
                m.remove("user_id");
            })
            .field,
            "user_id"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("colour".into(), json!(1));
            })
            .field,
            "colour"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("success".into(), json!("yes"));
            })
            .field,
            "success"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("timestamp".into(), json!("2026-12-03 10:00:00"));
            })
            .field,
            "timestamp"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("timestamp".into(), json!("2026-02-30T10:00:00Z"));
            })
            .field,
            "timestamp"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("ip_address".into(), json!("10.0.0.256"));
            })
            .field,
            "ip_address"
        );
        assert_eq!(
            reject(base(), |m| {
                m.insert("event_id".into(), json!("not-a-uuid"));
            })
            .field,
            "event_id"
        );
        let deep = json!({"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}});
        assert_eq!(
            reject(base(), |m| {
                m.insert("metadata".into(), deep);
            })
            .field,
            "metadata.a.b.c.d.e.f.g.h"
        );
        let big = json!({"n": 9007199254740993u64});
        assert_eq!(
            reject(base(), |m| {
                m.insert("metadata".into(), big);
            })
            .field,
            "metadata.n"
        );
    }

    #[test]
    fn command_execution_needs_its_command() {
        let r = reject(base(), |m| {
            m.remove("kubernetes_command");
        });
        assert_eq!(r.field, "kubernetes_command");
        let mut v = base();
        v["event_type"] = json!("auth_event");
        v.as_object_mut().unwrap().remove("kubernetes_command");
        assert!(validate_value(v).is_ok());
    }

    #[test]
    fn not_json_is_rejected_at_the_root() {
        let r = validate_bytes(b"{nope").unwrap_err();
        assert_eq!(r.field, "$");
        assert!(r.message.contains("not valid JSON"), "{r}");
    }
}
