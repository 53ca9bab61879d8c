//! Asaas's wire types and their conversion to and from ours (`POST /v3/payments/{id}/refund`,
//! `GET /v3/payments/{id}`).
//!
//! Pure: builds the JSON body, reads payment objects and the refunds they carry, classifies
//! error responses. Asaas has no idempotency key and its refunds have no id, so every refund
//! we send carries a marker, ` [ref:<our key>]`, at the end of its `description`; this file
//! is the one place that writes and recognises it.

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    http,
    job::{self, IdempotencyKey},
    providers::{ProviderError, ProviderRefund, RefundRequest, RefundStatus},
};

/// The longest `description` we send. Asaas documents no limit for a refund's description;
/// 500 characters is its limit on a payment's, and what the sandbox twin enforces.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 500;

/// Opens the marker that names our idempotency key in a refund's description.
const MARKER_OPEN: &str = "[ref:";

/// The marker for `key`: ` [ref:<key>]`.
fn marker(key: &IdempotencyKey) -> String {
    format!(" {MARKER_OPEN}{key}]")
}

/// The key a description's marker names, if it ends with one. Only the end counts: that is
/// where we put it, so text before it (even another marker) cannot pass for ours.
pub(crate) fn marked_key(description: &str) -> Option<&str> {
    let (_, rest) = description
        .trim_end()
        .strip_suffix(']')?
        .rsplit_once(MARKER_OPEN)?;
    IdempotencyKey::parse(rest).ok().map(|_| rest)
}

/// The description we send: the job's own (or its reason), then our marker. The free text
/// is shortened to fit [`MAX_DESCRIPTION_CHARS`]; the marker is never cut. A `[ref:` typed in
/// the free text is defused so nothing but our marker looks like one.
pub(crate) fn description(request: &RefundRequest) -> String {
    let marker = marker(&request.key);
    let text = request
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(request.reason.as_str())
        .replace(MARKER_OPEN, "(ref:");
    // Keys are at most 255 ASCII characters, so the budget is at least 238.
    let budget = MAX_DESCRIPTION_CHARS - marker.chars().count();
    let text = if text.chars().count() > budget {
        // `truncate` appends one character ("…").
        job::truncate(&text, budget - 1)
    } else {
        text
    };
    format!("{text}{marker}")
}

/// The synthetic id we give a refund: Asaas refunds have none, but a payment carries at most
/// one refund marked with a given key, so `<payment_id>:<key>` names it for good.
pub(crate) fn refund_id(request: &RefundRequest) -> String {
    format!("{}:{}", request.payment_id, request.key)
}

/// The JSON body of a refund call: `value` is a JSON *number* in reais, written from the
/// integer amount (never through a float).
#[derive(Debug, Serialize)]
pub(crate) struct RefundBody {
    pub value: Box<RawValue>,
    pub description: String,
}

/// The body for `request`.
pub(crate) fn body(request: &RefundRequest) -> RefundBody {
    let value = RawValue::from_string(request.amount.to_decimal(2))
        .expect("digits, a dot and two digits are a JSON number");
    RefundBody {
        value,
        description: description(request),
    }
}

/// Reads a JSON number in reais (`10.5`, `10.50`, `10`) into centavos, exactly.
pub(crate) fn reais_to_minor(number: &RawValue) -> Option<u64> {
    job::parse_decimal(number.get().trim(), 2)
}

/// An Asaas payment object (the fields we read). The refund call answers with it too.
#[derive(Debug, Deserialize)]
pub(crate) struct Payment {
    pub id: String,
    /// `null` until the payment has refunds.
    #[serde(default)]
    pub refunds: Option<Vec<Refund>>,
}

/// One entry of a payment's `refunds`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Refund {
    pub status: String,
    pub value: Box<RawValue>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub date_created: Option<String>,
}

/// A refund status of Asaas, in our words. An unknown status is treated as pending: it is
/// neither a success we may report nor a failure that frees the job for a resend.
pub(crate) fn status(refund: &Refund) -> RefundStatus {
    match refund.status.as_str() {
        "DONE" => RefundStatus::Succeeded,
        "CANCELLED" => RefundStatus::Failed {
            reason: format!(
                "asaas refund CANCELLED (created {})",
                refund
                    .date_created
                    .as_deref()
                    .unwrap_or("at an unknown time")
            ),
        },
        _ => RefundStatus::Pending,
    }
}

impl Payment {
    /// The refund `request` made on this payment, found by its marker. If several carry it
    /// (which only a resend after a lost record can cause), the newest one is the request's
    /// latest attempt. A marked refund for another amount than the request's is not adopted:
    /// that needs a human.
    pub(crate) fn refund_for(
        &self,
        request: &RefundRequest,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let marked: Vec<&Refund> = self
            .refunds
            .iter()
            .flatten()
            .filter(|r| r.description.as_deref().and_then(marked_key) == Some(request.key.as_str()))
            .collect();
        let Some(refund) = marked.last() else {
            return Ok(None);
        };
        if marked.len() > 1 {
            tracing::warn!(key = %request.key, payment_id = %self.id, count = marked.len(),
                           "asaas payment carries several refunds marked with one key; adopting the newest, check the others by hand");
        }
        let amount = reais_to_minor(&refund.value).ok_or_else(|| {
            ProviderError::unknown(format!(
                "asaas: unreadable refund value {} on payment {}",
                refund.value.get(),
                self.id
            ))
        })?;
        if amount != request.amount.minor() {
            return Err(ProviderError::Permanent {
                code: Some("amount_mismatch".into()),
                why: format!(
                    "asaas payment {} carries a refund marked with key {} for {} centavos, but this job asks for {}; check the payment by hand",
                    self.id,
                    request.key,
                    amount,
                    request.amount.minor()
                ),
            });
        }
        Ok(Some(ProviderRefund {
            refund_id: refund_id(request),
            status: status(refund),
            amount,
        }))
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    code: Option<String>,
    description: Option<String>,
}

/// Classifies a non-2xx answer. Asaas has no idempotency layer to lean on:
/// - 429 comes before anything runs: transient, after `RateLimit-Reset` seconds;
/// - 5xx (and a 408 from a proxy) may follow an execution: unknown, reconciled by reading
///   the payment before any resend;
/// - every other 4xx (400 `invalid_action`/`invalid_value`…, 401, 403, 404) no retry fixes.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let errors = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let code = errors.iter().find_map(|e| e.code.clone());
    let message = if errors.is_empty() {
        http::snippet(body)
    } else {
        errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.as_deref().unwrap_or("error"),
                    e.description.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let why = format!("asaas {status}: {message}");
    match status {
        429 => ProviderError::Transient {
            why,
            retry_after: http::retry_after(headers),
        },
        408 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the refund may have been executed)"))
        }
        _ => ProviderError::Permanent { code, why },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::job::{Amount, Currency, Reason, Token};

    fn request(amount: u64, key: &str, description: Option<&str>) -> RefundRequest {
        RefundRequest {
            key: IdempotencyKey::parse(key).unwrap(),
            payment_id: Token::parse("pay_080225913252").unwrap(),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::BRL,
            reason: Reason::CustomerRequest,
            description: description.map(str::to_owned),
            job_id: "job-1".into(),
        }
    }

    fn payment(json: &str) -> Payment {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn body_is_a_json_number_in_reais_and_a_marked_description() {
        let req = request(18600, "pay_1:2026-11-24", Some("produto com defeito"));
        let json = serde_json::to_string(&body(&req)).unwrap();
        assert_eq!(
            json,
            r#"{"value":186.00,"description":"produto com defeito [ref:pay_1:2026-11-24]"}"#
        );
        let no_text = request(1, "k1", None);
        assert_eq!(body(&no_text).description, "CUSTOMER_REQUEST [ref:k1]");
    }

    #[test]
    fn amounts_convert_exactly_at_the_edges() {
        for (minor, text) in [
            (1, "0.01"),
            (99, "0.99"),
            (100, "1.00"),
            (1_000_000_000_000, "10000000000.00"),
        ] {
            let sent = body(&request(minor, "k", None)).value;
            assert_eq!(sent.get(), text);
            assert_eq!(reais_to_minor(&sent), Some(minor));
        }
        // Asaas may echo numbers without trailing zeros.
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(reais_to_minor(&raw("10.5")), Some(1050));
        assert_eq!(reais_to_minor(&raw("10")), Some(1000));
        assert_eq!(reais_to_minor(&raw("0.001")), None);
        assert_eq!(reais_to_minor(&raw("-1.00")), None);
        assert_eq!(reais_to_minor(&raw("\"1.00\"")), None);
    }

    #[test]
    fn the_marker_survives_long_descriptions_and_cannot_be_spoofed() {
        let key = "k".repeat(IdempotencyKey::MAX_LEN);
        let long = "x".repeat(500);
        let text = description(&request(100, &key, Some(&long)));
        assert_eq!(text.chars().count(), MAX_DESCRIPTION_CHARS);
        assert!(text.ends_with(&format!(" [ref:{key}]")));
        assert_eq!(marked_key(&text), Some(key.as_str()));

        let spoof = description(&request(100, "mine", Some("see [ref:theirs]")));
        assert_eq!(spoof, "see (ref:theirs] [ref:mine]");
        assert_eq!(marked_key(&spoof), Some("mine"));

        assert_eq!(marked_key("Overpayment"), None);
        assert_eq!(marked_key("[ref:a] trailing text"), None);
        assert_eq!(marked_key("broken [ref:bad key]"), None);
        assert_eq!(marked_key("x [ref:]"), None);
        assert_eq!(marked_key("x [ref:k1]  "), Some("k1"));
    }

    #[test]
    fn refund_statuses_map_into_ours() {
        let refund = |status: &str| Refund {
            status: status.into(),
            value: RawValue::from_string("1.00".into()).unwrap(),
            description: None,
            date_created: Some("2026-11-24 10:28:40".into()),
        };
        assert_eq!(status(&refund("DONE")), RefundStatus::Succeeded);
        assert_eq!(status(&refund("PENDING")), RefundStatus::Pending);
        assert_eq!(status(&refund("SOMETHING_NEW")), RefundStatus::Pending);
        let RefundStatus::Failed { reason } = status(&refund("CANCELLED")) else {
            panic!("CANCELLED maps to Failed");
        };
        assert!(reason.contains("CANCELLED"), "{reason}");
    }

    #[test]
    fn our_refund_is_found_by_its_marker_only() {
        let req = request(1050, "pay_1:2026-11-24", None);
        let p = payment(
            r#"{"object":"payment","id":"pay_1","status":"RECEIVED","value":100.00,"refunds":[
                {"dateCreated":"2026-11-24 10:00:00","status":"DONE","value":10.5,"description":"Overpayment","transactionReceiptUrl":null},
                {"dateCreated":"2026-11-24 10:01:00","status":"PENDING","value":10.50,"description":"x [ref:pay_1:2026-11-24]","transactionReceiptUrl":null},
                {"dateCreated":"2026-11-24 10:02:00","status":"DONE","value":10.50,"description":"x [ref:pay_1:other]","transactionReceiptUrl":null}
            ]}"#,
        );
        let found = p.refund_for(&req).unwrap().unwrap();
        assert_eq!(found.refund_id, "pay_080225913252:pay_1:2026-11-24");
        assert_eq!(found.status, RefundStatus::Pending);
        assert_eq!(found.amount, 1050);

        let none = payment(r#"{"id":"pay_1","status":"RECEIVED","refunds":null}"#);
        assert_eq!(none.refund_for(&req).unwrap(), None);
        let others = payment(
            r#"{"id":"pay_1","refunds":[{"status":"DONE","value":10.50,"description":"x [ref:pay_1:other]"}]}"#,
        );
        assert_eq!(others.refund_for(&req).unwrap(), None);
    }

    #[test]
    fn a_marked_refund_for_another_amount_is_not_adopted() {
        let req = request(1050, "k", None);
        let p = payment(
            r#"{"id":"pay_1","refunds":[{"status":"DONE","value":20.00,"description":"x [ref:k]"}]}"#,
        );
        let err = p.refund_for(&req).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "amount_mismatch"),
            "{err:?}"
        );
        let unreadable = payment(
            r#"{"id":"pay_1","refunds":[{"status":"DONE","value":1e3,"description":"x [ref:k]"}]}"#,
        );
        assert!(matches!(
            unreadable.refund_for(&req),
            Err(ProviderError::Unknown { .. })
        ));
    }

    #[test]
    fn several_marked_refunds_adopt_the_newest() {
        let req = request(100, "k", None);
        let p = payment(
            r#"{"id":"pay_1","refunds":[
                {"status":"CANCELLED","value":1.00,"description":"a [ref:k]"},
                {"status":"DONE","value":1.00,"description":"a [ref:k]"}
            ]}"#,
        );
        assert_eq!(
            p.refund_for(&req).unwrap().unwrap().status,
            RefundStatus::Succeeded
        );
    }

    #[test]
    fn errors_are_classified_safely_for_money() {
        let none = HeaderMap::new();
        let declined = br#"{"errors":[{"code":"invalid_action","description":"Esta cobranca possui um chargeback em andamento."}]}"#;
        let err = classify(400, &none, declined);
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "invalid_action"),
            "{err:?}"
        );
        assert!(err.to_string().contains("chargeback em andamento"), "{err}");
        let value = br#"{"errors":[{"code":"invalid_value","description":"O valor informado excede o saldo."}]}"#;
        assert!(matches!(
            classify(400, &none, value),
            ProviderError::Permanent { code: Some(c), .. } if c == "invalid_value"
        ));
        for status in [401, 403, 404] {
            assert!(
                matches!(
                    classify(status, &none, b""),
                    ProviderError::Permanent { .. }
                ),
                "{status}"
            );
        }
        for status in [408, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(status, &none, b"<html>"),
                    ProviderError::Unknown { .. }
                ),
                "{status}"
            );
        }

        let mut limited = HeaderMap::new();
        limited.insert("ratelimit-limit", "50".parse().unwrap());
        limited.insert("ratelimit-remaining", "0".parse().unwrap());
        limited.insert("ratelimit-reset", "7".parse().unwrap());
        let err = classify(429, &limited, b"");
        assert_eq!(
            err,
            ProviderError::Transient {
                why: err.to_string(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
    }
}
