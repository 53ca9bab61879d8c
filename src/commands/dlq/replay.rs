//! Replaying dead letters: edits, the key-field rule, and the replay run (the CLI's and the console's).

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Map, Value, json};

use super::class_of;
use crate::{
    broker::{
        self, Publisher, ROUTING_KEY,
        dead_letters::{DeadLetter, replay_properties},
        seal::Sealer,
    },
    commands::{CommandError, runtime},
    job::{self, RefundJob},
    outcome::FailureClass,
    store::RecordState,
};

/// `--set field=value` edits: the value is JSON when it parses as JSON, else text; an empty
/// value removes the field.
pub(crate) fn parse_edits(set: &[String]) -> Result<Vec<(String, Option<Value>)>, CommandError> {
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
    /// For scripts: each letter's line, the counts and the summary.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "letters": self
                .lines
                .iter()
                .map(|(what, job_id, why)| json!({ "what": what, "job_id": job_id, "why": why }))
                .collect::<Vec<_>>(),
            "counts": self.counts,
            "summary": self.summary,
        })
    }

    /// This report followed by `later`'s lines, under `later`'s counts and summary plus this
    /// one's replays.
    fn joined(self, later: ReplayReport) -> ReplayReport {
        let mut lines = self.lines;
        lines.extend(later.lines);
        let sum =
            |k: &str| self.counts[k].as_u64().unwrap_or(0) + later.counts[k].as_u64().unwrap_or(0);
        let counts = json!({
            "replayed": sum("replayed"),
            "already_refunded": sum("already_refunded"),
            "skipped": sum("skipped"),
            "duplicate_copies_removed": sum("duplicate_copies_removed"),
        });
        ReplayReport {
            lines,
            summary: summary_of(&counts, later.summary.starts_with("dry run")),
            counts,
        }
    }

    /// As the CLI prints it.
    pub(crate) fn print(&self) {
        for (tag, job_id, text) in &self.lines {
            println!("{tag:<13} {job_id} {text}");
        }
        println!("{}", self.summary);
    }
}

/// The closing sentence of a replay with these counts.
fn summary_of(counts: &Value, dry_run: bool) -> String {
    let n = |k: &str| counts[k].as_u64().unwrap_or(0);
    let copies = match n("duplicate_copies_removed") {
        0 => String::new(),
        c if dry_run => format!(", {c} duplicate copies would be removed"),
        c => format!(", {c} duplicate copies removed"),
    };
    if dry_run {
        format!(
            "dry run: {} would be replayed, {} already refunded (would be removed from the queue), {} would be skipped and left in the queue{copies}",
            n("replayed"),
            n("already_refunded"),
            n("skipped")
        )
    } else {
        format!(
            "{} replayed, {} already refunded (removed from the queue), {} skipped and left in the queue{copies}",
            n("replayed"),
            n("already_refunded"),
            n("skipped")
        )
    }
}

/// Where a letter's job stands against its idempotency record.
pub(crate) enum Standing {
    /// Refunded under its key, by this very job (same fingerprint): the text says where.
    Refunded(String),
    /// Its key is held by a different request: the text says which and what to do; `rekey`
    /// when the letter may take a key of its own (the holder is a finished refund of other
    /// money, so this letter's request never reached a provider under that key).
    Collision { text: String, rekey: bool },
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
    /// The idempotency key `job` (a letter's, edited or not) is refunded under: keyed by its
    /// own date, else by the sealed day it was keyed under, else by the day pinned to its
    /// message id or body (an unsealed letter's headers choose nothing); `None` before a
    /// worker pinned a day.
    pub(crate) async fn key_of(
        &self,
        letter: &DeadLetter,
        job: &RefundJob,
    ) -> Result<Option<job::IdempotencyKey>, CommandError> {
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
        Ok(date.map(|date| job.idempotency_key(date)))
    }

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
        let Some(key) = self.key_of(letter, &job).await? else {
            return Ok(Standing::Open(None));
        };
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
                let head = format!(
                    "kept: its key {key} belongs to a different request ({theirs}, {} {refund}), not to this job ({ours})",
                    record.state
                );
                if record.state != RecordState::Done || record.uncertain {
                    Ok(Standing::Collision {
                        text: format!(
                            "{head}; that refund is not finished, so this letter keeps its key: replay it again once it is"
                        ),
                        rekey: false,
                    })
                } else if ours.same_money(&theirs) {
                    Ok(Standing::Collision {
                        text: format!(
                            "{head}; it refunded the same payment and amount, so this is most likely the same refund re-sent with other words: archive or purge this letter (a truly second refund is published anew, with its own idempotency_key)"
                        ),
                        rekey: false,
                    })
                } else {
                    Ok(Standing::Collision {
                        text: format!(
                            "{head}; if this is a second refund, give it its own key: dlq replay {} --set idempotency_key=<a new key>",
                            letter.job_id
                        ),
                        rekey: true,
                    })
                }
            }
            _ if record.state == RecordState::Done => Ok(Standing::Refunded(format!(
                "already refunded under {key} (refund {refund})"
            ))),
            _ => Ok(Standing::Open(Some(key))),
        }
    }

    /// Whether `fields` may be edited on `chosen` (see [`check_set`]): a letter whose key is
    /// held by a different refund may take a key of its own.
    pub(crate) async fn check_edit(
        &self,
        chosen: &[&DeadLetter],
        fields: &[&str],
    ) -> Result<(), CommandError> {
        let (letters, class) = set_target(chosen);
        let collision = match chosen.first() {
            Some(letter) if letters == 1 && !fields.is_empty() => matches!(
                self.standing(letter, &letter.body).await?,
                Standing::Collision { rekey: true, .. }
            ),
            _ => false,
        };
        check_set(fields, letters, class, collision).map_err(CommandError::Usage)
    }

    /// A canary replay: the first letter alone, its refund awaited up to `wait`, and the rest
    /// only if it came; otherwise the rest stay in the queue. The report covers what was
    /// replayed; the sentence says how the canary fared.
    pub(crate) async fn canary(
        &self,
        chosen: &[&DeadLetter],
        wait: Duration,
    ) -> (Result<ReplayReport, CommandError>, String) {
        let Some((canary, rest)) = chosen.split_first() else {
            return (self.run(chosen).await, "nothing to replay".into());
        };
        let first = match self.run(&[canary]).await {
            Ok(r) => r,
            Err(e) => return (Err(e), "the canary could not be replayed".into()),
        };
        if self.dry_run {
            let said = format!(
                "would replay the canary {} first, wait up to {}s for its refund, then the rest ({})",
                canary.job_id,
                wait.as_secs(),
                rest.len()
            );
            return (self.run(rest).await.map(|r| first.joined(r)), said);
        }
        if !first.lines.iter().any(|(tag, _, _)| tag == "replayed") {
            let said = format!(
                "the canary {} was not replayed (see its line); the rest ({}) stay in the queue",
                canary.job_id,
                rest.len()
            );
            return (Ok(first), said);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let refunded = loop {
            match self.standing(canary, &canary.body).await {
                Ok(Standing::Refunded(_)) => break true,
                _ if tokio::time::Instant::now() >= deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        if !refunded {
            let said = format!(
                "the canary {} did not refund within {}s; the rest ({}) stay in the queue",
                canary.job_id,
                wait.as_secs(),
                rest.len()
            );
            return (Ok(first), said);
        }
        let said = format!(
            "the canary {} refunded; the rest ({}) were replayed",
            canary.job_id,
            rest.len()
        );
        (self.run(rest).await.map(|r| first.joined(r)), said)
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
        let counts = json!({
            "replayed": replayed,
            "already_refunded": refunded,
            "skipped": skipped,
            "duplicate_copies_removed": copies,
        });
        Ok(ReplayReport {
            lines,
            summary: summary_of(&counts, self.dry_run),
            counts,
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
            Standing::Collision { text, .. } => return Ok(Replayed::Skipped(text)),
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
