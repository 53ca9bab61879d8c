//! Ops controls in Redis that every worker honours: per-provider pauses.
//!
//! ```text
//!   {<ns>:control}:paused   hash  provider → {"by", "at", "reason"} (JSON)
//! ```
//!
//! Written by `refund-worker provider pause|resume` and the console; read by every worker
//! every second (`providers::pause`).

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Why a provider is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why, in the operator's words.
    pub reason: String,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "by {} at {}: {}", self.by, self.at, self.reason)
    }
}

/// The ops controls of one namespace.
#[derive(Clone)]
pub struct Controls {
    conn: ConnectionManager,
    paused: String,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls")
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl Controls {
    /// The controls of `namespace` (the queue prefix).
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            paused: format!("{{{namespace}:control}}:paused"),
        }
    }

    /// Pauses `provider`; `false` when it already was (the first pause stands).
    pub async fn pause(&self, provider: &str, pause: &Pause) -> Result<bool, StoreError> {
        let text = serde_json::to_string(pause).unwrap_or_default();
        let set: i64 = self
            .call(
                redis::cmd("HSETNX")
                    .arg(&self.paused)
                    .arg(provider)
                    .arg(text),
            )
            .await?;
        Ok(set == 1)
    }

    /// Resumes `provider`; `false` when it was not paused.
    pub async fn resume(&self, provider: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .call(redis::cmd("HDEL").arg(&self.paused).arg(provider))
            .await?;
        Ok(removed == 1)
    }

    /// Every paused provider, by name. An entry that does not read is still a pause: its
    /// reason says so (fail closed).
    pub async fn paused(&self) -> Result<BTreeMap<String, Pause>, StoreError> {
        let all: Vec<(String, String)> = self.call(redis::cmd("HGETALL").arg(&self.paused)).await?;
        Ok(all
            .into_iter()
            .map(|(provider, text)| {
                let pause = serde_json::from_str(&text).unwrap_or_else(|_| Pause {
                    by: "unknown".into(),
                    at: String::new(),
                    reason: format!("an unreadable pause entry: {text:?}"),
                });
                (provider, pause)
            })
            .collect())
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, StoreError> {
        super::query(&self.conn, cmd).await
    }
}
