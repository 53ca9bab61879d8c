//! What a message carries besides its body: the project's own `x-refund-*` headers (SPEC §3)
//! and the AMQP properties the worker reads. Pure conversion; no I/O.
//!
//! Trust (SPEC §3a): the `x-refund-*` headers are read only from a message whose seal
//! ([`super::seal`]) verifies, that is from a copy the service itself published. On any other
//! message they are ignored as if absent: the job id is the AMQP `message_id` (else a digest of
//! the body), attempts start at zero and no day comes from a header. Every republish drops the
//! `x-refund-*` headers of an unsealed original, writes the service's own and seals them.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use sha2::{Digest, Sha256};

use super::seal::{SEAL_HEADER, SEALED_PREFIX, SealCheck, Sealer};
use crate::{job::JobDate, outcome::FailureClass};

/// Header names, as operators and scripts see them.
pub mod headers {
    /// Human-readable reason of the last failure.
    pub const ERROR: &str = "x-refund-error";
    /// The dead-letter class.
    pub const ERROR_CLASS: &str = "x-refund-error-class";
    /// The rail.
    pub const PROVIDER: &str = "x-refund-provider";
    /// Provider attempts that failed so far.
    pub const ATTEMPTS: &str = "x-refund-attempts";
    /// When the job was first seen by a worker (RFC 3339).
    pub const FIRST_SEEN: &str = "x-refund-first-seen";
    /// When it was last seen.
    pub const LAST_SEEN: &str = "x-refund-last-seen";
    /// The job id.
    pub const JOB_ID: &str = "x-refund-job-id";
    /// The day the job is keyed under (its idempotency key never changes).
    pub const DATE: &str = "x-refund-date";
    /// Status checks made on a pending refund.
    pub const SYNCS: &str = "x-refund-syncs";
    /// The broker user that published the job, as RabbitMQ validated its AMQP `user_id` at
    /// intake (who may spend a mandate: SPEC §5).
    pub const PUBLISHER: &str = "x-refund-publisher";
}

/// The delivery facts the pipeline and the worker need, read once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Stable across retries: the sealed `x-refund-job-id`, else the AMQP `message_id`, else
    /// a digest of the body.
    pub job_id: String,
    /// The publisher's AMQP `message_id`, when it sent one (one of the two identities a
    /// dateless job's day is pinned under; the other is the body's digest).
    pub message_id: Option<String>,
    /// Whether the `x-refund-*` headers below came from a copy this deployment sealed.
    pub seal: SealCheck,
    /// Provider attempts that failed so far.
    pub attempts: u32,
    /// Status checks made so far on a pending refund.
    pub syncs: u32,
    /// When a worker first saw the job.
    pub first_seen: Option<String>,
    /// The day the job was keyed under by an earlier delivery.
    pub keyed_date: Option<JobDate>,
    /// The broker user that published the job: the sealed `x-refund-publisher` of a copy the
    /// service made, else the AMQP `user_id` (which RabbitMQ checks against the publishing
    /// connection's user). `None` when the publisher set no `user_id`.
    pub publisher: Option<String>,
    /// The AMQP `timestamp` property (Unix seconds).
    pub timestamp: Option<u64>,
    /// Whether the broker says this is a redelivery.
    pub redelivered: bool,
    /// Set when the broker itself dead-lettered the message (`x-first-death-reason`).
    pub death_reason: Option<String>,
    /// Where the publisher wants this job's outcome event (AMQP `reply_to`).
    pub reply_to: Option<String>,
    /// The publisher's correlation id, echoed on the reply.
    pub correlation_id: Option<String>,
    /// What the publisher says the body is (AMQP `content_type`); a job is JSON.
    pub content_type: Option<String>,
    /// How the publisher says the body is encoded (AMQP `content_encoding`); a job is plain.
    pub content_encoding: Option<String>,
}

impl Envelope {
    /// Reads a delivery's properties, believing its `x-refund-*` headers only if `sealer`
    /// verifies their seal.
    pub fn read(
        properties: &BasicProperties,
        body: &[u8],
        redelivered: bool,
        sealer: &Sealer,
    ) -> Self {
        let all = properties.headers().as_ref();
        let seal = sealer.check(body, all);
        // Our own headers only from our own sealed copies; everything else as if absent.
        let ours = all.filter(|_| seal.is_sealed());
        let text = |name: &str| ours.and_then(|t| header_text(t, name));
        let number = |name: &str| {
            text(name)
                .and_then(|s| s.parse::<u32>().ok())
                .or_else(|| ours.and_then(|t| header_int(t, name)))
        };
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .filter(|id| !id.is_empty());
        let job_id = text(headers::JOB_ID)
            .filter(|id| !id.is_empty() && id.len() <= MAX_JOB_ID_BYTES)
            .or_else(|| message_id.clone())
            .unwrap_or_else(|| body_id(body));
        Self {
            job_id,
            message_id,
            seal,
            attempts: number(headers::ATTEMPTS).unwrap_or(0),
            syncs: number(headers::SYNCS).unwrap_or(0),
            first_seen: text(headers::FIRST_SEEN),
            keyed_date: text(headers::DATE).and_then(|d| JobDate::parse(&d).ok()),
            // A sealed copy carries the identity established at intake; its own `user_id`
            // (none: republishes never set one) says nothing.
            publisher: if ours.is_some() {
                text(headers::PUBLISHER)
            } else {
                properties.user_id().as_ref().map(|u| u.to_string())
            }
            .filter(|p| !p.is_empty() && p.len() <= 255),
            timestamp: *properties.timestamp(),
            redelivered,
            // The broker's own header, not ours: never sealed, and only read by the dead-letter
            // queue's reader to name a broker-made letter (it chooses no key).
            death_reason: all.and_then(|t| header_text(t, "x-first-death-reason")),
            reply_to: properties
                .reply_to()
                .as_ref()
                .map(|r| r.to_string())
                .filter(|r| !r.is_empty()),
            correlation_id: properties.correlation_id().as_ref().map(|c| c.to_string()),
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            content_encoding: properties
                .content_encoding()
                .as_ref()
                .map(|e| e.to_string()),
        }
    }

    /// The dead-letter class a broker-made dead letter implies.
    pub fn broker_death_class(&self) -> Option<FailureClass> {
        match self.death_reason.as_deref() {
            Some("delivery_limit") => Some(FailureClass::DeliveryLimit),
            _ => None,
        }
    }
}

/// The longest job id the service reads or writes: it travels in AMQP short strings
/// (`message_id`), which hold at most 255 bytes.
pub const MAX_JOB_ID_BYTES: usize = 255;

/// A job id for a message that came without one: the same body always gets the same id.
pub fn body_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("body-{}", hex::encode(&digest[..12]))
}

fn header_text(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn header_int(table: &FieldTable, name: &str) -> Option<u32> {
    let value = match table.inner().get(name)? {
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        _ => return None,
    };
    u32::try_from(value).ok()
}

/// A message the worker republishes (retry copy, dead letter, replay): the original's
/// properties, whether its `x-refund-*` headers were sealed (and so are ours to keep), the body
/// that goes out, and the seal's keys.
#[derive(Clone, Copy)]
pub struct Republish<'a> {
    /// The properties of the message being replaced.
    pub original: &'a BasicProperties,
    /// Whether the original's `x-refund-*` headers carried a valid seal.
    pub original_sealed: bool,
    /// The body the new message carries (the seal covers it).
    pub body: &'a [u8],
    /// Seals the result.
    pub sealer: &'a Sealer,
}

impl std::fmt::Debug for Republish<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Republish")
            .field("original_sealed", &self.original_sealed)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Builds the properties of a message the worker republishes (retry, dead letter): persistent,
/// with the `x-refund-*` headers replaced by `set` (an unsealed original's are all dropped),
/// sealed, and the broker's `x-death` bookkeeping dropped (attempts live in our own header).
/// Fresh properties, not a copy: an upstream `expiration` would make the copy expire out of the
/// dead-letter queue (RabbitMQ drops it when it dead-letters for the same reason), and an
/// upstream `user_id` the broker would refuse from our connection. Header values are cut to
/// [`MAX_HEADER_BYTES`] (on a character boundary) so that no reason or id can grow a message
/// without bound.
pub fn republish_properties(from: Republish<'_>, set: &[(&str, String)]) -> BasicProperties {
    rebuild_properties(from, set, true)
}

/// Like [`republish_properties`], for a body the caller has just validated as a JSON job
/// (`dlq replay`): declared `application/json` with no content encoding, whatever the
/// original said, so a job dead-lettered for its declared media can be replayed once fixed.
pub fn json_job_properties(from: Republish<'_>, set: &[(&str, String)]) -> BasicProperties {
    rebuild_properties(from, set, false).with_content_type(ShortString::from("application/json"))
}

/// The longest `x-refund-*` header value the service writes (a reason is cut there).
pub const MAX_HEADER_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn rebuild_properties(
    from: Republish<'_>,
    set: &[(&str, String)],
    keep_media: bool,
) -> BasicProperties {
    let original = from.original;
    let mut table = FieldTable::default();
    if let Some(existing) = original.headers() {
        for (key, value) in existing.inner() {
            let name = key.as_str();
            let replaced = set.iter().any(|(k, _)| *k == name);
            let broker_owned = name == "x-death"
                || name.starts_with("x-first-death")
                || name.starts_with("x-last-death")
                || name == "x-delivery-count";
            // A publisher's x-refund-* headers are never carried on: only sealed ones are ours.
            let foreign_claim = name.starts_with(SEALED_PREFIX) && !from.original_sealed;
            if !replaced && !broker_owned && !foreign_claim && name != SEAL_HEADER {
                table.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, value) in set {
        table.insert(
            ShortString::from(*key),
            AMQPValue::LongString(LongString::from(bounded(value, MAX_HEADER_BYTES))),
        );
    }
    match from.sealer.seal(from.body, &table) {
        Ok(seal) => {
            table.insert(
                ShortString::from(SEAL_HEADER),
                AMQPValue::LongString(LongString::from(seal)),
            );
        }
        // Only a kept header of a type we never write (on a sealed original: impossible)
        // stops the seal; the copy then reads back as untrusted, which is the safe side.
        Err(why) => tracing::warn!(%why, "a republished message could not be sealed"),
    }
    let mut properties = BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2);
    if keep_media {
        if let Some(v) = original.content_type() {
            properties = properties.with_content_type(v.clone());
        }
        if let Some(v) = original.content_encoding() {
            properties = properties.with_content_encoding(v.clone());
        }
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        properties = properties.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn sealer() -> Sealer {
        Sealer::from_config(&[Secret::new(format!("t1:{}", "5a".repeat(32)))]).unwrap()
    }

    fn read(properties: &BasicProperties, body: &[u8]) -> Envelope {
        Envelope::read(properties, body, false, &sealer())
    }

    /// What the worker publishes when it republishes `original` (unsealed) with `set`.
    fn ours(original: &BasicProperties, body: &[u8], set: &[(&str, String)]) -> BasicProperties {
        let sealer = sealer();
        republish_properties(
            Republish {
                original,
                original_sealed: false,
                body,
                sealer: &sealer,
            },
            set,
        )
    }

    fn forged(pairs: &[(&str, &str)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        BasicProperties::default()
            .with_headers(table)
            .with_message_id("job-7".into())
    }

    #[test]
    fn job_id_prefers_sealed_header_then_message_id_then_body_digest() {
        let body = br#"{"amount":1}"#;
        let bare = BasicProperties::default();
        let from_body = read(&bare, body).job_id;
        assert!(from_body.starts_with("body-"));
        assert_eq!(
            from_body,
            Envelope::read(&bare, body, true, &sealer()).job_id,
            "stable across deliveries"
        );

        let with_id = bare.clone().with_message_id("job-7".into());
        assert_eq!(read(&with_id, body).job_id, "job-7");

        let headed = ours(&with_id, body, &[(headers::JOB_ID, "job-8".into())]);
        assert_eq!(read(&headed, body).job_id, "job-8");
        assert!(read(&headed, body).seal.is_sealed());
    }

    #[test]
    fn a_publishers_refund_headers_are_read_as_absent() {
        let body = br#"{"payment_id":"pi_i02","amount":500,"provider":"asaas"}"#;
        let props = forged(&[
            (headers::DATE, "2026-12-04"),
            (headers::JOB_ID, "someone-elses-job"),
            (headers::ATTEMPTS, "99"),
            (headers::SYNCS, "7"),
            (headers::FIRST_SEEN, "2020-01-01T00:00:00Z"),
        ]);
        let env = read(&props, body);
        assert!(
            matches!(env.seal, SealCheck::Untrusted { .. }),
            "{:?}",
            env.seal
        );
        assert_eq!(env.job_id, "job-7", "the message id, not the header");
        assert_eq!(env.keyed_date, None);
        assert_eq!((env.attempts, env.syncs), (0, 0));
        assert_eq!(env.first_seen, None);
    }

    #[test]
    fn a_sealed_copy_cannot_be_edited_or_moved_to_another_body() {
        let body = br#"{"payment_id":"pi_1","amount":500,"provider":"asaas"}"#;
        let sealed = ours(
            &BasicProperties::default().with_message_id("job-1".into()),
            body,
            &[
                (headers::DATE, "2026-12-04".into()),
                (headers::ATTEMPTS, "2".into()),
            ],
        );
        let env = read(&sealed, body);
        assert_eq!(env.keyed_date, JobDate::parse("2026-12-04").ok());
        assert_eq!(env.attempts, 2);

        let mut edited = sealed.headers().clone().unwrap();
        edited.insert(
            headers::DATE.into(),
            AMQPValue::LongString("2026-12-05".into()),
        );
        let env = read(&sealed.clone().with_headers(edited), body);
        assert_eq!(env.keyed_date, None, "an edited date is not believed");
        assert_eq!(env.attempts, 0);

        let other = br#"{"payment_id":"pi_2","amount":500,"provider":"asaas"}"#;
        assert_eq!(
            read(&sealed, other).keyed_date,
            None,
            "headers moved to another body"
        );
    }

    #[test]
    fn republishing_drops_a_publishers_refund_headers_and_bounds_ours() {
        let body = b"{}";
        let original = forged(&[
            (headers::ERROR_CLASS, "invalid"),
            ("x-refund-anything", "planted"),
            ("x-upstream-trace", "t-1"),
        ]);
        let long = "é".repeat(MAX_HEADER_BYTES);
        let out = ours(&original, body, &[(headers::ERROR, long)]);
        let table = out.headers().clone().unwrap();
        assert!(!table.inner().contains_key(headers::ERROR_CLASS));
        assert!(!table.inner().contains_key("x-refund-anything"));
        assert!(table.inner().contains_key("x-upstream-trace"));
        let Some(AMQPValue::LongString(error)) = table.inner().get(headers::ERROR) else {
            panic!("the error header is written: {table:?}");
        };
        assert!(error.as_bytes().len() <= MAX_HEADER_BYTES);
        assert!(
            std::str::from_utf8(error.as_bytes()).is_ok(),
            "cut on a character boundary"
        );
        assert!(read(&out, body).seal.is_sealed());
    }

    #[test]
    fn a_sealed_originals_headers_are_kept_unless_replaced() {
        let body = b"{}";
        let first = ours(
            &BasicProperties::default(),
            body,
            &[
                (headers::SYNCS, "3".into()),
                (headers::ATTEMPTS, "1".into()),
            ],
        );
        let sealer = sealer();
        let again = republish_properties(
            Republish {
                original: &first,
                original_sealed: true,
                body,
                sealer: &sealer,
            },
            &[(headers::ATTEMPTS, "2".into())],
        );
        let env = read(&again, body);
        assert!(env.seal.is_sealed());
        assert_eq!((env.attempts, env.syncs), (2, 3));
    }

    #[test]
    fn republished_headers_replace_ours_and_drop_the_brokers() {
        let mut original = FieldTable::default();
        original.insert("x-death".into(), AMQPValue::LongString("…".into()));
        original.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        original.insert(headers::ATTEMPTS.into(), AMQPValue::LongString("1".into()));
        original.insert(
            "x-upstream-trace".into(),
            AMQPValue::LongString("t-1".into()),
        );
        let props = BasicProperties::default()
            .with_headers(original)
            .with_timestamp(1_700_000_000)
            .with_expiration("600000".into())
            .with_user_id("someone-else".into())
            .with_reply_to("upstream.replies".into());

        let out = ours(
            &props,
            b"{}",
            &[
                (headers::ATTEMPTS, "2".into()),
                (headers::DATE, "2026-11-24".into()),
            ],
        );
        let env = read(&out, b"{}");
        assert_eq!(env.attempts, 2);
        assert_eq!(env.keyed_date, JobDate::parse("2026-11-24").ok());
        assert_eq!(env.timestamp, Some(1_700_000_000));
        let table = out.headers().clone().unwrap();
        assert!(!table.inner().contains_key("x-death"));
        assert!(!table.inner().contains_key("x-delivery-count"));
        assert!(table.inner().contains_key("x-upstream-trace"));
        assert_eq!(*out.delivery_mode(), Some(2));
        assert_eq!(
            *out.expiration(),
            None,
            "a copy must not expire out of the dead-letter queue"
        );
        assert_eq!(*out.user_id(), None);
        assert_eq!(
            out.reply_to().as_ref().map(|r| r.as_str()),
            Some("upstream.replies")
        );
    }

    #[test]
    fn replayed_jobs_are_declared_plain_json() {
        let original = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_content_encoding("gzip".into())
            .with_message_id("job-9".into());
        let kept = read(&ours(&original, b"{}", &[]), b"{}");
        assert_eq!(kept.content_type.as_deref(), Some("application/xml"));
        assert_eq!(kept.content_encoding.as_deref(), Some("gzip"));
        let sealer = sealer();
        let replay = Republish {
            original: &original,
            original_sealed: false,
            body: b"{}",
            sealer: &sealer,
        };
        let replayed = read(&json_job_properties(replay, &[]), b"{}");
        assert_eq!(replayed.content_type.as_deref(), Some("application/json"));
        assert_eq!(replayed.content_encoding, None);
        assert_eq!(replayed.job_id, "job-9");
    }

    #[test]
    fn broker_dead_letters_are_recognised() {
        let mut table = FieldTable::default();
        table.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        let env = read(&BasicProperties::default().with_headers(table), b"{}");
        assert_eq!(env.broker_death_class(), Some(FailureClass::DeliveryLimit));
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc");
        assert_eq!(bounded("aé", 2), "a", "é is two bytes");
    }
}
