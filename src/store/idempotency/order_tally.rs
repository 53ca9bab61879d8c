//! The order refund tally: what governed refunds have taken from each order
//! (`<ns>:order-refunds:<order id>`, idempotency key -> minor units), so verification sees
//! what is still refundable. Idempotent per key: counting a refund again changes nothing.

use super::{IdempotencyStore, millis};
use crate::{
    job::IdempotencyKey,
    store::{StoreError, redis_call},
};

impl IdempotencyStore {
    /// What other jobs have refunded on an order (governed refunds), leaving out `key`'s own.
    pub async fn order_refunded(
        &self,
        order_id: &str,
        key: &IdempotencyKey,
    ) -> Result<u64, StoreError> {
        let redis_key = self.keys.order_refunds(order_id);
        let refunds: std::collections::HashMap<String, u64> = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&redis_key);
            async move { cmd.query_async(&mut conn).await }
        })
        .await?;
        Ok(refunds
            .iter()
            .filter(|(k, _)| k.as_str() != key.as_str())
            .map(|(_, v)| v)
            .sum())
    }

    /// Counts a governed refund against its order. Idempotent per key: recording it again
    /// changes nothing.
    pub async fn record_order_refund(
        &self,
        order_id: &str,
        key: &IdempotencyKey,
        amount: u64,
    ) -> Result<(), StoreError> {
        let [redis_key] = self.keys.order_refund_pipeline(order_id);
        let _: () = redis_call(|| {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&redis_key)
                .arg(key.as_str())
                .arg(amount)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&redis_key)
                .arg(millis(self.ttl))
                .ignore();
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }
}
