//! The seal on what the service itself publishes (SPEC §3a).
//!
//! Everything a publisher sends is untrusted, `x-refund-*` headers included: anyone with
//! publish rights can write `x-refund-date` or `x-refund-error-class`. The worker still needs
//! to carry facts from one delivery of a job to the next (the day it was keyed under, the
//! attempts so far, why it was dead-lettered), so every message it publishes — a retry copy, a
//! dead letter, a replay — carries `x-refund-seal`: an HMAC-SHA256, under a key from
//! `[broker] seal_keys`, over the body and every `x-refund-*` header of the message.
//!
//! Invariants:
//! - A message whose seal does not verify is read as if it carried **no** `x-refund-*`
//!   header at all: nothing in it can choose a key, an identity, a class or an attempt count.
//! - The seal covers the body byte for byte and the whole `x-refund-*` set (names, types and
//!   values): adding, removing or changing any of them, or the body, breaks it.
//! - Keys rotate: the first key of the list seals, every key of the list verifies; a seal
//!   names its key (`v1:<key id>:<hex mac>`), so a retired key is refused by name.
//! - Verification compares in constant time (`hmac`'s `verify_slice`).

use std::{fmt, sync::Arc};

use hmac::{Hmac, KeyInit, Mac};
use lapin::types::{AMQPValue, FieldTable};
use sha2::{Digest, Sha256};

/// The header that carries the seal.
pub const SEAL_HEADER: &str = "x-refund-seal";

/// The prefix of every header the seal covers.
pub const SEALED_PREFIX: &str = "x-refund-";

/// Format version written in front of every seal.
const VERSION: &str = "v1";

/// The shortest key accepted, in bytes: an HMAC-SHA256 key shorter than its output is weaker
/// than it looks.
const MIN_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// One configured key: its id (written into seals) and its secret bytes.
#[derive(Clone)]
struct SealKey {
    id: String,
    secret: Vec<u8>,
}

/// Seals and verifies messages with the configured keys.
#[derive(Clone)]
pub struct Sealer {
    /// Never empty; the first one seals.
    keys: Arc<[SealKey]>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

/// What a message's seal says about its `x-refund-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealCheck {
    /// Sealed by this deployment, under the named key: its headers are the worker's own.
    Sealed {
        /// The key that verified it.
        key_id: String,
    },
    /// No seal and no `x-refund-*` header: a publisher's job, as it should be.
    Plain,
    /// Not sealed by this deployment: the headers are ignored, for the reason given.
    Untrusted {
        /// Why (no seal on headers that need one, unknown key, wrong MAC, malformed seal).
        why: String,
    },
}

impl SealCheck {
    /// Whether the `x-refund-*` headers may be believed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, SealCheck::Sealed { .. })
    }
}

/// Why `[broker] seal_keys` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[broker] seal_keys: {0}")]
pub struct SealKeyError(String);

impl Sealer {
    /// Keys from configuration, each `"<key id>:<secret as hex>"`; the first seals.
    ///
    /// A key id is 1 to 32 characters of `[A-Za-z0-9_.-]`; a secret is at least 32 bytes.
    pub fn from_config<S: AsRef<str>>(entries: &[S]) -> Result<Self, SealKeyError> {
        if entries.is_empty() {
            return Err(SealKeyError(
                "at least one key is needed (the first one seals)".into(),
            ));
        }
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let n = index + 1;
            let Some((id, secret)) = entry.as_ref().split_once(':') else {
                return Err(SealKeyError(format!(
                    "key {n} is not \"<key id>:<hex secret>\""
                )));
            };
            let id_ok = (1..=32).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !id_ok {
                return Err(SealKeyError(format!(
                    "key {n}: the id must be 1 to 32 characters of [A-Za-z0-9_.-]"
                )));
            }
            let secret = hex::decode(secret)
                .map_err(|_| SealKeyError(format!("key {n} ({id}): the secret is not hex")))?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(SealKeyError(format!(
                    "key {n} ({id}): the secret has {} bytes, at least {MIN_KEY_BYTES} are needed",
                    secret.len()
                )));
            }
            if keys.iter().any(|k: &SealKey| k.id == id) {
                return Err(SealKeyError(format!("key id {id} appears twice")));
            }
            keys.push(SealKey {
                id: id.to_owned(),
                secret,
            });
        }
        Ok(Self { keys: keys.into() })
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// The seal for `body` with the `x-refund-*` headers of `headers` (any existing seal in
    /// `headers` is not covered). Only string and integer values can be sealed; the service
    /// writes nothing else.
    pub fn seal(&self, body: &[u8], headers: &FieldTable) -> Result<String, String> {
        let key = &self.keys[0];
        let mac = mac_over(&key.secret, body, headers)?;
        Ok(format!(
            "{VERSION}:{}:{}",
            key.id,
            hex::encode(mac.finalize().into_bytes())
        ))
    }

    /// Checks the seal of a message. Never fails: whatever is wrong makes it `Untrusted`.
    pub fn check(&self, body: &[u8], headers: Option<&FieldTable>) -> SealCheck {
        let Some(headers) = headers else {
            return SealCheck::Plain;
        };
        let seal = match headers.inner().get(SEAL_HEADER) {
            None => {
                let any = headers
                    .inner()
                    .keys()
                    .any(|k| k.as_str().starts_with(SEALED_PREFIX));
                return if any {
                    SealCheck::Untrusted {
                        why: "x-refund-* headers without a seal".into(),
                    }
                } else {
                    SealCheck::Plain
                };
            }
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.to_string(),
            Some(_) => {
                return untrusted("the seal is not a string");
            }
        };
        let mut parts = seal.splitn(3, ':');
        let (Some(version), Some(key_id), Some(mac_hex)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return untrusted("the seal is not v1:<key id>:<mac>");
        };
        if version != VERSION {
            return untrusted("the seal has an unknown version");
        }
        let Some(key) = self.keys.iter().find(|k| k.id == key_id) else {
            return untrusted("the seal names a key this deployment does not accept");
        };
        let Ok(expected) = hex::decode(mac_hex) else {
            return untrusted("the seal's MAC is not hex");
        };
        let mac = match mac_over(&key.secret, body, headers) {
            Ok(mac) => mac,
            Err(why) => return SealCheck::Untrusted { why },
        };
        match mac.verify_slice(&expected) {
            Ok(()) => SealCheck::Sealed {
                key_id: key.id.clone(),
            },
            Err(_) => untrusted("the seal does not match the body and headers"),
        }
    }
}

fn untrusted(why: &str) -> SealCheck {
    SealCheck::Untrusted { why: why.into() }
}

/// The MAC over the canonical form: a version line, the body's SHA-256, then every
/// `x-refund-*` header but the seal, sorted by name, each as length-prefixed name, a type tag
/// and a length-prefixed value. Length prefixes make the encoding unambiguous.
fn mac_over(secret: &[u8], body: &[u8], headers: &FieldTable) -> Result<HmacSha256, String> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .map_err(|_| "the seal key is unusable".to_owned())?;
    mac.update(b"refund-worker seal v1\n");
    mac.update(&Sha256::digest(body));
    let mut covered: Vec<(&str, &AMQPValue)> = headers
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .filter(|(k, _)| k.starts_with(SEALED_PREFIX) && *k != SEAL_HEADER)
        .collect();
    covered.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in covered {
        let (tag, bytes): (u8, Vec<u8>) = match value {
            AMQPValue::LongString(s) => (b's', s.as_bytes().to_vec()),
            AMQPValue::ShortString(s) => (b's', s.as_str().as_bytes().to_vec()),
            AMQPValue::LongLongInt(i) => (b'i', i.to_string().into_bytes()),
            AMQPValue::LongInt(i) => (b'i', i.to_string().into_bytes()),
            AMQPValue::LongUInt(i) => (b'i', i.to_string().into_bytes()),
            AMQPValue::ShortInt(i) => (b'i', i.to_string().into_bytes()),
            AMQPValue::ShortUInt(i) => (b'i', i.to_string().into_bytes()),
            _ => return Err(format!("header {name} has a type the service never writes")),
        };
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(&[tag]);
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(&bytes);
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use lapin::types::{LongString, ShortString};

    use super::*;

    const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn sealer(keys: &[&str]) -> Sealer {
        Sealer::from_config(keys).unwrap()
    }

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(
                ShortString::from(*k),
                AMQPValue::LongString(LongString::from(*v)),
            );
        }
        table
    }

    fn sealed(sealer: &Sealer, body: &[u8], pairs: &[(&str, &str)]) -> FieldTable {
        let mut headers = table(pairs);
        let seal = sealer.seal(body, &headers).unwrap();
        headers.insert(
            ShortString::from(SEAL_HEADER),
            AMQPValue::LongString(LongString::from(seal)),
        );
        headers
    }

    const BODY: &[u8] = br#"{"payment_id":"pi_1","amount":500,"provider":"asaas"}"#;
    const FACTS: &[(&str, &str)] = &[
        ("x-refund-date", "2026-12-04"),
        ("x-refund-attempts", "2"),
        ("x-refund-job-id", "job-1"),
    ];

    #[test]
    fn what_the_worker_sealed_verifies_under_its_key() {
        let s = sealer(&[K1]);
        let headers = sealed(&s, BODY, FACTS);
        assert_eq!(
            s.check(BODY, Some(&headers)),
            SealCheck::Sealed {
                key_id: "k1".into()
            }
        );
    }

    #[test]
    fn any_change_to_the_body_or_a_covered_header_breaks_the_seal() {
        let s = sealer(&[K1]);
        let base = sealed(&s, BODY, FACTS);
        let other_body = br#"{"payment_id":"pi_1","amount":501,"provider":"asaas"}"#;
        assert!(!s.check(other_body, Some(&base)).is_sealed(), "body");

        let mut changed = base.clone();
        changed.insert(
            ShortString::from("x-refund-date"),
            AMQPValue::LongString(LongString::from("2026-12-05")),
        );
        assert!(!s.check(BODY, Some(&changed)).is_sealed(), "changed date");

        let mut added = base.clone();
        added.insert(
            ShortString::from("x-refund-error-class"),
            AMQPValue::LongString(LongString::from("invalid")),
        );
        assert!(!s.check(BODY, Some(&added)).is_sealed(), "added class");

        let mut retyped = base.clone();
        retyped.insert(
            ShortString::from("x-refund-attempts"),
            AMQPValue::LongLongInt(2),
        );
        assert!(
            !s.check(BODY, Some(&retyped)).is_sealed(),
            "string 2 vs integer 2"
        );

        // Headers outside x-refund-* are not the service's facts and are not covered.
        let mut foreign = base.clone();
        foreign.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(LongString::from("00-abc")),
        );
        assert!(s.check(BODY, Some(&foreign)).is_sealed(), "foreign header");
    }

    #[test]
    fn unsealed_refund_headers_are_untrusted_and_a_plain_job_is_plain() {
        let s = sealer(&[K1]);
        assert_eq!(s.check(BODY, None), SealCheck::Plain);
        assert_eq!(
            s.check(BODY, Some(&table(&[("traceparent", "x")]))),
            SealCheck::Plain
        );
        assert!(matches!(
            s.check(BODY, Some(&table(FACTS))),
            SealCheck::Untrusted { .. }
        ));
    }

    #[test]
    fn forged_or_malformed_seals_are_untrusted() {
        let s = sealer(&[K1]);
        for forged in [
            "v1:k1:00",
            "v1:k1:zz",
            "v2:k1:00",
            "v1:nobody:00",
            "garbage",
            "",
        ] {
            let mut headers = table(FACTS);
            headers.insert(
                ShortString::from(SEAL_HEADER),
                AMQPValue::LongString(LongString::from(forged)),
            );
            assert!(
                matches!(s.check(BODY, Some(&headers)), SealCheck::Untrusted { .. }),
                "{forged:?}"
            );
        }
        // A seal made with someone else's key, under our key id.
        let attacker =
            sealer(&["k1:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"]);
        let headers = sealed(&attacker, BODY, FACTS);
        assert!(!s.check(BODY, Some(&headers)).is_sealed());
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_accepts_every_listed_key() {
        let old = sealer(&[K1]);
        let rotated = sealer(&[K2, K1]);
        let retired = sealer(&[K2]);
        let by_old = sealed(&old, BODY, FACTS);
        let by_new = sealed(&rotated, BODY, FACTS);
        assert_eq!(rotated.sealing_key_id(), "k2");
        assert!(rotated.check(BODY, Some(&by_old)).is_sealed());
        assert!(rotated.check(BODY, Some(&by_new)).is_sealed());
        assert!(!retired.check(BODY, Some(&by_old)).is_sealed());
    }

    #[test]
    fn bad_key_configuration_is_refused_with_a_reason() {
        let cases: [&[&str]; 5] = [&[], &["no-colon"], &["k1:not-hex"], &["k1:00ff"], &[K1, K1]];
        for keys in cases {
            let error = Sealer::from_config(keys).unwrap_err();
            assert!(
                error.to_string().starts_with("[broker] seal_keys:"),
                "{error}"
            );
        }
        let printed = format!("{:?}", sealer(&[K1]));
        assert!(
            !printed.contains("000102"),
            "secrets never print: {printed}"
        );
    }
}
