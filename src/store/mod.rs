//! Redis: the idempotency records, mandates, the receipt chain and the audit log. Lua scripts live beside
//! the code that calls them, and every key one script touches shares a hash tag, so the
//! layout works on Redis Cluster too.

pub mod audit;
pub mod control;
pub mod idempotency;
pub mod mandates;
pub mod receipts;
pub mod stats;

use std::{future::Future, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use redis::{RedisError, aio::ConnectionManager};

pub use audit::AuditLog;
pub use control::{Controls, Pause};
pub use idempotency::{
    Claim, ClaimTicket, IdempotencyStore, RecordKeys, RecordState, RecordView, RefundRecord, Settle,
};
pub use mandates::{MandateKeys, MandateStore, ReserveAnswer, StoreAnswer, StoredMandate};
pub use receipts::{ChainKeys, ChainRead, ReceiptChain};
pub use stats::{Heartbeat, Stats, Tally};

/// Why Redis could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached at all (start-up).
    #[error("{} Redis at {address}: {cause} — {hint}", if hint.starts_with("is it running") { "cannot reach" } else { "refused by" })]
    Unreachable {
        /// host:port, without credentials.
        address: String,
        /// The underlying error.
        cause: String,
        /// What to check: whether it runs, or the password in the URL.
        hint: &'static str,
    },
    /// Redis is unreachable, timing out or refusing writes: no refund may run until it is back.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something this code cannot read: a bug or a foreign write.
    #[error("unexpected data in Redis: {0}")]
    Corrupt(String),
}

/// Server error codes that mean "Redis cannot take writes right now": wait for it.
const OUTAGE_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "NOPERM",
    "NOAUTH",
];

/// Whether Redis refused for an outage, also inside an aborted transaction or a pipeline
/// (`EXECABORT` wrapping `LOADING` right after a restart is Redis coming back, not bad data).
fn is_outage(e: &RedisError) -> bool {
    let outage = |code: &str| OUTAGE_CODES.contains(&code);
    e.code().is_some_and(outage)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| outage(error.code())))
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        use redis::ErrorKind;
        match e.kind() {
            // A reply this code cannot read, or a command Redis rejects for what it is
            // (WRONGTYPE on a record, a script error): waiting will not fix it.
            ErrorKind::UnexpectedReturnType | ErrorKind::Client | ErrorKind::Parse => {
                StoreError::Corrupt(e.to_string())
            }
            ErrorKind::Server(_) | ErrorKind::Extension if !is_outage(&e) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Checks that `url` reads as a Redis URL, saying why not without repeating it (it may hold a
/// password).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "REDIS_URL (--redis-url) is not a Redis URL ({}); expected redis://[:PASSWORD@]HOST:6379/[DB], e.g. redis://127.0.0.1:6379/",
                crate::diagnostics::root_cause(&e)
            )
        })
}

/// Opens a reconnecting connection, failing fast with a clear message when Redis is down.
pub async fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let unreachable = |e: &RedisError| StoreError::Unreachable {
        address: crate::diagnostics::host_port(url, 6379),
        cause: crate::diagnostics::root_cause(e),
        hint: match e.kind() {
            redis::ErrorKind::AuthenticationFailed => {
                "Redis refused the password: check the one in REDIS_URL (--redis-url), redis://:PASSWORD@HOST:6379/"
            }
            _ if e.code() == Some("NOAUTH") || e.code() == Some("WRONGPASS") => {
                "Redis refused the login: check the user and password in REDIS_URL (--redis-url)"
            }
            _ => "is it running? see README",
        },
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| unreachable(&e))?;
    // Small requests from many jobs share one connection: Nagle's algorithm would hold each
    // behind the previous one's ACK (redis-rs leaves it on by default).
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let client = redis::Client::open(info.set_tcp_settings(tcp)).map_err(|e| unreachable(&e))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| unreachable(&e))
}

/// Runs one command through [`redis_call`] (its retries and error mapping) on `conn`.
pub(crate) async fn query<T: redis::FromRedisValue>(
    conn: &ConnectionManager,
    cmd: &redis::Cmd,
) -> Result<T, StoreError> {
    redis_call(|| {
        let mut conn = conn.clone();
        let cmd = cmd.clone();
        async move { cmd.query_async(&mut conn).await }
    })
    .await
}

/// Runs one Redis call, repeating it a few times on transient errors. Only idempotent calls
/// go through here (the scripts are written so that repeating them is harmless).
pub(crate) async fn redis_call<T, F, Fut>(call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(3)
        .with_jitter();
    call.retry(backoff)
        .when(|e: &RedisError| !matches!(e.retry_method(), redis::RetryMethod::NoRetry))
        .await
        .map_err(StoreError::from)
}
