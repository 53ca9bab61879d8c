//! The rails the sandbox fakes, by the names in its paths (`/stripe`, `/mercadopago`, …),
//! in its ledger and in ERP fixtures (SPEC §9).
//!
//! The sandbox's own list: it names the APIs it imitates, not the worker's types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A provider the sandbox imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Stripe (cards): `POST /v1/refunds`.
    Stripe,
    /// Mercado Pago: `POST /v1/payments/{id}/refunds`.
    Mercadopago,
    /// Asaas: `POST /v3/payments/{id}/refund`.
    Asaas,
    /// A PSP's BCB API Pix: `PUT /pix/{e2eid}/devolucao/{id}`.
    Pix,
    /// Rinne (Celcoin's acquirer).
    Rinne,
}

impl Provider {
    /// Every provider, in path order.
    pub const ALL: [Provider; 5] = [
        Provider::Stripe,
        Provider::Mercadopago,
        Provider::Asaas,
        Provider::Pix,
        Provider::Rinne,
    ];

    /// The provider a name means (`stripe`, `mercadopago`, `asaas`, `pix`, `rinne`); the
    /// error lists them.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let quoted: String = name.chars().take(40).collect();
                let cut = if quoted.len() < name.len() { "…" } else { "" };
                format!(
                    "must be one of stripe, mercadopago, asaas, pix, rinne, got {:?}",
                    format!("{quoted}{cut}")
                )
            })
    }

    /// The name: the path prefix and the ledger's `provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Mercadopago => "mercadopago",
            Provider::Asaas => "asaas",
            Provider::Pix => "pix",
            Provider::Rinne => "rinne",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Ok(provider));
            let json = serde_json::to_string(&provider).unwrap();
            assert_eq!(json, format!("\"{provider}\""));
        }
        let err = Provider::parse("paypal").unwrap_err();
        assert!(
            err.contains("stripe, mercadopago, asaas, pix, rinne"),
            "{err}"
        );
        assert!(Provider::parse("Stripe").is_err());
    }
}
