//! Asaas's refund API, as the sandbox fakes it: `POST /v3/payments/{id}/refund` (JSON,
//! `access_token` header, `value` a number in reais) and `GET /v3/payments/{id}`, both
//! answering with the payment object and its `refunds`.
//!
//! Asaas has no idempotency: every accepted POST executes a refund, a replayed one included,
//! exactly as the real API would. Refunds are recorded on the payment with their
//! `description`; the ledger's `idempotency_key` is the key the worker's ` [ref:<key>]` marker
//! names, if the description ends with one. Refunds have no id at Asaas; the ledger names
//! them `<payment_id>:<key>` (`…#2`, `#3` for further refunds under one marker) or
//! `<payment_id>:refund-<n>` when unmarked.

use std::{collections::HashMap, time::Duration, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State as Shared},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use time::{OffsetDateTime, macros::format_description};

use super::{Magic, Payment, RefundBlocked, Refusal, Sandbox, lock};
use crate::{
    ids::check_key,
    money::{format_reais, parse_reais},
    provider::Provider,
};

/// The longest refund `description` the twin accepts (Asaas's limit on a payment's
/// description; none is documented for refunds).
const MAX_DESCRIPTION_CHARS: usize = 500;

/// How long after its creation a `_pending` refund settles (or a `_pendingfail` one is
/// cancelled), at the next look-up.
const PENDING_FOR: Duration = Duration::from_secs(1);

/// The fake's memory.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Refunds per payment id, oldest first, as Asaas lists them.
    refunds: HashMap<String, Vec<StoredRefund>>,
    /// Numbers for the refunds' receipt URLs.
    next_receipt: u64,
}

/// A refund on a payment.
#[derive(Debug, Clone)]
struct StoredRefund {
    /// `yyyy-MM-dd HH:mm:ss`, as Asaas writes it.
    date_created: String,
    /// `PENDING`, `DONE`, or `CANCELLED` (only a `_pendingfail` one).
    status: &'static str,
    /// Centavos.
    value: u64,
    /// As the request sent it.
    description: Option<String>,
    /// For `transactionReceiptUrl`.
    receipt: u64,
    /// When it executed, to settle a `_pending` one.
    created: Instant,
    /// Its name in the ledger, to take a cancelled one back out.
    refund_id: String,
    /// `_pendingfail`: the `PENDING` refund is cancelled instead of done.
    fails: bool,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/asaas/v3/payments/{id}", get(retrieve))
        .route("/asaas/v3/payments/{id}/refund", post(create))
}

/// An Asaas error answer: its status and `{"errors":[{"code","description"}]}`.
type AsaasError = (StatusCode, Value);

fn error(status: StatusCode, code: &str, description: impl Into<String>) -> AsaasError {
    let body = json!({ "errors": [{ "code": code, "description": description.into() }] });
    (status, body)
}

fn respond((status, body): AsaasError) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The key a description's marker names (` [ref:<key>]` at its very end), if any.
fn marked_key(description: &str) -> Option<&str> {
    let (_, key) = description
        .trim_end()
        .strip_suffix(']')?
        .rsplit_once("[ref:")?;
    check_key(key).ok().map(|_| key)
}

/// Asaas answers 401 to a missing or unknown key, and wants a `User-Agent` from every client.
fn admitted(headers: &HeaderMap) -> Result<(), AsaasError> {
    let token = headers
        .get("access_token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token.is_empty() {
        let hint = if headers.contains_key("authorization") {
            " Asaas não usa Authorization: Bearer."
        } else {
            ""
        };
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "access_token_not_found",
            format!(
                "O cabeçalho de autenticação 'access_token' é obrigatório e não foi encontrado na requisição.{hint}"
            ),
        ));
    }
    if !token.starts_with("$aact_") {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_access_token",
            "A chave de API fornecida é inválida.",
        ));
    }
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if agent.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_user_agent",
            "O header User-Agent é obrigatório.",
        ));
    }
    Ok(())
}

fn refused(sandbox: &Sandbox, refusal: Refusal) -> Response {
    match refusal {
        Refusal::RateLimited(wait) => {
            // Asaas sends no Retry-After: the client waits for RateLimit-Reset (seconds).
            let reset = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            let limit = sandbox.inner.faults.rate_limit.unwrap_or(1);
            let mut response = respond(error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Limite de requisições excedido. Aguarde o tempo indicado em RateLimit-Reset.",
            ));
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
            headers.insert("ratelimit-reset", HeaderValue::from(reset));
            response
        }
        Refusal::Unavailable => respond(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Ocorreu um erro interno no Asaas. Tente novamente (sandbox fault; nothing was executed).",
        )),
    }
}

/// The body of a refund call. `value` stays raw so it is read exactly, never as a float.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    description: Option<String>,
    #[serde(borrow)]
    split_refunds: Option<Vec<&'a RawValue>>,
}

/// A validated refund call.
struct CreateParams {
    payment_id: String,
    /// Centavos; `None` refunds what is left.
    value: Option<u64>,
    description: Option<String>,
}

fn parse_create(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Option<u64>, Option<String>), AsaasError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "A API do Asaas aceita apenas JSON (Content-Type: application/json); recebido {content_type:?}."
            ),
        ));
    }
    let parsed: CreateBody<'_> = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("O corpo da requisição é inválido: {e}"),
        )
    })?;
    let value = match parsed.value {
        None => None,
        Some(raw) => match parse_reais(raw.get()) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_value",
                    format!(
                        "O valor do estorno deve ser um número positivo com no máximo duas casas decimais (recebido {}).",
                        raw.get()
                    ),
                ));
            }
        },
    };
    if let Some(description) = &parsed.description
        && description.chars().count() > MAX_DESCRIPTION_CHARS
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_description",
            format!(
                "A descrição do estorno deve ter no máximo {MAX_DESCRIPTION_CHARS} caracteres."
            ),
        ));
    }
    if parsed.split_refunds.is_some_and(|s| !s.is_empty()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            "splitRefunds não é suportado por este sandbox.",
        ));
    }
    Ok((value, parsed.description))
}

async fn create(
    Shared(sandbox): Shared<Sandbox>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = admitted(&headers) {
        return respond(refusal);
    }
    let (value, description) = match parse_create(&headers, &body) {
        Ok(parsed) => parsed,
        Err(refusal) => return respond(refusal),
    };
    let params = CreateParams {
        payment_id,
        value,
        description,
    };
    // The request has reached "Asaas": from here on it runs to its end even if the client
    // hangs up (during the latency, or while the answer is held back).
    tokio::spawn(accept(sandbox, params))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn accept(sandbox: Sandbox, params: CreateParams) -> Response {
    if let Err(refusal) = sandbox
        .gate(Provider::Asaas, &params.payment_id, true)
        .await
    {
        return refused(&sandbox, refusal);
    }
    let object = match execute(&sandbox, &params) {
        Ok(object) => object,
        Err(refusal) => return respond(refusal),
    };
    if sandbox.loses_answer(Provider::Asaas, &params.payment_id) {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    (StatusCode::OK, axum::Json(object)).into_response()
}

/// Executes one refund (no idempotency: every call that gets here is a new refund) and
/// returns the payment as it now stands.
fn execute(sandbox: &Sandbox, params: &CreateParams) -> Result<PaymentObject, AsaasError> {
    let id = &params.payment_id;
    // Held across the ledger write, so a look-up never sees the ledger ahead of the payment.
    let mut state = lock(&sandbox.inner.asaas);
    let payment = sandbox.payment(Provider::Asaas, id);
    let left = payment.settled - payment.refunded;
    let already_refunded = || {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            format!("A cobrança {id} já foi totalmente estornada."),
        )
    };
    let amount = match params.value {
        Some(value) => value,
        None if left == 0 => return Err(already_refunded()),
        None => left,
    };
    let key = params.description.as_deref().and_then(marked_key);
    let refunds = state.refunds.entry(id.clone()).or_default();
    let refund_id = match key {
        Some(key) => {
            let earlier = refunds
                .iter()
                .filter(|r| r.description.as_deref().and_then(marked_key) == Some(key))
                .count();
            if earlier == 0 {
                format!("{id}:{key}")
            } else {
                format!("{id}:{key}#{}", earlier + 1)
            }
        }
        None => format!("{id}:refund-{}", refunds.len() + 1),
    };
    match sandbox.execute(Provider::Asaas, id, amount, key, &refund_id) {
        Err(RefundBlocked::Declined) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_action",
                format!(
                    "Não é possível estornar a cobrança {id}, pois ela possui uma contestação (chargeback) em andamento."
                ),
            ));
        }
        Err(RefundBlocked::TooLarge { left: 0 }) => return Err(already_refunded()),
        Err(RefundBlocked::TooLarge { left }) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_value",
                format!(
                    "O valor informado (R$ {}) é maior que o valor disponível para estorno (R$ {}).",
                    format_reais(amount),
                    format_reais(left)
                ),
            ));
        }
        Ok(()) => {}
    }
    state.next_receipt += 1;
    let receipt = state.next_receipt;
    let magic = Magic::of(id);
    let pending = matches!(magic, Magic::Pending | Magic::PendingFail);
    state
        .refunds
        .entry(id.clone())
        .or_default()
        .push(StoredRefund {
            date_created: now_asaas(),
            status: if pending { "PENDING" } else { "DONE" },
            value: amount,
            description: params.description.clone(),
            receipt,
            created: Instant::now(),
            refund_id,
            fails: magic == Magic::PendingFail,
        });
    let payment = sandbox.payment(Provider::Asaas, id);
    Ok(payment_object(id, &payment, &state.refunds[id]))
}

async fn retrieve(
    Shared(sandbox): Shared<Sandbox>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = admitted(&headers) {
        return respond(refusal);
    }
    if !body.is_empty() {
        // What CloudFront in front of Asaas answers to a GET with a body.
        return (
            StatusCode::FORBIDDEN,
            "403 ERROR: The request could not be satisfied. Bad request.",
        )
            .into_response();
    }
    if let Err(refusal) = sandbox.gate(Provider::Asaas, &payment_id, false).await {
        return refused(&sandbox, refusal);
    }
    let mut state = lock(&sandbox.inner.asaas);
    let refunds = state.refunds.entry(payment_id.clone()).or_default();
    // A `_pending` refund settles at the first look-up a second or more after it was made; a
    // `_pendingfail` one is cancelled then, and its money leaves the ledger.
    for refund in refunds.iter_mut() {
        if refund.status == "PENDING" && refund.created.elapsed() >= PENDING_FOR {
            if refund.fails {
                refund.status = "CANCELLED";
                sandbox.reverse(Provider::Asaas, &refund.refund_id);
            } else {
                refund.status = "DONE";
            }
        }
    }
    let payment = sandbox.payment(Provider::Asaas, &payment_id);
    let object = payment_object(&payment_id, &payment, refunds);
    (StatusCode::OK, axum::Json(object)).into_response()
}

/// An Asaas payment object (the fields a refund client reads, and a few more for realism).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentObject {
    object: &'static str,
    id: String,
    date_created: String,
    customer: &'static str,
    value: Box<RawValue>,
    net_value: Box<RawValue>,
    description: Option<String>,
    billing_type: &'static str,
    status: &'static str,
    external_reference: Option<String>,
    deleted: bool,
    refunds: Option<Vec<RefundObject>>,
}

/// One entry of `refunds`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefundObject {
    date_created: String,
    status: &'static str,
    value: Box<RawValue>,
    description: Option<String>,
    transaction_receipt_url: Option<String>,
}

/// Centavos as a JSON number in reais, by integer formatting.
fn reais(minor: u64) -> Box<RawValue> {
    RawValue::from_string(format_reais(minor))
        .expect("digits, a dot and two digits are a JSON number")
}

/// The payment's status: refunding while a refund is pending, `REFUNDED` once nothing is
/// left, and still `RECEIVED` with partial refunds.
fn payment_status(payment: &Payment, refunds: &[StoredRefund]) -> &'static str {
    if refunds.iter().any(|r| r.status == "PENDING") {
        "REFUND_IN_PROGRESS"
    } else if payment.refunded > 0 && payment.refunded >= payment.settled {
        "REFUNDED"
    } else {
        "RECEIVED"
    }
}

fn payment_object(id: &str, payment: &Payment, refunds: &[StoredRefund]) -> PaymentObject {
    let listed: Vec<RefundObject> = refunds
        .iter()
        .map(|r| RefundObject {
            date_created: r.date_created.clone(),
            status: r.status,
            value: reais(r.value),
            description: r.description.clone(),
            transaction_receipt_url: (r.status == "DONE")
                .then(|| format!("https://sandbox.asaas.com/comprovantes/{:016}", r.receipt)),
        })
        .collect();
    PaymentObject {
        object: "payment",
        id: id.to_owned(),
        date_created: today(),
        customer: "cus_000005219613",
        value: reais(payment.settled),
        net_value: reais(payment.settled),
        description: None,
        billing_type: "PIX",
        status: payment_status(payment, refunds),
        external_reference: None,
        deleted: false,
        refunds: (!listed.is_empty()).then_some(listed),
    }
}

fn now_asaas() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

fn today() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_from_the_end_only() {
        assert_eq!(
            marked_key("defeito [ref:pay_1:2026-11-24]"),
            Some("pay_1:2026-11-24")
        );
        assert_eq!(marked_key("[ref:a] then text"), None);
        assert_eq!(marked_key("Overpayment"), None);
        assert_eq!(marked_key("x [ref:a b]"), None);
    }

    #[test]
    fn bodies_are_read_exactly_and_validated_as_asaas_would() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let ok = |body: &str| parse_create(&headers, body.as_bytes()).ok();
        assert_eq!(
            ok(r#"{"value":10000000000.00,"description":"d"}"#),
            Some((Some(1_000_000_000_000), Some("d".to_owned())))
        );
        assert_eq!(ok(r#"{"value":0.01}"#), Some((Some(1), None)));
        assert_eq!(ok(r#"{"value":0.99}"#), Some((Some(99), None)));
        assert_eq!(ok(r#"{"value":1.00}"#), Some((Some(100), None)));
        assert_eq!(ok(r#"{"value":10.5}"#), Some((Some(1050), None)));
        assert_eq!(ok(r#"{}"#), Some((None, None)));
        for bad in [
            r#"{"value":"10.50"}"#,
            r#"{"value":1.005}"#,
            r#"{"value":0}"#,
            r#"{"value":-1}"#,
            r#"{"value":1e3}"#,
            r#"{"splitRefunds":[{"walletId":"w","value":1.00}]}"#,
            "not json",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        let long = format!(r#"{{"description":"{}"}}"#, "x".repeat(501));
        assert_eq!(ok(&long), None);
        assert!(parse_create(&HeaderMap::new(), b"{}").is_err(), "JSON only");
    }

    #[test]
    fn payment_status_follows_its_refunds() {
        let payment = |refunded| Payment {
            settled: 1000,
            refunded,
            currency: "BRL".into(),
        };
        let refund = |status| StoredRefund {
            date_created: String::new(),
            status,
            value: 500,
            description: None,
            receipt: 1,
            created: Instant::now(),
            refund_id: "pay_1:refund-1".into(),
            fails: false,
        };
        assert_eq!(payment_status(&payment(0), &[]), "RECEIVED");
        assert_eq!(payment_status(&payment(500), &[refund("DONE")]), "RECEIVED");
        assert_eq!(
            payment_status(&payment(500), &[refund("PENDING")]),
            "REFUND_IN_PROGRESS"
        );
        assert_eq!(
            payment_status(&payment(1000), &[refund("DONE"), refund("DONE")]),
            "REFUNDED"
        );
        assert_eq!(
            payment_status(&payment(0), &[refund("CANCELLED")]),
            "RECEIVED",
            "a cancelled refund gave its money back"
        );
    }
}
