//! `/metrics`, `/healthz` and `/readyz` over HTTP.

use std::{sync::Arc, time::Duration};

use refund_worker::metrics::{self, Health, Metrics};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let metrics = Metrics::new();
    metrics.succeeded.with_label_values(&["stripe"]).inc_by(3);
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(metrics::serve(
        listener,
        metrics,
        Arc::clone(&health),
        stop.clone(),
    ));

    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"refunds_succeeded_total{provider="stripe"} 3"#),
        "{text}"
    );
    assert!(!text.contains("payment_id"), "no payment ids in labels");
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    let not_ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(not_ready.status().as_u16(), 503);
    assert!(
        not_ready
            .text()
            .await
            .unwrap()
            .contains("Redis unavailable")
    );
    Health::set(&health.amqp, true);
    Health::set(&health.redis, true);
    Health::set(&health.consuming, true);
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    stop.cancel();
}

#[tokio::test]
async fn dead_letter_depth_and_money_stuck_are_exported() {
    let env = crate::helpers::TestEnv::start("dlq-gauges").await;
    env.publish_json(&[
        crate::helpers::stripe_job("pi_gauge_1_declined", 1_500),
        crate::helpers::stripe_job("pi_gauge_2_declined", 2_500),
    ])
    .await;
    env.publish_raw(
        br#"{"payment_id":"pi_gauge_3","amount":0,"provider":"stripe"}"#,
        lapin::BasicProperties::default(),
    )
    .await;

    let run = env.run_until_idle().await;

    let text = run.metrics.render();
    assert!(text.contains("refunds_dead_letter_depth 3"), "{text}");
    // Money stuck counts the jobs that parsed (the invalid one has no amount to trust).
    assert!(
        text.contains(r#"refunds_dead_letter_amount_minor{currency="BRL"} 4000"#),
        "{text}"
    );
    env.cleanup().await;
}

/// Every worker adds its counts to the namespace's throughput figures (the console's "per
/// minute" and "today"); a stopped worker's last counts are in.
#[tokio::test]
async fn workers_add_their_throughput_to_the_shared_figures() {
    use refund_worker::store::{self, Stats};
    use serde_json::json;

    use crate::helpers::{REDIS_URL, TestEnv, stripe_job, today};

    let env = TestEnv::start("throughput").await;
    env.publish_json(&[
        stripe_job("pi_tp_1", 1_250),
        stripe_job("pi_tp_2", 600),
        json!({ "payment_id": "pi_tp_bad", "amount": 0, "provider": "stripe", "date": today().to_string() }),
    ])
    .await;
    env.run_until_idle().await;
    // A second worker's counts add up with the first's.
    env.publish_json(&[stripe_job("pi_tp_3", 150)]).await;
    env.run_until_idle().await;

    let stats = Stats::new(store::connect(REDIS_URL).await.unwrap(), env.prefix());
    let now = time::OffsetDateTime::now_utc();
    let day = stats.day(now).await.unwrap();
    assert_eq!(
        (day.succeeded, day.failed, day.retried),
        (3, 1, 0),
        "{day:?}"
    );
    assert_eq!(day.refunded.get("BRL"), Some(&2_000), "{day:?}");
    let minutes = stats.minutes(now, 10).await.unwrap();
    assert_eq!(minutes.len(), 10);
    assert_eq!(minutes.iter().map(|(_, t)| t.succeeded).sum::<u64>(), 3);
    assert_eq!(minutes.iter().map(|(_, t)| t.failed).sum::<u64>(), 1);
    assert!(
        stats.workers(100).await.unwrap().0.is_empty(),
        "stopped workers are gone"
    );

    // A running worker says it is alive and ready, and which circuits it has open.
    let worker = env.spawn_worker().await;
    crate::helpers::eventually(Duration::from_secs(10), "a ready heartbeat", || async {
        let (beats, _) = stats.workers(100).await.unwrap();
        beats.len() == 1 && beats[0].not_ready.is_none()
    })
    .await;
    worker
        .metrics
        .circuit_open
        .with_label_values(&["pix"])
        .set(1);
    crate::helpers::eventually(
        Duration::from_secs(15),
        "the open circuit is told",
        || async { stats.workers(100).await.unwrap().0[0].circuits_open == ["pix"] },
    )
    .await;
    worker.stop().await;
    assert!(
        stats.workers(100).await.unwrap().0.is_empty(),
        "a stopped worker says so"
    );
    env.cleanup().await;
    assert!(
        stats.day(now).await.unwrap().is_empty(),
        "the namespace wipe takes the figures too"
    );
}
