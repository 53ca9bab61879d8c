//! The one decision about a delivery's end: [`plan`] reads the pipeline's [`Outcome`] (the
//! only match over it outside the pipeline) with what the delivery carried and the retry
//! policy, and returns the [`JobEnd`] every other part of the worker only views.
//!
//! Pure: no clock, no I/O, no shared worker state, so every money decision here (ack, which
//! retry tier, when the attempts are exhausted, which dead-letter class) is table-tested.

use std::time::Duration;

use crate::{
    broker::{Envelope, Topology},
    ending::{EarlierRefund, Fate, JobEnd, RetryTier},
    outcome::{FailureClass, Outcome},
    pipeline::Processed,
};

/// What the plan needs to know about the delivery, read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The job id.
    pub job_id: String,
    /// Provider attempts that failed before this delivery (`x-refund-attempts`).
    pub attempts: u32,
    /// Status checks made so far on a pending refund (`x-refund-syncs`).
    pub syncs: u32,
}

impl Delivered {
    /// What `envelope` says.
    pub fn of(envelope: &Envelope) -> Self {
        Self {
            job_id: envelope.job_id.clone(),
            attempts: envelope.attempts,
            syncs: envelope.syncs,
        }
    }
}

/// The delayed retry tiers and the attempt limit (`[retry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// One queue per configured delay, in order; never empty.
    tiers: Vec<RetryTier>,
    /// Failed provider attempts after which a job is dead-lettered as `exhausted`.
    max_attempts: u32,
}

impl RetryPolicy {
    /// The tiers `topology` declares, and the attempt limit.
    ///
    /// # Panics
    /// If the topology has no retry delay: the settings refuse that at load, so a worker
    /// never starts without one.
    pub fn new(topology: &Topology, max_attempts: u32) -> Self {
        let tiers: Vec<RetryTier> = topology
            .retry_delays()
            .iter()
            .map(|delay| RetryTier {
                queue: topology.retry_queue(*delay),
                delay: *delay,
            })
            .collect();
        assert!(
            !tiers.is_empty(),
            "[retry] delays needs at least one delay (checked when the settings load)"
        );
        Self {
            tiers,
            max_attempts,
        }
    }

    /// The attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The tier of the `attempt`-th retry (1-based): `delays[attempt-1]`, the last tier
    /// repeating.
    pub fn tier(&self, attempt: u32) -> &RetryTier {
        let index = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
        let last = self.tiers.len() - 1;
        &self.tiers[index.min(last)]
    }

    /// The shortest tier that waits at least `wait` (the longest if none does).
    pub fn tier_at_least(&self, wait: Duration) -> &RetryTier {
        self.tiers
            .iter()
            .filter(|t| t.delay >= wait)
            .min_by_key(|t| t.delay)
            .or_else(|| self.tiers.iter().max_by_key(|t| t.delay))
            .expect("a retry policy has at least one tier")
    }
}

/// Decides how the delivery ends, without doing anything yet.
pub fn plan(processed: &Processed, delivered: &Delivered, policy: &RetryPolicy) -> JobEnd {
    let fate = match &processed.outcome {
        Outcome::Refunded {
            provider,
            refund_id,
            amount,
            adopted,
        } => Fate::Refunded {
            provider: *provider,
            refund_id: refund_id.clone(),
            amount: *amount,
            adopted: *adopted,
        },
        Outcome::Duplicate => Fate::Duplicate {
            earlier: processed.existing.as_ref().map(|record| EarlierRefund {
                provider: record.provider,
                refund_id: record.refund.refund_id.clone(),
            }),
        },
        Outcome::Pending {
            provider,
            refund_id,
        } => {
            let syncs = delivered.syncs + 1;
            Fate::Pending {
                provider: *provider,
                refund_id: refund_id.clone(),
                syncs,
                tier: policy.tier(syncs).clone(),
            }
        }
        Outcome::Retry {
            provider,
            why,
            after,
            counts,
        } => {
            let attempts = delivered.attempts + u32::from(*counts);
            if *counts && attempts >= policy.max_attempts {
                Fate::DeadLetter {
                    class: FailureClass::Exhausted,
                    provider: *provider,
                    why: format!("gave up after {attempts} attempts; last error: {why}"),
                    attempts,
                }
            } else {
                let by_count = if *counts {
                    policy.tier(attempts)
                } else {
                    policy.tier_at_least(*after)
                };
                // Never sooner than the provider (or the lease) asked.
                let tier = if *after > by_count.delay {
                    policy.tier_at_least(*after)
                } else {
                    by_count
                };
                Fate::Retry {
                    provider: *provider,
                    why: why.clone(),
                    tier: tier.clone(),
                    attempts,
                    counted: *counts,
                }
            }
        }
        Outcome::DeadLetter {
            class,
            provider,
            why,
        } => Fate::DeadLetter {
            class: *class,
            provider: *provider,
            why: why.clone(),
            attempts: delivered.attempts,
        },
        Outcome::Suspend { why } | Outcome::HandBack { why } => Fate::HandBack { why: why.clone() },
    };
    JobEnd {
        job_id: delivered.job_id.clone(),
        job: processed.job.clone(),
        date: processed.date,
        prior_attempts: delivered.attempts,
        fate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        job::ProviderName::{self, Stripe},
        providers::{ProviderRefund, RefundStatus},
        store::RefundRecord,
    };

    fn topology() -> Topology {
        let delays = [1, 5, 30, 120, 600].map(Duration::from_secs);
        Topology::new("refunds", &delays, 20)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&topology(), 4)
    }

    fn processed(outcome: Outcome) -> Processed {
        Processed {
            outcome,
            date: None,
            job: None,
            existing: None,
        }
    }

    fn delivered(attempts: u32, syncs: u32) -> Delivered {
        Delivered {
            job_id: "job-1".into(),
            attempts,
            syncs,
        }
    }

    fn retry(counts: bool, after: Duration) -> Outcome {
        Outcome::Retry {
            provider: Some(Stripe),
            why: "stripe answered 503".into(),
            after,
            counts,
        }
    }

    fn queue(end: &JobEnd) -> Option<&str> {
        match &end.fate {
            Fate::Retry { tier, .. } | Fate::Pending { tier, .. } => Some(tier.queue.as_str()),
            Fate::Refunded { .. }
            | Fate::Duplicate { .. }
            | Fate::DeadLetter { .. }
            | Fate::HandBack { .. } => None,
        }
    }

    #[test]
    fn retry_tiers_increase_then_repeat_the_last() {
        let p = policy();
        assert_eq!(p.tier(0).queue, "refunds.retry.1s");
        assert_eq!(p.tier(1).queue, "refunds.retry.1s");
        assert_eq!(p.tier(3).queue, "refunds.retry.30s");
        assert_eq!(p.tier(9).queue, "refunds.retry.10m");
        assert_eq!(
            p.tier_at_least(Duration::from_secs(3)).queue,
            "refunds.retry.5s"
        );
        assert_eq!(
            p.tier_at_least(Duration::from_secs(3600)).queue,
            "refunds.retry.10m"
        );
        assert_eq!(p.tier_at_least(Duration::ZERO).queue, "refunds.retry.1s");
    }

    #[test]
    fn finished_refunds_are_acked_facts_intact() {
        let refunded = Outcome::Refunded {
            provider: Stripe,
            refund_id: "re_1".into(),
            amount: 4990,
            adopted: true,
        };
        let end = plan(&processed(refunded), &delivered(1, 0), &policy());
        assert_eq!(
            end.fate,
            Fate::Refunded {
                provider: Stripe,
                refund_id: "re_1".into(),
                amount: 4990,
                adopted: true
            }
        );
        assert_eq!((end.job_id.as_str(), end.prior_attempts), ("job-1", 1));
    }

    #[test]
    fn a_duplicate_names_the_earlier_refund_when_its_record_does() {
        let mut duplicate = processed(Outcome::Duplicate);
        let bare = plan(&duplicate, &delivered(0, 0), &policy());
        assert_eq!(bare.fate, Fate::Duplicate { earlier: None });
        duplicate.existing = Some(RefundRecord {
            provider: ProviderName::Asaas,
            refund: ProviderRefund {
                refund_id: "pay_r1".into(),
                status: RefundStatus::Succeeded,
                amount: 100,
            },
        });
        let named = plan(&duplicate, &delivered(0, 0), &policy());
        assert_eq!(
            named.fate,
            Fate::Duplicate {
                earlier: Some(EarlierRefund {
                    provider: ProviderName::Asaas,
                    refund_id: "pay_r1".into()
                })
            }
        );
    }

    /// (failed attempts before, counts, the provider's hint, expected fate's queue, attempts
    /// in the copy); the limit is 4.
    #[test]
    fn transient_failures_go_to_the_tier_of_their_attempt() {
        let table: [(u32, bool, u64, &str, u32); 7] = [
            // Counted failures climb the tiers with the attempt count.
            (0, true, 0, "refunds.retry.1s", 1),
            (1, true, 0, "refunds.retry.5s", 2),
            (2, true, 0, "refunds.retry.30s", 3),
            // A provider's Retry-After longer than the tier wins.
            (0, true, 20, "refunds.retry.30s", 1),
            // Waiting for another worker's claim does not count and waits out the lease.
            (3, false, 0, "refunds.retry.1s", 3),
            (3, false, 4, "refunds.retry.5s", 3),
            (0, false, 7200, "refunds.retry.10m", 0),
        ];
        for (before, counts, after, want_queue, want_attempts) in table {
            let outcome = retry(counts, Duration::from_secs(after));
            let end = plan(&processed(outcome), &delivered(before, 0), &policy());
            let case = format!("before={before} counts={counts} after={after}s: {end:?}");
            assert_eq!(queue(&end), Some(want_queue), "{case}");
            let Fate::Retry {
                attempts,
                counted,
                why,
                provider,
                ..
            } = &end.fate
            else {
                panic!("{case}");
            };
            assert_eq!(*attempts, want_attempts, "{case}");
            assert_eq!(*counted, counts, "{case}");
            assert_eq!(why, "stripe answered 503", "{case}");
            assert_eq!(*provider, Some(Stripe), "{case}");
        }
    }

    #[test]
    fn the_attempt_that_reaches_the_limit_is_dead_lettered_as_exhausted() {
        let end = plan(
            &processed(retry(true, Duration::ZERO)),
            &delivered(3, 0),
            &policy(),
        );
        assert_eq!(
            end.fate,
            Fate::DeadLetter {
                class: FailureClass::Exhausted,
                provider: Some(Stripe),
                why: "gave up after 4 attempts; last error: stripe answered 503".into(),
                attempts: 4,
            }
        );
        assert_eq!(end.prior_attempts, 3);
        // Past the limit too (a copy published before the limit was lowered).
        let past = plan(
            &processed(retry(true, Duration::ZERO)),
            &delivered(9, 0),
            &policy(),
        );
        assert!(matches!(
            past.fate,
            Fate::DeadLetter {
                class: FailureClass::Exhausted,
                attempts: 10,
                ..
            }
        ));
        // Waiting on a claim never exhausts, however many attempts came before.
        let waiting = plan(
            &processed(retry(false, Duration::ZERO)),
            &delivered(9, 0),
            &policy(),
        );
        assert!(matches!(waiting.fate, Fate::Retry { attempts: 9, .. }));
    }

    #[test]
    fn a_pending_refund_is_checked_again_from_tier_to_tier() {
        for (syncs, want) in [
            (0, "refunds.retry.1s"),
            (1, "refunds.retry.5s"),
            (8, "refunds.retry.10m"),
        ] {
            let pending = Outcome::Pending {
                provider: Stripe,
                refund_id: "re_p".into(),
            };
            let end = plan(&processed(pending), &delivered(2, syncs), &policy());
            assert_eq!(
                end.fate,
                Fate::Pending {
                    provider: Stripe,
                    refund_id: "re_p".into(),
                    syncs: syncs + 1,
                    tier: policy().tier(syncs + 1).clone(),
                }
            );
            assert_eq!(queue(&end), Some(want));
        }
    }

    #[test]
    fn dead_letters_keep_their_class_and_the_attempts_so_far() {
        for class in FailureClass::ALL {
            let outcome = Outcome::DeadLetter {
                class,
                provider: None,
                why: "because".into(),
            };
            let end = plan(&processed(outcome), &delivered(2, 0), &policy());
            assert_eq!(
                end.fate,
                Fate::DeadLetter {
                    class,
                    provider: None,
                    why: "because".into(),
                    attempts: 2
                },
                "{class:?}"
            );
        }
    }

    #[test]
    fn stopping_and_redis_outages_hand_the_message_back() {
        for outcome in [
            Outcome::HandBack {
                why: "stopping".into(),
            },
            Outcome::Suspend {
                why: "stopping".into(),
            },
        ] {
            let end = plan(&processed(outcome), &delivered(0, 0), &policy());
            assert_eq!(
                end.fate,
                Fate::HandBack {
                    why: "stopping".into()
                }
            );
        }
    }

    #[test]
    fn the_date_and_the_job_facts_travel_with_the_end() {
        let job = crate::job::RefundJob::parse(
            br#"{"payment_id":"pi_1","amount":4990,"provider":"stripe","date":"2026-11-24"}"#,
        )
        .expect("valid");
        let mut p = processed(Outcome::Duplicate);
        p.date = job.date;
        p.job = Some(crate::ending::JobFacts::of(&job));
        let end = plan(&p, &delivered(0, 0), &policy());
        assert_eq!(end.date, job.date);
        assert_eq!(end.job, p.job);
    }
}
