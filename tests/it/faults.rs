//! Infrastructure faults under a running worker: Redis frozen mid-batch, topology deleted,
//! upstream message properties that would lose a dead letter.

use std::{sync::atomic::Ordering, time::Duration};

use lapin::BasicProperties;
use refund_worker::{outcome::Outcome, sandbox::FaultOptions};

use crate::helpers::{PrivateRedis, TestEnv, eventually, stripe_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_batch_pauses_refunds_and_resumes_by_itself() {
    let redis = PrivateRedis::start().await;
    let faults = FaultOptions {
        latency: Duration::from_millis(100),
        ..FaultOptions::default()
    };
    let env = TestEnv::with_redis(
        "redis-pause",
        faults,
        |s| s.worker.concurrency = 4,
        &redis.url,
    )
    .await;
    let jobs: Vec<_> = (0..30)
        .map(|i| stripe_job(&format!("pi_freeze_{i}"), 100 + i))
        .collect();
    env.publish_json(&jobs).await;
    let mut worker = env.spawn_worker().await;

    eventually(
        Duration::from_secs(30),
        "some refunds before the outage",
        || async { env.ledger().len() >= 5 },
    )
    .await;
    redis.pause();
    eventually(
        Duration::from_secs(15),
        "readiness drops while Redis is frozen",
        || async { !worker.health.redis.load(Ordering::Relaxed) },
    )
    .await;
    let during = env.ledger().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Refunds already sent may land; no new one starts without its idempotency guard.
    assert!(
        env.ledger().len() <= during + 4,
        "refunds kept starting while Redis was frozen"
    );
    redis.resume();

    let reports = worker
        .collect_until(Duration::from_secs(60), |seen| {
            seen.iter()
                .filter(|r| matches!(r.outcome, Outcome::Refunded { .. } | Outcome::Duplicate))
                .count()
                >= 30
        })
        .await;
    assert!(
        worker.health.redis.load(Ordering::Relaxed),
        "readiness comes back"
    );
    worker.stop().await;

    let mut paid: Vec<String> = env.ledger().into_iter().map(|e| e.payment_id).collect();
    paid.sort();
    let before = paid.len();
    paid.dedup();
    assert_eq!(
        before,
        paid.len(),
        "no payment refunded twice: {reports:#?}"
    );
    assert_eq!(paid.len(), 30, "every job refunded");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_deleted_under_a_running_worker_is_redeclared_and_nothing_is_lost() {
    let env = TestEnv::start("heal").await;
    let mut worker = env.spawn_worker().await;
    env.publish_json(&[stripe_job("pi_heal_1", 100)]).await;
    worker
        .collect_until(Duration::from_secs(20), |seen| {
            seen.iter()
                .any(|r| matches!(r.outcome, Outcome::Refunded { .. }))
        })
        .await;

    // Someone deletes the dead-letter exchange: the next dead letter cannot be published.
    env.delete_exchange(&env.topology.dead_exchange()).await;
    env.publish_raw(
        br#"{"payment_id":"pi_heal_bad","amount":0,"provider":"stripe"}"#,
        BasicProperties::default(),
    )
    .await;

    // The worker notices its publishing channel died, reconnects, redeclares, and the
    // invalid job still reaches the dead-letter queue.
    worker
        .collect_until(Duration::from_secs(30), |seen| {
            seen.iter().any(|r| {
                matches!(r.outcome, Outcome::DeadLetter { .. })
                    && matches!(
                        r.disposition,
                        refund_worker::worker::Disposition::DeadLettered { .. }
                    )
            })
        })
        .await;
    env.publish_json(&[stripe_job("pi_heal_2", 200)]).await;
    worker
        .collect_until(Duration::from_secs(20), |seen| {
            seen.iter()
                .any(|r| matches!(r.outcome, Outcome::Refunded { .. }))
        })
        .await;
    worker.stop().await;

    assert_eq!(env.dead_letters().await.len(), 1);
    assert_eq!(env.ledger().len(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn an_upstream_expiration_does_not_expire_the_dead_letter() {
    let env = TestEnv::start("expiration").await;
    let props = BasicProperties::default()
        .with_expiration("1500".into())
        .with_message_id("short-lived".into());
    env.publish_raw(
        br#"{"payment_id":"pi_exp","amount":-1,"provider":"stripe"}"#,
        props,
    )
    .await;

    env.run_until_idle().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let letters = env.dead_letters().await;
    assert_eq!(
        letters.len(),
        1,
        "the dead letter outlived the upstream TTL"
    );
    assert_eq!(letters[0].message_id.as_deref(), Some("short-lived"));
    env.cleanup().await;
}
