//! Claims: the record of one idempotency key through its states (claim, renew, snapshot,
//! steps, settle), its read for operators, and the adoption of records written before keys
//! carried a hash tag. Every transition is one Lua script on the record's one key.

use std::time::Duration;

use super::{
    Claim, ClaimTicket, IdempotencyStore, RecordState, RecordView, RefundRecord, Settle, millis,
    parse_record,
};
use crate::{
    job::IdempotencyKey,
    store::{StoreError, redis_call},
};

impl IdempotencyStore {
    /// Moves a record written under the layout before the hash tag to its key, with the TTL it
    /// had left, unless the record already exists there. Only a worker of that older version
    /// could still write the old key, which is why an upgrade stops every old worker first.
    async fn adopt_legacy(&self, key: &IdempotencyKey) -> Result<(), StoreError> {
        if !self.read_legacy {
            return Ok(());
        }
        let [legacy] = self.keys.legacy_read_pipeline(key);
        let (fields, ttl): (Vec<String>, i64) = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HGETALL")
                .arg(&legacy)
                .cmd("PTTL")
                .arg(&legacy);
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        let ttl = match ttl {
            _ if fields.is_empty() => return Ok(()),
            remaining if remaining > 0 => u64::try_from(remaining).unwrap_or(1),
            // No TTL (records always get one): give it a full one rather than forever.
            _ => millis(self.ttl),
        };
        let keys = self.keys.record_script(key);
        let _: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.adopt.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            call.arg(ttl).arg(&fields);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        let _: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&legacy);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        tracing::info!(key = %key, "adopted an idempotency record from the layout before hash tags");
        Ok(())
    }

    /// Claims `key` for an attempt holding `owner`. Repeating a claim with the same owner
    /// returns the same claim, so a call whose answer was lost can simply be repeated.
    /// `fingerprint` is recorded; a record holding it or `legacy` (the same job's fingerprint
    /// as an older worker wrote it) is this job's, any other is a conflict.
    pub async fn claim(
        &self,
        key: &IdempotencyKey,
        owner: &str,
        (fingerprint, legacy): (&str, &str),
        job_id: &str,
    ) -> Result<Claim, StoreError> {
        self.adopt_legacy(key).await?;
        let [redis_key] = self.keys.record_script(key);
        let asked = std::time::Instant::now();
        let reply: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.claim.key(&redis_key);
            call.arg(owner)
                .arg(millis(self.lease))
                .arg(fingerprint)
                .arg(millis(self.ttl))
                .arg(job_id)
                .arg(legacy);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            "claimed" => Ok(Claim::Claimed(ClaimTicket {
                owner: owner.to_owned(),
                uncertain: field(1) == "1",
                pending: parse_record(field(2))?
                    .filter(|r| r.refund.status == crate::providers::RefundStatus::Pending),
                snapshot: Some(field(3)).filter(|s| !s.is_empty()).map(str::to_owned),
                takeovers: field(4).parse().unwrap_or(0),
                steps: reply
                    .get(5..)
                    .unwrap_or_default()
                    .chunks(2)
                    .filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone())))
                    .collect(),
                lease_from: asked,
            })),
            "done" => Ok(Claim::Done(parse_record(field(1))?)),
            // What is left of the holder's lease: never more than a whole lease, whatever the
            // stored expiry says (an edited one must not park the job, or its sibling, for long).
            "busy" => Ok(Claim::Busy {
                retry_in: Duration::from_millis(field(1).parse().unwrap_or(1000)).min(self.lease),
            }),
            "conflict" => Ok(Claim::Conflict {
                existing: field(1).to_owned(),
            }),
            other => Err(StoreError::Corrupt(format!(
                "claim script answered {other:?}"
            ))),
        }
    }

    /// Makes sure the claim lasts at least `need` more (renewing it when less is left, or
    /// when `need` is the whole lease or more), so that a send about to start ends inside the
    /// lease: the steps before it (a governed job's ERP and mandate checks, a snapshot read,
    /// a wait for the provider's rate limit) must not leave another worker free to take the
    /// job over while the refund executes. `false` when another attempt took it over.
    pub async fn keep_lease_for(
        &self,
        key: &IdempotencyKey,
        ticket: &mut ClaimTicket,
        need: Duration,
    ) -> Result<bool, StoreError> {
        let left = self.lease.saturating_sub(ticket.lease_from.elapsed());
        if need < self.lease && left > need {
            return Ok(true);
        }
        self.renew(key, ticket).await
    }

    /// Extends the lease of a claim still held; `false` when another attempt took it over.
    pub async fn renew(
        &self,
        key: &IdempotencyKey,
        ticket: &mut ClaimTicket,
    ) -> Result<bool, StoreError> {
        let asked = std::time::Instant::now();
        let [redis_key] = self.keys.record_script(key);
        let held: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.renew.key(&redis_key);
            call.arg(&ticket.owner).arg(millis(self.lease));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        if held == 1 {
            ticket.lease_from = asked;
        }
        Ok(held == 1)
    }

    /// Stores the provider's snapshot of the payment before this attempt sends; `false` when
    /// the claim is no longer this attempt's (then it must not send).
    pub async fn save_snapshot(
        &self,
        key: &IdempotencyKey,
        ticket: &ClaimTicket,
        snapshot: &str,
    ) -> Result<bool, StoreError> {
        let [redis_key] = self.keys.record_script(key);
        let held: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.snapshot.key(&redis_key);
            call.arg(&ticket.owner).arg(snapshot);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(held == 1)
    }

    /// Records a finished step of the job (or clears it, with an empty value); `false` when
    /// the claim is no longer this attempt's. Repeating it is harmless.
    pub async fn save_step(
        &self,
        key: &IdempotencyKey,
        ticket: &ClaimTicket,
        step: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let [redis_key] = self.keys.record_script(key);
        let held: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.step.key(&redis_key);
            call.arg(&ticket.owner).arg(step).arg(value);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(held == 1)
    }

    /// Records the end of an attempt. Idempotent: settling again changes nothing.
    pub async fn settle(
        &self,
        key: &IdempotencyKey,
        ticket: &ClaimTicket,
        settle: Settle,
        record: Option<&RefundRecord>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (state, uncertain) = settle.state();
        let result = match record {
            Some(r) => serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => String::new(),
        };
        let [redis_key] = self.keys.record_script(key);
        let _: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.settle.key(&redis_key);
            call.arg(&ticket.owner)
                .arg(state.as_str())
                .arg(&result)
                .arg(if uncertain { "1" } else { "0" })
                .arg(reason)
                .arg(millis(self.ttl));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Whether the attempt holding `owner` is the one that settled `key`'s record failed, and it
    /// still is: only then is what it reserved its own to give back (a takeover's refund may be
    /// moving under the same reservation).
    pub async fn failed_by(&self, key: &IdempotencyKey, owner: &str) -> Result<bool, StoreError> {
        let [redis_key] = self.keys.record_script(key);
        let (state, held_by): (Option<String>, Option<String>) = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&redis_key).arg("state").arg("failed_by");
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(state.as_deref() == Some("failed") && held_by.as_deref() == Some(owner))
    }

    /// Forgets the takeovers of a key: an operator replaying a poison message gives it a fresh
    /// start (its uncertainty stays, so the next attempt still reconciles first).
    pub async fn reset_takeovers(&self, key: &IdempotencyKey) -> Result<(), StoreError> {
        self.adopt_legacy(key).await?;
        let [redis_key] = self.keys.record_script(key);
        let _: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&redis_key).arg("takeovers");
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Reads a record (operators, `dlq replay`, tests).
    pub async fn get(&self, key: &IdempotencyKey) -> Result<Option<RecordView>, StoreError> {
        self.adopt_legacy(key).await?;
        let redis_key = self.keys.record(key);
        let fields: Vec<Option<String>> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&redis_key).arg(&[
                "state",
                "result",
                "claims",
                "reason",
                "uncertain",
                "fp",
                "snapshot",
            ]);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        let Some(state) = fields.first().cloned().flatten() else {
            return Ok(None);
        };
        let text = |i: usize| fields.get(i).cloned().flatten();
        Ok(Some(RecordView {
            state: RecordState::parse(&state)?,
            result: parse_record(text(1).as_deref().unwrap_or(""))?,
            claims: text(2).and_then(|c| c.parse().ok()).unwrap_or(0),
            reason: text(3).filter(|r| !r.is_empty()),
            uncertain: text(4).as_deref() == Some("1"),
            fingerprint: text(5).filter(|f| !f.is_empty()),
            snapshot: text(6).filter(|s| !s.is_empty()),
        }))
    }
}

/// What a claim answers, against the real Redis at 127.0.0.1:6379 (each test in its own
/// namespace, wiped afterwards): the decisions every attempt starts from.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ProviderRefund, RefundStatus};

    const LEASE: Duration = Duration::from_secs(30);
    const FINGERPRINT: &str = "stripe|pay_1|100|BRL|req:0123456789abcdef";
    const LEGACY: &str = "stripe|pay_1|100|BRL";

    /// A store in a namespace of its own.
    async fn store(lease: Duration) -> IdempotencyStore {
        let conn = crate::store::connect("redis://127.0.0.1:6379")
            .await
            .expect("Redis at 127.0.0.1:6379 (see README)");
        let namespace = format!("test-claims-{}", uuid::Uuid::new_v4());
        IdempotencyStore::new(conn, &namespace, lease, Duration::from_secs(60))
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::parse("refund:stripe:pay_1:2026-12-05").unwrap()
    }

    async fn claim(store: &IdempotencyStore, owner: &str) -> Claim {
        store
            .claim(&key(), owner, (FINGERPRINT, LEGACY), "job-1")
            .await
            .unwrap()
    }

    fn ticket(claim: Claim) -> ClaimTicket {
        match claim {
            Claim::Claimed(ticket) => ticket,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    fn refund() -> RefundRecord {
        RefundRecord {
            provider: crate::job::ProviderName::Stripe,
            refund: ProviderRefund {
                refund_id: "re_1".into(),
                status: RefundStatus::Succeeded,
                amount: 100,
            },
        }
    }

    #[tokio::test]
    async fn a_fresh_key_is_claimed_certain_with_no_takeovers() {
        let store = store(LEASE).await;
        let ticket = ticket(claim(&store, "a").await);
        assert!(!ticket.uncertain);
        assert_eq!(ticket.takeovers, 0);
        assert_eq!(ticket.pending, None);
        assert!(ticket.steps.is_empty());
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn a_done_key_answers_duplicate_with_the_earlier_refund() {
        let store = store(LEASE).await;
        let held = ticket(claim(&store, "a").await);
        store
            .settle(&key(), &held, Settle::Done, Some(&refund()), "")
            .await
            .unwrap();
        assert_eq!(claim(&store, "b").await, Claim::Done(Some(refund())));
        let view = store.get(&key()).await.unwrap().unwrap();
        assert_eq!(view.state, RecordState::Done);
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn a_key_held_by_a_live_lease_answers_busy_for_the_rest_of_it() {
        let store = store(LEASE).await;
        ticket(claim(&store, "a").await);
        match claim(&store, "b").await {
            Claim::Busy { retry_in } => assert!(
                retry_in > Duration::ZERO && retry_in <= LEASE,
                "{retry_in:?}"
            ),
            other => panic!("expected busy, got {other:?}"),
        }
        // The holder itself gets its own claim back (a repeated call whose answer was lost).
        ticket(claim(&store, "a").await);
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn a_lease_edited_far_into_the_future_is_waited_for_at_most_one_lease() {
        let store = store(LEASE).await;
        ticket(claim(&store, "a").await);
        let mut conn = store.conn.clone();
        let _: () = redis::cmd("HSET")
            .arg(store.keys.record(&key()))
            .arg("lease_until")
            .arg("99999999999999")
            .query_async(&mut conn)
            .await
            .unwrap();
        match claim(&store, "b").await {
            Claim::Busy { retry_in } => assert_eq!(retry_in, LEASE),
            other => panic!("expected busy, got {other:?}"),
        }
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_as_uncertain() {
        // Leases run on the Redis server's clock, so this one waits for real (briefly).
        let lease = Duration::from_millis(50);
        let store = store(lease).await;
        ticket(claim(&store, "a").await);
        tokio::time::sleep(lease * 2).await;
        let taken = ticket(claim(&store, "b").await);
        assert!(
            taken.uncertain,
            "the dead holder may have reached the provider"
        );
        assert_eq!(taken.takeovers, 1);
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn a_released_uncertain_attempt_is_claimed_uncertain_so_it_reconciles_first() {
        let store = store(LEASE).await;
        let held = ticket(claim(&store, "a").await);
        let released = Settle::Released { uncertain: true };
        store
            .settle(&key(), &held, released, None, "timeout")
            .await
            .unwrap();
        let view = store.get(&key()).await.unwrap().unwrap();
        assert_eq!(view.state, RecordState::Released);
        assert!(view.uncertain);
        let next = ticket(claim(&store, "b").await);
        assert!(next.uncertain);
        assert_eq!(next.takeovers, 0, "a release is not a takeover");
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_state_in_redis_reads_as_corrupt() {
        let store = store(LEASE).await;
        let mut conn = store.conn.clone();
        let _: () = redis::cmd("HSET")
            .arg(store.keys.record(&key()))
            .arg("state")
            .arg("refunded")
            .query_async(&mut conn)
            .await
            .unwrap();
        let error = store.get(&key()).await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn a_record_an_older_worker_fingerprinted_is_still_this_jobs_and_other_words_conflict() {
        let store = store(LEASE).await;
        // A refund done by a worker that recorded the fingerprint without the request digest.
        let older = ticket(
            store
                .claim(&key(), "old", (LEGACY, LEGACY), "job-1")
                .await
                .unwrap(),
        );
        store
            .settle(&key(), &older, Settle::Done, Some(&refund()), "")
            .await
            .unwrap();
        assert_eq!(claim(&store, "new").await, Claim::Done(Some(refund())));
        // The same payment and amount asked for in other words is not this job.
        let reworded = "stripe|pay_1|100|BRL|req:fedcba9876543210";
        let answer = store
            .claim(&key(), "other", (reworded, LEGACY), "job-2")
            .await
            .unwrap();
        assert_eq!(
            answer,
            Claim::Done(Some(refund())),
            "a legacy record cannot tell words apart"
        );
        store.delete_namespace().await.unwrap();

        // Recorded with the digest, a reworded request is a conflict.
        let store = self::store(LEASE).await;
        let held = ticket(claim(&store, "a").await);
        store
            .settle(&key(), &held, Settle::Done, Some(&refund()), "")
            .await
            .unwrap();
        let answer = store
            .claim(&key(), "b", (reworded, LEGACY), "job-2")
            .await
            .unwrap();
        assert_eq!(
            answer,
            Claim::Conflict {
                existing: FINGERPRINT.into()
            }
        );
        store.delete_namespace().await.unwrap();
    }

    #[tokio::test]
    async fn only_the_attempt_that_failed_a_record_may_give_its_reservation_back() {
        let store = store(Duration::from_millis(100)).await;
        let a = ticket(claim(&store, "a").await);
        store
            .settle(
                &key(),
                &a,
                Settle::Failed { uncertain: false },
                None,
                "declined",
            )
            .await
            .unwrap();
        assert!(store.failed_by(&key(), "a").await.unwrap());
        assert!(!store.failed_by(&key(), "b").await.unwrap());

        // B takes the claim over while A still runs; A's late failure changes nothing, and
        // A may not give back what B may be spending.
        let other = IdempotencyKey::parse("refund:stripe:pay_2:2026-12-05").unwrap();
        let a = ticket(
            store
                .claim(&other, "a", (FINGERPRINT, LEGACY), "job-1")
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        ticket(
            store
                .claim(&other, "b", (FINGERPRINT, LEGACY), "job-1")
                .await
                .unwrap(),
        );
        store
            .settle(
                &other,
                &a,
                Settle::Failed { uncertain: false },
                None,
                "declined",
            )
            .await
            .unwrap();
        assert!(!store.failed_by(&other, "a").await.unwrap());
        store.delete_namespace().await.unwrap();
    }
}
