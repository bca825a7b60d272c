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

use super::{Durability, Journal};
use crate::metrics as m;

/// How the writer groups commits.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub group_commit_events_max: usize,
    pub durability: Durability,
}

/// Starts the writer thread; it ends when every sender of `rx` is gone and the queue is empty.
pub fn spawn_writer<J: Journal>(
    log: Arc<J>,
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

#[cfg(test)]
mod tests {
    //! Fault injection at the writer's I/O boundary: after a failed commit nothing is
    //! acknowledged again, and every request gets an answer.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use kubechat_audit_pipeline::enrich::{RequestContext, Transport};
    use kubechat_audit_pipeline::event::Rejection;
    use kubechat_audit_pipeline::stage::{DeadLetter, Outcome};

    use super::*;
    use crate::log::{CommitStats, LogError};

    /// Succeeds `ok` times, then fails every commit.
    struct Flaky {
        ok: usize,
        commits: AtomicUsize,
    }

    impl Journal for Flaky {
        fn commit(
            &self,
            groups: &[&[Sealed]],
            _: &mut u64,
            _: Durability,
        ) -> Result<CommitStats, LogError> {
            if self.commits.fetch_add(1, Ordering::SeqCst) >= self.ok {
                return Err(LogError::Setup("injected fsync failure".into()));
            }
            Ok(CommitStats {
                dead_letters: groups.iter().map(|g| g.len()).sum(),
                ..CommitStats::default()
            })
        }
    }

    fn request(
        tx: &mpsc::Sender<(usize, Result<Vec<Outcome>, Failure>)>,
        n: usize,
    ) -> Batch<Sealed> {
        let ctx = RequestContext {
            transport: Transport::Tcp,
            peer: "127.0.0.1:9".parse().unwrap(),
            received_at_unix_ns: 0,
        };
        let item = Sealed::Rejected(Box::new(DeadLetter {
            rejection: Rejection::new("$", "x"),
            raw: Vec::new(),
            raw_len: 0,
            transport: Transport::Tcp,
            peer: ctx.peer,
            received_at_unix_ns: 0,
        }));
        let tx = tx.clone();
        Batch {
            ctx,
            items: vec![item],
            reply: Box::new(move |r| {
                let _ = tx.send((n, r));
            }),
        }
    }

    #[test]
    fn a_failed_commit_poisons_and_nothing_is_acknowledged_after_it() {
        let journal = Arc::new(Flaky {
            ok: 2,
            commits: AtomicUsize::new(0),
        });
        let (in_tx, in_rx) = crossbeam_channel::bounded(16);
        let poison = Poison::default();
        let cfg = WriterConfig {
            group_commit_events_max: 1,
            durability: Durability::Synced,
        };
        let writer = spawn_writer(journal, in_rx, cfg, 1, poison.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        for n in 0..6 {
            in_tx.send(request(&tx, n)).unwrap();
        }
        drop(in_tx);
        writer.join().unwrap();
        let mut answers: Vec<(usize, bool)> = rx.try_iter().map(|(n, r)| (n, r.is_ok())).collect();
        answers.sort();
        assert_eq!(
            answers,
            vec![
                (0, true),
                (1, true),
                (2, false),
                (3, false),
                (4, false),
                (5, false)
            ]
        );
        assert!(poison.reason().unwrap().contains("injected fsync failure"));
    }
}
