//! The Rinne connector and its sandbox twin, end to end. Rinne keeps no refund idempotency, so
//! these tests count refund-creating POSTs as well as ledger entries: reconciliation must
//! happen by reading the transaction against the pre-send snapshot, never by sending again.

use std::time::Duration;

use refund_sandbox::{FaultOptions, Provider, RecordedRequest};
use refund_worker::{outcome::Outcome, worker::Disposition};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, today};

/// A bulk Rinne job for transaction `tx`.
fn rinne_job(tx: &str, amount: u64) -> Value {
    json!({ "payment_id": tx, "amount": amount, "provider": "rinne", "date": today().to_string() })
}

fn tx_path(tx: &str) -> String {
    format!("/rinne/core/v1/merchants/merchant-sandbox/transactions/{tx}")
}

fn posts(env: &TestEnv) -> Vec<RecordedRequest> {
    env.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn gets(env: &TestEnv) -> usize {
    env.sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count()
}

fn refunded(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Refunded { .. })
}

/// A direct client of the twin, for the rules the worker never exercises on its own.
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(env: &TestEnv) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("{}{}", env.sandbox_url, tx_path("")),
        }
    }

    async fn refund(&self, tx: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .post(format!("{}{tx}/refund", self.url))
            .header("x-api-key", "k")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    async fn transaction(&self, tx: &str) -> Value {
        self.http
            .get(format!("{}{tx}", self.url))
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn rinne_receives_the_documented_request() {
    let env = TestEnv::start("rinne-shape").await;
    let mut job = rinne_job("tx_shape_1", 18600);
    job["reason"] = json!("DUPLICATE");
    job["description"] = json!("charged twice");
    env.publish_json(&[job]).await;

    let run = env.run_until_idle().await;

    let requests = env.sandbox.requests();
    assert_eq!(
        requests.len(),
        2,
        "one snapshot read, one refund: {requests:#?}"
    );
    let (read, post) = (&requests[0], &requests[1]);
    assert_eq!(
        read.method, "GET",
        "the transaction is read before the send"
    );
    assert_eq!(read.path, tx_path("tx_shape_1"));
    assert_eq!(read.headers["x-api-key"], "sandbox-api-key");
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, format!("{}/refund", tx_path("tx_shape_1")));
    assert_eq!(post.headers["x-api-key"], "sandbox-api-key");
    assert_eq!(post.headers["content-type"], "application/json");
    assert!(
        !post.headers.keys().any(|h| h.contains("idempotency")),
        "Rinne has no idempotency header: {:?}",
        post.headers
    );
    assert!(
        post.body.contains(r#""refund_amount":18600"#),
        "integer centavos, not reais: {}",
        post.body
    );
    let body: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        json!({
            "refund_amount": 18600,
            "refund_reason": "CUSTOMER_REQUEST",
            "description": "Duplicate charge: charged twice",
        })
    );

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].provider, "rinne");
    assert_eq!(ledger[0].payment_id, "tx_shape_1");
    assert_eq!(ledger[0].amount, 18600);
    assert_eq!(ledger[0].idempotency_key, None, "Rinne carries no key");
    let key = format!("tx_shape_1:{}", today());
    let record = env.record(&key).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    assert_eq!(
        record.result.unwrap().refund.refund_id,
        "tx_shape_1:18600",
        "named by the refunded amount it leads to"
    );
    assert_eq!(run.reports.len(), 1);
    assert!(refunded(&run.reports[0].outcome));
    assert_eq!(run.reports[0].disposition, Disposition::Acked);
    assert!(
        run.metrics
            .render()
            .contains(r#"refunds_succeeded_total{provider="rinne"} 1"#)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn timeout_after_execution_is_reconciled_through_the_snapshot() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("rinne-timeout", faults, |_| {}).await;
    env.publish_json(&[rinne_job("tx_slow_timeout", 5000)])
        .await;

    let run = env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "the lost answer's refund is the only one"
    );
    assert_eq!(
        posts(&env).len(),
        1,
        "reconciled by reading the transaction, not by sending again"
    );
    assert!(
        gets(&env) >= 2,
        "a snapshot before the send, a look-up after"
    );
    let (refund_id, amount, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(amount, 5000);
    assert_eq!(refund_id, "tx_slow_timeout:5000");
    env.cleanup().await;
}

#[tokio::test]
async fn reconciliation_measures_against_the_snapshot_not_against_zero() {
    // Every answer is lost. The second job's transaction already shows the first job's
    // refund, so only the pre-send snapshot tells the second refund apart from the first.
    let faults = FaultOptions {
        timeout_rate: 1.0,
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("rinne-baseline", faults, |_| {}).await;
    let mut first = rinne_job("tx_twice", 1000);
    first["idempotency_key"] = json!("tx_twice:first");
    env.publish_json(&[first]).await;
    env.run_until_idle().await;
    let mut second = rinne_job("tx_twice", 5000);
    second["idempotency_key"] = json!("tx_twice:second");
    env.publish_json(&[second]).await;

    let run = env.run_until_idle().await;

    let amounts: Vec<u64> = env.ledger().iter().map(|e| e.amount).collect();
    assert_eq!(amounts, [1000, 5000], "each job refunded once");
    assert_eq!(posts(&env).len(), 2);
    let (refund_id, _, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(refund_id, "tx_twice:6000");
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_is_synced_until_rinne_settles_it() {
    let env = TestEnv::start("rinne-pending").await;
    env.publish_json(&[rinne_job("tx_card_pending", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(Some("tx_card_pending:3000"));
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(
        posts(&env).len(),
        1,
        "PENDING_REFUND is retried by Rinne itself, never sent again"
    );
    let record = env
        .record(&format!("tx_card_pending:{}", today()))
        .await
        .unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn pending_refund_that_fails_at_rinne_is_dead_lettered_with_the_transaction_state() {
    let env = TestEnv::start("rinne-pendingfail").await;
    env.publish_json(&[rinne_job("tx_card_pendingfail", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(Some("tx_card_pendingfail:3000"));
    env.one_dead_letter(
        "permanent",
        Some("rinne"),
        &[
            "the transaction is APPROVED with refunded_amount 0",
            "status_reason PROVIDER",
        ],
    )
    .await;
    assert!(env.ledger().is_empty(), "the failed refund paid nothing");
    assert_eq!(
        posts(&env).len(),
        1,
        "a failed refund is not sent again by itself"
    );
    let record = env
        .record(&format!("tx_card_pendingfail:{}", today()))
        .await
        .unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Failed,
        "the record shows the final state"
    );
    assert!(record.reason.unwrap().contains("did not complete"));
    let tx = Client::new(&env).transaction("tx_card_pendingfail").await;
    assert_eq!(
        tx["status"], "APPROVED",
        "back to its status before the refund"
    );
    assert_eq!(tx["refunded_amount"], 0);
    env.cleanup().await;
}

#[tokio::test]
async fn declined_refund_is_dead_lettered_permanent_with_rinnes_reason() {
    let env = TestEnv::start("rinne-declined").await;
    env.publish_json(&[rinne_job("tx_dispute_declined", 1200)])
        .await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter("permanent", Some("rinne"), &["rinne 409 CONFLICT_ERROR"])
        .await;
    assert_eq!(posts(&env).len(), 1, "a permanent refusal is not retried");
    env.cleanup().await;
}

#[tokio::test]
async fn integration_errors_are_reconciled_then_retried_and_refunded_once() {
    let env = TestEnv::start("rinne-flaky").await;
    env.publish_json(&[rinne_job("tx_retry_flaky2", 700)]).await;

    let run = env.run_until_idle().await;

    // Two 502s, absorbed by the in-process retries of the first attempt.
    let metrics = run.metrics.render();
    assert!(
        metrics.contains("refunds_retried_total{provider=\"rinne\"} 2"),
        "{metrics}"
    );
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(posts(&env).len(), 3);
    // A 502 INTEGRATION_ERROR may hide an executed refund: each retry read the transaction
    // (against the first snapshot) before sending again. One snapshot + two look-ups.
    assert_eq!(gets(&env), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn over_refund_is_dead_lettered_before_anything_is_sent() {
    let env = TestEnv::start("rinne-over").await;
    env.sandbox
        .seed_payment(Provider::Rinne, "tx_small", 1000, "BRL");
    env.publish_json(&[rinne_job("tx_small", 1500)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    assert!(posts(&env).is_empty(), "the snapshot showed it cannot fit");
    env.one_dead_letter("permanent", None, &["= 1000"]).await;
    env.cleanup().await;
}

#[tokio::test]
async fn missing_merchant_or_foreign_currency_is_dead_lettered_without_a_call() {
    let env = TestEnv::with("rinne-config", FaultOptions::default(), |s| {
        s.providers.rinne.merchant_id = None;
    })
    .await;
    let mut usd = rinne_job("tx_usd", 100);
    usd["currency"] = json!("USD");
    env.publish_json(&[rinne_job("tx_nomerchant", 100), usd])
        .await;

    env.run_until_idle().await;

    assert!(env.sandbox.requests().is_empty());
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2);
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.headers["x-refund-error"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("REFUND_PROVIDERS__RINNE__MERCHANT_ID") || r.contains("only BRL")),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.headers["x-refund-error-class"] == "permanent")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn twin_has_no_idempotency_and_tracks_refunded_amount() {
    let env = TestEnv::start("rinne-twin").await;
    env.sandbox
        .seed_payment(Provider::Rinne, "tx_twin", 10_000, "BRL");
    let rinne = Client::new(&env);
    let body = json!({ "refund_amount": 4000, "refund_reason": "CUSTOMER_REQUEST" });

    let fresh = rinne.transaction("tx_twin").await;
    assert_eq!(fresh["status"], "APPROVED");
    assert_eq!(fresh["approved_amount"], 10_000);
    assert_eq!(fresh["refunded_amount"], 0);

    let (s1, _, first) = rinne.refund("tx_twin", &body).await;
    let (s2, _, second) = rinne.refund("tx_twin", &body).await;
    assert_eq!(
        (s1, s2),
        (200, 200),
        "the same request twice is two refunds"
    );
    assert_eq!(first["status"], "PARTIALLY_REFUNDED");
    assert_eq!(first["refunded_amount"], 4000);
    assert_eq!(second["refunded_amount"], 8000);
    assert_eq!(env.ledger().len(), 2);

    let (status, _, error) = rinne.refund("tx_twin", &body).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(
        error["error"]["details"]["issues"][0]["field"],
        "refund_amount"
    );

    let (status, _, last) = rinne
        .refund("tx_twin", &json!({ "refund_amount": 2000 }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(last["status"], "REFUNDED");
    let (status, _, error) = rinne
        .refund("tx_twin", &json!({ "refund_amount": 1 }))
        .await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "CONFLICT_ERROR");
    assert_eq!(env.ledger().len(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn twin_validates_auth_and_body_like_rinne() {
    let env = TestEnv::start("rinne-validate").await;
    let rinne = Client::new(&env);
    let url = format!("{}tx_v/refund", rinne.url);

    let response = rinne
        .http
        .post(&url)
        .json(&json!({ "refund_amount": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "AUTHENTICATION_ERROR");
    assert_eq!(error["error"]["status"], 401);
    assert!(error["error"]["requestId"].is_string());

    for (body, field) in [
        (json!({ "refund_amount": 186.00 }), "refund_amount"),
        (json!({ "refund_amount": "18600" }), "refund_amount"),
        (json!({ "refund_amount": 0 }), "refund_amount"),
        (
            json!({ "refund_amount": 1, "refund_reason": "DUPLICATE" }),
            "refund_reason",
        ),
    ] {
        let (status, _, error) = rinne.refund("tx_v", &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(
            error["error"]["details"]["issues"][0]["field"], field,
            "{body}"
        );
    }
    assert!(env.ledger().is_empty());

    // A transaction belongs to the merchant that first named it.
    let _ = rinne.transaction("tx_v").await;
    let foreign = format!(
        "{}{}",
        env.sandbox_url,
        tx_path("tx_v").replace("merchant-sandbox", "another-merchant")
    );
    let response = rinne
        .http
        .get(foreign)
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "RESOURCE_NOT_FOUND");
    env.cleanup().await;
}

#[tokio::test]
async fn twin_rate_limit_is_a_bodiless_429_with_rinnes_headers() {
    let faults = FaultOptions {
        rate_limit: Some(1),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("rinne-ratelimit", faults, |_| {}).await;
    let rinne = Client::new(&env);
    let body = json!({ "refund_amount": 100 });

    let (first, _, _) = rinne.refund("tx_rl", &body).await;
    let (second, headers, error) = rinne.refund("tx_rl", &body).await;

    assert_eq!((first, second), (200, 429));
    assert_eq!(error, Value::Null, "no body");
    assert_eq!(headers["x-ratelimited"], "true");
    assert_eq!(headers["x-ratelimit-limit"], "1, 1;w=1");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset"], "1");
    assert_eq!(env.ledger().len(), 1, "a refused call executes nothing");
    env.cleanup().await;
}

/// A send answered 409 while a refund is in flight on the transaction may have met our own
/// earlier refund: an unknown outcome (the next attempt's look-up adopts or waits), not a
/// refusal. A 409 on a transaction with nothing in flight stays a refusal.
#[tokio::test]
async fn a_409_while_a_refund_is_in_flight_is_an_unknown_outcome_not_a_refusal() {
    use refund_worker::{
        job::{Amount, Currency, IdempotencyKey, Reason, Token},
        providers::{ProviderError, RefundProvider, RefundRequest, rinne::Rinne},
    };
    let env = TestEnv::start("rinne-409").await;
    let rinne = Rinne::new(reqwest::Client::new(), &env.settings.providers.rinne);
    let request = |tx: &str| RefundRequest {
        key: IdempotencyKey::parse(&format!("{tx}:{}", today())).unwrap(),
        payment_id: Token::parse(tx).unwrap(),
        amount: Amount::new(3000).unwrap(),
        currency: Currency::BRL,
        reason: Reason::CustomerRequest,
        description: None,
        job_id: "job-1".into(),
    };
    // The first send leaves the transaction PENDING_REFUND; a second one meets it.
    let first = rinne.refund(&request("tx_card_pending")).await.unwrap();
    assert_eq!(first.refund_id, "tx_card_pending:3000");
    let again = rinne.refund(&request("tx_card_pending")).await.unwrap_err();
    assert!(
        matches!(&again, ProviderError::Unknown { why } if why.contains("in flight")),
        "{again:?}"
    );
    // Refunded in full, nothing in flight: 409 is a refusal.
    env.sandbox
        .seed_payment(Provider::Rinne, "tx_paid", 3000, "BRL");
    rinne.refund(&request("tx_paid")).await.unwrap();
    let refused = rinne.refund(&request("tx_paid")).await.unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Permanent { .. }),
        "{refused:?}"
    );
    assert_eq!(env.ledger().len(), 2, "the repeated sends executed nothing");
    env.cleanup().await;
}
