//! End-to-end load generator against the real release binary.
//!
//! ```text
//! cargo build --release && cargo bench --bench e2e
//! E2E_EVENTS=1000000 E2E_CONNECTIONS=8 E2E_RATE=10000 cargo bench --bench e2e
//! ```
//!
//! It starts `target/release/kubechat-audit serve` on a fresh temporary data directory with
//! every listener on port 0, reads the bound addresses from the JSON line `serve` prints, and
//! then measures, over several TCP connections of pipelined 500-byte NDJSON events:
//!
//! - (a) max throughput: durably acknowledged events/s, each connection keeping at most
//!   `E2E_WINDOW` lines unacknowledged;
//! - (b) acknowledgement latency (p50/p99/max, from the write of a line to the read of its
//!   answer) at a fixed, paced offered rate;
//! - (c) a sled-alone reference: the same records (built with the pipeline crate) written to a
//!   fresh sled database configured as `Log::open` does, in groups of the size the service
//!   achieved in (a), each group one `apply_batch` + `flush` + fdatasync of `<dir>/db`;
//! - (d) what a log trim does to group commits: `Log::commit` latency (p50/p99/max) while
//!   another thread trims one archive segment's worth of records as the archive projection
//!   does (`Log::trim_through` in a loop, at most 4096 records per sled batch), against the
//!   same commits without a trim (sled 0.34 holds one global lock for each batch); and, for
//!   comparison, while another thread syncs a file the size of a sealed archive segment.
//!
//! `benches/README.md` explains the output and holds the measured results.
//!
//! Every answer is checked: it must carry the `event_id` of the line it answers (answers come
//! in order). Rejections are counted and printed. The server is stopped with SIGTERM and must
//! exit 0; its log is then checked with `kubechat-audit verify`.
//!
//! Knobs (environment variables):
//!
//! | variable            | default | meaning                                                  |
//! |---------------------|---------|----------------------------------------------------------|
//! | `E2E_EVENTS`        | 400000  | events sent in (a), over all connections                 |
//! | `E2E_WARMUP`        | 20000   | events sent before (a), not reported                     |
//! | `E2E_CONNECTIONS`   | 4       | TCP connections in (a) and (b)                           |
//! | `E2E_WINDOW`        | 2048    | unacknowledged lines per connection at most              |
//! | `E2E_RATE`          | 5000    | offered events/s in (b), over all connections            |
//! | `E2E_LATENCY_SECS`  | 10      | length of (b)                                            |
//! | `E2E_SLED_SECS`     | 8       | time budget of each sled-alone variant in (c)            |
//! | `E2E_SEED`          | 24301   | seed of the event generator                              |
//! | `E2E_VERIFY`        | 1       | run `kubechat-audit verify` on the log afterwards        |
//! | `E2E_BIN`           |         | the binary (default `target/release/kubechat-audit`)     |
//! | `E2E_TMPDIR`        |         | where the temporary data directories go (default: TMPDIR)|
//! | `E2E_PERF`          |         | a directory: record `perf` profiles of serve in (a), (b) |
//! | `E2E_EVENT_IDS`     | 1       | 0: events carry no `event_id` (no idempotence check)     |
//!
//! Nothing here asserts a wall-clock bound; the goals are printed as met or not met.

mod common;

use common::{event_line, LINE_BYTES};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use kubechat_audit::log::{
    Durability, Log, RECORD_CHUNK_BYTES_MAX, SLED_SEGMENT_BYTES, TRIM_RECORDS_PER_BATCH,
};
use kubechat_audit_pipeline::chain::{ChainKey, GENESIS};
use kubechat_audit_pipeline::enrich::{enrich, uuid_v7_at, RequestContext, Transport};
use kubechat_audit_pipeline::event::validate_bytes;
use kubechat_audit_pipeline::record::{encode_batch, StoredRecord};
use kubechat_audit_pipeline::stage::{ChainState, Checksummer, LogWindow, Sealed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// A flooding writer waits until at least this many lines fit in its window.
const FLOOD_WRITE_MIN_LINES: usize = 64;

const GOAL_THROUGHPUT: f64 = 50_000.0;
const GOAL_RATIO: f64 = 0.6;
const GOAL_P99_MS: f64 = 20.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

struct Knobs {
    events: usize,
    warmup: usize,
    connections: usize,
    window: usize,
    rate: f64,
    latency_secs: f64,
    sled_secs: f64,
    seed: u64,
    verify: bool,
    bin: PathBuf,
    tmp_parent: Option<PathBuf>,
    perf_dir: Option<PathBuf>,
    event_ids: bool,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Knobs> {
        let k = Knobs {
            events: env_or("E2E_EVENTS", 400_000)?,
            warmup: env_or("E2E_WARMUP", 20_000)?,
            connections: env_or("E2E_CONNECTIONS", 4)?,
            window: env_or("E2E_WINDOW", 2048)?,
            rate: env_or("E2E_RATE", 5_000.0)?,
            latency_secs: env_or("E2E_LATENCY_SECS", 10.0)?,
            sled_secs: env_or("E2E_SLED_SECS", 8.0)?,
            seed: env_or("E2E_SEED", 0x5eed)?,
            verify: env_or::<u8>("E2E_VERIFY", 1)? != 0,
            bin: match std::env::var_os("E2E_BIN") {
                Some(p) => PathBuf::from(p),
                None => std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
                    .join("release")
                    .join("kubechat-audit"),
            },
            tmp_parent: std::env::var_os("E2E_TMPDIR").map(PathBuf::from),
            perf_dir: std::env::var_os("E2E_PERF").map(PathBuf::from),
            event_ids: env_or::<u8>("E2E_EVENT_IDS", 1)? != 0,
        };
        ensure!(k.connections > 0, "E2E_CONNECTIONS must be at least 1");
        ensure!(
            k.events >= k.connections,
            "E2E_EVENTS must be >= E2E_CONNECTIONS"
        );
        ensure!(
            k.window >= FLOOD_WRITE_MIN_LINES,
            "E2E_WINDOW must be at least {FLOOD_WRITE_MIN_LINES}"
        );
        ensure!(
            k.rate > 0.0 && k.latency_secs > 0.0,
            "E2E_RATE and E2E_LATENCY_SECS must be > 0"
        );
        Ok(k)
    }
}

// ------------------------------------------------------------------------------------------
// Events

/// The lines one connection sends in one phase, back to back in one buffer.
struct Load {
    buf: Vec<u8>,
    /// Offset just past each line's newline.
    ends: Vec<usize>,
    ids: Vec<Uuid>,
}

impl Load {
    /// `n` events; without `with_id` they carry no `event_id` and `ids` holds nil UUIDs.
    fn generate(rng: &mut StdRng, next_index: &mut u64, n: usize, with_id: bool) -> Load {
        let mut l = Load {
            buf: Vec::with_capacity(n * (LINE_BYTES + 1)),
            ends: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let (id, line) = event_line(rng, *next_index, with_id);
            *next_index += 1;
            l.buf.extend_from_slice(&line);
            l.buf.push(b'\n');
            l.ends.push(l.buf.len());
            l.ids.push(id);
        }
        l
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Lines `i..j`, newlines included.
    fn lines(&self, i: usize, j: usize) -> &[u8] {
        &self.buf[self.start(i)..self.ends[j - 1]]
    }

    /// Line `i` without its newline.
    fn line(&self, i: usize) -> &[u8] {
        &self.buf[self.start(i)..self.ends[i] - 1]
    }
}

/// Splits `total` events over `conns` loads.
fn generate_loads(
    rng: &mut StdRng,
    next: &mut u64,
    total: usize,
    conns: usize,
    with_id: bool,
) -> Vec<Load> {
    (0..conns)
        .map(|c| {
            Load::generate(
                rng,
                next,
                total / conns + usize::from(c < total % conns),
                with_id,
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// The server

struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    stderr_path: PathBuf,
    tcp: SocketAddr,
    metrics: SocketAddr,
    data_dir: PathBuf,
}

impl Server {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Server> {
        let data_dir = dir.join("data");
        let stderr_path = dir.join("serve.stderr");
        let stderr = File::create(&stderr_path)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--tcp-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECHAT_AUDIT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        let read = stdout.read_line(&mut first);
        let addrs: serde_json::Value = match read {
            Ok(n) if n > 0 => serde_json::from_str(&first)
                .with_context(|| format!("serve printed {first:?}, not its addresses"))?,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "serve exited before printing its addresses; its stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let addr = |name: &str| -> anyhow::Result<SocketAddr> {
            addrs[name]
                .as_str()
                .ok_or_else(|| anyhow!("no {name:?} address in {first:?}"))?
                .parse()
                .with_context(|| format!("{name} address in {first:?}"))
        };
        Ok(Server {
            tcp: addr("tcp")?,
            metrics: addr("metrics")?,
            child,
            _stdout: stdout,
            stderr_path,
            data_dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (at most a minute) for the exit status.
    fn terminate(&mut self) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let t = Instant::now();
        // SAFETY: kill(2) with the pid of a child we have not yet reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        ensure!(
            rc == 0,
            "kill(SIGTERM): {}",
            std::io::Error::last_os_error()
        );
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, t.elapsed()));
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("serve did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only if the bench failed half way: never leave a server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Prometheus text of `GET /metrics`, as `series -> value`.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn scrape(addr: SocketAddr) -> anyhow::Result<Metrics> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP response from /metrics"))?;
        ensure!(
            head.lines().next().is_some_and(|l| l.contains(" 200")),
            "GET /metrics: {}",
            head.lines().next().unwrap_or("")
        );
        let mut m = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    m.insert(series.to_owned(), v);
                }
            }
        }
        Ok(Metrics(m))
    }

    /// The sum over every series of `name` (any labels).
    fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

/// What the server did between two scrapes.
struct CommitDelta {
    commits: f64,
    group_events_mean: f64,
    commit_seconds_mean: f64,
    commit_seconds_total: f64,
    bytes_flushed: f64,
}

fn commit_delta(a: &Metrics, b: &Metrics) -> CommitDelta {
    let d = |n: &str| b.get(n) - a.get(n);
    let count = d("kubechat_audit_log_group_commit_events_count");
    let sum = d("kubechat_audit_log_group_commit_events_sum");
    let fcount = d("kubechat_audit_log_flush_seconds_count");
    let fsum = d("kubechat_audit_log_flush_seconds_sum");
    CommitDelta {
        commits: count,
        group_events_mean: if count > 0.0 { sum / count } else { 0.0 },
        commit_seconds_mean: if fcount > 0.0 { fsum / fcount } else { 0.0 },
        commit_seconds_total: fsum,
        bytes_flushed: d("kubechat_audit_log_flushed_bytes_total"),
    }
}

// ------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc), to see where the time goes

struct CpuSnap {
    at: Instant,
    /// tid -> (thread name, utime + stime in clock ticks)
    threads: HashMap<u32, (String, u64)>,
    process_ticks: u64,
    /// The aggregate `cpu` line of /proc/stat.
    system: Vec<u64>,
    client_us: u64,
}

fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn client_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_snap(pid: u32) -> CpuSnap {
    let mut threads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(t) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(stat_ticks)
            {
                threads.insert(tid, t);
            }
        }
    }
    let process_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(stat_ticks)
        .map(|(_, t)| t)
        .unwrap_or(0);
    let system = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default();
    CpuSnap {
        at: Instant::now(),
        threads,
        process_ticks,
        system,
        client_us: client_cpu_us(),
    }
}

/// Prints CPU use between two snapshots; returns server CPU-seconds.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
}

fn report_cpu(a: &CpuSnap, b: &CpuSnap, events: usize) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let wall = (b.at - a.at).as_secs_f64();
    let server = (b.process_ticks - a.process_ticks) as f64 / hz;
    let client = (b.client_us - a.client_us) as f64 / 1e6;
    let mut by_name: HashMap<&str, f64> = HashMap::new();
    for (tid, (name, ticks)) in &b.threads {
        let before = a.threads.get(tid).map(|t| t.1).unwrap_or(0);
        *by_name.entry(name.as_str()).or_default() += (ticks - before) as f64 / hz;
    }
    let mut names: Vec<(&str, f64)> = by_name.into_iter().filter(|(_, s)| *s > 0.0).collect();
    names.sort_by(|x, y| y.1.total_cmp(&x.1));
    println!(
        "  server CPU {:.2} cores ({:.1} us/event); load generator {:.2} cores ({:.1} us/event)",
        server / wall,
        server * 1e6 / events.max(1) as f64,
        client / wall,
        client * 1e6 / events.max(1) as f64
    );
    let parts: Vec<String> = names
        .iter()
        .map(|(n, s)| format!("{n} {:.2}", s / wall))
        .collect();
    println!("  server threads (cores busy): {}", parts.join(", "));
    if a.system.len() >= 8 && b.system.len() >= 8 {
        let d: Vec<f64> = a
            .system
            .iter()
            .zip(&b.system)
            .map(|(x, y)| y.saturating_sub(*x) as f64)
            .collect();
        let total: f64 = d.iter().sum::<f64>().max(1.0);
        // user nice system idle iowait irq softirq steal
        let busy_cores = cores() as f64 * (total - d[3] - d[4]) / total;
        println!(
            "  other processes on the machine: {:.2} cores",
            (busy_cores - server / wall - client / wall).max(0.0)
        );
        println!(
            "  machine: busy {:.0}% (user {:.0}%, system {:.0}%, softirq {:.0}%), idle {:.0}%, iowait {:.0}%, steal {:.0}%",
            100.0 * (total - d[3] - d[4]) / total,
            100.0 * (d[0] + d[1]) / total,
            100.0 * d[2] / total,
            100.0 * (d[5] + d[6]) / total,
            100.0 * d[3] / total,
            100.0 * d[4] / total,
            100.0 * d[7] / total
        );
    }
    server
}

/// Samples the stage channel depths (a gauge serve refreshes every second) during a phase.
struct DepthSampler {
    stop: std::sync::Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Duration, Metrics)>>,
}

/// What the sampler saw.
struct Sampled {
    /// "stage mean/max" for each stage channel, in pipeline order.
    depths: String,
    /// Per second of the phase.
    per_second: Vec<Second>,
}

/// What the server reported for one second of a phase.
struct Second {
    trimmed: f64,
    sealed: f64,
    /// Group commits, and the events they wrote.
    commits: f64,
    commit_events: f64,
    /// Time the log writer spent in commits.
    commit_secs: f64,
    /// Upper bound of the histogram bucket of the slowest commit (`None`: no commit).
    slowest_commit: Option<f64>,
}

impl Second {
    fn between(a: &Metrics, b: &Metrics) -> Second {
        const BUCKET: &str = "kubechat_audit_log_flush_seconds_bucket{le=\"";
        let d = |n: &str| b.get(n) - a.get(n);
        let commits = d("kubechat_audit_log_flush_seconds_count");
        let mut buckets: Vec<(f64, f64)> =
            b.0.iter()
                .filter_map(|(k, v)| {
                    let le = k.strip_prefix(BUCKET)?.strip_suffix("\"}")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, v - a.0.get(k).copied().unwrap_or(0.0)))
                })
                .collect();
        buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        Second {
            trimmed: d("kubechat_audit_log_trimmed_records_total"),
            sealed: d("kubechat_audit_archive_segments_sealed_total"),
            commits,
            commit_events: d("kubechat_audit_log_group_commit_events_sum"),
            commit_secs: d("kubechat_audit_log_flush_seconds_sum"),
            slowest_commit: (commits > 0.0)
                .then(|| buckets.iter().find(|(_, n)| *n >= commits).map(|b| b.0))
                .flatten(),
        }
    }
}

impl DepthSampler {
    fn start(addr: SocketAddr) -> DepthSampler {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(m) = Metrics::scrape(addr) {
                    samples.push((t0.elapsed(), m));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        DepthSampler { stop, handle }
    }

    fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.join().unwrap_or_default();
        let parts: Vec<String> = ["validate", "enrich", "checksum", "log"]
            .iter()
            .map(|stage| {
                let series = format!("kubechat_audit_channel_depth_requests{{stage=\"{stage}\"}}");
                let v: Vec<f64> = samples
                    .iter()
                    .filter_map(|(_, m)| m.0.get(&series).copied())
                    .collect();
                let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{stage} {mean:.1}/{max:.0}")
            })
            .collect();
        // The last sample of each second (the first sample stands for the phase's start),
        // then differences between consecutive ones.
        let mut last_of: Vec<Option<usize>> = Vec::new();
        for (i, (t, _)) in samples.iter().enumerate() {
            let sec = t.as_secs() as usize;
            if last_of.len() <= sec {
                last_of.resize(sec + 1, None);
            }
            last_of[sec] = Some(i);
        }
        let mut prev = 0;
        let per_second = last_of
            .into_iter()
            .map(|i| {
                let i = i.unwrap_or(prev);
                let (a, b) = (&samples[prev].1, &samples[i].1);
                prev = i;
                Second::between(a, b)
            })
            .collect();
        Sampled {
            depths: parts.join(", "),
            per_second,
        }
    }
}

/// "trimmed records (segments sealed)" per second, `-` for nothing.
fn housekeeping_line(s: &Sampled) -> String {
    s.per_second
        .iter()
        .map(|x| match (x.trimmed > 0.0, x.sealed > 0.0) {
            (false, false) => "-".to_owned(),
            _ => format!("{:.0}({:.0})", x.trimmed, x.sealed),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "slowest commit <= bucket ms / share of the second in commits" per second.
fn commits_line(s: &Sampled) -> String {
    s.per_second
        .iter()
        .map(|x| match x.slowest_commit {
            None => "-".to_owned(),
            // Bucket bounds are 0.1, 0.25, ... 2500 ms: `{}` prints them without zeros.
            Some(le) if le.is_finite() => format!(
                "{}/{:.0}%",
                (le * 1e5).round() / 100.0,
                100.0 * x.commit_secs
            ),
            Some(_) => format!(">2500/{:.0}%", 100.0 * x.commit_secs),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "commits (mean events per commit)" per second.
fn groups_line(s: &Sampled) -> String {
    s.per_second
        .iter()
        .map(|x| {
            if x.commits > 0.0 {
                format!("{:.0}({:.1})", x.commits, x.commit_events / x.commits)
            } else {
                "-".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An optional `perf record` of the server during one phase.
struct Perf(Option<Child>);

impl Perf {
    fn start(dir: Option<&Path>, pid: u32, phase: &str) -> anyhow::Result<Perf> {
        let Some(dir) = dir else {
            return Ok(Perf(None));
        };
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("perf-{phase}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (is perf installed?)")?;
        std::thread::sleep(Duration::from_millis(300));
        println!("  recording a profile of serve into {}", out.display());
        Ok(Perf(Some(child)))
    }

    fn stop(self) -> anyhow::Result<()> {
        if let Some(mut c) = self.0 {
            // SAFETY: kill(2) with the pid of a child we have not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            c.wait()?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Driving connections

#[derive(Clone, Copy)]
enum Pace {
    /// As fast as the window allows.
    Flood,
    /// Line `i` is due at `offset + i * interval` after the phase starts.
    Paced { interval_ns: u64, offset_ns: u64 },
}

#[derive(Default)]
struct ConnOut {
    accepted: usize,
    rejected: usize,
    mismatched: usize,
    duplicates: usize,
    first_bad: Option<String>,
    /// Write of the line to read of its answer, ns.
    lat_write: Vec<u64>,
    /// Scheduled send time to read of the answer, ns (paced phases only).
    lat_sched: Vec<u64>,
    /// When each answer was read, ns since the phase started (parallel to `lat_write`).
    answered_at: Vec<u64>,
    done_ns: u64,
    max_lag_ns: u64,
    out_of_order: usize,
}

#[derive(serde::Deserialize)]
struct Answer<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    event_id: Option<&'a str>,
    #[serde(default)]
    duplicate: bool,
}

fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// Sends `load` on `stream` and reads every answer; a writer thread and this reader share
/// the window through `acked`.
fn drive(
    stream: TcpStream,
    load: &Load,
    pace: Pace,
    window: usize,
    t0: Instant,
) -> anyhow::Result<ConnOut> {
    let n = load.len();
    let sent_at: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let acked = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let mut wstream = stream.try_clone()?;
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> anyhow::Result<u64> {
            let mut i = 0usize;
            let mut max_lag = 0u64;
            while i < n {
                if abort.load(Ordering::Relaxed) {
                    bail!("reader failed");
                }
                let inflight = i - acked.load(Ordering::Acquire) as usize;
                let free = window.saturating_sub(inflight);
                let j = match pace {
                    Pace::Flood => {
                        let want = free.min(n - i);
                        if want == 0 || want < FLOOD_WRITE_MIN_LINES.min(n - i) {
                            std::thread::park_timeout(Duration::from_millis(1));
                            continue;
                        }
                        i + want
                    }
                    Pace::Paced {
                        interval_ns,
                        offset_ns,
                    } => {
                        let due = |k: usize| offset_ns + k as u64 * interval_ns;
                        let now = since(t0);
                        if now < due(i) {
                            std::thread::sleep(Duration::from_nanos(due(i) - now));
                            continue;
                        }
                        if free == 0 {
                            std::thread::park_timeout(Duration::from_micros(200));
                            continue;
                        }
                        max_lag = max_lag.max(now - due(i));
                        let mut j = i + 1;
                        while j < n && j - i < free && due(j) <= now {
                            j += 1;
                        }
                        j
                    }
                };
                let now = since(t0);
                for t in &sent_at[i..j] {
                    t.store(now, Ordering::Release);
                }
                wstream.write_all(load.lines(i, j))?;
                i = j;
            }
            wstream.shutdown(Shutdown::Write)?;
            Ok(max_lag)
        });
        let wthread = writer.thread().clone();
        let read = read_answers(&stream, load, pace, &sent_at, &acked, &wthread, t0);
        if read.is_err() {
            abort.store(true, Ordering::Relaxed);
            wthread.unpark();
        }
        let wrote = writer.join().expect("writer thread panicked");
        let mut out = read?;
        out.max_lag_ns = wrote?;
        Ok(out)
    })
}

fn read_answers(
    stream: &TcpStream,
    load: &Load,
    pace: Pace,
    sent_at: &[AtomicU64],
    acked: &AtomicU64,
    writer: &std::thread::Thread,
    t0: Instant,
) -> anyhow::Result<ConnOut> {
    let n = load.len();
    let mut out = ConnOut {
        lat_write: Vec::with_capacity(n),
        ..ConnOut::default()
    };
    let mut r = BufReader::with_capacity(256 * 1024, stream);
    let mut line = Vec::with_capacity(512);
    let mut last_seq = 0u64;
    for (k, sent) in sent_at.iter().enumerate() {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            bail!("the server closed the connection after {k} of {n} answers");
        }
        let now = since(t0);
        let ok = match serde_json::from_slice::<Answer>(&line) {
            Ok(Answer {
                seq: Some(seq),
                event_id: Some(id),
                duplicate,
            }) => {
                let sent = load.ids[k];
                let got = Uuid::parse_str(id).ok();
                if got == Some(sent) || (sent.is_nil() && got.is_some()) {
                    out.accepted += 1;
                    out.duplicates += usize::from(duplicate);
                    if seq <= last_seq {
                        out.out_of_order += 1;
                    }
                    last_seq = seq;
                    true
                } else {
                    out.mismatched += 1;
                    false
                }
            }
            _ => {
                out.rejected += 1;
                false
            }
        };
        if !ok && out.first_bad.is_none() {
            out.first_bad = Some(format!(
                "answer {:?} to line {:?}",
                String::from_utf8_lossy(&line).trim_end(),
                String::from_utf8_lossy(&load.line(k)[..80])
            ));
        }
        out.lat_write
            .push(now.saturating_sub(sent.load(Ordering::Acquire)));
        out.answered_at.push(now);
        if let Pace::Paced {
            interval_ns,
            offset_ns,
        } = pace
        {
            out.lat_sched
                .push(now.saturating_sub(offset_ns + k as u64 * interval_ns));
        }
        acked.store(k as u64 + 1, Ordering::Release);
        if r.buffer().is_empty() {
            writer.unpark();
        }
    }
    out.done_ns = since(t0);
    // The writer has shut its half down; the server closes once every answer is written.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Ok(_) => bail!(
            "{} unexpected bytes after the last answer: {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest[..rest.len().min(200)])
        ),
        Err(e) => bail!("waiting for the server to close the connection: {e}"),
    }
    Ok(out)
}

struct PhaseOut {
    sent: usize,
    elapsed: Duration,
    accepted: usize,
    rejected: usize,
    mismatched: usize,
    duplicates: usize,
    out_of_order: usize,
    first_bad: Option<String>,
    lat_write: Vec<u64>,
    lat_sched: Vec<u64>,
    max_lag: Duration,
    /// Per second of the phase: (answers, p99 ms, max ms) of the write -> answer latency.
    seconds: Vec<(usize, f64, f64)>,
}

impl PhaseOut {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }
}

fn run_phase(
    addr: SocketAddr,
    loads: &[Load],
    pace: impl Fn(usize) -> Pace,
    window: usize,
) -> anyhow::Result<PhaseOut> {
    let streams = loads
        .iter()
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let outs: Vec<anyhow::Result<ConnOut>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .zip(loads)
            .enumerate()
            .map(|(c, (st, l))| {
                let p = pace(c);
                s.spawn(move || drive(st, l, p, window, t0))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connection thread panicked"))
            .collect()
    });
    let mut p = PhaseOut {
        sent: loads.iter().map(Load::len).sum(),
        elapsed: Duration::ZERO,
        accepted: 0,
        rejected: 0,
        mismatched: 0,
        duplicates: 0,
        out_of_order: 0,
        first_bad: None,
        lat_write: Vec::new(),
        lat_sched: Vec::new(),
        max_lag: Duration::ZERO,
        seconds: Vec::new(),
    };
    let mut by_second: Vec<Vec<u64>> = Vec::new();
    for o in outs {
        let o = o?;
        p.elapsed = p.elapsed.max(Duration::from_nanos(o.done_ns));
        p.accepted += o.accepted;
        p.rejected += o.rejected;
        p.mismatched += o.mismatched;
        p.duplicates += o.duplicates;
        p.out_of_order += o.out_of_order;
        p.first_bad = p.first_bad.or(o.first_bad);
        for (&at, &lat) in o.answered_at.iter().zip(&o.lat_write) {
            let sec = (at / 1_000_000_000) as usize;
            if by_second.len() <= sec {
                by_second.resize_with(sec + 1, Vec::new);
            }
            by_second[sec].push(lat);
        }
        p.lat_write.extend(o.lat_write);
        p.lat_sched.extend(o.lat_sched);
        p.max_lag = p.max_lag.max(Duration::from_nanos(o.max_lag_ns));
    }
    p.lat_write.sort_unstable();
    p.lat_sched.sort_unstable();
    p.seconds = by_second
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            (v.len(), pct(&v, 99.0), pct(&v, 100.0))
        })
        .collect();
    Ok(p)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

fn latency_line(label: &str, sorted: &[u64]) -> String {
    format!(
        "{label}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(sorted, 50.0),
        pct(sorted, 90.0),
        pct(sorted, 99.0),
        pct(sorted, 99.9),
        pct(sorted, 100.0)
    )
}

fn print_phase_answers(p: &PhaseOut) {
    println!(
        "  answers: {} accepted, {} rejected, {} with a wrong event_id, {} duplicates, {} out of order (of {} sent)",
        p.accepted, p.rejected, p.mismatched, p.duplicates, p.out_of_order, p.sent
    );
    if let Some(b) = &p.first_bad {
        println!("  first bad answer: {b}");
    }
}

// ------------------------------------------------------------------------------------------
// The sled-alone reference

struct NoIds;

/// A log that has trimmed nothing: the checksum stage keeps every id it seals.
impl LogWindow for NoIds {
    fn first_seq(&self) -> u64 {
        1
    }
}

/// The records the service stored for `loads`, rebuilt with the pipeline crate.
fn seal_loads(loads: &[Load], seed: u64) -> Vec<Sealed> {
    let mut secret = [0u8; 32];
    StdRng::seed_from_u64(seed ^ 0x6b6579).fill(&mut secret[..]);
    let mut c = Checksummer::new(
        ChainKey::new("k-bench", secret),
        Uuid::from_u128(seed as u128).to_string(),
        ChainState {
            next_seq: 1,
            prev: GENESIS,
        },
        Vec::new(),
        Box::new(NoIds),
    );
    let ctx = RequestContext {
        transport: Transport::Tcp,
        peer: "127.0.0.1:40512".parse().expect("literal"),
        received_at_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
    };
    let mut out = Vec::with_capacity(loads.iter().map(Load::len).sum());
    for l in loads {
        for i in 0..l.len() {
            let ev = validate_bytes(l.line(i)).expect("generated events are valid");
            let ev = enrich(ev, &ctx, || uuid_v7_at(ctx.received_at_unix_ns));
            out.push(c.seal_event(ev).expect("sealing cannot fail"));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// One key per event: `'r' seq -> encode_batch([record])`.
    KeyPerEvent,
    /// One key per chunk of at most 32 KiB of record bodies, as the log stores records.
    KeyPerChunk,
    /// Chunks plus the head key (`mhead`: last seq and checksum), exactly the keys
    /// `Log::commit` writes (it keeps no per-event index since `fe404d3`).
    AsTheLog,
    /// `kubechat_audit::log::Log::commit` itself (includes encoding and its checks).
    LogCommit,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::KeyPerEvent => "sled alone, one key per event",
            Variant::KeyPerChunk => "sled alone, one key per <=32 KiB chunk",
            Variant::AsTheLog => "sled alone, chunks + head key (the log's keys)",
            Variant::LogCommit => "Log::commit (the service's log code, no pipeline)",
        }
    }
}

fn rec(s: &Sealed) -> &StoredRecord {
    match s {
        Sealed::New { record, .. } => record,
        _ => unreachable!("every generated event is new"),
    }
}

fn u64_key(prefix: u8, n: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The key-value pairs one group commit writes (not timed: the records are already encoded).
fn group_kvs(group: &[Sealed], v: Variant) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut kvs = Vec::new();
    match v {
        Variant::KeyPerEvent => {
            for s in group {
                let r = rec(s);
                kvs.push((u64_key(b'r', r.seq), encode_batch(std::slice::from_ref(r))));
            }
        }
        Variant::KeyPerChunk | Variant::AsTheLog => {
            let mut chunk: Vec<StoredRecord> = Vec::new();
            let mut bytes = 0;
            for s in group {
                let r = rec(s);
                if bytes + r.body.len() > RECORD_CHUNK_BYTES_MAX && !chunk.is_empty() {
                    kvs.push((u64_key(b'r', chunk[0].seq), encode_batch(&chunk)));
                    chunk.clear();
                    bytes = 0;
                }
                bytes += r.body.len();
                chunk.push(r.clone());
            }
            if !chunk.is_empty() {
                kvs.push((u64_key(b'r', chunk[0].seq), encode_batch(&chunk)));
            }
            if v == Variant::AsTheLog {
                let last = rec(group.last().expect("non-empty group"));
                let mut head = last.seq.to_be_bytes().to_vec();
                head.extend_from_slice(&last.checksum);
                kvs.push((b"mhead".to_vec(), head));
            }
        }
        Variant::LogCommit => unreachable!("LogCommit writes through Log"),
    }
    kvs
}

/// Writes `sealed` in groups of `group` events; returns (events written, time spent writing).
fn sled_reference(
    dir: &Path,
    sealed: &[Sealed],
    group: usize,
    v: Variant,
    budget: Duration,
) -> anyhow::Result<(usize, Duration, usize)> {
    let mut spent = Duration::ZERO;
    let mut written = 0;
    let mut keys = 0;
    if v == Variant::LogCommit {
        let log = Log::open(dir)?;
        let mut next_dead = 1;
        for g in sealed.chunks(group) {
            let t = Instant::now();
            let stats = log.commit(&[g], &mut next_dead, Durability::Synced)?;
            spent += t.elapsed();
            written += g.len();
            keys += stats.chunks + 1;
            if spent >= budget {
                break;
            }
        }
        return Ok((written, spent, keys));
    }
    let db = sled::Config::new()
        .path(dir)
        .segment_size(SLED_SEGMENT_BYTES)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()?;
    let data = File::open(dir.join("db"))?;
    data.sync_all()?;
    for g in sealed.chunks(group) {
        let kvs = group_kvs(g, v);
        let t = Instant::now();
        keys += kvs.len();
        let mut batch = sled::Batch::default();
        for (k, val) in kvs {
            batch.insert(k, val);
        }
        db.apply_batch(batch)?;
        db.flush()?;
        data.sync_data()?;
        spent += t.elapsed();
        written += g.len();
        if spent >= budget {
            break;
        }
    }
    Ok((written, spent, keys))
}

// ------------------------------------------------------------------------------------------
// (d) A log trim against the log writer's group commits

/// Records one trim removes in (d): one sealed archive segment (64 MiB of ~916-byte JSON
/// lines), which the archive projection trims in one go after sealing it.
const TRIM_RECORDS: usize = 73_000;
/// How long (d) commits without a trim, for the reference latencies (at most a third of the
/// records left after the history, so that the other phases have some).
const TRIM_BASELINE: Duration = Duration::from_secs(2);
/// The file one sealed archive segment leaves: 64 MiB of JSON lines at zstd ratio ~5.7.
const SEAL_FILE_BYTES: usize = 11_700_000;

/// Commit latencies (ns, sorted) of one phase of (d).
struct Commits {
    lat: Vec<u64>,
    secs: f64,
}

/// What (d) measured for one group size.
struct TrimOut {
    group: usize,
    /// Records in the log before the trim, and the chunks (sled keys) they were stored in.
    history: usize,
    history_chunks: usize,
    /// `Log::commit` with nothing else running, during the trim, during the simulated seal.
    alone: Commits,
    during_trim: Commits,
    during_seal: Commits,
    /// Records removed, and the wall time of every `trim_through` call that removed some.
    removed: u64,
    batches: Vec<u64>,
    seal_secs: f64,
    /// The records for commits ran out before a phase ended.
    ran_out: bool,
}

/// Commits groups from `groups` back to back (`Durability::Synced`, as serve does) until
/// `job`, run in another thread, returns; or, without a job, until `limit` groups or
/// `TRIM_BASELINE`. Returns the commit latencies, the job's result and whether the groups
/// ran out.
fn commits_during<'a, T: Send>(
    log: &Log,
    groups: &mut impl Iterator<Item = &'a [Sealed]>,
    next_dead: &mut u64,
    limit: usize,
    job: Option<Box<dyn FnOnce() -> T + Send + '_>>,
) -> anyhow::Result<(Commits, Option<T>, bool)> {
    let done = AtomicBool::new(job.is_none());
    let t = Instant::now();
    let mut lat = Vec::new();
    let mut ran_out = false;
    let mut commit = || -> anyhow::Result<bool> {
        let Some(g) = groups.next() else {
            ran_out = true;
            return Ok(false);
        };
        let t1 = Instant::now();
        log.commit(&[g], next_dead, Durability::Synced)?;
        lat.push(t1.elapsed().as_nanos() as u64);
        Ok(true)
    };
    let (out, committed) = std::thread::scope(|s| {
        let handle = job.map(|job| {
            s.spawn(|| {
                let r = job();
                done.store(true, Ordering::Release);
                r
            })
        });
        let committed = if handle.is_none() {
            let mut r = Ok(true);
            for _ in 0..limit {
                r = commit();
                if !matches!(r, Ok(true)) || t.elapsed() >= TRIM_BASELINE {
                    break;
                }
            }
            r
        } else {
            let mut r = Ok(true);
            while !done.load(Ordering::Acquire) {
                r = commit();
                if !matches!(r, Ok(true)) {
                    break;
                }
            }
            r
        };
        let out = handle.map(|h| h.join().expect("background thread panicked"));
        (out, committed)
    });
    committed?;
    lat.sort_unstable();
    Ok((
        Commits {
            lat,
            secs: t.elapsed().as_secs_f64(),
        },
        out,
        ran_out,
    ))
}

/// (d) Fills a fresh log with `TRIM_RECORDS` records in groups of `group` (so that its
/// chunks are laid out as the writer lays them out at that group size; sled flush without
/// fdatasync, not timed), then times `Log::commit` of groups of `group` events back to back:
/// alone; while another thread trims the whole history as the archive projection does
/// (`Log::trim_through` in a loop until it removes nothing, at most `TRIM_RECORDS_PER_BATCH`
/// records per sled batch); and, for comparison, while another thread does what sealing an
/// archive segment does to the disk (`sync_all` of a freshly written `SEAL_FILE_BYTES` file,
/// rename, directory sync).
fn trim_contention(
    dir: &Path,
    sealed: &[Sealed],
    group: usize,
    seed: u64,
) -> anyhow::Result<TrimOut> {
    let log = Log::open(dir)?;
    let mut next_dead = 1;
    let (history, rest) = sealed.split_at(TRIM_RECORDS.min(sealed.len() / 3));
    let mut history_chunks = 0;
    for g in history.chunks(group) {
        history_chunks += log
            .commit(&[g], &mut next_dead, Durability::Flushed)?
            .chunks;
    }
    let through = history.last().map(|s| rec(s).seq).unwrap_or(0);
    let mut groups = rest.chunks(group);
    let third = rest.len().div_ceil(group) / 3;
    let (alone, _, out1) =
        commits_during::<()>(&log, &mut groups, &mut next_dead, third.max(1), None)?;
    let trim = || -> Result<(u64, Vec<u64>), kubechat_audit::log::LogError> {
        let mut removed = 0;
        let mut batches = Vec::new();
        loop {
            let t = Instant::now();
            match log.trim_through(through)? {
                0 => return Ok((removed, batches)),
                n => {
                    removed += n;
                    batches.push(t.elapsed().as_nanos() as u64);
                }
            }
        }
    };
    let (during_trim, trimmed, out2) =
        commits_during(&log, &mut groups, &mut next_dead, 0, Some(Box::new(trim)))?;
    let (removed, batches) = trimmed.expect("a job result")?;
    ensure!(
        removed == through,
        "the trim removed {removed} records, not the {through} committed before it"
    );
    // A segment's worth of incompressible bytes, dirty in the page cache as the archive's
    // appends leave it, then its seal's syncs.
    let seg = dir.join("segment.sim");
    {
        let mut f = File::create(&seg)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7365616c);
        let mut frame = vec![0u8; 650_000];
        let mut left = SEAL_FILE_BYTES;
        while left > 0 {
            rng.fill(&mut frame[..]);
            let n = left.min(frame.len());
            f.write_all(&frame[..n])?;
            left -= n;
        }
    }
    let seal = || -> std::io::Result<f64> {
        let t = Instant::now();
        File::options().append(true).open(&seg)?.sync_all()?;
        let to = dir.join("segment.sealed");
        std::fs::rename(&seg, &to)?;
        File::open(dir)?.sync_all()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (during_seal, sealed_in, out3) =
        commits_during(&log, &mut groups, &mut next_dead, 0, Some(Box::new(seal)))?;
    let seal_secs = sealed_in.expect("a job result")?;
    Ok(TrimOut {
        group,
        history: history.len(),
        history_chunks,
        alone,
        during_trim,
        during_seal,
        removed,
        batches,
        seal_secs,
        ran_out: out1 || out2 || out3,
    })
}

fn commit_latency_line(c: &Commits) -> String {
    if c.lat.is_empty() {
        return "no commits".to_owned();
    }
    format!(
        "{:>5} commits in {:>4.0} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        c.lat.len(),
        c.secs * 1e3,
        pct(&c.lat, 50.0),
        pct(&c.lat, 99.0),
        pct(&c.lat, 100.0)
    )
}

fn print_trim(t: &TrimOut, label: &str) {
    let mut batches = t.batches.clone();
    batches.sort_unstable();
    println!(
        "  groups of {} events ({label}); {} records in {} chunks ({:.1} records/chunk) to trim:",
        t.group,
        t.history,
        t.history_chunks,
        t.history as f64 / t.history_chunks.max(1) as f64
    );
    println!(
        "    Log::commit, alone:                 {}",
        commit_latency_line(&t.alone)
    );
    println!(
        "    Log::commit during the trim:        {}",
        commit_latency_line(&t.during_trim)
    );
    println!(
        "      the trim: {} records in {} trim_through calls, {:.0} ms in all; per call p50 {:.1} ms, max {:.1} ms",
        t.removed,
        batches.len(),
        t.during_trim.secs * 1e3,
        pct(&batches, 50.0),
        pct(&batches, 100.0),
    );
    println!(
        "    Log::commit during a segment seal:  {}",
        commit_latency_line(&t.during_seal)
    );
    println!(
        "      the seal: sync_all of {:.1} MB just written, rename, directory sync: {:.0} ms{}",
        SEAL_FILE_BYTES as f64 / 1e6,
        t.seal_secs * 1e3,
        if t.ran_out {
            "\n    the records for commits RAN OUT in a phase (raise E2E_EVENTS)"
        } else {
            ""
        }
    );
}

fn newest_source_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_source_mtime(&p)
        } else if p.extension().is_some_and(|x| x == "rs") {
            e.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn yes(b: bool) -> &'static str {
    if b {
        "MET"
    } else {
        "NOT MET"
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("e2e: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let k = Knobs::from_env()?;
    if !k.bin.exists() {
        eprintln!(
            "e2e: {} does not exist.\n     Build it first:  cargo build --release  (then: cargo bench --bench e2e)",
            k.bin.display()
        );
        std::process::exit(2);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_time = std::fs::metadata(&k.bin)?.modified()?;
    let src_time = newest_source_mtime(&manifest.join("src"))
        .max(newest_source_mtime(&manifest.join("pipeline").join("src")));
    if src_time.is_some_and(|t| t > bin_time) {
        println!(
            "WARNING: {} is older than the sources; run `cargo build --release` to measure the current code",
            k.bin.display()
        );
    }
    let cores = cores();
    println!(
        "e2e: seed {}, {} connections, window {} lines/connection, {} events of {} bytes in (a), \
         {} events/s for {} s in (b), {} cores",
        k.seed, k.connections, k.window, k.events, LINE_BYTES, k.rate, k.latency_secs, cores
    );
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "pipeline",
        "Cargo.toml",
    ])
    .map(|s| s.lines().count())
    .unwrap_or(0);
    let built = time::OffsetDateTime::from(bin_time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "binary: {} built {built} (source now: commit {}{})",
        k.bin.display(),
        git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into()),
        if dirty > 0 {
            format!(" + {dirty} uncommitted files")
        } else {
            String::new()
        }
    );

    let mut rng = StdRng::seed_from_u64(k.seed);
    let mut next = 0u64;
    let t = Instant::now();
    let warm = generate_loads(
        &mut rng,
        &mut next,
        k.warmup.max(k.connections),
        k.connections,
        k.event_ids,
    );
    let flood = generate_loads(&mut rng, &mut next, k.events, k.connections, k.event_ids);
    let paced_n = ((k.rate * k.latency_secs).round() as usize).max(k.connections);
    let paced = generate_loads(&mut rng, &mut next, paced_n, k.connections, k.event_ids);
    println!(
        "generated {} events in {:.1} s",
        next,
        t.elapsed().as_secs_f64()
    );

    let tmp = match &k.tmp_parent {
        Some(p) => tempfile::Builder::new()
            .prefix("kubechat-e2e-")
            .tempdir_in(p)?,
        None => tempfile::Builder::new().prefix("kubechat-e2e-").tempdir()?,
    };
    let mut server = Server::start(&k.bin, tmp.path())?;
    println!(
        "serve pid {} on tcp {} (metrics {}), data in {}",
        server.pid(),
        server.tcp,
        server.metrics,
        server.data_dir.display()
    );
    let mut total_accepted = 0usize;
    let mut total_bad = 0usize;

    // Warm-up.
    let w = run_phase(server.tcp, &warm, |_| Pace::Flood, k.window)?;
    total_accepted += w.accepted;
    total_bad += w.rejected + w.mismatched;
    println!(
        "\nwarm-up: {} events acknowledged at {:.0} events/s",
        w.accepted,
        w.rate()
    );

    // (a) Throughput.
    println!(
        "\n(a) max throughput: {} connections, each with <= {} unacknowledged lines",
        k.connections, k.window
    );
    let m0 = Metrics::scrape(server.metrics)?;
    let perf = Perf::start(k.perf_dir.as_deref(), server.pid(), "a")?;
    let c0 = cpu_snap(server.pid());
    let depths = DepthSampler::start(server.metrics);
    let a = run_phase(server.tcp, &flood, |_| Pace::Flood, k.window)?;
    let depths_a = depths.stop();
    let c1 = cpu_snap(server.pid());
    perf.stop()?;
    let m1 = Metrics::scrape(server.metrics)?;
    total_accepted += a.accepted;
    total_bad += a.rejected + a.mismatched;
    let da = commit_delta(&m0, &m1);
    println!(
        "  {} events acknowledged in {:.2} s: {:.0} events/s ({:.1} MB/s of NDJSON)",
        a.accepted,
        a.elapsed.as_secs_f64(),
        a.rate(),
        a.rate() * (LINE_BYTES + 1) as f64 / 1e6
    );
    print_phase_answers(&a);
    println!(
        "  group commits: {:.0} ({:.0}/s), mean {:.0} events/commit, mean commit (write+flush+fdatasync) {:.2} ms; \
         the log writer spent {:.0}% of the phase inside commits",
        da.commits,
        da.commits / a.elapsed.as_secs_f64(),
        da.group_events_mean,
        da.commit_seconds_mean * 1e3,
        100.0 * da.commit_seconds_total / a.elapsed.as_secs_f64()
    );
    println!(
        "  sled reported {:.0} bytes flushed per event ({:.1} MB/s)",
        da.bytes_flushed / a.accepted.max(1) as f64,
        da.bytes_flushed / a.elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  {}",
        latency_line("ack latency under saturation", &a.lat_write)
    );
    println!(
        "  requests queued in front of each stage, mean/max: {}",
        depths_a.depths
    );
    println!(
        "  per second, log records trimmed (archive segments sealed): {}",
        housekeeping_line(&depths_a)
    );
    report_cpu(&c0, &c1, a.accepted);

    // (b) Latency at a fixed rate.
    println!(
        "\n(b) ack latency at {} events/s offered ({} connections, paced, {} s)",
        k.rate, k.connections, k.latency_secs
    );
    let per_conn_interval = (k.connections as f64 * 1e9 / k.rate) as u64;
    let conns = k.connections as u64;
    let perf = Perf::start(k.perf_dir.as_deref(), server.pid(), "b")?;
    let c2 = cpu_snap(server.pid());
    let depths = DepthSampler::start(server.metrics);
    let b = run_phase(
        server.tcp,
        &paced,
        |c| Pace::Paced {
            interval_ns: per_conn_interval,
            offset_ns: per_conn_interval * c as u64 / conns,
        },
        k.window,
    )?;
    let depths_b = depths.stop();
    let c3 = cpu_snap(server.pid());
    perf.stop()?;
    let m2 = Metrics::scrape(server.metrics)?;
    total_accepted += b.accepted;
    total_bad += b.rejected + b.mismatched;
    let db = commit_delta(&m1, &m2);
    println!(
        "  {} events acknowledged in {:.2} s: {:.0} events/s achieved; generator at most {:.2} ms behind schedule",
        b.accepted,
        b.elapsed.as_secs_f64(),
        b.rate(),
        b.max_lag.as_secs_f64() * 1e3
    );
    print_phase_answers(&b);
    println!(
        "  {}",
        latency_line("ack latency (write -> answer)", &b.lat_write)
    );
    println!(
        "  {}",
        latency_line("ack latency (scheduled -> answer)", &b.lat_sched)
    );
    println!(
        "  group commits: {:.0}, mean {:.1} events/commit, mean commit {:.2} ms, {:.0} bytes flushed per event",
        db.commits,
        db.group_events_mean,
        db.commit_seconds_mean * 1e3,
        db.bytes_flushed / b.accepted.max(1) as f64
    );
    let secs: Vec<String> = b
        .seconds
        .iter()
        .map(|(_, p99, max)| format!("{p99:.0}/{max:.0}"))
        .collect();
    println!("  per second, p99/max ms: {}", secs.join(" "));
    println!(
        "  per second, log records trimmed (archive segments sealed): {}",
        housekeeping_line(&depths_b)
    );
    println!(
        "  per second, slowest log commit <= ms (histogram bucket) / share of the second in commits: {}",
        commits_line(&depths_b)
    );
    println!(
        "  per second, group commits (mean events per commit): {}",
        groups_line(&depths_b)
    );
    println!(
        "  requests queued in front of each stage, mean/max: {}",
        depths_b.depths
    );
    report_cpu(&c2, &c3, b.accepted);

    // Stop the server: SIGTERM must end it cleanly.
    let head_metric = m2.get("kubechat_audit_chain_head_seq");
    let (status, took) = server.terminate()?;
    println!(
        "\nSIGTERM: serve exited with {status} after {:.2} s",
        took.as_secs_f64()
    );
    if !status.success() {
        println!("serve stderr (tail):\n{}", server.stderr_tail());
    }
    let mut verified = None;
    if k.verify {
        let o = Command::new(&k.bin)
            .arg("verify")
            .arg("--data-dir")
            .arg(&server.data_dir)
            .env("KUBECHAT_AUDIT_LOG", "warn")
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        println!("verify: exit {}, {text}", o.status);
        let count = text
            .strip_prefix("ok: ")
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<usize>().ok());
        verified = Some(o.status.success() && count == Some(total_accepted));
        if count != Some(total_accepted) {
            println!(
                "verify counted {count:?} events; the producers were acknowledged {total_accepted} (head gauge {head_metric})"
            );
        }
    }

    // (c) sled alone.
    let group = da.group_events_mean.round().max(1.0) as usize;
    println!(
        "\n(c) sled-alone reference: the records of (a), in groups of {group} events (the mean group of (a)), \
         each apply_batch + flush + fdatasync; at most {} s per variant",
        k.sled_secs
    );
    let t = Instant::now();
    let sealed = seal_loads(&flood, k.seed);
    println!(
        "  {} records rebuilt with validate/enrich/seal in {:.1} s (not timed)",
        sealed.len(),
        t.elapsed().as_secs_f64()
    );
    let budget = Duration::from_secs_f64(k.sled_secs);
    let mut refs = Vec::new();
    for (i, v) in [
        Variant::KeyPerEvent,
        Variant::KeyPerChunk,
        Variant::AsTheLog,
        Variant::LogCommit,
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("sled-{i}"));
        let (n, spent, keys) = sled_reference(&dir, &sealed, group, v, budget)?;
        let rate = n as f64 / spent.as_secs_f64();
        println!(
            "  {:<56} {:>9.0} events/s ({n} events, {} groups, {:.1} keys/group, {:.2} ms/group); pipeline/this = {:.3}",
            v.name(),
            rate,
            n.div_ceil(group),
            keys as f64 / n.div_ceil(group) as f64,
            spent.as_secs_f64() * 1e3 / n.div_ceil(group) as f64,
            a.rate() / rate
        );
        refs.push(rate);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // (d) A log trim against group commits.
    println!(
        "\n(d) a log trim as the archive projection runs it (Log::trim_through until it removes nothing, \
         <= {TRIM_RECORDS_PER_BATCH} records per sled batch) against Log::commit in another thread"
    );
    let mut trims = Vec::new();
    for (g, label) in [
        (
            db.group_events_mean.round().max(1.0) as usize,
            "the mean group of (b)",
        ),
        (group, "the mean group of (a)"),
    ] {
        let dir = tmp.path().join(format!("trim-{g}"));
        let t = trim_contention(&dir, &sealed, g, k.seed)?;
        print_trim(&t, label);
        trims.push(t);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Summary.
    let ratio = a.rate() / refs[0];
    let p99 = pct(&b.lat_write, 99.0);
    println!("\nsummary");
    println!(
        "  throughput      {:>9.0} events/s acknowledged   goal >= {GOAL_THROUGHPUT:.0}: {}",
        a.rate(),
        yes(a.rate() >= GOAL_THROUGHPUT)
    );
    println!(
        "  vs sled alone   {:>9.3} (pipeline / one key per event; {:.2} vs one key per chunk)   goal >= {GOAL_RATIO}: {}",
        ratio,
        a.rate() / refs[1],
        yes(ratio >= GOAL_RATIO)
    );
    println!(
        "  p99 ack latency {:>9.2} ms at {} events/s          goal < {GOAL_P99_MS} ms: {}",
        p99,
        k.rate,
        yes(p99 < GOAL_P99_MS)
    );
    for t in &trims {
        println!(
            "  Log::commit p99 (max), groups of {:>4}: alone {:.2} ({:.2}) ms, during a trim {:.2} ({:.2}) ms, \
             during a seal {:.2} ({:.2}) ms",
            t.group,
            pct(&t.alone.lat, 99.0),
            pct(&t.alone.lat, 100.0),
            pct(&t.during_trim.lat, 99.0),
            pct(&t.during_trim.lat, 100.0),
            pct(&t.during_seal.lat, 99.0),
            pct(&t.during_seal.lat, 100.0)
        );
    }
    println!(
        "  rejected or mismatched answers: {total_bad} (expected 0); clean SIGTERM exit: {}; verify: {}",
        status.success(),
        match verified {
            None => "skipped",
            Some(true) => "ok, every acknowledged event is in the chain",
            Some(false) => "FAILED",
        }
    );
    if total_bad > 0 || !status.success() || verified == Some(false) {
        bail!("the service misbehaved under load (see above)");
    }
    Ok(())
}
