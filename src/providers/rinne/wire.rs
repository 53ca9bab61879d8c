//! Rinne's wire types and their conversion to and from ours
//! (`POST …/transactions/{tx}/refund`, `GET …/transactions/{tx}`).
//!
//! Pure: builds the JSON body, reads transaction objects, decides what a transaction says
//! about our refund, and classifies error responses.
//!
//! Rinne answers a refund with the *transaction*, never with a refund object, and keeps no
//! refund idempotency. Everything we know about our refund we read off the transaction: its
//! `refunded_amount` (the sum of completed refunds, which only grows) and its `status`
//! (`PENDING_REFUND` while a refund is in flight; Rinne retries that one itself). So a refund is
//! named by the refunded amount it leads to, `{transaction}:{expected refunded_amount}`, and
//! an unknown outcome is measured against a [`Snapshot`] taken before the send.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::{
    http,
    job::Reason,
    providers::{ProviderError, ProviderRefund, RefundRequest, RefundStatus},
};

/// The longest wait a rate-limit answer may ask for. Rinne's windows are one second
/// (`x-ratelimit-limit: 50, 50;w=1`); a larger value is most likely an epoch timestamp.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The JSON body of a refund call.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct RefundBody {
    /// Integer centavos. Always sent: an omitted amount means "the full approved amount".
    pub refund_amount: u64,
    /// One of Rinne's four reasons.
    pub refund_reason: &'static str,
    /// Free text for the merchant's back office.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Rinne's reason for ours. Rinne has no "duplicate": a duplicate charge is refunded at the
/// customer's request, and [`body`] says so in the description.
pub(crate) fn reason(reason: Reason) -> &'static str {
    match reason {
        Reason::CustomerRequest | Reason::Duplicate => "CUSTOMER_REQUEST",
        Reason::Fraud => "FRAUD",
        Reason::BankingError => "BANKING_ERROR",
        Reason::PixWithdrawalOrChangeError => "PIX_WITHDRAWAL_OR_CHANGE_ERROR",
    }
}

/// The body of a refund call for `request`.
pub(crate) fn body(request: &RefundRequest) -> RefundBody {
    let description = match (request.reason, &request.description) {
        (Reason::Duplicate, Some(text)) => Some(format!("Duplicate charge: {text}")),
        (Reason::Duplicate, None) => Some("Duplicate charge".to_owned()),
        (_, text) => text.clone(),
    };
    RefundBody {
        refund_amount: request.amount.minor(),
        refund_reason: reason(request.reason),
        description,
    }
}

/// Whether an id can be a path segment as it is. The job schema already limits ids to
/// `[A-Za-z0-9_.:-]`; `.` and `..` would be resolved away by the URL and hit another path.
pub(crate) fn is_path_segment(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// A Rinne transaction object (the fields we read).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Transaction {
    pub id: String,
    pub status: String,
    /// Centavos. Absent on transactions that never approved.
    #[serde(default)]
    pub approved_amount: Option<u64>,
    /// Centavos: the sum of *completed* refunds. Required: every decision below rests on it.
    pub refunded_amount: u64,
    #[serde(default)]
    pub status_reason: Option<String>,
}

/// What a transaction's status says about refunds in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// `PENDING_REFUND`: a refund was accepted and Rinne keeps retrying it.
    InFlight,
    /// A status a pending refund falls back to when it ends (Rinne's cancel endpoint reverts
    /// to these): no refund is in flight.
    Idle,
    /// Anything else (`CHARGEDBACK`, statuses newer than this code): no safe reading.
    Unrecognised,
}

fn activity(status: &str) -> Activity {
    match status {
        "PENDING_REFUND" => Activity::InFlight,
        "APPROVED" | "PARTIALLY_REFUNDED" | "REFUNDED" => Activity::Idle,
        _ => Activity::Unrecognised,
    }
}

/// The transaction just before a send: the baseline an unknown outcome is measured against.
/// Stored by the pipeline as a small string ([`Snapshot::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// `refunded_amount` before the send.
    pub refunded: u64,
    /// `status` before the send (for operators reading the record).
    pub status: String,
}

impl Snapshot {
    /// `v1:{refunded_amount}:{status}`, e.g. `v1:0:APPROVED`.
    pub(crate) fn encode(&self) -> String {
        format!("v1:{}:{}", self.refunded, self.status)
    }

    /// Reads [`encode`](Self::encode)'s output back.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (refunded, status) = text.strip_prefix("v1:")?.split_once(':')?;
        Some(Self {
            refunded: refunded.parse().ok()?,
            status: status.to_owned(),
        })
    }
}

/// Our refund id: the transaction and the `refunded_amount` it shows once our refund has
/// completed, so [`settled`] can decide from the transaction alone.
pub(crate) fn refund_id(transaction: &str, expected: u64) -> String {
    format!("{transaction}:{expected}")
}

/// The expected `refunded_amount` in a [`refund_id`] of `transaction`'s.
pub(crate) fn parse_refund_id(id: &str, transaction: &str) -> Option<u64> {
    let (tx, expected) = id.rsplit_once(':')?;
    if tx != transaction {
        return None;
    }
    expected.parse().ok()
}

fn refund(request: &RefundRequest, expected: u64, status: RefundStatus) -> ProviderRefund {
    ProviderRefund {
        refund_id: refund_id(request.payment_id.as_str(), expected),
        status,
        amount: request.amount.minor(),
    }
}

/// Checks, before sending, that the refund can go out, and returns the baseline to store.
///
/// - A refund already in flight: Rinne refuses another (only `APPROVED` and
///   `PARTIALLY_REFUNDED` transactions are refundable), and ours could not be told apart from
///   it. Nothing was sent: wait.
/// - More than approved minus refunded: never sent (SPEC §4, refundable amount).
pub(crate) fn pre_send(
    tx: &Transaction,
    request: &RefundRequest,
) -> Result<Snapshot, ProviderError> {
    let amount = request.amount.minor();
    if activity(&tx.status) == Activity::InFlight {
        return Err(ProviderError::transient(format!(
            "rinne: transaction {} already has a refund in flight (PENDING_REFUND); waiting until it settles before sending another",
            tx.id
        )));
    }
    if let Some(approved) = tx.approved_amount {
        let left = approved.saturating_sub(tx.refunded_amount);
        if amount > left {
            return Err(ProviderError::Permanent {
                code: Some("REFUNDABLE_AMOUNT_EXCEEDED".into()),
                why: format!(
                    "rinne: refund of {amount} exceeds what is refundable on transaction {}: approved {approved} - refunded {} = {left} (centavos)",
                    tx.id, tx.refunded_amount
                ),
            });
        }
    }
    Ok(Snapshot {
        refunded: tx.refunded_amount,
        status: tx.status.clone(),
    })
}

/// Reads the 2xx answer to our refund call.
pub(crate) fn created(
    tx: &Transaction,
    request: &RefundRequest,
) -> Result<ProviderRefund, ProviderError> {
    let amount = request.amount.minor();
    let unclear = || {
        ProviderError::unknown(format!(
            "rinne: refund answered with transaction {} in status {} and refunded_amount {}; the refund may exist",
            tx.id, tx.status, tx.refunded_amount
        ))
    };
    if tx.id != request.payment_id.as_str() {
        return Err(unclear());
    }
    match tx.status.as_str() {
        // Completed: the refunded amount includes ours.
        "REFUNDED" | "PARTIALLY_REFUNDED" if tx.refunded_amount >= amount => {
            Ok(refund(request, tx.refunded_amount, RefundStatus::Succeeded))
        }
        // Accepted and in flight: it completes when the refunded amount grows by ours.
        "PENDING_REFUND" => Ok(refund(
            request,
            tx.refunded_amount.saturating_add(amount),
            RefundStatus::Pending,
        )),
        _ => Err(unclear()),
    }
}

/// Looks for the refund an uncertain earlier send made, against the pre-send `snapshot`.
///
/// - `refunded_amount` grew by at least our amount: it completed; adopt it.
/// - A refund is in flight: it may be ours (the pre-send check refuses to send while another
///   one is in flight), so adopt it as pending, whatever the refunded amount did meanwhile;
///   the status sync then decides by the amounts.
/// - No refund in flight and not enough refunded: ours does not exist, a resend is safe.
/// - A status with no safe reading: say so rather than guess.
pub(crate) fn found(
    tx: &Transaction,
    request: &RefundRequest,
    snapshot: &Snapshot,
) -> Result<Option<ProviderRefund>, ProviderError> {
    let expected = snapshot.refunded.saturating_add(request.amount.minor());
    if tx.refunded_amount >= expected {
        return Ok(Some(refund(request, expected, RefundStatus::Succeeded)));
    }
    match activity(&tx.status) {
        Activity::InFlight => Ok(Some(refund(request, expected, RefundStatus::Pending))),
        Activity::Idle => Ok(None),
        Activity::Unrecognised => Err(ProviderError::unknown(format!(
            "rinne: transaction {} is {} with refunded_amount {} (before the send: {}); cannot tell whether the refund exists",
            tx.id, tx.status, tx.refunded_amount, snapshot.refunded
        ))),
    }
}

/// The status of a refund we created or adopted, which completes when the transaction's
/// `refunded_amount` reaches `expected`. `refunded_amount` only grows, so a transaction with
/// no refund in flight that is still short of `expected` proves ours ended without
/// completing (failed, or cancelled at Rinne).
pub(crate) fn settled(
    tx: &Transaction,
    request: &RefundRequest,
    expected: u64,
) -> Result<ProviderRefund, ProviderError> {
    if tx.refunded_amount >= expected {
        return Ok(refund(request, expected, RefundStatus::Succeeded));
    }
    match activity(&tx.status) {
        Activity::InFlight => Ok(refund(request, expected, RefundStatus::Pending)),
        Activity::Idle => Ok(refund(
            request,
            expected,
            RefundStatus::Failed {
                reason: format!(
                    "rinne: the pending refund of {} on transaction {} did not complete: the transaction is {} with refunded_amount {} (it would be at least {expected}){}; the refund failed or was cancelled at Rinne",
                    request.amount,
                    tx.id,
                    tx.status,
                    tx.refunded_amount,
                    tx.status_reason
                        .as_deref()
                        .map(|r| format!(", status_reason {r}"))
                        .unwrap_or_default()
                ),
            },
        )),
        Activity::Unrecognised => Err(ProviderError::transient(format!(
            "rinne: transaction {} is {} with refunded_amount {} (expected {expected}); cannot tell how its pending refund ended",
            tx.id, tx.status, tx.refunded_amount
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorObject {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    details: Option<Details>,
}

#[derive(Debug, Deserialize)]
struct Details {
    #[serde(default)]
    issues: Vec<Issue>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    field: Option<String>,
    message: Option<String>,
}

/// Classifies a non-2xx answer.
///
/// - 429 comes with no body, before anything runs: transient, after `x-ratelimit-reset`.
/// - 500, 502 `INTEGRATION_ERROR` (the acquirer failed mid-call) and other 5xx or 408: the
///   refund may be in flight, so unknown; the pipeline reconciles before any resend.
/// - Other 4xx (`VALIDATION_ERROR`, `AUTHENTICATION_ERROR`, `AUTHORIZATION_ERROR`,
///   `RESOURCE_NOT_FOUND`, `CONFLICT_ERROR`): no retry can fix them.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    if status == 429 {
        let limit = headers
            .get("x-ratelimit-limit")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return ProviderError::Transient {
            why: format!("rinne 429: rate limited (x-ratelimit-limit {limit})"),
            retry_after: http::retry_after(headers).map(|wait| wait.min(MAX_RATE_LIMIT_WAIT)),
        };
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = parsed.as_ref().and_then(|e| e.code.clone());
    let mut why = format!(
        "rinne {status} {}: {}",
        code.as_deref().unwrap_or("error"),
        parsed
            .as_ref()
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| http::snippet(body))
    );
    if let Some(error) = &parsed {
        let issues: Vec<String> = error
            .details
            .iter()
            .flat_map(|d| &d.issues)
            .map(|i| {
                format!(
                    "{}: {}",
                    i.field.as_deref().unwrap_or("?"),
                    i.message.as_deref().unwrap_or("invalid")
                )
            })
            .collect();
        if !issues.is_empty() {
            why.push_str(&format!(" ({})", issues.join("; ")));
        }
        if let Some(id) = &error.request_id {
            why.push_str(&format!(" [requestId {id}]"));
        }
    }
    match status {
        408 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the refund may have been executed)"))
        }
        _ => ProviderError::Permanent { code, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Amount, Currency, IdempotencyKey, Token};

    fn request(amount: u64, reason: Reason, description: Option<&str>) -> RefundRequest {
        RefundRequest {
            key: IdempotencyKey::parse("tx_1:2026-11-24").unwrap(),
            payment_id: Token::parse("tx_1").unwrap(),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::BRL,
            reason,
            description: description.map(str::to_owned),
            job_id: "job-1".into(),
        }
    }

    fn tx(status: &str, approved: u64, refunded: u64) -> Transaction {
        Transaction {
            id: "tx_1".into(),
            status: status.into(),
            approved_amount: Some(approved),
            refunded_amount: refunded,
            status_reason: None,
        }
    }

    #[test]
    fn body_is_integer_centavos_at_the_edges() {
        for (minor, json) in [
            (1, "1"),
            (99, "99"),
            (100, "100"),
            (18600, "18600"),
            (1_000_000_000_000, "1000000000000"),
        ] {
            let text = serde_json::to_string(&body(&request(minor, Reason::Fraud, None))).unwrap();
            assert_eq!(
                text,
                format!(r#"{{"refund_amount":{json},"refund_reason":"FRAUD"}}"#),
                "{minor}"
            );
        }
    }

    #[test]
    fn reasons_map_and_duplicate_says_so_in_the_description() {
        assert_eq!(reason(Reason::CustomerRequest), "CUSTOMER_REQUEST");
        assert_eq!(reason(Reason::Fraud), "FRAUD");
        assert_eq!(reason(Reason::BankingError), "BANKING_ERROR");
        assert_eq!(
            reason(Reason::PixWithdrawalOrChangeError),
            "PIX_WITHDRAWAL_OR_CHANGE_ERROR"
        );
        let dup = body(&request(500, Reason::Duplicate, Some("charged twice")));
        assert_eq!(dup.refund_reason, "CUSTOMER_REQUEST");
        assert_eq!(
            dup.description.as_deref(),
            Some("Duplicate charge: charged twice")
        );
        let dup = body(&request(500, Reason::Duplicate, None));
        assert_eq!(dup.description.as_deref(), Some("Duplicate charge"));
        let plain = body(&request(500, Reason::BankingError, Some("teller error")));
        assert_eq!(plain.description.as_deref(), Some("teller error"));
    }

    #[test]
    fn path_segments_refuse_what_a_url_would_resolve_away() {
        assert!(is_path_segment("tx_123456789"));
        assert!(is_path_segment("a3dbd0c2-9f79-4f86-8caa-47779b3f2793"));
        assert!(is_path_segment("a.b:c"));
        for bad in ["", ".", "..", "a/b", "a?b", "a#b", "a b", "ä"] {
            assert!(!is_path_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_and_refund_id_round_trip() {
        let snapshot = Snapshot {
            refunded: 1200,
            status: "PARTIALLY_REFUNDED".into(),
        };
        assert_eq!(snapshot.encode(), "v1:1200:PARTIALLY_REFUNDED");
        assert_eq!(Snapshot::parse(&snapshot.encode()), Some(snapshot));
        for bad in [
            "",
            "1200:APPROVED",
            "v1:x:APPROVED",
            "v1:-1:APPROVED",
            "v2:1:A",
        ] {
            assert_eq!(Snapshot::parse(bad), None, "{bad:?}");
        }
        assert_eq!(refund_id("tx:with:colons", 18600), "tx:with:colons:18600");
        assert_eq!(
            parse_refund_id("tx:with:colons:18600", "tx:with:colons"),
            Some(18600)
        );
        assert_eq!(parse_refund_id("tx_2:18600", "tx_1"), None);
        assert_eq!(parse_refund_id("tx_1:abc", "tx_1"), None);
        assert_eq!(parse_refund_id("tx_1", "tx_1"), None);
    }

    #[test]
    fn pre_send_refuses_over_refunds_and_waits_for_a_refund_in_flight() {
        let req = request(5000, Reason::CustomerRequest, None);
        assert_eq!(
            pre_send(&tx("PARTIALLY_REFUNDED", 10_000, 5000), &req).unwrap(),
            Snapshot {
                refunded: 5000,
                status: "PARTIALLY_REFUNDED".into()
            }
        );
        let err = pre_send(&tx("PARTIALLY_REFUNDED", 10_000, 5001), &req).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent { why, .. } if why.contains("= 4999")),
            "{err:?}"
        );
        assert!(matches!(
            pre_send(&tx("PENDING_REFUND", 10_000, 0), &req),
            Err(ProviderError::Transient { .. })
        ));
        let mut unknown_approval = tx("APPROVED", 0, 0);
        unknown_approval.approved_amount = None;
        assert!(
            pre_send(&unknown_approval, &req).is_ok(),
            "Rinne decides when it shows no approved amount"
        );
    }

    #[test]
    fn created_reads_the_transaction_rinne_answers_with() {
        let req = request(5000, Reason::CustomerRequest, None);
        let done = created(&tx("PARTIALLY_REFUNDED", 10_000, 6000), &req).unwrap();
        assert_eq!(done.status, RefundStatus::Succeeded);
        assert_eq!(done.refund_id, "tx_1:6000");
        assert_eq!(done.amount, 5000);
        assert_eq!(
            created(&tx("REFUNDED", 5000, 5000), &req).unwrap().status,
            RefundStatus::Succeeded
        );
        let pending = created(&tx("PENDING_REFUND", 10_000, 1000), &req).unwrap();
        assert_eq!(pending.status, RefundStatus::Pending);
        assert_eq!(
            pending.refund_id, "tx_1:6000",
            "completes when the completed sum grows by ours"
        );
        for odd in [
            tx("APPROVED", 10_000, 0),
            tx("REFUNDED", 10_000, 10),
            tx("CHARGEDBACK", 10_000, 0),
        ] {
            assert!(
                matches!(created(&odd, &req), Err(ProviderError::Unknown { .. })),
                "{odd:?}"
            );
        }
        let mut other = tx("REFUNDED", 5000, 5000);
        other.id = "tx_2".into();
        assert!(matches!(
            created(&other, &req),
            Err(ProviderError::Unknown { .. })
        ));
    }

    #[test]
    fn found_measures_against_the_snapshot() {
        let req = request(5000, Reason::CustomerRequest, None);
        let before = Snapshot {
            refunded: 1000,
            status: "PARTIALLY_REFUNDED".into(),
        };
        let adopted = found(&tx("PARTIALLY_REFUNDED", 10_000, 6000), &req, &before)
            .unwrap()
            .unwrap();
        assert_eq!(adopted.status, RefundStatus::Succeeded);
        assert_eq!(adopted.refund_id, "tx_1:6000");
        assert_eq!(
            found(&tx("PARTIALLY_REFUNDED", 10_000, 5999), &req, &before).unwrap(),
            None,
            "the refund before ours is not ours"
        );
        assert_eq!(
            found(&tx("APPROVED", 10_000, 1000), &req, &before).unwrap(),
            None
        );
        for refunded in [1000, 3000] {
            let pending = found(&tx("PENDING_REFUND", 10_000, refunded), &req, &before)
                .unwrap()
                .unwrap();
            assert_eq!(pending.status, RefundStatus::Pending, "{refunded}");
            assert_eq!(pending.refund_id, "tx_1:6000");
        }
        assert!(matches!(
            found(&tx("CHARGEDBACK", 10_000, 1000), &req, &before),
            Err(ProviderError::Unknown { .. })
        ));
    }

    #[test]
    fn settled_decides_from_the_expected_amount_alone() {
        let req = request(5000, Reason::CustomerRequest, None);
        assert_eq!(
            settled(&tx("PARTIALLY_REFUNDED", 10_000, 6000), &req, 6000)
                .unwrap()
                .status,
            RefundStatus::Succeeded
        );
        assert_eq!(
            settled(&tx("PENDING_REFUND", 10_000, 1000), &req, 6000)
                .unwrap()
                .status,
            RefundStatus::Pending
        );
        let mut cancelled = tx("PARTIALLY_REFUNDED", 10_000, 1000);
        cancelled.status_reason = Some("PROVIDER".into());
        let RefundStatus::Failed { reason } = settled(&cancelled, &req, 6000).unwrap().status
        else {
            panic!("a pending refund that fell back short of its amount failed");
        };
        assert!(
            reason.contains("PARTIALLY_REFUNDED with refunded_amount 1000"),
            "{reason}"
        );
        assert!(reason.contains("status_reason PROVIDER"), "{reason}");
        assert!(matches!(
            settled(&tx("CHARGEDBACK", 10_000, 1000), &req, 6000),
            Err(ProviderError::Transient { .. })
        ));
    }

    #[test]
    fn a_pending_refund_that_falls_back_short_failed_and_one_still_pending_did_not() {
        // PENDING_REFUND after our POST: expected is refunded_amount + ours.
        let req = request(3000, Reason::CustomerRequest, None);
        let accepted = created(&tx("PENDING_REFUND", 10_000, 0), &req).unwrap();
        assert_eq!(accepted.status, RefundStatus::Pending);
        let expected = parse_refund_id(&accepted.refund_id, "tx_1").unwrap();
        assert_eq!(expected, 3000);
        // Slow: still PENDING_REFUND, however long it takes. Never failed.
        assert_eq!(
            settled(&tx("PENDING_REFUND", 10_000, 0), &req, expected)
                .unwrap()
                .status,
            RefundStatus::Pending
        );
        // Failed or cancelled at Rinne: back to APPROVED, nothing refunded.
        let mut fell_back = tx("APPROVED", 10_000, 0);
        fell_back.status_reason = Some("PROVIDER".into());
        let RefundStatus::Failed { reason } = settled(&fell_back, &req, expected).unwrap().status
        else {
            panic!("a pending refund that fell back to APPROVED failed");
        };
        assert!(
            reason.contains("APPROVED with refunded_amount 0 (it would be at least 3000)"),
            "{reason}"
        );
        assert!(reason.contains("status_reason PROVIDER"), "{reason}");
    }

    #[test]
    fn errors_are_classified_safely_for_money() {
        let none = HeaderMap::new();
        let body = br#"{"error":{"code":"VALIDATION_ERROR","message":"Validation error","status":400,"path":"/v1/merchants/m/transactions/tx_1/refund","timestamp":"2025-01-21T10:30:00.000Z","requestId":"req_1","details":{"issues":[{"field":"refund_amount","type":"INVALID_TYPE","message":"Expected integer"}]}}}"#;
        let err = classify(400, &none, body);
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), .. } if c == "VALIDATION_ERROR"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("refund_amount: Expected integer"), "{text}");
        assert!(text.contains("req_1"), "{text}");

        for (status, code) in [
            (401, "AUTHENTICATION_ERROR"),
            (403, "AUTHORIZATION_ERROR"),
            (404, "RESOURCE_NOT_FOUND"),
            (409, "CONFLICT_ERROR"),
        ] {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"no"}}}}"#);
            assert!(
                matches!(classify(status, &none, body.as_bytes()), ProviderError::Permanent { code: Some(c), .. } if c == code),
                "{status}"
            );
        }
        let integration =
            br#"{"error":{"code":"INTEGRATION_ERROR","message":"Provider integration failed"}}"#;
        for (status, body) in [
            (502, &integration[..]),
            (500, b""),
            (503, b"<html>"),
            (408, b""),
        ] {
            assert!(
                matches!(classify(status, &none, body), ProviderError::Unknown { .. }),
                "{status}"
            );
        }

        let mut limited = HeaderMap::new();
        limited.insert("x-ratelimited", "true".parse().unwrap());
        limited.insert("x-ratelimit-limit", "50, 50;w=1".parse().unwrap());
        limited.insert("x-ratelimit-remaining", "0".parse().unwrap());
        limited.insert("x-ratelimit-reset", "1".parse().unwrap());
        let err = classify(429, &limited, b"");
        assert_eq!(
            err,
            ProviderError::Transient {
                why: "rinne 429: rate limited (x-ratelimit-limit 50, 50;w=1)".into(),
                retry_after: Some(Duration::from_secs(1)),
            }
        );
        limited.insert("x-ratelimit-reset", "1767225600".parse().unwrap());
        assert!(matches!(
            classify(429, &limited, b""),
            ProviderError::Transient { retry_after: Some(wait), .. } if wait == MAX_RATE_LIMIT_WAIT
        ));
    }
}
