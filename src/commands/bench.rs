//! `refund-worker bench` (SPEC §10): publishes N jobs under a fresh prefix, runs the worker
//! (`refund-worker run`, a child process, stopped once every outcome is in) against the sandbox (another child
//! process) at a given provider latency and concurrency, and prints one line: jobs/s, p50 and
//! p99 job latency, the worker's overhead (latency minus the provider's injected latency), the
//! worker's peak RSS and CPU per job, and the bare broker ceiling measured in the same run
//! (consuming the same messages with nothing else, acks pipelined: one `multiple` ack per half
//! prefetch) with the ratio of the two.
//!
//! The worker is observed the way its users see it: through its outcome events, which carry
//! each job's time from the delivery's arrival at the worker to its outcome.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde::Serialize;
use serde_json::json;

use super::{CommandError, Context, runtime, scratch_world};
mod proc_cpu;

use crate::{
    app::Connections,
    broker::{
        self, OutgoingJob, Publisher, Topology,
        events::{EventStatus, OutcomeEvent},
        topology::quorum_args,
    },
    cli::BenchArgs,
    job::JobDate,
    store,
};

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Queue and key prefix used (deleted afterwards).
    pub prefix: String,
    /// Jobs published.
    pub jobs: u64,
    /// Sandbox latency per provider call.
    pub provider_latency_ms: u64,
    /// Worker concurrency.
    pub concurrency: u32,
    /// Worker prefetch.
    pub prefetch: u16,
    /// Publishing rate, when paced.
    pub rate: Option<u32>,
    /// Jobs refunded, by their outcome events (must equal `jobs`).
    pub refunded: u64,
    /// Oversized bodies published ahead of the jobs.
    pub oversized: u64,
    /// Their size, MiB.
    pub oversized_mib: u32,
    /// Oversized bodies dead-lettered, by their outcome events (must equal `oversized`).
    pub refused: u64,
    /// Refunds in the sandbox ledger (must equal `jobs`).
    pub ledger: u64,
    /// Jobs per second, from the first delivery's arrival at the worker to the last outcome.
    pub jobs_per_sec: f64,
    /// Median job latency: from the delivery's arrival at the worker to its outcome.
    pub p50_ms: f64,
    /// 99th percentile job latency.
    pub p99_ms: f64,
    /// 99th percentile of job latency minus the provider's injected latency.
    pub overhead_p99_ms: f64,
    /// Peak resident memory of the worker process.
    pub peak_rss_mib: f64,
    /// The worker process's CPU time (user + system) per job.
    pub worker_cpu_us_per_job: f64,
    /// RabbitMQ's CPU time per job while the worker ran, from `/proc` (`None` when the
    /// broker is not a process of this machine that `/proc` shows).
    pub rabbitmq_cpu_us_per_job: Option<f64>,
    /// Redis's CPU time per job while the worker ran, from `/proc`.
    pub redis_cpu_us_per_job: Option<f64>,
    /// Bare consume-and-ack rate of the same messages on this broker.
    pub ceiling_per_sec: Option<f64>,
    /// `jobs_per_sec / ceiling_per_sec`.
    pub ratio: Option<f64>,
    /// The worker's Stripe rate limit, when the run set one.
    pub rate_limit: Option<u32>,
    /// Seconds from the first delivery's arrival to the last outcome.
    pub drain_secs: f64,
    /// Redis commands served during the run (every client of this Redis, the commands run
    /// inside scripts included) per refund.
    pub redis_calls_per_refund: f64,
    /// Messages published to the broker per refund: the job, its outcome event, and every
    /// trip through a retry tier (retried and deferred).
    pub broker_publishes_per_refund: f64,
    /// Provider calls that waited for the rate limit.
    pub throttled: u64,
    /// Jobs sent to a retry tier without spending an attempt.
    pub deferred: u64,
    /// Jobs sent to a retry tier after a failed attempt.
    pub retried: u64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bench: {} jobs, provider latency {} ms, concurrency {}, prefetch {}",
            self.jobs, self.provider_latency_ms, self.concurrency, self.prefetch
        )?;
        if let Some(rate) = self.rate {
            write!(f, ", paced at {rate}/s")?;
        }
        if self.oversized > 0 {
            write!(
                f,
                ", {} oversized bodies of {} MiB ahead of them ({} dead-lettered)",
                self.oversized, self.oversized_mib, self.refused
            )?;
        }
        write!(
            f,
            ": {:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms, overhead p99 {:.1} ms, worker peak RSS {:.1} MiB, worker CPU {:.0} µs/job",
            self.jobs_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.overhead_p99_ms,
            self.peak_rss_mib,
            self.worker_cpu_us_per_job
        )?;
        match (self.ceiling_per_sec, self.ratio) {
            (Some(ceiling), Some(ratio)) => write!(
                f,
                "; broker ceiling {ceiling:.0} msg/s; ratio {:.1}%",
                ratio * 100.0
            )?,
            _ => write!(f, "; broker ceiling not measured")?,
        }
        let service = |cpu: Option<f64>| {
            cpu.map_or("not measured".to_owned(), |us| format!("{us:.0} µs/job"))
        };
        write!(
            f,
            "; RabbitMQ CPU {}, Redis CPU {}",
            service(self.rabbitmq_cpu_us_per_job),
            service(self.redis_cpu_us_per_job)
        )?;
        write!(
            f,
            "; drained in {:.1} s; {:.2} Redis calls and {:.2} broker publishes per refund; {} calls waited for a rate limit, {} jobs deferred and {} retried through a retry tier",
            self.drain_secs,
            self.redis_calls_per_refund,
            self.broker_publishes_per_refund,
            self.throttled,
            self.deferred,
            self.retried
        )?;
        if let Some(limit) = self.rate_limit {
            write!(f, " (Stripe limited to {limit}/s)")?;
        }
        Ok(())
    }
}

/// Runs the benchmark and prints its line.
pub async fn run(ctx: &Context, args: BenchArgs) -> Result<(), CommandError> {
    let (connections, connection, redis) = scratch_world(ctx, "bench").await?;
    let prefix = connections.prefix.clone();
    let sandbox = SandboxProcess::start(args.provider_latency_ms).await?;
    let settings = &ctx.settings;
    let topology = connections.topology(settings);
    let publisher = Publisher::open(&connection).await.map_err(runtime)?;
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;

    let measured = measure(
        &connection,
        &publisher,
        &connections,
        &sandbox,
        &args,
        &redis,
    )
    .await;

    // Clean up whatever happened.
    let _ = topology.delete(publisher.channel()).await;
    for queue in [ceiling_queue(&prefix), events_queue(&prefix)] {
        let _ = publisher
            .channel()
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let store = store::IdempotencyStore::from_settings(redis, &prefix, &settings.idempotency);
    let _ = store.delete_namespace().await;
    let _ = connection.close(200, "bench done".into()).await;
    drop(sandbox);

    let result = measured?;
    if args.json {
        println!("{}", serde_json::to_string(&result).map_err(runtime)?);
    } else {
        println!("{result}");
    }
    if result.refused != result.oversized {
        return Err(CommandError::Runtime(format!(
            "{} of {} oversized bodies dead-lettered: the figures above are not a valid run",
            result.refused, result.oversized
        )));
    }
    if result.refunded != result.jobs || result.ledger != result.jobs {
        return Err(CommandError::Runtime(format!(
            "{} of {} jobs refunded, {} refunds in the sandbox ledger: the figures above are not a valid run",
            result.refunded, result.jobs, result.ledger
        )));
    }
    Ok(())
}

fn prefetch_of(args: &BenchArgs) -> u16 {
    args.prefetch.unwrap_or_else(|| {
        u16::try_from(args.concurrency.saturating_mul(2).max(64)).unwrap_or(u16::MAX)
    })
}

async fn measure(
    connection: &Connection,
    publisher: &Publisher,
    connections: &Connections,
    sandbox: &SandboxProcess,
    args: &BenchArgs,
    redis: &redis::aio::ConnectionManager,
) -> Result<BenchResult, CommandError> {
    let prefix = &connections.prefix;
    let prefetch = prefetch_of(args);
    let jobs = bench_jobs(args.jobs as usize, prefix, JobDate::today());
    let ceiling = if args.no_ceiling {
        None
    } else {
        Some(ceiling(connection, publisher, prefix, &jobs, prefetch).await?)
    };
    let topology = connections.topology(&crate::config::Settings::default());
    let mut events = subscribe_events(connection, prefix, &topology.events_exchange()).await?;
    let oversized = oversized_bodies(args.oversized, args.oversized_mib);
    publish_all(publisher, &topology, &oversized).await?;
    // The bench holds no copy of them while the worker runs.
    let oversized = oversized.len();
    if args.rate.is_none() {
        publish_all(publisher, &topology, &jobs).await?;
    }

    let metrics_addr = worker_metrics_addr(args)?;
    let redis_before = redis_calls(redis).await?;
    // The services' own CPU while the worker runs, when they are processes of this machine.
    let services = [
        service_on(&connections.amqp_url, 5672),
        service_on(&connections.redis_url, 6379),
    ];
    let services_before = services.map(|s| s.and_then(proc_cpu::Watched::cpu));
    let worker = WorkerProcess::start(connections, &sandbox.url, args, prefetch, metrics_addr)?;
    if args.rate.is_some() {
        // Paced jobs must meet a running worker, not a backlog built while it started.
        wait_for_consumer(publisher, &topology.jobs_queue()).await?;
    }
    // A paced run's window opens when pacing starts: a publisher that falls behind catches up
    // in a burst, and a window opened at the first arrival would count that burst as speed.
    let paced_from = args.rate.map(|_| Instant::now());
    let pacing = args.rate.map(|rate| {
        let publisher = publisher.clone();
        let topology = topology.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move { publish_paced(&publisher, &topology, &jobs, rate).await })
    });
    let latency = Duration::from_millis(args.provider_latency_ms);
    let mut tally = Tally::default();
    let mut exited = None;
    let mut waiting = worker.wait();
    while tally.finished < jobs.len() + oversized {
        // Events still in flight when the worker exits arrive within moments.
        let patience = if exited.is_some() { 2 } else { 120 };
        tokio::select! {
            next = tokio::time::timeout(Duration::from_secs(patience), events.next()) => {
                match next {
                    Ok(Some(Ok(delivery))) => tally.count(&delivery.data, latency),
                    Ok(Some(Err(e))) => return Err(runtime(e)),
                    Ok(None) => return Err(runtime("the broker closed the events consumer")),
                    Err(_) => break,
                }
            }
            exit = &mut waiting, if exited.is_none() => exited = Some(exit),
        }
    }
    // What the worker counted, read before it stops (nothing is left to count by then).
    let counted = worker_counts(metrics_addr).await;
    if exited.is_none() {
        // Every outcome is in: stop it (SIGTERM finishes what is in flight). Not
        // `--exit-when-idle`: the queues look empty while the last deliveries of a burst of
        // large messages are still on the wire to the worker.
        worker.terminate();
        exited = Some(waiting.await);
    }
    if let Some(pacing) = pacing {
        pacing.await.map_err(runtime)??;
    }
    let usage = match exited {
        Some(Ok(Ok(usage))) => usage,
        Some(Ok(Err(e))) => {
            return Err(CommandError::Runtime(format!("the worker process {e}")));
        }
        Some(Err(e)) => return Err(runtime(e)),
        None => return Err(runtime("the worker was not waited for")),
    };
    let services_after = services.map(|s| s.and_then(proc_cpu::Watched::cpu));
    let ledger = sandbox.ledger_len().await?;
    let redis_after = redis_calls(redis).await?;
    let (retried, deferred, throttled) = counted.unwrap_or_default();
    let per_refund = |n: f64| n / (tally.refunded.max(1) as f64);

    let elapsed = match (paced_from.or(tally.first_arrival), tally.last) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let jobs_per_sec = tally.refunded as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(BenchResult {
        prefix: prefix.clone(),
        jobs: jobs.len() as u64,
        provider_latency_ms: args.provider_latency_ms,
        concurrency: args.concurrency,
        prefetch,
        rate: args.rate,
        refunded: tally.refunded,
        oversized: oversized as u64,
        oversized_mib: args.oversized_mib,
        refused: tally.refused,
        ledger,
        jobs_per_sec,
        p50_ms: percentile_ms(&mut tally.latencies, 0.50),
        p99_ms: percentile_ms(&mut tally.latencies, 0.99),
        overhead_p99_ms: percentile_ms(&mut tally.overheads, 0.99),
        peak_rss_mib: usage.max_rss_kib as f64 / 1024.0,
        worker_cpu_us_per_job: usage.cpu.as_secs_f64() * 1e6 / (tally.refunded.max(1) as f64),
        rabbitmq_cpu_us_per_job: spent(services_before[0], services_after[0])
            .map(|cpu| per_refund(cpu.as_secs_f64() * 1e6)),
        redis_cpu_us_per_job: spent(services_before[1], services_after[1])
            .map(|cpu| per_refund(cpu.as_secs_f64() * 1e6)),
        ceiling_per_sec: ceiling,
        ratio: ceiling.map(|c| jobs_per_sec / c),
        rate_limit: args.rate_limit,
        drain_secs: elapsed.as_secs_f64(),
        redis_calls_per_refund: per_refund(redis_after.saturating_sub(redis_before) as f64),
        broker_publishes_per_refund: per_refund(
            (jobs.len() as u64 + tally.finished as u64 + retried + deferred) as f64,
        ),
        throttled,
        deferred,
        retried,
    })
}

/// What the outcome events added up to.
#[derive(Debug, Default)]
struct Tally {
    finished: usize,
    refunded: u64,
    /// Dead-lettered (the oversized bodies): counted, but not in the latencies.
    refused: u64,
    latencies: Vec<Duration>,
    overheads: Vec<Duration>,
    /// When the first delivery reached the worker (estimated from the events).
    first_arrival: Option<Instant>,
    last: Option<Instant>,
}

impl Tally {
    /// Counts one outcome event.
    fn count(&mut self, body: &[u8], provider_latency: Duration) {
        let Ok(event) = serde_json::from_slice::<OutcomeEvent>(body) else {
            return;
        };
        self.finished += 1;
        if event.status == EventStatus::DeadLettered {
            self.refused += 1;
            return;
        }
        let now = Instant::now();
        let took = Duration::from_micros(event.duration_us.unwrap_or(0));
        let arrived = now.checked_sub(took).unwrap_or(now);
        self.first_arrival = Some(self.first_arrival.map_or(arrived, |f| f.min(arrived)));
        self.last = Some(now);
        self.refunded += u64::from(event.status == EventStatus::Succeeded);
        self.latencies.push(took);
        self.overheads.push(took.saturating_sub(provider_latency));
    }
}

/// The `q` quantile of `values`, in milliseconds (0 when there are none).
fn percentile_ms(values: &mut [Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1].as_secs_f64() * 1_000.0
}

/// `n` bodies of `mib` MiB each: valid jobs but for a description far over the body limit.
fn oversized_bodies(n: u32, mib: u32) -> Vec<OutgoingJob> {
    (0..n)
        .map(|i| {
            let padding = "x".repeat(mib as usize * 1024 * 1024);
            let body = json!({
                "payment_id": format!("pi_oversized_{i}"),
                "amount": 500,
                "provider": "stripe",
                "description": padding,
            });
            OutgoingJob::new(serde_json::to_vec(&body).expect("JSON values serialize"))
        })
        .collect()
}

/// `n` distinct valid Stripe jobs.
fn bench_jobs(n: usize, prefix: &str, date: JobDate) -> Vec<OutgoingJob> {
    let reasons = ["CUSTOMER_REQUEST", "DUPLICATE", "FRAUD"];
    (0..n)
        .map(|i| {
            let body = json!({
                "payment_id": format!("pi_{prefix}_{i:07}").replace('-', "_"),
                "amount": 500 + (i as u64 * 7919) % 49_500,
                "provider": "stripe",
                "reason": reasons[i % reasons.len()],
                "description": format!("bench refund {i}"),
                "date": date.to_string(),
            });
            OutgoingJob::new(serde_json::to_vec(&body).expect("JSON values serialize"))
        })
        .collect()
}

fn ceiling_queue(prefix: &str) -> String {
    format!("{prefix}.ceiling")
}

fn events_queue(prefix: &str) -> String {
    format!("{prefix}.bench-events")
}

/// A queue of every outcome event of the run, consumed without acks.
async fn subscribe_events(
    connection: &Connection,
    prefix: &str,
    exchange: &str,
) -> Result<lapin::Consumer, CommandError> {
    let queue = events_queue(prefix);
    let channel = connection.create_channel().await.map_err(runtime)?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(runtime)?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "refund.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(runtime)?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    channel
        .basic_consume(
            queue.as_str().into(),
            "bench-events".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .map_err(runtime)
}

/// The bare broker ceiling: the same messages published to a quorum queue of their own, then
/// consumed with the worker's prefetch and acked one by one, with nothing else.
async fn ceiling(
    connection: &Connection,
    publisher: &Publisher,
    prefix: &str,
    jobs: &[OutgoingJob],
    prefetch: u16,
) -> Result<f64, CommandError> {
    let queue = ceiling_queue(prefix);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .channel()
        .queue_declare(queue.as_str().into(), durable, quorum_args(&[]))
        .await
        .map_err(runtime)?;
    let results = broker::publish_jobs_to(publisher, ("", &queue), jobs, None, |_| {}).await;
    unconfirmed(&results)?;

    let channel = connection.create_channel().await.map_err(runtime)?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(runtime)?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(runtime)?;
    // The broker's best: acks coalesced (`multiple`) over contiguous delivery tags, one frame
    // per half prefetch, as a consumer that does nothing else would send them.
    let every = usize::from(prefetch / 2).clamp(1, 256);
    let mut received = 0;
    let mut unacked = 0;
    while received < jobs.len() {
        let delivery = match consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(runtime(e)),
            None => return Err(runtime("the broker closed the ceiling consumer")),
        };
        received += 1;
        unacked += 1;
        if unacked == every || received == jobs.len() {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(runtime)?;
            unacked = 0;
        }
    }
    let acked = received;
    let elapsed = started.elapsed();
    let _ = channel.close(200, "ceiling measured".into()).await;
    Ok(acked as f64 / elapsed.as_secs_f64().max(1e-9))
}

fn unconfirmed(results: &[Result<(), broker::BrokerError>]) -> Result<(), CommandError> {
    match results.iter().filter(|r| r.is_err()).count() {
        0 => Ok(()),
        n => Err(CommandError::Runtime(format!(
            "{n} bench message(s) were not confirmed by RabbitMQ"
        ))),
    }
}

async fn publish_all(
    publisher: &Publisher,
    topology: &Topology,
    jobs: &[OutgoingJob],
) -> Result<(), CommandError> {
    unconfirmed(&broker::publish_jobs(publisher, topology, jobs, None, |_| {}).await)
}

/// Waits until something consumes `queue` (the worker has started).
async fn wait_for_consumer(publisher: &Publisher, queue: &str) -> Result<(), CommandError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for _ in 0..600 {
        let declared = publisher
            .channel()
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(runtime)?;
        if declared.consumer_count() > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(runtime("the worker did not start consuming within 30 s"))
}

/// The process of this machine that listens on the port of `url` (`default_port` when the
/// URL names none), when `/proc` shows it and the host is a loopback address.
fn service_on(url: &str, default_port: u16) -> Option<proc_cpu::Watched> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    local
        .then(|| proc_cpu::Watched::listening_on(parsed.port().unwrap_or(default_port)))
        .flatten()
}

/// CPU spent between two samples of the same process.
fn spent(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

/// Publishes `jobs` at `rate` per second, in 2 ms slices.
async fn publish_paced(
    publisher: &Publisher,
    topology: &Topology,
    jobs: &[OutgoingJob],
    rate: u32,
) -> Result<(), CommandError> {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut sent = 0;
    while sent < jobs.len() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
        let upto = due.clamp(sent, jobs.len());
        if upto > sent {
            publish_all(publisher, topology, &jobs[sent..upto]).await?;
            sent = upto;
        }
    }
    Ok(())
}

/// What the kernel counted for an exited process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Peak resident memory, KiB.
    max_rss_kib: i64,
    /// User plus system CPU time.
    cpu: Duration,
}

/// Where the worker serves its metrics: the address asked for, or a free port when it asks
/// for port 0 (the bench reads the worker's counts there).
fn worker_metrics_addr(args: &BenchArgs) -> Result<std::net::SocketAddr, CommandError> {
    if args.worker_metrics_addr.port() != 0 {
        return Ok(args.worker_metrics_addr);
    }
    std::net::TcpListener::bind(args.worker_metrics_addr)
        .and_then(|l| l.local_addr())
        .map_err(runtime)
}

/// Commands Redis has served since it started (`INFO commandstats`), over every client and
/// including those scripts run.
async fn redis_calls(redis: &redis::aio::ConnectionManager) -> Result<u64, CommandError> {
    let mut conn = redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .map_err(runtime)?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

/// The worker's retried, deferred and throttled counts, summed over providers, from its
/// `/metrics`; `None` if it could not be read.
async fn worker_counts(addr: std::net::SocketAddr) -> Option<(u64, u64, u64)> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Some((
        sum("refunds_retried_total"),
        sum("refunds_deferred_total"),
        sum("refunds_throttled_total"),
    ))
}

/// `refund-worker run` as a child process, measured by the kernel when it exits.
struct WorkerProcess {
    pid: i32,
}

impl WorkerProcess {
    fn start(
        connections: &Connections,
        sandbox_url: &str,
        args: &BenchArgs,
        prefetch: u16,
        metrics_addr: std::net::SocketAddr,
    ) -> Result<Self, CommandError> {
        let exe = std::env::current_exe().map_err(runtime)?;
        let mut command = Command::new(exe);
        command
            .args(["--prefix", &connections.prefix])
            .args(["--amqp-url", &connections.amqp_url])
            .args(["--redis-url", &connections.redis_url])
            .args(["run", "--metrics-addr", &metrics_addr.to_string()])
            .args(["--providers-url", sandbox_url])
            .env("REFUND_WORKER__CONCURRENCY", args.concurrency.to_string())
            .env("REFUND_WORKER__PREFETCH", prefetch.to_string())
            // The sandbox is the only provider here: no client-side limit may be the
            // bottleneck, unless the run is about one (`--rate-limit`).
            .env(
                "REFUND_PROVIDERS__STRIPE__CONCURRENCY",
                args.concurrency.to_string(),
            )
            .env(
                "REFUND_PROVIDERS__STRIPE__RATE_LIMIT",
                args.rate_limit.unwrap_or(0).to_string(),
            )
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| CommandError::Runtime(format!("cannot start the worker: {e}")))?;
        let pid = i32::try_from(child.id()).map_err(runtime)?;
        // Reaped by `wait` (wait4, for its resource usage), not by `Child`.
        drop(child);
        Ok(Self { pid })
    }

    /// Waits for the process to exit; fails if it failed.
    fn wait(&self) -> tokio::task::JoinHandle<Result<Usage, String>> {
        let pid = self.pid;
        tokio::task::spawn_blocking(move || wait_with_usage(pid))
    }

    /// Asks it to stop (SIGTERM: finish in-flight jobs, exit 0).
    fn terminate(&self) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

/// wait4(2): the child's exit status and resource usage.
fn wait_with_usage(pid: i32) -> Result<Usage, String> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid value of every field.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to live locals; pid is our own child.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error.to_string());
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("exited abnormally (wait status {status})"));
    }
    let seconds = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Usage {
        max_rss_kib: usage.ru_maxrss,
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
    })
}

/// The sandbox as a child process of this one, on a free port; killed when dropped.
struct SandboxProcess {
    child: Child,
    url: String,
}

impl SandboxProcess {
    async fn start(latency_ms: u64) -> Result<Self, CommandError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(runtime)?
            .port();
        let exe = std::env::current_exe().map_err(runtime)?;
        let child = Command::new(exe)
            .args([
                "sandbox",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--latency-ms",
                &latency_ms.to_string(),
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CommandError::Runtime(format!("cannot start the sandbox: {e}")))?;
        let sandbox = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/_sandbox/healthz", sandbox.url);
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(sandbox);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(CommandError::Runtime(format!(
            "the sandbox did not come up on {}",
            sandbox.url
        )))
    }

    async fn ledger_len(&self) -> Result<u64, CommandError> {
        let entries: Vec<serde_json::Value> =
            reqwest::get(format!("{}/_sandbox/refunds", self.url))
                .await
                .map_err(runtime)?
                .json()
                .await
                .map_err(runtime)?;
        Ok(entries.len() as u64)
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        values.reverse();
        assert_eq!(percentile_ms(&mut values, 0.50), 50.0);
        assert_eq!(percentile_ms(&mut values, 0.99), 99.0);
        assert_eq!(percentile_ms(&mut [], 0.99), 0.0);
        assert_eq!(percentile_ms(&mut [Duration::from_millis(7)], 0.99), 7.0);
    }

    #[test]
    fn bench_jobs_are_distinct_and_valid() {
        let today = JobDate::today();
        let jobs = bench_jobs(50, "bench-1a2b", today);
        let keys: std::collections::HashSet<_> = jobs
            .iter()
            .map(|j| {
                crate::job::RefundJob::parse(&j.body)
                    .expect("valid")
                    .idempotency_key(today)
                    .to_string()
            })
            .collect();
        assert_eq!(keys.len(), 50);
    }
}
