//! The one way a result the provider already produced is written to Redis: "write until Redis
//! takes it", and the one owner of the worker's Redis readiness flag.
//!
//! Once money has moved (or the provider gave its final word), forgetting the result would let
//! a later copy of the job pay again on a provider without idempotency keys. So every write of
//! such a result (the idempotency record's settle, a step recorded after the refund, the
//! order's refund tally, the receipt) goes through [`durably`], and its policy is decided here,
//! once, per [`StoreError`] kind:
//!
//! | The write answered                        | Readiness        | What happens                                                                 |
//! |-------------------------------------------|------------------|------------------------------------------------------------------------------|
//! | `Ok`                                      | up               | the value is returned                                                        |
//! | `Unavailable` / `Unreachable` (an outage) | down, with why   | wait 100 ms, doubling to 5 s, and write again, until it lands                |
//! | the worker stops while waiting            | stays down       | [`Outcome::HandBack`]: the delivery stays unacked, the broker redelivers it, and the redelivery resumes from what is recorded |
//! | `Corrupt` (Redis answered unreadable data) | unchanged       | a permanent dead letter naming the record and the refund already made, for a human to reconcile; never retried (waiting does not fix data) |
//!
//! Invariant: this module never gives up on an outage; the only ways out without the write
//! are the worker stopping (hand back) and unreadable data (dead letter naming the refund).

use std::{future::Future, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    job::ProviderName,
    metrics::Health,
    outcome::{FailureClass, Outcome},
    store::StoreError,
};

/// The first wait after a failed durable write.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a durable write.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// The one writer of the worker's Redis readiness flag (what `/readyz` reports as
/// "Redis unavailable"). Everything else that learns whether Redis takes writes tells it here.
#[derive(Debug, Clone)]
pub struct RedisReadiness {
    /// The worker's health flags; only the `redis` one is written through this type.
    health: Arc<Health>,
}

impl RedisReadiness {
    /// The Redis readiness of the worker whose flags are `health`.
    pub fn new(health: Arc<Health>) -> Self {
        Self { health }
    }

    /// Redis took a write: ready (as far as Redis goes).
    pub fn up(&self) {
        Health::set(&self.health.redis, true);
    }

    /// Redis cannot take writes, for `why`: not ready until [`RedisReadiness::up`].
    pub fn down(&self, why: &str) {
        if self.is_up() {
            warn!(why, "Redis readiness down");
        }
        Health::set(&self.health.redis, false);
    }

    /// Whether the flag says Redis is up.
    pub fn is_up(&self) -> bool {
        self.health.redis.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What a durable write is about, for its logs, its dead letter and its hand-back reason.
#[derive(Debug, Clone, Copy)]
pub struct DurableWrite<'a> {
    /// What is written, e.g. "the result", "the receipt", "the `notified` step".
    pub what: &'a str,
    /// The record it is written to (the job's idempotency key).
    pub record: &'a str,
    /// The refund the provider already made, when there is one: a dead letter names it so
    /// operations can reconcile.
    pub refund_id: Option<&'a str>,
    /// The rail, for the dead letter.
    pub provider: Option<ProviderName>,
}

/// The delays between tries of a durable write: 100 ms doubling to 5 s, without end.
fn waits() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_WAIT)
        .with_max_delay(MAX_WAIT)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Runs `write` until Redis takes it (see the module doc for the policy per error kind).
/// `Err` is how the attempt ends instead: [`Outcome::HandBack`] or a permanent dead letter.
pub async fn durably<T, F, Fut>(
    about: DurableWrite<'_>,
    readiness: &RedisReadiness,
    shutdown: &CancellationToken,
    mut write: F,
) -> Result<T, Outcome>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let DurableWrite {
        what,
        record,
        refund_id,
        provider,
    } = about;
    let mut waits = waits();
    loop {
        let error = match write().await {
            Ok(value) => {
                readiness.up();
                return Ok(value);
            }
            Err(error) => error,
        };
        match error {
            StoreError::Corrupt(why) => {
                let made = refund_id.map_or_else(
                    || "no refund id is recorded yet".to_owned(),
                    |id| format!("refund {id} was already made"),
                );
                return Err(Outcome::DeadLetter {
                    class: FailureClass::Permanent,
                    provider,
                    why: format!(
                        "cannot record {what} in record {record} ({made}): unexpected data in Redis: {why}; \
                         reconcile the record with the provider before replaying"
                    ),
                });
            }
            outage @ (StoreError::Unavailable(_) | StoreError::Unreachable { .. }) => {
                let why = outage.to_string();
                readiness.down(&why);
                // The iterator never ends (no max times); MAX_WAIT is only a fallback.
                let wait = waits.next().unwrap_or(MAX_WAIT);
                warn!(record, error = %why, retry_in = ?wait, "holding {what} until Redis takes it");
                tokio::select! {
                    () = shutdown.cancelled() => {
                        return Err(Outcome::HandBack {
                            why: format!("stopping before {what} of {record} was recorded: {why}"),
                        });
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use tokio::time::Instant;

    use super::*;

    /// A fake write that answers a scripted sequence of results and records when it was called.
    struct Script {
        answers: Mutex<VecDeque<Result<u32, StoreError>>>,
        calls: Mutex<Vec<Instant>>,
    }

    impl Script {
        fn new(answers: Vec<Result<u32, StoreError>>) -> Self {
            Self {
                answers: Mutex::new(answers.into()),
                calls: Mutex::new(Vec::new()),
            }
        }

        async fn write(&self) -> Result<u32, StoreError> {
            self.calls.lock().unwrap().push(Instant::now());
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(StoreError::Unavailable("script exhausted".into())))
        }

        /// The gaps between consecutive calls.
        fn gaps(&self) -> Vec<Duration> {
            let calls = self.calls.lock().unwrap();
            calls.windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    /// The gaps are the scripted waits, in virtual milliseconds (the paused clock's timer
    /// wheel may round a deadline up by one tick).
    fn assert_waits(gaps: &[Duration], expected_ms: &[u64]) {
        let got: Vec<u64> = gaps.iter().map(|g| g.as_millis() as u64).collect();
        let close = got.len() == expected_ms.len()
            && got
                .iter()
                .zip(expected_ms)
                .all(|(g, e)| *g == *e || *g == e + 1);
        assert!(close, "waits {got:?} ms, expected {expected_ms:?} ms");
    }

    fn about() -> DurableWrite<'static> {
        DurableWrite {
            what: "the result",
            record: "refund:stripe:pay_1:2026-12-05",
            refund_id: Some("re_123"),
            provider: Some(ProviderName::Stripe),
        }
    }

    fn outage() -> Result<u32, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }

    fn readiness(up: bool) -> RedisReadiness {
        let readiness = RedisReadiness::new(Arc::new(Health::default()));
        if up {
            readiness.up();
        }
        readiness
    }

    #[tokio::test(start_paused = true)]
    async fn success_first_time_marks_redis_ready_without_waiting() {
        let script = Script::new(vec![Ok(7)]);
        let ready = readiness(false);
        let started = Instant::now();
        let value = durably(about(), &ready, &CancellationToken::new(), || {
            script.write()
        })
        .await;
        assert_eq!(value, Ok(7));
        assert!(ready.is_up());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(script.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn outage_is_retried_with_doubling_backoff_until_redis_takes_the_write() {
        let script = Script::new(vec![outage(), outage(), outage(), outage(), Ok(1)]);
        let ready = readiness(true);
        let shutdown = CancellationToken::new();
        let ready_during = ready.clone();
        // Sample readiness while the write is still being held.
        let probe = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ready_during.is_up()
        });
        let value = durably(about(), &ready, &shutdown, || script.write()).await;
        assert_eq!(value, Ok(1));
        assert!(!probe.await.unwrap(), "readiness is down during the outage");
        assert!(ready.is_up(), "readiness is up once the write lands");
        assert_waits(&script.gaps(), &[100, 200, 400, 800]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_stops_doubling_at_five_seconds() {
        let mut answers: Vec<_> = (0..9).map(|_| outage()).collect();
        answers.push(Ok(0));
        let script = Script::new(answers);
        let ready = readiness(true);
        durably(about(), &ready, &CancellationToken::new(), || {
            script.write()
        })
        .await
        .unwrap();
        assert_waits(
            &script.gaps(),
            &[100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000],
        );
    }

    #[tokio::test(start_paused = true)]
    async fn corrupt_data_is_dead_lettered_naming_the_record_and_the_refund_without_retry() {
        let script = Script::new(vec![Err(StoreError::Corrupt("WRONGTYPE".into())), Ok(1)]);
        let ready = readiness(true);
        let ended = durably(about(), &ready, &CancellationToken::new(), || {
            script.write()
        })
        .await;
        let Err(Outcome::DeadLetter {
            class,
            provider,
            why,
        }) = ended
        else {
            panic!("expected a dead letter, got {ended:?}");
        };
        assert_eq!(class, FailureClass::Permanent);
        assert_eq!(provider, Some(ProviderName::Stripe));
        assert!(why.contains("refund:stripe:pay_1:2026-12-05"), "{why}");
        assert!(why.contains("re_123"), "{why}");
        assert!(why.contains("WRONGTYPE"), "{why}");
        assert_eq!(script.calls.lock().unwrap().len(), 1, "not retried");
        assert!(ready.is_up(), "unreadable data is not an outage");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_an_outage_hands_the_delivery_back() {
        let script = Script::new(Vec::new());
        let ready = readiness(true);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.cancel();
        });
        let ended = durably(about(), &ready, &shutdown, || script.write()).await;
        let Err(Outcome::HandBack { why }) = ended else {
            panic!("expected a hand-back, got {ended:?}");
        };
        assert!(why.contains("refund:stripe:pay_1:2026-12-05"), "{why}");
        assert!(!ready.is_up(), "Redis was still down");
        // 100 + 200 + 400 + 800 ms of waits, then the stop came during the 1.6 s one.
        assert_eq!(script.calls.lock().unwrap().len(), 5);
    }
}
