//! The WhatsApp client (Z-API `send-text`). Placeholder until the client lands.

use reqwest::Client;

use super::{Message, Notifier, SentMessage};
use crate::{config::ServiceSettings, providers::ProviderError};

/// Z-API's client.
#[derive(Debug, Clone)]
pub struct ZApi {
    client: Client,
    base_url: String,
}

impl ZApi {
    /// A client for the configured instance.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Notifier for ZApi {
    async fn send(&self, _message: &Message) -> Result<SentMessage, ProviderError> {
        let _ = (&self.client, &self.base_url);
        Err(ProviderError::permanent(
            "the WhatsApp client is not available in this build",
        ))
    }
}
