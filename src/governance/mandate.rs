//! Spend mandates (SPEC §5). Placeholder until mandates land.
