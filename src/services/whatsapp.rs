//! The WhatsApp client (Z-API `send-text`) and the message templates.
//!
//! `POST {base}/instances/{instance_id}/token/{instance_token}/send-text` with the account's
//! `Client-Token` header and `{"phone","message"}`, `phone` in digits only (DDI, DDD,
//! number); the answer is `{"zaapId","messageId","id"}`.
//!
//! Z-API has no idempotency: a message sent twice reaches the customer twice. The caller
//! sends at most once, so this file says precisely what happened: a refused connection sent
//! nothing (transient); anything after the request left — a timeout, a dropped connection, a
//! 5xx, an unreadable 2xx — may have delivered it (unknown), and must not be sent blindly
//! again. The instance token is part of the URL, so no error message here ever carries the
//! URL.

use reqwest::Client;
use serde::{Deserialize, Serialize};

use super::{Message, Notifier, SentMessage};
use crate::{
    config::{Secret, ServiceSettings},
    http,
    job::{Amount, Currency},
    providers::ProviderError,
};

/// The templates [`render`] knows.
pub const TEMPLATES: &[&str] = &["refund_done"];

/// Money as people read it (one format everywhere): `R$ 1.234,56`.
pub use crate::job::format_money;

/// How the money goes back, in words, by rail (`pix`, `card`, or a provider name).
fn rail_words(rail: &str) -> &'static str {
    match rail.to_ascii_lowercase().as_str() {
        "pix" => "por Pix, para a conta que fez o pagamento",
        "card" | "stripe" | "rinne" => {
            "no cartão usado na compra (o prazo para aparecer na fatura depende do banco emissor)"
        }
        _ => "na mesma forma de pagamento usada na compra",
    }
}

/// Renders a customer message. Pure: the same inputs give the same text.
///
/// `refund_done` (Portuguese): the name, the amount (`R$ 186,00`), the order and the rail.
/// An unknown template is an error naming the known ones.
pub fn render(
    template: &str,
    customer_name: &str,
    order_id: &str,
    amount: Amount,
    currency: Currency,
    rail: &str,
) -> Result<String, String> {
    match template {
        "refund_done" => {
            let name = customer_name.trim();
            let greeting = if name.is_empty() {
                "Olá!".to_owned()
            } else {
                format!("Olá, {name}!")
            };
            Ok(format!(
                "{greeting} O reembolso de {} do seu pedido {order_id} foi concluído {}. Qualquer dúvida, é só responder esta mensagem.",
                format_money(amount.minor(), currency),
                rail_words(rail)
            ))
        }
        other => Err(format!(
            "unknown WhatsApp template {:?} (known: {})",
            crate::job::truncate(other, 40),
            TEMPLATES.join(", ")
        )),
    }
}

/// Z-API's phone: digits only, from E.164 (`+5511999990000` → `5511999990000`).
pub(crate) fn phone_digits(e164: &str) -> Result<String, ProviderError> {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits.to_owned())
    } else {
        Err(ProviderError::Permanent {
            code: Some("invalid_phone".into()),
            why: format!(
                "whatsapp: {:?} is not a phone number in E.164 form",
                crate::job::truncate(e164, 20)
            ),
        })
    }
}

/// The body of `send-text`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct SendText<'a> {
    phone: String,
    message: &'a str,
}

/// Z-API's answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sent {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// `{"error": "…"}` (and sometimes `"message"`).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Reads a 2xx answer: the message id. An unreadable one may still mean "sent".
pub(crate) fn read_sent(body: &[u8]) -> Result<SentMessage, ProviderError> {
    let sent: Option<Sent> = serde_json::from_slice(body).ok();
    match sent
        .and_then(|s| s.message_id.or(s.id))
        .filter(|id| !id.is_empty())
    {
        Some(message_id) => Ok(SentMessage { message_id }),
        None => Err(ProviderError::unknown(format!(
            "whatsapp: accepted but unreadable answer (the message may have been sent): {}",
            http::snippet(body)
        ))),
    }
}

/// Classifies a non-2xx answer:
/// - 429: refused before sending, transient (after `Retry-After` when given);
/// - 408 and 5xx: the message may have gone out: unknown;
/// - other 4xx (400, 401, 403, 404, 405, 415): nothing was sent and no retry fixes it.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
) -> ProviderError {
    let text = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| match (b.error, b.message) {
            (Some(e), Some(m)) => Some(format!("{e}: {m}")),
            (e, m) => e.or(m),
        })
        .unwrap_or_else(|| http::snippet(body));
    let why = format!("whatsapp: HTTP {status}: {text}");
    match status {
        429 => ProviderError::Transient { why, retry_after },
        408 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the message may have been sent)"))
        }
        _ => ProviderError::Permanent {
            code: Some(format!("zapi_{status}")),
            why,
        },
    }
}

/// What a lost answer to a message request may hide.
const MESSAGE_MAY_EXIST: &str = "the message may have been sent";

/// Whether a path segment from configuration is safe to put in the URL as it is.
fn path_safe(segment: &str) -> bool {
    (1..=128).contains(&segment.len())
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Z-API's client.
#[derive(Debug, Clone)]
pub struct ZApi {
    /// The shared connection pool.
    client: Client,
    /// `https://api.z-api.io` (or the sandbox's `/whatsapp`), without a trailing slash.
    base_url: String,
    /// The instance (the WhatsApp number) that sends.
    instance_id: Option<String>,
    /// The instance's token, part of the URL path.
    instance_token: Option<Secret>,
    /// The account's security token, sent as `Client-Token`.
    client_token: Secret,
}

impl ZApi {
    /// A client for the configured instance.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            instance_id: settings.instance_id.clone(),
            instance_token: settings.instance_token.clone(),
            client_token: settings.api_key.clone(),
        }
    }

    /// `{base}/instances/{id}/token/{token}/send-text`, or why it cannot be built.
    fn send_text_url(&self) -> Result<String, ProviderError> {
        let misconfigured = |what: &str| ProviderError::Permanent {
            code: Some("whatsapp_not_configured".into()),
            why: format!(
                "whatsapp: services.whatsapp.{what} is missing or not a plain [A-Za-z0-9_-] value"
            ),
        };
        let id = self
            .instance_id
            .as_deref()
            .filter(|s| path_safe(s))
            .ok_or_else(|| misconfigured("instance_id"))?;
        let token = self
            .instance_token
            .as_ref()
            .map(Secret::expose)
            .filter(|s| path_safe(s))
            .ok_or_else(|| misconfigured("instance_token"))?;
        Ok(format!(
            "{}/instances/{id}/token/{token}/send-text",
            self.base_url
        ))
    }
}

#[async_trait::async_trait]
impl Notifier for ZApi {
    async fn send(&self, message: &Message) -> Result<SentMessage, ProviderError> {
        let url = self.send_text_url()?;
        let body = SendText {
            phone: phone_digits(&message.phone)?,
            message: &message.text,
        };
        let mut client_token = reqwest::header::HeaderValue::from_str(self.client_token.expose())
            .map_err(|_| {
            ProviderError::permanent(
                "whatsapp: services.whatsapp.api_key (Client-Token) is not a valid header value",
            )
        })?;
        client_token.set_sensitive(true);
        let response = self
            .client
            .post(url)
            .header("Client-Token", client_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport_failure("whatsapp", MESSAGE_MAY_EXIST, e))?;
        let status = response.status();
        let hint = http::retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| http::transport_failure("whatsapp", MESSAGE_MAY_EXIST, e))?;
        if status.is_success() {
            return read_sent(&bytes);
        }
        Err(classify(status.as_u16(), hint, &bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn brl(minor: u64) -> String {
        format_money(minor, Currency::BRL)
    }

    #[test]
    fn money_is_written_the_brazilian_way_from_the_integer() {
        assert_eq!(brl(18600), "R$ 186,00");
        assert_eq!(brl(1), "R$ 0,01");
        assert_eq!(brl(99), "R$ 0,99");
        assert_eq!(brl(100), "R$ 1,00");
        assert_eq!(brl(123_456), "R$ 1.234,56");
        assert_eq!(brl(100_000_000), "R$ 1.000.000,00");
        assert_eq!(brl(1_000_000_000_000), "R$ 10.000.000.000,00");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(format_money(1000, jpy), "JPY 1.000");
        assert_eq!(format_money(0, Currency::BRL), "R$ 0,00");
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(format_money(18600, usd), "USD 186,00");
    }

    #[test]
    fn refund_done_names_the_customer_amount_order_and_rail() {
        let amount = Amount::new(18600).unwrap();
        let text = render("refund_done", "Ana", "8421", amount, Currency::BRL, "pix").unwrap();
        assert_eq!(
            text,
            "Olá, Ana! O reembolso de R$ 186,00 do seu pedido 8421 foi concluído por Pix, para a conta que fez o pagamento. Qualquer dúvida, é só responder esta mensagem."
        );
        let card = render(
            "refund_done",
            "Bruno",
            "77",
            amount,
            Currency::BRL,
            "stripe",
        )
        .unwrap();
        assert!(card.contains("no cartão usado na compra"), "{card}");
        let other = render("refund_done", " ", "77", amount, Currency::BRL, "asaas").unwrap();
        assert!(other.starts_with("Olá! O reembolso"), "{other}");
        assert!(other.contains("na mesma forma de pagamento"), "{other}");
    }

    #[test]
    fn unknown_templates_are_refused_naming_the_known_ones() {
        let amount = Amount::new(100).unwrap();
        let err = render("refund_started", "Ana", "1", amount, Currency::BRL, "pix").unwrap_err();
        assert!(
            err.contains("refund_started") && err.contains("refund_done"),
            "{err}"
        );
    }

    #[test]
    fn phones_go_out_as_digits_only() {
        assert_eq!(phone_digits("+5511999990000").unwrap(), "5511999990000");
        for bad in [
            "+55 11 99999-0000",
            "+55",
            "",
            "+1234567890123456",
            "+55abc99990000",
        ] {
            assert!(
                matches!(phone_digits(bad), Err(ProviderError::Permanent { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_a_refusal_before_sending_is_transient() {
        assert_eq!(
            classify(
                429,
                Some(Duration::from_secs(3)),
                br#"{"error":"Too many requests"}"#
            ),
            ProviderError::Transient {
                why: "whatsapp: HTTP 429: Too many requests".into(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
        for status in [408, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, None, b""), ProviderError::Unknown { .. }),
                "{status}: the message may have gone out"
            );
        }
        for status in [400, 401, 403, 404, 405, 415] {
            assert!(
                matches!(classify(status, None, b""), ProviderError::Permanent { .. }),
                "{status}"
            );
        }
        assert_eq!(
            read_sent(br#"{"zaapId":"Z1","messageId":"M1","id":"M1"}"#).unwrap(),
            SentMessage {
                message_id: "M1".into()
            }
        );
        assert!(matches!(
            read_sent(b"ok"),
            Err(ProviderError::Unknown { .. })
        ));
    }

    #[test]
    fn misconfigured_instances_fail_before_sending() {
        let settings = |id: Option<&str>, token: Option<&str>| ServiceSettings {
            base_url: "http://127.0.0.1:1/whatsapp/".into(),
            api_key: Secret::new("client-token"),
            app_key: None,
            instance_id: id.map(str::to_owned),
            instance_token: token.map(Secret::new),
        };
        let zapi = |s: &ServiceSettings| ZApi::new(Client::new(), s);
        assert_eq!(
            zapi(&settings(Some("inst"), Some("tok")))
                .send_text_url()
                .unwrap(),
            "http://127.0.0.1:1/whatsapp/instances/inst/token/tok/send-text"
        );
        for (id, token) in [
            (None, Some("tok")),
            (Some("inst"), None),
            (Some("a/../b"), Some("tok")),
        ] {
            assert!(
                zapi(&settings(id, token)).send_text_url().is_err(),
                "{id:?} {token:?}"
            );
        }
    }
}
