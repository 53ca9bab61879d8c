//! Rinne's refund API, as the sandbox fakes it:
//! `POST /rinne/core/v1/merchants/{merchant}/transactions/{tx}/refund` (JSON, `x-api-key`,
//! integer centavos) and `GET /rinne/core/v1/merchants/{merchant}/transactions/{tx}`.
//!
//! Like Rinne: no refund idempotency (a second POST is a second refund), answers are the
//! transaction object, only `APPROVED` and `PARTIALLY_REFUNDED` transactions are refundable,
//! and a refund may stay `PENDING_REFUND` while Rinne retries it (and, for `_pendingfail`,
//! end without completing, as a cancelled one does at Rinne). Transactions appear on first
//! sight, `APPROVED` for the sandbox's generous settled amount (or a seeded one), owned by the
//! merchant that first named them. Errors use Rinne's body
//! `{"error":{code,message,status,path,timestamp,requestId,details}}`; a rate-limited call gets
//! a bodiless 429 with the `x-ratelimit-*` headers, an outage a 502 `INTEGRATION_ERROR`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State as Shared},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{Magic, Payment, RefundBlocked, Refusal, Sandbox, lock};
use crate::{clock::now_rfc3339, provider::Provider};

const REASONS: [&str; 4] = [
    "BANKING_ERROR",
    "FRAUD",
    "CUSTOMER_REQUEST",
    "PIX_WITHDRAWAL_OR_CHANGE_ERROR",
];

/// How long a `_pending` (or `_pendingfail`) refund stays `PENDING_REFUND` before a look-up
/// settles (or fails) it.
const PENDING_FOR: Duration = Duration::from_secs(1);

/// The fake's memory: what Rinne knows beyond the shared payment ledger.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Transactions by id.
    transactions: HashMap<String, Transaction>,
}

/// A transaction's Rinne-only facts; its amounts live in the sandbox's shared payments.
#[derive(Debug)]
struct Transaction {
    /// The merchant that first named it; others get 404, as another merchant's would.
    merchant: String,
    created_at: String,
    updated_at: String,
    latest_refund_at: Option<String>,
    /// Refunds accepted as `PENDING_REFUND` and not completed yet. They are already in the
    /// ledger and count against the refundable amount (Rinne has committed to them), but not
    /// in `refunded_amount`, which sums completed refunds only.
    pending: Vec<PendingRefund>,
}

#[derive(Debug)]
struct PendingRefund {
    amount: u64,
    accepted: Instant,
    /// Its name in the ledger, to take a failed one back out.
    refund_id: String,
    /// `_pendingfail`: it ends without completing instead of settling.
    fails: bool,
}

impl Transaction {
    fn new(merchant: &str) -> Self {
        let now = now_rfc3339();
        Self {
            merchant: merchant.to_owned(),
            created_at: now.clone(),
            updated_at: now,
            latest_refund_at: None,
            pending: Vec::new(),
        }
    }

    /// Ends the pending refunds that have waited long enough (at a look-up). Most complete;
    /// a `_pendingfail` one fails, as when Rinne's pending refund is cancelled: it leaves the
    /// ledger, `refunded_amount` does not grow, and the transaction falls back to `APPROVED`
    /// or `PARTIALLY_REFUNDED` (its status follows from the amounts).
    fn settle_due(&mut self, sandbox: &Sandbox) {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.accepted.elapsed() >= PENDING_FOR);
        self.pending = waiting;
        if due.is_empty() {
            return;
        }
        let now = now_rfc3339();
        for refund in &due {
            if refund.fails {
                sandbox.reverse(Provider::Rinne, &refund.refund_id);
            } else {
                self.latest_refund_at = Some(now.clone());
            }
        }
        self.updated_at = now;
    }

    fn refunded(&self, payment: &Payment) -> u64 {
        // Saturating: a test may re-seed the payment under a pending refund.
        payment
            .refunded
            .saturating_sub(self.pending.iter().map(|p| p.amount).sum::<u64>())
    }

    fn status(&self, payment: &Payment) -> &'static str {
        let refunded = self.refunded(payment);
        if !self.pending.is_empty() {
            "PENDING_REFUND"
        } else if refunded == 0 {
            "APPROVED"
        } else if refunded >= payment.settled {
            "REFUNDED"
        } else {
            "PARTIALLY_REFUNDED"
        }
    }

    /// The transaction object, as Rinne's API shows it.
    fn object(&self, id: &str, payment: &Payment) -> Value {
        json!({
            "id": id,
            "provider": "CELCOIN",
            "affiliation_id": "a3dbd0c2-9f79-4f86-8caa-47779b3f2793",
            "provider_transaction_id": format!("prov_{id}"),
            "request_id": format!("request-{id}"),
            "mcc": "5411",
            "amount": payment.settled,
            "currency": payment.currency,
            "approved_amount": payment.settled,
            "refunded_amount": self.refunded(payment),
            "status": self.status(payment),
            "status_reason": "PROVIDER",
            "capture_method": "ECOMMERCE",
            "installments": 1,
            "payment_method": "PIX",
            "company_id": "5f0c1e7a-0000-4000-8000-000000000001",
            "metadata": {},
            "created_at": self.created_at,
            "approved_at": self.created_at,
            "updated_at": self.updated_at,
            "latest_refund_at": self.latest_refund_at,
        })
    }
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(
            "/rinne/core/v1/merchants/{merchant}/transactions/{tx}",
            get(retrieve),
        )
        .route(
            "/rinne/core/v1/merchants/{merchant}/transactions/{tx}/refund",
            post(create),
        )
}

/// Rinne's error body. `path` is the API path as Rinne names it (without the sandbox's
/// `/rinne/core` prefix).
fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    path: &str,
    details: Option<Value>,
) -> Response {
    let mut error = json!({
        "code": code,
        "message": message,
        "status": status.as_u16(),
        "path": path,
        "timestamp": now_rfc3339(),
        "requestId": format!("req_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
    });
    if let Some(details) = details {
        error["details"] = details;
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn validation(path: &str, issues: Vec<Value>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        "Validation error",
        path,
        Some(json!({ "issues": issues })),
    )
}

fn issue(field: &str, kind: &str, message: impl Into<String>) -> Value {
    json!({ "field": field, "type": kind, "message": message.into() })
}

/// Rinne's 401 for a call without an API key; `None` when the call may proceed.
fn unauthorized(headers: &HeaderMap, path: &str) -> Option<Response> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    key.trim().is_empty().then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_ERROR",
            "Invalid or missing API key",
            path,
            Some(json!({ "reason": "API key not found" })),
        )
    })
}

fn refused(sandbox: &Sandbox, refusal: Refusal, path: &str) -> Response {
    match refusal {
        Refusal::RateLimited(wait) => {
            let limit = sandbox.inner.faults.rate_limit.unwrap_or(50);
            let reset = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
            let headers = response.headers_mut();
            headers.insert("x-ratelimited", HeaderValue::from_static("true"));
            if let Ok(value) = HeaderValue::from_str(&format!("{limit}, {limit};w=1")) {
                headers.insert("x-ratelimit-limit", value);
            }
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
            response
        }
        Refusal::Unavailable => error(
            StatusCode::BAD_GATEWAY,
            "INTEGRATION_ERROR",
            "Provider integration failed (sandbox fault; nothing was executed)",
            path,
            None,
        ),
    }
}

/// The validated body of a refund call.
struct CreateParams {
    /// `None`: the full approved amount.
    amount: Option<u64>,
}

fn parse_create(headers: &HeaderMap, body: &[u8]) -> Result<CreateParams, Vec<Value>> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(vec![issue(
            "body",
            "INVALID_TYPE",
            format!("Expected a JSON body (Content-Type: application/json), got {content_type:?}"),
        )]);
    }
    let value: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            vec![issue(
                "body",
                "INVALID_JSON",
                format!("Malformed JSON: {e}"),
            )]
        })?
    };
    let Some(object) = value.as_object() else {
        return Err(vec![issue("body", "INVALID_TYPE", "Expected object")]);
    };
    let mut issues = Vec::new();
    let amount = match object.get("refund_amount") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            Some(_) => {
                issues.push(issue(
                    "refund_amount",
                    "TOO_SMALL",
                    "Number must be greater than or equal to 1",
                ));
                None
            }
            None if v.is_number() => {
                issues.push(issue(
                    "refund_amount",
                    "INVALID_TYPE",
                    format!("Expected integer (cents), received {v}"),
                ));
                None
            }
            None => {
                issues.push(issue(
                    "refund_amount",
                    "INVALID_TYPE",
                    "Expected number, received string",
                ));
                None
            }
        },
    };
    match object.get("refund_reason") {
        None => {}
        Some(Value::String(r)) if REASONS.contains(&r.as_str()) => {}
        Some(other) => issues.push(issue(
            "refund_reason",
            "INVALID_ENUM_VALUE",
            format!(
                "Invalid enum value. Expected {}, received {other}",
                REASONS.join(" | ")
            ),
        )),
    }
    if let Some(d) = object.get("description")
        && !d.is_string()
    {
        issues.push(issue("description", "INVALID_TYPE", "Expected string"));
    }
    if issues.is_empty() {
        Ok(CreateParams { amount })
    } else {
        Err(issues)
    }
}

async fn create(
    Shared(sandbox): Shared<Sandbox>,
    Path((merchant, tx)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/merchants/{merchant}/transactions/{tx}/refund");
    if let Some(response) = unauthorized(&headers, &path) {
        return response;
    }
    let params = match parse_create(&headers, &body) {
        Ok(params) => params,
        Err(issues) => return validation(&path, issues),
    };
    // The request has reached "Rinne": from here on it runs to its end even if the client
    // hangs up (during the latency, or while the answer is held back).
    tokio::spawn(accept(sandbox, merchant, tx, params, path))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn accept(
    sandbox: Sandbox,
    merchant: String,
    tx: String,
    params: CreateParams,
    path: String,
) -> Response {
    if let Err(refusal) = sandbox.gate(Provider::Rinne, &tx, true).await {
        return refused(&sandbox, refusal, &path);
    }
    let answer = execute(&sandbox, &merchant, &tx, &params, &path);
    if answer.status() == StatusCode::OK && sandbox.loses_answer(Provider::Rinne, &tx) {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    answer
}

/// Checks and executes one refund. Holds the Rinne state across the ledger write, so two
/// refunds of one transaction see each other (a pending one blocks the next).
fn execute(
    sandbox: &Sandbox,
    merchant: &str,
    tx: &str,
    params: &CreateParams,
    path: &str,
) -> Response {
    let mut state = lock(&sandbox.inner.rinne);
    let Some(transaction) = transaction(&mut state, merchant, tx) else {
        return not_found(tx, path);
    };
    transaction.settle_due(sandbox);
    let payment = sandbox.payment(Provider::Rinne, tx);
    let status = transaction.status(&payment);
    if !matches!(status, "APPROVED" | "PARTIALLY_REFUNDED") {
        return error(
            StatusCode::CONFLICT,
            "CONFLICT_ERROR",
            &format!(
                "Only APPROVED or PARTIALLY_REFUNDED transactions can be refunded (transaction {tx} is {status})"
            ),
            path,
            None,
        );
    }
    let amount = params.amount.unwrap_or(payment.settled);
    let refund_id = format!("ref_{}", uuid::Uuid::new_v4().simple());
    match sandbox.execute(Provider::Rinne, tx, amount, None, &refund_id) {
        Err(RefundBlocked::Declined) => error(
            StatusCode::CONFLICT,
            "CONFLICT_ERROR",
            &format!(
                "Refund not allowed: the acquirer refused to refund transaction {tx} (disputed)"
            ),
            path,
            None,
        ),
        Err(RefundBlocked::TooLarge { left }) => validation(
            path,
            vec![issue(
                "refund_amount",
                "TOO_BIG",
                format!(
                    "Refund amount cannot exceed the approved amount minus already refunded amount ({left} cents left)"
                ),
            )],
        ),
        Ok(()) => {
            let now = now_rfc3339();
            let magic = Magic::of(tx);
            if matches!(magic, Magic::Pending | Magic::PendingFail) {
                transaction.pending.push(PendingRefund {
                    amount,
                    accepted: Instant::now(),
                    refund_id,
                    fails: magic == Magic::PendingFail,
                });
            } else {
                transaction.latest_refund_at = Some(now.clone());
            }
            transaction.updated_at = now;
            let payment = sandbox.payment(Provider::Rinne, tx);
            (StatusCode::OK, axum::Json(transaction.object(tx, &payment))).into_response()
        }
    }
}

/// The transaction, created on first sight for `merchant`; `None` when another merchant owns
/// it.
fn transaction<'a>(state: &'a mut State, merchant: &str, tx: &str) -> Option<&'a mut Transaction> {
    let transaction = state
        .transactions
        .entry(tx.to_owned())
        .or_insert_with(|| Transaction::new(merchant));
    (transaction.merchant == merchant).then_some(transaction)
}

fn not_found(tx: &str, path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &format!("Transaction {tx} not found"),
        path,
        None,
    )
}

async fn retrieve(
    Shared(sandbox): Shared<Sandbox>,
    Path((merchant, tx)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/merchants/{merchant}/transactions/{tx}");
    if let Some(response) = unauthorized(&headers, &path) {
        return response;
    }
    if let Err(refusal) = sandbox.gate(Provider::Rinne, &tx, false).await {
        return refused(&sandbox, refusal, &path);
    }
    let mut state = lock(&sandbox.inner.rinne);
    let Some(transaction) = transaction(&mut state, &merchant, &tx) else {
        return not_found(&tx, &path);
    };
    transaction.settle_due(&sandbox);
    let payment = sandbox.payment(Provider::Rinne, &tx);
    (
        StatusCode::OK,
        axum::Json(transaction.object(&tx, &payment)),
    )
        .into_response()
}
