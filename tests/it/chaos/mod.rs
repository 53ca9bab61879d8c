//! Fault injection: the promise — at-least-once delivery, exactly-once refund, nothing lost —
//! under a worker SIGKILLed again and again, a broker that closes every connection and then
//! crashes, Redis frozen and then killed, providers in 5xx bursts, 429 storms and lost
//! answers, and three workers on one queue.
//!
//! Every test publishes a mixed batch (see [`batch`]) through real `refund-worker run`
//! processes, breaks things mid-batch, lets the workers recover by themselves, drains what is
//! left with `--exit-when-idle`, and balances the books ([`accounts`]): exactly one ledger
//! refund per unique valid job, every other job in the dead-letter queue with its class, and
//! published = refunded + deduplicated + dead-lettered. Each prints one line of figures.
//!
//! Size: `CHAOS_JOBS` jobs per test (default 200, CI's small form) and `CHAOS_KILLS` kill
//! cycles (default 3; 8 from 1000 jobs). The full form, as docs/RELIABILITY.md reports it:
//! `CHAOS_JOBS=5000 cargo test --release --test it chaos:: -- --nocapture --test-threads 1`.
//!
//! Infrastructure that a test breaks is private to it ([`PrivateRabbit`], [`PrivateRedis`]);
//! the shared RabbitMQ and Redis only ever see ordinary clients.

mod accounts;
mod batch;
mod workers;

use std::time::{Duration, Instant};

use refund_sandbox::{Burst, FaultOptions};
use refund_worker::config::Settings;

use crate::{
    helpers::{AMQP_URL, PrivateRedis, REDIS_URL, TestEnv, eventually},
    private_rabbit::PrivateRabbit,
};
use accounts::{EventTap, drain_dead_letters, messages_left, reconcile};
use batch::Batch;
use workers::{Logs, WorkerProcess, drain, free_port};

/// Jobs per test.
fn jobs() -> usize {
    std::env::var("CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Kill cycles of the SIGKILL test.
fn kill_cycles() -> usize {
    std::env::var("CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if jobs() >= 1000 { 8 } else { 3 })
}

/// How long a whole batch may take under faults on a loaded two-core machine.
fn batch_limit() -> Duration {
    Duration::from_secs(180) + Duration::from_millis(100) * u32::try_from(jobs()).unwrap_or(0)
}

/// One chaos test's world: its env, its batch, the tap on its outcome events, its workers'
/// logs, and the faults it injected.
struct Chaos {
    /// Prefix, sandbox, settings and store: the test's isolated world.
    env: TestEnv,
    /// What was published and what must become of each job.
    batch: Batch,
    /// Every terminal outcome, as the workers announced it.
    tap: EventTap,
    /// The workers' logs, kept if the test fails.
    logs: Logs,
    /// For the `took=` figure.
    started: Instant,
    /// What was broken and when, for the figures line.
    faults: Vec<String>,
}

impl Chaos {
    async fn begin(
        name: &str,
        faults: FaultOptions,
        tweak: impl FnOnce(&mut Settings),
        amqp_url: &str,
        redis_url: &str,
    ) -> Self {
        let env = TestEnv::with_infra(name, faults, tweak, amqp_url, redis_url).await;
        let seed = name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b));
        let batch = Batch::generate(jobs(), seed);
        let tap = EventTap::declare(amqp_url, &env.topology).await;
        let logs = Logs::new(&env);
        Self {
            env,
            batch,
            tap,
            logs,
            started: Instant::now(),
            faults: Vec::new(),
        }
    }

    /// Publishes the whole batch, confirmed.
    async fn publish(&self) {
        self.env.publish_jobs(&self.batch.jobs).await;
    }

    /// Refunds the sandbox executed so far.
    fn refunds(&self) -> usize {
        self.env.ledger().len()
    }

    /// Waits until the ledger holds `share` of the unique valid jobs (or `limit` passes: a
    /// fault is then injected wherever the batch is).
    async fn until_refunded(&self, share: f64, limit: Duration) -> usize {
        let target = (self.batch.unique_valid() as f64 * share) as usize;
        let started = Instant::now();
        while self.refunds() < target && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.refunds()
    }

    /// Waits until every job of the batch has a terminal outcome event.
    async fn until_every_job_ended(&mut self) {
        let limit = batch_limit();
        let started = Instant::now();
        loop {
            self.tap.collect().await;
            let missing = self.tap.missing(&self.batch);
            if missing == 0 {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{missing} of {} jobs still without an outcome after {limit:?} (ledger {}); worker logs in {}",
                self.batch.jobs.len(),
                self.refunds(),
                self.logs.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Drains what is left, balances the books, prints the figures, and fails unless every job
    /// is accounted for exactly; cleans up after a pass.
    async fn finish(mut self, test: &str) {
        drain(&self.env, &mut self.logs, batch_limit()).await;
        let amqp_url = self.env.connections.amqp_url.clone();
        let left = messages_left(&amqp_url, &self.env.topology).await;
        assert_eq!(left, 0, "messages left in the jobs and retry queues");
        self.tap.collect().await;
        let letters = drain_dead_letters(&amqp_url, &self.env.topology).await;
        let ledger = self.env.ledger();
        let figures = reconcile(
            &self.batch,
            &ledger,
            &letters,
            &self.tap.seen,
            &self.env.store,
        )
        .await;
        let mut faults = self.faults.clone();
        let injected = self.env.sandbox.fault_counts();
        faults.push(format!(
            "sandbox 5xx={} 429={} lost_answers={}",
            injected.server_errors, injected.rate_limited, injected.answers_lost
        ));
        let line = figures.line(
            test,
            &faults.join("; "),
            self.started.elapsed().as_secs_f64(),
        );
        println!("{line}");
        println!("chaos {test}: mix {}", self.batch.mix());
        figures.assert_exact(&format!(
            "{line}\nworker logs in {}",
            self.logs.dir.display()
        ));
        self.tap.delete().await;
        self.logs.remove();
        self.env.cleanup().await;
    }
}

/// A test of a sandbox that answers like a real provider on a busy day.
fn everyday_faults() -> FaultOptions {
    FaultOptions {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(15),
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_repeatedly_mid_batch_refunds_every_job_exactly_once() {
    let mut chaos = Chaos::begin("sigkill", everyday_faults(), |_| {}, AMQP_URL, REDIS_URL).await;
    chaos.publish().await;
    let cycles = kill_cycles();
    let mut at = Vec::new();
    for cycle in 0..cycles {
        let worker = WorkerProcess::spawn(&chaos.env, &mut chaos.logs, &[]);
        // Each life makes some progress, then dies in the middle of whatever it is doing.
        let share = (cycle + 1) as f64 / (cycles + 1) as f64;
        at.push(chaos.until_refunded(share, Duration::from_secs(30)).await);
        worker.kill().await;
    }
    chaos.faults.push(format!(
        "sigkill={cycles} at ledger {at:?} of {}",
        chaos.batch.unique_valid()
    ));
    // Restarted after the last kill: it finishes the batch, taking over what the dead held.
    chaos.finish("sigkill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_queue_refund_every_job_exactly_once() {
    let faults = FaultOptions {
        fail_rate: 0.03,
        ..everyday_faults()
    };
    let mut chaos = Chaos::begin("three", faults, |_| {}, AMQP_URL, REDIS_URL).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let workers: Vec<WorkerProcess> = ports
        .iter()
        .map(|port| {
            let addr = format!("127.0.0.1:{port}");
            WorkerProcess::spawn(&chaos.env, &mut chaos.logs, &["--metrics-addr", &addr])
        })
        .collect();
    // All three consuming before the batch arrives, so none of them can miss it.
    for port in &ports {
        eventually(Duration::from_secs(60), "every worker is consuming", || {
            ready_is(*port, true)
        })
        .await;
    }
    chaos.publish().await;
    chaos.until_every_job_ended().await;

    // Every worker took part: each finished some jobs.
    let mut shares = Vec::new();
    for port in &ports {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("a worker's /metrics")
            .text()
            .await
            .unwrap();
        shares.push(finished_jobs(&text));
    }
    for worker in workers {
        let name = worker.name.clone();
        let status = worker.terminate().await;
        assert!(status.success(), "{name} exited {status} on SIGTERM");
    }
    assert!(
        shares.iter().all(|n| *n > 0),
        "every worker finished jobs: {shares:?}"
    );
    chaos.faults.push(format!("workers=3 finished {shares:?}"));
    chaos.finish("three-workers").await;
}

/// Jobs a worker finished (succeeded, failed or deduplicated), from its `/metrics`.
fn finished_jobs(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("refunds_succeeded_total")
                || line.starts_with("refunds_failed_total")
                || line.starts_with("refunds_deduplicated_total")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_connections_and_crashing_mid_batch_the_worker_reconnects_by_itself() {
    let mut rabbit = PrivateRabbit::start().await;
    // Slower providers and a small window, so the batch is still running when the broker
    // breaks, and a good part of it can only be done after reconnecting.
    let faults = FaultOptions {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(40),
        ..everyday_faults()
    };
    let mut chaos = Chaos::begin(
        "broker",
        faults,
        |s| {
            s.worker.concurrency = 8;
            s.worker.prefetch = 16;
        },
        &rabbit.url.clone(),
        REDIS_URL,
    )
    .await;
    chaos.publish().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = WorkerProcess::spawn(&chaos.env, &mut chaos.logs, &["--metrics-addr", &addr]);
    let limit = Duration::from_secs(60);

    for share in [0.15, 0.35, 0.55] {
        eventually(limit, "the worker is connected and consuming", || {
            ready_is(port, true)
        })
        .await;
        let at = chaos.until_refunded(share, limit).await;
        let broke = Instant::now();
        let fault = if share < 0.5 {
            rabbit.close_all_connections().await;
            "close_all_connections".to_owned()
        } else {
            rabbit.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            rabbit.start_again().await;
            format!(
                "broker SIGKILL, restarted {:.1}s later",
                broke.elapsed().as_secs_f64()
            )
        };
        // Back by itself: connected and consuming again (readiness), same process.
        eventually(limit, "the worker reconnects by itself", || {
            ready_is(port, true)
        })
        .await;
        assert!(worker.running(), "the worker never exited");
        chaos.faults.push(format!(
            "{fault} at ledger {at} of {}, ready again {:.1}s after the fault",
            chaos.batch.unique_valid(),
            broke.elapsed().as_secs_f64()
        ));
    }

    // The same process finishes the batch: it reconnected and went on consuming by itself.
    chaos.until_every_job_ended().await;
    assert!(worker.running(), "the worker never exited");
    let reconnects = chaos.logs.count(&worker.name, "reconnected to RabbitMQ");
    assert!(
        reconnects >= 3,
        "the worker says it reconnected {reconnects} times"
    );
    let status = worker.terminate().await;
    assert!(status.success(), "the worker exited {status} on SIGTERM");
    chaos.finish("broker").await;
    drop(rabbit);
}

/// GET `/readyz` on a worker: true for 200.
async fn ready(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_then_killed_mid_batch_no_refund_runs_without_its_guard_and_work_resumes() {
    let mut redis = PrivateRedis::start_durable().await;
    let concurrency = 8;
    let faults = FaultOptions {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(40),
        ..everyday_faults()
    };
    let mut chaos = Chaos::begin(
        "redis",
        faults,
        |s| {
            s.worker.concurrency = concurrency;
            s.worker.prefetch = 16;
        },
        AMQP_URL,
        &redis.url.clone(),
    )
    .await;
    chaos.publish().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = WorkerProcess::spawn(&chaos.env, &mut chaos.logs, &["--metrics-addr", &addr]);
    let limit = Duration::from_secs(60);
    let outage = Duration::from_secs(3);
    let mut during = Vec::new();

    for (share, fault) in [(0.2, "frozen"), (0.55, "killed")] {
        chaos.until_refunded(share, limit).await;
        let before = chaos.refunds();
        match fault {
            "frozen" => redis.pause(),
            _ => redis.kill(),
        }
        eventually(limit, "readiness drops while Redis is away", || {
            ready_is(port, false)
        })
        .await;
        tokio::time::sleep(outage).await;
        // Jobs that held their claim before the outage may finish their call; nothing else
        // reaches a provider without its idempotency guard.
        let grew = chaos.refunds() - before;
        during.push(grew);
        assert!(
            grew <= concurrency,
            "{grew} refunds while Redis was {fault} (at most {concurrency} held a claim)"
        );
        match fault {
            "frozen" => redis.resume(),
            _ => redis.restart().await,
        }
        eventually(limit, "readiness comes back with Redis", || {
            ready_is(port, true)
        })
        .await;
        chaos.faults.push(format!(
            "redis {fault} {}s at ledger {before} (+{grew} during)",
            outage.as_secs()
        ));
    }

    chaos.until_every_job_ended().await;
    assert!(worker.running(), "the worker never exited");
    let status = worker.terminate().await;
    assert!(status.success(), "the worker exited {status} on SIGTERM");
    chaos.finish("redis").await;
    drop(redis);
}

async fn ready_is(port: u16, expected: bool) -> bool {
    ready(port).await == expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_5xx_bursts_lost_answers_and_429_storms_refund_every_job_exactly_once() {
    let faults = FaultOptions {
        // Executed, then the answer never comes back in time.
        timeout_rate: 0.03,
        ..everyday_faults()
    };
    // Long bursts trip the circuit breaker; a healthy job must never run out of attempts
    // waiting them out.
    let mut chaos = Chaos::begin(
        "provider",
        faults,
        |s| s.retry.max_attempts = 10,
        AMQP_URL,
        REDIS_URL,
    )
    .await;
    chaos.publish().await;
    let worker = WorkerProcess::spawn(&chaos.env, &mut chaos.logs, &[]);
    let limit = Duration::from_secs(60);
    let storm = |secs| Burst::RateLimited {
        retry_after: Duration::from_secs(secs),
    };
    let bursts = [
        (0.15, Burst::ServerErrors, Duration::from_secs(2)),
        // Waited out in-process (under the 2 s cap).
        (0.35, storm(1), Duration::from_secs(2)),
        // Longer than any in-process wait: the jobs go through the retry tiers.
        (0.55, storm(3), Duration::from_secs(2)),
        (0.75, Burst::ServerErrors, Duration::from_secs(3)),
    ];
    for (share, burst, lasting) in bursts {
        let at = chaos.until_refunded(share, limit).await;
        chaos.env.sandbox.burst(burst, lasting);
        tokio::time::sleep(lasting).await;
        chaos
            .faults
            .push(format!("{burst:?} for {lasting:?} at ledger {at}"));
    }
    chaos.until_every_job_ended().await;
    let status = worker.terminate().await;
    assert!(status.success(), "the worker exited {status} on SIGTERM");
    chaos.finish("provider").await;
}
