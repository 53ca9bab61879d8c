//! Mandates in Redis: the signed mandates, each day's budget counter and each job's
//! reservation. The policy that decides with them lives in `governance::mandate_policy`.
//!
//! Key layout (one hash tag per mandate, so every script's keys share a Redis Cluster slot;
//! the keys still start with `<namespace>:`, so a namespace is found and cleaned with one
//! `SCAN MATCH <namespace>:*`):
//!
//! ```text
//! <ns>:mandate:{<id>}                  hash: the signed fields, the signature, revoked_at
//! <ns>:mandate:{<id>}:day:<YYYY-MM-DD>  integer: minor units reserved that UTC day
//! <ns>:mandate:{<id>}:job:<job key>     hash: state (reserved|released), day, amount, agent
//! <ns>:mandates                         set of mandate ids (for `list`; never in a script)
//! ```
//!
//! The stored caps are never trusted: the policy verifies the signature on every
//! authorisation, and the reserve script refuses if the mandate changed since it was read.
//! This store never calls a provider; it only records and counts.

use std::{collections::HashMap, time::Duration};

use redis::{Script, aio::ConnectionManager};
use time::OffsetDateTime;

use super::{StoreError, redis_call};
use crate::{
    governance::mandate::{MAX_CAP, Mandate, Reservation, rfc3339},
    job::{Currency, IdempotencyKey, JobDate, Token},
};

/// How long a day's budget counter and a job's reservation are kept: longer than the
/// idempotency records (30 days by default), so a job replayed from the dead-letter queue
/// still finds its reservation.
pub const RETENTION: Duration = Duration::from_secs(40 * 24 * 3600);

/// A mandate as stored: the signed mandate and, once revoked, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMandate {
    /// The mandate, exactly as signed (verify it before trusting it).
    pub mandate: Mandate,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
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

    /// KEYS of `mandate_grant` and `mandate_revoke`.
    pub fn mandate_script(&self, id: &str) -> [String; 1] {
        [self.mandate(id)]
    }

    /// KEYS of `mandate_reserve`: the mandate, the day's counter, the job's reservation.
    pub fn reserve_script(&self, id: &str, day: &str, job_key: &str) -> [String; 3] {
        [
            self.mandate(id),
            self.day(id, day),
            self.reservation(id, job_key),
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
    /// Every key and every script's KEYS, from one place.
    keys: MandateKeys,
    /// The scripts, loaded once (EVALSHA after the first call).
    scripts: &'static Scripts,
}

struct Scripts {
    grant: Script,
    revoke: Script,
    reserve: Script,
    release: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        grant: Script::new(include_str!("lua/mandate_grant.lua")),
        revoke: Script::new(include_str!("lua/mandate_revoke.lua")),
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
    /// Reserved (or already reserved under this job key).
    Reserved(Reservation),
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

    /// Stores a signed mandate, replacing one with the same id (new caps, no revocation);
    /// what was spent under the old one stays spent.
    pub async fn grant(&self, mandate: &Mandate) -> Result<(), StoreError> {
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
        let [key] = self.keys.mandate_script(id);
        let _: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.grant.key(&key);
            for (name, value) in &fields {
                call.arg(*name).arg(value);
            }
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Revokes mandate `id` now; `false` when there is no such mandate. Revoking again keeps
    /// the first revocation's time.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .revoke_at(id, OffsetDateTime::now_utc())
            .await?
            .is_some())
    }

    /// Revokes mandate `id` as of `now`; the time it is revoked at, `None` when unknown.
    pub async fn revoke_at(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        let [key] = self.keys.mandate_script(id);
        let now = rfc3339(now);
        let at: String = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.revoke.key(&key);
            call.arg(&now);
            async move { call.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(Some(at).filter(|at| !at.is_empty()))
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

    /// Runs the reserve script (see `lua/mandate_reserve.lua`).
    pub async fn reserve(
        &self,
        mandate: &Mandate,
        day: &str,
        amount: u64,
        job_key: &IdempotencyKey,
    ) -> Result<ReserveAnswer, StoreError> {
        let id = mandate.id.as_str();
        let keys = self.keys.reserve_script(id, day, job_key.as_str());
        let retention = u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX);
        let reply: Vec<String> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut call = self.scripts.reserve.prepare_invoke();
            call.key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(&mandate.signature)
                .arg(day)
                .arg(amount)
                .arg(mandate.max_per_day.min(MAX_CAP))
                .arg(mandate.agent_id.as_str())
                .arg(retention);
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
            "reserved" => ReserveAnswer::Reserved(Reservation {
                mandate_id: id.to_owned(),
                agent_id: mandate.agent_id.to_string(),
                day: field(1).to_owned(),
                amount: number(2)?,
            }),
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
        signature: text("signature")?.to_owned(),
    };
    Ok(StoredMandate {
        mandate,
        revoked_at: fields.get("revoked_at").cloned(),
    })
}
