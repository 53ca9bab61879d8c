//! Hostile input (SPEC §3a): a publisher with bad intent, or a careless operator, tries to make
//! money move twice. Every test publishes raw AMQP as such a publisher would (forged
//! `x-refund-*` headers, shifted timestamps, letters planted straight into the dead-letter
//! queue, `reply_to` aimed at the service's own queues) and asserts on the sandbox's ledger:
//! one refund, or a dead letter with a reason, never two refunds and never a lost job.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use refund_worker::{broker::Publisher, outcome::Outcome};
use serde_json::{Value, json};

use crate::{
    helpers::{REDIS_URL, TestEnv, stripe_job, today},
    ops::{amqp, cli, cli_ok, ready},
    private_rabbit::PrivateRabbit,
};

/// Headers as a publisher writes them (nothing sealed).
pub(crate) fn forged(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert((*k).into(), AMQPValue::LongString(LongString::from(*v)));
    }
    table
}

fn dateless(payment_id: &str, provider: &str, amount: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "payment_id": payment_id, "amount": amount, "provider": provider }))
        .unwrap()
}

/// Refunds recorded by the sandbox for `payment_id`.
fn refunds_of(env: &TestEnv, payment_id: &str) -> usize {
    env.ledger()
        .iter()
        .filter(|e| e.payment_id == payment_id)
        .count()
}

/// Puts a letter into the dead-letter queue the way an attacker with publish rights can:
/// through the dead-letter exchange, with whatever headers they like and no seal.
pub(crate) async fn plant_dead_letter(
    env: &TestEnv,
    body: &[u8],
    message_id: &str,
    headers: FieldTable,
) {
    let connection = amqp().await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let properties = BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    publisher
        .publish(&env.topology.dead_exchange(), "", body, properties)
        .await
        .expect("the planted letter is confirmed");
    let _ = connection.close(200, "planted".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_refund_headers_on_a_second_copy_cannot_rekey_the_job() {
    let env = TestEnv::start("hostile-headers").await;
    // Asaas and Rinne have no provider-side idempotency: only the worker's key stands between
    // a second copy and a second refund.
    let jobs = [("pay_hostile_h1", "asaas"), ("tx_hostile_h2", "rinne")];
    for (payment, provider) in jobs {
        env.publish_raw(
            &dateless(payment, provider, 500),
            BasicProperties::default().with_message_id(format!("m-{payment}").into()),
        )
        .await;
    }
    let first = env.run_until_idle().await;
    assert_eq!(first.reports.len(), 2, "{:#?}", first.reports);
    assert_eq!(
        first.metrics.untrusted_headers.get(),
        0,
        "plain jobs are not suspect"
    );

    for (payment, provider) in jobs {
        // The same message id, with every header that once chose a key, a job id or a class.
        let headers = forged(&[
            ("x-refund-date", "2026-12-04"),
            ("x-refund-job-id", "a-job-id-of-my-choosing"),
            ("x-refund-attempts", "0"),
            ("x-refund-seal", "v1:dev-1:00ff"),
        ]);
        env.publish_raw(
            &dateless(payment, provider, 500),
            BasicProperties::default()
                .with_message_id(format!("m-{payment}").into())
                .with_headers(headers),
        )
        .await;
        // And a copy under a new message id: the same body is the same job.
        env.publish_raw(
            &dateless(payment, provider, 500),
            BasicProperties::default()
                .with_message_id(format!("other-{payment}").into())
                .with_headers(forged(&[("x-refund-date", "2026-12-03")])),
        )
        .await;
    }
    let second = env.run_until_idle().await;
    assert_eq!(second.reports.len(), 4, "{:#?}", second.reports);
    // Every forged copy is counted for the RefundsUntrustedHeaders alert.
    assert_eq!(second.metrics.untrusted_headers.get(), 4);
    for report in &second.reports {
        assert_eq!(report.outcome, Outcome::Duplicate, "{report:#?}");
    }
    for (payment, _) in jobs {
        assert_eq!(
            refunds_of(&env, payment),
            1,
            "{payment}: {:#?}",
            env.ledger()
        );
    }
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_timestamp_cannot_rekey_a_job() {
    let env = TestEnv::start("hostile-timestamp").await;
    let body = dateless("pay_hostile_ts", "asaas", 700);
    let noon = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let day = 86_400;
    env.publish_raw(
        &body,
        BasicProperties::default()
            .with_message_id("m-ts".into())
            .with_timestamp(noon),
    )
    .await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pay_hostile_ts"), 1);

    // An outbox re-sending across midnight, then a copy under a new id two days later.
    env.publish_raw(
        &body,
        BasicProperties::default()
            .with_message_id("m-ts".into())
            .with_timestamp(noon + day),
    )
    .await;
    env.publish_raw(
        &body,
        BasicProperties::default()
            .with_message_id("m-ts-resent".into())
            .with_timestamp(noon + 2 * day),
    )
    .await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    assert!(run.reports.iter().all(|r| r.outcome == Outcome::Duplicate));
    assert_eq!(refunds_of(&env, "pay_hostile_ts"), 1, "{:#?}", env.ledger());
    let key = format!("pay_hostile_ts:{}", today());
    assert_eq!(
        env.ledger()[0].idempotency_key.as_deref(),
        Some(key.as_str()),
        "keyed by the day of first sight"
    );
    assert_eq!(
        env.record(&key).await.unwrap().state,
        refund_worker::store::RecordState::Done
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_dead_letter_is_replayed_under_its_bodys_key_and_refunds_nothing_twice() {
    let env = TestEnv::start("hostile-planted").await;
    let body = dateless("pay_hostile_pl", "asaas", 900);
    env.publish_raw(
        &body,
        BasicProperties::default().with_message_id("m-planted".into()),
    )
    .await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pay_hostile_pl"), 1);

    // A letter for the refunded payment that claims another day and an exhausted job, under
    // a new message id; and one claiming the original id.
    for id in ["m-planted", "m-planted-2"] {
        let headers = forged(&[
            ("x-refund-error-class", "exhausted"),
            ("x-refund-error", "gave up after 6 attempts"),
            ("x-refund-date", "2026-12-01"),
            ("x-refund-job-id", id),
        ]);
        plant_dead_letter(&env, &body, id, headers).await;
    }
    let shown = cli_ok(&env, &["dlq", "show", "m-planted-2"]).await;
    assert!(shown.contains("sealed       NO"), "{shown}");
    assert!(shown.contains("class        unknown"), "{shown}");

    let stdout = cli_ok(&env, &["dlq", "replay", "--all"]).await;
    assert!(
        stdout.contains("0 replayed, 2 already refunded"),
        "the replay keys each letter from its body and finds the refund: {stdout}"
    );
    let run = env.run_until_idle().await;
    assert!(run.reports.is_empty(), "{:#?}", run.reports);
    assert_eq!(refunds_of(&env, "pay_hostile_pl"), 1, "{:#?}", env.ledger());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_invalid_class_does_not_unlock_editing_the_key() {
    let env = TestEnv::start("hostile-class").await;
    let job = stripe_job("pi_hostile_cls", 1200);
    let body = serde_json::to_vec(&job).unwrap();
    let ids = env.publish_json(std::slice::from_ref(&job)).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_hostile_cls"), 1);

    let headers = forged(&[
        ("x-refund-error-class", "invalid"),
        ("x-refund-error", "field `date`: looks wrong"),
    ]);
    plant_dead_letter(&env, &body, &ids[0], headers).await;
    let output = cli(
        &env,
        &["dlq", "replay", &ids[0], "--set", "date=2026-01-02"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--set date: refused for a letter of class unknown"),
        "{stderr}"
    );
    // Kept: the refused command's unacked read goes back to the queue (a quorum queue takes
    // it back a moment after the command's connection closes).
    let connection = amqp().await;
    let dead = env.topology.dead_queue();
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "the letter is kept",
        || {
            let (connection, dead) = (&connection, &dead);
            async move { ready(connection, dead).await == 1 }
        },
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_hostile_cls"), 1, "{:#?}", env.ledger());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_a_letter_whose_key_belongs_to_another_refund_until_it_gets_its_own() {
    let env = TestEnv::start("hostile-collision").await;
    // R$ 2,00 refunded; then R$ 6,00 of the same payment on the same day: the key is taken.
    env.publish_json(&[stripe_job("pi_hostile_col", 200)]).await;
    env.run_until_idle().await;
    let second = env.publish_json(&[stripe_job("pi_hostile_col", 600)]).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_hostile_col"), 1);

    for args in [
        vec!["dlq", "replay", "--all", "--dry-run"],
        vec!["dlq", "replay", "--all"],
    ] {
        let stdout = cli_ok(&env, &args).await;
        assert!(
            stdout.contains("kept: its key pi_hostile_col:")
                && stdout.contains("belongs to a different request")
                && stdout.contains("--set idempotency_key="),
            "{stdout}"
        );
        assert!(
            stdout.contains("\n0 replayed, 0 already refunded")
                || stdout.contains("dry run: 0 would be replayed, 0 already refunded"),
            "{stdout}"
        );
    }
    let connection = amqp().await;
    assert_eq!(
        ready(&connection, &env.topology.dead_queue()).await,
        1,
        "kept"
    );

    // The operator decides it is a second refund and gives it its own key.
    let stdout = cli_ok(
        &env,
        &[
            "dlq",
            "replay",
            &second[0],
            "--set",
            "idempotency_key=pi_hostile_col-second",
        ],
    )
    .await;
    assert!(stdout.contains("1 replayed"), "{stdout}");
    env.run_until_idle().await;
    let amounts: Vec<u64> = env
        .ledger()
        .iter()
        .filter(|e| e.payment_id == "pi_hostile_col")
        .map(|e| e.amount)
        .collect();
    assert_eq!(amounts, vec![200, 600]);
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 0);
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_cannot_aim_outcome_events_at_the_services_own_queues() {
    let env = TestEnv::start("hostile-reply").await;
    let targets = [env.topology.dead_queue(), env.topology.jobs_queue()];
    for (i, target) in targets.iter().enumerate() {
        let job: Value = stripe_job(&format!("pi_hostile_reply_{i}"), 300);
        env.publish_raw(
            &serde_json::to_vec(&job).unwrap(),
            BasicProperties::default()
                .with_message_id(format!("m-reply-{i}").into())
                .with_reply_to(target.as_str().into())
                .with_correlation_id("c-1".into()),
        )
        .await;
    }
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    assert_eq!(env.ledger().len(), 2);
    let connection = amqp().await;
    assert_eq!(
        ready(&connection, &env.topology.dead_queue()).await,
        0,
        "no event landed in the dead-letter queue"
    );
    assert_eq!(
        ready(&connection, &env.topology.jobs_queue()).await,
        0,
        "no event landed in the jobs queue"
    );
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

/// The headers a poisoned message carries, in turn: oversized ids (the 300-character id once
/// panicked a task and stalled the worker), forged seals and classes, binary values.
fn poison_headers(i: usize) -> FieldTable {
    let mut table = FieldTable::default();
    let long = |n: usize| AMQPValue::LongString(LongString::from("j".repeat(n)));
    match i % 5 {
        0 => {
            table.insert("x-refund-job-id".into(), long(300));
        }
        1 => {
            table.insert("x-refund-job-id".into(), long(100 * 1024));
        }
        2 => {
            table.insert(
                "x-refund-seal".into(),
                AMQPValue::LongString(LongString::from("v1:dev-1:deadbeef")),
            );
            table.insert(
                "x-refund-error-class".into(),
                AMQPValue::LongString(LongString::from("permanent")),
            );
        }
        3 => {
            table.insert("x-refund-attempts".into(), AMQPValue::LongLongInt(-5));
            table.insert("x-refund-date".into(), long(5000));
        }
        _ => {
            table.insert(
                "x-refund-first-seen".into(),
                AMQPValue::ByteArray(vec![0xff, 0, 0xfe].into()),
            );
        }
    }
    table
}

/// A body the worker must dead-letter as `invalid`, in turn.
fn poison_body(i: usize) -> Vec<u8> {
    match i % 4 {
        0 => br#"{"payment_id":"pi_poison","ammount":100,"provider":"stripe"}"#.to_vec(),
        1 => vec![0xff, 0xfe, 0x00, 0x01],
        2 => {
            // Over SPEC §2's 64 KiB.
            let mut body =
                br#"{"payment_id":"pi_poison","amount":100,"provider":"stripe","description":""#
                    .to_vec();
            body.extend(std::iter::repeat_n(b'x', 70 * 1024));
            body.extend(br#""}"#);
            body
        }
        _ => br#"{"payment_id":"pi_poison","amount":0,"provider":"stripe"}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_poisoned_messages_among_a_thousand_jobs_stop_nothing() {
    let env = TestEnv::start("hostile-poison").await;
    const EACH: usize = 1000;
    for i in 0..EACH {
        env.publish_raw(
            &poison_body(i),
            BasicProperties::default()
                .with_message_id(format!("poison-{i}").into())
                .with_headers(poison_headers(i)),
        )
        .await;
        // Valid jobs, every tenth one carrying a poisoned header too: it is ignored.
        let job = stripe_job(&format!("pi_poison_ok_{i}"), 100);
        let mut properties = BasicProperties::default().with_message_id(format!("ok-{i}").into());
        if i % 10 == 0 {
            properties = properties.with_headers(poison_headers(i / 10));
        }
        env.publish_raw(&serde_json::to_vec(&job).unwrap(), properties)
            .await;
    }
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2 * EACH);

    let ledger = env.ledger();
    let paid: std::collections::BTreeMap<&str, usize> =
        ledger.iter().fold(Default::default(), |mut seen, e| {
            *seen.entry(e.payment_id.as_str()).or_default() += 1;
            seen
        });
    assert_eq!(paid.len(), EACH, "every valid job refunded");
    assert!(paid.values().all(|n| *n == 1), "each once");
    assert!(!paid.contains_key("pi_poison"));

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), EACH, "every poisoned message dead-lettered");
    for letter in &letters {
        assert_eq!(
            letter.headers["x-refund-error-class"], "invalid",
            "{:?}",
            letter.headers
        );
        assert!(!letter.headers["x-refund-error"].is_empty());
        let job_id = &letter.headers["x-refund-job-id"];
        assert!(
            job_id.starts_with("poison-"),
            "the message id, not a forged one: {job_id}"
        );
        assert!(letter.headers.values().all(|v| v.len() <= 4096));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_jobs_it_cannot_finish_reports_itself_stalled() {
    let faults = refund_sandbox::FaultOptions {
        latency: std::time::Duration::from_millis(2500),
        ..Default::default()
    };
    let env = TestEnv::with("hostile-stall", faults, |s| {
        s.worker.stall_after = std::time::Duration::from_millis(800);
        s.providers.timeout = std::time::Duration::from_secs(5);
        s.idempotency.lease = std::time::Duration::from_secs(10);
    })
    .await;
    let mut worker = env.spawn_worker().await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "the worker is ready",
        || async { worker.health.not_ready().is_none() },
    )
    .await;
    env.publish_json(&[stripe_job("pi_hostile_stall", 100)])
        .await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(5),
        "/readyz says stalled while the only job hangs",
        || async {
            worker
                .health
                .not_ready()
                .is_some_and(|why| why.contains("stalled: holding 1 job(s)"))
        },
    )
    .await;
    worker
        .collect_until(std::time::Duration::from_secs(20), |r| r.len() == 1)
        .await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(2),
        "ready again once the job finished",
        || async { worker.health.not_ready().is_none() },
    )
    .await;
    assert_eq!(refunds_of(&env, "pi_hostile_stall"), 1);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_carries_one_request_a_changed_reason_or_description_is_a_collision() {
    let env = TestEnv::start("hostile-words").await;
    // Asaas keeps no key of its own: a copy under a new message id with other words is a new
    // body, pinned to today, so it lands on the same key and must not be sent.
    let first = json!({ "payment_id": "pay_hostile_w1", "amount": 900, "provider": "asaas",
                        "description": "order 1 refund" });
    let reworded = json!({ "payment_id": "pay_hostile_w1", "amount": 900, "provider": "asaas",
                           "description": "order 1 refund, again" });
    // Stripe keeps the key: the same dated job with another reason would reach it as a second
    // body under one Idempotency-Key (Stripe answers `idempotency_error`).
    let stripe = stripe_job("pi_hostile_w2", 1200);
    let mut stripe_fraud = stripe.clone();
    stripe_fraud["reason"] = json!("FRAUD");

    env.publish_raw(
        &serde_json::to_vec(&first).unwrap(),
        BasicProperties::default().with_message_id("m-w1".into()),
    )
    .await;
    env.publish_json(&[stripe]).await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    assert!(
        run.reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Refunded { .. })),
        "{:#?}",
        run.reports
    );

    env.publish_raw(
        &serde_json::to_vec(&reworded).unwrap(),
        BasicProperties::default().with_message_id("m-w1-reworded".into()),
    )
    .await;
    env.publish_json(&[stripe_fraud]).await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    let posts = env.refund_posts();
    assert_eq!(posts, 2, "the reworded copies never reach a provider");
    assert_eq!(refunds_of(&env, "pay_hostile_w1"), 1, "{:#?}", env.ledger());
    assert_eq!(refunds_of(&env, "pi_hostile_w2"), 1, "{:#?}", env.ledger());

    // A replay finds the same collision: kept, not called "already refunded".
    let stdout = cli_ok(&env, &["dlq", "replay", "--all", "--dry-run"]).await;
    assert!(
        stdout.contains("belongs to a different request")
            && stdout.contains("re-sent with other words")
            && stdout.contains("0 already refunded"),
        "{stdout}"
    );
    // Same payment and amount as the refund made: not a second refund, so the letter may
    // not take a key of its own (that would pay twice).
    let listed: Value =
        serde_json::from_str(&cli_ok(&env, &["dlq", "list", "--json"]).await).unwrap();
    let job_ids: Vec<String> = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["job_ids"].as_array().unwrap().clone())
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(job_ids.len(), 2, "{listed:#}");
    for id in &job_ids {
        let refused = cli(
            &env,
            &[
                "dlq",
                "replay",
                id,
                "--set",
                "idempotency_key=pay_hostile_rekeyed",
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--set idempotency_key: refused"),
            "{stderr}"
        );
    }
    assert_eq!(env.refund_posts(), 2, "nothing more was sent");
    // Then the letters themselves (reading drains them).
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for letter in &letters {
        let reason = &letter.headers["x-refund-error"];
        assert_eq!(
            letter.headers["x-refund-error-class"], "permanent",
            "{reason}"
        );
        assert!(
            reason.contains("was already used for a different refund or other words")
                && reason.contains("needs its own idempotency_key")
                && !reason.contains("idempotency_error"),
            "{reason}"
        );
    }

    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_set_up_as_documented_refuses_a_huge_publish_and_the_worker_refuses_the_rest() {
    // docs/RELIABILITY.md, "Large bodies": `max_message_size` a little over the body limit.
    let rabbit = PrivateRabbit::start_with_conf("max_message_size = 131072\n").await;
    let env = TestEnv::with_infra(
        "hostile-max-size",
        Default::default(),
        |_| {},
        &rabbit.url,
        REDIS_URL,
    )
    .await;
    let connection = refund_worker::broker::connect(&rabbit.url, "a careless publisher")
        .await
        .unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    let huge = dateless("pay_huge", "asaas", 500)
        .into_iter()
        .chain(std::iter::repeat_n(b' ', 4 * 1024 * 1024))
        .collect::<Vec<u8>>();
    let refused = publisher
        .publish(
            &env.topology.jobs_exchange(),
            refund_worker::broker::ROUTING_KEY,
            &huge,
            BasicProperties::default().with_message_id("m-huge".into()),
        )
        .await;
    let error = refused
        .expect_err("the broker refuses a 4 MiB message")
        .to_string();
    assert!(error.contains("max size"), "{error}");

    // Under the broker's limit but over the worker's: dead-lettered, the body not kept.
    let big = dateless("pay_big", "asaas", 500)
        .into_iter()
        .chain(std::iter::repeat_n(b' ', 100 * 1024))
        .collect::<Vec<u8>>();
    env.publish_raw(
        &big,
        BasicProperties::default().with_message_id("m-big".into()),
    )
    .await;
    env.publish_json(&[stripe_job("pi_after_the_big_ones", 500)])
        .await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    assert_eq!(refunds_of(&env, "pi_after_the_big_ones"), 1);
    assert_eq!(env.ledger().len(), 1, "{:#?}", env.ledger());
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert!(letters[0].body.is_empty(), "the body is not kept");
    let reason = &letters[0].headers["x-refund-error"];
    assert!(
        reason.contains(&format!("is too large: {} bytes", big.len())),
        "{reason}"
    );
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
    drop(rabbit);
}
