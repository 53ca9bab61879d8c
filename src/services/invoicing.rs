//! The invoicing client: issues the credit note of a refund, once per idempotency key.
//!
//! `POST {base}/v1/credit-notes` with `Authorization: Bearer <api_key>` and
//! `Idempotency-Key: <the job's key>`; the body names the order, the NF-e it corrects
//! (`NFref.refNFe`, the 44-digit access key), the purpose `finNFe = 4` (devolução), the amount
//! as a decimal string written from the integer, the refund it is sealed to and the reason.
//! The answer is `201 {number, access_key, issued_at, status}`, or `200` with the same note
//! when the key was already used (docs/SERVICES.md).
//!
//! Because the service dedupes by key, an unclear outcome (timeout, 5xx) is reported as
//! [`ProviderError::Unknown`] and the caller may simply ask again with the same key: the
//! answer is the note already issued, never a second one. This file never invents a key.

use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use super::{CreditNote, CreditNoteRequest, Invoicing};
use crate::{
    config::{Secret, ServiceSettings},
    http,
    providers::ProviderError,
};

/// NF-e purpose of the note: 4 = devolução. NT 2025.002-RTC's `5 = nota de crédito` only
/// adjusts IBS/CBS and needs a `tpNFCredito` subtype; a consumer refund is still documented
/// with a devolução that references the original NF-e (PROVIDERS.md §7).
pub const FIN_NFE_DEVOLUCAO: u8 = 4;

/// The check digit (cDV) of an NF-e access key from its first 43 digits: modulo 11 with
/// weights 2..=9 from the right; a remainder of 0 or 1 gives 0. `None` if the input is not
/// 43 ASCII digits.
pub fn access_key_check_digit(first_43: &str) -> Option<u8> {
    if first_43.len() != 43 || !first_43.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sum: u32 = first_43
        .bytes()
        .rev()
        .zip((2..=9).cycle())
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    let remainder = sum % 11;
    Some(if remainder < 2 {
        0
    } else {
        (11 - remainder) as u8
    })
}

/// Whether `key` is an NF-e access key: 44 digits whose last is the right check digit.
pub fn is_access_key(key: &str) -> bool {
    key.len() == 44
        && key.is_ascii()
        && access_key_check_digit(&key[..43]).is_some_and(|dv| key.as_bytes()[43] == b'0' + dv)
}

/// The body of `POST /v1/credit-notes`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct IssueBody<'a> {
    order_id: &'a str,
    #[serde(rename = "finNFe")]
    fin_nfe: u8,
    /// The NF-e corrected; absent when the ERP knows no invoice for the order.
    #[serde(rename = "NFref", skip_serializing_if = "Option::is_none")]
    nf_ref: Option<NfRef<'a>>,
    /// Decimal string in the currency's unit ("186.00"), from the integer amount.
    amount: String,
    currency: &'static str,
    refund: RefundRef<'a>,
    reason: &'static str,
    customer: CustomerRef<'a>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct NfRef<'a> {
    #[serde(rename = "refNFe", skip_serializing_if = "Option::is_none")]
    ref_nfe: Option<&'a str>,
    #[serde(rename = "nNF")]
    number: &'a str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct RefundRef<'a> {
    provider: &'static str,
    refund_id: &'a str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct CustomerRef<'a> {
    name: &'a str,
}

/// The body for `request`.
pub(crate) fn body(request: &CreditNoteRequest) -> IssueBody<'_> {
    IssueBody {
        order_id: &request.order_id,
        fin_nfe: FIN_NFE_DEVOLUCAO,
        nf_ref: request.invoice.as_ref().map(|invoice| NfRef {
            ref_nfe: invoice.access_key.as_deref(),
            number: &invoice.number,
        }),
        amount: request.amount.to_decimal(request.currency.exponent()),
        currency: request.currency.code(),
        refund: RefundRef {
            provider: request.provider.as_str(),
            refund_id: &request.refund_id,
        },
        reason: request.reason.as_str(),
        customer: CustomerRef {
            name: &request.customer_name,
        },
    }
}

/// The service's answer to an issue call.
#[derive(Debug, Deserialize)]
struct IssuedBody {
    number: String,
    #[serde(default)]
    access_key: Option<String>,
    issued_at: String,
    status: String,
}

/// `{"error":{"code","message"}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorItem,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    code: Option<String>,
    message: Option<String>,
}

/// Reads a 2xx answer. An unreadable one is an unknown outcome: the note may exist, and
/// asking again with the same key will show it.
pub(crate) fn read_issued(body: &[u8]) -> Result<CreditNote, ProviderError> {
    let issued: IssuedBody = serde_json::from_slice(body).map_err(|e| {
        ProviderError::unknown(format!(
            "invoicing: unreadable answer to a credit note ({e}); asking again with the same key is safe: {}",
            http::snippet(body)
        ))
    })?;
    match issued.status.as_str() {
        "authorized" | "processing" => {}
        "rejected" | "denied" | "cancelled" => {
            return Err(ProviderError::Permanent {
                code: Some(format!("credit_note_{}", issued.status)),
                why: format!(
                    "invoicing: credit note {} is {}",
                    issued.number, issued.status
                ),
            });
        }
        other => {
            return Err(ProviderError::unknown(format!(
                "invoicing: credit note {} has unknown status {other:?}",
                issued.number
            )));
        }
    }
    let access_key = issued.access_key.filter(|key| {
        let ok = is_access_key(key);
        if !ok {
            tracing::warn!(number = %issued.number, "invoicing returned a malformed access key; keeping the note without it");
        }
        ok
    });
    Ok(CreditNote {
        number: issued.number,
        access_key,
        issued_at: issued.issued_at,
    })
}

/// Classifies a non-2xx answer:
/// - 429 and 409 (a request with this key is still running) happen before anything is
///   issued: transient, after `Retry-After` when given;
/// - 5xx and 408 may follow an issued note: unknown (a retry with the same key is safe);
/// - every other 4xx (400, 401, 403, 404, 415, 422) no retry fixes: permanent.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
) -> ProviderError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = parsed.as_ref().and_then(|b| b.error.code.clone());
    let message = parsed
        .and_then(|b| b.error.message)
        .unwrap_or_else(|| http::snippet(body));
    let why = format!("invoicing: HTTP {status}: {message}");
    match status {
        409 | 429 => ProviderError::Transient { why, retry_after },
        408 | 500..=599 => ProviderError::unknown(format!(
            "{why} (the note may have been issued; the same key finds it)"
        )),
        _ => ProviderError::Permanent { code, why },
    }
}

/// What a lost answer to a credit-note request may hide.
const NOTE_MAY_EXIST: &str = "the note may have been issued; the same key finds it";

/// The invoicing service's client.
#[derive(Debug, Clone)]
pub struct InvoicingClient {
    /// The shared connection pool.
    client: Client,
    /// Where the service lives, without a trailing slash.
    base_url: String,
    /// The service's API key, sent as a Bearer token.
    api_key: Secret,
}

impl InvoicingClient {
    /// A client for the configured endpoint.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Invoicing for InvoicingClient {
    async fn issue(&self, request: &CreditNoteRequest) -> Result<CreditNote, ProviderError> {
        let response = self
            .client
            .post(format!("{}/v1/credit-notes", self.base_url))
            .bearer_auth(self.api_key.expose())
            .header("Idempotency-Key", request.key.as_str())
            .json(&body(request))
            .send()
            .await
            .map_err(|e| http::transport_failure("invoicing", NOTE_MAY_EXIST, e))?;
        let status = response.status();
        let hint = http::retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| http::transport_failure("invoicing", NOTE_MAY_EXIST, e))?;
        if status == StatusCode::OK || status == StatusCode::CREATED {
            return read_issued(&bytes);
        }
        if status.is_success() {
            return Err(ProviderError::unknown(format!(
                "invoicing: unexpected HTTP {status} to a credit note: {}",
                http::snippet(&bytes)
            )));
        }
        Err(classify(status.as_u16(), hint, &bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        job::{Amount, Currency, IdempotencyKey, ProviderName, Reason},
        services::Invoice,
    };

    /// A valid access key (cUF 35, 2611, CNPJ 11.222.333/0001-81, mod 55, série 1, nNF 4512).
    pub(crate) const KEY: &str = "35261111222333000181550010000045121000045122";

    fn request(invoice: Option<Invoice>) -> CreditNoteRequest {
        CreditNoteRequest {
            key: IdempotencyKey::parse("order:8421:2026-11-24").unwrap(),
            order_id: "8421".into(),
            invoice,
            amount: Amount::new(18600).unwrap(),
            currency: Currency::BRL,
            refund_id: "D12345678".into(),
            provider: ProviderName::Pix,
            reason: Reason::CustomerRequest,
            customer_name: "Ana".into(),
        }
    }

    #[test]
    fn access_keys_carry_a_modulo_11_check_digit() {
        assert_eq!(access_key_check_digit(&KEY[..43]), Some(2));
        assert!(is_access_key(KEY));
        let wrong = format!("{}4", &KEY[..43]);
        assert!(!is_access_key(&wrong));
        assert!(!is_access_key(&KEY[..43]));
        assert!(!is_access_key(&format!("{KEY}0")));
        assert!(!is_access_key(&KEY.replace('3', "x")));
        // Remainders 0 and 1 both give 0.
        let zeros = "0".repeat(43);
        assert_eq!(access_key_check_digit(&zeros), Some(0));
    }

    #[test]
    fn body_is_a_devolucao_referencing_the_invoice_with_a_decimal_amount() {
        let invoice = Invoice {
            number: "4512".into(),
            access_key: Some(KEY.into()),
        };
        let json = serde_json::to_value(body(&request(Some(invoice)))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "order_id": "8421",
                "finNFe": 4,
                "NFref": {"refNFe": KEY, "nNF": "4512"},
                "amount": "186.00",
                "currency": "BRL",
                "refund": {"provider": "pix", "refund_id": "D12345678"},
                "reason": "CUSTOMER_REQUEST",
                "customer": {"name": "Ana"}
            })
        );
        let without = serde_json::to_value(body(&request(None))).unwrap();
        assert!(without.get("NFref").is_none());
        let mut small = request(None);
        small.amount = Amount::new(1).unwrap();
        assert_eq!(body(&small).amount, "0.01");
        small.currency = Currency::parse("JPY").unwrap();
        assert_eq!(body(&small).amount, "1");
    }

    #[test]
    fn issued_notes_are_read_and_bad_keys_dropped() {
        let ok = format!(
            r#"{{"number":"17","access_key":"{KEY}","issued_at":"2026-11-24T12:00:00Z","status":"authorized"}}"#
        );
        let note = read_issued(ok.as_bytes()).unwrap();
        assert_eq!(note.number, "17");
        assert_eq!(note.access_key.as_deref(), Some(KEY));
        let bad_key = ok.replace(KEY, "123");
        assert_eq!(read_issued(bad_key.as_bytes()).unwrap().access_key, None);
        let rejected = ok.replace("authorized", "rejected");
        assert!(matches!(
            read_issued(rejected.as_bytes()),
            Err(ProviderError::Permanent { .. })
        ));
        assert!(matches!(
            read_issued(b"<html>"),
            Err(ProviderError::Unknown { .. })
        ));
    }

    #[test]
    fn errors_are_classified_for_a_service_that_dedupes() {
        let body = br#"{"error":{"code":"invalid_amount","message":"amount must be positive"}}"#;
        match classify(422, None, body) {
            ProviderError::Permanent { code, why } => {
                assert_eq!(code.as_deref(), Some("invalid_amount"));
                assert!(why.contains("amount must be positive"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        for status in [400, 401, 403, 404, 415] {
            assert!(
                matches!(classify(status, None, b""), ProviderError::Permanent { .. }),
                "{status}"
            );
        }
        for status in [408, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, None, b""), ProviderError::Unknown { .. }),
                "{status}"
            );
        }
        assert_eq!(
            classify(429, Some(Duration::from_secs(2)), b""),
            ProviderError::Transient {
                why: "invoicing: HTTP 429: ".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(409, None, b""),
            ProviderError::Transient { .. }
        ));
    }
}
