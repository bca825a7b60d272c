//! TCP ingest: newline-delimited JSON in, one JSON line out per input line, in order.
//!
//! ```text
//! -> {"user_id":"alice",...}\n
//! <- {"seq":41,"event_id":"...","checksum":"<64 hex>"}\n          once durable
//! -> {"user_id":42}\n
//! <- {"error":{"field":"user_id","message":"must be a string, not a number"}}\n
//! ```
//!
//! Blank lines are skipped without an answer. Producers may pipeline: the reader keeps
//! handing batches of lines to the pipeline while earlier ones are in flight, up to
//! `tcp_pipelined_requests_max` per connection; the writer answers them in order. A line
//! longer than the event limit is rejected (and kept in the dead letters) without buffering
//! it. A connection idle for `idle_timeout_secs` is closed once its answers are written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubechat_audit_pipeline::enrich::Transport;
use kubechat_audit_pipeline::event::Rejection;
use kubechat_audit_pipeline::framing::{Frame, LineFramer};
use kubechat_audit_pipeline::limits::EVENT_BYTES_MAX;
use kubechat_audit_pipeline::stage::Input;
use metrics::gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{context, outcome_json, rejection_json, Acceptor, Ingest, NotAdmitted, Pending};
use crate::metrics::CONNECTIONS_OPEN;

/// Accepts connections until `shutdown` turns true, then waits for open ones to finish.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = Acceptor::new(listener, ingest.limits.connections_max, "tcp");
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((stream, peer, permit)) = acceptor.next(&mut shutdown).await {
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            gauge!(CONNECTIONS_OPEN, "transport" => "tcp").increment(1.0);
            if let Err(e) = connection(stream, peer, &ingest, shutdown).await {
                tracing::debug!(%peer, error = %e, "tcp connection ended with an error");
            }
            gauge!(CONNECTIONS_OPEN, "transport" => "tcp").decrement(1.0);
            drop(permit);
        });
    }
    drop(acceptor);
    while tasks.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ingest: &Ingest,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut rd, wr) = stream.into_split();
    let limits = ingest.limits.clone();
    let (ack_tx, mut ack_rx) = mpsc::channel::<(usize, Pending)>(limits.tcp_pipelined_requests_max);

    let writer = tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(64 * 1024, wr);
        let mut line = Vec::with_capacity(256);
        while let Some((n, mut pending)) = ack_rx.recv().await {
            // Answers already written wait in the buffer only while the next reply is
            // ready too: before waiting for one that is not, send what we have.
            let ready = futures_util::FutureExt::now_or_never(&mut pending);
            let result = match ready {
                Some(r) => r,
                None => {
                    out.flush().await?;
                    pending.await
                }
            };
            let result = result.unwrap_or_else(|_| {
                Err(kubechat_audit_pipeline::stage::Failure(
                    "pipeline stopped".into(),
                ))
            });
            match result {
                Ok(outcomes) => {
                    debug_assert_eq!(outcomes.len(), n);
                    for o in &outcomes {
                        line.clear();
                        serde_json::to_writer(&mut line, &outcome_json(o)).expect("JSON to a Vec");
                        line.push(b'\n');
                        out.write_all(&line).await?;
                    }
                }
                Err(f) => {
                    let r = Rejection::new("$", format!("not stored: {f}"));
                    for _ in 0..n {
                        line.clear();
                        serde_json::to_writer(&mut line, &rejection_json(&r))
                            .expect("JSON to a Vec");
                        line.push(b'\n');
                        out.write_all(&line).await?;
                    }
                    out.flush().await?;
                    return Ok(());
                }
            }
            // Flush when no further request is queued, so pipelined answers share a write.
            if ack_rx.is_empty() {
                out.flush().await?;
            }
        }
        out.flush().await?;
        out.shutdown().await
    });

    let mut framer = LineFramer::new(EVENT_BYTES_MAX);
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut eof = false;
    while !eof {
        let n = tokio::select! {
            r = tokio::time::timeout(idle, rd.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => break, // idle: stop reading, finish answering
            },
            _ = shutdown.changed() => break,
        };
        if n == 0 {
            framer.finish(&mut frames);
            eof = true;
        } else {
            framer.push(&buf[..n], &mut frames);
        }
        let mut inputs: Vec<Input> = Vec::new();
        for frame in frames.drain(..) {
            inputs.push(match frame {
                Frame::Line(l) => Input::Raw(l),
                Frame::TooLong { prefix, len } => Input::Refused {
                    rejection: Rejection::new(
                        "$",
                        format!("line is {len} bytes, more than the limit of {EVENT_BYTES_MAX}"),
                    ),
                    raw: prefix,
                    raw_len: len as u64,
                },
            });
            if inputs.len() == limits.tcp_request_events_max
                && !submit(ingest, peer, std::mem::take(&mut inputs), &ack_tx).await
            {
                // The pipeline refused: the lines not yet handed over get no answer, and
                // the connection closes, so the producer knows they were not stored.
                eof = true;
                break;
            }
        }
        if !inputs.is_empty() && !submit(ingest, peer, inputs, &ack_tx).await {
            break;
        }
    }
    drop(ack_tx);
    writer.await.map_err(std::io::Error::other)?
}

/// Hands one batch of lines to the pipeline; false when the connection should stop reading.
async fn submit(
    ingest: &Ingest,
    peer: SocketAddr,
    inputs: Vec<Input>,
    acks: &mpsc::Sender<(usize, Pending)>,
) -> bool {
    let n = inputs.len();
    match ingest.submit(context(Transport::Tcp, peer), inputs).await {
        Ok(pending) => acks.send((n, pending)).await.is_ok(),
        Err(NotAdmitted::Busy) => unreachable!("TCP waits for a slot"),
        Err(NotAdmitted::Closed(reason)) => {
            // Answer each line so the producer knows none of them was stored.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(kubechat_audit_pipeline::stage::Failure(reason)));
            let _ = acks.send((n, rx)).await;
            false
        }
    }
}
