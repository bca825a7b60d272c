//! Migrations: `schemas/postgres/*.sql`, applied in order, each in its own transaction, and
//! recorded in `kubechat_audit.schema_migrations` with the SHA-256 of its text. Safe to run
//! twice and from several instances at once (an advisory lock serializes them). A migration
//! whose text changed after it was applied is refused.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Every migration, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_audit",
        include_str!("../../../schemas/postgres/0001_audit.sql"),
    ),
    (
        2,
        "0002_operational",
        include_str!("../../../schemas/postgres/0002_operational.sql"),
    ),
    (
        3,
        "0003_roles",
        include_str!("../../../schemas/postgres/0003_roles.sql"),
    ),
];

/// An arbitrary constant naming kubechat-audit's migration lock.
const LOCK_KEY: i64 = 0x6b63_6175_6469_7401;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("postgres: {}", super::retry::describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) was changed after it was applied (recorded sha256 {recorded}, now {now})")]
    Changed {
        version: i32,
        name: String,
        recorded: String,
        now: String,
    },
}

fn digest(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies every pending migration; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    // Fast path for roles that may not create anything: all applied already.
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('kubechat_audit.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if exists && pending(client).await?.is_empty() {
        return Ok(Vec::new());
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn pending(client: &Client) -> Result<Vec<i32>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, name, sha256 FROM kubechat_audit.schema_migrations",
            &[],
        )
        .await?;
    let mut todo = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        match rows.iter().find(|r| r.get::<_, i32>(0) == *version) {
            None => todo.push(*version),
            Some(r) => {
                let recorded: String = r.get(2);
                let now = digest(sql);
                if recorded != now {
                    return Err(MigrateError::Changed {
                        version: *version,
                        name: (*name).to_owned(),
                        recorded,
                        now,
                    });
                }
            }
        }
    }
    Ok(todo)
}

async fn migrate_locked(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS kubechat_audit;
             CREATE TABLE IF NOT EXISTS kubechat_audit.schema_migrations (
                 version    int         PRIMARY KEY,
                 name       text        NOT NULL,
                 sha256     text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await?;
    let todo = pending(client).await?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| todo.contains(v)) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO kubechat_audit.schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
            &[version, name, &digest(sql)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(todo)
}

/// Keeps monthly partitions ready ahead of time.
pub async fn ensure_partitions(
    client: &Client,
    months_ahead: i32,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT kubechat_audit.ensure_partitions(1, $1)",
            &[&months_ahead],
        )
        .await?;
    Ok(row.get(0))
}
