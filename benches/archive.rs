//! The archive projection's write and verify paths, against the `zstd` command line tool.
//!
//! ```text
//! cargo bench --bench archive
//! ARCHIVE_BENCH_EVENTS=500000 ARCHIVE_BENCH_REPS=3 cargo bench --bench archive
//! ```
//!
//! | variable               | default  | meaning                                                   |
//! |------------------------|----------|-----------------------------------------------------------|
//! | `ARCHIVE_BENCH_EVENTS` | 200000   | records in the archive                                    |
//! | `ARCHIVE_BENCH_REPS`   | 5        | timed repetitions of each measurement (median reported)   |
//! | `ARCHIVE_BENCH_SEED`   | 0x5eed   | seed of the event generator                               |
//! | `ARCHIVE_BENCH_DIR`    | temp dir | where the archive is written (use the disk it will run on) |
//!
//! The records are built exactly as the pipeline builds them, from 500-byte NDJSON events
//! (the generator of `benches/stages.rs`): `event::validate_bytes`, `enrich::enrich`,
//! `record::write_body` and `chain::seal` with a fixed HMAC key, one receive time per 1024
//! events as one TCP request would have. Then, in one run:
//!
//! - (a) write: `OpenSegment::create`, `append` in batches of 4096 records, `seal` once a
//!   segment holds 64 MiB of raw bytes (and at the end), zstd level 3: the archive
//!   projection's loop without the log. Records/s, raw MB/s, compression ratio, and the
//!   pieces of an append timed separately (JSON lines, zstd, SHA-256 + BLAKE3).
//! - (b) the `zstd` CLI at level 3 (`zstd -3 -c`, and `-T1`) on the same NDJSON bytes, as the
//!   reference for time and ratio; also the in-process zstd crate on one frame.
//! - (c) `archive::verify::verify_dir` on the archive from (a), single-threaded, with the
//!   public key only and with the HMAC key; then its pieces timed separately: read, SHA-256,
//!   BLAKE3, decompress (one-shot into the manifest's `raw_bytes`), line parsing
//!   (`segment::parse_records`, itself split into its parts: memchr line split, table hex
//!   decoding of the checksums, body copy, the `serde_json` pass, the timestamp), the keyless
//!   chain walk, HMAC; next to each changed piece, the code it replaced in `65b1457`
//!   (streaming decompression, a byte-at-a-time split, the `hex` crate) for comparison.
//!   `benches/ARCHIVE-RESULTS.md` has the results.
//!
//! Every measurement prints wall time and the calling thread's CPU time; rates "per core"
//! are per CPU-second of the measuring thread (the `zstd` CLI's are per CPU-second of the
//! child process, user + system). The machine is small and shared: compare the lines of one
//! run with each other.

mod common;

use common::{env_or, LINE_BYTES};
use std::fs::{self, File};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::io::Read;

use kubechat_audit::keys::{ed25519_key_id, PublicKey, SigningKey};
use kubechat_audit::projection::archive::manifest::Manifest;
use kubechat_audit::projection::archive::segment::{
    decompress, lines as segment_lines, manifests, parse_records, OpenSegment,
};
use kubechat_audit::projection::archive::verify::verify_dir;
use kubechat_audit_pipeline::chain::{mac, seal, ChainKey, KeyRing, Verifier, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, RequestContext, Transport};
use kubechat_audit_pipeline::event::{parse_timestamp, validate_bytes};
use kubechat_audit_pipeline::record::{record_from_json_line, write_body, StoredRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const CHAIN_ID: &str = "0b6f3c1e-7a52-4d0e-9c8b-5e3d2a1f0c9b";
const HMAC_KEY_ID: &str = "20260115-5eed01";
/// `ArchiveConfig::default()`: records per frame, raw bytes per segment, zstd level.
const BATCH: usize = 4096;
const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
const LEVEL: i32 = 3;
/// Events per simulated request: they share one receive time.
const REQUEST_EVENTS: usize = 1024;
/// Lines of the cache-resident sample the line parser is taken apart on (about 2 MB).
const HOT_LINES: usize = 2048;
/// The verify goal, records per second per core (public key only).
const VERIFY_GOAL: f64 = 500_000.0;

/// One generated event line with a producer `event_id`.
fn event_line(rng: &mut StdRng, i: u64) -> Vec<u8> {
    common::event_line(rng, i, true).1
}

/// The chain of `n` records, sealed as the checksum stage seals them.
fn build_records(n: usize, rng: &mut StdRng, key: &ChainKey) -> Vec<StoredRecord> {
    let peer: SocketAddr = "10.1.2.3:40512".parse().expect("literal");
    let mut prev = GENESIS;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ctx = RequestContext {
            transport: Transport::Tcp,
            peer,
            received_at_unix_ns: 1_768_471_200_123_456_789
                + (i / REQUEST_EVENTS) as i64 * 1_000_317,
        };
        let line = event_line(rng, i as u64);
        let ev = validate_bytes(&line).expect("generated events are valid");
        let ev = enrich(ev, &ctx, || unreachable!("every event has an event_id"));
        let seq = i as u64 + 1;
        let mut body = Vec::with_capacity(line.len() + 320);
        write_body(&mut body, &ev, CHAIN_ID, &key.id, seq);
        let r = seal(key, body, prev, ev.received_at_unix_ns, seq);
        prev = r.checksum;
        out.push(r);
    }
    out
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of the terminated children so far.
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time of one timed run.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// Runs `f` `reps` times (after one untimed warm-up when `warm`) and returns the samples
/// sorted by wall time, with the last output.
fn measure<R>(reps: usize, warm: bool, mut f: impl FnMut() -> R) -> (Vec<Sample>, R) {
    if warm {
        black_box(f());
    }
    let mut samples = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let (w, c) = (Instant::now(), thread_cpu());
        let out = black_box(f());
        samples.push(Sample {
            wall: w.elapsed(),
            cpu: thread_cpu() - c,
        });
        last = Some(out);
    }
    samples.sort_by_key(|s| s.wall);
    (samples, last.expect("at least one rep"))
}

fn median(s: &[Sample]) -> Sample {
    s[s.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One row: name, median wall ms (min..max), CPU ms, records/s wall, records/s per core.
fn row(name: &str, s: &[Sample], records: usize, bytes: Option<u64>) {
    let m = median(s);
    let mbs = bytes
        .map(|b| format!("{:>8.0} MB/s", mb(b) / secs(m.wall)))
        .unwrap_or_default();
    println!(
        "  {:<58} {:>8.1} ms ({:>7.1}..{:<7.1}) cpu {:>8.1} ms {:>11.0}/s {:>11.0}/s/core {}",
        name,
        secs(m.wall) * 1e3,
        secs(s[0].wall) * 1e3,
        secs(s[s.len() - 1].wall) * 1e3,
        secs(m.cpu) * 1e3,
        records as f64 / secs(m.wall),
        records as f64 / secs(m.cpu).max(1e-9),
        mbs
    );
}

/// What writing an archive produced.
struct Written {
    manifests: Vec<Manifest>,
    seal_time: Duration,
}

/// The archive projection's loop over `records`, without the log.
fn write_archive(dir: &Path, records: &[StoredRecord], key: &SigningKey) -> Written {
    fs::create_dir_all(dir).expect("archive dir");
    let mut open: Option<OpenSegment> = None;
    let mut prev = GENESIS;
    let mut out = Written {
        manifests: Vec::new(),
        seal_time: Duration::ZERO,
    };
    let seal_one = |seg: OpenSegment, prev: &mut [u8; 32], out: &mut Written| {
        let t = Instant::now();
        let m = seg.seal(dir, CHAIN_ID, key).expect("seal");
        out.seal_time += t.elapsed();
        hex::decode_to_slice(&m.last_checksum, prev).expect("hex");
        out.manifests.push(m);
    };
    for batch in records.chunks(BATCH) {
        let seg = match open.as_mut() {
            Some(s) => s,
            None => open.insert(OpenSegment::create(dir, LEVEL, prev).expect("create")),
        };
        seg.append(batch).expect("append");
        if seg.raw_bytes >= SEGMENT_BYTES_MAX {
            let seg = open.take().expect("open");
            seal_one(seg, &mut prev, &mut out);
        }
    }
    if let Some(seg) = open.take() {
        seal_one(seg, &mut prev, &mut out);
    }
    out
}

/// Runs a command with stdout to `out`; returns its wall time and the children's CPU time.
fn run_cli(args: &[&str], out: &Path) -> Sample {
    let c0 = children_cpu();
    let t = Instant::now();
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdout(File::create(out).expect("output file"))
        .stderr(Stdio::inherit())
        .status()
        .expect("running zstd");
    let wall = t.elapsed();
    assert!(status.success(), "{args:?}: {status}");
    Sample {
        wall,
        cpu: children_cpu() - c0,
    }
}

/// `/proc/loadavg`: the machine is shared, and its load explains wall-time outliers.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn zstd_cli() -> Option<String> {
    let out = Command::new("zstd").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The three members `record::record_from_json_line` reads from a body.
#[derive(serde::Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    received_at: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    key_id: std::borrow::Cow<'a, str>,
}

/// Hex digit values; 0xff for any other byte.
const UNHEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        t[b"0123456789ABCDEF"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decodes 64 hex digits through [`UNHEX`], without branches; false if one is not hex. The
/// same table decoding as `record::hex32` (private), which `record_from_json_line` uses.
fn unhex32(src: &[u8], dst: &mut [u8; 32]) -> bool {
    let mut bad = 0u8;
    for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let (h, l) = (UNHEX[pair[0] as usize], UNHEX[pair[1] as usize]);
        bad |= h | l;
        *d = h << 4 | l;
    }
    src.len() == 64 && bad & 0xf0 == 0
}

fn main() {
    let n: usize = env_or("ARCHIVE_BENCH_EVENTS", 200_000);
    let reps: usize = env_or("ARCHIVE_BENCH_REPS", 5);
    let seed: u64 = env_or("ARCHIVE_BENCH_SEED", 0x5eed);
    assert!(n > 0 && reps > 0);
    let parent = std::env::var_os("ARCHIVE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("archive-bench-")
        .tempdir_in(&parent)
        .expect("temp dir");

    println!("load average at start: {}", loadavg());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut secret = [0u8; 32];
    rng.fill(&mut secret[..]);
    let hmac_key = ChainKey::new(HMAC_KEY_ID, secret);
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signing = SigningKey {
        key_id: ed25519_key_id(&ed.verifying_key()),
        key: ed,
    };
    let public: PublicKey = signing.public();

    let t = Instant::now();
    let records = build_records(n, &mut rng, &hmac_key);
    let build = t.elapsed();
    let ndjson: Vec<u8> = {
        let mut v = Vec::with_capacity(n * 900);
        for r in &records {
            r.write_json_line(&mut v);
            v.push(b'\n');
        }
        v
    };
    let raw = ndjson.len() as u64;
    let body_mean = records.iter().map(|r| r.body.len()).sum::<usize>() as f64 / n as f64;
    println!(
        "archive bench: {n} records from {LINE_BYTES}-byte events (built in {:.1} s), \
         body {body_mean:.0} B, JSON line {:.0} B with newline, {:.1} MB of NDJSON; \
         {reps} reps, median shown; dir {}",
        secs(build),
        raw as f64 / n as f64,
        mb(raw),
        tmp.path().display()
    );

    // (a) Write.
    println!(
        "\n(a) write: OpenSegment append x {BATCH} records + seal at {} MiB, zstd level {LEVEL}",
        SEGMENT_BYTES_MAX >> 20
    );
    let mut rep = 0;
    let mut seal_times = Vec::new();
    let (w_samples, written) = measure(reps, false, || {
        rep += 1;
        let dir = tmp.path().join(format!("write-{rep}"));
        let w = write_archive(&dir, &records, &signing);
        seal_times.push(w.seal_time);
        (dir, w)
    });
    let (archive_dir, written) = written;
    let file_bytes: u64 = written.manifests.iter().map(|m| m.bytes).sum();
    let manifest_raw: u64 = written.manifests.iter().map(|m| m.raw_bytes).sum();
    assert_eq!(manifest_raw, raw, "segments hold exactly the NDJSON bytes");
    let ratio = raw as f64 / file_bytes as f64;
    row("write (create + append + seal)", &w_samples, n, Some(raw));
    seal_times.sort();
    let seal_med = seal_times[seal_times.len() / 2];
    let write_med = median(&w_samples).wall;
    println!(
        "  {} segments, {:.1} MB raw -> {:.1} MB files: ratio {ratio:.3}; seal (fsync, rename, \
         sign, manifest, dir fsync) {:.1} ms of the {:.1} ms",
        written.manifests.len(),
        mb(raw),
        mb(file_bytes),
        secs(seal_med) * 1e3,
        secs(write_med) * 1e3
    );
    // The pieces of an append, on the same batches.
    let batches: Vec<&[StoredRecord]> = records.chunks(BATCH).collect();
    let (s, lines) = measure(reps, true, || {
        batches
            .iter()
            .map(|b| {
                let mut line = Vec::with_capacity(b.len() * 900);
                for r in *b {
                    r.write_json_line(&mut line);
                    line.push(b'\n');
                }
                line
            })
            .collect::<Vec<_>>()
    });
    row("  piece: JSON lines (write_json_line)", &s, n, Some(raw));
    let (s, frames) = measure(reps, false, || {
        lines
            .iter()
            .map(|l| zstd::bulk::compress(l, LEVEL).expect("compress"))
            .collect::<Vec<_>>()
    });
    row("  piece: zstd::bulk::compress per batch", &s, n, Some(raw));
    let (s, _) = measure(reps, true, || {
        let mut sha = Sha256::new();
        let mut b3 = blake3::Hasher::new();
        for f in &frames {
            sha.update(f);
            b3.update(f);
        }
        (sha.finalize(), b3.finalize())
    });
    row("  piece: SHA-256 + BLAKE3 of the frames", &s, n, None);

    // (b) The zstd CLI on the same bytes.
    println!("\n(b) reference: the same {:.1} MB of NDJSON", mb(raw));
    let (s, one_frame) = measure(reps, false, || {
        zstd::bulk::compress(&ndjson, LEVEL).expect("compress")
    });
    let one_frame_ratio = raw as f64 / one_frame.len() as f64;
    row(
        "zstd crate, level 3, one frame, in process",
        &s,
        n,
        Some(raw),
    );
    println!(
        "  one frame: {:.1} MB, ratio {one_frame_ratio:.3}",
        mb(one_frame.len() as u64)
    );
    let mut cli_rows = Vec::new();
    match zstd_cli() {
        None => println!("  the zstd command line tool is missing: apt-get install -y zstd"),
        Some(version) => {
            println!("  {version}");
            let input = tmp.path().join("all.ndjson");
            fs::write(&input, &ndjson).expect("write NDJSON");
            let out = tmp.path().join("all.ndjson.zst");
            let inp = input.to_str().expect("utf-8 path");
            for args in [
                vec!["zstd", "-3", "-c", "-q", inp],
                vec!["zstd", "-3", "-T1", "-c", "-q", inp],
            ] {
                let _ = run_cli(&args, &out); // warm-up
                let mut s: Vec<Sample> = (0..reps).map(|_| run_cli(&args, &out)).collect();
                s.sort_by_key(|x| x.wall);
                let size = fs::metadata(&out).expect("zstd output").len();
                let name = args[..args.len() - 2].join(" ") + " FILE > OUT";
                row(&name, &s, n, Some(raw));
                println!(
                    "  {:.1} MB, ratio {:.3}",
                    mb(size),
                    raw as f64 / size as f64
                );
                cli_rows.push((name, median(&s), size));
            }
            let outp = out.to_str().expect("utf-8 path").to_owned();
            let args = ["zstd", "-d", "-c", "-q", outp.as_str()];
            let _ = run_cli(&args, &tmp.path().join("back.ndjson"));
            let mut s: Vec<Sample> = (0..reps)
                .map(|_| run_cli(&args, &tmp.path().join("back.ndjson")))
                .collect();
            s.sort_by_key(|x| x.wall);
            row("zstd -d -c OUT > FILE (decompress)", &s, n, Some(raw));
        }
    }
    println!("\n  comparison (median wall times; ours = the whole write path of (a)):");
    println!(
        "  ours: ratio {ratio:.3}, {:.1} ms ({:.1} ms without seal)",
        secs(write_med) * 1e3,
        secs(write_med.saturating_sub(seal_med)) * 1e3
    );
    for (name, s, size) in &cli_rows {
        let r = raw as f64 / *size as f64;
        println!(
            "  vs {name}: ratio {r:.3} (ours/CLI {:.3}), time ours/CLI {:.2} (CLI cpu {:.1} ms)",
            ratio / r,
            secs(write_med) / secs(s.wall),
            secs(s.cpu) * 1e3
        );
    }

    // (c) Verify.
    println!(
        "\n(c) verify_dir, single-threaded, {} segments",
        written.manifests.len()
    );
    let trusted = [public.clone()];
    let (s_pub, head) = measure(reps, true, || {
        verify_dir(
            &archive_dir,
            &trusted,
            None,
            Default::default(),
            |_, _, _| {},
        )
        .expect("verifies")
    });
    assert_eq!(head.count, n as u64);
    row("verify_dir, public key only", &s_pub, n, Some(raw));
    let ring = KeyRing::new([hmac_key.clone()]);
    let (s_hmac, head) = measure(reps, true, || {
        verify_dir(
            &archive_dir,
            &trusted,
            Some(&ring),
            Default::default(),
            |_, _, _| {},
        )
        .expect("verifies")
    });
    assert_eq!(head.count, n as u64);
    row("verify_dir, public key + HMAC key", &s_hmac, n, Some(raw));

    println!("  pieces, each over the whole archive:");
    let all = manifests(&archive_dir).expect("manifests");
    let (s, _) = measure(reps, true, || {
        all.iter()
            .map(|(_, m)| m.check_signature(&public).expect("signed"))
            .count()
    });
    row("  manifests: signature checks", &s, n, None);
    let (s, files) = measure(reps, true, || {
        all.iter()
            .map(|(_, m)| fs::read(archive_dir.join(&m.segment)).expect("read"))
            .collect::<Vec<_>>()
    });
    row("  read files (page cache)", &s, n, Some(file_bytes));
    let (s, _) = measure(reps, true, || {
        files.iter().map(Sha256::digest).collect::<Vec<_>>()
    });
    row("  SHA-256 of files", &s, n, Some(file_bytes));
    let (s, _) = measure(reps, true, || {
        files.iter().map(|f| blake3::hash(f)).collect::<Vec<_>>()
    });
    row("  BLAKE3 of files", &s, n, Some(file_bytes));
    let (s, raws) = measure(reps, true, || {
        files
            .iter()
            .zip(&all)
            .map(|(f, (_, m))| decompress(f, m.raw_bytes).expect("decompress"))
            .collect::<Vec<_>>()
    });
    row(
        "  decompress (segment::decompress, one-shot into raw_bytes)",
        &s,
        n,
        Some(raw),
    );
    // For comparison: what segment::decompress did before 65b1457, a streaming decoder
    // growing its output with read_to_end.
    let (s, _) = measure(reps, true, || {
        files
            .iter()
            .zip(&all)
            .map(|(f, (_, m))| {
                let mut out = Vec::new();
                zstd::stream::read::Decoder::new(&f[..])
                    .expect("decoder")
                    .take(m.raw_bytes + 1)
                    .read_to_end(&mut out)
                    .expect("decompress");
                assert_eq!(out.len() as u64, m.raw_bytes);
                out
            })
            .collect::<Vec<_>>()
    });
    row(
        "    (before 65b1457: streaming decoder + read_to_end)",
        &s,
        n,
        Some(raw),
    );
    let (s, _) = measure(reps, true, || {
        raws.iter()
            .map(|r| {
                parse_records(r)
                    .map(|rec| black_box(rec.expect("parses")).seq)
                    .sum::<u64>()
            })
            .sum::<u64>()
    });
    let parse_med = median(&s);
    row(
        "  parse lines (parse_records: lines + record_from_json_line)",
        &s,
        n,
        Some(raw),
    );
    // record_from_json_line piece by piece. Each piece alone over the whole archive would
    // stream 183 MB from memory again, which the fused loop does once; so the pieces are
    // timed on the first HOT_LINES lines (about 2 MB, cache-resident), repeated to make up
    // the same number of records, next to the whole function on the same lines.
    let line_slices: Vec<&[u8]> = raws.iter().flat_map(|r| segment_lines(r)).collect();
    let hot = &line_slices[..line_slices.len().min(HOT_LINES)];
    let iters = (n / hot.len()).max(1);
    let hot_n = iters * hot.len();
    let hot_raw: Vec<u8> = hot
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect();
    let hot_bytes = (hot_raw.len() * iters) as u64;
    println!(
        "  record_from_json_line in pieces, on the first {} lines ({:.1} MB, cache-hot) x {iters}:",
        hot.len(),
        mb(hot_raw.len() as u64)
    );
    let mut hot_sum = Duration::ZERO;
    let (s, _) = measure(reps, true, || {
        (0..iters)
            .map(|_| {
                parse_records(&hot_raw)
                    .map(|rec| black_box(rec.expect("parses")).seq)
                    .sum::<u64>()
            })
            .sum::<u64>()
    });
    let hot_parse = median(&s).cpu;
    row(
        "    whole: parse_records (lines + record_from_json_line)",
        &s,
        hot_n,
        Some(hot_bytes),
    );
    let (s, _) = measure(reps, true, || {
        (0..iters)
            .map(|_| segment_lines(&hot_raw).count())
            .sum::<usize>()
    });
    hot_sum += median(&s).cpu;
    row(
        "    split lines at \\n (segment::lines, memchr)",
        &s,
        hot_n,
        Some(hot_bytes),
    );
    let (s, _) = measure(reps, true, || {
        let mut pc = [0u8; 32];
        let mut c = [0u8; 32];
        for _ in 0..iters {
            for l in hot {
                let suffix = &l[l.len() - 162..];
                assert!(unhex32(&suffix[18..82], &mut pc) && unhex32(&suffix[96..160], &mut c));
                black_box((&pc, &c));
            }
        }
    });
    hot_sum += median(&s).cpu;
    row(
        "    hex-decode the two checksums (256-entry table)",
        &s,
        hot_n,
        None,
    );
    let (s, _) = measure(reps, true, || {
        for _ in 0..iters {
            for l in hot {
                let mut body = Vec::with_capacity(l.len() - 161);
                body.extend_from_slice(&l[..l.len() - 162]);
                body.push(b'}');
                black_box(&body);
            }
        }
    });
    hot_sum += median(&s).cpu;
    row(
        "    copy the body into a new Vec (alloc + free)",
        &s,
        hot_n,
        Some(hot_bytes),
    );
    let hot_bodies: Vec<Vec<u8>> = hot
        .iter()
        .map(|l| [&l[..l.len() - 162], b"}"].concat())
        .collect();
    let (s, _) = measure(reps, true, || {
        let mut n = 0u64;
        for _ in 0..iters {
            for b in &hot_bodies {
                let h: Head = serde_json::from_slice(b).expect("head");
                n += h.seq + h.key_id.len() as u64 + h.received_at.len() as u64;
            }
        }
        n
    });
    hot_sum += median(&s).cpu;
    row(
        "    serde_json Head {seq, received_at, key_id}",
        &s,
        hot_n,
        Some(hot_bytes),
    );
    let hot_stamps: Vec<String> = hot_bodies
        .iter()
        .map(|b| {
            let h: Head = serde_json::from_slice(b).expect("head");
            h.received_at.into_owned()
        })
        .collect();
    let (s, _) = measure(reps, true, || {
        (0..iters)
            .flat_map(|_| hot_stamps.iter())
            .map(|t| parse_timestamp(t).expect("timestamp"))
            .fold(0i64, i64::wrapping_add)
    });
    hot_sum += median(&s).cpu;
    row("    parse_timestamp(received_at)", &s, hot_n, None);
    println!(
        "    sum of the pieces {:.0} ns/record, whole {:.0} ns/record",
        secs(hot_sum) * 1e9 / hot_n as f64,
        secs(hot_parse) * 1e9 / hot_n as f64
    );
    // For comparison: the line split and the hex decoding as they were before 65b1457.
    let (s, _) = measure(reps, true, || {
        (0..iters)
            .map(|_| {
                hot_raw
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum::<usize>()
    });
    row(
        "    (before 65b1457: split lines with slice::split)",
        &s,
        hot_n,
        Some(hot_bytes),
    );
    let (s, _) = measure(reps, true, || {
        let mut pc = [0u8; 32];
        let mut c = [0u8; 32];
        for _ in 0..iters {
            for l in hot {
                let suffix = &l[l.len() - 162..];
                hex::decode_to_slice(&suffix[18..82], &mut pc).expect("hex");
                hex::decode_to_slice(&suffix[96..160], &mut c).expect("hex");
                black_box((&pc, &c));
            }
        }
    });
    row(
        "    (before 65b1457: hex-decode with the hex crate)",
        &s,
        hot_n,
        None,
    );
    let parsed: Vec<StoredRecord> = line_slices
        .iter()
        .map(|l| record_from_json_line(l).expect("parses"))
        .collect();
    assert_eq!(parsed.len(), n);
    let (s, _) = measure(reps, false, || {
        let mut v = Verifier::new(None);
        for r in parsed.iter().cloned() {
            v.push(r).expect("chains");
        }
        v.finish().expect("chains").count
    });
    row("  chain walk, no key (incl. record clone)", &s, n, None);
    let (s, _) = measure(reps, false, || {
        parsed
            .iter()
            .cloned()
            .map(|r| black_box(r).seq)
            .sum::<u64>()
    });
    row("    of which: record clone alone", &s, n, None);
    let (s, _) = measure(reps, true, || {
        parsed
            .iter()
            .map(|r| {
                mac(
                    hmac_key.secret(),
                    &r.body,
                    &r.prev_checksum,
                    r.received_at_unix_ns,
                    r.seq,
                )
            })
            .filter(|c| c[0] == 0)
            .count()
    });
    let hmac_med = median(&s);
    row("  HMAC-SHA256 per record (chain::mac)", &s, n, Some(raw));

    // Goals.
    let best_cpu = |s: &[Sample]| s.iter().map(|x| x.cpu).min().expect("one sample");
    let pub_rate = n as f64 / secs(median(&s_pub).cpu).max(1e-9);
    let pub_wall = n as f64 / secs(median(&s_pub).wall);
    let hmac_rate = n as f64 / secs(median(&s_hmac).cpu).max(1e-9);
    println!("\ngoals:");
    println!(
        "  verify, public key only: {pub_rate:.0} records/s per core ({pub_wall:.0}/s wall), \
         goal {VERIFY_GOAL:.0}: {}",
        if pub_rate >= VERIFY_GOAL {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  (least disturbed rep: public key only {:.0}/s per core, with HMAC {:.0}/s per core)",
        n as f64 / secs(best_cpu(&s_pub)),
        n as f64 / secs(best_cpu(&s_hmac))
    );
    println!(
        "  verify with HMAC: {hmac_rate:.0} records/s per core; HMAC alone {:.0} ns/record, \
         line parsing {:.0} ns/record",
        secs(hmac_med.cpu) * 1e9 / n as f64,
        secs(parse_med.cpu) * 1e9 / n as f64
    );
    println!(
        "  write: {:.0} records/s, {:.0} MB/s raw, ratio {ratio:.3}",
        n as f64 / secs(write_med),
        mb(raw) / secs(write_med)
    );
    println!("load average at end: {}", loadavg());
}
