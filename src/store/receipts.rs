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
//! Appending is optimistic and grouped: seals wait in a queue; whoever gets the turn seals
//! everything waiting (up to [`MAX_BATCH`]) as consecutive receipts after the head last seen,
//! and appends them in one script call, all or none, only if the head is still that one
//! (checked and moved inside the script), else seals them again after the new head. One
//! round trip then carries many receipts, so the chain's single head does not limit
//! throughput to one Redis round trip per refund. Sealing is exactly once per idempotency
//! key: the script answers with the receipt already sealed for a key and appends nothing, so
//! a retried job or a repeated call whose reply was lost never adds a second receipt; keys
//! repeated within one group are sealed once. A caller whose turn-holder was cancelled
//! mid-append queues again (the script makes the repeat harmless). This store never edits or
//! deletes a receipt.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::sync::oneshot;

use super::{StoreError, redis_call};
use crate::{
    governance::receipt::{ChainReport, ChainVerifier, GENESIS, Receipt, ReceiptBody},
    signing::{KeyPair, PublicKey},
};

/// Receipts read per round trip.
const BATCH: u64 = 500;
/// Receipts appended per script call.
pub const MAX_BATCH: usize = 128;
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
    /// `<mandate>|<day>` → minor units sealed under that mandate's reservations of that day
    /// (kept with each append; `receipts verify` adds the chain up again and compares).
    pub spend: String,
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
    /// Seals waiting for a turn.
    queue: Arc<Mutex<Vec<Waiting>>>,
    /// One appender at a time in this process: the chain has one head, so parallel
    /// appenders from one process would only collide with each other; other processes still
    /// race through the script's check.
    sealing: Arc<tokio::sync::Mutex<()>>,
    /// The append script, loaded once (EVALSHA after the first call).
    append: &'static Script,
}

/// A seal waiting in the queue.
struct Waiting {
    body: ReceiptBody,
    reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// The seals of one idempotency key within a group: one receipt answers them all.
struct Group {
    body: ReceiptBody,
    replies: Vec<oneshot::Sender<Result<Receipt, StoreError>>>,
}

impl Group {
    fn answer(self, result: &Result<Receipt, StoreError>) {
        for reply in self.replies {
            // A caller that went away no longer needs its answer.
            let _ = reply.send(result.clone());
        }
    }
}

fn append_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("lua/receipt_append_batch.lua")))
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
    /// (index in the group, stored text) of receipts already sealed for their keys.
    Exists(Vec<(usize, String)>),
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
                spend: format!("{tag}:spend"),
            },
            key,
            last_head: Arc::new(Mutex::new(None)),
            queue: Arc::new(Mutex::new(Vec::new())),
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
        loop {
            let (reply, mut answer) = oneshot::channel();
            self.waiting().push(Waiting {
                body: body.clone(),
                reply,
            });
            loop {
                match answer.try_recv() {
                    Ok(result) => return result,
                    // The turn-holder that took it was cancelled: queue it again.
                    Err(oneshot::error::TryRecvError::Closed) => break,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                let _turn = self.sealing.lock().await;
                match answer.try_recv() {
                    Ok(result) => return result,
                    Err(oneshot::error::TryRecvError::Closed) => break,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                let batch: Vec<Waiting> = {
                    let mut queue = self.waiting();
                    let n = queue.len().min(MAX_BATCH);
                    queue.drain(..n).collect()
                };
                self.seal_group(batch).await;
            }
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // A poisoned lock only means another task panicked while pushing or draining.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals `batch` (one receipt per distinct key) and answers every waiter.
    async fn seal_group(&self, batch: Vec<Waiting>) {
        let mut groups: Vec<Group> = Vec::with_capacity(batch.len());
        for waiting in batch {
            match groups
                .iter_mut()
                .find(|g| g.body.idempotency_key == waiting.body.idempotency_key)
            {
                Some(group) => group.replies.push(waiting.reply),
                None => groups.push(Group {
                    body: waiting.body,
                    replies: vec![waiting.reply],
                }),
            }
        }
        if let Err(error) = self.append_groups(&mut groups).await {
            let error = Err(error);
            for group in groups {
                group.answer(&error);
            }
        }
    }

    /// Appends `groups`, answering (and removing) each as its receipt is known.
    async fn append_groups(&self, groups: &mut Vec<Group>) -> Result<(), StoreError> {
        let (mut seq, mut prev) = match self.remembered_head() {
            Some(head) => head,
            None => self.head().await?.unwrap_or((0, GENESIS.to_owned())),
        };
        let mut attempt = 0;
        while !groups.is_empty() {
            if attempt == MAX_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "could not append to the receipt chain after {MAX_ATTEMPTS} attempts (too many appenders at once)"
                )));
            }
            attempt += 1;
            // One signature for the whole group (receipt format 2).
            let bodies = groups.iter().map(|g| g.body.clone()).collect();
            let sealed_at = crate::clock::now_rfc3339_millis();
            let (receipts, texts): (Vec<Receipt>, Vec<String>) = Receipt::seal_group_with_texts(
                seq + 1,
                prev.clone(),
                &sealed_at,
                bodies,
                &self.key,
            )
            .into_iter()
            .unzip();
            match self.append(&receipts, &texts).await? {
                Appended::Done => {
                    if let Some(last) = receipts.last() {
                        self.remember_head(last.seq, &last.hash);
                    }
                    for (group, receipt) in groups.drain(..).zip(receipts) {
                        group.answer(&Ok(receipt));
                    }
                }
                Appended::Exists(found) => {
                    // Answer those with the receipt already sealed; seal the rest again.
                    for (index, text) in found.into_iter().rev() {
                        let group = groups.remove(index);
                        let sealed = Receipt::parse(&text).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "the receipt sealed for {:?} does not read: {e}; run `receipts verify`",
                                group.body.idempotency_key
                            ))
                        });
                        group.answer(&sealed);
                    }
                }
                Appended::Moved(head_seq, head_hash) => {
                    self.remember_head(head_seq, &head_hash);
                    (seq, prev) = (head_seq, head_hash);
                    if attempt >= 3 {
                        // Many appenders at once: spread them out instead of all retrying
                        // into the next collision.
                        let ms = rand::random_range(0..=u64::from(attempt.min(20)));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the append script for consecutive `receipts`.
    async fn append(&self, receipts: &[Receipt], texts: &[String]) -> Result<Appended, StoreError> {
        let Some(first) = receipts.first() else {
            return Ok(Appended::Done);
        };
        let reply: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.append.key(&self.keys.chain);
            call.key(&self.keys.head)
                .key(&self.keys.index)
                .key(&self.keys.spend)
                .arg(GENESIS)
                .arg(&first.prev_hash);
            for (receipt, text) in receipts.iter().zip(texts) {
                let (field, amount) = spend_of(&receipt.body).unwrap_or_default();
                call.arg(receipt.seq)
                    .arg(&receipt.body.idempotency_key)
                    .arg(&receipt.hash)
                    .arg(text)
                    .arg(field)
                    .arg(amount);
            }
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            "appended" => Ok(Appended::Done),
            "exists" => {
                let mut found = Vec::new();
                for triple in reply[1..].chunks(3) {
                    let [index, seq, text] = triple else {
                        return Err(StoreError::Corrupt(format!(
                            "receipt append script answered {reply:?}"
                        )));
                    };
                    let index = index
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .filter(|i| *i < receipts.len())
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("receipt append script answered {reply:?}"))
                        })?;
                    if text.is_empty() {
                        return Err(StoreError::Corrupt(format!(
                            "receipt {seq} sealed for {:?} is missing from the chain; run `receipts verify`",
                            receipts[index].body.idempotency_key
                        )));
                    }
                    found.push((index, text.clone()));
                }
                Ok(Appended::Exists(found))
            }
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

    /// Minor units sealed under mandate `mandate`'s reservations of `day` (the tally kept with
    /// each append).
    pub async fn mandate_spend(&self, mandate: &str, day: &str) -> Result<u64, StoreError> {
        let field = spend_field(mandate, day);
        let value: Option<String> = self
            .call(redis::cmd("HGET").arg(&self.keys.spend).arg(&field))
            .await?;
        match value {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| {
                StoreError::Corrupt(format!("the sealed spend tally {field} holds {text:?}"))
            }),
        }
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
        let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let mut intact = true;
        let read = self
            .read_from(head.clone(), |seq, text| {
                // Only intact receipts count: an edited one is reported as itself, and the
                // tallies are compared only when the sums cover the whole chain.
                match verifier.check(seq, &text) {
                    Some(r) => {
                        if let Some((field, amount)) = spend_of(&r.body) {
                            *sums.entry(field).or_default() += amount;
                        }
                    }
                    None => intact = false,
                }
            })
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
        // Only when the sums cover every position up to the head.
        if intact && verifier.checked() == head.as_ref().map_or(0, |(seq, _)| *seq) {
            self.check_spend(&mut verifier, sums, &head).await?;
        }
        Ok(verifier.finish())
    }

    /// The spend tallies must add up to the sealed receipts: a tally lowered or deleted would
    /// let a mandate's day counter be lowered unnoticed. (Receipts appended while the chain
    /// was read raise a tally above the sums read; only an unchanged head allows more.)
    async fn check_spend(
        &self,
        verifier: &mut ChainVerifier<'_>,
        sums: std::collections::BTreeMap<String, u64>,
        head: &Option<(u64, String)>,
    ) -> Result<(), StoreError> {
        let tallies: std::collections::HashMap<String, String> = self
            .call(redis::cmd("HGETALL").arg(&self.keys.spend))
            .await?;
        let still = self.head().await? == *head;
        let mut fields: std::collections::BTreeSet<&String> = sums.keys().collect();
        fields.extend(tallies.keys());
        for field in fields {
            let sealed = sums.get(field).copied().unwrap_or(0);
            let tally = tallies.get(field).and_then(|t| t.parse::<u64>().ok());
            let wrong = match tally {
                Some(tally) => tally < sealed || (still && tally != sealed),
                None => sealed > 0 || tallies.contains_key(field),
            };
            if wrong {
                verifier.problem(
                    0,
                    None,
                    format!(
                        "spend tally {field:?} reads {}, but the sealed receipts add up to {sealed}",
                        tallies.get(field).map_or("nothing", String::as_str)
                    ),
                );
            }
        }
        Ok(())
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
        super::query(&self.conn, cmd).await
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

/// The tally field of a mandate's day.
fn spend_field(mandate: &str, day: &str) -> String {
    format!("{mandate}|{day}")
}

/// The tally field and amount a receipt adds: its mandate reservation's mandate, day and
/// amount — what the day's counter holds for it, whatever amount a provider's adopted refund
/// shows (`None` for a refund under no mandate).
fn spend_of(body: &ReceiptBody) -> Option<(String, u64)> {
    let reservation = body.mandate.as_ref()?;
    let mandate = reservation.get("mandate_id")?.as_str()?;
    let day = reservation.get("day")?.as_str()?;
    let amount = reservation.get("amount")?.as_u64()?;
    Some((spend_field(mandate, day), amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: u64) -> ReceiptBody {
        ReceiptBody {
            job_id: format!("job-{n}"),
            idempotency_key: format!("pi_{n}:2026-01-02"),
            kind: "bulk".into(),
            provider: "stripe".into(),
            payment_id: format!("pi_{n}"),
            refund_id: format!("re_{n}"),
            refund_status: "succeeded".into(),
            amount: 100 + n,
            currency: "BRL".into(),
            rail: "card".into(),
            destination: None,
            order_id: None,
            verification: None,
            mandate: None,
            credit_note: None,
            notification: None,
            steps: Default::default(),
        }
    }

    /// A turn-holder cancelled after taking the queue, before or after its append reached
    /// Redis: its waiters queue again and each key is sealed exactly once. Needs the Redis of
    /// the integration tests (127.0.0.1:6379).
    #[tokio::test]
    async fn waiters_of_a_cancelled_turn_queue_again_and_are_sealed_once() {
        let conn = super::super::connect("redis://127.0.0.1:6379/")
            .await
            .expect("Redis must be running on 127.0.0.1:6379 (see README)");
        let namespace = format!("unit-{}", uuid::Uuid::new_v4().simple());
        let key =
            KeyPair::from_seed(&crate::config::Secret::new("22".repeat(32)), "test key").unwrap();
        let chain = ReceiptChain::new(conn, &namespace, key);
        for appended_before_cancel in [false, true] {
            let base = if appended_before_cancel { 10 } else { 0 };
            let turn = chain.sealing.clone().lock_owned().await;
            let tasks: Vec<_> = (0..5)
                .map(|i| {
                    let chain = chain.clone();
                    tokio::spawn(async move { chain.seal(body(base + i)).await })
                })
                .collect();
            while chain.waiting().len() < 5 {
                tokio::task::yield_now().await;
            }
            // The cancelled turn-holder: took everything waiting, maybe appended it, never
            // answered.
            let taken: Vec<Waiting> = chain.waiting().drain(..).collect();
            if appended_before_cancel {
                let mut unanswered: Vec<Group> = taken
                    .iter()
                    .map(|w| Group {
                        body: w.body.clone(),
                        replies: Vec::new(),
                    })
                    .collect();
                chain.append_groups(&mut unanswered).await.unwrap();
            }
            drop(taken);
            drop(turn);
            for (i, task) in tasks.into_iter().enumerate() {
                let receipt = tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .expect("a waiter of the cancelled turn was never sealed")
                    .unwrap()
                    .unwrap();
                assert_eq!(receipt.body.job_id, body(base + i as u64).job_id);
            }
        }
        let stored = chain.stored().await.unwrap();
        assert_eq!(stored.len(), 10, "each of the 10 keys sealed once");
        assert!(chain.verify().await.unwrap().is_intact());
        chain.delete_all().await.unwrap();
    }

    #[test]
    fn positions_have_one_spelling() {
        assert_eq!(canonical_position("12"), Some(12));
        assert_eq!(canonical_position("0"), Some(0));
        for bad in ["012", "+12", "12 ", "", "x", "-1"] {
            assert_eq!(canonical_position(bad), None, "{bad:?}");
        }
    }
}
