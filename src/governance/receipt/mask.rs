//! Masked destinations: a receipt says where the money went well enough for a person to
//! recognise it, never well enough to reuse it. Each mask keeps at most a few characters and
//! never the whole key, whatever the input looks like.

/// Masks a Pix key by its type: email `a***@example.com`, phone `+55********0000`, CPF
/// `***.456.789-**`, CNPJ `**.345.678/0001-**`, random key (EVP) `123e****4000`; anything
/// else keeps at most its first and last four characters, and a short one nothing.
pub fn mask_pix_key(key: &str) -> String {
    let key = key.trim();
    if let Some((local, domain)) = key.rsplit_once('@')
        && !local.is_empty()
        && !domain.is_empty()
    {
        return mask_email(local, domain);
    }
    let digits: String = key.chars().filter(char::is_ascii_digit).collect();
    let only = |allowed: &str| {
        key.chars()
            .all(|c| c.is_ascii_digit() || allowed.contains(c))
    };
    if key.starts_with('+') && only("+ -()") {
        return mask_phone(&digits);
    }
    if digits.len() == 11 && only(".-") {
        return format!("***.{}.{}-**", &digits[3..6], &digits[6..9]);
    }
    if digits.len() == 14 && only("./-") {
        return format!(
            "**.{}.{}/{}-**",
            &digits[2..5],
            &digits[5..8],
            &digits[8..12]
        );
    }
    mask_opaque(key)
}

/// Masks a card by its last four digits: `**** **** **** 4242`. Given more (a whole card
/// number by mistake), it still keeps only the last four.
pub fn mask_card(last4: &str) -> String {
    let digits: Vec<char> = last4.chars().filter(char::is_ascii_digit).collect();
    let kept: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("**** **** **** {kept:*>4}")
}

/// The first character of the local part (none when that is all of it), then the domain.
fn mask_email(local: &str, domain: &str) -> String {
    let mut chars = local.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(_)) => format!("{first}***@{domain}"),
        _ => format!("***@{domain}"),
    }
}

/// The country code and the last four digits, when that leaves at least four hidden.
fn mask_phone(digits: &str) -> String {
    if digits.len() >= 10 {
        format!("+{}********{}", &digits[..2], &digits[digits.len() - 4..])
    } else {
        "+********".into()
    }
}

/// First and last four characters of a long opaque key (a random Pix key is 36).
fn mask_opaque(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 16 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}****{tail}")
    } else {
        "****".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revealed(text: &str) -> usize {
        text.chars().filter(|c| c.is_alphanumeric()).count()
    }

    #[test]
    fn masks_say_what_kind_of_key_it_was() {
        assert_eq!(mask_pix_key("ana.silva@example.com"), "a***@example.com");
        assert_eq!(mask_pix_key("+5511999990000"), "+55********0000");
        assert_eq!(mask_pix_key("+55 (11) 99999-0000"), "+55********0000");
        assert_eq!(mask_pix_key("123.456.789-09"), "***.456.789-**");
        assert_eq!(mask_pix_key("12345678909"), "***.456.789-**");
        assert_eq!(mask_pix_key("12.345.678/0001-90"), "**.345.678/0001-**");
        assert_eq!(mask_pix_key("12345678000190"), "**.345.678/0001-**");
        assert_eq!(
            mask_pix_key("123e4567-e89b-12d3-a456-426614174000"),
            "123e****4000"
        );
        assert_eq!(mask_card("4242"), "**** **** **** 4242");
    }

    #[test]
    fn masking_never_reveals_the_full_key() {
        let keys = [
            "ana.silva@example.com",
            "ab@x.io",
            "a@x.io",
            "@example.com",
            "ana@",
            "+5511999990000",
            "+55 11 99999 0000",
            "+551234",
            "+5",
            "123.456.789-09",
            "12345678909",
            "12.345.678/0001-90",
            "12345678000190",
            "123e4567-e89b-12d3-a456-426614174000",
            "123e4567e89b12d3a456426614174000",
            "0123456789abcdef",
            "short-key",
            "çãõ-chave-aleatória-com-acentos",
            "x",
            "1234",
        ];
        for key in keys {
            let masked = mask_pix_key(key);
            assert!(!masked.contains(key), "{key:?} → {masked:?}");
            assert!(
                revealed(&masked) < revealed(key) || revealed(key) == 0,
                "{key:?} → {masked:?} shows every character"
            );
        }
    }

    #[test]
    fn a_card_mask_keeps_at_most_four_digits() {
        assert_eq!(mask_card("4242424242424242"), "**** **** **** 4242");
        assert_eq!(mask_card("42"), "**** **** **** **42");
        assert_eq!(mask_card(""), "**** **** **** ****");
        assert_eq!(revealed(&mask_card("5555 4444 3333 1111")), 4);
    }
}
