//! Typed settings: built-in defaults, then `config/default.toml` (or `--config`), then
//! `REFUND_<SECTION>__<KEY>` environment variables. Connection URLs and the queue prefix come
//! from the command line (with their own environment fallbacks), not from here.
//!
//! The built-in defaults equal the shipped `config/default.toml`; a test holds them together.

use std::{fmt, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::job::ProviderName;

/// The shipped `config/default.toml`, compiled in: the built-in defaults are its contents.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything tunable about the worker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Consumption: concurrency, chunks, prefetch, shutdown.
    pub worker: WorkerSettings,
    /// Transient-failure retries.
    pub retry: RetrySettings,
    /// The Redis idempotency records.
    pub idempotency: IdempotencySettings,
    /// Provider connectors: endpoints, credentials, timeouts, limits.
    pub providers: ProvidersSettings,
    /// The ERP, invoicing and WhatsApp services of governed refunds.
    pub services: ServicesSettings,
    /// Spend mandates.
    pub mandates: MandateSettings,
    /// The ops console.
    pub console: ConsoleSettings,
    /// Sealed receipts.
    pub receipts: ReceiptSettings,
    /// What the service trusts in the messages it reads back.
    pub broker: BrokerSettings,
    /// Certificates whose expiry the worker exports: name → PEM file.
    #[serde(default)]
    pub certificates: std::collections::BTreeMap<String, String>,
}

/// The services a governed refund uses besides its provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServicesSettings {
    /// The ERP (Omie) that verifies orders.
    pub erp: ServiceSettings,
    /// The invoicing service that issues credit notes.
    pub invoicing: ServiceSettings,
    /// WhatsApp through Z-API.
    pub whatsapp: ServiceSettings,
}

/// One service's endpoint and credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Where its API lives (no trailing slash).
    pub base_url: String,
    /// Its secret: the ERP's app_secret, the invoicing key, Z-API's Client-Token.
    pub api_key: Secret,
    /// The ERP's app_key.
    #[serde(default)]
    pub app_key: Option<String>,
    /// Z-API's instance id.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Z-API's instance token (part of the URL path).
    #[serde(default)]
    pub instance_token: Option<Secret>,
}

/// Spend mandates (SPEC §5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MandateSettings {
    /// Refuse refunds that name no mandate.
    pub required: bool,
    /// Ed25519 seed (hex) that signs mandates: finance's, needed only by `mandate grant` and
    /// `mandate revoke`. Empty or absent on workers.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// The public keys (hex) mandates are verified with; several while a key rotates.
    pub verify_keys: Vec<String>,
}

impl MandateSettings {
    /// Finance's signing seed, when this process holds one.
    pub fn signing_key(&self) -> Option<&Secret> {
        self.signing_key
            .as_ref()
            .filter(|k| !k.expose().trim().is_empty())
    }
}

/// The ops console: who may sign in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// How long a sign-in lasts without use.
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// Where the console's archive action writes its files.
    #[serde(default = "default_archive_dir")]
    pub archive_dir: std::path::PathBuf,
    /// The operators (`refund-worker console operator add NAME` prints an entry).
    #[serde(default)]
    pub operators: Vec<OperatorSettings>,
}

fn default_archive_dir() -> std::path::PathBuf {
    "dlq-archives".into()
}

/// One console operator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// The sign-in name.
    pub name: String,
    /// An argon2id PHC string (`$argon2id$v=19$…`); never the password.
    pub password_hash: Secret,
    /// May look, may not act.
    #[serde(default)]
    pub read_only: bool,
}

/// Sealed receipts (SPEC §6).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptSettings {
    /// Ed25519 seed (hex) that signs receipts.
    pub signing_key: Secret,
}

/// The seal on what the service itself publishes (SPEC §3a).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// HMAC keys, each `"<key id>:<hex secret>"`: the first seals retries, dead letters and
    /// replays; every one listed is accepted when a sealed message is read back (rotation).
    pub seal_keys: Vec<Secret>,
}

/// How jobs are consumed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs processed at the same time, across all chunks.
    pub concurrency: usize,
    /// Deliveries taken from the consumer and dispatched together.
    pub chunk_size: usize,
    /// Unacknowledged deliveries the broker may hand this worker (AMQP prefetch).
    pub prefetch: u16,
    /// Deliveries of one message before the broker dead-letters it as `delivery_limit` (and
    /// takeovers of its claim before the worker does).
    pub delivery_limit: u32,
    /// How long a job may run before it counts as hung and is handed back.
    #[serde(deserialize_with = "duration")]
    pub job_timeout: Duration,
    /// How long a worker may hold jobs without finishing any before `/readyz` reports it
    /// stalled.
    #[serde(deserialize_with = "duration")]
    pub stall_after: Duration,
    /// How long a stopping worker waits for in-flight jobs before handing them back.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// The largest job body read, in bytes; a larger one is dead-lettered as `invalid` with
    /// its size and this limit in the reason.
    pub max_body_bytes: usize,
}

/// How transient failures are retried.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Quick retries inside one attempt before it goes to a retry tier.
    pub in_process: u32,
    /// The first in-process backoff (doubling, with jitter, up to 2 s).
    #[serde(deserialize_with = "duration")]
    pub in_process_delay: Duration,
    /// Attempts before a job is dead-lettered as `exhausted`.
    pub max_attempts: u32,
    /// The delayed retry tiers: one TTL queue each, used in order.
    #[serde(deserialize_with = "durations")]
    pub delays: Vec<Duration>,
}

/// The Redis idempotency records.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a finished job's record (and so its protection) lives.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long a claim holds before another worker may take the job over.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// Look for records written before record keys carried a Redis Cluster hash tag, and
    /// adopt them (one extra read per claim); safe to turn off one `ttl` after the upgrade.
    pub read_legacy_keys: bool,
}

/// Provider connectors.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSettings {
    /// The longest a provider call may take, all its requests together (each request's
    /// timeout, and the guard's bound on the whole call); must stay under the lease.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// TCP connect timeout; a connect failure means nothing was sent.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Consecutive failed calls that open a provider's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one probe call.
    #[serde(deserialize_with = "duration")]
    pub circuit_open_for: Duration,
    /// How long a call may wait in-process for its provider's rate limit before it goes to a
    /// retry tier instead. The wait holds the delivery, not the claim's safety: the claim is
    /// made to last the call out (renewed if need be) after the wait, right before the send.
    #[serde(deserialize_with = "duration")]
    pub max_throttle_wait: Duration,
    /// Stripe.
    pub stripe: ProviderSettings,
    /// Mercado Pago.
    pub mercadopago: ProviderSettings,
    /// Asaas.
    pub asaas: ProviderSettings,
    /// Pix (the PSP's BCB API Pix).
    pub pix: ProviderSettings,
    /// Rinne.
    pub rinne: ProviderSettings,
}

impl ProvidersSettings {
    /// One provider's settings.
    pub fn get(&self, provider: ProviderName) -> &ProviderSettings {
        match provider {
            ProviderName::Stripe => &self.stripe,
            ProviderName::Mercadopago => &self.mercadopago,
            ProviderName::Asaas => &self.asaas,
            ProviderName::Pix => &self.pix,
            ProviderName::Rinne => &self.rinne,
        }
    }

    /// One provider's settings, to change.
    pub fn get_mut(&mut self, provider: ProviderName) -> &mut ProviderSettings {
        match provider {
            ProviderName::Stripe => &mut self.stripe,
            ProviderName::Mercadopago => &mut self.mercadopago,
            ProviderName::Asaas => &mut self.asaas,
            ProviderName::Pix => &mut self.pix,
            ProviderName::Rinne => &mut self.rinne,
        }
    }
}

/// One provider's endpoint, credential and client-side limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Where the provider's API lives (no trailing slash).
    pub base_url: String,
    /// The credential the provider expects (API key, access token, OAuth2 client secret).
    pub api_key: Secret,
    /// OAuth2 client id (Pix).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Merchant id in request paths (Rinne).
    #[serde(default)]
    pub merchant_id: Option<String>,
    /// Calls in flight at once (0 = no limit).
    pub concurrency: usize,
    /// Calls per second (0 = no limit).
    pub rate_limit: u32,
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

/// The credential, for code that takes any text (the seal's key parser); never printed.
impl AsRef<str> for Secret {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Default for Settings {
    /// The built-in defaults: the embedded `config/default.toml`, with no environment.
    fn default() -> Self {
        Self::load_from(Path::new(""), false, std::collections::HashMap::new())
            .expect("the embedded config/default.toml is valid (a unit test loads it)")
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
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if path.is_file() {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let built = builder
            .add_source(
                config::Environment::with_prefix("REFUND")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("retry.delays")
                    .with_list_parse_key("broker.seal_keys")
                    .with_list_parse_key("mandates.verify_keys")
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
        if self.worker.stall_after.is_zero() {
            return bad("[worker] stall_after must be more than zero");
        }
        if !(MIN_BODY_LIMIT..=MAX_BODY_LIMIT).contains(&self.worker.max_body_bytes) {
            return bad(&format!(
                "[worker] max_body_bytes must be from {MIN_BODY_LIMIT} (the largest valid job fits) to {MAX_BODY_LIMIT} (RabbitMQ's own default message limit)"
            ));
        }
        if self.retry.max_attempts == 0 {
            return bad("[retry] max_attempts must be at least 1");
        }
        if self.retry.delays.is_empty() || self.retry.delays.iter().any(Duration::is_zero) {
            return bad("[retry] delays needs at least one delay, none of them zero");
        }
        crate::broker::seal::Sealer::from_config(&self.broker.seal_keys)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(name) = self
            .certificates
            .keys()
            .find(|name| !crate::certificates::valid_name(name))
        {
            return bad(&format!(
                "[certificates] {name:?}: a name is 1 to 64 of a-z, 0-9 and _ (it becomes a metric label)"
            ));
        }
        let hex_key = |k: &String| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
        if self.mandates.verify_keys.is_empty() || !self.mandates.verify_keys.iter().all(hex_key) {
            return bad(
                "[mandates] verify_keys must be a non-empty list of Ed25519 public keys in hex (64 hex digits each)",
            );
        }
        if let Some(op) = self
            .console
            .operators
            .iter()
            .find(|op| !valid_operator_name(&op.name))
        {
            return bad(&format!(
                "[console] operators: the name {:?} is not 1 to 64 of [A-Za-z0-9._-] (it names the operator in the audit log and in archive file names)",
                crate::job::truncate(&op.name, 40)
            ));
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
        for provider in ProviderName::ALL {
            self.providers.get_mut(provider).base_url = format!("{url}/{provider}");
        }
        self.services.erp.base_url = format!("{url}/erp");
        self.services.invoicing.base_url = format!("{url}/invoicing");
        self.services.whatsapp.base_url = format!("{url}/whatsapp");
    }
}

/// A console operator's name: 1 to 64 of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn valid_operator_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && name != "."
        && name != ".."
}

/// The smallest `[worker] max_body_bytes`: every valid job (4 KiB of metadata, 500 escaped
/// characters of description, the identifiers) fits well within it.
const MIN_BODY_LIMIT: usize = 16 * 1024;
/// The largest: RabbitMQ's default `max_message_size` (16 MiB) refuses bigger ones anyway.
const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

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
    fn built_in_defaults_are_the_spec_defaults() {
        let s = Settings::default();
        assert_eq!(
            s,
            Settings::load_from(shipped(), true, HashMap::new()).unwrap()
        );
        assert_eq!(s.retry.max_attempts, 6);
        assert_eq!(
            s.retry.delays,
            [1, 5, 30, 120, 600].map(Duration::from_secs)
        );
        assert_eq!(s.worker.chunk_size, 50);
        assert_eq!(s.idempotency.ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(s.idempotency.lease, Duration::from_secs(30));
        for provider in ProviderName::ALL {
            assert!(
                s.providers.get(provider).base_url.starts_with("https://"),
                "{provider}"
            );
        }
    }

    #[test]
    fn one_environment_variable_overrides_one_key_without_a_file() {
        let env = HashMap::from([(
            "REFUND_PROVIDERS__STRIPE__API_KEY".to_owned(),
            "sk_live_x".to_owned(),
        )]);
        let s = Settings::load_from(Path::new("/nonexistent.toml"), false, env).unwrap();
        assert_eq!(s.providers.stripe.api_key.expose(), "sk_live_x");
        assert_eq!(s.providers.stripe.base_url, "https://api.stripe.com");
    }

    #[test]
    fn a_typo_in_a_file_is_refused() {
        let path =
            std::env::temp_dir().join(format!("refund-worker-typo-{}.toml", std::process::id()));
        std::fs::write(&path, "[retry]\nmax_attemps = 3\n").unwrap();
        let err = Settings::load_from(&path, true, HashMap::new())
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("max_attemps"), "{err}");
    }

    #[test]
    fn an_operator_name_that_could_leave_the_archive_directory_is_refused() {
        for name in ["../x", "a/b", "..", "", "ana maria"] {
            let path = std::env::temp_dir().join(format!(
                "refund-worker-op-{}-{}.toml",
                std::process::id(),
                name.len()
            ));
            std::fs::write(
                &path,
                format!(
                    "[[console.operators]]\nname = {name:?}\npassword_hash = \"$argon2id$v=19$x\"\n"
                ),
            )
            .unwrap();
            let err = Settings::load_from(&path, true, HashMap::new())
                .unwrap_err()
                .to_string();
            let _ = std::fs::remove_file(&path);
            assert!(err.contains("[console] operators"), "{name:?}: {err}");
        }
        assert!(valid_operator_name("ana.maria-2_b"));
    }

    #[test]
    fn providers_url_points_every_provider_at_the_sandbox() {
        let mut s = Settings::default();
        s.point_providers_at("http://127.0.0.1:8099/");
        for provider in ProviderName::ALL {
            assert_eq!(
                s.providers.get(provider).base_url,
                format!("http://127.0.0.1:8099/{provider}")
            );
        }
        assert_eq!(s.services.erp.base_url, "http://127.0.0.1:8099/erp");
        assert_eq!(
            s.services.whatsapp.base_url,
            "http://127.0.0.1:8099/whatsapp"
        );
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
    fn a_worker_needs_no_mandate_seed_but_verify_keys_that_read() {
        let load = |pairs: &[(&str, &str)]| {
            let env: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Settings::load_from(shipped(), true, env)
        };
        let worker = load(&[
            ("REFUND_MANDATES__SIGNING_KEY", ""),
            ("REFUND_MANDATES__VERIFY_KEYS", "00ff"),
        ]);
        let err = worker.unwrap_err().to_string();
        assert!(err.contains("[mandates] verify_keys"), "{err}");
        let two = format!("{},{}", "ab".repeat(32), "cd".repeat(32));
        let worker = load(&[
            ("REFUND_MANDATES__SIGNING_KEY", ""),
            ("REFUND_MANDATES__VERIFY_KEYS", &two),
        ])
        .unwrap();
        assert!(worker.mandates.signing_key().is_none());
        assert_eq!(worker.mandates.verify_keys.len(), 2);
    }

    #[test]
    fn seal_keys_rotate_from_the_environment_and_bad_ones_are_refused() {
        let new = format!("new:{}", "ab".repeat(32));
        let old = format!("old:{}", "cd".repeat(32));
        let env = HashMap::from([(
            "REFUND_BROKER__SEAL_KEYS".to_owned(),
            format!("{new},{old}"),
        )]);
        let s = Settings::load_from(shipped(), true, env).unwrap();
        let sealer = crate::broker::seal::Sealer::from_config(&s.broker.seal_keys).unwrap();
        assert_eq!(sealer.sealing_key_id(), "new");
        assert_eq!(s.broker.seal_keys.len(), 2);

        let env = HashMap::from([(
            "REFUND_BROKER__SEAL_KEYS".to_owned(),
            "short:00ff".to_owned(),
        )]);
        let err = Settings::load_from(shipped(), true, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[broker] seal_keys: key 1 (short)"), "{err}");
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
    fn body_limit_is_configurable_within_bounds() {
        assert_eq!(Settings::default().worker.max_body_bytes, 64 * 1024);
        let with = |value: &str| {
            let env =
                HashMap::from([("REFUND_WORKER__MAX_BODY_BYTES".to_owned(), value.to_owned())]);
            Settings::load_from(shipped(), true, env)
        };
        assert_eq!(with("1048576").unwrap().worker.max_body_bytes, 1 << 20);
        for bad in ["1024", "1073741824"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("max_body_bytes must be from 16384"), "{err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::default();
        assert!(!format!("{s:?}").contains("sk_test_sandbox"));
        assert_eq!(s.providers.stripe.api_key.expose(), "sk_test_sandbox");
    }
}
