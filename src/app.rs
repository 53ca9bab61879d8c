//! Assembles a worker from connection settings: the one wiring that `run`, `demo` and the
//! integration tests share, so they run the same thing.

use std::sync::Arc;

use crate::{
    broker::Topology,
    config::Settings,
    governance::MandatePolicy,
    metrics::{Health, Metrics},
    pipeline::{Pipeline, PipelineOptions, PipelineParts},
    providers::Providers,
    services::Services,
    signing::{BadKey, KeyPair},
    store::{self, IdempotencyStore, MandateStore, ReceiptChain, StoreError},
    worker::{Worker, WorkerOptions},
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
}

impl AssembleError {
    /// Whether the fix is in the configuration (exit 2) rather than outside (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, AssembleError::Config(_))
    }
}

/// The development signing keys shipped in config/default.toml, public in the repository.
const DEV_KEYS: [&str; 2] = [
    "6d616e646174652d6465762d6b65792d6e6f742d666f722d70726f6475637421",
    "726563656970742d6465762d6b65792d6e6f742d666f722d70726f6475637421",
];

/// Builds a worker. Connects to Redis now (failing with a clear message if it is down);
/// RabbitMQ is connected when the worker runs.
pub async fn assemble(
    connections: &Connections,
    settings: &Settings,
    exit_when_idle: bool,
    connection_name: &str,
) -> Result<App, AssembleError> {
    let mandate_key = KeyPair::from_seed(&settings.mandates.signing_key, "[mandates] signing_key")?;
    let receipt_key = KeyPair::from_seed(&settings.receipts.signing_key, "[receipts] signing_key")?;
    for secret in [
        &settings.mandates.signing_key,
        &settings.receipts.signing_key,
    ] {
        if DEV_KEYS.contains(&secret.expose()) {
            tracing::warn!(
                "signing with a development key from config/default.toml; set REFUND_MANDATES__SIGNING_KEY and REFUND_RECEIPTS__SIGNING_KEY in production"
            );
            break;
        }
    }
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let conn = store::connect(&connections.redis_url)
        .await
        .map_err(AssembleError::Redis)?;
    // Connected: Redis readiness starts up (the pipeline owns it from here on).
    crate::pipeline::RedisReadiness::new(Arc::clone(&health)).up();
    let prefix = &connections.prefix;
    let store = IdempotencyStore::from_settings(conn.clone(), prefix, &settings.idempotency);
    let client = crate::http::client(&settings.providers)?;
    let pipeline = Pipeline::new(PipelineParts {
        store: store.clone(),
        providers: Providers::from_settings(settings, &metrics, client.clone()),
        services: Services::from_settings(settings, client),
        mandates: MandatePolicy::new(
            MandateStore::new(conn.clone(), prefix),
            mandate_key.public(),
            settings.mandates.required,
        ),
        receipts: ReceiptChain::new(conn, prefix, receipt_key),
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        options: PipelineOptions::from_settings(settings),
    });
    let options = WorkerOptions {
        amqp_url: connections.amqp_url.clone(),
        topology: connections.topology(settings),
        worker: settings.worker.clone(),
        max_attempts: settings.retry.max_attempts,
        exit_when_idle,
        connection_name: connection_name.to_owned(),
    };
    let worker = Worker::new(options, pipeline, metrics.clone(), Arc::clone(&health));
    Ok(App {
        worker,
        metrics,
        health,
        store,
    })
}
