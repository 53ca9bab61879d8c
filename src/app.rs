//! Assembles a worker from connection settings: the one wiring that `run`, `demo` and the
//! integration tests share, so they run the same thing. A [`JobRunner`] is the same wiring
//! without RabbitMQ: it runs one delivery through the pipeline and the worker's plan, so the
//! decisions that move money are tested against Redis and the sandbox in milliseconds.

use std::sync::Arc;

use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        Envelope, Topology,
        envelope::Republish,
        seal::{SealKeyError, Sealer},
    },
    certificates::Watched,
    config::Settings,
    ending::JobEnd,
    governance::MandatePolicy,
    metrics::{Health, Metrics},
    pipeline::{Attempt, Pipeline, PipelineOptions, PipelineParts},
    providers::{Providers, pause::PauseBoard},
    services::Services,
    signing::{BadKey, KeyPair, VerifyKeys},
    store::{self, Controls, IdempotencyStore, MandateStore, ReceiptChain, StoreError},
    worker::{self, Action, Delivered, RetryPolicy, Worker, WorkerOptions},
};

/// Where the worker's infrastructure is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Queue and key prefix.
    pub prefix: String,
}

impl Connections {
    /// The topology these connections and settings describe.
    pub fn topology(&self, settings: &Settings) -> Topology {
        Topology::new(
            &self.prefix,
            &settings.retry.delays,
            settings.worker.delivery_limit,
        )
    }

    /// Connects to Redis and opens this prefix's idempotency records.
    pub async fn idempotency_store(
        &self,
        settings: &Settings,
    ) -> Result<IdempotencyStore, StoreError> {
        let conn = store::connect(&self.redis_url).await?;
        Ok(IdempotencyStore::from_settings(
            conn,
            &self.prefix,
            &settings.idempotency,
        ))
    }
}

/// A worker and the handles around it.
pub struct App {
    /// The worker, ready to run.
    pub worker: Worker,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its readiness.
    pub health: Arc<Health>,
    /// Its idempotency records.
    pub store: IdempotencyStore,
}

/// Why a worker could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Redis is not reachable.
    #[error("{0}")]
    Redis(StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A setting is unusable (a signing key, …).
    #[error("invalid configuration: {0}")]
    Config(#[from] BadKey),
    /// `[broker] seal_keys` is unusable.
    #[error("invalid configuration: {0}")]
    Seal(#[from] SealKeyError),
    /// A certificate of `[certificates]` cannot be read.
    #[error("invalid configuration: {0}")]
    Certificate(String),
}

impl AssembleError {
    /// Whether the fix is in the configuration (exit 2) rather than outside (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AssembleError::Config(_) | AssembleError::Seal(_) | AssembleError::Certificate(_)
        )
    }
}

/// The development receipt key shipped in config/default.toml, public in the repository.
const DEV_KEYS: [&str; 1] = ["726563656970742d6465762d6b65792d6e6f742d666f722d70726f6475637421"];

/// The public half of the development mandate key shipped in config/default.toml.
const DEV_MANDATE_PUBLIC: &str = "8986bca6a596f07fff7a15ea23679a41dbb3b41dad6e2292283f3cb8a5a63797";

/// What a worker and a job runner are both made of, built one way.
struct Wiring {
    pipeline: Pipeline,
    metrics: Metrics,
    health: Arc<Health>,
    store: IdempotencyStore,
    topology: Topology,
    retry: RetryPolicy,
    sealer: Sealer,
    stats: crate::store::Stats,
}

/// How often a worker reads the ops pauses.
const PAUSE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies the ops pauses from Redis onto `board` now and then every [`PAUSE_POLL`], for as
/// long as anything holds the board. A read that fails keeps the board as it was.
async fn follow_pauses(controls: Controls, board: &Arc<PauseBoard>) {
    async fn copy(controls: &Controls, board: &PauseBoard) {
        match controls.paused().await {
            Ok(paused) => board.set_all(
                paused
                    .into_iter()
                    .filter_map(|(name, pause)| {
                        Some((
                            crate::job::ProviderName::parse(&name).ok()?,
                            pause.to_string(),
                        ))
                    })
                    .collect(),
            ),
            Err(e) => tracing::debug!(error = %e, "could not read the provider pauses"),
        }
    }
    copy(&controls, board).await;
    let weak = Arc::downgrade(board);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PAUSE_POLL).await;
            let Some(board) = weak.upgrade() else { break };
            copy(&controls, &board).await;
        }
    });
}

/// Builds the pipeline and what surrounds it. Connects to Redis now (failing with a clear
/// message if it is down).
async fn wire(connections: &Connections, settings: &Settings) -> Result<Wiring, AssembleError> {
    // Mandates are verified with public keys only: a worker never needs finance's seed.
    let mandate_keys =
        VerifyKeys::from_hex_list(&settings.mandates.verify_keys, "[mandates] verify_keys")?;
    let receipt_key = KeyPair::from_seed(&settings.receipts.signing_key, "[receipts] signing_key")?;
    if DEV_KEYS.contains(&settings.receipts.signing_key.expose()) {
        tracing::warn!(
            "sealing receipts with the development key from config/default.toml; set REFUND_RECEIPTS__SIGNING_KEY in production"
        );
    }
    if mandate_keys
        .to_hex()
        .iter()
        .any(|k| k == DEV_MANDATE_PUBLIC)
    {
        tracing::warn!(
            "trusting mandates signed with the development key from config/default.toml; set REFUND_MANDATES__VERIFY_KEYS in production"
        );
    }
    if settings.mandates.signing_key().is_some() {
        tracing::info!(
            "[mandates] signing_key is set but a worker does not use it; leave it empty on workers (REFUND_MANDATES__SIGNING_KEY=\"\")"
        );
    }
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    health.progress.set_stall_after(settings.worker.stall_after);
    let conn = store::connect(&connections.redis_url)
        .await
        .map_err(AssembleError::Redis)?;
    // Connected: Redis readiness starts up (the pipeline owns it from here on).
    crate::pipeline::RedisReadiness::new(Arc::clone(&health)).up();
    let prefix = &connections.prefix;
    let store = IdempotencyStore::from_settings(conn.clone(), prefix, &settings.idempotency);
    let client = crate::http::client(&settings.providers)?;
    let receipts = ReceiptChain::new(conn.clone(), prefix, receipt_key);
    let pauses = Arc::new(PauseBoard::new(metrics.provider_paused.clone()));
    follow_pauses(Controls::new(conn.clone(), prefix), &pauses).await;
    let pipeline = Pipeline::new(PipelineParts {
        store: store.clone(),
        providers: Providers::from_settings(settings, &metrics, client.clone(), &pauses),
        services: Services::from_settings(settings, client),
        mandates: MandatePolicy::new(
            MandateStore::new(conn.clone(), prefix).with_reservation_ttl(settings.idempotency.ttl),
            mandate_keys,
            settings.mandates.required,
        )
        .with_receipts(receipts.clone()),
        receipts,
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        options: PipelineOptions::from_settings(settings),
    });
    let topology = connections.topology(settings);
    let retry = RetryPolicy::new(&topology, settings.retry.max_attempts);
    Ok(Wiring {
        pipeline,
        metrics,
        health,
        store,
        topology,
        retry,
        sealer: Sealer::from_config(&settings.broker.seal_keys)?,
        stats: crate::store::Stats::new(conn.clone(), prefix),
    })
}

/// Builds a worker. Connects to Redis now (failing with a clear message if it is down);
/// RabbitMQ is connected when the worker runs.
pub async fn assemble(
    connections: &Connections,
    settings: &Settings,
    exit_when_idle: bool,
    connection_name: &str,
) -> Result<App, AssembleError> {
    let Wiring {
        pipeline,
        metrics,
        health,
        store,
        topology,
        retry,
        sealer,
        stats,
    } = wire(connections, settings).await?;
    let certificates = Watched::load(&settings.certificates).map_err(AssembleError::Certificate)?;
    metrics.observe_certificates(&certificates);
    let options = WorkerOptions {
        certificates,
        amqp_url: connections.amqp_url.clone(),
        topology,
        worker: settings.worker.clone(),
        retry,
        exit_when_idle,
        connection_name: connection_name.to_owned(),
        sealer,
        stats,
    };
    let worker = Worker::new(options, pipeline, metrics.clone(), Arc::clone(&health));
    Ok(App {
        worker,
        metrics,
        health,
        store,
    })
}

/// One delivery at a time through the worker's pipeline and plan, without RabbitMQ: what a
/// worker would decide for a message, and nothing carried out (no ack, no publish, no event).
/// Redis and the providers are real (the sandbox, in tests).
pub struct JobRunner {
    /// The same pipeline a worker runs.
    pipeline: Pipeline,
    /// The retry tiers and the attempt limit the plan applies.
    retry: RetryPolicy,
    /// Names the retry tiers and the dead-letter exchange.
    topology: Topology,
    /// Reads seals as the worker does, and seals the copies it would publish.
    sealer: Sealer,
    /// Never cancelled: a runner does not stop mid-job.
    shutdown: CancellationToken,
}

impl JobRunner {
    /// A runner wired exactly as [`assemble`] wires a worker. Connects to Redis now.
    pub async fn assemble(
        connections: &Connections,
        settings: &Settings,
    ) -> Result<Self, AssembleError> {
        let wiring = wire(connections, settings).await?;
        Ok(Self {
            pipeline: wiring.pipeline,
            retry: wiring.retry,
            topology: wiring.topology,
            sealer: wiring.sealer,
            shutdown: CancellationToken::new(),
        })
    }

    /// Runs one delivery of `body` with `properties` (as first delivered: not a redelivery)
    /// through the pipeline and returns how the worker would end it. Where a worker would
    /// wait for an unreachable Redis and run the job again, the runner returns the hand-back.
    pub async fn try_execute(&self, body: &[u8], properties: &BasicProperties) -> JobEnd {
        let envelope = Envelope::read(properties, body, false, &self.sealer);
        let owner = uuid::Uuid::new_v4().to_string();
        let attempt = Attempt {
            body,
            envelope: &envelope,
            owner: &owner,
            shutdown: &self.shutdown,
        };
        let processed = self.pipeline.process(attempt).await;
        worker::plan(&processed, &Delivered::of(&envelope), &self.retry)
    }

    /// The properties of the copy the worker would publish to a retry tier for `end` (its
    /// `x-refund-*` headers: attempts, syncs, the key's date), or `None` when the job does
    /// not come back (finished, dead-lettered, handed back as it is).
    pub fn retry_copy(
        &self,
        end: &JobEnd,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Option<BasicProperties> {
        let envelope = Envelope::read(properties, body, false, &self.sealer);
        let now = crate::clock::now_rfc3339();
        let dead_exchange = self.topology.dead_exchange();
        match worker::action(end, envelope.first_seen.as_deref(), &now, &dead_exchange) {
            Action::Retry(copy) => Some(copy.properties(Republish {
                original: properties,
                original_sealed: envelope.seal.is_sealed(),
                body,
                sealer: &self.sealer,
            })),
            Action::DeadLetter(_) | Action::Ack | Action::Leave => None,
        }
    }
}
