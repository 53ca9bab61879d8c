//! The audit log (issue: the ops console): every operator action — from the console or the
//! CLI — as one entry saying who, when, what, the preview shown and the result, hash-chained
//! and signed like the receipts, so an edited, inserted or deleted entry is detected.
//!
//! Pure types and checks; the log lives in Redis (`store::audit`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::receipt::{GENESIS, canonical};
use crate::signing::{KeyPair, PublicKey};

/// What an operator asks to have recorded (the log adds the position, the link and the
/// signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Who: a console operator's name, or the OS user of a CLI run (`ana`, or `ana as ops-bot`
    /// with `--as`).
    pub who: String,
    /// Where from: `console` or `cli`.
    pub via: String,
    /// The action, e.g. `dlq replay`, `dlq purge`, `mandate grant`, `provider pause`.
    pub action: String,
    /// What it was applied to (job ids, a group, a filter, a mandate, a provider).
    pub target: Value,
    /// The preview (dry run) the operator was shown before confirming, if any.
    pub preview: Value,
    /// What happened.
    pub result: Value,
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was appended (RFC 3339).
    pub at: String,
    /// The previous entry's `hash` ([`GENESIS`] for seq 1).
    pub prev_hash: String,
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// SHA-256 (hex) of the canonical JSON of every field above.
    pub hash: String,
    /// Ed25519 (hex) over the 32 bytes of `hash`.
    pub signature: String,
}

impl Entry {
    /// `action` as entry `seq` after `prev_hash`, at `at`, signed with `key`.
    pub fn seal(seq: u64, prev_hash: &str, at: &str, action: Action, key: &KeyPair) -> Self {
        let mut entry = Self {
            seq,
            at: at.to_owned(),
            prev_hash: prev_hash.to_owned(),
            action,
            hash: String::new(),
            signature: String::new(),
        };
        entry.hash = entry.recomputed_hash();
        entry.signature = hex::decode(&entry.hash)
            .map(|bytes| key.sign_hex(&bytes))
            .unwrap_or_default();
        entry
    }

    /// The hash of its fields as they are now.
    pub fn recomputed_hash(&self) -> String {
        let value = json!({
            "seq": self.seq,
            "at": self.at,
            "prev_hash": self.prev_hash,
            "who": self.action.who,
            "via": self.action.via,
            "action": self.action.action,
            "target": self.action.target,
            "preview": self.action.preview,
            "result": self.action.result,
        });
        hex::encode(Sha256::digest(
            format!("refund-worker/audit/v1\n{}", canonical(&value)).as_bytes(),
        ))
    }

    /// The stored text (canonical JSON).
    pub fn to_text(&self) -> String {
        canonical(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// Reads a stored entry.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Entries examined.
    pub checked: u64,
    /// Everything wrong, one line each, by position (0: the log as a whole).
    pub problems: Vec<(u64, String)>,
}

impl AuditReport {
    /// Nothing wrong.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a log given as stored text (position → text) against its recorded head: each entry
/// reads, its hash recomputes, its signature verifies under `key`, it links to the one
/// before, positions run 1..=head without gaps, and the last is the head.
pub fn verify_log(
    stored: &[(u64, String)],
    head: Option<(u64, String)>,
    key: &PublicKey,
) -> AuditReport {
    let mut sorted: Vec<&(u64, String)> = stored.iter().collect();
    sorted.sort_by_key(|(seq, _)| *seq);
    let mut problems = Vec::new();
    let mut prev = GENESIS.to_owned();
    let mut expected = 1u64;
    for (seq, text) in sorted {
        while expected < *seq {
            problems.push((expected, "missing (deleted?)".to_owned()));
            expected += 1;
            prev = String::new();
        }
        expected = seq + 1;
        let entry = match Entry::parse(text) {
            Ok(entry) => entry,
            Err(e) => {
                problems.push((*seq, format!("unreadable: {e}")));
                prev = String::new();
                continue;
            }
        };
        if entry.seq != *seq {
            problems.push((*seq, format!("stored at {seq} but says seq {}", entry.seq)));
        }
        if entry.recomputed_hash() != entry.hash {
            problems.push((*seq, "edited (hash mismatch)".to_owned()));
        } else if !hex::decode(&entry.hash).is_ok_and(|b| key.verifies(&b, &entry.signature)) {
            problems.push((*seq, "signature invalid".to_owned()));
        }
        if !prev.is_empty() && entry.prev_hash != prev {
            problems.push((
                *seq,
                format!("link broken: prev_hash does not match entry {}", seq - 1),
            ));
        }
        prev = entry.hash;
    }
    let last = expected - 1;
    match head {
        Some((seq, hash)) => {
            for missing in (last + 1)..=seq {
                problems.push((missing, "missing (deleted?)".to_owned()));
            }
            if seq == last && !prev.is_empty() && hash != prev {
                problems.push((0, "the head does not match the last entry".to_owned()));
            }
            if seq < last {
                problems.push((0, format!("entries past the head (seq {seq})")));
            }
        }
        None if last > 0 => problems.push((0, "the head is missing".to_owned())),
        None => {}
    }
    AuditReport {
        checked: stored.len() as u64,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key() -> KeyPair {
        KeyPair::from_seed(&Secret::new("55".repeat(32)), "test").unwrap()
    }

    fn action(n: u64) -> Action {
        Action {
            who: "ana".into(),
            via: "cli".into(),
            action: "dlq replay".into(),
            target: json!({ "job_ids": [format!("job-{n}")] }),
            preview: Value::Null,
            result: json!({ "replayed": n }),
        }
    }

    type Stored = Vec<(u64, String)>;

    fn log(n: u64) -> (Stored, Option<(u64, String)>) {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let entry = Entry::seal(seq, &prev, "2026-12-05T00:00:00Z", action(seq), &key());
            prev = entry.hash.clone();
            out.push((seq, entry.to_text()));
        }
        (out, Some((n, prev)))
    }

    #[test]
    fn an_intact_log_verifies_and_every_kind_of_tampering_is_named() {
        let public = key().public();
        let (stored, head) = log(5);
        assert!(verify_log(&stored, head.clone(), &public).is_intact());

        let mut deleted = stored.clone();
        deleted.remove(2);
        let report = verify_log(&deleted, head.clone(), &public);
        assert!(
            report.problems.contains(&(3, "missing (deleted?)".into())),
            "{report:?}"
        );

        let mut last_gone = stored.clone();
        last_gone.pop();
        let report = verify_log(&last_gone, head.clone(), &public);
        assert!(
            report.problems.contains(&(5, "missing (deleted?)".into())),
            "{report:?}"
        );

        let mut edited = stored.clone();
        edited[1].1 = edited[1].1.replace("\"who\":\"ana\"", "\"who\":\"bob\"");
        let report = verify_log(&edited, head.clone(), &public);
        assert!(
            report
                .problems
                .contains(&(2, "edited (hash mismatch)".into())),
            "{report:?}"
        );

        let other = KeyPair::from_seed(&Secret::new("66".repeat(32)), "test").unwrap();
        let report = verify_log(&stored, head, &other.public());
        assert_eq!(report.problems.len(), 5, "{report:?}");
        assert!(
            verify_log(&stored, None, &public)
                .problems
                .contains(&(0, "the head is missing".into()))
        );
    }
}
