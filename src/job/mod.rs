//! The refund job message, version 1 (SPEC §2): strict parsing and validation.
//!
//! Pure code: no I/O. Once a [`RefundJob`] exists every field in it is valid, and every
//! rejection names the field and the rule it broke, because that text ends up in a dead
//! letter an operator has to act on. Unknown fields, duplicate fields and non-integer
//! amounts are errors: a typo must never refund a default.

mod amount;
mod currency;
mod fields;

use serde::Serialize;
use serde_json::{Map, Value};

pub use amount::{Amount, AmountOutOfRange, format_minor, parse_decimal};
pub use currency::Currency;
pub use fields::{IdempotencyKey, JobDate, Notify, ProviderName, Reason, Token, truncate};

/// The largest job body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest `metadata` object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// The longest `description`, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A validated refund job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefundJob {
    /// The payment to refund; absent only on governed jobs, where the ERP names it.
    pub payment_id: Option<Token>,
    /// How much to refund, in minor units of `currency`.
    pub amount: Amount,
    /// ISO 4217 currency of `amount`.
    pub currency: Currency,
    /// Why the money goes back; mapped to each provider's own vocabulary.
    pub reason: Reason,
    /// Free text for the provider and the customer, at most 500 characters.
    pub description: Option<String>,
    /// The rail; absent only on governed jobs, where the ERP's original payment decides.
    pub provider: Option<ProviderName>,
    /// The day the job is keyed under; filled from the message when absent.
    pub date: Option<JobDate>,
    /// Overrides the default `payment_id:date` key (a second refund of one payment in a day).
    pub idempotency_key: Option<IdempotencyKey>,
    /// Makes the job a governed refund, verified against the ERP.
    pub order_id: Option<Token>,
    /// Who asks for the refund.
    pub agent_id: Option<Token>,
    /// Under which spend mandate.
    pub mandate_id: Option<Token>,
    /// Whether to issue a credit note (governed refunds default to yes).
    pub credit_note: Option<bool>,
    /// Whom to tell, and how.
    pub notify: Option<Notify>,
    /// Free-form data carried into receipts and dead letters.
    pub metadata: Option<Map<String, Value>>,
}

/// Why a job body is not a valid refund job: the field, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {rule}")]
pub struct JobError {
    /// The offending field (`body` when the whole message is at fault).
    pub field: String,
    /// The rule, in words an operator understands.
    pub rule: String,
}

impl JobError {
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// The field names of schema version 1.
pub const FIELDS: &[&str] = &[
    "payment_id",
    "amount",
    "currency",
    "reason",
    "description",
    "provider",
    "date",
    "idempotency_key",
    "order_id",
    "agent_id",
    "mandate_id",
    "credit_note",
    "notify",
    "metadata",
];

impl RefundJob {
    /// Parses and validates a message body.
    pub fn parse(body: &[u8]) -> Result<Self, JobError> {
        Self::from_object(parse_object(body)?)
    }

    /// Validates an already parsed JSON object (used by `publish` and `dlq replay --set`).
    pub fn from_object(object: Map<String, Value>) -> Result<Self, JobError> {
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            let hint = closest_field(unknown)
                .map(|f| format!(" (did you mean `{f}`?)"))
                .unwrap_or_default();
            return Err(JobError::new(
                unknown.as_str(),
                format!(
                    "unknown field{hint}; version 1 accepts only: {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        let field = |name: &str| object.get(name).filter(|v| !v.is_null());
        let string = |name: &'static str| -> Result<Option<&str>, JobError> {
            match field(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(JobError::new(
                    name,
                    format!("must be a string, got {}", kind(other)),
                )),
            }
        };
        let token = |name: &'static str| -> Result<Option<Token>, JobError> {
            string(name)?
                .map(|s| Token::parse(s).map_err(|rule| JobError::new(name, rule)))
                .transpose()
        };

        let amount = match field("amount") {
            None => {
                return Err(JobError::new(
                    "amount",
                    "is required (minor units, e.g. 18600 for R$ 186,00)",
                ));
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(minor) => {
                    Amount::new(minor).map_err(|e| JobError::new("amount", e.to_string()))?
                }
                None => {
                    return Err(JobError::new(
                        "amount",
                        format!("must be an integer number of minor units (centavos), got {n}"),
                    ));
                }
            },
            Some(other) => {
                return Err(JobError::new(
                    "amount",
                    format!(
                        "must be an integer number of minor units, got {}",
                        kind(other)
                    ),
                ));
            }
        };
        let currency = match string("currency")? {
            None => Currency::BRL,
            Some(code) => Currency::parse(code).ok_or_else(|| {
                JobError::new(
                    "currency",
                    format!("must be an ISO 4217 code like BRL, got {code:?}"),
                )
            })?,
        };
        let reason = match string("reason")? {
            None => Reason::CustomerRequest,
            Some(r) => Reason::parse(r).map_err(|rule| JobError::new("reason", rule))?,
        };
        let description = match string("description")? {
            Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => {
                return Err(JobError::new(
                    "description",
                    format!(
                        "must be at most {MAX_DESCRIPTION_CHARS} characters, got {}",
                        d.chars().count()
                    ),
                ));
            }
            d => d.map(str::to_owned),
        };
        let provider = string("provider")?
            .map(|p| ProviderName::parse(p).map_err(|rule| JobError::new("provider", rule)))
            .transpose()?;
        let date = string("date")?
            .map(|d| JobDate::parse(d).map_err(|rule| JobError::new("date", rule)))
            .transpose()?;
        let idempotency_key = string("idempotency_key")?
            .map(|k| {
                IdempotencyKey::parse(k).map_err(|rule| JobError::new("idempotency_key", rule))
            })
            .transpose()?;
        let credit_note = match field("credit_note") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(JobError::new(
                    "credit_note",
                    format!("must be true or false, got {}", kind(other)),
                ));
            }
        };
        let notify = field("notify").map(Notify::from_value).transpose()?;
        let metadata = match field("metadata") {
            None => None,
            Some(Value::Object(m)) => {
                let size = serde_json::to_vec(m).map_or(usize::MAX, |v| v.len());
                if size > MAX_METADATA_BYTES {
                    return Err(JobError::new(
                        "metadata",
                        format!("must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"),
                    ));
                }
                Some(m.clone())
            }
            Some(other) => {
                return Err(JobError::new(
                    "metadata",
                    format!("must be an object, got {}", kind(other)),
                ));
            }
        };

        let job = RefundJob {
            payment_id: token("payment_id")?,
            amount,
            currency,
            reason,
            description,
            provider,
            date,
            idempotency_key,
            order_id: token("order_id")?,
            agent_id: token("agent_id")?,
            mandate_id: token("mandate_id")?,
            credit_note,
            notify,
            metadata,
        };
        if job.order_id.is_none() {
            if job.payment_id.is_none() {
                return Err(JobError::new(
                    "payment_id",
                    "is required unless `order_id` is given",
                ));
            }
            if job.provider.is_none() {
                return Err(JobError::new(
                    "provider",
                    format!(
                        "is required unless `order_id` is given; one of: {}",
                        ProviderName::ALL_NAMES
                    ),
                ));
            }
        }
        Ok(job)
    }

    /// Whether this is a governed refund (it names an order).
    pub fn is_governed(&self) -> bool {
        self.order_id.is_some()
    }

    /// The idempotency key for this job keyed under `date` (SPEC §4): the explicit override,
    /// else `payment_id:date`, else (governed jobs naming only an order) `order:order_id:date`.
    pub fn idempotency_key(&self, date: JobDate) -> IdempotencyKey {
        if let Some(key) = &self.idempotency_key {
            return key.clone();
        }
        let text = match (&self.payment_id, &self.order_id) {
            (Some(payment), _) => format!("{payment}:{date}"),
            (None, Some(order)) => format!("order:{order}:{date}"),
            // `from_object` guarantees one of the two.
            (None, None) => unreachable!("a validated job names a payment or an order"),
        };
        IdempotencyKey::derived(text)
    }
}

/// Prepares one line of a jobs file for publishing: validates it, fills `date` with `today`
/// when missing (so the idempotency key is fixed at publish time), and returns the body.
pub fn prepare_for_publish(line: &[u8], today: JobDate) -> Result<Vec<u8>, JobError> {
    let mut object = parse_object(line)?;
    if object.get("date").is_none_or(Value::is_null) {
        object.insert("date".into(), Value::String(today.to_string()));
    }
    RefundJob::from_object(object.clone())?;
    serde_json::to_vec(&object).map_err(|e| JobError::new("body", e.to_string()))
}

/// Parses a body into a JSON object, rejecting oversize bodies, invalid UTF-8, non-objects and
/// duplicate keys (`{"amount":1,"amount":100000}` must not be read as either).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, JobError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(JobError::new(
            "body",
            format!("must be at most {MAX_BODY_BYTES} bytes, got {}", body.len()),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JobError::new("body", "is empty; expected a JSON object"));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        JobError::new(
            "body",
            format!("is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    let value: StrictObject = serde_json::from_str(text).map_err(|e| {
        let rule = if e.is_data() {
            e.to_string()
        } else {
            format!("is not valid JSON: {e}")
        };
        JobError::new("body", rule)
    })?;
    Ok(value.0)
}

/// A JSON object whose top-level keys are unique.
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "has field `{key}` twice; each field may appear once"
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The known field nearest to a misspelt one, if it is near enough to be a typo.
fn closest_field(unknown: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .map(|f| (edit_distance(unknown, f), *f))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
