//! refund-worker: refund jobs from RabbitMQ, refunded exactly once on the payment's original
//! rail, with Redis idempotency, retries, dead letters and Prometheus metrics.
//!
//! The pipeline, in the order a job meets it:

/// Wiring shared by `run`, `demo` and the tests.
pub mod app;
/// RabbitMQ: topology, confirmed publishing, the headers dead letters carry.
pub mod broker;
/// Certificates whose expiry the worker exports.
pub mod certificates;
/// Command-line definitions.
pub mod cli;
/// Wall-clock timestamps (RFC 3339, UTC).
pub mod clock;
/// One module per subcommand.
pub mod commands;
/// Typed settings from `config/default.toml` and the environment.
pub mod config;
/// How failures are worded for people.
pub mod diagnostics;
/// How a delivery ends, as one value every report of it derives from.
pub mod ending;
/// Spend mandates and sealed receipts (pure).
pub mod governance;
/// HTTP plumbing shared by the connectors and the services: client, transport failures,
/// retry hints.
mod http;
/// The refund job schema: strict parsing and validation (pure), from the `refund-domain`
/// crate; every `job::…` path names it.
pub use refund_domain as job;
/// Prometheus metrics, health and readiness.
pub mod metrics;
/// How a delivery ends.
pub mod outcome;
/// The refund flow over the idempotency store and the providers (no AMQP types).
pub mod pipeline;
/// Provider connectors: one trait, one file per rail.
pub mod providers;
/// The ERP, invoicing and WhatsApp services of governed refunds.
pub mod services;
/// Ed25519 keys from configuration (mandates, receipts).
pub mod signing;
/// Redis: idempotency records, mandates, receipts.
pub mod store;
/// The consume loop: chunks, concurrency, acks, reconnects, shutdown.
pub mod worker;
