//! The sandbox's rate limiter (`--rate-limit N`): a bucket of `N` tokens that refills at `N`
//! per second, so a burst of `N` calls passes and then one call per `1/N` s. A refused call
//! learns when the next token is due, which the fakes send back as `Retry-After`.
//!
//! The sandbox's own limiter, not the worker's client-side one: the fake must behave like a
//! provider's server whatever the worker's pacing does.

use std::time::{Duration, Instant};

/// A token bucket holding at most one second's worth of calls.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Calls per second, also the bucket's size.
    per_second: u32,
    /// Tokens left, in millionths of a token (so refills need no floating point).
    micro_tokens: u64,
    /// When the bucket was last refilled.
    refilled: Instant,
}

/// Millionths in one token.
const MICRO: u64 = 1_000_000;

impl RateLimiter {
    /// A full bucket for `per_second` calls per second (at least 1).
    pub(crate) fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self {
            per_second,
            micro_tokens: u64::from(per_second) * MICRO,
            refilled: Instant::now(),
        }
    }

    /// Takes a token now, or says how long until one is there.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    /// [`RateLimiter::take`] at a given moment.
    fn take_at(&mut self, now: Instant) -> Result<(), Duration> {
        let capacity = u64::from(self.per_second) * MICRO;
        let elapsed = now.saturating_duration_since(self.refilled);
        // Tokens earned: elapsed seconds × rate; in micro-tokens that is elapsed µs × rate.
        let earned = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.per_second));
        self.micro_tokens = self.micro_tokens.saturating_add(earned).min(capacity);
        self.refilled = now;
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            return Ok(());
        }
        // Micro-tokens missing ÷ rate = microseconds to wait (rounded up).
        let missing = MICRO - self.micro_tokens;
        Err(Duration::from_micros(
            missing.div_ceil(u64::from(self.per_second)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_second_passes_then_calls_wait_their_turn() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(4);
        limiter.refilled = start;
        for _ in 0..4 {
            assert_eq!(limiter.take_at(start), Ok(()));
        }
        assert_eq!(limiter.take_at(start), Err(Duration::from_millis(250)));
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.take_at(later), Err(Duration::from_millis(150)));
        let due = start + Duration::from_millis(250);
        assert_eq!(limiter.take_at(due), Ok(()));
        // A long pause refills the bucket to its size, no more.
        let idle = due + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(limiter.take_at(idle), Ok(()));
        }
        assert!(limiter.take_at(idle).is_err());
    }

    #[test]
    fn zero_means_one_per_second() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(0);
        limiter.refilled = start;
        assert_eq!(limiter.take_at(start), Ok(()));
        assert_eq!(limiter.take_at(start), Err(Duration::from_secs(1)));
    }
}
