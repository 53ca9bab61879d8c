//! The books of a chaos run: every published job accounted for from what the system itself
//! left behind — the sandbox ledger (refunds executed), the dead-letter queue, the outcome
//! events (one per terminal outcome, published before the job's ack), and the idempotency
//! records in Redis — checked against what the batch says must happen.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use refund_sandbox::LedgerEntry;
use refund_worker::{
    broker::{
        self, Topology,
        events::{EventStatus, OutcomeEvent},
        headers,
    },
    store::IdempotencyStore,
};

use super::batch::{Batch, Expect};

/// A queue bound to the events exchange, declared before anything is published, so that every
/// terminal outcome of the run lands in it (quorum: it survives a broker crash).
pub struct EventTap {
    /// The broker to read from (a fresh connection each time: it may have been restarted).
    amqp_url: String,
    /// `{prefix}.chaos-events`.
    queue: String,
    /// Terminal outcomes seen so far, per job id (a redelivered job may end more than once).
    pub seen: Events,
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
#[derive(Debug, Clone)]
pub struct Letter {
    /// `x-refund-job-id` (or the message id of a letter the broker dead-lettered itself).
    pub job_id: String,
    /// `x-refund-error-class`.
    pub class: String,
    /// `x-refund-error`: the reason a person reads.
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

/// Terminal outcomes per job id, as the event tap collected them.
pub type Events = HashMap<String, Vec<(EventStatus, Option<String>)>>;

/// Balances the books: [`balance`], then every refunded key's record in Redis must say done.
pub async fn reconcile(
    batch: &Batch,
    ledger: &[LedgerEntry],
    letters: &[Letter],
    events: &Events,
    store: &IdempotencyStore,
) -> Figures {
    let mut figures = balance(batch, ledger, letters, events);
    let refunded: BTreeSet<(&str, &str)> = ledger
        .iter()
        .map(|e| (e.provider.as_str(), e.payment_id.as_str()))
        .collect();
    let mut checked = BTreeSet::new();
    for expect in batch.expect.values() {
        let Expect::Refund {
            provider,
            payment_id,
            key,
            ..
        } = expect
        else {
            continue;
        };
        let payment = (provider.as_str(), payment_id.as_str());
        if !refunded.contains(&payment) || !checked.insert(payment) {
            continue;
        }
        match store.get(key).await {
            Ok(Some(record)) if record.state == refund_worker::store::RecordState::Done => {}
            other => {
                figures.unrecorded += 1;
                figures.problem(format!(
                    "{payment:?} is in the ledger but its record {key} is {other:?}"
                ));
            }
        }
    }
    figures
}

/// The books from the ledger, the dead letters and the events alone.
pub fn balance(
    batch: &Batch,
    ledger: &[LedgerEntry],
    letters: &[Letter],
    events: &Events,
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

    // Payments that must be refunded: exactly one ledger entry each, of the right amount.
    let mut refund_payments: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for expect in batch.expect.values() {
        if let Expect::Refund {
            provider,
            payment_id,
            amount,
            ..
        } = expect
        {
            refund_payments.insert((provider.as_str(), payment_id.as_str()), *amount);
        }
    }
    let mut refunded_payments = BTreeSet::new();
    for (payment, amount) in &refund_payments {
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
        let events = events.get(job_id).map(Vec::as_slice).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The books of a run where everything went right, made up from the batch itself.
    fn perfect(batch: &Batch) -> (Vec<LedgerEntry>, Vec<Letter>, Events) {
        let (mut ledger, mut letters, mut events) = (Vec::new(), Vec::new(), Events::new());
        for (job_id, expect) in &batch.expect {
            match expect {
                Expect::Refund {
                    provider,
                    payment_id,
                    amount,
                    key,
                } => {
                    let status = if ledger
                        .iter()
                        .any(|e: &LedgerEntry| &e.payment_id == payment_id)
                    {
                        EventStatus::Deduplicated
                    } else {
                        ledger.push(LedgerEntry {
                            provider: provider.clone(),
                            payment_id: payment_id.clone(),
                            refund_id: format!("re_{payment_id}"),
                            amount: *amount,
                            idempotency_key: Some(key.to_string()),
                            created_at: "2026-11-24T12:00:00Z".into(),
                        });
                        EventStatus::Succeeded
                    };
                    events.insert(job_id.clone(), vec![(status, None)]);
                }
                Expect::DeadLetter { class, .. } => {
                    letters.push(Letter {
                        job_id: job_id.clone(),
                        class: (*class).to_owned(),
                        error: "a reason".into(),
                    });
                    let status = if *class == "invalid" {
                        EventStatus::DeadLettered
                    } else {
                        EventStatus::Failed
                    };
                    events.insert(job_id.clone(), vec![(status, Some((*class).to_owned()))]);
                }
            }
        }
        (ledger, letters, events)
    }

    fn first_dead(batch: &Batch, wanted: &str) -> (String, Option<(String, String)>) {
        batch
            .expect
            .iter()
            .find_map(|(id, e)| match e {
                Expect::DeadLetter { class, payment } if *class == wanted => {
                    Some((id.clone(), payment.clone()))
                }
                _ => None,
            })
            .expect("the batch has one")
    }

    #[test]
    fn right_books_balance() {
        let batch = Batch::generate(300, 11);
        let (ledger, letters, events) = perfect(&batch);
        let figures = balance(&batch, &ledger, &letters, &events);
        figures.assert_exact("perfect books");
        assert_eq!(figures.refunded, batch.unique_valid());
        assert!(figures.deduplicated > 0 && figures.dead_total() > 0);
    }

    #[test]
    fn the_books_catch_double_refunds_lost_jobs_and_misfiled_letters() {
        let batch = Batch::generate(300, 11);
        let (ledger, letters, events) = perfect(&batch);

        // A payment refunded twice.
        let mut twice = ledger.clone();
        twice.push(ledger[0].clone());
        assert_eq!(balance(&batch, &twice, &letters, &events).double_refunds, 1);

        // A declined payment refunded anyway.
        let (_, payment) = first_dead(&batch, "permanent");
        let (provider, payment_id) = payment.unwrap();
        let mut paid = ledger.clone();
        paid.push(LedgerEntry {
            provider,
            payment_id,
            ..ledger[0].clone()
        });
        assert_eq!(balance(&batch, &paid, &letters, &events).double_refunds, 1);

        // A refund that never happened.
        let short = &ledger[1..];
        assert!(balance(&batch, short, &letters, &events).lost >= 1);

        // A job whose outcome event never came (its message was dropped, not finished).
        let (job_id, _) = batch
            .expect
            .iter()
            .find(|(_, e)| matches!(e, Expect::Refund { .. }))
            .unwrap();
        let mut silent = events.clone();
        silent.remove(job_id);
        assert_eq!(balance(&batch, &ledger, &letters, &silent).lost, 1);

        // A dead letter missing, and one filed under the wrong class.
        let (exhausted, _) = first_dead(&batch, "exhausted");
        let missing: Vec<Letter> = letters
            .iter()
            .filter(|l| l.job_id != exhausted)
            .cloned()
            .collect();
        assert_eq!(balance(&batch, &ledger, &missing, &events).lost, 1);
        let mut wrong = letters.clone();
        for letter in wrong.iter_mut().filter(|l| l.job_id == exhausted) {
            letter.class = "permanent".into();
        }
        assert_eq!(balance(&batch, &ledger, &wrong, &events).misfiled, 1);

        // An extra copy of a dead letter is counted, and is no error.
        let mut copied = letters.clone();
        copied.push(Letter {
            job_id: exhausted,
            class: "exhausted".into(),
            error: "a reason".into(),
        });
        let figures = balance(&batch, &ledger, &copied, &events);
        assert_eq!(figures.dead_letter_copies, 1);
        figures.assert_exact("a copy is not an error");
    }
}
