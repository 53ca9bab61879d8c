//! The audit log in Redis: one log per namespace, appended by the console and the CLI, never
//! rewritten.
//!
//! ```text
//!   {<ns>:audit}:log    hash  position → the entry's exact canonical text
//!   {<ns>:audit}:head   hash  seq, hash of the last entry
//! ```
//!
//! Both share one hash tag, so the append script runs on one Redis Cluster slot. Appending is
//! optimistic: the entry is sealed after the head last read and stored only if the head is
//! still that one (checked and moved inside the script), else sealed again after the new head.

use redis::{Script, aio::ConnectionManager};

use super::{StoreError, redis_call};
use crate::{
    governance::{
        audit::{Action, AuditReport, Entry, verify_log},
        mandate::rfc3339,
        receipt::GENESIS,
    },
    signing::{KeyPair, PublicKey},
};

/// Appends lost to other appenders before giving up.
const MAX_ATTEMPTS: u32 = 100;

const APPEND: &str = r"
-- KEYS[1] the log, KEYS[2] the head; ARGV[1] seq, ARGV[2] prev hash, ARGV[3] hash,
-- ARGV[4] text, ARGV[5] the genesis hash. Returns 1 when appended, 0 when the head moved.
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = tonumber(head[1] or '0')
local hash = head[2] or ARGV[5]
if seq + 1 ~= tonumber(ARGV[1]) or hash ~= ARGV[2] then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[3])
return 1
";

/// The log's and the head's Redis keys in `namespace`.
fn keys_of(namespace: &str) -> [String; 2] {
    let tag = format!("{{{namespace}:audit}}");
    [format!("{tag}:log"), format!("{tag}:head")]
}

/// How many entries the audit log of `namespace` stores, and its head's sequence number
/// (both 0 for an empty log). Fewer entries than the head's number means one was deleted.
/// Reading them needs no key: the worker exports them as gauges.
pub async fn counts(conn: &ConnectionManager, namespace: &str) -> Result<(u64, u64), StoreError> {
    let [log, head] = keys_of(namespace);
    let (entries, seq): (u64, Option<u64>) = redis_call(|| {
        let mut conn = conn.clone();
        // MULTI/EXEC: an append between the two reads would look like a deleted entry.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HLEN")
            .arg(&log)
            .cmd("HGET")
            .arg(&head)
            .arg("seq");
        async move { pipe.query_async(&mut conn).await }
    })
    .await?;
    Ok((entries, seq.unwrap_or(0)))
}

/// The audit log of one namespace.
#[derive(Clone)]
pub struct AuditLog {
    conn: ConnectionManager,
    log: String,
    head: String,
    key: KeyPair,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// The log of `namespace` (the queue prefix), signing with `key` (the receipts key: the
    /// service's own).
    pub fn new(conn: ConnectionManager, namespace: &str, key: KeyPair) -> Self {
        let [log, head] = keys_of(namespace);
        Self {
            conn,
            log,
            head,
            key,
        }
    }

    /// Its Redis keys: the log and the head.
    pub fn keys(&self) -> [&str; 2] {
        [&self.log, &self.head]
    }

    /// Appends `action` now; returns the entry as stored.
    pub async fn append(&self, action: Action) -> Result<Entry, StoreError> {
        let script = Script::new(APPEND);
        for _ in 0..MAX_ATTEMPTS {
            let (seq, prev) = self.head().await?.unwrap_or((0, GENESIS.to_owned()));
            let at = rfc3339(time::OffsetDateTime::now_utc());
            let entry = Entry::seal(seq + 1, &prev, &at, action.clone(), &self.key);
            let text = entry.to_text();
            let appended: i64 = redis_call(|| {
                let mut conn = self.conn.clone();
                let mut call = script.key(&self.log);
                call.key(&self.head)
                    .arg(entry.seq)
                    .arg(&entry.prev_hash)
                    .arg(&entry.hash)
                    .arg(&text)
                    .arg(GENESIS);
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
            if appended == 1 {
                return Ok(entry);
            }
        }
        Err(StoreError::Unavailable(
            "could not append to the audit log: too many appenders at once".into(),
        ))
    }

    /// The last entry's seq and hash.
    pub async fn head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let (seq, hash): (Option<u64>, Option<String>) = self
            .call(redis::cmd("HMGET").arg(&self.head).arg("seq").arg("hash"))
            .await?;
        Ok(seq.zip(hash))
    }

    /// Every stored entry's text, by position.
    pub async fn stored(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let all: Vec<(String, String)> = self.call(redis::cmd("HGETALL").arg(&self.log)).await?;
        let mut out: Vec<(u64, String)> = all
            .into_iter()
            .filter_map(|(seq, text)| Some((seq.parse().ok()?, text)))
            .collect();
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out)
    }

    /// The last `limit` readable entries, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let stored = self.stored().await?;
        let skip = stored.len().saturating_sub(limit);
        Ok(stored
            .into_iter()
            .skip(skip)
            .filter_map(|(_, text)| Entry::parse(&text).ok())
            .collect())
    }

    /// Checks the whole log with this log's own key.
    pub async fn verify(&self) -> Result<AuditReport, StoreError> {
        self.verify_with(&self.key.public()).await
    }

    /// Checks the whole log against `key`.
    pub async fn verify_with(&self, key: &PublicKey) -> Result<AuditReport, StoreError> {
        let head = self.head().await?;
        let stored = self.stored().await?;
        // Entries appended after the head was read are not taken for insertions.
        let stored: Vec<(u64, String)> = match &head {
            Some((upto, _)) => stored.into_iter().filter(|(s, _)| s <= upto).collect(),
            None => stored,
        };
        Ok(verify_log(&stored, head, key))
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, StoreError> {
        super::query(&self.conn, cmd).await
    }
}
