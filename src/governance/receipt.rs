//! Sealed receipts (SPEC §6): one per finished refund, saying what was done, against which
//! order, under which mandate, with which credit note and notification, and when.
//!
//! A receipt is sealed by its position in one chain: `hash` is the SHA-256 of the canonical
//! bytes of `(seq, prev_hash, sealed_at, body)`, and `prev_hash` is the previous receipt's
//! hash (or [`GENESIS`] for the first). It is signed in one of two formats: format 1, a
//! `signature` (Ed25519 over that hash) on each receipt; format 2 (what the worker seals
//! now), a `group` seal: one signature over the Merkle root of the receipts sealed together,
//! with this receipt's proof of inclusion ([`GroupSeal`]). Editing, inserting, deleting or
//! reordering any stored receipt therefore breaks a hash, a signature, a proof, a link or the
//! sequence, and [`verify_chain`] names which.
//!
//! Canonical bytes are JSON with object keys sorted (by UTF-8 bytes, which is code-point
//! order), no insignificant whitespace, and strings escaped as `serde_json` escapes them (the
//! same as Python's `json.dumps(v, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False)`), so an auditor can recompute a hash with nothing but a JSON library.
//! A receipt is stored as exactly the canonical text of all its fields; a stored text that is
//! not in that form was edited, even when it still parses to the same values.
//!
//! This module is pure: no clock besides [`Receipt::seal`]'s `sealed_at`, no I/O. It never
//! holds a destination in the clear: callers mask it first ([`mask_pix_key`], [`mask_card`]).

mod chain;
mod group;
mod mask;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use chain::{ChainReport, ChainVerifier, Problem, entries_from_lines, verify_chain};
pub use group::GroupSeal;
pub use mask::{mask_card, mask_pix_key};

use crate::signing::{KeyPair, PublicKey};

/// The `prev_hash` of the first receipt (seq 1).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a receipt says about one refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The job that asked for the refund.
    pub job_id: String,
    /// The key that made it happen exactly once; also makes sealing exactly once.
    pub idempotency_key: String,
    /// `bulk` or `governed`.
    pub kind: String,
    /// The provider that executed the refund.
    pub provider: String,
    /// The original payment.
    pub payment_id: String,
    /// The provider's refund id.
    pub refund_id: String,
    /// The provider's final status, e.g. `succeeded`.
    pub refund_status: String,
    /// Minor units.
    pub amount: u64,
    /// ISO 4217.
    pub currency: String,
    /// `pix`, `card`, …: the original rail the money went back on.
    pub rail: String,
    /// Where the money went, MASKED ([`mask_pix_key`], [`mask_card`]); never in the clear.
    pub destination: Option<String>,
    /// The ERP order of a governed refund.
    pub order_id: Option<String>,
    /// The ERP snapshot the refund was verified against.
    pub verification: Option<Value>,
    /// The mandate reservation (mandate id, agent, day, amount).
    pub mandate: Option<Value>,
    /// The credit note (number, access key, issued_at).
    pub credit_note: Option<Value>,
    /// The customer notification (channel, message id, or why none).
    pub notification: Option<Value>,
    /// Step name → RFC 3339 time it finished.
    pub steps: BTreeMap<String, String>,
}

/// A sealed receipt: a body at a position in the chain, hashed and signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The previous receipt's `hash` ([`GENESIS`] for seq 1).
    pub prev_hash: String,
    /// When it was sealed (RFC 3339, UTC, milliseconds).
    pub sealed_at: String,
    /// What it says.
    pub body: ReceiptBody,
    /// SHA-256 (hex) of the canonical bytes of `(seq, prev_hash, sealed_at, body)`.
    pub hash: String,
    /// Format 1: Ed25519 (hex) over the 32 bytes of `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Format 2: the seal of the group it was sealed in (one signature per group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSeal>,
}

/// How a receipt is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SealFormat {
    /// Format 1: a signature of its own.
    Individual,
    /// Format 2: a group seal (one signature over a Merkle root).
    Group,
}

impl Receipt {
    /// Seals `body` at `seq` after the receipt whose hash is `prev_hash`, timestamped now.
    pub fn seal(seq: u64, prev_hash: String, body: ReceiptBody, key: &KeyPair) -> Receipt {
        Self::seal_at(
            seq,
            prev_hash,
            crate::clock::now_rfc3339_millis(),
            body,
            key,
        )
    }

    /// [`Receipt::seal`] with a given `sealed_at` (deterministic, for tests and tools).
    pub fn seal_at(
        seq: u64,
        prev_hash: String,
        sealed_at: String,
        body: ReceiptBody,
        key: &KeyPair,
    ) -> Receipt {
        let body = body.normalized();
        let hash = content_hash(seq, &prev_hash, &sealed_at, &body);
        // A SHA-256 in hex is always 32 bytes.
        let signature = key.sign_hex(&digest_bytes(&hash).expect("a SHA-256 digest"));
        Receipt {
            seq,
            prev_hash,
            sealed_at,
            body,
            hash,
            signature: Some(signature),
            group: None,
        }
    }

    /// Seals `bodies` as consecutive receipts from `first_seq`, after the receipt whose hash
    /// is `prev_hash`, all at `sealed_at`, with one signature for the whole group (format 2).
    pub fn seal_group(
        first_seq: u64,
        prev_hash: String,
        sealed_at: &str,
        bodies: Vec<ReceiptBody>,
        key: &KeyPair,
    ) -> Vec<Receipt> {
        Self::seal_group_with_texts(first_seq, prev_hash, sealed_at, bodies, key)
            .into_iter()
            .map(|(receipt, _)| receipt)
            .collect()
    }

    /// [`Receipt::seal_group`], each receipt with its stored text ([`Receipt::to_text`]),
    /// each body written once for both its hash and its text.
    pub fn seal_group_with_texts(
        first_seq: u64,
        prev_hash: String,
        sealed_at: &str,
        bodies: Vec<ReceiptBody>,
        key: &KeyPair,
    ) -> Vec<(Receipt, String)> {
        let mut receipts: Vec<(Receipt, String)> = Vec::with_capacity(bodies.len());
        let mut after = prev_hash;
        for (seq, body) in (first_seq..).zip(bodies) {
            let body = body.normalized();
            let body_text = canonical_body(&body);
            let hash = hash_of_text(seq, &after, sealed_at, &body_text);
            let receipt = Receipt {
                seq,
                prev_hash: std::mem::replace(&mut after, hash.clone()),
                sealed_at: sealed_at.to_owned(),
                body,
                hash,
                signature: None,
                group: None,
            };
            receipts.push((receipt, body_text));
        }
        if receipts.is_empty() {
            return receipts;
        }
        let hashes: Vec<&str> = receipts.iter().map(|(r, _)| r.hash.as_str()).collect();
        let seals = group::seal(&hashes, key)
            .expect("content hashes are SHA-256 in hex, and the group is not empty");
        for ((receipt, text), seal) in receipts.iter_mut().zip(seals) {
            receipt.group = Some(seal);
            *text = receipt.text_with_body(text);
        }
        receipts
    }

    /// How it is signed; `None` when it carries both a signature and a group seal, or
    /// neither (an edit: sealing writes exactly one).
    pub fn format(&self) -> Option<SealFormat> {
        match (&self.signature, &self.group) {
            (Some(_), None) => Some(SealFormat::Individual),
            (None, Some(_)) => Some(SealFormat::Group),
            _ => None,
        }
    }

    /// Reads a stored receipt (any JSON form; [`Receipt::to_text`] says whether it is canonical).
    pub fn parse(text: &str) -> Result<Receipt, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The exact text a receipt is stored and exported as: canonical JSON of every field.
    pub fn to_text(&self) -> String {
        self.text_with_body(&canonical_body(&self.body))
    }

    /// [`Receipt::to_text`] given the body's canonical text: the fields around it are
    /// written directly, in key order (`body`, `group`, `hash`, `prev_hash`, `sealed_at`,
    /// `seq`, `signature`), which is what [`canonical`] of the whole receipt gives (a test
    /// holds the two together) without building it as a JSON value.
    fn text_with_body(&self, body: &str) -> String {
        let proof = self.group.as_ref().map_or(0, |g| g.proof.len() * 67 + 300);
        let mut out = String::with_capacity(body.len() + proof + 400);
        out.push_str("{\"body\":");
        out.push_str(body);
        if let Some(group) = &self.group {
            out.push_str(",\"group\":{\"index\":");
            out.push_str(&group.index.to_string());
            out.push_str(",\"proof\":[");
            for (i, sibling) in group.proof.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(sibling, &mut out);
            }
            out.push_str("],\"root\":");
            write_string(&group.root, &mut out);
            out.push_str(",\"signature\":");
            write_string(&group.signature, &mut out);
            out.push_str(",\"size\":");
            out.push_str(&group.size.to_string());
            out.push('}');
        }
        out.push_str(",\"hash\":");
        write_string(&self.hash, &mut out);
        out.push_str(",\"prev_hash\":");
        write_string(&self.prev_hash, &mut out);
        out.push_str(",\"sealed_at\":");
        write_string(&self.sealed_at, &mut out);
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        if let Some(signature) = &self.signature {
            out.push_str(",\"signature\":");
            write_string(signature, &mut out);
        }
        out.push('}');
        out
    }

    /// The hash its fields give now (equal to `hash` unless something was edited).
    pub fn recomputed_hash(&self) -> String {
        content_hash(self.seq, &self.prev_hash, &self.sealed_at, &self.body)
    }

    /// Whether `signature` is `key`'s signature of `hash`, written as sealing writes it
    /// (lowercase hex: hex decoding ignores case, so `A` for `a` would otherwise be an edit
    /// that still verifies).
    ///
    /// Format 2: the group seal proves this receipt's hash is in the signed root.
    pub fn signature_verifies(&self, key: &PublicKey) -> bool {
        self.seal_verifies(key, |group| group.root_signed_by(key))
    }

    /// [`Receipt::signature_verifies`], with the check of a group root's signature left to
    /// `root_signed` (a chain check verifies each group's root once, not once per receipt).
    pub fn seal_verifies(
        &self,
        key: &PublicKey,
        root_signed: impl FnOnce(&GroupSeal) -> bool,
    ) -> bool {
        let lowercase_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match (self.format(), &self.signature, &self.group) {
            (Some(SealFormat::Individual), Some(signature), _) => {
                lowercase_hex(signature)
                    && digest_bytes(&self.hash)
                        .is_some_and(|digest| key.verifies(&digest, signature))
            }
            (Some(SealFormat::Group), _, Some(group)) => {
                group.includes(&self.hash) && root_signed(group)
            }
            _ => false,
        }
    }
}

impl ReceiptBody {
    /// `Some(null)` reads back as `None`: store it that way, so a sealed receipt and the
    /// same receipt read back are equal (both hash the same either way).
    fn normalized(mut self) -> Self {
        for field in [
            &mut self.verification,
            &mut self.mandate,
            &mut self.credit_note,
            &mut self.notification,
        ] {
            if field.as_ref().is_some_and(Value::is_null) {
                *field = None;
            }
        }
        self
    }
}

/// SHA-256 (hex) of the canonical bytes of `(seq, prev_hash, sealed_at, body)`: the object
/// `{"body","prev_hash","sealed_at","seq"}`, written in key order around the body's
/// canonical text.
fn content_hash(seq: u64, prev_hash: &str, sealed_at: &str, body: &ReceiptBody) -> String {
    hash_of_text(seq, prev_hash, sealed_at, &canonical_body(body))
}

/// [`content_hash`] given the body's canonical text.
fn hash_of_text(seq: u64, prev_hash: &str, sealed_at: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 160);
    out.push_str("{\"body\":");
    out.push_str(body);
    out.push_str(",\"prev_hash\":");
    write_string(prev_hash, &mut out);
    out.push_str(",\"sealed_at\":");
    write_string(sealed_at, &mut out);
    out.push_str(",\"seq\":");
    out.push_str(&seq.to_string());
    out.push('}');
    hex::encode(Sha256::digest(out.as_bytes()))
}

/// The canonical text of a body.
fn canonical_body(body: &ReceiptBody) -> String {
    // A struct of strings, integers, string maps and JSON values always serializes.
    canonical(&serde_json::to_value(body).expect("a receipt body is plain JSON"))
}

/// The 32 bytes a signature covers; `None` when `hash` is not 64 hex digits.
fn digest_bytes(hash: &str) -> Option<Vec<u8>> {
    hex::decode(hash).ok().filter(|bytes| bytes.len() == 32)
}

/// Canonical JSON: keys sorted, no whitespace. Sorted here rather than trusting the map's
/// order, so the bytes never depend on serde_json's `preserve_order` feature.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        // null, booleans and numbers print one way.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(text: &str, out: &mut String) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Secret;

    pub(crate) fn key() -> KeyPair {
        KeyPair::from_seed(&Secret::new("42".repeat(32)), "test").unwrap()
    }

    pub(crate) fn body(n: u64) -> ReceiptBody {
        ReceiptBody {
            job_id: format!("job-{n}"),
            idempotency_key: format!("key-{n}"),
            kind: "governed".into(),
            provider: "pix".into(),
            payment_id: format!("E{n:031}"),
            refund_id: format!("D{n:031}"),
            refund_status: "succeeded".into(),
            amount: 18_600 + n,
            currency: "BRL".into(),
            rail: "pix".into(),
            destination: Some(mask_pix_key("payer@example.com")),
            order_id: Some(format!("84{n}")),
            verification: Some(serde_json::json!({"order_id": format!("84{n}"), "total": 18_600})),
            mandate: Some(
                serde_json::json!({"mandate_id": "cm_support", "agent_id": "bot", "day": "2026-01-02", "amount": 18_600}),
            ),
            credit_note: Some(serde_json::json!({"number": "NC-1", "access_key": "3526"})),
            notification: Some(serde_json::json!({"channel": "whatsapp", "message_id": "m1"})),
            steps: BTreeMap::from([
                ("verified".into(), "2026-01-02T10:00:00.000Z".into()),
                ("refunded".into(), "2026-01-02T10:00:01.000Z".into()),
            ]),
        }
    }

    fn sealed() -> Receipt {
        Receipt::seal_at(
            7,
            "ab".repeat(32),
            "2026-01-02T10:00:02.000Z".into(),
            body(7),
            &key(),
        )
    }

    /// Every way of changing one field of a receipt.
    fn each_field_changed(r: &Receipt) -> Vec<(&'static str, Receipt)> {
        let mut out = Vec::new();
        let mut push = |name, change: &dyn Fn(&mut Receipt)| {
            let mut copy = r.clone();
            change(&mut copy);
            out.push((name, copy));
        };
        push("seq", &|r| r.seq += 1);
        push("prev_hash", &|r| r.prev_hash = "cd".repeat(32));
        push("sealed_at", &|r| r.sealed_at.push('!'));
        push("job_id", &|r| r.body.job_id.push('x'));
        push("idempotency_key", &|r| r.body.idempotency_key.push('x'));
        push("kind", &|r| r.body.kind = "bulk".into());
        push("provider", &|r| r.body.provider.push('x'));
        push("payment_id", &|r| r.body.payment_id.push('x'));
        push("refund_id", &|r| r.body.refund_id.push('x'));
        push("refund_status", &|r| {
            r.body.refund_status = "pending".into()
        });
        push("amount", &|r| r.body.amount += 1);
        push("currency", &|r| r.body.currency = "USD".into());
        push("rail", &|r| r.body.rail = "card".into());
        push("destination", &|r| r.body.destination = None);
        push("order_id", &|r| r.body.order_id = Some("1".into()));
        push("verification", &|r| r.body.verification = None);
        push("mandate", &|r| {
            r.body.mandate.as_mut().unwrap()["amount"] = 1.into();
        });
        push("credit_note", &|r| r.body.credit_note = None);
        push("notification", &|r| r.body.notification = None);
        push("steps", &|r| {
            r.body.steps.insert("notified".into(), "x".into());
        });
        out
    }

    #[test]
    fn the_hash_covers_every_field() {
        let r = sealed();
        assert_eq!(r.recomputed_hash(), r.hash);
        for (field, changed) in each_field_changed(&r) {
            assert_ne!(changed.recomputed_hash(), r.hash, "{field} is not hashed");
        }
    }

    #[test]
    fn the_signature_covers_the_hash_and_only_the_right_key_verifies_it() {
        let r = sealed();
        let public = key().public();
        assert!(r.signature_verifies(&public));
        for (field, mut changed) in each_field_changed(&r) {
            changed.hash = changed.recomputed_hash();
            assert!(
                !changed.signature_verifies(&public),
                "{field} is not signed"
            );
        }
        let other = KeyPair::from_seed(&Secret::new("43".repeat(32)), "test").unwrap();
        assert!(!r.signature_verifies(&other.public()));
        let mut bad = r.clone();
        bad.signature = r.signature.as_deref().map(str::to_uppercase);
        assert_ne!(bad.signature, r.signature);
        assert!(
            !bad.signature_verifies(&public),
            "the same bytes, spelled otherwise"
        );
        bad.signature = Some("00".repeat(64));
        assert!(!bad.signature_verifies(&public));
        bad.hash = "not hex".into();
        assert!(!bad.signature_verifies(&public));
    }

    fn group(n: u64) -> Vec<Receipt> {
        let bodies = (1..=n).map(body).collect();
        Receipt::seal_group(
            1,
            GENESIS.to_owned(),
            "2026-01-02T10:00:02.000Z",
            bodies,
            &key(),
        )
    }

    #[test]
    fn a_group_is_a_chain_whose_receipts_each_verify_under_one_signature() {
        let receipts = group(5);
        let public = key().public();
        let mut prev = GENESIS.to_owned();
        for r in &receipts {
            assert_eq!(r.format(), Some(SealFormat::Group));
            assert_eq!(r.prev_hash, prev, "linked like format 1");
            assert_eq!(r.recomputed_hash(), r.hash);
            assert!(r.signature_verifies(&public), "receipt {}", r.seq);
            assert_eq!(
                Receipt::parse(&r.to_text()).unwrap(),
                *r,
                "reads back equal"
            );
            assert!(!r.to_text().contains("\"signature\":null"));
            prev = r.hash.clone();
        }
        let other = KeyPair::from_seed(&Secret::new("43".repeat(32)), "test").unwrap();
        assert!(!receipts[0].signature_verifies(&other.public()));
        // Every field edited, even with its hash recomputed, leaves the proof behind.
        for (field, mut changed) in each_field_changed(&receipts[2]) {
            changed.hash = changed.recomputed_hash();
            assert!(
                !changed.signature_verifies(&public),
                "{field} is not sealed"
            );
        }
        // A receipt that carries both seals, or neither, was edited.
        let mut both = receipts[1].clone();
        both.signature = sealed().signature;
        assert_eq!(both.format(), None);
        assert!(!both.signature_verifies(&public));
        let mut neither = receipts[1].clone();
        neither.group = None;
        assert!(!neither.signature_verifies(&public));
        // Another group's seal does not cover this receipt.
        let mut swapped = receipts[1].clone();
        let others = vec![body(8), body(9), body(10)];
        let at = "2026-01-02T10:00:02.000Z";
        swapped.group = Receipt::seal_group(1, GENESIS.to_owned(), at, others, &key())[1]
            .group
            .clone();
        assert!(!swapped.signature_verifies(&public));
    }

    /// The direct writers give exactly what the generic canonical form of the whole value
    /// gives, for both formats and bodies with every optional field, escapes and non-ASCII.
    #[test]
    fn the_direct_text_and_hash_equal_the_generic_canonical_form() {
        let mut odd = body(3);
        odd.job_id = "job \"quoted\" \\ back\nline\u{1}é✓".into();
        odd.destination = None;
        odd.verification = Some(serde_json::json!({"z": [1, {"b": null, "a": "ç"}], "a": true}));
        let mut receipts = vec![sealed()];
        let group = Receipt::seal_group_with_texts(
            1,
            GENESIS.to_owned(),
            "2026-01-02T10:00:02.000Z",
            vec![body(1), odd.clone(), body(2), odd],
            &key(),
        );
        for (r, text) in &group {
            assert_eq!(*text, r.to_text(), "the text sealing stores");
        }
        receipts.extend(group.into_iter().map(|(r, _)| r));
        for r in receipts {
            let generic = canonical(&serde_json::to_value(&r).unwrap());
            assert_eq!(r.to_text(), generic);
            let core = serde_json::json!({
                "seq": r.seq, "prev_hash": r.prev_hash, "sealed_at": r.sealed_at, "body": r.body,
            });
            let generic_hash = hex::encode(Sha256::digest(canonical(&core).as_bytes()));
            assert_eq!(r.hash, generic_hash);
        }
    }

    #[test]
    fn the_stored_text_is_canonical_and_reads_back_equal() {
        let r = sealed();
        let text = r.to_text();
        assert!(!text.contains(": ") && !text.contains('\n'), "{text}");
        assert!(text.starts_with(r#"{"body":{"amount":18607,"credit_note":"#));
        let back = Receipt::parse(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_text(), text);
        // The same values in another key order are not the canonical form.
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_ne!(serde_json::to_string_pretty(&value).unwrap(), text);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_escapes_like_python() {
        let value = serde_json::json!({"b": [{"z": 1, "a": null}], "a": "é\"\n\u{1}", "A": true});
        assert_eq!(
            canonical(&value),
            r#"{"A":true,"a":"é\"\n\u0001","b":[{"a":null,"z":1}]}"#
        );
    }

    #[test]
    fn a_null_json_field_is_sealed_as_absent_so_it_reads_back_equal() {
        let mut b = body(1);
        b.credit_note = Some(Value::Null);
        let r = Receipt::seal(1, GENESIS.into(), b, &key());
        assert_eq!(r.body.credit_note, None);
        assert_eq!(Receipt::parse(&r.to_text()).unwrap(), r);
    }

    #[test]
    fn sealed_at_is_rfc3339_utc() {
        let r = Receipt::seal(1, GENESIS.into(), body(1), &key());
        assert!(
            time::OffsetDateTime::parse(
                &r.sealed_at,
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{}",
            r.sealed_at
        );
        assert!(r.sealed_at.ends_with('Z'));
    }
}
