//! The one place that turns an [`Outcome`] into broker actions: an outcome event, a retry
//! publish or a dead letter, then the ack.
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
    metrics::NO_PROVIDER,
    outcome::{FailureClass, Outcome},
    pipeline::Processed,
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

/// A message that replaces the delivery: where it goes and its `x-refund-*` headers.
struct Replacement {
    exchange: String,
    routing_key: String,
    headers: Vec<(&'static str, String)>,
}

/// Applies an outcome to its delivery.
pub(super) async fn dispose(
    shared: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    envelope: &Envelope,
    processed: &Processed,
    arrived: std::time::Instant,
) -> Disposition {
    let (disposition, replacement) = plan(shared, envelope, processed);
    if matches!(disposition, Disposition::HandedBack { .. }) {
        // Left unacknowledged: the channel closes as the worker stops, and the broker
        // delivers the message again.
        return disposition;
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
    let event = OutcomeEvent::of(envelope, processed, &disposition, arrived.elapsed());
    match carry_out(publisher, &outgoing, delivery, envelope, event, replacement).await {
        Ok(()) => {
            if let (Disposition::DeadLettered { .. }, Some(job)) = (&disposition, &processed.job) {
                // The money-stuck gauge's tally; best effort (the queue itself is the truth).
                let store = shared.pipeline.store();
                if let Err(e) = store
                    .note_dead_letter(&envelope.job_id, job.amount, job.currency.code())
                    .await
                {
                    debug!(job_id = %envelope.job_id, error = %e, "could not note the dead letter's amount");
                }
            }
            disposition
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
            Disposition::HandedBack {
                why: error.to_string(),
            }
        }
    }
}

/// Decides what becomes of the delivery, without doing anything yet.
fn plan(
    shared: &Shared,
    envelope: &Envelope,
    processed: &Processed,
) -> (Disposition, Option<Replacement>) {
    let topology = &shared.options.topology;
    let now = crate::clock::now_rfc3339();
    let mut headers: Vec<(&'static str, String)> = vec![
        (headers::JOB_ID, envelope.job_id.clone()),
        (
            headers::FIRST_SEEN,
            envelope.first_seen.clone().unwrap_or_else(|| now.clone()),
        ),
        (headers::LAST_SEEN, now),
    ];
    if let Some(date) = processed.date {
        headers.push((headers::DATE, date.to_string()));
    }
    let provider_label =
        |p: &Option<crate::job::ProviderName>| p.map_or(NO_PROVIDER.to_owned(), |p| p.to_string());
    let retry = |queue: String, headers| {
        let replacement = Replacement {
            exchange: String::new(),
            routing_key: queue.clone(),
            headers,
        };
        (Disposition::Retried { queue }, Some(replacement))
    };
    let dead = |class: FailureClass, why: String, mut headers: Vec<(&'static str, String)>| {
        headers.retain(|(k, _)| *k != headers::ERROR);
        headers.push((headers::ERROR, why.clone()));
        headers.push((headers::ERROR_CLASS, class.as_str().to_owned()));
        let replacement = Replacement {
            exchange: topology.dead_exchange(),
            routing_key: String::new(),
            headers,
        };
        (Disposition::DeadLettered { class, why }, Some(replacement))
    };

    match &processed.outcome {
        Outcome::Refunded { .. } | Outcome::Duplicate => (Disposition::Acked, None),
        Outcome::HandBack { why } | Outcome::Suspend { why } => {
            (Disposition::HandedBack { why: why.clone() }, None)
        }
        Outcome::Pending { provider, .. } => {
            let syncs = envelope.syncs + 1;
            headers.push((headers::SYNCS, syncs.to_string()));
            headers.push((headers::PROVIDER, provider.to_string()));
            headers.push((headers::ATTEMPTS, envelope.attempts.to_string()));
            retry(topology.retry_tier(syncs).0, headers)
        }
        Outcome::Retry {
            provider,
            why,
            after,
            counts,
        } => {
            let attempts = envelope.attempts + u32::from(*counts);
            headers.push((headers::PROVIDER, provider_label(provider)));
            headers.push((headers::ATTEMPTS, attempts.to_string()));
            headers.push((headers::ERROR, why.clone()));
            if *counts && attempts >= shared.options.max_attempts {
                let why = format!("gave up after {attempts} attempts; last error: {why}");
                return dead(FailureClass::Exhausted, why, headers);
            }
            let (queue, tier) = if *counts {
                topology.retry_tier(attempts)
            } else {
                topology.retry_tier_at_least(*after)
            };
            let queue = if *after > tier {
                topology.retry_tier_at_least(*after).0
            } else {
                queue
            };
            retry(queue, headers)
        }
        Outcome::DeadLetter {
            class,
            provider,
            why,
        } => {
            headers.push((headers::PROVIDER, provider_label(provider)));
            headers.push((headers::ATTEMPTS, envelope.attempts.to_string()));
            dead(*class, why.clone(), headers)
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
        let from = Republish {
            original: &delivery.properties,
            original_sealed: envelope.seal.is_sealed(),
            body: &delivery.data,
            sealer: outgoing.sealer,
        };
        let properties: BasicProperties =
            envelope::republish_properties(from, &replacement.headers);
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
