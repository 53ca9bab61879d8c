//! Dead letters grouped by class and cause, as ServicePulse groups failures.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{broker::dead_letters::DeadLetter, job};

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
    /// A short handle for the group (`g-` and twelve hex digits of a hash of class and
    /// cause): the same for the same failure on every run, so `dlq replay --group` can name
    /// it; long enough that a publisher cannot forge a cause whose group shares it.
    pub(crate) handle: String,
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

/// The handle of the group of `class` and `cause`.
pub(crate) fn handle(class: &str, cause: &str) -> String {
    let digest = Sha256::digest(format!("{class}\n{cause}").as_bytes());
    format!("g-{}", &hex::encode(digest)[..12])
}

/// What tells one letter from another that shares its job id: the job id, the body and
/// whether this deployment sealed it, hashed (24 hex digits). Identical copies share it.
pub(crate) fn identity(letter: &DeadLetter) -> String {
    let mut digest = Sha256::new();
    digest.update(letter.job_id.as_bytes());
    digest.update([0, u8::from(letter.envelope.seal.is_sealed())]);
    digest.update(&letter.body);
    hex::encode(digest.finalize())[..24].to_owned()
}

/// The letters with job id `job_id`: refused when they are not all copies of one letter (a
/// planted letter can carry a real letter's job id as its message id), so an action on one
/// never takes the other along.
pub(crate) fn by_job_id<'a>(
    letters: &'a [DeadLetter],
    job_id: &str,
) -> Result<Vec<&'a DeadLetter>, String> {
    let chosen: Vec<&DeadLetter> = letters.iter().filter(|l| l.job_id == job_id).collect();
    let distinct: BTreeSet<String> = chosen.iter().map(|l| identity(l)).collect();
    if distinct.len() > 1 {
        return Err(format!(
            "{} different letters carry job id {}: one may be planted (an unsealed letter's job id is its message id); act on them by group or with `refund-worker dlq show`",
            distinct.len(),
            crate::job::truncate(job_id, 80)
        ));
    }
    Ok(chosen)
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
                handle: handle(&class, &cause),
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

/// Sums per currency, as people read money (`R$ 186,50, USD 12,00`); `-` for none.
pub(crate) fn money(amount: &BTreeMap<String, u64>) -> String {
    if amount.is_empty() {
        return "-".into();
    }
    amount
        .iter()
        .map(|(currency, minor)| match job::Currency::parse(currency) {
            Some(c) => job::format_money(*minor, c),
            // A code this build does not know (read from a planted letter, say).
            None => format!("{currency} {minor} (minor units)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_handle_is_stable_and_tells_groups_apart() {
        let a = handle("exhausted", "stripe # api_error: down");
        assert_eq!(a, handle("exhausted", "stripe # api_error: down"));
        assert!(a.starts_with("g-") && a.len() == 14, "{a}");
        assert_ne!(a, handle("permanent", "stripe # api_error: down"));
        assert_ne!(a, handle("exhausted", "stripe # api_error: slow"));
    }

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
}
