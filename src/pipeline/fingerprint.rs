//! What the idempotency record remembers of the refund a key was first used for, so that one
//! key always carries one request (SPEC §3a, "one key, one body"): the rail and payment (or
//! the order, for a governed job), the amount, the currency, and a digest of the words that
//! travel to the provider with them (the reason and the description). A job whose fingerprint
//! differs from its key's record is a different refund, or the same refund asked for in other
//! words, that collided with that key: it is never sent (a provider would see one key with two
//! bodies) and never called "already refunded", whether the worker or a replay finds it.

use sha2::{Digest, Sha256};

use crate::job::RefundJob;

/// A job's fingerprint: `<what>|<amount>|<currency>|req:<digest of the provider-bound words>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    text: String,
    /// Where the request digest starts: what came before is the fingerprint workers recorded
    /// before the digest was added.
    legacy_len: usize,
}

impl Fingerprint {
    /// The fingerprint of `job`.
    pub fn of(job: &RefundJob) -> Self {
        let what = match (&job.order_id, job.provider, &job.payment_id) {
            (Some(order), _, _) => format!("order|{order}|{}|{}", job.amount, job.currency),
            (None, Some(provider), Some(payment)) => {
                format!("{provider}|{payment}|{}|{}", job.amount, job.currency)
            }
            // RefundJob::from_object refuses a bulk job without both; named for what it is.
            (None, provider, payment) => format!(
                "unroutable|{}|{}|{}|{}",
                provider.map_or("-".into(), |p| p.to_string()),
                payment.as_ref().map_or("-".into(), |p| p.to_string()),
                job.amount,
                job.currency
            ),
        };
        let mut words = Sha256::new();
        words.update(job.reason.as_str().as_bytes());
        match &job.description {
            Some(description) => {
                words.update(b"\n+");
                words.update(description.as_bytes());
            }
            None => words.update(b"\n-"),
        }
        let legacy_len = what.len();
        let text = format!("{what}|req:{}", hex::encode(&words.finalize()[..8]));
        Self { text, legacy_len }
    }

    /// As recorded.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The fingerprint a worker before the request digest recorded for the same job: a record
    /// it left (a refund done, or a claim in flight during the upgrade) still matches.
    pub fn legacy(&self) -> &str {
        &self.text[..self.legacy_len]
    }

    /// Whether `recorded` names the same money as this job (the same provider and payment, or
    /// order, amount and currency), whatever its words: a record that differs only in reason
    /// or description is most likely this very refund, re-sent with other words.
    pub fn same_money(&self, recorded: &str) -> bool {
        recorded.split("|req:").next() == Some(self.legacy())
    }

    /// Whether `recorded` (a record's fingerprint) is this job's.
    pub fn matches(&self, recorded: &str) -> bool {
        recorded == self.text || recorded == self.legacy()
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> RefundJob {
        RefundJob::parse(json.as_bytes()).expect("a valid job")
    }

    const BASE: &str = r#"{"payment_id":"pi_1","amount":500,"provider":"asaas""#;

    #[test]
    fn the_words_sent_to_the_provider_are_part_of_it() {
        let plain = Fingerprint::of(&job(&format!("{BASE}}}")));
        let reason = Fingerprint::of(&job(&format!(r#"{BASE},"reason":"FRAUD"}}"#)));
        let described = Fingerprint::of(&job(&format!(r#"{BASE},"description":"x"}}"#)));
        let empty = Fingerprint::of(&job(&format!(r#"{BASE},"description":""}}"#)));
        let all = [&plain, &reason, &described, &empty];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
            assert_eq!(a.legacy(), "asaas|pi_1|500|BRL");
            assert!(a.as_str().starts_with("asaas|pi_1|500|BRL|req:"), "{a}");
        }
    }

    #[test]
    fn what_is_not_sent_is_not_part_of_it() {
        let plain = Fingerprint::of(&job(&format!("{BASE}}}")));
        let tagged = Fingerprint::of(&job(&format!(
            r#"{BASE},"metadata":{{"batch":"7"}},"date":"2026-12-04"}}"#
        )));
        assert_eq!(plain, tagged);
    }

    #[test]
    fn a_record_written_before_the_digest_still_matches_its_job() {
        let fp = Fingerprint::of(&job(&format!("{BASE}}}")));
        assert!(fp.matches(fp.as_str()));
        assert!(fp.matches("asaas|pi_1|500|BRL"));
        assert!(!fp.matches("asaas|pi_1|600|BRL"));
        assert!(!fp.matches("asaas|pi_1|500|BRL|req:0000000000000000"));
        let order = Fingerprint::of(&job(
            r#"{"order_id":"8422","amount":600,"agent_id":"a","mandate_id":"m"}"#,
        ));
        assert_eq!(order.legacy(), "order|8422|600|BRL");
    }
}
