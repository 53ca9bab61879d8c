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
}

/// The idempotency records of one namespace.
#[derive(Clone)]
pub struct IdempotencyStore {
    /// The reconnecting Redis connection.
    conn: ConnectionManager,
    /// Every key starts with `{namespace}:idem:`, so tests and tenants never meet.
    namespace: String,
    /// How long a claim holds.
    lease: Duration,
    /// How long a record lives.
    ttl: Duration,
    /// The scripts, loaded once (EVALSHA after the first call).
    scripts: &'static Scripts,
}

struct Scripts {
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
            .field("namespace", &self.namespace)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore {
    /// A store over an open connection.
    pub fn new(conn: ConnectionManager, namespace: &str, lease: Duration, ttl: Duration) -> Self {
        Self {
            conn,
            namespace: namespace.to_owned(),
            lease,
            ttl,
            scripts: scripts(),
        }
    }

    /// The Redis key of an idempotency key.
    pub fn redis_key(&self, key: &IdempotencyKey) -> String {
        format!("{}:idem:{}", self.namespace, key)
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
        let redis_key = self.redis_key(key);
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

    /// Extends the lease of a claim still held; `false` when another attempt took it over.
    pub async fn renew(
        &self,
        key: &IdempotencyKey,
        ticket: &ClaimTicket,
    ) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        let held: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.renew.key(&redis_key);
            call.arg(&ticket.owner).arg(millis(self.lease));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
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
        let redis_key = self.redis_key(key);
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
        let redis_key = self.redis_key(key);
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
        let redis_key = self.redis_key(key);
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
        let key = format!("{}:health", self.namespace);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(crate::broker::envelope::now_rfc3339())
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The day a job without a date of its own is keyed under: the day it was first seen,
    /// pinned by job id, so a redelivery on a later day derives the same idempotency key.
    pub async fn pin_date(&self, job_id: &str, today: JobDate) -> Result<JobDate, StoreError> {
        let redis_key = format!("{}:jobdate:{job_id}", self.namespace);
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
        // Everything under `{namespace}:`, and the receipt chain's hash-tagged keys.
        let mut deleted = 0;
        for pattern in [
            format!("{}:*", self.namespace),
            format!("{{{}:receipts}}*", self.namespace),
        ] {
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
        let redis_key = self.redis_key(key);
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
        let redis_key = format!("{}:order-refunds:{order_id}", self.namespace);
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
        let redis_key = format!("{}:order-refunds:{order_id}", self.namespace);
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
        let redis_key = format!("{}:dlq-amounts", self.namespace);
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
        let redis_key = format!("{}:dlq-amounts", self.namespace);
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
        let redis_key = format!("{}:dlq-amounts", self.namespace);
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
        let redis_key = self.redis_key(key);
        let fields: Vec<Option<String>> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&redis_key)
                .arg(&["state", "result", "claims", "reason", "uncertain"]);
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
