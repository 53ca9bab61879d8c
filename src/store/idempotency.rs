//! The idempotency records: one Redis hash per idempotency key, moved through its states only
//! by the Lua scripts beside this file, so every transition is atomic and timed by the Redis
//! server's clock.
//!
//! ```text
//!   (none) ──claim──▶ claimed ──settle──▶ done      (the refund exists; later copies dedupe)
//!                       │  ▲   ├─settle─▶ pending   (accepted, not settled: next copy syncs)
//!      lease expired ───┘  │   ├─settle─▶ released  (transient: next copy sends again)
//!      (takeover, marks    │   └─settle─▶ failed    (permanent: a fixed copy may try again)
//!       it uncertain)      └──────claim── pending | released | failed
//! ```
//!
//! Each attempt holds an owner token. A call whose answer is lost (a timeout on a reconnecting
//! connection) is simply repeated: claiming with one's own token again returns the same claim,
//! and settling twice changes nothing. This store never decides about money; it records.
//!
//! Key layout ([`RecordKeys`] is the one place it is decided, and every call below takes its
//! keys from it). Every script touches one key, and a record's key carries its idempotency key
//! as Redis Cluster hash tag, so records spread over the cluster's slots by job:
//!
//! ```text
//! <ns>:idem:{<idempotency key>}   hash: the record (state, owner, lease, result, steps...)
//! <ns>:jobdate:<identity>         string: the day a dateless job was first seen, under its
//!                                 message id and under its body digest (`body-…`)
//! <ns>:order-refunds:<order id>   hash: idempotency key -> minor units refunded on the order
//! <ns>:dlq-amounts                hash: job id -> "amount currency" waiting in the DLQ
//! <ns>:health                     string: the readiness probe's last write
//! ```
//!
//! Before the hash tag, a record lived at `<ns>:idem:<idempotency key>`. Such a record is
//! adopted (copied under the new key with its remaining TTL, then deleted) the first time its
//! job is claimed or read, so an upgrade never forgets a refund (`[idempotency]
//! read_legacy_keys`, on by default; turn it off one record TTL after the upgrade).

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

use super::{StoreError, redis_call};
use crate::{
    job::{IdempotencyKey, JobDate, ProviderName},
    providers::ProviderRefund,
};

/// What a finished or pending refund looks like in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    /// The rail it ran on.
    pub provider: ProviderName,
    /// The provider's answer.
    pub refund: ProviderRefund,
}

/// This attempt's hold on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTicket {
    /// Proves which attempt holds the claim.
    pub owner: String,
    /// An earlier attempt may have reached the provider without recording its answer:
    /// reconcile with the provider before sending anything.
    pub uncertain: bool,
    /// A refund accepted earlier and not yet settled: sync its status, do not send again.
    pub pending: Option<RefundRecord>,
    /// The payment as the provider showed it before an earlier send (providers that cannot
    /// be asked by our key compare against it to find that send's refund).
    pub snapshot: Option<String>,
    /// How many times the claim was taken from a worker that died (or hung) holding it: a
    /// job that keeps killing its workers is a poison message.
    pub takeovers: u32,
    /// The job's finished steps (name → recorded value), so a retry resumes after them.
    pub steps: std::collections::BTreeMap<String, String>,
    /// When the current lease began, by this process's clock (taken before asking Redis, so
    /// never later than the server's): see [`IdempotencyStore::keep_lease_fresh`].
    pub lease_from: std::time::Instant,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This attempt may proceed.
    Claimed(ClaimTicket),
    /// The refund was already done: nothing to do.
    Done(Option<RefundRecord>),
    /// A live attempt holds the key; try again after `retry_in`.
    Busy {
        /// Time left on the holder's lease.
        retry_in: Duration,
    },
    /// The key was used for a different refund (another amount, payment or provider).
    Conflict {
        /// The fingerprint already recorded under the key.
        existing: String,
    },
}

/// The state an attempt leaves a record in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The refund succeeded.
    Done,
    /// Accepted, settling later.
    Pending,
    /// Transient failure: the next attempt sends again (after reconciling, if uncertain).
    Released {
        /// This attempt may have reached the provider.
        uncertain: bool,
    },
    /// Permanent failure.
    Failed {
        /// An earlier attempt may still have reached the provider: stays marked.
        uncertain: bool,
    },
}

/// A record as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// `claimed`, `pending`, `released`, `done` or `failed`.
    pub state: String,
    /// The refund, once there is one.
    pub result: Option<RefundRecord>,
    /// How many attempts claimed it.
    pub claims: u32,
    /// The reason of a permanent failure.
    pub reason: Option<String>,
    /// Whether an unrecorded provider call may exist.
    pub uncertain: bool,
    /// What refund the key was first used for ([`crate::pipeline::fingerprint`]).
    pub fingerprint: Option<String>,
}

/// The Redis keys of one namespace's records, and the KEYS of every script call: pure, so a
/// test checks the layout (one Redis Cluster slot per script call) the store really uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKeys {
    /// Every key starts with `<namespace>:`, so tests and tenants never meet. Never a hash tag
    /// itself (prefixes cannot contain braces), or every record would share one slot.
    namespace: String,
}

impl RecordKeys {
    /// The keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        debug_assert!(
            !namespace.contains(['{', '}']),
            "a namespace with braces would become every key's hash tag"
        );
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// `<ns>:idem:{<key>}`: the record, slotted by its idempotency key (which has no braces).
    pub fn record(&self, key: &IdempotencyKey) -> String {
        format!("{}:idem:{{{key}}}", self.namespace)
    }

    /// `<ns>:idem:<key>`: where the record lived before the hash tag (read to adopt it).
    pub fn legacy_record(&self, key: &IdempotencyKey) -> String {
        format!("{}:idem:{key}", self.namespace)
    }

    /// `<ns>:jobdate:<identity>`: the day a dateless job was first seen (identity: its message
    /// id, or its body digest).
    pub fn job_date(&self, job_id: &str) -> String {
        format!("{}:jobdate:{job_id}", self.namespace)
    }

    /// `<ns>:order-refunds:<order id>`: what each job refunded on an order.
    pub fn order_refunds(&self, order_id: &str) -> String {
        format!("{}:order-refunds:{order_id}", self.namespace)
    }

    /// `<ns>:dlq-amounts`: the money waiting in the dead-letter queue.
    pub fn dead_letter_amounts(&self) -> String {
        format!("{}:dlq-amounts", self.namespace)
    }

    /// `<ns>:health`: the key the readiness probe writes.
    pub fn health(&self) -> String {
        format!("{}:health", self.namespace)
    }

    /// KEYS of the record scripts (`claim`, `settle`, `renew`, `snapshot`, `step`, `adopt`).
    pub fn record_script(&self, key: &IdempotencyKey) -> [String; 1] {
        [self.record(key)]
    }

    /// KEYS of `pin_date`.
    pub fn pin_date_script(&self, job_id: &str) -> [String; 1] {
        [self.job_date(job_id)]
    }

    /// Keys of the `HSET` + `PEXPIRE` pipeline that counts a refund against its order.
    pub fn order_refund_pipeline(&self, order_id: &str) -> [String; 1] {
        [self.order_refunds(order_id)]
    }

    /// Keys of the `HGETALL` + `PTTL` pipeline that reads a legacy record.
    pub fn legacy_read_pipeline(&self, key: &IdempotencyKey) -> [String; 1] {
        [self.legacy_record(key)]
    }

    /// Every key of the namespace matches one of these (`SCAN MATCH`, for clean-up).
    pub fn patterns(&self) -> [String; 1] {
        [format!("{}:*", self.namespace)]
    }
}

/// The idempotency records of one namespace.
#[derive(Clone)]
pub struct IdempotencyStore {
    /// The reconnecting Redis connection.
    conn: ConnectionManager,
    /// Every key and every script's KEYS, from one place.
    keys: RecordKeys,
    /// Whether records from before the hash-tagged layout are looked for and adopted.
    read_legacy: bool,
    /// How long a claim holds.
    lease: Duration,
    /// How long a record lives.
    ttl: Duration,
    /// The scripts, loaded once (EVALSHA after the first call).
    scripts: &'static Scripts,
}

struct Scripts {
    adopt: Script,
    claim: Script,
    settle: Script,
    renew: Script,
    pin_date: Script,
    snapshot: Script,
    step: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        adopt: Script::new(include_str!("lua/adopt.lua")),
        claim: Script::new(include_str!("lua/claim.lua")),
        settle: Script::new(include_str!("lua/settle.lua")),
        renew: Script::new(include_str!("lua/renew.lua")),
        pin_date: Script::new(include_str!("lua/pin_date.lua")),
        snapshot: Script::new(include_str!("lua/snapshot.lua")),
        step: Script::new(include_str!("lua/step.lua")),
    })
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("keys", &self.keys)
            .field("read_legacy", &self.read_legacy)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore {
    /// A store over an open connection. It looks for records of the layout before the hash
    /// tag (see [`IdempotencyStore::reading_legacy_keys`]).
    pub fn new(conn: ConnectionManager, namespace: &str, lease: Duration, ttl: Duration) -> Self {
        Self {
            conn,
            keys: RecordKeys::new(namespace),
            read_legacy: true,
            lease,
            ttl,
            scripts: scripts(),
        }
    }

    /// The records of `namespace` as `[idempotency]` configures them.
    pub fn from_settings(
        conn: ConnectionManager,
        namespace: &str,
        settings: &crate::config::IdempotencySettings,
    ) -> Self {
        Self::new(conn, namespace, settings.lease, settings.ttl)
            .reading_legacy_keys(settings.read_legacy_keys)
    }

    /// Whether to look for (and adopt) records written before keys carried a hash tag: on
    /// until every such record has expired (one `[idempotency] ttl` after the upgrade).
    pub fn reading_legacy_keys(mut self, read: bool) -> Self {
        self.read_legacy = read;
        self
    }

    /// The key layout.
    pub fn keys(&self) -> &RecordKeys {
        &self.keys
    }

    /// The Redis key of an idempotency key.
    pub fn redis_key(&self, key: &IdempotencyKey) -> String {
        self.keys.record(key)
    }

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
    pub async fn claim(
        &self,
        key: &IdempotencyKey,
        owner: &str,
        fingerprint: &str,
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
                .arg(job_id);
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
            "busy" => Ok(Claim::Busy {
                retry_in: Duration::from_millis(field(1).parse().unwrap_or(1000)),
            }),
            "conflict" => Ok(Claim::Conflict {
                existing: field(1).to_owned(),
            }),
            other => Err(StoreError::Corrupt(format!(
                "claim script answered {other:?}"
            ))),
        }
    }

    /// Renews the claim when a third of its lease has gone by, so that a send starts well
    /// inside the lease: the steps before it (a governed job's ERP and mandate checks, a
    /// snapshot read) must not leave another worker free to take the job over while the
    /// refund executes. `false` when another attempt took it over.
    pub async fn keep_lease_fresh(
        &self,
        key: &IdempotencyKey,
        ticket: &mut ClaimTicket,
    ) -> Result<bool, StoreError> {
        if ticket.lease_from.elapsed() < self.lease / 3 {
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
        let (state, uncertain) = match settle {
            Settle::Done => ("done", false),
            Settle::Pending => ("pending", false),
            Settle::Released { uncertain } => ("released", uncertain),
            Settle::Failed { uncertain } => ("failed", uncertain),
        };
        let result = match record {
            Some(r) => serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => String::new(),
        };
        let [redis_key] = self.keys.record_script(key);
        let _: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.settle.key(&redis_key);
            call.arg(&ticket.owner)
                .arg(state)
                .arg(&result)
                .arg(if uncertain { "1" } else { "0" })
                .arg(reason)
                .arg(millis(self.ttl));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Whether Redis takes writes again after an outage. A write, not a PING: a Redis that
    /// is out of memory, read-only or failing to persist still answers PING.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.keys.health();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(crate::clock::now_rfc3339())
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The day a dateless job is keyed under, fixed at its first sight (SPEC §3a: the first key
    /// wins). A job is "the same job" when it comes back with the same AMQP `message_id` or
    /// with the same body: both identities are pinned to one day, and a later copy under
    /// either one finds that day whatever its headers or `timestamp` say. `first_sight` (the
    /// sealed day of our own copy, else the message's `timestamp`, else today) is used only
    /// when neither identity was seen before. The message id is the authority when the two
    /// disagree (a body first seen under another message id pins a new message id to its day).
    ///
    /// Each step is a single-key `SET NX` + `GET` (one Redis Cluster slot each): two copies
    /// racing at first sight agree, because both read back what the first `SET NX` wrote.
    pub async fn pin_job_date(
        &self,
        message_id: Option<&str>,
        body_id: &str,
        first_sight: JobDate,
    ) -> Result<JobDate, StoreError> {
        let Some(message_id) = message_id else {
            return self.pin_date(body_id, first_sight).await;
        };
        let body_pin = self.pinned_date(body_id).await?;
        let pinned = self
            .pin_date(message_id, body_pin.unwrap_or(first_sight))
            .await?;
        if body_pin.is_none() {
            self.pin_date(body_id, pinned).await?;
        }
        Ok(pinned)
    }

    /// The day pinned to one identity, if any (read-only).
    pub async fn pinned_date(&self, identity: &str) -> Result<Option<JobDate>, StoreError> {
        let redis_key = self.keys.job_date(identity);
        let pinned: Option<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let key = redis_key.clone();
            async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
        })
        .await?;
        pinned
            .map(|d| {
                JobDate::parse(&d)
                    .map_err(|e| StoreError::Corrupt(format!("pinned date of {identity}: {e}")))
            })
            .transpose()
    }

    /// Pins one identity to `day` unless it already has one; returns the pinned day.
    async fn pin_date(&self, job_id: &str, today: JobDate) -> Result<JobDate, StoreError> {
        let [redis_key] = self.keys.pin_date_script(job_id);
        let today = today.to_string();
        let pinned: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.pin_date.key(&redis_key);
            call.arg(&today).arg(millis(self.ttl));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        JobDate::parse(&pinned)
            .map_err(|e| StoreError::Corrupt(format!("pinned date of {job_id}: {e}")))
    }

    /// Deletes every record of this namespace (the demo's clean-up; never used on real data).
    pub async fn delete_namespace(&self) -> Result<u64, StoreError> {
        // Everything under `{namespace}:`, and the receipt chain's hash-tagged keys. SCAN
        // walks one server: on Redis Cluster this clean-up must run against every primary.
        let mut deleted = 0;
        let [own] = self.keys.patterns();
        for pattern in [own, format!("{{{}:receipts}}*", self.keys.namespace)] {
            deleted += self.delete_matching(&pattern).await?;
        }
        Ok(deleted)
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
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

    /// What other jobs have refunded on an order (governed refunds), leaving out `key`'s own.
    pub async fn order_refunded(
        &self,
        order_id: &str,
        key: &IdempotencyKey,
    ) -> Result<u64, StoreError> {
        let redis_key = self.keys.order_refunds(order_id);
        let refunds: std::collections::HashMap<String, u64> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&redis_key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(refunds
            .iter()
            .filter(|(k, _)| k.as_str() != key.as_str())
            .map(|(_, v)| v)
            .sum())
    }

    /// Counts a governed refund against its order. Idempotent per key: recording it again
    /// changes nothing.
    pub async fn record_order_refund(
        &self,
        order_id: &str,
        key: &IdempotencyKey,
        amount: u64,
    ) -> Result<(), StoreError> {
        let [redis_key] = self.keys.order_refund_pipeline(order_id);
        let _: () = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&redis_key)
                .arg(key.as_str())
                .arg(amount)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&redis_key)
                .arg(millis(self.ttl))
                .ignore();
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Notes a dead letter's money (for the money-stuck gauge): one entry per job id.
    pub async fn note_dead_letter(
        &self,
        job_id: &str,
        amount: u64,
        currency: &str,
    ) -> Result<(), StoreError> {
        let redis_key = self.keys.dead_letter_amounts();
        let value = format!("{amount} {currency}");
        let _: () = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&redis_key).arg(job_id).arg(&value);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Forgets dead letters that left the queue (replayed, purged, found refunded).
    pub async fn forget_dead_letters(&self, job_ids: &[String]) -> Result<(), StoreError> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let redis_key = self.keys.dead_letter_amounts();
        let _: () = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&redis_key).arg(job_ids);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Money waiting in the dead-letter queue, minor units per currency.
    pub async fn dead_letter_amounts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let redis_key = self.keys.dead_letter_amounts();
        let values: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HVALS");
            cmd.arg(&redis_key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        let mut totals = std::collections::BTreeMap::new();
        for value in values {
            if let Some((amount, currency)) = value.split_once(' ')
                && let Ok(amount) = amount.parse::<u64>()
            {
                *totals.entry(currency.to_owned()).or_default() += amount;
            }
        }
        Ok(totals)
    }

    /// Reads a record (operators, `dlq replay`, tests).
    pub async fn get(&self, key: &IdempotencyKey) -> Result<Option<RecordView>, StoreError> {
        self.adopt_legacy(key).await?;
        let redis_key = self.keys.record(key);
        let fields: Vec<Option<String>> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&redis_key)
                .arg(&["state", "result", "claims", "reason", "uncertain", "fp"]);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        let Some(state) = fields.first().cloned().flatten() else {
            return Ok(None);
        };
        let text = |i: usize| fields.get(i).cloned().flatten();
        Ok(Some(RecordView {
            state,
            result: parse_record(text(1).as_deref().unwrap_or(""))?,
            claims: text(2).and_then(|c| c.parse().ok()).unwrap_or(0),
            reason: text(3).filter(|r| !r.is_empty()),
            uncertain: text(4).as_deref() == Some("1"),
            fingerprint: text(5).filter(|f| !f.is_empty()),
        }))
    }
}

fn parse_record(text: &str) -> Result<Option<RefundRecord>, StoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("unreadable refund record {text:?}: {e}")))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
