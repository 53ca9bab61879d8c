//! Test harness: every test gets its own prefix (queues, exchanges, Redis keys) and its own
//! sandbox on a free port, so tests run in parallel against the real RabbitMQ and Redis.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use lapin::{BasicProperties, options::BasicGetOptions, types::AMQPValue};
use refund_sandbox::{FaultOptions, LedgerEntry, Sandbox};
use refund_worker::{
    app::{self, Connections},
    broker::{self, OutgoingJob, Publisher, Topology},
    config::Settings,
    governance::mandate::{Mandate, Terms, rfc3339},
    job::{Currency, IdempotencyKey, JobDate, Token},
    metrics::Metrics,
    outcome::Outcome,
    signing::KeyPair,
    store::{self, IdempotencyStore, MandateStore, RecordView},
    worker::{JobReport, RunEnd},
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Settings that keep tests fast: short retry tiers, timeouts and leases.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    s.retry.delays = vec![Duration::from_millis(200), Duration::from_millis(500)];
    s.retry.max_attempts = 4;
    s.retry.in_process = 2;
    s.retry.in_process_delay = Duration::from_millis(20);
    s.providers.circuit_open_for = Duration::from_secs(1);
    s.providers.timeout = Duration::from_secs(1);
    s.providers.connect_timeout = Duration::from_millis(500);
    s.idempotency.lease = Duration::from_secs(3);
    s.worker.concurrency = 32;
    s.worker.prefetch = 64;
    s.worker.shutdown_grace = Duration::from_secs(5);
    s
}

/// Finance's signing key: the development one of `config/default.toml`.
pub fn finance_key(_env: &TestEnv) -> KeyPair {
    // From the shipped defaults, not the env's settings: a test may run its workers with no
    // signing key at all, as production workers run.
    let seed = test_settings()
        .mandates
        .signing_key()
        .cloned()
        .expect("the development key");
    KeyPair::from_seed(&seed, "[mandates] signing_key").unwrap()
}

/// Grants (or grants again) mandate `id` to `agent`, in BRL, spendable by jobs published as
/// one of `publishers` (broker users); signed with finance's key.
pub async fn grant_mandate(
    env: &TestEnv,
    id: &str,
    agent: &str,
    (per_refund, per_day): (u64, u64),
    publishers: &[&str],
) -> Mandate {
    let terms = Terms {
        id: Token::parse(id).unwrap(),
        agent_id: Token::parse(agent).unwrap(),
        max_per_refund: per_refund,
        max_per_day: per_day,
        currency: Currency::BRL,
        expires_at: None,
        publishers: publishers.iter().map(|p| (*p).to_owned()).collect(),
    };
    mandate_store(env)
        .await
        .grant_terms(
            terms,
            &finance_key(env),
            &rfc3339(time::OffsetDateTime::now_utc()),
        )
        .await
        .unwrap()
}

/// Revokes mandate `id` as finance.
pub async fn revoke_mandate(env: &TestEnv, id: &str) -> Option<Mandate> {
    mandate_store(env)
        .await
        .revoke(
            id,
            &finance_key(env),
            &rfc3339(time::OffsetDateTime::now_utc()),
        )
        .await
        .unwrap()
}

/// The mandates of the test's namespace.
pub async fn mandate_store(env: &TestEnv) -> MandateStore {
    MandateStore::new(store::connect(REDIS_URL).await.unwrap(), env.prefix())
}

/// A bulk Stripe job for `payment_id`.
pub fn stripe_job(payment_id: &str, amount: u64) -> Value {
    json!({ "payment_id": payment_id, "amount": amount, "provider": "stripe", "date": today().to_string() })
}

pub fn today() -> JobDate {
    JobDate::today()
}

/// Waits until `check` holds, failing the test with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dead letter as the dead-letter queue holds it.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub message_id: Option<String>,
}

/// A worker running in this process.
pub struct RunningWorker {
    pub stop: CancellationToken,
    pub reports: mpsc::UnboundedReceiver<JobReport>,
    pub metrics: Metrics,
    pub health: std::sync::Arc<refund_worker::metrics::Health>,
    handle: JoinHandle<RunEnd>,
}

impl RunningWorker {
    /// Collects reports until `done` says enough (or fails after `limit`).
    pub async fn collect_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&[JobReport]) -> bool,
    ) -> Vec<JobReport> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&seen) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => seen.push(report),
                Ok(None) => break,
                Err(_) => panic!("timed out after {limit:?}; reports so far: {seen:#?}"),
            }
        }
        seen
    }

    /// Stops the worker and waits for it.
    pub async fn stop(self) -> RunEnd {
        self.stop.cancel();
        self.handle.await.expect("worker task")
    }
}

/// What a run to idle produced.
pub struct Run {
    pub reports: Vec<JobReport>,
    pub metrics: Metrics,
}

impl Run {
    /// Asserts some report's outcome is `Pending` (under `refund_id`, when given).
    #[track_caller]
    pub fn assert_saw_pending(&self, refund_id: Option<&str>) {
        assert!(
            self.reports.iter().any(|r| matches!(
                &r.outcome,
                Outcome::Pending { refund_id: id, .. } if refund_id.is_none_or(|want| id == want)
            )),
            "no Pending outcome (refund id {refund_id:?}) among the reports: {:#?}",
            self.reports
        );
    }

    /// The last report's refund as (refund_id, amount, adopted); panics, showing the reports,
    /// unless the last report is `Refunded`.
    #[track_caller]
    pub fn last_refund(&self) -> (&str, u64, bool) {
        match self.reports.last().map(|r| &r.outcome) {
            Some(Outcome::Refunded {
                refund_id,
                amount,
                adopted,
                ..
            }) => (refund_id, *amount, *adopted),
            _ => panic!("the last report is not Refunded: {:#?}", self.reports),
        }
    }
}

/// One test's isolated world.
pub struct TestEnv {
    pub connections: Connections,
    pub settings: Settings,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    pub topology: Topology,
    pub store: IdempotencyStore,
    publisher: Publisher,
    amqp: lapin::Connection,
    stop_sandbox: CancellationToken,
}

impl TestEnv {
    pub async fn start(name: &str) -> Self {
        Self::with(name, FaultOptions::default(), |_| {}).await
    }

    pub async fn with(name: &str, faults: FaultOptions, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::with_redis(name, faults, tweak, REDIS_URL).await
    }

    /// An env whose workers use the Redis at `redis_url` (a private one a test can pause).
    pub async fn with_redis(
        name: &str,
        faults: FaultOptions,
        tweak: impl FnOnce(&mut Settings),
        redis_url: &str,
    ) -> Self {
        Self::with_infra(name, faults, tweak, AMQP_URL, redis_url).await
    }

    /// An env on the RabbitMQ at `amqp_url` and the Redis at `redis_url` (private ones a test
    /// can break).
    pub async fn with_infra(
        name: &str,
        faults: FaultOptions,
        tweak: impl FnOnce(&mut Settings),
        amqp_url: &str,
        redis_url: &str,
    ) -> Self {
        let prefix = format!(
            "it-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let sandbox = Sandbox::new(faults);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("free port");
        let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
        let stop_sandbox = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

        let mut settings = test_settings();
        settings.point_providers_at(&sandbox_url);
        // After pointing, so a test can send one provider elsewhere.
        tweak(&mut settings);
        let connections = Connections {
            amqp_url: amqp_url.into(),
            redis_url: redis_url.into(),
            prefix,
        };
        let amqp = broker::connect(amqp_url, "refund-worker tests")
            .await
            .expect("RabbitMQ must be running on 127.0.0.1:5672 (see README)");
        // Jobs carry the connection's user as their AMQP `user_id`, as `publish` sends them.
        let publisher = Publisher::open_as(&amqp, &broker::url_user(amqp_url))
            .await
            .unwrap();
        let topology = connections.topology(&settings);
        topology.declare(publisher.channel()).await.unwrap();
        let store = connections
            .idempotency_store(&settings)
            .await
            .expect("Redis must be running on 127.0.0.1:6379 (see README)");
        Self {
            connections,
            settings,
            sandbox,
            sandbox_url,
            topology,
            store,
            publisher,
            amqp,
            stop_sandbox,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.connections.prefix
    }

    /// Publishes jobs with confirms, as `publish` does; returns their job ids.
    pub async fn publish_json(&self, jobs: &[Value]) -> Vec<String> {
        let outgoing: Vec<OutgoingJob> = jobs
            .iter()
            .map(|j| OutgoingJob::new(serde_json::to_vec(j).unwrap()))
            .collect();
        self.publish_jobs(&outgoing).await;
        outgoing.into_iter().map(|j| j.job_id).collect()
    }

    pub async fn publish_jobs(&self, jobs: &[OutgoingJob]) {
        let results =
            broker::publish_jobs(&self.publisher, &self.topology, jobs, None, |_| {}).await;
        assert!(
            results.iter().all(Result::is_ok),
            "every publish confirmed: {results:?}"
        );
    }

    /// Publishes raw bytes with the given properties (for malformed input).
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish(
                &self.topology.jobs_exchange(),
                broker::ROUTING_KEY,
                body,
                properties,
            )
            .await
            .expect("confirmed");
    }

    /// Runs a worker with `--exit-when-idle` semantics until it exits.
    pub async fn run_until_idle(&self) -> Run {
        self.run_until_idle_with(&self.settings).await
    }

    pub async fn run_until_idle_with(&self, settings: &Settings) -> Run {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = app::assemble(&self.connections, settings, true, "refund-worker test")
            .await
            .unwrap();
        let metrics = app.metrics.clone();
        let worker = app.worker.with_reports(tx);
        let end = tokio::time::timeout(
            Duration::from_secs(60),
            worker.run(CancellationToken::new()),
        )
        .await
        .expect("the worker goes idle within 60s")
        .expect("the worker runs");
        assert_eq!(end, RunEnd::Idle);
        drop(worker);
        let mut reports = Vec::new();
        while let Some(r) = rx.recv().await {
            reports.push(r);
        }
        Run { reports, metrics }
    }

    /// Starts a worker that runs until stopped.
    pub async fn spawn_worker(&self) -> RunningWorker {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = app::assemble(
            &self.connections,
            &self.settings,
            false,
            "refund-worker test",
        )
        .await
        .unwrap();
        let metrics = app.metrics.clone();
        let health = app.health.clone();
        let worker = app.worker.with_reports(tx);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move { worker.run(token).await.expect("worker runs") });
        RunningWorker {
            stop,
            reports: rx,
            metrics,
            health,
            handle,
        }
    }

    /// Takes every message out of the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.read_dead_letters(true).await
    }

    /// The dead letters, left in the queue (read unacknowledged, handed back on close).
    pub async fn dead_letters_kept(&self) -> Vec<DeadLetter> {
        self.read_dead_letters(false).await
    }

    async fn read_dead_letters(&self, drain: bool) -> Vec<DeadLetter> {
        let channel = self.amqp.create_channel().await.unwrap();
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.topology.dead_queue().into(),
                BasicGetOptions { no_ack: drain },
            )
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), header_text(v)))
                        .collect()
                })
                .unwrap_or_default();
            letters.push(DeadLetter {
                body: delivery.data,
                headers,
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string()),
            });
        }
        let _ = channel.close(200, "done".into()).await;
        letters
    }

    /// Drains the dead-letter queue; asserts it held exactly one letter, of `class`, from
    /// `provider` (when given), whose `x-refund-error` contains every part of `why`.
    /// Returns that letter's headers for further checks.
    pub async fn one_dead_letter(
        &self,
        class: &str,
        provider: Option<&str>,
        why: &[&str],
    ) -> BTreeMap<String, String> {
        let mut letters = self.dead_letters().await;
        assert_eq!(
            letters.len(),
            1,
            "exactly one dead letter: {:#?}",
            letters.iter().map(|l| &l.headers).collect::<Vec<_>>()
        );
        let headers = letters.pop().unwrap().headers;
        assert_eq!(headers["x-refund-error-class"], class, "{headers:?}");
        if let Some(provider) = provider {
            assert_eq!(headers["x-refund-provider"], provider, "{headers:?}");
        }
        for part in why {
            assert!(
                headers["x-refund-error"].contains(*part),
                "lacks {part:?}: {headers:?}"
            );
        }
        headers
    }

    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.sandbox.ledger()
    }

    /// POSTs the sandbox received (refund attempts that reached the provider).
    pub fn refund_posts(&self) -> usize {
        self.sandbox
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    pub async fn record(&self, key: &str) -> Option<RecordView> {
        self.store
            .get(&IdempotencyKey::parse(key).unwrap())
            .await
            .unwrap()
    }

    /// Environment for a `refund-worker` child process equivalent to this env's settings.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let delays: Vec<String> = s.retry.delays.iter().map(|d| ms(*d)).collect();
        vec![
            ("REFUND_PREFIX".into(), self.prefix().to_owned()),
            ("AMQP_URL".into(), self.connections.amqp_url.clone()),
            ("REDIS_URL".into(), self.connections.redis_url.clone()),
            ("REFUND_PROVIDERS_URL".into(), self.sandbox_url.clone()),
            ("REFUND_RETRY__DELAYS".into(), delays.join(",")),
            (
                "REFUND_RETRY__MAX_ATTEMPTS".into(),
                s.retry.max_attempts.to_string(),
            ),
            ("REFUND_PROVIDERS__TIMEOUT".into(), ms(s.providers.timeout)),
            (
                "REFUND_PROVIDERS__CONNECT_TIMEOUT".into(),
                ms(s.providers.connect_timeout),
            ),
            (
                "REFUND_PROVIDERS__CIRCUIT_FAILURES".into(),
                s.providers.circuit_failures.to_string(),
            ),
            (
                "REFUND_PROVIDERS__CIRCUIT_OPEN_FOR".into(),
                ms(s.providers.circuit_open_for),
            ),
            (
                "REFUND_RETRY__IN_PROCESS".into(),
                s.retry.in_process.to_string(),
            ),
            (
                "REFUND_RETRY__IN_PROCESS_DELAY".into(),
                ms(s.retry.in_process_delay),
            ),
            ("REFUND_IDEMPOTENCY__LEASE".into(), ms(s.idempotency.lease)),
            (
                "REFUND_WORKER__CONCURRENCY".into(),
                s.worker.concurrency.to_string(),
            ),
            (
                "REFUND_WORKER__PREFETCH".into(),
                s.worker.prefetch.to_string(),
            ),
            (
                "REFUND_WORKER__SHUTDOWN_GRACE".into(),
                ms(s.worker.shutdown_grace),
            ),
        ]
    }

    /// Deletes an exchange of this env's topology (to break things under a running worker).
    pub async fn delete_exchange(&self, name: &str) {
        let channel = self.amqp.create_channel().await.unwrap();
        channel
            .exchange_delete(
                name.into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
    }

    /// Removes this test's queues, exchanges and Redis keys.
    pub async fn cleanup(self) {
        let _ = self.topology.delete(self.publisher.channel()).await;
        let _ = self.store.delete_namespace().await;
        let _ = self.amqp.close(200, "test done".into()).await;
        self.stop_sandbox.cancel();
    }
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Runs a `refund-worker` command to its end, fails the test (showing both streams) unless it
/// exits 0, and returns its standard output.
pub async fn succeeds(command: &mut tokio::process::Command) -> String {
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The path of the `refund-worker` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_refund-worker")
}

/// A private redis-server on a free port, for tests that pause or stop Redis without
/// disturbing the others.
pub struct PrivateRedis {
    /// `redis://127.0.0.1:{port}/`.
    pub url: String,
    /// Kept across restarts, so clients reconnect to the same URL.
    port: u16,
    /// Where a durable server keeps its append-only file (none: nothing persists).
    dir: Option<std::path::PathBuf>,
    /// The server while it runs.
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// A server that keeps nothing: what it held is gone when it stops.
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// A server that writes every change to its append-only file before answering
    /// (`appendfsync always`, as production should run), so it can be killed and restarted
    /// without losing an idempotency record.
    pub async fn start_durable() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rw-redis-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir for the private Redis");
        Self::launch(Some(dir)).await
    }

    async fn launch(dir: Option<std::path::PathBuf>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// Starts the server again on the same port (and the same data, if durable).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the private Redis is already running");
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        let dir;
        match &self.dir {
            Some(path) => {
                dir = path.to_string_lossy().into_owned();
                args.extend([
                    "--dir",
                    &dir,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ]);
            }
            None => args.extend(["--appendonly", "no"]),
        }
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (it runs the shared Redis too)");
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "private redis-server starts",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Stops the server at once (SIGKILL): connections are refused until [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the private Redis is running");
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Freezes the server: connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Thawed first, so a paused server is not left behind as a stopped process.
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
