//! How a provider call fails, classified once by the connector that made it. This file imports
//! nothing of the connectors, so the HTTP plumbing they share can name the error without a
//! loop back into them.

use std::time::Duration;

/// A failed provider call, classified once by the connector that made it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Nothing was executed (connection refused, 5xx before execution, 429, 409 in flight):
    /// sending again with the same key is safe.
    #[error("{why}")]
    Transient {
        /// What happened, for logs and the retry header.
        why: String,
        /// The provider's own hint (`Retry-After`, rate-limit reset).
        retry_after: Option<Duration>,
    },
    /// No retry can fix it (declined, over-refund, unknown payment, bad credential).
    #[error("{why}")]
    Permanent {
        /// The provider's error code, when it gave one.
        code: Option<String>,
        /// What the provider said.
        why: String,
    },
    /// The request may have executed (timeout, connection dropped after sending, an
    /// unreadable success): look it up before any resend.
    #[error("{why}")]
    Unknown {
        /// What happened.
        why: String,
    },
    /// Not sent at all: the provider's guard held it back (circuit open, rate limit, the
    /// provider's own `Retry-After`, no free call slot). Costs the job no attempt.
    #[error("{why}")]
    Skipped {
        /// Why it was held back.
        why: String,
        /// When it is worth trying again.
        retry_after: Option<Duration>,
    },
}

impl ProviderError {
    /// A transient error without a hint.
    pub fn transient(why: impl Into<String>) -> Self {
        Self::Transient {
            why: why.into(),
            retry_after: None,
        }
    }

    /// A permanent error without a code.
    pub fn permanent(why: impl Into<String>) -> Self {
        Self::Permanent {
            code: None,
            why: why.into(),
        }
    }

    /// An unknown outcome.
    pub fn unknown(why: impl Into<String>) -> Self {
        Self::Unknown { why: why.into() }
    }
}
