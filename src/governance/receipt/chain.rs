//! Checking a chain of stored receipts: every receipt reads, its hash recomputes from its
//! fields, its stored text is the canonical form, its signature verifies, it links to the
//! receipt before it, the positions run 1..=n, and the last one is the recorded head. Every
//! problem is named by position and, when the receipt is readable, by job id.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::{GENESIS, Receipt, SealFormat};
use crate::signing::PublicKey;

/// A run of missing positions longer than this is reported once, as a range.
const MISSING_ONE_BY_ONE: u64 = 20;

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// How many stored receipts were examined.
    pub checked: u64,
    /// Everything wrong, by position; empty when the chain is intact.
    pub problems: Vec<Problem>,
    /// Readable receipts signed one by one (format 1).
    pub signed_individually: u64,
    /// Readable receipts signed per group (format 2: one signature over a Merkle root).
    pub signed_per_group: u64,
}

impl ChainReport {
    /// Nothing wrong.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The position it concerns (0: the chain as a whole).
    pub seq: u64,
    /// The job of the receipt there, when it can be read.
    pub job_id: Option<String>,
    /// What is wrong, e.g. `edited (hash mismatch)`, `signature invalid`,
    /// `link broken: prev_hash does not match receipt 6`, `missing (deleted?)`, `inserted …`.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.seq, &self.job_id) {
            (0, _) => write!(f, "chain: {}", self.what),
            (seq, Some(job)) => write!(f, "receipt {seq} (job {job}): {}", self.what),
            (seq, None) => write!(f, "receipt {seq}: {}", self.what),
        }
    }
}

/// The group of receipts being read (format 2).
#[derive(Debug)]
struct OpenGroup {
    /// Its Merkle root.
    root: String,
    /// How many receipts it sealed.
    size: u32,
    /// The position of its index 0.
    first: u64,
    /// The last position read in it.
    last: u64,
}

impl OpenGroup {
    /// The position of its last receipt.
    fn end(&self) -> u64 {
        self.first + u64::from(self.size).saturating_sub(1)
    }
}

/// Checks a chain given as stored text (position → the exact stored JSON), in any order:
/// entries listed out of position order are named, then checked in order. `head` is the
/// recorded (seq, hash) of the last receipt, when there is one to compare with.
pub fn verify_chain(
    stored: &[(u64, String)],
    head: Option<(u64, String)>,
    key: &PublicKey,
) -> ChainReport {
    let mut verifier = ChainVerifier::new(key, head);
    for pair in stored.windows(2) {
        if pair[1].0 < pair[0].0 {
            verifier.problem(
                pair[1].0,
                job_id_of(&pair[1].1),
                format!("out of order: listed after receipt {}", pair[0].0),
            );
        }
    }
    let mut sorted: Vec<&(u64, String)> = stored.iter().collect();
    sorted.sort_by_key(|(seq, _)| *seq);
    for (seq, text) in sorted {
        let _ = verifier.check(*seq, text);
    }
    verifier.finish()
}

/// Reads a JSON Lines export into (position, text) entries. A line's position is the `seq`
/// it claims (so a deleted line is reported as one missing receipt, not as every later one
/// moved); an unreadable line takes the position after the line before it. Line endings
/// (`\n` or `\r\n`) are framing, not receipt bytes.
pub fn entries_from_lines(text: &str) -> Vec<(u64, String)> {
    let mut entries = Vec::new();
    let mut previous = 0u64;
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return entries;
    }
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let seq = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("seq")?.as_u64())
            .unwrap_or(previous + 1);
        previous = seq;
        entries.push((seq, line.to_owned()));
    }
    entries
}

/// The job id of a stored text that does not read as a receipt, if it is JSON with one.
fn job_id_of(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value
        .get("body")?
        .get("job_id")?
        .as_str()
        .map(str::to_owned)
}

/// A check fed one stored receipt at a time in ascending position, so a long chain can be
/// streamed from storage without holding it all.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    /// Verifies signatures.
    key: &'k PublicKey,
    /// The recorded head, if any: positions after it were inserted.
    head: Option<(u64, String)>,
    /// Receipts examined.
    checked: u64,
    /// Found so far.
    problems: Vec<Problem>,
    /// The highest position examined (0: none yet).
    last_seq: u64,
    /// The stored hash of the receipt at `last_seq`, when it read (the next one links to it).
    last_hash: Option<String>,
    /// Idempotency key → the position that sealed it (a key is sealed once).
    sealed_keys: HashMap<String, u64>,
    /// Group seals (root, signature, size) whose signature verified: checked once per group.
    verified_roots: HashSet<(String, String, u32)>,
    /// The group being read: its root, size, first position and last position seen.
    open_group: Option<OpenGroup>,
    /// Receipts read in each format.
    signed_individually: u64,
    signed_per_group: u64,
}

impl<'k> ChainVerifier<'k> {
    /// A check against `key`, with the recorded `head` if there is one.
    pub fn new(key: &'k PublicKey, head: Option<(u64, String)>) -> Self {
        Self {
            key,
            head,
            checked: 0,
            problems: Vec::new(),
            last_seq: 0,
            last_hash: None,
            sealed_keys: HashMap::new(),
            verified_roots: HashSet::new(),
            open_group: None,
            signed_individually: 0,
            signed_per_group: 0,
        }
    }

    /// Records a problem found outside the receipts themselves (e.g. by the store).
    pub fn problem(&mut self, seq: u64, job_id: Option<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            seq,
            job_id,
            what: what.into(),
        });
    }

    /// How many stored entries were examined so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The idempotency keys seen so far, with the position that sealed each.
    pub fn sealed_keys(&self) -> &HashMap<String, u64> {
        &self.sealed_keys
    }

    /// Examines the receipt stored at `seq` (positions must come in ascending order).
    /// Returns it when it reads, its hash recomputes and its seal verifies (whatever its
    /// place in the chain), so a caller summing receipts checks no signature twice.
    pub fn check(&mut self, seq: u64, text: &str) -> Option<Receipt> {
        self.checked += 1;
        let head_seq = self.head.as_ref().map(|(h, _)| *h);
        let parsed = Receipt::parse(text);
        let job_id = match &parsed {
            Ok(r) => Some(r.body.job_id.clone()),
            Err(_) => job_id_of(text),
        };
        let mut found: Vec<String> = Vec::new();

        let repeated = seq <= self.last_seq && self.checked > 1;
        if seq == 0 {
            found.push("inserted (positions start at 1)".into());
        } else if repeated {
            found.push(format!("duplicate: another receipt is stored as {seq}"));
        } else {
            self.report_missing(seq);
        }
        if let Some(h) = head_seq.filter(|h| seq > *h) {
            found.push(format!("inserted (after the chain head, receipt {h})"));
        }

        let receipt = match parsed {
            Ok(r) => r,
            Err(e) => {
                found.push(format!("unreadable: {e}"));
                self.push_all(seq, &job_id, found);
                if !repeated {
                    self.advance(seq, None);
                }
                return None;
            }
        };
        if receipt.seq != seq {
            found.push(format!(
                "moved: stored as receipt {seq} but sealed as receipt {}",
                receipt.seq
            ));
        }
        let hash_holds = receipt.recomputed_hash() == receipt.hash;
        if !hash_holds {
            found.push("edited (hash mismatch)".into());
        } else if receipt.to_text() != text {
            found.push("edited (stored text differs from the sealed form)".into());
        }
        match receipt.format() {
            Some(SealFormat::Individual) => self.signed_individually += 1,
            Some(SealFormat::Group) => self.signed_per_group += 1,
            None => found.push(
                "sealed twice or not at all (a signature and a group seal, or neither)".into(),
            ),
        }
        let (key, verified) = (self.key, &mut self.verified_roots);
        let signed = receipt.seal_verifies(key, |group| {
            let id = (group.root.clone(), group.signature.clone(), group.size);
            verified.contains(&id) || (group.root_signed_by(key) && verified.insert(id))
        });
        if receipt.format().is_some() && !signed {
            found.push("signature invalid".into());
        }
        if !repeated {
            self.follow_group(seq, &receipt, signed, &mut found);
        }
        if !repeated {
            if seq == 1 && receipt.prev_hash != GENESIS {
                found.push("link broken: prev_hash of the first receipt is not the genesis".into());
            } else if seq > 1
                && self.last_seq == seq - 1
                && let Some(previous) = &self.last_hash
                && receipt.prev_hash != *previous
            {
                found.push(format!(
                    "link broken: prev_hash does not match receipt {}",
                    seq - 1
                ));
            }
        }
        if let Some(&other) = self.sealed_keys.get(&receipt.body.idempotency_key) {
            found.push(format!(
                "duplicate idempotency key: also sealed as receipt {other}"
            ));
        } else {
            self.sealed_keys
                .insert(receipt.body.idempotency_key.clone(), seq);
        }
        if let Some((h, head_hash)) = &self.head
            && *h == seq
            && receipt.hash != *head_hash
        {
            found.push("the chain head records a different hash for this receipt".into());
        }
        self.push_all(seq, &job_id, found);
        if !repeated {
            self.advance(seq, Some(receipt.hash.clone()));
        }
        (hash_holds && signed).then_some(receipt)
    }

    /// Checks that a group's receipts come together, each at its place: the receipts of one
    /// root hold consecutive positions from its index 0, and the group ends where its size
    /// says (a group cut short, by deletion at its end or by a relabelled size, is named).
    fn follow_group(&mut self, seq: u64, receipt: &Receipt, signed: bool, found: &mut Vec<String>) {
        // An invalid receipt's seal still says where it stood (it is reported as invalid
        // itself); only a valid one opens a group.
        let seal = receipt
            .group
            .as_ref()
            .filter(|g| signed || self.open_group.as_ref().is_some_and(|o| o.root == g.root));
        let same = |open: &OpenGroup| seal.is_some_and(|g| g.root == open.root);
        if let Some(open) = self.open_group.take_if(|open| !same(open))
            && seq == open.last + 1
        {
            // (After a gap, the missing positions were reported already.)
            self.close_group(&open);
        }
        let Some(seal) = seal else {
            return;
        };
        let first = seq.checked_sub(u64::from(seal.index));
        match &mut self.open_group {
            Some(open) => {
                if first != Some(open.first) {
                    found.push(format!(
                        "group seal out of place: index {} of the group that starts at receipt {}",
                        seal.index, open.first
                    ));
                }
                open.last = seq;
            }
            None => {
                if seal.index != 0 && self.last_seq + 1 == seq {
                    found.push(format!(
                        "group seal out of place: index {} where a group starts",
                        seal.index
                    ));
                }
                self.open_group = Some(OpenGroup {
                    root: seal.root.clone(),
                    size: seal.size,
                    first: first.unwrap_or(seq),
                    last: seq,
                });
            }
        }
    }

    /// Names a group that ended before its size.
    fn close_group(&mut self, open: &OpenGroup) {
        if open.last < open.end() {
            self.problems.push(Problem {
                seq: open.last,
                job_id: None,
                what: format!(
                    "group cut short: sealed as {} receipts from receipt {}, but it ends at receipt {}",
                    open.size, open.first, open.last
                ),
            });
        }
    }

    /// The report: every problem, by position.
    pub fn finish(mut self) -> ChainReport {
        if let Some(open) = self.open_group.take() {
            self.close_group(&open);
        }
        // Gaps up to a later position were reported when it came; only the tail is left.
        if let Some((h, _)) = self.head
            && self.last_seq < h
        {
            self.report_range(self.last_seq + 1, h);
        }
        self.problems.sort_by_key(|p| p.seq);
        ChainReport {
            checked: self.checked,
            problems: self.problems,
            signed_individually: self.signed_individually,
            signed_per_group: self.signed_per_group,
        }
    }

    fn push_all(&mut self, seq: u64, job_id: &Option<String>, found: Vec<String>) {
        for what in found {
            self.problem(seq, job_id.clone(), what);
        }
    }

    fn advance(&mut self, seq: u64, hash: Option<String>) {
        self.last_seq = seq;
        self.last_hash = hash;
    }

    /// Positions skipped before `seq` (not counting any after the head: those were never
    /// part of the chain).
    fn report_missing(&mut self, seq: u64) {
        let last_missing = match &self.head {
            Some((h, _)) => (seq - 1).min(*h),
            None => seq - 1,
        };
        if self.last_seq < last_missing {
            self.report_range(self.last_seq + 1, last_missing);
        }
    }

    fn report_range(&mut self, first: u64, last: u64) {
        if last - first < MISSING_ONE_BY_ONE {
            for seq in first..=last {
                self.problem(seq, None, "missing (deleted?)");
            }
        } else {
            self.problem(
                first,
                None,
                format!("missing: receipts {first} to {last} (deleted?)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::receipt::tests::{body, key};
    use crate::signing::KeyPair;

    fn chain(n: u64) -> Vec<(u64, String)> {
        let key = key();
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let r = Receipt::seal(seq, prev.clone(), body(seq), &key);
                prev = r.hash.clone();
                (seq, r.to_text())
            })
            .collect()
    }

    fn head(stored: &[(u64, String)]) -> Option<(u64, String)> {
        let (seq, text) = stored.last()?;
        Some((*seq, Receipt::parse(text).unwrap().hash))
    }

    fn problems(stored: &[(u64, String)], head: Option<(u64, String)>) -> Vec<(u64, String)> {
        verify_chain(stored, head, &key().public())
            .problems
            .into_iter()
            .map(|p| (p.seq, p.what))
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let stored = chain(5);
        let report = verify_chain(&stored, head(&stored), &key().public());
        assert_eq!(
            report,
            ChainReport {
                checked: 5,
                problems: vec![],
                signed_individually: 5,
                signed_per_group: 0,
            }
        );
        assert!(verify_chain(&[], None, &key().public()).is_intact());
    }

    /// Receipts 1..=3 in format 1, then groups of 4 and 2 in format 2 (one chain).
    fn mixed() -> Vec<(u64, String)> {
        let mut stored = chain(3);
        let mut prev = head(&stored).unwrap().1;
        for (first, n) in [(4, 4), (8, 2)] {
            let bodies = (first..first + n).map(body).collect();
            let group =
                Receipt::seal_group(first, prev, "2026-01-03T00:00:00.000Z", bodies, &key());
            prev = group.last().unwrap().hash.clone();
            stored.extend(group.iter().map(|r| (r.seq, r.to_text())));
        }
        stored
    }

    #[test]
    fn a_chain_of_both_formats_verifies_and_says_how_many_of_each_it_read() {
        let stored = mixed();
        let report = verify_chain(&stored, head(&stored), &key().public());
        assert_eq!(
            report,
            ChainReport {
                checked: 9,
                problems: vec![],
                signed_individually: 3,
                signed_per_group: 6,
            }
        );
        let other =
            KeyPair::from_seed(&crate::config::Secret::new("43".repeat(32)), "test").unwrap();
        let wrong = verify_chain(&stored, head(&stored), &other.public());
        assert_eq!(wrong.problems.len(), 9, "{wrong:?}");
    }

    #[test]
    fn a_group_cut_short_or_relabelled_is_named() {
        let stored = mixed();
        // The last receipt of the last group (4..=7, 8..=9) deleted, and the head moved back
        // to match: every link holds, but the group was sealed as two.
        let cut: Vec<(u64, String)> = stored[..8].to_vec();
        assert_eq!(
            problems(&cut, head(&cut)),
            vec![(
                8,
                "group cut short: sealed as 2 receipts from receipt 8, but it ends at receipt 8"
                    .to_owned()
            )]
        );
        // A size rewritten (receipt 4, first of a group of 4, relabelled as a group of 3):
        // the signature covers the size.
        let mut relabelled = stored.clone();
        let mut r = Receipt::parse(&relabelled[3].1).unwrap();
        r.group.as_mut().unwrap().size = 3;
        relabelled[3].1 = r.to_text();
        let found = problems(&relabelled, head(&stored));
        assert!(
            found.contains(&(4, "signature invalid".to_owned())),
            "{found:?}"
        );
        // Receipts of two groups swapped in place are out of place, not only unlinked.
        let mut swapped = stored.clone();
        let (a, b) = (swapped[4].1.clone(), swapped[8].1.clone());
        swapped[4].1 = b;
        swapped[8].1 = a;
        let found = problems(&swapped, head(&stored));
        assert!(
            found
                .iter()
                .any(|(seq, what)| *seq == 5 && what.starts_with("group seal out of place")),
            "{found:?}"
        );
    }

    #[test]
    fn inside_a_group_a_deleted_an_edited_and_a_doubly_sealed_receipt_are_named() {
        let stored = mixed();
        let mut deleted = stored.clone();
        deleted.remove(5); // receipt 6, inside the group 4..=7
        let found = problems(&deleted, head(&stored));
        assert_eq!(
            found,
            vec![(6, "missing (deleted?)".to_owned())],
            "{found:?}"
        );

        let mut edited = stored.clone();
        let mut r = Receipt::parse(&edited[4].1).unwrap();
        r.body.amount += 1;
        r.hash = r.recomputed_hash();
        edited[4].1 = r.to_text();
        let found = problems(&edited, head(&stored));
        assert!(
            found.contains(&(5, "signature invalid".to_owned())),
            "{found:?}"
        );

        let mut doubled = stored.clone();
        let mut r = Receipt::parse(&doubled[6].1).unwrap();
        r.signature = Receipt::parse(&stored[0].1).unwrap().signature;
        doubled[6].1 = r.to_text();
        let found = problems(&doubled, head(&stored));
        assert_eq!(
            found,
            vec![(
                7,
                "sealed twice or not at all (a signature and a group seal, or neither)".to_owned()
            )]
        );
    }

    #[test]
    fn the_wrong_key_fails_every_signature() {
        let stored = chain(3);
        let other = crate::signing::KeyPair::from_seed(
            &crate::config::Secret::new("01".repeat(32)),
            "test",
        )
        .unwrap();
        let report = verify_chain(&stored, None, &other.public());
        assert_eq!(report.problems.len(), 3);
        assert!(
            report
                .problems
                .iter()
                .all(|p| p.what == "signature invalid")
        );
    }

    #[test]
    fn a_changed_amount_is_named_with_its_job() {
        let mut stored = chain(5);
        stored[2].1 = stored[2].1.replace("\"amount\":18603", "\"amount\":98603");
        let report = verify_chain(&stored, head(&stored), &key().public());
        assert_eq!(
            report.problems,
            vec![Problem {
                seq: 3,
                job_id: Some("job-3".into()),
                what: "edited (hash mismatch)".into()
            }]
        );
        assert_eq!(
            report.problems[0].to_string(),
            "receipt 3 (job job-3): edited (hash mismatch)"
        );
    }

    #[test]
    fn a_validly_signed_receipt_that_does_not_follow_its_predecessor_breaks_the_link() {
        // What a signer that lost a race without noticing would write: a fork.
        let mut stored = chain(4);
        let forked = Receipt::seal(3, "ab".repeat(32), body(3), &key());
        stored[2].1 = forked.to_text();
        let found = problems(&stored, None);
        assert!(
            found.contains(&(3, "link broken: prev_hash does not match receipt 2".into())),
            "{found:?}"
        );
        let first = Receipt::seal(1, "cd".repeat(32), body(1), &key());
        stored[0].1 = first.to_text();
        let found = problems(&stored, None);
        assert!(
            found.contains(&(
                1,
                "link broken: prev_hash of the first receipt is not the genesis".into()
            )),
            "{found:?}"
        );
    }

    #[test]
    fn whitespace_alone_is_an_edit() {
        let mut stored = chain(3);
        stored[1].1 = stored[1].1.replacen(',', ", ", 1);
        assert_eq!(
            problems(&stored, head(&stored)),
            vec![(
                2,
                "edited (stored text differs from the sealed form)".into()
            )]
        );
    }

    #[test]
    fn deleted_inserted_and_swapped_receipts_are_named() {
        let stored = chain(6);
        let h = head(&stored);

        let mut deleted = stored.clone();
        deleted.remove(3);
        assert_eq!(
            problems(&deleted, h.clone()),
            vec![(4, "missing (deleted?)".into())]
        );

        let mut tail_cut = stored.clone();
        tail_cut.pop();
        assert_eq!(
            problems(&tail_cut, h.clone()),
            vec![(6, "missing (deleted?)".into())]
        );

        let mut inserted = stored.clone();
        inserted.push((7, stored[0].1.clone()));
        let found = problems(&inserted, h.clone());
        assert!(found.contains(&(7, "inserted (after the chain head, receipt 6)".into())));

        let mut swapped = stored.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[4].1.clone());
        swapped[1].1 = b;
        swapped[4].1 = a;
        let found = problems(&swapped, h.clone());
        assert!(found.contains(&(
            2,
            "moved: stored as receipt 2 but sealed as receipt 5".into()
        )));
        assert!(found.contains(&(
            5,
            "moved: stored as receipt 5 but sealed as receipt 2".into()
        )));

        let mut reordered = stored.clone();
        reordered.swap(1, 4);
        let found = problems(&reordered, h.clone());
        assert!(
            found
                .iter()
                .any(|(_, what)| what.starts_with("out of order")),
            "{found:?}"
        );
    }

    #[test]
    fn a_long_gap_is_one_problem() {
        let stored = chain(3);
        let found = problems(&stored, Some((500, "00".repeat(32))));
        assert_eq!(
            found,
            vec![(4, "missing: receipts 4 to 500 (deleted?)".into())]
        );
    }

    #[test]
    fn export_lines_take_the_position_each_receipt_claims() {
        let stored = chain(4);
        let mut file: String = stored.iter().map(|(_, t)| format!("{t}\r\n")).collect();
        assert_eq!(entries_from_lines(&file), stored);
        file = stored
            .iter()
            .filter(|(seq, _)| *seq != 2)
            .map(|(_, t)| format!("{t}\n"))
            .collect();
        let entries = entries_from_lines(&file);
        assert_eq!(
            problems(&entries, None),
            vec![(2, "missing (deleted?)".into())]
        );
        assert_eq!(entries_from_lines("garbage\n")[0], (1, "garbage".into()));
        assert!(entries_from_lines("").is_empty());
    }
}
