//! Ingest: the TCP and HTTP edges, and the admission control they share.
//!
//! A request (one TCP read batch or one HTTP body) takes one permit from a semaphore of
//! `inflight_requests_max` before it enters the pipeline and returns it when its reply has
//! been called. TCP readers wait for a permit (so a full pipeline stops reading the socket);
//! HTTP answers 503 with `Retry-After` instead of waiting.

pub mod http;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use kubechat_audit_pipeline::enrich::{RequestContext, Transport};
use kubechat_audit_pipeline::event::Rejection;
use kubechat_audit_pipeline::stage::{Batch, Failure, Input, Outcome, Poison, Request};
use metrics::counter;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::metrics::EVENTS_RECEIVED;

/// What a submitted request resolves to.
pub type Pending = oneshot::Receiver<Result<Vec<Outcome>, Failure>>;

/// Why a request was not admitted.
#[derive(Debug)]
pub enum NotAdmitted {
    /// Every in-flight slot is taken (HTTP only; TCP waits).
    Busy,
    /// The pipeline has failed or is shutting down.
    Closed(String),
}

/// The shared entry to the pipeline.
pub struct Ingest {
    /// Taken away by [`Ingest::close`], which lets the stages drain and stop.
    tx: std::sync::Mutex<Option<Sender<Request>>>,
    inflight: Arc<Semaphore>,
    poison: Poison,
    draining: AtomicBool,
    /// HTTP body memory, in KiB permits.
    body_kib: Arc<Semaphore>,
    pub limits: Limits,
}

impl Ingest {
    pub fn new(tx: Sender<Request>, poison: Poison, limits: Limits) -> Ingest {
        Ingest {
            tx: std::sync::Mutex::new(Some(tx)),
            inflight: Arc::new(Semaphore::new(limits.inflight_requests_max)),
            poison,
            draining: AtomicBool::new(false),
            body_kib: Arc::new(Semaphore::new(
                limits.http_bodies_bytes_inflight_max.div_ceil(1024),
            )),
            limits,
        }
    }

    /// Ready means: the pipeline is healthy and not shutting down.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self.poison.reason() {
            return Err(format!("pipeline failed: {reason}"));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        Ok(())
    }

    /// Stops admitting new requests (graceful shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Reserves memory for an HTTP body of up to `bytes`, if available now.
    pub fn reserve_body(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).ok()?;
        self.body_kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Closes the entry: requests already inside are still processed and answered.
    pub fn close(&self) {
        self.start_draining();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Submits a request, waiting for an in-flight slot.
    pub async fn submit(
        &self,
        ctx: RequestContext,
        inputs: Vec<Input>,
    ) -> Result<Pending, NotAdmitted> {
        self.ready().map_err(NotAdmitted::Closed)?;
        let permit = self
            .inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NotAdmitted::Closed("shutting down".into()))?;
        self.send(ctx, inputs, permit)
    }

    /// Submits a request if a slot is free right now.
    pub fn try_submit(
        &self,
        ctx: RequestContext,
        inputs: Vec<Input>,
    ) -> Result<Pending, NotAdmitted> {
        self.ready().map_err(NotAdmitted::Closed)?;
        let permit = self
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotAdmitted::Busy)?;
        self.send(ctx, inputs, permit)
    }

    fn send(
        &self,
        ctx: RequestContext,
        inputs: Vec<Input>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Pending, NotAdmitted> {
        counter!(EVENTS_RECEIVED, "transport" => ctx.transport.as_str())
            .increment(inputs.len() as u64);
        let (tx, rx) = oneshot::channel();
        let request = Batch {
            ctx,
            items: inputs,
            reply: Box::new(move |result| {
                drop(permit);
                // The producer may have gone; its events are durable all the same.
                let _ = tx.send(result);
            }),
        };
        // The first channel holds every admitted request (Config::check), so this does not
        // block; if it ever would, block this worker rather than drop the request.
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            return Err(NotAdmitted::Closed("shutting down".into()));
        };
        match tx.try_send(request) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(r)) => tokio::task::block_in_place(|| tx.send(r))
                .map(|()| rx)
                .map_err(|_| NotAdmitted::Closed("pipeline stopped".into())),
            Err(TrySendError::Disconnected(_)) => {
                Err(NotAdmitted::Closed("pipeline stopped".into()))
            }
        }
    }
}

/// Accepts connections with a bounded number open at once: a slot is taken before
/// `accept`, so excess producers wait in the listen backlog. Returns `None` once `shutdown`
/// turns true. The connection holds its slot until the permit is dropped.
pub struct Acceptor {
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
    transport: &'static str,
}

impl Acceptor {
    pub fn new(
        listener: tokio::net::TcpListener,
        connections_max: usize,
        transport: &'static str,
    ) -> Acceptor {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(connections_max)),
            transport,
        }
    }

    pub async fn next(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.expect("the slot semaphore is never closed"),
            _ = shutdown.changed() => return None,
        };
        loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((stream, peer, permit));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: pause, do not spin.
                        tracing::warn!(transport = self.transport, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return None,
            }
        }
    }
}

/// Stamps a request's context.
pub fn context(transport: Transport, peer: SocketAddr) -> RequestContext {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    RequestContext {
        transport,
        peer,
        received_at_unix_ns: ns,
    }
}

/// One acknowledgement or error, as the JSON both transports write.
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Accepted {
            seq,
            event_id,
            checksum,
            duplicate,
        } => {
            let mut v = serde_json::json!({
                "seq": seq,
                "event_id": event_id.to_string(),
                "checksum": hex::encode(checksum),
            });
            if *duplicate {
                v["duplicate"] = true.into();
            }
            v
        }
        Outcome::Rejected(r) => rejection_json(r),
    }
}

/// `{"error":{"field":...,"message":...}}`.
pub fn rejection_json(r: &Rejection) -> serde_json::Value {
    serde_json::json!({"error": {"field": r.field, "message": r.message}})
}
