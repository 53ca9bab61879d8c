//! Stripe's wire types and their conversion to and from ours (`POST /v1/refunds`).
//!
//! Pure: builds the form body, reads refund objects, classifies error responses.

use std::collections::HashMap;

use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::{
    http,
    job::Reason,
    providers::{ProviderError, ProviderRefund, RefundRequest, RefundStatus},
};

/// Which parameter names the original payment: charges (`ch_`, `py_`) or PaymentIntents.
pub(crate) fn payment_param(payment_id: &str) -> &'static str {
    if payment_id.starts_with("ch_") || payment_id.starts_with("py_") {
        "charge"
    } else {
        "payment_intent"
    }
}

/// Stripe's own refund reasons; ours without an equivalent travel only in metadata.
pub(crate) fn reason(reason: Reason) -> Option<&'static str> {
    match reason {
        Reason::Duplicate => Some("duplicate"),
        Reason::Fraud => Some("fraudulent"),
        Reason::CustomerRequest => Some("requested_by_customer"),
        Reason::BankingError | Reason::PixWithdrawalOrChangeError => None,
    }
}

/// The `application/x-www-form-urlencoded` body of a create-refund call.
///
/// Stripe keeps the parameters a key was first used with and refuses the same key with other
/// parameters (`idempotency_error`): the form is a function of the refund alone, never of the
/// delivery that carries it (no job id, which a re-publish changes).
pub(crate) fn form(request: &RefundRequest) -> Vec<(&'static str, String)> {
    let mut form = vec![
        (
            payment_param(request.payment_id.as_str()),
            request.payment_id.to_string(),
        ),
        ("amount", request.amount.minor().to_string()),
    ];
    if let Some(reason) = reason(request.reason) {
        form.push(("reason", reason.to_owned()));
    }
    form.push(("metadata[idempotency_key]", request.key.to_string()));
    form.push((
        "metadata[refund_reason]",
        request.reason.as_str().to_owned(),
    ));
    if let Some(description) = &request.description {
        form.push(("metadata[description]", description.clone()));
    }
    form
}

/// A Stripe refund object (the fields we read).
#[derive(Debug, Deserialize)]
pub(crate) struct RefundObject {
    pub id: String,
    pub amount: u64,
    pub status: String,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

impl RefundObject {
    /// Our view of it.
    pub(crate) fn into_refund(self) -> ProviderRefund {
        let status = match self.status.as_str() {
            "succeeded" => RefundStatus::Succeeded,
            "pending" | "requires_action" => RefundStatus::Pending,
            other => RefundStatus::Failed {
                reason: format!(
                    "stripe refund {other}: {}",
                    self.failure_reason
                        .as_deref()
                        .unwrap_or("no failure_reason given")
                ),
            },
        };
        ProviderRefund {
            refund_id: self.id,
            status,
            amount: self.amount,
        }
    }
}

/// A page of `GET /v1/refunds`.
#[derive(Debug, Deserialize)]
pub(crate) struct RefundList {
    pub data: Vec<RefundObject>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Debug, Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// Classifies a non-2xx answer. Rate limiting (429) happens before Stripe's idempotency
/// layer, so nothing ran: transient. A 409 means a request with this key is executing right
/// now, and any 5xx is indeterminate (Stripe may have executed the refund), whatever
/// `Stripe-Should-Retry` says: both are unknown outcomes, reconciled before a resend. Other
/// 4xx are final unless Stripe says `Stripe-Should-Retry: true`.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = parsed
        .as_ref()
        .and_then(|e| e.code.clone().or_else(|| e.kind.clone()));
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| http::snippet(body));
    let why = format!(
        "stripe {status} {}: {message}",
        code.as_deref().unwrap_or("error")
    );
    let retry_after = http::retry_after(headers);
    let should_retry = headers
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok());
    match status {
        429 => ProviderError::Transient { why, retry_after },
        409 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the refund may have been executed)"))
        }
        _ if should_retry == Some("true") => ProviderError::Transient { why, retry_after },
        _ => ProviderError::Permanent { code, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Amount, Currency, IdempotencyKey, Token};

    fn request(payment: &str, reason: Reason) -> RefundRequest {
        RefundRequest {
            key: IdempotencyKey::parse("pi_1:2026-11-24").unwrap(),
            payment_id: Token::parse(payment).unwrap(),
            amount: Amount::new(18600).unwrap(),
            currency: Currency::BRL,
            reason,
            description: None,
            job_id: "job-1".into(),
        }
    }

    #[test]
    fn one_refund_has_one_form_whatever_delivery_carries_it() {
        let first = request("pi_1", Reason::Fraud);
        let republished = RefundRequest {
            job_id: "a-new-message-id".into(),
            ..first.clone()
        };
        assert_eq!(form(&first), form(&republished));
    }

    #[test]
    fn form_uses_integer_minor_units_and_stripe_reasons() {
        let form = form(&request("pi_1", Reason::Fraud));
        assert_eq!(form[0], ("payment_intent", "pi_1".to_owned()));
        assert_eq!(form[1], ("amount", "18600".to_owned()));
        assert!(form.contains(&("reason", "fraudulent".to_owned())));
        assert!(form.contains(&("metadata[idempotency_key]", "pi_1:2026-11-24".to_owned())));

        let form = super::form(&request("ch_9", Reason::BankingError));
        assert_eq!(form[0].0, "charge");
        assert!(!form.iter().any(|(k, _)| *k == "reason"));
        assert!(form.contains(&("metadata[refund_reason]", "BANKING_ERROR".to_owned())));
    }

    #[test]
    fn statuses_map_into_ours() {
        let obj = |status: &str| RefundObject {
            id: "re_1".into(),
            amount: 5,
            status: status.into(),
            failure_reason: Some("lost_or_stolen_card".into()),
            metadata: HashMap::new(),
        };
        assert_eq!(
            obj("succeeded").into_refund().status,
            RefundStatus::Succeeded
        );
        assert_eq!(obj("pending").into_refund().status, RefundStatus::Pending);
        assert_eq!(
            obj("requires_action").into_refund().status,
            RefundStatus::Pending
        );
        let RefundStatus::Failed { reason } = obj("failed").into_refund().status else {
            panic!("failed maps to Failed");
        };
        assert!(reason.contains("lost_or_stolen_card"));
    }

    #[test]
    fn errors_are_classified_safely_for_money() {
        let none = HeaderMap::new();
        let body = br#"{"error":{"type":"invalid_request_error","code":"charge_already_refunded","message":"Charge ch_1 has already been refunded."}}"#;
        let err = classify(400, &none, body);
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "charge_already_refunded"),
            "{err:?}"
        );
        assert!(err.to_string().contains("already been refunded"));

        assert!(matches!(
            classify(409, &none, b"{}"),
            ProviderError::Unknown { .. }
        ));
        assert!(matches!(
            classify(503, &none, b""),
            ProviderError::Unknown { .. }
        ));
        assert!(matches!(
            classify(500, &none, b""),
            ProviderError::Unknown { .. }
        ));
        assert!(matches!(
            classify(401, &none, b""),
            ProviderError::Permanent { .. }
        ));

        let mut limited = HeaderMap::new();
        limited.insert("retry-after", "3".parse().unwrap());
        let err = classify(429, &limited, b"");
        assert_eq!(
            err,
            ProviderError::Transient {
                why: err.to_string(),
                retry_after: Some(std::time::Duration::from_secs(3))
            }
        );

        let mut never = HeaderMap::new();
        never.insert("stripe-should-retry", "false".parse().unwrap());
        assert!(
            matches!(classify(503, &never, b""), ProviderError::Unknown { .. }),
            "a 5xx stays indeterminate even when Stripe says not to retry"
        );
        let mut retry = HeaderMap::new();
        retry.insert("stripe-should-retry", "true".parse().unwrap());
        assert!(matches!(
            classify(400, &retry, b""),
            ProviderError::Transient { .. }
        ));
    }
}
