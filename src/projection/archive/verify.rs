//! `archive verify`: checks a directory of sealed segments with nothing but the files and
//! the public key (and, optionally, the HMAC key).
//!
//! For each manifest in `seq` order: its signature against the trusted key; its place in
//! the sequence (no gap, no overlap, its `prev_segment_last_checksum` equal to the previous
//! manifest's `last_checksum`); the segment file's size, SHA-256 and BLAKE3; its decompressed
//! size; and every record: consecutive `seq`, each `prev_checksum` equal to the checksum
//! before it (across segments too, from the first segment on), the manifest's count, first
//! and last values. With the HMAC key every checksum is recomputed as well.

use std::path::Path;

use kubechat_audit_pipeline::chain::{Fault, KeyRing, Verifier, GENESIS};
use kubechat_audit_pipeline::record::format_unix_ns;
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use super::segment::{decompress, manifests, parse_records, ListError};
use crate::keys::PublicKey;

/// What a passing verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveHead {
    pub segments: u64,
    pub count: u64,
    /// 0 for an empty archive.
    pub last_seq: u64,
    pub last_checksum: [u8; 32],
}

/// The first thing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveFault {
    #[error("segment {segment}: {what}")]
    Segment { segment: String, what: String },
    #[error("segment {segment}: {fault}")]
    Record { segment: String, fault: Fault },
    /// A manifest file that is not a valid manifest.
    #[error("{0}")]
    Manifest(String),
    /// The archive could not be read at all (not a fault in it).
    #[error("archive: {0}")]
    Archive(String),
}

/// How a verification starts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Accept an archive whose oldest segments were removed by retention: the chain is then
    /// anchored at the first remaining manifest's `prev_segment_last_checksum`.
    pub pruned_start: bool,
}

fn seg_fault(m: &Manifest, what: impl Into<String>) -> ArchiveFault {
    ArchiveFault::Segment {
        segment: m.segment.clone(),
        what: what.into(),
    }
}

/// Verifies every segment in `dir`. `progress(segments_done, segments_total, records_done)`.
pub fn verify_dir(
    dir: &Path,
    trusted: &[PublicKey],
    ring: Option<&KeyRing>,
    options: Options,
    mut progress: impl FnMut(u64, u64, u64),
) -> Result<ArchiveHead, ArchiveFault> {
    let all = manifests(dir).map_err(|e| match e {
        ListError::Io(m) => ArchiveFault::Archive(m),
        ListError::Invalid(m) => ArchiveFault::Manifest(m),
    })?;
    let total = all.len() as u64;
    let mut head = ArchiveHead {
        segments: 0,
        count: 0,
        last_seq: 0,
        last_checksum: GENESIS,
    };
    let mut chain_id: Option<String> = None;
    let mut v = Verifier::new(ring);
    if options.pruned_start {
        if let Some((_, first)) = all.first() {
            let mut prev = [0u8; 32];
            hex::decode_to_slice(&first.prev_segment_last_checksum, &mut prev)
                .map_err(|e| seg_fault(first, format!("prev_segment_last_checksum: {e}")))?;
            if first.first_seq == 0 {
                return Err(seg_fault(first, "first_seq is 0; a chain starts at seq 1"));
            }
            head.last_seq = first.first_seq - 1;
            head.last_checksum = prev;
            v = Verifier::resume(ring, first.first_seq, prev);
        }
    }
    // Which segment each verified range came from, to name the segment of a held-back fault.
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    let name_of = |ranges: &[(u64, u64, String)], seq: u64| {
        ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&seq))
            .map(|r| r.2.clone())
            .unwrap_or_else(|| "?".into())
    };
    for (_path, m) in &all {
        let key = trusted
            .iter()
            .find(|k| k.key_id == m.signing_key_id)
            .or(trusted.first())
            .ok_or_else(|| ArchiveFault::Archive("no trusted public key given".into()))?;
        m.check_signature(key).map_err(|e| seg_fault(m, e))?;
        match &chain_id {
            None => chain_id = Some(m.chain_id.clone()),
            Some(c) if *c != m.chain_id => {
                return Err(seg_fault(
                    m,
                    format!("belongs to chain {}, the archive to chain {c}", m.chain_id),
                ))
            }
            Some(_) => {}
        }
        let expected = head.last_seq + 1;
        if m.first_seq > expected {
            return Err(seg_fault(
                m,
                format!("seq {expected} through {} are missing: no segment holds them (a segment was removed?)", m.first_seq - 1),
            ));
        }
        if m.first_seq < expected {
            return Err(seg_fault(
                m,
                format!(
                    "starts at seq {} but the previous segment already ends at seq {}",
                    m.first_seq, head.last_seq
                ),
            ));
        }
        if m.prev_segment_last_checksum != hex::encode(head.last_checksum) {
            return Err(seg_fault(m, "prev_segment_last_checksum does not match the previous segment's last checksum (segments swapped or replaced?)"));
        }
        let bytes = std::fs::read(dir.join(&m.segment))
            .map_err(|e| seg_fault(m, format!("cannot read the segment file: {e}")))?;
        if bytes.len() as u64 != m.bytes {
            return Err(seg_fault(
                m,
                format!(
                    "the file is {} bytes, its manifest says {} (truncated or extended)",
                    bytes.len(),
                    m.bytes
                ),
            ));
        }
        if hex::encode(Sha256::digest(&bytes)) != m.sha256 {
            return Err(seg_fault(
                m,
                "SHA-256 of the file does not match its manifest (the file was changed)",
            ));
        }
        if blake3::hash(&bytes).to_hex().as_str() != m.blake3 {
            return Err(seg_fault(
                m,
                "BLAKE3 of the file does not match its manifest (the file was changed)",
            ));
        }
        let raw = decompress(&bytes, m.raw_bytes).map_err(|e| seg_fault(m, e))?;
        if raw.len() as u64 != m.raw_bytes {
            return Err(seg_fault(
                m,
                format!(
                    "decompresses to {} bytes, its manifest says {}",
                    raw.len(),
                    m.raw_bytes
                ),
            ));
        }
        ranges.push((m.first_seq, m.last_seq, m.segment.clone()));
        let mut count = 0u64;
        let mut first: Option<(u64, i64)> = None;
        let mut last: Option<(u64, i64, [u8; 32])> = None;
        for r in parse_records(&raw) {
            let r = r.map_err(|e| seg_fault(m, e))?;
            count += 1;
            first.get_or_insert((r.seq, r.received_at_unix_ns));
            last = Some((r.seq, r.received_at_unix_ns, r.checksum));
            v.push(r).map_err(|fault| ArchiveFault::Record {
                segment: name_of(&ranges, fault.seq()),
                fault,
            })?;
        }
        let (Some((fs, fr)), Some((ls, lr, lc))) = (first, last) else {
            return Err(seg_fault(m, "holds no records"));
        };
        if count != m.count || fs != m.first_seq || ls != m.last_seq {
            return Err(seg_fault(
                m,
                format!("holds {count} records seq {fs}..={ls}, its manifest says {} records seq {}..={}", m.count, m.first_seq, m.last_seq),
            ));
        }
        if hex::encode(lc) != m.last_checksum
            || format_unix_ns(fr) != m.first_received_at
            || format_unix_ns(lr) != m.last_received_at
        {
            return Err(seg_fault(
                m,
                "its records do not match the manifest's last checksum or received_at bounds",
            ));
        }
        head.segments += 1;
        head.count += count;
        head.last_seq = ls;
        head.last_checksum = lc;
        progress(head.segments, total, head.count);
    }
    v.finish().map_err(|fault| ArchiveFault::Record {
        segment: name_of(&ranges, fault.seq()),
        fault,
    })?;
    Ok(head)
}
