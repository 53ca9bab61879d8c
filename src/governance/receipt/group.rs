//! One signature per sealed group (receipt format 2): the receipts sealed together are the
//! leaves of a Merkle tree, the root is signed once, and each receipt carries the root, the
//! signature, its position in the group and the sibling hashes from its leaf up to the root.
//! A receipt is therefore verified on its own, as before; sealing signs once per group
//! instead of once per receipt.
//!
//! The tree: a leaf is SHA-256(`0x00` ‖ the receipt's hash bytes), a node is
//! SHA-256(`0x01` ‖ left ‖ right) (the prefixes keep a leaf from passing for a node); at each
//! level an odd last node goes up unchanged, without a sibling in the proof.
//!
//! The signature covers [`SIGNED_LABEL`] ‖ the group's size (4 bytes, big-endian) ‖ the root,
//! not the root alone: with the size fixed, each index has its own path through the tree, so
//! neither the size nor a receipt's index can be rewritten (with a carried-up node, another
//! (index, size) pair would fold the same proof to the same root), and the label keeps a
//! group signature from being taken for any other signature of the same key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest_bytes;
use crate::signing::{KeyPair, PublicKey};

/// The group seal a format-2 receipt carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSeal {
    /// The Merkle root (hex) over the hashes of the receipts sealed together, in seq order.
    pub root: String,
    /// Ed25519 (lowercase hex) over the 32 bytes of `root`.
    pub signature: String,
    /// This receipt's position in its group, from 0.
    pub index: u32,
    /// How many receipts the group sealed.
    pub size: u32,
    /// The sibling hashes (hex) from this receipt's leaf up to the root.
    pub proof: Vec<String>,
}

type Node = [u8; 32];

/// What a group signature is over, before the size and the root.
const SIGNED_LABEL: &[u8] = b"refund-worker/receipt-group/v2\n";

/// The bytes a group's signature covers.
fn signed_message(size: u32, root: &[u8]) -> Vec<u8> {
    [SIGNED_LABEL, &size.to_be_bytes(), root].concat()
}

fn leaf(hash: &Node) -> Node {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(hash)
        .finalize()
        .into()
}

fn node(left: &Node, right: &Node) -> Node {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

fn parse_node(hex_text: &str) -> Option<Node> {
    digest_bytes(hex_text)?.try_into().ok()
}

/// Seals `hashes` (the group's receipt hashes, 64 hex digits each, in seq order) with one
/// signature: the [`GroupSeal`] of each, in the same order. `None` when a hash is not a
/// SHA-256 in hex or the group is empty.
pub(super) fn seal(hashes: &[&str], key: &KeyPair) -> Option<Vec<GroupSeal>> {
    let leaves: Vec<Node> = hashes
        .iter()
        .map(|h| parse_node(h).map(|n| leaf(&n)))
        .collect::<Option<_>>()?;
    let size = u32::try_from(leaves.len()).ok().filter(|n| *n > 0)?;
    let mut levels = vec![leaves];
    while levels.last().is_some_and(|level| level.len() > 1) {
        let below = levels.last()?;
        let above = below
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node(left, right),
                [alone] => *alone,
                _ => unreachable!("chunks of two"),
            })
            .collect();
        levels.push(above);
    }
    let root = levels.last()?.first()?;
    let root_hex = hex::encode(root);
    let signature = key.sign_hex(&signed_message(size, root));
    Some(
        (0..size)
            .map(|index| {
                let mut proof = Vec::new();
                let mut at = index as usize;
                for level in &levels[..levels.len() - 1] {
                    if let Some(sibling) = level.get(at ^ 1) {
                        proof.push(hex::encode(sibling));
                    }
                    at /= 2;
                }
                GroupSeal {
                    root: root_hex.clone(),
                    signature: signature.clone(),
                    index,
                    size,
                    proof,
                }
            })
            .collect(),
    )
}

impl GroupSeal {
    /// Whether `hash` is leaf `index` of a tree of `size` whose root is `root`, by `proof`
    /// (the signature is not checked here).
    pub fn includes(&self, hash: &str) -> bool {
        let (Some(mut at), Some(root)) =
            (parse_node(hash).map(|h| leaf(&h)), parse_node(&self.root))
        else {
            return false;
        };
        if self.index >= self.size || hex::encode(root) != self.root {
            return false;
        }
        let mut proof = self.proof.iter();
        let (mut index, mut width) = (self.index, self.size);
        while width > 1 {
            let sibling_right = index % 2 == 0 && index + 1 < width;
            let sibling_left = index % 2 == 1;
            if sibling_left || sibling_right {
                let Some(sibling) = proof
                    .next()
                    .and_then(|s| parse_node(s).filter(|n| hex::encode(n) == *s))
                else {
                    return false;
                };
                at = if sibling_left {
                    node(&sibling, &at)
                } else {
                    node(&at, &sibling)
                };
            }
            index /= 2;
            width = width.div_ceil(2);
        }
        proof.next().is_none() && at == root
    }

    /// Whether the signature is `key`'s over the size and the root, written as sealing
    /// writes it.
    pub fn root_signed_by(&self, key: &PublicKey) -> bool {
        let lowercase_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        lowercase_hex(&self.signature)
            && lowercase_hex(&self.root)
            && digest_bytes(&self.root).is_some_and(|root| {
                key.verifies(&signed_message(self.size, &root), &self.signature)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyPair {
        KeyPair::from_seed(&crate::config::Secret::new("11".repeat(32)), "test").unwrap()
    }

    fn hashes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| hex::encode(Sha256::digest(format!("receipt {i}"))))
            .collect()
    }

    #[test]
    fn every_receipt_of_every_group_size_proves_its_place_under_one_signature() {
        let key = key();
        for n in 1..=40 {
            let hashes = hashes(n);
            let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
            let seals = seal(&refs, &key).unwrap();
            assert_eq!(seals.len(), n);
            assert!(seals.iter().all(|s| s.root == seals[0].root));
            assert!(seals.iter().all(|s| s.signature == seals[0].signature));
            for (hash, seal) in hashes.iter().zip(&seals) {
                assert!(seal.includes(hash), "n={n} index={}", seal.index);
                assert!(seal.root_signed_by(&key.public()));
                // The proof is as long as the tree is high, at most.
                assert!(seal.proof.len() <= (usize::BITS - n.leading_zeros()) as usize);
            }
        }
    }

    #[test]
    fn a_receipt_does_not_prove_another_place_another_hash_or_another_root() {
        let key = key();
        let hashes = hashes(7);
        let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
        let seals = seal(&refs, &key).unwrap();
        let seal = &seals[2];
        assert!(!seal.includes(&hashes[3]), "another receipt's hash");
        let mut moved = seal.clone();
        moved.index = 3;
        assert!(!moved.includes(&hashes[2]), "another index");
        let mut resized = seal.clone();
        resized.size = 9;
        assert!(!(resized.includes(&hashes[2]) && resized.root_signed_by(&key.public())));
        let mut short = seal.clone();
        short.proof.pop();
        assert!(!short.includes(&hashes[2]), "a shortened proof");
        let mut long = seal.clone();
        long.proof.push("00".repeat(32));
        assert!(!long.includes(&hashes[2]), "a lengthened proof");
        let mut upper = seal.clone();
        upper.proof[0] = upper.proof[0].to_uppercase();
        assert!(!upper.includes(&hashes[2]), "hex case is an edit");
        // A root of the forger's own, signed by the forger.
        let forger =
            KeyPair::from_seed(&crate::config::Secret::new("22".repeat(32)), "test").unwrap();
        let forged = super::seal(&refs, &forger).unwrap();
        assert!(forged[2].includes(&hashes[2]));
        assert!(!forged[2].root_signed_by(&key.public()));
        let mut mixed = seal.clone();
        mixed.signature = forged[2].signature.clone();
        assert!(!mixed.root_signed_by(&key.public()));
    }

    /// With a carried-up node, another (index, size) folds the same proof to the same root;
    /// the signature over the size refuses every such pair.
    #[test]
    fn no_other_index_or_size_passes_for_a_receipts_own() {
        let key = key();
        let public = key.public();
        for n in 1..=12usize {
            let hashes = hashes(n);
            let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
            for (hash, seal) in hashes.iter().zip(seal(&refs, &key).unwrap()) {
                for index in 0..24 {
                    for size in 1..=24 {
                        if (index, size) == (seal.index, seal.size) {
                            continue;
                        }
                        let mut other = seal.clone();
                        (other.index, other.size) = (index, size);
                        assert!(
                            !(other.includes(hash) && other.root_signed_by(&public)),
                            "({}, {}) passed as ({index}, {size})",
                            seal.index,
                            seal.size
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_group_of_one_is_its_own_leaf() {
        let key = key();
        let hashes = hashes(1);
        let seal = &seal(&[hashes[0].as_str()], &key).unwrap()[0];
        assert!(seal.proof.is_empty());
        assert_eq!((seal.index, seal.size), (0, 1));
        assert!(seal.includes(&hashes[0]));
        assert!(seal.root_signed_by(&key.public()));
        assert!(super::seal(&[], &key).is_none());
        assert!(super::seal(&["not hex"], &key).is_none());
    }
}
