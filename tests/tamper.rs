//! Tamper evidence of the log: in a copy of a data directory, records are changed, removed,
//! inserted, reordered and cut from the end through sled directly (as an attacker with file
//! access would), and `verify` must fail naming the right `seq` and the kind of change, while
//! the untouched original still verifies.

mod support;

use std::path::Path;

use kubechat_audit::log::SLED_SEGMENT_BYTES;
use kubechat_audit_pipeline::record::{decode_batch, encode_batch, StoredRecord};
use support::server::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
            std::fs::set_permissions(&dest, std::fs::metadata(e.path()).unwrap().permissions())
                .unwrap();
        }
    }
}

/// Opens the copy's sled tree, takes all its records out, lets `edit` change them, and
/// stores the result back as one chunk under the original first key.
fn tamper(data: &Path, edit: impl FnOnce(&mut Vec<StoredRecord>)) {
    let db = sled::Config::new()
        .path(data.join("log"))
        .segment_size(SLED_SEGMENT_BYTES)
        .open()
        .unwrap();
    let mut records = Vec::new();
    let mut first_key = None;
    for kv in db.scan_prefix(b"r") {
        let (k, v) = kv.unwrap();
        first_key.get_or_insert_with(|| k.to_vec());
        records.extend(decode_batch(&v).unwrap());
        db.remove(k).unwrap();
    }
    edit(&mut records);
    db.insert(first_key.expect("records"), encode_batch(&records))
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn verify_names_the_seq_and_kind_of_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let server = Server::start(&original);
    let mut tcp = TcpProducer::connect(server.tcp);
    for n in 0..10 {
        tcp.send(&event(42, n));
    }
    for _ in 0..10 {
        assert!(tcp.answer().unwrap().get("seq").is_some());
    }
    assert!(server.terminate().success());
    let (ok, text) = verify(&original);
    assert!(ok, "{text}");

    type Edit = Box<dyn FnOnce(&mut Vec<StoredRecord>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "changed",
            Box::new(|r| {
                let body = String::from_utf8(r[4].body.clone())
                    .unwrap()
                    .replace("user-", "USER-");
                r[4].body = body.into_bytes();
            }),
            "seq 5: changed",
        ),
        ("removed", Box::new(|r| drop(r.remove(4))), "seq 5: missing"),
        (
            "inserted",
            Box::new(|r| {
                let mut forged = r[4].clone();
                forged.body = String::from_utf8(forged.body)
                    .unwrap()
                    .replace("action-4", "action-x")
                    .into_bytes();
                r.insert(4, forged);
            }),
            "seq 5: inserted",
        ),
        ("reordered", Box::new(|r| r.swap(4, 5)), "seq 5: reordered"),
        (
            "relinked",
            Box::new(|r| r[4].prev_checksum = [9; 32]),
            "seq 5: changed",
        ),
        (
            "cut from the end",
            Box::new(|r| r.truncate(7)),
            "seq 8: missing",
        ),
        (
            "renumbered",
            Box::new(|r| {
                r.remove(4);
                for rec in r.iter_mut().skip(4) {
                    rec.seq -= 1;
                }
            }),
            "seq 5: changed",
        ),
    ];
    for (i, (label, edit, expected)) in cases.into_iter().enumerate() {
        let copy = dir.path().join(format!("copy-{i}"));
        copy_dir(&original, &copy);
        tamper(&copy, edit);
        let out = cli(&["verify", "--data-dir", copy.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{label}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(expected),
            "{label}: expected {expected:?}, got {text}"
        );
    }
    // The original is untouched and still verifies.
    let (ok, text) = verify(&original);
    assert!(ok, "{text}");
}
