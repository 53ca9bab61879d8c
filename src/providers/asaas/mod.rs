//! Asaas connector: `POST /v3/payments/{id}/refund` with `access_token` (not Bearer), a JSON
//! body whose `value` is a number in reais, and the payment object as the answer.
//!
//! Asaas has no idempotency key and its refunds have no id. Every refund we send therefore
//! carries our idempotency key in its `description` (` [ref:<key>]`, see `wire`), and we name
//! it `<payment_id>:<key>`. After an unknown outcome, `find` reads the payment
//! (`GET /v3/payments/{id}`) and adopts the refund that carries our marker; only a payment
//! read that shows no such refund lets the pipeline send again. A 2xx answer to a refund call
//! is never treated as unknown: a resend after it would pay twice, since nothing at Asaas
//! would stop it.

mod wire;

use reqwest::{Client, header::HeaderValue};
use tracing::warn;

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest, RefundStatus};
use crate::http;
use crate::{
    config::{ProviderSettings, Secret},
    job::{Currency, ProviderName, Token},
};

/// A refund Asaas accepted (2xx) that its answer does not show: pending, to be confirmed by
/// the status sync.
fn accepted(request: &RefundRequest) -> ProviderRefund {
    ProviderRefund {
        refund_id: wire::refund_id(request),
        status: RefundStatus::Pending,
        amount: request.amount.minor(),
    }
}

/// The Asaas connector.
#[derive(Debug, Clone)]
pub struct Asaas {
    /// The shared connection pool (it sends our `User-Agent`, which Asaas requires).
    client: Client,
    /// `https://api.asaas.com` (production), `https://api-sandbox.asaas.com`, or our sandbox.
    base_url: String,
    /// The API key (`$aact_prod_…`, `$aact_hmlg_…`), sent as the `access_token` header.
    api_key: Secret,
}

impl Asaas {
    /// A connector for the configured endpoint and key.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }

    /// `{base}/v3/payments/{id}`. A `.` or `..` id would be folded into the path by URL
    /// normalisation and address another resource, so it is refused.
    fn payment_url(&self, payment_id: &Token) -> Result<String, ProviderError> {
        match payment_id.as_str() {
            "." | ".." => Err(ProviderError::Permanent {
                code: Some("invalid_payment_id".into()),
                why: format!("asaas: {payment_id:?} is not a payment id"),
            }),
            id => Ok(format!("{}/v3/payments/{id}", self.base_url)),
        }
    }

    /// The `access_token` header value, marked sensitive so it never shows in debug output.
    fn access_token(&self) -> Result<HeaderValue, ProviderError> {
        let mut value = HeaderValue::from_str(self.api_key.expose()).map_err(|_| {
            ProviderError::permanent(
                "asaas: the configured api_key is not a valid HTTP header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Reads a payment with its refunds. Reading changes nothing, so every failure is
    /// transient, except the answers no retry fixes (401, 403, 404).
    async fn read_payment(&self, request: &RefundRequest) -> Result<wire::Payment, ProviderError> {
        let lookup = self
            .client
            .get(self.payment_url(&request.payment_id)?)
            .header("access_token", self.access_token()?);
        http::read_json(
            &format!("asaas: payment {} lookup", request.payment_id),
            lookup,
            wire::classify,
        )
        .await
    }
}

#[async_trait::async_trait]
impl RefundProvider for Asaas {
    fn name(&self) -> ProviderName {
        ProviderName::Asaas
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        if request.currency != Currency::BRL {
            return Err(ProviderError::Permanent {
                code: Some("unsupported_currency".into()),
                why: format!(
                    "asaas refunds only BRL; this job is in {}",
                    request.currency.code()
                ),
            });
        }
        let response = self
            .client
            .post(format!("{}/refund", self.payment_url(&request.payment_id)?))
            .header("access_token", self.access_token()?)
            .json(&wire::body(request))
            .send()
            .await
            .map_err(|e| http::transport_error("asaas", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| http::transport_error("asaas", e))?;
        if !status.is_success() {
            return Err(wire::classify(status.as_u16(), &headers, &body));
        }
        let payment: wire::Payment = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::unknown(format!(
                "asaas: unreadable payment in a {status} answer to a refund ({e}); the refund may exist: {}",
                http::snippet(&body)
            ))
        })?;
        match payment.refund_for(request) {
            Ok(Some(refund)) => Ok(refund),
            // Asaas said yes, so a refund exists, but this answer does not show it as ours
            // (not listed yet, or listed with another amount). An error here would free the
            // job for a resend that nothing at Asaas would stop; pending makes the status
            // sync look for it instead, and a sync never sends.
            Ok(None) => {
                warn!(job_id = %request.job_id, key = %request.key, %status,
                      "asaas accepted the refund but its answer lists no refund with our marker; syncing");
                Ok(accepted(request))
            }
            Err(error) => {
                warn!(job_id = %request.job_id, key = %request.key, %status, %error,
                      "asaas accepted the refund but its answer does not match the request; syncing");
                Ok(accepted(request))
            }
        }
    }

    async fn find(
        &self,
        request: &RefundRequest,
        _snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        self.read_payment(request).await?.refund_for(request)
    }

    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        match self.read_payment(request).await?.refund_for(request)? {
            Some(refund) => Ok(refund),
            None => Err(ProviderError::transient(format!(
                "asaas: refund {refund_id} is not listed on payment {} yet",
                request.payment_id
            ))),
        }
    }
}
