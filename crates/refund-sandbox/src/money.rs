//! Money as the providers write it, from their documentation (PROVIDERS.md, "Amount units
//! differ"): the sandbox keeps integer centavos; Stripe and Rinne take integer minor units,
//! Mercado Pago and Asaas a decimal JSON number in reais (`5` is R$ 5,00, `10.50` is
//! R$ 10,50), Pix a decimal string with exactly two decimals (`"7.89"`, pattern
//! `\d{1,10}\.\d{2}` in the BCB API Pix), Omie decimal reais.
//!
//! Written here, not borrowed from the worker, so a bug in the worker's conversions shows up
//! as a disagreement with the sandbox instead of being shared by both. Integer arithmetic
//! only; never `f64`.

/// Centavos in one real.
const CENTAVOS_PER_REAL: u64 = 100;

/// Centavos as reais with exactly two decimals: `18600` is `"186.00"`, `5` is `"0.05"`.
pub fn format_reais(centavos: u64) -> String {
    let reais = centavos / CENTAVOS_PER_REAL;
    let cents = centavos % CENTAVOS_PER_REAL;
    format!("{reais}.{cents:02}")
}

/// Reais written as a plain decimal (`"186"`, `"186.5"`, `"186.50"`) in centavos.
///
/// Strict, as the providers' examples are: digits, then optionally a point and one or two
/// digits. No sign, no exponent, no comma, no spaces, no bare point; `None` on overflow.
pub fn parse_reais(text: &str) -> Option<u64> {
    let (reais, cents) = match text.split_once('.') {
        Some((reais, cents)) if (1..=2).contains(&cents.len()) => (reais, cents),
        Some(_) => return None,
        None => (text, ""),
    };
    if reais.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    for byte in reais.bytes() {
        total = total.checked_mul(10)?.checked_add(digit(byte)?)?;
    }
    let mut fraction = 0;
    let mut scale = CENTAVOS_PER_REAL;
    for byte in cents.bytes() {
        scale /= 10;
        fraction += digit(byte)? * scale;
    }
    total.checked_mul(CENTAVOS_PER_REAL)?.checked_add(fraction)
}

/// Whether `text` is a Pix `valor`: 1 to 10 digits, a point, exactly two digits.
pub fn is_pix_valor(text: &str) -> bool {
    text.split_once('.').is_some_and(|(reais, cents)| {
        (1..=10).contains(&reais.len())
            && cents.len() == 2
            && reais
                .bytes()
                .chain(cents.bytes())
                .all(|b| b.is_ascii_digit())
    })
}

/// The value of an ASCII digit.
fn digit(byte: u8) -> Option<u64> {
    byte.is_ascii_digit().then(|| u64::from(byte - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reais_format_with_two_decimals() {
        // PROVIDERS.md: Pix `valor` "7.89"; a devolução of R$ 186,00 is "186.00".
        assert_eq!(format_reais(789), "7.89");
        assert_eq!(format_reais(18600), "186.00");
        assert_eq!(format_reais(5), "0.05");
        assert_eq!(format_reais(0), "0.00");
        assert_eq!(format_reais(1_000_000_000_000), "10000000000.00");
        assert_eq!(format_reais(u64::MAX), "184467440737095516.15");
    }

    #[test]
    fn reais_parse_as_the_providers_write_them() {
        // Mercado Pago: `{"amount": 5}` is R$ 5,00; Asaas: `{"value": 10.50}`; Pix "7.89".
        assert_eq!(parse_reais("5"), Some(500));
        assert_eq!(parse_reais("10.50"), Some(1050));
        assert_eq!(parse_reais("10.5"), Some(1050));
        assert_eq!(parse_reais("7.89"), Some(789));
        assert_eq!(parse_reais("0.01"), Some(1));
        assert_eq!(parse_reais("186.00"), Some(18600));
        for minor in [1, 99, 100, 18600, 1_000_000_000_000] {
            assert_eq!(parse_reais(&format_reais(minor)), Some(minor));
        }
    }

    #[test]
    fn anything_else_is_not_money() {
        for bad in [
            "",
            ".",
            "1.",
            ".5",
            "-1.00",
            "+1",
            "1e3",
            "1.234",
            "1,00",
            " 1.00",
            "1.00 ",
            "abc",
            "1.-5",
            "1..0",
            "99999999999999999999",
            "184467440737095516.16",
        ] {
            assert_eq!(parse_reais(bad), None, "{bad:?}");
        }
        assert_eq!(parse_reais("184467440737095516.15"), Some(u64::MAX));
    }

    #[test]
    fn pix_valor_is_exactly_two_decimals() {
        for good in ["7.89", "0.01", "1234567890.00"] {
            assert!(is_pix_valor(good), "{good:?}");
        }
        for bad in [
            "7.8",
            "7",
            "7.890",
            ".89",
            "12345678901.00",
            "-7.89",
            "7,89",
            "1e2.00",
        ] {
            assert!(!is_pix_valor(bad), "{bad:?}");
        }
    }
}
