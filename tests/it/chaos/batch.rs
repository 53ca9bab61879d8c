//! The batch a chaos test publishes, and what must become of each job.
//!
//! A deterministic mix over all five providers: plain jobs, exact duplicates of earlier ones
//! (some right behind their original, so two workers race for the same key), flaky payments
//! that succeed after in-process retries or after a trip through the retry tiers, refunds whose
//! answer is lost after the provider executed them, pending refunds, declined payments,
//! payments that never stop failing, and invalid messages.

use std::collections::BTreeMap;

use refund_worker::{
    broker::OutgoingJob,
    job::{IdempotencyKey, JobDate, RefundJob},
};
use serde_json::{Value, json};

/// What must become of one published job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Refunded exactly once, by this message or by a copy with the same idempotency key.
    Refund {
        /// The rail, as the sandbox ledger names it.
        provider: String,
        /// The payment (unique per idempotency key in a batch).
        payment_id: String,
        /// Minor units.
        amount: u64,
        /// The job's idempotency key (its record in Redis must say done).
        key: IdempotencyKey,
    },
    /// In the dead-letter queue with this `x-refund-error-class`, never refunded.
    DeadLetter {
        /// The class.
        class: &'static str,
        /// The payment, when the message names one (it must not be in the ledger).
        payment: Option<(String, String)>,
    },
}

/// What kind of trouble a job carries (for the figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Plain,
    Duplicate,
    Flaky,
    SlowFlaky,
    LostAnswer,
    Pending,
    Declined,
    NeverSucceeds,
    Invalid,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            // Fails twice, then succeeds within the first attempt's in-process retries.
            Kind::Flaky => "_flaky2",
            // Fails four times: the first attempt gives up, a retry tier brings it back.
            Kind::SlowFlaky => "_flaky4",
            // Executes, but the answer is lost: the worker must find and adopt the refund.
            Kind::LostAnswer => "_timeout",
            Kind::Pending => "_pending",
            Kind::Declined => "_declined",
            // Outlasts any attempt budget the tests configure: dead-lettered as exhausted.
            Kind::NeverSucceeds => "_flaky99",
            Kind::Plain | Kind::Duplicate | Kind::Invalid => "",
        }
    }
}

/// A published batch and its expectations.
pub struct Batch {
    /// In publishing order.
    pub jobs: Vec<OutgoingJob>,
    /// By job id.
    pub expect: BTreeMap<String, Expect>,
    /// Jobs per kind.
    pub kinds: BTreeMap<Kind, usize>,
}

const PROVIDERS: [&str; 5] = ["stripe", "mercadopago", "asaas", "pix", "rinne"];

/// splitmix64: a fixed, dependency-free sequence, so a batch is the same on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A payment id in the provider's own format, carrying the sandbox's magic suffix.
fn payment_id(provider: &str, n: usize, kind: Kind) -> String {
    let suffix = kind.suffix();
    match provider {
        "stripe" => format!("pi_chaos{n}{suffix}"),
        "mercadopago" => format!("{}{suffix}", 70_000_000 + n),
        "asaas" => format!("pay_chaos{n}{suffix}"),
        "rinne" => format!("tx_chaos{n}{suffix}"),
        // A 32-character end-to-end id; the magic is spelled in capitals at its end.
        "pix" => {
            let magic = suffix.trim_start_matches('_').to_ascii_uppercase();
            let width = 11 - magic.len();
            format!("E99999999202611241200{n:0width$}{magic}")
        }
        other => unreachable!("no provider {other}"),
    }
}

/// An invalid message: each names a field and a rule a person can read in the dead letter.
fn invalid_job(i: usize, date: JobDate) -> Value {
    let date = date.to_string();
    match i % 5 {
        0 => {
            json!({ "payment_id": format!("pi_bad{i}"), "amount": 0, "provider": "stripe", "date": date })
        }
        1 => {
            json!({ "payment_id": format!("pi_bad{i}"), "ammount": 100, "provider": "stripe", "date": date })
        }
        2 => {
            json!({ "payment_id": format!("pi_bad{i}"), "amount": 100, "provider": "paypal", "date": date })
        }
        3 => {
            json!({ "payment_id": format!("pi_bad{i}"), "amount": "12.50", "provider": "stripe", "date": date })
        }
        _ => json!({ "amount": 100, "provider": "stripe", "date": date }),
    }
}

impl Batch {
    /// `size` jobs (at least 20), the mix fixed by `seed`.
    pub fn generate(size: usize, seed: u64) -> Self {
        let size = size.max(20);
        let date = JobDate::today();
        let mut jobs = Vec::with_capacity(size);
        let mut expect = BTreeMap::new();
        let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
        // Bodies that may be duplicated: valid jobs expected to be refunded.
        let mut originals: Vec<(Vec<u8>, Expect)> = Vec::new();
        // One counter per provider and kind keeps every payment id distinct.
        let mut counters: BTreeMap<(&str, Kind), usize> = BTreeMap::new();
        for i in 0..size {
            let roll = mix(seed ^ (i as u64)) % 100;
            let mut kind = match roll {
                0..58 => Kind::Plain,
                58..70 => Kind::Duplicate,
                70..77 => Kind::Flaky,
                77..80 => Kind::SlowFlaky,
                80..84 => Kind::LostAnswer,
                84..87 => Kind::Pending,
                87..93 => Kind::Declined,
                93..95 => Kind::NeverSucceeds,
                _ => Kind::Invalid,
            };
            if kind == Kind::Duplicate && originals.is_empty() {
                kind = Kind::Plain;
            }
            *kinds.entry(kind).or_default() += 1;
            let (body, expected) = match kind {
                Kind::Duplicate => {
                    // Half right behind a recent original, half anywhere earlier.
                    let pick = mix(seed ^ (i as u64) ^ 0xd0d0) as usize;
                    let index = if pick.is_multiple_of(2) {
                        originals.len() - 1 - (pick / 2) % originals.len().min(3)
                    } else {
                        (pick / 2) % originals.len()
                    };
                    originals[index].clone()
                }
                Kind::Invalid => {
                    let body = serde_json::to_vec(&invalid_job(i, date)).unwrap();
                    let expected = Expect::DeadLetter {
                        class: "invalid",
                        payment: None,
                    };
                    (body, expected)
                }
                _ => {
                    let provider = PROVIDERS[i % PROVIDERS.len()];
                    let n = counters.entry((provider, kind)).or_default();
                    *n += 1;
                    let payment = payment_id(provider, *n, kind);
                    let amount = 100 + (mix(seed ^ (i as u64) ^ 0xa11) % 90_000);
                    let value = json!({
                        "payment_id": payment, "amount": amount, "provider": provider,
                        "date": date.to_string(), "metadata": { "chaos_index": i },
                    });
                    let body = serde_json::to_vec(&value).unwrap();
                    let expected = match kind {
                        Kind::Declined => Expect::DeadLetter {
                            class: "permanent",
                            payment: Some((provider.to_owned(), payment)),
                        },
                        Kind::NeverSucceeds => Expect::DeadLetter {
                            class: "exhausted",
                            payment: Some((provider.to_owned(), payment)),
                        },
                        _ => {
                            let job = RefundJob::parse(&body).expect("a valid generated job");
                            let expected = Expect::Refund {
                                provider: provider.to_owned(),
                                payment_id: payment,
                                amount,
                                key: job.idempotency_key(date),
                            };
                            originals.push((body.clone(), expected.clone()));
                            expected
                        }
                    };
                    (body, expected)
                }
            };
            let job = OutgoingJob::new(body);
            expect.insert(job.job_id.clone(), expected);
            jobs.push(job);
        }
        Self {
            jobs,
            expect,
            kinds,
        }
    }

    /// Unique idempotency keys that must be refunded.
    pub fn unique_valid(&self) -> usize {
        let mut payments: Vec<(&str, &str)> = self
            .expect
            .values()
            .filter_map(|e| match e {
                Expect::Refund {
                    provider,
                    payment_id,
                    ..
                } => Some((provider.as_str(), payment_id.as_str())),
                Expect::DeadLetter { .. } => None,
            })
            .collect();
        payments.sort_unstable();
        payments.dedup();
        payments.len()
    }

    /// `kind=count` pairs, for the figures.
    pub fn mix(&self) -> String {
        self.kinds
            .iter()
            .map(|(kind, n)| format!("{}={n}", format!("{kind:?}").to_lowercase()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_the_same_for_a_seed_and_holds_every_kind() {
        let a = Batch::generate(400, 7);
        let b = Batch::generate(400, 7);
        let bodies = |batch: &Batch| {
            batch
                .jobs
                .iter()
                .map(|j| j.body.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(&a), bodies(&b));
        assert_eq!(a.kinds.len(), 9, "{}", a.mix());
        assert!(a.unique_valid() < a.jobs.len());
    }

    #[test]
    fn pix_ids_are_end_to_end_ids_with_their_magic() {
        assert_eq!(
            payment_id("pix", 12, Kind::Declined),
            "E99999999202611241200012DECLINED"
        );
        assert_eq!(payment_id("pix", 7, Kind::Plain).len(), 32);
        assert_eq!(payment_id("pix", 7, Kind::NeverSucceeds).len(), 32);
    }
}
