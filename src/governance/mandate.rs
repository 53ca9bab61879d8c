//! Spend mandates (SPEC §5): who may refund how much, signed by finance and revocable.
//!
//! Pure types and checks, no I/O. A [`Mandate`] is signed with the `[mandates] signing_key`
//! over its [canonical bytes](Mandate::canonical_bytes); workers verify it with the public
//! half before trusting a single cap, so a cap edited directly in Redis is refused as forged.
//! The daily budget is not checked here: it needs an atomic reservation, which lives in
//! `store::mandates`. This module never spends anything.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    job::{Currency, Token},
    signing::{KeyPair, VerifyKeys},
};

/// The largest cap a mandate may carry: 2^53 − 1 minor units. The budget is counted inside a
/// Redis Lua script, whose numbers are doubles; below 2^53 every integer is exact.
pub const MAX_CAP: u64 = (1 << 53) - 1;

/// What the signature of a mandate covers, first: a domain tag, so a mandate signature can
/// never be replayed as any other signed object (a receipt) made with the same key. Version 2
/// signs the whole state (publishers, version, revocation); a mandate signed in version 1
/// does not verify and is refused until finance grants it again.
const CANONICAL_TAG: &[u8] = b"refund-worker/mandate/v2";

/// A per-agent spending cap, signed by finance over its whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// The mandate's id, e.g. `cm_support`; jobs name it as `mandate_id`.
    pub id: Token,
    /// The one agent it authorises; jobs name it as `agent_id`.
    pub agent_id: Token,
    /// The largest single refund, in minor units of `currency`.
    pub max_per_refund: u64,
    /// The budget per UTC day, in minor units of `currency`.
    pub max_per_day: u64,
    /// The currency of the caps; refunds in any other currency are refused.
    pub currency: Currency,
    /// When it lapses (RFC 3339); `None` never.
    pub expires_at: Option<String>,
    /// When this version was signed (RFC 3339).
    pub issued_at: String,
    /// Grows by one with every grant and revocation of this id: a worker never accepts an
    /// older version than one it has seen.
    #[serde(default)]
    pub version: u64,
    /// The broker users whose jobs may spend it (the AMQP `user_id` RabbitMQ validated at
    /// intake), sorted, without repeats.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// When finance revoked it (RFC 3339): a revocation is itself a signed version.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Hex Ed25519 signature over [`Mandate::canonical_bytes`].
    pub signature: String,
}

/// What finance decides when it grants a mandate (everything but the version, the time and
/// the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The mandate's id.
    pub id: Token,
    /// The agent it authorises.
    pub agent_id: Token,
    /// The per-refund cap.
    pub max_per_refund: u64,
    /// The daily budget.
    pub max_per_day: u64,
    /// The caps' currency.
    pub currency: Currency,
    /// When it lapses.
    pub expires_at: Option<String>,
    /// The broker users allowed to spend it; empty means the agent id alone.
    pub publishers: Vec<String>,
}

impl Mandate {
    /// Version 1 of a mandate, issued now and signed with `key`; its one publisher is the
    /// agent id.
    pub fn new_signed(
        id: Token,
        agent_id: Token,
        max_per_refund: u64,
        max_per_day: u64,
        currency: Currency,
        expires_at: Option<String>,
        key: &KeyPair,
    ) -> Self {
        Self::new_signed_at(
            id,
            agent_id,
            max_per_refund,
            max_per_day,
            currency,
            expires_at,
            &rfc3339(OffsetDateTime::now_utc()),
            key,
        )
    }

    /// Version 1 with a given issue time, signed with `key` (tests).
    #[allow(clippy::too_many_arguments)]
    pub fn new_signed_at(
        id: Token,
        agent_id: Token,
        max_per_refund: u64,
        max_per_day: u64,
        currency: Currency,
        expires_at: Option<String>,
        issued_at: &str,
        key: &KeyPair,
    ) -> Self {
        let terms = Terms {
            id,
            agent_id,
            max_per_refund,
            max_per_day,
            currency,
            expires_at,
            publishers: Vec::new(),
        };
        Self::granted(terms, 1, issued_at, key)
    }

    /// `terms` as version `version`, issued at `issued_at`, signed with `key`.
    pub fn granted(terms: Terms, version: u64, issued_at: &str, key: &KeyPair) -> Self {
        let mut publishers = terms.publishers;
        if publishers.is_empty() {
            publishers.push(terms.agent_id.to_string());
        }
        publishers.sort();
        publishers.dedup();
        let mut mandate = Self {
            id: terms.id,
            agent_id: terms.agent_id,
            max_per_refund: terms.max_per_refund,
            max_per_day: terms.max_per_day,
            currency: terms.currency,
            expires_at: terms.expires_at,
            issued_at: issued_at.to_owned(),
            version,
            publishers,
            revoked_at: None,
            signature: String::new(),
        };
        mandate.signature = key.sign_hex(&mandate.canonical_bytes());
        mandate
    }

    /// The next version: revoked at `at`, signed with `key`.
    pub fn revoked(&self, at: &str, key: &KeyPair) -> Self {
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        next.issued_at = at.to_owned();
        next.revoked_at = Some(at.to_owned());
        next.signature = key.sign_hex(&next.canonical_bytes());
        next
    }

    /// The bytes the signature covers: every field but the signature, in a fixed order, each
    /// unambiguous on its own so no two different mandates share them:
    ///
    /// ```text
    /// str("refund-worker/mandate/v2")
    /// str(id) str(agent_id) u64(max_per_refund) u64(max_per_day) str(currency)
    /// opt(expires_at) str(issued_at) u64(version) u32(n) str(publisher)×n opt(revoked_at)
    ///
    /// str(s) = u32 big-endian byte length of s, then the UTF-8 bytes of s
    /// u64(n) = 8 bytes, big-endian; u32(n) = 4 bytes, big-endian
    /// opt(x) = 0x00 when absent | 0x01 then str(x)
    /// ```
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        put_str(&mut out, CANONICAL_TAG);
        put_str(&mut out, self.id.as_str().as_bytes());
        put_str(&mut out, self.agent_id.as_str().as_bytes());
        out.extend_from_slice(&self.max_per_refund.to_be_bytes());
        out.extend_from_slice(&self.max_per_day.to_be_bytes());
        put_str(&mut out, self.currency.code().as_bytes());
        put_opt(&mut out, self.expires_at.as_deref());
        put_str(&mut out, self.issued_at.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        let count = u32::try_from(self.publishers.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for publisher in &self.publishers {
            put_str(&mut out, publisher.as_bytes());
        }
        put_opt(&mut out, self.revoked_at.as_deref());
        out
    }

    /// Whether one of `keys` signed exactly these fields: false if any byte of any field
    /// changed.
    pub fn verify(&self, keys: &VerifyKeys) -> bool {
        keys.verifies(&self.canonical_bytes(), &self.signature)
    }

    /// Whether it has lapsed at `now`. An expiry that cannot be read counts as lapsed: a
    /// mandate is never stretched by a typo (the CLI only signs readable times).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        match &self.expires_at {
            None => false,
            Some(at) => parse_rfc3339(at).is_none_or(|at| now >= at),
        }
    }

    /// Every check that needs no budget, in the order the policy applies them: signature,
    /// agent, publisher, revoked, expired, currency, per-refund cap. `agent` is who the job
    /// says asks (`None` when it names nobody); `publisher` the broker user that published it.
    pub fn check(
        &self,
        keys: &VerifyKeys,
        ask: &Ask<'_>,
        now: OffsetDateTime,
    ) -> Result<(), Denial> {
        let id = || self.id.to_string();
        if !self.verify(keys) {
            return Err(Denial::Forged { id: id() });
        }
        if ask.agent != Some(&self.agent_id) {
            return Err(Denial::WrongAgent {
                id: id(),
                agent: ask.agent.map(Token::to_string).unwrap_or_default(),
                expected: self.agent_id.to_string(),
            });
        }
        if !ask
            .publisher
            .is_some_and(|p| self.publishers.iter().any(|allowed| allowed == p))
        {
            return Err(Denial::WrongPublisher {
                id: id(),
                publisher: ask.publisher.map(str::to_owned),
                allowed: self.publishers.join(", "),
            });
        }
        if let Some(at) = &self.revoked_at {
            return Err(Denial::Revoked {
                id: id(),
                at: at.clone(),
            });
        }
        if self.is_expired(now) {
            return Err(Denial::Expired {
                id: id(),
                at: self.expires_at.clone().unwrap_or_default(),
            });
        }
        if ask.currency != self.currency {
            return Err(Denial::WrongCurrency {
                id: id(),
                expected: self.currency.to_string(),
                got: ask.currency.to_string(),
            });
        }
        if ask.amount > self.max_per_refund {
            return Err(Denial::OverCap {
                id: id(),
                amount: ask.amount,
                cap: self.max_per_refund,
            });
        }
        Ok(())
    }

    /// Its state at `now`, for operators (revocation wins over expiry).
    pub fn state(&self, now: OffsetDateTime) -> MandateState {
        if self.revoked_at.is_some() {
            MandateState::Revoked
        } else if self.is_expired(now) {
            MandateState::Expired
        } else {
            MandateState::Active
        }
    }
}

/// What a job asks of a mandate.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The agent the job names.
    pub agent: Option<&'a Token>,
    /// The broker user that published it (sealed at intake).
    pub publisher: Option<&'a str>,
    /// The refund, in minor units.
    pub amount: u64,
    /// Its currency.
    pub currency: Currency,
}

fn put_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_str(out, text.as_bytes());
        }
    }
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is far below 4 GiB (tokens are ≤ 128 bytes, times ≤ 64); saturating keeps
    // the encoding total anyway.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A moment as RFC 3339, in UTC to the second (`2027-01-01T00:00:00Z`).
pub fn rfc3339(moment: OffsetDateTime) -> String {
    moment
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(moment)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Reads an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Whether a mandate can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MandateState {
    /// Refunds may run under it.
    Active,
    /// An operator revoked it.
    Revoked,
    /// Its `expires_at` has passed.
    Expired,
}

impl MandateState {
    /// `active`, `revoked` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            MandateState::Active => "active",
            MandateState::Revoked => "revoked",
            MandateState::Expired => "expired",
        }
    }
}

impl fmt::Display for MandateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a refund is refused under a mandate. Its text ends up in a dead letter (class
/// `mandate`): one sentence that names the mandate and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The job names no mandate and `[mandates] required = true`.
    #[error("the job names no mandate, and [mandates] required = true refuses refunds without one")]
    NoMandate,
    /// The job names an agent but no mandate: an agent spends only under a mandate.
    #[error(
        "the job names agent {agent} but no mandate: an agent refunds only under a mandate (name it in mandate_id)"
    )]
    AgentWithoutMandate {
        /// The agent the job named.
        agent: String,
    },
    /// No mandate with this id was granted.
    #[error("mandate {id} does not exist (grant it with `refund-worker mandate grant`)")]
    Unknown {
        /// The id the job named.
        id: String,
    },
    /// An operator revoked it.
    #[error("mandate {id} was revoked at {at}")]
    Revoked {
        /// The mandate.
        id: String,
        /// When (RFC 3339).
        at: String,
    },
    /// Its `expires_at` has passed (or cannot be read).
    #[error("mandate {id} expired at {at}")]
    Expired {
        /// The mandate.
        id: String,
        /// Its `expires_at`.
        at: String,
    },
    /// Its signature does not match its fields: edited after signing, or signed with another
    /// key.
    #[error(
        "mandate {id} has an invalid signature: it was altered after signing, signed with a key [mandates] verify_keys does not hold, or signed in an older format (grant it again)"
    )]
    Forged {
        /// The mandate.
        id: String,
    },
    /// The job's agent is not the one the mandate names.
    #[error("mandate {id} authorises agent {expected}, not {}", agent_text(.agent))]
    WrongAgent {
        /// The mandate.
        id: String,
        /// Who asked (empty when the job names no agent).
        agent: String,
        /// Whom the mandate names.
        expected: String,
    },
    /// The job was not published by a broker user the mandate allows.
    #[error(
        "mandate {id} may be spent only by jobs published as {allowed}, not {}",
        publisher_text(.publisher)
    )]
    WrongPublisher {
        /// The mandate.
        id: String,
        /// The AMQP `user_id` the job was published with, if any.
        publisher: Option<String>,
        /// The broker users it allows, comma-separated.
        allowed: String,
    },
    /// The stored mandate is an older version than one this deployment has seen: written
    /// back over a later grant or revocation.
    #[error(
        "mandate {id} is stored at version {version}, older than version {seen} already seen: it was rolled back in Redis; refusing to spend until finance grants it again"
    )]
    RolledBack {
        /// The mandate.
        id: String,
        /// The version stored.
        version: u64,
        /// The newest version seen.
        seen: u64,
    },
    /// The stored spend does not add up: a counter lowered or deleted in Redis.
    #[error(
        "mandate {id}'s spend does not add up: {why}; refusing to spend until it is reconciled"
    )]
    Tampered {
        /// The mandate.
        id: String,
        /// What does not add up.
        why: String,
    },
    /// The refund is larger than the mandate's per-refund cap.
    #[error("refund of {amount} minor units exceeds mandate {id}'s cap of {cap} per refund")]
    OverCap {
        /// The mandate.
        id: String,
        /// The refund, in minor units.
        amount: u64,
        /// `max_per_refund`.
        cap: u64,
    },
    /// The refund does not fit in what is left of today's budget.
    #[error(
        "refund of {amount} minor units exceeds what is left of mandate {id}'s daily budget today ({left} left)"
    )]
    OverBudget {
        /// The mandate.
        id: String,
        /// The refund, in minor units.
        amount: u64,
        /// What was left of today's budget.
        left: u64,
    },
    /// The refund's currency is not the mandate's.
    #[error("mandate {id} caps refunds in {expected}, not in {got}")]
    WrongCurrency {
        /// The mandate.
        id: String,
        /// The mandate's currency.
        expected: String,
        /// The refund's.
        got: String,
    },
    /// The job key already holds a reservation of another amount under this mandate: a
    /// different refund reusing an idempotency key (never a retry, which asks the same).
    #[error(
        "mandate {id} already holds a reservation of {reserved} minor units for idempotency key {job_key}, not {asked}: a different refund reuses the key"
    )]
    KeyReused {
        /// The mandate.
        id: String,
        /// The job's idempotency key.
        job_key: String,
        /// The amount reserved earlier under the key.
        reserved: u64,
        /// The amount asked now.
        asked: u64,
    },
}

fn publisher_text(publisher: &Option<String>) -> String {
    match publisher {
        Some(user) => format!("broker user {user}"),
        None => "a job published without an AMQP user_id".to_owned(),
    }
}

fn agent_text(agent: &str) -> String {
    if agent.is_empty() {
        "a job that names no agent".to_owned()
    } else {
        format!("agent {agent}")
    }
}

impl Denial {
    /// The rule broken, as a short label (logs, metrics).
    pub fn rule(&self) -> &'static str {
        match self {
            Denial::NoMandate | Denial::AgentWithoutMandate { .. } => "no_mandate",
            Denial::Unknown { .. } => "unknown",
            Denial::Revoked { .. } => "revoked",
            Denial::Expired { .. } => "expired",
            Denial::Forged { .. } => "forged",
            Denial::WrongAgent { .. } => "wrong_agent",
            Denial::OverCap { .. } => "over_cap",
            Denial::OverBudget { .. } => "over_budget",
            Denial::WrongCurrency { .. } => "wrong_currency",
            Denial::KeyReused { .. } => "key_reused",
            Denial::WrongPublisher { .. } => "wrong_publisher",
            Denial::RolledBack { .. } => "rolled_back",
            Denial::Tampered { .. } => "tampered",
        }
    }
}

/// Money set aside from a mandate's daily budget for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The mandate it was taken from.
    pub mandate_id: String,
    /// The agent it was taken for.
    pub agent_id: String,
    /// The UTC day whose budget it counts against, `YYYY-MM-DD`.
    pub day: String,
    /// How much, in minor units.
    pub amount: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key() -> KeyPair {
        KeyPair::from_seed(&Secret::new("33".repeat(32)), "test").unwrap()
    }

    fn token(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    fn mandate() -> Mandate {
        Mandate::new_signed_at(
            token("cm_support"),
            token("support-bot"),
            50_000,
            500_000,
            Currency::BRL,
            Some("2030-01-01T00:00:00Z".into()),
            "2026-01-01T00:00:00Z",
            &key(),
        )
    }

    fn at(text: &str) -> OffsetDateTime {
        parse_rfc3339(text).unwrap()
    }

    fn keys() -> VerifyKeys {
        key().public().into()
    }

    fn ask<'a>(
        agent: Option<&'a Token>,
        publisher: Option<&'a str>,
        amount: u64,
        currency: Currency,
    ) -> Ask<'a> {
        Ask {
            agent,
            publisher,
            amount,
            currency,
        }
    }

    #[test]
    fn a_signed_mandate_verifies_with_its_key_only_and_any_listed_key_verifies() {
        let m = mandate();
        assert!(m.verify(&keys()));
        let other = KeyPair::from_seed(&Secret::new("44".repeat(32)), "test").unwrap();
        assert!(!m.verify(&other.public().into()));
        // Rotation: a list holding the old key and a new one verifies both.
        let both =
            VerifyKeys::from_hex_list(&[other.public_hex(), key().public_hex()], "test").unwrap();
        assert!(m.verify(&both));
        assert_eq!(m.version, 1);
        assert_eq!(m.publishers, vec!["support-bot".to_owned()]);
    }

    #[test]
    fn signature_covers_the_whole_state() {
        let public = keys();
        type Edit = fn(&mut Mandate);
        let changes: [(&str, Edit); 13] = [
            ("id", |m| m.id = token("cm_supporT")),
            ("agent_id", |m| m.agent_id = token("support-bo")),
            ("max_per_refund", |m| m.max_per_refund += 1),
            ("max_per_day", |m| m.max_per_day -= 1),
            ("currency", |m| m.currency = Currency::parse("USD").unwrap()),
            ("expires_at removed", |m| m.expires_at = None),
            ("expires_at moved", |m| {
                m.expires_at = Some("2031-01-01T00:00:00Z".into())
            }),
            ("issued_at", |m| m.issued_at = "2026-01-01T00:00:01Z".into()),
            ("version", |m| m.version += 1),
            ("publisher added", |m| m.publishers.push("mallory".into())),
            ("publisher renamed", |m| m.publishers[0] = "mallory".into()),
            ("revocation added", |m| {
                m.revoked_at = Some("2026-02-01T00:00:00Z".into())
            }),
            ("signature", |m| {
                let flipped = if m.signature.starts_with('0') {
                    "1"
                } else {
                    "0"
                };
                m.signature.replace_range(0..1, flipped);
            }),
        ];
        for (field, change) in changes {
            let mut m = mandate();
            change(&mut m);
            assert!(
                !m.verify(&public),
                "changing {field} must break the signature"
            );
        }
        // A revocation is a signed version: it verifies, and removing it breaks it.
        let revoked = mandate().revoked("2026-02-01T00:00:00Z", &key());
        assert!(revoked.verify(&public));
        assert_eq!(revoked.version, 2);
        let mut revived = revoked.clone();
        revived.revoked_at = None;
        assert!(
            !revived.verify(&public),
            "deleting revoked_at breaks the signature"
        );
    }

    #[test]
    fn canonical_bytes_separate_fields_unambiguously() {
        // Moving characters between adjacent text fields changes the bytes.
        let mut a = mandate();
        a.id = token("cm_a");
        a.agent_id = token("bc");
        let mut b = mandate();
        b.id = token("cm_ab");
        b.agent_id = token("c");
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let mut c = mandate();
        c.publishers = vec!["ab".into(), "c".into()];
        let mut d = mandate();
        d.publishers = vec!["a".into(), "bc".into()];
        assert_ne!(c.canonical_bytes(), d.canonical_bytes());
        assert!(
            a.canonical_bytes()
                .starts_with(b"\0\0\0\x18refund-worker/mandate/v2")
        );
    }

    #[test]
    fn checks_apply_in_order() {
        let public = keys();
        let m = mandate();
        let now = at("2026-06-01T12:00:00Z");
        let agent = token("support-bot");
        let me = Some("support-bot");
        let check = |m: &Mandate, a: Ask<'_>, now| m.check(&public, &a, now);
        assert_eq!(
            check(&m, ask(Some(&agent), me, 50_000, Currency::BRL), now),
            Ok(())
        );
        assert_eq!(
            check(&m, ask(Some(&agent), me, 50_001, Currency::BRL), now),
            Err(Denial::OverCap {
                id: "cm_support".into(),
                amount: 50_001,
                cap: 50_000
            })
        );
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(
            check(&m, ask(Some(&agent), me, 1, usd), now)
                .unwrap_err()
                .rule(),
            "wrong_currency"
        );
        let other = token("other-bot");
        assert_eq!(
            check(&m, ask(Some(&other), me, 1, Currency::BRL), now),
            Err(Denial::WrongAgent {
                id: "cm_support".into(),
                agent: "other-bot".into(),
                expected: "support-bot".into()
            })
        );
        assert_eq!(
            check(&m, ask(None, me, 1, Currency::BRL), now)
                .unwrap_err()
                .rule(),
            "wrong_agent"
        );
        // The right agent named by a job someone else published, or nobody.
        assert_eq!(
            check(&m, ask(Some(&agent), Some("guest"), 1, Currency::BRL), now),
            Err(Denial::WrongPublisher {
                id: "cm_support".into(),
                publisher: Some("guest".into()),
                allowed: "support-bot".into()
            })
        );
        assert_eq!(
            check(&m, ask(Some(&agent), None, 1, Currency::BRL), now)
                .unwrap_err()
                .rule(),
            "wrong_publisher"
        );
        let late = at("2030-01-01T00:00:00Z");
        assert_eq!(
            check(&m, ask(Some(&agent), me, 1, Currency::BRL), late),
            Err(Denial::Expired {
                id: "cm_support".into(),
                at: "2030-01-01T00:00:00Z".into()
            })
        );
        // Revocation is reported before expiry, and a forgery before everything.
        let revoked = m.revoked("2026-05-01T00:00:00Z", &key());
        assert_eq!(
            check(&revoked, ask(Some(&agent), me, 1, Currency::BRL), late)
                .unwrap_err()
                .rule(),
            "revoked"
        );
        let mut forged = m.clone();
        forged.max_per_refund = 5_000_000;
        assert_eq!(
            check(&forged, ask(None, None, 1, usd), late),
            Err(Denial::Forged {
                id: "cm_support".into()
            })
        );
    }

    #[test]
    fn an_unreadable_expiry_counts_as_expired() {
        let mut m = mandate();
        m.expires_at = Some("next tuesday".into());
        assert!(m.is_expired(at("2000-01-01T00:00:00Z")));
        assert_eq!(m.state(at("2000-01-01T00:00:00Z")), MandateState::Expired);
        let now = at("2026-06-01T12:00:00Z");
        assert_eq!(mandate().state(now), MandateState::Active);
        let revoked = mandate().revoked("2026-05-01T00:00:00Z", &key());
        assert_eq!(revoked.state(now), MandateState::Revoked);
    }

    #[test]
    fn denials_read_as_one_sentence_naming_mandate_and_rule() {
        let cases = [
            (
                Denial::NoMandate,
                "the job names no mandate, and [mandates] required = true refuses refunds without one",
            ),
            (
                Denial::Unknown { id: "cm_x".into() },
                "mandate cm_x does not exist (grant it with `refund-worker mandate grant`)",
            ),
            (
                Denial::Revoked {
                    id: "cm_x".into(),
                    at: "2026-05-01T00:00:00Z".into(),
                },
                "mandate cm_x was revoked at 2026-05-01T00:00:00Z",
            ),
            (
                Denial::Expired {
                    id: "cm_x".into(),
                    at: "2026-05-01T00:00:00Z".into(),
                },
                "mandate cm_x expired at 2026-05-01T00:00:00Z",
            ),
            (
                Denial::Forged { id: "cm_x".into() },
                "mandate cm_x has an invalid signature: it was altered after signing, signed with a key [mandates] verify_keys does not hold, or signed in an older format (grant it again)",
            ),
            (
                Denial::WrongAgent {
                    id: "cm_x".into(),
                    agent: "other-bot".into(),
                    expected: "support-bot".into(),
                },
                "mandate cm_x authorises agent support-bot, not agent other-bot",
            ),
            (
                Denial::WrongAgent {
                    id: "cm_x".into(),
                    agent: String::new(),
                    expected: "support-bot".into(),
                },
                "mandate cm_x authorises agent support-bot, not a job that names no agent",
            ),
            (
                Denial::OverCap {
                    id: "cm_x".into(),
                    amount: 60_000,
                    cap: 50_000,
                },
                "refund of 60000 minor units exceeds mandate cm_x's cap of 50000 per refund",
            ),
            (
                Denial::OverBudget {
                    id: "cm_x".into(),
                    amount: 7_000,
                    left: 3_000,
                },
                "refund of 7000 minor units exceeds what is left of mandate cm_x's daily budget today (3000 left)",
            ),
            (
                Denial::WrongCurrency {
                    id: "cm_x".into(),
                    expected: "BRL".into(),
                    got: "USD".into(),
                },
                "mandate cm_x caps refunds in BRL, not in USD",
            ),
            (
                Denial::KeyReused {
                    id: "cm_x".into(),
                    job_key: "p1:2026-05-01".into(),
                    reserved: 7_000,
                    asked: 9_000,
                },
                "mandate cm_x already holds a reservation of 7000 minor units for idempotency key p1:2026-05-01, not 9000: a different refund reuses the key",
            ),
        ];
        for (denial, text) in cases {
            assert_eq!(denial.to_string(), text);
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn mandates_round_trip_through_json() {
        let m = mandate();
        let back: Mandate = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(back.verify(&keys()));
    }
}
