//! The asaas connector and its sandbox twin, end to end.
//!
//! Asaas has no idempotency key: a second POST is a second refund. These tests prove the
//! worker never sends one blindly: every refund carries our key in its description, and an
//! unknown outcome is settled by reading the payment before anything is sent again.

use std::time::Duration;

use refund_sandbox::{FaultOptions, Provider, RecordedRequest};
use refund_worker::{outcome::Outcome, worker::JobReport};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, today};

/// A bulk Asaas job for `payment_id`.
fn asaas_job(payment_id: &str, amount: u64) -> Value {
    json!({ "payment_id": payment_id, "amount": amount, "provider": "asaas", "date": today().to_string() })
}

/// The key a job for `payment_id` is sent under.
fn key_of(payment_id: &str) -> String {
    format!("{payment_id}:{}", today())
}

/// Refund-creating requests the twin received.
fn refund_posts(env: &TestEnv) -> Vec<RecordedRequest> {
    env.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/refund"))
        .collect()
}

/// Payment reads the twin received.
fn payment_reads(env: &TestEnv) -> usize {
    env.sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/asaas/v3/payments/"))
        .count()
}

fn refunded(report: &JobReport) -> bool {
    matches!(report.outcome, Outcome::Refunded { .. })
}

/// A plain HTTP client for the twin, as another Asaas integration would call it.
struct Twin {
    client: reqwest::Client,
    base: String,
}

impl Twin {
    fn new(env: &TestEnv) -> Self {
        Self {
            client: reqwest::Client::builder()
                .user_agent("asaas-twin-test/1.0")
                .build()
                .unwrap(),
            base: format!("{}/asaas/v3/payments", env.sandbox_url),
        }
    }

    async fn refund(&self, payment: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut request = self
            .client
            .post(format!("{}/{payment}/refund", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.header("access_token", token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn payment(&self, payment: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}/{payment}", self.base))
            .header("access_token", "$aact_hmlg_test")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

const TOKEN: Option<&str> = Some("$aact_hmlg_test");

#[tokio::test]
async fn asaas_receives_the_documented_request() {
    let env = TestEnv::start("asaas-shape").await;
    let mut job = asaas_job("pay_shape_1", 18600);
    job["description"] = json!("produto com defeito");
    env.publish_json(&[job]).await;

    let run = env.run_until_idle().await;

    assert!(refunded(&run.reports[0]), "{:#?}", run.reports);
    let posts = refund_posts(&env);
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert_eq!(post.path, "/asaas/v3/payments/pay_shape_1/refund");
    assert_eq!(post.headers["access_token"], "$aact_hmlg_sandbox");
    assert!(
        !post.headers.contains_key("authorization"),
        "Asaas is not Bearer"
    );
    assert!(
        post.headers["user-agent"].starts_with("refund-worker/"),
        "{:?}",
        post.headers
    );
    assert_eq!(post.headers["content-type"], "application/json");
    assert!(
        !post.headers.keys().any(|h| h.contains("idempotency")),
        "Asaas has no idempotency header"
    );
    let key = key_of("pay_shape_1");
    // The exact bytes: `value` is a JSON number in reais, with its two decimals.
    assert_eq!(
        post.body,
        format!(r#"{{"value":186.00,"description":"produto com defeito [ref:{key}]"}}"#)
    );

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].provider, "asaas");
    assert_eq!(ledger[0].payment_id, "pay_shape_1");
    assert_eq!(ledger[0].amount, 18600, "minor units in the ledger");
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some(key.as_str()));
    assert_eq!(ledger[0].refund_id, format!("pay_shape_1:{key}"));
    let record = env.record(&key).await.expect("a record");
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    assert_eq!(record.result.unwrap().refund.refund_id, ledger[0].refund_id);

    // The payment now lists the refund, with our marker, and is only partly refunded.
    let (status, text) = Twin::new(&env).payment("pay_shape_1").await;
    assert_eq!(status, 200);
    assert!(text.contains(r#""value":186.00"#), "{text}");
    let payment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payment["status"], "RECEIVED");
    assert_eq!(payment["refunds"][0]["status"], "DONE");
    assert_eq!(
        payment["refunds"][0]["description"],
        format!("produto com defeito [ref:{key}]")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn amounts_reach_asaas_as_exact_reais_at_the_edges() {
    let env = TestEnv::start("asaas-units").await;
    let cases = [
        ("pay_edge_1", 1, "0.01"),
        ("pay_edge_99", 99, "0.99"),
        ("pay_edge_100", 100, "1.00"),
        ("pay_edge_max", 1_000_000_000_000, "10000000000.00"),
    ];
    let jobs: Vec<Value> = cases.iter().map(|(p, a, _)| asaas_job(p, *a)).collect();
    env.publish_json(&jobs).await;

    env.run_until_idle().await;

    let posts = refund_posts(&env);
    assert_eq!(posts.len(), 4);
    let ledger = env.ledger();
    for (payment, minor, reais) in cases {
        let post = posts
            .iter()
            .find(|p| p.path == format!("/asaas/v3/payments/{payment}/refund"))
            .unwrap();
        assert!(
            post.body.starts_with(&format!(r#"{{"value":{reais},"#)),
            "{}",
            post.body
        );
        let entry = ledger.iter().find(|e| e.payment_id == payment).unwrap();
        assert_eq!(entry.amount, minor);
    }
    // R$ 10 billion is the whole (default) payment: Asaas now calls it REFUNDED.
    let (_, text) = Twin::new(&env).payment("pay_edge_max").await;
    let payment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payment["status"], "REFUNDED", "{text}");
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_timeout_after_execution_is_reconciled_by_reading_the_payment() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("asaas-timeout", faults, |s| {
        s.providers.timeout = Duration::from_secs(1)
    })
    .await;
    env.publish_json(&[asaas_job("pay_slow_timeout", 5000)])
        .await;

    let run = env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(
        ledger.len(),
        1,
        "the refund the lost answer made is the only one"
    );
    assert_eq!(
        refund_posts(&env).len(),
        1,
        "a blind resend would have made a second refund on Asaas"
    );
    assert!(
        payment_reads(&env) >= 1,
        "reconciled by reading the payment"
    );
    let (refund_id, amount, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(amount, 5000);
    assert_eq!(refund_id, ledger[0].refund_id);
    let record = env.record(&key_of("pay_slow_timeout")).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn reconciliation_adopts_only_the_refund_carrying_its_own_marker() {
    // Two refunds of one payment under two keys; the first answer is lost. The look-up then
    // sees both refunds and must adopt its own, not the other job's.
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("asaas-own", faults, |_| {}).await;
    let mut first = asaas_job("pay_shared_timeout", 1000);
    first["idempotency_key"] = json!("shared-a");
    let mut second = asaas_job("pay_shared_timeout", 2500);
    second["idempotency_key"] = json!("shared-b");
    env.publish_json(&[first, second]).await;

    let run = env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 2, "{ledger:#?}");
    assert_eq!(refund_posts(&env).len(), 2, "no resend");
    for (key, amount) in [("shared-a", 1000), ("shared-b", 2500)] {
        let entry = ledger
            .iter()
            .find(|e| e.idempotency_key.as_deref() == Some(key))
            .unwrap();
        assert_eq!(entry.amount, amount);
        let record = env.record(key).await.unwrap();
        assert_eq!(record.state, refund_worker::store::RecordState::Done);
        let result = record.result.unwrap().refund;
        assert_eq!(result.refund_id, entry.refund_id);
        assert_eq!(result.amount, amount);
    }
    assert!(
        run.reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Refunded { adopted: true, .. })),
        "{:#?}",
        run.reports
    );
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_pending_refund_ends_refunded_after_sync() {
    let env = TestEnv::start("asaas-pending").await;
    env.publish_json(&[asaas_job("pay_card_pending", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(refund_posts(&env).len(), 1, "status syncs only read");
    let record = env.record(&key_of("pay_card_pending")).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    let (_, text) = Twin::new(&env).payment("pay_card_pending").await;
    let payment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payment["refunds"][0]["status"], "DONE");
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_pending_refund_cancelled_by_asaas_is_dead_lettered_with_its_status() {
    let env = TestEnv::start("asaas-pendingfail").await;
    env.publish_json(&[asaas_job("pay_card_pendingfail", 3000)])
        .await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    env.one_dead_letter("permanent", Some("asaas"), &["asaas refund CANCELLED"])
        .await;
    assert!(env.ledger().is_empty(), "the cancelled refund paid nothing");
    assert_eq!(
        refund_posts(&env).len(),
        1,
        "a cancelled refund is not sent again by itself"
    );
    let record = env.record(&key_of("pay_card_pendingfail")).await.unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Failed,
        "the record shows the final state"
    );
    assert!(record.reason.unwrap().contains("CANCELLED"));
    let (_, text) = Twin::new(&env).payment("pay_card_pendingfail").await;
    let payment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payment["refunds"][0]["status"], "CANCELLED");
    assert_eq!(payment["status"], "RECEIVED", "nothing was refunded");
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_declined_refund_is_dead_lettered_permanent_with_asaas_reason() {
    let env = TestEnv::start("asaas-declined").await;
    env.publish_json(&[asaas_job("pay_chargeback_declined", 1200)])
        .await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter(
        "permanent",
        Some("asaas"),
        &["asaas 400: invalid_action", "chargeback"],
    )
    .await;
    assert_eq!(
        refund_posts(&env).len(),
        1,
        "a permanent refusal is not retried"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_flaky_payment_is_reconciled_retried_and_refunded_once() {
    let env = TestEnv::start("asaas-flaky").await;
    env.publish_json(&[asaas_job("pay_retry_flaky2", 700)])
        .await;

    let run = env.run_until_idle().await;

    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(refund_posts(&env).len(), 3, "two 500s, then the refund");
    // An Asaas 5xx may follow an execution: each one is settled by a payment read that
    // finds nothing before the next send.
    assert_eq!(payment_reads(&env), 2);
    let metrics = run.metrics.render();
    assert!(
        metrics.contains(r#"refunds_retried_total{provider="asaas"} 2"#),
        "{metrics}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn non_brl_job_is_dead_lettered_without_calling_asaas() {
    let env = TestEnv::start("asaas-usd").await;
    let mut job = asaas_job("pay_usd", 1000);
    job["currency"] = json!("USD");
    env.publish_json(&[job]).await;

    env.run_until_idle().await;

    assert!(refund_posts(&env).is_empty());
    env.one_dead_letter("permanent", None, &["only BRL"]).await;
    env.cleanup().await;
}

#[tokio::test]
async fn refund_beyond_the_refundable_amount_is_dead_lettered_with_asaas_reason() {
    let env = TestEnv::start("asaas-over").await;
    env.sandbox
        .seed_payment(Provider::Asaas, "pay_small", 1000, "BRL");
    env.publish_json(&[asaas_job("pay_small", 1500)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter("permanent", None, &["invalid_value"])
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_twin_has_no_idempotency_so_a_replayed_post_refunds_twice() {
    let env = TestEnv::start("asaas-twice").await;
    let twin = Twin::new(&env);
    let body = r#"{"value":10.50,"description":"Overpayment [ref:k-1]"}"#;

    let (s1, first) = twin.refund("pay_twice", TOKEN, body).await;
    let (s2, second) = twin.refund("pay_twice", TOKEN, body).await;

    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 2, "Asaas would pay twice; so does the twin");
    assert_eq!(ledger[0].refund_id, "pay_twice:k-1");
    assert_eq!(ledger[1].refund_id, "pay_twice:k-1#2");
    assert!(ledger.iter().all(|e| e.amount == 1050));
    assert!(
        ledger
            .iter()
            .all(|e| e.idempotency_key.as_deref() == Some("k-1"))
    );
    let payment: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(payment["object"], "payment");
    assert_eq!(payment["refunds"].as_array().unwrap().len(), 2);

    // Without a marker the ledger has no key, and a full refund empties the payment.
    let (status, text) = twin.refund("pay_twice", TOKEN, "{}").await;
    assert_eq!(status, 200, "{text}");
    let payment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(payment["status"], "REFUNDED");
    let last = env.ledger().pop().unwrap();
    assert_eq!(last.idempotency_key, None);
    assert_eq!(last.refund_id, "pay_twice:refund-3");
    let (status, text) = twin.refund("pay_twice", TOKEN, "{}").await;
    assert_eq!(status, 400);
    assert!(text.contains("invalid_action"), "{text}");
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_twin_refuses_what_asaas_refuses_before_executing() {
    let env = TestEnv::start("asaas-refusals").await;
    let twin = Twin::new(&env);
    let body = r#"{"value":1.00,"description":"x"}"#;
    let code = |text: &str| -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_owned()
    };

    let (status, text) = twin.refund("pay_r", None, body).await;
    assert_eq!(
        (status, code(&text).as_str()),
        (401, "access_token_not_found")
    );
    let (status, text) = twin.refund("pay_r", Some("Bearer sk_x"), body).await;
    assert_eq!(
        (status, code(&text).as_str()),
        (401, "invalid_access_token")
    );
    for bad in [
        r#"{"value":"1.00"}"#,
        r#"{"value":1.005}"#,
        r#"{"value":0}"#,
    ] {
        let (status, text) = twin.refund("pay_r", TOKEN, bad).await;
        assert_eq!(
            (status, code(&text).as_str()),
            (400, "invalid_value"),
            "{bad}"
        );
    }
    env.sandbox
        .seed_payment(Provider::Asaas, "pay_r_small", 100, "BRL");
    let (status, text) = twin.refund("pay_r_small", TOKEN, r#"{"value":1.01}"#).await;
    assert_eq!((status, code(&text).as_str()), (400, "invalid_value"));
    assert!(text.contains("R$ 1.00"), "{text}");
    assert!(env.ledger().is_empty(), "nothing refused was executed");

    // A GET with a body is refused by CloudFront in front of Asaas.
    let response = twin
        .client
        .get(format!("{}/pay_r", twin.base))
        .header("access_token", "$aact_hmlg_test")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    env.cleanup().await;
}

#[tokio::test]
async fn asaas_rate_limit_answers_429_with_ratelimit_headers_not_retry_after() {
    let faults = FaultOptions {
        rate_limit: Some(1),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("asaas-429", faults, |_| {}).await;
    let twin = Twin::new(&env);

    let (ok, _) = twin.payment("pay_rl").await;
    let response = twin
        .client
        .get(format!("{}/pay_rl", twin.base))
        .header("access_token", "$aact_hmlg_test")
        .send()
        .await
        .unwrap();

    assert_eq!(ok, 200);
    assert_eq!(response.status().as_u16(), 429);
    let headers = response.headers();
    assert_eq!(headers["ratelimit-limit"], "1");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-reset"], "1");
    assert!(!headers.contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string());
    env.cleanup().await;
}

#[tokio::test]
async fn rate_limited_refunds_wait_for_the_reset_and_go_through_once() {
    let faults = FaultOptions {
        rate_limit: Some(1),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("asaas-429-run", faults, |s| {
        s.retry.delays = vec![Duration::from_millis(1100), Duration::from_secs(2)];
        s.retry.max_attempts = 6;
    })
    .await;
    env.publish_json(&[asaas_job("pay_rl_a", 100), asaas_job("pay_rl_b", 200)])
        .await;

    let run = env.run_until_idle().await;

    assert_eq!(
        run.reports.iter().filter(|r| refunded(r)).count(),
        2,
        "{:#?}",
        run.reports
    );
    assert_eq!(env.ledger().len(), 2, "one refund per job");
    assert!(
        refund_posts(&env).len() >= 3,
        "at least one POST was refused"
    );
    env.cleanup().await;
}
