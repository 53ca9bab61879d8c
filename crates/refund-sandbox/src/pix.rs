//! A PSP's API Pix (devolução), as the sandbox fakes it, under `/pix`:
//! `POST /pix/oauth/token` (OAuth2 client credentials in HTTP Basic), `POST /pix/oauth/revoke`
//! (RFC 7009), and `PUT`/`GET /pix/pix/{e2eid}/devolucao/{id}` with a Bearer token.
//!
//! Idempotency follows the client-chosen `{id}`: the same e2eid, id and body answer the
//! existing devolução without executing again; the same id with another body is a 400
//! `PixDevolucaoInvalida`. Errors are RFC 7807 problems (`application/problem+json`).
//!
//! An e2eid is exactly 32 alphanumerics, so it cannot carry the shared `_declined`-style
//! suffixes; the twin reads their upper-case, underscore-free forms instead (`…DECLINED`,
//! `…FLAKY2`, `…TIMEOUT`, `…PENDING`, `…PENDINGFAIL`) and hands the shared fault machinery
//! the usual form.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State as AxumState},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{post, put},
};
use serde_json::{Value, json};

use super::{Magic, RefundBlocked, Refusal, Sandbox, lock};
use crate::{
    money::{format_reais, is_pix_valor, parse_reais},
    provider::Provider,
};

/// How long an access token lives.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The scopes a client may ask for (the Pix ones of the spec); granted when it asks none.
const KNOWN_SCOPES: &[&str] = &["pix.read", "pix.write"];
/// The sandbox PSP's ISPB, in the rtrIds it makes.
const ISPB: &str = "99999999";
/// What a `…DECLINED` devolução says.
const DECLINED_MOTIVO: &str =
    "Devolução não realizada: conta transacional do usuário pagador encerrada";
/// What a `…PENDINGFAIL` devolução says when it fails after `EM_PROCESSAMENTO`.
const PENDINGFAIL_MOTIVO: &str =
    "Devolução não realizada: rejeitada pelo participante do usuário pagador";

/// The fake's memory.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Access tokens issued and not revoked.
    tokens: HashMap<String, IssuedToken>,
    /// Devoluções by (e2eid, id).
    devolucoes: HashMap<(String, String), StoredDevolucao>,
}

#[derive(Debug)]
struct IssuedToken {
    scopes: HashSet<String>,
    expires: Instant,
}

#[derive(Debug)]
struct StoredDevolucao {
    /// What was asked, to tell a replay from a different request under the same id.
    asked: Solicitada,
    /// The `Devolucao` object.
    object: Value,
    created: Instant,
    /// `…PENDINGFAIL`: the devolução ends `NAO_REALIZADO` instead of `DEVOLVIDO`.
    fails: bool,
}

/// A validated `DevolucaoSolicitada`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Solicitada {
    valor: u64,
    natureza: String,
    descricao: Option<String>,
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/pix/oauth/token", post(token))
        .route("/pix/oauth/revoke", post(revoke))
        .route("/pix/pix/{e2eid}/devolucao/{id}", put(create).get(retrieve))
}

/// The shared magic form of an e2eid: `…PENDING` becomes `…_pending`, `…PENDINGFAIL`
/// `…_pendingfail`, `…FLAKY2` becomes `…_flaky2`, and so on; a plain e2eid (never an
/// underscore) stays as it is.
fn magic_id(e2eid: &str) -> String {
    let lower = e2eid.to_ascii_lowercase();
    for suffix in ["declined", "timeout", "pendingfail", "pending"] {
        if lower.ends_with(suffix) {
            return format!("{}_{suffix}", &e2eid[..e2eid.len() - suffix.len()]);
        }
    }
    if let Some(pos) = lower.rfind("flaky") {
        let digits = &lower[pos + 5..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return format!("{}_flaky{digits}", &e2eid[..pos]);
        }
    }
    e2eid.to_owned()
}

fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: impl Into<String>,
    violacoes: Vec<Value>,
) -> Response {
    let mut body = json!({
        "type": format!("https://pix.bcb.gov.br/api/v2/error/{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
        "correlationId": uuid::Uuid::new_v4().simple().to_string(),
    });
    if !violacoes.is_empty() {
        body["violacoes"] = json!(violacoes);
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn violacao(propriedade: &str, razao: impl Into<String>, valor: Option<&str>) -> Value {
    let mut v = json!({ "razao": razao.into(), "propriedade": propriedade });
    if let Some(valor) = valor {
        v["valor"] = json!(valor);
    }
    v
}

fn devolucao_invalida(detail: impl Into<String>, violacoes: Vec<Value>) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "PixDevolucaoInvalida",
        "Devolução inválida.",
        detail,
        violacoes,
    )
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        // The spec defines no 429; PSPs that limit rates answer it with Retry-After.
        Refusal::RateLimited(wait) => {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "RequisicoesExcedidas",
                "Limite de requisições excedido.",
                "Limite de requisições por segundo excedido; tente novamente após o Retry-After.",
                vec![],
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        Refusal::Unavailable => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServicoIndisponivel",
            "Serviço Indisponível",
            "Serviço não está disponível no momento (falha simulada do sandbox; nada foi executado).",
            vec![],
        ),
    }
}

// ---- OAuth2 ------------------------------------------------------------------------------

/// The OAuth2 error answer of RFC 6749 §5.2.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="pix""#),
        );
    }
    response
}

/// The client credentials of an `Authorization: Basic` header, when both are non-empty.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    (!id.is_empty() && !secret.is_empty()).then(|| (id.to_owned(), secret.to_owned()))
}

/// Standard padded base64 (RFC 4648 §4).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

/// A form body, or the OAuth2 error (400 `invalid_request`) that describes why not.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, &'static str> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err("the body must be application/x-www-form-urlencoded");
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|_| "malformed form body")
}

/// Authenticates the client (HTTP Basic) and reads its form, as both OAuth2 endpoints do;
/// else the status, `error` and `error_description` of the refusal.
fn oauth_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, (StatusCode, &'static str, &'static str)> {
    if basic_credentials(headers).is_none() {
        return Err((
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed: send client_id:client_secret in HTTP Basic",
        ));
    }
    form(headers, body).map_err(|why| (StatusCode::BAD_REQUEST, "invalid_request", why))
}

async fn token(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match oauth_request(&headers, &body) {
        Ok(form) => form,
        Err((status, error, description)) => return oauth_error(status, error, description),
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    }
    let scopes: HashSet<String> = match form.get("scope") {
        None => KNOWN_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(scope) => scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    if scopes.is_empty() || scopes.iter().any(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be made of pix.write and pix.read",
        );
    }
    if let Err(refusal) = sandbox.gate(Provider::Pix, "", false).await {
        return refused(refusal);
    }
    let access_token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut granted: Vec<&str> = scopes.iter().map(String::as_str).collect();
    granted.sort_unstable();
    let scope = granted.join(" ");
    {
        let mut state = lock(&sandbox.inner.pix);
        let now = Instant::now();
        state.tokens.retain(|_, t| t.expires > now);
        state.tokens.insert(
            access_token.clone(),
            IssuedToken {
                scopes,
                expires: now + TOKEN_LIFETIME,
            },
        );
    }
    let mut response = axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
        "scope": scope,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// RFC 7009 token revocation: always 200 for an authenticated client.
async fn revoke(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match oauth_request(&headers, &body) {
        Ok(form) => form,
        Err((status, error, description)) => return oauth_error(status, error, description),
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    lock(&sandbox.inner.pix).tokens.remove(token);
    StatusCode::OK.into_response()
}

/// Checks the bearer token; the refusal, if any: 401 without a valid token, 403
/// `AcessoNegado` without `scope`.
fn refuse_token(sandbox: &Sandbox, headers: &HeaderMap, scope: &str) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let unauthorized = |challenge: &'static str, detail: &str| {
        // The spec defines no 401; this is RFC 6750's answer, as a problem.
        let mut response = problem(
            StatusCode::UNAUTHORIZED,
            "NaoAutorizado",
            "Não autorizado.",
            detail,
            vec![],
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    };
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return Some(unauthorized(
            r#"Bearer realm="pix""#,
            "Requisição sem token de acesso: envie Authorization: Bearer <token>.",
        ));
    };
    let state = lock(&sandbox.inner.pix);
    match state.tokens.get(token) {
        Some(issued) if issued.expires > Instant::now() => {
            if issued.scopes.contains(scope) {
                None
            } else {
                Some(problem(
                    StatusCode::FORBIDDEN,
                    "AcessoNegado",
                    "Acesso Negado",
                    format!(
                        "Requisição de participante autenticado que viola alguma regra de autorização: o token não tem o escopo {scope}."
                    ),
                    vec![],
                ))
            }
        }
        _ => Some(unauthorized(
            r#"Bearer realm="pix", error="invalid_token""#,
            "Token de acesso inválido, expirado ou revogado.",
        )),
    }
}

// ---- Devolução ---------------------------------------------------------------------------

fn path_violations(e2eid: &str, id: &str) -> Vec<Value> {
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    let mut violacoes = Vec::new();
    if e2eid.len() != 32 || !alnum(e2eid) {
        violacoes.push(violacao(
            "e2eid",
            "O parâmetro e2eid não respeita o schema ([a-zA-Z0-9]{32}).",
            Some(e2eid),
        ));
    }
    if id.is_empty() || id.len() > 35 || !alnum(id) {
        violacoes.push(violacao(
            "id",
            "O parâmetro id não respeita o schema ([a-zA-Z0-9]{1,35}).",
            Some(id),
        ));
    }
    violacoes
}

/// Reads a `DevolucaoSolicitada`, with every rule it breaks. Stricter than the schema in one
/// way: an unknown property is refused, so a misspelt field cannot pass silently.
fn parse_solicitada(body: &[u8]) -> Result<Solicitada, Vec<Value>> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return Err(vec![violacao(
            "devolucao",
            "O corpo da requisição não é um objeto JSON.",
            None,
        )]);
    };
    let mut violacoes = Vec::new();
    for key in object.keys() {
        if !["valor", "natureza", "descricao"].contains(&key.as_str()) {
            violacoes.push(violacao(
                &format!("devolucao.{key}"),
                format!("O campo devolucao.{key} não existe no schema."),
                None,
            ));
        }
    }
    let valor = match object.get("valor") {
        Some(Value::String(text)) if is_pix_valor(text) => match parse_reais(text) {
            Some(0) | None => {
                violacoes.push(violacao(
                    "devolucao.valor",
                    "O valor da devolução deve ser maior que 0.00.",
                    Some(text),
                ));
                0
            }
            Some(minor) => minor,
        },
        other => {
            let shown = other.map(Value::to_string);
            violacoes.push(violacao(
                "devolucao.valor",
                "O campo devolucao.valor não respeita o schema (string \\d{1,10}\\.\\d{2}).",
                shown.as_deref(),
            ));
            0
        }
    };
    let natureza = match object.get("natureza") {
        None => "ORIGINAL".to_owned(),
        Some(Value::String(n)) if n == "ORIGINAL" || n == "RETIRADA" => n.clone(),
        Some(other) => {
            violacoes.push(violacao(
                "devolucao.natureza",
                "O campo devolucao.natureza deve ser ORIGINAL ou RETIRADA.",
                Some(&other.to_string()),
            ));
            String::new()
        }
    };
    let descricao = match object.get("descricao") {
        None => None,
        Some(Value::String(d)) if d.chars().count() <= 140 => Some(d.clone()),
        Some(_) => {
            violacoes.push(violacao(
                "devolucao.descricao",
                "O campo devolucao.descricao deve ser um texto de até 140 caracteres.",
                None,
            ));
            None
        }
    };
    if violacoes.is_empty() {
        Ok(Solicitada {
            valor,
            natureza,
            descricao,
        })
    } else {
        Err(violacoes)
    }
}

async fn create(
    AxumState(sandbox): AxumState<Sandbox>,
    Path((e2eid, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = refuse_token(&sandbox, &headers, "pix.write") {
        return refusal;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut violacoes = path_violations(&e2eid, &id);
    if !content_type.starts_with("application/json") {
        violacoes.push(violacao(
            "Content-Type",
            format!("O corpo deve ser application/json, não {content_type:?}."),
            None,
        ));
    }
    let asked = match parse_solicitada(&body) {
        Ok(asked) if violacoes.is_empty() => asked,
        parsed => {
            violacoes.extend(parsed.err().unwrap_or_default());
            return devolucao_invalida(
                "A presente requisição de devolução não respeita o schema ou não faz sentido semanticamente.",
                violacoes,
            );
        }
    };
    // The request has reached the PSP: from here on it runs to its end even if the client
    // hangs up (during the latency, or while the answer is held back).
    tokio::spawn(accept(sandbox, e2eid, id, asked))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn created(object: Value) -> Response {
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

async fn accept(sandbox: Sandbox, e2eid: String, id: String, asked: Solicitada) -> Response {
    let magic = magic_id(&e2eid);
    if let Err(refusal) = sandbox.gate(Provider::Pix, &magic, true).await {
        return refused(refusal);
    }
    let object = {
        // Held through the execution: two requests with one id cannot both execute.
        let mut state = lock(&sandbox.inner.pix);
        let slot = (e2eid.clone(), id.clone());
        if let Some(existing) = state.devolucoes.get(&slot) {
            if existing.asked == asked {
                return created(look_up(&sandbox, &mut state, &slot).unwrap_or_default());
            }
            return devolucao_invalida(
                "A presente requisição de devolução apresenta um id já utilizado por outra requisição de devolução para o e2eid em questão.",
                vec![violacao(
                    "id",
                    format!(
                        "O id {id} já foi utilizado por outra solicitação de devolução deste e2eid."
                    ),
                    Some(&id),
                )],
            );
        }
        let rtr_id = rtr_id();
        let mut object = json!({
            "id": id,
            "rtrId": rtr_id,
            "valor": format_reais(asked.valor),
            "natureza": asked.natureza,
            "horario": { "solicitacao": crate::clock::now_rfc3339() },
            "status": "EM_PROCESSAMENTO",
        });
        if let Some(descricao) = &asked.descricao {
            object["descricao"] = json!(descricao);
        }
        let outcome = match Magic::of(&magic) {
            Magic::Declined => Err(RefundBlocked::Declined),
            magic => sandbox
                .execute(Provider::Pix, &e2eid, asked.valor, Some(&id), &rtr_id)
                .map(|()| magic),
        };
        match outcome {
            Err(RefundBlocked::TooLarge { left }) => {
                return devolucao_invalida(
                    "A presente requisição de devolução, em conjunto com as demais prévias devoluções, excederia o valor do pix originário.",
                    vec![violacao(
                        "devolucao.valor",
                        format!(
                            "O valor excede o saldo devolvível do pix ({}).",
                            format_reais(left)
                        ),
                        Some(&format_reais(asked.valor)),
                    )],
                );
            }
            Err(RefundBlocked::Declined) => {
                object["status"] = json!("NAO_REALIZADO");
                object["motivo"] = json!(DECLINED_MOTIVO);
            }
            Ok(Magic::Pending | Magic::PendingFail) => {}
            Ok(_) => settle(&mut object),
        }
        state.devolucoes.insert(
            slot,
            StoredDevolucao {
                asked,
                object: object.clone(),
                created: Instant::now(),
                fails: outcome == Ok(Magic::PendingFail),
            },
        );
        object
    };
    if object["status"] != "NAO_REALIZADO" && sandbox.loses_answer(Provider::Pix, &magic) {
        tokio::time::sleep(sandbox.timeout_hold()).await;
    }
    created(object)
}

/// An rtrId as a PSP makes one: `D`, its ISPB, the date and time, 11 random alphanumerics.
fn rtr_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute]"
        ))
        .unwrap_or_else(|_| "000000000000".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("D{ISPB}{stamp}{}", &random[..11])
}

fn settle(object: &mut Value) {
    object["status"] = json!("DEVOLVIDO");
    object["horario"]["liquidacao"] = json!(crate::clock::now_rfc3339());
}

/// A devolução as a look-up sees it: a pending one settles at the first look-up a second
/// after its creation, or, for `…PENDINGFAIL`, ends `NAO_REALIZADO` with its `motivo` and
/// leaves the ledger.
fn look_up(sandbox: &Sandbox, state: &mut State, slot: &(String, String)) -> Option<Value> {
    let stored = state.devolucoes.get_mut(slot)?;
    if stored.object["status"] == "EM_PROCESSAMENTO"
        && stored.created.elapsed() >= Duration::from_secs(1)
    {
        if stored.fails {
            stored.object["status"] = json!("NAO_REALIZADO");
            stored.object["motivo"] = json!(PENDINGFAIL_MOTIVO);
            if let Some(rtr_id) = stored.object["rtrId"].as_str() {
                sandbox.reverse(Provider::Pix, rtr_id);
            }
        } else {
            settle(&mut stored.object);
        }
    }
    Some(stored.object.clone())
}

async fn retrieve(
    AxumState(sandbox): AxumState<Sandbox>,
    Path((e2eid, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_token(&sandbox, &headers, "pix.read") {
        return refusal;
    }
    let violacoes = path_violations(&e2eid, &id);
    if !violacoes.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "RequisicaoInvalida",
            "Requisição inválida.",
            "Os parâmetros da consulta não respeitam o schema.",
            violacoes,
        );
    }
    if let Err(refusal) = sandbox.gate(Provider::Pix, &magic_id(&e2eid), false).await {
        return refused(refusal);
    }
    match look_up(
        &sandbox,
        &mut lock(&sandbox.inner.pix),
        &(e2eid.clone(), id.clone()),
    ) {
        Some(object) => (StatusCode::OK, axum::Json(object)).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "PixDevolucaoNaoEncontrada",
            "Devolução não encontrada.",
            format!("Devolução {id} não encontrada para o e2eid {e2eid}."),
            vec![],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_e2eids_speak_the_shared_suffixes() {
        let cases = [
            ("E99999999202611241200000DECLINED", Magic::Declined),
            ("E999999992026112412000000TIMEOUT", Magic::Timeout),
            ("E999999992026112412000000PENDING", Magic::Pending),
            ("E99999999202611241200PENDINGFAIL", Magic::PendingFail),
            ("E99999999202611241200pendingfail", Magic::PendingFail),
            ("E9999999920261124120000000FLAKY2", Magic::Flaky(2)),
            ("E9999999920261124120000000flaky3", Magic::Flaky(3)),
            ("E9999999920261124120000000000001", Magic::Plain),
            ("E9999999920261124120000000FLAKYX", Magic::Plain),
        ];
        for (e2eid, magic) in cases {
            assert_eq!(Magic::of(&magic_id(e2eid)), magic, "{e2eid}");
        }
        assert_eq!(
            magic_id("E9999999920261124120000000FLAKY2"),
            "E9999999920261124120000000_flaky2"
        );
        assert_eq!(
            magic_id("E99999999202611241200PENDINGFAIL"),
            "E99999999202611241200_pendingfail"
        );
        for (e2eid, _) in cases {
            assert_eq!(e2eid.len(), 32, "{e2eid} fits the e2eid format");
        }
    }

    #[test]
    fn basic_credentials_need_both_halves() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        // "refund-worker:sandbox-client-secret"
        assert_eq!(
            basic_credentials(&headers(
                "Basic cmVmdW5kLXdvcmtlcjpzYW5kYm94LWNsaWVudC1zZWNyZXQ="
            )),
            Some(("refund-worker".into(), "sandbox-client-secret".into()))
        );
        assert_eq!(
            basic_credentials(&headers("Basic YTpi")),
            Some(("a".into(), "b".into()))
        );
        for bad in [
            "Basic YTo=",
            "Basic OmI=",
            "Basic YWI=",
            "Basic !!!!",
            "Bearer YTpi",
            "Basic YTpi=",
        ] {
            assert_eq!(basic_credentials(&headers(bad)), None, "{bad}");
        }
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn valor_must_be_the_whole_pattern() {
        for good in ["0.01", "186.00", "9999999999.99"] {
            assert!(is_pix_valor(good), "{good}");
        }
        for bad in [
            "186",
            "186.0",
            "186.000",
            "10000000000.00",
            "-1.00",
            ".50",
            "1,00",
            "1.0a",
        ] {
            assert!(!is_pix_valor(bad), "{bad}");
        }
    }

    #[test]
    fn a_solicitada_reports_every_broken_rule() {
        let err = parse_solicitada(br#"{"valor":186.0,"natureza":"MED_FRAUDE","value":"1.00"}"#)
            .unwrap_err();
        let props: Vec<_> = err
            .iter()
            .map(|v| v["propriedade"].as_str().unwrap())
            .collect();
        assert_eq!(
            props,
            ["devolucao.value", "devolucao.valor", "devolucao.natureza"]
        );
        assert_eq!(
            parse_solicitada(br#"{"valor":"7.89"}"#).unwrap(),
            Solicitada {
                valor: 789,
                natureza: "ORIGINAL".into(),
                descricao: None
            }
        );
    }
}
