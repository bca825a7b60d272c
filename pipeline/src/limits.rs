//! Every bound the core enforces, in one place.
//!
//! The event bounds here are the same numbers `schemas/audit-event.schema.json` states; the
//! schema agreement test (`tests/schema_agreement.rs`) runs both over one corpus.

/// Longest `user_id`, in characters.
pub const USER_ID_CHARS_MAX: usize = 256;
/// Longest `action`, in characters.
pub const ACTION_CHARS_MAX: usize = 256;
/// Longest `kubernetes_command`, in characters.
pub const KUBERNETES_COMMAND_CHARS_MAX: usize = 8192;
/// Longest `user_agent`, in characters.
pub const USER_AGENT_CHARS_MAX: usize = 1024;
/// Longest `ip_address` text, in characters (an IPv6 address with an embedded IPv4 tail).
pub const IP_ADDRESS_CHARS_MAX: usize = 45;
/// Deepest nesting of containers in `metadata`; the `metadata` object itself is depth 1.
pub const METADATA_DEPTH_MAX: usize = 8;
/// Most properties in any object inside `metadata` (the `metadata` object included).
pub const METADATA_PROPERTIES_MAX: usize = 64;
/// Most items in any array inside `metadata`.
pub const METADATA_ITEMS_MAX: usize = 64;
/// Longest string value inside `metadata`, in characters.
pub const METADATA_STRING_CHARS_MAX: usize = 1024;
/// Longest property name inside `metadata`, in characters.
pub const METADATA_KEY_CHARS_MAX: usize = 128;
/// Largest magnitude of a number in `metadata`: 2^53 - 1, so that every accepted number
/// survives the IEEE-754 round trip RFC 8785 canonicalization performs.
pub const METADATA_NUMBER_ABS_MAX: f64 = 9_007_199_254_740_991.0;

/// Largest encoded event a transport accepts (one NDJSON line, or one element of an HTTP
/// array, in bytes). Every string bound above fits inside it.
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
/// Largest canonical record body, in bytes. Canonical JSON can be longer than its input
/// (`1e15` becomes `1000000000000000`); an event whose record would exceed this is rejected.
pub const BODY_BYTES_MAX: usize = 2 * EVENT_BYTES_MAX;
/// Most events one ingest request (one TCP read batch or one HTTP body) may carry.
pub const REQUEST_EVENTS_MAX: usize = 10_000;
/// How much of a rejected input is kept in the dead-letter store, in bytes. Rejected input
/// longer than this (only possible for oversized lines) is kept as a prefix plus its length.
pub const DEAD_LETTER_RAW_BYTES_MAX: usize = 4 * EVENT_BYTES_MAX;

const _: () = assert!(USER_ID_CHARS_MAX * 4 < EVENT_BYTES_MAX);
const _: () = assert!(KUBERNETES_COMMAND_CHARS_MAX * 4 < EVENT_BYTES_MAX);
const _: () = assert!(METADATA_KEY_CHARS_MAX <= METADATA_STRING_CHARS_MAX);
const _: () = assert!(DEAD_LETTER_RAW_BYTES_MAX >= EVENT_BYTES_MAX);
