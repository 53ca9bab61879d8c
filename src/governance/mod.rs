//! Governance: spend mandates (who may refund how much, signed and revocable), the policy
//! that enforces them, sealed receipts (what was done, signed and hash-chained) and the audit
//! log (who did what to the service, chained the same way). Types,
//! checks and decisions; their Redis storage lives in `store`.

pub mod audit;
pub mod mandate;
pub mod mandate_policy;
pub mod receipt;

pub use mandate_policy::{MandateError, MandatePolicy};
