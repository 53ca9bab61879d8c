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
//!
//! One key family per file, all methods of [`IdempotencyStore`]: `claims` (the records),
//! `order_tally`, `dead_letter_tally`, `date_pins` and `wipe` (the namespace clean-up); this
//! file keeps the shared types, [`RecordKeys`] and the readiness probe's write.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

mod claims;
mod date_pins;
mod dead_letter_tally;
mod order_tally;
mod wipe;

use super::StoreError;
use crate::{
    job::{IdempotencyKey, ProviderName},
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
    /// never later than the server's): see [`IdempotencyStore::keep_lease_for`].
    pub lease_from: std::time::Instant,
}

impl ClaimTicket {
    /// How an attempt that ends before sending anything (refused, or nowhere to send) lets go
    /// of its claim without erasing what earlier attempts left: a pending refund stays pending,
    /// with its result, so the next copy syncs it; a claim that may have sent stays uncertain,
    /// so the next copy reconciles first; only a claim where nothing can have moved is failed.
    pub fn let_go_unsent(&self) -> (Settle, Option<&RefundRecord>) {
        match &self.pending {
            Some(pending) => (Settle::Pending, Some(pending)),
            None if self.uncertain => (Settle::Released { uncertain: true }, None),
            None => (Settle::Failed { uncertain: false }, None),
        }
    }
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
    /// The key was used for a different refund (another amount, payment or provider) or for
    /// other words to the provider (another reason or description).
    Conflict {
        /// The fingerprint already recorded under the key.
        existing: String,
    },
}

/// The state an attempt leaves a record in (see [`Settle::state`]).
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

/// The state a record is in (its `state` field), as the Lua scripts write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// An attempt holds it (or held it until its lease ran out).
    Claimed,
    /// The refund exists: every later copy of the job is a duplicate.
    Done,
    /// The provider accepted the refund but has not settled it: the next copy syncs.
    Pending,
    /// Let go after a transient failure: the next copy sends again (or reconciles first).
    Released,
    /// Failed for good: a fixed copy may try again.
    Failed,
}

impl Settle {
    /// The state this settle writes, and whether the record is left uncertain.
    pub fn state(self) -> (RecordState, bool) {
        match self {
            Settle::Done => (RecordState::Done, false),
            Settle::Pending => (RecordState::Pending, false),
            Settle::Released { uncertain } => (RecordState::Released, uncertain),
            Settle::Failed { uncertain } => (RecordState::Failed, uncertain),
        }
    }
}

impl RecordState {
    /// Every state, in the order of the module doc's diagram.
    pub const ALL: [RecordState; 5] = [
        RecordState::Claimed,
        RecordState::Done,
        RecordState::Pending,
        RecordState::Released,
        RecordState::Failed,
    ];

    /// The text the scripts store.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Claimed => "claimed",
            RecordState::Done => "done",
            RecordState::Pending => "pending",
            RecordState::Released => "released",
            RecordState::Failed => "failed",
        }
    }

    /// The state stored as `text`; anything else is data this code cannot read.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown record state {text:?}")))
    }
}

impl std::fmt::Display for RecordState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Where the record is in its life.
    pub state: RecordState,
    /// The refund, once there is one.
    pub result: Option<RefundRecord>,
    /// How many attempts claimed it.
    pub claims: u32,
    /// The reason of a permanent failure.
    pub reason: Option<String>,
    /// Whether an unrecorded provider call may exist.
    pub uncertain: bool,
    /// What refund the key was first used for ([`crate::pipeline::Fingerprint`]).
    pub fingerprint: Option<String>,
    /// The payment as its provider showed it before a send (providers that cannot be asked
    /// by our key find that send's refund against it).
    pub snapshot: Option<String>,
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
    /// The namespace every key is under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

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
        adopt: Script::new(include_str!("../lua/adopt.lua")),
        claim: Script::new(include_str!("../lua/claim.lua")),
        settle: Script::new(include_str!("../lua/settle.lua")),
        renew: Script::new(include_str!("../lua/renew.lua")),
        pin_date: Script::new(include_str!("../lua/pin_date.lua")),
        snapshot: Script::new(include_str!("../lua/snapshot.lua")),
        step: Script::new(include_str!("../lua/step.lua")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_state_reads_back_as_itself() {
        for state in RecordState::ALL {
            assert_eq!(RecordState::parse(state.as_str()).unwrap(), state);
        }
    }

    #[test]
    fn an_unknown_record_state_is_corrupt_data_not_a_panic() {
        for text in ["", "DONE", "refunded", "done "] {
            let error = RecordState::parse(text).unwrap_err();
            assert!(
                matches!(&error, StoreError::Corrupt(why) if why.contains("unknown record state")),
                "{text:?}: {error:?}"
            );
        }
    }

    #[test]
    fn each_settle_writes_its_state_and_keeps_uncertainty_where_it_may() {
        let table = [
            (Settle::Done, (RecordState::Done, false)),
            (Settle::Pending, (RecordState::Pending, false)),
            (
                Settle::Released { uncertain: false },
                (RecordState::Released, false),
            ),
            (
                Settle::Released { uncertain: true },
                (RecordState::Released, true),
            ),
            (
                Settle::Failed { uncertain: false },
                (RecordState::Failed, false),
            ),
            (
                Settle::Failed { uncertain: true },
                (RecordState::Failed, true),
            ),
        ];
        for (settle, written) in table {
            assert_eq!(settle.state(), written, "{settle:?}");
        }
    }
}
