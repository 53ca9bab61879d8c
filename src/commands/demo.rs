//! `refund-worker demo`: the whole loop on localhost in one command. Starts the sandbox
//! in-process, publishes a sample batch under a fresh prefix (duplicates, invalid jobs and a
//! few flaky payments included), processes it with a progress bar, prints a summary and
//! checks that the sandbox ledger, the successes and the unique valid jobs agree.

use std::{collections::BTreeMap, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CommandError, Context, runtime};
use crate::{
    app::{self, Connections},
    broker::{self, OutgoingJob, Publisher},
    cli::DemoArgs,
    job::{JobDate, format_minor},
    outcome::Outcome,
    sandbox::{FaultOptions, Sandbox},
    store,
    worker::{Disposition, JobReport},
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

/// Reais the Brazilian way: `R$ 69.989,85`.
fn brl(centavos: u64) -> String {
    let text = format_minor(centavos, 2);
    let (whole, cents) = text.split_once('.').unwrap_or((&text, "00"));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push('.');
        }
        grouped.push(digit);
    }
    format!("R$ {grouped},{cents}")
}

/// Tallies of the reports.
#[derive(Debug, Default)]
struct Tally {
    succeeded: usize,
    deduplicated: usize,
    retried: usize,
    dead_lettered: BTreeMap<&'static str, usize>,
}

impl Tally {
    /// Counts one report; true when it is the job's final outcome.
    fn count(&mut self, report: &JobReport) -> bool {
        match (&report.outcome, &report.disposition) {
            (Outcome::Refunded { .. }, Disposition::Acked) => self.succeeded += 1,
            (Outcome::Duplicate, Disposition::Acked) => self.deduplicated += 1,
            (_, Disposition::DeadLettered { class, .. }) => {
                *self.dead_lettered.entry(class.as_str()).or_default() += 1
            }
            (Outcome::Retry { counts: true, .. }, Disposition::Retried { .. }) => {
                self.retried += 1;
                return false;
            }
            _ => return false,
        }
        true
    }

    fn dead_lettered_total(&self) -> usize {
        self.dead_lettered.values().sum()
    }
}

/// Runs the demo.
pub async fn run(ctx: &Context, args: DemoArgs) -> Result<(), CommandError> {
    let prefix = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let connections = Connections {
        prefix: prefix.clone(),
        ..ctx.connections.clone()
    };
    // Fail in one line, with the fix, when the infrastructure is not there.
    let connection = broker::connect(&connections.amqp_url, "refund-worker demo")
        .await
        .map_err(|e| {
            CommandError::Runtime(format!("{e} (start it with: rabbitmq-server -detached)"))
        })?;
    store::connect(&connections.redis_url).await.map_err(|e| {
        CommandError::Runtime(format!("{e} (start it with: redis-server --daemonize yes)"))
    })?;

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

    let batch = sample_batch(args.jobs as usize, JobDate::today());
    println!("refund-worker demo: sandbox at {sandbox_url}, queues and keys under prefix {prefix}");

    let publisher = Publisher::open(&connection).await.map_err(runtime)?;
    let topology = connections.topology(&settings);
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;
    let results = broker::publish_jobs(&publisher, &topology, &batch.jobs, None, |_| {}).await;
    let unconfirmed = results.iter().filter(|r| r.is_err()).count();
    if unconfirmed > 0 {
        return Err(CommandError::Runtime(format!(
            "{unconfirmed} demo job(s) were not confirmed by RabbitMQ"
        )));
    }
    println!(
        "published {} jobs ({} unique valid, {} duplicates, {} invalid), all confirmed",
        batch.jobs.len(),
        batch.unique_valid,
        batch.duplicates,
        batch.invalid
    );

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let app = app::assemble(&connections, &settings, true, "refund-worker demo")
        .await
        .map_err(runtime)?;
    let worker = app.worker.with_reports(reports_tx);
    let bar = ProgressBar::new(batch.jobs.len() as u64).with_style(
        ProgressStyle::with_template("processing {bar:40} {pos}/{len} jobs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let counting = tokio::spawn(async move {
        let mut tally = Tally::default();
        while let Some(report) = reports.recv().await {
            if tally.count(&report) {
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
    let dead: Vec<String> = tally
        .dead_lettered
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!();
    println!("  succeeded        {:>6}", tally.succeeded);
    println!("  deduplicated     {:>6}", tally.deduplicated);
    println!(
        "  dead-lettered    {:>6}  ({})",
        tally.dead_lettered_total(),
        dead.join(", ")
    );
    println!(
        "  retries          {:>6}  (flaky payments, retried through the delay queues)",
        tally.retried
    );
    println!(
        "  sandbox ledger   {:>6}  refunds, {}",
        ledger.len(),
        brl(ledger_total)
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

    let consistent = ledger.len() == tally.succeeded
        && tally.succeeded == batch.unique_valid
        && tally.deduplicated == batch.duplicates
        && tally.dead_lettered_total() == batch.invalid;
    if consistent {
        println!(
            "\nOK: ledger refunds ({}) == succeeded jobs ({}) == unique valid jobs ({}); every duplicate deduplicated, every invalid job dead-lettered",
            ledger.len(),
            tally.succeeded,
            batch.unique_valid
        );
        Ok(())
    } else {
        Err(CommandError::Runtime(format!(
            "MISMATCH: ledger refunds {}, succeeded {}, unique valid {}, deduplicated {} of {}, dead-lettered {} of {}",
            ledger.len(),
            tally.succeeded,
            batch.unique_valid,
            tally.deduplicated,
            batch.duplicates,
            tally.dead_lettered_total(),
            batch.invalid
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::RefundJob;

    #[test]
    fn reais_are_grouped_the_brazilian_way() {
        assert_eq!(brl(1), "R$ 0,01");
        assert_eq!(brl(18600), "R$ 186,00");
        assert_eq!(brl(6_998_985), "R$ 69.989,85");
        assert_eq!(brl(100_000_000_000), "R$ 1.000.000.000,00");
    }

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
