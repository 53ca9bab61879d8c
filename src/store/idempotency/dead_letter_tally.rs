//! The dead-letter money tally: the money of each job waiting in the dead-letter queue
//! (`<ns>:dlq-amounts`, job id -> "amount currency"), for the money-stuck gauge.

use super::IdempotencyStore;
use crate::store::{StoreError, redis_call};

impl IdempotencyStore {
    /// Notes a dead letter's money (for the money-stuck gauge): one entry per job id.
    pub async fn note_dead_letter(
        &self,
        job_id: &str,
        amount: u64,
        currency: &str,
    ) -> Result<(), StoreError> {
        let redis_key = self.keys.dead_letter_amounts();
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
        let redis_key = self.keys.dead_letter_amounts();
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
        let redis_key = self.keys.dead_letter_amounts();
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

    /// Entries stored in this namespace's audit log and its head's sequence number.
    pub async fn audit_counts(&self) -> Result<(u64, u64), StoreError> {
        crate::store::audit::counts(&self.conn, self.keys.namespace()).await
    }
}
