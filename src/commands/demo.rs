//! `refund-worker demo`: the whole loop on localhost in one command. Starts the sandbox
//! in-process, publishes a sample batch under a fresh prefix (duplicates, invalid jobs and a
//! few flaky payments included), processes it with a progress bar, prints a summary and
//! checks that the sandbox ledger, the successes and the unique valid jobs agree.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use refund_sandbox::{FaultOptions, FixtureOrder, Sandbox, generated_orders};

use super::{CommandError, Context, runtime, scratch_world};
use crate::{
    app,
    broker::{self, OutgoingJob, Publisher},
    cli::DemoArgs,
    ending::Fate,
    governance::mandate::{Mandate, Terms, rfc3339},
    job::{Currency, JobDate, ProviderName, Token},
    outcome::FailureClass,
    services::whatsapp::format_money,
    signing::KeyPair,
    store::{MandateStore, ReceiptChain},
    worker::JobReport,
};

/// The sample batch: what was published, and what the demo expects.
#[derive(Debug)]
pub struct Batch {
    /// Bodies in publish order.
    pub jobs: Vec<OutgoingJob>,
    /// Distinct valid refunds in it.
    pub unique_valid: usize,
    /// Exact copies of valid jobs.
    pub duplicates: usize,
    /// Jobs that must be dead-lettered as invalid.
    pub invalid: usize,
}

/// Builds the sample batch: `unique` valid Stripe refunds (a few on flaky payments, to show
/// retries), one duplicate per 13 of them, and ten invalid jobs of different kinds.
pub fn sample_batch(unique: usize, today: JobDate) -> Batch {
    let reasons = ["CUSTOMER_REQUEST", "DUPLICATE", "FRAUD", "CUSTOMER_REQUEST"];
    let valid: Vec<Vec<u8>> = (0..unique)
        .map(|i| {
            let suffix = match i {
                i if i % 40 == 7 => "_flaky2",
                i if i % 25 == 3 => "_flaky1",
                _ => "",
            };
            let body = json!({
                "payment_id": format!("pi_demo_{i:05}{suffix}"),
                "amount": 500 + (i as u64 * 7919) % 49_500,
                "provider": "stripe",
                "reason": reasons[i % reasons.len()],
                "description": format!("demo refund {i}"),
                "date": today.to_string(),
                "metadata": { "ticket": format!("T-{}", 10_000 + i) },
            });
            serde_json::to_vec(&body).expect("JSON values serialize")
        })
        .collect();
    let duplicates: Vec<Vec<u8>> = valid.iter().step_by(13).cloned().collect();
    let invalid: Vec<Vec<u8>> = [
        r#"{"payment_id":"pi_bad_1","amount":0,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_bad_2","amount":12.5,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_bad_3","ammount":1000,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_bad_4","amount":1000}"#,
        r#"{"payment_id":"pi_bad_5","amount":"1000","provider":"stripe"}"#,
        r#"{"payment_id":"pi_bad_6","amount":1000,"provider":"paypal"}"#,
        r#"{"payment_id":"pi_bad_7","amount":1000,"provider":"stripe","currency":"REAIS"}"#,
        r#"{"payment_id":"pi bad 8","amount":1000,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_bad_9","amount":1000,"provider":"stripe","date":"2026-13-40"}"#,
        r#"{"payment_id":"pi_bad_10","amount":1000,"provider":"stripe""#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let counts = (valid.len(), duplicates.len(), invalid.len());
    let mut jobs: Vec<OutgoingJob> = valid
        .into_iter()
        .chain(duplicates)
        .chain(invalid)
        .map(OutgoingJob::new)
        .collect();
    jobs.shuffle(&mut StdRng::seed_from_u64(7));
    Batch {
        jobs,
        unique_valid: counts.0,
        duplicates: counts.1,
        invalid: counts.2,
    }
}

/// The demo's support agent and its mandate.
const AGENT: &str = "support-bot";
const MANDATE: &str = "cm_demo";
/// The mandate's per-refund cap (R$ 1.000,00) and daily budget (R$ 100.000,00).
const CAP: u64 = 100_000;
const DAILY: u64 = 10_000_000;

/// The governed part of the demo: jobs naming ERP orders, all within the mandate but one.
#[derive(Debug)]
pub struct GovernedBatch {
    /// The ERP orders the sandbox serves.
    pub orders: Vec<FixtureOrder>,
    /// The jobs, one per order.
    pub jobs: Vec<OutgoingJob>,
    /// Jobs expected to refund.
    pub within_mandate: usize,
    /// Jobs over the mandate's cap, expected to be stopped.
    pub over_cap: usize,
}

/// `n` generated orders refunded in full under the demo mandate, and one more order whose
/// refund asks for more than the mandate's cap.
pub fn governed_batch(n: usize, today: JobDate) -> GovernedBatch {
    let mut orders = generated_orders(n, 11);
    let mut big = generated_orders(1, 12).remove(0);
    big.order_id = "900001".into();
    big.total = 150_000;
    big.payment.amount = 150_000;
    orders.push(big);
    let jobs = orders
        .iter()
        .map(|order| {
            let amount = if order.order_id == "900001" {
                120_000
            } else {
                order.payment.amount
            };
            let body = json!({
                "order_id": order.order_id,
                "amount": amount,
                "agent_id": AGENT,
                "mandate_id": MANDATE,
                "reason": "CUSTOMER_REQUEST",
                "description": format!("complaint about order #{}", order.order_id),
                "date": today.to_string(),
            });
            OutgoingJob::new(serde_json::to_vec(&body).expect("JSON values serialize"))
        })
        .collect();
    GovernedBatch {
        orders,
        jobs,
        within_mandate: n,
        over_cap: 1,
    }
}

/// Tallies of the reports.
#[derive(Debug, Default)]
struct Tally {
    succeeded: usize,
    governed: usize,
    deduplicated: usize,
    retried: usize,
    dead_lettered: BTreeMap<&'static str, usize>,
}

impl Tally {
    /// Counts one report; true when it is the job's final outcome.
    fn count(&mut self, report: &JobReport, governed: &HashSet<String>) -> bool {
        match &report.end.fate {
            Fate::Refunded { .. } => {
                self.succeeded += 1;
                self.governed += usize::from(governed.contains(&report.job_id));
            }
            Fate::Duplicate { .. } => self.deduplicated += 1,
            Fate::DeadLetter { class, .. } => {
                *self.dead_lettered.entry(class.as_str()).or_default() += 1
            }
            Fate::Retry { counted: true, .. } => {
                self.retried += 1;
                return false;
            }
            Fate::Retry { counted: false, .. } | Fate::Pending { .. } | Fate::HandBack { .. } => {
                return false;
            }
        }
        true
    }

    fn dead_lettered_total(&self) -> usize {
        self.dead_lettered.values().sum()
    }

    fn class(&self, class: FailureClass) -> usize {
        self.dead_lettered.get(class.as_str()).copied().unwrap_or(0)
    }
}

/// Runs the demo.
pub async fn run(ctx: &Context, args: DemoArgs) -> Result<(), CommandError> {
    let (connections, connection, redis) = scratch_world(ctx, "demo").await?;
    let prefix = connections.prefix.clone();

    let sandbox = Sandbox::new(FaultOptions {
        latency: Duration::from_millis(args.latency_ms),
        jitter: Duration::from_millis(args.latency_ms / 2),
        ..FaultOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(runtime)?;
    let sandbox_url = format!("http://{}", listener.local_addr().map_err(runtime)?);
    let stop_sandbox = CancellationToken::new();
    tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

    let mut settings = ctx.settings.clone();
    settings.point_providers_at(&sandbox_url);
    settings.retry.delays = vec![Duration::from_secs(1), Duration::from_secs(2)];
    let today = JobDate::today();

    // The governed part: ERP orders, and the support agent's signed mandate.
    let governed = governed_batch(args.governed as usize, today);
    sandbox.load_orders(governed.orders.clone());
    let seed = settings.mandates.signing_key().ok_or_else(|| {
        CommandError::Usage(
            "the demo grants its own mandate: it needs [mandates] signing_key (the development one in config/default.toml)".into(),
        )
    })?;
    let mandate_key = KeyPair::from_seed(seed, "[mandates] signing_key")
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    // The demo publishes as the broker user of its AMQP URL; in production each agent
    // publishes as its own user (docs/MANDATES.md), named with `mandate grant --publisher`.
    let demo_user = broker::url_user(&connections.amqp_url);
    let terms = Terms {
        id: Token::parse(MANDATE).expect("a valid id"),
        agent_id: Token::parse(AGENT).expect("a valid id"),
        max_per_refund: CAP,
        max_per_day: DAILY,
        currency: Currency::BRL,
        expires_at: None,
        publishers: vec![demo_user.clone()],
    };
    let mandate = Mandate::granted(
        terms,
        1,
        &rfc3339(time::OffsetDateTime::now_utc()),
        &mandate_key,
    );
    MandateStore::new(redis.clone(), &prefix)
        .grant(&mandate)
        .await
        .map_err(runtime)?;

    let batch = sample_batch(args.jobs as usize, today);
    let governed_ids: HashSet<String> = governed.jobs.iter().map(|j| j.job_id.clone()).collect();
    let mut jobs: Vec<OutgoingJob> = batch.jobs.iter().chain(&governed.jobs).cloned().collect();
    jobs.shuffle(&mut StdRng::seed_from_u64(8));
    println!("refund-worker demo: sandbox at {sandbox_url}, queues and keys under prefix {prefix}");

    let publisher = Publisher::open_as(&connection, &demo_user)
        .await
        .map_err(runtime)?;
    let topology = connections.topology(&settings);
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;
    let results = broker::publish_jobs(&publisher, &topology, &jobs, None, |_| {}).await;
    let unconfirmed = results.iter().filter(|r| r.is_err()).count();
    if unconfirmed > 0 {
        return Err(CommandError::Runtime(format!(
            "{unconfirmed} demo job(s) were not confirmed by RabbitMQ"
        )));
    }
    println!(
        "published {} jobs, all confirmed: {} bulk refunds ({} unique valid, {} duplicates, {} invalid) and {} governed refunds of ERP orders ({} within the mandate {MANDATE}, {} over its {} cap)",
        jobs.len(),
        batch.jobs.len(),
        batch.unique_valid,
        batch.duplicates,
        batch.invalid,
        governed.jobs.len(),
        governed.within_mandate,
        governed.over_cap,
        format_money(CAP, Currency::BRL),
    );

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let app = app::assemble(&connections, &settings, true, "refund-worker demo")
        .await
        .map_err(runtime)?;
    let worker = app.worker.with_reports(reports_tx);
    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("processing {bar:40} {pos}/{len} jobs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let counting = tokio::spawn(async move {
        let mut tally = Tally::default();
        while let Some(report) = reports.recv().await {
            if tally.count(&report, &governed_ids) {
                bar.inc(1);
            }
            bar.set_message(format!(
                "{} refunded, {} deduplicated, {} dead-lettered, {} retries",
                tally.succeeded,
                tally.deduplicated,
                tally.dead_lettered_total(),
                tally.retried
            ));
        }
        bar.finish();
        tally
    });
    let started = std::time::Instant::now();
    let run = worker.run(CancellationToken::new()).await;
    drop(worker);
    let tally = counting.await.map_err(runtime)?;
    run.map_err(runtime)?;
    let elapsed = started.elapsed();

    let ledger = sandbox.ledger();
    let ledger_total: u64 = ledger.iter().map(|e| e.amount).sum();
    let notes = sandbox.credit_notes().len();
    let messages = sandbox.messages().len();
    let receipt_key = KeyPair::from_seed(&settings.receipts.signing_key, "[receipts] signing_key")
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let chain = ReceiptChain::new(redis.clone(), &prefix, receipt_key);
    let receipts = chain.verify().await.map_err(runtime)?;
    let governed_payments: HashSet<String> = governed
        .orders
        .iter()
        .map(|o| o.payment.payment_id.clone())
        .collect();
    let (pix, card) = ledger
        .iter()
        .filter(|e| governed_payments.contains(&e.payment_id))
        .fold((0, 0), |(pix, card), e| {
            if e.provider == "pix" {
                (pix + 1, card)
            } else {
                (pix, card + 1)
            }
        });
    let dead: Vec<String> = tally
        .dead_lettered
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!();
    let retries: u64 = ProviderName::ALL
        .iter()
        .map(|p| app.metrics.retried.with_label_values(&[p.as_str()]).get())
        .sum();
    println!(
        "  bulk             {:>6} refunded, {} deduplicated, {retries} retries (flaky payments, in-process and through the delay queues)",
        tally.succeeded - tally.governed,
        tally.deduplicated,
    );
    println!(
        "  governed         {:>6} refunded on the order's own rail ({pix} Pix, {card} card), {notes} credit notes, {messages} WhatsApp messages",
        tally.governed
    );
    println!(
        "  dead-lettered    {:>6}  ({})",
        tally.dead_lettered_total(),
        dead.join(", ")
    );
    println!(
        "  receipts         {:>6}  sealed and signed; chain {}",
        receipts.checked,
        if receipts.problems.is_empty() {
            "verified intact".to_owned()
        } else {
            format!("BROKEN: {} problem(s)", receipts.problems.len())
        }
    );
    println!(
        "  sandbox ledger   {:>6}  refunds, {}",
        ledger.len(),
        format_money(ledger_total, Currency::BRL)
    );
    println!("  time             {:>6.1}s", elapsed.as_secs_f64());

    if args.keep {
        println!("\nkept everything under prefix {prefix}: inspect with --prefix {prefix}");
    } else {
        let _ = topology.delete(publisher.channel()).await;
        let _ = app.store.delete_namespace().await;
    }
    let _ = connection.close(200, "demo done".into()).await;
    stop_sandbox.cancel();

    let expected = batch.unique_valid + governed.within_mandate;
    let consistent = ledger.len() == tally.succeeded
        && tally.succeeded == expected
        && tally.governed == governed.within_mandate
        && tally.deduplicated == batch.duplicates
        && tally.class(FailureClass::Invalid) == batch.invalid
        && tally.class(FailureClass::Mandate) == governed.over_cap
        && tally.dead_lettered_total() == batch.invalid + governed.over_cap
        && notes == governed.within_mandate
        && messages == governed.within_mandate
        && receipts.problems.is_empty()
        && receipts.checked as usize == ledger.len();
    if consistent {
        println!(
            "\nOK: ledger refunds ({}) == succeeded jobs ({}) == unique valid jobs ({expected}); every duplicate deduplicated, every invalid job dead-lettered, the over-cap refund stopped by its mandate, one credit note, one message and one verified receipt per governed refund",
            ledger.len(),
            tally.succeeded,
        );
        Ok(())
    } else {
        Err(CommandError::Runtime(format!(
            "MISMATCH: ledger {}, succeeded {} (governed {}), expected {expected}; deduplicated {} of {}; invalid {} of {}; mandate {} of {}; credit notes {notes}, messages {messages}; receipts {} ({} problems)",
            ledger.len(),
            tally.succeeded,
            tally.governed,
            tally.deduplicated,
            batch.duplicates,
            tally.class(FailureClass::Invalid),
            batch.invalid,
            tally.class(FailureClass::Mandate),
            governed.over_cap,
            receipts.checked,
            receipts.problems.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RefundJob;

    #[test]
    fn sample_batch_has_what_the_summary_promises() {
        let batch = sample_batch(270, JobDate::parse("2026-11-24").unwrap());
        assert_eq!(batch.jobs.len(), 270 + 21 + 10);
        assert_eq!(batch.duplicates, 21);
        let valid = batch
            .jobs
            .iter()
            .filter(|j| RefundJob::parse(&j.body).is_ok())
            .count();
        assert_eq!(valid, 270 + 21);
        let distinct: std::collections::HashSet<&Vec<u8>> =
            batch.jobs.iter().map(|j| &j.body).collect();
        assert_eq!(distinct.len(), 270 + 10);
    }
}
