//! Rinne connector (the acquirer behind Celcoin):
//! `POST {base}/core/v1/merchants/{merchant}/transactions/{tx}/refund`, JSON, `x-api-key`,
//! integer centavos, BRL only.
//!
//! Rinne keeps **no refund idempotency** and answers with the transaction, not a refund. So
//! before every send, [`snapshot`](RefundProvider::snapshot) reads the transaction
//! (`GET …/transactions/{tx}`) and the pipeline stores its `refunded_amount` durably; after an
//! unknown outcome, [`find`](RefundProvider::find) reads it again and adopts our refund if the
//! refunded amount grew by ours (or a refund is in flight, `PENDING_REFUND`, which Rinne
//! retries itself and must never be sent again). A refund is named
//! `{tx}:{expected refunded_amount}`, so its status is decided from the transaction alone.
//!
//! Known limits (see `docs/providers/rinne.md`):
//! - Two jobs with different keys refunding one transaction at the same time blur the
//!   arithmetic: another job's refund can be taken for ours. The error is always towards
//!   *not* paying: a job may be recorded as refunded on the strength of someone else's refund
//!   (the customer is short by that job's amount), never refunded twice by this arithmetic.
//! - A send whose answer was lost and that Rinne is *still executing* when `find` reads the
//!   transaction looks absent; nothing in Rinne's API shows a refund that has not reached
//!   `PENDING_REFUND` or the refunded amount yet.

mod wire;

use reqwest::Client;

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest};
use crate::http;
use crate::{
    config::{ProviderSettings, Secret},
    job::{Currency, ProviderName},
};

/// The Rinne connector.
#[derive(Debug, Clone)]
pub struct Rinne {
    /// The shared connection pool.
    client: Client,
    /// `https://api.rinne.com.br` (the API lives under `/core`), or a sandbox.
    base_url: String,
    /// The company API key, sent as `x-api-key`.
    api_key: Secret,
    /// The merchant every path names, or why the configured one is unusable: a job fails on
    /// it with that hint rather than the whole worker refusing to start for one rail.
    merchant: Result<String, String>,
}

impl Rinne {
    /// A connector for the configured endpoint, key and merchant.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        let merchant = match settings.merchant_id.as_deref() {
            None => Err(
                "rinne: no merchant id configured: set providers.rinne.merchant_id \
                 (REFUND_PROVIDERS__RINNE__MERCHANT_ID) to the merchant whose transactions \
                 are refunded"
                    .to_owned(),
            ),
            Some(id) if !wire::is_path_segment(id) => Err(format!(
                "rinne: providers.rinne.merchant_id {:?} is not a merchant id (expected \
                 characters of [A-Za-z0-9_.:-]); fix REFUND_PROVIDERS__RINNE__MERCHANT_ID",
                crate::job::truncate(id, 40)
            )),
            Some(id) => Ok(id.to_owned()),
        };
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
            merchant,
        }
    }

    /// `{base}/core/v1/merchants/{merchant}/transactions/{tx}`.
    fn transaction_url(&self, request: &RefundRequest) -> Result<String, ProviderError> {
        let merchant = self.merchant.as_deref().map_err(ProviderError::permanent)?;
        let tx = request.payment_id.as_str();
        if !wire::is_path_segment(tx) {
            return Err(ProviderError::permanent(format!(
                "rinne: {tx:?} is not a transaction id"
            )));
        }
        Ok(format!(
            "{}/core/v1/merchants/{merchant}/transactions/{tx}",
            self.base_url
        ))
    }

    /// Reads the transaction. Reading changes nothing, so a failure that would leave a
    /// refund call unknown is only transient here.
    async fn transaction(
        &self,
        request: &RefundRequest,
    ) -> Result<wire::Transaction, ProviderError> {
        let lookup = self
            .client
            .get(self.transaction_url(request)?)
            .header("x-api-key", self.api_key.expose())
            .header("accept", "application/json");
        http::read_json("rinne: transaction lookup", lookup, wire::classify).await
    }
}

/// Rinne settles in reais only.
fn require_brl(request: &RefundRequest) -> Result<(), ProviderError> {
    if request.currency == Currency::BRL {
        return Ok(());
    }
    Err(ProviderError::Permanent {
        code: None,
        why: format!(
            "rinne refunds only BRL transactions; this job is in {}",
            request.currency.code()
        ),
    })
}

#[async_trait::async_trait]
impl RefundProvider for Rinne {
    fn name(&self) -> ProviderName {
        ProviderName::Rinne
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        require_brl(request)?;
        let response = self
            .client
            .post(format!("{}/refund", self.transaction_url(request)?))
            .header("x-api-key", self.api_key.expose())
            .header("accept", "application/json")
            .json(&wire::body(request))
            .send()
            .await
            .map_err(|e| http::transport_error("rinne", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| http::transport_error("rinne", e))?;
        if !status.is_success() {
            let error = wire::classify(status.as_u16(), &headers, &body);
            // Rinne answers 409 to a send while a refund is in flight on the transaction, and
            // that refund may be ours (an earlier send that became visible only after the
            // look-up said "not there"): then the outcome is unknown, and the next attempt's
            // look-up adopts it or waits for it. Anything else stays a refusal.
            if status.as_u16() != 409 {
                return Err(error);
            }
            return match self.transaction(request).await {
                Ok(tx) if tx.status != "PENDING_REFUND" => Err(error),
                Ok(_) => Err(ProviderError::unknown(format!(
                    "{error}; a refund is in flight on the transaction and may be this job's"
                ))),
                Err(lookup) => Err(ProviderError::unknown(format!(
                    "{error}; and the transaction could not be read ({lookup}): a refund may be in flight"
                ))),
            };
        }
        let tx: wire::Transaction = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::unknown(format!(
                "rinne: unreadable transaction in a {status} answer ({e}); the refund may exist: {}",
                http::snippet(&body)
            ))
        })?;
        wire::created(&tx, request)
    }

    fn needs_snapshot(&self) -> bool {
        true
    }

    async fn snapshot(&self, request: &RefundRequest) -> Result<Option<String>, ProviderError> {
        require_brl(request)?;
        let tx = self.transaction(request).await?;
        Ok(Some(wire::pre_send(&tx, request)?.encode()))
    }

    async fn find(
        &self,
        request: &RefundRequest,
        snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        // The pipeline stores a snapshot before every send to a provider that takes one
        // (from a clean record, and after an uncertain record reconciles to "not there"), so
        // a record without one never sent anything: "not there" is the truth.
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let snapshot = wire::Snapshot::parse(snapshot).ok_or_else(|| {
            ProviderError::permanent(format!(
                "rinne: cannot reconcile {}: unreadable pre-send snapshot {:?}",
                request.key,
                crate::job::truncate(snapshot, 60)
            ))
        })?;
        let tx = self.transaction(request).await?;
        wire::found(&tx, request, &snapshot)
    }

    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        let expected =
            wire::parse_refund_id(refund_id, request.payment_id.as_str()).ok_or_else(|| {
                ProviderError::permanent(format!(
                    "rinne: {refund_id:?} is not a refund id of transaction {}",
                    request.payment_id
                ))
            })?;
        let tx = self.transaction(request).await?;
        wire::settled(&tx, request, expected)
    }
}
