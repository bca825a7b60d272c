//! The query API, served from PostgreSQL with bind parameters only.
//!
//! ```text
//! GET /v1/events?user_id=&event_type=&session_id=&from=&to=&limit=&after_seq=&chain_id=
//! GET /v1/sessions/{session_id}/events?limit=&after_seq=&chain_id=
//! -> 200 {"chain_id":..., "events":[<record JSON>...], "next_after_seq": N | null}
//! ```
//!
//! Results are one chain's records in `seq` order (the serving instance's chain unless
//! `chain_id` names another); `after_seq` is the paging cursor: pass the previous answer's
//! `next_after_seq` to get the next page. `from` and `to` bound the producer's `timestamp`
//! (RFC 3339, `from` inclusive, `to` exclusive). `schemas/openapi.yaml` documents it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kubechat_audit_pipeline::event::{parse_timestamp, EventType};
use kubechat_audit_pipeline::record::format_unix_ns;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::config::Connector;
use super::rows::{EventRow, EVENT_COLUMNS};
use crate::ingest::Ingest;

/// Default and largest page size.
pub const PAGE_EVENTS_DEFAULT: i64 = 100;
pub const PAGE_EVENTS_MAX: i64 = 1000;

#[derive(Clone)]
struct QueryState {
    pool: Pool,
    chain_id: Arc<str>,
}

/// The query routes, to merge into the HTTP API.
pub fn routes(connector: &Connector, pool_size: usize, chain_id: &str) -> Router<Arc<Ingest>> {
    let mgr = Manager::from_config(
        connector.pg.clone(),
        connector.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(pool_size.max(1))
        .build()
        .expect("a pool without a runtime-bound timeout builds");
    let state = QueryState {
        pool,
        chain_id: chain_id.into(),
    };
    Router::new()
        .route("/v1/events", get(list_events))
        .route("/v1/sessions/{session_id}/events", get(session_events))
        .with_state(state)
}

fn bad(field: &str, message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"field": field, "message": message.into()}})),
    )
        .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"field": "$", "message": format!("query store unavailable: {e}")}})),
    )
        .into_response()
}

const PARAMS: [&str; 8] = [
    "user_id",
    "event_type",
    "session_id",
    "from",
    "to",
    "limit",
    "after_seq",
    "chain_id",
];

async fn list_events(
    State(s): State<QueryState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    run(&s, &q, None).await
}

async fn session_events(
    State(s): State<QueryState>,
    Path(session_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(sid) = Uuid::parse_str(&session_id) else {
        return bad("session_id", format!("{session_id:?} is not a UUID"));
    };
    if q.contains_key("session_id") {
        return bad("session_id", "give the session in the path only");
    }
    run(&s, &q, Some(sid)).await
}

/// A time parameter; the error names the parameter and what is wrong.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<OffsetDateTime>, String> {
    match q.get(name) {
        None => Ok(None),
        Some(t) => {
            let ns = parse_timestamp(t)?;
            Ok(Some(
                OffsetDateTime::from_unix_timestamp_nanos(ns as i128).expect("in range"),
            ))
        }
    }
}

async fn run(s: &QueryState, q: &HashMap<String, String>, session: Option<Uuid>) -> Response {
    if let Some(unknown) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return bad(
            unknown,
            format!("unknown query parameter; accepted: {}", PARAMS.join(", ")),
        );
    }
    let chain_id: String = q
        .get("chain_id")
        .cloned()
        .unwrap_or_else(|| s.chain_id.to_string());
    let limit: i64 = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => PAGE_EVENTS_DEFAULT,
        Some(Ok(n)) if (1..=PAGE_EVENTS_MAX).contains(&n) => n,
        Some(_) => {
            return bad(
                "limit",
                format!("must be an integer from 1 to {PAGE_EVENTS_MAX}"),
            )
        }
    };
    let after: i64 = match q.get("after_seq").map(|a| a.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return bad(
                "after_seq",
                "must be a non-negative integer (the previous page's next_after_seq)",
            )
        }
    };
    let session = match (session, q.get("session_id")) {
        (Some(s), _) => Some(s),
        (None, None) => None,
        (None, Some(t)) => match Uuid::parse_str(t) {
            Ok(u) => Some(u),
            Err(_) => return bad("session_id", format!("{t:?} is not a UUID")),
        },
    };
    if let Some(t) = q.get("event_type") {
        if EventType::parse(t).is_none() {
            return bad(
                "event_type",
                format!("{t:?} is not one of command_execution, auth_event, system_event"),
            );
        }
    }
    let (from, to) = match (time_param(q, "from"), time_param(q, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(m), _) => return bad("from", m),
        (_, Err(m)) => return bad("to", m),
    };

    let mut w = Where::default();
    w.add("chain_id = ?", Box::new(chain_id.clone()));
    w.add("seq > ?", Box::new(after));
    if let Some(u) = q.get("user_id") {
        w.add("user_id = ?", Box::new(u.clone()));
    }
    if let Some(t) = q.get("event_type") {
        w.add("event_type = ?", Box::new(t.clone()));
    }
    if let Some(sid) = session {
        w.add("session_id = ?", Box::new(sid));
    }
    if let Some(f) = from {
        w.add("\"timestamp\" >= ?", Box::new(f));
    }
    if let Some(t) = to {
        w.add("\"timestamp\" < ?", Box::new(t));
    }
    // The band statement's conditions: chain, cursor and time only, which the index
    // (chain_id, "timestamp", seq) answers alone; the other filters apply to the page.
    let mut band_where = Where::default();
    band_where.add("chain_id = ?", Box::new(chain_id.clone()));
    band_where.add("seq > ?", Box::new(after));
    if let Some(f) = from {
        band_where.add("\"timestamp\" >= ?", Box::new(f));
    }
    if let Some(t) = to {
        band_where.add("\"timestamp\" < ?", Box::new(t));
    }
    let client = match s.pool.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    // A time range without a user or session filter: the audit_events partitions are by
    // received_at, so a plain "ORDER BY seq" scan would read every partition to its end.
    // First find the seq band of the matching rows through (chain_id, timestamp, seq), then
    // page inside that band by seq.
    let time_only =
        (from.is_some() || to.is_some()) && q.get("user_id").is_none() && session.is_none();
    if time_only {
        let band_sql = format!(
            "SELECT min(seq), max(seq) FROM (SELECT seq FROM kubechat_audit.audit_events WHERE {} OFFSET 0) band",
            band_where.sql()
        );
        let band = match client.query_one(&band_sql, &band_where.refs()).await {
            Ok(r) => (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)),
            Err(e) => return unavailable(e),
        };
        let (Some(lo), Some(hi)) = band else {
            return Json(json!({"chain_id": chain_id, "events": [], "next_after_seq": null}))
                .into_response();
        };
        w.add("seq >= ?", Box::new(lo));
        w.add("seq <= ?", Box::new(hi));
    }
    let where_sql = w.sql();
    w.params.push(Box::new(limit));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM kubechat_audit.audit_events WHERE {where_sql} ORDER BY seq LIMIT ${}",
        w.params.len()
    );
    let rows = match client.query(&sql, &w.refs()).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let events: Vec<Value> = rows
        .iter()
        .map(|r| row_json(&EventRow::from_pg(r)))
        .collect();
    let next = if events.len() as i64 == limit {
        rows.last().map(|r| r.get::<_, i64>(1))
    } else {
        None
    };
    Json(json!({"chain_id": chain_id, "events": events, "next_after_seq": next})).into_response()
}

/// A WHERE clause built from bind parameters only.
#[derive(Default)]
struct Where {
    conds: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Where {
    /// Adds a condition; its `?` becomes the next `$n`.
    fn add(&mut self, cond: &str, p: Box<dyn ToSql + Sync + Send>) {
        self.params.push(p);
        self.conds
            .push(cond.replace('?', &format!("${}", self.params.len())));
    }

    fn sql(&self) -> String {
        self.conds.join(" AND ")
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A row as the record's JSON line form.
pub fn row_json(r: &EventRow) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            m.insert(k.to_owned(), v);
        }
    };
    put("action", r.action.clone().into());
    put("chain_id", r.chain_id.clone().into());
    put("classification", r.classification.clone().into());
    put("event_id", r.event_id.to_string().into());
    put("event_type", r.event_type.clone().into());
    put("ip_address", r.ip_address.map(|i| i.to_string()).into());
    put("key_id", r.key_id.clone().into());
    put("kubernetes_command", r.kubernetes_command.clone().into());
    put("metadata", r.metadata.clone().unwrap_or(Value::Null));
    put("received_at", format_unix_ns(r.received_at_unix_ns).into());
    put("retention_class", r.retention_class.clone().into());
    put("seq", r.seq.into());
    put("session_id", r.session_id.map(|s| s.to_string()).into());
    put(
        "source",
        json!({"peer": r.source_peer, "transport": r.source_transport}),
    );
    put("success", r.success.into());
    put("timestamp", r.timestamp_text.clone().into());
    put("user_agent", r.user_agent.clone().into());
    put("user_id", r.user_id.clone().into());
    put("prev_checksum", r.prev_checksum.clone().into());
    put("checksum", r.checksum.clone().into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::PARAMS;

    /// The OpenAPI document names every route and query parameter the code serves.
    #[test]
    fn openapi_documents_every_route_and_parameter() {
        let doc = include_str!("../../../schemas/openapi.yaml");
        for path in [
            "/v1/events:",
            "/v1/sessions/{session_id}/events:",
            "/healthz:",
            "/readyz:",
        ] {
            assert!(doc.contains(path), "openapi.yaml lacks {path}");
        }
        for p in PARAMS {
            assert!(
                doc.contains(&format!("name: {p},")),
                "openapi.yaml lacks the query parameter {p}"
            );
        }
        for status in ["\"200\"", "\"400\"", "\"413\"", "\"422\"", "\"503\""] {
            assert!(doc.contains(status), "openapi.yaml lacks status {status}");
        }
    }
}
