//! HTTP ingest and health endpoints.
//!
//! `POST /v1/events` takes one JSON object, a JSON array of objects, or NDJSON
//! (`Content-Type: application/x-ndjson`) and answers once every event in it is durable:
//!
//! ```text
//! 200 {"accepted":N,"rejected":M,"results":[<ack or error>, ...]}   some accepted (or none sent)
//! 422 the same body                                                  every event rejected
//! 400 {"error":{"field":"$","message":...}}                          the body is not JSON
//! 413 {"error":...}                                                  body or event count too large
//! 503 {"error":...} + Retry-After                                    pipeline full or stopping
//! ```
//!
//! The `results` are in input order, in the shapes TCP writes. A body that is not JSON is
//! kept in the dead letters like any other rejected input. `GET /healthz` answers while the
//! process runs; `GET /readyz` only while it accepts events. Connections are bounded
//! (`connections_max`) and idle ones closed (`idle_timeout_secs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kubechat_audit_pipeline::enrich::Transport;
use kubechat_audit_pipeline::event::Rejection;
use kubechat_audit_pipeline::framing::{Frame, LineFramer};
use kubechat_audit_pipeline::limits::EVENT_BYTES_MAX;
use kubechat_audit_pipeline::stage::{Input, Outcome};
use metrics::{counter, gauge};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{context, outcome_json, rejection_json, Acceptor, Ingest, NotAdmitted};
use crate::metrics::{CONNECTIONS_OPEN, HTTP_OVERLOADED};

/// Extra routes (queries) other modules add to the API.
pub type ExtraRoutes = Router<Arc<Ingest>>;

/// The HTTP API router.
pub fn router(ingest: Arc<Ingest>, extra: Option<ExtraRoutes>) -> Router {
    let mut r = Router::new()
        .route("/v1/events", post(post_events))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz));
    if let Some(extra) = extra {
        r = r.merge(extra);
    }
    r.with_state(ingest)
}

async fn readyz(State(ingest): State<Arc<Ingest>>) -> Response {
    match ingest.ready() {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

fn error(status: StatusCode, field: &str, message: String) -> Response {
    (
        status,
        Json(rejection_json(&Rejection::new(field, message))),
    )
        .into_response()
}

fn unavailable(message: String) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "$", message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn post_events(
    State(ingest): State<Arc<Ingest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = ingest.limits.http_body_bytes_max;
    let events_max = ingest.limits.http_request_events_max;
    // Memory for the body is reserved before it is read: the declared length, or the limit.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "$",
            format!("request body is larger than the limit of {limit} bytes"),
        );
    }
    let reserve = declared.unwrap_or(limit);
    let Some(_body_memory) = ingest.reserve_body(reserve) else {
        counter!(HTTP_OVERLOADED).increment(1);
        return unavailable(
            "too many request bodies in flight; retry after the indicated delay".into(),
        );
    };
    let bytes = match to_bytes(body, reserve.min(limit)).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "$",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        }
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/x-ndjson"));
    let inputs = match split_body(&bytes, ndjson) {
        Ok(inputs) => inputs,
        Err(rejection) => {
            // Keep the refused body like any rejected input, then answer 400.
            let raw_len = bytes.len() as u64;
            let input = Input::Refused {
                rejection: rejection.clone(),
                raw: bytes[..bytes.len().min(EVENT_BYTES_MAX)].to_vec(),
                raw_len,
            };
            return match submit(&ingest, peer, vec![input]).await {
                Ok(_) => error(StatusCode::BAD_REQUEST, &rejection.field, rejection.message),
                Err(resp) => resp,
            };
        }
    };
    if inputs.len() > events_max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "$",
            format!(
                "request carries {} events, more than the limit of {events_max}",
                inputs.len()
            ),
        );
    }
    let outcomes = match submit(&ingest, peer, inputs).await {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted { .. }))
        .count();
    let rejected = outcomes.len() - accepted;
    let status = if accepted == 0 && rejected > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let results: Vec<serde_json::Value> = outcomes.iter().map(outcome_json).collect();
    (
        status,
        Json(serde_json::json!({"accepted": accepted, "rejected": rejected, "results": results})),
    )
        .into_response()
}

async fn submit(
    ingest: &Ingest,
    peer: SocketAddr,
    inputs: Vec<Input>,
) -> Result<Vec<Outcome>, Response> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let pending = match ingest.try_submit(context(Transport::Http, peer), inputs) {
        Ok(p) => p,
        Err(NotAdmitted::Busy) => {
            counter!(HTTP_OVERLOADED).increment(1);
            return Err(unavailable(
                "the pipeline is full; retry after the indicated delay".into(),
            ));
        }
        Err(NotAdmitted::Closed(reason)) => {
            return Err(unavailable(format!("not accepting events: {reason}")))
        }
    };
    match pending.await {
        Ok(Ok(outcomes)) => Ok(outcomes),
        Ok(Err(f)) => Err(unavailable(format!("not stored: {f}"))),
        Err(_) => Err(unavailable("not stored: pipeline stopped".into())),
    }
}

/// Splits a body into inputs: NDJSON lines, array elements, or the single object.
fn split_body(bytes: &[u8], ndjson: bool) -> Result<Vec<Input>, Rejection> {
    if ndjson {
        let mut framer = LineFramer::new(EVENT_BYTES_MAX);
        let mut frames = Vec::new();
        framer.push(bytes, &mut frames);
        framer.finish(&mut frames);
        return Ok(frames
            .into_iter()
            .map(|f| match f {
                Frame::Line(l) => Input::Raw(l),
                Frame::TooLong { prefix, len } => Input::Refused {
                    rejection: Rejection::new(
                        "$",
                        format!("line is {len} bytes, more than the limit of {EVENT_BYTES_MAX}"),
                    ),
                    raw: prefix,
                    raw_len: len as u64,
                },
            })
            .collect());
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(Rejection::new(
            "$",
            "request body is empty; send a JSON object, an array of objects, or NDJSON",
        )),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(bytes)
                .map_err(|e| Rejection::new("$", format!("request body is not valid JSON: {e}")))?;
            Ok(items
                .into_iter()
                .map(|raw| {
                    let b = raw.get().as_bytes();
                    if b.len() > EVENT_BYTES_MAX {
                        Input::Refused {
                            rejection: Rejection::new(
                                "$",
                                format!(
                                    "event is {} bytes, more than the limit of {EVENT_BYTES_MAX}",
                                    b.len()
                                ),
                            ),
                            raw: b[..EVENT_BYTES_MAX].to_vec(),
                            raw_len: b.len() as u64,
                        }
                    } else {
                        Input::Raw(b.to_vec())
                    }
                })
                .collect())
        }
        Some(_) => {
            // One event: check it is JSON at all here, so that a garbage body is a 400.
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .map_err(|e| Rejection::new("$", format!("request body is not valid JSON: {e}")))?;
            Ok(vec![Input::Raw(bytes.to_vec())])
        }
    }
}

/// Serves the HTTP API until `shutdown` turns true, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = Acceptor::new(listener, ingest.limits.connections_max, "http");
    let idle = Duration::from_secs(ingest.limits.idle_timeout_secs);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer, permit)) = acceptor.next(&mut shutdown).await {
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.map(Body::new)
                });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            gauge!(CONNECTIONS_OPEN, "transport" => "http").increment(1.0);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            gauge!(CONNECTIONS_OPEN, "transport" => "http").decrement(1.0);
            drop(permit);
        });
    }
    drop(acceptor);
    graceful.shutdown().await;
}
