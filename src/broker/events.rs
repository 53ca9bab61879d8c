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

use crate::{
    ending::{Fate, JobEnd},
    outcome::FailureClass,
};

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
    /// The event for a job that ends so, or `None` when the end is not terminal (retries,
    /// pending refunds, messages handed back). `duration` runs from the delivery's arrival.
    pub fn of(end: &JobEnd, duration: std::time::Duration) -> Option<Self> {
        let job = end.job.as_ref();
        let mut event = Self {
            job_id: end.job_id.clone(),
            status: EventStatus::Succeeded,
            payment_id: job.and_then(|j| j.payment_id.clone()),
            provider: job.and_then(|j| j.provider).map(|p| p.to_string()),
            refund_id: None,
            amount: job.map(|j| j.amount),
            currency: job.map(|j| j.currency.code().to_owned()),
            class: None,
            error: None,
            attempts: end.prior_attempts,
            at: crate::clock::now_rfc3339(),
            duration_us: Some(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)),
        };
        match &end.fate {
            Fate::Refunded {
                provider,
                refund_id,
                amount,
                adopted: _,
            } => {
                event.provider = Some(provider.to_string());
                event.refund_id = Some(refund_id.clone());
                event.amount = Some(*amount);
            }
            Fate::Duplicate { earlier } => {
                event.status = EventStatus::Deduplicated;
                if let Some(earlier) = earlier {
                    event.provider = Some(earlier.provider.to_string());
                    event.refund_id = Some(earlier.refund_id.clone());
                }
            }
            Fate::DeadLetter { class, why, .. } => {
                event.status = status_of(*class);
                event.class = Some(class.as_str().to_owned());
                event.error = Some(why.clone());
            }
            Fate::Pending { .. } | Fate::Retry { .. } | Fate::HandBack { .. } => return None,
        }
        Some(event)
    }
}

/// A dead letter's event status: `failed` when a refund was attempted and failed,
/// `dead_lettered` when the job was parked without one.
fn status_of(class: FailureClass) -> EventStatus {
    match class {
        FailureClass::Permanent | FailureClass::Exhausted => EventStatus::Failed,
        FailureClass::Invalid
        | FailureClass::Mandate
        | FailureClass::Verification
        | FailureClass::DeliveryLimit => EventStatus::DeadLettered,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        ending::{EarlierRefund, JobFacts, RetryTier},
        job::{ProviderName, RefundJob},
    };

    fn end(fate: Fate) -> JobEnd {
        let job = RefundJob::parse(
            br#"{"payment_id":"pi_1","amount":4990,"provider":"stripe","date":"2026-11-24"}"#,
        )
        .expect("valid");
        JobEnd {
            job_id: "job-1".into(),
            job: Some(JobFacts::of(&job)),
            date: job.date,
            prior_attempts: 3,
            fate,
        }
    }

    fn dead(class: FailureClass) -> Fate {
        Fate::DeadLetter {
            class,
            provider: None,
            why: "why".into(),
            attempts: 3,
        }
    }

    #[test]
    fn terminal_ends_publish_their_status_and_the_others_nothing() {
        let tier = RetryTier {
            queue: "refunds.retry.1s".into(),
            delay: Duration::from_secs(1),
        };
        let table = [
            (
                Fate::Refunded {
                    provider: ProviderName::Stripe,
                    refund_id: "re_1".into(),
                    amount: 4990,
                    adopted: true,
                },
                Some("refund.succeeded"),
            ),
            (
                Fate::Duplicate { earlier: None },
                Some("refund.deduplicated"),
            ),
            (dead(FailureClass::Permanent), Some("refund.failed")),
            (dead(FailureClass::Exhausted), Some("refund.failed")),
            (dead(FailureClass::Invalid), Some("refund.dead_lettered")),
            (dead(FailureClass::Mandate), Some("refund.dead_lettered")),
            (
                dead(FailureClass::Verification),
                Some("refund.dead_lettered"),
            ),
            (
                dead(FailureClass::DeliveryLimit),
                Some("refund.dead_lettered"),
            ),
            (
                Fate::Pending {
                    provider: ProviderName::Stripe,
                    refund_id: "re_p".into(),
                    syncs: 1,
                    tier: tier.clone(),
                },
                None,
            ),
            (
                Fate::Retry {
                    provider: None,
                    why: "503".into(),
                    tier,
                    attempts: 1,
                    counted: true,
                },
                None,
            ),
            (Fate::HandBack { why: "stop".into() }, None),
        ];
        for (fate, key) in table {
            let event = OutcomeEvent::of(&end(fate.clone()), Duration::from_micros(7));
            assert_eq!(event.map(|e| e.status.routing_key()), key, "{fate:?}");
        }
    }

    #[test]
    fn a_success_reports_the_refund_and_the_job() {
        let event = OutcomeEvent::of(
            &end(Fate::Refunded {
                provider: ProviderName::Stripe,
                refund_id: "re_1".into(),
                amount: 4990,
                adopted: false,
            }),
            Duration::from_micros(1_234),
        )
        .expect("terminal");
        assert_eq!(event.job_id, "job-1");
        assert!(event.status.is_success());
        assert_eq!(event.payment_id.as_deref(), Some("pi_1"));
        assert_eq!(event.provider.as_deref(), Some("stripe"));
        assert_eq!(event.refund_id.as_deref(), Some("re_1"));
        assert_eq!(
            (event.amount, event.currency.as_deref()),
            (Some(4990), Some("BRL"))
        );
        assert_eq!((event.class, event.error), (None, None));
        assert_eq!((event.attempts, event.duration_us), (3, Some(1_234)));
    }

    #[test]
    fn a_duplicate_names_the_earlier_copys_refund() {
        let earlier = EarlierRefund {
            provider: ProviderName::Asaas,
            refund_id: "pay_r1".into(),
        };
        let event = OutcomeEvent::of(
            &end(Fate::Duplicate {
                earlier: Some(earlier),
            }),
            Duration::ZERO,
        )
        .expect("terminal");
        assert_eq!(event.status, EventStatus::Deduplicated);
        assert_eq!(event.provider.as_deref(), Some("asaas"));
        assert_eq!(event.refund_id.as_deref(), Some("pay_r1"));
    }

    #[test]
    fn a_dead_letter_carries_its_class_and_reason() {
        let event =
            OutcomeEvent::of(&end(dead(FailureClass::Mandate)), Duration::ZERO).expect("terminal");
        assert!(!event.status.is_success());
        assert_eq!(event.class.as_deref(), Some("mandate"));
        assert_eq!(event.error.as_deref(), Some("why"));
        assert_eq!(event.refund_id, None);
    }
}
