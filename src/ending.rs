//! How one delivery of one job ends, as one value: a [`JobEnd`]. The worker's plan
//! (`worker::plan`) is the only code that reads the pipeline's `Outcome` to decide it; the
//! disposition, the metrics, the log line, the outcome event and the broker action are views
//! of a `JobEnd`, each an exhaustive match over [`Fate`] with no catch-all, so a new way for
//! a job to end is a compile error in every view at once and nowhere else.
//!
//! Pure data: no I/O, and nothing of the worker or the broker (both depend on this module,
//! never the other way round).

use std::time::Duration;

use crate::{
    job::{Currency, JobDate, ProviderName, RefundJob},
    outcome::FailureClass,
};

/// How a delivery ends, and the facts every view of that end reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// The job id (stable across retries).
    pub job_id: String,
    /// What the job asked for, once it parsed.
    pub job: Option<JobFacts>,
    /// The day the job is keyed under, once known; every republished copy carries it so the
    /// idempotency key never changes.
    pub date: Option<JobDate>,
    /// Provider attempts that had failed before this delivery (`x-refund-attempts` as
    /// delivered).
    pub prior_attempts: u32,
    /// Where it goes.
    pub fate: Fate,
}

impl JobEnd {
    /// The same end, except that the message was handed back to the broker (its planned
    /// publish or ack could not be carried out): nothing was acknowledged, so nothing is
    /// counted as finished.
    pub fn handed_back(self, why: String) -> Self {
        Self {
            fate: Fate::HandBack { why },
            ..self
        }
    }
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The refund exists (made now, or found at the provider after an unknown outcome): ack.
    Refunded {
        /// The rail.
        provider: ProviderName,
        /// The provider's refund id.
        refund_id: String,
        /// Minor units refunded.
        amount: u64,
        /// Found at the provider rather than created by this attempt.
        adopted: bool,
    },
    /// An earlier copy already refunded the job; nothing was done: ack.
    Duplicate {
        /// That earlier copy's refund, when its record says.
        earlier: Option<EarlierRefund>,
    },
    /// Accepted by the provider but not settled: through a retry tier, to check its status.
    Pending {
        /// The rail.
        provider: ProviderName,
        /// The provider's refund id.
        refund_id: String,
        /// Status checks made, counting the next one (`x-refund-syncs` of the copy).
        syncs: u32,
        /// The retry tier the copy waits in.
        tier: RetryTier,
    },
    /// Not now: through a retry tier, to run again.
    Retry {
        /// The rail, when known.
        provider: Option<ProviderName>,
        /// Why (`x-refund-error`).
        why: String,
        /// The retry tier the copy waits in.
        tier: RetryTier,
        /// Failed provider attempts, counting this one if it counted (`x-refund-attempts` of
        /// the copy).
        attempts: u32,
        /// Whether this delivery's provider attempt failed (rather than waiting for another
        /// worker's claim).
        counted: bool,
    },
    /// Parked in the dead-letter queue for a human (class `exhausted` when transient failures
    /// outlasted the attempt limit).
    DeadLetter {
        /// The class (`x-refund-error-class`).
        class: FailureClass,
        /// The rail, when known.
        provider: Option<ProviderName>,
        /// A reason an operator understands (`x-refund-error`).
        why: String,
        /// Failed provider attempts (`x-refund-attempts` of the dead letter).
        attempts: u32,
    },
    /// Left unacknowledged (or requeued): the broker delivers it again.
    HandBack {
        /// Why.
        why: String,
    },
}

/// One retry queue: where a copy waits, and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    /// The queue (`{prefix}.retry.{delay}`).
    pub queue: String,
    /// Its message TTL.
    pub delay: Duration,
}

/// The refund an earlier copy of a duplicate job made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierRefund {
    /// The rail it ran on.
    pub provider: ProviderName,
    /// The provider's refund id.
    pub refund_id: String,
}

/// The facts of a parsed job that outcome events and metrics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    /// The payment, when the job names one.
    pub payment_id: Option<String>,
    /// The order, for governed jobs.
    pub order_id: Option<String>,
    /// The rail, when the job names one.
    pub provider: Option<ProviderName>,
    /// Minor units asked for.
    pub amount: u64,
    /// Its currency.
    pub currency: Currency,
}

impl JobFacts {
    /// The facts of `job`.
    pub fn of(job: &RefundJob) -> Self {
        Self {
            payment_id: job.payment_id.as_ref().map(|p| p.to_string()),
            order_id: job.order_id.as_ref().map(|o| o.to_string()),
            provider: job.provider,
            amount: job.amount.minor(),
            currency: job.currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(fate: Fate) -> JobEnd {
        JobEnd {
            job_id: "job-1".into(),
            job: None,
            date: None,
            prior_attempts: 2,
            fate,
        }
    }

    #[test]
    fn handing_back_keeps_the_facts_and_replaces_only_the_fate() {
        let refunded = end(Fate::Refunded {
            provider: ProviderName::Stripe,
            refund_id: "re_1".into(),
            amount: 100,
            adopted: false,
        });
        let back = refunded.clone().handed_back("publish not confirmed".into());
        assert_eq!(
            back.fate,
            Fate::HandBack {
                why: "publish not confirmed".into()
            }
        );
        assert_eq!(
            (back.job_id, back.job, back.date, back.prior_attempts),
            (
                refunded.job_id,
                refunded.job,
                refunded.date,
                refunded.prior_attempts
            )
        );
    }

    #[test]
    fn job_facts_report_what_the_job_asked_for() {
        let job = RefundJob::parse(
            br#"{"payment_id":"pi_1","amount":4990,"provider":"stripe","date":"2026-11-24"}"#,
        )
        .expect("valid");
        let facts = JobFacts::of(&job);
        assert_eq!(facts.payment_id.as_deref(), Some("pi_1"));
        assert_eq!(facts.provider, Some(ProviderName::Stripe));
        assert_eq!(facts.amount, 4990);
        assert_eq!(facts.currency.code(), "BRL");
        assert_eq!(facts.order_id, None);
    }
}
