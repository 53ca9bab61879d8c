//! Date pins: the day a job without a date of its own was first seen, pinned by job id, so
//! every redelivery derives the same idempotency key (`<ns>:jobdate:<job id>`).

use super::{IdempotencyStore, millis};
use crate::{
    job::JobDate,
    store::{StoreError, redis_call},
};

impl IdempotencyStore {
    /// The day a job without a date of its own is keyed under: the day it was first seen,
    /// pinned by job id, so a redelivery on a later day derives the same idempotency key.
    pub async fn pin_date(&self, job_id: &str, today: JobDate) -> Result<JobDate, StoreError> {
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
