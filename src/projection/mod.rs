//! Projections: views of the durable log, each tailing it from its own committed offset.
//!
//! A projection never receives events from the stages; it reads what the log has made
//! durable, so an outage of its target costs nothing but lag.
//!
//! - [`postgres`]: insert-only PostgreSQL tables for queries and compliance reports.
//! - [`archive`]: rolling zstd segments with signed manifests, verifiable offline.

pub mod archive;
pub mod postgres;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::gauge;

/// A projection's lifecycle, as the `kubechat_audit_projection_state` metric reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Retrying,
    Failed,
    Stopped,
}

impl State {
    const ALL: [State; 4] = [
        State::Running,
        State::Retrying,
        State::Failed,
        State::Stopped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Retrying => "retrying",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// Sets projection `name`'s state: 1 for the current one, 0 for the others.
pub fn set_state(name: &'static str, s: State) {
    for t in State::ALL {
        gauge!(crate::metrics::PROJECTION_STATE, "projection" => name, "state" => t.as_str())
            .set(if t == s { 1.0 } else { 0.0 });
    }
}

/// A running projection thread and the flag that asks it to stop.
pub struct Handle {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), String>>,
}

impl Handle {
    pub fn new(
        name: &'static str,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Result<(), String>>,
    ) -> Handle {
        Handle { name, stop, thread }
    }

    /// Asks the projection to stop (the archive seals its open segment, PostgreSQL finishes
    /// its batch) and waits for it; its error, if it had stopped on one.
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        let name = self.name;
        self.thread
            .join()
            .unwrap_or_else(|_| Err(format!("the {name} projection panicked")))
    }
}

/// Exponential backoff for retriable errors: 100 ms doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let steps: Vec<u64> = (0..5).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }
}
