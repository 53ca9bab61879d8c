//! The Pix connector and its sandbox twin, end to end, with the wire checked against BCB's
//! API Pix OpenAPI spec (`specs/pix-api-2.9.0-openapi.yaml`).

use std::{sync::OnceLock, time::Duration};

use refund_sandbox::{FaultOptions, Provider, RecordedRequest};
use refund_worker::{
    job::{Amount, Currency, IdempotencyKey, Reason, Token},
    providers::{ProviderError, RefundProvider, RefundRequest, RefundStatus, pix::Pix},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestEnv, today};

/// `refund-worker:sandbox-client-secret`, the default credentials, in HTTP Basic.
const DEFAULT_BASIC: &str = "Basic cmVmdW5kLXdvcmtlcjpzYW5kYm94LWNsaWVudC1zZWNyZXQ=";
const DEVOLUCAO_PATH: &str = "/pix/{e2eid}/devolucao/{id}";

/// A 32-character e2eid ending in `tail` (digits, or a magic suffix such as `PENDING`).
fn e2eid(tail: &str) -> String {
    let head = "E99999999202611241200";
    format!("{head}{tail:0>width$}", width = 32 - head.len())
}

fn pix_job(e2eid: &str, amount: u64) -> Value {
    json!({ "payment_id": e2eid, "amount": amount, "provider": "pix", "date": today().to_string() })
}

/// The devolução id the connector must choose for a key: 35 hex digits of its SHA-256.
fn devolucao_id(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..35].to_owned()
}

fn requests(env: &TestEnv, method: &str) -> Vec<RecordedRequest> {
    env.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.method == method)
        .collect()
}

fn token_requests(env: &TestEnv) -> usize {
    requests(env, "POST")
        .iter()
        .filter(|r| r.path == "/pix/oauth/token")
        .count()
}

fn request(e2eid: &str, key: &str, amount: u64, description: Option<&str>) -> RefundRequest {
    RefundRequest {
        key: IdempotencyKey::parse(key).unwrap(),
        payment_id: Token::parse(e2eid).unwrap(),
        amount: Amount::new(amount).unwrap(),
        currency: Currency::BRL,
        reason: Reason::CustomerRequest,
        description: description.map(str::to_owned),
        job_id: "direct".into(),
    }
}

fn connector(env: &TestEnv) -> Pix {
    Pix::new(reqwest::Client::new(), &env.settings.providers.pix)
}

// ---- the spec --------------------------------------------------------------------------

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/specs/pix-api-2.9.0-openapi.yaml"
        );
        let text = std::fs::read_to_string(path).expect("the vendored spec is there");
        serde_yaml_ng::from_str(&text).expect("the vendored spec is valid YAML")
    })
}

/// Follows local `$ref`s (`#/components/...`) to the node they name.
fn resolve(node: &Value) -> &Value {
    let mut node = node;
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        node = spec()
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{reference} resolves in the spec"));
    }
    node
}

/// The `$ref` of the schema the devolução operation uses for a body or an answer.
fn schema_ref(content: &Value, media: &str) -> String {
    content["content"][media]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("a {media} schema reference in {content}"))
        .to_owned()
}

fn request_schema() -> String {
    let body = resolve(&spec()["paths"][DEVOLUCAO_PATH]["put"]["requestBody"]);
    schema_ref(body, "application/json")
}

fn response_schema(method: &str, status: &str, media: &str) -> String {
    let answer = resolve(&spec()["paths"][DEVOLUCAO_PATH][method]["responses"][status]);
    schema_ref(answer, media)
}

fn path_param_schema(name: &str) -> String {
    spec()["paths"][DEVOLUCAO_PATH]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["schema"]["$ref"].as_str())
        .unwrap_or_else(|| panic!("path parameter {name}"))
        .to_owned()
}

/// The spec's components, as strict as the spec means them: an object schema that lists its
/// properties accepts no others (so a renamed field fails), and a pattern must match the
/// whole value (JSON Schema patterns are unanchored: `\d{1,10}\.\d{2}` alone would accept
/// "186.001"). Schemas composed with allOf/anyOf/oneOf are left open; none is used here.
fn strict(node: &Value) -> Value {
    match node {
        Value::Object(map) => {
            let mut out: Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), strict(v))).collect();
            let composed = ["allOf", "anyOf", "oneOf"]
                .iter()
                .any(|k| map.contains_key(*k));
            if map.get("properties").is_some_and(Value::is_object)
                && !composed
                && !map.contains_key("additionalProperties")
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            if let Some(Value::String(pattern)) = map.get("pattern") {
                out.insert("pattern".into(), json!(format!("^(?:{pattern})$")));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(strict).collect()),
        other => other.clone(),
    }
}

/// Every violation of `instance` against the spec's schema at `reference`.
fn violations(reference: &str, instance: &Value) -> Vec<String> {
    let root = json!({ "$ref": reference, "components": strict(&spec()["components"]) });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{reference} compiles: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

#[track_caller]
fn assert_valid(reference: &str, instance: &Value) {
    let errors = violations(reference, instance);
    assert!(
        errors.is_empty(),
        "{instance} is not a valid {reference}: {errors:#?}"
    );
}

/// A client of the twin's API, for the answers the connector does not expose.
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn of(env: &TestEnv) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: format!("{}/pix", env.sandbox_url),
        }
    }

    async fn token(&self, scope: &str) -> String {
        let answer: Value = self
            .client
            .post(format!("{}/oauth/token", self.base))
            .basic_auth("refund-worker", Some("sandbox-client-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["token_type"], "Bearer", "{answer}");
        answer["access_token"].as_str().unwrap().to_owned()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String, Value) {
        let mut builder = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, content_type, body)
    }
}

fn devolucao_path(e2eid: &str, id: &str) -> String {
    format!("/pix/{e2eid}/devolucao/{id}")
}

// ---- the required behaviours ----------------------------------------------------------

#[tokio::test]
async fn pix_receives_the_documented_devolucao_request() {
    let env = TestEnv::start("pix-shape").await;
    let e2e = e2eid("1");
    let mut job = pix_job(&e2e, 18600);
    job["description"] = json!("Pedido 8421: produto devolvido");
    env.publish_json(&[job]).await;

    let run = env.run_until_idle().await;

    run.last_refund();
    let posts = requests(&env, "POST");
    assert_eq!(posts.len(), 1, "one token request: {posts:#?}");
    let token = &posts[0];
    assert_eq!(token.path, "/pix/oauth/token");
    assert_eq!(token.headers["authorization"], DEFAULT_BASIC);
    assert_eq!(
        token.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(&token.body).unwrap();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "pix.write pix.read");

    let key = format!("{e2e}:{}", today());
    let id = devolucao_id(&key);
    let puts = requests(&env, "PUT");
    assert_eq!(puts.len(), 1);
    let put = &puts[0];
    assert_eq!(put.path, format!("/pix/pix/{e2e}/devolucao/{id}"));
    let bearer = put.headers["authorization"]
        .strip_prefix("Bearer ")
        .unwrap();
    assert!(!bearer.is_empty() && !bearer.contains("secret"));
    assert_eq!(put.headers["content-type"], "application/json");
    let body: Value = serde_json::from_str(&put.body).unwrap();
    assert_eq!(
        body,
        json!({ "valor": "186.00", "natureza": "ORIGINAL", "descricao": "Pedido 8421: produto devolvido" })
    );
    assert!(
        put.body.contains(r#""valor":"186.00""#),
        "reais as a string"
    );

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].provider, "pix");
    assert_eq!(ledger[0].payment_id, e2e);
    assert_eq!(ledger[0].amount, 18600, "the ledger counts centavos");
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some(id.as_str()));
    let record = env.record(&key).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    let refund_id = record.result.unwrap().refund.refund_id;
    assert_eq!(refund_id, ledger[0].refund_id, "the rtrId is the refund id");
    assert!(
        refund_id.starts_with('D') && refund_id.len() == 32,
        "{refund_id}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn pix_timeout_after_execution_is_adopted_not_sent_twice() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("pix-timeout", faults, |s| {
        s.providers.timeout = Duration::from_secs(1);
    })
    .await;
    let e2e = e2eid("TIMEOUT");
    env.publish_json(&[pix_job(&e2e, 5000)]).await;

    let run = env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(
        ledger.len(),
        1,
        "the lost answer's devolução is the only one"
    );
    let puts = requests(&env, "PUT");
    assert_eq!(puts.len(), 1, "reconciled by GET, not by a second PUT");
    let gets = requests(&env, "GET");
    assert!(!gets.is_empty());
    assert!(
        gets.iter().all(|g| g.path == puts[0].path),
        "looked up under the same devolução id"
    );
    let (refund_id, _, adopted) = run.last_refund();
    assert!(adopted);
    assert_eq!(refund_id, ledger[0].refund_id);
    env.cleanup().await;
}

#[tokio::test]
async fn pix_pending_devolucao_is_synced_until_devolvido() {
    let env = TestEnv::start("pix-pending").await;
    let e2e = e2eid("PENDING");
    env.publish_json(&[pix_job(&e2e, 3000)]).await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(requests(&env, "PUT").len(), 1, "status checks are GETs");
    let record = env.record(&format!("{e2e}:{}", today())).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn pix_pending_devolucao_nao_realizado_is_dead_lettered_with_the_motivo() {
    let env = TestEnv::start("pix-pendingfail").await;
    let e2e = e2eid("PENDINGFAIL");
    env.publish_json(&[pix_job(&e2e, 3000)]).await;

    let run = env.run_until_idle().await;

    run.assert_saw_pending(None);
    env.one_dead_letter(
        "permanent",
        Some("pix"),
        &[
            "NAO_REALIZADO",
            "rejeitada pelo participante do usuário pagador",
        ],
    )
    .await;
    assert!(env.ledger().is_empty(), "the failed devolução paid nothing");
    assert_eq!(
        requests(&env, "PUT").len(),
        1,
        "a failed devolução is not sent again by itself"
    );
    let record = env.record(&format!("{e2e}:{}", today())).await.unwrap();
    assert_eq!(
        record.state,
        refund_worker::store::RecordState::Failed,
        "the record shows the final state"
    );
    assert!(record.reason.unwrap().contains("NAO_REALIZADO"));
    env.cleanup().await;
}

#[tokio::test]
async fn pix_declined_devolucao_is_dead_lettered_permanent_with_the_motivo() {
    let env = TestEnv::start("pix-declined").await;
    env.publish_json(&[pix_job(&e2eid("DECLINED"), 1200)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter(
        "permanent",
        None,
        &["NAO_REALIZADO", "usuário pagador encerrada"],
    )
    .await;
    assert_eq!(requests(&env, "PUT").len(), 1, "not retried");
    env.cleanup().await;
}

#[tokio::test]
async fn pix_flaky2_is_retried_under_the_same_devolucao_id_and_refunded_once() {
    let env = TestEnv::start("pix-flaky").await;
    env.publish_json(&[pix_job(&e2eid("FLAKY2"), 700)]).await;

    let run = env.run_until_idle().await;

    // Two 5xx, absorbed by the in-process retries of the first attempt.
    let metrics = run.metrics.render();
    assert!(
        metrics.contains("refunds_retried_total{provider=\"pix\"} 2"),
        "{metrics}"
    );

    run.last_refund();
    assert_eq!(env.ledger().len(), 1);
    let puts = requests(&env, "PUT");
    assert_eq!(puts.len(), 3);
    assert!(
        puts.iter().all(|p| p.path == puts[0].path),
        "one id for all"
    );
    // A 503 may have executed: each resend is preceded by a look-up.
    assert_eq!(requests(&env, "GET").len(), 2);
    env.cleanup().await;
}

// ---- Pix-specific rules ------------------------------------------------------------------

#[tokio::test]
async fn pix_payment_id_that_is_not_an_e2eid_is_dead_lettered_naming_the_rule() {
    let env = TestEnv::start("pix-e2eid").await;
    env.publish_json(&[pix_job("pix_123", 100)]).await;

    env.run_until_idle().await;

    env.one_dead_letter("permanent", None, &["exactly 32 characters of [a-zA-Z0-9]"])
        .await;
    assert!(env.sandbox.requests().is_empty(), "nothing reached the PSP");
    env.cleanup().await;
}

#[tokio::test]
async fn pix_valor_carries_ten_digits_of_reais_and_no_more() {
    let env = TestEnv::start("pix-edges").await;
    env.publish_json(&[
        pix_job(&e2eid("2"), 999_999_999_999),
        pix_job(&e2eid("3"), 1_000_000_000_000),
        pix_job(&e2eid("4"), 1),
    ])
    .await;

    env.run_until_idle().await;

    let mut sent: Vec<String> = requests(&env, "PUT")
        .iter()
        .map(|p| serde_json::from_str::<Value>(&p.body).unwrap()["valor"].clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    assert_eq!(sent, ["0.01", "9999999999.99"]);
    env.one_dead_letter("permanent", None, &[r"\d{1,10}\.\d{2}"])
        .await;
    let mut amounts: Vec<u64> = env.ledger().iter().map(|e| e.amount).collect();
    amounts.sort();
    assert_eq!(amounts, [1, 999_999_999_999]);
    env.cleanup().await;
}

#[tokio::test]
async fn pix_over_refund_is_dead_lettered_with_pix_devolucao_invalida() {
    let env = TestEnv::start("pix-over").await;
    let e2e = e2eid("5");
    env.sandbox.seed_payment(Provider::Pix, &e2e, 1000, "BRL");
    env.publish_json(&[pix_job(&e2e, 1500)]).await;

    env.run_until_idle().await;

    assert!(env.ledger().is_empty());
    env.one_dead_letter(
        "permanent",
        None,
        &["PixDevolucaoInvalida", "devolucao.valor"],
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn pix_without_a_client_id_is_dead_lettered_with_a_config_hint() {
    let env = TestEnv::with("pix-noclient", FaultOptions::default(), |s| {
        s.providers.pix.client_id = None;
    })
    .await;
    env.publish_json(&[pix_job(&e2eid("6"), 100)]).await;

    env.run_until_idle().await;

    env.one_dead_letter("permanent", None, &["REFUND_PROVIDERS__PIX__CLIENT_ID"])
        .await;
    assert!(env.sandbox.requests().is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn pix_same_id_and_body_is_the_same_devolucao_and_another_body_is_refused() {
    let env = TestEnv::start("pix-replay").await;
    let pix = connector(&env);
    let e2e = e2eid("7");
    let key = format!("{e2e}:replay");

    let first = pix
        .refund(&request(&e2e, &key, 2500, Some("a")))
        .await
        .unwrap();
    let again = pix
        .refund(&request(&e2e, &key, 2500, Some("a")))
        .await
        .unwrap();
    assert_eq!(first, again, "the same devolução, not a second one");
    assert_eq!(first.status, RefundStatus::Succeeded);
    assert_eq!(env.ledger().len(), 1);

    // Another body under the same id: the PSP refuses it (400 PixDevolucaoInvalida); the
    // devolução our id names is ours, so the connector adopts it rather than failing.
    let other_text = pix
        .refund(&request(&e2e, &key, 2500, Some("b")))
        .await
        .unwrap();
    assert_eq!(other_text.refund_id, first.refund_id);
    // Another amount under the same id cannot be adopted: a human must look.
    let err = pix
        .refund(&request(&e2e, &key, 9900, Some("a")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Permanent { why, .. } if why.contains("reconcile by hand")),
        "{err:?}"
    );
    assert_eq!(env.ledger().len(), 1, "still one devolução");
    assert_eq!(token_requests(&env), 1, "the token is cached");

    let found = pix
        .find(&request(&e2e, &key, 2500, None), None)
        .await
        .unwrap();
    assert_eq!(found.unwrap().refund_id, first.refund_id);
    let other_key = format!("{e2e}:never-sent");
    let absent = pix
        .find(&request(&e2e, &other_key, 2500, None), None)
        .await
        .unwrap();
    assert_eq!(
        absent, None,
        "a 404 PixDevolucaoNaoEncontrada proves it absent"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn pix_revoked_token_is_replaced_once_and_the_devolucao_goes_through() {
    let env = TestEnv::start("pix-token").await;
    let pix = connector(&env);
    let e2e = e2eid("8");
    pix.refund(&request(&e2e, "k1", 100, None)).await.unwrap();
    let first_auth = requests(&env, "PUT")[0].headers["authorization"].clone();
    let revoked = reqwest::Client::new()
        .post(format!("{}/pix/oauth/revoke", env.sandbox_url))
        .basic_auth("refund-worker", Some("sandbox-client-secret"))
        .form(&[("token", first_auth.trim_start_matches("Bearer "))])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);

    let second = pix.refund(&request(&e2e, "k2", 200, None)).await.unwrap();

    assert_eq!(second.status, RefundStatus::Succeeded);
    let puts = requests(&env, "PUT");
    assert_eq!(
        puts.len(),
        3,
        "k1, k2 refused with the revoked token, k2 again"
    );
    assert_eq!(puts[1].headers["authorization"], first_auth);
    assert_ne!(puts[2].headers["authorization"], first_auth);
    assert_eq!(puts[1].path, puts[2].path);
    assert_eq!(token_requests(&env), 2);
    assert_eq!(env.ledger().len(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn pix_token_endpoint_wants_client_credentials_in_basic() {
    let env = TestEnv::start("pix-oauth").await;
    let url = format!("{}/pix/oauth/token", env.sandbox_url);
    let client = reqwest::Client::new();
    let grant = [("grant_type", "client_credentials")];
    let cases: [(Option<&str>, u16); 5] = [
        (None, 401),
        (Some("Basic !!notbase64!!"), 401),
        (Some("Basic cmVmdW5kLXdvcmtlcjo="), 401), // "refund-worker:" (no secret)
        (
            Some("Bearer cmVmdW5kLXdvcmtlcjpzYW5kYm94LWNsaWVudC1zZWNyZXQ="),
            401,
        ),
        (Some(DEFAULT_BASIC), 200),
    ];
    for (auth, status) in cases {
        let mut builder = client.post(&url).form(&grant);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let response = builder.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        if status == 401 {
            assert_eq!(body["error"], "invalid_client");
        } else {
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(body["scope"], "pix.read pix.write");
            assert!(body["expires_in"].as_u64().unwrap() > 60);
        }
    }
    env.cleanup().await;
}

// ---- the wire against the BCB OpenAPI spec ----------------------------------------------

#[tokio::test]
async fn pix_request_sent_validates_against_the_bcb_openapi_spec() {
    assert_eq!(request_schema(), "#/components/schemas/DevolucaoSolicitada");
    assert_eq!(
        path_param_schema("e2eid"),
        "#/components/schemas/EndToEndId"
    );
    assert_eq!(path_param_schema("id"), "#/components/schemas/DevolucaoId");
    let env = TestEnv::start("pix-spec-req").await;
    let mut withdrawal = pix_job(&e2eid("9"), 1);
    withdrawal["reason"] = json!("PIX_WITHDRAWAL_OR_CHANGE_ERROR");
    withdrawal["description"] = json!("troco ".repeat(60));
    env.publish_json(&[withdrawal, pix_job(&e2eid("10"), 18600)])
        .await;

    env.run_until_idle().await;

    let puts = requests(&env, "PUT");
    assert_eq!(puts.len(), 2);
    for put in &puts {
        let body: Value = serde_json::from_str(&put.body).unwrap();
        assert_valid(&request_schema(), &body);
        let segments: Vec<&str> = put.path.split('/').collect();
        let ["", "pix", "pix", e2eid, "devolucao", id] = segments[..] else {
            panic!("unexpected path {}", put.path);
        };
        assert_valid(&path_param_schema("e2eid"), &json!(e2eid));
        assert_valid(&path_param_schema("id"), &json!(id));
    }
    let retirada = puts
        .iter()
        .map(|p| serde_json::from_str::<Value>(&p.body).unwrap())
        .find(|b| b["natureza"] == "RETIRADA")
        .expect("PIX_WITHDRAWAL_OR_CHANGE_ERROR is a RETIRADA");
    assert_eq!(retirada["valor"], "0.01");
    assert_eq!(retirada["descricao"].as_str().unwrap().chars().count(), 140);

    // The checks can fail: a number, a renamed field, a longer valor, a bad id.
    let schema = request_schema();
    let good = json!({ "valor": "186.00", "natureza": "ORIGINAL" });
    assert!(violations(&schema, &good).is_empty());
    for bad in [
        json!({ "valor": 186.00, "natureza": "ORIGINAL" }),
        json!({ "value": "186.00", "natureza": "ORIGINAL" }),
        json!({ "valor": "186.00", "nature": "ORIGINAL" }),
        json!({ "valor": "186.001" }),
        json!({ "valor": "10000000000.00" }),
        json!({ "valor": "1.00", "natureza": "MED_FRAUDE" }),
        json!({ "valor": "1.00", "descricao": "x".repeat(141) }),
    ] {
        assert!(
            !violations(&schema, &bad).is_empty(),
            "{bad} must be invalid"
        );
    }
    for bad_id in ["abc-def", "", &"a".repeat(36)] {
        assert!(!violations(&path_param_schema("id"), &json!(bad_id)).is_empty());
    }
    assert!(!violations(&path_param_schema("e2eid"), &json!("E123_pending")).is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn pix_sandbox_answers_validate_against_the_bcb_openapi_spec() {
    let created = response_schema("put", "201", "application/json");
    assert_eq!(created, "#/components/schemas/Devolucao");
    assert_eq!(response_schema("get", "200", "application/json"), created);
    let problem = response_schema("put", "400", "application/problem+json");
    assert_eq!(problem, "#/components/schemas/Problema");
    for (method, status) in [
        ("put", "403"),
        ("put", "404"),
        ("put", "503"),
        ("get", "404"),
    ] {
        assert_eq!(
            response_schema(method, status, "application/problem+json"),
            problem
        );
    }

    let env = TestEnv::start("pix-spec-ans").await;
    let api = Api::of(&env);
    let token = api.token("pix.write pix.read").await;
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let body = json!({ "valor": "7.89", "natureza": "ORIGINAL", "descricao": "Pedido 1" });

    // 201 Devolucao, for a plain, a pending and a declined Pix; 200 on a look-up.
    for (tail, status) in [
        ("11", "DEVOLVIDO"),
        ("PENDING", "EM_PROCESSAMENTO"),
        ("DECLINED", "NAO_REALIZADO"),
    ] {
        let path = devolucao_path(&e2eid(tail), "abc123");
        let (code, content_type, answer) = api
            .send(put.clone(), Some(&token), &path, Some(&body))
            .await;
        assert_eq!(
            (code, content_type.as_str()),
            (201, "application/json"),
            "{answer}"
        );
        assert_eq!(answer["status"], status);
        assert_valid(&created, &answer);
        let (code, _, found) = api.send(get.clone(), Some(&token), &path, None).await;
        assert_eq!(code, 200);
        assert_valid(&created, &found);
        assert_eq!(found["rtrId"], answer["rtrId"]);
    }
    let mut renamed = api
        .send(
            get.clone(),
            Some(&token),
            &devolucao_path(&e2eid("11"), "abc123"),
            None,
        )
        .await
        .2;
    renamed["rtrID"] = renamed["rtrId"].take();
    assert!(
        !violations(&created, &renamed).is_empty(),
        "a renamed field fails"
    );

    // Problems: a reused id, a bad body, no token, a token without pix.write, a missing one.
    let plain = devolucao_path(&e2eid("11"), "abc123");
    let read_only = api.token("pix.read").await;
    let cases = [
        (
            put.clone(),
            Some(token.as_str()),
            plain.clone(),
            Some(json!({ "valor": "1.00" })),
            400,
            "PixDevolucaoInvalida",
        ),
        (
            put.clone(),
            Some(token.as_str()),
            devolucao_path(&e2eid("12"), "x"),
            Some(json!({ "valor": 7.89 })),
            400,
            "PixDevolucaoInvalida",
        ),
        (
            put.clone(),
            Some(token.as_str()),
            devolucao_path("E123", "x-1"),
            Some(body.clone()),
            400,
            "PixDevolucaoInvalida",
        ),
        (
            put.clone(),
            None,
            plain.clone(),
            Some(body.clone()),
            401,
            "NaoAutorizado",
        ),
        (
            put.clone(),
            Some("revoked-or-made-up"),
            plain.clone(),
            Some(body.clone()),
            401,
            "NaoAutorizado",
        ),
        (
            put.clone(),
            Some(read_only.as_str()),
            plain.clone(),
            Some(body.clone()),
            403,
            "AcessoNegado",
        ),
        (
            get.clone(),
            Some(token.as_str()),
            devolucao_path(&e2eid("11"), "nothere"),
            None,
            404,
            "PixDevolucaoNaoEncontrada",
        ),
    ];
    for (method, token, path, body, status, kind) in cases {
        let (code, content_type, answer) = api.send(method, token, &path, body.as_ref()).await;
        assert_eq!(code, status, "{path}: {answer}");
        assert_eq!(content_type, "application/problem+json");
        assert_valid(&problem, &answer);
        assert_eq!(
            answer["type"],
            format!("https://pix.bcb.gov.br/api/v2/error/{kind}")
        );
        assert_eq!(answer["status"], status);
        if status == 400 {
            assert!(
                !answer["violacoes"].as_array().unwrap().is_empty(),
                "{answer}"
            );
        }
    }
    let mut numeric =
        json!({ "type": "https://pix.bcb.gov.br/api/v2/error/X", "title": "x", "status": "400" });
    assert!(
        !violations(&problem, &numeric).is_empty(),
        "status is an integer"
    );
    numeric["status"] = json!(400);
    assert!(violations(&problem, &numeric).is_empty());
    assert_eq!(
        env.ledger().len(),
        2,
        "the plain and the pending devolução; not the declined one"
    );
    env.cleanup().await;
}
