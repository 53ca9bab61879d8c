//! `refund-worker dlq list|show|replay|purge|export`: the dead-letter queue for operators.
//!
//! Nothing leaves the queue unless it is replaced (its replay confirmed by the broker), found
//! already refunded, or purged with `--yes`. Everything else goes back untouched when the
//! command ends.

use std::{collections::BTreeMap, io::Write, time::Duration};

use serde_json::{Value, json};

mod groups;
mod replay;

pub use groups::cause;
pub(crate) use groups::{Group, by_job_id, class_of, group, identity, money};
pub(crate) use replay::{Replay, ReplayReport, changed_fields, parse_edits, set_target};

use super::{CommandError, Context, runtime};
use crate::{
    broker::{
        self, Publisher,
        dead_letters::{DeadLetter, DeadLetterQueue},
        seal::{SealCheck, Sealer},
    },
    cli::{DlqArgs, DlqCommand, DlqFilter},
    job::RefundJob,
    outcome::FailureClass,
};

/// The most dead letters one command reads.
const READ_LIMIT: usize = 100_000;

/// A parsed `--class/--provider/--older-than` filter.
#[derive(Debug, Clone, Default)]
struct Filter {
    class: Option<FailureClass>,
    group: Option<String>,
    provider: Option<String>,
    older_than: Option<Duration>,
}

impl Filter {
    fn parse(filter: &DlqFilter) -> Result<Self, CommandError> {
        let class = filter
            .class
            .as_deref()
            .map(|c| {
                FailureClass::parse(c).ok_or_else(|| {
                    let names: Vec<_> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
                    CommandError::Usage(format!(
                        "--class must be one of {}, got {c:?}",
                        names.join(", ")
                    ))
                })
            })
            .transpose()?;
        let provider = filter
            .provider
            .as_deref()
            .map(super::provider::provider_name)
            .transpose()?;
        Ok(Self {
            class,
            group: filter.group.clone(),
            provider: provider.map(|p| p.as_str().to_owned()),
            older_than: filter.older_than,
        })
    }

    fn is_set(&self) -> bool {
        self.class.is_some()
            || self.group.is_some()
            || self.provider.is_some()
            || self.older_than.is_some()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let class_ok = self.class.is_none_or(|c| letter.class == Some(c));
        let group_ok = self
            .group
            .as_ref()
            .is_none_or(|g| *g == groups::handle(class_of(letter), &cause(&letter.error)));
        let provider_ok = self
            .provider
            .as_ref()
            .is_none_or(|p| letter.provider.as_ref() == Some(p));
        let age_ok = self.older_than.is_none_or(|min| {
            old_enough(
                age(letter.last_seen.as_deref(), time::OffsetDateTime::now_utc()),
                min,
            )
        });
        class_ok && group_ok && provider_ok && age_ok
    }
}

/// How long before `now` a letter was last handled: `None` when its last-seen time is missing
/// or does not parse; zero when it lies in the future (clock skew between hosts).
fn age(last_seen: Option<&str>, now: time::OffsetDateTime) -> Option<Duration> {
    let at =
        time::OffsetDateTime::parse(last_seen?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    let elapsed = now - at;
    if elapsed.is_negative() {
        return Some(Duration::ZERO);
    }
    elapsed.try_into().ok()
}

/// Whether a letter of this age passes `--older-than min`. An unknown age never does: a
/// filter that may end in a purge selects only what it knows to be old.
fn old_enough(age: Option<Duration>, min: Duration) -> bool {
    age.is_some_and(|a| a >= min)
}

/// The dead-letter queue opened for one command: connected, the topology declared, up to
/// `limit` letters read (held unacknowledged until closed), and the seal keys that tell this
/// deployment's letters from planted ones.
pub(crate) struct OpenQueue {
    pub(crate) connection: lapin::Connection,
    pub(crate) publisher: Publisher,
    pub(crate) topology: crate::broker::Topology,
    pub(crate) sealer: Sealer,
    pub(crate) queue: DeadLetterQueue,
}

impl OpenQueue {
    /// Opens it as connection `name`.
    pub(crate) async fn open(
        ctx: &Context,
        name: &str,
        limit: usize,
    ) -> Result<Self, CommandError> {
        let sealer = Sealer::from_config(&ctx.settings.broker.seal_keys)
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        let connection = broker::connect(&ctx.connections.amqp_url, name)
            .await
            .map_err(runtime)?;
        let publisher = Publisher::open(&connection).await.map_err(runtime)?;
        let topology = ctx.connections.topology(&ctx.settings);
        topology
            .declare(publisher.channel())
            .await
            .map_err(runtime)?;
        let queue = DeadLetterQueue::read(&connection, &topology, limit, &sealer)
            .await
            .map_err(runtime)?;
        Ok(Self {
            connection,
            publisher,
            topology,
            sealer,
            queue,
        })
    }

    /// Hands back every letter not removed, and disconnects; the job ids removed.
    pub(crate) async fn close(self) -> Vec<String> {
        let removed = self.queue.removed();
        self.queue.close().await;
        let _ = self.connection.close(200, "done".into()).await;
        removed
    }
}

/// Runs a `dlq` subcommand.
pub async fn run(ctx: &Context, args: DlqArgs) -> Result<(), CommandError> {
    let open = OpenQueue::open(ctx, "refund-worker dlq", READ_LIMIT).await?;
    let (publisher, topology, sealer, queue) =
        (&open.publisher, &open.topology, &open.sealer, &open.queue);
    if queue.letters.len() == READ_LIMIT {
        eprintln!("note: read the first {READ_LIMIT} dead letters only");
    }
    // What an action did, for the audit log: (action, target, result).
    let mut done: Option<(&str, Value, Value)> = None;
    let result = match args.command {
        DlqCommand::List { filter, json } => list(queue, &Filter::parse(&filter)?, json),
        DlqCommand::Show { job_id, json } => show(queue, &job_id, json),
        DlqCommand::Export { out } => export(queue, out.as_deref()),
        DlqCommand::Archive {
            job_ids,
            filter,
            all,
            out,
            yes,
            json,
        } => {
            let chosen = select(queue, &job_ids, &Filter::parse(&filter)?, all)?;
            if !yes {
                return Err(CommandError::Usage(format!(
                    "archive would move {} dead letter(s) out of the queue into {}; pass --yes",
                    chosen.len(),
                    out.display()
                )));
            }
            let archived = archive(&chosen, &out).await;
            done = removal(json, queue, &chosen, Some(&out), &archived);
            archived
        }
        DlqCommand::Import { file, json } => {
            let imported = import(publisher, &topology.dead_exchange(), &file).await;
            if let Ok(count) = &imported {
                say(
                    json,
                    &format!("imported {count} dead letter(s) from {}", file.display()),
                    json!({ "imported": count, "file": file.display().to_string() }),
                );
                done = Some((
                    "dlq import",
                    json!({ "file": file.display().to_string() }),
                    json!({ "imported": count }),
                ));
            }
            imported.map(|_| ())
        }
        DlqCommand::Purge {
            job_ids,
            filter,
            all,
            yes,
            json,
        } => {
            let chosen = select(queue, &job_ids, &Filter::parse(&filter)?, all)?;
            if !yes {
                return Err(CommandError::Usage(format!(
                    "purge would delete {} of {} dead letter(s) for good; run `dlq export` (or `dlq archive`) first if they matter, then pass --yes",
                    chosen.len(),
                    queue.letters.len()
                )));
            }
            let purged = purge(&chosen).await;
            done = removal(json, queue, &chosen, None, &purged);
            purged
        }
        DlqCommand::Replay {
            job_ids,
            filter,
            all,
            dry_run,
            set,
            body,
            canary,
            canary_wait,
            json,
        } => {
            let chosen = select(queue, &job_ids, &Filter::parse(&filter)?, all)?;
            let edits = parse_edits(&set)?;
            let new_body =
                match &body {
                    None => None,
                    Some(path) if path.as_os_str() == "-" => {
                        let mut text = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)
                            .map_err(runtime)?;
                        Some(text)
                    }
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        CommandError::Usage(format!("--body {}: {e}", path.display()))
                    })?),
                };
            let mut fields: Vec<String> = edits.iter().map(|(field, _)| field.clone()).collect();
            if let Some(new_body) = &new_body {
                let letters = set_target(&chosen).0;
                if letters != 1 {
                    return Err(CommandError::Usage(format!(
                        "--body replaces exactly one dead letter's body, but this selection has {letters}; name a single JOB_ID"
                    )));
                }
                RefundJob::parse(new_body)
                    .map_err(|e| CommandError::Usage(format!("--body is not a valid job: {e}")))?;
                fields = changed_fields(&chosen[0].body, new_body);
            }
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            let store = ctx
                .connections
                .idempotency_store(&ctx.settings)
                .await
                .map_err(runtime)?;
            let replay = Replay {
                publisher,
                exchange: topology.jobs_exchange(),
                store: &store,
                edits: &edits,
                body: new_body.as_deref(),
                dry_run,
                sealer,
            };
            replay.check_edit(&chosen, &fields).await?;
            let (report, canary_said) = if canary {
                let (report, said) = replay.canary(&chosen, canary_wait).await;
                (report, Some(said))
            } else {
                (replay.run(&chosen).await, None)
            };
            match (&report, json) {
                (Ok(report), true) => {
                    let mut out = report.to_json();
                    out["dry_run"] = json!(dry_run);
                    out["canary"] = json!(canary_said);
                    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                }
                (Ok(report), false) => {
                    report.print();
                    if let Some(said) = &canary_said {
                        println!("{said}");
                    }
                }
                (Err(_), _) => {}
            }
            if !dry_run {
                let mut target = target_of(&chosen);
                target["set"] = json!(set);
                if let Some(new_body) = &new_body {
                    target["body"] = json!(String::from_utf8_lossy(new_body));
                }
                let mut outcome = match &report {
                    Ok(report) => report.counts.clone(),
                    Err(e) => json!({ "failed": e.to_string() }),
                };
                if let Some(said) = canary_said {
                    target["canary"] = json!(true);
                    outcome["canary"] = json!(said);
                }
                done = Some(("dlq replay", target, outcome));
            }
            report.map(|_| ())
        }
    };
    let removed = open.close().await;
    if !removed.is_empty() {
        // Keep the money-stuck tally in step with the queue (best effort: the queue is the truth).
        match ctx.connections.idempotency_store(&ctx.settings).await {
            Ok(store) => {
                if let Err(e) = store.forget_dead_letters(&removed).await {
                    eprintln!("note: could not update the dead-letter money tally: {e}");
                }
            }
            Err(e) => eprintln!("note: could not update the dead-letter money tally: {e}"),
        }
    }
    if let Some((action, target, outcome)) = done {
        super::audit::record(ctx, action, target, Value::Null, outcome).await?;
    }
    result
}

/// What an archive (to `file`) or a purge (no file) did: said to the operator, and what the
/// audit log records (on failure, what had already left the queue); `None` when it was
/// refused before anything left.
fn removal(
    json: bool,
    queue: &DeadLetterQueue,
    chosen: &[&DeadLetter],
    file: Option<&std::path::Path>,
    result: &Result<(), CommandError>,
) -> Option<(&'static str, Value, Value)> {
    let (action, verb) = match file {
        Some(_) => ("dlq archive", "archived"),
        None => ("dlq purge", "purged"),
    };
    let mut record = match result {
        Ok(()) => json!({ verb: chosen.len() }),
        Err(CommandError::Usage(_)) => return None,
        Err(e) => json!({ "failed": e.to_string(), "removed": queue.removed() }),
    };
    if let Some(file) = file {
        record["file"] = json!(file.display().to_string());
    }
    let target = target_of(chosen);
    if result.is_ok() {
        let mut shown = record.clone();
        shown["job_ids"] = target["job_ids"].clone();
        let to = file.map_or(String::new(), |f| format!(" to {}", f.display()));
        say(
            json,
            &format!("{verb} {} dead letter(s){to}", chosen.len()),
            shown,
        );
    }
    Some((action, target, record))
}

/// Prints what an action did: the sentence, or with `--json` the object.
fn say(json: bool, sentence: &str, object: Value) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&object).unwrap_or_default()
        );
    } else {
        println!("{sentence}");
    }
}

/// The letters an action was applied to, for the audit log.
fn target_of(chosen: &[&DeadLetter]) -> Value {
    json!({ "job_ids": chosen.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>() })
}

/// The letters a replay or purge acts on: by id, by filter, or all; never by default.
fn select<'q>(
    queue: &'q DeadLetterQueue,
    job_ids: &[String],
    filter: &Filter,
    all: bool,
) -> Result<Vec<&'q DeadLetter>, CommandError> {
    if job_ids.is_empty() && !filter.is_set() && !all {
        return Err(CommandError::Usage(
            "say which dead letters: JOB_ID…, a filter (--group, --class, --provider, --older-than) or --all".into(),
        ));
    }
    let chosen: Vec<&DeadLetter> = queue
        .letters
        .iter()
        .filter(|l| job_ids.is_empty() || job_ids.contains(&l.job_id))
        .filter(|l| filter.matches(l))
        .collect();
    for id in job_ids {
        if !chosen.iter().any(|l| &l.job_id == id) {
            eprintln!("no dead letter with job id {id} (matching the filters)");
        }
    }
    if filter.group.is_some() {
        let groups = group(&chosen);
        if groups.len() > 1 {
            return Err(CommandError::Usage(format!(
                "--group matches {} groups of different causes (a handle shared by chance, or forged); select by --class and job id instead",
                groups.len()
            )));
        }
    }
    Ok(chosen)
}

fn list(queue: &DeadLetterQueue, filter: &Filter, json: bool) -> Result<(), CommandError> {
    let letters: Vec<&DeadLetter> = queue.letters.iter().filter(|l| filter.matches(l)).collect();
    let groups = group(&letters);
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for g in &groups {
        for (currency, minor) in &g.amount {
            *total.entry(currency.clone()).or_default() += minor;
        }
    }
    if json {
        let out = serde_json::json!({ "total": letters.len(), "amount": total, "groups": groups });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    if letters.is_empty() {
        println!(
            "the dead-letter queue is empty{}",
            if filter.is_set() {
                " (for these filters)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    println!(
        "{:<8}  {:<15} {:>6}  {:<22} {:<20} {:<20} {:<18} CAUSE",
        "GROUP", "CLASS", "COUNT", "PROVIDERS", "OLDEST", "NEWEST", "AMOUNT"
    );
    for g in &groups {
        let providers: Vec<_> = g.providers.iter().cloned().collect();
        println!(
            "{:<8}  {:<15} {:>6}  {:<22} {:<20} {:<20} {:<18} {}",
            g.handle,
            g.class,
            g.count,
            if providers.is_empty() {
                "-".into()
            } else {
                providers.join(",")
            },
            g.oldest.as_deref().map_or("-", short_time),
            g.newest.as_deref().map_or("-", short_time),
            money(&g.amount),
            g.cause
        );
        let shown: Vec<&str> = g.job_ids.iter().take(5).map(String::as_str).collect();
        let more = g.job_ids.len().saturating_sub(shown.len());
        println!(
            "{:<10}jobs: {}{}",
            "",
            shown.join(" "),
            if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            }
        );
    }
    println!(
        "{} dead letter(s) in {} group(s); money stuck: {}",
        letters.len(),
        groups.len(),
        money(&total)
    );
    if let (Some(g), Some(job)) = (
        groups.first(),
        groups.first().and_then(|g| g.job_ids.first()),
    ) {
        println!(
            "next: refund-worker dlq show {job} · refund-worker dlq replay --group {} --canary --dry-run",
            g.handle
        );
    }
    Ok(())
}

fn short_time(rfc3339: &str) -> &str {
    rfc3339.get(..19).unwrap_or(rfc3339)
}

fn show(queue: &DeadLetterQueue, job_id: &str, json: bool) -> Result<(), CommandError> {
    let letter = queue
        .letters
        .iter()
        .find(|l| l.job_id == job_id)
        .ok_or_else(|| CommandError::Runtime(format!("no dead letter with job id {job_id}")))?;
    if json {
        let mut row = export_row(letter);
        row["sealed"] = json!(letter.envelope.seal.is_sealed());
        println!("{}", serde_json::to_string_pretty(&row).unwrap_or_default());
        return Ok(());
    }
    let line = |k: &str, v: &str| println!("{k:<12} {v}");
    line("job", &letter.job_id);
    line("class", class_of(letter));
    line("reason", &letter.error);
    line(
        "sealed",
        &match &letter.envelope.seal {
            SealCheck::Sealed { key_id } => format!("yes (key {key_id})"),
            SealCheck::Plain => "no (no x-refund-* headers)".to_owned(),
            SealCheck::Untrusted { why } => {
                format!("NO: {why}; its x-refund-* headers are ignored")
            }
        },
    );
    line("provider", letter.provider.as_deref().unwrap_or("-"));
    line("payment", letter.payment_id.as_deref().unwrap_or("-"));
    line(
        "amount",
        &letter
            .amount
            .as_ref()
            .map_or("-".into(), |(a, c)| format!("{a} ({c} minor units)")),
    );
    line("attempts", &letter.attempts.to_string());
    for (name, label) in [
        ("x-refund-first-seen", "first seen"),
        ("x-refund-last-seen", "last seen"),
        ("x-refund-date", "keyed date"),
    ] {
        line(label, letter.headers.get(name).map_or("-", String::as_str));
    }
    println!("headers:");
    for (k, v) in &letter.headers {
        println!("  {k}: {v}");
    }
    println!("body:");
    match serde_json::from_slice::<Value>(&letter.body) {
        Ok(json) => println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&letter.body)),
    }
    Ok(())
}

fn export(queue: &DeadLetterQueue, out: Option<&std::path::Path>) -> Result<(), CommandError> {
    let mut sink: Box<dyn Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                CommandError::Usage(format!("cannot write {}: {e}", path.display()))
            })?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for letter in &queue.letters {
        writeln!(sink, "{}", export_row(letter)).map_err(runtime)?;
    }
    sink.flush().map_err(runtime)?;
    if let Some(path) = out {
        eprintln!(
            "exported {} dead letter(s) to {}",
            queue.letters.len(),
            path.display()
        );
    }
    Ok(())
}

/// Deletes `chosen` from the queue for good.
pub(crate) async fn purge(chosen: &[&DeadLetter]) -> Result<(), CommandError> {
    for letter in chosen {
        letter.remove().await.map_err(runtime)?;
    }
    Ok(())
}

/// One letter as a JSON Lines row (export and archive).
fn export_row(letter: &DeadLetter) -> Value {
    let mut row = serde_json::json!({
        "job_id": letter.job_id,
        "message_id": letter.envelope.message_id,
        "content_type": letter.properties.content_type().as_ref().map(|t| t.to_string()),
        "class": letter.class.map(|c| c.as_str()),
        "error": letter.error,
        "provider": letter.provider,
        "payment_id": letter.payment_id,
        "attempts": letter.attempts,
        "last_seen": letter.last_seen,
        "headers": letter.headers,
    });
    match std::str::from_utf8(&letter.body) {
        Ok(text) => row["body"] = Value::String(text.to_owned()),
        Err(_) => row["body_hex"] = Value::String(hex::encode(&letter.body)),
    }
    row
}

/// Writes `chosen` to a new file, syncs it, then removes them from the queue.
pub(crate) async fn archive(
    chosen: &[&DeadLetter],
    out: &std::path::Path,
) -> Result<(), CommandError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| {
            CommandError::Usage(format!(
                "cannot create {}: {e} (an archive is never overwritten)",
                out.display()
            ))
        })?;
    let mut sink = std::io::BufWriter::new(file);
    for letter in chosen {
        writeln!(sink, "{}", export_row(letter)).map_err(runtime)?;
    }
    let file = sink.into_inner().map_err(|e| runtime(e.error()))?;
    // On disk, and named in its directory, before anything leaves the queue.
    file.sync_all().map_err(runtime)?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(runtime)?;
    for letter in chosen {
        letter.remove().await.map_err(runtime)?;
    }
    Ok(())
}

/// Publishes the letters of an archive back to the dead-letter exchange, headers as they were
/// (so a letter this deployment sealed is still sealed, and an edited one is not). Every row
/// is read before anything is sent.
async fn import(
    publisher: &Publisher,
    exchange: &str,
    file: &std::path::Path,
) -> Result<usize, CommandError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let mut letters = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad =
            |why: &str| CommandError::Usage(format!("{} line {}: {why}", file.display(), n + 1));
        let row: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let body = match (row["body"].as_str(), row["body_hex"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(hex_text)) => hex::decode(hex_text).map_err(|e| bad(&e.to_string()))?,
            _ => return Err(bad("no body")),
        };
        let mut headers = lapin::types::FieldTable::default();
        for (k, v) in row["headers"]
            .as_object()
            .ok_or_else(|| bad("no headers"))?
        {
            let v = v.as_str().ok_or_else(|| bad("a header that is not text"))?;
            headers.insert(
                k.as_str().into(),
                lapin::types::AMQPValue::LongString(v.into()),
            );
        }
        let mut properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = row["message_id"].as_str().filter(|id| id.len() <= 255) {
            properties = properties.with_message_id(id.into());
        }
        if let Some(t) = row["content_type"].as_str().filter(|t| t.len() <= 255) {
            properties = properties.with_content_type(t.into());
        }
        letters.push((body, properties));
    }
    for (body, properties) in &letters {
        publisher
            .publish(exchange, "", body, properties.clone())
            .await
            .map_err(runtime)?;
    }
    Ok(letters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> time::OffsetDateTime {
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[test]
    fn unknown_age_never_matches_older_than() {
        let now = at("2024-05-01T12:00:00Z");
        let hour = Duration::from_secs(3600);
        assert_eq!(age(None, now), None);
        assert_eq!(age(Some("yesterday"), now), None);
        assert_eq!(age(Some("2024-05-01 10:00"), now), None);
        assert!(!old_enough(age(None, now), hour));
        assert!(!old_enough(age(Some("not a time"), now), hour));
        assert!(!old_enough(age(Some("not a time"), now), Duration::ZERO));
    }

    #[test]
    fn a_future_last_seen_counts_as_age_zero() {
        let now = at("2024-05-01T12:00:00Z");
        let future = age(Some("2024-05-01T12:05:00Z"), now);
        assert_eq!(future, Some(Duration::ZERO));
        assert!(!old_enough(future, Duration::from_secs(1)));
        assert!(!old_enough(future, Duration::from_secs(3600)));
        assert!(old_enough(future, Duration::ZERO));
    }

    #[test]
    fn old_letters_match_and_young_ones_do_not() {
        let now = at("2024-05-01T12:00:00Z");
        let hour = Duration::from_secs(3600);
        let old = age(Some("2024-05-01T10:00:00Z"), now);
        assert_eq!(old, Some(Duration::from_secs(7200)));
        assert!(old_enough(old, hour));
        let exactly = age(Some("2024-05-01T13:00:00+02:00"), now);
        assert_eq!(exactly, Some(hour));
        assert!(old_enough(exactly, hour));
        let young = age(Some("2024-05-01T11:59:30Z"), now);
        assert_eq!(young, Some(Duration::from_secs(30)));
        assert!(!old_enough(young, hour));
    }
}
