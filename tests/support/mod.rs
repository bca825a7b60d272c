//! Shared helpers for the integration tests; each test file pulls them in with `mod support;`.
#![allow(dead_code)]
pub mod postgres;
pub mod server;
