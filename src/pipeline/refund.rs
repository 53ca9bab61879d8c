//! One attempt at one refund, under its idempotency claim.
//!
//! Claim first. Then, by what the claim says: sync a pending refund's status, reconcile an
//! uncertain earlier attempt (find the refund at the provider and adopt it), or send the
//! refund. Then record the answer. A refund the provider confirmed is recorded before
//! anything else happens, waiting for Redis if it must: that record is what makes the next
//! copy of the job a no-op.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tracing::{debug, info, warn};

use super::{
    Attempt, DurableWrite, Pipeline, Recorded, durably,
    gate::{self, MandateStep},
};
use crate::{
    governance::receipt::{Receipt, ReceiptBody},
    job::{IdempotencyKey, ProviderName, RefundJob},
    outcome::{FailureClass, Outcome},
    providers::{
        BeforeSend, ProviderError, ProviderRefund, RefundProvider, RefundRequest, RefundStatus,
    },
    store::{Claim, ClaimTicket, RefundRecord, Settle},
};

use super::local_claims::Hold;

/// Claims `key` for this attempt. `Err` carries how the attempt ends instead: a duplicate
/// (with the earlier refund), a wait for a live holder, a conflict, or a Redis failure. The
/// hold marks the claim as this process's until dropped. A copy whose sibling in this very
/// process holds the key waits for it to finish rather than retry after the whole lease.
pub(super) async fn claim(
    pipeline: &Pipeline,
    key: &IdempotencyKey,
    fingerprint: &super::Fingerprint,
    job_id: &str,
    owner: &str,
    provider: Option<ProviderName>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(ClaimTicket, Hold), (Outcome, Option<RefundRecord>)> {
    let mut waited = false;
    loop {
        let started = Instant::now();
        let claim = pipeline
            .store
            .claim(
                key,
                owner,
                (fingerprint.as_str(), fingerprint.legacy()),
                job_id,
            )
            .await;
        pipeline.observe_step("claim", started);
        let ended = match claim {
            Ok(Claim::Claimed(ticket)) => return Ok((ticket, pipeline.local.hold(key.as_str()))),
            Ok(Claim::Busy { retry_in })
                if !waited
                    && pipeline
                        .local
                        .wait_for(key.as_str(), retry_in, shutdown)
                        .await =>
            {
                waited = true;
                continue;
            }
            Ok(Claim::Done(existing)) => (Outcome::Duplicate, existing),
            Ok(Claim::Busy { retry_in }) => (
                Outcome::Retry {
                    provider,
                    why: format!("another worker holds the claim on {key} for {retry_in:?} more"),
                    after: retry_in,
                    counts: false,
                },
                None,
            ),
            Ok(Claim::Conflict { existing }) => (
                Outcome::DeadLetter {
                    class: FailureClass::Permanent,
                    provider,
                    why: format!(
                        "idempotency key {key} was already used for a different refund or other words to the provider ({existing}, this one is {fingerprint}); \
                         one key carries one request: a second refund of one payment on one day, or a changed reason or description, needs its own idempotency_key"
                    ),
                },
                None,
            ),
            Err(e) => (super::store_failure(e, provider), None),
        };
        return Err(ended);
    }
}

/// Runs one attempt at a bulk refund of `job`: `request` on `provider`, through the mandate
/// gate when the job names an agent or a mandate (or every job must).
pub(super) async fn run(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    job: &RefundJob,
    request: &RefundRequest,
    attempt: Attempt<'_>,
) -> (Outcome, Option<RefundRecord>) {
    let fingerprint = &super::Fingerprint::of(job);
    let name = provider.name();
    let (ticket, _hold) = match claim(
        pipeline,
        &request.key,
        fingerprint,
        &request.job_id,
        attempt.owner,
        Some(name),
        attempt.shutdown,
    )
    .await
    {
        Ok(claimed) => claimed,
        Err(ended) => return ended,
    };
    if let Some(outcome) =
        poisoned(pipeline, Some(name), &request.key, &request.job_id, &ticket).await
    {
        return (outcome, None);
    }
    let mandate = if gate::applies(pipeline, job) {
        match gate::pass(pipeline, job, attempt, &request.key, &ticket, Some(name)).await {
            Ok(step) => Some(step),
            Err(outcome) => return (outcome, None),
        }
    } else {
        None
    };
    (
        finish(pipeline, provider, request, ticket, mandate, attempt).await,
        None,
    )
}

/// A job whose claim was taken over from workers that died (or hung) holding it more often
/// than the delivery limit allows is a poison message: it is parked as `delivery_limit`
/// instead of being handed to yet another worker. (The broker's own delivery limit cannot
/// catch it: while the dead worker's lease runs, the job goes through the retry tiers as a
/// fresh message.) The claim is let go still uncertain (or still pending), so a replay
/// reconciles with the provider before it sends anything.
pub(super) async fn poisoned(
    pipeline: &Pipeline,
    provider: Option<ProviderName>,
    key: &IdempotencyKey,
    job_id: &str,
    ticket: &ClaimTicket,
) -> Option<Outcome> {
    let limit = pipeline.options.max_takeovers;
    if limit == 0 || ticket.takeovers <= limit {
        return None;
    }
    let (settle, record) = match &ticket.pending {
        Some(pending) => (Settle::Pending, Some(pending)),
        None => (
            Settle::Released {
                uncertain: ticket.uncertain,
            },
            None,
        ),
    };
    if let Err(e) = pipeline.store.settle(key, ticket, settle, record, "").await {
        warn!(job_id = %job_id, key = %key, error = %e,
              "could not let go of the claim of a poison message; it expires with its lease");
    }
    Some(Outcome::DeadLetter {
        class: FailureClass::DeliveryLimit,
        provider,
        why: format!(
            "its claim on {} was taken over {} times from workers that died or hung holding it \
             (delivery limit {limit}): it crashes or hangs the worker; replay it once that is \
             fixed (the replay checks the provider before sending anything)",
            key, ticket.takeovers
        ),
    })
}

/// The step name of a refund the provider confirmed.
pub(super) const STEP_REFUNDED: &str = "refunded";

/// The rest of a bulk job under its claim: the refund (unless an earlier attempt already
/// recorded it), then the record that makes every later copy a no-op.
async fn finish(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    mut ticket: ClaimTicket,
    mandate: Option<Recorded<MandateStep>>,
    attempt: Attempt<'_>,
) -> Outcome {
    let reservation = mandate.as_ref().and_then(|m| m.value.reservation.as_ref());
    let (record, adopted) = match recorded_refund(&ticket) {
        Some(record) => (record, true),
        None => match refund_step(pipeline, provider, request, &mut ticket, attempt).await {
            Ok(done) => done,
            Err(outcome) => {
                // A refund that failed for good gives its reservation back.
                if let Outcome::DeadLetter {
                    class: FailureClass::Permanent,
                    ..
                } = &outcome
                {
                    gate::give_back(pipeline, reservation, &request.key, &ticket).await;
                }
                return outcome;
            }
        },
    };
    // Sealed before the record says done: a crash in between leaves the job to be taken over,
    // and the seal is idempotent per key, so the retry finds the receipt already there.
    let receipt = bulk_receipt(request, &record, mandate.as_ref());
    if let Err(outcome) = seal(pipeline, request, receipt, attempt).await {
        if matches!(outcome, Outcome::DeadLetter { .. }) {
            // The refund exists but cannot be sealed: leave the record uncertain (not claimed
            // until its lease ends), so a replay finds the refund at the provider, adopts it
            // and seals it, instead of sending again.
            let why = "refund made; its receipt could not be sealed";
            let released = Settle::Released { uncertain: true };
            if let Err(ended) = settle_durably(
                pipeline, request, &ticket, released, None, &record, why, attempt,
            )
            .await
            {
                warn!(job_id = %request.job_id, key = %request.key, ?ended, "the claim will expire and be reconciled");
            }
        }
        return outcome;
    }
    complete(pipeline, request, &ticket, record, adopted, attempt).await
}

/// The receipt of a bulk refund: what was refunded, where, under which key.
fn bulk_receipt(
    request: &RefundRequest,
    record: &RefundRecord,
    mandate: Option<&Recorded<MandateStep>>,
) -> ReceiptBody {
    let mut steps =
        std::collections::BTreeMap::from([(STEP_REFUNDED.to_owned(), crate::clock::now_rfc3339())]);
    if let Some(m) = mandate {
        steps.insert(gate::STEP.to_owned(), m.at.clone());
    }
    let rail = match record.provider {
        ProviderName::Stripe => "card".to_owned(),
        ProviderName::Pix => "pix".to_owned(),
        other => other.to_string(),
    };
    ReceiptBody {
        job_id: request.job_id.clone(),
        idempotency_key: request.key.to_string(),
        kind: "bulk".into(),
        provider: record.provider.to_string(),
        payment_id: request.payment_id.to_string(),
        refund_id: record.refund.refund_id.clone(),
        refund_status: "succeeded".into(),
        amount: record.refund.amount,
        currency: request.currency.code().to_owned(),
        rail,
        destination: None,
        order_id: None,
        verification: None,
        mandate: mandate
            .and_then(|m| m.value.reservation.as_ref())
            .and_then(|r| serde_json::to_value(r).ok()),
        credit_note: None,
        notification: None,
        steps,
    }
}

/// Seals the job's receipt, waiting for Redis rather than leave a refund without one.
/// Idempotent per key: a retry finds the receipt already sealed.
pub(super) async fn seal(
    pipeline: &Pipeline,
    request: &RefundRequest,
    body: ReceiptBody,
    attempt: Attempt<'_>,
) -> Result<Receipt, Outcome> {
    let started = Instant::now();
    let refund_id = body.refund_id.clone();
    let about = DurableWrite {
        what: "the receipt",
        record: request.key.as_str(),
        refund_id: Some(&refund_id),
        provider: None,
    };
    let sealed = durably(about, &pipeline.readiness, attempt.shutdown, || {
        pipeline.receipts.seal(body.clone())
    })
    .await?;
    pipeline.observe_step("seal", started);
    Ok(sealed)
}

/// A refund an earlier attempt recorded as its `refunded` step.
pub(super) fn recorded_refund(ticket: &ClaimTicket) -> Option<RefundRecord> {
    serde_json::from_str(ticket.steps.get(STEP_REFUNDED)?).ok()
}

/// Records the job done with its refund: from here on every copy of it is a duplicate.
pub(super) async fn complete(
    pipeline: &Pipeline,
    request: &RefundRequest,
    ticket: &ClaimTicket,
    record: RefundRecord,
    adopted: bool,
    attempt: Attempt<'_>,
) -> Outcome {
    let started = Instant::now();
    let settled = settle_durably(
        pipeline,
        request,
        ticket,
        Settle::Done,
        Some(&record),
        &record,
        "",
        attempt,
    )
    .await;
    pipeline.observe_step("record", started);
    if let Err(ended) = settled {
        return ended;
    }
    Outcome::Refunded {
        provider: record.provider,
        refund_id: record.refund.refund_id,
        amount: record.refund.amount,
        adopted,
    }
}

/// The refund step under a held claim: call the provider (retrying in-process a few times)
/// until it confirms a refund, returned with whether it was found rather than created; or
/// the outcome that ends this attempt (pending, retry, dead letter), already recorded.
pub(super) async fn refund_step(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    ticket: &mut ClaimTicket,
    attempt: Attempt<'_>,
) -> Result<(RefundRecord, bool), Outcome> {
    let name = provider.name();
    // Whether a call of this attempt reached the provider and failed: then the attempt
    // counts, even if a later retry in it was held back by the guard.
    let mut failed_call = false;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(pipeline.options.retry.first_delay)
        .with_max_delay(pipeline.options.retry.max_delay)
        .with_max_times(pipeline.options.retry.times as usize)
        .with_jitter()
        .build();
    loop {
        let started = Instant::now();
        let (answer, adopted) = call_provider(pipeline, provider, request, ticket).await;
        pipeline.observe_step("provider", started);
        let error = match answer {
            Ok(refund) => {
                return settle_answer(
                    pipeline, provider, request, ticket, refund, adopted, attempt,
                )
                .await;
            }
            Err(error) => error,
        };
        // A quick retry in this attempt, if the error allows one and the budget lasts.
        let wait = match (&error, delays.next()) {
            (ProviderError::Transient { retry_after, .. }, Some(backoff)) => {
                Some(retry_after.map_or(backoff, |hint| hint.max(backoff)))
            }
            (ProviderError::Unknown { .. }, Some(backoff)) => Some(backoff),
            _ => None,
        }
        .filter(|wait| *wait <= pipeline.options.retry.max_delay);
        let Some(wait) = wait else {
            let started = Instant::now();
            let mut outcome = record_failure(pipeline, provider, request, ticket, error).await;
            if let Outcome::Retry { counts, .. } = &mut outcome {
                *counts |= failed_call;
            }
            pipeline.observe_step("record", started);
            return Err(outcome);
        };
        failed_call = true;
        debug!(job_id = %request.job_id, key = %request.key, error = %error, ?wait, "retrying in-process");
        pipeline
            .metrics
            .retried
            .with_label_values(&[name.as_str()])
            .inc();
        // After an unknown outcome the next call must look before it sends.
        ticket.uncertain |= matches!(error, ProviderError::Unknown { .. });
        tokio::select! {
            () = attempt.shutdown.cancelled() => {
                return Err(record_failure(pipeline, provider, request, ticket, error).await);
            }
            () = tokio::time::sleep(wait) => {}
        }
        match pipeline.store.renew(&request.key, ticket).await {
            Ok(true) => {}
            // The claim expired and another worker has the job now: it reconciles; stop here.
            Ok(false) => {
                return Err(Outcome::Retry {
                    provider: Some(name),
                    why: format!("the claim on {} was taken over while retrying", request.key),
                    after: Duration::ZERO,
                    counts: false,
                });
            }
            Err(_) => return Err(record_failure(pipeline, provider, request, ticket, error).await),
        }
    }
}

/// Asks the provider what the claim calls for: a status check, a look-up, or the refund.
/// Returns the provider's answer and whether it is a refund found rather than created.
async fn call_provider(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    ticket: &mut ClaimTicket,
) -> (Result<ProviderRefund, ProviderError>, bool) {
    if let Some(pending) = &ticket.pending {
        return (
            provider.status(request, &pending.refund.refund_id).await,
            true,
        );
    }
    if ticket.uncertain {
        match provider.find(request, ticket.snapshot.as_deref()).await {
            Ok(Some(found)) => {
                info!(job_id = %request.job_id, key = %request.key, refund_id = %found.refund_id,
                      "adopting the refund an earlier attempt made");
                return (Ok(found), true);
            }
            Ok(None) => {
                // Nothing there: the earlier attempt never executed. Make sure the claim is
                // still ours (the look-up took time) before sending.
                match pipeline.store.renew(&request.key, ticket).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let why = "the claim was taken over during reconciliation";
                        return (Err(ProviderError::transient(why)), false);
                    }
                    Err(e) => {
                        let why = format!("cannot renew the claim: {e}");
                        return (Err(ProviderError::unknown(why)), false);
                    }
                }
            }
            // Not asked at all (circuit open, rate limit): nothing changed.
            Err(skipped @ ProviderError::Skipped { .. }) => return (Err(skipped), false),
            // The provider says reconciliation is impossible (e.g. two candidate refunds):
            // a human decides; the record stays uncertain.
            Err(refused @ ProviderError::Permanent { .. }) => return (Err(refused), false),
            Err(error) => {
                // Still uncertain: keep it that way for the next attempt.
                return (Err(ProviderError::unknown(error.to_string())), false);
            }
        }
    }
    // Every send is preceded by a stored snapshot (for the providers that take one), so
    // "no snapshot" always means "never sent". An uncertain record keeps its first one:
    // that is what a late-executing earlier send is measured against.
    if provider.needs_snapshot() && ticket.snapshot.is_none() {
        match record_snapshot(pipeline, provider, request, ticket).await {
            Ok(snapshot) => ticket.snapshot = snapshot,
            Err(error) => return (Err(error), false),
        }
    }
    // Nothing has been sent yet. Once the guard's waits (rate limit, call slot) are over, the
    // claim must still be ours and last the call out; if it is no longer ours, or Redis
    // cannot renew it, the attempt ends without a send.
    let (store, key, need) = (&pipeline.store, &request.key, pipeline.options.send_lease);
    let before_send: BeforeSend<'_> = Box::new(move || {
        Box::pin(async move {
            match store.keep_lease_for(key, ticket, need).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ProviderError::transient(
                    "the claim was taken over before sending",
                )),
                Err(e) => Err(ProviderError::transient(format!(
                    "cannot renew the claim before sending: {e}"
                ))),
            }
        })
    });
    (provider.refund_checked(request, before_send).await, false)
}

/// Records what the payment looks like at the provider before a send (for providers that
/// need it to reconcile later), and returns it.
async fn record_snapshot(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    ticket: &ClaimTicket,
) -> Result<Option<String>, ProviderError> {
    let snapshot = match provider.snapshot(request).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return Ok(None),
        // Only a read failed: nothing was sent.
        Err(ProviderError::Unknown { why }) => return Err(ProviderError::transient(why)),
        Err(other) => return Err(other),
    };
    match pipeline
        .store
        .save_snapshot(&request.key, ticket, &snapshot)
        .await
    {
        Ok(true) => Ok(Some(snapshot)),
        Ok(false) => Err(ProviderError::transient(
            "the claim was taken over before sending",
        )),
        Err(e) => Err(ProviderError::transient(format!(
            "cannot record the pre-send snapshot: {e}"
        ))),
    }
}

/// What the provider answered about the refund: a confirmed one is returned for the caller to
/// record with the job's other steps; a pending or failed one is recorded here and ends the
/// attempt.
async fn settle_answer(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    ticket: &ClaimTicket,
    refund: ProviderRefund,
    adopted: bool,
    attempt: Attempt<'_>,
) -> Result<(RefundRecord, bool), Outcome> {
    let name = provider.name();
    let record = RefundRecord {
        provider: name,
        refund: refund.clone(),
    };
    let (settle, reason, stored) = match &refund.status {
        RefundStatus::Succeeded => return Ok((record, adopted)),
        RefundStatus::Pending => (Settle::Pending, String::new(), Some(&record)),
        // The provider answered about this very refund: nothing is left uncertain.
        RefundStatus::Failed { reason } => {
            (Settle::Failed { uncertain: false }, reason.clone(), None)
        }
    };
    settle_durably(
        pipeline, request, ticket, settle, stored, &record, &reason, attempt,
    )
    .await?;
    Err(match refund.status {
        RefundStatus::Pending => Outcome::Pending {
            provider: name,
            refund_id: refund.refund_id,
        },
        _ => Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider: Some(name),
            why: reason,
        },
    })
}

/// Records a failed attempt (see [`failure_plan`]) and returns how it ends.
async fn record_failure(
    pipeline: &Pipeline,
    provider: &dyn RefundProvider,
    request: &RefundRequest,
    ticket: &ClaimTicket,
    error: ProviderError,
) -> Outcome {
    let reason = error.to_string();
    let plan = failure_plan(provider.name(), ticket, error);
    // If this write fails the claim simply stays ours until its lease ends; the next
    // attempt then takes it over as uncertain and reconciles first. Safe either way.
    if let Err(e) = pipeline
        .store
        .settle(&request.key, ticket, plan.settle, plan.record, &reason)
        .await
    {
        warn!(job_id = %request.job_id, key = %request.key, error = %e,
              "could not record the failed attempt; the claim will expire and be reconciled");
    }
    plan.outcome
}

/// What a failed provider call leaves in the record, and how the attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FailurePlan<'t> {
    /// The settle written to the record.
    settle: Settle,
    /// The refund kept in the record (a pending one stays).
    record: Option<&'t RefundRecord>,
    /// How the attempt ends.
    outcome: Outcome,
}

/// The decision behind [`record_failure`], pure so a table can test it: what `error` from
/// `name` means for the record held by `ticket` and for the job.
fn failure_plan(name: ProviderName, ticket: &ClaimTicket, error: ProviderError) -> FailurePlan<'_> {
    // A pending refund stays pending whatever its status check did: the refund exists.
    // Uncertainty is sticky: a look-up that found nothing does not prove that an earlier
    // request (maybe still executing at the provider) never will, so once a record is
    // uncertain, every later attempt reconciles first.
    let uncertain = ticket.uncertain || matches!(error, ProviderError::Unknown { .. });
    let (settle, record) = match (&error, &ticket.pending) {
        (_, Some(pending)) => (Settle::Pending, Some(pending)),
        // A refusal can only be taken as final when no earlier send may have executed: for
        // an uncertain record (say, two candidate refunds found, or a refusal that our own
        // earlier refund may have caused) the money may have moved. The record stays
        // uncertain with its steps, so a replay reconciles first and a governed job keeps
        // its mandate reservation.
        (ProviderError::Permanent { .. }, None) if !ticket.uncertain => {
            (Settle::Failed { uncertain }, None)
        }
        (_, None) => (Settle::Released { uncertain }, None),
    };
    let outcome = match error {
        ProviderError::Permanent { why, .. } if ticket.pending.is_none() => Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider: Some(name),
            why,
        },
        ProviderError::Transient { why, retry_after } => Outcome::Retry {
            provider: Some(name),
            why,
            after: retry_after.unwrap_or(Duration::ZERO),
            counts: true,
        },
        // The provider was never called: wait without spending an attempt.
        ProviderError::Skipped { why, retry_after } => Outcome::Retry {
            provider: Some(name),
            why,
            after: retry_after.unwrap_or(Duration::from_secs(1)),
            counts: false,
        },
        ProviderError::Permanent { why, .. } | ProviderError::Unknown { why } => Outcome::Retry {
            provider: Some(name),
            why,
            after: Duration::ZERO,
            counts: true,
        },
    };
    FailurePlan {
        settle,
        record,
        outcome,
    }
}

/// Writes a provider-confirmed result through [`durably`]: giving up early would let a later
/// copy of the job pay again on a provider without idempotency keys, so the only ways out
/// without the write are handing the message back (its redelivery reconciles) and a dead
/// letter naming `made`, the provider's refund, when Redis holds unreadable data.
#[allow(clippy::too_many_arguments)]
async fn settle_durably(
    pipeline: &Pipeline,
    request: &RefundRequest,
    ticket: &ClaimTicket,
    settle: Settle,
    stored: Option<&RefundRecord>,
    made: &RefundRecord,
    reason: &str,
    attempt: Attempt<'_>,
) -> Result<(), Outcome> {
    let about = DurableWrite {
        what: "the result",
        record: request.key.as_str(),
        refund_id: Some(&made.refund.refund_id),
        provider: Some(made.provider),
    };
    durably(about, &pipeline.readiness, attempt.shutdown, || {
        pipeline
            .store
            .settle(&request.key, ticket, settle, stored, reason)
    })
    .await
}

impl Pipeline {
    fn observe_step(&self, step: &str, started: Instant) {
        self.metrics
            .step_duration
            .with_label_values(&[step])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordState;

    fn ticket(uncertain: bool, pending: Option<RefundRecord>) -> ClaimTicket {
        ClaimTicket {
            owner: "owner-1".into(),
            uncertain,
            pending,
            snapshot: None,
            takeovers: 0,
            steps: std::collections::BTreeMap::new(),
            lease_from: Instant::now(),
        }
    }

    fn pending_refund() -> RefundRecord {
        RefundRecord {
            provider: ProviderName::Stripe,
            refund: ProviderRefund {
                refund_id: "re_pending".into(),
                status: RefundStatus::Pending,
                amount: 100,
            },
        }
    }

    fn retry(why: &str, after: Duration, counts: bool) -> Outcome {
        Outcome::Retry {
            provider: Some(ProviderName::Stripe),
            why: why.into(),
            after,
            counts,
        }
    }

    fn dead_letter(why: &str) -> Outcome {
        Outcome::DeadLetter {
            class: FailureClass::Permanent,
            provider: Some(ProviderName::Stripe),
            why: why.into(),
        }
    }

    fn permanent(why: &str) -> ProviderError {
        ProviderError::Permanent {
            code: None,
            why: why.into(),
        }
    }

    #[test]
    fn a_failed_provider_call_is_recorded_by_its_classification() {
        let secs = Duration::from_secs;
        // (case, record uncertain before, pending refund, error,
        //  state written, uncertain written, outcome)
        let table = [
            (
                "transient: released, the next copy sends again",
                false,
                None,
                ProviderError::transient("503"),
                RecordState::Released,
                false,
                retry("503", Duration::ZERO, true),
            ),
            (
                "transient with the provider's hint: retried after it",
                false,
                None,
                ProviderError::Transient {
                    why: "429".into(),
                    retry_after: Some(secs(3)),
                },
                RecordState::Released,
                false,
                retry("429", secs(3), true),
            ),
            (
                "permanent: failed for good, dead-lettered",
                false,
                None,
                permanent("declined"),
                RecordState::Failed,
                false,
                dead_letter("declined"),
            ),
            (
                "unknown: released uncertain, the next copy reconciles first",
                false,
                None,
                ProviderError::unknown("timeout"),
                RecordState::Released,
                true,
                retry("timeout", Duration::ZERO, true),
            ),
            (
                "skipped by the guard: costs no attempt",
                false,
                None,
                ProviderError::Skipped {
                    why: "circuit open".into(),
                    retry_after: None,
                },
                RecordState::Released,
                false,
                retry("circuit open", secs(1), false),
            ),
            (
                "permanent on an uncertain record: the money may have moved, it stays uncertain",
                true,
                None,
                permanent("two candidates"),
                RecordState::Released,
                true,
                dead_letter("two candidates"),
            ),
            (
                "transient on an uncertain record: uncertainty is sticky",
                true,
                None,
                ProviderError::transient("503"),
                RecordState::Released,
                true,
                retry("503", Duration::ZERO, true),
            ),
            (
                "unknown status check of a pending refund: it stays pending",
                false,
                Some(pending_refund()),
                ProviderError::unknown("timeout"),
                RecordState::Pending,
                false,
                retry("timeout", Duration::ZERO, true),
            ),
            (
                "permanent status check of a pending refund: the refund exists, retried",
                false,
                Some(pending_refund()),
                permanent("gone"),
                RecordState::Pending,
                false,
                retry("gone", Duration::ZERO, true),
            ),
        ];
        for (case, uncertain, pending, error, state, uncertain_after, outcome) in table {
            let ticket = ticket(uncertain, pending.clone());
            let plan = failure_plan(ProviderName::Stripe, &ticket, error);
            assert_eq!(plan.settle.state(), (state, uncertain_after), "{case}");
            assert_eq!(
                plan.record,
                pending.as_ref(),
                "{case}: the pending refund is kept"
            );
            assert_eq!(plan.outcome, outcome, "{case}");
        }
    }
}
