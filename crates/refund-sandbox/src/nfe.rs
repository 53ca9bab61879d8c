//! NF-e access keys (chave de acesso), from the NF-e Manual de Orientação do Contribuinte:
//! 44 digits, `cUF(2) AAMM(4) CNPJ(14) mod(2) serie(3) nNF(9) tpEmis(1) cNF(8) cDV(1)`.
//! The check digit cDV is modulo 11 over the first 43 digits, weighted 2, 3, …, 9 from the
//! rightmost digit and starting over at 2 after 9; if the remainder of the weighted sum
//! divided by 11 is 0 or 1 the digit is 0, otherwise it is 11 minus the remainder.
//!
//! The sandbox's own implementation: the worker checks keys with its own code, and the two
//! must agree because both follow the manual, not because they share a function.

/// Digits before the check digit.
const BODY_LEN: usize = 43;

/// The check digit of the first 43 digits of an access key; `None` unless `body` is exactly
/// 43 ASCII digits.
pub fn check_digit(body: &str) -> Option<u8> {
    if body.len() != BODY_LEN {
        return None;
    }
    let mut sum = 0u32;
    let mut weight = 2u32;
    for byte in body.bytes().rev() {
        if !byte.is_ascii_digit() {
            return None;
        }
        sum += u32::from(byte - b'0') * weight;
        weight = if weight == 9 { 2 } else { weight + 1 };
    }
    match sum % 11 {
        0 | 1 => Some(0),
        remainder => u8::try_from(11 - remainder).ok(),
    }
}

/// Whether `key` is a whole access key: 44 digits ending in the right check digit.
pub fn is_access_key(key: &str) -> bool {
    match key.as_bytes().split_last() {
        Some((&last, _)) if key.len() == BODY_LEN + 1 && last.is_ascii_digit() => key
            .get(..BODY_LEN)
            .and_then(check_digit)
            .is_some_and(|dv| dv == last - b'0'),
        _ => false,
    }
}

/// An access key for the given 43 digits: the digits followed by their check digit.
pub fn with_check_digit(body: &str) -> Option<String> {
    check_digit(body).map(|dv| format!("{body}{dv}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manual's worked example (MOC, "Cálculo do Dígito Verificador da Chave de
    /// Acesso"): the 43 digits 5206043300991100250655012000000780026730161 give cDV 5, from a
    /// weighted sum of 644 (644 mod 11 = 6, 11 - 6 = 5).
    const MANUAL_BODY: &str = "5206043300991100250655012000000780026730161";

    #[test]
    fn the_manual_example_gives_its_check_digit() {
        assert_eq!(check_digit(MANUAL_BODY), Some(5));
        assert!(is_access_key(&format!("{MANUAL_BODY}5")));
        assert!(!is_access_key(&format!("{MANUAL_BODY}4")));
    }

    #[test]
    fn hand_computed_keys() {
        // 42 zeros and a 1: sum 1 * 2 = 2, remainder 2, digit 9.
        assert_eq!(check_digit(&format!("{}1", "0".repeat(42))), Some(9));
        // All zeros: remainder 0, digit 0.
        assert_eq!(check_digit(&"0".repeat(43)), Some(0));
        // 42 zeros and a 5: sum 10, remainder 10, digit 1.
        assert_eq!(check_digit(&format!("{}5", "0".repeat(42))), Some(1));
        // A 1 ninth from the right has weight 2 again (after 9): same digit as the 1 at the end.
        assert_eq!(
            check_digit(&format!("{}1{}", "0".repeat(34), "0".repeat(8))),
            Some(9)
        );
        // 6 at the end: sum 12, remainder 1, digit 0.
        assert_eq!(check_digit(&format!("{}6", "0".repeat(42))), Some(0));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(check_digit(&MANUAL_BODY[..42]), None);
        assert_eq!(check_digit(&format!("{MANUAL_BODY}5")), None);
        assert_eq!(check_digit(&MANUAL_BODY.replace('3', "x")), None);
        assert!(!is_access_key(MANUAL_BODY));
        assert!(!is_access_key(&format!("{MANUAL_BODY}50")));
        assert!(!is_access_key(&format!("{MANUAL_BODY}x")));
        assert!(!is_access_key(&format!(
            "{}5",
            MANUAL_BODY.replace('3', "é")
        )));
        assert_eq!(
            with_check_digit(MANUAL_BODY).as_deref(),
            Some("52060433009911002506550120000007800267301615")
        );
    }
}
