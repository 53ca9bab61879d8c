//! The sandbox: faithful fakes of the providers' refund APIs, each under its own path prefix
//! (`/stripe`, …), with a ledger of every refund executed (`GET /_sandbox/refunds`) so tests
//! can prove nothing was paid twice. It is the only fake in the project.
//!
//! Like a real provider, a refund that started executing finishes even if the client hangs
//! up: handlers run the execution in their own task.

pub mod account;
mod asaas;
mod clock;
mod erp;
mod faults;
mod fixtures;
mod ids;
mod invoicing;
mod mercadopago;
pub mod money;
pub mod nfe;
mod pix;
mod provider;
mod rate;
mod rinne;
mod stripe;
mod whatsapp;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use faults::{Burst, FaultCounts, FaultOptions, Magic};
pub use fixtures::{
    FixtureCustomer, FixtureInvoice, FixtureOrder, FixturePayment, generated_orders, parse_fixtures,
};
pub use invoicing::IssuedCreditNote;
pub use provider::Provider;
pub use whatsapp::DeliveredMessage;

/// The settled amount of a payment first seen without a fixture: generous, so bulk jobs work.
pub const DEFAULT_SETTLED: u64 = 1_000_000_000_000;
/// How many recorded requests are kept (oldest dropped first).
const JOURNAL_LIMIT: usize = 10_000;

/// One refund the sandbox executed (SPEC §9): `amount` in minor units whatever the provider's
/// own unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The rail.
    pub provider: String,
    /// The original payment.
    pub payment_id: String,
    /// The refund's id at the provider.
    pub refund_id: String,
    /// Minor units.
    pub amount: u64,
    /// The idempotency key (or client-chosen id) the request carried, if any.
    pub idempotency_key: Option<String>,
    /// When it executed (RFC 3339).
    pub created_at: String,
}

/// A request a fake received, for tests that assert the wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, including the provider prefix.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// Body as text.
    pub body: String,
}

/// A payment the fakes know: how much settled and how much went back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Settled amount, minor units.
    pub settled: u64,
    /// Refunded so far, minor units.
    pub refunded: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Why a fake refused before executing anything.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// Over the rate limit: come back after this long.
    RateLimited(Duration),
    /// A transient outage (`--fail-rate`, `_flakyN`).
    Unavailable,
}

/// Why a refund could not execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefundBlocked {
    /// `_declined`.
    Declined,
    /// More than what is left; `left` is what is still refundable.
    TooLarge {
        /// Minor units still refundable.
        left: u64,
    },
}

/// A running sandbox's state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    faults: FaultOptions,
    fault_state: Mutex<faults::FaultState>,
    ledger: Mutex<Vec<LedgerEntry>>,
    payments: Mutex<HashMap<(Provider, String), Payment>>,
    /// Refund calls per payment, for `_flakyN` and `_timeout`.
    calls: Mutex<HashMap<(Provider, String), u32>>,
    journal: Mutex<VecDeque<RecordedRequest>>,
    stripe: Mutex<stripe::StripeState>,
    mercadopago: Mutex<mercadopago::State>,
    asaas: Mutex<asaas::State>,
    pix: Mutex<pix::State>,
    rinne: Mutex<rinne::State>,
    erp: Mutex<erp::State>,
    invoicing: Mutex<invoicing::State>,
    whatsapp: Mutex<whatsapp::State>,
}

/// Locks a mutex, recovering from a poisoned one (a panicking handler must not wedge the fake).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sandbox {
    /// A sandbox with these faults.
    pub fn new(faults: FaultOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                fault_state: Mutex::new(faults::FaultState::new(&faults)),
                faults,
                ledger: Mutex::default(),
                payments: Mutex::default(),
                calls: Mutex::default(),
                journal: Mutex::default(),
                stripe: Mutex::default(),
                mercadopago: Mutex::default(),
                asaas: Mutex::default(),
                pix: Mutex::default(),
                rinne: Mutex::default(),
                erp: Mutex::default(),
                invoicing: Mutex::default(),
                whatsapp: Mutex::default(),
            }),
        }
    }

    /// Every route: the fakes, and the `/_sandbox` inspection endpoints.
    pub fn router(&self) -> Router {
        let providers = Router::new()
            .merge(stripe::routes())
            .merge(mercadopago::routes())
            .merge(asaas::routes())
            .merge(pix::routes())
            .merge(rinne::routes())
            .merge(erp::routes())
            .merge(invoicing::routes())
            .merge(whatsapp::routes())
            .layer(middleware::from_fn_with_state(self.clone(), journal));
        Router::new()
            .merge(providers)
            .route("/_sandbox/refunds", get(ledger))
            .route("/_sandbox/requests", get(requests))
            .route("/_sandbox/payments", post(seed_payment))
            .route("/_sandbox/faults", get(fault_counts).post(start_burst))
            .route("/_sandbox/credit-notes", get(credit_notes))
            .route("/_sandbox/messages", get(messages))
            .route("/_sandbox/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// Every refund executed so far.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.inner.ledger).clone()
    }

    /// Every request recorded so far (the newest 10,000).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.journal).iter().cloned().collect()
    }

    /// Sets a payment's settled amount (tests of the refundable-amount rules).
    pub fn seed_payment(&self, provider: Provider, payment_id: &str, settled: u64, currency: &str) {
        lock(&self.inner.payments).insert(
            (provider, payment_id.to_owned()),
            Payment {
                settled,
                refunded: 0,
                currency: currency.to_owned(),
            },
        );
    }

    /// Files ERP orders in the Omie twin (replacing any with the same id) and seeds each
    /// one's payment in its provider's twin with the settled amount, so refunds of the order
    /// are checked against what it paid. Orders from [`parse_fixtures`] are checked already.
    pub fn load_orders(&self, orders: Vec<FixtureOrder>) {
        for order in &orders {
            let payment = &order.payment;
            self.seed_payment(
                payment.provider,
                &payment.payment_id,
                payment.amount,
                &order.currency,
            );
        }
        erp::load(&mut lock(&self.inner.erp), orders);
    }

    /// Every credit note the invoicing twin issued, oldest first.
    pub fn credit_notes(&self) -> Vec<IssuedCreditNote> {
        lock(&self.inner.invoicing).notes()
    }

    /// Every message the WhatsApp twin delivered, oldest first.
    pub fn messages(&self) -> Vec<DeliveredMessage> {
        lock(&self.inner.whatsapp).messages()
    }

    /// Refuses every provider and service call for `lasting` from now, with 5xx or with 429
    /// (a fault-injection test's outage or rate-limit storm); replaces a burst under way.
    pub fn burst(&self, burst: Burst, lasting: Duration) {
        lock(&self.inner.fault_state).start_burst(burst, lasting);
    }

    /// How many faults were injected so far, by kind.
    pub fn fault_counts(&self) -> FaultCounts {
        lock(&self.inner.fault_state).counts()
    }

    /// Counts a refusal on its way out.
    fn counted(&self, result: Result<(), Refusal>) -> Result<(), Refusal> {
        if let Err(refusal) = &result {
            lock(&self.inner.fault_state).count_refusal(refusal);
        }
        result
    }

    /// The on-demand faults of the services (ERP, invoicing, WhatsApp): bursts, rate limit,
    /// latency and `--fail-rate`, as [`gate`](Self::gate) applies them to refunds; no
    /// payment-id magic.
    pub(crate) async fn gate_service(&self) -> Result<(), Refusal> {
        let result = self.gate_service_uncounted().await;
        self.counted(result)
    }

    async fn gate_service_uncounted(&self) -> Result<(), Refusal> {
        let latency = {
            let mut state = lock(&self.inner.fault_state);
            if let Some(refusal) = state.burst_refusal() {
                return Err(refusal);
            }
            state.admit().map_err(Refusal::RateLimited)?;
            state.latency(&self.inner.faults)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if lock(&self.inner.fault_state).roll(self.inner.faults.fail_rate) {
            return Err(Refusal::Unavailable);
        }
        Ok(())
    }

    /// Whether the answer to a service call that changed something (a note issued, a
    /// message sent) is lost (`--timeout-rate`).
    pub(crate) fn loses_service_answer(&self) -> bool {
        let mut state = lock(&self.inner.fault_state);
        let lost = state.roll(self.inner.faults.timeout_rate);
        if lost {
            state.count_lost_answer();
        }
        lost
    }

    /// The on-demand faults before a refund executes: bursts, rate limit, latency, outages,
    /// and `_flakyN`. Only refund-creating calls count toward `_flakyN`.
    pub(crate) async fn gate(
        &self,
        provider: Provider,
        payment_id: &str,
        creates: bool,
    ) -> Result<(), Refusal> {
        let result = self.gate_uncounted(provider, payment_id, creates).await;
        self.counted(result)
    }

    async fn gate_uncounted(
        &self,
        provider: Provider,
        payment_id: &str,
        creates: bool,
    ) -> Result<(), Refusal> {
        let latency = {
            let mut state = lock(&self.inner.fault_state);
            if let Some(refusal) = state.burst_refusal() {
                return Err(refusal);
            }
            state.admit().map_err(Refusal::RateLimited)?;
            state.latency(&self.inner.faults)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if creates {
            let calls = {
                let mut calls = lock(&self.inner.calls);
                let n = calls.entry((provider, payment_id.to_owned())).or_insert(0);
                *n += 1;
                *n
            };
            if let Magic::Flaky(n) = Magic::of(payment_id)
                && calls <= n
            {
                return Err(Refusal::Unavailable);
            }
        }
        if lock(&self.inner.fault_state).roll(self.inner.faults.fail_rate) {
            return Err(Refusal::Unavailable);
        }
        Ok(())
    }

    /// Executes a refund: checks what is refundable, records it in the ledger. Atomic with
    /// respect to other refunds of the same payment.
    pub(crate) fn execute(
        &self,
        provider: Provider,
        payment_id: &str,
        amount: u64,
        idempotency_key: Option<&str>,
        refund_id: &str,
    ) -> Result<(), RefundBlocked> {
        if Magic::of(payment_id) == Magic::Declined {
            return Err(RefundBlocked::Declined);
        }
        let mut payments = lock(&self.inner.payments);
        let payment = payments
            .entry((provider, payment_id.to_owned()))
            .or_insert_with(|| Payment {
                settled: DEFAULT_SETTLED,
                refunded: 0,
                currency: "BRL".into(),
            });
        let left = payment.settled - payment.refunded;
        if amount > left {
            return Err(RefundBlocked::TooLarge { left });
        }
        payment.refunded += amount;
        lock(&self.inner.ledger).push(LedgerEntry {
            provider: provider.to_string(),
            payment_id: payment_id.to_owned(),
            refund_id: refund_id.to_owned(),
            amount,
            idempotency_key: idempotency_key.map(str::to_owned),
            created_at: crate::clock::now_rfc3339(),
        });
        Ok(())
    }

    /// Takes back a refund that failed after it was accepted (`_pendingfail`): it leaves the
    /// ledger, and its amount is refundable again, as when a provider's refund fails.
    ///
    /// Locks payments before the ledger, in the order `execute` takes them, so a reversal
    /// and a refund of the same payment never wait on each other.
    pub(crate) fn reverse(&self, provider: Provider, refund_id: &str) {
        let mut payments = lock(&self.inner.payments);
        let mut ledger = lock(&self.inner.ledger);
        let Some(index) = ledger
            .iter()
            .position(|e| e.refund_id == refund_id && e.provider == provider.as_str())
        else {
            return;
        };
        let entry = ledger.remove(index);
        if let Some(payment) = payments.get_mut(&(provider, entry.payment_id)) {
            // Saturating: a test may re-seed the payment under a pending refund.
            payment.refunded = payment.refunded.saturating_sub(entry.amount);
        }
    }

    /// The payment as the fake knows it (created on first sight).
    pub(crate) fn payment(&self, provider: Provider, payment_id: &str) -> Payment {
        lock(&self.inner.payments)
            .entry((provider, payment_id.to_owned()))
            .or_insert_with(|| Payment {
                settled: DEFAULT_SETTLED,
                refunded: 0,
                currency: "BRL".into(),
            })
            .clone()
    }

    /// Whether the answer to an executed refund should be lost (`_timeout` on its first call,
    /// or `--timeout-rate`); the caller then holds it back past any client's patience.
    pub(crate) fn loses_answer(&self, provider: Provider, payment_id: &str) -> bool {
        let first_call = lock(&self.inner.calls)
            .get(&(provider, payment_id.to_owned()))
            .is_none_or(|n| *n <= 1);
        let mut state = lock(&self.inner.fault_state);
        let lost = (Magic::of(payment_id) == Magic::Timeout && first_call)
            || state.roll(self.inner.faults.timeout_rate);
        if lost {
            state.count_lost_answer();
        }
        lost
    }

    /// How long a lost answer is held back.
    pub(crate) fn timeout_hold(&self) -> Duration {
        self.inner.faults.timeout_hold
    }
}

/// Records every provider request in the journal.
async fn journal(State(sandbox): State<Sandbox>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    {
        let mut journal = lock(&sandbox.inner.journal);
        if journal.len() >= JOURNAL_LIMIT {
            journal.pop_front();
        }
        journal.push_back(recorded);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn ledger(State(sandbox): State<Sandbox>) -> Json<Vec<LedgerEntry>> {
    Json(sandbox.ledger())
}

async fn requests(State(sandbox): State<Sandbox>) -> Json<Vec<RecordedRequest>> {
    Json(sandbox.requests())
}

async fn credit_notes(State(sandbox): State<Sandbox>) -> Json<Vec<IssuedCreditNote>> {
    Json(sandbox.credit_notes())
}

async fn messages(State(sandbox): State<Sandbox>) -> Json<Vec<DeliveredMessage>> {
    Json(sandbox.messages())
}

async fn fault_counts(State(sandbox): State<Sandbox>) -> Json<FaultCounts> {
    Json(sandbox.fault_counts())
}

/// `POST /_sandbox/faults`: `{"burst": "5xx" | "429", "for_ms": 2000, "retry_after_ms": 1000}`.
#[derive(Deserialize)]
struct BurstRequest {
    burst: String,
    for_ms: u64,
    #[serde(default = "one_second")]
    retry_after_ms: u64,
}

fn one_second() -> u64 {
    1000
}

async fn start_burst(State(sandbox): State<Sandbox>, Json(asked): Json<BurstRequest>) -> Response {
    let burst = match asked.burst.as_str() {
        "5xx" => Burst::ServerErrors,
        "429" => Burst::RateLimited {
            retry_after: Duration::from_millis(asked.retry_after_ms),
        },
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("burst must be \"5xx\" or \"429\", not {other:?}"),
            )
                .into_response();
        }
    };
    sandbox.burst(burst, Duration::from_millis(asked.for_ms));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct SeedPayment {
    provider: String,
    payment_id: String,
    amount: u64,
    #[serde(default = "brl")]
    currency: String,
}

fn brl() -> String {
    "BRL".into()
}

async fn seed_payment(State(sandbox): State<Sandbox>, Json(seed): Json<SeedPayment>) -> Response {
    match Provider::parse(&seed.provider) {
        Ok(provider) => {
            sandbox.seed_payment(provider, &seed.payment_id, seed.amount, &seed.currency);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(rule) => (StatusCode::BAD_REQUEST, format!("provider {rule}")).into_response(),
    }
}
