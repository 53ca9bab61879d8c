//! Money as an integer count of minor units, and the only conversions to and from the
//! decimal forms providers use ("186.00", a JSON number in reais). Never touches `f64`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of money in minor units (centavos for BRL), within the job schema's range.
///
/// Once an `Amount` exists it is valid: 1 ..= 1_000_000_000_000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

/// Why a number is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer from 1 to {max} (minor units), got {got}", max = Amount::MAX)]
pub struct AmountOutOfRange {
    /// The rejected value, as the caller saw it.
    pub got: String,
}

impl Amount {
    /// The largest refund one job may ask for (SPEC §2).
    pub const MAX: u64 = 1_000_000_000_000;

    /// Validates a count of minor units.
    pub fn new(minor: u64) -> Result<Self, AmountOutOfRange> {
        if (1..=Self::MAX).contains(&minor) {
            Ok(Self(minor))
        } else {
            Err(AmountOutOfRange {
                got: minor.to_string(),
            })
        }
    }

    /// The amount in minor units.
    pub fn minor(self) -> u64 {
        self.0
    }

    /// Formats with `exponent` decimal places: `18600` with 2 gives `"186.00"`.
    ///
    /// This is how Pix (`valor`), Mercado Pago and Asaas (JSON numbers in reais) want money.
    pub fn to_decimal(self, exponent: u32) -> String {
        format_minor(self.0, exponent)
    }
}

impl TryFrom<u64> for Amount {
    type Error = AmountOutOfRange;
    fn try_from(minor: u64) -> Result<Self, Self::Error> {
        Self::new(minor)
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> u64 {
        amount.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Formats any count of minor units with `exponent` decimal places, by integer arithmetic.
pub fn format_minor(minor: u64, exponent: u32) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exponent as usize
    )
}

/// Money the Brazilian way, by integer formatting: `R$ 1.234,56`; other currencies carry
/// their code (`USD 186,00`, `JPY 1.000`).
pub fn format_money(minor: u64, currency: crate::Currency) -> String {
    let exponent = currency.exponent();
    let plain = format_minor(minor, exponent);
    let (whole, fraction) = plain.split_once('.').unwrap_or((&plain, ""));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push('.');
        }
        grouped.push(digit);
    }
    let symbol = if currency == crate::Currency::BRL {
        "R$"
    } else {
        currency.code()
    };
    if fraction.is_empty() {
        format!("{symbol} {grouped}")
    } else {
        format!("{symbol} {grouped},{fraction}")
    }
}

/// Parses a decimal like `"186.00"`, `"186.5"` or `"186"` into minor units with `exponent`
/// decimal places. Rejects signs, exponents, more decimals than `exponent` and overflow.
pub fn parse_decimal(text: &str, exponent: u32) -> Option<u64> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(frac)) || frac.len() > exponent as usize {
        return None;
    }
    let scale = 10u64.checked_pow(exponent)?;
    let whole: u64 = whole.parse().ok()?;
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(exponent - frac.len() as u32)
    };
    whole.checked_mul(scale)?.checked_add(frac_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_accepts_the_schema_range_and_nothing_else() {
        assert!(Amount::new(0).is_err());
        assert_eq!(Amount::new(1).unwrap().minor(), 1);
        assert_eq!(Amount::new(Amount::MAX).unwrap().minor(), Amount::MAX);
        let err = Amount::new(Amount::MAX + 1).unwrap_err();
        assert!(err.to_string().contains("1000000000001"), "{err}");
    }

    #[test]
    fn decimal_formatting_at_the_edges() {
        let cases = [
            (1, "0.01"),
            (99, "0.99"),
            (100, "1.00"),
            (18600, "186.00"),
            (1_000_000_000_000, "10000000000.00"),
        ];
        for (minor, text) in cases {
            assert_eq!(Amount::new(minor).unwrap().to_decimal(2), text);
            assert_eq!(parse_decimal(text, 2), Some(minor), "{text}");
        }
        assert_eq!(format_minor(5, 0), "5");
        assert_eq!(format_minor(1234, 3), "1.234");
    }

    #[test]
    fn decimal_parsing_rejects_what_is_not_plain_money() {
        for bad in [
            "", ".", "1.", ".5", "-1.00", "+1", "1e3", "1.234", "1,00", " 1.00", "abc",
        ] {
            assert_eq!(parse_decimal(bad, 2), None, "{bad:?}");
        }
        assert_eq!(parse_decimal("7.8", 2), Some(780));
        assert_eq!(parse_decimal("7", 2), Some(700));
        assert_eq!(parse_decimal("99999999999999999999", 2), None);
    }
}
