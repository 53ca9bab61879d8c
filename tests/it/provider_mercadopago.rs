//! The Mercado Pago connector and its sandbox twin, end to end: the wire format, the magic
//! payment ids, reconciliation by listing the payment's refunds (Mercado Pago refunds carry
//! no key of ours), and the twin's own rules (mandatory `X-Idempotency-Key`, replays, 409 on
//! a reused key, amount validation).

use std::time::Duration;

use refund_sandbox::{FaultOptions, Provider};
use refund_worker::{
    config::Settings,
    job::{Amount, Currency, IdempotencyKey, ProviderName, Reason, Token},
    outcome::Outcome,
    providers::{
        ProviderError, RefundProvider, RefundRequest, RefundStatus, mercadopago::MercadoPago,
    },
};
use serde_json::{Value, json, value::RawValue};

use crate::helpers::{TestEnv, today};

/// A bulk Mercado Pago job for `payment_id`.
fn mp_job(payment_id: &str, amount: u64) -> Value {
    json!({ "payment_id": payment_id, "amount": amount, "provider": "mercadopago", "date": today().to_string() })
}

fn key_of(payment_id: &str) -> String {
    format!("{payment_id}:{}", today())
}

/// Refund-creating calls the twin received.
fn creates(env: &TestEnv) -> usize {
    env.sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/mercadopago/"))
        .count()
}

#[tokio::test]
async fn mercadopago_receives_the_documented_request() {
    let env = TestEnv::start("mp-shape").await;
    env.publish_json(&[mp_job("20359978", 18600)]).await;

    let run = env.run_until_idle().await;

    run.last_refund();
    let requests = env.sandbox.requests();
    let key = key_of("20359978");
    // First the pre-send snapshot of the payment's refunds, then the one refund call.
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].path,
        "/mercadopago/v1/payments/20359978/refunds"
    );
    let post = &requests[1];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/mercadopago/v1/payments/20359978/refunds");
    assert_eq!(
        post.headers["authorization"],
        "Bearer TEST-sandbox-access-token"
    );
    assert_eq!(post.headers["content-type"], "application/json");
    assert_eq!(post.headers["x-idempotency-key"], key);
    assert_eq!(post.body, r#"{"amount":186.00}"#, "reais, as a JSON number");
    let fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(&post.body).unwrap();
    assert_eq!(fields["amount"].get(), "186.00", "a number, not a string");

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1);
    let entry = &ledger[0];
    assert_eq!(entry.provider, "mercadopago");
    assert_eq!(entry.payment_id, "20359978");
    assert_eq!(entry.amount, 18600, "centavos in the ledger");
    assert_eq!(entry.idempotency_key.as_deref(), Some(key.as_str()));
    assert!(
        entry.refund_id.bytes().all(|b| b.is_ascii_digit()),
        "numeric ids"
    );
    let record = env.record(&key).await.expect("a record");
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    let stored = record.result.unwrap();
    assert_eq!(stored.provider, ProviderName::Mercadopago);
    assert_eq!(stored.refund.refund_id, entry.refund_id);
    assert_eq!(stored.refund.amount, 18600);
    assert_eq!(stored.refund.status, RefundStatus::Succeeded);
    env.cleanup().await;
}

#[tokio::test]
async fn amounts_cross_the_wire_exactly_at_the_edges() {
    let env = TestEnv::start("mp-edges").await;
    let cases = [
        (1u64, "0.01"),
        (99, "0.99"),
        (100, "1.00"),
        (1_000_000_000_000, "10000000000.00"),
    ];
    let jobs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (minor, _))| mp_job(&format!("31000{i}"), *minor))
        .collect();
    env.publish_json(&jobs).await;

    env.run_until_idle().await;

    let requests = env.sandbox.requests();
    for (i, (minor, reais)) in cases.iter().enumerate() {
        let path = format!("/mercadopago/v1/payments/31000{i}/refunds");
        let post = requests
            .iter()
            .find(|r| r.method == "POST" && r.path == path)
            .unwrap_or_else(|| panic!("a refund call for {path}"));
        assert_eq!(post.body, format!(r#"{{"amount":{reais}}}"#));
        let entry = env
            .ledger()
            .into_iter()
            .find(|e| e.payment_id == format!("31000{i}"))
            .unwrap();
        assert_eq!(entry.amount, *minor, "{reais} reais is {minor} centavos");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn timeout_after_mercado_pago_executed_is_adopted_not_sent_twice() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("mp-timeout", faults, |s| {
        s.providers.timeout = Duration::from_secs(1)
    })
    .await;
    env.publish_json(&[mp_job("4242_timeout", 5000)]).await;

    let run = env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(
        ledger.len(),
        1,
        "the refund the lost answer made is the only one"
    );
    assert_eq!(
        creates(&env),
        1,
        "reconciled by listing refunds, not by sending again"
    );
    let (refund_id, amount, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(amount, 5000);
    assert_eq!(refund_id, ledger[0].refund_id);
    let lists = env
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/mercadopago/v1/payments/4242_timeout/refunds")
        .count();
    assert_eq!(
        lists, 2,
        "one snapshot before the send, one look-up after it"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_is_synced_until_mercado_pago_approves_it() {
    let env = TestEnv::start("mp-pending").await;
    env.publish_json(&[mp_job("5151_pending", 3000)]).await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(
        creates(&env),
        1,
        "status checks are reads, never a second refund"
    );
    let refund_id = &env.ledger()[0].refund_id;
    let status_path = format!("/mercadopago/v1/payments/5151_pending/refunds/{refund_id}");
    assert!(
        env.sandbox
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == status_path),
        "synced with GET {status_path}"
    );
    let record = env.record(&key_of("5151_pending")).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    assert_eq!(
        record.result.unwrap().refund.status,
        RefundStatus::Succeeded
    );
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_rejected_by_mercado_pago_is_dead_lettered_with_its_reason() {
    let env = TestEnv::start("mp-pendingfail").await;
    env.publish_json(&[mp_job("5252_pendingfail", 3000)]).await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    env.one_dead_letter(
        "permanent",
        Some("mercadopago"),
        &["mercadopago refund rejected", "insufficient_funds"],
    )
    .await;
    assert!(env.ledger().is_empty(), "the rejected refund paid nothing");
    assert_eq!(
        creates(&env),
        1,
        "a rejected refund is not sent again by itself"
    );
    let record = env.record(&key_of("5252_pendingfail")).await.unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Failed,
        "the record shows the final state"
    );
    assert!(record.reason.unwrap().contains("insufficient_funds"));
    env.cleanup().await;
}

#[tokio::test]
async fn declined_refund_is_dead_lettered_permanent_with_mercado_pagos_cause() {
    let env = TestEnv::start("mp-declined").await;
    env.publish_json(&[mp_job("6161_declined", 1200)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter(
        "permanent",
        Some("mercadopago"),
        &[
            "mercadopago 400 2063",
            "not valid for the current payment state",
        ],
    )
    .await;
    assert_eq!(creates(&env), 1, "a permanent refusal is not retried");
    env.cleanup().await;
}

#[tokio::test]
async fn flaky_refund_is_retried_and_refunded_once() {
    let env = TestEnv::start("mp-flaky").await;
    env.publish_json(&[mp_job("7171_flaky2", 700)]).await;

    let run = env.run_until_idle().await;

    // Two 5xx, absorbed by the in-process retries of the first attempt.
    let metrics = run.metrics.render();
    assert!(
        metrics.contains("refunds_retried_total{provider=\"mercadopago\"} 2"),
        "{metrics}"
    );

    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(creates(&env), 3);
    // A 503 may hide an executed refund: each resend came after a look-up found nothing new.
    let lists = env
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/7171_flaky2/refunds"))
        .count();
    assert_eq!(lists, 3, "a snapshot, then a look-up before each resend");
    env.cleanup().await;
}

#[tokio::test]
async fn over_refund_and_foreign_currency_are_dead_lettered_permanent() {
    let env = TestEnv::start("mp-refusals").await;
    env.sandbox
        .seed_payment(Provider::Mercadopago, "8181", 10_000, "BRL");
    let mut usd = mp_job("8282", 500);
    usd["currency"] = json!("USD");
    env.publish_json(&[mp_job("8181", 18600), usd]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    let mut letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2);
    letters.sort_by_key(|l| l.headers["x-refund-error"].contains("BRL"));
    let over = &letters[0].headers;
    assert_eq!(over["x-refund-error-class"], "permanent");
    assert!(over["x-refund-error"].contains("2063"), "{over:?}");
    assert!(
        over["x-refund-error"].contains("100.00 left to refund"),
        "{over:?}"
    );
    let usd = &letters[1].headers;
    assert_eq!(usd["x-refund-error-class"], "permanent");
    assert!(
        usd["x-refund-error"].contains("BRL payments only"),
        "{usd:?}"
    );
    assert!(
        env.sandbox
            .requests()
            .iter()
            .all(|r| !r.path.contains("/8282")),
        "a job the connector will not send never reaches Mercado Pago"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_resend_under_the_same_key_is_answered_by_mercado_pagos_idempotency() {
    // The worker's own record is lost (as if Redis lost it): the job is sent again, under the
    // same X-Idempotency-Key, and Mercado Pago answers with the first refund.
    let env = TestEnv::start("mp-replay").await;
    env.publish_json(&[mp_job("9191", 2500)]).await;
    env.run_until_idle().await;
    let first = env.ledger()[0].refund_id.clone();
    env.store.delete_namespace().await.unwrap();
    env.publish_json(&[mp_job("9191", 2500)]).await;

    let run = env.run_until_idle().await;

    assert_eq!(creates(&env), 2, "sent twice");
    assert_eq!(env.ledger().len(), 1, "paid once");
    assert!(
        matches!(&run.reports[0].outcome, Outcome::Refunded { refund_id, .. } if *refund_id == first),
        "{:#?}",
        run.reports
    );
    env.cleanup().await;
}

fn request(payment_id: &str, minor: u64) -> RefundRequest {
    RefundRequest {
        key: IdempotencyKey::parse(&key_of(payment_id)).unwrap(),
        payment_id: Token::parse(payment_id).unwrap(),
        amount: Amount::new(minor).unwrap(),
        currency: Currency::BRL,
        reason: Reason::CustomerRequest,
        description: None,
        job_id: "job-1".into(),
    }
}

fn connector(settings: &Settings) -> MercadoPago {
    MercadoPago::new(reqwest::Client::new(), &settings.providers.mercadopago)
}

/// The twin, spoken to directly.
struct Twin {
    client: reqwest::Client,
    url: String,
}

impl Twin {
    fn new(env: &TestEnv) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{}/mercadopago/v1/payments", env.sandbox_url),
        }
    }

    async fn post(&self, payment: &str, key: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/{payment}/refunds", self.url))
            .bearer_auth("TEST-twin")
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("X-Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth("TEST-twin")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

#[tokio::test]
async fn find_adopts_only_a_new_refund_of_our_amount_and_never_guesses() {
    let env = TestEnv::start("mp-find").await;
    let twin = Twin::new(&env);
    let mp = connector(&env.settings);
    let ours = request("1010", 1500);
    // Someone else's refund of the same amount, before our send.
    let (status, _) = twin.post("1010", Some("other-1"), r#"{"amount":15}"#).await;
    assert_eq!(status, 201);
    let snapshot = mp
        .snapshot(&ours)
        .await
        .unwrap()
        .expect("always a snapshot");

    assert_eq!(
        mp.find(&ours, None).await.unwrap(),
        None,
        "no snapshot: nothing was sent"
    );
    assert_eq!(
        mp.find(&ours, Some(&snapshot)).await.unwrap(),
        None,
        "an older refund of the same amount is not ours"
    );
    twin.post("1010", Some("other-2"), r#"{"amount":15.01}"#)
        .await;
    assert_eq!(
        mp.find(&ours, Some(&snapshot)).await.unwrap(),
        None,
        "a new refund of another amount is not ours"
    );
    let (_, made) = twin
        .post("1010", Some(ours.key.as_str()), r#"{"amount":15.00}"#)
        .await;
    let found = mp
        .find(&ours, Some(&snapshot))
        .await
        .unwrap()
        .expect("ours");
    assert_eq!(found.refund_id, made["id"].to_string());
    assert_eq!(found.amount, 1500);
    assert_eq!(found.status, RefundStatus::Succeeded);

    let (_, twin_made) = twin.post("1010", Some("other-3"), r#"{"amount":15}"#).await;
    let err = mp.find(&ours, Some(&snapshot)).await.unwrap_err();
    let ProviderError::Permanent { code, why } = &err else {
        panic!("two candidates go to a human: {err:?}");
    };
    assert_eq!(code.as_deref(), Some("ambiguous_refunds"));
    assert!(why.contains(&made["id"].to_string()), "{why}");
    assert!(why.contains(&twin_made["id"].to_string()), "{why}");
    env.cleanup().await;
}

#[tokio::test]
async fn twin_enforces_mercado_pagos_idempotency_and_validation() {
    let env = TestEnv::start("mp-twin").await;
    let twin = Twin::new(&env);
    env.sandbox
        .seed_payment(Provider::Mercadopago, "1212", 10_000, "BRL");

    let (status, body) = twin.post("1212", None, r#"{"amount":10}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["cause"][0]["code"], 4292, "{body}");

    let response = reqwest::Client::new()
        .post(format!("{}/1212/refunds", twin.url))
        .bearer_auth("sk_test_wrong_rail")
        .header("X-Idempotency-Key", "k")
        .json(&json!({ "amount": 10 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    for (bad, code) in [
        (r#"{"amount":"ten"}"#, 4041),
        (r#"{"amount":0}"#, 4040),
        (r#"{"amount":-5}"#, 4040),
        (r#"{"amount":1.234}"#, 4041),
        (r#"{"amount":1,"payment_id":1212}"#, 8),
    ] {
        let (status, body) = twin.post("1212", Some("k-bad"), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["cause"][0]["code"], code, "{bad}: {body}");
    }

    // Same key, same request: the first answer again, no second refund.
    let (s1, first) = twin.post("1212", Some("k-1"), r#"{"amount":30.00}"#).await;
    let (s2, second) = twin.post("1212", Some("k-1"), r#"{"amount":30}"#).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second);
    assert_eq!(first["status"], "approved");
    assert_eq!(first["payment_id"], 1212, "numeric ids are JSON numbers");
    assert_eq!(first["refund_mode"], "standard");
    assert_eq!(env.ledger().len(), 1);
    // Same key, another amount: refused, nothing executed.
    let (status, body) = twin.post("1212", Some("k-1"), r#"{"amount":31}"#).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "idempotency_key_already_used");
    assert_eq!(env.ledger().len(), 1);

    // An empty body refunds what is left; after that nothing is refundable.
    let (status, full) = twin.post("1212", Some("k-full"), "").await;
    assert_eq!(status, 201);
    let full_entry = env.ledger().into_iter().last().unwrap();
    assert_eq!(full_entry.refund_id, full["id"].to_string());
    assert_eq!(full_entry.amount, 7000, "what was left");
    let (status, body) = twin.post("1212", Some("k-more"), r#"{"amount":1}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["cause"][0]["code"], 2063);

    let (status, payment) = twin.get("/1212").await;
    assert_eq!(status, 200);
    assert_eq!(payment["status"], "refunded");
    assert_eq!(payment["refunds"].as_array().unwrap().len(), 2);
    let (_, list) = twin.get("/1212/refunds").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, one) = twin.get(&format!("/1212/refunds/{}", first["id"])).await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], first["id"]);
    let (status, missing) = twin.get("/1212/refunds/42").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"], "not_found");
    env.cleanup().await;
}
