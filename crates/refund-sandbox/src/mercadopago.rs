//! Mercado Pago's refund API, as the sandbox fakes it: `POST /v1/payments/{id}/refunds`
//! (JSON body, `amount` a number in reais, `Authorization: Bearer` access token, mandatory
//! `X-Idempotency-Key`), `GET /v1/payments/{id}/refunds` (every refund of the payment, as an
//! array), `GET /v1/payments/{id}/refunds/{refund_id}` and `GET /v1/payments/{id}`.
//!
//! Idempotency as Mercado Pago documents it: a request without `X-Idempotency-Key` is a 400
//! (cause 4292); the first request under a key is the only one processed, and a repeat with
//! the same payment and amount gets the first answer again (errors of an execution included);
//! the same key with another payment or amount is a 409 `idempotency_key_already_used` (as
//! the Orders API documents). Keys never expire here. Auth, validation (4040/4041), 429s and
//! outages come before the idempotency layer and save nothing. A repeat that arrives while
//! the first request under its key is still executing gets a 409 (the real behaviour is
//! undocumented; the connector treats any 409 as an unknown outcome).
//!
//! Real payment ids are numbers; the sandbox takes any id so that the magic suffixes
//! (`123_declined`, `123_flaky2`, `123_timeout`, `123_pending`, `123_pendingfail`) work. A numeric id is echoed
//! as a JSON number, any other as a string. Money is written and read as exact decimals
//! (`RawValue` + integer formatting), never through `f64`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State as AxumState},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;
use serde_json::{Map, Value, json, value::RawValue};
use time::{OffsetDateTime, UtcOffset, macros::format_description};

use super::{Magic, RefundBlocked, Refusal, Sandbox, lock};
use crate::{
    money::{format_reais, parse_reais},
    provider::Provider,
};

const PROVIDER: Provider = Provider::Mercadopago;

/// The fake's memory.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// `X-Idempotency-Key`s and what they saved.
    keys: HashMap<String, Saved>,
    /// Refunds by id.
    refunds: HashMap<u64, StoredRefund>,
    /// Refund ids per payment, oldest first.
    by_payment: HashMap<String, Vec<u64>>,
    /// For refund ids.
    next_id: u64,
}

/// What an idempotency key holds.
#[derive(Debug, Clone)]
enum Saved {
    /// The first request under the key is executing.
    InFlight { fingerprint: String },
    /// Its answer, replayed to every repeat.
    Done {
        fingerprint: String,
        status: StatusCode,
        body: String,
    },
}

#[derive(Debug, Clone)]
struct StoredRefund {
    object: RefundJson,
    created: Instant,
    /// `_pendingfail`: the `in_process` refund is rejected instead of approved.
    fails: bool,
}

/// The `reason` of a `_pendingfail` refund once rejected: the collector's balance could not
/// fund it.
const REJECTED_REASON: &str = "insufficient_funds";

/// A payment or refund id as Mercado Pago writes it: a number (or, for the sandbox's magic
/// ids, a string).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum IdJson {
    Number(u64),
    Text(String),
}

impl IdJson {
    fn of(id: &str) -> Self {
        match id.parse::<u64>() {
            // Only a canonical number (no sign, no leading zero) is written as one, so the
            // id reads back as the same text.
            Ok(n) if n.to_string() == id => IdJson::Number(n),
            _ => IdJson::Text(id.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct SourceJson {
    id: &'static str,
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A refund object, with the fields Mercado Pago documents.
#[derive(Debug, Clone, Serialize)]
struct RefundJson {
    id: u64,
    payment_id: IdJson,
    amount: Box<RawValue>,
    metadata: Map<String, Value>,
    source: SourceJson,
    date_created: String,
    unique_sequence_number: Option<String>,
    refund_mode: &'static str,
    adjustment_amount: u64,
    status: &'static str,
    reason: Option<String>,
    amount_refunded_to_payer: Box<RawValue>,
    label: Vec<Value>,
    partition_details: Vec<Value>,
}

/// The parts of a payment `GET /v1/payments/{id}` shows.
#[derive(Debug, Serialize)]
struct PaymentJson {
    id: IdJson,
    status: &'static str,
    status_detail: &'static str,
    currency_id: String,
    transaction_amount: Box<RawValue>,
    transaction_amount_refunded: Box<RawValue>,
    refunds: Vec<RefundJson>,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/mercadopago/v1/payments/{id}", get(payment))
        .route(
            "/mercadopago/v1/payments/{id}/refunds",
            post(create).get(list),
        )
        .route(
            "/mercadopago/v1/payments/{id}/refunds/{refund_id}",
            get(retrieve),
        )
}

/// Reais as an exact JSON number.
fn reais(minor: u64) -> Box<RawValue> {
    RawValue::from_string(format_reais(minor))
        .expect("digits, a point and two digits always form a valid JSON number")
}

/// Mercado Pago's error body.
fn error(
    status: StatusCode,
    error: &str,
    message: impl Into<String>,
    causes: &[(u32, &str)],
) -> (StatusCode, String) {
    let cause: Vec<Value> = causes
        .iter()
        .map(
            |(code, description)| json!({ "code": code, "description": description, "data": null }),
        )
        .collect();
    let body = json!({
        "message": message.into(),
        "error": error,
        "status": status.as_u16(),
        "cause": cause,
    });
    (status, body.to_string())
}

fn respond((status, body): (StatusCode, String)) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn ok_json(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => respond((StatusCode::OK, body)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = auth.strip_prefix("Bearer ").unwrap_or("").trim();
    if token.starts_with("APP_USR-") || token.starts_with("TEST-") {
        return Ok(());
    }
    let message = if token.is_empty() {
        "unauthorized: an access token is required (Authorization: Bearer <ACCESS_TOKEN>)"
    } else {
        "invalid access token"
    };
    Err(error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
        &[],
    ))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::RateLimited(wait) => {
            let mut response = respond(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests",
                &[],
            ));
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        Refusal::Unavailable => respond(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "Service temporarily unavailable, please retry (sandbox fault; nothing was executed)",
            &[],
        )),
    }
}

/// The validated parameters of a create call.
#[derive(Debug)]
struct CreateParams {
    payment_id: String,
    /// Centavos; `None` refunds what is left (Mercado Pago's full refund).
    amount: Option<u64>,
    /// What the idempotency layer compares: payment and amount.
    fingerprint: String,
}

fn bad_request(message: impl Into<String>, causes: &[(u32, &str)]) -> (StatusCode, String) {
    error(StatusCode::BAD_REQUEST, "bad_request", message, causes)
}

/// Reads a create call's body as Mercado Pago does: empty means a full refund; otherwise a
/// JSON object whose `amount` is a positive number in reais.
fn parse_create(
    payment_id: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<CreateParams, (StatusCode, String)> {
    let mut amount = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/json") {
            return Err(bad_request(
                format!("Invalid Content-Type {content_type:?}: the body must be application/json"),
                &[],
            ));
        }
        let fields: HashMap<String, Box<RawValue>> = serde_json::from_slice(body)
            .map_err(|e| bad_request(format!("Invalid JSON body: {e}"), &[]))?;
        let mut wrong: Vec<&str> = fields
            .keys()
            .map(String::as_str)
            .filter(|k| !["amount", "metadata"].contains(k))
            .collect();
        if !wrong.is_empty() {
            wrong.sort_unstable();
            return Err(bad_request(
                format!(
                    "The name of the following parameters is wrong : [{}]",
                    wrong.join(", ")
                ),
                &[(8, "The name of the parameters is wrong.")],
            ));
        }
        if let Some(raw) = fields.get("amount") {
            amount = Some(parse_amount(raw.get())?);
        }
    }
    let fingerprint = format!(
        "{payment_id}|{}",
        amount.map_or_else(|| "full".to_owned(), |a| a.to_string())
    );
    Ok(CreateParams {
        payment_id,
        amount,
        fingerprint,
    })
}

/// `amount` in centavos, exactly: 4041 when it is not a number (or not plain money with at
/// most two decimals), 4040 when it is not positive.
fn parse_amount(raw: &str) -> Result<u64, (StatusCode, String)> {
    let numeric = raw.starts_with('-') || raw.bytes().next().is_some_and(|b| b.is_ascii_digit());
    if !numeric {
        return Err(bad_request(
            "amount attribute must be numeric",
            &[(4041, "amount attribute must be numeric")],
        ));
    }
    let not_positive = || {
        bad_request(
            "amount attribute must be positive",
            &[(4040, "amount attribute must be positive")],
        )
    };
    if raw.starts_with('-') {
        return Err(not_positive());
    }
    match parse_reais(raw) {
        Some(0) => Err(not_positive()),
        Some(minor) => Ok(minor),
        None => Err(bad_request(
            format!(
                "amount attribute must be a number of reais with at most 2 decimals, got {raw}"
            ),
            &[(4041, "amount attribute must be numeric")],
        )),
    }
}

async fn create(
    AxumState(sandbox): AxumState<Sandbox>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = authorized(&headers) {
        return respond(e);
    }
    let key = headers
        .get("x-idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let Some(key) = key else {
        return respond(bad_request(
            "Header X-Idempotency-Key can't be null",
            &[(4292, "Header-X-Idempotency-Key-can't-be-null")],
        ));
    };
    let params = match parse_create(payment_id, &headers, &body) {
        Ok(p) => p,
        Err(e) => return respond(e),
    };
    // The request has reached "Mercado Pago": from here on it runs to its end even if the
    // client hangs up (during the latency, or while the answer is held back).
    tokio::spawn(accept(sandbox, params, key))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn accept(sandbox: Sandbox, params: CreateParams, key: String) -> Response {
    if let Err(refusal) = sandbox.gate(PROVIDER, &params.payment_id, true).await {
        return refused(refusal);
    }
    {
        let mut state = lock(&sandbox.inner.mercadopago);
        match state.keys.get(&key).cloned() {
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
                return respond((status, body));
            }
            Some(Saved::InFlight { fingerprint }) if fingerprint == params.fingerprint => {
                return respond(error(
                    StatusCode::CONFLICT,
                    "conflict",
                    "A request with this X-Idempotency-Key is still being processed",
                    &[],
                ));
            }
            Some(_) => {
                return respond(error(
                    StatusCode::CONFLICT,
                    "idempotency_key_already_used",
                    format!(
                        "The X-Idempotency-Key {key} was already used with a different request"
                    ),
                    &[],
                ));
            }
        }
    }
    let (status, body) = execute(&sandbox, &params, &key);
    lock(&sandbox.inner.mercadopago).keys.insert(
        key,
        Saved::Done {
            fingerprint: params.fingerprint.clone(),
            status,
            body: body.clone(),
        },
    );
    if status == StatusCode::CREATED && sandbox.loses_answer(PROVIDER, &params.payment_id) {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    respond((status, body))
}

fn invalid_state() -> (StatusCode, String) {
    bad_request(
        "The action requested is not valid for the current payment state",
        &[(
            2063,
            "The action requested is not valid for the current payment state",
        )],
    )
}

fn execute(sandbox: &Sandbox, params: &CreateParams, key: &str) -> (StatusCode, String) {
    let payment = sandbox.payment(PROVIDER, &params.payment_id);
    let left = payment.settled - payment.refunded;
    let amount = params.amount.unwrap_or(left);
    if amount == 0 {
        // A full refund of a payment with nothing left: already refunded.
        return invalid_state();
    }
    let id = {
        let mut state = lock(&sandbox.inner.mercadopago);
        state.next_id += 1;
        1_000_000_000 + state.next_id
    };
    match sandbox.execute(
        PROVIDER,
        &params.payment_id,
        amount,
        Some(key),
        &id.to_string(),
    ) {
        Err(RefundBlocked::Declined | RefundBlocked::TooLarge { left: 0 }) => invalid_state(),
        Err(RefundBlocked::TooLarge { left }) => bad_request(
            format!(
                "Invalid refund amount: {} is more than the {} left to refund on payment {}",
                format_reais(amount),
                format_reais(left),
                params.payment_id
            ),
            &[(
                2063,
                "The action requested is not valid for the current payment state",
            )],
        ),
        Ok(()) => {
            let magic = Magic::of(&params.payment_id);
            let pending = matches!(magic, Magic::Pending | Magic::PendingFail);
            let object = RefundJson {
                id,
                payment_id: IdJson::of(&params.payment_id),
                amount: reais(amount),
                metadata: Map::new(),
                source: SourceJson {
                    id: "1234567890",
                    name: "refund-worker sandbox",
                    kind: "collector",
                },
                date_created: now_mp(),
                unique_sequence_number: None,
                refund_mode: "standard",
                adjustment_amount: 0,
                status: if pending { "in_process" } else { "approved" },
                reason: None,
                amount_refunded_to_payer: reais(amount),
                label: Vec::new(),
                partition_details: Vec::new(),
            };
            let body = serde_json::to_string(&object).unwrap_or_default();
            let mut state = lock(&sandbox.inner.mercadopago);
            state.refunds.insert(
                id,
                StoredRefund {
                    object,
                    created: Instant::now(),
                    fails: magic == Magic::PendingFail,
                },
            );
            state
                .by_payment
                .entry(params.payment_id.clone())
                .or_default()
                .push(id);
            (StatusCode::CREATED, body)
        }
    }
}

/// Now, as Mercado Pago writes dates: ISO 8601 with milliseconds and the local offset.
fn now_mp() -> String {
    let offset = UtcOffset::from_hms(-3, 0, 0).unwrap_or(UtcOffset::UTC);
    OffsetDateTime::now_utc()
        .to_offset(offset)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
        ))
        .unwrap_or_default()
}

/// A refund as a look-up sees it: an `in_process` one is approved (or, for `_pendingfail`,
/// rejected and taken back out of the ledger) at the first look-up a second or more after
/// its creation.
fn look_up(sandbox: &Sandbox, state: &mut State, id: u64) -> Option<RefundJson> {
    let stored = state.refunds.get_mut(&id)?;
    if stored.object.status == "in_process" && stored.created.elapsed() >= Duration::from_secs(1) {
        if stored.fails {
            stored.object.status = "rejected";
            stored.object.reason = Some(REJECTED_REASON.to_owned());
            stored.object.amount_refunded_to_payer = reais(0);
            sandbox.reverse(PROVIDER, &id.to_string());
        } else {
            stored.object.status = "approved";
        }
    }
    Some(stored.object.clone())
}

/// The payment's refunds, oldest first, as look-ups see them.
fn refunds_of(sandbox: &Sandbox, state: &mut State, payment_id: &str) -> Vec<RefundJson> {
    let ids = state
        .by_payment
        .get(payment_id)
        .cloned()
        .unwrap_or_default();
    ids.into_iter()
        .filter_map(|id| look_up(sandbox, state, id))
        .collect()
}

/// Auth and the read-side faults of a look-up.
async fn admit_read(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    payment_id: &str,
) -> Result<(), Response> {
    authorized(headers).map_err(respond)?;
    sandbox
        .gate(PROVIDER, payment_id, false)
        .await
        .map_err(refused)
}

async fn list(
    AxumState(sandbox): AxumState<Sandbox>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = admit_read(&sandbox, &headers, &payment_id).await {
        return response;
    }
    let refunds = refunds_of(&sandbox, &mut lock(&sandbox.inner.mercadopago), &payment_id);
    ok_json(&refunds)
}

async fn retrieve(
    AxumState(sandbox): AxumState<Sandbox>,
    Path((payment_id, refund_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = admit_read(&sandbox, &headers, &payment_id).await {
        return response;
    }
    let found = refund_id.parse::<u64>().ok().and_then(|id| {
        let mut state = lock(&sandbox.inner.mercadopago);
        let belongs = state
            .by_payment
            .get(&payment_id)
            .is_some_and(|ids| ids.contains(&id));
        belongs.then(|| look_up(&sandbox, &mut state, id)).flatten()
    });
    match found {
        Some(refund) => ok_json(&refund),
        None => respond(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Refund {refund_id} not found for payment {payment_id}"),
            &[],
        )),
    }
}

async fn payment(
    AxumState(sandbox): AxumState<Sandbox>,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = admit_read(&sandbox, &headers, &payment_id).await {
        return response;
    }
    // The refunds first: a look-up may take a rejected one back out of the payment.
    let refunds = refunds_of(&sandbox, &mut lock(&sandbox.inner.mercadopago), &payment_id);
    let payment = sandbox.payment(PROVIDER, &payment_id);
    let (status, status_detail) = if payment.refunded >= payment.settled {
        ("refunded", "refunded")
    } else if payment.refunded > 0 {
        ("approved", "partially_refunded")
    } else {
        ("approved", "accredited")
    };
    ok_json(&PaymentJson {
        id: IdJson::of(&payment_id),
        status,
        status_detail,
        currency_id: payment.currency,
        transaction_amount: reais(payment.settled),
        transaction_amount_refunded: reais(payment.refunded),
        refunds,
    })
}
