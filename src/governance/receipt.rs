//! Sealed receipts (SPEC §6). Placeholder until receipts land.
