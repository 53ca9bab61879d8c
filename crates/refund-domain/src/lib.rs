//! The refund job message, version 1 (SPEC §2): strict parsing and validation.
//!
//! Pure code: no I/O. Once a [`RefundJob`] exists every field in it is valid, and every
//! rejection names the field and the rule it broke, because that text ends up in a dead
//! letter an operator has to act on. Unknown fields, duplicate fields and non-integer
//! amounts are errors: a typo must never refund a default.

mod amount;
mod currency;
mod fields;
pub mod invariants;
mod media;

use serde::Serialize;
use serde_json::{Map, Value};

pub use amount::{Amount, AmountOutOfRange, format_minor, format_money, parse_decimal};
pub use currency::Currency;
pub use fields::{IdempotencyKey, JobDate, Notify, ProviderName, Reason, Token, truncate};
pub use media::check_media;

/// The largest job body accepted by default, in bytes (SPEC §2); the worker's limit is
/// `[worker] max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest field name quoted back in an error (an unknown key can be 60 KiB long, and
/// the error travels in an AMQP header).
const MAX_QUOTED_FIELD: usize = 64;
/// The longest rule text kept in an error, for the same reason.
const MAX_RULE_CHARS: usize = 400;
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
    /// An error about `field`; both parts are cut to a length fit for a message header.
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: quote(&field.into()),
            rule: truncate(&rule.into(), MAX_RULE_CHARS),
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
    /// Parses and validates a message body, at most [`MAX_BODY_BYTES`] long.
    pub fn parse(body: &[u8]) -> Result<Self, JobError> {
        Self::parse_within(body, MAX_BODY_BYTES)
    }

    /// Parses and validates a message body at most `max_bytes` long.
    pub fn parse_within(body: &[u8], max_bytes: usize) -> Result<Self, JobError> {
        Self::from_object(parse_object_within(body, max_bytes)?)
    }

    /// Validates an already parsed JSON object (used by `publish` and `dlq replay --set`).
    pub fn from_object(object: Map<String, Value>) -> Result<Self, JobError> {
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            let hint = closest_field(unknown)
                .map(|f| format!(" (did you mean `{f}`?)"))
                .or_else(|| unknown.is_empty().then(|| " (an empty name)".to_owned()))
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
            Some(Value::Number(n)) => amount_of(n)?,
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
            // It goes to the provider and the customer: a NUL or an escape sequence there is
            // garbage at best, and some provider APIs refuse it.
            Some(d) => match d.char_indices().find(|(_, c)| is_forbidden_control(*c)) {
                Some((at, c)) => {
                    return Err(JobError::new(
                        "description",
                        format!(
                            "must not contain control characters, got U+{:04X} at byte {at}",
                            u32::from(c)
                        ),
                    ));
                }
                None => Some(d.to_owned()),
            },
            None => None,
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

/// Parses a body into a JSON object, at most [`MAX_BODY_BYTES`] long.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, JobError> {
    parse_object_within(body, MAX_BODY_BYTES)
}

/// Parses a body into a JSON object, rejecting oversize bodies, byte order marks, NUL bytes,
/// invalid UTF-8, non-objects and duplicate keys at any depth (`{"amount":1,"amount":100000}`
/// must not be read as either).
pub fn parse_object_within(body: &[u8], max_bytes: usize) -> Result<Map<String, Value>, JobError> {
    let body_error = |rule: String| JobError::new("body", rule);
    if body.len() > max_bytes {
        return Err(body_error(format!(
            "is too large: {} bytes, the limit is {max_bytes} bytes",
            body.len()
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(body_error("is empty; expected a JSON object".into()));
    }
    if let Some(encoding) = byte_order_mark(body) {
        return Err(body_error(format!(
            "starts with a {encoding} byte order mark; a job is UTF-8 JSON without one"
        )));
    }
    if let Some(at) = body.iter().position(|b| *b == 0) {
        return Err(body_error(format!(
            "contains a NUL byte at byte {at}: binary data or UTF-16, not UTF-8 JSON"
        )));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        body_error(format!(
            "is not valid UTF-8 (byte {}); a job is UTF-8 JSON",
            e.valid_up_to()
        ))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value =
        serde::de::DeserializeSeed::deserialize(StrictValue { path: "" }, &mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value))
            .map_err(|e| {
                body_error(if e.to_string().starts_with("recursion limit exceeded") {
                    format!("is not valid JSON: it nests arrays or objects too deep ({e})")
                } else if e.is_data() {
                    e.to_string()
                } else {
                    format!("is not valid JSON: {e}")
                })
            })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(body_error(format!(
            "must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

/// The encoding a body's byte order mark announces, if it starts with one.
fn byte_order_mark(body: &[u8]) -> Option<&'static str> {
    const MARKS: [(&[u8], &str); 5] = [
        (b"\xEF\xBB\xBF", "UTF-8"),
        (b"\x00\x00\xFE\xFF", "UTF-32"),
        (b"\xFF\xFE\x00\x00", "UTF-32"),
        (b"\xFE\xFF", "UTF-16"),
        (b"\xFF\xFE", "UTF-16"),
    ];
    MARKS
        .iter()
        .find(|(mark, _)| body.starts_with(mark))
        .map(|(_, encoding)| *encoding)
}

/// The amount of a JSON number: a whole count of minor units in the schema's range.
fn amount_of(n: &serde_json::Number) -> Result<Amount, JobError> {
    let err = |rule: String| JobError::new("amount", rule);
    if let Some(minor) = n.as_u64() {
        return Amount::new(minor).map_err(|e| err(e.to_string()));
    }
    if n.is_i64() {
        return Err(err(AmountOutOfRange { got: n.to_string() }.to_string()));
    }
    // A float: JSON wrote a fraction, an exponent, or an integer beyond 64 bits.
    let float = n.as_f64().unwrap_or(f64::NAN);
    if float.fract() != 0.0 {
        return Err(err(format!(
            "must be a whole number of minor units (centavos), got {n}; R$ 186,50 is 18650"
        )));
    }
    if float.abs() > Amount::MAX as f64 {
        return Err(err(AmountOutOfRange { got: n.to_string() }.to_string()));
    }
    Err(err(format!(
        "must be an integer number of minor units (centavos) written without a decimal point \
         or exponent, got {n}"
    )))
}

/// Control characters a description may not carry (tab and line breaks are text).
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Deserializes any JSON value, refusing an object that names a key twice, at any depth: a
/// `notify` with two `to`s, or `metadata` with two `ticket`s, has no single meaning.
struct StrictValue<'p> {
    /// Where the value sits (`notify`, `metadata.items[]`), for the error message.
    path: &'p str,
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number must be finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let path = format!("{}[]", self.path);
        let mut items = Vec::new();
        while let Some(item) = access.next_element_seed(StrictValue { path: &path })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = access.next_value_seed(StrictValue { path: &path })?;
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "has field `{}` twice; each field may appear once",
                    quote(&path)
                )));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
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

/// A field name as it may be shown: control characters escaped (an unknown key is input, and
/// reasons end up in terminals), cut to [`MAX_QUOTED_FIELD`] characters.
fn quote(name: &str) -> String {
    truncate(&name.escape_debug().to_string(), MAX_QUOTED_FIELD)
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
