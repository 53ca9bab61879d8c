//! The receipt chain in Redis: one chain per namespace, appended by every worker at once,
//! never rewritten.
//!
//! ```text
//!   {<ns>:receipts}:chain   hash  position → the receipt's exact canonical text
//!   {<ns>:receipts}:head    hash  seq, hash of the last receipt
//!   {<ns>:receipts}:index   hash  idempotency key → position
//! ```
//!
//! All three share one hash tag, so the append script runs on one Redis Cluster slot. The
//! keys never expire: a receipt is a record for auditors, kept as long as Redis keeps data
//! (run it with AOF persistence, and export the chain to cold storage).
//!
//! Appending is optimistic: seal after the head last seen, then append only if the head is
//! still that one (checked and moved inside one Lua script), else seal again after the new
//! head. Sealing is exactly once per idempotency key: the script answers with the receipt
//! already sealed for the key and appends nothing, so a retried job or a repeated call whose
//! reply was lost never adds a second receipt. This store never edits or deletes a receipt.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};

use super::{StoreError, redis_call};
use crate::{
    governance::receipt::{ChainReport, ChainVerifier, GENESIS, Receipt, ReceiptBody},
    signing::{KeyPair, PublicKey},
};

/// Receipts read per round trip.
const BATCH: u64 = 500;
/// Appends lost to other workers before sealing gives up (each loss means another receipt
/// went in, so this bounds a pathological storm, not normal contention).
const MAX_ATTEMPTS: u32 = 1_000;

/// The Redis keys of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainKeys {
    /// Position → the receipt's exact text.
    pub chain: String,
    /// The last receipt's seq and hash.
    pub head: String,
    /// Idempotency key → position.
    pub index: String,
}

/// The sealed receipts of one namespace.
#[derive(Clone)]
pub struct ReceiptChain {
    /// The reconnecting Redis connection.
    conn: ConnectionManager,
    /// Where the chain lives (see the module doc).
    keys: ChainKeys,
    /// Signs every receipt sealed here.
    key: KeyPair,
    /// The head this process last saw, so a lone appender seals right the first time.
    last_head: Arc<Mutex<Option<(u64, String)>>>,
    /// One seal at a time in this process: the chain has one head, so parallel appenders
    /// from one process would only collide with each other; other processes still race
    /// through the script's check.
    sealing: Arc<tokio::sync::Mutex<()>>,
    /// The append script, loaded once (EVALSHA after the first call).
    append: &'static Script,
}

fn append_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("lua/receipt_append.lua")))
}

impl std::fmt::Debug for ReceiptChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptChain")
            .field("keys", &self.keys)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What the script answered.
enum Appended {
    Done,
    Exists(String),
    Moved(u64, String),
}

impl ReceiptChain {
    /// The chain of `namespace` (the queue prefix), sealing with `key`.
    pub fn new(conn: ConnectionManager, namespace: &str, key: KeyPair) -> Self {
        let tag = format!("{{{namespace}:receipts}}");
        Self {
            conn,
            keys: ChainKeys {
                chain: format!("{tag}:chain"),
                head: format!("{tag}:head"),
                index: format!("{tag}:index"),
            },
            key,
            last_head: Arc::new(Mutex::new(None)),
            sealing: Arc::new(tokio::sync::Mutex::new(())),
            append: append_script(),
        }
    }

    /// Its Redis keys.
    pub fn keys(&self) -> &ChainKeys {
        &self.keys
    }

    /// The public key that verifies its receipts.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// Appends a sealed receipt for `body` at the head of the chain, or returns the receipt
    /// already sealed for `body.idempotency_key` (appending nothing).
    pub async fn seal(&self, body: ReceiptBody) -> Result<Receipt, StoreError> {
        let _turn = self.sealing.lock().await;
        let (mut seq, mut prev) = match self.remembered_head() {
            Some(head) => head,
            None => self.head().await?.unwrap_or((0, GENESIS.to_owned())),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let receipt = Receipt::seal(seq + 1, prev, body.clone(), &self.key);
            match self.append(&receipt).await? {
                Appended::Done => {
                    self.remember_head(receipt.seq, &receipt.hash);
                    return Ok(receipt);
                }
                Appended::Exists(text) => {
                    return Receipt::parse(&text).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "the receipt sealed for {:?} does not read: {e}; run `receipts verify`",
                            body.idempotency_key
                        ))
                    });
                }
                Appended::Moved(head_seq, head_hash) => {
                    self.remember_head(head_seq, &head_hash);
                    (seq, prev) = (head_seq, head_hash);
                    if attempt >= 2 {
                        // Many appenders at once: spread them out instead of all retrying
                        // into the next collision.
                        let ms = rand::random_range(0..=u64::from(attempt.min(20)));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "could not append to the receipt chain after {MAX_ATTEMPTS} attempts (too many appenders at once)"
        )))
    }

    async fn append(&self, receipt: &Receipt) -> Result<Appended, StoreError> {
        let text = receipt.to_text();
        let reply: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.append.key(&self.keys.chain);
            call.key(&self.keys.head)
                .key(&self.keys.index)
                .arg(receipt.seq)
                .arg(&receipt.prev_hash)
                .arg(&receipt.hash)
                .arg(&receipt.body.idempotency_key)
                .arg(&text)
                .arg(GENESIS);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            "appended" => Ok(Appended::Done),
            "exists" if !field(2).is_empty() => Ok(Appended::Exists(field(2).to_owned())),
            "exists" => Err(StoreError::Corrupt(format!(
                "receipt {} sealed for {:?} is missing from the chain; run `receipts verify`",
                field(1),
                receipt.body.idempotency_key
            ))),
            "moved" => {
                let seq = field(1).parse().map_err(|_| {
                    StoreError::Corrupt(format!("receipt chain head seq {:?}", field(1)))
                })?;
                Ok(Appended::Moved(seq, field(2).to_owned()))
            }
            "occupied" => Err(StoreError::Corrupt(format!(
                "receipt {} already exists but the chain head is behind it (head lost or rolled back); \
                 refusing to fork the chain; run `receipts verify`",
                field(1)
            ))),
            other => Err(StoreError::Corrupt(format!(
                "receipt append script answered {other:?}"
            ))),
        }
    }

    fn remembered_head(&self) -> Option<(u64, String)> {
        // A poisoned lock only means another task panicked mid-update of a hint.
        self.last_head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn remember_head(&self, seq: u64, hash: &str) {
        let mut last = self.last_head.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|(s, _)| *s < seq) {
            *last = Some((seq, hash.to_owned()));
        }
    }

    /// The receipt sealed for `idempotency_key`, if any.
    pub async fn by_key(&self, idempotency_key: &str) -> Result<Option<Receipt>, StoreError> {
        let seq: Option<String> = self
            .call(
                redis::cmd("HGET")
                    .arg(&self.keys.index)
                    .arg(idempotency_key),
            )
            .await?;
        let Some(seq) = seq else { return Ok(None) };
        let text: Option<String> = self
            .call(redis::cmd("HGET").arg(&self.keys.chain).arg(&seq))
            .await?;
        let text = text.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "receipt {seq} sealed for {idempotency_key:?} is missing from the chain; run `receipts verify`"
            ))
        })?;
        Receipt::parse(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("receipt {seq} does not read: {e}")))
    }

    /// The last receipt's (seq, hash), as recorded.
    pub async fn head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let (head, _) = self.head_and_len().await?;
        Ok(head)
    }

    /// The head and the number of stored entries, read together.
    async fn head_and_len(&self) -> Result<(Option<(u64, String)>, u64), StoreError> {
        let (fields, len): ((Option<String>, Option<String>), u64) = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HMGET")
                .arg(&self.keys.head)
                .arg("seq")
                .arg("hash")
                .cmd("HLEN")
                .arg(&self.keys.chain);
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        let head = match fields {
            (Some(seq), Some(hash)) => {
                let seq = seq
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("receipt chain head seq {seq:?}")))?;
                Some((seq, hash))
            }
            (None, None) => None,
            partial => {
                return Err(StoreError::Corrupt(format!(
                    "receipt chain head is half there: {partial:?}"
                )));
            }
        };
        Ok((head, len))
    }

    /// The exact stored text of every entry, by position (entries after the head included:
    /// they are what `verify` reports as inserted).
    pub async fn stored(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let mut stored = Vec::new();
        self.read_each(|seq, text| stored.push((seq, text))).await?;
        Ok(stored)
    }

    /// Streams every stored entry to `each` in ascending position, a batch at a time, and
    /// returns the head read at the start and the names of stray entries (not positions).
    /// Receipts appended while it reads are left for the next read.
    pub async fn read_each(&self, each: impl FnMut(u64, String)) -> Result<ChainRead, StoreError> {
        let head = self.head().await?;
        self.read_from(head, each).await
    }

    /// [`ReceiptChain::read_each`] up to a head already read.
    async fn read_from(
        &self,
        head: Option<(u64, String)>,
        mut each: impl FnMut(u64, String),
    ) -> Result<ChainRead, StoreError> {
        let last = head.as_ref().map_or(0, |(seq, _)| *seq);
        let mut found = 0u64;
        let mut from = 1u64;
        while from <= last {
            let to = last.min(from + BATCH - 1);
            let texts: Vec<Option<String>> = self
                .call(
                    redis::cmd("HMGET")
                        .arg(&self.keys.chain)
                        .arg((from..=to).collect::<Vec<_>>()),
                )
                .await?;
            for (seq, text) in (from..=to).zip(texts) {
                if let Some(text) = text {
                    found += 1;
                    each(seq, text);
                }
            }
            from = to + 1;
        }
        // More entries than positions read: something stored outside 1..=head. Receipts
        // appended meanwhile account for up to (new head − head) of them.
        let (now_head, len) = self.head_and_len().await?;
        let appended = now_head
            .as_ref()
            .map_or(0, |(seq, _)| *seq)
            .saturating_sub(last);
        let mut strays = std::collections::BTreeSet::new();
        if len > found + appended {
            let now_last = last + appended;
            // HSCAN may repeat an entry; the maps keep one of each.
            let mut extras = std::collections::BTreeMap::new();
            let mut cursor = 0u64;
            loop {
                let (next, pairs): (u64, Vec<(String, String)>) = self
                    .call(
                        redis::cmd("HSCAN")
                            .arg(&self.keys.chain)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(BATCH),
                    )
                    .await?;
                for (field, text) in pairs {
                    match canonical_position(&field) {
                        Some(seq) if (1..=now_last).contains(&seq) => {}
                        Some(seq) if seq >= 1 => {
                            extras.insert(seq, text);
                        }
                        _ => {
                            strays.insert(field);
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            for (seq, text) in extras {
                each(seq, text);
            }
        }
        Ok(ChainRead {
            head,
            strays: strays.into_iter().collect(),
        })
    }

    /// Checks the whole chain with this chain's own key.
    pub async fn verify(&self) -> Result<ChainReport, StoreError> {
        self.verify_with(&self.key.public()).await
    }

    /// Checks the whole chain against `key`: every receipt (see
    /// [`crate::governance::receipt::verify_chain`]), the head, stray entries, and the
    /// idempotency index that keeps sealing exactly once.
    pub async fn verify_with(&self, key: &PublicKey) -> Result<ChainReport, StoreError> {
        let head = self.head().await?;
        // The verifier and the read share one head: receipts appended meanwhile are neither
        // read nor taken for insertions.
        let mut verifier = ChainVerifier::new(key, head.clone());
        let read = self
            .read_from(head, |seq, text| verifier.check(seq, &text))
            .await?;
        if read.head.is_none() && verifier.checked() > 0 {
            verifier.problem(0, None, "the chain head is missing");
        }
        for field in &read.strays {
            verifier.problem(
                0,
                None,
                format!("stray entry {field:?} in the chain (not a position)"),
            );
        }
        self.check_index(&mut verifier, read.head.as_ref().map_or(0, |(seq, _)| *seq))
            .await?;
        Ok(verifier.finish())
    }

    /// Every sealed key must be in the index, pointing at its receipt: a key missing from it
    /// would let a retried job seal a second receipt.
    async fn check_index(
        &self,
        verifier: &mut ChainVerifier<'_>,
        last: u64,
    ) -> Result<(), StoreError> {
        let sealed = verifier.sealed_keys().clone();
        let present: std::collections::HashSet<u64> = sealed.values().copied().collect();
        let mut indexed = std::collections::HashSet::new();
        let mut cursor = 0u64;
        let mut wrong = std::collections::BTreeSet::new(); // HSCAN may repeat an entry
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = self
                .call(
                    redis::cmd("HSCAN")
                        .arg(&self.keys.index)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(BATCH),
                )
                .await?;
            for (idempotency_key, seq) in pairs {
                match (sealed.get(&idempotency_key), seq.parse::<u64>()) {
                    (Some(at), Ok(seq)) if *at == seq => {}
                    // Sealed after this read began, or pointing at a receipt that is missing
                    // or unreadable (reported as such already).
                    (None, Ok(seq)) if seq > last || !present.contains(&seq) => {}
                    (at, parsed) => {
                        let at = at.copied().or(parsed.ok()).unwrap_or(0);
                        wrong.insert((at, idempotency_key.clone(), seq));
                    }
                }
                indexed.insert(idempotency_key);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for (at, idempotency_key, seq) in wrong {
            verifier.problem(
                at,
                None,
                format!("index: key {idempotency_key:?} points at receipt {seq:?}"),
            );
        }
        for (idempotency_key, at) in sealed {
            if !indexed.contains(&idempotency_key) {
                verifier.problem(
                    at,
                    None,
                    format!(
                        "index: key {idempotency_key:?} is missing (a retry would seal it again)"
                    ),
                );
            }
        }
        Ok(())
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, StoreError> {
        let cmd = cmd.clone();
        redis_call(|| {
            let mut conn = self.conn.clone();
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .await
    }

    /// Deletes the chain (tests and demos only: receipts are never deleted in operation).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("DEL")
            .arg(&self.keys.chain)
            .arg(&self.keys.head)
            .arg(&self.keys.index)
            .query_async(&mut conn)
            .await?;
        *self.last_head.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

/// What [`ReceiptChain::read_each`] saw besides the receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRead {
    /// The head when the read began.
    pub head: Option<(u64, String)>,
    /// Entries whose name is not a position (e.g. `05`, `x`).
    pub strays: Vec<String>,
}

/// A position written the one way positions are written: decimal, no sign, no leading zero.
fn canonical_position(field: &str) -> Option<u64> {
    let seq: u64 = field.parse().ok()?;
    (seq.to_string() == field).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_have_one_spelling() {
        assert_eq!(canonical_position("12"), Some(12));
        assert_eq!(canonical_position("0"), Some(0));
        for bad in ["012", "+12", "12 ", "", "x", "-1"] {
            assert_eq!(canonical_position(bad), None, "{bad:?}");
        }
    }
}
