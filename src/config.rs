//! Configuration: embedded defaults, an optional TOML file, command-line overrides.
//!
//! Every queue, batch, body, connection and timeout has a named bound here; [`Config::check`]
//! asserts the relations between them at start-up (those between constants are asserted at
//! compile time in `kubechat_audit_pipeline::limits`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kubechat_audit_pipeline::limits::{EVENT_BYTES_MAX, REQUEST_EVENTS_MAX};
use serde::{Deserialize, Serialize};

use crate::log::Durability;

/// The whole configuration. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log, keys, dead letters and (by default) archives live.
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub limits: Limits,
    pub pipeline: Pipeline,
    pub log: LogConfig,
    pub keys: Keys,
    pub postgres: crate::projection::postgres::PostgresConfig,
    pub archive: crate::projection::archive::ArchiveConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open producer connections, TCP and HTTP each.
    pub connections_max: usize,
    /// Largest HTTP request body, in bytes.
    pub http_body_bytes_max: usize,
    /// HTTP body bytes held in memory across all requests at once; past it HTTP answers 503.
    pub http_bodies_bytes_inflight_max: usize,
    /// Most events in one HTTP request.
    pub http_request_events_max: usize,
    /// Most lines the TCP reader hands the pipeline as one request.
    pub tcp_request_events_max: usize,
    /// Requests a TCP connection may have in the pipeline before its reader pauses.
    pub tcp_pipelined_requests_max: usize,
    /// Requests in the pipeline across all connections; past it TCP readers wait and HTTP
    /// answers 503.
    pub inflight_requests_max: usize,
    /// A connection with nothing to read and nothing pending for this long is closed.
    pub idle_timeout_secs: u64,
    /// How long a graceful shutdown waits for connections to finish.
    pub shutdown_drain_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// Channel capacities in requests, in front of each stage.
    pub validate_capacity: usize,
    pub enrich_capacity: usize,
    pub checksum_capacity: usize,
    pub log_capacity: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Inputs per group commit at most.
    pub group_commit_events_max: usize,
    /// `synced` (flush plus fdatasync; survives power loss) or `flushed`.
    pub durability: Durability,
    /// Drop records once archived and projected (needs the archive).
    pub trim: bool,
    /// Records kept in the log below the lowest committed offset (the idempotence window
    /// for retries also ends here).
    pub trim_safety_events: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Keys {
    /// Directory of key files; `<data_dir>/keys` when absent.
    pub dir: Option<PathBuf>,
    /// The HMAC key id new records are sealed with; the newest key when absent.
    pub hmac_key_id: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("kubechat-audit-data"),
            listen: Listen::default(),
            limits: Limits::default(),
            pipeline: Pipeline::default(),
            log: LogConfig::default(),
            keys: Keys::default(),
            postgres: Default::default(),
            archive: Default::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Listen {
        Listen {
            tcp_addr: "127.0.0.1:7400".parse().expect("literal"),
            http_addr: "127.0.0.1:7401".parse().expect("literal"),
            metrics_addr: "127.0.0.1:9464".parse().expect("literal"),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 1024,
            http_body_bytes_max: 16 * 1024 * 1024,
            http_bodies_bytes_inflight_max: 256 * 1024 * 1024,
            http_request_events_max: REQUEST_EVENTS_MAX,
            tcp_request_events_max: 1024,
            tcp_pipelined_requests_max: 8,
            inflight_requests_max: 256,
            idle_timeout_secs: 300,
            shutdown_drain_secs: 30,
        }
    }
}

impl Default for Pipeline {
    fn default() -> Pipeline {
        Pipeline {
            validate_capacity: 256,
            enrich_capacity: 16,
            checksum_capacity: 16,
            log_capacity: 16,
        }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            group_commit_events_max: 8192,
            durability: Durability::Synced,
            trim: true,
            trim_safety_events: 100_000,
        }
    }
}

/// A configuration that cannot work, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.keys
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys"))
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.archive
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("archive"))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// Checks the relations between bounds.
    pub fn check(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let p = &self.pipeline;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, v) in [
            ("limits.connections_max", l.connections_max),
            ("limits.http_body_bytes_max", l.http_body_bytes_max),
            ("limits.http_request_events_max", l.http_request_events_max),
            ("limits.tcp_request_events_max", l.tcp_request_events_max),
            (
                "limits.tcp_pipelined_requests_max",
                l.tcp_pipelined_requests_max,
            ),
            ("limits.inflight_requests_max", l.inflight_requests_max),
            ("pipeline.validate_capacity", p.validate_capacity),
            ("pipeline.enrich_capacity", p.enrich_capacity),
            ("pipeline.checksum_capacity", p.checksum_capacity),
            ("pipeline.log_capacity", p.log_capacity),
            (
                "log.group_commit_events_max",
                self.log.group_commit_events_max,
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if l.http_request_events_max > REQUEST_EVENTS_MAX
            || l.tcp_request_events_max > REQUEST_EVENTS_MAX
        {
            return bad(format!(
                "request event limits must not exceed {REQUEST_EVENTS_MAX}"
            ));
        }
        if l.http_bodies_bytes_inflight_max < l.http_body_bytes_max {
            return bad(
                "limits.http_bodies_bytes_inflight_max must be at least limits.http_body_bytes_max"
                    .into(),
            );
        }
        if l.http_body_bytes_max < EVENT_BYTES_MAX {
            return bad(format!(
                "limits.http_body_bytes_max ({}) must hold at least one maximal event ({EVENT_BYTES_MAX} bytes)",
                l.http_body_bytes_max
            ));
        }
        // Ingest admits at most `inflight_requests_max` requests; the first channel holds them
        // all, so handing a request to the pipeline never blocks a tokio worker.
        if l.inflight_requests_max > p.validate_capacity {
            return bad(format!(
                "limits.inflight_requests_max ({}) must not exceed pipeline.validate_capacity ({})",
                l.inflight_requests_max, p.validate_capacity
            ));
        }
        let a = &self.archive;
        if a.segment_bytes_max == 0 || a.batch_events_max == 0 || !(1..=19).contains(&a.zstd_level)
        {
            return bad("archive.segment_bytes_max and archive.batch_events_max must be at least 1, archive.zstd_level 1..=19".into());
        }
        if self.log.trim && !a.enabled {
            return bad("log.trim needs the archive (archive.enabled = true): the log is trimmed only below sealed segments".into());
        }
        let pg = &self.postgres;
        if pg.batch_events_max == 0 || pg.query_pool_size == 0 {
            return bad(
                "postgres.batch_events_max and postgres.query_pool_size must be at least 1".into(),
            );
        }
        if l.idle_timeout_secs == 0 {
            return bad("limits.idle_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_file_means_defaults() {
        Config::default().check().unwrap();
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_keys_and_broken_relations_are_refused() {
        assert!(toml::from_str::<Config>("[limits]\nconections_max = 3").is_err());
        let mut c = Config::default();
        c.limits.inflight_requests_max = c.pipeline.validate_capacity + 1;
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("inflight_requests_max"));
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../deploy/kubechat-audit.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.check().unwrap();
    }
}
