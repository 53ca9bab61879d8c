//! Outcome events: one confirmed message per terminal outcome on the `{prefix}.events` topic
//! exchange (and to the job's `reply_to`, when it has one), so the systems that published the
//! jobs learn what became of each one: the broker way of the seeds' per-job result array.
//!
//! Routing keys: `refund.succeeded`; `refund.deduplicated` (an earlier copy already refunded
//! it; `refund_id` names that refund); `refund.failed` (the refund was attempted and failed:
//! classes `permanent`, `exhausted`); `refund.dead_lettered` (parked without a failed refund:
//! `invalid`, `mandate`, `verification`, `delivery_limit`). Retries and pending refunds are not
//! terminal and publish nothing.

use serde::{Deserialize, Serialize};

use super::Envelope;
use crate::{outcome::Outcome, pipeline::Processed, worker::Disposition};

/// Where a job ended, as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Refunded by this delivery (or adopted after an unknown outcome).
    Succeeded,
    /// Already refunded by an earlier copy.
    Deduplicated,
    /// The refund was attempted and failed; the job is in the dead-letter queue.
    Failed,
    /// Parked without a failed refund; the job is in the dead-letter queue.
    DeadLettered,
}

impl EventStatus {
    /// The topic routing key.
    pub fn routing_key(self) -> &'static str {
        match self {
            EventStatus::Succeeded => "refund.succeeded",
            EventStatus::Deduplicated => "refund.deduplicated",
            EventStatus::Failed => "refund.failed",
            EventStatus::DeadLettered => "refund.dead_lettered",
        }
    }

    /// Whether the job's refund exists.
    pub fn is_success(self) -> bool {
        matches!(self, EventStatus::Succeeded | EventStatus::Deduplicated)
    }
}

/// The body of an outcome event (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    /// The job (`message_id` of the published job).
    pub job_id: String,
    /// Where it ended.
    pub status: EventStatus,
    /// The payment, when the job named one.
    pub payment_id: Option<String>,
    /// The rail.
    pub provider: Option<String>,
    /// The provider's refund id (for duplicates: the earlier copy's refund).
    pub refund_id: Option<String>,
    /// Minor units.
    pub amount: Option<u64>,
    /// ISO 4217.
    pub currency: Option<String>,
    /// The dead-letter class, for failures.
    pub class: Option<String>,
    /// The reason, for failures.
    pub error: Option<String>,
    /// Attempts that failed before this outcome.
    pub attempts: u32,
    /// When (RFC 3339).
    pub at: String,
    /// Microseconds from the delivery's arrival at the worker to this outcome (absent in
    /// events from before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
}

impl OutcomeEvent {
    /// The event for a disposed delivery, or `None` when the outcome is not terminal.
    pub fn of(
        envelope: &Envelope,
        processed: &Processed,
        disposition: &Disposition,
        duration: std::time::Duration,
    ) -> Option<Self> {
        let job = processed.job.as_ref();
        let mut event = Self {
            job_id: envelope.job_id.clone(),
            status: EventStatus::Succeeded,
            payment_id: job.and_then(|j| j.payment_id.clone()),
            provider: job.and_then(|j| j.provider).map(|p| p.to_string()),
            refund_id: None,
            amount: job.map(|j| j.amount),
            currency: job.map(|j| j.currency.code().to_owned()),
            class: None,
            error: None,
            attempts: envelope.attempts,
            at: crate::clock::now_rfc3339(),
            duration_us: Some(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)),
        };
        match (&processed.outcome, disposition) {
            (
                Outcome::Refunded {
                    provider,
                    refund_id,
                    amount,
                    ..
                },
                Disposition::Acked,
            ) => {
                event.provider = Some(provider.to_string());
                event.refund_id = Some(refund_id.clone());
                event.amount = Some(*amount);
            }
            (Outcome::Duplicate, Disposition::Acked) => {
                event.status = EventStatus::Deduplicated;
                if let Some(existing) = &processed.existing {
                    event.provider = Some(existing.provider.to_string());
                    event.refund_id = Some(existing.refund.refund_id.clone());
                }
            }
            (_, Disposition::DeadLettered { class, why }) => {
                use crate::outcome::FailureClass::{Exhausted, Permanent};
                event.status = if matches!(class, Permanent | Exhausted) {
                    EventStatus::Failed
                } else {
                    EventStatus::DeadLettered
                };
                event.class = Some(class.as_str().to_owned());
                event.error = Some(why.clone());
            }
            _ => return None,
        }
        Some(event)
    }
}
