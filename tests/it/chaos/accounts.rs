//! The books of a chaos run: every published job accounted for from what the system itself
//! left behind — the sandbox ledger (refunds executed), the dead-letter queue, the outcome
//! events (one per terminal outcome, published before the job's ack), and the idempotency
//! records in Redis — checked against what the batch says must happen.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use refund_worker::{
    broker::{
        self, Topology,
        events::{EventStatus, OutcomeEvent},
        headers,
    },
    sandbox::LedgerEntry,
    store::IdempotencyStore,
};

use super::batch::{Batch, Expect};

/// A queue bound to the events exchange, declared before anything is published, so that every
/// terminal outcome of the run lands in it (quorum: it survives a broker crash).
pub struct EventTap {
    amqp_url: String,
    queue: String,
    /// Terminal outcomes seen so far, per job id (a redelivered job may end more than once).
    pub seen: HashMap<String, Vec<(EventStatus, Option<String>)>>,
    /// Events read in all.
    pub events: usize,
}

impl EventTap {
    pub async fn declare(amqp_url: &str, topology: &Topology) -> Self {
        let queue = format!("{}.chaos-events", topology.prefix());
        let connection = broker::connect(amqp_url, "chaos event tap").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                topology.events_exchange().into(),
                "refund.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
        Self {
            amqp_url: amqp_url.to_owned(),
            queue,
            seen: HashMap::new(),
            events: 0,
        }
    }

    /// Reads every event waiting in the tap. Tolerates a broker that is away (returns false),
    /// so it can be polled through an outage.
    pub async fn collect(&mut self) -> bool {
        let Ok(connection) = broker::connect(&self.amqp_url, "chaos event tap").await else {
            return false;
        };
        let Ok(channel) = connection.create_channel().await else {
            return false;
        };
        let mut ok = true;
        loop {
            match channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
            {
                Ok(Some(message)) => {
                    let event: OutcomeEvent = serde_json::from_slice(&message.delivery.data)
                        .expect("an outcome event is JSON");
                    self.events += 1;
                    self.seen
                        .entry(event.job_id)
                        .or_default()
                        .push((event.status, event.class));
                }
                Ok(None) => break,
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        let _ = connection.close(200, "collected".into()).await;
        ok
    }

    /// Jobs of the batch with no terminal outcome yet.
    pub fn missing(&self, batch: &Batch) -> usize {
        batch
            .expect
            .keys()
            .filter(|id| !self.seen.contains_key(*id))
            .count()
    }

    pub async fn delete(&self) {
        if let Ok(connection) = broker::connect(&self.amqp_url, "chaos event tap").await {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// One message in the dead-letter queue.
#[derive(Debug)]
pub struct Letter {
    pub job_id: String,
    pub class: String,
    pub error: String,
}

/// Takes every message out of the dead-letter queue, on a connection of its own.
pub async fn drain_dead_letters(amqp_url: &str, topology: &Topology) -> Vec<Letter> {
    let connection = broker::connect(amqp_url, "chaos dlq reader").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(
            topology.dead_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let header = |name: &str| -> Option<String> {
            properties
                .headers()
                .as_ref()?
                .inner()
                .get(name)
                .and_then(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.to_string()),
                    _ => None,
                })
        };
        let job_id = header(headers::JOB_ID)
            .or_else(|| properties.message_id().as_ref().map(|m| m.to_string()))
            .unwrap_or_default();
        // A letter the broker itself dead-lettered (its delivery limit) has no class of ours.
        let class = header(headers::ERROR_CLASS).unwrap_or_else(|| "delivery_limit".into());
        let error = header(headers::ERROR).unwrap_or_default();
        letters.push(Letter {
            job_id,
            class,
            error,
        });
    }
    let _ = connection.close(200, "done".into()).await;
    letters
}

/// Ready messages left in the jobs queue and the retry tiers.
pub async fn messages_left(amqp_url: &str, topology: &Topology) -> u32 {
    let connection = broker::connect(amqp_url, "chaos queue check")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut left = 0;
    for queue in topology.work_queues() {
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap();
        left += declared.message_count();
    }
    let _ = connection.close(200, "done".into()).await;
    left
}

/// The figures of one run, and everything that went wrong in it.
#[derive(Debug, Default)]
pub struct Figures {
    pub published: usize,
    pub unique_valid: usize,
    /// Refunds in the ledger for jobs that must be refunded (one per unique key when right).
    pub refunded: usize,
    /// Jobs that must be refunded and were, by an earlier copy of the same key.
    pub deduplicated: usize,
    /// Jobs in the dead-letter queue as they must be, by class.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Extra copies of a job in the dead-letter queue (at-least-once dead-lettering: a worker
    /// killed between the confirmed dead letter and its ack). Not lost, not refunded.
    pub dead_letter_copies: usize,
    /// Ledger entries beyond the first for a payment, plus any refund of a payment that must
    /// not be refunded.
    pub double_refunds: usize,
    /// Jobs with no outcome: refund missing, no terminal event, or absent from the
    /// dead-letter queue.
    pub lost: usize,
    /// Jobs that ended in the wrong place (refunded job in the dead-letter queue, wrong class,
    /// wrong amount, or a letter nobody published).
    pub misfiled: usize,
    /// Refunds in the ledger whose idempotency record does not say done.
    pub unrecorded: usize,
    /// The first few problems, for the failure message.
    pub problems: Vec<String>,
}

impl Figures {
    fn problem(&mut self, what: String) {
        if self.problems.len() < 20 {
            self.problems.push(what);
        }
    }

    pub fn dead_total(&self) -> usize {
        self.dead_lettered.values().sum()
    }

    /// One line: what a reader of docs/RELIABILITY.md compares between runs.
    pub fn line(&self, test: &str, faults: &str, seconds: f64) -> String {
        let classes = self
            .dead_lettered
            .iter()
            .map(|(class, n)| format!("{class}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "chaos {test}: published={} unique_valid={} refunded={} deduplicated={} dead_lettered={} ({classes}) \
             dlq_extra_copies={} faults[{faults}] double_refunds={} lost={} misfiled={} unrecorded={} took={seconds:.1}s",
            self.published,
            self.unique_valid,
            self.refunded,
            self.deduplicated,
            self.dead_total(),
            self.dead_letter_copies,
            self.double_refunds,
            self.lost,
            self.misfiled,
            self.unrecorded,
        )
    }

    /// Fails the test unless every job is accounted for exactly as it must be.
    pub fn assert_exact(&self, line: &str) {
        let ok = self.double_refunds == 0
            && self.lost == 0
            && self.misfiled == 0
            && self.unrecorded == 0
            && self.published == self.refunded + self.deduplicated + self.dead_total();
        assert!(
            ok,
            "{line}\npublished must equal refunded + deduplicated + dead-lettered, with no double \
             refund and nothing lost; problems:\n  {}",
            self.problems.join("\n  ")
        );
    }
}

/// Balances the books.
pub async fn reconcile(
    batch: &Batch,
    ledger: &[LedgerEntry],
    letters: &[Letter],
    tap: &EventTap,
    store: &IdempotencyStore,
) -> Figures {
    let mut figures = Figures {
        published: batch.jobs.len(),
        unique_valid: batch.unique_valid(),
        ..Figures::default()
    };

    let mut ledger_by_payment: HashMap<(&str, &str), Vec<&LedgerEntry>> = HashMap::new();
    for entry in ledger {
        ledger_by_payment
            .entry((entry.provider.as_str(), entry.payment_id.as_str()))
            .or_default()
            .push(entry);
    }
    let mut letters_by_job: HashMap<&str, Vec<&Letter>> = HashMap::new();
    for letter in letters {
        letters_by_job
            .entry(letter.job_id.as_str())
            .or_default()
            .push(letter);
    }
    for (job_id, copies) in &letters_by_job {
        figures.dead_letter_copies += copies.len() - 1;
        if !batch.expect.contains_key(*job_id) {
            figures.misfiled += copies.len();
            figures.problem(format!("a dead letter nobody published: {job_id}"));
        }
    }

    // Payments that must be refunded: exactly one ledger entry each, of the right amount,
    // and a record in Redis that says done.
    let mut refund_payments: BTreeMap<(&str, &str), (u64, &refund_worker::job::IdempotencyKey)> =
        BTreeMap::new();
    for expect in batch.expect.values() {
        if let Expect::Refund {
            provider,
            payment_id,
            amount,
            key,
        } = expect
        {
            refund_payments.insert((provider.as_str(), payment_id.as_str()), (*amount, key));
        }
    }
    let mut refunded_payments = BTreeSet::new();
    for (payment, (amount, key)) in &refund_payments {
        let Some(entries) = ledger_by_payment.get(payment) else {
            continue;
        };
        refunded_payments.insert(*payment);
        figures.refunded += 1;
        if entries.len() > 1 {
            figures.double_refunds += entries.len() - 1;
            figures.problem(format!(
                "{payment:?} refunded {} times: {entries:?}",
                entries.len()
            ));
        }
        if entries.iter().any(|e| e.amount != *amount) {
            figures.misfiled += 1;
            figures.problem(format!("{payment:?} refunded {entries:?}, asked {amount}"));
        }
        match store.get(key).await {
            Ok(Some(record)) if record.state == "done" => {}
            other => {
                figures.unrecorded += 1;
                figures.problem(format!(
                    "{payment:?} is in the ledger but its record {key} is {other:?}"
                ));
            }
        }
    }
    // Refunds nobody asked for (declined, exhausted, invalid, or unknown payments).
    for (payment, entries) in &ledger_by_payment {
        if !refund_payments.contains_key(payment) {
            figures.double_refunds += entries.len();
            figures.problem(format!(
                "{payment:?} must not be refunded, ledger has {entries:?}"
            ));
        }
    }

    // Every job: in its place, with its terminal outcome.
    let mut success_jobs = 0;
    for (job_id, expect) in &batch.expect {
        let events = tap.seen.get(job_id).map(Vec::as_slice).unwrap_or_default();
        let letters = letters_by_job.get(job_id.as_str());
        match expect {
            Expect::Refund {
                provider,
                payment_id,
                ..
            } => {
                let refunded =
                    refunded_payments.contains(&(provider.as_str(), payment_id.as_str()));
                let ended = events.iter().any(|(status, _)| status.is_success());
                if let Some(letters) = letters {
                    figures.misfiled += 1;
                    figures.problem(format!(
                        "{job_id} ({payment_id}) must be refunded but is in the dead-letter queue: {letters:?}"
                    ));
                } else if !refunded || !ended {
                    figures.lost += 1;
                    figures.problem(format!(
                        "{job_id} ({provider} {payment_id}): refunded={refunded}, events={events:?}"
                    ));
                } else {
                    success_jobs += 1;
                }
            }
            Expect::DeadLetter { class, payment } => {
                let Some(letters) = letters else {
                    figures.lost += 1;
                    figures.problem(format!(
                        "{job_id} ({payment:?}) must be dead-lettered as {class}; events={events:?}"
                    ));
                    continue;
                };
                let evented = events
                    .iter()
                    .any(|(status, c)| !status.is_success() && c.as_deref() == Some(*class));
                let explained = letters.iter().all(|l| !l.error.is_empty());
                if letters.iter().any(|l| l.class != *class) || !evented || !explained {
                    figures.misfiled += 1;
                    figures.problem(format!(
                        "{job_id} ({payment:?}) must be dead-lettered as {class}: {letters:?}, events={events:?}"
                    ));
                } else {
                    *figures
                        .dead_lettered
                        .entry((*class).to_owned())
                        .or_default() += 1;
                }
            }
        }
    }
    figures.deduplicated = success_jobs - figures.refunded.min(success_jobs);
    figures
}
