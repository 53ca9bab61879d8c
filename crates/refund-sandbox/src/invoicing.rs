//! The invoicing service, as the sandbox fakes it: `POST /invoicing/v1/credit-notes` with a
//! Bearer key and an `Idempotency-Key`, issuing NF-e-style credit notes (sequential numbers,
//! 44-digit access keys with a valid check digit), listed at `GET /_sandbox/credit-notes`.
//!
//! The same key with the same request answers `200` with the note already issued (header
//! `Idempotent-Replayed: true`), never a second note; the same key with another request is a
//! `422 idempotency_key_reused`. A note that started issuing is issued even if the client
//! hangs up; with `--timeout-rate` its answer is then held back, as a lost answer would be.
//! The twin accepts only the sandbox account's key (`account::INVOICING_API_KEY`).

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State as Shared,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Refusal, Sandbox, fixtures, lock};
use crate::{account, money::parse_reais, nfe::is_access_key, provider::Provider};

/// A credit note the twin issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCreditNote {
    /// Its number (sequential).
    pub number: String,
    /// Its 44-digit access key.
    pub access_key: String,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
    /// `authorized`.
    pub status: String,
    /// The key it was issued under.
    pub idempotency_key: String,
    /// The order refunded.
    pub order_id: String,
    /// NF-e purpose (4 devolução, 5 nota de crédito).
    pub fin_nfe: u8,
    /// The access key of the NF-e it corrects, if given.
    pub ref_nfe: Option<String>,
    /// The number of the NF-e it corrects, if given.
    pub ref_number: Option<String>,
    /// Minor units.
    pub amount: u64,
    /// ISO 4217.
    pub currency: String,
    /// The refund's rail.
    pub provider: String,
    /// The refund's id.
    pub refund_id: String,
    /// The reason.
    pub reason: String,
    /// The customer's name.
    pub customer_name: String,
}

/// The fake's memory.
#[derive(Debug)]
pub(crate) struct State {
    /// The sandbox account's API key.
    api_key: String,
    /// Notes in issue order.
    notes: Vec<IssuedCreditNote>,
    /// Idempotency key → index in `notes`.
    by_key: HashMap<String, usize>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            api_key: account::INVOICING_API_KEY.to_owned(),
            notes: Vec::new(),
            by_key: HashMap::new(),
        }
    }
}

impl State {
    /// Every note issued.
    pub(super) fn notes(&self) -> Vec<IssuedCreditNote> {
        self.notes.clone()
    }
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new().route("/invoicing/v1/credit-notes", post(issue))
}

/// `{"error":{"code","message"}}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (status, Json(body)).into_response()
}

/// The body of an issue call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    order_id: String,
    #[serde(rename = "finNFe")]
    fin_nfe: u8,
    #[serde(rename = "NFref", default)]
    nf_ref: Option<NfRef>,
    amount: String,
    currency: String,
    refund: RefundRef,
    reason: String,
    customer: CustomerRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NfRef {
    #[serde(rename = "refNFe", default)]
    ref_nfe: Option<String>,
    #[serde(rename = "nNF", default)]
    number: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRef {
    provider: String,
    refund_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerRef {
    name: String,
}

/// A validated request: what a note is issued from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Issue {
    key: String,
    order_id: String,
    fin_nfe: u8,
    ref_nfe: Option<String>,
    ref_number: Option<String>,
    amount: u64,
    currency: String,
    provider: String,
    refund_id: String,
    reason: String,
    customer_name: String,
}

/// The refund reasons a credit note may cite: the pacs.004 return reasons (MD06 customer
/// request, FR01 fraud, BE08 banking error, SL02 Pix Saque/Troco error) and duplicate charges.
const REASONS: [&str; 5] = [
    "CUSTOMER_REQUEST",
    "FRAUD",
    "BANKING_ERROR",
    "PIX_WITHDRAWAL_OR_CHANGE_ERROR",
    "DUPLICATE",
];

type Refused = (StatusCode, &'static str, String);

/// Checks auth, the key and the body, as a fiscal service would.
fn validate(api_key: &str, headers: &HeaderMap, body: &[u8]) -> Result<Issue, Refused> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let bearer = header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    if bearer.is_empty() || bearer != api_key {
        return Err((
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key (Authorization: Bearer <key>)".into(),
        ));
    }
    if !header("content-type").starts_with("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json".into(),
        ));
    }
    let key = header("idempotency-key");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "an Idempotency-Key header (1-255 visible ASCII characters) is required".into(),
        ));
    }
    let invalid = |message: String| (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message);
    let parsed: IssueBody =
        serde_json::from_slice(body).map_err(|e| invalid(format!("unreadable body: {e}")))?;
    if parsed.order_id.trim().is_empty() {
        return Err(invalid("order_id is required".into()));
    }
    if !matches!(parsed.fin_nfe, 4 | 5) {
        return Err(invalid(format!(
            "finNFe must be 4 (devolução) or 5 (nota de crédito), got {}",
            parsed.fin_nfe
        )));
    }
    let (ref_nfe, ref_number) = match parsed.nf_ref {
        Some(r) => (r.ref_nfe, r.number),
        None => (None, None),
    };
    if let Some(key) = ref_nfe.as_deref().filter(|k| !is_access_key(k)) {
        return Err(invalid(format!(
            "NFref.refNFe {key:?} is not an NF-e access key (44 digits, valid check digit)"
        )));
    }
    if parsed.fin_nfe == 5 && ref_nfe.is_none() {
        return Err(invalid(
            "a nota de crédito (finNFe 5) must reference the original NF-e (NFref.refNFe)".into(),
        ));
    }
    if parsed.currency != "BRL" {
        return Err(invalid(format!(
            "credit notes are issued in BRL, got {:?}",
            parsed.currency
        )));
    }
    let amount = parse_reais(&parsed.amount)
        .filter(|a| *a >= 1)
        .ok_or_else(|| {
            invalid(format!(
                "amount must be a positive decimal string with at most 2 decimals, like \"186.00\"; got {:?}",
                parsed.amount
            ))
        })?;
    Provider::parse(&parsed.refund.provider)
        .map_err(|rule| invalid(format!("refund.provider {rule}")))?;
    if parsed.refund.refund_id.is_empty() {
        return Err(invalid("refund.refund_id is required".into()));
    }
    if !REASONS.contains(&parsed.reason.as_str()) {
        return Err(invalid(format!(
            "reason must be one of {}, got {:?}",
            REASONS.join(", "),
            parsed.reason.chars().take(40).collect::<String>()
        )));
    }
    if parsed.customer.name.trim().is_empty() {
        return Err(invalid("customer.name is required (NF-e dest)".into()));
    }
    Ok(Issue {
        key: key.to_owned(),
        order_id: parsed.order_id,
        fin_nfe: parsed.fin_nfe,
        ref_nfe,
        ref_number,
        amount,
        currency: parsed.currency,
        provider: parsed.refund.provider,
        refund_id: parsed.refund.refund_id,
        reason: parsed.reason,
        customer_name: parsed.customer.name,
    })
}

/// Whether `note` was issued for the same request as `issue`.
fn same_request(note: &IssuedCreditNote, issue: &Issue) -> bool {
    note.order_id == issue.order_id
        && note.fin_nfe == issue.fin_nfe
        && note.ref_nfe == issue.ref_nfe
        && note.amount == issue.amount
        && note.currency == issue.currency
        && note.provider == issue.provider
        && note.refund_id == issue.refund_id
}

fn note_body(note: &IssuedCreditNote) -> Value {
    json!({
        "number": note.number,
        "access_key": note.access_key,
        "issued_at": note.issued_at,
        "status": note.status,
    })
}

async fn issue(Shared(sandbox): Shared<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let api_key = lock(&sandbox.inner.invoicing).api_key.clone();
    let issue = match validate(&api_key, &headers, &body) {
        Ok(issue) => issue,
        Err((status, code, message)) => return error(status, code, message),
    };
    // From here the request has reached the service: it runs to its end even if the
    // client hangs up.
    tokio::spawn(accept(sandbox, issue))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn accept(sandbox: Sandbox, issue: Issue) -> Response {
    if let Err(refusal) = sandbox.gate_service().await {
        return match refusal {
            Refusal::RateLimited(wait) => {
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests",
                );
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
                response
            }
            Refusal::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the issuer is unavailable; nothing was issued (sandbox fault)",
            ),
        };
    }
    let (status, note, replayed) = {
        let mut state = lock(&sandbox.inner.invoicing);
        if let Some(&index) = state.by_key.get(&issue.key) {
            let note = state.notes[index].clone();
            if !same_request(&note, &issue) {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    format!(
                        "Idempotency-Key {} was used for credit note {} with another request",
                        issue.key, note.number
                    ),
                );
            }
            (StatusCode::OK, note, true)
        } else {
            let number = state.notes.len() as u64 + 1;
            let now = time::OffsetDateTime::now_utc();
            let yymm = format!("{:02}{:02}", now.year() % 100, u8::from(now.month()));
            let note = IssuedCreditNote {
                number: number.to_string(),
                access_key: fixtures::access_key(&yymm, 2, number),
                issued_at: crate::clock::now_rfc3339(),
                status: "authorized".into(),
                idempotency_key: issue.key.clone(),
                order_id: issue.order_id,
                fin_nfe: issue.fin_nfe,
                ref_nfe: issue.ref_nfe,
                ref_number: issue.ref_number,
                amount: issue.amount,
                currency: issue.currency,
                provider: issue.provider,
                refund_id: issue.refund_id,
                reason: issue.reason,
                customer_name: issue.customer_name,
            };
            let index = state.notes.len();
            state.by_key.insert(issue.key, index);
            state.notes.push(note.clone());
            (StatusCode::CREATED, note, false)
        }
    };
    if !replayed && sandbox.loses_service_answer() {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    let mut response = (status, Json(note_body(&note))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "35261111222333000181550010000045121000045122";

    fn headers(auth: &str, key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(auth).unwrap());
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        headers
    }

    fn body(amount: &str, fin: u8, nfref: &str) -> Vec<u8> {
        format!(
            r#"{{"order_id":"8421","finNFe":{fin},{nfref}"amount":"{amount}","currency":"BRL","refund":{{"provider":"pix","refund_id":"D1"}},"reason":"CUSTOMER_REQUEST","customer":{{"name":"Ana"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn requests_are_validated_like_a_fiscal_service() {
        let ok = headers("Bearer k", "order:8421");
        let nfref = format!(r#""NFref":{{"refNFe":"{KEY}","nNF":"4512"}},"#);
        let issue = validate("k", &ok, &body("186.00", 4, &nfref)).unwrap();
        assert_eq!(issue.amount, 18600);
        assert_eq!(issue.ref_nfe.as_deref(), Some(KEY));
        assert!(
            validate("k", &ok, &body("186.00", 4, "")).is_ok(),
            "a devolução without a reference is accepted"
        );
        let status = |auth: &str, key: &str, body: Vec<u8>| {
            validate("k", &headers(auth, key), &body)
                .map(|_| ())
                .unwrap_err()
                .0
        };
        assert_eq!(
            status("Bearer x", "k1", body("1.00", 4, "")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status("k", "k1", body("1.00", 4, "")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status("Bearer k", "", body("1.00", 4, "")),
            StatusCode::BAD_REQUEST
        );
        for bad in [
            body("0.00", 4, ""),
            body("1.001", 4, ""),
            body("186.00", 1, ""),
            body("186.00", 5, ""),
            body("186.00", 4, r#""NFref":{"refNFe":"123"},"#),
            b"{}".to_vec(),
        ] {
            assert_eq!(
                status("Bearer k", "k1", bad.clone()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        let mut no_type = ok.clone();
        no_type.remove("content-type");
        assert_eq!(
            validate("k", &no_type, &body("1.00", 4, "")).unwrap_err().0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
