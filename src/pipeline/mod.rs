//! The refund flow for one delivery: parse, key, claim, refund (or reconcile, or sync), record.
//!
//! No AMQP types in here: the worker hands in the body and its [`Envelope`] and gets back an
//! [`Outcome`]. Invariant: **no provider is ever called without a held idempotency claim**,
//! and the same idempotency key goes to the provider on every attempt of a job.

mod durable;
mod fingerprint;
pub(crate) mod gate;
mod governed;
mod local_claims;
mod refund;

pub use durable::{DurableWrite, RedisReadiness, durably};
pub use fingerprint::Fingerprint;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    broker::Envelope,
    governance::MandatePolicy,
    job::{JobDate, RefundJob, check_media},
    metrics::{Health, Metrics},
    outcome::{FailureClass, Outcome},
    providers::{Providers, RefundRequest},
    services::Services,
    store::{IdempotencyStore, ReceiptChain, RefundRecord, StoreError},
};

/// Everything one attempt at a job needs to know about its delivery.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The message body, as published.
    pub body: &'a [u8],
    /// Its headers and properties.
    pub envelope: &'a Envelope,
    /// This delivery's owner token: stable while the worker re-runs it after a Redis outage,
    /// so its own claim is recognised.
    pub owner: &'a str,
    /// Cancelled when the worker stops.
    pub shutdown: &'a CancellationToken,
}

/// What processing a delivery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// How it ended.
    pub outcome: Outcome,
    /// The day the job is keyed under, once known; it travels in `x-refund-date` on every
    /// republish so the idempotency key never changes.
    pub date: Option<JobDate>,
    /// What the job asked for, once it parsed (for events and metrics).
    pub job: Option<JobFacts>,
    /// For a duplicate: the refund an earlier copy made.
    pub existing: Option<RefundRecord>,
}

pub use crate::ending::JobFacts;

/// A step's value with when it finished (the receipt lists every step's time).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Recorded<T> {
    at: String,
    #[serde(flatten)]
    value: T,
}

/// The refund flow, over the idempotency store and the provider connectors.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The idempotency records (and each job's steps).
    store: IdempotencyStore,
    /// The connectors.
    providers: Providers,
    /// The ERP, invoicing and WhatsApp.
    services: Services,
    /// Spend mandates.
    mandates: MandatePolicy,
    /// The sealed receipt chain.
    receipts: ReceiptChain,
    /// Step timings, mandate denials.
    metrics: Metrics,
    /// Redis readiness, lowered while a result waits to be recorded (its one writer).
    readiness: RedisReadiness,
    /// In-process retries and the poison limit.
    options: PipelineOptions,
    /// The claims this process holds right now.
    local: local_claims::LocalClaims,
}

/// Everything a pipeline is built from.
#[derive(Debug, Clone)]
pub struct PipelineParts {
    /// The idempotency records.
    pub store: IdempotencyStore,
    /// The connectors.
    pub providers: Providers,
    /// The ERP, invoicing and WhatsApp.
    pub services: Services,
    /// Spend mandates.
    pub mandates: MandatePolicy,
    /// The sealed receipt chain.
    pub receipts: ReceiptChain,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness.
    pub health: Arc<Health>,
    /// Retries and the poison limit.
    pub options: PipelineOptions,
}

/// How the pipeline retries and when it gives up on a job that kills its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// In-process retries of one attempt.
    pub retry: InProcessRetry,
    /// Claims taken over from dead workers before the job is dead-lettered as
    /// `delivery_limit` (0: never).
    pub max_takeovers: u32,
    /// The largest body parsed; a larger one is dead-lettered as `invalid`.
    pub max_body_bytes: usize,
    /// How long a claim must still last when a refund is sent: the provider call's bound
    /// (`[providers] timeout`, which the guard enforces over all of a call's requests) and a
    /// margin for the clocks. Checked once the guard's waits are over, right before the send.
    pub send_lease: std::time::Duration,
}

/// What a claim must last beyond a provider call's timeout when the call is sent: Redis
/// counts the lease from when it ran the script, the worker from before it asked.
const SEND_LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

impl PipelineOptions {
    /// From the settings: `[retry]`, `[worker] delivery_limit` for takeovers and
    /// `[worker] max_body_bytes`.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            retry: InProcessRetry::from_settings(&settings.retry),
            max_takeovers: settings.worker.delivery_limit,
            max_body_bytes: settings.worker.max_body_bytes,
            send_lease: settings.providers.timeout + SEND_LEASE_MARGIN,
        }
    }
}

/// How one attempt retries transient failures before handing the job to a retry tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProcessRetry {
    /// Retries after the first call.
    pub times: u32,
    /// The first backoff; it doubles, with jitter, up to `max_delay`.
    pub first_delay: std::time::Duration,
    /// The longest backoff; a provider asking for more goes to the retry tiers instead.
    pub max_delay: std::time::Duration,
}

impl InProcessRetry {
    /// From the `[retry]` settings.
    pub fn from_settings(retry: &crate::config::RetrySettings) -> Self {
        Self {
            times: retry.in_process,
            first_delay: retry.in_process_delay,
            max_delay: std::time::Duration::from_secs(2),
        }
    }
}

impl Pipeline {
    /// A pipeline over these parts.
    pub fn new(parts: PipelineParts) -> Self {
        Self {
            store: parts.store,
            providers: parts.providers,
            services: parts.services,
            mandates: parts.mandates,
            receipts: parts.receipts,
            metrics: parts.metrics,
            readiness: RedisReadiness::new(parts.health),
            options: parts.options,
            local: local_claims::LocalClaims::default(),
        }
    }

    /// The idempotency records this pipeline uses.
    pub fn store(&self) -> &IdempotencyStore {
        &self.store
    }

    /// The one writer of the worker's Redis readiness flag.
    pub fn redis_readiness(&self) -> &RedisReadiness {
        &self.readiness
    }

    /// Processes one delivery of one job to its outcome.
    pub async fn process(&self, attempt: Attempt<'_>) -> Processed {
        let envelope = attempt.envelope;
        let parsed = check_media(
            envelope.content_type.as_deref(),
            envelope.content_encoding.as_deref(),
        )
        .and_then(|()| RefundJob::parse_within(attempt.body, self.options.max_body_bytes));
        let job = match parsed {
            Ok(job) => job,
            Err(error) => {
                let outcome = Outcome::DeadLetter {
                    class: FailureClass::Invalid,
                    provider: None,
                    why: error.to_string(),
                };
                return Processed {
                    outcome,
                    date: attempt.envelope.keyed_date,
                    job: None,
                    existing: None,
                };
            }
        };
        let facts = Some(JobFacts::of(&job));
        // The first key wins (SPEC §3a): a date in the body is the job's own; otherwise the day
        // pinned at first sight to its message id and its body, which no later copy changes.
        let date = match job.date {
            Some(date) => date,
            None => {
                let first_sight = envelope
                    .keyed_date
                    .or_else(|| envelope.timestamp.and_then(JobDate::from_unix))
                    .unwrap_or_else(JobDate::today);
                let pinned = self
                    .store
                    .pin_job_date(
                        envelope.message_id.as_deref(),
                        &crate::broker::envelope::body_id(attempt.body),
                        first_sight,
                    )
                    .await;
                match pinned {
                    Ok(date) => date,
                    Err(e) => {
                        return Processed {
                            outcome: store_failure(e, job.provider),
                            date: None,
                            job: facts,
                            existing: None,
                        };
                    }
                }
            }
        };
        tracing::Span::current().record("key", job.idempotency_key(date).as_str());
        let (outcome, existing) = self.process_job(&job, date, attempt).await;
        Processed {
            outcome,
            date: Some(date),
            job: facts,
            existing,
        }
    }

    async fn process_job(
        &self,
        job: &RefundJob,
        date: JobDate,
        attempt: Attempt<'_>,
    ) -> (Outcome, Option<RefundRecord>) {
        if job.is_governed() {
            return governed::run(self, job, job.idempotency_key(date), attempt).await;
        }
        // A bulk job always names both (RefundJob::from_object checks it); said, not assumed.
        let (Some(provider_name), Some(payment_id)) = (job.provider, job.payment_id.clone()) else {
            let outcome = Outcome::DeadLetter {
                class: FailureClass::Invalid,
                provider: job.provider,
                why: "a job without order_id needs both provider and payment_id".into(),
            };
            return (outcome, None);
        };
        let Some(provider) = self.providers.get(provider_name).cloned() else {
            let outcome = Outcome::DeadLetter {
                class: FailureClass::Permanent,
                provider: Some(provider_name),
                why: format!("no {provider_name} connector is configured on this worker"),
            };
            return (outcome, None);
        };
        let request = RefundRequest {
            key: job.idempotency_key(date),
            payment_id,
            amount: job.amount,
            currency: job.currency,
            reason: job.reason,
            description: job.description.clone(),
            job_id: attempt.envelope.job_id.clone(),
        };
        refund::run(self, provider.as_ref(), job, &request, attempt).await
    }
}

/// What a failed Redis call before any provider call means for the job: wait for Redis, or
/// (if Redis answered something unusable) park the job for a human.
fn store_failure(error: StoreError, provider: Option<crate::job::ProviderName>) -> Outcome {
    match error {
        StoreError::Corrupt(why) => Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider,
            why: format!("unexpected data in Redis: {why}"),
        },
        outage => Outcome::Suspend {
            why: outage.to_string(),
        },
    }
}
