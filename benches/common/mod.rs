//! What the benchmarks share: the event generator and the environment knobs.
//!
//! Every bench generates the same realistic 500-byte `command_execution` events from a seeded
//! RNG, so their numbers describe the same input.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::Rng;
use uuid::Uuid;

/// Size of every generated NDJSON line, newline excluded.
pub const LINE_BYTES: usize = 500;

/// An environment knob, or its default; a value that does not parse stops the bench.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// One realistic `command_execution` event of exactly [`LINE_BYTES`] bytes, with a unique
/// producer `event_id` unless `with_id` is false (then the returned id is nil).
pub fn event_line(rng: &mut StdRng, i: u64, with_id: bool) -> (Uuid, Vec<u8>) {
    const VERBS: [&str; 6] = ["get", "delete", "apply", "scale", "logs", "describe"];
    const NAMESPACES: [&str; 5] = ["prod", "staging", "payments", "kube-system", "web"];
    const TEAMS: [&str; 4] = ["platform", "payments", "search", "identity"];
    let verb = VERBS[rng.random_range(0..VERBS.len())];
    let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
    let event_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let ms = i % 86_400_000;
    let timestamp = format!(
        "2026-01-15T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let mut v = serde_json::json!({
        "event_id": event_id.hyphenated().to_string(),
        "user_id": format!("user-{:04}@example.com", rng.random_range(0..5000)),
        "event_type": "command_execution",
        "action": format!("kubectl.{verb}"),
        "kubernetes_command": format!(
            "kubectl {verb} pod web-{}-{:05x} -n {ns}",
            rng.random_range(0..64),
            rng.random_range(0..0xfffff)
        ),
        "success": rng.random_bool(0.9),
        "timestamp": timestamp,
        "ip_address": format!(
            "10.{}.{}.{}",
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        "user_agent": "kubechat/1.4.2",
        "metadata": {
            "cluster": "eu-west-1",
            "namespace": ns,
            "request_id": format!("{:016x}", rng.random::<u64>()),
            "labels": {"team": TEAMS[rng.random_range(0..TEAMS.len())]},
            "pad": "",
        }
    });
    if !with_id {
        v.as_object_mut().expect("object").remove("event_id");
    }
    let base = serde_json::to_vec(&v).expect("JSON");
    assert!(
        base.len() <= LINE_BYTES,
        "base event is {} bytes",
        base.len()
    );
    let pad: String = (0..LINE_BYTES - base.len())
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    v["metadata"]["pad"] = pad.into();
    let line = serde_json::to_vec(&v).expect("JSON");
    assert_eq!(line.len(), LINE_BYTES);
    (if with_id { event_id } else { Uuid::nil() }, line)
}
