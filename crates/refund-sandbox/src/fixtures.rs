//! ERP fixtures (SPEC §9): orders with their original payment, as JSON Lines, for the Omie
//! twin; and generated orders for the demo.
//!
//! ```json
//! {"order_id":"8421","total":18600,"currency":"BRL",
//!  "payment":{"provider":"pix","payment_id":"E…","amount":18600,"pix_key":"payer@example.com"},
//!  "customer":{"name":"Ana","phone":"+5511999990000"},
//!  "settled":true,"invoice":{"number":"4512","access_key":"3526…"}}
//! ```
//! `settled` defaults to true; `invoice` is optional; amounts are minor units. A fixture is
//! checked when it is read, so a bad file is refused with its line number instead of
//! failing later as an odd ERP answer.

use std::collections::HashMap;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::{
    ids::check_id,
    nfe::{self, is_access_key},
    provider::Provider,
};

/// One ERP order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureOrder {
    /// The id jobs name (`order_id`).
    pub order_id: String,
    /// The order's total, minor units.
    pub total: u64,
    /// ISO 4217; Omie keeps reais only, so `BRL`.
    #[serde(default = "brl")]
    pub currency: String,
    /// The payment the order was paid with.
    pub payment: FixturePayment,
    /// Who bought.
    pub customer: FixtureCustomer,
    /// Whether the payment settled.
    #[serde(default = "yes")]
    pub settled: bool,
    /// The order's NF-e, if it was invoiced.
    #[serde(default)]
    pub invoice: Option<FixtureInvoice>,
}

/// An order's original payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixturePayment {
    /// The rail.
    pub provider: Provider,
    /// The provider's payment id (a Pix e2eid is 32 alphanumerics).
    pub payment_id: String,
    /// What settled, minor units; the provider twin is seeded with it.
    pub amount: u64,
    /// Pix: the payer's key.
    #[serde(default)]
    pub pix_key: Option<String>,
    /// Cards: the last four digits.
    #[serde(default)]
    pub card_last4: Option<String>,
}

/// The buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureCustomer {
    /// Name.
    pub name: String,
    /// E.164 phone.
    #[serde(default)]
    pub phone: Option<String>,
}

/// An NF-e.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureInvoice {
    /// Its number (nNF).
    pub number: String,
    /// Its 44-digit access key.
    #[serde(default)]
    pub access_key: Option<String>,
}

fn brl() -> String {
    "BRL".into()
}

fn yes() -> bool {
    true
}

impl FixtureOrder {
    /// Checks what the twins and the worker rely on; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        check_id(&self.order_id).map_err(|rule| format!("order_id {rule}"))?;
        if self.total == 0 {
            return Err("total must be at least 1 (minor units)".into());
        }
        if self.currency != "BRL" {
            return Err(format!(
                "currency must be BRL (Omie keeps orders in reais), got {:?}",
                self.currency
            ));
        }
        let payment = &self.payment;
        check_id(&payment.payment_id).map_err(|rule| format!("payment.payment_id {rule}"))?;
        if payment.provider == Provider::Pix
            && !(payment.payment_id.len() == 32
                && payment
                    .payment_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(
                "payment.payment_id of a Pix payment must be an e2eid: 32 letters and digits"
                    .into(),
            );
        }
        if payment.amount == 0 {
            return Err("payment.amount must be at least 1 (minor units)".into());
        }
        if payment
            .card_last4
            .as_deref()
            .is_some_and(|d| d.len() != 4 || !d.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err("payment.card_last4 must be 4 digits".into());
        }
        if payment.pix_key.is_some() && payment.card_last4.is_some() {
            return Err(
                "payment has both a pix_key and a card_last4; a payment has one rail".into(),
            );
        }
        if self.customer.name.trim().is_empty() {
            return Err("customer.name is required".into());
        }
        if let Some(phone) = &self.customer.phone {
            let digits = phone.strip_prefix('+').unwrap_or("");
            if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "customer.phone must be E.164 like +5511999990000, got {phone:?}"
                ));
            }
        }
        if let Some(invoice) = &self.invoice {
            if invoice.number.is_empty()
                || invoice.number.len() > 9
                || !invoice.number.bytes().all(|b| b.is_ascii_digit())
            {
                return Err("invoice.number must be 1-9 digits (nNF)".into());
            }
            if let Some(key) = &invoice.access_key
                && !is_access_key(key)
            {
                return Err(format!(
                    "invoice.access_key must be 44 digits with a valid check digit, got {key:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Reads a fixtures file: JSON Lines, blank lines and `#` comments skipped. Every order is
/// checked, and an order id may appear once; errors name the line.
pub fn parse_fixtures(text: &str) -> Result<Vec<FixtureOrder>, String> {
    let mut orders = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let order: FixtureOrder =
            serde_json::from_str(line).map_err(|e| format!("line {number}: {e}"))?;
        order.check().map_err(|e| format!("line {number}: {e}"))?;
        if let Some(first) = seen.insert(order.order_id.clone(), number) {
            return Err(format!(
                "line {number}: order {} is already defined on line {first}",
                order.order_id
            ));
        }
        orders.push(order);
    }
    Ok(orders)
}

/// The sandbox issuer's CNPJ (check digits valid), in generated access keys.
pub(crate) const SANDBOX_CNPJ: &str = "11222333000181";

/// An NF-e access key: cUF 35 (SP), `yymm`, the sandbox CNPJ, model 55, `serie`, `number`,
/// tpEmis 1, a numeric code from the number, and the check digit.
pub(crate) fn access_key(yymm: &str, serie: u32, number: u64) -> String {
    let first_43 = format!(
        "35{yymm:0>4}{SANDBOX_CNPJ}55{serie:03}{number:09}1{code:08}",
        code = (number * 7919 + 13) % 100_000_000
    );
    nfe::with_check_digit(&first_43).expect("43 digits: every part above is zero-padded digits")
}

const NAMES: &[&str] = &[
    "Ana Souza",
    "Bruno Lima",
    "Carla Dias",
    "Diego Alves",
    "Elisa Rocha",
    "Fábio Nunes",
    "Gabriela Melo",
    "Heitor Costa",
];

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_text(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// `n` plausible orders for the demo, the same for the same `seed`: numeric order ids from
/// 100001, two Pix payments (valid e2eids) for every card payment on Stripe, R$ 10 to
/// R$ 900, each settled and invoiced. Ids carry no sandbox magic suffix.
pub fn generated_orders(n: usize, seed: u64) -> Vec<FixtureOrder> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let order_id = (100_001 + i).to_string();
            let amount = rng.random_range(10..=900u64) * 100 + rng.random_range(0..100u64);
            let name = NAMES[rng.random_range(0..NAMES.len())];
            let phone = format!("+55119{:08}", rng.random_range(0..100_000_000u64));
            let payment = if i % 3 == 2 {
                FixturePayment {
                    provider: Provider::Stripe,
                    payment_id: format!("ch_{}", random_text(&mut rng, ALNUM, 24)),
                    amount,
                    pix_key: None,
                    card_last4: Some(format!("{:04}", rng.random_range(0..10_000u32))),
                }
            } else {
                // E + ISPB (8) + yyyyMMddHHmm (12) + 11 digits: 32 alphanumerics, and only
                // digits at the end, so no `…PENDING`-style magic by accident.
                let e2eid = format!(
                    "E{:08}202611{:02}{:02}{:02}{:011}",
                    rng.random_range(0..100_000_000u64),
                    rng.random_range(1..=28u32),
                    rng.random_range(0..24u32),
                    rng.random_range(0..60u32),
                    rng.random_range(0..100_000_000_000u64)
                );
                FixturePayment {
                    provider: Provider::Pix,
                    payment_id: e2eid,
                    amount,
                    pix_key: Some(format!(
                        "{}@example.com",
                        name.split(' ').next().unwrap_or("cliente").to_lowercase()
                    )),
                    card_last4: None,
                }
            };
            let number = 4_000 + i as u64;
            FixtureOrder {
                order_id,
                total: amount,
                currency: brl(),
                payment,
                customer: FixtureCustomer {
                    name: name.to_owned(),
                    phone: Some(phone),
                },
                settled: true,
                invoice: Some(FixtureInvoice {
                    number: number.to_string(),
                    access_key: Some(access_key("2611", 1, number)),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANA: &str = r#"{"order_id":"8421","total":18600,"currency":"BRL","payment":{"provider":"pix","payment_id":"E12345678202611241200abcdefghijk","amount":18600,"pix_key":"payer@example.com"},"customer":{"name":"Ana","phone":"+5511999990000"}}"#;

    #[test]
    fn the_spec_fixture_reads_with_its_defaults() {
        let orders = parse_fixtures(&format!("# orders\n\n{ANA}\n")).unwrap();
        assert_eq!(orders.len(), 1);
        assert!(orders[0].settled);
        assert_eq!(orders[0].invoice, None);
        assert_eq!(orders[0].payment.provider, Provider::Pix);
    }

    #[test]
    fn bad_fixtures_are_refused_with_their_line() {
        let cases = [
            (ANA.replace("18600,\"currency", "0,\"currency"), "total"),
            (ANA.replace("\"BRL\"", "\"USD\""), "currency"),
            (ANA.replace("abcdefghijk", "abc"), "e2eid"),
            (
                ANA.replace("+5511999990000", "11999990000"),
                "customer.phone",
            ),
            (ANA.replace("\"total\"", "\"totl\""), "unknown field"),
            (
                ANA.replace(
                    "}}",
                    "},\"invoice\":{\"number\":\"1\",\"access_key\":\"123\"}}",
                ),
                "access_key",
            ),
        ];
        for (line, what) in cases {
            let err = parse_fixtures(&format!("{ANA}\n{line}"))
                .map(|_| ())
                .unwrap_err();
            assert!(
                err.starts_with("line 2: ") && err.contains(what),
                "{what}: {err}"
            );
        }
        let twice = parse_fixtures(&format!("{ANA}\n{ANA}")).unwrap_err();
        assert!(twice.contains("already defined on line 1"), "{twice}");
    }

    #[test]
    fn generated_orders_are_valid_repeatable_and_mixed() {
        let orders = generated_orders(30, 7);
        assert_eq!(orders, generated_orders(30, 7));
        assert_ne!(orders, generated_orders(30, 8));
        for order in &orders {
            order
                .check()
                .unwrap_or_else(|e| panic!("{}: {e}", order.order_id));
            assert_eq!(
                crate::Magic::of(&order.payment.payment_id),
                crate::Magic::Plain
            );
        }
        let pix = orders
            .iter()
            .filter(|o| o.payment.provider == Provider::Pix)
            .count();
        assert_eq!(pix, 20);
        assert_eq!(orders.len() - pix, 10, "card payments on stripe");
    }

    #[test]
    fn generated_access_keys_are_valid() {
        let key = access_key("2611", 1, 4512);
        assert_eq!(key.len(), 44);
        assert!(is_access_key(&key), "{key}");
    }
}
