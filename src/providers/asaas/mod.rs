//! Asaas connector. Placeholder until its connector lands: every refund is refused
//! permanently, so a job for this rail is dead-lettered, never silently dropped.

use reqwest::Client;

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest};
use crate::{
    config::{ProviderSettings, Secret},
    job::ProviderName,
};

/// The Asaas connector.
#[derive(Debug, Clone)]
pub struct Asaas {
    /// The shared connection pool.
    client: Client,
    /// The API's base URL.
    base_url: String,
    /// The credential.
    api_key: Secret,
}

impl Asaas {
    /// A connector for the configured endpoint and credential.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }
}

#[async_trait::async_trait]
impl RefundProvider for Asaas {
    fn name(&self) -> ProviderName {
        ProviderName::Asaas
    }

    async fn refund(&self, _request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        let _ = (&self.client, &self.base_url, &self.api_key);
        Err(ProviderError::permanent(
            "the asaas connector is not available in this build",
        ))
    }

    async fn find(
        &self,
        _request: &RefundRequest,
        _snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        Ok(None)
    }

    async fn status(
        &self,
        _request: &RefundRequest,
        _refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        Err(ProviderError::permanent(
            "the asaas connector is not available in this build",
        ))
    }
}
