//! The namespace wipe: the demo's clean-up of every key of one namespace. Never used on real
//! data.

use super::IdempotencyStore;
use crate::store::StoreError;

impl IdempotencyStore {
    /// Deletes every record of this namespace (the demo's clean-up; never used on real data).
    pub async fn delete_namespace(&self) -> Result<u64, StoreError> {
        // Everything under `{namespace}:`, and the keys tagged `{namespace:…}` (receipts, audit
        // log, controls, throughput; a namespace has no colon, so no other namespace's keys
        // match). SCAN walks one server: on Redis Cluster this clean-up must run against every
        // primary.
        let mut deleted = 0;
        let [own] = self.keys.patterns();
        for pattern in [own, format!("{{{}:*", self.keys.namespace)] {
            deleted += self.delete_matching(&pattern).await?;
        }
        Ok(deleted)
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
