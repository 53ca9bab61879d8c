//! The consume loop: connect, declare, consume in chunks, run jobs in parallel under one
//! concurrency bound, dispose of each outcome, reconnect when RabbitMQ goes away, pause while
//! Redis is away, and stop gracefully.
//!
//! Acks happen only in [`dispose`], after the outcome is durable. Anything unacked when a
//! connection dies comes back from the broker, and the idempotency records make it a no-op.

mod dispose;
mod oversized;
mod plan;
mod throughput;

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

pub use dispose::Disposition;
pub(crate) use dispose::{Action, action};
pub use plan::{Delivered, RetryPolicy, plan};

use crate::{
    broker::{
        self, BrokerError, Envelope, Publisher, Topology,
        seal::{SealCheck, Sealer},
    },
    config::WorkerSettings,
    ending::{Fate, JobEnd},
    metrics::{Health, Metrics},
    outcome::Outcome,
    pipeline::{Attempt, Pipeline},
};

/// How long a channel or connection close may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a worker connects and consumes.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// The queues under the prefix.
    pub topology: Topology,
    /// Concurrency, chunks, prefetch, shutdown grace.
    pub worker: WorkerSettings,
    /// The retry tiers and the attempts before `exhausted`.
    pub retry: RetryPolicy,
    /// Stop once the jobs and retry queues are empty and nothing is in flight.
    pub exit_when_idle: bool,
    /// The connection name shown in RabbitMQ's management UI.
    pub connection_name: String,
    /// Seals what the worker republishes and tells its own copies from a publisher's.
    pub sealer: Sealer,
    /// Where the worker adds its throughput counts for the console.
    pub stats: crate::store::Stats,
    /// Certificates whose expiry is sampled with the other gauges.
    pub certificates: crate::certificates::Watched,
}

/// One job's end, for progress bars and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job id.
    pub job_id: String,
    /// What the pipeline decided.
    pub outcome: Outcome,
    /// What happened to the message.
    pub disposition: Disposition,
    /// How the job ended, every fact of it (the disposition is a view of it).
    pub end: JobEnd,
}

/// Why a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Asked to stop (signal).
    Stopped,
    /// `--exit-when-idle` and there was nothing left.
    Idle,
}

/// State every job task shares.
struct Shared {
    options: WorkerOptions,
    pipeline: Pipeline,
    metrics: Metrics,
    health: Arc<Health>,
    reports: Option<mpsc::UnboundedSender<JobReport>>,
    /// Bounds jobs running at once, across chunks.
    concurrency: Arc<Semaphore>,
    /// False while Redis is unreachable: the consumer stops taking messages.
    redis_ok: watch::Sender<bool>,
}

/// A refund worker.
pub struct Worker {
    shared: Arc<Shared>,
}

enum SessionEnd {
    Stopped,
    Idle,
    Lost(String),
}

struct Session {
    connection: Connection,
    consume: Channel,
    publisher: Publisher,
}

impl Worker {
    /// A worker running `pipeline` with these options.
    pub fn new(
        options: WorkerOptions,
        pipeline: Pipeline,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Self {
        let concurrency = Arc::new(Semaphore::new(options.worker.concurrency));
        Self {
            shared: Arc::new(Shared {
                options,
                pipeline,
                metrics,
                health,
                reports: None,
                concurrency,
                redis_ok: watch::channel(true).0,
            }),
        }
    }

    /// Sends a [`JobReport`] for every delivery processed.
    pub fn with_reports(mut self, reports: mpsc::UnboundedSender<JobReport>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("reports are attached before the worker runs")
            .reports = Some(reports);
        self
    }

    /// Consumes until `shutdown` (or idle, with `exit_when_idle`). Fails only if RabbitMQ
    /// cannot be reached at start; later losses are reconnected with backoff.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<RunEnd, BrokerError> {
        let monitor_stop = shutdown.child_token();
        let monitor = tokio::spawn(redis_monitor(
            Arc::clone(&self.shared),
            monitor_stop.clone(),
        ));
        let throughput = tokio::spawn(throughput::report(
            self.shared.metrics.clone(),
            Arc::clone(&self.shared.health),
            self.shared.options.stats.clone(),
            self.shared.options.connection_name.clone(),
            monitor_stop.clone(),
        ));
        let end = self.run_sessions(&shutdown).await;
        monitor_stop.cancel();
        let _ = monitor.await;
        let _ = throughput.await;
        end
    }

    async fn run_sessions(&self, shutdown: &CancellationToken) -> Result<RunEnd, BrokerError> {
        let mut connected_once = false;
        let mut backoff = Duration::from_millis(250);
        loop {
            if shutdown.is_cancelled() {
                return Ok(RunEnd::Stopped);
            }
            let session = match self.open_session().await {
                Ok(session) => session,
                Err(error) if !connected_once => return Err(error),
                Err(error) => {
                    warn!(error = %error, retry_in = ?backoff, "cannot reconnect to RabbitMQ yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(RunEnd::Stopped),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            if connected_once {
                info!("reconnected to RabbitMQ");
            }
            connected_once = true;
            backoff = Duration::from_millis(250);
            match self.consume(session, shutdown).await {
                SessionEnd::Stopped => return Ok(RunEnd::Stopped),
                SessionEnd::Idle => return Ok(RunEnd::Idle),
                SessionEnd::Lost(why) => {
                    Health::set(&self.shared.health.amqp, false);
                    Health::set(&self.shared.health.consuming, false);
                    warn!(%why, "lost the RabbitMQ connection; unacknowledged jobs will be redelivered");
                }
            }
        }
    }

    async fn open_session(&self) -> Result<Session, BrokerError> {
        let options = &self.shared.options;
        let connection = broker::connect(&options.amqp_url, &options.connection_name).await?;
        let publisher = Publisher::open(&connection).await?;
        options.topology.declare(publisher.channel()).await?;
        let consume = connection.create_channel().await?;
        consume
            .basic_qos(options.worker.prefetch, BasicQosOptions::default())
            .await?;
        Health::set(&self.shared.health.amqp, true);
        Ok(Session {
            connection,
            consume,
            publisher,
        })
    }

    async fn consume(&self, session: Session, shutdown: &CancellationToken) -> SessionEnd {
        let shared = &self.shared;
        let options = &shared.options;
        let tag = format!("refund-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = match session
            .consume
            .basic_consume(
                options.topology.jobs_queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        Health::set(&shared.health.consuming, true);
        info!(queue = %options.topology.jobs_queue(), "consuming");

        let mut redis_ok = shared.redis_ok.subscribe();
        // Cancelled by a job that finds the publishing channel dead: the session is over.
        let session_lost = CancellationToken::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut idle_tick = tokio::time::interval(Duration::from_millis(200));
        let mut gauge_tick = tokio::time::interval(Duration::from_secs(15));
        let mut idle_rounds = 0u32;
        let mut chunk: Vec<Delivery> = Vec::with_capacity(options.worker.chunk_size);
        let end = loop {
            let taking = *redis_ok.borrow();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break SessionEnd::Stopped,
                () = session_lost.cancelled() => {
                    break SessionEnd::Lost("the publishing channel closed".to_owned());
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        error!(error = %e, "a job task ended abnormally");
                    }
                }
                changed = redis_ok.changed() => {
                    if changed.is_err() { break SessionEnd::Stopped; }
                    let ok = *redis_ok.borrow();
                    Health::set(&shared.health.consuming, ok);
                    if ok { info!("Redis is back; consuming again"); } else { warn!("Redis is unreachable; pausing consumption"); }
                }
                next = consumer.next(), if taking => {
                    let mut lost = None;
                    match next {
                        Some(Ok(delivery)) => chunk.push(delivery),
                        Some(Err(e)) => lost = Some(e.to_string()),
                        None => lost = Some("the broker closed the consumer".to_owned()),
                    }
                    // Take whatever else is already here, up to a chunk.
                    while lost.is_none() && chunk.len() < options.worker.chunk_size {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(delivery))) => chunk.push(delivery),
                            Some(Some(Err(e))) => lost = Some(e.to_string()),
                            Some(None) => lost = Some("the broker closed the consumer".to_owned()),
                            None => break,
                        }
                    }
                    for delivery in chunk.drain(..) {
                        let job = Job {
                            shared: Arc::clone(shared),
                            publisher: session.publisher.clone(),
                            shutdown: shutdown.clone(),
                            session_lost: session_lost.clone(),
                        };
                        tasks.spawn(job.run(delivery));
                    }
                    idle_rounds = 0;
                    if let Some(why) = lost {
                        break SessionEnd::Lost(why);
                    }
                }
                _ = gauge_tick.tick() => sample_gauges(shared, &session.publisher).await,
                _ = idle_tick.tick(), if options.exit_when_idle => {
                    if !tasks.is_empty() {
                        idle_rounds = 0;
                        continue;
                    }
                    match queues_empty(&session.publisher, &options.topology).await {
                        Ok(true) => idle_rounds += 1,
                        Ok(false) => idle_rounds = 0,
                        Err(e) => break SessionEnd::Lost(e.to_string()),
                    }
                    // Twice in a row, so a message moving from a retry tier back to the jobs
                    // queue, or just delivered to us, is not missed.
                    if idle_rounds >= 2 {
                        break SessionEnd::Idle;
                    }
                }
            }
        };
        Health::set(&shared.health.consuming, false);

        // Jobs not yet started hand their message back instead of starting now.
        session_lost.cancel();
        if matches!(end, SessionEnd::Stopped | SessionEnd::Idle) {
            // Stop new deliveries; what was prefetched but not started goes back on close.
            let cancel = session
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await;
        }
        drop(consumer);
        let grace = options.worker.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                ?grace,
                remaining = tasks.len(),
                "in-flight jobs did not finish in time; handing them back"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Leave the gauges current (an `--exit-when-idle` run reports its final state).
        if !matches!(end, SessionEnd::Lost(_)) {
            sample_gauges(shared, &session.publisher).await;
        }
        // Bounded: a half-dead TCP connection must not hold the shutdown hostage.
        let bye = || "worker stopping".into();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.consume.close(200, bye())).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.publisher.channel().close(200, bye()))
            .await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.connection.close(200, bye())).await;
        end
    }
}

/// Refreshes the sampled gauges: the dead-letter queue's depth from the broker, the money
/// waiting in it from the tally kept as jobs are dead-lettered and leave the queue, and the
/// audit log's size.
async fn sample_gauges(shared: &Shared, publisher: &Publisher) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = shared.options.topology.dead_queue();
    if let Ok(declared) = publisher
        .channel()
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        shared
            .metrics
            .dead_letter_depth
            .set(i64::from(declared.message_count()));
    }
    if let Ok(amounts) = shared.pipeline.store().dead_letter_amounts().await {
        shared.metrics.dead_letter_amount.reset();
        shared
            .metrics
            .dead_letter_amount
            .with_label_values(&["BRL"])
            .set(0);
        for (currency, minor) in amounts {
            let minor = i64::try_from(minor).unwrap_or(i64::MAX);
            shared
                .metrics
                .dead_letter_amount
                .with_label_values(&[currency.as_str()])
                .set(minor);
        }
    }
    shared
        .metrics
        .observe_certificates(&shared.options.certificates);
    if let Ok((entries, seq)) = shared.pipeline.store().audit_counts().await {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        shared.metrics.audit_entries.set(gauge(entries));
        shared.metrics.audit_seq.set(gauge(seq));
    }
}

/// Whether the jobs queue and every retry tier are empty (ready messages only; unacked ones
/// are in somebody's hands, and ours are counted by the caller).
async fn queues_empty(publisher: &Publisher, topology: &Topology) -> Result<bool, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for queue in topology.work_queues() {
        let declared = publisher
            .channel()
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        if declared.message_count() > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One delivery's task and what it needs.
struct Job {
    shared: Arc<Shared>,
    publisher: Publisher,
    shutdown: CancellationToken,
    /// Set when this session is over (connection or publishing channel lost, stopping).
    session_lost: CancellationToken,
}

impl Job {
    /// Processes one delivery to its disposition, under one containment for every step from
    /// delivery to ack: a panic anywhere (the pipeline, the disposition, the metrics) hands
    /// the message back to the broker at once instead of leaving it unacknowledged for the
    /// life of the channel, where it would hold a prefetch slot forever and, enough of them,
    /// stop the worker. The broker's delivery limit then dead-letters a message that keeps
    /// panicking (`delivery_limit`).
    async fn run(self, delivery: Delivery) {
        let acker = delivery.acker.clone();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let metrics = self.shared.metrics.clone();
        let health = Arc::clone(&self.shared.health);
        health.progress.started();
        let _finished = scopeguard(|| health.progress.finished());
        if AssertUnwindSafe(self.run_contained(delivery))
            .catch_unwind()
            .await
            .is_err()
        {
            metrics.panicked.inc();
            error!(%message_id, "handling a delivery panicked; handing it back (the delivery limit bounds repeats)");
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            // Fails only if the delivery was already settled or the channel is gone: either
            // way the broker has it.
            let _ = acker.nack(requeue).await;
        }
    }

    async fn run_contained(self, mut delivery: Delivery) {
        let arrived = Instant::now();
        let shared = &self.shared;
        let envelope = Envelope::read(
            &delivery.properties,
            &delivery.data,
            delivery.redelivered,
            &shared.options.sealer,
        );
        if matches!(envelope.seal, SealCheck::Untrusted { .. }) {
            shared.metrics.untrusted_headers.inc();
        }
        // A body over the limit is let go at once, not held while the job waits for a permit.
        let discarded =
            oversized::Discarded::take(&mut delivery.data, shared.options.worker.max_body_bytes);
        let Ok(_permit) = Arc::clone(&shared.concurrency).acquire_owned().await else {
            return;
        };
        // Waiting for a permit can outlast the session or the worker: a job that has not
        // started yet must not start now. Its message goes back to the broker unacked.
        if self.shutdown.is_cancelled()
            || self.session_lost.is_cancelled()
            || !delivery.acker.usable()
        {
            return;
        }
        // Every log line about this job carries its id, and its idempotency key once known.
        let span =
            tracing::info_span!("job", job_id = %envelope.job_id, key = tracing::field::Empty);
        // Boxed, so that deliveries waiting for a permit (up to prefetch − concurrency of
        // them) hold a small future, not the whole job's.
        Box::pin(
            self.handle(delivery, envelope, discarded, arrived)
                .instrument(span),
        )
        .await;
    }

    async fn handle(
        self,
        delivery: Delivery,
        envelope: Envelope,
        discarded: Option<oversized::Discarded>,
        arrived: Instant,
    ) {
        let shared = &self.shared;
        let started = Instant::now();
        shared.metrics.in_flight.inc();
        let _in_flight = scopeguard(|| shared.metrics.in_flight.dec());
        let owner = uuid::Uuid::new_v4().to_string();

        let processed = loop {
            if let Some(discarded) = &discarded {
                break discarded.processed();
            }
            let attempt = Attempt {
                body: &delivery.data,
                envelope: &envelope,
                owner: &owner,
                shutdown: &self.shutdown,
            };
            let running = AssertUnwindSafe(shared.pipeline.process(attempt)).catch_unwind();
            let processed = match tokio::time::timeout(shared.options.worker.job_timeout, running)
                .await
            {
                Ok(Ok(processed)) => processed,
                Err(_) => {
                    // Hung. Hand it back: its claim expires, and if it hangs every worker,
                    // the takeover count dead-letters it as `delivery_limit`.
                    let limit = shared.options.worker.job_timeout;
                    error!(job_id = %envelope.job_id, ?limit, "job still running after the job timeout; handing it back");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    let _ = delivery.acker.nack(requeue).await;
                    return;
                }
                Ok(Err(_)) => {
                    // A bug. Requeue it: if it keeps crashing, the broker's delivery limit
                    // dead-letters it as `delivery_limit` rather than letting it loop forever.
                    error!(job_id = %envelope.job_id, "processing panicked; requeueing (the delivery limit bounds repeats)");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    let _ = delivery.acker.nack(requeue).await;
                    return;
                }
            };
            if let Outcome::Suspend { why } = &processed.outcome {
                warn!(job_id = %envelope.job_id, %why, "Redis unavailable before the refund; waiting for it");
                if wait_for_redis(shared, &self.shutdown).await {
                    continue;
                }
            }
            break processed;
        };

        let planned = plan(&processed, &Delivered::of(&envelope), &shared.options.retry);
        let end = dispose::dispose(
            shared,
            &self.publisher,
            &delivery,
            &envelope,
            planned,
            arrived,
        )
        .await;
        if matches!(end.fate, Fate::HandBack { .. })
            && !self.publisher.channel().status().connected()
        {
            // Nothing can be republished on this session any more: end it and reconnect
            // (which also redeclares a topology someone deleted).
            self.session_lost.cancel();
        }
        shared.metrics.record_end(&end, started.elapsed());
        log_end(&end);
        if let Some(reports) = &shared.reports {
            let _ = reports.send(JobReport {
                job_id: envelope.job_id.clone(),
                outcome: processed.outcome,
                disposition: Disposition::of(&end),
                end,
            });
        }
    }
}

/// Marks Redis down (pausing consumption) and waits until the monitor sees it take writes
/// again (true) or the worker stops (false).
async fn wait_for_redis(shared: &Shared, shutdown: &CancellationToken) -> bool {
    let mut ok = shared.redis_ok.subscribe();
    shared.redis_ok.send_replace(false);
    shared
        .pipeline
        .redis_readiness()
        .down("a job could not reach Redis");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            changed = ok.changed() => {
                if changed.is_err() {
                    return false;
                }
                if *ok.borrow_and_update() {
                    return true;
                }
            }
        }
    }
}

/// The one task that brings consumption back after a Redis outage: whenever `redis_ok` goes
/// false it probes Redis with a write until one succeeds, then sets it true. Jobs only ever
/// set it false, so no interleaving can leave it false with nobody probing.
async fn redis_monitor(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ok = shared.redis_ok.subscribe();
    loop {
        while *ok.borrow_and_update() {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = ok.changed() => if changed.is_err() { return; },
            }
        }
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match shared.pipeline.store().probe_write().await {
                Ok(()) => {
                    shared.pipeline.redis_readiness().up();
                    shared.redis_ok.send_replace(true);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?wait, "Redis still not taking writes");
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The job's one log line about how it ended.
fn log_end(end: &JobEnd) {
    let job_id = end.job_id.as_str();
    match &end.fate {
        Fate::Refunded {
            provider,
            refund_id,
            adopted,
            ..
        } => info!(job_id, %provider, refund_id, adopted, "refunded"),
        Fate::Duplicate { .. } => info!(job_id, "already refunded; skipped"),
        Fate::Pending {
            refund_id, tier, ..
        } => info!(
            job_id,
            refund_id,
            queue = tier.queue,
            "refund pending; will check its status"
        ),
        // A failed attempt is news; a wait (another worker's claim, a rate limit, a pause, an
        // open circuit) is not, and a busy hour has many.
        Fate::Retry {
            why,
            tier,
            counted: true,
            ..
        } => info!(job_id, queue = tier.queue, why, "retrying later"),
        Fate::Retry { why, tier, .. } => {
            debug!(
                job_id,
                queue = tier.queue,
                why,
                "waiting; trying again later"
            );
        }
        Fate::DeadLetter { class, why, .. } => {
            warn!(job_id, class = class.as_str(), why, "dead-lettered");
        }
        Fate::HandBack { why } => warn!(job_id, why, "handed back to the broker"),
    }
}

/// Runs `f` when dropped (the in-flight gauge must go down on every path, panics included).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
