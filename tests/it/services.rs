//! The services of a governed refund (Omie, invoicing, Z-API) against their sandbox twins:
//! what each client puts on the wire, what it makes of the answer, and how it classifies
//! failures. No broker or Redis here: each test runs its own sandbox on a free port.

use std::{process::Stdio, time::Duration};

use refund_sandbox::{
    FaultOptions, FixtureCustomer, FixtureInvoice, FixtureOrder, FixturePayment, Provider,
    RecordedRequest, Sandbox, generated_orders,
};
use refund_worker::{
    config::{Secret, Settings},
    job::{Amount, Currency, IdempotencyKey, ProviderName, Reason, Token},
    providers::ProviderError,
    services::{
        CreditNoteRequest, Customer, Invoice, Message, Order, OrderPayment, Services,
        whatsapp::render,
    },
};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::helpers::{binary, eventually, test_settings};

/// A valid NF-e access key (check digit 2).
const ACCESS_KEY: &str = "35261111222333000181550010000045121000045122";
/// A Pix e2eid: 32 alphanumerics.
const E2EID: &str = "E12345678202611241200abcdefghijk";

/// A sandbox on a free port, and settings pointing every service at it.
struct Twin {
    sandbox: Sandbox,
    url: String,
    settings: Settings,
    stop: CancellationToken,
}

impl Twin {
    async fn start(faults: FaultOptions) -> Self {
        let sandbox = Sandbox::new(faults);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop.clone()));
        let mut settings = test_settings();
        settings.point_providers_at(&url);
        Self {
            sandbox,
            url,
            settings,
            stop,
        }
    }

    /// The clients as the pipeline builds them.
    fn services(&self) -> Services {
        services_for(&self.settings)
    }

    /// Requests the twin received under `path_prefix`.
    fn requests(&self, path_prefix: &str) -> Vec<RecordedRequest> {
        self.sandbox
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .collect()
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn services_for(settings: &Settings) -> Services {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    Services::from_settings(settings, client)
}

fn body_json(request: &RecordedRequest) -> Value {
    serde_json::from_str(&request.body).unwrap()
}

/// The SPEC §9 fixture, with an invoice.
fn ana() -> FixtureOrder {
    FixtureOrder {
        order_id: "8421".into(),
        total: 18600,
        currency: "BRL".into(),
        payment: FixturePayment {
            provider: Provider::Pix,
            payment_id: E2EID.into(),
            amount: 18600,
            pix_key: Some("payer@example.com".into()),
            card_last4: None,
        },
        customer: FixtureCustomer {
            name: "Ana".into(),
            phone: Some("+5511999990000".into()),
        },
        settled: true,
        invoice: Some(FixtureInvoice {
            number: "4512".into(),
            access_key: Some(ACCESS_KEY.into()),
        }),
    }
}

fn card_order() -> FixtureOrder {
    FixtureOrder {
        order_id: "web-77".into(),
        total: 5000,
        currency: "BRL".into(),
        payment: FixturePayment {
            provider: Provider::Stripe,
            payment_id: "ch_3QcardPayment77".into(),
            amount: 4990,
            pix_key: None,
            card_last4: Some("4242".into()),
        },
        customer: FixtureCustomer {
            name: "Bruno Lima".into(),
            phone: None,
        },
        settled: false,
        invoice: None,
    }
}

#[tokio::test]
async fn erp_lookup_speaks_omie_rpc_and_maps_the_order() {
    let twin = Twin::start(FaultOptions::default()).await;
    twin.sandbox.load_orders(vec![ana()]);
    let order = twin.services().erp.order("8421").await.unwrap();
    assert_eq!(
        order,
        Some(Order {
            order_id: "8421".into(),
            total: 18600,
            currency: Currency::BRL,
            settled: true,
            payment: OrderPayment {
                provider: ProviderName::Pix,
                payment_id: Token::parse(E2EID).unwrap(),
                amount: 18600,
                pix_key: Some("payer@example.com".into()),
                card_last4: None,
            },
            customer: Customer {
                name: "Ana".into(),
                phone: Some("+5511999990000".into()),
            },
            invoice: Some(Invoice {
                number: "4512".into(),
                access_key: Some(ACCESS_KEY.into()),
            }),
        })
    );

    let requests = twin.requests("/erp/");
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let (pedido, cliente) = (&requests[0], &requests[1]);
    assert_eq!(pedido.method, "POST");
    assert_eq!(
        pedido.path, "/erp/api/v1/produtos/pedido/",
        "Omie needs the trailing slash"
    );
    assert!(pedido.headers["content-type"].starts_with("application/json"));
    assert_eq!(
        body_json(pedido),
        json!({
            "call": "ConsultarPedido",
            "app_key": "sandbox-app-key",
            "app_secret": "sandbox-app-secret",
            "param": [{"codigo_pedido": 8421}],
        }),
        "a numeric order id is Omie's codigo_pedido, as a JSON number"
    );
    assert_eq!(cliente.path, "/erp/api/v1/geral/clientes/");
    let cliente_body = body_json(cliente);
    assert_eq!(cliente_body["call"], "ConsultarCliente");
    assert!(cliente_body["param"][0]["codigo_cliente_omie"].is_u64());

    // The wire carries reais ("186.00"); the order above carries 18600 centavos.
    let raw = reqwest::Client::new()
        .post(format!("{}/erp/api/v1/produtos/pedido/", twin.url))
        .json(&body_json(pedido))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(r#""valor_total_pedido":186.00"#), "{raw}");
    assert!(raw.contains(r#""meio_pagamento":"17""#), "{raw}");
}

#[tokio::test]
async fn other_order_ids_are_asked_by_integration_code() {
    let twin = Twin::start(FaultOptions::default()).await;
    twin.sandbox.load_orders(vec![ana(), card_order()]);
    let order = twin.services().erp.order("web-77").await.unwrap().unwrap();
    assert_eq!(order.payment.provider, ProviderName::Stripe);
    assert_eq!(order.payment.payment_id.as_str(), "ch_3QcardPayment77");
    assert_eq!((order.total, order.payment.amount), (5000, 4990));
    assert_eq!(order.payment.card_last4.as_deref(), Some("4242"));
    assert_eq!(order.payment.pix_key, None);
    assert!(!order.settled, "an unsettled payment is reported as such");
    assert_eq!(order.customer.phone, None);
    assert_eq!(order.invoice, None);
    let asked = body_json(&twin.requests("/erp/api/v1/produtos/pedido/")[0]);
    assert_eq!(
        asked["param"],
        json!([{"codigo_pedido_integracao": "web-77"}])
    );
}

#[tokio::test]
async fn unknown_order_is_none_from_omies_not_found_fault() {
    let twin = Twin::start(FaultOptions::default()).await;
    twin.sandbox.load_orders(vec![ana()]);
    let erp = twin.services().erp;
    assert_eq!(erp.order("9999").await.unwrap(), None);
    assert_eq!(erp.order("nope-1").await.unwrap(), None);
    assert_eq!(
        twin.requests("/erp/api/v1/geral/clientes/").len(),
        0,
        "no customer lookup for an unknown order"
    );
    // What the twin answered: Omie's fault, HTTP 500.
    let response = reqwest::Client::new()
        .post(format!("{}/erp/api/v1/produtos/pedido/", twin.url))
        .json(
            &json!({"call": "ConsultarPedido", "app_key": "sandbox-app-key",
                      "app_secret": "sandbox-app-secret", "param": [{"codigo_pedido": 9999}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let fault: Value = response.json().await.unwrap();
    assert!(
        fault["faultstring"]
            .as_str()
            .unwrap()
            .contains("não cadastrado"),
        "{fault}"
    );
}

#[tokio::test]
async fn erp_credentials_outages_and_limits_are_classified() {
    let twin = Twin::start(FaultOptions::default()).await;
    twin.sandbox.load_orders(vec![ana()]);
    let mut wrong = twin.settings.clone();
    wrong.services.erp.api_key = Secret::new("not-the-secret");
    assert!(matches!(
        services_for(&wrong).erp.order("8421").await,
        Err(ProviderError::Permanent { code: Some(code), .. }) if code == "omie_auth"
    ));
    let mut missing = twin.settings.clone();
    missing.services.erp.app_key = None;
    let before = twin.requests("/erp/").len();
    assert!(matches!(
        services_for(&missing).erp.order("8421").await,
        Err(ProviderError::Permanent { .. })
    ));
    assert_eq!(
        twin.requests("/erp/").len(),
        before,
        "nothing sent without app_key"
    );

    let down = Twin::start(FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    })
    .await;
    down.sandbox.load_orders(vec![ana()]);
    assert!(matches!(
        down.services().erp.order("8421").await,
        Err(ProviderError::Transient { .. })
    ));

    // One call per second: the order passes, its customer look-up meets the limit.
    let limited = Twin::start(FaultOptions {
        rate_limit: Some(1),
        ..FaultOptions::default()
    })
    .await;
    limited.sandbox.load_orders(vec![ana()]);
    match limited.services().erp.order("8421").await {
        Err(ProviderError::Transient {
            retry_after: Some(wait),
            why,
        }) => {
            assert!(why.contains("consumindo demais"), "{why}");
            assert!(wait >= Duration::from_secs(1), "{wait:?}");
        }
        other => panic!("expected a transient rate limit, got {other:?}"),
    }

    let nowhere = twin.settings.clone();
    let mut nowhere = nowhere;
    nowhere.services.erp.base_url = "http://127.0.0.1:9/erp".into();
    assert!(matches!(
        services_for(&nowhere).erp.order("8421").await,
        Err(ProviderError::Transient { .. })
    ));
}

#[tokio::test]
async fn erp_without_trailing_slash_is_moved_like_omie() {
    let twin = Twin::start(FaultOptions::default()).await;
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/erp/api/v1/produtos/pedido", twin.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 301);
    assert_eq!(
        response.headers()["location"],
        "/erp/api/v1/produtos/pedido/"
    );
}

#[tokio::test]
async fn loading_orders_seeds_their_payments_so_refunds_stay_within_them() {
    let twin = Twin::start(FaultOptions::default()).await;
    twin.sandbox.load_orders(vec![card_order()]);
    let refund = |amount: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/stripe/v1/refunds", twin.url))
            .bearer_auth("sk_test_x")
            .form(&[("charge", "ch_3QcardPayment77"), ("amount", amount)])
            .send()
    };
    assert_eq!(refund("4991").await.unwrap().status().as_u16(), 400);
    assert_eq!(refund("4990").await.unwrap().status().as_u16(), 200);
    assert_eq!(twin.sandbox.ledger().len(), 1);
}

#[tokio::test]
async fn generated_orders_load_and_look_up() {
    let twin = Twin::start(FaultOptions::default()).await;
    let orders = generated_orders(6, 11);
    twin.sandbox.load_orders(orders.clone());
    let erp = twin.services().erp;
    for fixture in &orders {
        let order = erp.order(&fixture.order_id).await.unwrap().unwrap();
        assert_eq!(
            order.payment.provider.as_str(),
            fixture.payment.provider.as_str()
        );
        assert_eq!(
            order.payment.payment_id.as_str(),
            fixture.payment.payment_id
        );
        assert_eq!(order.payment.amount, fixture.payment.amount);
        assert!(order.settled);
        let invoice = order.invoice.unwrap();
        assert_eq!(invoice.access_key.unwrap().len(), 44);
    }
}

fn note_request(key: &str, amount: u64) -> CreditNoteRequest {
    CreditNoteRequest {
        key: IdempotencyKey::parse(key).unwrap(),
        order_id: "8421".into(),
        invoice: Some(Invoice {
            number: "4512".into(),
            access_key: Some(ACCESS_KEY.into()),
        }),
        amount: Amount::new(amount).unwrap(),
        currency: Currency::BRL,
        refund_id: "D12345678".into(),
        provider: ProviderName::Pix,
        reason: Reason::CustomerRequest,
        customer_name: "Ana".into(),
    }
}

#[tokio::test]
async fn credit_note_is_issued_once_per_key() {
    let twin = Twin::start(FaultOptions::default()).await;
    let invoicing = twin.services().invoicing;
    let first = invoicing
        .issue(&note_request("order:8421:2026-11-24", 18600))
        .await
        .unwrap();
    let again = invoicing
        .issue(&note_request("order:8421:2026-11-24", 18600))
        .await
        .unwrap();
    assert_eq!(first, again, "the same key gives the same note");
    assert_eq!(first.number, "1");
    let key = first.access_key.clone().unwrap();
    assert!(
        refund_worker::services::invoicing::is_access_key(&key),
        "{key}"
    );
    assert_eq!(twin.sandbox.credit_notes().len(), 1, "no second note");

    let requests = twin.requests("/invoicing/");
    assert_eq!(requests.len(), 2);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/invoicing/v1/credit-notes")
    );
    assert_eq!(
        request.headers["authorization"],
        "Bearer sandbox-invoicing-key"
    );
    assert_eq!(request.headers["idempotency-key"], "order:8421:2026-11-24");
    assert_eq!(
        body_json(request),
        json!({
            "order_id": "8421",
            "finNFe": 4,
            "NFref": {"refNFe": ACCESS_KEY, "nNF": "4512"},
            "amount": "186.00",
            "currency": "BRL",
            "refund": {"provider": "pix", "refund_id": "D12345678"},
            "reason": "CUSTOMER_REQUEST",
            "customer": {"name": "Ana"},
        })
    );

    let second = invoicing
        .issue(&note_request("order:8422:2026-11-24", 1))
        .await
        .unwrap();
    assert_eq!(second.number, "2", "numbers are sequential");
    let listed: Vec<Value> = reqwest::get(format!("{}/_sandbox/credit-notes", twin.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["amount"], 18600, "minor units in the listing");
    assert_eq!(listed[1]["amount"], 1);
    assert_eq!(listed[0]["ref_nfe"], ACCESS_KEY);

    // The same key for another request is refused, and issues nothing.
    assert!(matches!(
        invoicing.issue(&note_request("order:8421:2026-11-24", 100)).await,
        Err(ProviderError::Permanent { code: Some(code), .. }) if code == "idempotency_key_reused"
    ));
    assert_eq!(twin.sandbox.credit_notes().len(), 2);
}

#[tokio::test]
async fn a_lost_credit_note_answer_is_unknown_and_the_same_key_finds_the_note() {
    let twin = Twin::start(FaultOptions {
        timeout_rate: 1.0,
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    })
    .await;
    let invoicing = twin.services().invoicing;
    let request = note_request("order:8421:lost", 18600);
    assert!(matches!(
        invoicing.issue(&request).await,
        Err(ProviderError::Unknown { .. })
    ));
    assert_eq!(
        twin.sandbox.credit_notes().len(),
        1,
        "issued though unanswered"
    );
    let found = invoicing.issue(&request).await.unwrap();
    assert_eq!(found.number, twin.sandbox.credit_notes()[0].number);
    assert_eq!(twin.sandbox.credit_notes().len(), 1);

    let down = Twin::start(FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    })
    .await;
    assert!(matches!(
        down.services().invoicing.issue(&request).await,
        Err(ProviderError::Unknown { .. })
    ));
    let mut wrong = twin.settings.clone();
    wrong.services.invoicing.api_key = Secret::new("nope");
    assert!(matches!(
        services_for(&wrong).invoicing.issue(&request).await,
        Err(ProviderError::Permanent { .. })
    ));
}

fn message(text: &str) -> Message {
    Message {
        key: IdempotencyKey::parse("order:8421:2026-11-24").unwrap(),
        phone: "+5511999990000".into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn whatsapp_message_goes_out_in_zapi_form_once_per_send() {
    let twin = Twin::start(FaultOptions::default()).await;
    let text = render(
        "refund_done",
        "Ana",
        "8421",
        Amount::new(18600).unwrap(),
        Currency::BRL,
        "pix",
    )
    .unwrap();
    assert!(text.contains("R$ 186,00"), "{text}");
    let notifier = twin.services().notifier;
    let sent = notifier.send(&message(&text)).await.unwrap();
    let delivered = twin.sandbox.messages();
    assert_eq!(delivered.len(), 1);
    assert_eq!(sent.message_id, delivered[0].message_id);
    assert_eq!(delivered[0].phone, "5511999990000");
    assert_eq!(delivered[0].message, text);

    let requests = twin.requests("/whatsapp/");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path,
        "/whatsapp/instances/sandbox-instance/token/sandbox-instance-token/send-text"
    );
    assert_eq!(request.headers["client-token"], "sandbox-client-token");
    assert!(request.headers["content-type"].starts_with("application/json"));
    assert_eq!(
        body_json(request),
        json!({"phone": "5511999990000", "message": text}),
        "digits only, no +"
    );

    // Z-API has no idempotency: a second send is a second message. The caller sends once.
    notifier.send(&message(&text)).await.unwrap();
    let listed: Vec<Value> = reqwest::get(format!("{}/_sandbox/messages", twin.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_ne!(listed[0]["message_id"], listed[1]["message_id"]);
}

#[tokio::test]
async fn whatsapp_refusals_are_permanent_and_send_nothing() {
    let twin = Twin::start(FaultOptions::default()).await;
    let mut wrong_client = twin.settings.clone();
    wrong_client.services.whatsapp.api_key = Secret::new("other-token");
    assert!(matches!(
        services_for(&wrong_client).notifier.send(&message("oi")).await,
        Err(ProviderError::Permanent { code: Some(code), .. }) if code == "zapi_403"
    ));
    let mut wrong_instance = twin.settings.clone();
    wrong_instance.services.whatsapp.instance_token = Some(Secret::new("other-instance-token"));
    assert!(matches!(
        services_for(&wrong_instance).notifier.send(&message("oi")).await,
        Err(ProviderError::Permanent { code: Some(code), .. }) if code == "zapi_401"
    ));
    let mut bad_phone = message("oi");
    bad_phone.phone = "011 99999-0000".into();
    assert!(matches!(
        twin.services().notifier.send(&bad_phone).await,
        Err(ProviderError::Permanent { .. })
    ));
    assert!(twin.sandbox.messages().is_empty());

    let url = format!(
        "{}/whatsapp/instances/sandbox-instance/token/sandbox-instance-token/send-text",
        twin.url
    );
    let client = reqwest::Client::new();
    let get = client
        .get(&url)
        .header("client-token", "sandbox-client-token")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let untyped = client
        .post(&url)
        .header("client-token", "sandbox-client-token")
        .body(r#"{"phone":"5511999990000","message":"oi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(untyped.status().as_u16(), 415);
    assert!(twin.sandbox.messages().is_empty());
}

#[tokio::test]
async fn whatsapp_only_a_refused_connection_is_transient() {
    let twin = Twin::start(FaultOptions {
        timeout_rate: 1.0,
        timeout_hold: Duration::from_secs(3),
        ..FaultOptions::default()
    })
    .await;
    assert!(matches!(
        twin.services().notifier.send(&message("oi")).await,
        Err(ProviderError::Unknown { .. })
    ));
    assert_eq!(
        twin.sandbox.messages().len(),
        1,
        "unknown: it was in fact delivered"
    );
    let down = Twin::start(FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    })
    .await;
    assert!(matches!(
        down.services().notifier.send(&message("oi")).await,
        Err(ProviderError::Unknown { .. })
    ));
    let mut nowhere = twin.settings.clone();
    nowhere.services.whatsapp.base_url = "http://127.0.0.1:9/whatsapp".into();
    match services_for(&nowhere).notifier.send(&message("oi")).await {
        Err(ProviderError::Transient { why, .. }) => {
            assert!(
                !why.contains("sandbox-instance-token"),
                "no token in errors: {why}"
            );
        }
        other => panic!("expected transient, got {other:?}"),
    }
}

#[tokio::test]
async fn sandbox_binary_serves_orders_from_a_fixtures_file() {
    let dir = std::env::temp_dir().join(format!("rw-fixtures-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("orders.jsonl");
    let lines = [ana(), card_order()]
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&good, format!("# two orders\n{lines}\n")).unwrap();

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(binary())
        .args(["sandbox", "--listen", &listen, "--fixtures"])
        .arg(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    eventually(Duration::from_secs(10), "the sandbox answers", || {
        let health = format!("{url}/_sandbox/healthz");
        async move { reqwest::get(health).await.is_ok() }
    })
    .await;
    let mut settings = test_settings();
    settings.point_providers_at(&url);
    let erp = services_for(&settings).erp;
    let order = erp.order("8421").await.unwrap().unwrap();
    assert_eq!(order.payment.payment_id.as_str(), E2EID);
    assert_eq!(order.invoice.unwrap().number, "4512");
    assert!(erp.order("web-77").await.unwrap().is_some());
    assert_eq!(erp.order("8422").await.unwrap(), None);
    child.kill().await.unwrap();

    let bad = dir.join("bad.jsonl");
    let broken = serde_json::to_string(&ana())
        .unwrap()
        .replace("\"BRL\"", "\"USD\"");
    std::fs::write(&bad, format!("{lines}\n{broken}\n")).unwrap();
    let output = Command::new(binary())
        .args(["sandbox", "--listen", "127.0.0.1:0", "--fixtures"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("currency"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The built-in defaults (`config/default.toml`) name the sandbox's account, so `demo` and a
/// fresh `run --providers-url <sandbox>` authenticate out of the box. The sandbox keeps its
/// own copy of the account and reads no product configuration: this test is where the two
/// are held together.
#[test]
fn default_settings_name_the_sandbox_account() {
    use refund_sandbox::account;
    let settings = Settings::default();
    let (providers, services) = (&settings.providers, &settings.services);
    let pairs = [
        (
            providers.stripe.api_key.expose(),
            account::STRIPE_SECRET_KEY,
        ),
        (
            providers.mercadopago.api_key.expose(),
            account::MERCADOPAGO_ACCESS_TOKEN,
        ),
        (providers.asaas.api_key.expose(), account::ASAAS_API_KEY),
        (providers.pix.api_key.expose(), account::PIX_CLIENT_SECRET),
        (
            providers.pix.client_id.as_deref().unwrap_or(""),
            account::PIX_CLIENT_ID,
        ),
        (providers.rinne.api_key.expose(), account::RINNE_API_KEY),
        (
            providers.rinne.merchant_id.as_deref().unwrap_or(""),
            account::RINNE_MERCHANT_ID,
        ),
        (
            services.erp.app_key.as_deref().unwrap_or(""),
            account::ERP_APP_KEY,
        ),
        (services.erp.api_key.expose(), account::ERP_APP_SECRET),
        (
            services.invoicing.api_key.expose(),
            account::INVOICING_API_KEY,
        ),
        (
            services.whatsapp.instance_id.as_deref().unwrap_or(""),
            account::WHATSAPP_INSTANCE_ID,
        ),
        (
            services
                .whatsapp
                .instance_token
                .as_ref()
                .map_or("", |t| t.expose()),
            account::WHATSAPP_INSTANCE_TOKEN,
        ),
        (
            services.whatsapp.api_key.expose(),
            account::WHATSAPP_CLIENT_TOKEN,
        ),
    ];
    for (product, sandbox) in pairs {
        assert_eq!(product, sandbox);
    }
}
