//! The one place that turns a job's end ([`JobEnd`], decided by [`super::plan()`]) into broker
//! actions: an outcome event, a retry publish or a dead letter, then the ack. The action and
//! the [`Disposition`] are views of the `JobEnd`, each one exhaustive match.
//!
//! Order, for every delivery: plan what replaces the message; publish the outcome event
//! (terminal outcomes); publish the replacement (retry tier or dead-letter queue); ack. Each
//! publish is confirmed before the next step, so a crash anywhere leaves the original unacked
//! and the broker delivers it again: at worst a repeated event (consumers key on `job_id`) or
//! a repeated retry copy (the idempotency record absorbs it), never a lost job. The event goes
//! before the dead letter so that a failed event cannot leave a second copy in the
//! dead-letter queue.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tracing::{debug, info, warn};

use super::Shared;
use crate::{
    broker::{
        BrokerError, Envelope, Publisher,
        envelope::{self, Republish},
        events::OutcomeEvent,
        headers,
        seal::Sealer,
    },
    ending::{Fate, JobEnd},
    metrics::NO_PROVIDER,
    outcome::FailureClass,
};

/// What happened to the message after its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledged: finished (refunded, duplicate).
    Acked,
    /// Republished to a retry tier, then acknowledged.
    Retried {
        /// The retry queue.
        queue: String,
    },
    /// Republished to the dead-letter queue, then acknowledged.
    DeadLettered {
        /// Its class.
        class: FailureClass,
        /// The reason in `x-refund-error`.
        why: String,
    },
    /// Left unacknowledged or requeued: the broker will deliver it again.
    HandedBack {
        /// Why.
        why: String,
    },
}

impl Disposition {
    /// What becomes of the message of a job that ends so.
    pub fn of(end: &JobEnd) -> Self {
        match &end.fate {
            Fate::Refunded { .. } | Fate::Duplicate { .. } => Disposition::Acked,
            Fate::Pending { tier, .. } | Fate::Retry { tier, .. } => Disposition::Retried {
                queue: tier.queue.clone(),
            },
            Fate::DeadLetter { class, why, .. } => Disposition::DeadLettered {
                class: *class,
                why: why.clone(),
            },
            Fate::HandBack { why } => Disposition::HandedBack { why: why.clone() },
        }
    }
}

/// A message that replaces the delivery: where it goes and its `x-refund-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replacement {
    /// `""` (the default exchange) for a retry tier, the dead-letter exchange for a dead letter.
    pub(crate) exchange: String,
    /// The retry queue, or `""` for the dead-letter exchange (a fanout).
    pub(crate) routing_key: String,
    /// The `x-refund-*` headers set on the copy; the original's others are kept.
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Replacement {
    /// The copy's properties, from the original's, sealed.
    pub(crate) fn properties(&self, from: Republish<'_>) -> BasicProperties {
        envelope::republish_properties(from, &self.headers)
    }
}

/// What the worker does with the delivery of a job that ends so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Acknowledge it: the job is finished.
    Ack,
    /// Publish this copy to a retry tier (confirmed), then acknowledge the original.
    Retry(Replacement),
    /// Publish this copy to the dead-letter exchange (confirmed), then acknowledge the
    /// original.
    DeadLetter(Replacement),
    /// Leave it unacknowledged: the broker delivers it again.
    Leave,
}

/// The broker action for `end`: `first_seen` is the delivery's `x-refund-first-seen` (absent
/// on a first delivery), `now` the time stamped on the copy.
pub(crate) fn action(
    end: &JobEnd,
    first_seen: Option<&str>,
    now: &str,
    dead_exchange: &str,
) -> Action {
    let mut headers: Vec<(&'static str, String)> = vec![
        (headers::JOB_ID, end.job_id.clone()),
        (headers::FIRST_SEEN, first_seen.unwrap_or(now).to_owned()),
        (headers::LAST_SEEN, now.to_owned()),
    ];
    if let Some(date) = end.date {
        headers.push((headers::DATE, date.to_string()));
    }
    let provider_label =
        |p: &Option<crate::job::ProviderName>| p.map_or(NO_PROVIDER.to_owned(), |p| p.to_string());
    let retry = |queue: &str, headers| {
        Action::Retry(Replacement {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            headers,
        })
    };
    match &end.fate {
        Fate::Refunded { .. } | Fate::Duplicate { .. } => Action::Ack,
        Fate::HandBack { .. } => Action::Leave,
        Fate::Pending {
            provider,
            syncs,
            tier,
            ..
        } => {
            headers.push((headers::SYNCS, syncs.to_string()));
            headers.push((headers::PROVIDER, provider.to_string()));
            headers.push((headers::ATTEMPTS, end.prior_attempts.to_string()));
            retry(&tier.queue, headers)
        }
        Fate::Retry {
            provider,
            why,
            tier,
            attempts,
            ..
        } => {
            headers.push((headers::PROVIDER, provider_label(provider)));
            headers.push((headers::ATTEMPTS, attempts.to_string()));
            headers.push((headers::ERROR, why.clone()));
            retry(&tier.queue, headers)
        }
        Fate::DeadLetter {
            class,
            provider,
            why,
            attempts,
        } => {
            headers.push((headers::PROVIDER, provider_label(provider)));
            headers.push((headers::ATTEMPTS, attempts.to_string()));
            headers.push((headers::ERROR, why.clone()));
            headers.push((headers::ERROR_CLASS, class.as_str().to_owned()));
            Action::DeadLetter(Replacement {
                exchange: dead_exchange.to_owned(),
                routing_key: String::new(),
                headers,
            })
        }
    }
}

/// Carries out `end` on its delivery; returns how the job really ended (handed back when a
/// publish was not confirmed).
pub(super) async fn dispose(
    shared: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    envelope: &Envelope,
    end: JobEnd,
    arrived: std::time::Instant,
) -> JobEnd {
    let now = crate::clock::now_rfc3339();
    let dead_exchange = shared.options.topology.dead_exchange();
    let mut replacement = match action(&end, envelope.first_seen.as_deref(), &now, &dead_exchange) {
        // Left unacknowledged: the channel closes as the worker stops, and the broker
        // delivers the message again.
        Action::Leave => return end,
        Action::Ack => None,
        Action::Retry(replacement) | Action::DeadLetter(replacement) => Some(replacement),
    };
    // The identity established at intake travels sealed with every copy (SPEC §5).
    if let (Some(replacement), Some(publisher)) = (&mut replacement, &envelope.publisher) {
        replacement
            .headers
            .push((headers::PUBLISHER, publisher.clone()));
    }
    let topology = &shared.options.topology;
    let reply_to = envelope.reply_to.as_deref().filter(|queue| {
        let own = topology.owns(queue);
        if own {
            warn!(job_id = %envelope.job_id, reply_to = %queue, "reply_to names one of the service's own queues or exchanges; no reply is sent there");
        }
        !own
    });
    let outgoing = Outgoing {
        events_exchange: topology.events_exchange(),
        reply_to,
        sealer: &shared.options.sealer,
    };
    let event = OutcomeEvent::of(&end, arrived.elapsed());
    match carry_out(publisher, &outgoing, delivery, envelope, event, replacement).await {
        Ok(()) => {
            if let (Fate::DeadLetter { .. }, Some(job)) = (&end.fate, &end.job) {
                // The money-stuck gauge's tally; best effort (the queue itself is the truth).
                let store = shared.pipeline.store();
                if let Err(e) = store
                    .note_dead_letter(&end.job_id, job.amount, job.currency.code())
                    .await
                {
                    debug!(job_id = %end.job_id, error = %e, "could not note the dead letter's amount");
                }
            }
            end
        }
        Err(error) => {
            // Something was not confirmed: keep the original. A short pause keeps a broker in
            // trouble from spinning us; the requeued copy is processed again.
            warn!(job_id = %envelope.job_id, error = %error, "could not republish; requeueing the original");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = delivery.acker.nack(requeue).await {
                debug!(job_id = %envelope.job_id, error = %e, "nack failed; the broker returns the message when the channel closes");
            }
            end.handed_back(error.to_string())
        }
    }
}

/// Where a delivery's messages go and how its replacement is sealed.
struct Outgoing<'a> {
    /// The events exchange.
    events_exchange: String,
    /// The job's own reply queue, unless it names one of ours.
    reply_to: Option<&'a str>,
    /// Seals the replacement.
    sealer: &'a Sealer,
}

/// Publishes the event and the replacement, each confirmed, then acks.
async fn carry_out(
    publisher: &Publisher,
    outgoing: &Outgoing<'_>,
    delivery: &Delivery,
    envelope: &Envelope,
    event: Option<OutcomeEvent>,
    replacement: Option<Replacement>,
) -> Result<(), BrokerError> {
    if let Some(event) = event {
        publish_event(publisher, outgoing, envelope, &event).await?;
    }
    if let Some(replacement) = replacement {
        let properties = replacement.properties(Republish {
            original: &delivery.properties,
            original_sealed: envelope.seal.is_sealed(),
            body: &delivery.data,
            sealer: outgoing.sealer,
        });
        publisher
            .publish(
                &replacement.exchange,
                &replacement.routing_key,
                &delivery.data,
                properties,
            )
            .await?;
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The outcome is durable already; the message comes back and dedupes.
        info!(job_id = %envelope.job_id, error = %e, "ack failed after the outcome was recorded; the redelivery will be a no-op");
    }
    Ok(())
}

/// The event on the events exchange, and to the job's `reply_to` if it asked for one.
async fn publish_event(
    publisher: &Publisher,
    outgoing: &Outgoing<'_>,
    envelope: &Envelope,
    event: &OutcomeEvent,
) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(event)
        .map_err(|e| BrokerError::NotConfirmed(format!("event not serializable: {e}")))?;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.job_id.as_str().into())
        .with_type(event.status.routing_key().into())
        .with_timestamp(
            u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0),
        );
    if let Some(correlation) = &envelope.correlation_id {
        properties = properties.with_correlation_id(correlation.as_str().into());
    }
    publisher
        .notify(
            &outgoing.events_exchange,
            event.status.routing_key(),
            &body,
            properties.clone(),
        )
        .await?;
    if let Some(reply_to) = outgoing.reply_to {
        publisher.notify("", reply_to, &body, properties).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        ending::RetryTier,
        job::{JobDate, ProviderName::Stripe},
    };

    const NOW: &str = "2026-11-24T10:00:00Z";
    const DLX: &str = "refunds.dlx";

    fn tier() -> RetryTier {
        RetryTier {
            queue: "refunds.retry.5s".into(),
            delay: Duration::from_secs(5),
        }
    }

    fn end(fate: Fate) -> JobEnd {
        JobEnd {
            job_id: "job-1".into(),
            job: None,
            date: Some(JobDate::parse("2026-11-24").expect("a date")),
            prior_attempts: 1,
            fate,
        }
    }

    fn fates() -> Vec<Fate> {
        vec![
            Fate::Refunded {
                provider: Stripe,
                refund_id: "re_1".into(),
                amount: 100,
                adopted: false,
            },
            Fate::Duplicate { earlier: None },
            Fate::Pending {
                provider: Stripe,
                refund_id: "re_p".into(),
                syncs: 2,
                tier: tier(),
            },
            Fate::Retry {
                provider: None,
                why: "503".into(),
                tier: tier(),
                attempts: 2,
                counted: true,
            },
            Fate::DeadLetter {
                class: FailureClass::Exhausted,
                provider: Some(Stripe),
                why: "gave up".into(),
                attempts: 4,
            },
            Fate::HandBack {
                why: "stopping".into(),
            },
        ]
    }

    /// The republished copy as (exchange, routing key, headers), or `None` for no copy.
    fn copy(action: &Action) -> Option<(&str, &str, BTreeMap<&str, &str>)> {
        match action {
            Action::Retry(r) | Action::DeadLetter(r) => Some((
                r.exchange.as_str(),
                r.routing_key.as_str(),
                r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect(),
            )),
            Action::Ack | Action::Leave => None,
        }
    }

    fn kind(action: &Action) -> &'static str {
        match action {
            Action::Ack => "ack",
            Action::Retry(_) => "retry",
            Action::DeadLetter(_) => "dead letter",
            Action::Leave => "leave",
        }
    }

    #[test]
    fn each_fate_has_one_action_and_one_disposition() {
        let retried = Disposition::Retried {
            queue: "refunds.retry.5s".into(),
        };
        let expected = [
            ("refunded", Disposition::Acked, "ack"),
            ("duplicate", Disposition::Acked, "ack"),
            ("pending", retried.clone(), "retry"),
            ("retry", retried, "retry"),
            (
                "exhausted",
                Disposition::DeadLettered {
                    class: FailureClass::Exhausted,
                    why: "gave up".into(),
                },
                "dead letter",
            ),
            (
                "hand back",
                Disposition::HandedBack {
                    why: "stopping".into(),
                },
                "leave",
            ),
        ];
        let fates = fates();
        assert_eq!(fates.len(), expected.len());
        for (fate, (name, disposition, want)) in fates.into_iter().zip(expected) {
            let end = end(fate);
            assert_eq!(Disposition::of(&end), disposition, "{name}");
            assert_eq!(kind(&action(&end, None, NOW, DLX)), want, "{name}");
        }
    }

    #[test]
    fn a_retry_copy_goes_to_its_tier_with_the_attempts_and_the_key_date() {
        let end = end(fates().swap_remove(3));
        let action = action(&end, Some("2026-11-23T09:00:00Z"), NOW, DLX);
        let (exchange, queue, headers) = copy(&action).expect("a copy");
        assert_eq!((exchange, queue), ("", "refunds.retry.5s"));
        assert_eq!(
            headers,
            BTreeMap::from([
                (headers::JOB_ID, "job-1"),
                (headers::FIRST_SEEN, "2026-11-23T09:00:00Z"),
                (headers::LAST_SEEN, NOW),
                (headers::DATE, "2026-11-24"),
                (headers::PROVIDER, NO_PROVIDER),
                (headers::ATTEMPTS, "2"),
                (headers::ERROR, "503"),
            ])
        );
    }

    #[test]
    fn a_pending_copy_counts_its_status_checks_not_attempts() {
        let end = end(fates().swap_remove(2));
        let action = action(&end, None, NOW, DLX);
        let (exchange, queue, headers) = copy(&action).expect("a copy");
        assert_eq!((exchange, queue), ("", "refunds.retry.5s"));
        assert_eq!(headers[headers::SYNCS], "2");
        assert_eq!(headers[headers::ATTEMPTS], "1");
        assert_eq!(headers[headers::PROVIDER], "stripe");
        assert_eq!(headers[headers::FIRST_SEEN], NOW, "first sight is now");
        assert!(!headers.contains_key(headers::ERROR));
    }

    #[test]
    fn a_dead_letter_goes_to_the_dead_letter_exchange_with_its_class_and_reason() {
        let end = end(fates().swap_remove(4));
        let action = action(&end, None, NOW, DLX);
        let (exchange, key, headers) = copy(&action).expect("a copy");
        assert_eq!((exchange, key), (DLX, ""));
        assert_eq!(headers[headers::ERROR_CLASS], "exhausted");
        assert_eq!(headers[headers::ERROR], "gave up");
        assert_eq!(headers[headers::ATTEMPTS], "4");
        assert_eq!(headers[headers::PROVIDER], "stripe");
    }

    #[test]
    fn a_copy_replaces_the_refund_headers_and_keeps_the_rest() {
        use lapin::types::{AMQPValue, FieldTable, LongString};
        let mut table = FieldTable::default();
        table.insert(
            headers::ATTEMPTS.into(),
            AMQPValue::LongString(LongString::from("1")),
        );
        table.insert(
            "x-tenant".into(),
            AMQPValue::LongString(LongString::from("acme")),
        );
        let original = BasicProperties::default().with_headers(table);
        let Action::Retry(replacement) = action(&end(fates().swap_remove(3)), None, NOW, DLX)
        else {
            panic!("a retry republishes");
        };
        let sealer = crate::broker::seal::Sealer::from_config(
            &crate::config::Settings::default().broker.seal_keys,
        )
        .unwrap();
        let body = b"{}";
        let copied = replacement.properties(Republish {
            original: &original,
            original_sealed: true,
            body,
            sealer: &sealer,
        });
        let read = Envelope::read(&copied, body, false, &sealer);
        assert!(read.seal.is_sealed(), "the copy is sealed");
        let copied = copied.headers().as_ref().expect("headers");
        let text = |name: &str| match copied.inner().get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text(headers::ATTEMPTS), "2");
        assert_eq!(text("x-tenant"), "acme");
    }
}
