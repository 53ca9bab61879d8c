//! Bodies over `[worker] max_body_bytes` are refused without being kept (SPEC §3a): the
//! worker takes the body out of the delivery as soon as it arrives (before the job waits for
//! a concurrency permit), keeps only its size, its SHA-256 and its first bytes, and
//! dead-letters an empty copy whose reason carries them. The broker already holds the
//! original until the ack; nothing downstream copies it again, and the dead-letter queue
//! never fills with megabytes nobody can replay.
//!
//! The worker cannot refuse a body before the client library has read it: what bounds the
//! memory a burst of large messages costs is RabbitMQ's `max_message_size`, which operators
//! set to match (docs/RELIABILITY.md).

use sha2::{Digest, Sha256};

use crate::{
    outcome::{FailureClass, Outcome},
    pipeline::Processed,
};

/// How many bytes of a refused body its reason quotes.
const HEAD_BYTES: usize = 48;

/// What is left of a body that was too large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Discarded {
    /// Its size.
    bytes: usize,
    /// The limit it was over.
    limit: usize,
    /// Its SHA-256, hex, so a publisher can find which message it was.
    sha256: String,
    /// Its first bytes, lossily decoded.
    head: String,
}

impl Discarded {
    /// Takes `body` out (leaving it empty) when it is over `limit`.
    pub(super) fn take(body: &mut Vec<u8>, limit: usize) -> Option<Self> {
        if body.len() <= limit {
            return None;
        }
        let body = std::mem::take(body);
        let head = String::from_utf8_lossy(&body[..HEAD_BYTES.min(body.len())]).into_owned();
        Some(Self {
            bytes: body.len(),
            limit,
            sha256: hex::encode(Sha256::digest(&body)),
            head,
        })
    }

    /// The job's end: an `invalid` dead letter whose reason says what was refused.
    pub(super) fn processed(&self) -> Processed {
        Processed {
            outcome: Outcome::DeadLetter {
                class: FailureClass::Invalid,
                provider: None,
                why: self.reason(),
            },
            date: None,
            job: None,
            existing: None,
        }
    }

    /// Worded like every other invalid job's reason (`field `body`: …`), then what was kept.
    fn reason(&self) -> String {
        format!(
            "field `body`: is too large: {} bytes, the limit is {} bytes; the body was not kept \
             (sha256 {}, it began {:?})",
            self.bytes, self.limit, self.sha256, self.head
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_within_the_limit_is_left_alone() {
        let mut body = vec![b'x'; 100];
        assert_eq!(Discarded::take(&mut body, 100), None);
        assert_eq!(body.len(), 100);
    }

    #[test]
    fn a_body_over_the_limit_is_taken_and_described() {
        let mut body =
            br#"{"payment_id":"pi_big","amount":100,"provider":"stripe","description":""#.to_vec();
        body.resize(1_000, b'y');
        let sha = hex::encode(Sha256::digest(&body));
        let discarded = Discarded::take(&mut body, 999).expect("over the limit");
        assert!(body.is_empty(), "the delivery keeps nothing");
        let Outcome::DeadLetter { class, why, .. } = discarded.processed().outcome else {
            panic!("a dead letter");
        };
        assert_eq!(class, FailureClass::Invalid);
        assert!(
            why.starts_with("field `body`: is too large: 1000 bytes, the limit is 999 bytes"),
            "{why}"
        );
        assert!(why.contains(&sha), "{why}");
        assert!(
            why.contains(r#"it began "{\"payment_id\":\"pi_big\",\"amount\":100,"#),
            "{why}"
        );
    }

    #[test]
    fn a_head_cut_inside_a_character_is_still_text() {
        let mut body = "é".repeat(100).into_bytes();
        let discarded = Discarded::take(&mut body, 10).expect("over the limit");
        // 48 bytes: 24 two-byte characters, no half character.
        assert_eq!(discarded.head, "é".repeat(24));
        let mut odd = vec![b'a'];
        odd.extend("é".repeat(100).bytes());
        let discarded = Discarded::take(&mut odd, 10).expect("over the limit");
        assert!(discarded.head.ends_with('\u{fffd}'), "{}", discarded.head);
    }
}
