//! The log writer thread: group commit, then acknowledgement.
//!
//! The writer blocks for one request, takes every request already waiting (up to
//! `group_commit_events_max` events), writes them as one commit, flushes once, and only then
//! calls each request's reply. A failed commit is fatal: the pipeline is poisoned, that group
//! and every later request are answered with a failure, and nothing is acknowledged again.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;
use kubechat_audit_pipeline::stage::{Batch, Failure, PanicGuard, Poison, Sealed};

use super::{Durability, Log};
use crate::metrics as m;

/// How the writer groups commits.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub group_commit_events_max: usize,
    pub durability: Durability,
}

/// Starts the writer thread; it ends when every sender of `rx` is gone and the queue is empty.
pub fn spawn_writer(
    log: Arc<Log>,
    rx: Receiver<Batch<Sealed>>,
    cfg: WriterConfig,
    mut next_dead_id: u64,
    poison: Poison,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("log-writer".into()).spawn(move || {
        let _guard = PanicGuard {
            poison: poison.clone(),
            stage: "log-writer",
        };
        let mut group: Vec<Batch<Sealed>> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut events = first.items.len();
            group.push(first);
            while events < cfg.group_commit_events_max {
                match rx.try_recv() {
                    Ok(b) => {
                        events += b.items.len();
                        group.push(b);
                    }
                    Err(_) => break,
                }
            }
            if poison.is_raised() {
                fail_all(&mut group, &poison);
                continue;
            }
            let started = Instant::now();
            let slices: Vec<&[Sealed]> = group.iter().map(|b| b.items.as_slice()).collect();
            match log.commit(&slices, &mut next_dead_id, cfg.durability) {
                Ok(stats) => {
                    m::record_commit(started.elapsed(), &stats, &group);
                    for b in group.drain(..) {
                        let outcomes = b.items.iter().map(Sealed::outcome).collect();
                        (b.reply)(Ok(outcomes));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "log commit failed; the pipeline stops acknowledging");
                    poison.raise(format!("log commit failed: {e}"));
                    fail_all(&mut group, &poison);
                }
            }
        }
    })
}

fn fail_all(group: &mut Vec<Batch<Sealed>>, poison: &Poison) {
    let reason = poison.reason().unwrap_or_else(|| "pipeline failed".into());
    for b in group.drain(..) {
        (b.reply)(Err(Failure(reason.clone())));
    }
}
