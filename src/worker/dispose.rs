//! The one place that turns an [`Outcome`] into broker actions: ack, retry publish or dead
//! letter. The original message is acked only after whatever replaces it was
//! confirmed by the broker, so a crash between the two leaves a duplicate (which the
//! idempotency record absorbs), never a loss.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tracing::{debug, info, warn};

use super::Shared;
use crate::{
    broker::{BrokerError, Envelope, Publisher, envelope, headers},
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

/// Applies an outcome to its delivery.
pub(super) async fn dispose(
    shared: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    envelope: &Envelope,
    processed: &Processed,
) -> Disposition {
    match replace_and_ack(shared, publisher, delivery, envelope, processed).await {
        Ok(disposition) => disposition,
        Err(error) => {
            // The replacement was not confirmed: keep the original. A short pause keeps a
            // broker in trouble from spinning us; the requeued copy is processed again.
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

async fn replace_and_ack(
    shared: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    envelope: &Envelope,
    processed: &Processed,
) -> Result<Disposition, BrokerError> {
    let topology = &shared.options.topology;
    let now = envelope::now_rfc3339();
    let first_seen = envelope.first_seen.clone().unwrap_or_else(|| now.clone());
    let mut set: Vec<(&str, String)> = vec![
        (headers::JOB_ID, envelope.job_id.clone()),
        (headers::FIRST_SEEN, first_seen),
        (headers::LAST_SEEN, now),
    ];
    if let Some(date) = processed.date {
        set.push((headers::DATE, date.to_string()));
    }
    let props = |set: &[(&str, String)]| envelope::republish_properties(&delivery.properties, set);

    let disposition = match &processed.outcome {
        Outcome::Refunded { .. } | Outcome::Duplicate => Disposition::Acked,
        Outcome::HandBack { why } | Outcome::Suspend { why } => {
            // Leave it unacknowledged: the channel closes as the worker stops, and the broker
            // delivers the message again.
            return Ok(Disposition::HandedBack { why: why.clone() });
        }
        Outcome::Pending { provider, .. } => {
            let syncs = envelope.syncs + 1;
            let (queue, _) = topology.retry_tier(syncs);
            set.push((headers::SYNCS, syncs.to_string()));
            set.push((headers::PROVIDER, provider.to_string()));
            set.push((headers::ATTEMPTS, envelope.attempts.to_string()));
            publisher
                .publish("", &queue, &delivery.data, props(&set))
                .await?;
            Disposition::Retried { queue }
        }
        Outcome::Retry {
            provider,
            why,
            after,
            counts,
        } => {
            let attempts = envelope.attempts + u32::from(*counts);
            let provider_label = provider.map_or(NO_PROVIDER.to_owned(), |p| p.to_string());
            set.push((headers::PROVIDER, provider_label));
            set.push((headers::ATTEMPTS, attempts.to_string()));
            set.push((headers::ERROR, why.clone()));
            if *counts && attempts >= shared.options.max_attempts {
                let why = format!("gave up after {attempts} attempts; last error: {why}");
                dead_letter(
                    publisher,
                    topology.dead_exchange(),
                    delivery,
                    set,
                    FailureClass::Exhausted,
                    &why,
                )
                .await?;
                Disposition::DeadLettered {
                    class: FailureClass::Exhausted,
                    why,
                }
            } else {
                let (mut queue, tier) = if *counts {
                    topology.retry_tier(attempts)
                } else {
                    topology.retry_tier_at_least(*after)
                };
                if *after > tier {
                    queue = topology.retry_tier_at_least(*after).0;
                }
                publisher
                    .publish("", &queue, &delivery.data, props(&set))
                    .await?;
                Disposition::Retried { queue }
            }
        }
        Outcome::DeadLetter {
            class,
            provider,
            why,
        } => {
            let provider_label = provider.map_or(NO_PROVIDER.to_owned(), |p| p.to_string());
            set.push((headers::PROVIDER, provider_label));
            set.push((headers::ATTEMPTS, envelope.attempts.to_string()));
            dead_letter(
                publisher,
                topology.dead_exchange(),
                delivery,
                set,
                *class,
                why,
            )
            .await?;
            Disposition::DeadLettered {
                class: *class,
                why: why.clone(),
            }
        }
    };
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The outcome is durable already; the message comes back and dedupes.
        info!(job_id = %envelope.job_id, error = %e, "ack failed after the outcome was recorded; the redelivery will be a no-op");
    }
    Ok(disposition)
}

async fn dead_letter(
    publisher: &Publisher,
    exchange: String,
    delivery: &Delivery,
    mut set: Vec<(&str, String)>,
    class: FailureClass,
    why: &str,
) -> Result<(), BrokerError> {
    set.retain(|(k, _)| *k != headers::ERROR);
    set.push((headers::ERROR, why.to_owned()));
    set.push((headers::ERROR_CLASS, class.as_str().to_owned()));
    let props: BasicProperties = envelope::republish_properties(&delivery.properties, &set);
    publisher
        .publish(&exchange, "", &delivery.data, props)
        .await
}
