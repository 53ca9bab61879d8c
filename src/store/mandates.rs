//! Mandates in Redis: the signed mandates, each day's budget counter and each job's
//! reservation. The policy that decides with them lives in `governance::mandate_policy`.
//!
//! Key layout (one hash tag per mandate, so every script's keys share a Redis Cluster slot;
//! the keys still start with `<namespace>:`, so a namespace is found and cleaned with one
//! `SCAN MATCH <namespace>:*`):
//!
//! ```text
//! <ns>:mandate:{<id>}                  hash: the signed fields (revocation included), the signature
//! <ns>:mandate:{<id>}:floor             integer: the newest version ever stored or spent under
//! <ns>:mandate:{<id>}:day:<YYYY-MM-DD>  integer: minor units reserved that UTC day
//! <ns>:mandate:{<id>}:job:<job key>     hash: state (reserved|released), day, amount, agent
//! <ns>:mandates                         set of mandate ids (for `list`; never in a script)
//! ```
//!
//! The stored state is never trusted: the policy verifies the signature (over caps, expiry,
//! publishers, version and revocation) on every authorisation; the reserve script refuses if
//! the mandate changed since it was read, if its version is older than the floor (a rollback),
//! or if the day's counter is lower than the spend sealed in that day's receipts (a counter
//! deleted or lowered).
//! This store never calls a provider; it only records and counts.

use std::{collections::HashMap, time::Duration};

use redis::{Script, aio::ConnectionManager};

use super::{StoreError, redis_call};
use crate::{
    governance::mandate::{MAX_CAP, Mandate, Reservation, Terms},
    job::{Currency, IdempotencyKey, JobDate, Token},
    signing::KeyPair,
};

/// How long a day's budget counter and a job's reservation are kept: longer than the
/// idempotency records (30 days by default), so a job replayed from the dead-letter queue
/// still finds its reservation.
pub const RETENTION: Duration = Duration::from_secs(40 * 24 * 3600);

/// How many times a grant or a revocation reads again when another version was stored
/// meanwhile.
const CHANGED_RETRIES: usize = 3;

/// A mandate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMandate {
    /// The mandate, exactly as signed (verify it before trusting it).
    pub mandate: Mandate,
}

/// The Redis keys of one namespace's mandates, and the KEYS of every script call: pure, so a
/// test checks the layout (one Redis Cluster slot per script call) the store really uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateKeys {
    /// Every key starts with `<namespace>:`, so tests and tenants never meet.
    namespace: String,
}

impl MandateKeys {
    /// The keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The hash that holds mandate `id` (a token, so it has no braces of its own).
    pub fn mandate(&self, id: &str) -> String {
        format!("{}:mandate:{{{id}}}", self.namespace)
    }

    /// The budget counter of mandate `id` on `day` (`YYYY-MM-DD`).
    pub fn day(&self, id: &str, day: &str) -> String {
        format!("{}:day:{day}", self.mandate(id))
    }

    /// The reservation of job key `job_key` under mandate `id`.
    pub fn reservation(&self, id: &str, job_key: &str) -> String {
        format!("{}:job:{job_key}", self.mandate(id))
    }

    /// The set of mandate ids (read by `list`; no script touches it).
    pub fn index(&self) -> String {
        format!("{}:mandates", self.namespace)
    }

    /// The newest version of mandate `id` ever stored or spent under.
    pub fn floor(&self, id: &str) -> String {
        format!("{}:floor", self.mandate(id))
    }

    /// KEYS of `mandate_grant`: the mandate, its floor.
    pub fn mandate_script(&self, id: &str) -> [String; 2] {
        [self.mandate(id), self.floor(id)]
    }

    /// KEYS of `mandate_reserve`: the mandate, the day's counter, the job's reservation, the
    /// floor.
    pub fn reserve_script(&self, id: &str, day: &str, job_key: &str) -> [String; 4] {
        [
            self.mandate(id),
            self.day(id, day),
            self.reservation(id, job_key),
            self.floor(id),
        ]
    }

    /// KEYS of `mandate_release`: the day's counter, the job's reservation.
    pub fn release_script(&self, id: &str, day: &str, job_key: &str) -> [String; 2] {
        [self.day(id, day), self.reservation(id, job_key)]
    }
}

/// The mandates of one namespace.
#[derive(Clone)]
pub struct MandateStore {
    /// The reconnecting Redis connection.
    conn: ConnectionManager,
    /// How long a reservation is kept: no longer than the idempotency records, so a key reused
    /// after its record expired never finds an old reservation.
    reservation_ttl: Duration,
    /// Every key and every script's KEYS, from one place.
    keys: MandateKeys,
    /// The scripts, loaded once (EVALSHA after the first call).
    scripts: &'static Scripts,
}

struct Scripts {
    grant: Script,
    reserve: Script,
    release: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        grant: Script::new(include_str!("lua/mandate_grant.lua")),
        reserve: Script::new(include_str!("lua/mandate_reserve.lua")),
        release: Script::new(include_str!("lua/mandate_release.lua")),
    })
}

impl std::fmt::Debug for MandateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MandateStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// What the reserve script answered (the policy in `governance::mandate_policy` decides
/// what each answer means for the refund).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveAnswer {
    /// Reserved (or already reserved under this job key), with the day's counter after it.
    Reserved(Reservation, u64),
    /// The stored version is older than the floor: rolled back.
    RolledBack {
        /// The floor.
        floor: u64,
    },
    /// The day's counter holds less than the least it can.
    Tampered {
        /// What it holds.
        spent: u64,
        /// The least it can hold.
        least: u64,
    },
    /// The day's budget has only `left` minor units.
    Over {
        /// Minor units left today.
        left: u64,
    },
    /// Revoked at `at`.
    Revoked {
        /// When.
        at: String,
    },
    /// No such mandate.
    Unknown,
    /// The mandate was re-granted since it was read.
    Changed,
    /// The job key already holds a reservation of `reserved` minor units.
    Conflict {
        /// Minor units the key holds.
        reserved: u64,
    },
}

impl MandateStore {
    /// A store over an open connection.
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            reservation_ttl: RETENTION,
            keys: MandateKeys::new(namespace),
            scripts: scripts(),
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &MandateKeys {
        &self.keys
    }

    /// The hash that holds mandate `id`.
    pub fn mandate_key(&self, id: &str) -> String {
        self.keys.mandate(id)
    }

    /// The budget counter of mandate `id` on `day` (`YYYY-MM-DD`).
    pub fn day_key(&self, id: &str, day: &str) -> String {
        self.keys.day(id, day)
    }

    /// The reservation of job key `job_key` under mandate `id`.
    pub fn reservation_key(&self, id: &str, job_key: &str) -> String {
        self.keys.reservation(id, job_key)
    }

    /// The set of mandate ids (read by `list`; no script touches it).
    pub fn index_key(&self) -> String {
        self.keys.index()
    }

    /// Reservations kept no longer than `ttl` (the idempotency records' TTL).
    pub fn with_reservation_ttl(mut self, ttl: Duration) -> Self {
        self.reservation_ttl = ttl.min(RETENTION);
        self
    }

    /// Stores a signed version of a mandate (a grant or a revocation), replacing `read` (the
    /// signature of the version the signer started from, `None` when there was none). What
    /// was spent under earlier versions stays spent.
    pub async fn store_version(
        &self,
        mandate: &Mandate,
        read: Option<&str>,
    ) -> Result<StoreAnswer, StoreError> {
        let id = mandate.id.as_str();
        // The index first: a grant whose hash write is lost leaves an id that `list` skips,
        // never a mandate that `list` cannot see.
        let index = self.index_key();
        let _: i64 = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("SADD");
            cmd.arg(&index).arg(id);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        let fields = fields_of(mandate);
        let [key, floor] = self.keys.mandate_script(id);
        let answer: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.grant.key(&key);
            call.key(&floor)
                .arg(read.unwrap_or(""))
                .arg(mandate.version);
            for (name, value) in &fields {
                call.arg(*name).arg(value);
            }
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        match answer.as_str() {
            "ok" => Ok(StoreAnswer::Stored),
            "changed" => Ok(StoreAnswer::Changed),
            "stale" => Ok(StoreAnswer::Stale),
            other => Err(StoreError::Corrupt(format!(
                "mandate grant script answered {other:?} for {id}"
            ))),
        }
    }

    /// Stores version 1 of a new mandate, or the next version over whatever is stored (tests
    /// and the demo; `mandate grant` reads first and stores with [`Self::store_version`]).
    pub async fn grant(&self, mandate: &Mandate) -> Result<(), StoreError> {
        let read = self.read(mandate.id.as_str()).await?;
        let signature = read
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .map(|s| s.mandate.signature.clone());
        match self.store_version(mandate, signature.as_deref()).await? {
            StoreAnswer::Stored => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "mandate {} was not stored: {other:?}",
                mandate.id
            ))),
        }
    }

    /// Grants `terms` as finance: signs the version after everything stored under the id (its
    /// stored version and its floor) with `key`, issued at `now`, and stores it over the
    /// version read. Returns what was stored.
    pub async fn grant_terms(
        &self,
        terms: Terms,
        key: &KeyPair,
        now: &str,
    ) -> Result<Mandate, StoreError> {
        for _ in 0..CHANGED_RETRIES {
            let id = terms.id.to_string();
            let stored = self.get(&id).await?;
            let version = self.next_version(&id, stored.as_ref()).await?;
            let mandate = Mandate::granted(terms.clone(), version, now, key);
            let read = stored.as_ref().map(|s| s.mandate.signature.as_str());
            if self.store_version(&mandate, read).await? == StoreAnswer::Stored {
                return Ok(mandate);
            }
        }
        Err(StoreError::Unavailable(format!(
            "mandate {} kept changing while it was granted; try again",
            terms.id
        )))
    }

    /// Revokes mandate `id` as finance: signs its next version, revoked at `at`, with `key`.
    /// `None` when there is no such mandate; the first revocation's time when it already was.
    pub async fn revoke(
        &self,
        id: &str,
        key: &KeyPair,
        at: &str,
    ) -> Result<Option<Mandate>, StoreError> {
        for _ in 0..CHANGED_RETRIES {
            let Some(stored) = self.get(id).await? else {
                return Ok(None);
            };
            if stored.mandate.revoked_at.is_some() {
                return Ok(Some(stored.mandate));
            }
            let version = self.next_version(id, Some(&stored)).await?;
            let mut revoked = stored.mandate.revoked(at, key);
            if revoked.version != version {
                // The floor is ahead of the stored version (it was rolled back): sign past it.
                revoked.version = version;
                revoked.signature = key.sign_hex(&revoked.canonical_bytes());
            }
            if self
                .store_version(&revoked, Some(&stored.mandate.signature))
                .await?
                == StoreAnswer::Stored
            {
                return Ok(Some(revoked));
            }
        }
        Err(StoreError::Unavailable(format!(
            "mandate {id} kept changing while it was revoked; try again"
        )))
    }

    /// The version after everything mandate `id` ever had.
    async fn next_version(
        &self,
        id: &str,
        stored: Option<&StoredMandate>,
    ) -> Result<u64, StoreError> {
        let floor = self.floor(id).await?;
        Ok(stored.map_or(0, |s| s.mandate.version).max(floor) + 1)
    }

    /// The newest version of mandate `id` ever stored or spent under (0 when none).
    pub async fn floor(&self, id: &str) -> Result<u64, StoreError> {
        let key = self.keys.floor(id);
        let floor: Option<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(&key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(floor.and_then(|f| f.parse().ok()).unwrap_or(0))
    }

    /// Reads mandate `id`. A stored mandate whose fields cannot be read is `Corrupt`.
    pub async fn get(&self, id: &str) -> Result<Option<StoredMandate>, StoreError> {
        self.read(id)
            .await?
            .map(|parsed| parsed.map_err(|e| StoreError::Corrupt(format!("mandate {id}: {e}"))))
            .transpose()
    }

    /// Every mandate of the namespace, by id.
    pub async fn list(&self) -> Result<Vec<StoredMandate>, StoreError> {
        let index = self.index_key();
        let mut ids: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(&index);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(stored) = self.get(&id).await? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    /// Minor units reserved under mandate `id` on `day` (releases deducted).
    pub async fn spent(&self, id: &str, day: JobDate) -> Result<u64, StoreError> {
        let key = self.day_key(id, &day.to_string());
        let spent: Option<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(&key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        match spent {
            None => Ok(0),
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("budget counter {key} holds {text:?}"))),
        }
    }

    /// The raw read: `None` when absent, `Some(Err)` when present but unreadable.
    pub async fn read(
        &self,
        id: &str,
    ) -> Result<Option<Result<StoredMandate, String>>, StoreError> {
        let key = self.mandate_key(id);
        let fields: HashMap<String, String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(parse_fields(&fields)))
    }

    /// Runs the reserve script (see `lua/mandate_reserve.lua`); `least` is the least the
    /// day's counter can hold (the spend sealed in that day's receipts).
    pub async fn reserve(
        &self,
        mandate: &Mandate,
        day: &str,
        amount: u64,
        job_key: &IdempotencyKey,
        least: u64,
    ) -> Result<ReserveAnswer, StoreError> {
        let id = mandate.id.as_str();
        let keys = self.keys.reserve_script(id, day, job_key.as_str());
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let reply: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.reserve.prepare_invoke();
            call.key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .key(&keys[3])
                .arg(&mandate.signature)
                .arg(day)
                .arg(amount)
                .arg(mandate.max_per_day.min(MAX_CAP))
                .arg(mandate.agent_id.as_str())
                .arg(millis(RETENTION))
                .arg(mandate.version)
                .arg(least)
                .arg(millis(self.reservation_ttl));
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        let number = |i: usize| {
            field(i).parse::<u64>().map_err(|_| {
                StoreError::Corrupt(format!("reserve script answered {reply:?} for {id}"))
            })
        };
        Ok(match field(0) {
            "reserved" => ReserveAnswer::Reserved(
                Reservation {
                    mandate_id: id.to_owned(),
                    agent_id: mandate.agent_id.to_string(),
                    day: field(1).to_owned(),
                    amount: number(2)?,
                },
                number(3)?,
            ),
            "rolled_back" => ReserveAnswer::RolledBack { floor: number(1)? },
            "tampered" => ReserveAnswer::Tampered {
                spent: number(1)?,
                least: number(2)?,
            },
            "over" => ReserveAnswer::Over { left: number(1)? },
            "revoked" => ReserveAnswer::Revoked {
                at: field(1).to_owned(),
            },
            "unknown" => ReserveAnswer::Unknown,
            "changed" => ReserveAnswer::Changed,
            "conflict" => ReserveAnswer::Conflict {
                reserved: number(1)?,
            },
            other => {
                return Err(StoreError::Corrupt(format!(
                    "reserve script answered {other:?} for {id}"
                )));
            }
        })
    }

    /// Runs the release script; 1 given back, 0 nothing to give back, -1 a different
    /// reservation holds the key.
    pub async fn release(
        &self,
        reservation: &Reservation,
        job_key: &IdempotencyKey,
    ) -> Result<i64, StoreError> {
        let id = reservation.mandate_id.as_str();
        let [day_key, job] = self
            .keys
            .release_script(id, &reservation.day, job_key.as_str());
        redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.release.prepare_invoke();
            call.key(&day_key)
                .key(&job)
                .arg(&reservation.day)
                .arg(reservation.amount);
            async move { call.invoke_async(&mut conn).await }
        })
        .await
    }
}

/// The hash fields of a mandate, in canonical order (`expires_at` only when set).
fn fields_of(mandate: &Mandate) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", mandate.id.to_string()),
        ("agent_id", mandate.agent_id.to_string()),
        ("max_per_refund", mandate.max_per_refund.to_string()),
        ("max_per_day", mandate.max_per_day.to_string()),
        ("currency", mandate.currency.to_string()),
    ];
    if let Some(at) = &mandate.expires_at {
        fields.push(("expires_at", at.clone()));
    }
    fields.push(("issued_at", mandate.issued_at.clone()));
    fields.push(("version", mandate.version.to_string()));
    fields.push((
        "publishers",
        serde_json::to_string(&mandate.publishers).unwrap_or_default(),
    ));
    if let Some(at) = &mandate.revoked_at {
        fields.push(("revoked_at", at.clone()));
    }
    fields.push(("signature", mandate.signature.clone()));
    fields
}

fn parse_fields(fields: &HashMap<String, String>) -> Result<StoredMandate, String> {
    let text = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("field {name} is missing"))
    };
    let token = |name: &str| Token::parse(text(name)?).map_err(|rule| format!("{name} {rule}"));
    let number = |name: &str| {
        let t = text(name)?;
        t.parse::<u64>()
            .map_err(|_| format!("{name} must be a whole number, got {t:?}"))
    };
    let code = text("currency")?;
    let mandate = Mandate {
        id: token("id")?,
        agent_id: token("agent_id")?,
        max_per_refund: number("max_per_refund")?,
        max_per_day: number("max_per_day")?,
        currency: Currency::parse(code)
            .ok_or_else(|| format!("currency must be an ISO 4217 code, got {code:?}"))?,
        expires_at: fields.get("expires_at").cloned(),
        issued_at: text("issued_at")?.to_owned(),
        // A mandate stored before versions were signed reads as version 0 with no publisher:
        // its signature (over the old format) does not verify, so it spends nothing.
        version: fields
            .get("version")
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("version must be a whole number, got {v:?}"))
            })
            .transpose()?
            .unwrap_or(0),
        publishers: fields
            .get("publishers")
            .map(|p| {
                serde_json::from_str(p)
                    .map_err(|_| format!("publishers must be a JSON list, got {p:?}"))
            })
            .transpose()?
            .unwrap_or_default(),
        revoked_at: fields.get("revoked_at").cloned(),
        signature: text("signature")?.to_owned(),
    };
    Ok(StoredMandate { mandate })
}

/// What [`MandateStore::store_version`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAnswer {
    /// Stored.
    Stored,
    /// Another version was stored since the signer read it: read again.
    Changed,
    /// The mandate already had this version or a newer one: a rollback, refused.
    Stale,
}
