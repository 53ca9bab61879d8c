//! Throughput for the ops console: jobs succeeded, failed and retried per minute and per day,
//! and money refunded per day and currency, summed over every worker.
//!
//! ```text
//!   {<ns>:stats}:minute:<YYYY-MM-DDTHH:MM>   hash  succeeded|failed|retried → count   (2 h)
//!   {<ns>:stats}:day:<YYYY-MM-DD>            hash  the same, and refunded:<CUR> → minor units (8 d)
//!   {<ns>:stats}:workers                     hash  worker id → [until, heartbeat] (ready, open circuits)
//! ```
//!
//! Each worker adds what it counted every few seconds, as Sidekiq's processes do with their
//! `stat:processed` counters: nothing is written per job. These are figures for a dashboard,
//! not books: a worker that dies loses its last few seconds of counts, and a flush whose reply
//! is lost may be added twice. The receipts are the books.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use time::OffsetDateTime;

use super::StoreError;

/// How long a minute's counts are kept.
const MINUTE_TTL_SECS: i64 = 2 * 3600;
/// How long a day's counts are kept.
const DAY_TTL_SECS: i64 = 8 * 24 * 3600;

/// Counts of outcomes, and money refunded per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Refunds made.
    pub succeeded: u64,
    /// Jobs dead-lettered.
    pub failed: u64,
    /// Jobs sent through a retry tier.
    pub retried: u64,
    /// Minor units refunded, per currency code.
    pub refunded: BTreeMap<String, u64>,
}

impl Tally {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.succeeded == 0 && self.failed == 0 && self.retried == 0 && self.refunded.is_empty()
    }

    /// What `self` counted beyond `earlier` (counters only grow; a counter that went back,
    /// which cannot happen within one process, counts from zero).
    pub fn since(&self, earlier: &Tally) -> Tally {
        let step = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        Tally {
            succeeded: step(self.succeeded, earlier.succeeded),
            failed: step(self.failed, earlier.failed),
            retried: step(self.retried, earlier.retried),
            refunded: self
                .refunded
                .iter()
                .map(|(c, m)| {
                    (
                        c.clone(),
                        step(*m, earlier.refunded.get(c).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, m)| *m > 0)
                .collect(),
        }
    }

    /// Reads a stored hash; a value that is not a count (an edit by hand) reads as nothing.
    fn from_fields(fields: BTreeMap<String, String>) -> Tally {
        let mut tally = Tally::default();
        for (field, value) in fields {
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match field.as_str() {
                "succeeded" => tally.succeeded = value,
                "failed" => tally.failed = value,
                "retried" => tally.retried = value,
                other => {
                    if let Some(currency) = other.strip_prefix("refunded:") {
                        tally.refunded.insert(currency.to_owned(), value);
                    }
                }
            }
        }
        tally
    }
}

/// What a worker says about itself every few seconds (the console's "workers").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// Host, process and connection name.
    pub name: String,
    /// Why it is not ready (`/readyz`), or `None` when it is.
    pub not_ready: Option<String>,
    /// Providers whose circuit is open in this worker.
    pub circuits_open: Vec<String>,
    /// When it said so (RFC 3339).
    pub at: String,
}

/// How long a heartbeat stands without a newer one.
pub const HEARTBEAT_TTL_SECS: u64 = 15;

/// The throughput counters of one namespace.
#[derive(Clone)]
pub struct Stats {
    conn: ConnectionManager,
    tag: String,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

fn minute_of(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

fn day_of(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

impl Stats {
    /// The counters of `namespace` (the queue prefix).
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            tag: format!("{{{namespace}:stats}}"),
        }
    }

    fn minute_key(&self, minute: &str) -> String {
        format!("{}:minute:{minute}", self.tag)
    }

    fn day_key(&self, day: &str) -> String {
        format!("{}:day:{day}", self.tag)
    }

    /// Adds `tally` to the minute and the day of `at` (UTC), in one round trip. Not repeated
    /// on failure. `Unavailable`: nothing is known to have been added, so the caller keeps the
    /// counts for the next flush; `Corrupt`: Redis refused a command but applied the others,
    /// so adding them again would count them twice.
    pub async fn add(&self, at: OffsetDateTime, tally: &Tally) -> Result<(), StoreError> {
        if tally.is_empty() {
            return Ok(());
        }
        let at = at.to_offset(time::UtcOffset::UTC);
        let mut pipe = redis::pipe();
        for (key, ttl) in [
            (self.minute_key(&minute_of(at)), MINUTE_TTL_SECS),
            (self.day_key(&day_of(at)), DAY_TTL_SECS),
        ] {
            for (field, n) in [
                ("succeeded", tally.succeeded),
                ("failed", tally.failed),
                ("retried", tally.retried),
            ] {
                if n > 0 {
                    pipe.hincr(&key, field, n).ignore();
                }
            }
            for (currency, minor) in &tally.refunded {
                pipe.hincr(&key, format!("refunded:{currency}"), *minor)
                    .ignore();
            }
            pipe.expire(&key, ttl).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                StoreError::Unavailable(e.to_string())
            } else {
                // Redis answered, refusing a command (a value edited by hand, say): the
                // others in the pipeline were applied all the same.
                StoreError::Corrupt(e.to_string())
            }
        })
    }

    fn workers_key(&self) -> String {
        format!("{}:workers", self.tag)
    }

    /// Says worker `id` is alive, as `beat`, for [`HEARTBEAT_TTL_SECS`].
    pub async fn heartbeat(&self, id: &str, beat: &Heartbeat) -> Result<(), StoreError> {
        let until = OffsetDateTime::now_utc().unix_timestamp() + HEARTBEAT_TTL_SECS as i64;
        let text = serde_json::to_string(&(until, beat)).unwrap_or_default();
        super::query(
            &self.conn,
            redis::cmd("HSET").arg(self.workers_key()).arg(id).arg(text),
        )
        .await
    }

    /// Worker `id` stopped: its heartbeat goes at once.
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        super::query(
            &self.conn,
            redis::cmd("HDEL").arg(self.workers_key()).arg(id),
        )
        .await
    }

    /// The workers that said they were alive in the last [`HEARTBEAT_TTL_SECS`] (one hash:
    /// read in one call, whatever else Redis holds), at most `limit` of them, and how many
    /// there are; heartbeats gone stale (a worker killed) are pruned. One that does not read
    /// (edited by hand) is shown as such.
    pub async fn workers(&self, limit: usize) -> Result<(Vec<Heartbeat>, usize), StoreError> {
        let all: Vec<(String, String)> =
            super::query(&self.conn, redis::cmd("HGETALL").arg(self.workers_key())).await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut stale = Vec::new();
        let mut beats = Vec::new();
        for (id, text) in all {
            match serde_json::from_str::<(i64, Heartbeat)>(&text) {
                Ok((until, _)) if until < now => stale.push(id),
                Ok((_, beat)) => beats.push(beat),
                Err(_) => beats.push(Heartbeat {
                    name: format!("unreadable heartbeat {:?}", crate::job::truncate(&id, 40)),
                    not_ready: Some(format!("{:?}", crate::job::truncate(&text, 80))),
                    ..Heartbeat::default()
                }),
            }
        }
        if !stale.is_empty() {
            let _: Result<i64, _> = super::query(
                &self.conn,
                redis::cmd("HDEL").arg(self.workers_key()).arg(&stale),
            )
            .await;
        }
        beats.sort_by(|a, b| a.name.cmp(&b.name));
        let total = beats.len();
        beats.truncate(limit);
        Ok((beats, total))
    }

    /// The last `minutes` minutes up to `now`, oldest first: (minute, counts).
    pub async fn minutes(
        &self,
        now: OffsetDateTime,
        minutes: u32,
    ) -> Result<Vec<(String, Tally)>, StoreError> {
        let now = now.to_offset(time::UtcOffset::UTC);
        let labels: Vec<String> = (0..minutes)
            .rev()
            .map(|back| minute_of(now - time::Duration::minutes(i64::from(back))))
            .collect();
        let mut pipe = redis::pipe();
        for label in &labels {
            pipe.hgetall(self.minute_key(label));
        }
        let mut conn = self.conn.clone();
        let read: Vec<BTreeMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(labels
            .into_iter()
            .zip(read.into_iter().map(Tally::from_fields))
            .collect())
    }

    /// The counts of the UTC day of `at`.
    pub async fn day(&self, at: OffsetDateTime) -> Result<Tally, StoreError> {
        let key = self.day_key(&day_of(at.to_offset(time::UtcOffset::UTC)));
        let fields: BTreeMap<String, String> =
            super::query(&self.conn, redis::cmd("HGETALL").arg(key)).await?;
        Ok(Tally::from_fields(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_what_grew() {
        let earlier = Tally {
            succeeded: 3,
            failed: 1,
            retried: 0,
            refunded: BTreeMap::from([("BRL".into(), 1_000)]),
        };
        let now = Tally {
            succeeded: 5,
            failed: 1,
            retried: 2,
            refunded: BTreeMap::from([("BRL".into(), 1_500), ("USD".into(), 70)]),
        };
        assert_eq!(
            now.since(&earlier),
            Tally {
                succeeded: 2,
                failed: 0,
                retried: 2,
                refunded: BTreeMap::from([("BRL".into(), 500), ("USD".into(), 70)]),
            }
        );
        assert!(now.since(&now).is_empty());
        assert_eq!(
            earlier.since(&now).succeeded,
            3,
            "a counter that went back counts from zero"
        );
    }

    #[test]
    fn fields_read_back_and_unknown_ones_are_ignored() {
        let tally = Tally::from_fields(BTreeMap::from([
            ("succeeded".into(), "4".into()),
            ("refunded:BRL".into(), "18650".into()),
            ("failed".into(), "lots".into()),
            ("planted".into(), "99".into()),
        ]));
        assert_eq!(tally.succeeded, 4);
        assert_eq!(tally.refunded["BRL"], 18_650);
        assert_eq!(tally.failed + tally.retried, 0);
    }

    #[test]
    fn minutes_and_days_are_utc() {
        let at = time::macros::datetime!(2026-12-05 23:59:30 -03:00);
        assert_eq!(
            minute_of(at.to_offset(time::UtcOffset::UTC)),
            "2026-12-06T02:59"
        );
        assert_eq!(day_of(at.to_offset(time::UtcOffset::UTC)), "2026-12-06");
    }
}
