//! Governance against insiders (SPEC §5): every spend goes through a mandate, bulk or governed;
//! the publisher's words never become unbounded metric labels. Each test publishes as an
//! insider would and asserts on the sandbox's ledger and the mandate's budget.

use refund_worker::{
    governance::mandate::Mandate,
    job::{Currency, Token},
    outcome::Outcome,
    signing::KeyPair,
    store::{self, MandateStore},
};
use serde_json::json;

use crate::{
    governed::{governed_job, pix_order, refund_calls},
    helpers::{REDIS_URL, TestEnv, stripe_job, today},
};

async fn mandates(env: &TestEnv) -> MandateStore {
    MandateStore::new(store::connect(REDIS_URL).await.unwrap(), env.prefix())
}

/// Grants `id` to `agent`, capped at `per_refund` per refund and `per_day` a day.
async fn grant(env: &TestEnv, id: &str, agent: &str, per_refund: u64, per_day: u64) {
    let key = KeyPair::from_seed(&env.settings.mandates.signing_key, "mandates").unwrap();
    let mandate = Mandate::new_signed(
        Token::parse(id).unwrap(),
        Token::parse(agent).unwrap(),
        per_refund,
        per_day,
        Currency::BRL,
        None,
        &key,
    );
    mandates(env).await.grant(&mandate).await.unwrap();
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
