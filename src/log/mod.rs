//! The durable log: the only module that touches sled.
//!
//! Everything lives in sled's default tree, under one-byte key prefixes, so that one group
//! commit is one atomic `apply_batch` followed by one flush:
//!
//! ```text
//! key                                  value
//! 'm' name                             meta: "chain_id" (utf-8), "head" (seq u64be, checksum 32),
//!                                      "trimmed" (seq u64be, checksum 32): the last record removed
//! 'r' first_seq:u64be                  a record chunk: record::encode_batch of consecutive records
//! 'd' id:u64be                         a dead letter: JSON (stage::DeadLetter::to_json)
//! 'o' projection name                  a projection's committed offset: seq u64be
//! ```
//!
//! Integers are big-endian so that key order is sequence order. A group commit writes its
//! records as chunks of at most [`RECORD_CHUNK_BYTES_MAX`] (one sled key per chunk, not per
//! event), keeps sled's leaves below the size at which sled 0.34 moves a node into a separate
//! blob file (blob files are written without any fsync), and asserts the chain it is about to
//! write continues the chain already written.
//!
//! Durability: sled 0.34.7's `flush()` ends in `sync_file_range`, which neither flushes the
//! device's write cache nor syncs metadata, so a [`Durability::Synced`] commit follows it
//! with `fdatasync` of `<dir>/db`. Any failure there is fatal and sticky: the log refuses all
//! further writes, and the writer thread raises the pipeline's poison.

mod writer;

#[cfg(test)]
mod model_test;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kubechat_audit_pipeline::chain::{FIRST_SEQ, GENESIS};
use kubechat_audit_pipeline::record::{decode_batch, encode_batch, DecodeError, StoredRecord};
use kubechat_audit_pipeline::stage::{ChainState, LogWindow, Sealed};
use uuid::Uuid;

pub use writer::{spawn_writer, WriterConfig};

/// What the log writer needs of a log: one durable group commit at a time. [`Log`] is the
/// implementation; the writer's tests use one that fails on demand.
pub trait Journal: Send + Sync + 'static {
    /// Writes the items of `groups` as one atomic commit and makes it durable at `durability`
    /// before returning. An error means nothing of it may be acknowledged, now or later.
    fn commit(
        &self,
        groups: &[&[Sealed]],
        next_dead_id: &mut u64,
        durability: Durability,
    ) -> Result<CommitStats, LogError>;
}

impl Journal for Log {
    fn commit(
        &self,
        groups: &[&[Sealed]],
        next_dead_id: &mut u64,
        durability: Durability,
    ) -> Result<CommitStats, LogError> {
        Log::commit(self, groups, next_dead_id, durability)
    }
}

/// Most records one trim removes in one sled batch.
pub const TRIM_RECORDS_PER_BATCH: u64 = 1024;
/// Largest record chunk written under one key, in bytes.
pub const RECORD_CHUNK_BYTES_MAX: usize = 32 * 1024;
/// sled's segment size for new logs. sled stores a tree node bigger than a quarter of a
/// segment as a separate, unsynced blob file; leaves split above 16 entries, so a leaf of
/// record chunks stays far below this quarter.
pub const SLED_SEGMENT_BYTES: usize = 16 * 1024 * 1024;
const _: () = assert!(
    16 * (RECORD_CHUNK_BYTES_MAX + kubechat_audit_pipeline::limits::BODY_BYTES_MAX + 4096)
        < SLED_SEGMENT_BYTES / 4
);

/// sled's page cache. sled's own default (1 GiB) is sized for a database, not a log that
/// is read mostly at its tail.
pub const SLED_CACHE_BYTES: u64 = 256 * 1024 * 1024;

const META_CHAIN_ID: &[u8] = b"mchain_id";
const META_HEAD: &[u8] = b"mhead";
const META_TRIMMED: &[u8] = b"mtrimmed";
const P_RECORDS: u8 = b'r';
const P_DEAD: u8 = b'd';
const P_OFFSETS: u8 = b'o';

/// How far a commit goes before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// sled's flush only: survives a process crash, not necessarily a power loss.
    Flushed,
    /// sled's flush plus fdatasync of the log file: survives a power loss.
    Synced,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("sled: {0}")]
    Sled(sled::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record chunk at key seq {key}: {source}")]
    Decode { key: u64, source: DecodeError },
    #[error("{0}")]
    Setup(String),
    #[error("the log is inconsistent: {0}")]
    Corrupt(String),
    #[error("an earlier write failed ({0}); the log accepts no more writes until restarted")]
    Poisoned(String),
    #[error(
        "the data directory {0} is in use by another process (is `kubechat-audit serve` running on it?); stop it or work on a copy"
    )]
    Locked(PathBuf),
}

// Not `#[from]`: that would make the sled error the source too, and error chains would
// print it twice.
impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> LogError {
        LogError::Sled(e)
    }
}

/// The durable log.
pub struct Log {
    failpoints: Failpoints,
    commits: std::sync::atomic::AtomicU64,
    db: sled::Db,
    dir: PathBuf,
    data_file: File,
    failed: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
    /// The last durable `seq`, for projections that tail the log.
    durable_head: std::sync::Mutex<u64>,
    /// The first seq still held, cached for the checksum stage (which must not read sled).
    first_seq: std::sync::atomic::AtomicU64,
    head_advanced: std::sync::Condvar,
}

/// A chain's identity and where it stands.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub chain_id: String,
    pub state: ChainState,
    pub next_dead_letter_id: u64,
}

fn u64_key(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Log {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SLED_SEGMENT_BYTES)
            .cache_capacity(SLED_CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref ioe)
                    if ioe.kind() == std::io::ErrorKind::WouldBlock
                        || ioe.raw_os_error() == Some(libc::EWOULDBLOCK)
                        || ioe.to_string().contains("could not acquire lock") =>
                {
                    LogError::Locked(dir.to_owned())
                }
                other => LogError::Sled(other),
            })?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(io(&data_path))?;
        // A fresh log's files must survive a power loss before anything is acknowledged.
        data_file.sync_all().map_err(io(&data_path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(Log {
            failpoints: Failpoints::from_env()?,
            commits: std::sync::atomic::AtomicU64::new(0),
            db,
            dir: dir.to_owned(),
            data_file,
            failed: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            durable_head: std::sync::Mutex::new(0),
            first_seq: std::sync::atomic::AtomicU64::new(FIRST_SEQ),
            head_advanced: std::sync::Condvar::new(),
        })
    }

    /// Opens a log that must already exist (for `verify` and other readers).
    pub fn open_existing(dir: &Path) -> Result<Log, LogError> {
        if !dir.join("db").exists() {
            return Err(LogError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no kubechat-audit log here (is --data-dir right?)",
                ),
            });
        }
        Log::open(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the chain's identity and head, creating the identity on first use, and checks
    /// that the head recorded in meta is the last record stored.
    pub fn recover(&self, new_chain_id: impl FnOnce() -> String) -> Result<Recovered, LogError> {
        let chain_id = match self.db.get(META_CHAIN_ID)? {
            Some(v) => String::from_utf8(v.to_vec())
                .map_err(|_| LogError::Corrupt("chain_id is not UTF-8".into()))?,
            None => {
                let id = new_chain_id();
                self.db.insert(META_CHAIN_ID, id.as_bytes())?;
                self.durable_flush(Durability::Synced)?;
                id
            }
        };
        let state = match self.head()? {
            None => ChainState {
                next_seq: FIRST_SEQ,
                prev: GENESIS,
            },
            Some((seq, checksum)) => ChainState {
                next_seq: seq + 1,
                prev: checksum,
            },
        };
        // Pair assertion: the last stored record is the recorded head.
        match self.last_record()? {
            Some(r) if r.seq + 1 != state.next_seq || r.checksum != state.prev => {
                return Err(LogError::Corrupt(format!(
                    "the recorded head (seq {}) does not match the last stored record (seq {})",
                    state.next_seq - 1,
                    r.seq
                )))
            }
            None if state.next_seq != FIRST_SEQ
                && self.trimmed()?.map(|(s, _)| s) != Some(state.next_seq - 1) =>
            {
                return Err(LogError::Corrupt(format!(
                    "the recorded head is seq {} but the log holds no records",
                    state.next_seq - 1
                )))
            }
            _ => {}
        }
        self.publish_head(state.next_seq - 1);
        self.first_seq()?;
        let next_dead_letter_id = match self.db.scan_prefix([P_DEAD]).keys().next_back() {
            Some(k) => {
                be_u64(&k?[1..]).ok_or_else(|| LogError::Corrupt("bad dead-letter key".into()))? + 1
            }
            None => 1,
        };
        Ok(Recovered {
            chain_id,
            state,
            next_dead_letter_id,
        })
    }

    /// The chain head recorded by the last commit: `(seq, checksum)`.
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, LogError> {
        self.seq_and_checksum(META_HEAD)
    }

    fn seq_and_checksum(&self, key: &[u8]) -> Result<Option<(u64, [u8; 32])>, LogError> {
        match self.db.get(key)? {
            None => Ok(None),
            Some(v) if v.len() == 40 => {
                let seq = be_u64(&v[..8]).expect("8 bytes");
                let mut c = [0u8; 32];
                c.copy_from_slice(&v[8..]);
                Ok(Some((seq, c)))
            }
            Some(v) => Err(LogError::Corrupt(format!(
                "meta value has {} bytes, expected 40",
                v.len()
            ))),
        }
    }

    /// The last record trimmed from the log, `(seq, checksum)`: the log holds `seq + 1` on.
    pub fn trimmed(&self) -> Result<Option<(u64, [u8; 32])>, LogError> {
        self.seq_and_checksum(META_TRIMMED)
    }

    /// The first `seq` the log can still hand out.
    pub fn first_seq(&self) -> Result<u64, LogError> {
        let first = self.trimmed()?.map(|(s, _)| s + 1).unwrap_or(FIRST_SEQ);
        self.first_seq.fetch_max(first, Ordering::SeqCst);
        Ok(first)
    }

    /// Every record's `(seq, event_id, checksum)`, in seq order: what the checksum stage
    /// remembers to answer retries without reading the log.
    pub fn scan_ids(&self) -> Result<Vec<(u64, Uuid, [u8; 32])>, LogError> {
        let finder = memchr::memmem::Finder::new(b"\"event_id\":\"");
        let mut out = Vec::new();
        for r in self.records_from(self.first_seq()?) {
            let r = r?;
            let id = finder
                .find(&r.body)
                .and_then(|at| r.body.get(at + 12..at + 48))
                .and_then(|t| Uuid::try_parse_ascii(t).ok())
                .ok_or_else(|| {
                    LogError::Corrupt(format!("seq {}: the record names no event_id", r.seq))
                })?;
            out.push((r.seq, id, r.checksum));
        }
        Ok(out)
    }

    /// Removes whole record chunks whose records are all at or below `seq`, at most
    /// [`TRIM_RECORDS_PER_BATCH`] records per call (sled holds a global lock for the length of
    /// a batch, and the log writer waits on it), and records the new trim point. Returns the
    /// records removed; call again until it returns 0.
    pub fn trim_through(&self, seq: u64) -> Result<u64, LogError> {
        // A chunk ends where the next one starts, so keys alone tell which chunks lie
        // wholly at or below `seq`; only the last of them is decoded, for its checksum.
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        let mut last_key: Option<sled::IVec> = None;
        let mut keys = self.db.scan_prefix([P_RECORDS]).keys().peekable();
        while let Some(k) = keys.next() {
            let k = k?;
            let first = be_u64(&k[1..]).unwrap_or(0);
            let next_first = match keys.peek() {
                Some(Ok(n)) => be_u64(&n[1..]).unwrap_or(0),
                // The newest chunk ends at the head.
                _ => self.durable_head() + 1,
            };
            if next_first == 0 || next_first - 1 > seq || removed >= TRIM_RECORDS_PER_BATCH {
                break;
            }
            removed += next_first - first;
            batch.remove(k.clone());
            last_key = Some(k);
        }
        let Some(k) = last_key else {
            return Ok(0);
        };
        let key = be_u64(&k[1..]).unwrap_or(0);
        let v = self
            .db
            .get(&k)?
            .ok_or_else(|| LogError::Corrupt(format!("chunk {key} vanished while trimming")))?;
        let recs = decode_batch(&v).map_err(|source| LogError::Decode { key, source })?;
        let r = recs
            .last()
            .ok_or_else(|| LogError::Corrupt(format!("chunk {key} is empty")))?;
        let mut meta = [0u8; 40];
        meta[..8].copy_from_slice(&r.seq.to_be_bytes());
        meta[8..].copy_from_slice(&r.checksum);
        batch.insert(META_TRIMMED, &meta[..]);
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        self.first_seq.fetch_max(r.seq + 1, Ordering::SeqCst);
        Ok(removed)
    }

    fn last_record(&self) -> Result<Option<StoredRecord>, LogError> {
        match self.db.scan_prefix([P_RECORDS]).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                let key = be_u64(&k[1..]).unwrap_or(0);
                let mut recs =
                    decode_batch(&v).map_err(|source| LogError::Decode { key, source })?;
                Ok(recs.pop())
            }
        }
    }

    /// Writes one group commit and makes it durable. On any error the log is poisoned.
    pub fn commit(
        &self,
        groups: &[&[Sealed]],
        next_dead_id: &mut u64,
        durability: Durability,
    ) -> Result<CommitStats, LogError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(LogError::Poisoned(
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default(),
            ));
        }
        let result = self.commit_inner(groups, next_dead_id, durability);
        if let Err(e) = &result {
            self.failed.store(true, Ordering::SeqCst);
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        result
    }

    fn commit_inner(
        &self,
        groups: &[&[Sealed]],
        next_dead_id: &mut u64,
        durability: Durability,
    ) -> Result<CommitStats, LogError> {
        let mut batch = sled::Batch::default();
        let mut stats = CommitStats::default();
        let mut chunk: Vec<StoredRecord> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut head: Option<(u64, [u8; 32])> = None;
        let flush_chunk = |chunk: &mut Vec<StoredRecord>,
                           chunk_bytes: &mut usize,
                           batch: &mut sled::Batch,
                           stats: &mut CommitStats| {
            if let Some(first) = chunk.first() {
                batch.insert(&u64_key(P_RECORDS, first.seq), encode_batch(chunk));
                stats.chunks += 1;
                chunk.clear();
                *chunk_bytes = 0;
            }
        };
        for item in groups.iter().flat_map(|g| g.iter()) {
            match item {
                Sealed::New { record, .. } => {
                    // Assert what we write: each record continues the one before it.
                    if let Some((seq, sum)) = head {
                        assert_eq!(record.seq, seq + 1, "records of a commit are consecutive");
                        assert_eq!(record.prev_checksum, sum, "records of a commit chain");
                    }
                    if chunk_bytes + record.body.len() > RECORD_CHUNK_BYTES_MAX {
                        flush_chunk(&mut chunk, &mut chunk_bytes, &mut batch, &mut stats);
                    }
                    head = Some((record.seq, record.checksum));
                    chunk_bytes += record.body.len();
                    stats.records += 1;
                    chunk.push(record.clone());
                }
                Sealed::Duplicate { .. } => stats.duplicates += 1,
                Sealed::Rejected(d) => {
                    let json = serde_json::to_vec(&d.to_json(*next_dead_id))
                        .expect("a JSON value serializes");
                    batch.insert(&u64_key(P_DEAD, *next_dead_id), json);
                    *next_dead_id += 1;
                    stats.dead_letters += 1;
                }
            }
        }
        flush_chunk(&mut chunk, &mut chunk_bytes, &mut batch, &mut stats);
        if let Some((seq, sum)) = head {
            let mut v = [0u8; 40];
            v[..8].copy_from_slice(&seq.to_be_bytes());
            v[8..].copy_from_slice(&sum);
            batch.insert(META_HEAD, &v[..]);
        }
        let n = self.commits.fetch_add(1, Ordering::SeqCst);
        if let Some(ms) = self.failpoints.commit_delay_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if self
            .failpoints
            .commit_error_after
            .is_some_and(|after| n >= after)
        {
            return Err(LogError::Io {
                path: self.dir.join("db"),
                source: std::io::Error::other("injected by failpoint commit_error_after"),
            });
        }
        self.db.apply_batch(batch)?;
        stats.bytes = self.durable_flush(durability)?;
        if let Some((seq, _)) = head {
            self.publish_head(seq);
        }
        Ok(stats)
    }

    fn durable_flush(&self, durability: Durability) -> Result<usize, LogError> {
        let bytes = self.db.flush()?;
        if durability == Durability::Synced {
            self.data_file.sync_data().map_err(|source| LogError::Io {
                path: self.dir.join("db"),
                source,
            })?;
        }
        Ok(bytes)
    }

    fn publish_head(&self, seq: u64) {
        let mut h = self.durable_head.lock().unwrap_or_else(|e| e.into_inner());
        if seq > *h {
            *h = seq;
            self.head_advanced.notify_all();
        }
    }

    /// The last durable `seq` (0 for an empty chain).
    pub fn durable_head(&self) -> u64 {
        *self.durable_head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the durable head passes `seq` or `timeout` elapses; returns the head.
    pub fn wait_past(&self, seq: u64, timeout: std::time::Duration) -> u64 {
        let h = self.durable_head.lock().unwrap_or_else(|e| e.into_inner());
        let (h, _) = self
            .head_advanced
            .wait_timeout_while(h, timeout, |h| *h <= seq)
            .unwrap_or_else(|e| e.into_inner());
        *h
    }

    /// The record at `seq`, if stored.
    pub fn record(&self, seq: u64) -> Result<Option<StoredRecord>, LogError> {
        let upper = u64_key(P_RECORDS, seq);
        let Some(kv) = self
            .db
            .range([P_RECORDS].as_slice()..=upper.as_slice())
            .next_back()
        else {
            return Ok(None);
        };
        let (k, v) = kv?;
        let key = be_u64(&k[1..]).unwrap_or(0);
        let recs = decode_batch(&v).map_err(|source| LogError::Decode { key, source })?;
        Ok(recs.into_iter().find(|r| r.seq == seq))
    }

    /// Every stored record from `from_seq` on, in key order. Records are yielded as stored:
    /// a verifier, not this iterator, judges their order.
    pub fn records_from(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<StoredRecord, LogError>> + '_ {
        // Start at the chunk that holds `from_seq`.
        let start = match self
            .db
            .range([P_RECORDS].as_slice()..=u64_key(P_RECORDS, from_seq).as_slice())
            .keys()
            .next_back()
        {
            Some(Ok(k)) => k.to_vec(),
            _ => vec![P_RECORDS],
        };
        self.db
            .range(start..)
            .take_while(|kv| {
                kv.as_ref()
                    .map(|(k, _)| k.first() == Some(&P_RECORDS))
                    .unwrap_or(true)
            })
            .flat_map(move |kv| -> Vec<Result<StoredRecord, LogError>> {
                match kv {
                    Err(e) => vec![Err(e.into())],
                    Ok((k, v)) => {
                        let key = be_u64(&k[1..]).unwrap_or(0);
                        match decode_batch(&v) {
                            Ok(recs) => recs
                                .into_iter()
                                .filter(|r| r.seq >= from_seq)
                                .map(Ok)
                                .collect(),
                            Err(source) => vec![Err(LogError::Decode { key, source })],
                        }
                    }
                }
            })
    }

    /// Every dead letter, oldest first, as stored JSON.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<Vec<u8>, LogError>> + '_ {
        self.db
            .scan_prefix([P_DEAD])
            .values()
            .map(|v| v.map(|v| v.to_vec()).map_err(LogError::from))
    }

    /// A projection's committed offset (the last `seq` it has made durable), if any.
    pub fn offset(&self, projection: &str) -> Result<Option<u64>, LogError> {
        let mut k = vec![P_OFFSETS];
        k.extend_from_slice(projection.as_bytes());
        Ok(self.db.get(k)?.and_then(|v| be_u64(&v)))
    }

    /// Mirrors a projection's committed offset into the log, for trimming. Not flushed on its
    /// own: after a crash the mirror can only lag the projection's own offset, which is safe.
    pub fn mirror_offset(&self, projection: &str, seq: u64) -> Result<(), LogError> {
        let mut k = vec![P_OFFSETS];
        k.extend_from_slice(projection.as_bytes());
        self.db.insert(k, &seq.to_be_bytes())?;
        Ok(())
    }
}

/// Fault injection for tests at the log's I/O boundary, read once from the environment
/// variable `KUBECHAT_AUDIT_FAILPOINTS` (comma-separated `name=value`):
/// `commit_error_after=N` fails every commit after the first N as an I/O error would;
/// `commit_delay_ms=M` sleeps before each commit, to hold requests in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Failpoints {
    commit_error_after: Option<u64>,
    commit_delay_ms: Option<u64>,
}

impl Failpoints {
    fn from_env() -> Result<Failpoints, LogError> {
        let mut f = Failpoints::default();
        let Ok(spec) = std::env::var("KUBECHAT_AUDIT_FAILPOINTS") else {
            return Ok(f);
        };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let bad =
                || LogError::Setup(format!("KUBECHAT_AUDIT_FAILPOINTS: cannot parse {part:?}"));
            let (name, value) = part.split_once('=').ok_or_else(bad)?;
            let value: u64 = value.parse().map_err(|_| bad())?;
            match name {
                "commit_error_after" => f.commit_error_after = Some(value),
                "commit_delay_ms" => f.commit_delay_ms = Some(value),
                _ => return Err(bad()),
            }
        }
        tracing::warn!(failpoints = ?f, "fault injection is active");
        Ok(f)
    }
}

/// What one group commit wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitStats {
    pub records: usize,
    pub duplicates: usize,
    pub dead_letters: usize,
    pub chunks: usize,
    pub bytes: usize,
}

/// The checksum stage's view of the log: how far back it reaches.
pub struct Window(pub std::sync::Arc<Log>);

impl LogWindow for Window {
    fn first_seq(&self) -> u64 {
        self.0.first_seq.load(Ordering::SeqCst)
    }
}
