//! How one delivery of one job ends, as the pipeline sees it. The pipeline returns an
//! [`Outcome`]; the worker's plan (`worker::plan`) alone reads it, into the
//! [`JobEnd`](crate::ending::JobEnd) that the ack, the retry publish or the dead letter, the
//! metrics and the events are derived from.

use std::time::Duration;

use crate::job::ProviderName;

/// Why a job was parked in the dead-letter queue (`x-refund-error-class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The message is not a valid job; nothing was attempted.
    Invalid,
    /// The provider (or the idempotency record) refused it for good.
    Permanent,
    /// Transient failures outlasted the configured attempts.
    Exhausted,
    /// Outside the agent's spend mandate.
    Mandate,
    /// The order did not check out against the ERP.
    Verification,
    /// It crashed or hung workers until the broker's delivery limit.
    DeliveryLimit,
}

impl FailureClass {
    /// Every class.
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Invalid,
        FailureClass::Permanent,
        FailureClass::Exhausted,
        FailureClass::Mandate,
        FailureClass::Verification,
        FailureClass::DeliveryLimit,
    ];

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Invalid => "invalid",
            FailureClass::Permanent => "permanent",
            FailureClass::Exhausted => "exhausted",
            FailureClass::Mandate => "mandate",
            FailureClass::Verification => "verification",
            FailureClass::DeliveryLimit => "delivery_limit",
        }
    }

    /// Parses a header value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The end of one delivery's processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The refund exists: made now, or found at the provider after an unknown outcome.
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
    /// An earlier copy of this job already refunded it; nothing was done.
    Duplicate,
    /// The provider accepted the refund but has not settled it: check again later.
    Pending {
        /// The rail.
        provider: ProviderName,
        /// The provider's refund id.
        refund_id: String,
    },
    /// Not now: send the job through a retry tier.
    Retry {
        /// The rail, when known.
        provider: Option<ProviderName>,
        /// Why, for the `x-refund-error` header and the logs.
        why: String,
        /// The soonest sensible retry (the provider's hint, or a lease's end).
        after: Duration,
        /// Whether a provider attempt failed (counted toward `max_attempts`), as opposed to
        /// waiting for another worker's claim.
        counts: bool,
    },
    /// Park it for a human.
    DeadLetter {
        /// The class.
        class: FailureClass,
        /// The rail, when known.
        provider: Option<ProviderName>,
        /// A reason an operator understands.
        why: String,
    },
    /// Redis is unreachable before anything happened: wait for it, then run the job again.
    Suspend {
        /// What failed.
        why: String,
    },
    /// Stopping: leave the delivery unacknowledged so the broker hands it to another worker.
    HandBack {
        /// Why.
        why: String,
    },
}
