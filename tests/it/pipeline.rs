//! The pipeline end to end, in-process: RabbitMQ → Redis → sandbox provider → ack.

use std::time::Duration;

use lapin::BasicProperties;
use refund_sandbox::FaultOptions;
use refund_worker::{
    job::JobDate,
    outcome::{FailureClass, Outcome},
    worker::Disposition,
};
use serde_json::json;

use crate::helpers::{TestEnv, stripe_job, today};

fn refunded(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Refunded { .. })
}

#[tokio::test]
async fn happy_path_refunds_every_job_once_and_acks() {
    let env = TestEnv::start("happy").await;
    let jobs: Vec<_> = (0..5)
        .map(|i| stripe_job(&format!("pi_happy_{i}"), 1000 + i))
        .collect();
    let ids = env.publish_json(&jobs).await;

    let run = env.run_until_idle().await;

    assert_eq!(run.reports.len(), 5);
    assert!(
        run.reports
            .iter()
            .all(|r| refunded(&r.outcome) && r.disposition == Disposition::Acked)
    );
    let mut reported: Vec<_> = run.reports.iter().map(|r| r.job_id.clone()).collect();
    reported.sort();
    let mut published = ids.clone();
    published.sort();
    assert_eq!(
        reported, published,
        "every published job reported once, by its id"
    );

    let mut ledger = env.ledger();
    ledger.sort_by(|a, b| a.payment_id.cmp(&b.payment_id));
    assert_eq!(ledger.len(), 5);
    for (i, entry) in ledger.iter().enumerate() {
        assert_eq!(entry.payment_id, format!("pi_happy_{i}"));
        assert_eq!(entry.amount, 1000 + i as u64);
        assert_eq!(entry.provider, "stripe");
        let key = format!("pi_happy_{i}:{}", today());
        assert_eq!(
            entry.idempotency_key.as_deref(),
            Some(key.as_str()),
            "the job's key is the provider's key"
        );
        let record = env.record(&key).await.expect("a record per job");
        assert_eq!(record.state, refund_worker::store::RecordState::Done);
        assert_eq!(record.result.unwrap().refund.refund_id, entry.refund_id);
    }
    let metrics = run.metrics.render();
    assert!(
        metrics.contains(r#"refunds_succeeded_total{provider="stripe"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"refunds_amount_minor_total{currency="BRL",provider="stripe"} 5010"#)
    );
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn same_job_twice_refunds_once() {
    let env = TestEnv::start("twice").await;
    let job = stripe_job("pi_twice", 18600);
    env.publish_json(&[job.clone(), job]).await;

    let run = env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "one refund for two copies of one job"
    );
    let finals: Vec<_> = run
        .reports
        .iter()
        .filter(|r| r.disposition == Disposition::Acked)
        .map(|r| r.outcome.clone())
        .collect();
    assert_eq!(finals.len(), 2);
    assert_eq!(finals.iter().filter(|o| refunded(o)).count(), 1);
    assert_eq!(
        finals.iter().filter(|o| **o == Outcome::Duplicate).count(),
        1
    );
    assert!(
        run.metrics
            .render()
            .contains("refunds_deduplicated_total 1")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_job_is_dead_lettered_with_the_field_name_and_its_body_untouched() {
    let env = TestEnv::start("invalid").await;
    let bodies: [&[u8]; 4] = [
        br#"{"payment_id":"pi_inv_1","amount":0,"provider":"stripe"}"#,
        br#"{"payment_id":"pi_inv_2","ammount":100,"provider":"stripe"}"#,
        b"{not json",
        b"{\"payment_id\":\"\xff\xfe\",\"amount\":1}",
    ];
    for (i, body) in bodies.iter().enumerate() {
        let props = BasicProperties::default().with_message_id(format!("bad-{i}").as_str().into());
        env.publish_raw(body, props).await;
    }

    let run = env.run_until_idle().await;

    assert_eq!(run.reports.len(), 4);
    assert!(env.ledger().is_empty(), "nothing refunded");
    let mut letters = env.dead_letters().await;
    letters.sort_by(|a, b| a.message_id.cmp(&b.message_id));
    assert_eq!(letters.len(), 4);
    let expected = [
        "field `amount`",
        "field `ammount`: unknown field (did you mean `amount`?)",
        "field `body`: is not valid JSON",
        "field `body`: is not valid UTF-8",
    ];
    for (i, letter) in letters.iter().enumerate() {
        assert_eq!(letter.body, bodies[i], "body kept byte for byte");
        assert_eq!(letter.headers["x-refund-error-class"], "invalid");
        assert!(
            letter.headers["x-refund-error"].contains(expected[i]),
            "{:?}",
            letter.headers
        );
        assert_eq!(letter.headers["x-refund-job-id"], format!("bad-{i}"));
        assert_eq!(letter.headers["x-refund-attempts"], "0");
        for header in [
            "x-refund-first-seen",
            "x-refund-last-seen",
            "x-refund-provider",
        ] {
            assert!(letter.headers.contains_key(header), "{header} missing");
        }
    }
    assert!(
        run.metrics
            .render()
            .contains(r#"refunds_failed_total{class="invalid",provider="none"} 4"#)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_failing_transiently_n_times_succeeds_on_attempt_n_plus_1_with_n_retries_counted() {
    let env = TestEnv::start("flaky").await;
    // Three 5xx: two quick in-process retries, then one trip through a delay queue.
    env.publish_json(&[stripe_job("pi_retry_flaky3", 700)])
        .await;

    let run = env.run_until_idle().await;

    let tier_retries: Vec<_> = run
        .reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Retry { counts: true, .. }))
        .collect();
    assert_eq!(
        tier_retries.len(),
        1,
        "one trip through the delay queues: {:#?}",
        run.reports
    );
    assert!(
        matches!(&tier_retries[0].disposition, Disposition::Retried { queue } if queue.ends_with(".retry.200ms"))
    );
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(env.refund_posts(), 4, "succeeded on the 4th call");
    let metrics = run.metrics.render();
    assert!(
        metrics.contains(r#"refunds_retried_total{provider="stripe"} 3"#),
        "{metrics}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_short_outage_is_absorbed_by_in_process_retries_without_a_delay_queue() {
    let env = TestEnv::start("flaky2").await;
    env.publish_json(&[stripe_job("pi_retry_flaky2", 700)])
        .await;

    let run = env.run_until_idle().await;

    assert_eq!(run.reports.len(), 1, "{:#?}", run.reports);
    assert!(refunded(&run.reports[0].outcome));
    assert_eq!(env.refund_posts(), 3);
    assert_eq!(env.ledger().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn provider_that_keeps_failing_is_dead_lettered_exhausted_not_lost() {
    let faults = FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    };
    let env = TestEnv::with("exhausted", faults, |s| {
        s.retry.max_attempts = 3;
        // Every call reaches the provider (the circuit breaker has its own tests).
        s.providers.circuit_failures = 0;
    })
    .await;
    env.publish_json(&[stripe_job("pi_always_down", 900)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    let headers = env
        .one_dead_letter("exhausted", Some("stripe"), &["stripe 503"])
        .await;
    assert_eq!(headers["x-refund-attempts"], "3");
    assert_eq!(headers["x-refund-date"], today().to_string());
    // A 5xx leaves the outcome uncertain, so every later call must look the refund up first;
    // those look-ups fail too, so the refund is never sent a second time. Three attempts of
    // three calls each: one POST, then only look-ups.
    assert_eq!(env.refund_posts(), 1);
    let lookups = env
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(
        lookups, 8,
        "every call after the first reconciled before anything else"
    );
    let record = env
        .record(&format!("pi_always_down:{}", today()))
        .await
        .unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Released,
        "the key stays free for a replay"
    );
    assert!(record.uncertain, "and a replay reconciles first");
    env.cleanup().await;
}

#[tokio::test]
async fn timeout_after_the_provider_executed_does_not_refund_twice() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("timeout", faults, |_| {}).await;
    env.publish_json(&[stripe_job("pi_slow_timeout", 5000)])
        .await;

    let run = env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "the refund the lost answer made is the only one"
    );
    assert_eq!(
        env.refund_posts(),
        1,
        "reconciled by looking it up, not by sending again"
    );
    let (refund_id, _, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(refund_id, env.ledger()[0].refund_id);
    env.cleanup().await;
}

#[tokio::test]
async fn declined_refund_is_dead_lettered_permanent_with_the_providers_reason() {
    let env = TestEnv::start("declined").await;
    env.publish_json(&[stripe_job("pi_chargeback_declined", 1200)])
        .await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter("permanent", None, &["charge_disputed"])
        .await;
    assert_eq!(env.refund_posts(), 1, "a permanent refusal is not retried");
    env.cleanup().await;
}

#[tokio::test]
async fn a_different_refund_under_a_used_key_is_dead_lettered_not_dropped() {
    let env = TestEnv::start("conflict").await;
    env.publish_json(&[stripe_job("pi_conflict", 1000)]).await;
    env.run_until_idle().await;
    env.publish_json(&[stripe_job("pi_conflict", 2500)]).await;

    env.run_until_idle().await;

    assert_eq!(env.ledger().len(), 1);
    env.one_dead_letter("permanent", None, &["needs its own idempotency_key"])
        .await;

    // With its own key, the second refund goes through.
    let mut second = stripe_job("pi_conflict", 2500);
    second["idempotency_key"] = json!("pi_conflict:second");
    env.publish_json(&[second]).await;
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_is_synced_until_it_settles() {
    let env = TestEnv::start("pending").await;
    env.publish_json(&[stripe_job("pi_card_pending", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(
        env.refund_posts(),
        1,
        "status checks are reads, never a second refund"
    );
    let record = env
        .record(&format!("pi_card_pending:{}", today()))
        .await
        .unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_that_fails_at_the_provider_is_dead_lettered_with_its_reason() {
    let env = TestEnv::start("pendingfail").await;
    env.publish_json(&[stripe_job("pi_card_pendingfail", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    env.one_dead_letter("permanent", None, &["expired_or_canceled_card"])
        .await;
    assert!(env.ledger().is_empty(), "the failed refund paid nothing");
    assert_eq!(
        env.refund_posts(),
        1,
        "a failed refund is not sent again by itself"
    );
    let record = env
        .record(&format!("pi_card_pendingfail:{}", today()))
        .await
        .unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Failed,
        "the record shows the final state"
    );
    assert!(record.reason.unwrap().contains("expired_or_canceled_card"));
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_without_date_or_timestamp_is_keyed_by_the_day_it_was_first_seen() {
    let env = TestEnv::start("undated").await;
    let body = br#"{"payment_id":"pi_undated","amount":4400,"provider":"stripe"}"#;
    env.publish_raw(
        body,
        BasicProperties::default().with_message_id("undated".into()),
    )
    .await;

    env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1);
    let key = format!("pi_undated:{}", today());
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some(key.as_str()));
    // The day is pinned to the message id and to the body, so a copy delivered on a later
    // day, under either identity, keys alike.
    let later = JobDate::parse("2099-01-01").unwrap();
    let body_id = refund_worker::broker::envelope::body_id(body);
    for message_id in [Some("undated"), Some("another-message-id"), None] {
        let pinned = env
            .store
            .pin_job_date(message_id, &body_id, later)
            .await
            .unwrap();
        assert_eq!(pinned, today(), "{message_id:?}");
    }
    env.publish_raw(
        body,
        BasicProperties::default().with_message_id("undated".into()),
    )
    .await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports[0].outcome, Outcome::Duplicate);
    assert_eq!(env.ledger().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn stripe_receives_the_documented_request() {
    let env = TestEnv::start("shape").await;
    let mut job = stripe_job("ch_shape_1", 18600);
    job["reason"] = json!("FRAUD");
    job["description"] = json!("chargeback risk");
    env.publish_json(&[job]).await;

    env.run_until_idle().await;

    let requests = env.sandbox.requests();
    let post = requests
        .iter()
        .find(|r| r.method == "POST")
        .expect("one refund call");
    assert_eq!(post.path, "/stripe/v1/refunds");
    assert_eq!(
        post.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(post.headers["authorization"], "Bearer sk_test_sandbox");
    let key = format!("ch_shape_1:{}", today());
    assert_eq!(post.headers["idempotency-key"], key);
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(&post.body).unwrap();
    assert_eq!(form["charge"], "ch_shape_1", "a ch_ id is sent as charge");
    assert_eq!(form["amount"], "18600", "integer minor units");
    assert_eq!(form["reason"], "fraudulent");
    assert_eq!(form["metadata[idempotency_key]"], key);
    assert_eq!(form["metadata[description]"], "chargeback risk");
    assert!(!form.contains_key("payment_intent"));
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_held_by_a_live_claim_waits_instead_of_running_twice() {
    // Two copies of one job in one chunk race for the claim: one refunds, the other waits for
    // the holder (a retry that does not count as an attempt) and then dedupes.
    let faults = FaultOptions {
        latency: Duration::from_millis(300),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("busy", faults, |_| {}).await;
    let job = stripe_job("pi_busy", 100);
    env.publish_json(&[job.clone(), job]).await;

    let run = env.run_until_idle().await;

    assert_eq!(env.ledger().len(), 1);
    assert_eq!(env.refund_posts(), 1);
    let dup = run
        .reports
        .iter()
        .filter(|r| r.outcome == Outcome::Duplicate)
        .count();
    assert_eq!(dup, 1, "{:#?}", run.reports);
    let counted = run
        .reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Retry { counts: true, .. }))
        .count();
    assert_eq!(counted, 0, "waiting for a claim is not a failed attempt");
    assert!(run.reports.iter().all(|r| !matches!(
        r.disposition,
        Disposition::DeadLettered {
            class: FailureClass::Exhausted,
            ..
        }
    )));
    env.cleanup().await;
}

/// Two copies of one job in one worker at once: the second waits for its sibling in this
/// process to finish, then finds the refund done, instead of going round a retry tier until
/// the claim's lease runs out.
#[tokio::test]
async fn a_duplicate_in_the_same_worker_waits_for_its_sibling_not_for_the_lease() {
    let faults = FaultOptions {
        latency: Duration::from_millis(300),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("same-worker-dup", faults, |s| {
        s.idempotency.lease = Duration::from_secs(20);
        s.providers.timeout = Duration::from_secs(5);
    })
    .await;
    let job = stripe_job("pi_same_worker_dup", 700);
    env.publish_json(&[job.clone(), job]).await;

    let run = env.run_until_idle().await;

    assert_eq!(env.ledger().len(), 1, "{:#?}", env.ledger());
    let outcomes: Vec<_> = run.reports.iter().map(|r| &r.outcome).collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    assert!(
        outcomes.iter().any(|o| refunded(o)) && outcomes.iter().any(|o| **o == Outcome::Duplicate),
        "{outcomes:#?}"
    );
    assert!(
        !outcomes.iter().any(|o| matches!(o, Outcome::Retry { .. })),
        "no trip through a retry tier: {outcomes:#?}"
    );
    env.cleanup().await;
}
