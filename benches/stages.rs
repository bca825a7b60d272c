//! Micro-benchmarks of the pure pipeline stages on realistic ~500-byte events.
//!
//! ```text
//! cargo bench --bench stages
//! STAGES_EVENTS=50000 STAGES_REPS=9 STAGES_SEED=7 cargo bench --bench stages
//! ```
//!
//! No criterion: each measurement runs the stage over `STAGES_EVENTS` distinct events,
//! `STAGES_REPS` times after one warm-up pass, and prints the median (and the spread) in
//! ns/event and events/s. Inputs are prepared outside the timed region (the stages consume
//! their input by value), and outputs are dropped outside it too.
//!
//! The machine these numbers are taken on is small and shared, so compare lines of one run
//! with each other rather than with another run.

mod common;

use common::{env_or, LINE_BYTES};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use kubechat_audit_pipeline::chain::{mac, seal, ChainKey, KeyRing, Verifier, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, EnrichedEvent, RequestContext, Transport};
use kubechat_audit_pipeline::event::{validate_bytes, AuditEvent};
use kubechat_audit_pipeline::framing::{Frame, LineFramer};
use kubechat_audit_pipeline::limits::EVENT_BYTES_MAX;
use kubechat_audit_pipeline::record::{decode_batch, encode_batch, write_body, StoredRecord};
use kubechat_audit_pipeline::stage::{ChainState, Checksummer, LogWindow, Outcome, Sealed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// The log's record chunk bound (`kubechat_audit::log::RECORD_CHUNK_BYTES_MAX`).
const CHUNK_BYTES_MAX: usize = kubechat_audit::log::RECORD_CHUNK_BYTES_MAX;
const CHAIN_ID: &str = "0b6f3c1e-bench-chain";

/// One generated event line with a producer `event_id`.
fn event_line(rng: &mut StdRng, i: u64) -> Vec<u8> {
    common::event_line(rng, i, true).1
}

struct NoIds;

/// A log that has trimmed nothing: the checksum stage keeps every id it seals.
impl LogWindow for NoIds {
    fn first_seq(&self) -> u64 {
        1
    }
}

fn ctx() -> RequestContext {
    RequestContext {
        transport: Transport::Tcp,
        peer: "127.0.0.1:40512".parse::<SocketAddr>().expect("literal"),
        received_at_unix_ns: 1_768_471_200_123_456_789,
    }
}

/// A checksummer for a fresh chain, knowing no ids.
fn checksummer(key: &ChainKey) -> Checksummer {
    checksummer_after(key, Vec::new())
}

/// A checksummer whose log already holds `known` (`(seq, event_id, checksum)` from seq 1, as
/// `Log::scan_ids` hands them to serve at start-up).
fn checksummer_after(key: &ChainKey, known: Vec<(u64, Uuid, [u8; 32])>) -> Checksummer {
    Checksummer::new(
        key.clone(),
        CHAIN_ID.into(),
        ChainState {
            next_seq: known.len() as u64 + 1,
            prev: GENESIS,
        },
        known,
        Box::new(NoIds),
    )
}

/// The ids the checksum stage remembers in a running service: every id of the log's window,
/// which is never shorter than `log.trim_safety_events` records (the archive trims the log
/// that far behind what it has sealed) once the service has run that long.
fn window_ids(rng: &mut StdRng) -> Vec<(u64, Uuid, [u8; 32])> {
    let w = kubechat_audit::config::Config::default()
        .log
        .trim_safety_events;
    (1..=w)
        .map(|seq| (seq, Uuid::from_u128(rng.random()), rng.random()))
        .collect()
}

/// One measured line of the report.
struct Row {
    name: String,
    /// ns/event of each repetition, sorted.
    ns: Vec<f64>,
    bytes_per_event: Option<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        self.ns[self.ns.len() / 2]
    }
}

struct Bench {
    reps: usize,
    rows: Vec<Row>,
}

impl Bench {
    /// Times `run(setup())` `reps` times after one warm-up; `setup` is not timed, and the
    /// output of `run` is dropped outside the timed region. `run` returns its output and the
    /// number of events it processed.
    fn measure<S, R>(
        &mut self,
        name: &str,
        bytes_per_event: Option<f64>,
        mut setup: impl FnMut() -> S,
        mut run: impl FnMut(S) -> (R, usize),
    ) -> f64 {
        let mut ns = Vec::with_capacity(self.reps);
        for rep in 0..=self.reps {
            let input = setup();
            let t = Instant::now();
            let (out, n) = run(black_box(input));
            let el = t.elapsed();
            black_box(&out);
            drop(out);
            if rep > 0 {
                ns.push(el.as_nanos() as f64 / n.max(1) as f64);
            }
        }
        ns.sort_by(f64::total_cmp);
        let row = Row {
            name: name.into(),
            ns,
            bytes_per_event,
        };
        let m = row.median();
        print_row(&row);
        self.rows.push(row);
        m
    }
}

fn print_header() {
    println!(
        "{:<64} {:>10} {:>17} {:>13} {:>9}",
        "stage (median of reps)", "ns/event", "min..max", "events/s", "MB/s"
    );
}

fn print_row(r: &Row) {
    let m = r.median();
    let mbs = r
        .bytes_per_event
        .map(|b| format!("{:.0}", b / m * 1e9 / 1e6))
        .unwrap_or_default();
    println!(
        "{:<64} {:>10.0} {:>8.0}..{:<8.0} {:>13.0} {:>9}",
        r.name,
        m,
        r.ns[0],
        r.ns[r.ns.len() - 1],
        1e9 / m,
        mbs
    );
}

fn main() {
    let n: usize = env_or("STAGES_EVENTS", 20_000);
    let reps: usize = env_or("STAGES_REPS", 7);
    let seed: u64 = env_or("STAGES_SEED", 0x5eed);
    assert!(n > 0 && reps > 0);
    println!("stages: {n} events of {LINE_BYTES} bytes, {reps} reps (+1 warm-up), seed {seed}");

    let mut rng = StdRng::seed_from_u64(seed);
    let lines: Vec<Vec<u8>> = (0..n as u64).map(|i| event_line(&mut rng, i)).collect();
    let mut secret = [0u8; 32];
    rng.fill(&mut secret[..]);
    let key = ChainKey::new("k-bench", secret);
    let ctx = ctx();

    // Reference data for the stages further down the line.
    let validated: Vec<AuditEvent> = lines
        .iter()
        .map(|l| validate_bytes(l).expect("generated events are valid"))
        .collect();
    let enriched: Vec<EnrichedEvent> = validated
        .iter()
        .cloned()
        .map(|e| enrich(e, &ctx, || unreachable!("every event has an event_id")))
        .collect();
    let records: Vec<StoredRecord> = {
        let mut c = checksummer(&key);
        enriched
            .iter()
            .cloned()
            .map(|e| match c.seal_event(e).expect("seal") {
                Sealed::New { record, .. } => record,
                other => panic!("expected a new record, got {other:?}"),
            })
            .collect()
    };
    let bodies: Vec<Vec<u8>> = records.iter().map(|r| r.body.clone()).collect();
    let body_mean = bodies.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    // Chunks as the log writes them: consecutive records, at most 32 KiB of bodies each.
    let chunks: Vec<Vec<StoredRecord>> = {
        let mut out = vec![Vec::new()];
        let mut bytes = 0;
        for r in &records {
            if bytes + r.body.len() > CHUNK_BYTES_MAX && !out.last().expect("one").is_empty() {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes += r.body.len();
            out.last_mut().expect("one").push(r.clone());
        }
        out
    };
    let encoded: Vec<Vec<u8>> = chunks.iter().map(|c| encode_batch(c)).collect();
    let encoded_mean = encoded.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!(
        "record body (canonical JSON) mean {body_mean:.0} bytes; encoded in the log {encoded_mean:.0} bytes/event; \
         {} chunks of <= {} KiB ({:.1} events/chunk)",
        chunks.len(),
        CHUNK_BYTES_MAX / 1024,
        n as f64 / chunks.len() as f64
    );
    println!();

    let mut b = Bench {
        reps,
        rows: Vec::new(),
    };
    let lb = Some(LINE_BYTES as f64);
    print_header();

    // --- The three stages, each on its own. ---
    let t_validate = b.measure(
        "validate: event::validate_bytes",
        lb,
        || (),
        |()| {
            let out: Vec<AuditEvent> = lines
                .iter()
                .map(|l| validate_bytes(l).expect("valid"))
                .collect();
            (out, n)
        },
    );
    let t_enrich = b.measure(
        "enrich: enrich::enrich",
        None,
        || validated.clone(),
        |evs| {
            let out: Vec<EnrichedEvent> = evs
                .into_iter()
                .map(|e| enrich(e, &ctx, || unreachable!()))
                .collect();
            (out, n)
        },
    );
    // A checksummer whose id map holds a running service's window (loaded as at start-up)
    // and that has since sealed `n` other events, so that the map is warm (allocated, grown,
    // paged in) as in a running service, not filled or resized in the timed region.
    let window = window_ids(&mut rng);
    let warm_checksummer = || {
        let mut c = checksummer_after(&key, window.clone());
        for e in &enriched {
            let mut other = e.clone();
            other.event_id = Uuid::from_u128(!e.event_id.as_u128());
            c.seal_event(other).expect("seal");
        }
        c
    };
    let t_checksum = b.measure(
        "checksum: Checksummer::seal_event (new ids, id map warm)",
        None,
        || (enriched.clone(), warm_checksummer()),
        |(evs, mut c)| {
            let out: Vec<Sealed> = evs
                .into_iter()
                .map(|e| c.seal_event(e).expect("seal"))
                .collect();
            (out, n)
        },
    );
    b.measure(
        "  same, events without producer event_id (no id check)",
        None,
        || {
            let evs: Vec<EnrichedEvent> = enriched
                .iter()
                .cloned()
                .map(|mut e| {
                    e.event_id_from_producer = false;
                    e
                })
                .collect();
            (evs, warm_checksummer())
        },
        |(evs, mut c)| {
            let out: Vec<Sealed> = evs
                .into_iter()
                .map(|e| c.seal_event(e).expect("seal"))
                .collect();
            (out, n)
        },
    );
    b.measure(
        "  of which record::write_body",
        Some(body_mean),
        || Vec::with_capacity(1024),
        |mut buf: Vec<u8>| {
            let mut total = 0;
            for (i, e) in enriched.iter().enumerate() {
                buf.clear();
                write_body(&mut buf, e, CHAIN_ID, &key.id, i as u64 + 1);
                total += buf.len();
            }
            (total, n)
        },
    );
    b.measure(
        "    of which clone + drop of the metadata map (write_body does)",
        None,
        || (),
        |()| {
            for e in &enriched {
                let v = serde_json::Value::Object(e.event.metadata.clone().expect("metadata"));
                black_box(&v);
            }
            ((), n)
        },
    );
    b.measure(
        "  of which chain::seal (HMAC-SHA256 over body)",
        Some(body_mean),
        || bodies.clone(),
        |bodies| {
            let mut prev = GENESIS;
            let out: Vec<StoredRecord> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| {
                    let r = seal(&key, body, prev, ctx.received_at_unix_ns, i as u64 + 1);
                    prev = r.checksum;
                    r
                })
                .collect();
            (out, n)
        },
    );
    b.measure(
        "  write_body + seal, no id map, no body copy",
        None,
        || (enriched.clone(), Vec::with_capacity(1024)),
        |(evs, mut buf): (Vec<EnrichedEvent>, Vec<u8>)| {
            let mut prev = GENESIS;
            for (i, e) in evs.iter().enumerate() {
                buf.clear();
                let seq = i as u64 + 1;
                write_body(&mut buf, e, CHAIN_ID, &key.id, seq);
                prev = mac(key.secret(), &buf, &prev, e.received_at_unix_ns, seq);
            }
            ((prev, evs), n)
        },
    );

    // --- The log writer's CPU work and the readers'. ---
    let t_encode = b.measure(
        "log: record::encode_batch (32 KiB chunks)",
        Some(encoded_mean),
        || (),
        |()| {
            let out: Vec<Vec<u8>> = chunks.iter().map(|c| encode_batch(c)).collect();
            (out, n)
        },
    );
    b.measure(
        "log: StoredRecord clone + encode_batch (as Log::commit)",
        Some(encoded_mean),
        || (),
        |()| {
            let mut out = Vec::with_capacity(chunks.len());
            for c in &chunks {
                let owned: Vec<StoredRecord> = c.to_vec();
                out.push(encode_batch(&owned));
            }
            (out, n)
        },
    );
    b.measure(
        "read: record::decode_batch",
        Some(encoded_mean),
        || (),
        |()| {
            let out: Vec<Vec<StoredRecord>> = encoded
                .iter()
                .map(|e| decode_batch(e).expect("decodes"))
                .collect();
            (out, n)
        },
    );
    let ring = KeyRing::new([key.clone()]);
    b.measure(
        "verify: chain::Verifier with key ring",
        Some(body_mean),
        || records.clone(),
        |recs| {
            let mut v = Verifier::new(Some(&ring));
            for r in recs {
                v.push(r).expect("intact chain");
            }
            let head = v.finish().expect("intact chain");
            assert_eq!(head.count, n as u64);
            (head, n)
        },
    );
    b.measure(
        "verify: chain::Verifier continuity only (no keys)",
        None,
        || records.clone(),
        |recs| {
            let mut v = Verifier::new(None);
            for r in recs {
                v.push(r).expect("intact chain");
            }
            (v.finish().expect("intact chain"), n)
        },
    );

    // --- What the TCP edge does per event on the tokio threads. ---
    let stream: Vec<u8> = lines
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    let t_frame = b.measure(
        "ingest: framing::LineFramer (64 KiB reads)",
        Some(LINE_BYTES as f64 + 1.0),
        || (LineFramer::new(EVENT_BYTES_MAX), Vec::with_capacity(n)),
        |(mut f, mut frames): (LineFramer, Vec<Frame>)| {
            for chunk in stream.chunks(64 * 1024) {
                f.push(chunk, &mut frames);
            }
            let got = frames.len();
            assert_eq!(got, n);
            (frames, got)
        },
    );
    let outcomes: Vec<Outcome> = records
        .iter()
        .zip(&enriched)
        .map(|(r, e)| Outcome::Accepted {
            seq: r.seq,
            event_id: e.event_id,
            checksum: r.checksum,
            duplicate: false,
        })
        .collect();
    let t_answer = b.measure(
        "ingest: answer line (ingest::outcome_json + to_writer)",
        None,
        || Vec::with_capacity(n * 140),
        |mut out: Vec<u8>| {
            for o in &outcomes {
                serde_json::to_writer(&mut out, &kubechat_audit::ingest::outcome_json(o))
                    .expect("JSON");
                out.push(b'\n');
            }
            (out, n)
        },
    );

    // --- validate -> enrich -> checksum in one thread, per event. ---
    println!();
    let t_seq = b.measure(
        "validate -> enrich -> checksum, one thread",
        lb,
        warm_checksummer,
        |mut c| {
            let out: Vec<Sealed> = lines
                .iter()
                .map(|l| {
                    let ev = validate_bytes(l).expect("valid");
                    let ev = enrich(ev, &ctx, || unreachable!());
                    c.seal_event(ev).expect("seal")
                })
                .collect();
            (out, n)
        },
    );
    let t_all = b.measure(
        "frame -> validate -> enrich -> checksum -> encode -> answer",
        lb,
        || {
            (
                warm_checksummer(),
                LineFramer::new(EVENT_BYTES_MAX),
                Vec::with_capacity(n * 140),
            )
        },
        |(mut c, mut f, mut answers): (Checksummer, LineFramer, Vec<u8>)| {
            let mut frames = Vec::new();
            let mut encoded = Vec::new();
            for chunk in stream.chunks(64 * 1024) {
                f.push(chunk, &mut frames);
                let mut sealed = Vec::with_capacity(frames.len());
                for fr in frames.drain(..) {
                    let Frame::Line(l) = fr else {
                        panic!("overlong line")
                    };
                    let ev = enrich(validate_bytes(&l).expect("valid"), &ctx, || unreachable!());
                    sealed.push(c.seal_event(ev).expect("seal"));
                }
                let recs: Vec<StoredRecord> = sealed
                    .iter()
                    .map(|s| match s {
                        Sealed::New { record, .. } => record.clone(),
                        _ => unreachable!(),
                    })
                    .collect();
                encoded.push(encode_batch(&recs));
                for s in &sealed {
                    serde_json::to_writer(
                        &mut answers,
                        &kubechat_audit::ingest::outcome_json(&s.outcome()),
                    )
                    .expect("JSON");
                    answers.push(b'\n');
                }
            }
            ((encoded, answers), n)
        },
    );

    // --- What these numbers bound. ---
    println!();
    let sum_stages = t_validate + t_enrich + t_checksum;
    let slowest = t_validate.max(t_enrich).max(t_checksum);
    println!(
        "sum of the three stages measured apart: {sum_stages:.0} ns/event; measured together: {t_seq:.0} ns/event"
    );
    println!(
        "slowest stage thread bounds the pipeline at {:.0} events/s ({:.0} ns/event: {})",
        1e9 / slowest,
        slowest,
        if slowest == t_validate {
            "validate"
        } else if slowest == t_checksum {
            "checksum"
        } else {
            "enrich"
        }
    );
    let per_event = t_frame + t_validate + t_enrich + t_checksum + t_encode + t_answer;
    println!(
        "server CPU per event without sled, syscalls, channels, tokio: ~{per_event:.0} ns (parts), {t_all:.0} ns (one loop)"
    );
    let cores = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1);
    println!(
        "  => on {cores} core(s) that CPU alone caps the service near {:.0} events/s, before sled and the load generator",
        cores as f64 * 1e9 / t_all.max(per_event)
    );
}
