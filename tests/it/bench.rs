//! `refund-worker bench` end to end: a small run against the real broker and Redis.

use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{AMQP_URL, REDIS_URL, binary, succeeds};

async fn bench(args: &[&str]) -> Value {
    let stdout = succeeds(
        Command::new(binary())
            .arg("bench")
            .args(args)
            .arg("--json")
            .env("AMQP_URL", AMQP_URL)
            .env("REDIS_URL", REDIS_URL),
    )
    .await;
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn number(figures: &Value, name: &str) -> f64 {
    figures[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} in {figures}"))
}

/// Neither queues nor Redis keys of the run are left behind.
async fn nothing_left(prefix: &str) {
    let connection = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .unwrap();
    for queue in [format!("{prefix}.jobs"), format!("{prefix}.ceiling")] {
        let channel = connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await;
        assert!(declared.is_err(), "{queue} was left behind");
    }
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn bench_refunds_every_job_once_and_reports_figures_against_the_ceiling() {
    let figures = bench(&[
        "--jobs",
        "300",
        "--provider-latency-ms",
        "20",
        "--concurrency",
        "50",
    ])
    .await;
    assert_eq!(figures["jobs"], 300, "{figures}");
    assert_eq!(figures["refunded"], 300, "{figures}");
    assert_eq!(figures["ledger"], 300, "{figures}");
    // Every job waits at least the provider's 20 ms.
    let (p50, p99) = (number(&figures, "p50_ms"), number(&figures, "p99_ms"));
    assert!(p50 >= 20.0 && p99 >= p50, "{figures}");
    assert!(
        number(&figures, "overhead_p99_ms") <= p99 - 20.0 + 1e-6,
        "{figures}"
    );
    // 50 at a time, 20 ms each: at most 2,500 jobs/s.
    let rate = number(&figures, "jobs_per_sec");
    assert!(rate > 0.0 && rate <= 2_500.0, "{figures}");
    let ceiling = number(&figures, "ceiling_per_sec");
    assert!(ceiling > 0.0, "{figures}");
    assert!(
        (number(&figures, "ratio") - rate / ceiling).abs() < 1e-9,
        "{figures}"
    );
    assert!(number(&figures, "peak_rss_mib") > 1.0, "{figures}");
    assert!(number(&figures, "worker_cpu_us_per_job") > 0.0, "{figures}");
    // The machine's RabbitMQ and Redis, found and read through /proc (root may read every
    // process's file descriptors). /proc counts CPU in 10 ms ticks: 300 jobs make RabbitMQ
    // spend several, Redis perhaps none.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            number(&figures, "rabbitmq_cpu_us_per_job") > 0.0,
            "{figures}"
        );
        assert!(number(&figures, "redis_cpu_us_per_job") >= 0.0, "{figures}");
    }
    nothing_left(figures["prefix"].as_str().unwrap()).await;
}

#[tokio::test]
async fn a_paced_bench_runs_no_faster_than_its_rate() {
    let figures = bench(&["--jobs", "60", "--rate", "100", "--no-ceiling"]).await;
    assert_eq!(figures["refunded"], 60, "{figures}");
    assert_eq!(figures["rate"], 100, "{figures}");
    assert!(figures["ceiling_per_sec"].is_null(), "{figures}");
    // 60 jobs at 100/s take about 0.6 s: well under the unpaced rate.
    assert!(number(&figures, "jobs_per_sec") <= 130.0, "{figures}");
    nothing_left(figures["prefix"].as_str().unwrap()).await;
}
