//! The receipt chain in Redis. Placeholder until receipts land.
