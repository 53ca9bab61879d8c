//! A governed refund, for a job that names an order:
//! 1. verify the order against the ERP;
//! 2. authorise and reserve the agent's spend mandate;
//! 3. refund on the order's original rail;
//! 4. issue the credit note;
//! 5. tell the customer;
//! 6. seal one receipt.
//!
//! Each finished step is recorded in the job's idempotency record, so a retry resumes at
//! the first unfinished step and no step runs twice.
//!
//! Nothing moves before the order is verified and the mandate reserved. Once the refund is
//! made, every later failure keeps the steps already recorded (the job is retried or parked,
//! never restarted), and the mandate's reservation stays spent. A reservation is given back
//! only when the refund itself failed for good. The message to the customer is sent at most
//! once: the attempt is recorded before the send, and an attempt whose answer was lost is
//! never repeated.

use std::{collections::BTreeMap, future::Future, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::warn;

use super::{Attempt, DurableWrite, Pipeline, Recorded, durably, gate, refund};
use crate::{
    clock::now_rfc3339,
    governance::{
        mandate::Reservation,
        receipt::{ReceiptBody, mask_card, mask_pix_key},
    },
    job::{IdempotencyKey, ProviderName, RefundJob},
    outcome::{FailureClass, Outcome},
    providers::{ProviderError, RefundRequest},
    services::{CreditNote, CreditNoteRequest, Message, Order, whatsapp},
    store::{ClaimTicket, RefundRecord, Settle, StoreError},
};

/// Step names, as recorded in the idempotency record.
const VERIFIED: &str = "verified";
const CREDIT_NOTE: &str = "credit_note";
const NOTIFY_ATTEMPT: &str = "notify_attempt";
const NOTIFIED: &str = "notified";

/// What verification established.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verification {
    /// The order as the ERP reported it.
    order: Order,
    /// What other refunds of the order had already taken, in minor units.
    refunded_before: u64,
}

/// Runs a governed job under `key`.
pub(super) async fn run(
    pipeline: &Pipeline,
    job: &RefundJob,
    key: IdempotencyKey,
    attempt: Attempt<'_>,
) -> (Outcome, Option<RefundRecord>) {
    let order_id = job
        .order_id
        .as_ref()
        .map(|o| o.to_string())
        .unwrap_or_default();
    let fingerprint = super::Fingerprint::of(job);
    let (ticket, _hold) = match refund::claim(
        pipeline,
        &key,
        &fingerprint,
        &attempt.envelope.job_id,
        attempt.owner,
        job.provider,
        attempt.shutdown,
    )
    .await
    {
        Ok(ticket) => ticket,
        Err(ended) => return ended,
    };
    if let Some(outcome) = refund::poisoned(
        pipeline,
        job.provider,
        &key,
        &attempt.envelope.job_id,
        &ticket,
    )
    .await
    {
        return (outcome, None);
    }
    let mut governed = Governed {
        pipeline,
        job,
        key,
        order_id,
        attempt,
        ticket,
        made: None,
    };
    let outcome = match governed.steps().await {
        Ok(outcome) | Err(outcome) => outcome,
    };
    (outcome, None)
}

/// One attempt at a governed job.
struct Governed<'a> {
    pipeline: &'a Pipeline,
    job: &'a RefundJob,
    key: IdempotencyKey,
    order_id: String,
    attempt: Attempt<'a>,
    ticket: ClaimTicket,
    /// The provider's refund id once the refund is made: a dead letter after it names it.
    made: Option<String>,
}

impl Governed<'_> {
    async fn steps(&mut self) -> Result<Outcome, Outcome> {
        let verified: Recorded<Verification> = match self.recorded(VERIFIED)? {
            Some(v) => v,
            None => {
                let v = Recorded {
                    at: now_rfc3339(),
                    value: self.verify().await?,
                };
                self.record(VERIFIED, &v).await?;
                v
            }
        };
        let order = verified.value.order.clone();
        let mandate = gate::pass(
            self.pipeline,
            self.job,
            self.attempt,
            &self.key,
            &self.ticket,
            self.job.provider,
        )
        .await?;
        let reservation = mandate.value.reservation.clone();

        // The refund, on the order's own rail.
        let provider_name = order.payment.provider;
        let Some(provider) = self.pipeline.providers.get(provider_name).cloned() else {
            return Err(self
                .refund_failed(
                    reservation.as_ref(),
                    format!("no {provider_name} connector is configured on this worker"),
                )
                .await);
        };
        let request = RefundRequest {
            key: self.key.clone(),
            payment_id: order.payment.payment_id.clone(),
            amount: self.job.amount,
            currency: self.job.currency,
            reason: self.job.reason,
            description: self.job.description.clone(),
            job_id: self.attempt.envelope.job_id.clone(),
        };
        let (refund, refunded_at, adopted) =
            match self.recorded::<Recorded<RefundRecord>>(refund::STEP_REFUNDED)? {
                Some(r) => {
                    self.made = Some(r.value.refund.refund_id.clone());
                    (r.value, r.at, true)
                }
                None => {
                    let (record, adopted) = match refund::refund_step(
                        self.pipeline,
                        provider.as_ref(),
                        &request,
                        &mut self.ticket,
                        self.attempt,
                    )
                    .await
                    {
                        Ok(done) => done,
                        Err(outcome) => {
                            // A refund that failed for good gives its reservation back (its
                            // record was settled failed, which clears the steps). Not when an
                            // earlier send may have executed (uncertain): the money may be gone.
                            if let Outcome::DeadLetter {
                                class: FailureClass::Permanent,
                                ..
                            } = &outcome
                            {
                                gate::give_back(
                                    self.pipeline,
                                    reservation.as_ref(),
                                    &self.key,
                                    &self.ticket,
                                )
                                .await;
                            }
                            return Err(outcome);
                        }
                    };
                    self.made = Some(record.refund.refund_id.clone());
                    let at = now_rfc3339();
                    self.record_durably(
                        refund::STEP_REFUNDED,
                        &Recorded {
                            at: at.clone(),
                            value: record.clone(),
                        },
                    )
                    .await?;
                    (record, at, adopted)
                }
            };
        // Count it against the order (idempotent per job key), so the next verification of
        // this order sees what is left.
        self.durably("the order's refund tally", || {
            self.pipeline.store.record_order_refund(
                &self.order_id,
                &self.key,
                self.job.amount.minor(),
            )
        })
        .await?;

        let credit_note = if self.job.credit_note.unwrap_or(true) {
            Some(self.credit_note(&order, &refund).await?)
        } else {
            None
        };
        let notified = self.notify(&order).await?;

        let mut steps = BTreeMap::new();
        steps.insert(VERIFIED.to_owned(), verified.at.clone());
        steps.insert(gate::STEP.to_owned(), mandate.at.clone());
        steps.insert(refund::STEP_REFUNDED.to_owned(), refunded_at);
        if let Some(note) = &credit_note {
            steps.insert(CREDIT_NOTE.to_owned(), note.at.clone());
        }
        steps.insert(NOTIFIED.to_owned(), notified.at.clone());
        let body = ReceiptBody {
            job_id: self.attempt.envelope.job_id.clone(),
            idempotency_key: self.key.to_string(),
            kind: "governed".into(),
            provider: provider_name.to_string(),
            payment_id: order.payment.payment_id.to_string(),
            refund_id: refund.refund.refund_id.clone(),
            refund_status: "succeeded".into(),
            amount: refund.refund.amount,
            currency: self.job.currency.code().to_owned(),
            rail: rail(&order),
            destination: destination(&order),
            order_id: Some(self.order_id.clone()),
            verification: Some(json!({
                "order_id": order.order_id,
                "total": order.total,
                "currency": order.currency,
                "settled": order.settled,
                "payment": {
                    "provider": order.payment.provider,
                    "payment_id": order.payment.payment_id,
                    "amount": order.payment.amount,
                },
                "refunded_before": verified.value.refunded_before,
                "refundable": order.total.min(order.payment.amount)
                    .saturating_sub(verified.value.refunded_before),
                "invoice": order.invoice,
                "verified_at": verified.at,
            })),
            mandate: reservation
                .as_ref()
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
            credit_note: credit_note
                .as_ref()
                .map(|n| serde_json::to_value(&n.value).unwrap_or(Value::Null)),
            notification: Some(notified.value.clone()),
            steps,
        };
        refund::seal(self.pipeline, &request, body, self.attempt).await?;
        Ok(refund::complete(
            self.pipeline,
            &request,
            &self.ticket,
            refund,
            adopted,
            self.attempt,
        )
        .await)
    }

    /// The order exists, its payment settled, the job agrees with it, and the amount fits what
    /// is still refundable. A failure parks the job as `verification`; nothing moves.
    async fn verify(&self) -> Result<Verification, Outcome> {
        let id = &self.order_id;
        let order = match self.pipeline.services.erp.order(id).await {
            Ok(Some(order)) => order,
            Ok(None) => {
                return Err(self
                    .unverified(format!("order {id} is not in the ERP"))
                    .await);
            }
            Err(ProviderError::Permanent { why, .. }) => {
                return Err(self
                    .unverified(format!("the ERP refused to look order {id} up: {why}"))
                    .await);
            }
            Err(other) => return Err(self.retry_later(other).await),
        };
        if !order.settled {
            return Err(self
                .unverified(format!(
                    "the original payment of order {id} has not settled"
                ))
                .await);
        }
        if order.currency != self.job.currency {
            return Err(self
                .unverified(format!(
                    "order {id} is in {}, the job asks for {}",
                    order.currency, self.job.currency
                ))
                .await);
        }
        if let Some(named) = self.job.provider.filter(|p| *p != order.payment.provider) {
            return Err(self
                .unverified(format!(
                    "the job names {named}, but order {id} was paid with {}: a refund goes back on the order's own rail",
                    order.payment.provider
                ))
                .await);
        }
        if let Some(named) = self
            .job
            .payment_id
            .as_ref()
            .filter(|p| **p != order.payment.payment_id)
        {
            return Err(self
                .unverified(format!(
                    "the job names payment {named}, but order {id} was paid with {}",
                    order.payment.payment_id
                ))
                .await);
        }
        // The customer is told on the number the ERP holds, never on one the job brings.
        if let Some(notify) = &self.job.notify {
            let known = order.customer.phone.as_deref().map(phone_digits);
            if known.as_deref() != Some(phone_digits(&notify.to).as_str()) {
                return Err(self
                    .unverified(format!(
                        "notify.to is not the phone the ERP holds for the customer of order {id}: a refund notice goes only to the customer the ERP knows (leave notify.to out to use it)"
                    ))
                    .await);
            }
        }
        let refunded_before = match self.pipeline.store.order_refunded(id, &self.key).await {
            Ok(amount) => amount,
            Err(e) => return Err(super::store_failure(e, Some(order.payment.provider))),
        };
        // Bounded by the order's total and by the payment (Omie's payment amount is the sum
        // of its instalments, which can be more than the order), less what was refunded.
        let bound = order.total.min(order.payment.amount);
        let refundable = bound.saturating_sub(refunded_before);
        if self.job.amount.minor() > refundable {
            return Err(self
                .unverified(format!(
                    "a refund of {} exceeds what is still refundable on order {id}: {refundable} of its total {} (payment {}, already refunded {refunded_before})",
                    self.job.amount,
                    order.total,
                    order.payment.amount
                ))
                .await);
        }
        Ok(Verification {
            order,
            refunded_before,
        })
    }

    /// The credit note, sealed to the refund. The invoicing service issues at most one note
    /// per key, so a retry after an unknown outcome is safe.
    async fn credit_note(
        &self,
        order: &Order,
        refund: &RefundRecord,
    ) -> Result<Recorded<CreditNote>, Outcome> {
        if let Some(note) = self.recorded(CREDIT_NOTE)? {
            return Ok(note);
        }
        let request = CreditNoteRequest {
            key: self.key.clone(),
            order_id: self.order_id.clone(),
            invoice: order.invoice.clone(),
            amount: self.job.amount,
            currency: self.job.currency,
            refund_id: refund.refund.refund_id.clone(),
            provider: order.payment.provider,
            reason: self.job.reason,
            customer_name: order.customer.name.clone(),
        };
        match self.pipeline.services.invoicing.issue(&request).await {
            Ok(note) => {
                let recorded = Recorded { at: now_rfc3339(), value: note };
                self.record_durably(CREDIT_NOTE, &recorded).await?;
                Ok(recorded)
            }
            Err(ProviderError::Permanent { why, .. }) => Err(self
                .park_after_refund(format!(
                    "refund {} was made, but the invoicing service refused the credit note: {why}; replay once that is fixed (the refund is not made again)",
                    refund.refund.refund_id
                ))
                .await),
            Err(other) => Err(self.retry_later(other).await),
        }
    }

    /// Tells the customer, at most once. The attempt is recorded before the send; an attempt
    /// whose answer was lost is never repeated (a missing message is better than two).
    async fn notify(&self, order: &Order) -> Result<Recorded<Value>, Outcome> {
        if let Some(done) = self.recorded(NOTIFIED)? {
            return Ok(done);
        }
        // Verification refused any other number than the ERP's.
        let phone = order.customer.phone.clone();
        let template = self
            .job
            .notify
            .as_ref()
            .map_or("refund_done", |n| n.template.as_str());
        let status = if self.ticket.steps.contains_key(NOTIFY_ATTEMPT) {
            json!({ "channel": "whatsapp", "status": "unknown",
                    "why": "an earlier attempt may have sent it; not sent again (at most once)" })
        } else if let Some(phone) = phone {
            match whatsapp::render(
                template,
                &order.customer.name,
                &self.order_id,
                self.job.amount,
                self.job.currency,
                &rail(order),
            ) {
                Err(why) => json!({ "channel": "whatsapp", "status": "skipped", "why": why }),
                Ok(text) => {
                    self.record_durably(NOTIFY_ATTEMPT, &now_rfc3339()).await?;
                    let message = Message {
                        key: self.key.clone(),
                        phone,
                        text,
                    };
                    match self.pipeline.services.notifier.send(&message).await {
                        Ok(sent) => {
                            json!({ "channel": "whatsapp", "status": "sent", "message_id": sent.message_id })
                        }
                        // Refused before anything was sent: clear the attempt and try later.
                        Err(
                            error @ (ProviderError::Transient { .. }
                            | ProviderError::Skipped { .. }),
                        ) => {
                            self.durably("the notification attempt", || {
                                self.pipeline.store.save_step(
                                    &self.key,
                                    &self.ticket,
                                    NOTIFY_ATTEMPT,
                                    "",
                                )
                            })
                            .await?;
                            return Err(self.retry_later(error).await);
                        }
                        Err(ProviderError::Unknown { why }) => {
                            json!({ "channel": "whatsapp", "status": "unknown", "why": why })
                        }
                        Err(ProviderError::Permanent { why, .. }) => {
                            json!({ "channel": "whatsapp", "status": "failed", "why": why })
                        }
                    }
                }
            }
        } else {
            json!({ "channel": "whatsapp", "status": "skipped", "why": "no phone number for the customer" })
        };
        let recorded = Recorded {
            at: now_rfc3339(),
            value: status,
        };
        self.record_durably(NOTIFIED, &recorded).await?;
        Ok(recorded)
    }

    // ---- recording ----

    /// A recorded step, parsed.
    fn recorded<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, Outcome> {
        match self.ticket.steps.get(step) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| Outcome::DeadLetter {
                    class: FailureClass::Permanent,
                    provider: self.job.provider,
                    why: format!(
                        "the recorded `{step}` step of {} is unreadable: {e}",
                        self.key
                    ),
                }),
        }
    }

    /// Records a step before the refund: a Redis outage suspends the job (nothing moved).
    async fn record<T: Serialize>(&self, step: &str, value: &T) -> Result<(), Outcome> {
        let text = serde_json::to_string(value).unwrap_or_default();
        match self
            .pipeline
            .store
            .save_step(&self.key, &self.ticket, step, &text)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.claim_lost()),
            Err(e) => Err(super::store_failure(e, self.job.provider)),
        }
    }

    /// Records a step after the refund: waits for Redis rather than forget it.
    async fn record_durably<T: Serialize>(&self, step: &str, value: &T) -> Result<(), Outcome> {
        let text = serde_json::to_string(value).unwrap_or_default();
        let held = self
            .durably(step, || {
                self.pipeline
                    .store
                    .save_step(&self.key, &self.ticket, step, &text)
            })
            .await?;
        if held { Ok(()) } else { Err(self.claim_lost()) }
    }

    /// Runs a Redis write after the refund through [`durably`]: it lands, or the worker stops
    /// (the message is handed back and the next attempt resumes from the steps already
    /// recorded), or Redis holds unreadable data (a dead letter naming the refund).
    async fn durably<T, F, Fut>(&self, what: &str, write: F) -> Result<T, Outcome>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let about = DurableWrite {
            what,
            record: self.key.as_str(),
            refund_id: self.made.as_deref(),
            provider: self.job.provider,
        };
        durably(
            about,
            &self.pipeline.readiness,
            self.attempt.shutdown,
            write,
        )
        .await
    }

    async fn settle(&self, settle: Settle, reason: &str) {
        if let Err(e) = self
            .pipeline
            .store
            .settle(&self.key, &self.ticket, settle, None, reason)
            .await
        {
            warn!(key = %self.key, error = %e, "could not record the end of the attempt; the claim expires with its lease");
        }
    }

    fn claim_lost(&self) -> Outcome {
        Outcome::Retry {
            provider: self.job.provider,
            why: format!("the claim on {} was taken over", self.key),
            after: Duration::ZERO,
            counts: false,
        }
    }

    // ---- endings ----

    /// Verification failed: nothing moved; a replay starts over.
    async fn unverified(&self, why: String) -> Outcome {
        self.settle(Settle::Failed { uncertain: false }, &why).await;
        Outcome::DeadLetter {
            class: FailureClass::Verification,
            provider: self.job.provider,
            why,
        }
    }

    /// The refund failed for good before it was sent: the reservation goes back.
    async fn refund_failed(&self, reservation: Option<&Reservation>, why: String) -> Outcome {
        // What earlier attempts left (a pending refund, a send that may have executed) is
        // kept, and then the reservation stays spent (give_back checks).
        let (settle, record) = self.ticket.let_go_unsent();
        if let Err(e) = self
            .pipeline
            .store
            .settle(&self.key, &self.ticket, settle, record, &why)
            .await
        {
            warn!(key = %self.key, error = %e, "could not let go of the claim; it expires with its lease");
        }
        gate::give_back(self.pipeline, reservation, &self.key, &self.ticket).await;
        Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider: self.job.provider,
            why,
        }
    }

    /// A service failed transiently: let go of the claim, keeping the steps already recorded,
    /// and try later (the job comes back to its first unfinished step).
    async fn retry_later(&self, error: ProviderError) -> Outcome {
        self.settle(
            Settle::Released {
                uncertain: self.ticket.uncertain,
            },
            &error.to_string(),
        )
        .await;
        retry_for(self.job.provider, error)
    }

    /// A service refused for good after the refund: park the job with its steps kept, so a
    /// replay resumes where it stopped (the refund and the reservation stand).
    async fn park_after_refund(&self, why: String) -> Outcome {
        self.settle(
            Settle::Released {
                uncertain: self.ticket.uncertain,
            },
            &why,
        )
        .await;
        Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider: self.job.provider,
            why,
        }
    }
}

fn retry_for(provider: Option<ProviderName>, error: ProviderError) -> Outcome {
    let (after, counts) = match &error {
        ProviderError::Transient { retry_after, .. } => (retry_after.unwrap_or_default(), true),
        ProviderError::Skipped { retry_after, .. } => {
            (retry_after.unwrap_or(Duration::from_secs(1)), false)
        }
        _ => (Duration::ZERO, true),
    };
    Outcome::Retry {
        provider,
        why: error.to_string(),
        after,
        counts,
    }
}

/// A phone number's digits (`+55 11 99999-0000` → `5511999990000`), to compare two spellings.
fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// The rail the money goes back on, for receipts and messages.
fn rail(order: &Order) -> String {
    if order.payment.pix_key.is_some() || order.payment.provider == ProviderName::Pix {
        "pix".into()
    } else if order.payment.card_last4.is_some() || order.payment.provider == ProviderName::Stripe {
        "card".into()
    } else {
        order.payment.provider.to_string()
    }
}

/// Where the money goes back, masked.
fn destination(order: &Order) -> Option<String> {
    order
        .payment
        .pix_key
        .as_deref()
        .map(mask_pix_key)
        .or_else(|| order.payment.card_last4.as_deref().map(mask_card))
}
