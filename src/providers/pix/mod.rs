//! Pix connector: BCB's API Pix on the payee's PSP, devolução of a received Pix.
//!
//! `PUT {base}/pix/{e2eid}/devolucao/{id}` with `Authorization: Bearer`, an OAuth2
//! client-credentials token from `POST {base}/oauth/token` (cached until shortly before it
//! expires, refreshed once on a 401). The devolução `id` is ours to choose: it is derived from
//! the job's idempotency key, so every resend of a job is the same devolução, which the PSP
//! executes at most once.
//!
//! Unknown outcomes are reconciled with `GET {base}/pix/{e2eid}/devolucao/{id}`: 200 is the
//! devolução to adopt, a 404 problem (`PixDevolucaoNaoEncontrada`) proves it absent.
//!
//! Production PSPs also require mutual TLS (BCB's "Manual de Segurança do Pix"); the shared HTTP
//! client presents no client certificate, so a real PSP needs a TLS-terminating proxy that
//! holds it until the client supports one.

mod wire;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Client, Method, StatusCode, header::HeaderMap};
use tokio::sync::Mutex;

use super::{ProviderError, ProviderRefund, RefundProvider, RefundRequest};
use crate::http;
use crate::{
    config::{ProviderSettings, Secret},
    job::ProviderName,
};

/// The scopes a devolução needs: `pix.write` to request it, `pix.read` to look it up.
const SCOPES: &str = "pix.write pix.read";
/// A token whose lifetime the PSP did not state is reused this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(60);
/// A token is never reused longer than this, whatever the PSP says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// At most this long before its end a cached token is replaced.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The Pix connector.
#[derive(Debug, Clone)]
pub struct Pix {
    /// The shared connection pool.
    client: Client,
    /// The PSP's API Pix base (`https://pix.example.com/api`), or a sandbox.
    base_url: String,
    /// The OAuth2 client id; `None` is a configuration error reported on first use.
    client_id: Option<String>,
    /// The OAuth2 client secret (`api_key` in the settings).
    client_secret: Secret,
    /// The current access token, shared by every call; the lock also makes concurrent
    /// jobs wait for one token request instead of each sending their own.
    token: Arc<Mutex<Option<AccessToken>>>,
}

/// An access token and when to stop using it.
#[derive(Debug, Clone)]
struct AccessToken {
    /// The bearer token.
    value: Secret,
    /// Replace it from this moment on (its end minus a margin).
    renew_at: Instant,
}

impl AccessToken {
    /// A token received at `now`, valid for `lifetime`: reused until a quarter of its
    /// lifetime, at most a minute, is left.
    fn new(value: String, now: Instant, lifetime: Duration) -> Self {
        Self {
            value: Secret::new(value),
            renew_at: now + lifetime - (lifetime / 4).min(REFRESH_MARGIN),
        }
    }

    fn fresh_at(&self, now: Instant) -> bool {
        now < self.renew_at
    }
}

/// A request that got an answer: its status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Pix {
    /// A connector for the configured endpoint and client credentials.
    pub fn new(client: Client, settings: &ProviderSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            client_id: settings.client_id.clone().filter(|id| !id.is_empty()),
            client_secret: settings.api_key.clone(),
            token: Arc::default(),
        }
    }

    /// A token to call the API with: the cached one while fresh, else a new one.
    async fn token(&self) -> Result<Secret, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.fresh_at(Instant::now())) {
            return Ok(token.value.clone());
        }
        let token = self.request_token().await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Forgets `stale` (the API refused it), unless another call already replaced it.
    async fn forget(&self, stale: &Secret) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == *stale) {
            *cached = None;
        }
    }

    /// `POST {base}/oauth/token`: client credentials in HTTP Basic, form body.
    async fn request_token(&self) -> Result<AccessToken, ProviderError> {
        let Some(client_id) = &self.client_id else {
            return Err(ProviderError::Permanent {
                code: Some("client_id".into()),
                why: format!(
                    "pix: no OAuth2 client id is configured; {}",
                    wire::CREDENTIALS_HINT
                ),
            });
        };
        let sent = Instant::now();
        // A token request pays nothing: whatever happens to it, nothing is uncertain.
        let calm = |e: ProviderError| match e {
            ProviderError::Unknown { why } => ProviderError::transient(why),
            other => other,
        };
        let response = self
            .client
            .post(format!("{}/oauth/token", self.base_url))
            .basic_auth(client_id, Some(self.client_secret.expose()))
            .form(&[("grant_type", "client_credentials"), ("scope", SCOPES)])
            .send()
            .await
            .map_err(|e| calm(http::transport_error("pix token endpoint", e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| calm(http::transport_error("pix token endpoint", e)))?;
        if status != StatusCode::OK {
            return Err(wire::classify_token(status.as_u16(), &headers, &body));
        }
        let answer: wire::TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            // The body holds a credential: never quote it.
            ProviderError::transient(format!("pix token endpoint: unreadable answer: {e}"))
        })?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(ProviderError::Permanent {
                code: Some("token_type".into()),
                why: format!(
                    "pix token endpoint issued a {:?} token; API Pix takes Bearer tokens",
                    answer.token_type
                ),
            });
        }
        let lifetime = answer.expires_in.map_or(UNSTATED_LIFETIME, |secs| {
            Duration::from_secs(secs.min(MAX_LIFETIME.as_secs()))
        });
        Ok(AccessToken::new(answer.access_token, sent, lifetime))
    }

    /// Sends one API call with a bearer token; on a 401, once more with a new token (a 401
    /// is refused before anything executes). Transport failures are classified here.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&wire::DevolucaoSolicitada>,
    ) -> Result<Answer, ProviderError> {
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut builder = self
                .client
                .request(method.clone(), format!("{}{path}", self.base_url))
                .bearer_auth(token.expose());
            if let Some(body) = body {
                builder = builder.json(body);
            }
            let response = builder
                .send()
                .await
                .map_err(|e| http::transport_error("pix", e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                self.forget(&token).await;
                refreshed = true;
                continue;
            }
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|e| http::transport_error("pix", e))?
                .to_vec();
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
    }

    /// `GET` the devolução: `Ok(None)` only when the PSP says it does not exist. Reading
    /// changes nothing, so a failure is never an unknown outcome.
    async fn look_up(
        &self,
        call: &wire::Devolucao,
    ) -> Result<Option<wire::DevolucaoAnswer>, ProviderError> {
        let answer = match self.call(Method::GET, &call.path(), None).await {
            Ok(answer) => answer,
            Err(ProviderError::Unknown { why }) => return Err(ProviderError::transient(why)),
            Err(other) => return Err(other),
        };
        if answer.status == StatusCode::OK {
            return serde_json::from_slice(&answer.body).map(Some).map_err(|e| {
                ProviderError::transient(format!(
                    "pix: unreadable devolução {}: {e}: {}",
                    call.id,
                    http::snippet(&answer.body)
                ))
            });
        }
        if wire::is_not_found(answer.status.as_u16(), &answer.body) {
            return Ok(None);
        }
        Err(
            match wire::classify(answer.status.as_u16(), &answer.headers, &answer.body) {
                ProviderError::Unknown { why } => ProviderError::transient(why),
                other => other,
            },
        )
    }
}

#[async_trait::async_trait]
impl RefundProvider for Pix {
    fn name(&self) -> ProviderName {
        ProviderName::Pix
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        let call = wire::Devolucao::of(request)?;
        let answer = self
            .call(Method::PUT, &call.path(), Some(&call.body))
            .await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => {
                let devolucao: wire::DevolucaoAnswer = serde_json::from_slice(&answer.body)
                    .map_err(|e| {
                        ProviderError::unknown(format!(
                            "pix: unreadable devolução in a {} answer ({e}); it may exist: {}",
                            answer.status.as_u16(),
                            http::snippet(&answer.body)
                        ))
                    })?;
                devolucao.into_refund(request.amount)
            }
            status => {
                let error = wire::classify(status.as_u16(), &answer.headers, &answer.body);
                // PSPs disagree on a repeated id (bacen/pix-api#277): some answer 400
                // `PixDevolucaoInvalida` instead of the devolução. If ours is there, adopt it;
                // if the look-up cannot tell, the devolução may exist: the outcome is unknown,
                // not a refusal.
                let repeated_id = matches!(&error, ProviderError::Permanent { code: Some(c), .. } if c == "PixDevolucaoInvalida");
                if !repeated_id {
                    return Err(error);
                }
                match self.look_up(&call).await {
                    Ok(Some(existing)) => existing.into_refund(request.amount),
                    Ok(None) => Err(error),
                    Err(lookup) => Err(ProviderError::unknown(format!(
                        "pix: {error}; looking the devolução up failed ({lookup}): it may exist"
                    ))),
                }
            }
        }
    }

    async fn find(
        &self,
        request: &RefundRequest,
        _snapshot: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let call = wire::Devolucao::of(request)?;
        match self.look_up(&call).await? {
            Some(devolucao) => devolucao.into_refund(request.amount).map(Some),
            None => Ok(None),
        }
    }

    async fn status(
        &self,
        request: &RefundRequest,
        refund_id: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        // `refund_id` is the rtrId; the API looks a devolução up by the id we chose.
        let call = wire::Devolucao::of(request)?;
        match self.look_up(&call).await? {
            Some(devolucao) => devolucao.into_refund(request.amount),
            None => Err(ProviderError::transient(format!(
                "pix: devolução {} (rtrId {refund_id}) is not found although it was created",
                call.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_before_it_expires() {
        let now = Instant::now();
        let hour = AccessToken::new("t".into(), now, Duration::from_secs(3600));
        assert!(hour.fresh_at(now + Duration::from_secs(3539)));
        assert!(!hour.fresh_at(now + Duration::from_secs(3540)));

        let short = AccessToken::new("t".into(), now, Duration::from_secs(40));
        assert!(short.fresh_at(now + Duration::from_secs(29)));
        assert!(!short.fresh_at(now + Duration::from_secs(30)));

        let instant = AccessToken::new("t".into(), now, Duration::ZERO);
        assert!(!instant.fresh_at(now), "a zero lifetime is never reused");
    }

    #[tokio::test]
    async fn a_missing_client_id_is_a_permanent_configuration_error() {
        let mut settings = crate::config::Settings::default().providers.pix;
        settings.client_id = None;
        settings.base_url = "http://127.0.0.1:9".into();
        let pix = Pix::new(Client::new(), &settings);
        let err = pix.token().await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent { why, .. } if why.contains("REFUND_PROVIDERS__PIX__CLIENT_ID")),
            "{err:?}"
        );
    }
}
