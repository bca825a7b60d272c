//! The pure, deterministic core of kubechat-audit.
//!
//! # Layout
//!
//! - [`limits`]: every bound the core enforces (string lengths, metadata shape, batch sizes),
//!   in one place, with the relations between them asserted at compile time.
//! - [`event`]: the audit event model and its validation; the Rust twin of
//!   `schemas/audit-event.schema.json`.
//! - [`canonical`]: RFC 8785 (JCS) canonical JSON, the byte form the chain hashes.
//! - [`enrich`]: what the pipeline adds to a valid event (classification, retention class,
//!   source, chain and key ids, receive time).
//! - [`chain`]: the keyed hash chain. Sealing and verifying share [`chain::mac`].
//! - [`record`]: the stored record (sled log, archive lines) and its binary encoding.
//! - [`framing`]: newline framing with a bounded line length, for TCP and NDJSON bodies.
//! - [`stage`]: the stage runtime: `validate -> enrich -> checksum` as threads joined by
//!   bounded crossbeam channels, and the poison flag a failing stage raises.
//!
//! No tokio, no sled, no PostgreSQL: archive consumers and external verifiers can depend on
//! this crate alone.
//!
//! ```text
//! ingest --Request--> validate --> enrich --> checksum --SealedRequest--> log writer (src/)
//!                     (parse,      (classify,  (dedup, seq,               (group commit,
//!                      bounds)      source)     canonical, HMAC)            flush, ack)
//! ```

pub mod canonical;
pub mod chain;
pub mod enrich;
pub mod event;
pub mod framing;
pub mod limits;
pub mod record;
pub mod stage;
