//! Stripe connector: `POST /v1/refunds`, form-encoded, `Authorization: Bearer`, with the
//! job's idempotency key as `Idempotency-Key` (Stripe replays the first answer for a key).
//!
//! Unknown outcomes are reconciled by listing the payment's refunds and matching the
//! `metadata[idempotency_key]` we attach to every refund, which still works after Stripe
//! prunes idempotency keys (24 hours).

mod wire;

use reqwest::{Client, StatusCode};

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest};
use crate::http;
use crate::{
    config::{ProviderSettings, Secret},
    job::ProviderName,
};

/// How many pages of a payment's refunds `find` reads before giving up.
const MAX_LIST_PAGES: usize = 20;

/// The Stripe connector.
#[derive(Debug, Clone)]
pub struct Stripe {
    /// The shared connection pool.
    client: Client,
    /// `https://api.stripe.com`, or a sandbox.
    base_url: String,
    /// The secret key (`sk_live_…`, `sk_test_…`).
    api_key: Secret,
}

impl Stripe {
    /// A connector for the configured endpoint and key.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }

    /// Sends a read-only request; any failure is transient because reading changes nothing.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ProviderError> {
        let request = self
            .client
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(self.api_key.expose())
            .query(query);
        http::read_json("stripe: lookup", request, wire::classify).await
    }
}

#[async_trait::async_trait]
impl RefundProvider for Stripe {
    fn name(&self) -> ProviderName {
        ProviderName::Stripe
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        let response = self
            .client
            .post(format!("{}/v1/refunds", self.base_url))
            .bearer_auth(self.api_key.expose())
            .header("Idempotency-Key", request.key.as_str())
            .form(&wire::form(request))
            .send()
            .await
            .map_err(|e| http::transport_error("stripe", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| http::transport_error("stripe", e))?;
        if status != StatusCode::OK {
            return Err(wire::classify(status.as_u16(), &headers, &body));
        }
        let refund: wire::RefundObject = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::unknown(format!(
                "stripe: unreadable refund in a 200 answer ({e}); the refund may exist: {}",
                http::snippet(&body)
            ))
        })?;
        Ok(refund.into_refund())
    }

    async fn find(
        &self,
        request: &RefundRequest,
        _snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let param = wire::payment_param(request.payment_id.as_str());
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query = vec![(param, request.payment_id.as_str()), ("limit", "100")];
            if let Some(last) = &after {
                query.push(("starting_after", last));
            }
            let page: wire::RefundList = self.get("/v1/refunds", &query).await?;
            after = page.data.last().map(|r| r.id.clone());
            if let Some(found) = page.data.into_iter().find(|r| {
                r.metadata.get("idempotency_key").map(String::as_str) == Some(request.key.as_str())
            }) {
                return Ok(Some(found.into_refund()));
            }
            if !page.has_more || after.is_none() {
                return Ok(None);
            }
        }
        Err(ProviderError::transient(format!(
            "stripe: payment {} has more than {} refunds; cannot reconcile by listing",
            request.payment_id,
            MAX_LIST_PAGES * 100
        )))
    }

    async fn status(
        &self,
        _request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        let refund: wire::RefundObject = self.get(&format!("/v1/refunds/{refund_id}"), &[]).await?;
        Ok(refund.into_refund())
    }
}
