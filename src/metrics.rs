//! Prometheus metrics (SPEC §8) in the worker's own registry, health and readiness, and the
//! small HTTP server that exposes them. Labels never carry a payment id, an amount or a
//! personal datum: only providers, classes, currencies, steps and agents.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::{
    ending::{Fate, JobEnd},
    job::ProviderName,
    outcome::FailureClass,
};

/// The provider label of a job whose provider is not known (an unparseable job).
pub const NO_PROVIDER: &str = "none";

/// The `outcome` label values of `refunds_duration_seconds`.
pub const OUTCOMES: [&str; 3] = ["succeeded", "dead_lettered", "retried"];
/// The `step` label values of `refunds_step_duration_seconds`.
pub const STEPS: [&str; 8] = [
    "claim",
    "verify",
    "mandate",
    "provider",
    "credit_note",
    "notify",
    "seal",
    "record",
];

/// Every metric the worker exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders (not the global default one).
    registry: Registry,
    /// Refunds that succeeded (created or adopted).
    pub succeeded: IntCounterVec,
    /// Jobs dead-lettered, by class.
    pub failed: IntCounterVec,
    /// Jobs sent through a retry tier after a failed provider attempt.
    pub retried: IntCounterVec,
    /// Deliveries skipped because their refund was already done.
    pub deduplicated: IntCounter,
    /// Money refunded, in minor units.
    pub amount: IntCounterVec,
    /// Jobs being processed right now.
    pub in_flight: IntGauge,
    /// Deliveries whose handling panicked (each handed back to the broker).
    pub panicked: IntCounter,
    /// Time from delivery to outcome.
    pub duration: HistogramVec,
    /// Time per pipeline step.
    pub step_duration: HistogramVec,
    /// Messages in the dead-letter queue.
    pub dead_letter_depth: IntGauge,
    /// 1 while a provider's circuit is open.
    pub circuit_open: IntGaugeVec,
    /// Money waiting in the dead-letter queue, in minor units.
    pub dead_letter_amount: IntGaugeVec,
    /// 1 while ops have paused a provider.
    pub provider_paused: IntGaugeVec,
    /// Refunds refused by a mandate, per agent.
    pub mandate_denied: IntCounterVec,
    /// Provider calls the client-side rate limit held back (they waited in-process).
    pub throttled: IntCounterVec,
    /// Jobs sent to a retry tier without spending an attempt (a claim held by another
    /// worker, a pause, an open circuit, a rate limit beyond `max_throttle_wait`).
    pub deferred: IntCounterVec,
    /// How long those calls waited for the rate limit.
    pub throttle_wait: HistogramVec,
    /// Refusals because a mandate's stored state does not add up (`forged`, `rolled_back`,
    /// `tampered`): someone edited Redis. Pages at once.
    pub mandate_tampered: IntCounterVec,
    /// 1 while a readiness check passes (`ready`, `broker`, `redis`, `consuming`,
    /// `progress`), set from [`Health`] at each scrape.
    pub health: IntGaugeVec,
    /// Jobs this worker holds (received, not finished), set at each scrape.
    pub jobs_held: IntGauge,
    /// Deliveries carrying `x-refund-*` headers this deployment did not seal (ignored): a
    /// publisher forging them, or a planted letter replayed.
    pub untrusted_headers: IntCounter,
    /// Entries in the namespace's audit log, and the sequence number of its head: fewer
    /// entries than the head's number means one was deleted.
    pub audit_entries: IntGauge,
    /// The audit log head's sequence number (console and CLI actions so far).
    pub audit_seq: IntGauge,
    /// When each watched certificate expires (`[certificates]`), Unix seconds; 0 while one
    /// cannot be read.
    pub certificate_expiry: IntGaugeVec,
}

/// The `check` label values of `refunds_worker_health`.
pub const HEALTH_CHECKS: [&str; 5] = ["ready", "broker", "redis", "consuming", "progress"];

/// The rules of [`Metrics::mandate_tampered`], exported at zero from the start.
pub const TAMPER_RULES: [&str; 3] = ["forged", "rolled_back", "tampered"];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    /// A fresh registry with every metric at zero (each provider and class pre-labelled, so
    /// dashboards show zeros instead of gaps).
    pub fn new() -> Self {
        let registry = Registry::new();
        let succeeded = counter_vec(
            &registry,
            "refunds_succeeded_total",
            "Refunds that succeeded.",
            &["provider"],
        );
        let failed = counter_vec(
            &registry,
            "refunds_failed_total",
            "Refund jobs dead-lettered, by class.",
            &["provider", "class"],
        );
        let retried = counter_vec(
            &registry,
            "refunds_retried_total",
            "Refund jobs retried after a transient failure.",
            &["provider"],
        );
        let amount = counter_vec(
            &registry,
            "refunds_amount_minor_total",
            "Money refunded, in minor units.",
            &["provider", "currency"],
        );
        let mandate_denied = counter_vec(
            &registry,
            "refunds_mandate_denied_total",
            "Refunds refused by a spend mandate.",
            &["agent"],
        );
        let mandate_tampered = counter_vec(
            &registry,
            "refunds_mandate_tampered_total",
            "Refunds refused because a mandate's stored state does not add up (edited in Redis).",
            &["rule"],
        );
        for rule in TAMPER_RULES {
            mandate_tampered.with_label_values(&[rule]);
        }
        // Agents are not known in advance; `unknown` is, so the family exists from start-up.
        mandate_denied.with_label_values(&[crate::pipeline::gate::UNKNOWN_AGENT]);
        let throttled = counter_vec(
            &registry,
            "refunds_throttled_total",
            "Provider calls the client-side rate limit held back; each waited in-process for its turn.",
            &["provider"],
        );
        let deduplicated = IntCounter::new(
            "refunds_deduplicated_total",
            "Deliveries skipped because their refund was already done (redeliveries and duplicate jobs).",
        )
        .expect("static metric");
        let in_flight = IntGauge::new("refunds_in_flight", "Refund jobs being processed now.")
            .expect("static metric");
        let panicked = IntCounter::new(
            "refunds_worker_panics_total",
            "Deliveries whose handling panicked; each was handed back to the broker.",
        )
        .expect("static metric");
        let dead_letter_depth = IntGauge::new(
            "refunds_dead_letter_depth",
            "Messages waiting in the dead-letter queue.",
        )
        .expect("static metric");
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let duration = HistogramVec::new(
            HistogramOpts::new("refunds_duration_seconds", "Time from delivery to outcome.")
                .buckets(buckets.clone()),
            &["provider", "outcome"],
        )
        .expect("static metric");
        let step_duration = HistogramVec::new(
            HistogramOpts::new("refunds_step_duration_seconds", "Time per pipeline step.")
                .buckets(buckets.clone()),
            &["step"],
        )
        .expect("static metric");
        let deferred = counter_vec(
            &registry,
            "refunds_deferred_total",
            "Jobs sent to a retry tier without spending an attempt: a claim held by another worker, a pause, an open circuit, a rate limit beyond max_throttle_wait.",
            &["provider"],
        );
        let throttle_wait = HistogramVec::new(
            HistogramOpts::new(
                "refunds_throttle_wait_seconds",
                "How long provider calls waited for the client-side rate limit.",
            )
            .buckets(buckets),
            &["provider"],
        )
        .expect("static metric");
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "refunds_provider_circuit_open",
                "1 while the provider's circuit breaker is open.",
            ),
            &["provider"],
        )
        .expect("static metric");
        let provider_paused = IntGaugeVec::new(
            Opts::new(
                "refunds_provider_paused",
                "1 while ops have paused refunds to the provider (its jobs wait, spending no attempt).",
            ),
            &["provider"],
        )
        .expect("static metric");
        let dead_letter_amount = IntGaugeVec::new(
            Opts::new(
                "refunds_dead_letter_amount_minor",
                "Money waiting in the dead-letter queue, in minor units.",
            ),
            &["currency"],
        )
        .expect("static metric");
        let health = IntGaugeVec::new(
            Opts::new(
                "refunds_worker_health",
                "1 while the readiness check passes: ready (all of them), broker, redis, consuming, progress (not stalled).",
            ),
            &["check"],
        )
        .expect("static metric");
        let jobs_held = IntGauge::new(
            "refunds_jobs_held",
            "Jobs this worker holds: received, not yet finished.",
        )
        .expect("static metric");
        let untrusted_headers = IntCounter::new(
            "refunds_untrusted_headers_total",
            "Deliveries carrying x-refund-* headers this deployment did not seal; the headers were ignored.",
        )
        .expect("static metric");
        let audit_entries = IntGauge::new(
            "refunds_audit_log_entries",
            "Entries stored in the audit log of console and CLI actions.",
        )
        .expect("static metric");
        let audit_seq = IntGauge::new(
            "refunds_audit_log_seq",
            "Sequence number of the audit log's last entry (actions recorded so far).",
        )
        .expect("static metric");
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "refunds_certificate_expiry_timestamp_seconds",
                "When each certificate of [certificates] expires (its notAfter), Unix seconds; 0 while it cannot be read.",
            ),
            &["certificate"],
        )
        .expect("static metric");
        for check in HEALTH_CHECKS {
            health.with_label_values(&[check]);
        }
        for metric in [
            Box::new(deduplicated.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(health.clone()),
            Box::new(jobs_held.clone()),
            Box::new(untrusted_headers.clone()),
            Box::new(audit_entries.clone()),
            Box::new(audit_seq.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(in_flight.clone()),
            Box::new(panicked.clone()),
            Box::new(dead_letter_depth.clone()),
            Box::new(duration.clone()),
            Box::new(step_duration.clone()),
            Box::new(throttle_wait.clone()),
            Box::new(circuit_open.clone()),
            Box::new(provider_paused.clone()),
            Box::new(dead_letter_amount.clone()),
        ] {
            registry
                .register(metric)
                .expect("each metric is registered once");
        }
        for provider in ProviderName::ALL {
            let p = provider.as_str();
            succeeded.with_label_values(&[p]);
            retried.with_label_values(&[p]);
            circuit_open.with_label_values(&[p]);
            provider_paused.with_label_values(&[p]);
            throttled.with_label_values(&[p]);
            throttle_wait.with_label_values(&[p]);
            deferred.with_label_values(&[p]);
            amount.with_label_values(&[p, "BRL"]);
            for outcome in OUTCOMES {
                duration.with_label_values(&[p, outcome]);
            }
            for class in FailureClass::ALL {
                failed.with_label_values(&[p, class.as_str()]);
            }
        }
        for class in FailureClass::ALL {
            failed.with_label_values(&[NO_PROVIDER, class.as_str()]);
        }
        dead_letter_amount.with_label_values(&["BRL"]);
        for step in STEPS {
            step_duration.with_label_values(&[step]);
        }
        Self {
            registry,
            succeeded,
            failed,
            retried,
            deduplicated,
            amount,
            in_flight,
            panicked,
            duration,
            step_duration,
            dead_letter_depth,
            circuit_open,
            provider_paused,
            dead_letter_amount,
            mandate_denied,
            mandate_tampered,
            throttled,
            throttle_wait,
            deferred,
            health,
            jobs_held,
            untrusted_headers,
            audit_entries,
            audit_seq,
            certificate_expiry,
        }
    }

    /// Reads the watched certificates again and exports their expiries.
    pub fn observe_certificates(&self, watched: &crate::certificates::Watched) {
        for (name, at, why) in watched.expiries() {
            if let Some(why) = why {
                tracing::warn!(
                    certificate = name,
                    "cannot read a watched certificate: {why}"
                );
            }
            self.certificate_expiry.with_label_values(&[name]).set(at);
        }
    }

    /// Copies `health` into the health gauges (before a scrape renders them).
    pub fn observe_health(&self, health: &Health) {
        let checks = health.checks();
        let ready = checks.iter().all(|(_, ok)| *ok);
        self.health
            .with_label_values(&["ready"])
            .set(i64::from(ready));
        for (check, ok) in checks {
            self.health.with_label_values(&[check]).set(i64::from(ok));
        }
        let held = health.progress.held.load(Ordering::Relaxed);
        self.jobs_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Counts how a job ended (`elapsed`: from the start of its processing). A message handed
    /// back is counted when it ends for good; a pending refund and a retry that waits on
    /// another worker's claim are not failures.
    pub fn record_end(&self, end: &JobEnd, elapsed: std::time::Duration) {
        let elapsed = elapsed.as_secs_f64();
        let observe = |provider: &str, outcome: &str| {
            self.duration
                .with_label_values(&[provider, outcome])
                .observe(elapsed);
        };
        let label = |p: &Option<ProviderName>| p.map_or(NO_PROVIDER, |p| p.as_str());
        match &end.fate {
            Fate::Refunded {
                provider, amount, ..
            } => {
                let p = provider.as_str();
                self.succeeded.with_label_values(&[p]).inc();
                let currency = end.job.as_ref().map_or("BRL", |j| j.currency.code());
                self.amount
                    .with_label_values(&[p, currency])
                    .inc_by(*amount);
                observe(p, "succeeded");
            }
            Fate::Duplicate { .. } => self.deduplicated.inc(),
            Fate::DeadLetter {
                class, provider, ..
            } => {
                let p = label(provider);
                self.failed.with_label_values(&[p, class.as_str()]).inc();
                observe(p, "dead_lettered");
            }
            Fate::Retry {
                provider,
                counted: true,
                ..
            } => {
                let p = label(provider);
                self.retried.with_label_values(&[p]).inc();
                observe(p, "retried");
            }
            Fate::Retry {
                provider,
                counted: false,
                ..
            } => {
                self.deferred.with_label_values(&[label(provider)]).inc();
            }
            Fate::Pending { .. } | Fate::HandBack { .. } => {}
        }
    }

    /// What this process counted since it started: succeeded, dead-lettered and retried jobs,
    /// and money refunded per currency (the console's throughput figures are built from it).
    pub fn totals(&self) -> crate::store::Tally {
        use prometheus::core::Collector;
        fn each(v: &IntCounterVec, mut f: impl FnMut(&prometheus::proto::Metric, u64)) {
            for family in v.collect() {
                for metric in family.get_metric() {
                    // Counters hold whole numbers here (inc and inc_by of integers).
                    f(metric, metric.get_counter().get_value() as u64);
                }
            }
        }
        let mut tally = crate::store::Tally::default();
        each(&self.succeeded, |_, n| tally.succeeded += n);
        each(&self.failed, |_, n| tally.failed += n);
        each(&self.retried, |_, n| tally.retried += n);
        each(&self.amount, |metric, n| {
            if let Some(currency) = metric.get_label().iter().find(|l| l.name() == "currency") {
                *tally
                    .refunded
                    .entry(currency.value().to_owned())
                    .or_default() += n;
            }
        });
        tally.refunded.retain(|_, n| *n > 0);
        tally
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What `/readyz` reports: ready only while connected to both, consuming, and making progress.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to RabbitMQ.
    pub amqp: AtomicBool,
    /// Redis answers.
    pub redis: AtomicBool,
    /// The consumer is running (false while paused for a Redis outage).
    pub consuming: AtomicBool,
    /// Jobs held and when one last finished.
    pub progress: Progress,
}

/// Whether a worker that holds jobs still finishes them: a worker whose jobs all hang (or
/// whose deliveries were never settled) holds its prefetch and takes nothing new, while every
/// other signal says it is fine.
#[derive(Debug, Default)]
pub struct Progress {
    /// Jobs this worker holds: received, not yet finished.
    held: AtomicU64,
    /// When one last finished (or, from idle, the first was taken), in ms on [`monotonic_ms`].
    last_ms: AtomicU64,
    /// Holding jobs with none finished for longer than this is a stall (0: never).
    stall_after_ms: AtomicU64,
}

impl Progress {
    /// Sets the stall threshold (`[worker] stall_after`).
    pub fn set_stall_after(&self, after: std::time::Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.stall_after_ms.store(ms, Ordering::Relaxed);
    }

    /// A job was received.
    pub fn started(&self) {
        if self.held.fetch_add(1, Ordering::Relaxed) == 0 {
            // Time spent idle is not time without progress.
            self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
        }
    }

    /// A job finished (whatever its outcome, panics included).
    pub fn finished(&self) {
        self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Why this worker counts as stalled at `now_ms`, or `None`.
    fn stalled_at(&self, now_ms: u64) -> Option<String> {
        let held = self.held.load(Ordering::Relaxed);
        let after = self.stall_after_ms.load(Ordering::Relaxed);
        let quiet = now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed));
        (held > 0 && after > 0 && quiet > after).then(|| {
            format!(
                "stalled: holding {held} job(s) with none finished for {}s",
                quiet / 1000
            )
        })
    }
}

/// Milliseconds since the first call in this process (a monotonic clock).
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Health {
    /// Each readiness check (but `ready`) and whether it passes now.
    fn checks(&self) -> [(&'static str, bool); 4] {
        let stalled = self.progress.stalled_at(monotonic_ms()).is_some();
        [
            ("broker", self.amqp.load(Ordering::Relaxed)),
            ("redis", self.redis.load(Ordering::Relaxed)),
            ("consuming", self.consuming.load(Ordering::Relaxed)),
            ("progress", !stalled),
        ]
    }

    /// Why the worker is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.amqp.load(Ordering::Relaxed) {
            missing.push("RabbitMQ disconnected");
        }
        if !self.redis.load(Ordering::Relaxed) {
            missing.push("Redis unavailable");
        }
        if !self.consuming.load(Ordering::Relaxed) {
            missing.push("not consuming");
        }
        let stalled = self.progress.stalled_at(monotonic_ms());
        let mut missing: Vec<String> = missing.into_iter().map(str::to_owned).collect();
        missing.extend(stalled);
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// Sets one flag.
    pub fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Exposed {
    metrics: Metrics,
    health: Arc<Health>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Exposed { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the metrics address, with a message that says which address failed.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for /metrics on {addr}: {e} (use --metrics-addr)"))
}

async fn render(State(exposed): State<Exposed>) -> impl IntoResponse {
    exposed.metrics.observe_health(&exposed.health);
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        exposed.metrics.render(),
    )
}

async fn ready(State(exposed): State<Exposed>) -> impl IntoResponse {
    match exposed.health.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mandate_denial_family_exists_before_any_denial() {
        let text = Metrics::new().render();
        assert!(
            text.contains(r#"refunds_mandate_denied_total{agent="unknown"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn exposition_names_the_spec_metrics_without_payment_labels() {
        let m = Metrics::new();
        m.succeeded.with_label_values(&["stripe"]).inc();
        m.failed.with_label_values(&["stripe", "invalid"]).inc();
        let text = m.render();
        for name in [
            "refunds_succeeded_total",
            "refunds_failed_total",
            "refunds_retried_total",
            "refunds_deduplicated_total",
            "refunds_amount_minor_total",
            "refunds_in_flight",
            "refunds_duration_seconds",
            "refunds_dead_letter_depth",
            "refunds_provider_circuit_open",
            "refunds_dead_letter_amount_minor",
            "refunds_worker_health",
            "refunds_jobs_held",
            "refunds_untrusted_headers_total",
            "refunds_audit_log_entries",
            "refunds_audit_log_seq",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains(r#"refunds_succeeded_total{provider="stripe"} 1"#));
        assert!(text.contains(r#"refunds_failed_total{class="invalid",provider="stripe"} 1"#));
    }

    #[test]
    fn each_readiness_check_is_a_gauge_and_ready_needs_them_all() {
        let metrics = Metrics::new();
        let health = Health::default();
        for flag in [&health.amqp, &health.redis, &health.consuming] {
            Health::set(flag, true);
        }
        let value = |check: &str| metrics.health.with_label_values(&[check]).get();
        metrics.observe_health(&health);
        for check in HEALTH_CHECKS {
            assert_eq!(value(check), 1, "{check}");
        }
        Health::set(&health.redis, false);
        health.progress.started();
        health.progress.started();
        metrics.observe_health(&health);
        assert_eq!(value("redis"), 0);
        assert_eq!(value("ready"), 0);
        assert_eq!(value("broker"), 1);
        assert_eq!(metrics.jobs_held.get(), 2);
        assert_eq!(health.not_ready().as_deref(), Some("Redis unavailable"));
        // A stall: jobs held with none finished for longer than stall_after.
        Health::set(&health.redis, true);
        health
            .progress
            .set_stall_after(std::time::Duration::from_millis(1));
        std::thread::sleep(std::time::Duration::from_millis(20));
        metrics.observe_health(&health);
        assert_eq!(value("progress"), 0);
        assert_eq!(value("ready"), 0);
        health.progress.finished();
        health.progress.finished();
        metrics.observe_health(&health);
        assert_eq!(value("progress"), 1);
        assert_eq!(value("ready"), 1);
        assert_eq!(metrics.jobs_held.get(), 0);
    }

    #[test]
    fn each_end_moves_its_own_counters() {
        use std::time::Duration;

        use crate::ending::RetryTier;
        let tier = RetryTier {
            queue: "refunds.retry.1s".into(),
            delay: Duration::from_secs(1),
        };
        let retry = |counted| Fate::Retry {
            provider: Some(ProviderName::Stripe),
            why: "503".into(),
            tier: tier.clone(),
            attempts: 1,
            counted,
        };
        // (fate, the exposition lines it must produce; an empty list: it moves nothing).
        let table: Vec<(Fate, Vec<&str>)> = vec![
            (
                Fate::Refunded {
                    provider: ProviderName::Stripe,
                    refund_id: "re_1".into(),
                    amount: 4990,
                    adopted: false,
                },
                vec![
                    r#"refunds_succeeded_total{provider="stripe"} 1"#,
                    r#"refunds_amount_minor_total{currency="BRL",provider="stripe"} 4990"#,
                    r#"refunds_duration_seconds_count{outcome="succeeded",provider="stripe"} 1"#,
                ],
            ),
            (
                Fate::Duplicate { earlier: None },
                vec!["refunds_deduplicated_total 1"],
            ),
            (
                Fate::DeadLetter {
                    class: FailureClass::Invalid,
                    provider: None,
                    why: "not json".into(),
                    attempts: 0,
                },
                vec![
                    r#"refunds_failed_total{class="invalid",provider="none"} 1"#,
                    r#"refunds_duration_seconds_count{outcome="dead_lettered",provider="none"} 1"#,
                ],
            ),
            (
                retry(true),
                vec![
                    r#"refunds_retried_total{provider="stripe"} 1"#,
                    r#"refunds_duration_seconds_count{outcome="retried",provider="stripe"} 1"#,
                ],
            ),
            (
                retry(false),
                vec![r#"refunds_deferred_total{provider="stripe"} 1"#],
            ),
            (
                Fate::Pending {
                    provider: ProviderName::Stripe,
                    refund_id: "re_p".into(),
                    syncs: 1,
                    tier: tier.clone(),
                },
                vec![],
            ),
            (Fate::HandBack { why: "stop".into() }, vec![]),
        ];
        let untouched = Metrics::new().render();
        for (fate, lines) in table {
            let m = Metrics::new();
            let end = JobEnd {
                job_id: "job-1".into(),
                job: None,
                date: None,
                prior_attempts: 0,
                fate: fate.clone(),
            };
            m.record_end(&end, Duration::from_millis(3));
            let text = m.render();
            if lines.is_empty() {
                assert_eq!(text, untouched, "{fate:?} moves nothing");
            }
            for line in lines {
                assert!(text.contains(line), "{fate:?}: no {line:?} in\n{text}");
            }
        }
    }

    #[test]
    fn readiness_lists_what_is_missing() {
        let h = Health::default();
        assert_eq!(
            h.not_ready().unwrap(),
            "RabbitMQ disconnected, Redis unavailable, not consuming"
        );
        Health::set(&h.amqp, true);
        Health::set(&h.redis, true);
        Health::set(&h.consuming, true);
        assert_eq!(h.not_ready(), None);
    }

    #[test]
    fn holding_jobs_that_never_finish_is_a_stall_and_finishing_one_clears_it() {
        let p = Progress::default();
        p.set_stall_after(std::time::Duration::from_secs(60));
        let now = monotonic_ms();
        assert_eq!(p.stalled_at(now + 3_600_000), None, "idle is not stalled");
        p.started();
        p.started();
        assert_eq!(p.stalled_at(now + 30_000), None, "within the threshold");
        let stalled = p.stalled_at(now + 120_000).expect("stalled");
        assert!(
            stalled.starts_with("stalled: holding 2 job(s)"),
            "{stalled}"
        );
        p.finished();
        assert_eq!(p.stalled_at(monotonic_ms() + 30_000), None, "one finished");
        p.finished();
        p.finished();
        assert_eq!(p.stalled_at(monotonic_ms() + 3_600_000), None, "none held");
        p.set_stall_after(std::time::Duration::ZERO);
        p.started();
        assert_eq!(
            p.stalled_at(monotonic_ms() + 3_600_000),
            None,
            "0 disables it"
        );
    }
}
