//! The promises job parsing keeps for any input whatsoever, in one function that the fuzz
//! target (`fuzz/fuzz_targets/job_parse.rs`, nightly) and a stable test (the malformed corpus
//! plus thousands of mutated jobs, `tests/it/malformed.rs`) both call, so the same checks run
//! in CI without a fuzzer.
//!
//! Pure code, no I/O, and never used on the refund path.

use super::{
    IdempotencyKey, JobDate, JobError, MAX_BODY_BYTES, RefundJob, parse_object, prepare_for_publish,
};

/// What parsing made of an input whose invariants all held.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A valid job.
    Accepted(Box<RefundJob>),
    /// Refused, with the reason a dead letter would carry.
    Rejected(JobError),
}

/// The longest reason a dead letter may carry from the parser (it travels in an AMQP header).
pub const MAX_REASON_CHARS: usize = 600;

/// Parses `body` and checks every invariant; `Err` says which one broke. Panics only if the
/// parser itself panics, which is the first thing a fuzzer looks for.
///
/// - parsing is deterministic, and the default limit is [`MAX_BODY_BYTES`];
/// - an accepted job re-serialises and re-parses to the same job; its idempotency key (under
///   its own date, or a fixed one) is the same for both, valid as a key, stable across calls,
///   and free of `{`/`}` so it is the Redis Cluster hash tag of its record as written;
/// - `publish` accepts exactly what the worker accepts, and what it publishes parses to the
///   same job with the date filled in;
/// - a refusal names a field and a rule, in at most [`MAX_REASON_CHARS`] characters, without
///   control characters (it is shown in terminals by `dlq list`).
pub fn check(body: &[u8]) -> Result<Verdict, String> {
    let first = RefundJob::parse(body);
    if first != RefundJob::parse(body) || first != RefundJob::parse_within(body, MAX_BODY_BYTES) {
        return Err("parsing the same bytes twice gave different answers".into());
    }
    let fallback_date = JobDate::parse("2026-01-02").map_err(|e| e.to_string())?;
    let published = prepare_for_publish(body, fallback_date);
    match first {
        Ok(job) => {
            check_accepted(&job, fallback_date)?;
            let published = published
                .map_err(|e| format!("the worker accepts the job but publish refuses it: {e}"))?;
            let mut expected = job.clone();
            expected.date = expected.date.or(Some(fallback_date));
            let republished = RefundJob::parse(&published)
                .map_err(|e| format!("publish wrote a body the worker refuses: {e}"))?;
            if republished != expected {
                return Err(format!(
                    "publish changed the job: {expected:?} became {republished:?}"
                ));
            }
            Ok(Verdict::Accepted(Box::new(job)))
        }
        Err(error) => {
            if published.is_ok() {
                return Err(format!(
                    "publish accepts a job the worker refuses ({error})"
                ));
            }
            check_rejected(&error, body)?;
            Ok(Verdict::Rejected(error))
        }
    }
}

fn check_accepted(job: &RefundJob, fallback_date: JobDate) -> Result<(), String> {
    if job.order_id.is_none() && (job.payment_id.is_none() || job.provider.is_none()) {
        return Err(format!(
            "a bulk job was accepted without its payment or provider: {job:?}"
        ));
    }
    let text = serde_json::to_vec(job).map_err(|e| format!("cannot serialise {job:?}: {e}"))?;
    let object = parse_object(&text)
        .map_err(|e| format!("the serialised job is not a JSON object ({e})"))?;
    let again = RefundJob::from_object(object)
        .map_err(|e| format!("the serialised job does not parse again ({e}): {job:?}"))?;
    if &again != job {
        return Err(format!(
            "the job changed through serialisation: {job:?} became {again:?}"
        ));
    }
    let date = job.date.unwrap_or(fallback_date);
    let key = job.idempotency_key(date);
    if key != again.idempotency_key(date) || key != job.idempotency_key(date) {
        return Err(format!("the idempotency key of {job:?} is not stable"));
    }
    if IdempotencyKey::parse(key.as_str()).as_ref() != Ok(&key) {
        return Err(format!("{key:?} is not a valid idempotency key"));
    }
    if key.as_str().contains(['{', '}']) {
        return Err(format!(
            "{key:?} contains a brace, so it would not be its record's hash tag"
        ));
    }
    Ok(())
}

fn check_rejected(error: &JobError, body: &[u8]) -> Result<(), String> {
    let reason = error.to_string();
    let preview = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
    if error.rule.trim().is_empty() {
        return Err(format!("refused {preview:?} without a rule"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "the reason for {preview:?} is {} characters long",
            reason.chars().count()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(format!(
            "the reason for {preview:?} carries control characters: {reason:?}"
        ));
    }
    Ok(())
}
