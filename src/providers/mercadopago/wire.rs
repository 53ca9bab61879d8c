//! Mercado Pago's wire types and their conversion to and from ours
//! (`POST /v1/payments/{id}/refunds` and its look-ups).
//!
//! Pure (but for one warning log): builds the JSON body (the amount is a JSON *number* in
//! reais, written by integer formatting, never through `f64`), reads refund objects, maps
//! refund statuses, classifies error responses, and decides reconciliation against a
//! pre-send snapshot.

use std::collections::HashSet;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};

use crate::{
    http,
    job::{Amount, Currency, parse_decimal},
    providers::{ProviderError, ProviderRefund, RefundRequest, RefundStatus},
};

/// Decimal places of the reais Mercado Pago's `amount` carries.
const EXPONENT: u32 = 2;

/// Refuses what this connector cannot send: a non-BRL job (the body has no currency field,
/// so Mercado Pago would read the number in the payment's own currency), or a payment id
/// that is only dots (a dot segment would move the request to another path).
pub(crate) fn check(request: &RefundRequest) -> Result<(), ProviderError> {
    if request.currency != Currency::BRL {
        return Err(ProviderError::Permanent {
            code: Some("currency".into()),
            why: format!(
                "mercadopago: this connector refunds BRL payments only; the job is in {}",
                request.currency.code()
            ),
        });
    }
    path_segment(request.payment_id.as_str())
}

/// Refuses an id that would not stay one path segment: empty, only dots, or holding a
/// character outside `[A-Za-z0-9_.:-]`.
pub(crate) fn path_segment(id: &str) -> Result<(), ProviderError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    if id.is_empty() || id.bytes().all(|b| b == b'.') || !id.bytes().all(plain) {
        return Err(ProviderError::Permanent {
            code: Some("invalid_id".into()),
            why: format!("mercadopago: {id:?} is not a Mercado Pago id"),
        });
    }
    Ok(())
}

/// `amount` as a JSON number in reais, by integer formatting: 18600 centavos → `186.00`.
pub(crate) fn amount_number(amount: Amount) -> Box<RawValue> {
    RawValue::from_string(amount.to_decimal(EXPONENT))
        .expect("digits, a point and two digits always form a valid JSON number")
}

/// Reads an amount in reais back into centavos, exactly: a JSON number (`186`, `186.5`,
/// `186.00`) or, leniently, a string holding one. `None` for anything else (a sign, an
/// exponent, more than two decimals), so a caller never guesses at money.
pub(crate) fn read_amount(raw: &RawValue) -> Option<u64> {
    let text = raw.get().trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    parse_decimal(text, EXPONENT)
}

#[derive(Serialize)]
struct CreateBody {
    amount: Box<RawValue>,
}

/// The JSON body of a create-refund call: `{"amount":186.00}`. Always explicit: an empty
/// body would refund the whole payment.
pub(crate) fn body(request: &RefundRequest) -> String {
    serde_json::to_string(&CreateBody {
        amount: amount_number(request.amount),
    })
    .expect("a struct with one raw JSON number always serializes")
}

/// An id Mercado Pago sends as a number (or, in some answers, a string).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Id {
    Number(u64),
    Text(String),
}

impl Id {
    pub(crate) fn text(&self) -> String {
        match self {
            Id::Number(n) => n.to_string(),
            Id::Text(s) => s.clone(),
        }
    }
}

/// A Mercado Pago refund object (the fields we read).
#[derive(Debug, Deserialize)]
pub(crate) struct RefundObject {
    pub id: Id,
    #[serde(default)]
    pub amount: Option<Box<RawValue>>,
    pub status: String,
    #[serde(default)]
    pub reason: Option<Value>,
    #[serde(default)]
    pub status_detail: Option<Value>,
}

impl RefundObject {
    /// The amount in centavos, if it reads exactly.
    pub(crate) fn amount_minor(&self) -> Option<u64> {
        self.amount.as_deref().and_then(read_amount)
    }

    /// Our view of it; `Err` when its amount does not read exactly.
    pub(crate) fn into_refund(self) -> Result<ProviderRefund, String> {
        let refund_id = self.id.text();
        let amount = self.amount_minor().ok_or_else(|| {
            format!(
                "refund {refund_id} has an amount that does not read as reais: {}",
                self.amount.as_deref().map_or("(none)", RawValue::get)
            )
        })?;
        let status = refund_status(
            &self.status,
            [&self.reason, &self.status_detail]
                .into_iter()
                .flatten()
                .map(text)
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(", "),
        );
        Ok(ProviderRefund {
            refund_id,
            status,
            amount,
        })
    }
}

/// Maps a refund `status` into ours. `approved` is done; `rejected` and `cancelled` failed.
/// `in_process` (and `pending`, `authorized`) are pending, and so is any status we do not
/// know: the refund exists, so only reading it again is safe. Calling it failed could let a
/// replay pay a second time.
pub(crate) fn refund_status(status: &str, detail: String) -> RefundStatus {
    match status {
        "approved" => RefundStatus::Succeeded,
        "rejected" | "cancelled" => RefundStatus::Failed {
            reason: format!(
                "mercadopago refund {status}: {}",
                if detail.is_empty() {
                    "no reason given"
                } else {
                    &detail
                }
            ),
        },
        "in_process" | "pending" | "authorized" => RefundStatus::Pending,
        other => {
            tracing::warn!(
                status = other,
                "mercadopago: unknown refund status; treating it as pending"
            );
            RefundStatus::Pending
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What a payment's refunds looked like just before a send: their ids. Stored by the
/// pipeline in the claim, handed back to `find`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Format version.
    pub v: u32,
    /// The ids of the refunds the payment already had.
    pub refund_ids: Vec<String>,
}

impl Snapshot {
    /// The snapshot of these refunds, as stored text (never empty: the store reads an empty
    /// snapshot as none).
    pub(crate) fn of(refunds: &[RefundObject]) -> String {
        serde_json::to_string(&Snapshot {
            v: 1,
            refund_ids: refunds.iter().map(|r| r.id.text()).collect(),
        })
        .expect("a list of strings always serializes")
    }

    /// Reads a stored snapshot.
    pub(crate) fn parse(text: &str) -> Result<Self, ProviderError> {
        match serde_json::from_str::<Snapshot>(text) {
            Ok(snapshot) if snapshot.v == 1 => Ok(snapshot),
            _ => Err(ProviderError::Permanent {
                code: Some("snapshot".into()),
                why: format!(
                    "mercadopago: the stored pre-send snapshot is unreadable ({}); cannot tell \
                     whether an earlier attempt refunded: check the payment's refunds in Mercado Pago",
                    crate::job::truncate(text, 80)
                ),
            }),
        }
    }
}

/// Decides, from the payment's refunds now and the snapshot taken before the first send,
/// which refund an earlier attempt of `request` made. Mercado Pago keeps nothing of ours on
/// a refund, so a refund is ours when it is new since the snapshot and has our exact amount.
/// None new with our amount: certainly not sent (`Ok(None)`). More than one: we do not guess.
/// A new refund whose amount does not read: we cannot tell, so we do not answer `None`.
pub(crate) fn reconcile(
    request: &RefundRequest,
    snapshot: &Snapshot,
    refunds: Vec<RefundObject>,
) -> Result<Option<ProviderRefund>, ProviderError> {
    let known: HashSet<&str> = snapshot.refund_ids.iter().map(String::as_str).collect();
    let mut candidates = Vec::new();
    for refund in refunds {
        if known.contains(refund.id.text().as_str()) {
            continue;
        }
        match refund.amount_minor() {
            Some(amount) if amount == request.amount.minor() => candidates.push(refund),
            Some(_) => {}
            None => {
                return Err(ProviderError::unknown(format!(
                    "mercadopago: refund {} of payment {} is new since our first send but its amount \
                     does not read exactly; cannot tell whether it is ours",
                    refund.id.text(),
                    request.payment_id
                )));
            }
        }
    }
    match candidates.len() {
        0 => Ok(None),
        1 => {
            let refund = candidates.remove(0);
            refund
                .into_refund()
                .map(Some)
                .map_err(ProviderError::unknown)
        }
        n => {
            let ids: Vec<String> = candidates.iter().map(|r| r.id.text()).collect();
            Err(ProviderError::Permanent {
                code: Some("ambiguous_refunds".into()),
                why: format!(
                    "mercadopago: payment {} has {n} refunds of R$ {} made since our first send \
                     (ids {}), and Mercado Pago refunds carry no idempotency key, so this worker \
                     cannot tell which one is ours. Check them in Mercado Pago: if one is this job's, \
                     discard the job; do not replay it under a new key",
                    request.payment_id,
                    request.amount.to_decimal(EXPONENT),
                    ids.join(", ")
                ),
            })
        }
    }
}

/// Mercado Pago's error body: `{"message","error","status","cause":[{"code","description"}]}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    cause: Option<Value>,
}

impl ErrorBody {
    /// The causes, whether sent as an array or as one object.
    fn causes(&self) -> Vec<(Option<String>, Option<String>)> {
        let one = |c: &Value| {
            (
                c.get("code").map(text).filter(|t| !t.is_empty()),
                c.get("description").map(text).filter(|t| !t.is_empty()),
            )
        };
        match &self.cause {
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(object @ Value::Object(_)) => vec![one(object)],
            _ => Vec::new(),
        }
    }
}

/// Classifies a non-success answer. 429 is refused before anything runs: transient. A 409
/// (the key is in use, or was used for another request) and any 5xx may hide an executed
/// refund: unknown, reconciled before a resend. Every other 4xx (2063 invalid state or
/// already refunded, 2000 payment not found, 2024/15016 too old, 3024 partial refund not
/// allowed, 4040/4041 bad amount, 4292–4297, 401 bad token) is final.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).unwrap_or_default();
    let causes = parsed.causes();
    let code = causes
        .iter()
        .find_map(|(code, _)| code.clone())
        .or_else(|| parsed.error.clone());
    let mut why = format!(
        "mercadopago {status} {}: {}",
        code.as_deref().unwrap_or("error"),
        parsed
            .message
            .clone()
            .unwrap_or_else(|| http::snippet(body))
    );
    let details: Vec<String> = causes
        .iter()
        .filter_map(|(code, description)| {
            description
                .as_ref()
                .map(|d| format!("{} {d}", code.as_deref().unwrap_or("")))
        })
        .collect();
    if !details.is_empty() {
        why = format!("{why} ({})", details.join("; ").trim());
    }
    match status {
        429 => ProviderError::Transient {
            why,
            retry_after: http::retry_after(headers),
        },
        409 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the refund may have been executed)"))
        }
        400..=499 => ProviderError::Permanent { code, why },
        _ => ProviderError::unknown(format!(
            "{why} (unexpected answer; the refund may have been executed)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{IdempotencyKey, Reason, Token};

    fn request(minor: u64) -> RefundRequest {
        RefundRequest {
            key: IdempotencyKey::parse("1234567890:2026-11-24").unwrap(),
            payment_id: Token::parse("1234567890").unwrap(),
            amount: Amount::new(minor).unwrap(),
            currency: Currency::BRL,
            reason: Reason::CustomerRequest,
            description: None,
            job_id: "job-1".into(),
        }
    }

    fn refund(id: u64, amount: &str, status: &str) -> RefundObject {
        serde_json::from_str(&format!(
            r#"{{"id":{id},"payment_id":1234567890,"amount":{amount},"status":"{status}",
                "source":{{"id":"1","name":"x","type":"collector"}},"refund_mode":"standard"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn body_is_a_json_number_in_reais_at_the_edges() {
        for (minor, json) in [
            (1, r#"{"amount":0.01}"#),
            (99, r#"{"amount":0.99}"#),
            (100, r#"{"amount":1.00}"#),
            (18600, r#"{"amount":186.00}"#),
            (1_000_000_000_000, r#"{"amount":10000000000.00}"#),
        ] {
            let body = body(&request(minor));
            assert_eq!(body, json);
            // A number, not a string, and it reads back exactly.
            let raw: std::collections::HashMap<String, Box<RawValue>> =
                serde_json::from_str(&body).unwrap();
            assert!(!raw["amount"].get().starts_with('"'));
            assert_eq!(read_amount(&raw["amount"]), Some(minor), "{json}");
        }
    }

    #[test]
    fn amounts_read_back_exactly_or_not_at_all() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(read_amount(&raw("186")), Some(18600));
        assert_eq!(read_amount(&raw("186.5")), Some(18650));
        assert_eq!(read_amount(&raw("0.01")), Some(1));
        assert_eq!(read_amount(&raw(r#""7.80""#)), Some(780));
        for bad in [
            "-1",
            "1e2",
            "0.001",
            "0.30000000000000004",
            "null",
            r#""x""#,
        ] {
            assert_eq!(read_amount(&raw(bad)), None, "{bad}");
        }
    }

    #[test]
    fn statuses_map_into_ours() {
        let status = |s: &str| refund(1, "5", s).into_refund().unwrap().status;
        assert_eq!(status("approved"), RefundStatus::Succeeded);
        assert_eq!(status("in_process"), RefundStatus::Pending);
        assert_eq!(
            status("something_new"),
            RefundStatus::Pending,
            "an unknown status is read again, never called failed"
        );
        let rejected: RefundObject = serde_json::from_str(
            r#"{"id":7,"amount":5,"status":"rejected","reason":"insufficient_funds"}"#,
        )
        .unwrap();
        let RefundStatus::Failed { reason } = rejected.into_refund().unwrap().status else {
            panic!("rejected maps to Failed");
        };
        assert!(reason.contains("insufficient_funds"), "{reason}");
    }

    #[test]
    fn refund_objects_read_ids_and_amounts() {
        let r = refund(1242469925, "186.00", "approved")
            .into_refund()
            .unwrap();
        assert_eq!(r.refund_id, "1242469925");
        assert_eq!(r.amount, 18600);
        let text_id: RefundObject =
            serde_json::from_str(r#"{"id":"99","amount":1,"status":"approved"}"#).unwrap();
        assert_eq!(text_id.into_refund().unwrap().refund_id, "99");
        assert!(
            refund(1, "1.234", "approved").into_refund().is_err(),
            "an amount that does not read exactly is an error, not a guess"
        );
    }

    #[test]
    fn snapshot_round_trips_and_is_never_empty() {
        let text = Snapshot::of(&[]);
        assert!(!text.is_empty());
        assert_eq!(
            Snapshot::parse(&text).unwrap().refund_ids,
            Vec::<String>::new()
        );
        let text = Snapshot::of(&[refund(11, "1", "approved"), refund(12, "2", "approved")]);
        assert_eq!(Snapshot::parse(&text).unwrap().refund_ids, ["11", "12"]);
        assert!(matches!(
            Snapshot::parse("garbage"),
            Err(ProviderError::Permanent { .. })
        ));
    }

    #[test]
    fn reconcile_adopts_only_a_new_refund_of_our_exact_amount() {
        let snapshot = Snapshot {
            v: 1,
            refund_ids: vec!["1".into()],
        };
        let req = request(18600);
        // The old refund has our amount but was there before: not ours.
        let none = reconcile(&req, &snapshot, vec![refund(1, "186.00", "approved")]).unwrap();
        assert_eq!(none, None);
        // A new refund of another amount is someone else's.
        let none = reconcile(&req, &snapshot, vec![refund(2, "186.01", "approved")]).unwrap();
        assert_eq!(none, None);
        // A new refund of our amount is ours, whatever its status.
        let found = reconcile(
            &req,
            &snapshot,
            vec![refund(1, "186", "approved"), refund(3, "186", "in_process")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.refund_id, "3");
        assert_eq!(found.status, RefundStatus::Pending);
        assert_eq!(found.amount, 18600);
    }

    #[test]
    fn reconcile_never_guesses() {
        let snapshot = Snapshot {
            v: 1,
            refund_ids: vec![],
        };
        let req = request(500);
        let err = reconcile(
            &req,
            &snapshot,
            vec![refund(8, "5", "approved"), refund(9, "5.00", "approved")],
        )
        .unwrap_err();
        let ProviderError::Permanent { code, why } = &err else {
            panic!("two candidates is for a human: {err:?}");
        };
        assert_eq!(code.as_deref(), Some("ambiguous_refunds"));
        assert!(why.contains("8, 9"), "{why}");
        // A new refund whose amount does not read could be ours: not "certainly not there".
        let err = reconcile(&req, &snapshot, vec![refund(8, r#""five""#, "approved")]).unwrap_err();
        assert!(matches!(err, ProviderError::Unknown { .. }), "{err:?}");
    }

    #[test]
    fn errors_are_classified_safely_for_money() {
        let none = HeaderMap::new();
        let declined = br#"{"message":"The action requested is not valid for the current payment state","error":"bad_request","status":400,"cause":[{"code":2063,"description":"The action requested is not valid for the current payment state","data":null}]}"#;
        let err = classify(400, &none, declined);
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "2063"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("not valid for the current payment state")
        );

        let not_found = br#"{"message":"Payment not found","error":"not_found","status":404,"cause":[{"code":2000,"description":"Payment not found","data":null}]}"#;
        assert!(matches!(
            classify(404, &none, not_found),
            ProviderError::Permanent { code: Some(c), .. } if c == "2000"
        ));
        for code in [2024, 15016, 3024, 4040, 4041, 4292, 4293, 4296, 4297] {
            let body = format!(
                r#"{{"message":"m","error":"bad_request","status":400,"cause":[{{"code":{code},"description":"d"}}]}}"#
            );
            assert!(
                matches!(classify(400, &none, body.as_bytes()), ProviderError::Permanent { code: Some(c), .. } if c == code.to_string()),
                "{code}"
            );
        }
        let empty_cause =
            br#"{"message":"invalid access token","error":"unauthorized","status":401,"cause":[]}"#;
        let err = classify(401, &none, empty_cause);
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "unauthorized"),
            "{err:?}"
        );

        for status in [409, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, &none, b""), ProviderError::Unknown { .. }),
                "{status}"
            );
        }
        let reused = br#"{"message":"Idempotency key already used","error":"idempotency_key_already_used","status":409,"cause":[]}"#;
        assert!(matches!(
            classify(409, &none, reused),
            ProviderError::Unknown { .. }
        ));
        assert!(matches!(
            classify(302, &none, b""),
            ProviderError::Unknown { .. }
        ));

        let mut limited = HeaderMap::new();
        limited.insert("retry-after", "2".parse().unwrap());
        let err = classify(429, &limited, b"{}");
        assert_eq!(
            err,
            ProviderError::Transient {
                why: err.to_string(),
                retry_after: Some(std::time::Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn only_brl_and_real_ids_are_sent() {
        let mut req = request(100);
        assert!(check(&req).is_ok());
        req.currency = Currency::parse("USD").unwrap();
        assert!(matches!(check(&req), Err(ProviderError::Permanent { .. })));
        let mut req = request(100);
        req.payment_id = Token::parse("..").unwrap();
        assert!(matches!(check(&req), Err(ProviderError::Permanent { .. })));
        assert!(path_segment("123_declined").is_ok());
        assert!(path_segment("1/../2").is_err());
    }
}
