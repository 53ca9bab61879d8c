//! Validated field types of the job schema. Each `parse` returns the rule it broke.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use time::{Date, macros::format_description};

use super::JobError;

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Checks an identifier: 1 to `max` characters of `[A-Za-z0-9_.:-]`.
fn id_text(s: &str, max: usize) -> Result<String, String> {
    if s.is_empty() || s.len() > max || !s.chars().all(is_token_char) {
        return Err(format!(
            "must be 1-{max} characters of [A-Za-z0-9_.:-], got {:?}",
            truncate(s, 40)
        ));
    }
    Ok(s.to_owned())
}

/// An identifier: 1–128 characters of `[A-Za-z0-9_.:-]` (payment, order, agent, mandate ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// The longest identifier accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates an identifier.
    pub fn parse(s: &str) -> Result<Self, String> {
        id_text(s, Self::MAX_LEN).map(Self)
    }

    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Token::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The key that makes a refund happen once: in Redis, and as the provider's idempotency key.
///
/// 1–255 characters of `[A-Za-z0-9_.:-]` (255 is Stripe's limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 255;

    /// Validates an explicit key from a job.
    pub fn parse(s: &str) -> Result<Self, String> {
        id_text(s, Self::MAX_LEN).map(Self)
    }

    /// A key built from validated parts (tokens and a date), which is valid by construction.
    pub(super) fn derived(text: String) -> Self {
        debug_assert!(Self::parse(&text).is_ok(), "derived key {text:?} is valid");
        Self(text)
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for IdempotencyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The calendar day (UTC) a job is keyed under, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobDate(Date);

impl JobDate {
    /// Parses `YYYY-MM-DD` exactly.
    pub fn parse(s: &str) -> Result<Self, String> {
        let format = format_description!("[year]-[month]-[day]");
        if s.len() != 10 {
            return Err(format!(
                "must be a date as YYYY-MM-DD, got {:?}",
                truncate(s, 40)
            ));
        }
        Date::parse(s, format)
            .map(Self)
            .map_err(|_| format!("must be a real date as YYYY-MM-DD, got {s:?}"))
    }

    /// The UTC day of a moment.
    pub fn of(moment: time::OffsetDateTime) -> Self {
        Self(moment.to_offset(time::UtcOffset::UTC).date())
    }

    /// Today, UTC.
    pub fn today() -> Self {
        Self::of(time::OffsetDateTime::now_utc())
    }

    /// The UTC day of a Unix timestamp in seconds (the AMQP `timestamp` property).
    pub fn from_unix(seconds: u64) -> Option<Self> {
        let seconds = i64::try_from(seconds).ok()?;
        time::OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .map(Self::of)
    }
}

impl fmt::Display for JobDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = (self.0.year(), u8::from(self.0.month()), self.0.day());
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl Serialize for JobDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why the money goes back (the pacs.004 reasons, plus duplicate charges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The customer asked (pacs.004 MD06).
    CustomerRequest,
    /// The payment was fraudulent (FR01).
    Fraud,
    /// A banking error (BE08).
    BankingError,
    /// A Pix Saque/Troco error (SL02).
    PixWithdrawalOrChangeError,
    /// The customer was charged twice.
    Duplicate,
}

impl Reason {
    /// Every reason, by its schema name.
    pub const ALL: [(&'static str, Reason); 5] = [
        ("CUSTOMER_REQUEST", Reason::CustomerRequest),
        ("FRAUD", Reason::Fraud),
        ("BANKING_ERROR", Reason::BankingError),
        (
            "PIX_WITHDRAWAL_OR_CHANGE_ERROR",
            Reason::PixWithdrawalOrChangeError,
        ),
        ("DUPLICATE", Reason::Duplicate),
    ];

    /// Parses a schema name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "must be one of {}, got {:?}",
                    names.join(", "),
                    truncate(s, 40)
                )
            })
    }

    /// The schema name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(n, _)| n)
    }
}

/// A payment rail the worker can refund on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    /// Stripe (cards).
    Stripe,
    /// Mercado Pago.
    Mercadopago,
    /// Asaas.
    Asaas,
    /// Pix through the PSP's BCB API Pix (devolução).
    Pix,
    /// Rinne (Celcoin's acquirer).
    Rinne,
}

impl ProviderName {
    /// Every provider.
    pub const ALL: [ProviderName; 5] = [
        ProviderName::Stripe,
        ProviderName::Mercadopago,
        ProviderName::Asaas,
        ProviderName::Pix,
        ProviderName::Rinne,
    ];
    /// The names, for messages.
    pub const ALL_NAMES: &'static str = "stripe, mercadopago, asaas, pix, rinne";

    /// Parses a schema name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of {}, got {:?}",
                    Self::ALL_NAMES,
                    truncate(s, 40)
                )
            })
    }

    /// The schema name, also the metric label and the sandbox path prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Stripe => "stripe",
            ProviderName::Mercadopago => "mercadopago",
            ProviderName::Asaas => "asaas",
            ProviderName::Pix => "pix",
            ProviderName::Rinne => "rinne",
        }
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom to tell when the refund is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notify {
    /// The channel; only `whatsapp` exists.
    pub channel: String,
    /// The customer's phone in E.164 (`+5511999990000`).
    pub to: String,
    /// Which message template to send.
    pub template: String,
}

impl Notify {
    pub(super) fn from_value(value: &Value) -> Result<Self, JobError> {
        let err = |field: &str, rule: String| JobError::new(format!("notify.{field}"), rule);
        let Value::Object(map) = value else {
            return Err(JobError::new(
                "notify",
                "must be an object like {\"channel\":\"whatsapp\",\"to\":\"+55...\",\"template\":\"refund_done\"}",
            ));
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !["channel", "to", "template"].contains(&k.as_str()))
        {
            return Err(err(
                unknown,
                "unknown field; notify accepts channel, to, template".into(),
            ));
        }
        let text = |name: &str| match map.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            None | Some(Value::Null) => Err(err(name, "is required".into())),
            Some(_) => Err(err(name, "must be a string".into())),
        };
        let channel = text("channel")?;
        if channel != "whatsapp" {
            return Err(err(
                "channel",
                format!("must be \"whatsapp\", got {:?}", truncate(channel, 40)),
            ));
        }
        let to = text("to")?;
        let digits = to.strip_prefix('+').unwrap_or("");
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                "to",
                "must be a phone number in E.164 form, like +5511999990000".into(),
            ));
        }
        let template = match map.get("template") {
            None | Some(Value::Null) => "refund_done",
            Some(_) => text("template")?,
        };
        let template_ok = (1..=64).contains(&template.len())
            && template
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !template_ok {
            return Err(err(
                "template",
                "must be 1-64 characters of [a-z0-9_]".into(),
            ));
        }
        Ok(Self {
            channel: channel.to_owned(),
            to: to.to_owned(),
            template: template.to_owned(),
        })
    }
}

/// The first `max` characters of `s`, for quoting bad input without flooding a message.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
