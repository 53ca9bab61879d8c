//! Per-provider protection around a connector: a cap on calls in flight, a client-side rate
//! limit, the provider's own "come back later" (429 with `Retry-After` or rate-limit headers),
//! a circuit breaker, and the ops pause ([`super::pause`]). A call the guard refuses never reaches the provider: it fails fast
//! with [`ProviderError::Skipped`], which costs the job no attempt and the provider nothing,
//! and leaves the worker free for the other providers.
//!
//! Circuit: `failures` consecutive calls that failed for the provider's sake (5xx, timeouts,
//! connection errors) open it for `open_for`; then one probe call is let through (half-open);
//! its success closes the circuit, its failure opens it again. Answers of any kind (a refund,
//! a refusal, a 4xx) count as the provider being up.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::{sync::Semaphore, time::Instant};

use super::{
    BeforeSend, ProviderError, ProviderRefund, RefundProvider, RefundRequest,
    pause::{PAUSED_RETRY, PauseBoard},
};
use crate::job::ProviderName;

/// How long a call may wait for a free slot before it is skipped instead.
const MAX_SLOT_WAIT: Duration = Duration::from_secs(5);

/// A guard's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls in flight at once (0 = no limit).
    pub concurrency: usize,
    /// Calls per second (0 = no limit).
    pub rate_limit: u32,
    /// How long a call may wait in-process for a token of the rate limit; a call whose token
    /// is further away goes to a retry tier instead.
    pub max_rate_wait: Duration,
    /// Consecutive failures that open the circuit (0 = never).
    pub circuit_failures: u32,
    /// How long the circuit stays open before a probe.
    pub circuit_open_for: Duration,
    /// The longest a call may take once sent, all its requests together (a token fetch and
    /// the refund); past it the outcome is unknown. Zero: no bound beyond the HTTP client's.
    pub call_timeout: Duration,
}

/// A connector behind its guard. Implements [`RefundProvider`] itself, so the pipeline cannot
/// reach a provider around it.
#[derive(Debug)]
pub struct Guarded {
    /// The connector.
    inner: Arc<dyn RefundProvider>,
    /// What the guard enforces.
    limits: Limits,
    /// Calls in flight, when capped.
    slots: Option<Arc<Semaphore>>,
    /// Breaker, rate limit and back-off state, behind one short-held lock.
    state: Mutex<State>,
    /// `refunds_provider_circuit_open{provider}`.
    circuit_gauge: IntGauge,
    /// The ops pauses: a paused provider is refused like an open circuit.
    pauses: Option<Arc<PauseBoard>>,
    /// `refunds_throttled_total{provider}` and `refunds_throttle_wait_seconds{provider}`.
    throttle: Option<(IntCounter, Histogram)>,
}

#[derive(Debug)]
struct State {
    bucket: Option<TokenBucket>,
    /// The provider asked us to wait until then (429).
    blocked_until: Option<Instant>,
    /// Consecutive failed calls.
    failures: u32,
    /// Open until then; `Some` with a past instant means half-open.
    open_until: Option<Instant>,
    /// A half-open probe is in flight.
    probing: bool,
}

/// What one call did to the provider's health.
enum Verdict {
    /// The provider answered.
    Up,
    /// The provider asked for a pause; it is up.
    Backoff(Duration),
    /// The call failed for the provider's sake.
    Failed,
    /// The guard itself skipped the call.
    Skipped,
}

impl Guarded {
    /// Guards `inner` with `limits`, reporting the circuit on `circuit_gauge`.
    pub fn new(inner: Arc<dyn RefundProvider>, limits: Limits, circuit_gauge: IntGauge) -> Self {
        circuit_gauge.set(0);
        Self {
            inner,
            limits,
            slots: (limits.concurrency > 0).then(|| Arc::new(Semaphore::new(limits.concurrency))),
            state: Mutex::new(State {
                bucket: (limits.rate_limit > 0).then(|| TokenBucket::new(limits.rate_limit)),
                blocked_until: None,
                failures: 0,
                open_until: None,
                probing: false,
            }),
            circuit_gauge,
            pauses: None,
            throttle: None,
        }
    }

    /// Counts the calls the rate limit held, and how long, in these metrics.
    pub fn throttle_metrics(mut self, throttled: IntCounter, waits: Histogram) -> Self {
        self.throttle = Some((throttled, waits));
        self
    }

    /// Honours the pauses on `board`.
    pub fn paused_by(mut self, board: Arc<PauseBoard>) -> Self {
        self.pauses = Some(board);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn skip(&self, why: String, retry_after: Duration) -> ProviderError {
        ProviderError::Skipped {
            why: format!("{}: {why}", self.inner.name()),
            retry_after: Some(retry_after),
        }
    }

    /// Admits a call or says how long to stay away. The call admitted while the circuit is
    /// half-open is its probe: the returned [`Probe`] gives the turn back if the call ends
    /// without a verdict (cancelled), so the circuit can never stay half-open for good.
    fn admit(&self) -> Result<Probe<'_>, ProviderError> {
        if let Some(why) = self.pauses.as_ref().and_then(|b| b.why(self.inner.name())) {
            return Err(self.skip(format!("paused by ops ({why})"), PAUSED_RETRY));
        }
        let now = Instant::now();
        let mut state = self.state();
        if let Some(until) = state.open_until {
            if until > now {
                return Err(self.skip("circuit open; the provider is failing".into(), until - now));
            }
            if state.probing {
                return Err(self.skip(
                    "circuit half-open; waiting for the probe call".into(),
                    self.limits.circuit_open_for.min(Duration::from_secs(5)),
                ));
            }
        }
        // Checked before taking the probe's turn: a call held back here never probes.
        if let Some(until) = state.blocked_until.filter(|u| *u > now) {
            return Err(self.skip("the provider asked us to slow down".into(), until - now));
        }
        let probing = state.open_until.is_some();
        state.probing |= probing;
        Ok(Probe {
            guard: self,
            armed: probing,
        })
    }

    /// Books the next free slot of the rate limit and waits for it, in-process, holding no
    /// call slot: a rate limit costs waiting, not a retry. A call whose slot is more than
    /// [`Limits::max_rate_wait`] away is skipped instead (and gives its slot back).
    async fn pace(&self) -> Result<(), ProviderError> {
        let booked = match self.state().bucket.as_mut() {
            None => return Ok(()),
            Some(bucket) => bucket.reserve(self.limits.max_rate_wait),
        };
        match booked {
            Ok(wait) if wait.is_zero() => Ok(()),
            Ok(wait) => {
                if let Some((throttled, waits)) = &self.throttle {
                    throttled.inc();
                    waits.observe(wait.as_secs_f64());
                }
                tracing::debug!(provider = %self.inner.name(), ?wait, "waiting for the rate limit");
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(wait) => Err(self.skip(
                format!(
                    "over the client-side rate limit of {}/s",
                    self.limits.rate_limit
                ),
                wait,
            )),
        }
    }

    /// Runs one provider call under the guard. `before_send`, if any, runs once the call is
    /// admitted, paced and holds its slot, right before it goes out; its refusal is returned
    /// as it is and tells the circuit nothing (the provider was not asked).
    async fn call<T, F>(
        &self,
        before_send: Option<BeforeSend<'_>>,
        call: F,
    ) -> Result<T, ProviderError>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut probe = self.admit()?;
        let mut held_back = false;
        let outcome = async {
            self.pace().await?;
            let _slot = match &self.slots {
                None => None,
                Some(slots) => {
                    match tokio::time::timeout(MAX_SLOT_WAIT, Arc::clone(slots).acquire_owned())
                        .await
                    {
                        Ok(Ok(permit)) => Some(permit),
                        _ => {
                            return Err(self.skip(
                                format!("all {} call slots busy", self.limits.concurrency),
                                Duration::from_secs(1),
                            ));
                        }
                    }
                }
            };
            if let Some(check) = before_send {
                check().await.inspect_err(|_| held_back = true)?;
            }
            let bound = self.limits.call_timeout;
            if bound.is_zero() {
                return call.await;
            }
            tokio::time::timeout(bound, call).await.unwrap_or_else(|_| {
                Err(ProviderError::unknown(format!(
                    "{}: no answer within {bound:?}",
                    self.inner.name()
                )))
            })
        }
        .await;
        let verdict = match &outcome {
            Err(_) if held_back => Verdict::Skipped,
            Ok(_) | Err(ProviderError::Permanent { .. }) => Verdict::Up,
            Err(ProviderError::Transient {
                retry_after: Some(wait),
                ..
            }) => Verdict::Backoff(*wait),
            Err(ProviderError::Transient { .. } | ProviderError::Unknown { .. }) => Verdict::Failed,
            Err(ProviderError::Skipped { .. }) => Verdict::Skipped,
        };
        // A probe skipped before reaching the provider told nothing: dropping `probe` gives
        // its turn back. Any other verdict settles the circuit, the probe included.
        if !matches!(verdict, Verdict::Skipped) {
            probe.armed = false;
        }
        self.record(verdict);
        outcome
    }

    fn record(&self, verdict: Verdict) {
        let now = Instant::now();
        let mut state = self.state();
        match verdict {
            // Only the probe's own turn is given back (by its `Probe`): a call admitted before
            // the circuit opened and then skipped must not free a probe that is running.
            Verdict::Skipped => return,
            Verdict::Up | Verdict::Backoff(_) => {
                state.failures = 0;
                state.open_until = None;
                state.probing = false;
                if let Verdict::Backoff(wait) = verdict {
                    state.blocked_until = Some(now + wait);
                }
            }
            Verdict::Failed => {
                state.failures += 1;
                let threshold = self.limits.circuit_failures;
                if state.probing || (threshold > 0 && state.failures >= threshold) {
                    state.open_until = Some(now + self.limits.circuit_open_for);
                    tracing::warn!(provider = %self.inner.name(), failures = state.failures,
                        open_for = ?self.limits.circuit_open_for, "circuit opened");
                }
                state.probing = false;
            }
        }
        self.circuit_gauge
            .set(i64::from(state.open_until.is_some()));
    }
}

/// The half-open circuit's probe turn, held by the one call admitted to probe.
struct Probe<'a> {
    guard: &'a Guarded,
    /// Still to be given back (no verdict recorded yet).
    armed: bool,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The probe was cancelled before it could tell anything: the next call probes.
            self.guard.state().probing = false;
        }
    }
}

#[async_trait::async_trait]
impl RefundProvider for Guarded {
    fn name(&self) -> ProviderName {
        self.inner.name()
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        self.call(None, self.inner.refund(request)).await
    }

    async fn refund_checked(
        &self,
        request: &RefundRequest,
        before_send: BeforeSend<'_>,
    ) -> Result<ProviderRefund, ProviderError> {
        self.call(Some(before_send), self.inner.refund(request))
            .await
    }

    fn needs_snapshot(&self) -> bool {
        self.inner.needs_snapshot()
    }

    async fn snapshot(&self, request: &RefundRequest) -> Result<Option<String>, ProviderError> {
        self.call(None, self.inner.snapshot(request)).await
    }

    async fn find(
        &self,
        request: &RefundRequest,
        snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        self.call(None, self.inner.find(request, snapshot)).await
    }

    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        self.call(None, self.inner.status(request, refund_id)).await
    }
}

/// A token bucket refilled at `rate` per second, holding at most `rate` tokens. `take` is
/// all-or-nothing (the sandbox's 429s); `reserve` queues callers in order by letting the
/// balance go negative (the worker's pacing).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` calls per second.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.last = now;
    }

    /// Books a token: `Ok(wait)` until it is due, or `Err(wait)` (and no booking) when it is
    /// more than `max_wait` away.
    pub fn reserve(&mut self, max_wait: Duration) -> Result<Duration, Duration> {
        self.refill();
        let wait = Duration::from_secs_f64((1.0 - self.tokens).max(0.0) / self.rate);
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests;
