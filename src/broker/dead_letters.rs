//! Reading the dead-letter queue for operators.
//!
//! Letters are fetched unacknowledged: nothing leaves the queue unless the caller acks it
//! (after its replacement was confirmed, or an explicit purge); closing the channel returns
//! everything else to the queue untouched.

use std::collections::BTreeMap;

use lapin::{
    Acker, BasicProperties, Channel, Connection,
    options::{BasicAckOptions, BasicGetOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;

use super::{
    BrokerError, Envelope, Topology,
    envelope::Republish,
    headers,
    seal::{SealCheck, Sealer},
};
use crate::outcome::FailureClass;

/// One dead letter, read but not removed.
#[derive(Debug)]
pub struct DeadLetter {
    /// The job id (`x-refund-job-id`, else the message id, else a digest of the body).
    pub job_id: String,
    /// The original body, byte for byte.
    pub body: Vec<u8>,
    /// The message's properties as stored.
    pub properties: BasicProperties,
    /// What its properties say, read with the seal in mind (`envelope.seal`: only a letter
    /// this deployment sealed has its `x-refund-*` headers believed; an unsealed one was
    /// planted or edited, and is replayed only as a new job keyed from its body).
    pub envelope: Envelope,
    /// Why it is here (the sealed `x-refund-error-class`, or the broker's own reason).
    pub class: Option<FailureClass>,
    /// The reason, in words.
    pub error: String,
    /// The rail, when known.
    pub provider: Option<String>,
    /// The job's amount and currency, when the body says (for "money stuck").
    pub amount: Option<(u64, String)>,
    /// The payment, when the body says.
    pub payment_id: Option<String>,
    /// When it was last handled (RFC 3339), for age filters.
    pub last_seen: Option<String>,
    /// Failed attempts.
    pub attempts: u32,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// Acks it (removes it from the queue).
    acker: Acker,
    /// Set once it was removed.
    removed: std::sync::atomic::AtomicBool,
}

impl DeadLetter {
    /// Reads a fetched message.
    fn read(properties: BasicProperties, body: Vec<u8>, acker: Acker, sealer: &Sealer) -> Self {
        let envelope = Envelope::read(&properties, &body, false, sealer);
        let sealed = envelope.seal.is_sealed();
        let headers: BTreeMap<String, String> = properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), text(v)))
                    .collect()
            })
            .unwrap_or_default();
        // Class and reason only from our own seal; an unsealed letter says what it is.
        let ours = |name: &str| headers.get(name).filter(|_| sealed);
        let class = ours(headers::ERROR_CLASS)
            .and_then(|c| FailureClass::parse(c))
            .or_else(|| envelope.broker_death_class());
        let error = match (&envelope.seal, ours(headers::ERROR)) {
            (_, Some(error)) => Some(error.clone()),
            (SealCheck::Untrusted { why }, None) => Some(format!(
                "not sealed by this deployment ({why}): its x-refund-* headers are ignored, and a replay sends it as a new job keyed from its body"
            )),
            (SealCheck::Sealed { .. } | SealCheck::Plain, None) => None,
        };
        let error = error.unwrap_or_else(|| match (class, &envelope.death_reason) {
            (Some(FailureClass::DeliveryLimit), _) => {
                "delivered again and again without ever being acknowledged: it crashes or hangs the worker".into()
            }
            // `expired` (a publisher's per-message TTL ran out), `rejected`, `maxlen`: the broker
            // dead-lettered it before any worker read it.
            (_, Some(reason)) => format!("dead-lettered by RabbitMQ ({reason}) before a worker handled it"),
            _ => "no reason recorded".into(),
        });
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j.get(name)).cloned();
        // Money stuck counts only what a valid job would have refunded.
        let currency = match field("currency") {
            None => Some(crate::job::Currency::BRL),
            Some(c) => c.as_str().and_then(crate::job::Currency::parse),
        };
        let amount = field("amount")
            .and_then(|a| a.as_u64())
            .and_then(|a| crate::job::Amount::new(a).ok())
            .zip(currency)
            .map(|(a, c)| (a.minor(), c.code().to_owned()));
        let provider = ours(headers::PROVIDER)
            .filter(|p| p.as_str() != crate::metrics::NO_PROVIDER)
            .cloned()
            .or_else(|| field("provider").and_then(|p| p.as_str().map(str::to_owned)));
        Self {
            job_id: envelope.job_id.clone(),
            class,
            error,
            provider,
            amount,
            payment_id: field("payment_id").and_then(|p| p.as_str().map(str::to_owned)),
            last_seen: ours(headers::LAST_SEEN)
                .cloned()
                .or_else(|| death_time(&properties)),
            attempts: envelope.attempts,
            envelope,
            headers,
            body,
            properties,
            acker,
            removed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Removes it from the dead-letter queue.
    pub async fn remove(&self) -> Result<(), BrokerError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        self.removed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// When the broker dead-lettered a message itself (`x-death[0].time`).
fn death_time(properties: &BasicProperties) -> Option<String> {
    let deaths = properties.headers().as_ref()?.inner().get("x-death")?;
    let AMQPValue::FieldArray(deaths) = deaths else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => {
            let at =
                time::OffsetDateTime::from_unix_timestamp(i64::try_from(*seconds).ok()?).ok()?;
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }
        _ => None,
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => format!("{other:?}"),
    }
}

/// The dead-letter queue, opened for reading.
pub struct DeadLetterQueue {
    /// The channel the letters were fetched on; closing it returns what was not removed.
    channel: Channel,
    /// Every letter fetched, oldest first.
    pub letters: Vec<DeadLetter>,
}

impl DeadLetterQueue {
    /// Fetches up to `limit` dead letters, without removing any; `sealer` tells the
    /// deployment's own letters from planted ones.
    pub async fn read(
        connection: &Connection,
        topology: &Topology,
        limit: usize,
        sealer: &Sealer,
    ) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(0, BasicQosOptions::default()).await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(message) = channel
                .basic_get(
                    topology.dead_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            letters.push(DeadLetter::read(
                delivery.properties,
                delivery.data,
                delivery.acker,
                sealer,
            ));
        }
        Ok(Self { channel, letters })
    }

    /// The job ids of the letters removed so far.
    pub fn removed(&self) -> Vec<String> {
        self.letters
            .iter()
            .filter(|l| l.removed.load(std::sync::atomic::Ordering::Relaxed))
            .map(|l| l.job_id.clone())
            .collect()
    }

    /// Gives back every letter not removed.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// The properties of a replayed job carrying `body`: the stored ones, with the attempts reset,
/// the failure headers dropped, and — for a letter this deployment sealed — the job id and
/// the day it is keyed under kept. An unsealed letter keeps none of its `x-refund-*` headers:
/// it goes out as a new job, keyed from its body like any publisher's. The result is sealed.
/// Replay publishes only bodies it has validated as JSON jobs, so they are declared
/// `application/json`, never in the original's refused media (a job dead-lettered for
/// `content_type: text/xml` is replayable as is).
pub fn replay_properties(letter: &DeadLetter, body: &[u8], sealer: &Sealer) -> BasicProperties {
    let envelope = &letter.envelope;
    let mut set: Vec<(&str, String)> = vec![
        (headers::ATTEMPTS, "0".into()),
        ("x-refund-replayed-at", crate::clock::now_rfc3339()),
    ];
    if envelope.seal.is_sealed() {
        set.push((headers::JOB_ID, envelope.job_id.clone()));
        if let Some(date) = envelope.keyed_date {
            set.push((headers::DATE, date.to_string()));
        }
        if let Some(first) = &envelope.first_seen {
            set.push((headers::FIRST_SEEN, first.clone()));
        }
        // The identity travels with the job it vouched for: an edited body is no longer what
        // that publisher sent, so it goes out with no publisher (and spends no mandate).
        if let Some(publisher) = envelope
            .publisher
            .as_ref()
            .filter(|_| body == letter.body.as_slice())
        {
            set.push((headers::PUBLISHER, publisher.clone()));
        }
    }
    // The failure headers stay with the letter; the replayed job starts clean. An edited body
    // drops the publisher too (see above).
    let edited = body != letter.body.as_slice();
    let mut original = letter.properties.clone();
    if let Some(table) = letter.properties.headers() {
        let kept: FieldTable = table
            .inner()
            .iter()
            .filter(|(k, _)| {
                let failure = matches!(
                    k.as_str(),
                    headers::ERROR | headers::ERROR_CLASS | headers::SYNCS
                );
                let stale_identity = edited && k.as_str() == headers::PUBLISHER;
                !(failure || stale_identity)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        original = original.with_headers(kept);
    }
    let from = Republish {
        original: &original,
        original_sealed: envelope.seal.is_sealed(),
        body,
        sealer,
    };
    super::envelope::json_job_properties(from, &set)
}
