//! The Stripe fake speaks Stripe: idempotency replays, parameter conflicts, refundable
//! amounts, authentication, unknown parameters and rate limits.

use std::time::Duration;

use refund_sandbox::{FaultOptions, Provider};
use serde_json::Value;

use crate::helpers::TestEnv;

struct Stripe {
    client: reqwest::Client,
    url: String,
}

impl Stripe {
    fn new(env: &TestEnv) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{}/stripe/v1/refunds", env.sandbox_url),
        }
    }

    async fn refund(
        &self,
        key: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .post(&self.url)
            .bearer_auth("sk_test_x")
            .form(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap())
    }
}

#[tokio::test]
async fn same_idempotency_key_replays_the_same_refund() {
    let env = TestEnv::start("sb-replay").await;
    let stripe = Stripe::new(&env);
    let form = [("payment_intent", "pi_sb_1"), ("amount", "500")];
    let (s1, _, first) = stripe.refund(Some("k-1"), &form).await;
    let (s2, headers, second) = stripe.refund(Some("k-1"), &form).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["object"], "refund");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(env.ledger().len(), 1, "one payout for one key");

    let (status, _, error) = stripe
        .refund(
            Some("k-1"),
            &[("payment_intent", "pi_sb_1"), ("amount", "501")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["type"], "idempotency_error");
    assert_eq!(env.ledger().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn refunds_never_exceed_what_settled() {
    let env = TestEnv::start("sb-amount").await;
    env.sandbox
        .seed_payment(Provider::Stripe, "ch_sb_small", 1000, "BRL");
    let stripe = Stripe::new(&env);
    let refund = |key: &'static str, amount: &'static str| {
        let stripe = &stripe;
        async move {
            stripe
                .refund(Some(key), &[("charge", "ch_sb_small"), ("amount", amount)])
                .await
        }
    };
    assert_eq!(refund("a", "600").await.0, 200);
    let (status, _, body) = refund("b", "600").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "amount_too_large");
    assert_eq!(refund("c", "400").await.0, 200);
    let (status, _, body) = refund("d", "1").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "charge_already_refunded");
    let total: u64 = env.ledger().iter().map(|e| e.amount).sum();
    assert_eq!(total, 1000);
    env.cleanup().await;
}

#[tokio::test]
async fn requests_stripe_would_refuse_are_refused_before_executing() {
    let env = TestEnv::start("sb-refuse").await;
    let stripe = Stripe::new(&env);
    let unauthenticated = stripe
        .client
        .post(&stripe.url)
        .form(&[("charge", "ch_1")])
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);

    let (status, _, body) = stripe
        .refund(None, &[("charge", "ch_1"), ("ammount", "5")])
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "ammount");

    let (status, _, body) = stripe.refund(None, &[("amount", "5")]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_missing");

    let (status, _, _) = stripe
        .refund(None, &[("charge", "ch_1"), ("reason", "because")])
        .await;
    assert_eq!(status, 400);

    let json = stripe
        .client
        .post(&stripe.url)
        .bearer_auth("sk_test_x")
        .json(&serde_json::json!({"charge":"ch_1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json.status().as_u16(),
        400,
        "Stripe takes form bodies, not JSON"
    );
    assert!(env.ledger().is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let faults = FaultOptions {
        rate_limit: Some(2),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("sb-429", faults, |_| {}).await;
    let stripe = Stripe::new(&env);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let key = format!("rl-{i}");
        let (status, headers, _) = stripe
            .refund(Some(&key), &[("charge", "ch_rl"), ("amount", "1")])
            .await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        stripe
            .refund(Some("rl-later"), &[("charge", "ch_rl"), ("amount", "1")])
            .await
            .0,
        200
    );
    env.cleanup().await;
}

#[tokio::test]
async fn ledger_is_served_over_http() {
    let env = TestEnv::start("sb-ledger").await;
    let stripe = Stripe::new(&env);
    stripe
        .refund(
            Some("l-1"),
            &[("payment_intent", "pi_l"), ("amount", "250")],
        )
        .await;
    let ledger: Vec<Value> = reqwest::get(format!("{}/_sandbox/refunds", env.sandbox_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1);
    for field in [
        "provider",
        "payment_id",
        "refund_id",
        "amount",
        "idempotency_key",
        "created_at",
    ] {
        assert!(
            ledger[0].get(field).is_some(),
            "{field} missing: {}",
            ledger[0]
        );
    }
    assert_eq!(ledger[0]["amount"], 250);
    env.cleanup().await;
}

#[tokio::test]
async fn bursts_refuse_every_call_for_a_while_and_every_fault_is_counted() {
    let env = TestEnv::start("sb-burst").await;
    let stripe = Stripe::new(&env);
    let client = reqwest::Client::new();
    let faults = format!("{}/_sandbox/faults", env.sandbox_url);
    let burst = |body: Value| client.post(&faults).json(&body).send();

    // A 429 storm: Retry-After as asked, nothing executed.
    let started =
        burst(serde_json::json!({ "burst": "429", "for_ms": 60_000, "retry_after_ms": 3000 }))
            .await
            .unwrap();
    assert_eq!(started.status().as_u16(), 204);
    let (status, headers, _) = stripe
        .refund(
            Some("b-1"),
            &[("payment_intent", "pi_b"), ("amount", "100")],
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");

    // An outage replaces it: 5xx, nothing executed.
    burst(serde_json::json!({ "burst": "5xx", "for_ms": 60_000 }))
        .await
        .unwrap();
    let (status, _, _) = stripe
        .refund(
            Some("b-2"),
            &[("payment_intent", "pi_b"), ("amount", "100")],
        )
        .await;
    assert_eq!(status, 503);

    // Over: calls execute again.
    burst(serde_json::json!({ "burst": "5xx", "for_ms": 0 }))
        .await
        .unwrap();
    let (status, _, _) = stripe
        .refund(
            Some("b-3"),
            &[("payment_intent", "pi_b"), ("amount", "100")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.ledger().len(),
        1,
        "only the call after the bursts executed"
    );

    let counts: Value = reqwest::get(&faults).await.unwrap().json().await.unwrap();
    assert_eq!(
        counts,
        serde_json::json!({ "server_errors": 1, "rate_limited": 1, "answers_lost": 0 })
    );
    let refused = burst(serde_json::json!({ "burst": "teapot", "for_ms": 1 }))
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    env.cleanup().await;
}
