//! Segment manifests: what a sealed segment holds, signed with Ed25519.
//!
//! The signature covers the RFC 8785 canonical JSON of the manifest without its `signature`
//! member, so any faithful copy of the manifest verifies. `schemas/archive.md` is the
//! reference.

use ed25519_dalek::{Signature, Signer, Verifier as _};
use kubechat_audit_pipeline::canonical;
use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SigningKey};

/// The `format` of every manifest this build writes.
pub const MANIFEST_FORMAT: &str = "kubechat-audit-archive-manifest/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub chain_id: String,
    /// The segment's file name, in the same directory.
    pub segment: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// `received_at` of the first and last record.
    pub first_received_at: String,
    pub last_received_at: String,
    /// The checksum before `first_seq` (the previous segment's last; zeros for seq 1).
    pub prev_segment_last_checksum: String,
    pub last_checksum: String,
    /// Decompressed and file sizes, in bytes.
    pub raw_bytes: u64,
    pub bytes: u64,
    pub sha256: String,
    pub blake3: String,
    pub signing_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        canonical::to_vec(&serde_json::to_value(&unsigned).expect("a manifest is plain JSON"))
    }

    pub fn sign(&mut self, key: &SigningKey) {
        self.signing_key_id = key.key_id.clone();
        self.signature = None;
        let sig = key.key.sign(&self.signed_bytes());
        self.signature = Some(hex::encode(sig.to_bytes()));
    }

    /// Checks the signature against a trusted public key.
    pub fn check_signature(&self, trusted: &PublicKey) -> Result<(), String> {
        if self.signing_key_id != trusted.key_id {
            return Err(format!(
                "manifest is signed by key {:?}, not by the trusted key {:?}",
                self.signing_key_id, trusted.key_id
            ));
        }
        let sig_hex = self.signature.as_deref().ok_or("manifest is not signed")?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(sig_hex, &mut bytes)
            .map_err(|e| format!("signature is not 128 hex digits: {e}"))?;
        trusted
            .key
            .verify(&self.signed_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| "manifest signature does not verify: the manifest was changed or signed by another key".to_owned())
    }

    /// The manifest file name for a segment range.
    pub fn file_name(first: u64, last: u64) -> String {
        format!("{first:020}-{last:020}.manifest.json")
    }

    pub fn segment_name(first: u64, last: u64) -> String {
        format!("{first:020}-{last:020}.ndjson.zst")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        SigningKey {
            key_id: crate::keys::ed25519_key_id(&key.verifying_key()),
            key,
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_edit_breaks_it() {
        let k = key();
        let mut m = Manifest {
            format: MANIFEST_FORMAT.into(),
            chain_id: "c".into(),
            segment: Manifest::segment_name(1, 2),
            first_seq: 1,
            last_seq: 2,
            count: 2,
            first_received_at: "x".into(),
            last_received_at: "y".into(),
            prev_segment_last_checksum: "0".repeat(64),
            last_checksum: "a".repeat(64),
            raw_bytes: 10,
            bytes: 5,
            sha256: "s".into(),
            blake3: "b".into(),
            signing_key_id: String::new(),
            signature: None,
        };
        m.sign(&k);
        m.check_signature(&k.public()).unwrap();
        let mut edited = m.clone();
        edited.count = 3;
        assert!(edited.check_signature(&k.public()).is_err());
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let other = SigningKey {
            key_id: crate::keys::ed25519_key_id(&other.verifying_key()),
            key: other,
        };
        let mut foreign = m.clone();
        foreign.sign(&other);
        assert!(foreign
            .check_signature(&k.public())
            .unwrap_err()
            .contains("not by the trusted key"));
    }
}
