//! The sandbox's faults: the on-demand ones (`--latency-ms`, `--fail-rate`, `--rate-limit`…)
//! and the deterministic ones keyed by payment id (`_declined`, `_flakyN`, `_timeout`,
//! `_pending`, `_pendingfail`).

use std::time::Duration;

use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::providers::guard::TokenBucket;

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

/// Mutable fault state: the dice and the rate limiter's bucket.
#[derive(Debug)]
pub struct FaultState {
    rng: StdRng,
    bucket: Option<TokenBucket>,
}

impl FaultState {
    /// Fresh state for these options.
    pub fn new(options: &FaultOptions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(options.seed),
            bucket: options.rate_limit.map(TokenBucket::new),
        }
    }

    /// True with probability `rate`.
    pub fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    /// The latency of one call.
    pub fn latency(&mut self, options: &FaultOptions) -> Duration {
        let jitter_ms = u64::try_from(options.jitter.as_millis()).unwrap_or(0);
        let extra = if jitter_ms == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter_ms)
        };
        options.latency + Duration::from_millis(extra)
    }

    /// Takes a token; `Err(wait)` when the rate limit is exhausted.
    pub fn admit(&mut self) -> Result<(), Duration> {
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
