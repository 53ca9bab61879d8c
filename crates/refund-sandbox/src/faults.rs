//! The sandbox's faults: the on-demand ones (`--latency-ms`, `--fail-rate`, `--rate-limit`…),
//! the deterministic ones keyed by payment id (`_declined`, `_flakyN`, `_timeout`,
//! `_pending`, `_pendingfail`), and bursts switched on at run time (an outage of 5xx, a storm
//! of 429s) for fault-injection tests. Every fault injected is counted.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::Refusal;
use crate::rate::RateLimiter;

/// The on-demand faults a sandbox injects.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultOptions {
    /// Added to every provider call.
    pub latency: Duration,
    /// Up to this much more, at random.
    pub jitter: Duration,
    /// Share of calls refused with a transient 5xx before anything executes (0.0–1.0).
    pub fail_rate: f64,
    /// Share of refunds executed whose answer then comes too late for the client.
    pub timeout_rate: f64,
    /// Calls per second before answering 429 (none: unlimited).
    pub rate_limit: Option<u32>,
    /// Seed of the fault dice, so a run can be repeated.
    pub seed: u64,
    /// How long a "timed out" answer is held back (longer than any client waits).
    pub timeout_hold: Duration,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            timeout_rate: 0.0,
            rate_limit: None,
            seed: 42,
            timeout_hold: Duration::from_secs(30),
        }
    }
}

/// What a payment id asks of the sandbox, by its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// `…_declined`: the provider refuses the refund for good.
    Declined,
    /// `…_flakyN`: the first N calls fail with a transient 5xx before executing.
    Flaky(u32),
    /// `…_timeout`: the first call executes but its answer is lost.
    Timeout,
    /// `…_pending`: accepted as pending, settled at the first look-up a second later.
    Pending,
    /// `…_pendingfail`: accepted as pending, failed (the provider's own reason) at the first
    /// look-up a second later.
    PendingFail,
    /// Nothing special.
    Plain,
}

impl Magic {
    /// Reads the suffix of a payment id.
    pub fn of(payment_id: &str) -> Self {
        let lower = payment_id.to_ascii_lowercase();
        if lower.ends_with("_declined") {
            return Magic::Declined;
        }
        if lower.ends_with("_timeout") {
            return Magic::Timeout;
        }
        if lower.ends_with("_pending") {
            return Magic::Pending;
        }
        if lower.ends_with("_pendingfail") {
            return Magic::PendingFail;
        }
        if let Some(pos) = lower.rfind("_flaky")
            && let Ok(n) = lower[pos + 6..].parse::<u32>()
        {
            return Magic::Flaky(n);
        }
        Magic::Plain
    }
}

/// A fault switched on at run time for a while: every provider and service call in the window
/// is refused before anything executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burst {
    /// 5xx, as in an outage of the provider.
    ServerErrors,
    /// 429 with this `Retry-After`, as in a rate-limit storm.
    RateLimited {
        /// What the answers ask the client to wait (whole seconds on the wire, at least 1).
        retry_after: Duration,
    },
}

/// How many faults the sandbox injected, by kind (`GET /_sandbox/faults`): what a
/// fault-injection run reports next to its results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Calls refused with a transient 5xx before executing (`--fail-rate`, `_flakyN`, bursts).
    pub server_errors: u64,
    /// Calls refused with 429 (`--rate-limit`, storms).
    pub rate_limited: u64,
    /// Refunds (or service calls) executed whose answer was then held back past the client's
    /// patience (`--timeout-rate`, `_timeout`).
    pub answers_lost: u64,
}

/// Mutable fault state: the dice, the rate limiter's bucket, the burst under way, the counts.
#[derive(Debug)]
pub(crate) struct FaultState {
    rng: StdRng,
    bucket: Option<RateLimiter>,
    /// The burst under way and when it ends.
    burst: Option<(Burst, Instant)>,
    /// Faults injected so far.
    counts: FaultCounts,
}

impl FaultState {
    /// Fresh state for these options.
    pub(crate) fn new(options: &FaultOptions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(options.seed),
            bucket: options.rate_limit.map(RateLimiter::new),
            burst: None,
            counts: FaultCounts::default(),
        }
    }

    /// Starts `burst`, lasting `lasting` from now (replacing any burst under way).
    pub(crate) fn start_burst(&mut self, burst: Burst, lasting: Duration) {
        self.burst = Some((burst, Instant::now() + lasting));
    }

    /// The refusal of the burst under way, if one is.
    pub(crate) fn burst_refusal(&mut self) -> Option<Refusal> {
        match self.burst {
            Some((burst, until)) if Instant::now() < until => Some(match burst {
                Burst::ServerErrors => Refusal::Unavailable,
                Burst::RateLimited { retry_after } => Refusal::RateLimited(retry_after),
            }),
            Some(_) => {
                self.burst = None;
                None
            }
            None => None,
        }
    }

    /// Counts a refusal the sandbox answered with.
    pub(crate) fn count_refusal(&mut self, refusal: &Refusal) {
        match refusal {
            Refusal::Unavailable => self.counts.server_errors += 1,
            Refusal::RateLimited(_) => self.counts.rate_limited += 1,
        }
    }

    /// Counts an answer held back.
    pub(crate) fn count_lost_answer(&mut self) {
        self.counts.answers_lost += 1;
    }

    /// Faults injected so far.
    pub(crate) fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// True with probability `rate`.
    pub(crate) fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    /// The latency of one call.
    pub(crate) fn latency(&mut self, options: &FaultOptions) -> Duration {
        let jitter_ms = u64::try_from(options.jitter.as_millis()).unwrap_or(0);
        let extra = if jitter_ms == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter_ms)
        };
        options.latency + Duration::from_millis(extra)
    }

    /// Takes a token; `Err(wait)` when the rate limit is exhausted.
    pub(crate) fn admit(&mut self) -> Result<(), Duration> {
        match &mut self.bucket {
            None => Ok(()),
            Some(bucket) => bucket.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_suffixes() {
        assert_eq!(Magic::of("pi_1_declined"), Magic::Declined);
        assert_eq!(Magic::of("pi_1_flaky3"), Magic::Flaky(3));
        assert_eq!(Magic::of("pi_1_timeout"), Magic::Timeout);
        assert_eq!(Magic::of("pi_1_pending"), Magic::Pending);
        assert_eq!(Magic::of("pi_1_pendingfail"), Magic::PendingFail);
        assert_eq!(Magic::of("pi_1"), Magic::Plain);
        assert_eq!(Magic::of("pi_flakyx"), Magic::Plain);
    }

    #[test]
    fn bucket_admits_its_rate_then_refuses() {
        let mut state = FaultState::new(&FaultOptions {
            rate_limit: Some(3),
            ..FaultOptions::default()
        });
        assert!((0..3).all(|_| state.admit().is_ok()));
        assert!(state.admit().is_err());
    }

    #[test]
    fn a_burst_refuses_until_it_ends_then_nothing() {
        let mut state = FaultState::new(&FaultOptions::default());
        assert_eq!(state.burst_refusal(), None);
        state.start_burst(Burst::ServerErrors, Duration::from_secs(60));
        assert_eq!(state.burst_refusal(), Some(Refusal::Unavailable));
        let retry_after = Duration::from_secs(2);
        state.start_burst(Burst::RateLimited { retry_after }, Duration::ZERO);
        assert_eq!(
            state.burst_refusal(),
            None,
            "an ended burst refuses nothing"
        );
        state.count_refusal(&Refusal::Unavailable);
        state.count_refusal(&Refusal::RateLimited(retry_after));
        state.count_lost_answer();
        assert_eq!(
            state.counts(),
            FaultCounts {
                server_errors: 1,
                rate_limited: 1,
                answers_lost: 1
            }
        );
    }

    #[test]
    fn dice_are_repeatable_for_a_seed() {
        let options = FaultOptions::default();
        let rolls = |state: &mut FaultState| (0..100).map(|_| state.roll(0.5)).collect::<Vec<_>>();
        assert_eq!(
            rolls(&mut FaultState::new(&options)),
            rolls(&mut FaultState::new(&options))
        );
        assert!(!FaultState::new(&options).roll(0.0));
    }
}
