//! The mandate policy: every check of a refund against the spend mandate it names, then an
//! atomic reservation from the mandate's daily budget (stored by `store::mandates`).
//!
//! Invariants: a mandate is obeyed only if its signature verifies under `[mandates]
//! signing_key` (stored caps are never trusted); nothing is reserved unless every check
//! passed; a job key reserves at most once, so a retry never spends twice.

use time::OffsetDateTime;

use crate::{
    governance::mandate::{Denial, Reservation},
    job::{Amount, Currency, IdempotencyKey, JobDate, Token},
    signing::PublicKey,
    store::{MandateStore, ReserveAnswer, StoreError},
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
    /// The public half of `[mandates] signing_key`: only mandates it verifies are obeyed.
    public: PublicKey,
    /// `[mandates] required`: refuse jobs that name no mandate.
    required: bool,
}

impl MandatePolicy {
    /// A policy over `store`, trusting mandates signed by `public`.
    pub fn new(store: MandateStore, public: PublicKey, required: bool) -> Self {
        Self {
            store,
            public,
            required,
        }
    }

    /// The store it reads.
    pub fn store(&self) -> &MandateStore {
        &self.store
    }

    /// Whether a job must name a mandate.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Checks a refund against the mandate it names and reserves its amount from the daily
    /// budget of `now`'s UTC day.
    ///
    /// No mandate or agent named and none required → `Ok(None)`; an agent with no mandate is
    /// refused. Otherwise, in order: the mandate is known, its signature verifies (and it is
    /// stored under its own id), it names `agent_id`, it is not revoked, not expired at `now`,
    /// caps `currency`, allows `amount` per refund; then one Lua script reserves `amount`
    /// atomically, so workers racing for the last of a budget never overspend. Idempotent per
    /// `job_key`: asking again returns the earlier reservation (even from another day) and
    /// spends nothing more.
    pub async fn authorize(
        &self,
        agent_id: Option<&Token>,
        mandate_id: Option<&Token>,
        amount: Amount,
        currency: Currency,
        job_key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Option<Reservation>, MandateError> {
        let Some(mandate_id) = mandate_id else {
            return match agent_id {
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
            let stored = match self.store.read(id).await? {
                None => return Err(Denial::Unknown { id: id.to_owned() }.into()),
                // Fields that do not even parse were not written by `grant`.
                Some(Err(_)) => return Err(Denial::Forged { id: id.to_owned() }.into()),
                Some(Ok(stored)) => stored,
            };
            // A validly signed mandate copied under another id is still a forgery here.
            if stored.mandate.id != *mandate_id {
                return Err(Denial::Forged { id: id.to_owned() }.into());
            }
            stored.mandate.check(
                &self.public,
                stored.revoked_at.as_deref(),
                agent_id,
                amount.minor(),
                currency,
                now,
            )?;
            match self
                .store
                .reserve(&stored.mandate, &day, amount.minor(), job_key)
                .await?
            {
                ReserveAnswer::Reserved(reservation) => return Ok(Some(reservation)),
                ReserveAnswer::Over { left } => {
                    return Err(Denial::OverBudget {
                        id: id.to_owned(),
                        amount: amount.minor(),
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
                        asked: amount.minor(),
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
