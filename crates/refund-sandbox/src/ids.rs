//! The identifiers the sandbox accepts where its callers name things: order and payment ids
//! in ERP fixtures, idempotency keys in Asaas description markers. The rule is the providers'
//! common ground: 1 to 128 (ids) or 255 (keys, Stripe's documented limit) characters of
//! `[A-Za-z0-9_.:-]`.

/// The longest order or payment id.
const MAX_ID: usize = 128;
/// The longest idempotency key (Stripe allows 255 characters).
const MAX_KEY: usize = 255;

/// Checks an order or payment id; the error is the rule it broke.
pub(crate) fn check_id(text: &str) -> Result<(), String> {
    check(text, MAX_ID)
}

/// Checks an idempotency key; the error is the rule it broke.
pub(crate) fn check_key(text: &str) -> Result<(), String> {
    check(text, MAX_KEY)
}

fn check(text: &str, max: usize) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if !text.is_empty() && text.len() <= max && text.chars().all(allowed) {
        return Ok(());
    }
    let mut quoted: String = text.chars().take(40).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    Err(format!(
        "must be 1-{max} characters of [A-Za-z0-9_.:-], got {quoted:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert!(check_id("pi_123:abc-2026.01").is_ok());
        assert!(check_id(&"a".repeat(128)).is_ok());
        assert!(check_id(&"a".repeat(129)).is_err());
        assert!(check_key(&"a".repeat(255)).is_ok());
        assert!(check_key(&"a".repeat(256)).is_err());
        for bad in ["", "a b", "ação", "a/b"] {
            let err = check_id(bad).unwrap_err();
            assert!(err.contains("[A-Za-z0-9_.:-]"), "{err}");
        }
    }
}
