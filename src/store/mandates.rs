//! Mandates in Redis. Placeholder until mandates land.
