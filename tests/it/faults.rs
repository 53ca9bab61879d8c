//! Infrastructure faults under a running worker: Redis frozen mid-batch, topology deleted,
//! upstream message properties that would lose a dead letter.

use std::{sync::atomic::Ordering, time::Duration};

use lapin::BasicProperties;
use refund_sandbox::{FaultOptions, Sandbox};
use refund_worker::{job::ProviderName, outcome::Outcome};
use serde_json::json;

use crate::helpers::{PrivateRedis, TestEnv, eventually, stripe_job, today};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_its_circuit_open_does_not_stall_the_others() {
    // Stripe lives on a sandbox that fails every call; Mercado Pago on a healthy one.
    let down = Sandbox::new(FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_down = tokio_util::sync::CancellationToken::new();
    tokio::spawn(down.clone().serve(listener, stop_down.clone()));
    let env = TestEnv::with("circuit", FaultOptions::default(), |s| {
        s.providers.stripe.base_url = format!("{down_url}/stripe");
        s.providers.circuit_failures = 3;
        s.providers.circuit_open_for = Duration::from_secs(60);
        s.retry.max_attempts = 50;
    })
    .await;
    let mut worker = env.spawn_worker().await;

    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(stripe_job(&format!("pi_down_{i}"), 100 + i));
        jobs.push(
            json!({ "payment_id": format!("88{i:04}"), "amount": 200 + i, "provider": "mercadopago",
                          "date": today().to_string() }),
        );
    }
    env.publish_json(&jobs).await;

    let started = std::time::Instant::now();
    worker
        .collect_until(Duration::from_secs(20), |seen| {
            seen.iter()
                .filter(|r| {
                    matches!(
                        r.outcome,
                        Outcome::Refunded {
                            provider: ProviderName::Mercadopago,
                            ..
                        }
                    )
                })
                .count()
                == 10
        })
        .await;
    let healthy_took = started.elapsed();
    // Let the broken provider's jobs cycle through the retry tiers for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = worker.metrics.render();
    worker.stop().await;

    assert!(
        healthy_took < Duration::from_secs(10),
        "Mercado Pago waited {healthy_took:?}"
    );
    assert_eq!(env.ledger().len(), 10, "every Mercado Pago job refunded");
    assert!(
        metrics.contains(r#"refunds_provider_circuit_open{provider="stripe"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"refunds_provider_circuit_open{provider="mercadopago"} 0"#),
        "{metrics}"
    );
    // Only the calls already in flight when the circuit opened reached the broken provider;
    // a few seconds of 10 jobs retrying without a breaker would have sent many more.
    let calls = down.requests().len();
    assert!(
        calls <= 15,
        "{calls} calls reached the provider with an open circuit"
    );
    assert!(down.ledger().is_empty());
    assert!(
        env.dead_letters().await.is_empty(),
        "waiting on an open circuit spends no attempts"
    );
    stop_down.cancel();
    env.cleanup().await;
}

/// A provider's rate limit costs waiting, not retries: 60 jobs against Stripe at 20 calls/s
/// all refund on their first delivery, the calls the limit held are counted, and nothing goes
/// round a retry tier (the old one-second bound sent most of them there).
#[tokio::test]
async fn a_rate_limit_is_waited_out_in_process_without_a_retry() {
    let env = TestEnv::with("throttle", FaultOptions::default(), |s| {
        s.providers.stripe.rate_limit = 20;
        s.idempotency.lease = Duration::from_secs(20);
        s.worker.concurrency = 64;
        s.worker.prefetch = 64;
    })
    .await;
    let jobs: Vec<_> = (0..60)
        .map(|i| stripe_job(&format!("pi_throttle_{i}"), 100 + i))
        .collect();
    env.publish_json(&jobs).await;

    let run = env.run_until_idle().await;

    assert_eq!(env.ledger().len(), 60);
    let retried: Vec<_> = run
        .reports
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Refunded { .. }))
        .collect();
    assert!(retried.is_empty(), "{retried:#?}");
    let text = run.metrics.render();
    let throttled: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"refunds_throttled_total{provider="stripe"} "#))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // The bucket starts full (20); at least the other 40 waited for their turn.
    assert!(throttled >= 40, "{throttled}");
    assert!(
        text.contains(r#"refunds_throttle_wait_seconds_count{provider="stripe"} "#),
        "{text}"
    );
    env.cleanup().await;
}

/// A rate wait longer than the claim's whole lease is still waited out in-process: the claim
/// is renewed after the wait, right before the send, so the wait neither sends the job to a
/// retry tier nor lets the call outlive its claim. 10 jobs at 2 calls/s under a 3 s lease: the
/// last waits about 4 s. Before, a rate wait was capped at half of what the lease left after
/// the call's timeout (1 s here), and the later jobs went round a retry tier.
#[tokio::test]
async fn a_rate_wait_longer_than_the_lease_renews_the_claim_before_the_send() {
    let env = TestEnv::with("throttle-lease", FaultOptions::default(), |s| {
        s.providers.stripe.rate_limit = 2;
        s.providers.max_throttle_wait = Duration::from_secs(10);
        s.worker.concurrency = 16;
        s.worker.prefetch = 16;
    })
    .await;
    let jobs: Vec<_> = (0..10)
        .map(|i| stripe_job(&format!("pi_lease_{i}"), 100 + i))
        .collect();
    env.publish_json(&jobs).await;

    let started = std::time::Instant::now();
    let run = env.run_until_idle().await;

    let not_first_time: Vec<_> = run
        .reports
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Refunded { .. }))
        .collect();
    assert!(not_first_time.is_empty(), "{not_first_time:#?}");
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 10, "{ledger:#?}");
    let payments: std::collections::HashSet<_> =
        ledger.iter().map(|r| r.payment_id.clone()).collect();
    assert_eq!(payments.len(), 10, "one refund per payment: {ledger:#?}");
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "the rate limit paced the calls: {:?}",
        started.elapsed()
    );
    env.cleanup().await;
}
