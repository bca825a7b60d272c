//! The stage runtime: `validate -> enrich -> checksum`, each a thread, joined by bounded
//! crossbeam channels.
//!
//! The unit that moves is a request (one TCP read batch or one HTTP body) with one reply
//! callback, so a channel hop costs once per request, not once per event, and a request is
//! never split across group commits. A full channel blocks the stage that sends into it;
//! nothing is dropped. A stage that panics raises the shared [`Poison`], and every request
//! it held is answered with a [`Failure`].
//!
//! `checksum` is the only place that assigns `seq` and extends the chain. It also answers
//! idempotent retries from memory: an `event_id` already in the log's window (in flight or
//! durable) becomes a [`Sealed::Duplicate`] that the log writer acknowledges with the
//! original `seq` once the batch it rides in is durable, which is never before the
//! original. Nothing on this path reads the log.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;
use uuid::Uuid;

use crate::chain::{seal, ChainKey};
use crate::enrich::{enrich, uuid_v7_at, EnrichedEvent, RequestContext, Transport};
use crate::event::{validate_bytes, AuditEvent, Rejection};
use crate::limits::{BODY_BYTES_MAX, DEAD_LETTER_RAW_BYTES_MAX};
use crate::record::{format_unix_ns, write_body, StoredRecord};

/// The pipeline could not process a request; nothing in it was acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Called exactly once per request, after its outcome is durable (or has failed).
pub type Reply = Box<dyn FnOnce(Result<Vec<Outcome>, Failure>) + Send>;

/// One input as ingest framed it.
#[derive(Debug)]
pub enum Input {
    /// Encoded JSON: a TCP or NDJSON line, one element of an array body, or a whole body.
    Raw(Vec<u8>),
    /// Input that ingest already refused (an overlong line, a body that is not JSON).
    Refused {
        rejection: Rejection,
        raw: Vec<u8>,
        raw_len: u64,
    },
}

/// What a producer is told about one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        seq: u64,
        event_id: Uuid,
        checksum: [u8; 32],
        /// True when this was a retry of an event already stored.
        duplicate: bool,
    },
    Rejected(Rejection),
}

/// A request on its way through the stages.
pub struct Batch<T> {
    pub ctx: RequestContext,
    pub items: Vec<T>,
    pub reply: Reply,
}

/// What ingest sends into the pipeline.
pub type Request = Batch<Input>;

/// A rejected input, kept with its reason, source and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub rejection: Rejection,
    /// The input bytes (at most [`DEAD_LETTER_RAW_BYTES_MAX`]).
    pub raw: Vec<u8>,
    /// The full length of the input, which is more than `raw.len()` only for overlong lines.
    pub raw_len: u64,
    pub transport: Transport,
    pub peer: SocketAddr,
    pub received_at_unix_ns: i64,
}

impl DeadLetter {
    fn new(
        ctx: &RequestContext,
        rejection: Rejection,
        mut raw: Vec<u8>,
        raw_len: u64,
    ) -> DeadLetter {
        raw.truncate(DEAD_LETTER_RAW_BYTES_MAX);
        DeadLetter {
            rejection,
            raw,
            raw_len,
            transport: ctx.transport,
            peer: ctx.peer,
            received_at_unix_ns: ctx.received_at_unix_ns,
        }
    }

    /// The JSON line form `dead-letters` prints. Input that is not UTF-8 is kept in hex
    /// (`raw_hex`) so that no byte is lost.
    pub fn to_json(&self, id: u64) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), id.into());
        m.insert(
            "received_at".into(),
            format_unix_ns(self.received_at_unix_ns).into(),
        );
        m.insert("transport".into(), self.transport.as_str().into());
        m.insert("peer".into(), self.peer.to_string().into());
        m.insert("field".into(), self.rejection.field.clone().into());
        m.insert("message".into(), self.rejection.message.clone().into());
        match std::str::from_utf8(&self.raw) {
            Ok(s) => m.insert("raw".into(), s.into()),
            Err(_) => m.insert("raw_hex".into(), hex::encode(&self.raw).into()),
        };
        m.insert("raw_len".into(), self.raw_len.into());
        m.insert(
            "raw_truncated".into(),
            (self.raw_len > self.raw.len() as u64).into(),
        );
        Value::Object(m)
    }
}

/// What the checksum stage hands the log writer for each input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    New {
        record: StoredRecord,
        event_id: Uuid,
    },
    Duplicate {
        seq: u64,
        event_id: Uuid,
        checksum: [u8; 32],
    },
    Rejected(Box<DeadLetter>),
}

impl Sealed {
    /// The producer's answer once this item is durable.
    pub fn outcome(&self) -> Outcome {
        match self {
            Sealed::New {
                record, event_id, ..
            } => Outcome::Accepted {
                seq: record.seq,
                event_id: *event_id,
                checksum: record.checksum,
                duplicate: false,
            },
            Sealed::Duplicate {
                seq,
                event_id,
                checksum,
            } => Outcome::Accepted {
                seq: *seq,
                event_id: *event_id,
                checksum: *checksum,
                duplicate: true,
            },
            Sealed::Rejected(d) => Outcome::Rejected(d.rejection.clone()),
        }
    }
}

/// A shared flag that a failing stage raises; once raised, it stays raised.
#[derive(Clone, Default)]
pub struct Poison(Arc<PoisonInner>);

#[derive(Default)]
struct PoisonInner {
    raised: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    pub fn raise(&self, reason: impl Into<String>) {
        let mut r = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        self.0.raised.store(true, Ordering::SeqCst);
    }

    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<String> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Raises the poison if the thread that holds it unwinds.
pub struct PanicGuard {
    pub poison: Poison,
    pub stage: &'static str,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poison.raise(format!("stage {} panicked", self.stage));
        }
    }
}

/// Where the chain stands: the next `seq` and the checksum before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainState {
    pub next_seq: u64,
    pub prev: [u8; 32],
}

/// How far back the log still holds records: ids of records below this are forgotten.
pub trait LogWindow: Send + 'static {
    /// The first `seq` the log still holds (it trims below what every projection has
    /// committed).
    fn first_seq(&self) -> u64;
}

/// Every `event_id` the log holds or is about to hold, in memory, so that recognising a
/// retry costs a hash lookup rather than a read of the log. It spans exactly the log's
/// window: entries are dropped, oldest first, once the log has trimmed their records, so
/// the idempotence window is the log's (bounded by `log.trim_safety_events`).
struct KnownIds {
    map: HashMap<Uuid, (u64, [u8; 32])>,
    /// `(seq, id)` in seq order, for eviction behind the trim point.
    order: VecDeque<(u64, Uuid)>,
}

impl KnownIds {
    fn insert(&mut self, id: Uuid, seq: u64, checksum: [u8; 32]) {
        debug_assert!(
            self.order.back().is_none_or(|(s, _)| *s < seq),
            "ids arrive in seq order"
        );
        self.map.insert(id, (seq, checksum));
        self.order.push_back((seq, id));
    }

    fn forget_below(&mut self, first_seq: u64) {
        while let Some(&(seq, id)) = self.order.front() {
            if seq >= first_seq {
                break;
            }
            self.order.pop_front();
            if self.map.get(&id).is_some_and(|(s, _)| *s == seq) {
                self.map.remove(&id);
            }
        }
    }
}

/// The checksum stage's state and logic, kept apart from its thread for testing.
pub struct Checksummer {
    key: ChainKey,
    chain_id: String,
    state: ChainState,
    known: KnownIds,
    window: Box<dyn LogWindow>,
    body: Vec<u8>,
}

impl Checksummer {
    /// `known` lists the `(seq, event_id, checksum)` of every record the log holds, in seq
    /// order (the log scans them at start-up).
    pub fn new(
        key: ChainKey,
        chain_id: String,
        state: ChainState,
        known: Vec<(u64, Uuid, [u8; 32])>,
        window: Box<dyn LogWindow>,
    ) -> Checksummer {
        let mut ids = KnownIds {
            map: HashMap::with_capacity(known.len()),
            order: VecDeque::with_capacity(known.len()),
        };
        for (seq, id, checksum) in known {
            ids.insert(id, seq, checksum);
        }
        Checksummer {
            key,
            chain_id,
            state,
            known: ids,
            window,
            body: Vec::with_capacity(1024),
        }
    }

    /// Event ids currently remembered.
    pub fn known_ids(&self) -> usize {
        self.known.map.len()
    }

    /// Drops ids whose records the log has trimmed; called once per request.
    pub fn follow_trim(&mut self) {
        let first = self.window.first_seq();
        self.known.forget_below(first);
    }

    pub fn state(&self) -> ChainState {
        self.state
    }

    /// Seals one enriched event, or recognizes it as a retry.
    pub fn seal_event(&mut self, ev: EnrichedEvent) -> Result<Sealed, Failure> {
        if ev.event_id_from_producer {
            if let Some(&(seq, checksum)) = self.known.map.get(&ev.event_id) {
                return Ok(Sealed::Duplicate {
                    seq,
                    event_id: ev.event_id,
                    checksum,
                });
            }
        }
        let seq = self.state.next_seq;
        self.body.clear();
        write_body(&mut self.body, &ev, &self.chain_id, &self.key.id, seq);
        if self.body.len() > BODY_BYTES_MAX {
            let ctx = RequestContext {
                transport: ev.transport,
                peer: ev.peer,
                received_at_unix_ns: ev.received_at_unix_ns,
            };
            let rejection = Rejection::new(
                "$",
                format!("the canonical record is {} bytes, more than the limit of {BODY_BYTES_MAX}; write large numbers without exponents", self.body.len()),
            );
            let len = self.body.len() as u64;
            return Ok(Sealed::Rejected(Box::new(DeadLetter::new(
                &ctx,
                rejection,
                self.body.clone(),
                len,
            ))));
        }
        let record = seal(
            &self.key,
            self.body.clone(),
            self.state.prev,
            ev.received_at_unix_ns,
            seq,
        );
        self.state = ChainState {
            next_seq: seq + 1,
            prev: record.checksum,
        };
        self.known.insert(ev.event_id, seq, record.checksum);
        Ok(Sealed::New {
            record,
            event_id: ev.event_id,
        })
    }
}

/// Channel capacities, in requests.
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    pub validate: usize,
    pub enrich: usize,
    pub checksum: usize,
    pub log: usize,
}

fn depth_of<T>(r: &Receiver<T>) -> usize {
    r.len()
}

/// Starts the three stage threads.
#[allow(clippy::type_complexity)]
pub fn spawn(
    caps: Capacities,
    mut checksummer: Checksummer,
    poison: Poison,
) -> std::io::Result<(
    Sender<Request>,
    Receiver<Batch<Sealed>>,
    Vec<JoinHandle<()>>,
    ChannelDepths,
)> {
    let (in_tx, in_rx) = bounded::<Request>(caps.validate);
    let (v_tx, v_rx) = bounded::<Batch<Result<AuditEvent, Box<DeadLetter>>>>(caps.enrich);
    let (e_tx, e_rx) = bounded::<Batch<Result<EnrichedEvent, Box<DeadLetter>>>>(caps.checksum);
    let (c_tx, c_rx) = bounded::<Batch<Sealed>>(caps.log);
    let depths = ChannelDepths {
        validate: in_rx.clone(),
        enrich: v_rx.clone(),
        checksum: e_rx.clone(),
        log: c_rx.clone(),
    };

    let mut threads = Vec::new();
    threads.push(run_stage(
        "validate",
        in_rx,
        v_tx,
        poison.clone(),
        |b: Request| {
            let ctx = b.ctx;
            let items = b
                .items
                .into_iter()
                .map(|input| validate_input(&ctx, input))
                .collect();
            Ok(Batch {
                ctx,
                items,
                reply: b.reply,
            })
        },
    )?);
    threads.push(run_stage(
        "enrich",
        v_rx,
        e_tx,
        poison.clone(),
        |b: Batch<Result<AuditEvent, Box<DeadLetter>>>| {
            let ctx = b.ctx;
            let at = ctx.received_at_unix_ns;
            let items = b
                .items
                .into_iter()
                .map(|r| r.map(|ev| enrich(ev, &ctx, || uuid_v7_at(at))))
                .collect();
            Ok(Batch {
                ctx,
                items,
                reply: b.reply,
            })
        },
    )?);
    threads.push(run_stage(
        "checksum",
        e_rx,
        c_tx,
        poison,
        move |b: Batch<Result<EnrichedEvent, Box<DeadLetter>>>| {
            let Batch {
                ctx,
                items: inputs,
                reply,
            } = b;
            checksummer.follow_trim();
            let mut items = Vec::with_capacity(inputs.len());
            for r in inputs {
                items.push(match r {
                    Ok(ev) => match checksummer.seal_event(ev) {
                        Ok(sealed) => sealed,
                        Err(failure) => return Err((failure, reply)),
                    },
                    Err(d) => Sealed::Rejected(d),
                });
            }
            Ok(Batch { ctx, items, reply })
        },
    )?);
    Ok((in_tx, c_rx, threads, depths))
}

/// Receivers kept only to read channel lengths.
#[derive(Clone)]
pub struct ChannelDepths {
    validate: Receiver<Request>,
    enrich: Receiver<Batch<Result<AuditEvent, Box<DeadLetter>>>>,
    checksum: Receiver<Batch<Result<EnrichedEvent, Box<DeadLetter>>>>,
    log: Receiver<Batch<Sealed>>,
}

impl ChannelDepths {
    /// `(channel name, requests queued)` for every stage input.
    pub fn sample(&self) -> [(&'static str, usize); 4] {
        [
            ("validate", depth_of(&self.validate)),
            ("enrich", depth_of(&self.enrich)),
            ("checksum", depth_of(&self.checksum)),
            ("log", depth_of(&self.log)),
        ]
    }
}

fn validate_input(ctx: &RequestContext, input: Input) -> Result<AuditEvent, Box<DeadLetter>> {
    match input {
        Input::Raw(bytes) => validate_bytes(&bytes).map_err(|r| {
            let len = bytes.len() as u64;
            Box::new(DeadLetter::new(ctx, r, bytes, len))
        }),
        Input::Refused {
            rejection,
            raw,
            raw_len,
        } => Err(Box::new(DeadLetter::new(ctx, rejection, raw, raw_len))),
    }
}

/// Runs one stage: receive, transform, send on, until the input closes. A transform error
/// poisons the pipeline and fails that request; a panic poisons it through the guard.
fn run_stage<I: Send + 'static, O: Send + 'static>(
    name: &'static str,
    rx: Receiver<Batch<I>>,
    tx: Sender<Batch<O>>,
    poison: Poison,
    mut f: impl FnMut(Batch<I>) -> Result<Batch<O>, (Failure, Reply)> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("stage-{name}"))
        .spawn(move || {
            let _guard = PanicGuard {
                poison: poison.clone(),
                stage: name,
            };
            for batch in rx.iter() {
                if poison.is_raised() {
                    (batch.reply)(Err(Failure(poison.reason().unwrap_or_default())));
                    continue;
                }
                match f(batch) {
                    Ok(out) => {
                        if let Err(e) = tx.send(out) {
                            let reason = format!("stage {name}: next stage has stopped");
                            poison.raise(reason.clone());
                            (e.into_inner().reply)(Err(Failure(reason)));
                        }
                    }
                    Err((failure, reply)) => {
                        poison.raise(format!("stage {name}: {failure}"));
                        reply(Err(failure));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::chain::GENESIS;
    use crate::event::validate_value;

    struct Trimmed(Arc<AtomicU64>);

    impl LogWindow for Trimmed {
        fn first_seq(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn event(id: &str) -> EnrichedEvent {
        let ev = validate_value(serde_json::json!({
            "event_id": id, "user_id": "u", "event_type": "auth_event", "action": "login",
            "success": true, "timestamp": "2026-12-03T10:00:00Z"
        }))
        .unwrap();
        let ctx = RequestContext {
            transport: Transport::Tcp,
            peer: "127.0.0.1:1".parse().unwrap(),
            received_at_unix_ns: 5,
        };
        enrich(ev, &ctx, || unreachable!())
    }

    #[test]
    fn retries_are_known_until_the_log_trims_their_record() {
        let first = Arc::new(AtomicU64::new(1));
        let start = ChainState {
            next_seq: 1,
            prev: GENESIS,
        };
        let id = "0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7e";
        let loaded = vec![(1, Uuid::parse_str(id).unwrap(), [4; 32])];
        let mut c = Checksummer::new(
            ChainKey::new("k", [1; 32]),
            "c".into(),
            ChainState {
                next_seq: 2,
                ..start
            },
            loaded,
            Box::new(Trimmed(first.clone())),
        );
        // Known from the start-up scan.
        assert!(
            matches!(c.seal_event(event(id)), Ok(Sealed::Duplicate { seq: 1, checksum, .. }) if checksum == [4; 32])
        );
        // Sealed now, retried before it is durable: the same seq.
        let other = "0190a5e2-7c4f-7b3a-9d1e-2f3a4b5c6d7f";
        let Ok(Sealed::New { record, .. }) = c.seal_event(event(other)) else {
            panic!()
        };
        assert_eq!(record.seq, 2);
        assert!(matches!(
            c.seal_event(event(other)),
            Ok(Sealed::Duplicate { seq: 2, .. })
        ));
        // Once the log trims seq 1, its id is forgotten and a resend is stored anew.
        first.store(2, Ordering::SeqCst);
        c.follow_trim();
        assert_eq!(c.known_ids(), 1);
        assert!(matches!(c.seal_event(event(id)), Ok(Sealed::New { .. })));
    }
}
