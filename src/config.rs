//! Typed settings: built-in defaults, then `config/default.toml` (or `--config`), then
//! `REFUND_<SECTION>__<KEY>` environment variables. Connection URLs and the queue prefix come
//! from the command line (with their own environment fallbacks), not from here.
//!
//! The built-in defaults equal the shipped `config/default.toml`; a test holds them together.

use std::{fmt, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

/// Everything tunable about the worker.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Consumption: concurrency, chunks, prefetch, shutdown.
    pub worker: WorkerSettings,
    /// Transient-failure retries.
    pub retry: RetrySettings,
    /// The Redis idempotency records.
    pub idempotency: IdempotencySettings,
    /// Provider connectors: endpoints, credentials, timeouts.
    pub providers: ProvidersSettings,
}

/// How jobs are consumed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs processed at the same time, across all chunks.
    pub concurrency: usize,
    /// Deliveries taken from the consumer and dispatched together.
    pub chunk_size: usize,
    /// Unacknowledged deliveries the broker may hand this worker (AMQP prefetch).
    pub prefetch: u16,
    /// Deliveries of one message before the broker dead-letters it as `delivery_limit`.
    pub delivery_limit: u32,
    /// How long a stopping worker waits for in-flight jobs before handing them back.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 256,
            chunk_size: 50,
            prefetch: 512,
            delivery_limit: 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// How transient failures are retried.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts before a job is dead-lettered as `exhausted`.
    pub max_attempts: u32,
    /// The delayed retry tiers: one TTL queue each, used in order.
    #[serde(deserialize_with = "durations")]
    pub delays: Vec<Duration>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            delays: [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec(),
        }
    }
}

/// The Redis idempotency records.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a finished job's record (and so its protection) lives.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long a claim holds before another worker may take the job over.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30 * 24 * 3600),
            lease: Duration::from_secs(30),
        }
    }
}

/// Provider connectors.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersSettings {
    /// Whole-request timeout of a provider call; must stay well under the lease.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// TCP connect timeout; a connect failure means nothing was sent.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Stripe.
    pub stripe: ProviderSettings,
}

impl Default for ProvidersSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            stripe: ProviderSettings {
                base_url: "https://api.stripe.com".into(),
                api_key: Secret::new("sk_test_sandbox"),
            },
        }
    }
}

/// One provider's endpoint and credential.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Where the provider's API lives (no trailing slash).
    pub base_url: String,
    /// The credential the provider expects (API key, token).
    pub api_key: Secret,
}

/// A credential: usable, but never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Why settings could not be loaded (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file is missing.
    #[error("config file {0} does not exist")]
    Missing(String),
    /// The file or the environment holds something invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `path` (which must exist when `required`) and the `REFUND_*__*` environment.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let env: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("REFUND_") && k.contains("__"))
            .collect();
        Self::load_from(path, required, env)
    }

    /// Loads `path` and the given environment map (tests pass their own).
    pub fn load_from(
        path: &Path,
        required: bool,
        env: std::collections::HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError::Missing(path.display().to_string()));
        }
        let built = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix("REFUND")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("retry.delays")
                    .source(Some(env.into_iter().collect())),
            )
            .build()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let settings: Settings = built
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if self.worker.concurrency == 0 || self.worker.chunk_size == 0 || self.worker.prefetch == 0
        {
            return bad("[worker] concurrency, chunk_size and prefetch must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return bad("[retry] max_attempts must be at least 1");
        }
        if self.retry.delays.is_empty() || self.retry.delays.iter().any(Duration::is_zero) {
            return bad("[retry] delays needs at least one delay, none of them zero");
        }
        if self.idempotency.lease <= self.providers.timeout {
            return bad(
                "[idempotency] lease must be longer than [providers] timeout, or a slow call could be taken over while it runs",
            );
        }
        Ok(())
    }

    /// Points every provider at one sandbox: `{url}/{provider}` (SPEC §7 `--providers-url`).
    pub fn point_providers_at(&mut self, url: &str) {
        let url = url.trim_end_matches('/');
        self.providers.stripe.base_url = format!("{url}/stripe");
    }
}

/// Reads `"30s"`, `"2m"`, `"30d"` (humantime) or a bare number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Human(String),
    }
    match Text::deserialize(d)? {
        Text::Seconds(s) => Ok(Duration::from_secs(s)),
        Text::Human(h) => humantime::parse_duration(h.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{h:?} is not a duration like \"30s\" or \"2m\": {e}"
            ))
        }),
    }
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "duration")] Duration);
    Ok(Vec::<One>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shipped() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
    }

    #[test]
    fn shipped_file_equals_built_in_defaults() {
        let loaded = Settings::load_from(shipped(), true, HashMap::new()).unwrap();
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn missing_optional_file_gives_defaults() {
        let loaded =
            Settings::load_from(Path::new("/nonexistent.toml"), false, HashMap::new()).unwrap();
        assert_eq!(loaded, Settings::default());
        assert!(matches!(
            Settings::load_from(Path::new("/nonexistent.toml"), true, HashMap::new()),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = HashMap::from([
            ("REFUND_RETRY__MAX_ATTEMPTS".to_owned(), "3".to_owned()),
            ("REFUND_RETRY__DELAYS".to_owned(), "1s,2s".to_owned()),
            ("REFUND_IDEMPOTENCY__LEASE".to_owned(), "45s".to_owned()),
            ("REFUND_WORKER__CHUNK_SIZE".to_owned(), "10".to_owned()),
        ]);
        let s = Settings::load_from(shipped(), true, env).unwrap();
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(
            s.retry.delays,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(s.idempotency.lease, Duration::from_secs(45));
        assert_eq!(s.worker.chunk_size, 10);
    }

    #[test]
    fn invalid_values_are_refused_with_the_reason() {
        let env = HashMap::from([("REFUND_IDEMPOTENCY__LEASE".to_owned(), "soon".to_owned())]);
        let err = Settings::load_from(shipped(), true, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
        let env = HashMap::from([("REFUND_IDEMPOTENCY__LEASE".to_owned(), "5s".to_owned())]);
        let err = Settings::load_from(shipped(), true, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease must be longer"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::default();
        assert!(!format!("{s:?}").contains("sk_test_sandbox"));
        assert_eq!(s.providers.stripe.api_key.expose(), "sk_test_sandbox");
    }
}
