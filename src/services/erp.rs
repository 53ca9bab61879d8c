//! The ERP client (Omie's `ConsultarPedido`). Placeholder until the client lands.

use reqwest::Client;

use super::{Erp, Order};
use crate::{config::ServiceSettings, providers::ProviderError};

/// Omie's order lookup.
#[derive(Debug, Clone)]
pub struct Omie {
    client: Client,
    base_url: String,
}

impl Omie {
    /// A client for the configured endpoint.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Erp for Omie {
    async fn order(&self, _order_id: &str) -> Result<Option<Order>, ProviderError> {
        let _ = (&self.client, &self.base_url);
        Err(ProviderError::permanent(
            "the ERP client is not available in this build",
        ))
    }
}
