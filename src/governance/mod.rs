//! Governance: spend mandates (who may refund how much, signed and revocable) and sealed
//! receipts (what was done, signed and hash-chained). Pure types and checks; their Redis
//! storage lives in `store`.

pub mod mandate;
pub mod receipt;
