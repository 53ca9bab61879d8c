//! Omie's wire types and their conversion into an [`Order`]: pure, no I/O.
//!
//! What comes from Omie's own schema: `cabecalho` (codes, `etapa`), `total_pedido`
//! (`valor_total_pedido`, decimal reais), `lista_parcelas.parcela[]` (`valor`,
//! `meio_pagamento` as the NF-e `tPag` code: `17` Pix, `03`/`04` card), `infoCadastro`
//! (`cancelado`), and the customer's `razao_social` and `telefone1_ddd`/`telefone1_numero`.
//! What is our convention (docs/SERVICES.md), because Omie has no field for it:
//! - the original payment is one line of `observacoes.obs_venda`, written by the storefront
//!   when the order is created:
//!   `pagamento: provider=pix; payment_id=E…; pix_key=payer@example.com; status=settled`
//!   (`card_last4=4242` for cards; `status=settled` is the only settled state);
//! - the order's NF-e is `infoNfe {nNF, serie, cChaveNFe, dEmi}`.
//!
//! Money is read from the raw JSON number text, never through a float.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use crate::{
    http,
    job::{self, Currency, ProviderName, Token},
    providers::ProviderError,
    services::{Customer, Invoice, Order, OrderPayment, invoicing::is_access_key},
};

/// How an order id is asked for. A purely numeric id without leading zeros that fits in
/// Omie's 64-bit code is Omie's own `codigo_pedido` (a JSON number); anything else is the
/// integrator's `codigo_pedido_integracao` (a string), which is how a storefront's own ids
/// live in Omie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderKey<'a> {
    /// `codigo_pedido`.
    Code(u64),
    /// `codigo_pedido_integracao`.
    Integration(&'a str),
}

impl<'a> OrderKey<'a> {
    /// The key for `order_id`.
    pub(crate) fn of(order_id: &'a str) -> Self {
        let numeric = (1..=18).contains(&order_id.len())
            && order_id.bytes().all(|b| b.is_ascii_digit())
            && !order_id.starts_with('0');
        match order_id.parse::<u64>() {
            Ok(code) if numeric => OrderKey::Code(code),
            _ => OrderKey::Integration(order_id),
        }
    }

    /// The `param` entry of `ConsultarPedido`.
    pub(crate) fn param(&self) -> Value {
        match self {
            OrderKey::Code(code) => json!({ "codigo_pedido": code }),
            OrderKey::Integration(id) => json!({ "codigo_pedido_integracao": id }),
        }
    }

    /// Refuses an answer about another order than the one asked for.
    pub(crate) fn check(&self, pedido: &Pedido) -> Result<(), ProviderError> {
        let header = &pedido.cabecalho;
        let same = match self {
            OrderKey::Code(code) => header.codigo_pedido == *code,
            OrderKey::Integration(id) => header.codigo_pedido_integracao.as_deref() == Some(id),
        };
        if same {
            return Ok(());
        }
        Err(ProviderError::Permanent {
            code: Some("order_mismatch".into()),
            why: format!(
                "erp: asked for order {self:?}, Omie answered with codigo_pedido {} (integração {:?})",
                header.codigo_pedido, header.codigo_pedido_integracao
            ),
        })
    }
}

/// What an Omie answer means.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// A result to read.
    Data,
    /// A fault saying the record is not registered.
    NotFound,
    /// Any other fault, classified.
    Failed(ProviderError),
}

/// Omie's SOAP-style error body.
#[derive(Debug, Deserialize)]
struct Fault {
    faultstring: String,
    #[serde(default)]
    faultcode: String,
}

/// Classifies an answer. Omie reports most faults with HTTP 500 and a
/// `{"faultstring","faultcode"}` body, so the text decides:
/// - credentials (`app_key`, `app_secret`, "chave de acesso", 401/403): permanent;
/// - consumption limits ("consumindo demais", "limite de requisições", "consumo indevido",
///   "consumo redundante", a method already running, 425/429): transient, after the seconds
///   the fault names or `Retry-After`;
/// - "não cadastrado" / "não encontrado": not found;
/// - anything else on a 5xx (or a fault on a 2xx): transient, since asking again is harmless;
/// - any other 4xx: permanent.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Reply {
    let fault = serde_json::from_slice::<Fault>(body).ok();
    let success = (200..300).contains(&status);
    let Some(fault) = fault else {
        if success {
            return Reply::Data;
        }
        let why = format!("erp: HTTP {status}: {}", http::snippet(body));
        return Reply::Failed(match status {
            401 | 403 => ProviderError::Permanent {
                code: Some("omie_auth".into()),
                why,
            },
            425 | 429 => ProviderError::Transient {
                why,
                retry_after: http::retry_after(headers),
            },
            408 | 500..=599 => ProviderError::transient(why),
            _ => ProviderError::permanent(why),
        });
    };
    let text = fault.faultstring.to_lowercase();
    let why = format!(
        "erp: HTTP {status}: {} ({})",
        fault.faultstring, fault.faultcode
    );
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if status == 401
        || status == 403
        || has(&[
            "app_key",
            "app_secret",
            "appkey",
            "chave de acesso",
            "aplicativo",
            "não autorizado",
            "nao autorizado",
            "acesso negado",
        ])
    {
        return Reply::Failed(ProviderError::Permanent {
            code: Some("omie_auth".into()),
            why,
        });
    }
    if status == 425
        || status == 429
        || fault.faultcode.contains("MISUSE")
        || has(&[
            "consumindo demais",
            "limite de requisições",
            "limite de requisicoes",
            "consumo indevido",
            "consumo redundante",
            "em execução",
            "em execucao",
        ])
    {
        return Reply::Failed(ProviderError::Transient {
            why,
            retry_after: seconds_in(&text).or_else(|| http::retry_after(headers)),
        });
    }
    if has(&[
        "não cadastrad",
        "nao cadastrad",
        "não encontrad",
        "nao encontrad",
        "not found",
    ]) {
        return Reply::NotFound;
    }
    if success || status == 408 || status >= 500 {
        return Reply::Failed(ProviderError::transient(why));
    }
    Reply::Failed(ProviderError::permanent(why))
}

/// "Tente novamente em 30 segundos" → 30 s.
fn seconds_in(text: &str) -> Option<std::time::Duration> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).find_map(|pair| {
        pair[1]
            .starts_with("segundo")
            .then(|| pair[0].parse::<u64>().ok())
            .flatten()
            .map(std::time::Duration::from_secs)
    })
}

/// `ConsultarPedido`'s answer.
#[derive(Debug, Deserialize)]
struct PedidoAnswer {
    pedido_venda_produto: Pedido,
}

/// An Omie sales order (the fields we read; Omie sends many more).
#[derive(Debug, Deserialize)]
pub(crate) struct Pedido {
    cabecalho: Cabecalho,
    total_pedido: TotalPedido,
    #[serde(default)]
    lista_parcelas: Option<ListaParcelas>,
    #[serde(default)]
    observacoes: Option<Observacoes>,
    #[serde(default, rename = "infoNfe")]
    info_nfe: Option<InfoNfe>,
    #[serde(default, rename = "infoCadastro")]
    info_cadastro: Option<InfoCadastro>,
}

#[derive(Debug, Deserialize)]
struct Cabecalho {
    codigo_pedido: u64,
    #[serde(default)]
    codigo_pedido_integracao: Option<String>,
    codigo_cliente: u64,
}

#[derive(Debug, Deserialize)]
struct TotalPedido {
    valor_total_pedido: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
struct ListaParcelas {
    #[serde(default)]
    parcela: Vec<Parcela>,
}

#[derive(Debug, Deserialize)]
struct Parcela {
    valor: Box<RawValue>,
    #[serde(default)]
    meio_pagamento: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Observacoes {
    #[serde(default)]
    obs_venda: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(non_snake_case)] // Omie's (and the NF-e's) own names
struct InfoNfe {
    #[serde(default)]
    nNF: Option<String>,
    #[serde(default)]
    cChaveNFe: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InfoCadastro {
    #[serde(default)]
    cancelado: Option<String>,
}

/// `ConsultarCliente`'s answer (the fields we read).
#[derive(Debug, Deserialize)]
pub(crate) struct Cliente {
    #[serde(default)]
    razao_social: Option<String>,
    #[serde(default)]
    nome_fantasia: Option<String>,
    #[serde(default)]
    telefone1_ddd: Option<String>,
    #[serde(default)]
    telefone1_numero: Option<String>,
}

impl Pedido {
    /// The customer's Omie code.
    pub(crate) fn customer_code(&self) -> u64 {
        self.cabecalho.codigo_cliente
    }
}

/// Reads `ConsultarPedido`'s answer. Unreadable JSON is transient (a truncated or proxy
/// answer); asking again is harmless.
pub(crate) fn read_pedido(body: &[u8]) -> Result<Pedido, ProviderError> {
    serde_json::from_slice::<PedidoAnswer>(body)
        .map(|a| a.pedido_venda_produto)
        .map_err(|e| {
            ProviderError::transient(format!(
                "erp: unreadable ConsultarPedido answer ({e}): {}",
                http::snippet(body)
            ))
        })
}

/// Reads `ConsultarCliente`'s answer.
pub(crate) fn read_cliente(body: &[u8]) -> Result<Cliente, ProviderError> {
    serde_json::from_slice(body).map_err(|e| {
        ProviderError::transient(format!(
            "erp: unreadable ConsultarCliente answer ({e}): {}",
            http::snippet(body)
        ))
    })
}

/// A permanent error about the order's data: it needs a person.
fn bad_order(order_id: &str, what: impl std::fmt::Display) -> ProviderError {
    ProviderError::Permanent {
        code: Some("order_unreadable".into()),
        why: format!("erp: order {order_id}: {what}"),
    }
}

/// Reais as a raw JSON number (`186`, `186.5`, `186.00`) to centavos, exactly.
fn centavos(order_id: &str, field: &str, raw: &RawValue) -> Result<u64, ProviderError> {
    job::parse_decimal(raw.get().trim(), Currency::BRL.exponent()).ok_or_else(|| {
        bad_order(
            order_id,
            format!("{field} {} is not an amount in reais", raw.get()),
        )
    })
}

/// The `pagamento:` line of `obs_venda`, as `key=value` pairs.
fn payment_line<'a>(
    order_id: &str,
    obs: Option<&'a str>,
) -> Result<Vec<(&'a str, &'a str)>, ProviderError> {
    let lines: Vec<&str> = obs
        .unwrap_or("")
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let head = line.get(..10)?;
            head.eq_ignore_ascii_case("pagamento:").then(|| &line[10..])
        })
        .collect();
    match lines.as_slice() {
        [line] => Ok(line
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect()),
        [] => Err(bad_order(
            order_id,
            "observacoes.obs_venda has no 'pagamento:' line naming the original payment",
        )),
        _ => Err(bad_order(
            order_id,
            "observacoes.obs_venda has several 'pagamento:' lines; which payment to refund is ambiguous",
        )),
    }
}

/// The payment means of the instalments (NF-e `tPag`), if they agree.
fn means(order_id: &str, parcelas: &[Parcela]) -> Result<Option<String>, ProviderError> {
    let mut codes: Vec<&str> = parcelas
        .iter()
        .filter_map(|p| p.meio_pagamento.as_deref().map(str::trim))
        .filter(|c| !c.is_empty())
        .collect();
    codes.dedup();
    match codes.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_owned())),
        _ => Err(bad_order(
            order_id,
            format!(
                "its instalments were paid by several means ({}); refund it by hand",
                codes.join(", ")
            ),
        )),
    }
}

/// A phone in E.164 from Omie's `telefone1_ddd` and `telefone1_numero`: Brazilian numbers
/// (2-digit DDD, 8 or 9 digits; or 10–11 digits with the DDD in the number) get `+55`; a
/// number written with its own `+` is taken as it is. Anything else is no phone.
pub(crate) fn e164(ddd: Option<&str>, number: Option<&str>) -> Option<String> {
    let digits = |s: Option<&str>| -> String {
        s.unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .collect()
    };
    let number_text = number.unwrap_or("").trim();
    if number_text.starts_with('+') {
        let all = digits(Some(number_text));
        return (8..=15).contains(&all.len()).then(|| format!("+{all}"));
    }
    let (ddd, number) = (digits(ddd), digits(number));
    match (ddd.len(), number.len()) {
        (2, 8 | 9) => Some(format!("+55{ddd}{number}")),
        (0, 10 | 11) => Some(format!("+55{number}")),
        _ => None,
    }
}

/// The order in our words.
pub(crate) fn to_order(
    order_id: &str,
    pedido: &Pedido,
    cliente: &Cliente,
) -> Result<Order, ProviderError> {
    let total = centavos(
        order_id,
        "total_pedido.valor_total_pedido",
        &pedido.total_pedido.valor_total_pedido,
    )?;
    let pairs = payment_line(
        order_id,
        pedido
            .observacoes
            .as_ref()
            .and_then(|o| o.obs_venda.as_deref()),
    )?;
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    };
    let provider = ProviderName::parse(field("provider").unwrap_or(""))
        .map_err(|rule| bad_order(order_id, format!("pagamento provider {rule}")))?;
    let payment_id = Token::parse(field("payment_id").unwrap_or(""))
        .map_err(|rule| bad_order(order_id, format!("pagamento payment_id {rule}")))?;

    let parcelas = pedido
        .lista_parcelas
        .as_ref()
        .map_or(&[][..], |l| l.parcela.as_slice());
    let amount = if parcelas.is_empty() {
        total
    } else {
        parcelas.iter().try_fold(0u64, |sum, p| {
            let value = centavos(order_id, "lista_parcelas.parcela.valor", &p.valor)?;
            sum.checked_add(value)
                .ok_or_else(|| bad_order(order_id, "its instalments overflow"))
        })?
    };
    let is_card = |code: &str| matches!(code, "03" | "04");
    match means(order_id, parcelas)?.as_deref() {
        Some(code) if provider == ProviderName::Pix && code != "17" => {
            return Err(bad_order(
                order_id,
                format!(
                    "paid by meio_pagamento {code}, which is not Pix, but its pagamento line names the pix rail"
                ),
            ));
        }
        Some(code) if is_card(code) && field("pix_key").is_some() => {
            return Err(bad_order(
                order_id,
                format!(
                    "paid by card (meio_pagamento {code}) but its pagamento line carries a pix_key"
                ),
            ));
        }
        _ => {}
    }
    let cancelled = pedido
        .info_cadastro
        .as_ref()
        .and_then(|c| c.cancelado.as_deref())
        .is_some_and(|c| c.eq_ignore_ascii_case("S"));
    let settled = !cancelled && field("status").is_some_and(|s| s.eq_ignore_ascii_case("settled"));
    let card_last4 = field("card_last4")
        .filter(|d| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned);

    let name = [&cliente.razao_social, &cliente.nome_fantasia]
        .into_iter()
        .filter_map(|n| n.as_deref().map(str::trim))
        .find(|n| !n.is_empty())
        .unwrap_or("")
        .to_owned();
    let phone = e164(
        cliente.telefone1_ddd.as_deref(),
        cliente.telefone1_numero.as_deref(),
    );

    let invoice = pedido.info_nfe.as_ref().and_then(|nfe| {
        let number = nfe
            .nNF
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())?;
        let access_key = nfe
            .cChaveNFe
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        if let Some(key) = access_key.filter(|k| !is_access_key(k)) {
            tracing::warn!(
                order_id,
                key,
                "the order's NF-e access key is malformed; ignoring it"
            );
        }
        Some(Invoice {
            number: number.to_owned(),
            access_key: access_key.filter(|k| is_access_key(k)).map(str::to_owned),
        })
    });

    Ok(Order {
        order_id: order_id.to_owned(),
        total,
        currency: Currency::BRL,
        settled,
        payment: OrderPayment {
            provider,
            payment_id,
            amount,
            pix_key: field("pix_key").map(str::to_owned),
            card_last4,
        },
        customer: Customer { name, phone },
        invoice,
    })
}
