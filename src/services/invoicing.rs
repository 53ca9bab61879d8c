//! The invoicing client (credit notes). Placeholder until the client lands.

use reqwest::Client;

use super::{CreditNote, CreditNoteRequest, Invoicing};
use crate::{config::ServiceSettings, providers::ProviderError};

/// The invoicing service's client.
#[derive(Debug, Clone)]
pub struct InvoicingClient {
    client: Client,
    base_url: String,
}

impl InvoicingClient {
    /// A client for the configured endpoint.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Invoicing for InvoicingClient {
    async fn issue(&self, _request: &CreditNoteRequest) -> Result<CreditNote, ProviderError> {
        let _ = (&self.client, &self.base_url);
        Err(ProviderError::permanent(
            "the invoicing client is not available in this build",
        ))
    }
}
