//! The mandate policy: every check of a refund against the spend mandate it names, then an
//! atomic reservation from the mandate's daily budget (stored by `store::mandates`).
//!
//! Invariants: a mandate is obeyed only if one of `[mandates] verify_keys` signed its whole
//! stored state (nothing stored is trusted otherwise), and never at a version older than one
//! seen; nothing is reserved unless every check passed, nor while the day's counter reads
//! less than the spend sealed in that day's receipts; a job key reserves at most once, so a
//! retry never spends twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use time::OffsetDateTime;

use crate::{
    governance::mandate::{Ask, Denial, Reservation},
    job::{IdempotencyKey, JobDate, Token},
    signing::VerifyKeys,
    store::{MandateStore, ReceiptChain, ReserveAnswer, StoreError},
};

/// How many times `authorize` reads a mandate again when it was re-granted mid-way.
const CHANGED_RETRIES: usize = 3;

/// Why `authorize` did not return a reservation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MandateError {
    /// The mandate refuses this refund: dead-letter it (class `mandate`); never retry.
    #[error("{0}")]
    Denied(Denial),
    /// Redis could not answer: retry later, nothing was reserved.
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for MandateError {
    fn from(e: StoreError) -> Self {
        MandateError::Store(e)
    }
}

impl From<Denial> for MandateError {
    fn from(d: Denial) -> Self {
        MandateError::Denied(d)
    }
}

/// The mandate policy: every check, then an atomic reservation.
#[derive(Clone, Debug)]
pub struct MandatePolicy {
    /// Where mandates and budgets live.
    store: MandateStore,
    /// `[mandates] verify_keys`: only mandates one of them signed are obeyed.
    keys: VerifyKeys,
    /// `[mandates] required`: refuse jobs that name no mandate.
    required: bool,
    /// The sealed receipts, whose per-day spend under each mandate is the least its counter
    /// can hold.
    receipts: Option<ReceiptChain>,
    /// What this process has seen: no older version is accepted after a newer one, and no
    /// sealed spend goes down.
    seen: Arc<Mutex<Seen>>,
}

/// High-water marks this process keeps.
#[derive(Debug, Default)]
struct Seen {
    /// Mandate id → the newest version seen.
    versions: HashMap<String, u64>,
    /// (mandate id, day) → the largest sealed spend read.
    sealed: HashMap<(String, String), u64>,
}

impl MandatePolicy {
    /// A policy over `store`, trusting mandates signed by one of `keys`.
    pub fn new(store: MandateStore, keys: VerifyKeys, required: bool) -> Self {
        Self {
            store,
            keys,
            required,
            receipts: None,
            seen: Arc::default(),
        }
    }

    /// Reconciles every day's counter with the spend sealed in `receipts`.
    pub fn with_receipts(mut self, receipts: ReceiptChain) -> Self {
        self.receipts = Some(receipts);
        self
    }

    /// The store it reads.
    pub fn store(&self) -> &MandateStore {
        &self.store
    }

    /// Whether a job must name a mandate.
    pub fn required(&self) -> bool {
        self.required
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a refund against the mandate it names and reserves its amount from the daily
    /// budget of `now`'s UTC day.
    ///
    /// No mandate or agent named and none required → `Ok(None)`; an agent with no mandate is
    /// refused. Otherwise, in order: the mandate is known, one of the verify keys signed its
    /// whole state (and it is stored under its own id), its version is not older than one
    /// seen, it names the agent and the publisher, it is not revoked, not expired at `now`,
    /// caps the currency, allows the amount per refund; then one Lua script reserves the
    /// amount atomically (so workers racing for the last of a budget never overspend), after
    /// checking the version against the stored floor and the day's counter against the spend
    /// sealed in that day's receipts. Idempotent per `job_key`: asking again returns the
    /// earlier reservation and spends nothing more.
    pub async fn authorize(
        &self,
        ask: &Ask<'_>,
        mandate_id: Option<&Token>,
        job_key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Option<Reservation>, MandateError> {
        let Some(mandate_id) = mandate_id else {
            return match ask.agent {
                _ if self.required => Err(Denial::NoMandate.into()),
                Some(agent) => Err(Denial::AgentWithoutMandate {
                    agent: agent.to_string(),
                }
                .into()),
                None => Ok(None),
            };
        };
        let id = mandate_id.as_str();
        let day = JobDate::of(now).to_string();
        for _ in 0..CHANGED_RETRIES {
            // What was seen before this read began: a concurrent task may see a newer version
            // meanwhile, which says nothing about what this read returns.
            let seen_before = self.seen().versions.get(id).copied().unwrap_or(0);
            let stored = match self.store.read(id).await? {
                None => return Err(Denial::Unknown { id: id.to_owned() }.into()),
                // Fields that do not even parse were not written by `grant`.
                Some(Err(_)) => return Err(Denial::Forged { id: id.to_owned() }.into()),
                Some(Ok(stored)) => stored,
            };
            let mandate = stored.mandate;
            // A validly signed mandate copied under another id is still a forgery here.
            if mandate.id != *mandate_id || !mandate.verify(&self.keys) {
                return Err(Denial::Forged { id: id.to_owned() }.into());
            }
            self.not_rolled_back(&mandate, seen_before)?;
            mandate.check(&self.keys, ask, now)?;
            let least = self.sealed_spend(id, &day).await?;
            match self
                .store
                .reserve(&mandate, &day, ask.amount, job_key, least)
                .await?
            {
                ReserveAnswer::Reserved(reservation, _) => return Ok(Some(reservation)),
                ReserveAnswer::Over { left } => {
                    return Err(Denial::OverBudget {
                        id: id.to_owned(),
                        amount: ask.amount,
                        left,
                    }
                    .into());
                }
                ReserveAnswer::Revoked { at } => {
                    return Err(Denial::Revoked {
                        id: id.to_owned(),
                        at,
                    }
                    .into());
                }
                ReserveAnswer::Unknown => return Err(Denial::Unknown { id: id.to_owned() }.into()),
                ReserveAnswer::Conflict { reserved } => {
                    return Err(Denial::KeyReused {
                        id: id.to_owned(),
                        job_key: job_key.to_string(),
                        reserved,
                        asked: ask.amount,
                    }
                    .into());
                }
                ReserveAnswer::RolledBack { floor } => {
                    self.saw_version(id, floor);
                    return Err(Denial::RolledBack {
                        id: id.to_owned(),
                        version: mandate.version,
                        seen: floor,
                    }
                    .into());
                }
                ReserveAnswer::Tampered { spent, least } => {
                    return Err(Denial::Tampered {
                        id: id.to_owned(),
                        why: format!(
                            "the counter of {day} holds {spent}, but that day's sealed receipts spent {least} under it"
                        ),
                    }
                    .into());
                }
                // Re-granted between the read and the script: check the new one.
                ReserveAnswer::Changed => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "mandate {id} kept changing while a refund was being reserved; try again"
        ))
        .into())
    }

    /// Refuses a version older than `seen_before` (the newest this process had seen when the
    /// read began), and remembers this one.
    fn not_rolled_back(
        &self,
        mandate: &crate::governance::mandate::Mandate,
        seen_before: u64,
    ) -> Result<(), Denial> {
        let id = mandate.id.as_str();
        if mandate.version < seen_before {
            return Err(Denial::RolledBack {
                id: id.to_owned(),
                version: mandate.version,
                seen: seen_before,
            });
        }
        self.saw_version(id, mandate.version);
        Ok(())
    }

    fn saw_version(&self, id: &str, version: u64) {
        let mut seen = self.seen();
        let newest = seen.versions.entry(id.to_owned()).or_insert(0);
        *newest = (*newest).max(version);
    }

    /// The spend sealed under mandate `id` on `day`: what the receipts say (never less than
    /// this process has already read; a tally that went down was edited).
    async fn sealed_spend(&self, id: &str, day: &str) -> Result<u64, MandateError> {
        let Some(receipts) = &self.receipts else {
            return Ok(0);
        };
        let slot = (id.to_owned(), day.to_owned());
        // The tally only grows: a value read before this read began cannot exceed it (one
        // read by a concurrent task meanwhile can).
        let before = self.seen().sealed.get(&slot).copied().unwrap_or(0);
        let sealed = receipts.mandate_spend(id, day).await?;
        if sealed < before {
            return Err(Denial::Tampered {
                id: id.to_owned(),
                why: format!(
                    "the sealed spend tally of {day} reads {sealed}, less than the {before} read before"
                ),
            }
            .into());
        }
        let mut seen = self.seen();
        // Only today's and later marks are useful; keep the map small.
        if seen.sealed.len() > 1024 {
            seen.sealed.retain(|(_, d), _| d.as_str() >= day);
        }
        let mark = seen.sealed.entry(slot).or_insert(0);
        *mark = (*mark).max(sealed);
        Ok(sealed)
    }

    /// Gives a reservation back (the refund failed permanently). Idempotent: releasing twice
    /// gives back once. A key that holds a different reservation is left alone.
    pub async fn release(
        &self,
        reservation: &Reservation,
        job_key: &IdempotencyKey,
    ) -> Result<(), StoreError> {
        if self.store.release(reservation, job_key).await? < 0 {
            tracing::warn!(
                mandate = %reservation.mandate_id,
                job_key = %job_key,
                "release asked for a reservation the job key does not hold; nothing given back"
            );
        }
        Ok(())
    }
}
