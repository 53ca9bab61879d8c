//! The services a governed refund uses besides its payment provider: the ERP that verifies
//! the order and names its original payment (Omie), the invoicing service that issues the
//! credit note, and WhatsApp (Z-API) to tell the customer.
//!
//! Each client classifies its failures like a provider connector does ([`ProviderError`]):
//! transient, permanent, or unknown outcome. The order's payment, never the job, decides the
//! rail and the destination of the refund.

pub mod erp;
pub mod invoicing;
pub mod whatsapp;

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    config::Settings,
    job::{Amount, Currency, IdempotencyKey, ProviderName, Reason, Token},
    providers::ProviderError,
};

/// An order as the ERP reports it, in our words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The ERP's order id (what jobs name as `order_id`).
    pub order_id: String,
    /// The order's total, in minor units.
    pub total: u64,
    /// Its currency.
    pub currency: Currency,
    /// Whether its original payment settled (only a settled payment can be refunded).
    pub settled: bool,
    /// The payment the order was paid with: the refund goes back on it.
    pub payment: OrderPayment,
    /// Who bought.
    pub customer: Customer,
    /// The order's invoice (NF-e), which a credit note references.
    pub invoice: Option<Invoice>,
}

/// The original payment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPayment {
    /// The rail it settled on.
    pub provider: ProviderName,
    /// The provider's payment id (a Pix EndToEndId, a Stripe charge, …).
    pub payment_id: Token,
    /// What it settled, in minor units.
    pub amount: u64,
    /// For Pix: the payer's key, where the money goes back.
    pub pix_key: Option<String>,
    /// For cards: the last four digits.
    pub card_last4: Option<String>,
}

/// The buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Name, for the message and the credit note.
    pub name: String,
    /// Phone in E.164 (`+5511999990000`), for WhatsApp.
    pub phone: Option<String>,
}

/// An invoice (NF-e).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Its number.
    pub number: String,
    /// Its 44-digit access key (chave de acesso), when known.
    pub access_key: Option<String>,
}

/// Looks orders up.
#[async_trait::async_trait]
pub trait Erp: Send + Sync + fmt::Debug {
    /// The order, `Ok(None)` when the ERP does not know it.
    async fn order(&self, order_id: &str) -> Result<Option<Order>, ProviderError>;
}

/// What a credit note is issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditNoteRequest {
    /// The job's idempotency key: the service issues at most one note per key.
    pub key: IdempotencyKey,
    /// The order refunded.
    pub order_id: String,
    /// The invoice the note corrects.
    pub invoice: Option<Invoice>,
    /// How much was refunded.
    pub amount: Amount,
    /// In which currency.
    pub currency: Currency,
    /// The provider's refund id the note is sealed to.
    pub refund_id: String,
    /// The rail.
    pub provider: ProviderName,
    /// Why.
    pub reason: Reason,
    /// Who gets it.
    pub customer_name: String,
}

/// An issued credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNote {
    /// Its number.
    pub number: String,
    /// Its access key, when the service gives one.
    pub access_key: Option<String>,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
}

/// Issues credit notes.
#[async_trait::async_trait]
pub trait Invoicing: Send + Sync + fmt::Debug {
    /// Issues the note for `request` (or returns the one already issued under its key).
    async fn issue(&self, request: &CreditNoteRequest) -> Result<CreditNote, ProviderError>;
}

/// A message to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The job's idempotency key (for logs; WhatsApp has no idempotency).
    pub key: IdempotencyKey,
    /// E.164 phone.
    pub phone: String,
    /// The text.
    pub text: String,
}

/// A message the service accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    /// The service's message id.
    pub message_id: String,
}

/// Sends messages.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Sends `message` once. Never retried blindly: a message must reach the customer at most
    /// once, so the caller records the attempt first.
    async fn send(&self, message: &Message) -> Result<SentMessage, ProviderError>;
}

/// The services, as the pipeline uses them.
#[derive(Debug, Clone)]
pub struct Services {
    /// Orders.
    pub erp: Arc<dyn Erp>,
    /// Credit notes.
    pub invoicing: Arc<dyn Invoicing>,
    /// Customer messages.
    pub notifier: Arc<dyn Notifier>,
}

impl Services {
    /// The configured clients, sharing the HTTP pool.
    pub fn from_settings(settings: &Settings, client: reqwest::Client) -> Self {
        let s = &settings.services;
        Self {
            erp: Arc::new(erp::Omie::new(client.clone(), &s.erp)),
            invoicing: Arc::new(invoicing::InvoicingClient::new(
                client.clone(),
                &s.invoicing,
            )),
            notifier: Arc::new(whatsapp::ZApi::new(client, &s.whatsapp)),
        }
    }
}
