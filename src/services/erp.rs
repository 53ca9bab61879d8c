//! The ERP client: Omie's order lookup, turned into an [`Order`].
//!
//! Omie is JSON-over-POST RPC: `POST {base}/api/v1/<service>/` (the trailing slash matters),
//! body `{"call","app_key","app_secret","param":[{…}]}`. A lookup is two calls:
//! `produtos/pedido/` `ConsultarPedido` for the order, then `geral/clientes/`
//! `ConsultarCliente` for the buyer's name and phone (an Omie order names its customer only
//! by code). How an order carries its original payment is our convention, documented in
//! docs/SERVICES.md and read in [`wire`].
//!
//! A lookup changes nothing at Omie, so no failure here is ever an unknown outcome: a
//! timeout or a 5xx is transient, bad credentials are permanent, and an order Omie does not
//! know is `Ok(None)`. An order whose payment cannot be read is a permanent error: it needs
//! a person, and guessing a rail would send money the wrong way.

mod wire;

use std::sync::Arc;

use reqwest::Client;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{Erp, Order};
use crate::{
    config::{Secret, ServiceSettings},
    providers::ProviderError,
};

use wire::{OrderKey, Reply, classify};

/// Omie's order lookup.
#[derive(Debug, Clone)]
pub struct Omie {
    /// The shared connection pool.
    client: Client,
    /// `https://app.omie.com.br` (or the sandbox's `/erp`), without a trailing slash.
    base_url: String,
    /// The application's key (`app_key`), sent in every request body.
    app_key: Option<String>,
    /// The application's secret (`app_secret`), sent in every request body.
    app_secret: Secret,
    /// Omie allows 4 concurrent calls per app_key and method; more are refused. One pool of
    /// permits per method keeps this client within it however many jobs look orders up.
    pedido_slots: Arc<Semaphore>,
    /// The same, for `ConsultarCliente`.
    cliente_slots: Arc<Semaphore>,
}

/// Omie's concurrency limit per app_key and method.
const CONCURRENT_CALLS_PER_METHOD: usize = 4;

impl Omie {
    /// A client for the configured endpoint.
    pub fn new(client: Client, settings: &ServiceSettings) -> Self {
        Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            app_key: settings.app_key.clone(),
            app_secret: settings.api_key.clone(),
            pedido_slots: Arc::new(Semaphore::new(CONCURRENT_CALLS_PER_METHOD)),
            cliente_slots: Arc::new(Semaphore::new(CONCURRENT_CALLS_PER_METHOD)),
        }
    }

    /// One RPC call: `Ok(None)` when Omie answers that the record is not registered.
    async fn call(
        &self,
        slots: &Semaphore,
        service: &str,
        method: &str,
        param: Value,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        let Some(app_key) = self.app_key.as_deref() else {
            return Err(ProviderError::permanent(
                "erp: services.erp.app_key is not configured (Omie needs app_key and app_secret)",
            ));
        };
        let body = json!({
            "call": method,
            "app_key": app_key,
            "app_secret": self.app_secret.expose(),
            "param": [param],
        });
        let transport = |e: reqwest::Error| {
            // Nothing changes at Omie on a lookup, so even a lost answer is safe to ask again.
            ProviderError::transient(format!(
                "erp: {method} failed: {}",
                crate::diagnostics::root_cause(&e.without_url())
            ))
        };
        // The semaphore is never closed, so acquiring only waits.
        let _slot = slots
            .acquire()
            .await
            .map_err(|_| ProviderError::transient("erp: client shutting down"))?;
        let response = self
            .client
            .post(format!("{}/api/v1/{service}", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport)?;
        match classify(status, &headers, &bytes) {
            Reply::Data => Ok(Some(bytes.to_vec())),
            Reply::NotFound => Ok(None),
            Reply::Failed(error) => Err(error),
        }
    }
}

#[async_trait::async_trait]
impl Erp for Omie {
    async fn order(&self, order_id: &str) -> Result<Option<Order>, ProviderError> {
        let key = OrderKey::of(order_id);
        let Some(bytes) = self
            .call(
                &self.pedido_slots,
                "produtos/pedido/",
                "ConsultarPedido",
                key.param(),
            )
            .await?
        else {
            return Ok(None);
        };
        let pedido = wire::read_pedido(&bytes)?;
        key.check(&pedido)?;
        let customer_code = pedido.customer_code();
        let Some(bytes) = self
            .call(
                &self.cliente_slots,
                "geral/clientes/",
                "ConsultarCliente",
                json!({ "codigo_cliente_omie": customer_code }),
            )
            .await?
        else {
            return Err(ProviderError::Permanent {
                code: Some("customer_not_found".into()),
                why: format!(
                    "erp: order {order_id} names customer {customer_code}, which Omie does not know"
                ),
            });
        };
        let cliente = wire::read_cliente(&bytes)?;
        wire::to_order(order_id, &pedido, &cliente).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::wire::{self, OrderKey, Reply, classify};
    use crate::{
        job::{Currency, ProviderName, Token},
        providers::ProviderError,
        services::{Customer, Invoice, Order, OrderPayment},
    };

    const KEY: &str = "35261111222333000181550010000045121000045122";

    fn fault(text: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"faultstring": text, "faultcode": "SOAP-ENV:Client-103"}))
            .unwrap()
    }

    fn failed(reply: Reply) -> ProviderError {
        match reply {
            Reply::Failed(error) => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn numeric_ids_are_omie_codes_and_others_integration_codes() {
        assert_eq!(OrderKey::of("8421"), OrderKey::Code(8421));
        assert_eq!(OrderKey::of("8421").param(), json!({"codigo_pedido": 8421}));
        assert_eq!(OrderKey::of("0042"), OrderKey::Integration("0042"));
        assert_eq!(
            OrderKey::of("ord-77").param(),
            json!({"codigo_pedido_integracao": "ord-77"})
        );
        assert_eq!(
            OrderKey::of("1234567890123456789"),
            OrderKey::Integration("1234567890123456789"),
            "19 digits do not fit Omie's 64-bit code"
        );
    }

    #[test]
    fn faults_are_classified_by_their_text() {
        let none = HeaderMap::new();
        assert_eq!(
            classify(200, &none, b"{\"pedido_venda_produto\":{}}"),
            Reply::Data
        );
        assert_eq!(
            classify(
                500,
                &none,
                &fault("ERROR: Pedido não cadastrado para o Código [8421] !")
            ),
            Reply::NotFound
        );
        assert!(matches!(
            failed(classify(500, &none, &fault("ERROR: A chave de acesso (app_key) não é válida!"))),
            ProviderError::Permanent { code: Some(c), .. } if c == "omie_auth"
        ));
        assert!(
            matches!(
                failed(classify(
                    500,
                    &none,
                    &fault("ERROR: Aplicativo não cadastrado!")
                )),
                ProviderError::Permanent { .. }
            ),
            "an auth fault is never mistaken for an unknown order"
        );
        assert_eq!(
            failed(classify(
                500,
                &none,
                &fault("ERROR: Você está consumindo demais a API. Tente novamente em 30 segundos.")
            )),
            ProviderError::Transient {
                why: "erp: HTTP 500: ERROR: Você está consumindo demais a API. Tente novamente em 30 segundos. (SOAP-ENV:Client-103)".into(),
                retry_after: Some(Duration::from_secs(30)),
            }
        );
        assert!(matches!(
            failed(classify(
                500,
                &none,
                &fault("ERROR: Limite de requisições atingido")
            )),
            ProviderError::Transient {
                retry_after: None,
                ..
            }
        ));
        let mut retry = HeaderMap::new();
        retry.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            failed(classify(429, &retry, b"Too Many Requests")),
            ProviderError::Transient {
                why: "erp: HTTP 429: Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert!(matches!(
            failed(classify(425, &none, &fault("ERROR: consumo redundante"))),
            ProviderError::Transient { .. }
        ));
        for (status, body) in [
            (500, fault("ERROR: Serviço temporariamente indisponível")),
            (502, b"<html>Bad Gateway</html>".to_vec()),
            (200, fault("ERROR: erro inesperado")),
        ] {
            assert!(
                matches!(
                    failed(classify(status, &none, &body)),
                    ProviderError::Transient { .. }
                ),
                "{status}: a lookup is always safe to repeat"
            );
        }
        assert!(matches!(
            failed(classify(401, &none, b"")),
            ProviderError::Permanent { .. }
        ));
        assert!(
            matches!(
                failed(classify(404, &none, b"<html>not here</html>")),
                ProviderError::Permanent { .. }
            ),
            "a 404 without a fault is a wrong base URL, not an unknown order"
        );
    }

    fn pedido(obs: &str, valor: &str, meio: &str) -> Vec<u8> {
        let obs_json = serde_json::to_string(&format!("Entrega expressa\n{obs}")).unwrap();
        format!(
            r#"{{"pedido_venda_produto":{{
                "cabecalho":{{"codigo_pedido":8421,"codigo_pedido_integracao":"8421","numero_pedido":"8421","codigo_cliente":7000000001,"etapa":"60"}},
                "det":[{{"produto":{{"descricao":"x","valor_total":186.00}}}}],
                "total_pedido":{{"valor_total_pedido":186.00}},
                "lista_parcelas":{{"parcela":[{{"numero_parcela":1,"valor":{valor},"meio_pagamento":"{meio}"}}]}},
                "informacoes_adicionais":{{"consumidor_final":"S"}},
                "observacoes":{{"obs_venda":{obs_json}}},
                "infoNfe":{{"nNF":"4512","serie":"1","cChaveNFe":"{KEY}","dEmi":"24/11/2026"}},
                "infoCadastro":{{"cancelado":"N","faturado":"S"}}
            }}}}"#
        )
        .into_bytes()
    }

    const CLIENTE: &[u8] = br#"{"codigo_cliente_omie":7000000001,"razao_social":"Ana Souza","nome_fantasia":"Ana","telefone1_ddd":"11","telefone1_numero":"99999-0000"}"#;
    const PIX_LINE: &str = "pagamento: provider=pix; payment_id=E12345678202611241200abcdefghijk; pix_key=payer@example.com; status=settled";

    fn order(obs: &str, valor: &str, meio: &str) -> Result<Order, ProviderError> {
        let pedido = wire::read_pedido(&pedido(obs, valor, meio))?;
        OrderKey::of("8421").check(&pedido)?;
        wire::to_order("8421", &pedido, &wire::read_cliente(CLIENTE)?)
    }

    #[test]
    fn an_omie_order_becomes_our_order_with_exact_centavos() {
        assert_eq!(
            order(PIX_LINE, "186.00", "17").unwrap(),
            Order {
                order_id: "8421".into(),
                total: 18600,
                currency: Currency::BRL,
                settled: true,
                payment: OrderPayment {
                    provider: ProviderName::Pix,
                    payment_id: Token::parse("E12345678202611241200abcdefghijk").unwrap(),
                    amount: 18600,
                    pix_key: Some("payer@example.com".into()),
                    card_last4: None,
                },
                customer: Customer {
                    name: "Ana Souza".into(),
                    phone: Some("+5511999990000".into()),
                },
                invoice: Some(Invoice {
                    number: "4512".into(),
                    access_key: Some(KEY.into()),
                }),
            }
        );
        for (valor, centavos) in [
            ("186", 18600),
            ("186.5", 18650),
            ("0.01", 1),
            ("10000000000.00", 1_000_000_000_000),
        ] {
            assert_eq!(
                order(PIX_LINE, valor, "17").unwrap().payment.amount,
                centavos,
                "{valor}"
            );
        }
        for bad in ["1.86e2", "186.001", "-1", "\"186.00\""] {
            assert!(
                matches!(
                    order(PIX_LINE, bad, "17"),
                    Err(ProviderError::Permanent { .. })
                ),
                "{bad}: an amount that is not plain reais is refused, never rounded"
            );
        }
    }

    #[test]
    fn cards_pending_payments_and_inconsistent_orders() {
        let card = "pagamento: provider=stripe; payment_id=ch_3Q; card_last4=4242; status=settled";
        let order_paid_by_card = order(card, "186.00", "03").unwrap();
        assert_eq!(order_paid_by_card.payment.provider, ProviderName::Stripe);
        assert_eq!(
            order_paid_by_card.payment.card_last4.as_deref(),
            Some("4242")
        );
        assert_eq!(order_paid_by_card.payment.pix_key, None);

        let pending = PIX_LINE.replace("status=settled", "status=pending");
        assert!(!order(&pending, "186.00", "17").unwrap().settled);
        let unstated = PIX_LINE.replace("; status=settled", "");
        assert!(
            !order(&unstated, "186.00", "17").unwrap().settled,
            "settled needs evidence"
        );

        for (obs, meio, why) in [
            ("", "17", "no payment line"),
            (
                &format!("{PIX_LINE}\n{PIX_LINE}") as &str,
                "17",
                "two payment lines",
            ),
            (PIX_LINE, "03", "pix rail but paid by card"),
            (
                "pagamento: provider=paypal; payment_id=x; status=settled",
                "17",
                "unknown rail",
            ),
            (
                "pagamento: provider=pix; status=settled",
                "17",
                "no payment id",
            ),
        ] {
            assert!(
                matches!(
                    order(obs, "186.00", meio),
                    Err(ProviderError::Permanent { .. })
                ),
                "{why}"
            );
        }
    }

    #[test]
    fn phones_become_e164_and_odd_ones_none() {
        let e164 = |ddd: Option<&str>, number: Option<&str>| wire::e164(ddd, number);
        assert_eq!(
            e164(Some("11"), Some("99999-0000")).as_deref(),
            Some("+5511999990000")
        );
        assert_eq!(
            e164(Some("(21)"), Some("3333 4444")).as_deref(),
            Some("+552133334444")
        );
        assert_eq!(
            e164(None, Some("11999990000")).as_deref(),
            Some("+5511999990000")
        );
        assert_eq!(
            e164(Some(""), Some("+1 415 555 0100")).as_deref(),
            Some("+14155550100")
        );
        assert_eq!(e164(Some("11"), Some("123")), None);
        assert_eq!(e164(None, None), None);
    }

    #[test]
    fn a_cancelled_order_is_not_settled_and_a_bad_access_key_is_dropped() {
        let read = |raw: &str| {
            let pedido = wire::read_pedido(raw.as_bytes()).unwrap();
            wire::to_order("8421", &pedido, &wire::read_cliente(CLIENTE).unwrap()).unwrap()
        };
        let raw = String::from_utf8(pedido(PIX_LINE, "186.00", "17")).unwrap();
        assert!(read(&raw).settled);
        assert!(!read(&raw.replace(r#""cancelado":"N""#, r#""cancelado":"S""#)).settled);
        let bad_key = format!("{}3", &KEY[..43]);
        let invoice = read(&raw.replace(KEY, &bad_key)).invoice.unwrap();
        assert_eq!(invoice.number, "4512");
        assert_eq!(
            invoice.access_key, None,
            "a key with a wrong check digit is not sealed"
        );
        let no_nfe = raw.replace(r#""nNF":"4512""#, r#""nNF":"""#);
        assert_eq!(read(&no_nfe).invoice, None);
    }

    #[test]
    fn an_answer_about_another_order_is_refused() {
        let pedido = wire::read_pedido(&pedido(PIX_LINE, "186.00", "17")).unwrap();
        assert!(OrderKey::of("8421").check(&pedido).is_ok());
        assert!(OrderKey::of("8422").check(&pedido).is_err());
        assert!(OrderKey::of("ord-8421").check(&pedido).is_err());
    }
}
