//! The one gate for all money (SPEC §5): every job that names an agent or a mandate, bulk or
//! governed, is authorised and reserved against its mandate under the job's claim, before any
//! provider call; with `[mandates] required = true` every job must name one.
//!
//! The reservation is recorded as the job's `mandate` step, so a later attempt (a retry after
//! the mandate was revoked, say) resumes with the money it already set aside instead of asking
//! again. A refusal settles the claim failed and ends as a `mandate` dead letter whose reason
//! names the mandate and the rule.

use serde::{Deserialize, Serialize};

use super::{Attempt, Pipeline, Recorded};
use crate::{
    clock::now_rfc3339,
    governance::{
        MandateError,
        mandate::{Ask, Denial, Reservation},
    },
    job::{IdempotencyKey, ProviderName, RefundJob, Token},
    outcome::{FailureClass, Outcome},
    store::ClaimTicket,
};

/// The step name of the mandate check, as recorded in the idempotency record.
pub(super) const STEP: &str = "mandate";

/// The label of denials that name no agent a mandate holds.
pub(crate) const UNKNOWN_AGENT: &str = "unknown";

/// The mandate step: the reservation, or none (no mandate named and none required).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MandateStep {
    pub(super) reservation: Option<Reservation>,
}

/// Whether `job` has to pass the gate: it names an agent or a mandate, or every job must.
pub(super) fn applies(pipeline: &Pipeline, job: &RefundJob) -> bool {
    job.agent_id.is_some() || job.mandate_id.is_some() || pipeline.mandates.required()
}

/// Passes `job` through the gate under the claim `ticket` holds on `key`: the step an earlier
/// attempt recorded, or a fresh authorisation recorded now. `Err` ends the attempt: a
/// `mandate` dead letter (claim settled failed), or a wait for Redis.
pub(super) async fn pass(
    pipeline: &Pipeline,
    job: &RefundJob,
    attempt: Attempt<'_>,
    key: &IdempotencyKey,
    ticket: &ClaimTicket,
    provider: Option<ProviderName>,
) -> Result<Recorded<MandateStep>, Outcome> {
    if let Some(text) = ticket.steps.get(STEP) {
        return serde_json::from_str(text).map_err(|e| Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider,
            why: format!("the recorded `{STEP}` step of {key} is unreadable: {e}"),
        });
    }
    let authorized = pipeline
        .mandates
        .authorize(
            &Ask {
                agent: job.agent_id.as_ref(),
                publisher: attempt.envelope.publisher.as_deref(),
                amount: job.amount.minor(),
                currency: job.currency,
            },
            job.mandate_id.as_ref(),
            key,
            time::OffsetDateTime::now_utc(),
        )
        .await;
    let reservation = match authorized {
        Ok(reservation) => reservation,
        Err(MandateError::Denied(denial)) => {
            pipeline
                .metrics
                .mandate_denied
                .with_label_values(&[agent_label(&denial, job.agent_id.as_ref())])
                .inc();
            if crate::metrics::TAMPER_RULES.contains(&denial.rule()) {
                pipeline
                    .metrics
                    .mandate_tampered
                    .with_label_values(&[denial.rule()])
                    .inc();
                tracing::error!(key = %key, rule = denial.rule(), why = %denial, "a mandate's stored state does not add up: refusing to spend under it");
            }
            let why = denial.to_string();
            // What earlier attempts left (a pending refund, a send that may have executed) is
            // kept: the claim is let go without erasing it.
            let (settle, record) = ticket.let_go_unsent();
            if let Err(e) = pipeline
                .store
                .settle(key, ticket, settle, record, &why)
                .await
            {
                tracing::warn!(key = %key, error = %e, "could not record the refusal; the claim expires with its lease");
            }
            return Err(Outcome::DeadLetter {
                class: FailureClass::Mandate,
                provider,
                why,
            });
        }
        Err(MandateError::Store(e)) => return Err(super::store_failure(e, provider)),
    };
    let step = Recorded {
        at: now_rfc3339(),
        value: MandateStep { reservation },
    };
    let text = serde_json::to_string(&step).unwrap_or_default();
    match pipeline.store.save_step(key, ticket, STEP, &text).await {
        Ok(true) => Ok(step),
        Ok(false) => Err(Outcome::Retry {
            provider,
            why: format!("the claim on {key} was taken over"),
            after: std::time::Duration::ZERO,
            counts: false,
        }),
        // Nothing was sent: the reservation stays with the job key, and the next attempt's
        // authorisation finds it (a job key reserves once).
        Err(e) => Err(super::store_failure(e, provider)),
    }
}

/// Gives a reservation back after the refund failed for good — only when no money can have
/// moved under it: not after an earlier send that may have executed (uncertain), not with a
/// pending refund, and only while this attempt still owns the record it settled failed (a
/// worker that took the claim over may be refunding under the same reservation).
pub(super) async fn give_back(
    pipeline: &Pipeline,
    reservation: Option<&Reservation>,
    key: &IdempotencyKey,
    ticket: &ClaimTicket,
) {
    let Some(r) = reservation else { return };
    if ticket.uncertain || ticket.pending.is_some() {
        return;
    }
    match pipeline.store.failed_by(key, &ticket.owner).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(key = %key, "the claim was taken over; its reservation stays spent");
            return;
        }
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "could not check the claim; the reservation stays spent");
            return;
        }
    }
    if let Err(e) = pipeline.mandates.release(r, key).await {
        tracing::warn!(key = %key, error = %e, "could not give the mandate reservation back");
    }
}

/// The `agent` label of a denial: an agent becomes a label value only when a verified mandate
/// names it, so a publisher inventing agent ids cannot grow the metric without bound.
fn agent_label<'a>(denial: &'a Denial, asked: Option<&'a Token>) -> &'a str {
    match denial {
        // The mandate's own agent, not the one the job claimed.
        Denial::WrongAgent { expected, .. } => expected,
        // Raised after the agent check passed against a verified mandate.
        Denial::WrongPublisher { .. }
        | Denial::Revoked { .. }
        | Denial::Expired { .. }
        | Denial::OverCap { .. }
        | Denial::OverBudget { .. }
        | Denial::WrongCurrency { .. }
        | Denial::KeyReused { .. }
        | Denial::RolledBack { .. }
        | Denial::Tampered { .. } => asked.map_or(UNKNOWN_AGENT, Token::as_str),
        Denial::NoMandate
        | Denial::AgentWithoutMandate { .. }
        | Denial::Unknown { .. }
        | Denial::Forged { .. } => UNKNOWN_AGENT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agents_a_verified_mandate_names_become_labels() {
        let invented = Token::parse("bot-4711").unwrap();
        let unknown = Denial::Unknown { id: "cm_x".into() };
        assert_eq!(agent_label(&unknown, Some(&invented)), "unknown");
        assert_eq!(agent_label(&Denial::NoMandate, Some(&invented)), "unknown");
        let forged = Denial::Forged { id: "cm_x".into() };
        assert_eq!(agent_label(&forged, Some(&invented)), "unknown");
        let wrong = Denial::WrongAgent {
            id: "cm_x".into(),
            agent: "bot-4711".into(),
            expected: "support-bot".into(),
        };
        assert_eq!(agent_label(&wrong, Some(&invented)), "support-bot");
        let over = Denial::OverCap {
            id: "cm_x".into(),
            amount: 2,
            cap: 1,
        };
        let agent = Token::parse("support-bot").unwrap();
        assert_eq!(agent_label(&over, Some(&agent)), "support-bot");
    }
}
