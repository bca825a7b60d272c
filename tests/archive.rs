//! The archive projection through the real binary: every acknowledged event lands in sealed
//! segments exactly once and in order, also across SIGKILL; the real `zstd` tool reads every
//! segment; `archive verify` passes on an untouched copy with only the public key and names
//! the segment and the fault for each kind of tampering; with the log trimmed, `verify` and
//! `replay` still cover everything; under sustained load the data directory stays bounded.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kubechat_audit::keys::SigningKey;
use kubechat_audit::projection::archive::manifest::Manifest;
use serde_json::Value;
use support::server::*;

fn small_segments(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("archive.toml");
    std::fs::write(&cfg, format!("[archive]\nsegment_bytes_max = 20000\nsegment_age_secs = 1\nbatch_events_max = 50\n{extra}")).unwrap();
    cfg
}

fn zstd_lines(segment: &Path) -> Vec<Value> {
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(segment)
        .output()
        .expect("the zstd command line tool (apt-get install zstd)");
    assert!(
        out.status.success(),
        "zstd -dc {}: {}",
        segment.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line parses"))
        .collect()
}

fn segments(archive: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.zst"))
        .collect();
    v.sort();
    v
}

fn public_key(data: &Path) -> PathBuf {
    let out = cli(&["keys", "public", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success());
    let path = data.with_extension("pub.json");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn archive_verify(dir: &Path, public: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "archive",
        "verify",
        dir.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn stream(server: &Server, salt: u64, n: u64) -> u64 {
    let mut p = TcpProducer::connect(server.tcp);
    for i in 0..n {
        p.send(&event(salt, i));
    }
    (0..n)
        .map(|_| p.answer().unwrap()["seq"].as_u64().unwrap())
        .max()
        .unwrap()
}

/// A data directory with several sealed segments, killed once mid-stream along the way.
fn archived_data(dir: &Path) -> (PathBuf, u64) {
    let data = dir.join("data");
    let cfg = small_segments(dir, "");
    let server = Server::start_with(&data, &["--config", cfg.to_str().unwrap()], &[]);
    stream(&server, 1, 300);
    std::thread::sleep(Duration::from_millis(1500));
    let addr = server.tcp;
    let producer = std::thread::spawn(move || {
        let mut p = TcpProducer::connect(addr);
        for i in 0..100_000 {
            p.send(&event(2, i));
            if i % 50 == 49 && (0..50).any(|_| p.answer().is_none()) {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    server.kill9();
    let _ = producer.join();
    let server = Server::start_with(&data, &["--config", cfg.to_str().unwrap()], &[]);
    let head = stream(&server, 3, 300);
    assert!(
        server.terminate().success(),
        "a graceful stop seals the open segment"
    );
    (data, head)
}

#[test]
fn segments_hold_every_event_once_in_order_and_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = archived_data(dir.path());
    let archive = data.join("archive");
    let segs = segments(&archive);
    assert!(segs.len() >= 3, "several segments were sealed: {segs:?}");
    let mut seqs = Vec::new();
    for s in &segs {
        let lines = zstd_lines(s);
        for l in &lines {
            assert_eq!(l["checksum"].as_str().unwrap().len(), 64);
            seqs.push(l["seq"].as_u64().unwrap());
        }
    }
    let expected: Vec<u64> = (1..=head).collect();
    let first_difference = seqs.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        seqs.len() == expected.len() && first_difference.is_none(),
        "every record once, in order, across the kill: {} archived, head {head}, first difference at index {first_difference:?}",
        seqs.len()
    );
    assert!(std::fs::read_dir(&archive).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));

    let public = public_key(&data);
    let (code, text) = archive_verify(&archive, &public, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("{head} records")), "{text}");
    let key = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("hmac-"))
        .unwrap();
    let (code, text) = archive_verify(&archive, &public, &["--hmac-key", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("every checksum recomputed"), "{text}");
    let (ok, text) = verify(&data);
    assert!(ok && text.contains("archive segments"), "{text}");

    // Export a window: every event has the same producer timestamp, so a window around it
    // returns all of one user's events.
    let out = cli(&[
        "archive",
        "export",
        archive.to_str().unwrap(),
        "--from",
        "2026-12-03T09:00:00Z",
        "--to",
        "2026-12-03T10:00:00Z",
        "--user",
        "user-3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!exported.is_empty() && exported.iter().all(|e| e["user_id"] == "user-3"));
    let out = cli(&[
        "archive",
        "export",
        archive.to_str().unwrap(),
        "--from",
        "2026-12-04T00:00:00Z",
        "--to",
        "2026-12-05T00:00:00Z",
    ]);
    assert!(out.stdout.is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn manifest_of(segment: &Path) -> PathBuf {
    PathBuf::from(
        segment
            .to_string_lossy()
            .replace(".ndjson.zst", ".manifest.json"),
    )
}

#[test]
fn archive_verify_names_every_kind_of_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = archived_data(dir.path());
    let archive = data.join("archive");
    let public = public_key(&data);
    let seg_name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    type Tamper = Box<dyn Fn(&[PathBuf])>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "flipped byte",
            Box::new(|s| {
                let mut b = std::fs::read(&s[1]).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x40;
                std::fs::write(&s[1], b).unwrap();
            }),
            "SHA-256",
        ),
        (
            "deleted segment",
            Box::new(|s| {
                std::fs::remove_file(&s[1]).unwrap();
                std::fs::remove_file(manifest_of(&s[1])).unwrap();
            }),
            "missing",
        ),
        (
            "swapped segments",
            Box::new(|s| {
                let a = std::fs::read(&s[0]).unwrap();
                let b = std::fs::read(&s[1]).unwrap();
                std::fs::write(&s[0], b).unwrap();
                std::fs::write(&s[1], a).unwrap();
            }),
            "bytes",
        ),
        (
            "edited manifest",
            Box::new(|s| {
                let p = manifest_of(&s[1]);
                let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                m["first_received_at"] = "2020-01-01T00:00:00.000000000Z".into();
                std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
            }),
            "signature does not verify",
        ),
        (
            "truncated segment",
            Box::new(|s| {
                let b = std::fs::read(&s[1]).unwrap();
                std::fs::write(&s[1], &b[..b.len() - 10]).unwrap();
            }),
            "truncated",
        ),
        (
            "record removed and recompressed",
            Box::new(|s| {
                let lines = zstd_lines(&s[1]);
                let kept: String = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3)
                    .map(|(_, l)| l.to_string() + "\n")
                    .collect();
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(format!("zstd -q -c > '{}'", s[1].display()))
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                out.stdin
                    .as_ref()
                    .unwrap()
                    .write_all(kept.as_bytes())
                    .unwrap();
                assert!(out.wait_with_output().unwrap().status.success());
            }),
            "segment",
        ),
        (
            "manifest re-signed with a foreign key",
            Box::new(|s| {
                let p = manifest_of(&s[1]);
                let mut m: Manifest = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                let k = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
                let foreign = SigningKey {
                    key_id: kubechat_audit::keys::ed25519_key_id(&k.verifying_key()),
                    key: k,
                };
                m.count += 0;
                m.sign(&foreign);
                std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
            }),
            "not by the trusted key",
        ),
    ];
    let originals = segments(&archive);
    for (i, (label, tamper, expect)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("copy-{i}"));
        copy_dir(&archive, &copy);
        let segs: Vec<PathBuf> = originals
            .iter()
            .map(|p| copy.join(p.file_name().unwrap()))
            .collect();
        tamper(&segs);
        let (code, text) = archive_verify(&copy, &public, &[]);
        assert_eq!(code, Some(1), "{label}: {text}");
        assert!(
            text.contains(expect),
            "{label}: expected {expect:?} in {text}"
        );
        let named = [&segs[0], &segs[1], &segs[2]]
            .iter()
            .any(|s| text.contains(&seg_name(s)));
        assert!(named, "{label}: the segment is named: {text}");
    }
    let (code, text) = archive_verify(&archive, &public, &[]);
    assert_eq!(
        code,
        Some(0),
        "the untouched archive still verifies: {text}"
    );

    // The newest segment removed: only an expected head can tell.
    let last = originals.len() - 1;
    let copy = dir.path().join("copy-newest-removed");
    copy_dir(&archive, &copy);
    let newest = copy.join(originals[last].file_name().unwrap());
    let newest_manifest: Manifest =
        serde_json::from_slice(&std::fs::read(manifest_of(&newest)).unwrap()).unwrap();
    std::fs::remove_file(manifest_of(&newest)).unwrap();
    std::fs::remove_file(&newest).unwrap();
    let expect = newest_manifest.last_seq.to_string();
    let (code, text) = archive_verify(&copy, &public, &["--expect-last-seq", &expect]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("expected seq"), "{text}");

    // The oldest segment removed by retention: a fault, unless the start is declared pruned.
    let copy = dir.path().join("copy-oldest-pruned");
    copy_dir(&archive, &copy);
    let oldest = copy.join(originals[0].file_name().unwrap());
    std::fs::remove_file(manifest_of(&oldest)).unwrap();
    std::fs::remove_file(&oldest).unwrap();
    let (code, text) = archive_verify(&copy, &public, &[]);
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = archive_verify(&copy, &public, &["--pruned-start"]);
    assert_eq!(code, Some(0), "{text}");

    // A manifest that is not one, and a directory with nothing sealed.
    let copy = dir.path().join("copy-garbage-manifest");
    copy_dir(&archive, &copy);
    std::fs::write(
        manifest_of(&copy.join(originals[1].file_name().unwrap())),
        b"{not json",
    )
    .unwrap();
    let (code, text) = archive_verify(&copy, &public, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a valid manifest"), "{text}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, text) = archive_verify(&empty, &public, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no sealed segment"), "{text}");
}

#[test]
fn with_the_log_trimmed_verify_and_replay_still_cover_everything() {
    let pg = support::postgres::shared();
    let live = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = small_segments(dir.path(), "[log]\ntrim_safety_events = 0\n");
    let server = Server::start_with(
        &data,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--postgres-url",
            &live.url,
        ],
        &[],
    );
    let mut head = 0;
    for round in 0..6 {
        head = stream(&server, 20 + round, 150);
        std::thread::sleep(Duration::from_millis(600));
    }
    let projected = || {
        pg.execute(
            &live.name,
            "SELECT coalesce(max(seq),0) FROM kubechat_audit.projection_offsets",
        )
        .map(|s| s.trim().parse::<u64>().unwrap_or(0))
        .unwrap_or(0)
    };
    for _ in 0..300 {
        if projected() == head {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(projected(), head);
    // One more sealed segment after the projection caught up lets the trim pass it.
    stream(&server, 40, 100);
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = server.metrics_text();
    assert!(server.terminate().success());
    let first = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubechat_audit_log_first_seq "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64);
    assert!(
        first.is_some_and(|f| f > 1),
        "the log was trimmed: {first:?}\n{metrics}"
    );

    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
    let rebuilt = pg.fresh_database();
    let out = cli(&[
        "replay",
        "--projection",
        "postgres",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--postgres-url",
        &rebuilt.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = |db: &str| {
        pg.execute(db, "SELECT t FROM (SELECT a.*::text AS t, seq FROM kubechat_audit.audit_events a) x ORDER BY seq").unwrap()
    };
    assert_eq!(dump(&live.name), dump(&rebuilt.name));
    let seqs: BTreeSet<u64> = dump(&rebuilt.name)
        .lines()
        .count()
        .try_into()
        .map(|n: u64| (1..=n).collect())
        .unwrap();
    assert_eq!(seqs.len() as u64, head + 100);
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dir_bytes(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
        })
        .unwrap_or(0)
}

#[test]
fn under_sustained_load_the_log_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[archive]\nsegment_bytes_max = 1000000\nsegment_age_secs = 1\n[log]\ntrim_safety_events = 1000\n").unwrap();
    let server = Server::start_with(&data, &["--config", cfg.to_str().unwrap()], &[]);
    let mut sizes = Vec::new();
    for round in 0..10 {
        stream(&server, 50 + round, 6000);
        std::thread::sleep(Duration::from_millis(1200));
        sizes.push(dir_bytes(&data.join("log")));
    }
    let archived = dir_bytes(&data.join("archive"));
    assert!(server.terminate().success());
    eprintln!("log sizes after each round of 6000 events: {sizes:?}; archive {archived} bytes");
    // 60,000 events are ~40 MB of records. sled never shrinks its file, but once trimming
    // keeps pace it reuses the space it freed: the second half of the run adds nothing.
    let half = sizes[sizes.len() / 2];
    let last = *sizes.last().unwrap();
    assert!(last <= half, "the log keeps growing under load: {sizes:?}");
    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
}
