//! The event JSON Schema and the Rust validator accept exactly the same events.
//!
//! `schemas/audit-event.schema.json` is the contract producers validate against before they
//! send; `kubechat_audit_pipeline::event::validate_value` is what the service enforces. This
//! test runs both over one labelled corpus (every field's type errors, every bound at the
//! limit and one past it, unknown and missing fields, UUID forms, timestamp and IP address
//! edge cases, metadata depth, size and number bounds, non-object roots), with JSON Schema
//! format validation switched on, and requires the same verdict for every case. For every
//! invalid case it also requires that the Rust rejection names the expected field, because
//! that name is what a producer sees in its error and what the dead-letter store keeps.
//!
//! The one known disagreement (timestamps outside the signed 64-bit nanosecond range, which
//! no reasonable schema can bound) is pinned separately in `known_divergences_still_hold`.

use std::path::Path;

use kubechat_audit_pipeline::event::validate_value;
use kubechat_audit_pipeline::limits::*;
use serde_json::{json, Map, Value};

/// What a case expects from both validators.
enum Want {
    Valid,
    /// Rejected, and the Rust rejection names this field path.
    Invalid(String),
}

struct Case {
    label: String,
    event: Value,
    want: Want,
}

#[derive(Default)]
struct Corpus {
    cases: Vec<Case>,
}

impl Corpus {
    fn valid(&mut self, label: impl Into<String>, event: Value) {
        self.cases.push(Case {
            label: label.into(),
            event,
            want: Want::Valid,
        });
    }

    fn invalid(&mut self, label: impl Into<String>, field: impl Into<String>, event: Value) {
        self.cases.push(Case {
            label: label.into(),
            event,
            want: Want::Invalid(field.into()),
        });
    }
}

/// A minimal valid `command_execution` event.
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

/// The base event with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v.as_object_mut().unwrap().insert(field.to_owned(), value);
    v
}

/// The base event without `field`.
fn without(field: &str) -> Value {
    let mut v = base();
    v.as_object_mut().unwrap().remove(field);
    v
}

/// The base event with `metadata` set to `value`.
fn meta(value: Value) -> Value {
    with("metadata", value)
}

/// A JSON number parsed from its text, as it arrives on the wire.
fn num(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// A string of `n` copies of `c`.
fn chars(c: char, n: usize) -> Value {
    Value::String(std::iter::repeat_n(c, n).collect())
}

/// Metadata with `container` at nesting `depth` (metadata itself is depth 1): the object at
/// depth k < `depth` holds only the key `d{k+1}`. Returns the metadata and the path of
/// `container`, as the Rust validator names it.
fn at_depth(depth: usize, container: Value) -> (Value, String) {
    assert!(depth >= 2);
    let mut v = container;
    for k in (2..depth).rev() {
        v = json!({ format!("d{}", k + 1): v });
    }
    let path = (2..=depth)
        .map(|k| format!("d{k}"))
        .collect::<Vec<_>>()
        .join(".");
    (json!({ "d2": v }), format!("metadata.{path}"))
}

/// Metadata whose deepest object sits at `depth`; returns the metadata and that object's path.
fn object_chain(depth: usize) -> (Value, String) {
    at_depth(depth, json!({"leaf": true}))
}

/// Metadata whose deepest array sits at `depth`: `{"a": [[...[true]...]]}`. Returns the
/// metadata and the path of the deepest array.
fn array_chain(depth: usize) -> (Value, String) {
    assert!(depth >= 2);
    let mut v = json!([true]);
    for _ in 2..depth {
        v = json!([v]);
    }
    (
        json!({ "a": v }),
        format!("metadata.a{}", "[0]".repeat(depth - 2)),
    )
}

/// An object of `n` properties `p0..`, each holding `value`.
fn props(n: usize, value: Value) -> Value {
    Value::Object(
        (0..n)
            .map(|i| (format!("p{i}"), value.clone()))
            .collect::<Map<_, _>>(),
    )
}

fn corpus() -> Corpus {
    let mut c = Corpus::default();

    // Whole events.
    c.valid("minimal command_execution", base());
    c.valid(
        "auth_event without kubernetes_command",
        json!({"user_id": "bob", "event_type": "auth_event", "action": "login", "success": false, "timestamp": "2026-01-02T03:04:05Z"}),
    );
    c.valid(
        "system_event without kubernetes_command",
        json!({"user_id": "svc", "event_type": "system_event", "action": "restart", "success": true, "timestamp": "2026-01-02T03:04:05Z"}),
    );
    c.valid(
        "auth_event may carry a kubernetes_command",
        json!({"user_id": "bob", "event_type": "auth_event", "action": "login", "kubernetes_command": "kubectl auth can-i", "success": true, "timestamp": "2026-01-02T03:04:05Z"}),
    );
    c.valid(
        "every field present",
        json!({
            "event_id": "0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e",
            "session_id": "4f1e2d3c-b4a5-4697-8877-665544332211",
            "user_id": "alice",
            "event_type": "command_execution",
            "action": "kubectl.delete",
            "kubernetes_command": "kubectl delete pod web-1 -n prod",
            "success": false,
            "timestamp": "2026-12-03T10:00:00+01:00",
            "ip_address": "2001:db8::1",
            "user_agent": "kubechat/1.2",
            "metadata": {"cluster": "prod-eu", "replicas": 3, "labels": {"team": "core"}, "tags": ["a", null, 1.5, false]}
        }),
    );

    // Non-object roots.
    // U+0000 cannot be stored by PostgreSQL text or jsonb; it is refused everywhere.
    c.invalid(
        "NUL in user_id",
        "user_id",
        with("user_id", json!("al\u{0}ice")),
    );
    c.invalid(
        "NUL in kubernetes_command",
        "kubernetes_command",
        with("kubernetes_command", json!("kubectl\u{0}")),
    );
    c.invalid(
        "NUL in a metadata string",
        "metadata.k",
        meta(json!({"k": "a\u{0}b"})),
    );
    c.invalid(
        "NUL in a metadata key",
        "metadata.a\u{0}b",
        meta(json!({"a\u{0}b": 1})),
    );
    c.invalid("root is an array", "$", json!([base()]));
    c.invalid("root is a string", "$", json!("event"));
    c.invalid("root is a number", "$", json!(1));
    c.invalid("root is null", "$", Value::Null);
    c.invalid("root is a boolean", "$", json!(true));
    c.invalid("root is an empty object", "user_id", json!({}));

    // Unknown fields.
    c.invalid("unknown field", "colour", with("colour", json!("blue")));
    c.invalid(
        "unknown field differing only in case",
        "Event_ID",
        with("Event_ID", json!("x")),
    );
    c.invalid(
        "unknown field holding null",
        "extra",
        with("extra", Value::Null),
    );

    // Missing required fields.
    for f in ["user_id", "event_type", "action", "success", "timestamp"] {
        c.invalid(format!("missing {f}"), f, without(f));
    }
    c.invalid(
        "command_execution without kubernetes_command",
        "kubernetes_command",
        without("kubernetes_command"),
    );

    // Type errors, one or more per field.
    c.invalid(
        "event_id is a number",
        "event_id",
        with("event_id", json!(42)),
    );
    c.invalid(
        "event_id is null",
        "event_id",
        with("event_id", Value::Null),
    );
    c.invalid(
        "session_id is an object",
        "session_id",
        with("session_id", json!({})),
    );
    c.invalid(
        "session_id is null",
        "session_id",
        with("session_id", Value::Null),
    );
    c.invalid("user_id is a number", "user_id", with("user_id", json!(7)));
    c.invalid("user_id is null", "user_id", with("user_id", Value::Null));
    c.invalid(
        "event_type is a number",
        "event_type",
        with("event_type", json!(1)),
    );
    c.invalid(
        "event_type is not in the enum",
        "event_type",
        with("event_type", json!("login")),
    );
    c.invalid(
        "event_type in the wrong case",
        "event_type",
        with("event_type", json!("Command_Execution")),
    );
    c.invalid(
        "action is an array",
        "action",
        with("action", json!(["get"])),
    );
    c.invalid(
        "kubernetes_command is a boolean",
        "kubernetes_command",
        with("kubernetes_command", json!(true)),
    );
    c.invalid(
        "kubernetes_command is null",
        "kubernetes_command",
        with("kubernetes_command", Value::Null),
    );
    c.invalid(
        "success is the string true",
        "success",
        with("success", json!("true")),
    );
    c.invalid(
        "success is the number 1",
        "success",
        with("success", json!(1)),
    );
    c.invalid("success is null", "success", with("success", Value::Null));
    c.invalid(
        "timestamp is a number",
        "timestamp",
        with("timestamp", json!(1_796_292_000)),
    );
    c.invalid(
        "ip_address is a number",
        "ip_address",
        with("ip_address", json!(167_772_161)),
    );
    c.invalid(
        "user_agent is null",
        "user_agent",
        with("user_agent", Value::Null),
    );
    c.invalid("metadata is an array", "metadata", meta(json!([1, 2])));
    c.invalid("metadata is a string", "metadata", meta(json!("{}")));
    c.invalid("metadata is null", "metadata", meta(Value::Null));

    // String bounds: exactly at the limit, and one past it. Lengths are characters, so the
    // multi-byte cases must agree too.
    let strings: [(&str, usize, usize); 4] = [
        ("user_id", 1, USER_ID_CHARS_MAX),
        ("action", 1, ACTION_CHARS_MAX),
        ("kubernetes_command", 1, KUBERNETES_COMMAND_CHARS_MAX),
        ("user_agent", 0, USER_AGENT_CHARS_MAX),
    ];
    for (f, min, max) in strings {
        c.valid(format!("{f} at {max} characters"), with(f, chars('x', max)));
        c.invalid(
            format!("{f} at {} characters", max + 1),
            f,
            with(f, chars('x', max + 1)),
        );
        if min == 0 {
            c.valid(format!("{f} empty"), with(f, json!("")));
        } else {
            c.valid(format!("{f} at {min} character"), with(f, chars('x', min)));
            c.invalid(format!("{f} empty"), f, with(f, json!("")));
        }
    }
    c.valid(
        "user_id at the limit in 2-byte characters",
        with("user_id", chars('é', USER_ID_CHARS_MAX)),
    );
    c.valid(
        "user_id at the limit in astral characters",
        with("user_id", chars('😀', USER_ID_CHARS_MAX)),
    );
    c.invalid(
        "user_id one astral character past the limit",
        "user_id",
        with("user_id", chars('😀', USER_ID_CHARS_MAX + 1)),
    );
    c.valid(
        "action with control characters",
        with("action", json!("get\u{1}\n\t")),
    );

    // UUIDs: only the hyphenated form, either case.
    c.valid(
        "event_id lower case",
        with("event_id", json!("0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e")),
    );
    c.valid(
        "event_id upper case",
        with("event_id", json!("0190A5E2-7C4F-7B3A-9D1E-2F3A4B5C6D7E")),
    );
    c.valid(
        "event_id nil uuid",
        with("event_id", json!("00000000-0000-0000-0000-000000000000")),
    );
    c.valid(
        "session_id max uuid",
        with("session_id", json!("ffffffff-ffff-ffff-ffff-ffffffffffff")),
    );
    c.invalid(
        "event_id simple form",
        "event_id",
        with("event_id", json!("0190a5e27c4f7b3a9d1e2f3a4b5c6d7e")),
    );
    c.invalid(
        "event_id braced",
        "event_id",
        with("event_id", json!("{0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e}")),
    );
    c.invalid(
        "event_id urn form",
        "event_id",
        with(
            "event_id",
            json!("urn:uuid:0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e"),
        ),
    );
    c.invalid(
        "event_id non-hex digit",
        "event_id",
        with("event_id", json!("0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7g")),
    );
    c.invalid(
        "event_id one digit short",
        "event_id",
        with("event_id", json!("0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7")),
    );
    c.invalid(
        "event_id hyphen misplaced",
        "event_id",
        with("event_id", json!("0190a5e27-c4f-7b3a-9d1e-2f3a4b5c6d7e")),
    );
    c.invalid(
        "session_id empty",
        "session_id",
        with("session_id", json!("")),
    );
    c.invalid(
        "session_id with trailing newline",
        "session_id",
        with(
            "session_id",
            json!("4f1e2d3c-b4a5-4697-8877-665544332211\n"),
        ),
    );

    // Timestamps.
    let ts_ok = [
        ("no fraction", "2026-01-02T03:04:05Z"),
        ("one fractional digit", "2026-01-02T03:04:05.1Z"),
        ("nine fractional digits", "2026-01-02T03:04:05.123456789Z"),
        ("lower-case t and z", "2026-01-02t03:04:05z"),
        ("positive offset", "2026-01-02T03:04:05+05:30"),
        ("negative offset", "2026-01-02T03:04:05-08:00"),
        ("offset +23:59", "2026-01-02T03:04:05+23:59"),
        ("offset -00:00", "2026-01-02T03:04:05-00:00"),
        ("February 29th in a leap year", "2024-02-29T12:00:00Z"),
        ("February 29th in 2000", "2000-02-29T12:00:00Z"),
        ("last second of a day", "2026-12-31T23:59:59.999999999Z"),
        ("the Unix epoch", "1970-01-01T00:00:00Z"),
        ("before the epoch", "1969-12-31T23:59:59.5Z"),
    ];
    for (label, ts) in ts_ok {
        c.valid(format!("timestamp {label}"), with("timestamp", json!(ts)));
    }
    let ts_bad = [
        ("leap second", "2016-12-31T23:59:60Z"),
        ("February 30th", "2026-02-30T10:00:00Z"),
        ("February 29th in a common year", "2023-02-29T10:00:00Z"),
        ("February 29th in 1900", "1900-02-29T10:00:00Z"),
        ("April 31st", "2026-04-31T10:00:00Z"),
        ("month 13", "2026-13-01T10:00:00Z"),
        ("month 00", "2026-00-01T10:00:00Z"),
        ("day 00", "2026-01-00T10:00:00Z"),
        ("hour 24", "2026-01-02T24:00:00Z"),
        ("minute 60", "2026-01-02T03:60:00Z"),
        ("ten fractional digits", "2026-01-02T03:04:05.1234567890Z"),
        ("empty fraction", "2026-01-02T03:04:05.Z"),
        ("comma fraction", "2026-01-02T03:04:05,5Z"),
        ("no offset", "2026-01-02T03:04:05"),
        ("offset +24:00", "2026-01-02T03:04:05+24:00"),
        ("offset +05:60", "2026-01-02T03:04:05+05:60"),
        ("offset without colon", "2026-01-02T03:04:05+0530"),
        ("offset hours only", "2026-01-02T03:04:05+05"),
        ("space separator", "2026-01-02 03:04:05Z"),
        ("date only", "2026-01-02"),
        ("two-digit year", "26-01-02T03:04:05Z"),
        ("five-digit year", "12026-01-02T03:04:05Z"),
        ("no seconds", "2026-01-02T03:04Z"),
        ("single-digit month", "2026-1-02T03:04:05Z"),
        ("trailing newline", "2026-01-02T03:04:05Z\n"),
        ("trailing space", "2026-01-02T03:04:05Z "),
        ("leading space", " 2026-01-02T03:04:05Z"),
        ("Z followed by an offset", "2026-01-02T03:04:05Z+01:00"),
        ("non-ASCII digits", "２０２６-01-02T03:04:05Z"),
        ("empty", ""),
    ];
    for (label, ts) in ts_bad {
        c.invalid(
            format!("timestamp {label}"),
            "timestamp",
            with("timestamp", json!(ts)),
        );
    }

    // IP addresses: what std's parser accepts, which is what both validators use.
    let ip_ok = [
        ("IPv4", "10.0.0.1"),
        ("IPv4 zeros", "0.0.0.0"),
        ("IPv4 broadcast", "255.255.255.255"),
        ("IPv6 compressed", "2001:db8::1"),
        ("IPv6 upper case", "2001:DB8::1"),
        ("IPv6 unspecified", "::"),
        ("IPv6 loopback", "::1"),
        ("IPv6 full form", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
        ("IPv4-mapped IPv6", "::ffff:192.0.2.1"),
        (
            "longest accepted form (45 characters)",
            "0000:0000:0000:0000:0000:ffff:255.255.255.255",
        ),
    ];
    for (label, ip) in ip_ok {
        c.valid(format!("ip_address {label}"), with("ip_address", json!(ip)));
    }
    let ip_bad = [
        ("IPv4 octet 256", "10.0.0.256"),
        ("IPv4 leading zero", "010.0.0.1"),
        ("IPv4 leading zero in the last octet", "10.0.0.01"),
        ("IPv4 three octets", "10.0.1"),
        ("IPv4 with port", "10.0.0.1:443"),
        ("IPv4 CIDR", "10.0.0.0/8"),
        ("IPv4 leading space", " 10.0.0.1"),
        ("IPv6 zone id", "fe80::1%eth0"),
        ("IPv6 numeric zone id", "fe80::1%1"),
        ("IPv6 bracketed", "[::1]"),
        ("IPv6 two double colons", "1::2::3"),
        ("IPv6 group of five digits", "2001:db8::12345"),
        ("IPv6 nine groups", "1:2:3:4:5:6:7:8:9"),
        ("IPv4-mapped with leading zero", "::ffff:192.0.2.01"),
        ("hostname", "localhost"),
        ("empty", ""),
        (
            "46 characters",
            "0000:0000:0000:0000:0000:ffff:255.255.255.2555",
        ),
    ];
    for (label, ip) in ip_bad {
        c.invalid(
            format!("ip_address {label}"),
            "ip_address",
            with("ip_address", json!(ip)),
        );
    }

    // Metadata nesting: metadata itself is depth 1, containers may sit at depth 8, not 9.
    let (m, _) = object_chain(METADATA_DEPTH_MAX);
    c.valid("metadata objects nested exactly 8 deep", meta(m));
    let (m, path) = object_chain(METADATA_DEPTH_MAX + 1);
    c.invalid("metadata objects nested 9 deep", path, meta(m));
    let (m, _) = array_chain(METADATA_DEPTH_MAX);
    c.valid("metadata arrays nested exactly 8 deep", meta(m));
    let (m, path) = array_chain(METADATA_DEPTH_MAX + 1);
    c.invalid("metadata arrays nested 9 deep", path, meta(m));
    c.valid(
        "metadata empty containers nested 8 deep",
        meta(json!({"a": [{"b": [{"c": [{"d": []}]}]}]})),
    );
    c.invalid(
        "metadata empty containers nested 9 deep",
        "metadata.a[0].b[0].c[0].d[0]",
        meta(json!({"a": [{"b": [{"c": [{"d": [{}]}]}]}]})),
    );
    c.valid("metadata empty object", meta(json!({})));

    // Metadata sizes.
    let longer_key = "k".repeat(METADATA_KEY_CHARS_MAX + 1);
    c.valid(
        "metadata with 64 properties",
        meta(props(METADATA_PROPERTIES_MAX, json!(1))),
    );
    c.invalid(
        "metadata with 65 properties",
        "metadata",
        meta(props(METADATA_PROPERTIES_MAX + 1, json!(1))),
    );
    c.valid(
        "nested object with 64 properties",
        meta(json!({"o": props(METADATA_PROPERTIES_MAX, Value::Null)})),
    );
    c.invalid(
        "nested object with 65 properties",
        "metadata.o",
        meta(json!({"o": props(METADATA_PROPERTIES_MAX + 1, Value::Null)})),
    );
    // Every bound again in a container at each depth, since the schema states them once per
    // level of its depth chain.
    for k in 2..=METADATA_DEPTH_MAX {
        let mut full = props(
            METADATA_PROPERTIES_MAX - 3,
            json!(-9_007_199_254_740_991i64),
        );
        full["k".repeat(METADATA_KEY_CHARS_MAX)] = chars('x', METADATA_STRING_CHARS_MAX);
        full["l"] = Value::Array(vec![json!(9_007_199_254_740_991u64); METADATA_ITEMS_MAX]);
        full["o"] = props(METADATA_PROPERTIES_MAX, Value::Null);
        if k == METADATA_DEPTH_MAX {
            // Its members sit at depth 9, where only scalars are allowed.
            full["l"] = json!(1);
            full["o"] = json!("o");
        }
        let (m, _) = at_depth(k, full);
        c.valid(format!("depth {k}: every bound at its limit"), meta(m));
        let (m, path) = at_depth(k, props(METADATA_PROPERTIES_MAX + 1, json!("v")));
        c.invalid(
            format!("depth {k}: object with 65 properties"),
            path,
            meta(m),
        );
        let (m, path) = at_depth(k, Value::Array(vec![json!(0); METADATA_ITEMS_MAX + 1]));
        c.invalid(format!("depth {k}: array with 65 items"), path, meta(m));
        let (m, path) = at_depth(k, json!({ longer_key.clone(): 1 }));
        c.invalid(
            format!("depth {k}: property name at 129 characters"),
            format!("{path}.{longer_key}"),
            meta(m),
        );
        let (m, path) = at_depth(k, json!({ "n": num("9007199254740992") }));
        c.invalid(
            format!("depth {k}: number 2^53"),
            format!("{path}.n"),
            meta(m),
        );
        let (m, path) = at_depth(k, json!({ "s": chars('x', METADATA_STRING_CHARS_MAX + 1) }));
        c.invalid(
            format!("depth {k}: string at 1025 characters"),
            format!("{path}.s"),
            meta(m),
        );
        let (m, path) = at_depth(k, json!([1, num("-9007199254740992")]));
        c.invalid(
            format!("depth {k}: array item -2^53"),
            format!("{path}[1]"),
            meta(m),
        );
    }
    c.valid(
        "metadata array with 64 items",
        meta(json!({"l": vec![json!(0); METADATA_ITEMS_MAX]})),
    );
    c.invalid(
        "metadata array with 65 items",
        "metadata.l",
        meta(json!({"l": vec![json!(0); METADATA_ITEMS_MAX + 1]})),
    );
    c.valid(
        "metadata property name at 128 characters",
        meta(json!({ "k".repeat(METADATA_KEY_CHARS_MAX): 1 })),
    );
    c.invalid(
        "metadata property name at 129 characters",
        format!("metadata.{longer_key}"),
        meta(json!({ longer_key.clone(): 1 })),
    );
    c.invalid(
        "nested property name at 129 characters",
        format!("metadata.o.{longer_key}"),
        meta(json!({"o": { longer_key.clone(): 1 }})),
    );
    c.valid(
        "metadata property name in astral characters at the limit",
        meta(json!({ "😀".repeat(METADATA_KEY_CHARS_MAX): 1 })),
    );
    c.valid("metadata empty property name", meta(json!({"": 1})));
    c.valid(
        "metadata string at 1024 characters",
        meta(json!({"s": chars('x', METADATA_STRING_CHARS_MAX)})),
    );
    c.invalid(
        "metadata string at 1025 characters",
        "metadata.s",
        meta(json!({"s": chars('x', METADATA_STRING_CHARS_MAX + 1)})),
    );
    c.invalid(
        "string in a metadata array at 1025 characters",
        "metadata.l[1]",
        meta(json!({"l": ["ok", chars('€', METADATA_STRING_CHARS_MAX + 1)]})),
    );

    // Metadata numbers: within ±(2^53 - 1).
    let numbers_ok = [
        "9007199254740991",
        "-9007199254740991",
        "9007199254740991.0",
        "9.007199254740991e15",
        "0",
        "-0.0",
        "1.5",
        "1e-300",
        "-1e15",
    ];
    for n in numbers_ok {
        c.valid(format!("metadata number {n}"), meta(json!({ "n": num(n) })));
    }
    let numbers_bad = [
        "9007199254740992",
        "-9007199254740992",
        "9007199254740993",
        "9007199254740991.5",
        "18446744073709551615",
        "-9223372036854775808",
        "1e300",
        "-1.7976931348623157e308",
    ];
    for n in numbers_bad {
        c.invalid(
            format!("metadata number {n}"),
            "metadata.n",
            meta(json!({ "n": num(n) })),
        );
    }
    c.invalid(
        "big number deep inside metadata",
        "metadata.a[0].b",
        meta(json!({"a": [{"b": num("1e16")}]})),
    );
    c.valid(
        "metadata scalars of every kind",
        meta(json!({"n": null, "t": true, "f": false, "i": -3, "x": 2.5, "s": ""})),
    );

    c
}

fn schema_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/audit-event.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{} is not a valid JSON Schema",
        path.display()
    );
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()))
}

/// The schema's verdict: `Ok` or the first error with its instance path.
fn schema_verdict(v: &jsonschema::Validator, event: &Value) -> Result<(), String> {
    match v.iter_errors(event).next() {
        None => Ok(()),
        Some(e) => Err(format!("{} (at {:?})", e, e.instance_path.to_string())),
    }
}

#[test]
fn schema_and_validator_agree_on_every_case() {
    let schema = schema_validator();
    let corpus = corpus();
    assert!(
        corpus.cases.len() >= 60,
        "the corpus has only {} cases",
        corpus.cases.len()
    );

    let mut failures = Vec::new();
    for case in &corpus.cases {
        let by_schema = schema_verdict(&schema, &case.event);
        let by_rust = validate_value(case.event.clone());
        // The two validators and the case's expectation must all say the same.
        let problem = match (&case.want, &by_schema, &by_rust) {
            (Want::Valid, Ok(()), Ok(_)) => None,
            (Want::Invalid(field), Err(_), Err(r)) if &r.field == field => None,
            (Want::Invalid(field), Err(_), Err(r)) => Some(format!(
                "Rust rejected field {:?}, expected {field:?}",
                r.field
            )),
            _ => Some(String::from("verdicts differ")),
        };
        if let Some(problem) = problem {
            let want = match &case.want {
                Want::Valid => "valid".to_owned(),
                Want::Invalid(f) => format!("invalid at {f:?}"),
            };
            let rust = match &by_rust {
                Ok(_) => "valid".to_owned(),
                Err(r) => format!("invalid: {r}"),
            };
            let schema = match &by_schema {
                Ok(()) => "valid".to_owned(),
                Err(e) => format!("invalid: {e}"),
            };
            failures.push(format!(
                "case {:?}: {problem}\n  expected: {want}\n  schema:   {schema}\n  rust:     {rust}",
                case.label
            ));
        }
    }
    println!(
        "{} cases, same verdict from the schema and the validator",
        corpus.cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        corpus.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_labels_are_unique() {
    let corpus = corpus();
    let mut labels: Vec<&str> = corpus.cases.iter().map(|c| c.label.as_str()).collect();
    labels.sort_unstable();
    let before = labels.len();
    labels.dedup();
    assert_eq!(
        before,
        labels.len(),
        "two cases share a label, so a failure would be ambiguous"
    );
}

/// Inputs on which the two cannot agree, kept here so that the disagreement stays known.
///
/// The Rust validator converts the timestamp to nanoseconds since the Unix epoch in an `i64`,
/// so it rejects instants outside 1677-09-21T00:12:43.145224192Z ..=
/// 2262-04-11T23:47:16.854775807Z. The schema's description states that bound, but a range
/// of instants across every offset is beyond any reasonable pattern (and `format` has no
/// bounds), so the schema accepts these. If this test starts failing because the two now
/// agree, move the cases into `corpus`.
#[test]
fn known_divergences_still_hold() {
    let schema = schema_validator();
    let cases = [
        "0000-01-01T00:00:00Z",
        "1677-09-21T00:12:43.145224191Z",
        "2262-04-11T23:47:16.854775808Z",
        "2262-04-11T23:47:16.854775807-00:01",
        "9999-12-31T23:59:59Z",
    ];
    for ts in cases {
        let event = with("timestamp", json!(ts));
        assert_eq!(schema_verdict(&schema, &event), Ok(()), "schema on {ts}");
        let r = validate_value(event).expect_err(ts);
        assert_eq!(r.field, "timestamp", "{ts}: {r}");
    }
    // The boundaries themselves are accepted by both.
    for ts in [
        "1677-09-21T00:12:43.145224192Z",
        "2262-04-11T23:47:16.854775807Z",
    ] {
        let event = with("timestamp", json!(ts));
        assert_eq!(schema_verdict(&schema, &event), Ok(()), "schema on {ts}");
        validate_value(event).unwrap_or_else(|r| panic!("{ts}: {r}"));
    }
}
