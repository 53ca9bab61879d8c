//! Z-API's `send-text`, as the sandbox fakes it:
//! `POST /whatsapp/instances/{instance}/token/{token}/send-text` with `Client-Token` and
//! `{"phone","message"}`, answering `{"zaapId","messageId","id"}`; every message delivered is
//! listed at `GET /_sandbox/messages`.
//!
//! Like Z-API: no idempotency (every accepted call is one more message), 405 for another
//! method and 415 without `Content-Type: application/json` (both documented); and, the
//! twin's own plausible choices, 401 for an unknown instance or instance token, 403 for a
//! missing or wrong `Client-Token`, 400 for a phone that is not digits only. The twin knows
//! one instance: the sandbox account's (`account::WHATSAPP_*`). With `--timeout-rate` a
//! delivered message's answer is held back, as a lost answer would be.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State as Shared},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Refusal, Sandbox, lock};

/// A message the twin delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMessage {
    /// Z-API's `zaapId`.
    pub zaap_id: String,
    /// Z-API's `messageId` (also `id`).
    pub message_id: String,
    /// The instance that sent it.
    pub instance_id: String,
    /// Digits only, as sent.
    pub phone: String,
    /// The text.
    pub message: String,
    /// When (RFC 3339).
    pub sent_at: String,
}

/// The fake's memory.
#[derive(Debug)]
pub(crate) struct State {
    /// The sandbox instance's id.
    instance_id: String,
    /// Its token.
    instance_token: String,
    /// The account's `Client-Token`.
    client_token: String,
    /// Every message delivered, oldest first.
    messages: Vec<DeliveredMessage>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            instance_id: crate::account::WHATSAPP_INSTANCE_ID.to_owned(),
            instance_token: crate::account::WHATSAPP_INSTANCE_TOKEN.to_owned(),
            client_token: crate::account::WHATSAPP_CLIENT_TOKEN.to_owned(),
            messages: Vec::new(),
        }
    }
}

impl State {
    /// Every message delivered.
    pub(super) fn messages(&self) -> Vec<DeliveredMessage> {
        self.messages.clone()
    }
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new().route(
        "/whatsapp/instances/{instance}/token/{token}/send-text",
        any(send_text),
    )
}

/// A Z-API error: status, `error` and `message`.
type Refused = (StatusCode, &'static str, &'static str);

/// Z-API's error body.
fn error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendText {
    phone: String,
    message: String,
    #[serde(default)]
    delay_message: Option<u32>,
    #[serde(default)]
    delay_typing: Option<u32>,
}

/// Everything Z-API checks before sending; the message, or the answer refusing it.
fn admit(
    state: &State,
    method: &Method,
    (instance, token): (&str, &str),
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SendText, Refused> {
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "send-text only accepts POST; check the HTTP method",
        ));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            "add the header Content-Type: application/json",
        ));
    }
    if instance != state.instance_id || token != state.instance_token {
        return Err((
            StatusCode::UNAUTHORIZED,
            "Instance not found",
            "unknown instance id or instance token",
        ));
    }
    let client_token = headers
        .get("client-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if client_token.is_empty() || client_token != state.client_token {
        return Err((
            StatusCode::FORBIDDEN,
            "Client-Token not allowed",
            "send the account security token in the Client-Token header",
        ));
    }
    let send: SendText = serde_json::from_slice(body).map_err(|e| {
        tracing::debug!(error = %e, "whatsapp twin: unreadable send-text body");
        (
            StatusCode::BAD_REQUEST,
            "Invalid body",
            "expected {\"phone\",\"message\"}",
        )
    })?;
    let digits_only = send.phone.bytes().all(|b| b.is_ascii_digit());
    if !(8..=15).contains(&send.phone.len()) || !digits_only {
        return Err((
            StatusCode::BAD_REQUEST,
            "Invalid phone",
            "phone must be digits only: DDI + DDD + number, e.g. 5511999999999",
        ));
    }
    if send.message.trim().is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "Invalid message",
            "message is required",
        ));
    }
    let delay_ok = |d: Option<u32>| d.is_none_or(|s| (1..=15).contains(&s));
    if !delay_ok(send.delay_message) || !delay_ok(send.delay_typing) {
        return Err((
            StatusCode::BAD_REQUEST,
            "Invalid delay",
            "delayMessage and delayTyping are 1-15 seconds",
        ));
    }
    Ok(send)
}

async fn send_text(
    Shared(sandbox): Shared<Sandbox>,
    method: Method,
    Path((instance, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let admitted = {
        let state = lock(&sandbox.inner.whatsapp);
        admit(&state, &method, (&instance, &token), &headers, &body)
    };
    let send = match admitted {
        Ok(send) => send,
        Err((status, code, message)) => return error(status, code, message),
    };
    // Accepted: delivered even if the client hangs up.
    tokio::spawn(deliver(sandbox, instance, send))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn deliver(sandbox: Sandbox, instance_id: String, send: SendText) -> Response {
    if let Err(refusal) = sandbox.gate_service().await {
        return match refusal {
            Refusal::RateLimited(wait) => {
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    "rate limit exceeded; nothing was sent",
                );
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
                response
            }
            Refusal::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "sandbox fault; nothing was sent",
            ),
        };
    }
    let delivered = {
        let mut state = lock(&sandbox.inner.whatsapp);
        let n = state.messages.len() as u64 + 1;
        let delivered = DeliveredMessage {
            zaap_id: format!("{:032X}", 0x5A_0000_0000_u64 + n),
            message_id: format!("3EB0{:016X}", 0xD241_0000_0000_u64 + n),
            instance_id,
            phone: send.phone,
            message: send.message,
            sent_at: crate::clock::now_rfc3339(),
        };
        state.messages.push(delivered.clone());
        delivered
    };
    if sandbox.loses_service_answer() {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    let body = json!({
        "zaapId": delivered.zaap_id,
        "messageId": delivered.message_id,
        "id": delivered.message_id,
    });
    (StatusCode::OK, Json(body)).into_response()
}
