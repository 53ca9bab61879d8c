//! Governance against insiders (SPEC §5): every spend goes through a mandate, bulk or governed;
//! the publisher's words never become unbounded metric labels. Each test publishes as an
//! insider would and asserts on the sandbox's ledger and the mandate's budget.

use refund_worker::{
    governance::{
        MandateError, MandatePolicy,
        mandate::{Ask, Denial},
    },
    job::{Currency, IdempotencyKey, Token},
    outcome::Outcome,
    signing::KeyPair,
    store::{self, MandateStore},
};
use serde_json::json;

use crate::{
    governed::{governed_job, pix_order, refund_calls},
    helpers::{REDIS_URL, TestEnv, grant_mandate, mandate_store, stripe_job, today},
    private_rabbit::PrivateRabbit,
};

async fn mandates(env: &TestEnv) -> MandateStore {
    mandate_store(env).await
}

/// Grants `id` to `agent`, spent by the test's publisher (guest).
async fn grant(env: &TestEnv, id: &str, agent: &str, per_refund: u64, per_day: u64) {
    grant_mandate(env, id, agent, (per_refund, per_day), &["guest"]).await;
}

/// A bulk Stripe job spending mandate `mandate` as `agent`.
fn spending(payment_id: &str, amount: u64, agent: &str, mandate: &str) -> serde_json::Value {
    let mut job = stripe_job(payment_id, amount);
    job["agent_id"] = json!(agent);
    job["mandate_id"] = json!(mandate);
    job
}

fn refunds_of(env: &TestEnv, payment_id: &str) -> usize {
    env.ledger()
        .iter()
        .filter(|e| e.payment_id == payment_id)
        .count()
}

#[tokio::test]
async fn bulk_jobs_pass_the_same_mandate_gate_as_governed_ones() {
    let env = TestEnv::start("insider-bulk").await;
    grant(&env, "cm_small", "small-bot", 1_000, 1_500).await;
    let over_cap = spending("pi_ins_cap", 900_000, "small-bot", "cm_small");
    let mut agent_only = stripe_job("pi_ins_agent", 500);
    agent_only["agent_id"] = json!("small-bot");
    let within = spending("pi_ins_ok", 800, "small-bot", "cm_small");
    let over_budget = spending("pi_ins_budget", 800, "small-bot", "cm_small");
    let plain = stripe_job("pi_ins_plain", 700);
    env.publish_json(&[over_cap, agent_only, within]).await;
    env.run_until_idle().await;
    // Published after the first spend, so which one is over the day's budget is fixed.
    env.publish_json(&[over_budget, plain]).await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);

    assert_eq!(refunds_of(&env, "pi_ins_ok"), 1, "{:#?}", env.ledger());
    assert_eq!(
        refunds_of(&env, "pi_ins_plain"),
        1,
        "a job naming nobody needs no mandate"
    );
    for refused in ["pi_ins_cap", "pi_ins_agent", "pi_ins_budget"] {
        assert_eq!(
            refunds_of(&env, refused),
            0,
            "{refused}: {:#?}",
            env.ledger()
        );
    }
    assert_eq!(env.ledger().len(), 2);
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_small", today())
            .await
            .unwrap(),
        800,
        "only the refund made is spent"
    );

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let reason_for = |payment: &str| {
        letters
            .iter()
            .find(|l| String::from_utf8_lossy(&l.body).contains(payment))
            .map(|l| {
                assert_eq!(l.headers["x-refund-error-class"], "mandate", "{payment}");
                l.headers["x-refund-error"].clone()
            })
            .unwrap_or_else(|| panic!("no dead letter for {payment}"))
    };
    assert!(
        reason_for("pi_ins_cap").contains("exceeds mandate cm_small's cap of 1000 per refund"),
        "{letters:#?}"
    );
    assert!(
        reason_for("pi_ins_agent").contains("names agent small-bot but no mandate"),
        "{letters:#?}"
    );
    assert!(
        reason_for("pi_ins_budget").contains("daily budget today (700 left)"),
        "{letters:#?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn with_mandates_required_a_bulk_job_naming_none_is_refused_and_one_within_its_mandate_is_sealed_with_it()
 {
    let env = TestEnv::with("insider-required", Default::default(), |s| {
        s.mandates.required = true;
    })
    .await;
    grant(&env, "cm_bulk", "bulk-bot", 10_000, 100_000).await;
    env.publish_json(&[
        stripe_job("pi_ins_none", 500),
        spending("pi_ins_named", 600, "bulk-bot", "cm_bulk"),
    ])
    .await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 2, "{:#?}", run.reports);
    assert_eq!(refunds_of(&env, "pi_ins_none"), 0);
    assert_eq!(refunds_of(&env, "pi_ins_named"), 1);
    let letter = env
        .one_dead_letter(
            "mandate",
            Some("stripe"),
            &["names no mandate", "required = true"],
        )
        .await;
    assert!(!letter["x-refund-job-id"].is_empty());

    // The receipt of the bulk refund names the reservation it spent.
    let key = KeyPair::from_seed(&env.settings.receipts.signing_key, "receipts").unwrap();
    let chain =
        store::ReceiptChain::new(store::connect(REDIS_URL).await.unwrap(), env.prefix(), key);
    let receipt = chain
        .by_key(&format!("pi_ins_named:{}", today()))
        .await
        .unwrap()
        .expect("a receipt");
    let mandate = receipt
        .body
        .mandate
        .clone()
        .expect("the reservation is sealed");
    assert_eq!(mandate["mandate_id"], "cm_bulk", "{mandate}");
    assert_eq!(mandate["amount"], 600, "{mandate}");
    assert!(
        receipt.body.steps.contains_key("mandate"),
        "{:?}",
        receipt.body.steps
    );
    env.cleanup().await;
}

#[tokio::test]
async fn invented_agents_do_not_become_metric_labels() {
    let env = TestEnv::start("insider-labels").await;
    grant(&env, "cm_lbl", "label-bot", 1_000, 100_000).await;
    let mut jobs: Vec<_> = (0..30)
        .map(|i| {
            spending(
                &format!("pi_ins_lbl_{i}"),
                500,
                &format!("bot-{i}"),
                "cm_nobody",
            )
        })
        .collect();
    // The mandate's own agent over its cap, and an impostor naming the real mandate.
    jobs.push(spending("pi_ins_lbl_cap", 5_000, "label-bot", "cm_lbl"));
    jobs.push(spending("pi_ins_lbl_imp", 500, "impostor-bot", "cm_lbl"));
    env.publish_json(&jobs).await;
    let run = env.run_until_idle().await;
    assert!(
        run.reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::DeadLetter { .. })),
        "{:#?}",
        run.reports
    );
    let metrics = run.metrics.render();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("refunds_mandate_denied_total{"))
        .collect();
    assert_eq!(
        series,
        vec![
            r#"refunds_mandate_denied_total{agent="label-bot"} 2"#,
            r#"refunds_mandate_denied_total{agent="unknown"} 30"#,
        ],
        "{metrics}"
    );
    assert!(env.ledger().is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn a_governed_refund_is_bounded_by_the_orders_total_and_told_only_to_the_erps_customer() {
    let env = TestEnv::start("insider-order").await;
    // Order total 10,000 paid by a payment of 500,000 (an instalment sum larger than the order).
    let mut order = pix_order("8800", 40, 500_000);
    order.total = 10_000;
    env.sandbox
        .load_orders(vec![order, pix_order("8801", 41, 20_000)]);
    grant(&env, "cm_support", "support-bot", 500_000, 5_000_000).await;
    let mut elsewhere = governed_job("8801", 1_000);
    elsewhere["notify"] =
        json!({ "channel": "whatsapp", "to": "+5511988887777", "template": "refund_done" });
    let mut same_number = governed_job("8800", 6_000);
    same_number["notify"] =
        json!({ "channel": "whatsapp", "to": "+5511999990000", "template": "refund_done" });
    env.publish_json(&[governed_job("8800", 400_000), elsewhere])
        .await;
    env.run_until_idle().await;
    assert_eq!(refund_calls(&env), 0, "{:#?}", env.ledger());
    assert!(env.sandbox.messages().is_empty());
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter.headers["x-refund-error-class"], "verification");
    }
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.headers["x-refund-error"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r
            .contains("exceeds what is still refundable on order 8800: 10000 of its total 10000")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("notify.to is not the phone the ERP holds")),
        "{reasons:#?}"
    );

    // Within the total, the ERP's own number is told; the rest of
    // the total is what the next refund may take.
    env.publish_json(&[same_number]).await;
    env.run_until_idle().await;
    env.publish_json(&[{
        let mut next = governed_job("8800", 4_001);
        next["idempotency_key"] = json!("order-8800-second");
        next
    }])
    .await;
    env.run_until_idle().await;
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:#?}");
    assert_eq!(ledger[0].amount, 6_000);
    let messages = env.sandbox.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].phone, "5511999990000");
    env.one_dead_letter("verification", None, &["4000 of its total 10000"])
        .await;
    let key = KeyPair::from_seed(&env.settings.receipts.signing_key, "receipts").unwrap();
    let chain =
        store::ReceiptChain::new(store::connect(REDIS_URL).await.unwrap(), env.prefix(), key);
    let receipt = chain
        .by_key(&format!("order:8800:{}", today()))
        .await
        .unwrap()
        .expect("a receipt");
    let verification = receipt.body.verification.clone().unwrap();
    assert_eq!(verification["total"], 10_000, "{verification}");
    assert_eq!(verification["refundable"], 10_000, "{verification}");
    env.cleanup().await;
}

/// Publishes `job` on `url`'s connection as its broker user, with `user_id` as given
/// (`None`: none). Returns the broker's refusal, if it refused.
async fn publish_as(
    env: &TestEnv,
    url: &str,
    user_id: Option<&str>,
    job: &serde_json::Value,
) -> Result<(), String> {
    let connection = refund_worker::broker::connect(url, "an agent")
        .await
        .unwrap();
    let publisher = refund_worker::broker::Publisher::open(&connection)
        .await
        .unwrap();
    let mut properties = lapin::BasicProperties::default()
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(user) = user_id {
        properties = properties.with_user_id(user.into());
    }
    let sent = publisher
        .publish(
            &env.topology.jobs_exchange(),
            refund_worker::broker::ROUTING_KEY,
            &serde_json::to_vec(job).unwrap(),
            properties,
        )
        .await
        .map_err(|e| e.to_string());
    let _ = connection.close(200, "done".into()).await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_broker_users_a_mandate_names_can_spend_it_and_the_identity_survives_replay() {
    let rabbit = PrivateRabbit::start().await;
    let pay_bot = rabbit.add_user("pay-bot").await;
    let other_bot = rabbit.add_user("other-bot").await;
    // Workers hold no mandate signing key: they verify with public keys only.
    let env = TestEnv::with_infra(
        "insider-users",
        Default::default(),
        |s| s.mandates.signing_key = None,
        &rabbit.url,
        REDIS_URL,
    )
    .await;
    assert!(env.settings.mandates.signing_key().is_none());
    grant_mandate(&env, "cm_bots", "pay-bot", (5_000, 6_000), &["pay-bot"]).await;
    let job = |payment: &str, amount: u64| spending(payment, amount, "pay-bot", "cm_bots");

    // The agent's own user: refunded, bulk and governed alike.
    publish_as(&env, &pay_bot, Some("pay-bot"), &job("pi_usr_ok", 4_000))
        .await
        .unwrap();
    env.sandbox.load_orders(vec![pix_order("9100", 60, 50_000)]);
    let mut governed = governed_job("9100", 1_000);
    governed["agent_id"] = json!("pay-bot");
    governed["mandate_id"] = json!("cm_bots");
    publish_as(&env, &pay_bot, Some("pay-bot"), &governed)
        .await
        .unwrap();
    // Another user naming the right agent and mandate, and a job with no user_id at all.
    publish_as(
        &env,
        &other_bot,
        Some("other-bot"),
        &job("pi_usr_other", 100),
    )
    .await
    .unwrap();
    publish_as(&env, &other_bot, None, &job("pi_usr_none", 100))
        .await
        .unwrap();
    // A user_id that is not the connection's user: RabbitMQ itself refuses it.
    let forged = publish_as(
        &env,
        &other_bot,
        Some("pay-bot"),
        &job("pi_usr_forged", 100),
    )
    .await;
    let refusal = forged.expect_err("the broker refuses a forged user_id");
    assert!(refusal.contains("user_id"), "{refusal}");
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 4, "{:#?}", run.reports);
    assert_eq!(refunds_of(&env, "pi_usr_ok"), 1, "{:#?}", env.ledger());
    assert_eq!(refund_calls(&env), 2, "{:#?}", env.ledger());
    assert_eq!(env.ledger().len(), 2, "{:#?}", env.ledger());
    // Over what is left today (1,000): dead-lettered, to be replayed once finance raises it.
    publish_as(&env, &pay_bot, Some("pay-bot"), &job("pi_usr_later", 3_000))
        .await
        .unwrap();
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 2, "{:#?}", env.ledger());

    let letters = env.dead_letters_kept().await;
    let reason = |payment: &str| {
        letters
            .iter()
            .find(|l| String::from_utf8_lossy(&l.body).contains(payment))
            .map(|l| l.headers["x-refund-error"].clone())
            .unwrap_or_else(|| panic!("no letter for {payment}: {letters:#?}"))
    };
    assert!(
        reason("pi_usr_other").contains("published as pay-bot, not broker user other-bot"),
        "{letters:#?}"
    );
    assert!(
        reason("pi_usr_none").contains("not a job published without an AMQP user_id"),
        "{letters:#?}"
    );
    assert!(
        reason("pi_usr_later").contains("daily budget"),
        "{letters:#?}"
    );
    assert!(
        !letters
            .iter()
            .any(|l| String::from_utf8_lossy(&l.body).contains("pi_usr_forged"))
    );

    // Finance raises the budget; an operator (as guest) replays everything. The sealed
    // identity of pi_usr_later's letter passes; the others stay refused.
    grant_mandate(&env, "cm_bots", "pay-bot", (5_000, 10_000), &["pay-bot"]).await;
    crate::ops::cli_ok(&env, &["dlq", "replay", "--all"]).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_usr_later"), 1, "{:#?}", env.ledger());
    assert_eq!(refunds_of(&env, "pi_usr_other"), 0);
    assert_eq!(refunds_of(&env, "pi_usr_none"), 0);
    assert_eq!(env.ledger().len(), 3);
    env.cleanup().await;
    drop(rabbit);
}

/// Every field of mandate `id` as stored, to write back later as an attacker would.
async fn stored_fields(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    let mut conn = store::connect(REDIS_URL).await.unwrap();
    redis::cmd("HGETALL")
        .arg(mandates(env).await.mandate_key(id))
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn redis_cmd(args: &[&str]) {
    let mut conn = store::connect(REDIS_URL).await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
}

/// Replaces mandate `id`'s hash by `fields`.
async fn write_back(env: &TestEnv, id: &str, fields: &[(String, String)]) {
    let key = mandates(env).await.mandate_key(id);
    redis_cmd(&["DEL", &key]).await;
    let mut args = vec!["HSET", key.as_str()];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    redis_cmd(&args).await;
}

/// Runs one job spending cm_edit and returns its dead letter's reason, or `None` if it was
/// refunded; a refusal for tampering is counted as such.
async fn spend_once(env: &TestEnv, payment: &str, amount: u64) -> Option<String> {
    env.publish_json(&[spending(payment, amount, "edit-bot", "cm_edit")])
        .await;
    let metrics = env.run_until_idle().await.metrics.render();
    let tampered: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("refunds_mandate_tampered_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let letters = env.dead_letters().await;
    match letters.as_slice() {
        [] => {
            assert_eq!(refunds_of(env, payment), 1, "{:#?}", env.ledger());
            assert_eq!(tampered, 0, "{metrics}");
            None
        }
        [letter] => {
            assert_eq!(letter.headers["x-refund-error-class"], "mandate");
            assert_eq!(refunds_of(env, payment), 0);
            assert_eq!(tampered, 1, "counted as tampering: {metrics}");
            Some(letter.headers["x-refund-error"].clone())
        }
        more => panic!("{more:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_edits_to_a_mandate_make_it_refuse_and_say_why() {
    let env = TestEnv::start("insider-redis").await;
    let v1 = grant_mandate(&env, "cm_edit", "edit-bot", (5_000, 100_000), &["guest"]).await;
    let v1_fields = stored_fields(&env, "cm_edit").await;
    assert_eq!(spend_once(&env, "pi_edit_1", 1_000).await, None);

    // 1. A revocation's field deleted: the revocation is signed, so the rest no longer is.
    let revoked = crate::helpers::revoke_mandate(&env, "cm_edit")
        .await
        .unwrap();
    assert_eq!(revoked.version, v1.version + 1);
    let key = mandates(&env).await.mandate_key("cm_edit");
    redis_cmd(&["HDEL", &key, "revoked_at"]).await;
    let why = spend_once(&env, "pi_edit_2", 100).await.unwrap();
    assert!(why.contains("has an invalid signature"), "{why}");

    // 2. An older signed grant (no revocation, a higher cap) written back over a newer one.
    let v3 = grant_mandate(&env, "cm_edit", "edit-bot", (100, 100_000), &["guest"]).await;
    assert_eq!(v3.version, 3);
    write_back(&env, "cm_edit", &v1_fields).await;
    let why = spend_once(&env, "pi_edit_3", 4_000).await.unwrap();
    assert!(
        why.contains("stored at version 1, older than version 3 already seen"),
        "{why}"
    );

    // 3. The day's counter deleted, then lowered: the sealed receipts still say 1,000.
    grant_mandate(&env, "cm_edit", "edit-bot", (5_000, 100_000), &["guest"]).await;
    assert_eq!(spend_once(&env, "pi_edit_4", 500).await, None);
    let day = mandates(&env)
        .await
        .day_key("cm_edit", &today().to_string());
    redis_cmd(&["DEL", &day]).await;
    let why = spend_once(&env, "pi_edit_5", 100).await.unwrap();
    assert!(
        why.contains("spend does not add up")
            && why.contains("holds 0, but that day's sealed receipts spent 1500"),
        "{why}"
    );
    redis_cmd(&["SET", &day, "700"]).await;
    let why = spend_once(&env, "pi_edit_6", 100).await.unwrap();
    assert!(why.contains("holds 700"), "{why}");

    // No refund moved past any of the edits.
    assert_eq!(env.ledger().len(), 2, "{:#?}", env.ledger());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_has_seen_a_version_refuses_an_older_one_even_with_the_floor_deleted() {
    let env = TestEnv::start("insider-seen").await;
    grant_mandate(&env, "cm_seen", "seen-bot", (5_000, 100_000), &["guest"]).await;
    let v1_fields = stored_fields(&env, "cm_seen").await;
    grant_mandate(&env, "cm_seen", "seen-bot", (100, 100_000), &["guest"]).await;
    let policy = MandatePolicy::new(
        mandates(&env).await,
        crate::helpers::finance_key(&env).public().into(),
        false,
    );
    let agent = Token::parse("seen-bot").unwrap();
    let ask = |amount| Ask {
        agent: Some(&agent),
        publisher: Some("guest"),
        amount,
        currency: Currency::BRL,
    };
    let id = Token::parse("cm_seen").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let key = |k: &str| IdempotencyKey::parse(k).unwrap();
    policy
        .authorize(&ask(100), Some(&id), &key("seen-a"), now)
        .await
        .unwrap();
    // The attacker rolls the mandate back and deletes its floor too.
    write_back(&env, "cm_seen", &v1_fields).await;
    redis_cmd(&["DEL", &mandates(&env).await.keys().floor("cm_seen")]).await;
    let refused = policy
        .authorize(&ask(4_000), Some(&id), &key("seen-b"), now)
        .await;
    assert!(
        matches!(
            refused,
            Err(MandateError::Denied(Denial::RolledBack {
                version: 1,
                seen: 2,
                ..
            }))
        ),
        "{refused:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_after_its_record_expired_reserves_afresh() {
    let env = TestEnv::with("insider-stale", Default::default(), |s| {
        s.idempotency.ttl = std::time::Duration::from_secs(2);
    })
    .await;
    grant_mandate(&env, "cm_stale", "stale-bot", (1_000, 1_000), &["guest"]).await;
    let mut first = spending("pi_stale_1", 1_000, "stale-bot", "cm_stale");
    first["idempotency_key"] = json!("refund-stale-1");
    env.publish_json(&[first]).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_stale_1"), 1);

    // The record and the reservation expire together; the key is used again.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut second = spending("pi_stale_2", 1_000, "stale-bot", "cm_stale");
    second["idempotency_key"] = json!("refund-stale-1");
    env.publish_json(&[second]).await;
    env.run_until_idle().await;
    assert_eq!(refunds_of(&env, "pi_stale_2"), 0, "{:#?}", env.ledger());
    env.one_dead_letter("mandate", Some("stripe"), &["daily budget", "(0 left)"])
        .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_300_jobs_are_in_flight_stops_every_reservation_after_it() {
    let faults = refund_sandbox::FaultOptions {
        latency: std::time::Duration::from_millis(40),
        ..Default::default()
    };
    let env = TestEnv::with("insider-revoke", faults, |s| s.worker.concurrency = 8).await;
    grant_mandate(&env, "cm_busy", "busy-bot", (1_000, 10_000_000), &["guest"]).await;
    let jobs: Vec<_> = (0..300)
        .map(|i| spending(&format!("pi_busy_{i}"), 100, "busy-bot", "cm_busy"))
        .collect();
    env.publish_json(&jobs).await;
    let mut worker = env.spawn_worker().await;
    let before = worker
        .collect_until(std::time::Duration::from_secs(60), |seen| seen.len() >= 60)
        .await;
    crate::helpers::revoke_mandate(&env, "cm_busy")
        .await
        .unwrap();
    // Everything reserved is reserved by now: the reserve script refuses after the revocation.
    let spent_at_revocation = mandates(&env)
        .await
        .spent("cm_busy", today())
        .await
        .unwrap();
    let after = worker
        .collect_until(std::time::Duration::from_secs(120), |seen| {
            before.len() + seen.len() >= 300
        })
        .await;
    worker.stop().await;

    let refunded = env.ledger().len() as u64;
    let spent = mandates(&env)
        .await
        .spent("cm_busy", today())
        .await
        .unwrap();
    assert_eq!(
        spent, spent_at_revocation,
        "nothing reserved after the revocation"
    );
    assert_eq!(
        refunded * 100,
        spent,
        "every refund had its reservation, and no more"
    );
    assert!((60..300).contains(&refunded), "{refunded}");
    let refused = before
        .iter()
        .chain(&after)
        .filter(|r| matches!(&r.outcome, Outcome::DeadLetter { why, .. } if why.contains("was revoked at")))
        .count() as u64;
    let odd: Vec<_> = before
        .iter()
        .chain(&after)
        .filter(|r| !matches!(&r.outcome, Outcome::Refunded { .. }))
        .filter(|r| !matches!(&r.outcome, Outcome::DeadLetter { why, .. } if why.contains("was revoked at")))
        .collect();
    assert_eq!(refused + refunded, 300, "{odd:#?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_planted_in_a_dead_letter_or_a_header_spends_nothing() {
    let env = TestEnv::start("insider-planted").await;
    grant_mandate(&env, "cm_planted", "pay-bot", (5_000, 50_000), &["pay-bot"]).await;
    let job = spending("pi_planted_1", 1_000, "pay-bot", "cm_planted");
    let body = serde_json::to_vec(&job).unwrap();
    // A letter planted straight into the dead-letter queue, claiming the agent's identity.
    crate::hostile::plant_dead_letter(
        &env,
        &body,
        "m-planted",
        crate::hostile::forged(&[
            ("x-refund-publisher", "pay-bot"),
            ("x-refund-error-class", "exhausted"),
        ]),
    )
    .await;
    // And a job published (as guest) with the same forged header.
    env.publish_raw(
        &serde_json::to_vec(&spending("pi_planted_2", 1_000, "pay-bot", "cm_planted")).unwrap(),
        lapin::BasicProperties::default()
            .with_message_id("m-planted-2".into())
            .with_headers(crate::hostile::forged(&[("x-refund-publisher", "pay-bot")])),
    )
    .await;
    env.run_until_idle().await;
    crate::ops::cli_ok(&env, &["dlq", "replay", "m-planted"]).await;
    env.run_until_idle().await;
    assert!(env.ledger().is_empty(), "{:#?}", env.ledger());
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for letter in &letters {
        let why = &letter.headers["x-refund-error"];
        assert!(
            why.contains("may be spent only by jobs published as pay-bot"),
            "{why}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_letter_loses_the_identity_of_the_publisher_that_sent_the_original() {
    let env = TestEnv::start("insider-edit").await;
    grant(&env, "cm_edit_id", "edit-id-bot", 1_000, 100_000).await;
    // Over the per-refund cap: a mandate dead letter, sealed with its publisher (guest).
    let ids = env
        .publish_json(&[spending("pi_edit_id", 5_000, "edit-id-bot", "cm_edit_id")])
        .await;
    env.run_until_idle().await;
    env.one_dead_letter("mandate", Some("stripe"), &["cap of 1000 per refund"])
        .await;
    // Put it back as it was, then replay it edited: the edit is the operator's words, not
    // guest's, so it spends no mandate guest may spend.
    let ids2 = env
        .publish_json(&[spending("pi_edit_id", 5_000, "edit-id-bot", "cm_edit_id")])
        .await;
    env.run_until_idle().await;
    let _ = ids;
    crate::ops::cli_ok(&env, &["dlq", "replay", &ids2[0], "--set", "amount=900"]).await;
    env.run_until_idle().await;
    assert!(env.ledger().is_empty(), "{:#?}", env.ledger());
    env.one_dead_letter(
        "mandate",
        Some("stripe"),
        &["published as guest, not a job published without an AMQP user_id"],
    )
    .await;
    env.cleanup().await;
}
