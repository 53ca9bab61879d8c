//! Payment providers: one trait, one connector per rail.
//!
//! A connector owns its HTTP plumbing and its wire types, and classifies every failure once,
//! in its own file, into [`ProviderError`]: `Transient` (nothing happened, send again),
//! `Permanent` (no retry can fix it) or `Unknown` (it may have happened: look before sending
//! again). Provider statuses become a [`RefundStatus`] there too; nothing outside a connector
//! compares provider strings. Adding a provider touches no core code beyond [`Providers`].

pub mod asaas;
pub(crate) mod error;
pub mod guard;
pub mod mercadopago;
pub mod pause;
pub mod pix;
pub mod rinne;
pub mod stripe;

use std::{collections::HashMap, fmt, sync::Arc};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use self::error::ProviderError;
use crate::{
    config::Settings,
    job::{Amount, Currency, IdempotencyKey, ProviderName, Reason, Token},
    metrics::Metrics,
};

/// What the worker asks a provider to do: refund `amount` of `payment_id`, once, under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRequest {
    /// Sent as the provider's idempotency key (or mapped into the refund id it lets us choose).
    pub key: IdempotencyKey,
    /// The provider's id of the original payment.
    pub payment_id: Token,
    /// How much to refund.
    pub amount: Amount,
    /// The currency of `amount`.
    pub currency: Currency,
    /// Why.
    pub reason: Reason,
    /// Free text, passed on where the provider has a field for it.
    pub description: Option<String>,
    /// Our job id, for logs only: never sent, because a re-publish changes it and one key must
    /// always carry the same request body (SPEC §3a).
    pub job_id: String,
}

/// A provider's refund status, in our words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RefundStatus {
    /// Accepted; the money has not settled yet.
    Pending,
    /// Done: the money is on its way back.
    Succeeded,
    /// The provider gave up on it; `reason` is the provider's own.
    Failed {
        /// The provider's reason, for the dead letter.
        reason: String,
    },
}

/// A refund as a provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRefund {
    /// The provider's id of the refund (`re_…` on Stripe).
    pub refund_id: String,
    /// Where it stands.
    pub status: RefundStatus,
    /// The amount the provider says it refunded, in minor units.
    pub amount: u64,
}

/// The last check before a refund is sent, run by [`RefundProvider::refund_checked`] once the
/// call may go (after any wait for a rate token or a call slot): the pipeline makes sure its
/// claim on the key is still its own and lasts the call out. Its error stops the send.
pub type BeforeSend<'a> = Box<dyn FnOnce() -> BoxFuture<'a, Result<(), ProviderError>> + Send + 'a>;

/// One payment rail's refund API.
#[async_trait::async_trait]
pub trait RefundProvider: Send + Sync + fmt::Debug {
    /// Which rail this is.
    fn name(&self) -> ProviderName;

    /// Asks for the refund, sending `request.key` as the idempotency key (or deriving from it
    /// the refund id the provider lets us choose).
    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError>;

    /// [`refund`](Self::refund), sent only if `before_send` allows it when nothing stands
    /// between the call and the provider any more. A guard's waits come before the check, so
    /// no wait can eat into what the check made sure of. Default: check, then send.
    async fn refund_checked(
        &self,
        request: &RefundRequest,
        before_send: BeforeSend<'_>,
    ) -> Result<ProviderRefund, ProviderError> {
        before_send().await?;
        self.refund(request).await
    }

    /// Whether this provider takes a [`snapshot`](Self::snapshot) before each send.
    fn needs_snapshot(&self) -> bool {
        false
    }

    /// For providers that cannot be asked about a refund by our key: what the payment looks
    /// like just before a send (its refunds, its refunded amount), in the connector's own
    /// words. The pipeline stores it durably in the claim *before* sending and hands it back
    /// to [`find`](Self::find) after an unknown outcome. Default: nothing to record.
    async fn snapshot(&self, _request: &RefundRequest) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    /// Looks for a refund an earlier attempt of this request made (after an unknown outcome
    /// or a takeover): by idempotency key, by the refund id we chose, or by reading the
    /// payment's refunds against `snapshot`, the payment as it was before the first uncertain
    /// send. `Ok(None)` must mean "certainly not there", so a resend is safe.
    async fn find(
        &self,
        request: &RefundRequest,
        snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError>;

    /// Reads the current status of a refund this request created (status sync).
    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError>;
}

/// The connectors this worker can use, by rail.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    /// One connector per configured rail.
    by_name: HashMap<ProviderName, Arc<dyn RefundProvider>>,
}

impl Providers {
    /// Builds every connector, sharing one HTTP connection pool, each behind its guard
    /// (limits and circuit breaker from its settings, and the ops pauses of `pauses`).
    pub fn from_settings(
        settings: &Settings,
        metrics: &Metrics,
        client: reqwest::Client,
        pauses: &Arc<pause::PauseBoard>,
    ) -> Self {
        let p = &settings.providers;
        let connectors: [Arc<dyn RefundProvider>; 5] = [
            Arc::new(stripe::Stripe::new(client.clone(), &p.stripe)),
            Arc::new(mercadopago::MercadoPago::new(
                client.clone(),
                &p.mercadopago,
            )),
            Arc::new(asaas::Asaas::new(client.clone(), &p.asaas)),
            Arc::new(pix::Pix::new(client.clone(), &p.pix)),
            Arc::new(rinne::Rinne::new(client, &p.rinne)),
        ];
        let mut providers = Self::default();
        for connector in connectors {
            let name = connector.name();
            let own = p.get(name);
            let limits = guard::Limits {
                concurrency: own.concurrency,
                rate_limit: own.rate_limit,
                max_rate_wait: p.max_throttle_wait,
                circuit_failures: p.circuit_failures,
                circuit_open_for: p.circuit_open_for,
                call_timeout: p.timeout,
            };
            let gauge = metrics.circuit_open.with_label_values(&[name.as_str()]);
            let throttled = metrics.throttled.with_label_values(&[name.as_str()]);
            let waits = metrics.throttle_wait.with_label_values(&[name.as_str()]);
            providers.insert(Arc::new(
                guard::Guarded::new(connector, limits, gauge)
                    .paused_by(Arc::clone(pauses))
                    .throttle_metrics(throttled, waits),
            ));
        }
        providers
    }

    /// Adds or replaces a connector.
    pub fn insert(&mut self, provider: Arc<dyn RefundProvider>) {
        self.by_name.insert(provider.name(), provider);
    }

    /// The connector for a rail, if this worker has one.
    pub fn get(&self, name: ProviderName) -> Option<&Arc<dyn RefundProvider>> {
        self.by_name.get(&name)
    }
}
