//! `refund-worker publish FILE|-`: validate every row first, then publish with confirms.

use std::io::Read;

use indicatif::{ProgressBar, ProgressStyle};

use super::{CommandError, Context, runtime};
use crate::{
    broker::{self, OutgoingJob, Publisher},
    cli::PublishArgs,
    job::{self, JobDate},
};

/// A row that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub error: job::JobError,
}

/// Splits JSON Lines input into publishable jobs and bad rows (blank lines are skipped).
pub fn prepare_lines(input: &[u8], today: JobDate) -> (Vec<(usize, OutgoingJob)>, Vec<BadRow>) {
    let mut jobs = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in input.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match job::prepare_for_publish(line, today) {
            Ok(body) => jobs.push((index + 1, OutgoingJob::new(body))),
            Err(error) => bad.push(BadRow {
                line: index + 1,
                error,
            }),
        }
    }
    (jobs, bad)
}

/// Publishes a jobs file.
pub async fn run(ctx: &Context, args: PublishArgs) -> Result<(), CommandError> {
    let mut input = Vec::new();
    let read = if args.file == "-" {
        std::io::stdin().read_to_end(&mut input)
    } else {
        std::fs::File::open(&args.file).and_then(|mut f| f.read_to_end(&mut input))
    };
    read.map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", args.file)))?;

    let (jobs, bad) = prepare_lines(&input, JobDate::today());
    for row in &bad {
        eprintln!("line {}: {}", row.line, row.error);
    }
    if !bad.is_empty() && !args.skip_invalid {
        return Err(CommandError::Usage(format!(
            "{} invalid row(s), nothing published; fix them or pass --skip-invalid to publish the {} valid row(s)",
            bad.len(),
            jobs.len()
        )));
    }
    if jobs.is_empty() {
        println!("nothing to publish");
        return Ok(());
    }

    let connection = broker::connect(&ctx.connections.amqp_url, "refund-worker publish")
        .await
        .map_err(runtime)?;
    let publisher = Publisher::open(&connection).await.map_err(runtime)?;
    let topology = ctx.connections.topology(&ctx.settings);
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;

    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("publishing {bar:40} {pos}/{len} confirmed ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let outgoing: Vec<OutgoingJob> = jobs.iter().map(|(_, job)| job.clone()).collect();
    let results = broker::publish_jobs(&publisher, &topology, &outgoing, |n| bar.inc(n)).await;
    bar.finish_and_clear();
    let _ = connection.close(200, "published".into()).await;

    let failed: Vec<String> = jobs
        .iter()
        .zip(&results)
        .filter_map(|((line, _), result)| {
            result.as_ref().err().map(|e| format!("line {line}: {e}"))
        })
        .collect();
    let confirmed = results.len() - failed.len();
    println!(
        "published {confirmed} job(s), all confirmed by the broker{}",
        if bad.is_empty() {
            String::new()
        } else {
            format!("; skipped {} invalid row(s)", bad.len())
        }
    );
    if failed.is_empty() {
        Ok(())
    } else {
        for line in &failed {
            eprintln!("{line}");
        }
        Err(CommandError::Runtime(format!(
            "{} of {} job(s) were NOT confirmed by the broker; publish those lines again (their idempotency keys make that safe)",
            failed.len(),
            results.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let input = b"{\"payment_id\":\"pi_1\",\"amount\":100,\"provider\":\"stripe\"}\n\n{\"payment_id\":\"pi_2\",\"amount\":0,\"provider\":\"stripe\"}\r\nnot json\n";
        let today = JobDate::parse("2026-11-24").unwrap();
        let (jobs, bad) = prepare_lines(input, today);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, 1);
        let body: serde_json::Value = serde_json::from_slice(&jobs[0].1.body).unwrap();
        assert_eq!(body["date"], "2026-11-24", "date is filled at publish time");
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(bad[0].error.field, "amount");
        assert_eq!(bad[1].error.field, "body");
    }

    #[test]
    fn an_explicit_date_is_kept() {
        let input = b"{\"payment_id\":\"pi_1\",\"amount\":100,\"provider\":\"stripe\",\"date\":\"2026-01-01\"}";
        let (jobs, _) = prepare_lines(input, JobDate::parse("2026-11-24").unwrap());
        let body: serde_json::Value = serde_json::from_slice(&jobs[0].1.body).unwrap();
        assert_eq!(body["date"], "2026-01-01");
    }
}
