//! Stripe's refund API, as the sandbox fakes it: `POST /v1/refunds` (form-encoded, Bearer
//! secret key, `Idempotency-Key`), `GET /v1/refunds` (list by payment) and
//! `GET /v1/refunds/{id}`.
//!
//! Idempotency follows Stripe's documented rules: a key saves the first answer once execution
//! begins (errors included) and replays it; the same key with other parameters is a 400
//! `idempotency_error`; a key still executing answers 409. Validation errors, 401s, 429s and
//! outages happen before the idempotency layer and save nothing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{Magic, RefundBlocked, Refusal, Sandbox, lock};
use crate::provider::Provider;

const KNOWN_PARAMS: &[&str] = &[
    "amount",
    "charge",
    "currency",
    "customer",
    "instructions_email",
    "origin",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
];

/// The fake's memory.
#[derive(Debug, Default)]
pub(crate) struct StripeState {
    /// Idempotency keys and what they saved.
    keys: HashMap<String, Saved>,
    /// Refunds by id.
    refunds: HashMap<String, StoredRefund>,
    /// Refund ids per payment, oldest first.
    by_payment: HashMap<String, Vec<String>>,
    /// For refund ids.
    next_id: u64,
}

#[derive(Debug, Clone)]
enum Saved {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
    },
}

#[derive(Debug, Clone)]
struct StoredRefund {
    object: Value,
    created: Instant,
    /// `_pendingfail`: the pending refund fails instead of settling.
    fails: bool,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/stripe/v1/refunds", get(list).post(create))
        .route("/stripe/v1/refunds/{id}", get(retrieve))
}

fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: impl Into<String>,
    param: Option<&str>,
) -> (StatusCode, Value) {
    let mut error = json!({ "type": kind, "message": message.into() });
    if let Some(code) = code {
        error["code"] = json!(code);
        error["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
    }
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    (status, json!({ "error": error }))
}

fn respond((status, body): (StatusCode, Value)) -> Response {
    (status, axum::Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, Value)> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let key = auth.strip_prefix("Bearer ").unwrap_or("");
    if key.starts_with("sk_test_") || key.starts_with("sk_live_") || key.starts_with("rk_") {
        return Ok(());
    }
    let message = if key.is_empty() {
        "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth.".to_owned()
    } else {
        format!(
            "Invalid API Key provided: {}****",
            key.chars().take(8).collect::<String>()
        )
    };
    Err(error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        None,
        message,
        None,
    ))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::RateLimited(wait) => {
            let (status, body) = error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                Some("rate_limit"),
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                None,
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = respond((status, body));
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            response
        }
        Refusal::Unavailable => respond(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            None,
            "Stripe is temporarily unavailable. Please retry your request (sandbox fault; nothing was executed).",
            None,
        )),
    }
}

/// The validated parameters of a create call.
struct CreateParams {
    payment_param: &'static str,
    payment_id: String,
    amount: Option<u64>,
    reason: Option<String>,
    metadata: HashMap<String, String>,
    fingerprint: String,
}

fn parse_create(body: &[u8]) -> Result<CreateParams, (StatusCode, Value)> {
    let bad = |code: &str, message: String, param: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            message,
            Some(param),
        )
    };
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("Invalid request body: {e}"),
            None,
        )
    })?;
    let mut metadata = HashMap::new();
    let mut fields = HashMap::new();
    for (key, value) in &pairs {
        if let Some(meta) = key
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            metadata.insert(meta.to_owned(), value.clone());
        } else if key.starts_with("expand[") || KNOWN_PARAMS.contains(&key.as_str()) {
            fields.insert(key.clone(), value.clone());
        } else {
            return Err(bad(
                "parameter_unknown",
                format!("Received unknown parameter: {key}"),
                key,
            ));
        }
    }
    let (payment_param, payment_id) = match (fields.get("payment_intent"), fields.get("charge")) {
        (Some(pi), None) => ("payment_intent", pi.clone()),
        (None, Some(ch)) => ("charge", ch.clone()),
        (None, None) => {
            return Err(bad("parameter_missing", "One of the following params should be provided for this request: payment_intent or charge.".into(), "payment_intent"));
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "parameter_invalid_empty",
                "You can only specify one of these parameters: payment_intent, charge.".into(),
                "charge",
            ));
        }
    };
    let amount = match fields.get("amount") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(a) if a >= 1 => Some(a),
            _ => {
                return Err(bad(
                    "parameter_invalid_integer",
                    format!("Invalid positive integer: {text}"),
                    "amount",
                ));
            }
        },
    };
    let reason = fields.get("reason").cloned();
    if let Some(r) = &reason
        && !["duplicate", "fraudulent", "requested_by_customer"].contains(&r.as_str())
    {
        return Err(bad(
            "parameter_invalid_string",
            format!(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer (got {r})"
            ),
            "reason",
        ));
    }
    for (key, value) in &metadata {
        if key.len() > 40 || value.chars().count() > 500 {
            return Err(bad(
                "parameter_invalid_string",
                format!("Metadata key {key} or its value is too long"),
                "metadata",
            ));
        }
    }
    pairs.sort();
    let fingerprint = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    Ok(CreateParams {
        payment_param,
        payment_id,
        amount,
        reason,
        metadata,
        fingerprint,
    })
}

async fn create(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = authorized(&headers) {
        return respond(e);
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return respond(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!(
                "Invalid request: Stripe expects application/x-www-form-urlencoded bodies, got {content_type:?}"
            ),
            None,
        ));
    }
    let params = match parse_create(&body) {
        Ok(p) => p,
        Err(e) => return respond(e),
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if key.as_ref().is_some_and(|k| k.len() > 255) {
        return respond(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Idempotency-Key must be at most 255 characters",
            None,
        ));
    }
    // The request has reached "Stripe": from here on it runs to its end even if the client
    // hangs up (during the latency, or while the answer is held back).
    tokio::spawn(accept(sandbox, params, key))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn accept(sandbox: Sandbox, params: CreateParams, key: Option<String>) -> Response {
    if let Err(refusal) = sandbox
        .gate(Provider::Stripe, &params.payment_id, true)
        .await
    {
        return refused(refusal);
    }
    if let Some(key) = &key {
        let mut state = lock(&sandbox.inner.stripe);
        match state.keys.get(key).cloned() {
            None => {
                state.keys.insert(
                    key.clone(),
                    Saved::InFlight {
                        fingerprint: params.fingerprint.clone(),
                    },
                );
            }
            Some(Saved::Done {
                fingerprint,
                status,
                body,
            }) if fingerprint == params.fingerprint => {
                let mut response = respond((status, body));
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return response;
            }
            Some(Saved::InFlight { fingerprint }) if fingerprint == params.fingerprint => {
                return respond(error(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through). Please try again later.",
                    None,
                ));
            }
            Some(_) => {
                return respond(error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    None,
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ),
                    None,
                ));
            }
        }
    }
    let (status, body) = execute(&sandbox, &params, key.as_deref());
    if let Some(key) = &key {
        lock(&sandbox.inner.stripe).keys.insert(
            key.clone(),
            Saved::Done {
                fingerprint: params.fingerprint.clone(),
                status,
                body: body.clone(),
            },
        );
    }
    if status == StatusCode::OK && sandbox.loses_answer(Provider::Stripe, &params.payment_id) {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    let mut response = respond((status, body));
    if let Some(key) = key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        response.headers_mut().insert("idempotency-key", key);
    }
    response
}

fn execute(sandbox: &Sandbox, params: &CreateParams, key: Option<&str>) -> (StatusCode, Value) {
    let payment = sandbox.payment(Provider::Stripe, &params.payment_id);
    let amount = params.amount.unwrap_or(payment.settled - payment.refunded);
    let id = {
        let mut state = lock(&sandbox.inner.stripe);
        state.next_id += 1;
        format!(
            "re_{}{:012}",
            &uuid::Uuid::new_v4().simple().to_string()[..12],
            state.next_id
        )
    };
    let currency = payment.currency.to_ascii_lowercase();
    if amount == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_already_refunded"),
            format!("Charge {} has already been refunded.", params.payment_id),
            None,
        );
    }
    match sandbox.execute(Provider::Stripe, &params.payment_id, amount, key, &id) {
        Err(RefundBlocked::Declined) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_disputed"),
            format!(
                "Charge {} has been charged back; cannot issue a refund.",
                params.payment_id
            ),
            None,
        ),
        Err(RefundBlocked::TooLarge { left: 0 }) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_already_refunded"),
            format!("Charge {} has already been refunded.", params.payment_id),
            None,
        ),
        Err(RefundBlocked::TooLarge { left }) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("amount_too_large"),
            format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
            ),
            Some("amount"),
        ),
        Ok(()) => {
            let magic = Magic::of(&params.payment_id);
            let pending = matches!(magic, Magic::Pending | Magic::PendingFail);
            let charge = if params.payment_param == "charge" {
                params.payment_id.clone()
            } else {
                format!("ch_{}", params.payment_id.trim_start_matches("pi_"))
            };
            let object = json!({
                "id": id,
                "object": "refund",
                "amount": amount,
                "balance_transaction": format!("txn_{}", &id[3..]),
                "charge": charge,
                "created": time::OffsetDateTime::now_utc().unix_timestamp(),
                "currency": currency,
                "destination_details": { "type": "card", "card": { "type": "refund", "reference_status": "pending" } },
                "metadata": params.metadata,
                "payment_intent": (params.payment_param == "payment_intent").then(|| params.payment_id.clone()),
                "reason": params.reason,
                "receipt_number": null,
                "source_transfer_reversal": null,
                "status": if pending { "pending" } else { "succeeded" },
                "transfer_reversal": null,
            });
            let mut state = lock(&sandbox.inner.stripe);
            state.refunds.insert(
                id.clone(),
                StoredRefund {
                    object: object.clone(),
                    created: Instant::now(),
                    fails: magic == Magic::PendingFail,
                },
            );
            state
                .by_payment
                .entry(params.payment_id.clone())
                .or_default()
                .push(id);
            (StatusCode::OK, object)
        }
    }
}

/// A refund as a look-up sees it: a pending one settles (or, for `_pendingfail`, fails and
/// leaves the ledger) at the first look-up a second after its creation.
fn look_up(sandbox: &Sandbox, state: &mut StripeState, id: &str) -> Option<Value> {
    let stored = state.refunds.get_mut(id)?;
    if stored.object["status"] == "pending" && stored.created.elapsed() >= Duration::from_secs(1) {
        if stored.fails {
            stored.object["status"] = json!("failed");
            stored.object["failure_reason"] = json!("expired_or_canceled_card");
            sandbox.reverse(Provider::Stripe, id);
        } else {
            stored.object["status"] = json!("succeeded");
        }
    }
    Some(stored.object.clone())
}

async fn retrieve(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorized(&headers) {
        return respond(e);
    }
    if let Err(refusal) = sandbox.gate(Provider::Stripe, &id, false).await {
        return refused(refusal);
    }
    match look_up(&sandbox, &mut lock(&sandbox.inner.stripe), &id) {
        Some(object) => respond((StatusCode::OK, object)),
        None => respond(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such refund: '{id}'"),
            Some("id"),
        )),
    }
}

async fn list(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = authorized(&headers) {
        return respond(e);
    }
    let payment = query
        .get("payment_intent")
        .or_else(|| query.get("charge"))
        .cloned()
        .unwrap_or_default();
    if let Err(refusal) = sandbox.gate(Provider::Stripe, &payment, false).await {
        return refused(refusal);
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let mut state = lock(&sandbox.inner.stripe);
    // Newest first, as Stripe lists.
    let mut ids: Vec<String> = state.by_payment.get(&payment).cloned().unwrap_or_default();
    ids.reverse();
    let start = match query.get("starting_after") {
        Some(after) => ids
            .iter()
            .position(|id| id == after)
            .map_or(ids.len(), |p| p + 1),
        None => 0,
    };
    let page: Vec<Value> = ids[start..]
        .iter()
        .take(limit)
        .filter_map(|id| look_up(&sandbox, &mut state, id))
        .collect();
    let has_more = ids.len() > start + page.len();
    respond((
        StatusCode::OK,
        json!({ "object": "list", "data": page, "has_more": has_more, "url": "/v1/refunds" }),
    ))
}
