//! `refund-worker bench` (SPEC §10): publishes N jobs under a fresh prefix, runs the worker
//! against the sandbox (a separate process, so its CPU and memory are not counted as the
//! worker's) at a given provider latency and concurrency, and prints one line: jobs/s, p50
//! and p99 job latency, the worker's overhead (latency minus the provider's injected
//! latency), peak RSS, and the bare broker ceiling measured in the same run (consuming and
//! acking the same messages with nothing else) with the ratio of the two.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CommandError, Context, runtime, scratch_world};
use crate::{
    app::{self, Connections},
    broker::{self, OutgoingJob, Publisher, ROUTING_KEY, topology::quorum_args},
    cli::BenchArgs,
    job::{JobDate, ProviderName},
    outcome::Outcome,
    store,
    worker::{Disposition, JobReport},
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
    /// Jobs refunded (must equal `jobs`).
    pub refunded: u64,
    /// Refunds in the sandbox ledger (must equal `jobs`).
    pub ledger: u64,
    /// Jobs per second, from the worker's start to its last disposition.
    pub jobs_per_sec: f64,
    /// Median job latency: from the delivery's arrival in the worker to its ack.
    pub p50_ms: f64,
    /// 99th percentile job latency.
    pub p99_ms: f64,
    /// 99th percentile of job latency minus the provider's injected latency.
    pub overhead_p99_ms: f64,
    /// Peak resident memory of this process during the worker's run.
    pub peak_rss_mib: f64,
    /// Bare consume-and-ack rate of the same messages on this broker.
    pub ceiling_per_sec: Option<f64>,
    /// `jobs_per_sec / ceiling_per_sec`.
    pub ratio: Option<f64>,
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
        write!(
            f,
            ": {:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms, overhead p99 {:.1} ms, peak RSS {:.1} MiB",
            self.jobs_per_sec, self.p50_ms, self.p99_ms, self.overhead_p99_ms, self.peak_rss_mib
        )?;
        match (self.ceiling_per_sec, self.ratio) {
            (Some(ceiling), Some(ratio)) => write!(
                f,
                "; broker ceiling {ceiling:.0} msg/s; ratio {:.1}%",
                ratio * 100.0
            ),
            _ => write!(f, "; broker ceiling not measured"),
        }
    }
}

/// Runs the benchmark and prints its line.
pub async fn run(ctx: &Context, args: BenchArgs) -> Result<(), CommandError> {
    let (connections, connection, redis) = scratch_world(ctx, "bench").await?;
    let prefix = connections.prefix.clone();
    let sandbox = SandboxProcess::start(args.provider_latency_ms).await?;

    let concurrency = args.concurrency;
    let prefetch = args.prefetch.unwrap_or_else(|| {
        u16::try_from(concurrency.saturating_mul(2).max(64)).unwrap_or(u16::MAX)
    });
    let mut settings = ctx.settings.clone();
    settings.point_providers_at(&sandbox.url);
    settings.worker.concurrency = concurrency as usize;
    settings.worker.prefetch = prefetch;
    // The sandbox is the only provider here: no client-side limit may be the bottleneck.
    let stripe = settings.providers.get_mut(ProviderName::Stripe);
    stripe.concurrency = concurrency as usize;
    stripe.rate_limit = 0;

    let jobs = bench_jobs(args.jobs as usize, &prefix, JobDate::today());
    let publisher = Publisher::open(&connection).await.map_err(runtime)?;
    let topology = connections.topology(&settings);
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;

    let measured = measure(
        &connection,
        &publisher,
        &connections,
        &settings,
        &jobs,
        &sandbox,
        &args,
        prefetch,
    )
    .await;

    // Clean up whatever happened.
    let _ = topology.delete(publisher.channel()).await;
    let _ = publisher
        .channel()
        .queue_delete(ceiling_queue(&prefix).into(), QueueDeleteOptions::default())
        .await;
    let store = store::IdempotencyStore::new(
        redis,
        &prefix,
        settings.idempotency.lease,
        settings.idempotency.ttl,
    );
    let _ = store.delete_namespace().await;
    let _ = connection.close(200, "bench done".into()).await;
    drop(sandbox);

    let result = measured?;
    if args.json {
        println!("{}", serde_json::to_string(&result).map_err(runtime)?);
    } else {
        println!("{result}");
    }
    if result.refunded != result.jobs || result.ledger != result.jobs {
        return Err(CommandError::Runtime(format!(
            "{} of {} jobs refunded, {} refunds in the sandbox ledger: the figures above are not a valid run",
            result.refunded, result.jobs, result.ledger
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    connection: &Connection,
    publisher: &Publisher,
    connections: &Connections,
    settings: &crate::config::Settings,
    jobs: &[OutgoingJob],
    sandbox: &SandboxProcess,
    args: &BenchArgs,
    prefetch: u16,
) -> Result<BenchResult, CommandError> {
    let ceiling = if args.no_ceiling {
        None
    } else {
        Some(ceiling(connection, publisher, &connections.prefix, jobs, prefetch).await?)
    };
    let topology = connections.topology(settings);
    if args.rate.is_none() {
        publish_all(publisher, &topology.jobs_exchange(), jobs).await?;
    }

    let app = app::assemble(
        connections,
        settings,
        args.rate.is_none(),
        "refund-worker bench",
    )
    .await
    .map_err(runtime)?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<JobReport>();
    let worker = app.worker.with_reports(reports_tx);
    let stop = CancellationToken::new();
    reset_peak_rss();
    let started = Instant::now();
    let pacing = args.rate.map(|rate| {
        let publisher = publisher.clone();
        let exchange = topology.jobs_exchange();
        let jobs = jobs.to_vec();
        tokio::spawn(async move { publish_paced(&publisher, &exchange, &jobs, rate).await })
    });
    let expected = jobs.len();
    let latency = Duration::from_millis(args.provider_latency_ms);
    let counting = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while let Some(report) = reports.recv().await {
                if tally.count(&report, latency) && tally.finished == expected {
                    tally.last = Some(Instant::now());
                    // A paced run has no idle moment to wait for: stop once all are done.
                    stop.cancel();
                }
            }
            tally
        })
    };
    let run = worker.run(stop.clone()).await;
    drop(worker);
    let mut tally = counting.await.map_err(runtime)?;
    run.map_err(runtime)?;
    if let Some(pacing) = pacing {
        pacing.await.map_err(runtime)??;
    }
    let peak_rss_mib = peak_rss_mib();
    let elapsed = tally.last.unwrap_or_else(Instant::now) - started;
    let ledger = sandbox.ledger_len().await?;

    let jobs_per_sec = tally.finished as f64 / elapsed.as_secs_f64().max(1e-9);
    let ratio = ceiling.map(|c| jobs_per_sec / c);
    Ok(BenchResult {
        prefix: connections.prefix.clone(),
        jobs: expected as u64,
        provider_latency_ms: args.provider_latency_ms,
        concurrency: args.concurrency,
        prefetch,
        rate: args.rate,
        refunded: tally.refunded,
        ledger,
        jobs_per_sec,
        p50_ms: percentile_ms(&mut tally.latencies, 0.50),
        p99_ms: percentile_ms(&mut tally.latencies, 0.99),
        overhead_p99_ms: percentile_ms(&mut tally.overheads, 0.99),
        peak_rss_mib,
        ceiling_per_sec: ceiling,
        ratio,
    })
}

/// What the reports added up to.
#[derive(Debug, Default)]
struct Tally {
    finished: usize,
    refunded: u64,
    latencies: Vec<Duration>,
    overheads: Vec<Duration>,
    last: Option<Instant>,
}

impl Tally {
    /// Counts a report; true when it was the job's last.
    fn count(&mut self, report: &JobReport, provider_latency: Duration) -> bool {
        let last = matches!(
            report.disposition,
            Disposition::Acked | Disposition::DeadLettered { .. }
        );
        if last {
            self.finished += 1;
            self.refunded += u64::from(matches!(report.outcome, Outcome::Refunded { .. }));
            self.latencies.push(report.elapsed);
            self.overheads
                .push(report.elapsed.saturating_sub(provider_latency));
        }
        last
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
    let mut acked = 0;
    while acked < jobs.len() {
        let delivery = match consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(runtime(e)),
            None => return Err(runtime("the broker closed the ceiling consumer")),
        };
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(runtime)?;
        acked += 1;
    }
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
    exchange: &str,
    jobs: &[OutgoingJob],
) -> Result<(), CommandError> {
    let results =
        broker::publish_jobs_to(publisher, (exchange, ROUTING_KEY), jobs, None, |_| {}).await;
    unconfirmed(&results)
}

/// Publishes `jobs` at `rate` per second, in 10 ms slices.
async fn publish_paced(
    publisher: &Publisher,
    exchange: &str,
    jobs: &[OutgoingJob],
    rate: u32,
) -> Result<(), CommandError> {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < jobs.len() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
        let upto = due.clamp(sent, jobs.len());
        if upto > sent {
            publish_all(publisher, exchange, &jobs[sent..upto]).await?;
            sent = upto;
        }
    }
    Ok(())
}

/// Forgets the peak resident memory so far (Linux: `clear_refs` 5), so the peak read later
/// is the worker's run, not the publishing before it.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB; 0 when unknown.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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
