//! API Pix wire types and their conversion to and from ours (`PUT /pix/{e2eid}/devolucao/{id}`,
//! BCB OpenAPI 2.9.0, vendored at `specs/pix-api-2.9.0-openapi.yaml`).
//!
//! Pure: checks the path parameters, derives the devolução id from our key, builds the
//! `DevolucaoSolicitada` body, reads `Devolucao` answers and classifies error answers (RFC 7807
//! problems on the API, RFC 6749 errors on the token endpoint).

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    http,
    job::{Amount, Currency, IdempotencyKey, Reason, parse_decimal},
    providers::{ProviderError, ProviderRefund, RefundRequest, RefundStatus},
};

/// An EndToEndId is exactly this many characters of `[a-zA-Z0-9]`.
const E2EID_LEN: usize = 32;
/// A DevolucaoId is 1 to this many characters of `[a-zA-Z0-9]`.
const DEVOLUCAO_ID_MAX: usize = 35;
/// `descricao` travels in the pacs.004 RemittanceInformation, limited to 140 characters.
const DESCRICAO_MAX: usize = 140;
/// The largest refund `valor` can carry: `\d{1,10}\.\d{2}` is at most 9999999999.99 reais.
const VALOR_MAX_MINOR: u64 = 999_999_999_999;

/// Where to look when the credentials are refused.
pub(crate) const CREDENTIALS_HINT: &str = "check providers.pix.client_id and providers.pix.api_key \
     (REFUND_PROVIDERS__PIX__CLIENT_ID, REFUND_PROVIDERS__PIX__API_KEY = the OAuth2 client secret)";

fn is_alnum(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The job's payment id as an EndToEndId (`[a-zA-Z0-9]{32}`), or why it cannot be one.
pub(crate) fn e2eid(payment_id: &str) -> Result<&str, ProviderError> {
    if payment_id.len() == E2EID_LEN && is_alnum(payment_id) {
        return Ok(payment_id);
    }
    Err(ProviderError::Permanent {
        code: Some("EndToEndId".into()),
        why: format!(
            "pix: payment_id {payment_id:?} is not an EndToEndId: a Pix devolução needs the e2eid of \
             the original Pix, exactly 32 characters of [a-zA-Z0-9]"
        ),
    })
}

/// The devolução id we choose for a key: the first 35 hex digits of its SHA-256. The same key
/// always gives the same id, so every resend of one job is the same devolução at the PSP.
pub(crate) fn devolucao_id(key: &IdempotencyKey) -> String {
    let digest = Sha256::digest(key.as_str().as_bytes());
    let mut id = hex::encode(digest);
    id.truncate(DEVOLUCAO_ID_MAX);
    id
}

/// The devolução's nature: `RETIRADA` (pacs.004 SL02) for a Pix Saque/Troco error, otherwise
/// `ORIGINAL` (MD06).
pub(crate) fn natureza(reason: Reason) -> &'static str {
    match reason {
        Reason::PixWithdrawalOrChangeError => "RETIRADA",
        Reason::CustomerRequest | Reason::Fraud | Reason::BankingError | Reason::Duplicate => {
            "ORIGINAL"
        }
    }
}

/// `valor` as API Pix wants it: a string of reais with two decimals, integer-formatted.
pub(crate) fn valor(amount: Amount) -> Result<String, ProviderError> {
    if amount.minor() > VALOR_MAX_MINOR {
        return Err(ProviderError::Permanent {
            code: Some("valor".into()),
            why: format!(
                "pix: {} BRL cannot be expressed as a devolução valor (\\d{{1,10}}\\.\\d{{2}}: at most \
                 9999999999.99); split it into several refunds with their own idempotency_key",
                amount.to_decimal(2)
            ),
        });
    }
    Ok(amount.to_decimal(2))
}

/// The body of `PUT /pix/{e2eid}/devolucao/{id}` (`DevolucaoSolicitada`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DevolucaoSolicitada {
    /// Reais, `\d{1,10}\.\d{2}`, as a JSON string.
    pub valor: String,
    /// `ORIGINAL` or `RETIRADA`.
    pub natureza: &'static str,
    /// Shown to the payer; at most 140 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descricao: Option<String>,
}

/// Everything one devolução call needs, checked: its path and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Devolucao {
    /// The original Pix.
    pub e2eid: String,
    /// Our deterministic devolução id.
    pub id: String,
    /// The body.
    pub body: DevolucaoSolicitada,
}

impl Devolucao {
    /// Checks what API Pix requires of a request (BRL, an EndToEndId, an expressible `valor`)
    /// and builds the call. Every failure is permanent: no retry changes the job.
    pub(crate) fn of(request: &RefundRequest) -> Result<Self, ProviderError> {
        if request.currency != Currency::BRL {
            return Err(ProviderError::Permanent {
                code: Some("currency".into()),
                why: format!(
                    "pix: a devolução is always in BRL; this job is in {}",
                    request.currency.code()
                ),
            });
        }
        let e2eid = e2eid(request.payment_id.as_str())?.to_owned();
        let body = DevolucaoSolicitada {
            valor: valor(request.amount)?,
            natureza: natureza(request.reason),
            descricao: request
                .description
                .as_deref()
                .map(|d| d.chars().take(DESCRICAO_MAX).collect()),
        };
        Ok(Self {
            e2eid,
            id: devolucao_id(&request.key),
            body,
        })
    }

    /// The path under the base URL.
    pub(crate) fn path(&self) -> String {
        format!("/pix/{}/devolucao/{}", self.e2eid, self.id)
    }
}

/// A `Devolucao` answer (the fields we read).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DevolucaoAnswer {
    pub id: String,
    #[serde(rename = "rtrId")]
    pub rtr_id: String,
    pub valor: String,
    pub status: String,
    #[serde(default)]
    pub motivo: Option<String>,
}

impl DevolucaoAnswer {
    /// Our view of it, for the request that made it. `Unknown` when the answer cannot be
    /// read (the devolução exists, but we cannot say what it is); `Permanent` when it is not
    /// the refund this job asks for.
    pub(crate) fn into_refund(self, expected: Amount) -> Result<ProviderRefund, ProviderError> {
        let Some(amount) = parse_decimal(&self.valor, 2) else {
            return Err(ProviderError::unknown(format!(
                "pix: devolução {} has an unreadable valor {:?}",
                self.id, self.valor
            )));
        };
        let status = match self.status.as_str() {
            "EM_PROCESSAMENTO" => RefundStatus::Pending,
            "DEVOLVIDO" => RefundStatus::Succeeded,
            "NAO_REALIZADO" => RefundStatus::Failed {
                reason: format!(
                    "pix devolução {} NAO_REALIZADO: {}",
                    self.id,
                    self.motivo.as_deref().unwrap_or("no motivo given")
                ),
            },
            other => {
                return Err(ProviderError::unknown(format!(
                    "pix: devolução {} has an unknown status {other:?}",
                    self.id
                )));
            }
        };
        if amount != expected.minor() {
            return Err(ProviderError::Permanent {
                code: Some("valor".into()),
                why: format!(
                    "pix: devolução {} (rtrId {}) exists with valor {} but this job refunds {}; its id \
                     comes from the idempotency key, so that key was used for another amount: \
                     reconcile by hand",
                    self.id,
                    self.rtr_id,
                    self.valor,
                    expected.to_decimal(2)
                ),
            });
        }
        Ok(ProviderRefund {
            refund_id: self.rtr_id,
            status,
            amount,
        })
    }
}

/// An RFC 7807 problem (`Problema`).
#[derive(Debug, Default, Deserialize)]
struct Problema {
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    #[serde(rename = "correlationId")]
    correlation_id: Option<String>,
    #[serde(default)]
    violacoes: Vec<Violacao>,
}

/// One broken rule of a problem (`Violacao`). Its `valor` may echo personal data: not read.
#[derive(Debug, Deserialize)]
struct Violacao {
    razao: Option<String>,
    propriedade: Option<String>,
}

impl Problema {
    fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The error name: the last segment of `type` (`…/error/PixDevolucaoInvalida`).
    fn code(&self) -> Option<String> {
        let kind = self.kind.as_deref()?;
        Some(kind.rsplit('/').next().unwrap_or(kind).to_owned())
    }
}

/// Whether a look-up answer says the devolução does not exist: a 404 whose problem names the
/// devolução (`PixDevolucaoNaoEncontrada`) or the entity (`NaoEncontrado`). A bare 404 (a
/// proxy, a wrong base URL) proves nothing.
pub(crate) fn is_not_found(status: u16, body: &[u8]) -> bool {
    status == 404
        && Problema::parse(body)
            .and_then(|p| p.code())
            .is_some_and(|code| code == "PixDevolucaoNaoEncontrada" || code == "NaoEncontrado")
}

/// Classifies a non-2xx API answer. 429 (not in the spec) comes before execution: transient.
/// 5xx (500 `ErroInternoDoServidor`, 503 `ServicoIndisponivel`, 504
/// `IndisponibilidadePorTempoEsgotado`), 408, 409 and anything unexpected may have executed:
/// unknown, reconciled by `GET` before a resend with the same id. Other 4xx (400
/// `PixDevolucaoInvalida`, 401, 403 `AcessoNegado`, 404 `NaoEncontrado`) are final.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let problem = Problema::parse(body);
    let code = problem.as_ref().and_then(Problema::code);
    let why = match &problem {
        Some(p) => describe(status, code.as_deref(), p),
        None => format!("pix {status}: {}", http::snippet(body)),
    };
    match status {
        429 => ProviderError::Transient {
            why,
            retry_after: http::retry_after(headers),
        },
        408 | 409 | 500..=599 => {
            ProviderError::unknown(format!("{why} (the devolução may have been executed)"))
        }
        401 => ProviderError::Permanent {
            code,
            why: format!("{why}; the API refused a fresh token: {CREDENTIALS_HINT}"),
        },
        400..=499 => ProviderError::Permanent { code, why },
        _ => ProviderError::unknown(format!(
            "{why} (unexpected status; the devolução may have been executed)"
        )),
    }
}

fn describe(status: u16, code: Option<&str>, problem: &Problema) -> String {
    let mut why = format!("pix {status} {}", code.unwrap_or("error"));
    for text in [&problem.title, &problem.detail].into_iter().flatten() {
        why.push_str(": ");
        why.push_str(text);
    }
    let violations: Vec<String> = problem
        .violacoes
        .iter()
        .map(|v| {
            format!(
                "{}: {}",
                v.propriedade.as_deref().unwrap_or("?"),
                v.razao.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if !violations.is_empty() {
        why.push_str(&format!(" [violacoes: {}]", violations.join("; ")));
    }
    if let Some(id) = &problem.correlation_id {
        why.push_str(&format!(" (correlationId {id})"));
    }
    why
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenAnswer {
    pub access_token: String,
    pub token_type: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// Classifies a failed token request. Nothing about a refund was sent, so nothing here is
/// ever unknown: a refused credential is permanent (with where to fix it), the rest transient.
pub(crate) fn classify_token(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<OAuthError>(body).ok();
    let code = parsed.as_ref().and_then(|e| e.error.clone());
    let message = parsed
        .and_then(|e| e.error_description)
        .unwrap_or_else(|| http::snippet(body));
    let why = format!(
        "pix token endpoint {status} {}: {message}",
        code.as_deref().unwrap_or("error")
    );
    match status {
        400..=403 => ProviderError::Permanent {
            code,
            why: format!("{why}; {CREDENTIALS_HINT}"),
        },
        _ => ProviderError::Transient {
            why,
            retry_after: http::retry_after(headers),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Token;

    const E2E: &str = "E9999999920261124120000000000001";

    fn request(amount: u64, reason: Reason, description: Option<&str>) -> RefundRequest {
        RefundRequest {
            key: IdempotencyKey::parse(&format!("{E2E}:2026-11-24")).unwrap(),
            payment_id: Token::parse(E2E).unwrap(),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::BRL,
            reason,
            description: description.map(str::to_owned),
            job_id: "job-1".into(),
        }
    }

    fn answer(status: &str, valor: &str) -> DevolucaoAnswer {
        DevolucaoAnswer {
            id: "abc".into(),
            rtr_id: "D99999999202611241200abcdef12345".into(),
            valor: valor.into(),
            status: status.into(),
            motivo: Some("Conta do pagador encerrada".into()),
        }
    }

    #[test]
    fn body_is_a_decimal_string_with_the_reason_as_natureza() {
        let call = Devolucao::of(&request(
            18600,
            Reason::CustomerRequest,
            Some("Pedido 8421"),
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&call.body).unwrap(),
            r#"{"valor":"186.00","natureza":"ORIGINAL","descricao":"Pedido 8421"}"#
        );
        assert_eq!(call.e2eid, E2E);
        assert_eq!(call.path(), format!("/pix/{E2E}/devolucao/{}", call.id));

        let call = Devolucao::of(&request(5, Reason::PixWithdrawalOrChangeError, None)).unwrap();
        assert_eq!(
            serde_json::to_string(&call.body).unwrap(),
            r#"{"valor":"0.05","natureza":"RETIRADA"}"#
        );
        for reason in [Reason::Fraud, Reason::BankingError, Reason::Duplicate] {
            assert_eq!(natureza(reason), "ORIGINAL");
        }
    }

    #[test]
    fn valor_at_the_edges() {
        let cases = [
            (1, "0.01"),
            (99, "0.99"),
            (100, "1.00"),
            (999_999_999_999, "9999999999.99"),
        ];
        for (minor, text) in cases {
            assert_eq!(valor(Amount::new(minor).unwrap()).unwrap(), text);
        }
        let err = valor(Amount::new(1_000_000_000_000).unwrap()).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Permanent { why, .. } if why.contains("10000000000.00") && why.contains(r"\d{1,10}\.\d{2}")),
            "{err:?}"
        );
    }

    #[test]
    fn descricao_is_cut_to_140_characters_not_bytes() {
        let long = "é".repeat(300);
        let call = Devolucao::of(&request(100, Reason::CustomerRequest, Some(&long))).unwrap();
        let descricao = call.body.descricao.unwrap();
        assert_eq!(descricao.chars().count(), 140);
        assert!(descricao.chars().all(|c| c == 'é'));
    }

    #[test]
    fn devolucao_id_is_stable_and_always_valid() {
        let key = IdempotencyKey::parse("E9999999920261124120000000000001:2026-11-24").unwrap();
        assert_eq!(devolucao_id(&key), devolucao_id(&key.clone()));
        // Pinned: changing the derivation would re-send refunds already made under old ids.
        assert_eq!(devolucao_id(&key).len(), 35);
        assert_eq!(
            devolucao_id(&IdempotencyKey::parse("a").unwrap()),
            "ca978112ca1bbdcafac231b39a23dc4da78"
        );
        let other = IdempotencyKey::parse("E9999999920261124120000000000001:2026-11-25").unwrap();
        assert_ne!(devolucao_id(&key), devolucao_id(&other));
        let longest = IdempotencyKey::parse(&"k:_.-".repeat(51)).unwrap();
        for key in [key, other, longest, IdempotencyKey::parse("x").unwrap()] {
            let id = devolucao_id(&key);
            assert!((1..=35).contains(&id.len()) && is_alnum(&id), "{id}");
        }
    }

    #[test]
    fn what_api_pix_cannot_carry_is_refused_permanently() {
        for bad in [
            "pi_123",
            "E9999999920261124120000000000001X",
            "E99999999202611241200000000000_1",
        ] {
            let mut r = request(100, Reason::CustomerRequest, None);
            r.payment_id = Token::parse(bad).unwrap();
            let err = Devolucao::of(&r).unwrap_err();
            assert!(
                matches!(&err, ProviderError::Permanent { why, .. } if why.contains("[a-zA-Z0-9]") && why.contains("32")),
                "{bad}: {err:?}"
            );
        }
        let mut r = request(100, Reason::CustomerRequest, None);
        r.currency = Currency::parse("USD").unwrap();
        assert!(matches!(
            Devolucao::of(&r),
            Err(ProviderError::Permanent { why, .. }) if why.contains("USD")
        ));
    }

    #[test]
    fn statuses_map_into_ours() {
        let expected = Amount::new(789).unwrap();
        let refund = answer("DEVOLVIDO", "7.89").into_refund(expected).unwrap();
        assert_eq!(refund.status, RefundStatus::Succeeded);
        assert_eq!(refund.amount, 789);
        assert_eq!(refund.refund_id, "D99999999202611241200abcdef12345");
        assert_eq!(
            answer("EM_PROCESSAMENTO", "7.89")
                .into_refund(expected)
                .unwrap()
                .status,
            RefundStatus::Pending
        );
        let RefundStatus::Failed { reason } = answer("NAO_REALIZADO", "7.89")
            .into_refund(expected)
            .unwrap()
            .status
        else {
            panic!("NAO_REALIZADO maps to Failed");
        };
        assert!(reason.contains("Conta do pagador encerrada"), "{reason}");

        assert!(matches!(
            answer("ESTORNADO", "7.89").into_refund(expected),
            Err(ProviderError::Unknown { .. })
        ));
        assert!(matches!(
            answer("DEVOLVIDO", "7,89").into_refund(expected),
            Err(ProviderError::Unknown { .. })
        ));
        assert!(matches!(
            answer("DEVOLVIDO", "7.90").into_refund(expected),
            Err(ProviderError::Permanent { why, .. }) if why.contains("reconcile by hand")
        ));
    }

    #[test]
    fn errors_are_classified_safely_for_money() {
        let none = HeaderMap::new();
        let body = r#"{"type":"https://pix.bcb.gov.br/api/v2/error/PixDevolucaoInvalida","title":"Devolução inválida.","status":400,"detail":"A devolução não respeita o schema.","correlationId":"c-1","violacoes":[{"razao":"excede o valor do pix","propriedade":"devolucao.valor","valor":"9.99"}]}"#
            .as_bytes();
        let err = classify(400, &none, body);
        let ProviderError::Permanent {
            code: Some(code),
            why,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(code, "PixDevolucaoInvalida");
        assert!(
            why.contains("devolucao.valor: excede o valor do pix"),
            "{why}"
        );
        assert!(why.contains("c-1"), "{why}");
        assert!(
            !why.contains("9.99"),
            "violation values are not echoed: {why}"
        );

        for status in [403, 404] {
            assert!(matches!(
                classify(status, &none, b"{}"),
                ProviderError::Permanent { .. }
            ));
        }
        assert!(matches!(
            classify(401, &none, b""),
            ProviderError::Permanent { why, .. } if why.contains("client_id")
        ));
        for status in [408, 409, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(status, &none, b"<html>"),
                    ProviderError::Unknown { .. }
                ),
                "{status}"
            );
        }
        let mut limited = HeaderMap::new();
        limited.insert("retry-after", "2".parse().unwrap());
        assert!(matches!(
            classify(429, &limited, b""),
            ProviderError::Transient { retry_after: Some(d), .. } if d.as_secs() == 2
        ));
    }

    #[test]
    fn only_a_pix_problem_proves_a_devolucao_absent() {
        let typed = |kind: &str| {
            format!(
                r#"{{"type":"https://pix.bcb.gov.br/api/v2/error/{kind}","title":"x","status":404}}"#
            )
        };
        assert!(is_not_found(
            404,
            typed("PixDevolucaoNaoEncontrada").as_bytes()
        ));
        assert!(is_not_found(404, typed("NaoEncontrado").as_bytes()));
        assert!(!is_not_found(404, b"<html>Not Found</html>"));
        assert!(!is_not_found(404, typed("AcessoNegado").as_bytes()));
        assert!(!is_not_found(
            503,
            typed("PixDevolucaoNaoEncontrada").as_bytes()
        ));
    }

    #[test]
    fn token_errors_are_never_unknown() {
        let none = HeaderMap::new();
        let err = classify_token(
            401,
            &none,
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
        );
        assert!(
            matches!(&err, ProviderError::Permanent { code: Some(c), why } if c == "invalid_client" && why.contains("REFUND_PROVIDERS__PIX__API_KEY")),
            "{err:?}"
        );
        assert!(matches!(
            classify_token(503, &none, b""),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            classify_token(429, &none, b""),
            ProviderError::Transient { .. }
        ));
    }
}
