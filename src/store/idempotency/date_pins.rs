//! Date pins: the day a job without a date of its own was first seen, pinned to its message id
//! and to its body digest, so every later copy derives the same idempotency key
//! (`<ns>:jobdate:<identity>`).

use super::{IdempotencyStore, millis};
use crate::{
    job::JobDate,
    store::{StoreError, redis_call},
};

impl IdempotencyStore {
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

    /// Pins one identity to `today` unless it already has one; returns the pinned day.
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
}
