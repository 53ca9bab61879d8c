//! HTTP plumbing shared by the provider connectors and the services of governed refunds (ERP,
//! invoicing, WhatsApp): one pooled client, the one rule for what a transport failure means
//! for money, the one reading of a server's "come back later" hint, and the one way a body is
//! quoted in an error. No copy of these lives anywhere else.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::{config::ProvidersSettings, providers::error::ProviderError};

/// The pooled client every connector and service shares (connections are reused across jobs).
pub(crate) fn client(settings: &ProvidersSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(1024)
        .user_agent(concat!("refund-worker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a lost answer to a refund request may hide.
const REFUND_MAY_EXIST: &str = "the refund may have been executed";

/// Classifies a transport error of a refund request ([`transport_failure`] with "the refund
/// may have been executed").
pub(crate) fn transport_error(provider: &str, error: reqwest::Error) -> ProviderError {
    transport_failure(provider, REFUND_MAY_EXIST, error)
}

/// Classifies a transport error: a failed connect sent nothing (transient); anything after the
/// request may have left (timeout, reset, unreadable answer) is an unknown outcome, whose
/// message says what may have happened (`effect`). The URL is dropped from the error first: some
/// services carry credentials in the path (Z-API's instance token), and messages reach logs and
/// dead letters.
pub(crate) fn transport_failure(what: &str, effect: &str, error: reqwest::Error) -> ProviderError {
    let connect = error.is_connect();
    let timeout = error.is_timeout();
    let cause = crate::diagnostics::root_cause(&error.without_url());
    if connect {
        ProviderError::transient(format!("{what}: cannot connect: {cause}"))
    } else if timeout {
        ProviderError::unknown(format!("{what}: no answer in time ({effect})"))
    } else {
        ProviderError::unknown(format!(
            "{what}: connection failed after sending: {cause} ({effect})"
        ))
    }
}

/// A provider's hint of when to come back: `Retry-After` in seconds, or a rate-limit reset
/// header (`RateLimit-Reset`, `x-ratelimit-reset`) in seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    ["retry-after", "ratelimit-reset", "x-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(Duration::from_secs)
}

/// Sends a read-only request and reads its JSON answer. A look-up changes nothing, so every
/// failure of it is transient (never an unknown outcome); a non-2xx answer is classified by
/// the provider's own `classify`.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    what: &str,
    request: reqwest::RequestBuilder,
    classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
) -> Result<T, ProviderError> {
    let failed = |e: reqwest::Error| {
        ProviderError::transient(format!(
            "{what} failed: {}",
            crate::diagnostics::root_cause(&e.without_url())
        ))
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(failed)?;
    if !status.is_success() {
        return Err(match classify(status.as_u16(), &headers, &body) {
            ProviderError::Unknown { why } => ProviderError::transient(why),
            other => other,
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        ProviderError::transient(format!(
            "{what}: unreadable answer ({e}): {}",
            snippet(&body)
        ))
    })
}

/// The start of a response body, for an error message.
pub(crate) fn snippet(body: &[u8]) -> String {
    crate::job::truncate(&String::from_utf8_lossy(body), 200)
}
