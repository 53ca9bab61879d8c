//! Omie's order lookup, as the sandbox fakes it: `POST /erp/api/v1/produtos/pedido/`
//! (`ConsultarPedido`) and `POST /erp/api/v1/geral/clientes/` (`ConsultarCliente`), JSON
//! RPC with `app_key`/`app_secret` in the body, answering from the fixture orders.
//!
//! Like Omie: the trailing slash is required (without it, 301), every fault is
//! `{"faultstring","faultcode"}` with HTTP 500, an unknown record is a "não cadastrado"
//! fault, and the consumption limit answers 429 with a fault that names the seconds to
//! wait. The twin accepts only the sandbox account (`account::ERP_APP_KEY` and
//! `account::ERP_APP_SECRET`, which the worker's defaults name). How an order carries its payment (a `pagamento:` line in
//! `observacoes.obs_venda`) and its NF-e (`infoNfe`) is our convention, docs/SERVICES.md.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{OriginalUri, State as Shared},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use serde::Serialize;
use serde_json::{Map, Value, json, value::RawValue};
use time::{OffsetDateTime, macros::format_description};

use super::{FixtureCustomer, FixtureOrder, Refusal, Sandbox, lock};
use crate::{account, money::format_reais, provider::Provider};

/// Where synthetic order codes start (for order ids that are not Omie codes).
const SYNTHETIC_ORDER_CODE: u64 = 9_000_000_000_000_000;
/// Where customer codes start.
const FIRST_CUSTOMER_CODE: u64 = 7_000_000_001;

/// The fake's memory.
#[derive(Debug)]
pub(crate) struct State {
    /// The sandbox account's `app_key`.
    app_key: String,
    /// The sandbox account's `app_secret`.
    app_secret: String,
    /// Orders by order id (also their `codigo_pedido_integracao`).
    orders: HashMap<String, StoredOrder>,
    /// `codigo_pedido` → order id.
    by_code: HashMap<u64, String>,
    /// Customers by `codigo_cliente_omie`.
    customers: HashMap<u64, FixtureCustomer>,
    /// Synthetic codes handed out so far.
    synthetic: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            app_key: account::ERP_APP_KEY.to_owned(),
            app_secret: account::ERP_APP_SECRET.to_owned(),
            orders: HashMap::new(),
            by_code: HashMap::new(),
            customers: HashMap::new(),
            synthetic: 0,
        }
    }
}

/// An order as Omie files it.
#[derive(Debug, Clone)]
struct StoredOrder {
    codigo_pedido: u64,
    codigo_cliente: u64,
    order: FixtureOrder,
}

/// Omie's own code for an order id that is one: digits, no leading zero, 64-bit. The
/// worker's client asks those by `codigo_pedido` and every other id by
/// `codigo_pedido_integracao`.
fn omie_code(order_id: &str) -> Option<u64> {
    let canonical = (1..=18).contains(&order_id.len())
        && order_id.bytes().all(|b| b.is_ascii_digit())
        && !order_id.starts_with('0');
    canonical.then(|| order_id.parse().ok()).flatten()
}

/// Files `orders` (replacing any with the same id, which keeps its codes).
pub(super) fn load(state: &mut State, orders: Vec<FixtureOrder>) {
    for order in orders {
        let (codigo_pedido, codigo_cliente) = match state.orders.get(&order.order_id) {
            Some(old) => (old.codigo_pedido, old.codigo_cliente),
            None => {
                let code = omie_code(&order.order_id).unwrap_or_else(|| {
                    state.synthetic += 1;
                    SYNTHETIC_ORDER_CODE + state.synthetic
                });
                (code, FIRST_CUSTOMER_CODE + state.customers.len() as u64)
            }
        };
        state.by_code.insert(codigo_pedido, order.order_id.clone());
        state
            .customers
            .insert(codigo_cliente, order.customer.clone());
        state.orders.insert(
            order.order_id.clone(),
            StoredOrder {
                codigo_pedido,
                codigo_cliente,
                order,
            },
        );
    }
}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/erp/api/v1/produtos/pedido/", post(pedido))
        .route("/erp/api/v1/geral/clientes/", post(clientes))
        .route("/erp/api/v1/produtos/pedido", any(moved))
        .route("/erp/api/v1/geral/clientes", any(moved))
}

/// Omie answers 301 to a service URL without its trailing slash.
async fn moved(OriginalUri(uri): OriginalUri) -> Response {
    let location = format!("{}/", uri.path());
    let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// An Omie fault: its HTTP status (500 unless said otherwise) and its body.
#[derive(Debug)]
struct Fault {
    status: StatusCode,
    code: &'static str,
    text: String,
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let body = json!({ "faultstring": self.text, "faultcode": self.code });
        (self.status, Json(body)).into_response()
    }
}

fn fault(status: StatusCode, code: &'static str, text: impl Into<String>) -> Fault {
    Fault {
        status,
        code,
        text: text.into(),
    }
}

fn refused(refusal: Refusal) -> Fault {
    match refusal {
        Refusal::RateLimited(wait) => {
            let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            fault(
                StatusCode::TOO_MANY_REQUESTS,
                "MISUSE_API_PROCESS",
                format!(
                    "ERROR: Você está consumindo demais a API (limite de requisições excedido). Tente novamente em {seconds} segundos."
                ),
            )
        }
        Refusal::Unavailable => fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SOAP-ENV:Server",
            "ERROR: Serviço temporariamente indisponível. Tente novamente mais tarde. (sandbox fault)",
        ),
    }
}

/// A call's envelope, checked: the method and its one `param` object.
fn envelope(
    sandbox: &Sandbox,
    body: &[u8],
    service: &str,
    method: &str,
) -> Result<Map<String, Value>, Fault> {
    let server_fault =
        |text: String| fault(StatusCode::INTERNAL_SERVER_ERROR, "SOAP-ENV:Client-1", text);
    let Ok(Value::Object(mut call)) = serde_json::from_slice::<Value>(body) else {
        return Err(server_fault(
            "ERROR: Não foi possível interpretar a requisição: envie um JSON com call, app_key, app_secret e param.".into(),
        ));
    };
    let text = |call: &Map<String, Value>, name: &str| {
        call.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (app_key, app_secret) = (text(&call, "app_key"), text(&call, "app_secret"));
    {
        let state = lock(&sandbox.inner.erp);
        if app_key.is_empty() || app_key != state.app_key {
            return Err(fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SOAP-ENV:Client-101",
                "ERROR: A chave de acesso (app_key) não está preenchida ou não é válida!",
            ));
        }
        if app_secret != state.app_secret {
            return Err(fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SOAP-ENV:Client-102",
                "ERROR: O segredo da chave de acesso (app_secret) não é válido!",
            ));
        }
    }
    let called = text(&call, "call");
    if called != method {
        return Err(server_fault(format!(
            "ERROR: O método [{called}] não existe no serviço [{service}] (este sandbox atende {method})."
        )));
    }
    match call.remove("param") {
        Some(Value::Array(mut params)) if params.len() == 1 => match params.pop() {
            Some(Value::Object(param)) => Ok(param),
            _ => Err(server_fault(
                "ERROR: A tag [param] deve conter um objeto.".into(),
            )),
        },
        _ => Err(server_fault(
            "ERROR: A tag [param] deve ser uma lista com um objeto.".into(),
        )),
    }
}

/// `produtos/pedido/` `ConsultarPedido`.
async fn pedido(Shared(sandbox): Shared<Sandbox>, body: Bytes) -> Result<Response, Fault> {
    let param = envelope(&sandbox, &body, "produtos/pedido", "ConsultarPedido")?;
    sandbox.gate_service().await.map_err(refused)?;
    let state = lock(&sandbox.inner.erp);
    let (found, asked) = if let Some(code) = param.get("codigo_pedido") {
        let Some(code) = code.as_u64() else {
            return Err(fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SOAP-ENV:Client-5",
                format!(
                    "ERROR: A tag [codigo_pedido] deve ser um número inteiro (recebido {code})."
                ),
            ));
        };
        let found = state.by_code.get(&code).and_then(|id| state.orders.get(id));
        (found, format!("Código [{code}]"))
    } else if let Some(id) = param
        .get("codigo_pedido_integracao")
        .and_then(Value::as_str)
    {
        (state.orders.get(id), format!("Código de Integração [{id}]"))
    } else {
        return Err(fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SOAP-ENV:Client-5",
            "ERROR: Informe a tag [codigo_pedido] ou [codigo_pedido_integracao].",
        ));
    };
    match found {
        Some(stored) => Ok((StatusCode::OK, Json(answer(stored))).into_response()),
        None => Err(fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SOAP-ENV:Client-103",
            format!("ERROR: Pedido não cadastrado para o {asked} !"),
        )),
    }
}

/// `geral/clientes/` `ConsultarCliente`.
async fn clientes(Shared(sandbox): Shared<Sandbox>, body: Bytes) -> Result<Response, Fault> {
    let param = envelope(&sandbox, &body, "geral/clientes", "ConsultarCliente")?;
    sandbox.gate_service().await.map_err(refused)?;
    let Some(code) = param.get("codigo_cliente_omie").and_then(Value::as_u64) else {
        return Err(fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SOAP-ENV:Client-5",
            "ERROR: Informe a tag [codigo_cliente_omie] (número inteiro).",
        ));
    };
    let state = lock(&sandbox.inner.erp);
    let Some(customer) = state.customers.get(&code) else {
        return Err(fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SOAP-ENV:Client-103",
            format!("ERROR: Cliente não cadastrado para o Código [{code}] !"),
        ));
    };
    let (ddd, numero) = split_phone(customer.phone.as_deref().unwrap_or(""));
    let body = json!({
        "codigo_cliente_omie": code,
        "codigo_cliente_integracao": format!("cli-{code}"),
        "razao_social": customer.name,
        "nome_fantasia": customer.name.split(' ').next().unwrap_or(&customer.name),
        "pessoa_fisica": "S",
        "telefone1_ddd": ddd,
        "telefone1_numero": numero,
        "inativo": "N",
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// E.164 into Omie's `telefone1_ddd` and `telefone1_numero` (`"11"`, `"99999-0000"`);
/// a foreign number stays whole, with its `+`.
fn split_phone(phone: &str) -> (String, String) {
    match phone.strip_prefix("+55") {
        Some(rest) if matches!(rest.len(), 10 | 11) => {
            let (ddd, number) = rest.split_at(2);
            let (head, tail) = number.split_at(number.len() - 4);
            (ddd.to_owned(), format!("{head}-{tail}"))
        }
        _ => (String::new(), phone.to_owned()),
    }
}

/// Centavos as a JSON number in reais, by integer formatting.
fn reais(minor: u64) -> Box<RawValue> {
    RawValue::from_string(format_reais(minor))
        .expect("digits, a dot and two digits are a JSON number")
}

#[derive(Serialize)]
struct Answer {
    pedido_venda_produto: PedidoVendaProduto,
}

#[derive(Serialize)]
struct PedidoVendaProduto {
    cabecalho: Value,
    det: Vec<Item>,
    total_pedido: Total,
    lista_parcelas: Parcelas,
    informacoes_adicionais: Value,
    observacoes: Value,
    #[serde(rename = "infoNfe", skip_serializing_if = "Option::is_none")]
    info_nfe: Option<Value>,
    #[serde(rename = "infoCadastro")]
    info_cadastro: Value,
}

#[derive(Serialize)]
struct Item {
    ide: Value,
    produto: Produto,
}

#[derive(Serialize)]
struct Produto {
    codigo_produto: u64,
    descricao: String,
    unidade: &'static str,
    quantidade: u32,
    valor_unitario: Box<RawValue>,
    valor_total: Box<RawValue>,
}

#[derive(Serialize)]
struct Total {
    valor_mercadorias: Box<RawValue>,
    valor_total_pedido: Box<RawValue>,
}

#[derive(Serialize)]
struct Parcelas {
    parcela: Vec<Parcela>,
}

#[derive(Serialize)]
struct Parcela {
    numero_parcela: u32,
    valor: Box<RawValue>,
    percentual: u32,
    data_vencimento: String,
    meio_pagamento: &'static str,
}

/// The NF-e `tPag` code of a payment: Pix 17; a card (credit) 03.
fn meio_pagamento(order: &FixtureOrder) -> &'static str {
    if order.payment.provider == Provider::Pix || order.payment.pix_key.is_some() {
        "17"
    } else {
        "03"
    }
}

/// The `pagamento:` line of `obs_venda` (docs/SERVICES.md).
fn payment_line(order: &FixtureOrder) -> String {
    let payment = &order.payment;
    let mut line = format!(
        "pagamento: provider={}; payment_id={}",
        payment.provider, payment.payment_id
    );
    if let Some(key) = &payment.pix_key {
        line.push_str(&format!("; pix_key={key}"));
    }
    if let Some(last4) = &payment.card_last4 {
        line.push_str(&format!("; card_last4={last4}"));
    }
    let status = if order.settled { "settled" } else { "pending" };
    line.push_str(&format!("; status={status}"));
    line
}

fn today() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!("[day]/[month]/[year]"))
        .unwrap_or_default()
}

fn answer(stored: &StoredOrder) -> Answer {
    let order = &stored.order;
    let invoiced = order.invoice.is_some();
    Answer {
        pedido_venda_produto: PedidoVendaProduto {
            cabecalho: json!({
                "codigo_pedido": stored.codigo_pedido,
                "codigo_pedido_integracao": order.order_id,
                "numero_pedido": stored.codigo_pedido.to_string(),
                "codigo_cliente": stored.codigo_cliente,
                "data_previsao": today(),
                "etapa": if invoiced { "60" } else { "50" },
                "codigo_parcela": "000",
                "qtde_parcelas": 1,
                "origem_pedido": "API",
            }),
            det: vec![Item {
                ide: json!({ "codigo_item_integracao": "1", "simples_nacional": "S" }),
                produto: Produto {
                    codigo_produto: 1,
                    descricao: format!("Pedido {}", order.order_id),
                    unidade: "UN",
                    quantidade: 1,
                    valor_unitario: reais(order.total),
                    valor_total: reais(order.total),
                },
            }],
            total_pedido: Total {
                valor_mercadorias: reais(order.total),
                valor_total_pedido: reais(order.total),
            },
            lista_parcelas: Parcelas {
                parcela: vec![Parcela {
                    numero_parcela: 1,
                    valor: reais(order.payment.amount),
                    percentual: 100,
                    data_vencimento: today(),
                    meio_pagamento: meio_pagamento(order),
                }],
            },
            informacoes_adicionais: json!({
                "codigo_categoria": "1.01.01",
                "codigo_conta_corrente": 1,
                "consumidor_final": "S",
                "enviar_email": "N",
            }),
            observacoes: json!({ "obs_venda": payment_line(order) }),
            info_nfe: order.invoice.as_ref().map(|invoice| {
                json!({
                    "nNF": invoice.number,
                    "serie": "1",
                    "cChaveNFe": invoice.access_key.clone().unwrap_or_default(),
                    "dEmi": today(),
                })
            }),
            info_cadastro: json!({
                "cancelado": "N",
                "faturado": if invoiced { "S" } else { "N" },
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_split_into_ddd_and_number() {
        assert_eq!(
            split_phone("+5511999990000"),
            ("11".into(), "99999-0000".into())
        );
        assert_eq!(
            split_phone("+551133334444"),
            ("11".into(), "3333-4444".into())
        );
        assert_eq!(
            split_phone("+14155550100"),
            (String::new(), "+14155550100".into())
        );
    }

    #[test]
    fn only_canonical_numbers_are_omie_codes() {
        assert_eq!(omie_code("8421"), Some(8421));
        assert_eq!(omie_code("0042"), None);
        assert_eq!(omie_code("ord-1"), None);
        assert_eq!(omie_code("1234567890123456789"), None);
    }
}
