//! kubechat-audit: the service around the pure pipeline core.
//!
//! # Layout
//!
//! - [`config`]: embedded defaults, the TOML file, the bounds and their relations.
//! - [`keys`]: HMAC chain keys on disk (mode 0600), rotation by key id.
//! - [`log`]: the durable sled log; the only module that imports sled. Group commit.
//! - [`ingest`]: the TCP (NDJSON) and HTTP edges and their shared admission control.
//! - [`metrics`]: Prometheus names, buckets and the `/metrics` endpoint.
//! - [`projection`]: views of the log; [`projection::postgres`] tails it into PostgreSQL.
//! - [`serve`]: wires everything together; signals and graceful shutdown.
//! - [`verify`]: walks the log chain and names the first bad `seq`.
//! - [`send`]: the client that pushes NDJSON to a running `serve`.
//!
//! ```text
//! producers --TCP NDJSON / HTTP--> ingest --bounded--> validate --> enrich --> checksum
//!   --> log writer (sled: one batch, one flush, fdatasync) ==ack==> producer
//! ```
//!
//! The pure logic (event model, validation, canonical JSON, the chain, the stage runtime)
//! lives in the `kubechat-audit-pipeline` crate, which has no I/O.

pub mod config;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod projection;
pub mod send;
pub mod serve;
pub mod verify;
