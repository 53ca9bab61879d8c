//! Assembles a worker from connection settings: the one wiring that `run`, `demo` and the
//! integration tests share, so they run the same thing.

use std::sync::Arc;

use crate::{
    broker::Topology,
    config::Settings,
    metrics::{Health, Metrics},
    pipeline::{Pipeline, PipelineOptions},
    providers::Providers,
    store::{self, IdempotencyStore, StoreError},
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
        Ok(IdempotencyStore::new(
            conn,
            &self.prefix,
            settings.idempotency.lease,
            settings.idempotency.ttl,
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
    #[error("cannot build the provider HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Builds a worker. Connects to Redis now (failing with a clear message if it is down);
/// RabbitMQ is connected when the worker runs.
pub async fn assemble(
    connections: &Connections,
    settings: &Settings,
    exit_when_idle: bool,
    connection_name: &str,
) -> Result<App, AssembleError> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let store = connections
        .idempotency_store(settings)
        .await
        .map_err(AssembleError::Redis)?;
    Health::set(&health.redis, true);
    let providers = Providers::from_settings(settings, &metrics)?;
    let pipeline = Pipeline::new(
        store.clone(),
        providers,
        metrics.clone(),
        Arc::clone(&health),
        PipelineOptions::from_settings(settings),
    );
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
