//! What a message carries besides its body: the project's own `x-refund-*` headers (SPEC §3)
//! and the AMQP properties the worker reads. Pure conversion; no I/O.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use sha2::{Digest, Sha256};

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
}

/// The delivery facts the pipeline and the worker need, read once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Stable across retries: `x-refund-job-id`, else the AMQP `message_id`, else a digest of
    /// the body.
    pub job_id: String,
    /// Provider attempts that failed so far.
    pub attempts: u32,
    /// Status checks made so far on a pending refund.
    pub syncs: u32,
    /// When a worker first saw the job.
    pub first_seen: Option<String>,
    /// The day the job was keyed under by an earlier delivery.
    pub keyed_date: Option<JobDate>,
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
    /// Reads a delivery's properties.
    pub fn read(properties: &BasicProperties, body: &[u8], redelivered: bool) -> Self {
        let table = properties.headers().as_ref();
        let text = |name: &str| table.and_then(|t| header_text(t, name));
        let number = |name: &str| {
            text(name)
                .and_then(|s| s.parse::<u32>().ok())
                .or_else(|| table.and_then(|t| header_int(t, name)))
        };
        let job_id = text(headers::JOB_ID)
            .or_else(|| properties.message_id().as_ref().map(|m| m.to_string()))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| body_id(body));
        Self {
            job_id,
            attempts: number(headers::ATTEMPTS).unwrap_or(0),
            syncs: number(headers::SYNCS).unwrap_or(0),
            first_seen: text(headers::FIRST_SEEN),
            keyed_date: text(headers::DATE).and_then(|d| JobDate::parse(&d).ok()),
            timestamp: *properties.timestamp(),
            redelivered,
            death_reason: text("x-first-death-reason"),
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

/// Builds the properties of a message the worker republishes (retry, dead letter): persistent,
/// with the `x-refund-*` headers replaced by `set` and the broker's `x-death` bookkeeping
/// dropped (attempts live in our own header). Fresh properties, not a copy: an upstream
/// `expiration` would make the copy expire out of the dead-letter queue (RabbitMQ drops it
/// when it dead-letters for the same reason), and an upstream `user_id` the broker would
/// refuse from our connection.
pub fn republish_properties(original: &BasicProperties, set: &[(&str, String)]) -> BasicProperties {
    rebuild_properties(original, set, true)
}

/// Like [`republish_properties`], for a body the caller has just validated as a JSON job
/// (`dlq replay`): declared `application/json` with no content encoding, whatever the
/// original said, so a job dead-lettered for its declared media can be replayed once fixed.
pub fn json_job_properties(original: &BasicProperties, set: &[(&str, String)]) -> BasicProperties {
    rebuild_properties(original, set, false)
        .with_content_type(ShortString::from("application/json"))
}

fn rebuild_properties(
    original: &BasicProperties,
    set: &[(&str, String)],
    keep_media: bool,
) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(existing) = original.headers() {
        for (key, value) in existing.inner() {
            let name = key.as_str();
            let replaced = set.iter().any(|(k, _)| *k == name);
            let broker_owned = name == "x-death"
                || name.starts_with("x-first-death")
                || name.starts_with("x-last-death")
                || name == "x-delivery-count";
            if !replaced && !broker_owned {
                table.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, value) in set {
        table.insert(
            ShortString::from(*key),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
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

    #[test]
    fn job_id_prefers_header_then_message_id_then_body_digest() {
        let body = br#"{"amount":1}"#;
        let bare = BasicProperties::default();
        let from_body = Envelope::read(&bare, body, false).job_id;
        assert!(from_body.starts_with("body-"));
        assert_eq!(
            from_body,
            Envelope::read(&bare, body, true).job_id,
            "stable across deliveries"
        );

        let with_id = bare.clone().with_message_id("job-7".into());
        assert_eq!(Envelope::read(&with_id, body, false).job_id, "job-7");

        let headed = republish_properties(&with_id, &[(headers::JOB_ID, "job-8".into())]);
        assert_eq!(Envelope::read(&headed, body, false).job_id, "job-8");
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

        let out = republish_properties(
            &props,
            &[
                (headers::ATTEMPTS, "2".into()),
                (headers::DATE, "2026-11-24".into()),
            ],
        );
        let env = Envelope::read(&out, b"{}", false);
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
        let kept = Envelope::read(&republish_properties(&original, &[]), b"{}", false);
        assert_eq!(kept.content_type.as_deref(), Some("application/xml"));
        assert_eq!(kept.content_encoding.as_deref(), Some("gzip"));
        let replayed = Envelope::read(&json_job_properties(&original, &[]), b"{}", false);
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
        let env = Envelope::read(
            &BasicProperties::default().with_headers(table),
            b"{}",
            false,
        );
        assert_eq!(env.broker_death_class(), Some(FailureClass::DeliveryLimit));
    }
}
