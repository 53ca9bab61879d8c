//! `refund-worker dlq list|show|replay|purge|export`: the dead-letter queue for operators.
//!
//! Nothing leaves the queue unless it is replaced (its replay confirmed by the broker), found
//! already refunded, or purged with `--yes`. Everything else goes back untouched when the
//! command ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    time::Duration,
};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{CommandError, Context, runtime};
use crate::{
    broker::{
        self, Publisher, ROUTING_KEY,
        dead_letters::{DeadLetter, DeadLetterQueue, replay_properties},
        seal::{SealCheck, Sealer},
    },
    cli::{DlqArgs, DlqCommand, DlqFilter},
    job::{self, RefundJob, format_minor},
    outcome::FailureClass,
    store::RecordState,
};

/// The most dead letters one command reads.
const READ_LIMIT: usize = 100_000;

/// A parsed `--class/--provider/--older-than` filter.
#[derive(Debug, Clone, Default)]
struct Filter {
    class: Option<FailureClass>,
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
        Ok(Self {
            class,
            provider: filter.provider.clone(),
            older_than: filter.older_than,
        })
    }

    fn is_set(&self) -> bool {
        self.class.is_some() || self.provider.is_some() || self.older_than.is_some()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let class_ok = self.class.is_none_or(|c| letter.class == Some(c));
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
        class_ok && provider_ok && age_ok
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

/// The class label of a letter.
pub(crate) fn class_of(letter: &DeadLetter) -> &'static str {
    letter.class.map_or("unknown", |c| c.as_str())
}

/// A reason with its specifics (numbers, ids, quoted values) blanked, so letters that failed
/// the same way group together, as ServicePulse groups failures.
pub fn cause(error: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    for word in error.split_inclusive(' ') {
        let bare = word.trim_end();
        let trailing = &word[bare.len()..];
        if in_quote {
            if bare.ends_with('"') {
                in_quote = false;
                out.push_str("\"…\"");
                out.push_str(trailing);
            }
            continue;
        }
        if bare.starts_with('"') && !(bare.len() > 1 && bare.ends_with('"')) {
            in_quote = true;
            continue;
        }
        let shape = if bare.starts_with('"') {
            "\"…\"".to_owned()
        } else if bare.chars().any(|c| c.is_ascii_digit()) {
            let tail: String = bare
                .chars()
                .rev()
                .take_while(|c| matches!(c, ',' | ';' | ')' | '.'))
                .collect();
            format!("#{}", tail.chars().rev().collect::<String>())
        } else {
            bare.to_owned()
        };
        out.push_str(&shape);
        out.push_str(trailing);
    }
    let out = out.trim().to_owned();
    job::truncate(&out, 100)
}

/// One failure group of `dlq list` (and of the console's dead letters page).
#[derive(Debug, Serialize)]
pub(crate) struct Group {
    pub(crate) class: String,
    pub(crate) cause: String,
    pub(crate) count: usize,
    pub(crate) providers: BTreeSet<String>,
    pub(crate) oldest: Option<String>,
    pub(crate) newest: Option<String>,
    /// Money waiting, minor units per currency.
    pub(crate) amount: BTreeMap<String, u64>,
    pub(crate) job_ids: Vec<String>,
}

/// The letters grouped by class and cause, largest group first.
pub(crate) fn group(letters: &[&DeadLetter]) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for letter in letters {
        let class = class_of(letter).to_owned();
        let cause = cause(&letter.error);
        let group = groups
            .entry((class.clone(), cause.clone()))
            .or_insert_with(|| Group {
                class,
                cause,
                count: 0,
                providers: BTreeSet::new(),
                oldest: None,
                newest: None,
                amount: BTreeMap::new(),
                job_ids: Vec::new(),
            });
        group.count += 1;
        group.providers.extend(letter.provider.clone());
        if let Some(seen) = &letter.last_seen {
            if group.oldest.as_ref().is_none_or(|o| seen < o) {
                group.oldest = Some(seen.clone());
            }
            if group.newest.as_ref().is_none_or(|n| seen > n) {
                group.newest = Some(seen.clone());
            }
        }
        if let Some((amount, currency)) = &letter.amount {
            *group.amount.entry(currency.clone()).or_default() += amount;
        }
        group.job_ids.push(letter.job_id.clone());
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
    groups
}

pub(crate) fn money(amount: &BTreeMap<String, u64>) -> String {
    if amount.is_empty() {
        return "-".into();
    }
    amount
        .iter()
        .map(|(currency, minor)| {
            let exponent = job::Currency::parse(currency).map_or(2, |c| c.exponent());
            format!("{currency} {}", format_minor(*minor, exponent))
        })
        .collect::<Vec<_>>()
        .join(", ")
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
        DlqCommand::Show { job_id } => show(queue, &job_id),
        DlqCommand::Export { out } => export(queue, out.as_deref()),
        DlqCommand::Archive {
            job_ids,
            filter,
            all,
            out,
            yes,
        } => {
            let chosen = select(queue, &job_ids, &Filter::parse(&filter)?, all)?;
            let archived = archive(&chosen, &out, yes).await;
            let outcome = match &archived {
                Ok(()) => {
                    Some(json!({ "archived": chosen.len(), "file": out.display().to_string() }))
                }
                Err(CommandError::Usage(_)) => None,
                Err(e) => Some(json!({ "failed": e.to_string() })),
            };
            done = outcome.map(|o| ("dlq archive", target_of(&chosen), o));
            archived
        }
        DlqCommand::Import { file } => {
            let imported = import(publisher, &topology.dead_exchange(), &file).await;
            if let Ok(count) = &imported {
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
        } => {
            let chosen = select(queue, &job_ids, &Filter::parse(&filter)?, all)?;
            let purged = purge(queue, &chosen, yes).await;
            let outcome = match &purged {
                Ok(()) => Some(json!({ "purged": chosen.len() })),
                // Refused before anything was deleted: nothing to record.
                Err(CommandError::Usage(_)) => None,
                Err(e) => Some(json!({ "failed": e.to_string() })),
            };
            done = outcome.map(|o| ("dlq purge", target_of(&chosen), o));
            purged
        }
        DlqCommand::Replay {
            job_ids,
            filter,
            all,
            dry_run,
            set,
            body,
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
            let (letters, class) = set_target(&chosen);
            // A letter whose key belongs to another refund never reached a provider under it:
            // it may be given a key of its own.
            let collision = match chosen.first() {
                Some(letter) if letters == 1 && !fields.is_empty() => {
                    matches!(
                        replay.standing(letter, &letter.body).await?,
                        Standing::Collision(_)
                    )
                }
                _ => false,
            };
            check_set(&fields, letters, class, collision).map_err(CommandError::Usage)?;
            let report = replay.run(&chosen).await;
            if let Ok(report) = &report {
                report.print();
            }
            if !dry_run {
                let mut target = target_of(&chosen);
                target["set"] = json!(set);
                if let Some(new_body) = &new_body {
                    target["body"] = json!(String::from_utf8_lossy(new_body));
                }
                let outcome = match &report {
                    Ok(report) => report.counts.clone(),
                    Err(e) => json!({ "failed": e.to_string() }),
                };
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
            "say which dead letters: JOB_ID…, a filter (--class, --provider, --older-than) or --all".into(),
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
        "{:<15} {:>6}  {:<22} {:<20} {:<20} {:<18} CAUSE",
        "CLASS", "COUNT", "PROVIDERS", "OLDEST", "NEWEST", "AMOUNT"
    );
    for g in &groups {
        let providers: Vec<_> = g.providers.iter().cloned().collect();
        println!(
            "{:<15} {:>6}  {:<22} {:<20} {:<20} {:<18} {}",
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
    }
    println!(
        "{} dead letter(s) in {} group(s); money stuck: {}",
        letters.len(),
        groups.len(),
        money(&total)
    );
    Ok(())
}

fn short_time(rfc3339: &str) -> &str {
    rfc3339.get(..19).unwrap_or(rfc3339)
}

fn show(queue: &DeadLetterQueue, job_id: &str) -> Result<(), CommandError> {
    let letter = queue
        .letters
        .iter()
        .find(|l| l.job_id == job_id)
        .ok_or_else(|| CommandError::Runtime(format!("no dead letter with job id {job_id}")))?;
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

async fn purge(
    queue: &DeadLetterQueue,
    chosen: &[&DeadLetter],
    yes: bool,
) -> Result<(), CommandError> {
    if !yes {
        return Err(CommandError::Usage(format!(
            "purge deletes {} of {} dead letter(s) for good; run `dlq export` first if they matter, then pass --yes",
            chosen.len(),
            queue.letters.len()
        )));
    }
    for letter in chosen {
        letter.remove().await.map_err(runtime)?;
    }
    println!("purged {} dead letter(s)", chosen.len());
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
async fn archive(
    chosen: &[&DeadLetter],
    out: &std::path::Path,
    yes: bool,
) -> Result<(), CommandError> {
    if !yes {
        return Err(CommandError::Usage(format!(
            "archive moves {} dead letter(s) out of the queue into {}; pass --yes",
            chosen.len(),
            out.display()
        )));
    }
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
    // On disk before anything leaves the queue.
    file.sync_all().map_err(runtime)?;
    for letter in chosen {
        letter.remove().await.map_err(runtime)?;
    }
    println!(
        "archived {} dead letter(s) to {}",
        chosen.len(),
        out.display()
    );
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
    println!(
        "imported {} dead letter(s) from {}",
        letters.len(),
        file.display()
    );
    Ok(letters.len())
}

/// `--set field=value` edits: the value is JSON when it parses as JSON, else text; an empty
/// value removes the field.
fn parse_edits(set: &[String]) -> Result<Vec<(String, Option<Value>)>, CommandError> {
    set.iter()
        .map(|edit| {
            let (field, value) = edit.split_once('=').ok_or_else(|| {
                CommandError::Usage(format!("--set takes field=value, got {edit:?}"))
            })?;
            // Removing a field is how a typo is fixed (`ammount=`): any name may go.
            if !value.is_empty() && !job::FIELDS.contains(&field) {
                return Err(CommandError::Usage(format!(
                    "--set: {field:?} is not a job field (`{field}=` removes it)"
                )));
            }
            let value = match value {
                "" => None,
                text => Some(
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
                ),
            };
            Ok((field.to_owned(), value))
        })
        .collect()
}

/// The top-level fields whose values differ between two bodies (added, removed or changed);
/// a body that is not a JSON object changes every key field.
pub(crate) fn changed_fields(old: &[u8], new: &[u8]) -> Vec<String> {
    let (Ok(old), Ok(new)) = (job::parse_object(old), job::parse_object(new)) else {
        return KEY_FIELDS.iter().map(|f| (*f).to_owned()).collect();
    };
    let mut fields: BTreeSet<String> = BTreeSet::new();
    for (k, v) in &old {
        if new.get(k) != Some(v) {
            fields.insert(k.clone());
        }
    }
    for k in new.keys() {
        if !old.contains_key(k) {
            fields.insert(k.clone());
        }
    }
    fields.into_iter().collect()
}

/// The job fields that make the idempotency key.
const KEY_FIELDS: [&str; 4] = ["date", "idempotency_key", "payment_id", "order_id"];

/// The letters a `--set` would edit, counted as the replay counts them (identical copies, same
/// job id and same body, are one letter), and their class: `invalid` only when every copy is.
pub(crate) fn set_target(chosen: &[&DeadLetter]) -> (usize, Option<FailureClass>) {
    let letters: BTreeSet<(&str, &[u8])> = chosen
        .iter()
        .map(|l| (l.job_id.as_str(), l.body.as_slice()))
        .collect();
    let class = chosen
        .iter()
        .map(|l| l.class)
        .find(|c| *c != Some(FailureClass::Invalid))
        .unwrap_or(Some(FailureClass::Invalid));
    (letters.len(), class)
}

/// When `--set` may edit: one letter only (an edit fits one job, not a group), and never a
/// field of the idempotency key unless the letter is `invalid` (sealed: it never reached a
/// provider), or — for `idempotency_key` alone — its key is held by a different refund (it was
/// refused at the claim, before any provider call). Any other letter may have been refunded
/// under its key (an `exhausted` one after a timeout, say); a new key would hide that refund
/// from the replay's check and send a second one. The class is the sealed one: a planted
/// letter's class header is not believed, so it counts as unknown.
pub(crate) fn check_set(
    fields: &[&str],
    letters: usize,
    class: Option<FailureClass>,
    collision: bool,
) -> Result<(), String> {
    if fields.is_empty() {
        return Ok(());
    }
    if letters != 1 {
        return Err(format!(
            "--set edits exactly one dead letter, but this selection has {letters}; name a single JOB_ID"
        ));
    }
    if class == Some(FailureClass::Invalid) {
        return Ok(());
    }
    let allowed = |field: &&&str| collision && **field == "idempotency_key";
    if let Some(field) = fields
        .iter()
        .find(|f| KEY_FIELDS.contains(f) && !allowed(f))
    {
        let class = class.map_or("unknown", |c| c.as_str());
        return Err(format!(
            "--set {field}: refused for a letter of class {class}; {field} is part of the idempotency key, so the replay would go out under a new key and a refund already made under the old key would not be seen (only an invalid letter, which never reached a provider, may change it)"
        ));
    }
    Ok(())
}

/// A replay run (the CLI's and the console's).
pub(crate) struct Replay<'a> {
    pub(crate) publisher: &'a Publisher,
    pub(crate) exchange: String,
    pub(crate) store: &'a crate::store::IdempotencyStore,
    pub(crate) edits: &'a [(String, Option<Value>)],
    /// A whole new body for the (one) letter, already read.
    pub(crate) body: Option<&'a [u8]>,
    pub(crate) dry_run: bool,
    pub(crate) sealer: &'a Sealer,
}

/// What a replay run did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    /// One line per letter: what happened to it (`replayed`, `would remove`, `skipped`…),
    /// its job id, and why.
    pub(crate) lines: Vec<(String, String, String)>,
    /// The closing sentence (`3 replayed, 1 already refunded …`).
    pub(crate) summary: String,
    /// The counts, for the audit log.
    pub(crate) counts: Value,
}

impl ReplayReport {
    /// As the CLI prints it.
    pub(crate) fn print(&self) {
        for (tag, job_id, text) in &self.lines {
            println!("{tag:<13} {job_id} {text}");
        }
        println!("{}", self.summary);
    }
}

/// Where a letter's job stands against its idempotency record.
pub(crate) enum Standing {
    /// Refunded under its key, by this very job (same fingerprint): the text says where.
    Refunded(String),
    /// Its key is held by a different refund: the text says which and what to do.
    Collision(String),
    /// Nothing finished under its key (or its key is not known before the worker pins it).
    Open(Option<job::IdempotencyKey>),
}

/// What a replay did with one letter.
enum Replayed {
    Republished(String),
    AlreadyRefunded(String),
    /// An identical copy (same job id, same body) of a letter this replay republished.
    Copy,
    Skipped(String),
}

impl Replay<'_> {
    /// Where the job `body` (the letter's, edited or not) stands: keyed by its own date, else
    /// by the sealed day it was keyed under, else by the day pinned to its message id or body
    /// (an unsealed letter's headers choose nothing). "Already refunded" only when the record
    /// under that key holds this very refund (same fingerprint).
    pub(crate) async fn standing(
        &self,
        letter: &DeadLetter,
        body: &[u8],
    ) -> Result<Standing, CommandError> {
        let Ok(job) = RefundJob::parse(body) else {
            return Ok(Standing::Open(None));
        };
        let envelope = &letter.envelope;
        let date = match job.date.or(envelope.keyed_date) {
            Some(date) => Some(date),
            None => {
                let by_message = match &envelope.message_id {
                    Some(id) => self.store.pinned_date(id).await.map_err(runtime)?,
                    None => None,
                };
                match by_message {
                    Some(date) => Some(date),
                    None => self
                        .store
                        .pinned_date(&broker::envelope::body_id(&letter.body))
                        .await
                        .map_err(runtime)?,
                }
            }
        };
        let Some(date) = date else {
            return Ok(Standing::Open(None));
        };
        let key = job.idempotency_key(date);
        let Some(record) = self.store.get(&key).await.map_err(runtime)? else {
            return Ok(Standing::Open(Some(key)));
        };
        let ours = crate::pipeline::Fingerprint::of(&job);
        let refund = record
            .result
            .as_ref()
            .map_or("-".into(), |r| r.refund.refund_id.clone());
        match record.fingerprint {
            Some(theirs) if !ours.matches(&theirs) && record.state != RecordState::Failed => {
                Ok(Standing::Collision(format!(
                    "kept: its key {key} belongs to a different refund ({theirs}, {} {refund}), not to this job ({ours}); if this is a second refund, give it its own key: dlq replay {} --set idempotency_key=<a new key>",
                    record.state, letter.job_id
                )))
            }
            _ if record.state == RecordState::Done => Ok(Standing::Refunded(format!(
                "already refunded under {key} (refund {refund})"
            ))),
            _ => Ok(Standing::Open(Some(key))),
        }
    }

    /// Replays `chosen` (or, dry, says what it would do).
    pub(crate) async fn run(&self, chosen: &[&DeadLetter]) -> Result<ReplayReport, CommandError> {
        let (mut replayed, mut refunded, mut skipped, mut copies) = (0, 0, 0, 0);
        let mut lines = Vec::with_capacity(chosen.len());
        // Dead-lettering is at-least-once: a worker that dies between the broker's confirm of
        // a dead letter and its ack leaves a second, identical copy. One replay is enough for
        // both; replaying each would double the copies at every round.
        let mut done: BTreeSet<(&str, &[u8])> = BTreeSet::new();
        for letter in chosen {
            let identity = (letter.job_id.as_str(), letter.body.as_slice());
            let verdict = if done.contains(&identity) {
                if !self.dry_run {
                    letter.remove().await.map_err(runtime)?;
                }
                Replayed::Copy
            } else {
                self.one(letter).await?
            };
            let (tag, text) = match &verdict {
                Replayed::Republished(t) => {
                    replayed += 1;
                    done.insert(identity);
                    (
                        if self.dry_run {
                            "would replay"
                        } else {
                            "replayed"
                        },
                        t.as_str(),
                    )
                }
                Replayed::AlreadyRefunded(t) => {
                    refunded += 1;
                    (
                        if self.dry_run {
                            "would remove"
                        } else {
                            "removed"
                        },
                        t.as_str(),
                    )
                }
                Replayed::Copy => {
                    copies += 1;
                    (
                        if self.dry_run {
                            "would remove"
                        } else {
                            "removed"
                        },
                        "a second copy of the letter replayed above",
                    )
                }
                Replayed::Skipped(t) => {
                    skipped += 1;
                    ("skipped", t.as_str())
                }
            };
            lines.push((tag.to_owned(), letter.job_id.clone(), text.to_owned()));
        }
        let prefix = if self.dry_run { "dry run: " } else { "" };
        let copies_removed = copies;
        let copies = if copies > 0 {
            format!(", {copies} duplicate copies removed")
        } else {
            String::new()
        };
        let summary = format!(
            "{prefix}{replayed} replayed, {refunded} already refunded (removed from the queue), {skipped} skipped and left in the queue{copies}"
        );
        Ok(ReplayReport {
            lines,
            summary,
            counts: json!({
                "replayed": replayed,
                "already_refunded": refunded,
                "skipped": skipped,
                "duplicate_copies_removed": copies_removed,
            }),
        })
    }

    async fn one(&self, letter: &DeadLetter) -> Result<Replayed, CommandError> {
        // The body as it will be replayed: a replacement, the original bytes, or the edited
        // object.
        let body = if let Some(body) = self.body {
            body.to_vec()
        } else if self.edits.is_empty() {
            letter.body.clone()
        } else {
            let mut object: Map<String, Value> = match job::parse_object(&letter.body) {
                Ok(object) => object,
                Err(e) => {
                    return Ok(Replayed::Skipped(format!(
                        "the body cannot be edited ({e})"
                    )));
                }
            };
            for (field, value) in self.edits {
                match value {
                    Some(v) => object.insert(field.clone(), v.clone()),
                    None => object.remove(field),
                };
            }
            serde_json::to_vec(&object).map_err(runtime)?
        };
        if let Err(e) = RefundJob::parse(&body) {
            return Ok(Replayed::Skipped(format!(
                "still invalid: {e}; fix it with --set field=value"
            )));
        }
        match self.standing(letter, &body).await? {
            Standing::Refunded(text) => {
                if !self.dry_run {
                    letter.remove().await.map_err(runtime)?;
                }
                return Ok(Replayed::AlreadyRefunded(text));
            }
            Standing::Collision(text) => return Ok(Replayed::Skipped(text)),
            Standing::Open(Some(key)) if !self.dry_run => {
                // A poison message gets a fresh start; its record stays uncertain, so the
                // replay reconciles with the provider before it sends anything.
                self.store.reset_takeovers(&key).await.map_err(runtime)?;
            }
            Standing::Open(_) => {}
        }
        if self.dry_run {
            return Ok(Replayed::Republished(format!("({})", class_of(letter))));
        }
        // The replacement first, confirmed; only then does the dead letter go.
        self.publisher
            .publish(
                &self.exchange,
                ROUTING_KEY,
                &body,
                replay_properties(letter, &body, self.sealer),
            )
            .await
            .map_err(runtime)?;
        letter.remove().await.map_err(runtime)?;
        Ok(Replayed::Republished(format!("({})", class_of(letter))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_group_alike_failures() {
        assert_eq!(
            cause(
                "field `amount`: must be an integer from 1 to 1000000000000 (minor units), got 0"
            ),
            cause(
                "field `amount`: must be an integer from 1 to 1000000000000 (minor units), got -5"
            ),
        );
        assert_eq!(
            cause(r#"field `provider`: must be one of stripe, got "paypal""#),
            cause(r#"field `provider`: must be one of stripe, got "pay pal""#),
        );
        assert_ne!(
            cause("field `amount`: is required"),
            cause("field `provider`: is required")
        );
        assert_eq!(
            cause("stripe 503 api_error: down"),
            "stripe # api_error: down"
        );
    }

    #[test]
    fn edits_parse_json_or_text_and_empty_removes() {
        let edits = parse_edits(&[
            "amount=1500".into(),
            "reason=FRAUD".into(),
            "description=".into(),
        ])
        .unwrap();
        assert_eq!(edits[0], ("amount".into(), Some(Value::from(1500))));
        assert_eq!(edits[1], ("reason".into(), Some(Value::from("FRAUD"))));
        assert_eq!(edits[2], ("description".into(), None));
        assert!(parse_edits(&["ammount=1".into()]).is_err());
        assert!(parse_edits(&["amount".into()]).is_err());
    }

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

    #[test]
    fn set_edits_exactly_one_letter() {
        let invalid = Some(FailureClass::Invalid);
        assert_eq!(check_set(&[], 0, invalid, false), Ok(()));
        assert_eq!(check_set(&[], 7, None, false), Ok(()));
        assert_eq!(check_set(&["amount"], 1, invalid, false), Ok(()));
        for letters in [0, 2, 50] {
            let refused = check_set(&["amount"], letters, invalid, false).unwrap_err();
            assert!(refused.contains("exactly one"), "{refused}");
            assert!(refused.contains(&letters.to_string()), "{refused}");
            assert!(!refused.contains('\n'), "{refused}");
        }
    }

    #[test]
    fn set_keeps_the_idempotency_key_unless_the_letter_is_invalid() {
        for field in KEY_FIELDS {
            // An invalid letter never reached a provider: its key may change.
            assert_eq!(
                check_set(&["amount", field], 1, Some(FailureClass::Invalid), false),
                Ok(())
            );
            for class in FailureClass::ALL
                .into_iter()
                .filter(|c| *c != FailureClass::Invalid)
                .map(Some)
                .chain([None])
            {
                let refused = check_set(&["amount", field], 1, class, false).unwrap_err();
                assert!(refused.starts_with(&format!("--set {field}:")), "{refused}");
                assert!(refused.contains("idempotency key"), "{refused}");
                assert!(
                    refused.contains(class.map_or("unknown", |c| c.as_str())),
                    "{refused}"
                );
                assert!(!refused.contains('\n'), "{refused}");
            }
        }
        // Other fields may be fixed on any single letter.
        for class in FailureClass::ALL {
            assert_eq!(
                check_set(&["amount", "reason", "description"], 1, Some(class), false),
                Ok(())
            );
        }
    }

    #[test]
    fn a_key_collision_may_take_a_key_of_its_own_and_nothing_else_of_the_key() {
        for class in FailureClass::ALL.into_iter().map(Some).chain([None]) {
            assert_eq!(
                check_set(&["idempotency_key"], 1, class, true),
                Ok(()),
                "{class:?}"
            );
            if class == Some(FailureClass::Invalid) {
                continue;
            }
            for field in ["date", "payment_id", "order_id"] {
                let refused = check_set(&["idempotency_key", field], 1, class, true).unwrap_err();
                assert!(refused.starts_with(&format!("--set {field}:")), "{refused}");
            }
            assert!(check_set(&["idempotency_key"], 1, class, false).is_err());
        }
    }
}
