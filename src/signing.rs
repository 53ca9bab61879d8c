//! Ed25519 keys from configuration, for mandates and receipts: a signing key from a hex seed,
//! its public half for verifiers, and detached signatures as hex.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::config::Secret;

/// A signing key read from configuration.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key.
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(public {})", self.public_hex())
    }
}

/// Why a key from configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {expected}")]
pub struct BadKey {
    /// Which setting.
    pub what: &'static str,
    /// What it must hold.
    pub expected: &'static str,
}

const SEED: &str = "a 32-byte Ed25519 seed in hex (64 hex digits)";
const PUBLIC_KEYS: &str = "a non-empty list of Ed25519 public keys in hex (64 hex digits each)";

impl KeyPair {
    /// From a 64-hex-digit seed.
    pub fn from_seed(seed: &Secret, what: &'static str) -> Result<Self, BadKey> {
        let bytes: [u8; 32] = hex::decode(seed.expose().trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(BadKey {
                what,
                expected: SEED,
            })?;
        Ok(Self {
            signing: SigningKey::from_bytes(&bytes),
        })
    }

    /// Signs `message`; the signature as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The public half as hex, for auditors.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }
}

/// A public key that verifies signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok().map(Self)
    }

    /// Whether `signature_hex` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature_hex: &str) -> bool {
        let Some(bytes) = hex::decode(signature_hex)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        self.0
            .verify(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// As hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
}

/// The public keys a verifier accepts, for rotation: a signature is good if any of them made
/// it. Workers hold only these (`[mandates] verify_keys`), never a signing seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKeys(Vec<PublicKey>);

impl VerifyKeys {
    /// From hex public keys; `what` names the setting in the error.
    pub fn from_hex_list(list: &[String], what: &'static str) -> Result<Self, BadKey> {
        let keys: Option<Vec<PublicKey>> = list.iter().map(|k| PublicKey::from_hex(k)).collect();
        match keys {
            Some(keys) if !keys.is_empty() => Ok(Self(keys)),
            _ => Err(BadKey {
                what,
                expected: PUBLIC_KEYS,
            }),
        }
    }

    /// Whether any of the keys made `signature_hex` over `message`.
    pub fn verifies(&self, message: &[u8], signature_hex: &str) -> bool {
        self.0.iter().any(|k| k.verifies(message, signature_hex))
    }

    /// The keys, as hex.
    pub fn to_hex(&self) -> Vec<String> {
        self.0.iter().map(PublicKey::to_hex).collect()
    }
}

impl From<PublicKey> for VerifyKeys {
    fn from(key: PublicKey) -> Self {
        Self(vec![key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_verify_key_is_the_public_half_of_the_shipped_mandate_seed() {
        let s = crate::config::Settings::default();
        let seed = s.mandates.signing_key().expect("a development seed ships");
        let public = KeyPair::from_seed(seed, "test").unwrap().public_hex();
        assert_eq!(s.mandates.verify_keys, vec![public]);
        let keys = VerifyKeys::from_hex_list(&s.mandates.verify_keys, "test").unwrap();
        assert_eq!(keys.to_hex(), s.mandates.verify_keys);
        assert!(VerifyKeys::from_hex_list(&[], "test").is_err());
        assert!(VerifyKeys::from_hex_list(&["00ff".into()], "test").is_err());
    }

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let key = KeyPair::from_seed(&Secret::new("11".repeat(32)), "test").unwrap();
        let signature = key.sign_hex(b"refund 18600");
        let public = PublicKey::from_hex(&key.public_hex()).unwrap();
        assert!(public.verifies(b"refund 18600", &signature));
        assert!(!public.verifies(b"refund 18601", &signature));
        assert!(!public.verifies(b"refund 18600", &signature.replace('a', "b")));
        let other = KeyPair::from_seed(&Secret::new("22".repeat(32)), "test").unwrap();
        assert!(!other.public().verifies(b"refund 18600", &signature));
    }

    #[test]
    fn seeds_must_be_32_bytes_of_hex() {
        assert!(KeyPair::from_seed(&Secret::new("abc"), "[mandates] signing_key").is_err());
        let err = KeyPair::from_seed(&Secret::new("zz".repeat(32)), "[mandates] signing_key")
            .unwrap_err();
        assert!(err.to_string().contains("[mandates] signing_key"));
    }
}
