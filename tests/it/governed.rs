//! Governed refunds end to end: ERP verification, the mandate, the refund on the order's own
//! rail, the credit note, the message, the sealed receipt, and what stops each of them.

use std::time::Duration;

use refund_sandbox::{FaultOptions, FixtureCustomer, FixtureInvoice, FixtureOrder, FixturePayment};
use refund_worker::{
    outcome::{FailureClass, Outcome},
    signing::KeyPair,
    store::{self, MandateStore, ReceiptChain},
    worker::Disposition,
};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{
    REDIS_URL, TestEnv, binary, eventually, grant_mandate, mandate_store, revoke_mandate, today,
};

/// A Pix EndToEndId (32 alphanumerics) for order `n`.
fn e2eid(n: u32) -> String {
    format!("E12345678202611241200{n:011}")
}

/// An ERP order paid by Pix, with a customer who can be told and an invoice to correct.
pub fn pix_order(id: &str, n: u32, paid: u64) -> FixtureOrder {
    FixtureOrder {
        order_id: id.to_owned(),
        total: paid,
        currency: "BRL".into(),
        payment: FixturePayment {
            provider: refund_sandbox::Provider::Pix,
            payment_id: e2eid(n),
            amount: paid,
            pix_key: Some("ana.souza@example.com".into()),
            card_last4: None,
        },
        customer: FixtureCustomer {
            name: "Ana".into(),
            phone: Some("+5511999990000".into()),
        },
        settled: true,
        invoice: Some(FixtureInvoice {
            number: format!("{}", 1000 + n),
            access_key: None,
        }),
    }
}

pub fn governed_job(order_id: &str, amount: u64) -> Value {
    json!({ "order_id": order_id, "amount": amount, "agent_id": "support-bot", "mandate_id": "cm_support",
            "reason": "CUSTOMER_REQUEST", "date": today().to_string() })
}

async fn mandates(env: &TestEnv) -> MandateStore {
    mandate_store(env).await
}

/// Mandate cm_support for support-bot, spent by the test's publisher (guest).
async fn grant(env: &TestEnv, per_refund: u64, per_day: u64) {
    grant_mandate(
        env,
        "cm_support",
        "support-bot",
        (per_refund, per_day),
        &["guest"],
    )
    .await;
}

async fn receipts(env: &TestEnv) -> ReceiptChain {
    let key = KeyPair::from_seed(&env.settings.receipts.signing_key, "receipts").unwrap();
    ReceiptChain::new(store::connect(REDIS_URL).await.unwrap(), env.prefix(), key)
}

/// Refund calls the provider twins received (Pix PUTs a devolução).
pub fn refund_calls(env: &TestEnv) -> usize {
    env.sandbox
        .requests()
        .iter()
        .filter(|r| {
            (r.method == "PUT" && r.path.contains("/devolucao/"))
                || (r.method == "POST" && r.path.starts_with("/stripe/"))
        })
        .count()
}

#[tokio::test]
async fn a_governed_job_makes_one_refund_one_credit_note_one_message_and_one_valid_receipt() {
    let env = TestEnv::start("gov-happy").await;
    env.sandbox.load_orders(vec![pix_order("8421", 1, 18_600)]);
    grant(&env, 50_000, 500_000).await;
    env.publish_json(&[governed_job("8421", 18_600)]).await;

    let run = env.run_until_idle().await;

    run.last_refund();
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "one refund");
    assert_eq!(ledger[0].provider, "pix", "on the order's own rail");
    assert_eq!(
        ledger[0].payment_id,
        e2eid(1),
        "back on the original payment"
    );
    assert_eq!(ledger[0].amount, 18_600);
    let notes = env.sandbox.credit_notes();
    assert_eq!(notes.len(), 1, "one credit note");
    assert_eq!(notes[0].order_id, "8421");
    let messages = env.sandbox.messages();
    assert_eq!(messages.len(), 1, "one message");
    assert_eq!(messages[0].phone, "5511999990000");
    assert!(
        messages[0].message.contains("186,00"),
        "{}",
        messages[0].message
    );

    let chain = receipts(&env).await;
    let report = chain.verify().await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.checked, 1, "one receipt");
    let key = format!("order:8421:{}", today());
    let receipt = chain
        .by_key(&key)
        .await
        .unwrap()
        .expect("the job's receipt");
    assert_eq!(receipt.body.kind, "governed");
    assert_eq!(receipt.body.refund_id, ledger[0].refund_id);
    assert_eq!(
        receipt.body.credit_note.as_ref().unwrap()["number"],
        notes[0].number
    );
    assert_eq!(
        receipt.body.notification.as_ref().unwrap()["message_id"],
        messages[0].message_id
    );
    let destination = receipt.body.destination.clone().unwrap();
    assert!(
        !destination.contains("ana.souza"),
        "the Pix key is masked: {destination}"
    );
    assert_eq!(
        receipt.body.mandate.as_ref().unwrap()["mandate_id"],
        "cm_support"
    );
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_support", today())
            .await
            .unwrap(),
        18_600
    );

    // The same job again changes nothing.
    env.publish_json(&[governed_job("8421", 18_600)]).await;
    let again = env.run_until_idle().await;
    assert_eq!(again.reports[0].outcome, Outcome::Duplicate);
    assert_eq!(
        (
            env.ledger().len(),
            env.sandbox.credit_notes().len(),
            env.sandbox.messages().len()
        ),
        (1, 1, 1)
    );
    assert_eq!(chain.verify().await.unwrap().checked, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_over_its_cap_produces_no_refund_no_note_no_message_and_no_receipt() {
    let env = TestEnv::start("gov-cap").await;
    env.sandbox.load_orders(vec![pix_order("9001", 2, 80_000)]);
    grant(&env, 50_000, 500_000).await;
    env.publish_json(&[governed_job("9001", 60_000)]).await;

    let run = env.run_until_idle().await;

    env.one_dead_letter("mandate", None, &["cm_support"]).await;
    assert!(env.ledger().is_empty(), "no refund");
    assert_eq!(refund_calls(&env), 0, "the provider was never called");
    assert!(env.sandbox.credit_notes().is_empty(), "no credit note");
    assert!(env.sandbox.messages().is_empty(), "no message");
    assert_eq!(
        receipts(&env).await.verify().await.unwrap().checked,
        0,
        "no receipt"
    );
    let metrics = run.metrics.render();
    assert!(
        metrics.contains(r#"refunds_mandate_denied_total{agent="support-bot"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_support", today())
            .await
            .unwrap(),
        0
    );
    env.cleanup().await;
}

#[tokio::test]
async fn revoked_unknown_and_wrong_agent_mandates_never_reach_a_provider() {
    let env = TestEnv::start("gov-denied").await;
    env.sandbox.load_orders(
        (0..3)
            .map(|i| pix_order(&format!("70{i}"), 10 + i, 10_000))
            .collect(),
    );
    grant(&env, 50_000, 500_000).await;
    assert!(revoke_mandate(&env, "cm_support").await.is_some());
    let mut unknown = governed_job("701", 1_000);
    unknown["mandate_id"] = json!("cm_nobody");
    let mut wrong_agent = governed_job("702", 1_000);
    wrong_agent["agent_id"] = json!("another-bot");
    env.publish_json(&[governed_job("700", 1_000), unknown, wrong_agent])
        .await;

    env.run_until_idle().await;

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 3);
    assert!(
        letters
            .iter()
            .all(|l| l.headers["x-refund-error-class"] == "mandate")
    );
    assert_eq!(refund_calls(&env), 0);
    assert!(env.ledger().is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_verification_moves_nothing() {
    let env = TestEnv::start("gov-verify").await;
    let mut unsettled = pix_order("502", 22, 10_000);
    unsettled.settled = false;
    env.sandbox
        .load_orders(vec![pix_order("501", 21, 10_000), unsettled]);
    grant(&env, 50_000, 500_000).await;
    let mut other_rail = governed_job("501", 1_000);
    other_rail["provider"] = json!("stripe");
    // A second job on order 501: it needs its own key.
    let mut too_much = governed_job("501", 10_001);
    too_much["idempotency_key"] = json!("order-501-too-much");
    env.publish_json(&[
        governed_job("500", 1_000), // not in the ERP
        other_rail,                 // names a rail the order was not paid on
        too_much,                   // more than the payment
        governed_job("502", 1_000), // payment not settled
    ])
    .await;

    env.run_until_idle().await;

    let mut reasons: Vec<String> = env
        .dead_letters()
        .await
        .into_iter()
        .map(|l| {
            assert_eq!(
                l.headers["x-refund-error-class"], "verification",
                "{:?}",
                l.headers
            );
            l.headers["x-refund-error"].clone()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for expected in [
        "not in the ERP",
        "order's own rail",
        "exceeds what is still refundable",
        "has not settled",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:#?}"
        );
    }
    assert_eq!(refund_calls(&env), 0);
    assert!(env.sandbox.credit_notes().is_empty());
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_support", today())
            .await
            .unwrap(),
        0,
        "no reservation"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_second_refund_of_an_order_sees_what_the_first_took() {
    let env = TestEnv::start("gov-partial").await;
    env.sandbox.load_orders(vec![pix_order("600", 30, 20_000)]);
    grant(&env, 50_000, 500_000).await;
    let mut second = governed_job("600", 15_000);
    second["idempotency_key"] = json!("order-600-second");
    env.publish_json(&[governed_job("600", 10_000)]).await;
    env.run_until_idle().await;
    env.publish_json(&[second]).await;

    env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "only 10,000 of 20,000 was left for the second"
    );
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].headers["x-refund-error"].contains("10000 of its total 20000"),
        "{:?}",
        letters[0].headers
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_refund_and_credit_note_resumes_without_a_second_refund() {
    let faults = FaultOptions {
        latency: Duration::from_millis(1200),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("gov-killed", faults, |s| {
        s.providers.timeout = Duration::from_secs(2)
    })
    .await;
    env.sandbox.load_orders(vec![pix_order("8422", 40, 18_600)]);
    grant(&env, 50_000, 500_000).await;
    env.publish_json(&[governed_job("8422", 18_600)]).await;

    let mut child = Command::new(binary())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .envs(env.child_env())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(40),
        "the credit note request reaches the invoicing service",
        || async {
            env.sandbox
                .requests()
                .iter()
                .any(|r| r.method == "POST" && r.path.starts_with("/invoicing/"))
        },
    )
    .await;
    child.kill().await.unwrap();
    assert_eq!(env.ledger().len(), 1, "the refund was made before the kill");

    let run = env.run_until_idle().await;

    run.last_refund();
    assert_eq!(env.ledger().len(), 1, "no second refund");
    assert_eq!(refund_calls(&env), 1, "the provider was called once");
    assert_eq!(env.sandbox.credit_notes().len(), 1, "one credit note");
    assert_eq!(env.sandbox.messages().len(), 1, "one message");
    let report = receipts(&env).await.verify().await.unwrap();
    assert_eq!(
        (report.checked, report.problems.len()),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_support", today())
            .await
            .unwrap(),
        18_600,
        "spent once"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_spending_one_daily_budget_through_governed_jobs_never_exceed_it() {
    let env = TestEnv::start("gov-budget").await;
    env.sandbox.load_orders(
        (0..30)
            .map(|i| pix_order(&format!("4{i:03}"), 100 + i, 7_000))
            .collect(),
    );
    grant(&env, 50_000, 100_000).await;
    let mut workers = Vec::new();
    for _ in 0..8 {
        workers.push(env.spawn_worker().await);
    }
    let jobs: Vec<Value> = (0..30)
        .map(|i| governed_job(&format!("4{i:03}"), 7_000))
        .collect();
    env.publish_json(&jobs).await;

    env.run_until_idle().await;
    for worker in workers {
        worker.stop().await;
    }

    let refunded: u64 = env.ledger().iter().map(|e| e.amount).sum();
    assert!(refunded <= 100_000, "the budget was overspent: {refunded}");
    assert_eq!(
        env.ledger().len(),
        14,
        "floor(100000 / 7000) refunds fit the budget"
    );
    assert_eq!(
        mandates(&env)
            .await
            .spent("cm_support", today())
            .await
            .unwrap(),
        98_000
    );
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 16);
    assert!(
        letters
            .iter()
            .all(|l| l.headers["x-refund-error-class"] == "mandate")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_credit_note_that_cannot_be_issued_parks_the_job_and_replay_resumes_without_a_second_refund()
 {
    // The invoicing service is unreachable: the refund goes through, the credit note cannot.
    let env = TestEnv::with("gov-invoicing", FaultOptions::default(), |s| {
        s.services.invoicing.base_url = "http://127.0.0.1:1/invoicing".into();
        s.retry.max_attempts = 2;
    })
    .await;
    env.sandbox.load_orders(vec![pix_order("8500", 50, 18_600)]);
    grant(&env, 50_000, 500_000).await;
    env.publish_json(&[governed_job("8500", 18_600)]).await;

    let run = env.run_until_idle().await;

    assert_eq!(env.ledger().len(), 1, "the refund was made");
    assert!(
        run.reports.iter().any(|r| matches!(
            r.disposition,
            Disposition::DeadLettered {
                class: FailureClass::Exhausted,
                ..
            }
        )),
        "{:#?}",
        run.reports
    );

    // Replay once invoicing is back: the job resumes at the credit note.
    let output = Command::new(binary())
        .args(["dlq", "replay", "--all"])
        .envs(env.child_env())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut fixed = env.settings.clone();
    fixed.services.invoicing.base_url = format!("{}/invoicing", env.sandbox_url);
    let run = env.run_until_idle_with(&fixed).await;

    assert!(run.last_refund().2, "adopted");
    assert_eq!(env.ledger().len(), 1, "no second refund");
    assert_eq!(refund_calls(&env), 1);
    assert_eq!(env.sandbox.credit_notes().len(), 1);
    assert_eq!(env.sandbox.messages().len(), 1);
    assert_eq!(receipts(&env).await.verify().await.unwrap().checked, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn bulk_refunds_are_sealed_into_the_same_chain() {
    let env = TestEnv::start("bulk-receipts").await;
    env.publish_json(&[
        crate::helpers::stripe_job("pi_sealed_1", 1_000),
        crate::helpers::stripe_job("pi_sealed_2", 2_000),
    ])
    .await;

    env.run_until_idle().await;

    let chain = receipts(&env).await;
    let report = chain.verify().await.unwrap();
    assert_eq!(
        (report.checked, report.problems.len()),
        (2, 0),
        "{report:?}"
    );
    let receipt = chain
        .by_key(&format!("pi_sealed_1:{}", today()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.body.kind, "bulk");
    assert_eq!(
        receipt.body.refund_id,
        env.ledger()
            .iter()
            .find(|e| e.payment_id == "pi_sealed_1")
            .unwrap()
            .refund_id
    );
    env.cleanup().await;
}
