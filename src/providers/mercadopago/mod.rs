//! Mercado Pago connector: `POST /v1/payments/{id}/refunds` with a JSON body
//! (`{"amount":186.00}`, reais as a JSON number), `Authorization: Bearer <access token>` and
//! the job's idempotency key as the mandatory `X-Idempotency-Key` (Mercado Pago processes
//! the first request under a key and answers duplicates with the same result).
//!
//! Mercado Pago does not document how long it keeps idempotency keys, and a refund carries
//! nothing of ours, so unknown outcomes are reconciled without the key: before every send the
//! pipeline stores a [`snapshot`](RefundProvider::snapshot) of the payment's refund ids, and
//! [`find`](RefundProvider::find) lists the refunds again and adopts the one new refund of our
//! exact amount. It never guesses between two.

mod wire;

use reqwest::{Client, StatusCode};

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest};
use crate::http;
use crate::{
    config::{ProviderSettings, Secret},
    job::ProviderName,
};

/// The Mercado Pago connector.
#[derive(Debug, Clone)]
pub struct MercadoPago {
    /// The shared connection pool.
    client: Client,
    /// `https://api.mercadopago.com`, or a sandbox.
    base_url: String,
    /// The access token (`APP_USR-…`, `TEST-…`).
    api_key: Secret,
}

impl MercadoPago {
    /// A connector for the configured endpoint and access token.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }

    /// Sends a read-only request; a failure to read is transient because reading changes
    /// nothing (a refused read stays what it is: a 404 or a 401 is permanent).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ProviderError> {
        let request = self
            .client
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(self.api_key.expose());
        http::read_json("mercadopago: lookup", request, wire::classify).await
    }

    /// Every refund of the payment (`GET /v1/payments/{id}/refunds` answers one array).
    async fn refunds(
        &self,
        request: &RefundRequest,
    ) -> Result<Vec<wire::RefundObject>, ProviderError> {
        wire::path_segment(request.payment_id.as_str())?;
        self.get(&format!("/v1/payments/{}/refunds", request.payment_id))
            .await
    }
}

#[async_trait::async_trait]
impl RefundProvider for MercadoPago {
    fn name(&self) -> ProviderName {
        ProviderName::Mercadopago
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        wire::check(request)?;
        let response = self
            .client
            .post(format!(
                "{}/v1/payments/{}/refunds",
                self.base_url, request.payment_id
            ))
            .bearer_auth(self.api_key.expose())
            .header("Content-Type", "application/json")
            .header("X-Idempotency-Key", request.key.as_str())
            .body(wire::body(request))
            .send()
            .await
            .map_err(|e| http::transport_error("mercadopago", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| http::transport_error("mercadopago", e))?;
        // 201 as documented; older documentation shows 200 for the same call.
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(wire::classify(status.as_u16(), &headers, &body));
        }
        serde_json::from_slice::<wire::RefundObject>(&body)
            .map_err(|e| e.to_string())
            .and_then(wire::RefundObject::into_refund)
            .map_err(|e| {
                ProviderError::unknown(format!(
                    "mercadopago: unreadable refund in a {status} answer ({e}); the refund may exist: {}",
                    http::snippet(&body)
                ))
            })
    }

    /// The ids of the payment's refunds just before a send. Also refuses, before anything is
    /// sent, a job this connector will not send.
    fn needs_snapshot(&self) -> bool {
        true
    }

    async fn snapshot(&self, request: &RefundRequest) -> Result<Option<String>, ProviderError> {
        wire::check(request)?;
        let refunds = self.refunds(request).await?;
        Ok(Some(wire::Snapshot::of(&refunds)))
    }

    async fn find(
        &self,
        request: &RefundRequest,
        snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let Some(snapshot) = snapshot else {
            // No snapshot means no send: the pipeline stores this connector's snapshot (which
            // is never empty) durably in the claim before every send, and keeps it while the
            // record is uncertain. An uncertain claim without one comes from an attempt that
            // stopped before sending (a worker that died between claim and snapshot, a failed
            // snapshot read or write), so a send under the same key is safe.
            return Ok(None);
        };
        let snapshot = wire::Snapshot::parse(snapshot)?;
        let refunds = self.refunds(request).await?;
        let found = wire::reconcile(request, &snapshot, refunds)?;
        if found.is_none() {
            tracing::debug!(job_id = %request.job_id, key = %request.key,
                "mercadopago: no new refund of this amount since the pre-send snapshot");
        }
        Ok(found)
    }

    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        wire::path_segment(request.payment_id.as_str())?;
        wire::path_segment(refund_id)?;
        let refund: wire::RefundObject = self
            .get(&format!(
                "/v1/payments/{}/refunds/{refund_id}",
                request.payment_id
            ))
            .await?;
        refund
            .into_refund()
            .map_err(|e| ProviderError::transient(format!("mercadopago: {e}")))
    }
}
