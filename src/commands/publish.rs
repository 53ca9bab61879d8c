//! `refund-worker publish FILE|-`: read JSON Lines or CSV, validate every row before sending
//! anything, publish with confirms in pipelined batches, and with `--wait` follow every job to
//! its outcome.

use std::{collections::HashMap, io::Read, time::Duration};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Map, Value};

use super::{CommandError, Context, runtime};
use crate::{
    broker::{
        self, OutgoingJob, Publisher,
        events::{EventStatus, OutcomeEvent},
    },
    cli::{InputFormat, PublishArgs},
    job::{self, JobDate, JobError},
};

/// A row that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line number in the input.
    pub line: usize,
    /// Why.
    pub error: JobError,
}

/// Jobs ready to publish, each with the line it came from, and the rows that were not.
pub type Prepared = (Vec<(usize, OutgoingJob)>, Vec<BadRow>);

/// Splits JSON Lines input into publishable jobs and bad rows (blank lines are skipped).
pub fn prepare_lines(input: &[u8], today: JobDate) -> Prepared {
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

/// Reads CSV with a header row of job field names. Cells are typed by field: `amount` is a
/// number, `credit_note` a boolean, `metadata` and `notify` JSON objects, everything else
/// text; an empty cell is an absent field. Returns an error for a header that is not a field.
pub fn prepare_csv(input: &[u8], today: JobDate) -> Result<Prepared, CommandError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| CommandError::Usage(format!("cannot read the CSV header row: {e}")))?
        .clone();
    if let Some(unknown) = headers.iter().find(|h| !job::FIELDS.contains(h)) {
        return Err(CommandError::Usage(format!(
            "CSV column {unknown:?} is not a job field; columns must be among: {}",
            job::FIELDS.join(", ")
        )));
    }
    let mut jobs = Vec::new();
    let mut bad = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                bad.push(BadRow {
                    line,
                    error: JobError {
                        field: "body".into(),
                        rule: format!("is not a valid CSV row: {e}"),
                    },
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let mut object = Map::new();
        for (field, cell) in headers.iter().zip(record.iter()) {
            if !cell.is_empty() {
                object.insert(field.to_owned(), csv_cell(field, cell));
            }
        }
        let body = serde_json::to_vec(&object).unwrap_or_default();
        match job::prepare_for_publish(&body, today) {
            Ok(body) => jobs.push((line, OutgoingJob::new(body))),
            Err(error) => bad.push(BadRow { line, error }),
        }
    }
    Ok((jobs, bad))
}

/// A CSV cell as the JSON value its field takes; a cell that is not of the field's type stays
/// text, so validation names the field and the rule.
fn csv_cell(field: &str, cell: &str) -> Value {
    let parsed = match field {
        "amount" => serde_json::from_str::<Value>(cell)
            .ok()
            .filter(Value::is_number),
        "credit_note" => match cell.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        "metadata" | "notify" => serde_json::from_str::<Value>(cell)
            .ok()
            .filter(Value::is_object),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(cell.to_owned()))
}

fn is_csv(args: &PublishArgs, input: &[u8]) -> bool {
    match args.format {
        Some(format) => format == InputFormat::Csv,
        None => {
            let first = input.iter().find(|b| !b.is_ascii_whitespace());
            args.file.to_ascii_lowercase().ends_with(".csv") || first.is_some_and(|b| *b != b'{')
        }
    }
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

    let today = args.date.unwrap_or_else(JobDate::today);
    let (mut jobs, mut bad) = if is_csv(&args, &input) {
        prepare_csv(&input, today)?
    } else {
        prepare_lines(&input, today)
    };
    if args.from_line > 1 {
        jobs.retain(|(line, _)| *line >= args.from_line);
        bad.retain(|row| row.line >= args.from_line);
    }
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
    for note in repeated_keys(&jobs) {
        eprintln!("note: {note}");
    }
    // Installed before anything is sent: an interrupt says where to resume.
    let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(runtime)?;

    let connection = broker::connect(&ctx.connections.amqp_url, "refund-worker publish")
        .await
        .map_err(runtime)?;
    // Jobs carry the connection's user as their AMQP `user_id`, which RabbitMQ validates:
    // the identity a mandate's publishers are checked against.
    let user = broker::url_user(&ctx.connections.amqp_url);
    let publisher = Publisher::open_as(&connection, &user)
        .await
        .map_err(runtime)?;
    let topology = ctx.connections.topology(&ctx.settings);
    topology
        .declare(publisher.channel())
        .await
        .map_err(runtime)?;

    // With --wait, outcomes come back to a private queue that lives as long as we do.
    let replies = if args.wait {
        let channel = connection.create_channel().await.map_err(runtime)?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(runtime)?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(runtime)?;
        Some((queue.name().to_string(), consumer, channel))
    } else {
        None
    };

    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("publishing {bar:40} {pos}/{len} confirmed ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some(0) = consumers(&publisher, &topology.jobs_queue()).await {
        eprintln!(
            "note: no worker is consuming {} right now: the jobs will wait there until one runs (`refund-worker run`)",
            topology.jobs_queue()
        );
    }
    let outgoing: Vec<OutgoingJob> = jobs.iter().map(|(_, job)| job.clone()).collect();
    let reply_to = replies.as_ref().map(|(queue, _, _)| queue.as_str());
    // How far the confirms got, in order: (jobs whose confirm was awaited, jobs confirmed, the
    // first job not confirmed).
    let progress = std::cell::Cell::new((0usize, 0u64, None::<usize>));
    let publishing = broker::publish_jobs(&publisher, &topology, &outgoing, reply_to, |ok| {
        let (seen, confirmed, first_missing) = progress.get();
        let first_missing = first_missing.or((!ok).then_some(seen));
        progress.set((seen + 1, confirmed + u64::from(ok), first_missing));
        if ok {
            bar.inc(1);
        }
    });
    let results = tokio::select! {
        results = publishing => results,
        _ = interrupted.recv() => {
            bar.finish_and_clear();
            let (seen, confirmed, first_missing) = progress.get();
            // Every job before this one is confirmed; from it on, nothing is known.
            let resume = jobs
                .get(first_missing.unwrap_or(seen))
                .map_or(jobs[0].0, |(line, _)| *line);
            let _ = connection.close(200, "interrupted".into()).await;
            return Err(interrupted_at(&args, confirmed, jobs.len(), resume, today));
        }
    };
    bar.finish_and_clear();

    let failed: Vec<String> = jobs
        .iter()
        .zip(&results)
        .filter_map(|((line, _), result)| {
            result.as_ref().err().map(|e| format!("line {line}: {e}"))
        })
        .collect();
    let confirmed = results.len() - failed.len();
    let skipped = if bad.is_empty() {
        String::new()
    } else {
        format!("; skipped {} invalid row(s)", bad.len())
    };
    if !failed.is_empty() {
        for line in &failed {
            eprintln!("{line}");
        }
        let _ = connection.close(200, "publish failed".into()).await;
        return Err(CommandError::Runtime(format!(
            "{} of {} job(s) were NOT confirmed by the broker; publish those lines again with \"date\": \"{today}\" on each line that has no date (the idempotency key is payment_id + date, so a re-run on another day without it would be a new refund)",
            failed.len(),
            results.len()
        )));
    }
    if !args.wait {
        println!("published {confirmed} job(s), all confirmed by the broker{skipped}");
        let _ = connection.close(200, "published".into()).await;
        return Ok(());
    }
    // Standard output is for the result table (or JSON); progress goes to standard error.
    eprintln!(
        "published {confirmed} job(s), all confirmed by the broker{skipped}; waiting for their outcomes"
    );

    let (_, mut consumer, _channel) = replies.expect("--wait declared its reply queue");
    let mut outcomes: HashMap<String, OutcomeEvent> = HashMap::new();
    let waiting = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("waiting for outcomes {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = tokio::time::Instant::now() + args.wait_timeout;
    while outcomes.len() < jobs.len() {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, consumer.next()) => next,
            _ = interrupted.recv() => {
                waiting.finish_and_clear();
                eprintln!(
                    "interrupted while waiting: {} of {} outcome(s) in; every job was published and confirmed, so the workers still process them (`refund-worker status JOB_ID`, `dlq list`)",
                    outcomes.len(),
                    jobs.len()
                );
                let _ = connection.close(200, "interrupted".into()).await;
                return Err(CommandError::Interrupted);
            }
        };
        let Ok(Some(Ok(delivery))) = next else {
            break;
        };
        if let Ok(event) = serde_json::from_slice::<OutcomeEvent>(&delivery.data)
            && !outcomes.contains_key(&event.job_id)
        {
            outcomes.insert(event.job_id.clone(), event);
            waiting.inc(1);
        }
    }
    waiting.finish_and_clear();
    let _ = connection.close(200, "published".into()).await;
    report(&jobs, &outcomes, args.json, args.wait_timeout)
}

/// Ready messages and consumers of `queue`, if it can be read (passive declare).
async fn consumers(publisher: &Publisher, queue: &str) -> Option<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    publisher
        .channel()
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.consumer_count())
}

/// Rows that repeat an earlier row's idempotency key, said before anything is sent: the
/// worker refunds each key once, so an identical row is a duplicate and a row that asks for
/// something else under the same key is dead-lettered as a key collision.
fn repeated_keys(jobs: &[(usize, OutgoingJob)]) -> Vec<String> {
    let mut first: HashMap<String, (usize, Vec<u8>)> = HashMap::new();
    let mut notes = Vec::new();
    for (line, job) in jobs {
        let Ok(parsed) = job::RefundJob::parse(&job.body) else {
            continue;
        };
        let Some(date) = parsed.date else { continue };
        let key = parsed.idempotency_key(date).to_string();
        match first.get(&key) {
            None => {
                first.insert(key, (*line, job.body.clone()));
            }
            Some((earlier, body)) if *body == job.body => notes.push(format!(
                "line {line} repeats line {earlier} (idempotency key {key}): it will be refunded once"
            )),
            Some((earlier, _)) => notes.push(format!(
                "line {line} shares idempotency key {key} with line {earlier} but asks for something else: it will be dead-lettered as a key collision unless you give it its own \"idempotency_key\""
            )),
        }
    }
    notes
}

/// The error of a publish interrupted (Ctrl-C) after `confirmed` of `total` jobs: how many
/// the broker confirmed and the command that resumes from the first line not known to be.
fn interrupted_at(
    args: &PublishArgs,
    confirmed: u64,
    total: usize,
    resume: usize,
    date: JobDate,
) -> CommandError {
    eprintln!(
        "interrupted: {confirmed} of {total} job(s) confirmed by the broker; from line {resume} on, jobs may or may not have been sent"
    );
    eprintln!(
        "resume with: refund-worker publish {} --from-line {resume} --date {date}",
        args.file
    );
    eprintln!(
        "(rows without a \"date\" were given {date}; keep --date {date} when you resume, even after UTC midnight, or they would get a new day, a new idempotency key, and be refunded again. Rows sent twice are refunded once.)"
    );
    CommandError::Interrupted
}

/// Prints the per-job results and says whether every job succeeded.
fn report(
    jobs: &[(usize, OutgoingJob)],
    outcomes: &HashMap<String, OutcomeEvent>,
    json: bool,
    timeout: Duration,
) -> Result<(), CommandError> {
    let missing = jobs
        .iter()
        .filter(|(_, j)| !outcomes.contains_key(&j.job_id))
        .count();
    let failed = outcomes.values().filter(|e| !e.status.is_success()).count();
    if json {
        let rows: Vec<Value> = jobs
            .iter()
            .map(|(line, job)| {
                let mut row = match outcomes.get(&job.job_id) {
                    Some(event) => serde_json::to_value(event).unwrap_or(Value::Null),
                    None => serde_json::json!({ "job_id": job.job_id, "status": "no_outcome" }),
                };
                row["line"] = Value::from(*line);
                row
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<6} {:<36} {:<24} {:<12} {:<14} REFUND / ERROR",
            "LINE", "JOB", "PAYMENT", "PROVIDER", "RESULT"
        );
        for (line, job) in jobs {
            match outcomes.get(&job.job_id) {
                Some(e) => println!(
                    "{:<6} {:<36} {:<24} {:<12} {:<14} {}",
                    line,
                    e.job_id,
                    e.payment_id.as_deref().unwrap_or("-"),
                    e.provider.as_deref().unwrap_or("-"),
                    status_text(e.status),
                    e.refund_id.as_deref().or(e.error.as_deref()).unwrap_or("-"),
                ),
                None => println!(
                    "{line:<6} {:<36} {:<24} {:<12} {:<14} no outcome yet",
                    job.job_id, "-", "-", "waiting"
                ),
            }
        }
    }
    if missing > 0 {
        return Err(CommandError::Runtime(format!(
            "{missing} job(s) had no outcome within {}; they are still queued or retrying (see `dlq list` and the worker's metrics)",
            humantime::format_duration(timeout)
        )));
    }
    if failed > 0 {
        return Err(CommandError::Runtime(format!(
            "{failed} of {} job(s) did not refund; they are in the dead-letter queue (`refund-worker dlq list`)",
            jobs.len()
        )));
    }
    Ok(())
}

fn status_text(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Succeeded => "succeeded",
        EventStatus::Deduplicated => "deduplicated",
        EventStatus::Failed => "failed",
        EventStatus::DeadLettered => "dead_lettered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> JobDate {
        JobDate::parse("2026-11-24").unwrap()
    }

    fn body(job: &OutgoingJob) -> Value {
        serde_json::from_slice(&job.body).unwrap()
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let input = b"{\"payment_id\":\"pi_1\",\"amount\":100,\"provider\":\"stripe\"}\n\n{\"payment_id\":\"pi_2\",\"amount\":0,\"provider\":\"stripe\"}\r\nnot json\n";
        let (jobs, bad) = prepare_lines(input, today());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, 1);
        assert_eq!(
            body(&jobs[0].1)["date"],
            "2026-11-24",
            "date is filled at publish time"
        );
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(bad[0].error.field, "amount");
        assert_eq!(bad[1].error.field, "body");
    }

    #[test]
    fn an_explicit_date_is_kept() {
        let input = b"{\"payment_id\":\"pi_1\",\"amount\":100,\"provider\":\"stripe\",\"date\":\"2026-01-01\"}";
        let (jobs, _) = prepare_lines(input, today());
        assert_eq!(body(&jobs[0].1)["date"], "2026-01-01");
    }

    #[test]
    fn csv_rows_become_typed_jobs() {
        let input = "payment_id,amount,provider,reason,credit_note,metadata\n\
                     pi_1,18600,stripe,FRAUD,true,\"{\"\"ticket\"\":7}\"\n\
                     pi_2,100,stripe,,,\n";
        let (jobs, bad) = prepare_csv(input.as_bytes(), today()).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        let first = body(&jobs[0].1);
        assert_eq!(first["amount"], 18600, "a number, not text");
        assert_eq!(first["credit_note"], true);
        assert_eq!(first["metadata"]["ticket"], 7);
        assert_eq!(first["date"], "2026-11-24");
        let second = body(&jobs[1].1);
        assert!(
            second.get("reason").is_none(),
            "an empty cell is an absent field"
        );
        assert_eq!(
            (jobs[0].0, jobs[1].0),
            (2, 3),
            "line numbers count the header"
        );
    }

    #[test]
    fn csv_errors_name_the_line_and_the_field() {
        let input = "payment_id,amount,provider\npi_1,12.5,stripe\npi_2,abc,stripe\npi_3,100,paypal\npi_4,100,stripe\n";
        let (jobs, bad) = prepare_csv(input.as_bytes(), today()).unwrap();
        assert_eq!(jobs.len(), 1);
        let found: Vec<_> = bad
            .iter()
            .map(|b| (b.line, b.error.field.as_str()))
            .collect();
        assert_eq!(found, [(2, "amount"), (3, "amount"), (4, "provider")]);
        assert!(bad[0].error.rule.contains("12.5"));
    }

    #[test]
    fn a_csv_column_that_is_not_a_field_is_refused_once() {
        let err = prepare_csv(b"payment_id,ammount\npi_1,5\n", today()).unwrap_err();
        assert!(
            err.to_string().contains("\"ammount\" is not a job field"),
            "{err}"
        );
    }
}
