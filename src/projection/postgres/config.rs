//! PostgreSQL projection settings and connections.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// `[postgres]` in the configuration file. Without `url` the projection is off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db` (or key=value form). Never logged: it may hold a password.
    pub url: Option<String>,
    pub connect_timeout_secs: u64,
    /// `disable`, or `verify` (TLS, server certificate checked against `ca_file`).
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// Most records per projection transaction.
    pub batch_events_max: usize,
    /// How long a batch waits for more records before it is written.
    pub linger_ms: u64,
    /// The longest pause between retries of a retriable error.
    pub retry_backoff_max_ms: u64,
    /// Connections the query API keeps.
    pub query_pool_size: usize,
    /// Monthly partitions kept ready ahead of the current month.
    pub partitions_ahead_months: i32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    Disable,
    Verify,
}

impl Default for PostgresConfig {
    fn default() -> PostgresConfig {
        PostgresConfig {
            url: None,
            connect_timeout_secs: 10,
            tls: TlsMode::Disable,
            ca_file: None,
            batch_events_max: 4096,
            linger_ms: 20,
            retry_backoff_max_ms: 10_000,
            query_pool_size: 4,
            partitions_ahead_months: 3,
        }
    }
}

/// A connection setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConnectConfigError {
    #[error("postgres.url is not a valid connection string: {0}")]
    Url(tokio_postgres::Error),
    #[error("postgres.tls = \"verify\" needs postgres.ca_file")]
    NoCa,
    #[error("reading postgres.ca_file {0}: {1}")]
    Ca(PathBuf, std::io::Error),
    #[error("postgres.ca_file {0} holds no usable certificate")]
    NoCert(PathBuf),
}

/// Everything needed to open connections.
#[derive(Clone)]
pub struct Connector {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Connector {
    pub fn new(url: &str, cfg: &PostgresConfig) -> Result<Connector, ConnectConfigError> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(ConnectConfigError::Url)?;
        pg.connect_timeout(Duration::from_secs(cfg.connect_timeout_secs.max(1)));
        pg.application_name("kubechat-audit");
        let mut roots = rustls::RootCertStore::empty();
        match cfg.tls {
            TlsMode::Disable => {
                pg.ssl_mode(SslMode::Disable);
            }
            TlsMode::Verify => {
                pg.ssl_mode(SslMode::Require);
                let path = cfg.ca_file.clone().ok_or(ConnectConfigError::NoCa)?;
                let pem =
                    std::fs::read(&path).map_err(|e| ConnectConfigError::Ca(path.clone(), e))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| ConnectConfigError::Ca(path.clone(), e))?;
                    roots
                        .add(cert)
                        .map_err(|_| ConnectConfigError::NoCert(path.clone()))?;
                }
                if roots.is_empty() {
                    return Err(ConnectConfigError::NoCert(path));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector {
            pg,
            tls: MakeRustlsConnect::new(tls_config),
        })
    }

    /// Opens one connection and drives it on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        });
        Ok(client)
    }
}
