//! The keyed hash chain. `schemas/chain.md` is the specification; this is its code.
//!
//! ```text
//! checksum_n = HMAC-SHA256(key[key_id_n],
//!                u32be(len(body_n)) || body_n        -- RFC 8785 canonical record document
//!             || prev_checksum_n                     -- 32 bytes; checksum_{n-1}, zeros for seq 1
//!             || i64be(received_at_unix_ns_n)        -- the pipeline's receive time
//!             || u64be(seq_n))
//! ```
//!
//! Sealing ([`seal`]) and verifying ([`Verifier`]) both call [`mac`], so they cannot drift.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::record::StoredRecord;

/// The checksum before the first record of a chain.
pub const GENESIS: [u8; 32] = [0; 32];
/// The first `seq` of every chain.
pub const FIRST_SEQ: u64 = 1;
/// HMAC key length, in bytes.
pub const KEY_BYTES: usize = 32;

/// A secret chain key and its id.
#[derive(Clone)]
pub struct ChainKey {
    pub id: String,
    secret: [u8; KEY_BYTES],
}

impl ChainKey {
    pub fn new(id: impl Into<String>, secret: [u8; KEY_BYTES]) -> ChainKey {
        ChainKey {
            id: id.into(),
            secret,
        }
    }

    pub fn secret(&self) -> &[u8; KEY_BYTES] {
        &self.secret
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("ChainKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The one function that computes a checksum.
pub fn mac(
    secret: &[u8; KEY_BYTES],
    body: &[u8],
    prev: &[u8; 32],
    received_at_unix_ns: i64,
    seq: u64,
) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    let len = u32::try_from(body.len()).expect("a record body is far below 4 GiB");
    m.update(&len.to_be_bytes());
    m.update(body);
    m.update(prev);
    m.update(&received_at_unix_ns.to_be_bytes());
    m.update(&seq.to_be_bytes());
    m.finalize().into_bytes().into()
}

/// Seals a record body into the chain: returns the stored record.
pub fn seal(
    key: &ChainKey,
    body: Vec<u8>,
    prev: [u8; 32],
    received_at_unix_ns: i64,
    seq: u64,
) -> StoredRecord {
    let checksum = mac(&key.secret, &body, &prev, received_at_unix_ns, seq);
    StoredRecord {
        seq,
        received_at_unix_ns,
        key_id: key.id.clone(),
        prev_checksum: prev,
        checksum,
        body,
    }
}

/// The chain keys a verifier knows, by id.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, ChainKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = ChainKey>) -> KeyRing {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ChainKey> {
        self.keys.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What is wrong at a point of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The record at `seq` does not match its checksum: its content was changed.
    Changed { seq: u64 },
    /// The record at `seq` names the wrong previous checksum: the chain was cut and spliced.
    Broken { seq: u64 },
    /// Records `seq ..= through` are absent.
    Missing { seq: u64, through: u64 },
    /// A record that does not belong sits before `seq` (a copy, or a forgery claiming `seq`).
    Inserted { seq: u64 },
    /// `seq` appears after a later record.
    Reordered { seq: u64, after: u64 },
    /// The record at `seq` names a key this verifier does not have.
    UnknownKey { seq: u64, key_id: String },
}

impl Fault {
    /// The first `seq` the fault concerns.
    pub fn seq(&self) -> u64 {
        match *self {
            Fault::Changed { seq }
            | Fault::Broken { seq }
            | Fault::Missing { seq, .. }
            | Fault::Inserted { seq }
            | Fault::Reordered { seq, .. }
            | Fault::UnknownKey { seq, .. } => seq,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Changed { seq } => write!(f, "seq {seq}: changed (checksum does not match the record)"),
            Fault::Broken { seq } => write!(f, "seq {seq}: changed (prev_checksum does not match the checksum of seq {})", seq - 1),
            Fault::Missing { seq, through } if seq == through => write!(f, "seq {seq}: missing"),
            Fault::Missing { seq, through } => write!(f, "seq {seq}: missing (seq {seq} through {through} are absent)"),
            Fault::Inserted { seq } => write!(f, "seq {seq}: inserted (a record that does not belong to the chain sits before seq {seq})"),
            Fault::Reordered { seq, after } => write!(f, "seq {seq}: reordered (found after seq {after})"),
            Fault::UnknownKey { seq, key_id } => write!(f, "seq {seq}: signed with unknown key id {key_id:?}"),
        }
    }
}

/// Checks records one at a time, in stored order.
///
/// The verifier holds one record back, so that a bad record can be told apart by what
/// follows it: a record whose checksum fails but whose successor carries the same `seq` and
/// chains correctly was inserted; a `seq` that arrives early or late was reordered.
pub struct Verifier<'k> {
    keys: Option<&'k KeyRing>,
    expected_seq: u64,
    prev: [u8; 32],
    pending: Option<StoredRecord>,
    verified: u64,
}

/// The end state of a verified chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub count: u64,
    /// The last `seq`, or `start - 1` for an empty chain.
    pub seq: u64,
    pub checksum: [u8; 32],
}

impl<'k> Verifier<'k> {
    /// A verifier for a chain starting at `FIRST_SEQ`. Without keys only continuity is checked.
    pub fn new(keys: Option<&'k KeyRing>) -> Verifier<'k> {
        Verifier::resume(keys, FIRST_SEQ, GENESIS)
    }

    /// A verifier that continues a chain at `seq` whose previous checksum is `prev`.
    pub fn resume(keys: Option<&'k KeyRing>, seq: u64, prev: [u8; 32]) -> Verifier<'k> {
        Verifier {
            keys,
            expected_seq: seq,
            prev,
            pending: None,
            verified: 0,
        }
    }

    fn mac_ok(&self, r: &StoredRecord, prev: &[u8; 32]) -> Result<bool, Fault> {
        let Some(keys) = self.keys else {
            // Without keys only the links can be checked.
            return Ok(&r.prev_checksum == prev);
        };
        let key = keys.get(&r.key_id).ok_or_else(|| Fault::UnknownKey {
            seq: r.seq,
            key_id: r.key_id.clone(),
        })?;
        Ok(
            mac(&key.secret, &r.body, prev, r.received_at_unix_ns, r.seq) == r.checksum
                && &r.prev_checksum == prev,
        )
    }

    fn accept(&mut self, r: StoredRecord) {
        self.prev = r.checksum;
        self.expected_seq = r.seq + 1;
        self.verified += 1;
    }

    /// Feeds the next record.
    pub fn push(&mut self, next: StoredRecord) -> Result<(), Fault> {
        match self.pending.take() {
            None => {
                self.pending = Some(next);
                Ok(())
            }
            Some(cur) => {
                let res = self.judge(cur, Some(&next));
                self.pending = Some(next);
                res
            }
        }
    }

    /// Ends the walk: judges the held-back record and returns the head.
    pub fn finish(mut self) -> Result<Head, Fault> {
        if let Some(cur) = self.pending.take() {
            self.judge(cur, None)?;
        }
        Ok(Head {
            count: self.verified,
            seq: self.expected_seq - 1,
            checksum: self.prev,
        })
    }

    fn judge(&mut self, cur: StoredRecord, next: Option<&StoredRecord>) -> Result<(), Fault> {
        let e = self.expected_seq;
        if cur.seq == e {
            if self.mac_ok(&cur, &self.prev.clone())? {
                self.accept(cur);
                return Ok(());
            }
            // A forged record claiming `e`, followed by the genuine `e`.
            if let Some(n) = next {
                if n.seq == e && self.mac_ok(n, &self.prev.clone())? {
                    return Err(Fault::Inserted { seq: e });
                }
            }
            if cur.prev_checksum != self.prev {
                let keys_say_content_ok = match self.keys.and_then(|k| k.get(&cur.key_id)) {
                    Some(k) => {
                        mac(
                            &k.secret,
                            &cur.body,
                            &cur.prev_checksum,
                            cur.received_at_unix_ns,
                            cur.seq,
                        ) == cur.checksum
                    }
                    None => self.keys.is_none(),
                };
                if keys_say_content_ok {
                    return Err(Fault::Broken { seq: e });
                }
            }
            return Err(Fault::Changed { seq: e });
        }
        if cur.seq < e {
            return Err(Fault::Inserted { seq: e });
        }
        // cur.seq > e: either `e` comes next (reordered) or it is gone.
        if next.is_some_and(|n| n.seq == e) {
            return Err(Fault::Reordered {
                seq: e,
                after: cur.seq,
            });
        }
        Err(Fault::Missing {
            seq: e,
            through: cur.seq - 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64, key: &ChainKey) -> Vec<StoredRecord> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let r = seal(
                    key,
                    format!("{{\"n\":{seq}}}").into_bytes(),
                    prev,
                    1000 + seq as i64,
                    seq,
                );
                prev = r.checksum;
                r
            })
            .collect()
    }

    fn run(keys: &KeyRing, recs: Vec<StoredRecord>) -> Result<Head, Fault> {
        let mut v = Verifier::new(Some(keys));
        for r in recs {
            v.push(r)?;
        }
        v.finish()
    }

    #[test]
    fn names_each_kind_of_tampering() {
        let key = ChainKey::new("k1", [7; 32]);
        let ring = KeyRing::new([key.clone()]);
        let good = chain(10, &key);
        assert_eq!(run(&ring, good.clone()).unwrap().count, 10);

        let mut changed = good.clone();
        changed[4].body = b"{\"n\":99}".to_vec();
        assert_eq!(run(&ring, changed), Err(Fault::Changed { seq: 5 }));

        let mut missing = good.clone();
        missing.remove(4);
        assert_eq!(
            run(&ring, missing),
            Err(Fault::Missing { seq: 5, through: 5 })
        );

        let mut inserted = good.clone();
        let mut forged = good[4].clone();
        forged.body = b"{\"n\":\"forged\"}".to_vec();
        inserted.insert(4, forged);
        assert_eq!(run(&ring, inserted), Err(Fault::Inserted { seq: 5 }));

        let mut copied = good.clone();
        copied.insert(5, good[4].clone());
        assert_eq!(run(&ring, copied), Err(Fault::Inserted { seq: 6 }));

        let mut reordered = good.clone();
        reordered.swap(4, 5);
        assert_eq!(
            run(&ring, reordered),
            Err(Fault::Reordered { seq: 5, after: 6 })
        );

        // Without keys, the links are still checked.
        let mut relinked = good.clone();
        relinked[4].prev_checksum = [1; 32];
        let mut keyless = Verifier::new(None);
        let res = relinked
            .into_iter()
            .try_for_each(|r| keyless.push(r))
            .and_then(|()| keyless.finish().map(drop));
        assert_eq!(res, Err(Fault::Broken { seq: 5 }));

        let mut last_missing = good.clone();
        last_missing.pop();
        assert_eq!(
            run(&ring, last_missing).unwrap().seq,
            9,
            "a truncated tail is only visible against a known head"
        );
    }
}
