//! The malformed-input corpus (issue 7): every way a publisher can get a job wrong, published
//! raw to the jobs exchange. Each one must be dead-lettered as `invalid` with a reason that
//! names the field and the rule (or says plainly what the body is), its body untouched; no
//! refund may reach the provider; and the worker must go on to refund a valid job afterwards.
//!
//! The bodies live in `tests/corpus/malformed/` (also the fuzzer's seed corpus); the few that
//! are too big to keep as files are generated here. The same bodies, and thousands of
//! mutations of valid jobs, go through `job::invariants::check`, the function the cargo-fuzz
//! target (`fuzz/fuzz_targets/job_parse.rs`) calls.

use std::time::Duration;

use lapin::BasicProperties;
use refund_worker::{
    job::{
        MAX_BODY_BYTES,
        invariants::{self, Verdict},
    },
    outcome::{FailureClass, Outcome},
    worker::{Disposition, RunEnd},
};
use sha2::Digest as _;

use crate::helpers::{TestEnv, binary, stripe_job};

/// One malformed message and what its dead letter must say.
struct Case {
    /// Also its message id, so its dead letter is found by `x-refund-job-id`.
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    content_encoding: Option<&'static str>,
    /// The field the reason must name (`body` when the whole message is at fault).
    field: &'static str,
    /// A phrase the reason must contain: the rule, in words.
    says: &'static str,
}

fn case(
    name: &'static str,
    body: &[u8],
    content_type: Option<&'static str>,
    content_encoding: Option<&'static str>,
    field: &'static str,
    says: &'static str,
) -> Case {
    Case {
        name,
        body: body.to_vec(),
        content_type,
        content_encoding,
        field,
        says,
    }
}

/// The corpus files, with what each must be refused for.
fn file_cases() -> Vec<Case> {
    vec![
        case(
            "empty",
            include_bytes!("../corpus/malformed/empty.json"),
            None,
            None,
            "body",
            "is empty",
        ),
        case(
            "whitespace-only",
            include_bytes!("../corpus/malformed/whitespace-only.json"),
            None,
            None,
            "body",
            "is empty",
        ),
        case(
            "plain-text",
            include_bytes!("../corpus/malformed/plain-text.txt"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "truncated",
            include_bytes!("../corpus/malformed/truncated.json"),
            None,
            None,
            "body",
            "is not valid JSON: EOF while parsing",
        ),
        case(
            "trailing-garbage",
            include_bytes!("../corpus/malformed/trailing-garbage.json"),
            None,
            None,
            "body",
            "trailing characters",
        ),
        case(
            "two-objects",
            include_bytes!("../corpus/malformed/two-objects.json"),
            None,
            None,
            "body",
            "trailing characters",
        ),
        case(
            "two-objects-jsonl",
            include_bytes!("../corpus/malformed/two-objects-jsonl.json"),
            None,
            None,
            "body",
            "trailing characters",
        ),
        case(
            "single-quotes",
            include_bytes!("../corpus/malformed/single-quotes.json"),
            None,
            None,
            "body",
            "key must be a string",
        ),
        case(
            "trailing-comma",
            include_bytes!("../corpus/malformed/trailing-comma.json"),
            None,
            None,
            "body",
            "trailing comma",
        ),
        case(
            "comment",
            include_bytes!("../corpus/malformed/comment.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "unquoted-keys",
            include_bytes!("../corpus/malformed/unquoted-keys.json"),
            None,
            None,
            "body",
            "key must be a string",
        ),
        case(
            "amount-nan",
            include_bytes!("../corpus/malformed/amount-nan.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "amount-infinity",
            include_bytes!("../corpus/malformed/amount-infinity.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "amount-1e400",
            include_bytes!("../corpus/malformed/amount-1e400.json"),
            None,
            None,
            "body",
            "number out of range",
        ),
        case(
            "amount-leading-zero",
            include_bytes!("../corpus/malformed/amount-leading-zero.json"),
            None,
            None,
            "body",
            "invalid number",
        ),
        case(
            "amount-hex",
            include_bytes!("../corpus/malformed/amount-hex.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "amount-plus-sign",
            include_bytes!("../corpus/malformed/amount-plus-sign.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "top-null",
            include_bytes!("../corpus/malformed/top-null.json"),
            None,
            None,
            "body",
            "must be a JSON object, got null",
        ),
        case(
            "top-array",
            include_bytes!("../corpus/malformed/top-array.json"),
            None,
            None,
            "body",
            "must be a JSON object, got an array",
        ),
        case(
            "top-string",
            include_bytes!("../corpus/malformed/top-string.json"),
            None,
            None,
            "body",
            "must be a JSON object, got a string",
        ),
        case(
            "top-number",
            include_bytes!("../corpus/malformed/top-number.json"),
            None,
            None,
            "body",
            "must be a JSON object, got a number",
        ),
        case(
            "top-true",
            include_bytes!("../corpus/malformed/top-true.json"),
            None,
            None,
            "body",
            "must be a JSON object, got a boolean",
        ),
        case(
            "deep-nesting",
            include_bytes!("../corpus/malformed/deep-nesting.json"),
            None,
            None,
            "body",
            "nests arrays or objects too deep",
        ),
        case(
            "lone-surrogate-escape",
            include_bytes!("../corpus/malformed/lone-surrogate-escape.json"),
            None,
            None,
            "body",
            "is not valid JSON",
        ),
        case(
            "bad-escape",
            include_bytes!("../corpus/malformed/bad-escape.json"),
            None,
            None,
            "body",
            "invalid escape",
        ),
        case(
            "raw-newline-in-string",
            include_bytes!("../corpus/malformed/raw-newline-in-string.json"),
            None,
            None,
            "body",
            "control character",
        ),
        case(
            "bom-utf8",
            include_bytes!("../corpus/malformed/bom-utf8.json"),
            None,
            None,
            "body",
            "starts with a UTF-8 byte order mark",
        ),
        case(
            "utf16le-bom",
            include_bytes!("../corpus/malformed/utf16le-bom.json"),
            None,
            None,
            "body",
            "starts with a UTF-16 byte order mark",
        ),
        case(
            "utf16be-bom",
            include_bytes!("../corpus/malformed/utf16be-bom.json"),
            None,
            None,
            "body",
            "starts with a UTF-16 byte order mark",
        ),
        case(
            "utf16le-no-bom",
            include_bytes!("../corpus/malformed/utf16le-no-bom.json"),
            None,
            None,
            "body",
            "contains a NUL byte at byte 1",
        ),
        case(
            "utf32le-bom",
            include_bytes!("../corpus/malformed/utf32le-bom.json"),
            None,
            None,
            "body",
            "starts with a UTF-32 byte order mark",
        ),
        case(
            "nul-in-string",
            include_bytes!("../corpus/malformed/nul-in-string.json"),
            None,
            None,
            "body",
            "contains a NUL byte at byte 21",
        ),
        case(
            "nul-trailing",
            include_bytes!("../corpus/malformed/nul-trailing.json"),
            None,
            None,
            "body",
            "contains a NUL byte",
        ),
        case(
            "latin1",
            include_bytes!("../corpus/malformed/latin1.json"),
            None,
            None,
            "body",
            "is not valid UTF-8 (byte 79)",
        ),
        case(
            "overlong-utf8",
            include_bytes!("../corpus/malformed/overlong-utf8.json"),
            None,
            None,
            "body",
            "is not valid UTF-8 (byte 18)",
        ),
        case(
            "cesu-surrogate",
            include_bytes!("../corpus/malformed/cesu-surrogate.json"),
            None,
            None,
            "body",
            "is not valid UTF-8",
        ),
        case(
            "truncated-utf8",
            include_bytes!("../corpus/malformed/truncated-utf8.json"),
            None,
            None,
            "body",
            "is not valid UTF-8",
        ),
        case(
            "random-binary",
            include_bytes!("../corpus/malformed/random-binary.bin"),
            None,
            None,
            "body",
            "NUL byte",
        ),
        case(
            "duplicate-amount",
            include_bytes!("../corpus/malformed/duplicate-amount.json"),
            None,
            None,
            "body",
            "has field `amount` twice",
        ),
        case(
            "duplicate-provider",
            include_bytes!("../corpus/malformed/duplicate-provider.json"),
            None,
            None,
            "body",
            "has field `provider` twice",
        ),
        case(
            "duplicate-notify-to",
            include_bytes!("../corpus/malformed/duplicate-notify-to.json"),
            None,
            None,
            "body",
            "has field `notify.to` twice",
        ),
        case(
            "duplicate-metadata-key",
            include_bytes!("../corpus/malformed/duplicate-metadata-key.json"),
            None,
            None,
            "body",
            "has field `metadata.ticket` twice",
        ),
        case(
            "empty-object",
            include_bytes!("../corpus/malformed/empty-object.json"),
            None,
            None,
            "amount",
            "is required",
        ),
        case(
            "missing-amount",
            include_bytes!("../corpus/malformed/missing-amount.json"),
            None,
            None,
            "amount",
            "is required",
        ),
        case(
            "amount-null",
            include_bytes!("../corpus/malformed/amount-null.json"),
            None,
            None,
            "amount",
            "is required",
        ),
        case(
            "missing-payment-id",
            include_bytes!("../corpus/malformed/missing-payment-id.json"),
            None,
            None,
            "payment_id",
            "is required unless `order_id` is given",
        ),
        case(
            "missing-provider",
            include_bytes!("../corpus/malformed/missing-provider.json"),
            None,
            None,
            "provider",
            "is required unless `order_id` is given",
        ),
        case(
            "governed-missing-amount",
            include_bytes!("../corpus/malformed/governed-missing-amount.json"),
            None,
            None,
            "amount",
            "is required",
        ),
        case(
            "unknown-field-typo",
            include_bytes!("../corpus/malformed/unknown-field-typo.json"),
            None,
            None,
            "ammount",
            "unknown field (did you mean `amount`?)",
        ),
        case(
            "unknown-field-case",
            include_bytes!("../corpus/malformed/unknown-field-case.json"),
            None,
            None,
            "Amount",
            "did you mean `amount`",
        ),
        case(
            "unknown-field-extra",
            include_bytes!("../corpus/malformed/unknown-field-extra.json"),
            None,
            None,
            "priority",
            "unknown field; version 1 accepts only",
        ),
        case(
            "unknown-field-proto",
            include_bytes!("../corpus/malformed/unknown-field-proto.json"),
            None,
            None,
            "__proto__",
            "unknown field",
        ),
        case(
            "unknown-field-empty-name",
            include_bytes!("../corpus/malformed/unknown-field-empty-name.json"),
            None,
            None,
            "",
            "unknown field (an empty name)",
        ),
        case(
            "unknown-field-fullwidth",
            include_bytes!("../corpus/malformed/unknown-field-fullwidth.json"),
            None,
            None,
            "ａmount",
            "unknown field",
        ),
        case(
            "unknown-field-v2",
            include_bytes!("../corpus/malformed/unknown-field-v2.json"),
            None,
            None,
            "version",
            "unknown field",
        ),
        case(
            "amount-zero",
            include_bytes!("../corpus/malformed/amount-zero.json"),
            None,
            None,
            "amount",
            "must be an integer from 1 to 1000000000000 (minor units), got 0",
        ),
        case(
            "amount-negative",
            include_bytes!("../corpus/malformed/amount-negative.json"),
            None,
            None,
            "amount",
            "from 1 to 1000000000000 (minor units), got -18600",
        ),
        case(
            "amount-negative-zero",
            include_bytes!("../corpus/malformed/amount-negative-zero.json"),
            None,
            None,
            "amount",
            "without a decimal point or exponent",
        ),
        case(
            "amount-fraction",
            include_bytes!("../corpus/malformed/amount-fraction.json"),
            None,
            None,
            "amount",
            "must be a whole number of minor units (centavos), got 186.5",
        ),
        case(
            "amount-reais-decimal",
            include_bytes!("../corpus/malformed/amount-reais-decimal.json"),
            None,
            None,
            "amount",
            "without a decimal point or exponent, got 186.0",
        ),
        case(
            "amount-exponent",
            include_bytes!("../corpus/malformed/amount-exponent.json"),
            None,
            None,
            "amount",
            "without a decimal point or exponent, got 18600.0",
        ),
        case(
            "amount-tiny-fraction",
            include_bytes!("../corpus/malformed/amount-tiny-fraction.json"),
            None,
            None,
            "amount",
            "whole number of minor units",
        ),
        case(
            "amount-string",
            include_bytes!("../corpus/malformed/amount-string.json"),
            None,
            None,
            "amount",
            "must be an integer number of minor units, got a string",
        ),
        case(
            "amount-string-reais",
            include_bytes!("../corpus/malformed/amount-string-reais.json"),
            None,
            None,
            "amount",
            "got a string",
        ),
        case(
            "amount-boolean",
            include_bytes!("../corpus/malformed/amount-boolean.json"),
            None,
            None,
            "amount",
            "got a boolean",
        ),
        case(
            "amount-array",
            include_bytes!("../corpus/malformed/amount-array.json"),
            None,
            None,
            "amount",
            "got an array",
        ),
        case(
            "amount-object",
            include_bytes!("../corpus/malformed/amount-object.json"),
            None,
            None,
            "amount",
            "got an object",
        ),
        case(
            "amount-above-max",
            include_bytes!("../corpus/malformed/amount-above-max.json"),
            None,
            None,
            "amount",
            "from 1 to 1000000000000 (minor units), got 1000000000001",
        ),
        case(
            "amount-u64-max",
            include_bytes!("../corpus/malformed/amount-u64-max.json"),
            None,
            None,
            "amount",
            "got 18446744073709551615",
        ),
        case(
            "amount-beyond-u64",
            include_bytes!("../corpus/malformed/amount-beyond-u64.json"),
            None,
            None,
            "amount",
            "from 1 to 1000000000000",
        ),
        case(
            "amount-beyond-i64-negative",
            include_bytes!("../corpus/malformed/amount-beyond-i64-negative.json"),
            None,
            None,
            "amount",
            "from 1 to 1000000000000",
        ),
        case(
            "amount-hundred-digits",
            include_bytes!("../corpus/malformed/amount-hundred-digits.json"),
            None,
            None,
            "amount",
            "from 1 to 1000000000000",
        ),
        case(
            "payment-id-number",
            include_bytes!("../corpus/malformed/payment-id-number.json"),
            None,
            None,
            "payment_id",
            "must be a string, got a number",
        ),
        case(
            "payment-id-empty",
            include_bytes!("../corpus/malformed/payment-id-empty.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters of [A-Za-z0-9_.:-]",
        ),
        case(
            "payment-id-too-long",
            include_bytes!("../corpus/malformed/payment-id-too-long.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-space",
            include_bytes!("../corpus/malformed/payment-id-space.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-unicode",
            include_bytes!("../corpus/malformed/payment-id-unicode.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-escaped-nul",
            include_bytes!("../corpus/malformed/payment-id-escaped-nul.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-hash-tag",
            include_bytes!("../corpus/malformed/payment-id-hash-tag.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-path",
            include_bytes!("../corpus/malformed/payment-id-path.json"),
            None,
            None,
            "payment_id",
            "must be 1-128 characters",
        ),
        case(
            "payment-id-object",
            include_bytes!("../corpus/malformed/payment-id-object.json"),
            None,
            None,
            "payment_id",
            "got an object",
        ),
        case(
            "order-id-space",
            include_bytes!("../corpus/malformed/order-id-space.json"),
            None,
            None,
            "order_id",
            "must be 1-128 characters",
        ),
        case(
            "agent-id-number",
            include_bytes!("../corpus/malformed/agent-id-number.json"),
            None,
            None,
            "agent_id",
            "must be a string, got a number",
        ),
        case(
            "mandate-id-empty",
            include_bytes!("../corpus/malformed/mandate-id-empty.json"),
            None,
            None,
            "mandate_id",
            "must be 1-128 characters",
        ),
        case(
            "idempotency-key-empty",
            include_bytes!("../corpus/malformed/idempotency-key-empty.json"),
            None,
            None,
            "idempotency_key",
            "must be 1-255 characters",
        ),
        case(
            "idempotency-key-too-long",
            include_bytes!("../corpus/malformed/idempotency-key-too-long.json"),
            None,
            None,
            "idempotency_key",
            "must be 1-255 characters",
        ),
        case(
            "idempotency-key-hash-tag",
            include_bytes!("../corpus/malformed/idempotency-key-hash-tag.json"),
            None,
            None,
            "idempotency_key",
            "must be 1-255 characters",
        ),
        case(
            "idempotency-key-number",
            include_bytes!("../corpus/malformed/idempotency-key-number.json"),
            None,
            None,
            "idempotency_key",
            "must be a string",
        ),
        case(
            "provider-unknown",
            include_bytes!("../corpus/malformed/provider-unknown.json"),
            None,
            None,
            "provider",
            "must be one of stripe, mercadopago, asaas, pix, rinne, got \"paypal\"",
        ),
        case(
            "provider-uppercase",
            include_bytes!("../corpus/malformed/provider-uppercase.json"),
            None,
            None,
            "provider",
            "must be one of",
        ),
        case(
            "provider-empty",
            include_bytes!("../corpus/malformed/provider-empty.json"),
            None,
            None,
            "provider",
            "must be one of",
        ),
        case(
            "provider-number",
            include_bytes!("../corpus/malformed/provider-number.json"),
            None,
            None,
            "provider",
            "must be a string, got a number",
        ),
        case(
            "provider-list",
            include_bytes!("../corpus/malformed/provider-list.json"),
            None,
            None,
            "provider",
            "got an array",
        ),
        case(
            "currency-lowercase",
            include_bytes!("../corpus/malformed/currency-lowercase.json"),
            None,
            None,
            "currency",
            "must be an ISO 4217 code like BRL, got \"brl\"",
        ),
        case(
            "currency-unknown",
            include_bytes!("../corpus/malformed/currency-unknown.json"),
            None,
            None,
            "currency",
            "ISO 4217",
        ),
        case(
            "currency-numeric-code",
            include_bytes!("../corpus/malformed/currency-numeric-code.json"),
            None,
            None,
            "currency",
            "must be a string, got a number",
        ),
        case(
            "reason-unknown",
            include_bytes!("../corpus/malformed/reason-unknown.json"),
            None,
            None,
            "reason",
            "must be one of CUSTOMER_REQUEST",
        ),
        case(
            "reason-lowercase",
            include_bytes!("../corpus/malformed/reason-lowercase.json"),
            None,
            None,
            "reason",
            "must be one of",
        ),
        case(
            "date-impossible",
            include_bytes!("../corpus/malformed/date-impossible.json"),
            None,
            None,
            "date",
            "must be a real date as YYYY-MM-DD, got \"2026-02-30\"",
        ),
        case(
            "date-month-13",
            include_bytes!("../corpus/malformed/date-month-13.json"),
            None,
            None,
            "date",
            "must be a real date",
        ),
        case(
            "date-day-zero",
            include_bytes!("../corpus/malformed/date-day-zero.json"),
            None,
            None,
            "date",
            "must be a real date",
        ),
        case(
            "date-brazilian",
            include_bytes!("../corpus/malformed/date-brazilian.json"),
            None,
            None,
            "date",
            "must be a real date as YYYY-MM-DD",
        ),
        case(
            "date-with-time",
            include_bytes!("../corpus/malformed/date-with-time.json"),
            None,
            None,
            "date",
            "must be a date as YYYY-MM-DD",
        ),
        case(
            "date-short",
            include_bytes!("../corpus/malformed/date-short.json"),
            None,
            None,
            "date",
            "must be a date as YYYY-MM-DD",
        ),
        case(
            "date-number",
            include_bytes!("../corpus/malformed/date-number.json"),
            None,
            None,
            "date",
            "must be a string, got a number",
        ),
        case(
            "date-unix",
            include_bytes!("../corpus/malformed/date-unix.json"),
            None,
            None,
            "date",
            "must be a string",
        ),
        case(
            "date-empty",
            include_bytes!("../corpus/malformed/date-empty.json"),
            None,
            None,
            "date",
            "must be a date as YYYY-MM-DD",
        ),
        case(
            "description-too-long",
            include_bytes!("../corpus/malformed/description-too-long.json"),
            None,
            None,
            "description",
            "must be at most 500 characters, got 501",
        ),
        case(
            "description-escaped-nul",
            include_bytes!("../corpus/malformed/description-escaped-nul.json"),
            None,
            None,
            "description",
            "must not contain control characters, got U+0000",
        ),
        case(
            "description-terminal-escape",
            include_bytes!("../corpus/malformed/description-terminal-escape.json"),
            None,
            None,
            "description",
            "U+001B",
        ),
        case(
            "description-number",
            include_bytes!("../corpus/malformed/description-number.json"),
            None,
            None,
            "description",
            "must be a string",
        ),
        case(
            "credit-note-string",
            include_bytes!("../corpus/malformed/credit-note-string.json"),
            None,
            None,
            "credit_note",
            "must be true or false, got a string",
        ),
        case(
            "credit-note-number",
            include_bytes!("../corpus/malformed/credit-note-number.json"),
            None,
            None,
            "credit_note",
            "must be true or false, got a number",
        ),
        case(
            "notify-string",
            include_bytes!("../corpus/malformed/notify-string.json"),
            None,
            None,
            "notify",
            "must be an object",
        ),
        case(
            "notify-sms",
            include_bytes!("../corpus/malformed/notify-sms.json"),
            None,
            None,
            "notify.channel",
            "must be \"whatsapp\"",
        ),
        case(
            "notify-missing-to",
            include_bytes!("../corpus/malformed/notify-missing-to.json"),
            None,
            None,
            "notify.to",
            "is required",
        ),
        case(
            "notify-bad-phone",
            include_bytes!("../corpus/malformed/notify-bad-phone.json"),
            None,
            None,
            "notify.to",
            "E.164",
        ),
        case(
            "notify-extra-field",
            include_bytes!("../corpus/malformed/notify-extra-field.json"),
            None,
            None,
            "notify.cc",
            "unknown field",
        ),
        case(
            "notify-bad-template",
            include_bytes!("../corpus/malformed/notify-bad-template.json"),
            None,
            None,
            "notify.template",
            "must be 1-64 characters of [a-z0-9_]",
        ),
        case(
            "metadata-array",
            include_bytes!("../corpus/malformed/metadata-array.json"),
            None,
            None,
            "metadata",
            "must be an object, got an array",
        ),
        case(
            "metadata-string",
            include_bytes!("../corpus/malformed/metadata-string.json"),
            None,
            None,
            "metadata",
            "must be an object, got a string",
        ),
        case(
            "metadata-too-big",
            include_bytes!("../corpus/malformed/metadata-too-big.json"),
            None,
            None,
            "metadata",
            "must be at most 4096 bytes as JSON",
        ),
        case(
            "gzip-encoded",
            include_bytes!("../corpus/malformed/gzip-encoded.json.gz"),
            None,
            Some("gzip"),
            "content_encoding",
            "the message property says \"gzip\"",
        ),
        case(
            "base64-encoded",
            include_bytes!("../corpus/malformed/base64-encoded.b64"),
            None,
            Some("base64"),
            "content_encoding",
            "\"base64\"",
        ),
        case(
            "deflate-declared",
            include_bytes!("../corpus/malformed/deflate-declared.json"),
            None,
            Some("deflate"),
            "content_encoding",
            "publish the JSON uncompressed",
        ),
        case(
            "content-type-xml",
            include_bytes!("../corpus/malformed/content-type-xml.xml"),
            Some("application/xml"),
            None,
            "content_type",
            "the message property says \"application/xml\"",
        ),
        case(
            "content-type-xml-json-body",
            include_bytes!("../corpus/malformed/content-type-xml-json-body.json"),
            Some("application/xml"),
            None,
            "content_type",
            "publish it as application/json",
        ),
        case(
            "content-type-form",
            include_bytes!("../corpus/malformed/content-type-form.form"),
            Some("application/x-www-form-urlencoded"),
            None,
            "content_type",
            "\"application/x-www-form-urlencoded\"",
        ),
        case(
            "content-type-csv",
            include_bytes!("../corpus/malformed/content-type-csv.csv"),
            Some("text/csv"),
            None,
            "content_type",
            "\"text/csv\"",
        ),
        case(
            "content-type-octet-stream",
            include_bytes!("../corpus/malformed/content-type-octet-stream.json"),
            Some("application/octet-stream"),
            None,
            "content_type",
            "a refund job is JSON",
        ),
        case(
            "content-type-charset-utf16",
            include_bytes!("../corpus/malformed/content-type-charset-utf16.json"),
            Some("application/json; charset=utf-16"),
            None,
            "content_type",
            "declares charset \"utf-16\"",
        ),
        case(
            "content-type-charset-latin1",
            include_bytes!("../corpus/malformed/content-type-charset-latin1.json"),
            Some("application/json;charset=ISO-8859-1"),
            None,
            "content_type",
            "declares charset \"ISO-8859-1\"",
        ),
    ]
}

/// Bodies too big to keep as files.
fn generated_cases() -> Vec<Case> {
    // A well-formed job whose description alone is 5 MiB.
    let huge = format!(
        r#"{{"payment_id":"pi_huge","amount":18600,"provider":"stripe","description":"{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    // A valid job padded with whitespace to one byte over the limit.
    let mut edge = br#"{"payment_id":"pi_edge","amount":18600,"provider":"stripe"}"#.to_vec();
    edge.resize(MAX_BODY_BYTES + 1, b' ');
    // 2 MiB of noise.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| xorshift(&mut state) as u8)
        .collect();
    vec![
        Case {
            name: "generated-5mib-job",
            says: "is too large: 5242956 bytes, the limit is 65536 bytes",
            body: huge.into_bytes(),
            content_type: Some("application/json"),
            content_encoding: None,
            field: "body",
        },
        Case {
            name: "generated-limit-plus-one",
            says: "is too large: 65537 bytes, the limit is 65536 bytes",
            body: edge,
            content_type: None,
            content_encoding: None,
            field: "body",
        },
        Case {
            name: "generated-2mib-noise",
            says: "is too large: 2097152 bytes",
            body: noise,
            content_type: None,
            content_encoding: None,
            field: "body",
        },
    ]
}

fn all_cases() -> Vec<Case> {
    let mut cases = file_cases();
    cases.extend(generated_cases());
    cases
}

fn properties(case: &Case) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_message_id(case.name.into())
        .with_delivery_mode(2);
    if let Some(t) = case.content_type {
        properties = properties.with_content_type(t.into());
    }
    if let Some(e) = case.content_encoding {
        properties = properties.with_content_encoding(e.into());
    }
    properties
}

#[tokio::test]
async fn every_malformed_job_is_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    let env = TestEnv::start("malformed").await;
    let cases = all_cases();
    let mut worker = env.spawn_worker().await;
    for case in &cases {
        env.publish_raw(&case.body, properties(case)).await;
    }

    let reports = worker
        .collect_until(Duration::from_secs(90), |seen| seen.len() >= cases.len())
        .await;
    for report in &reports {
        assert!(
            matches!(
                (&report.outcome, &report.disposition),
                (
                    Outcome::DeadLetter {
                        class: FailureClass::Invalid,
                        ..
                    },
                    Disposition::DeadLettered {
                        class: FailureClass::Invalid,
                        ..
                    }
                )
            ),
            "{} was not dead-lettered as invalid: {report:?}",
            report.job_id
        );
    }
    assert!(env.ledger().is_empty(), "no malformed job refunds anything");
    assert_eq!(env.refund_posts(), 0, "no malformed job reaches a provider");

    // The same worker, still running, refunds a valid job published afterwards.
    env.publish_json(&[stripe_job("pi_after_the_corpus", 18600)])
        .await;
    let after = worker
        .collect_until(Duration::from_secs(30), |seen| !seen.is_empty())
        .await;
    assert!(
        matches!(after[0].outcome, Outcome::Refunded { amount: 18600, .. }),
        "{after:?}"
    );
    assert_eq!(worker.stop().await, RunEnd::Stopped);
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].payment_id, "pi_after_the_corpus");

    let letters = env.dead_letters().await;
    assert_eq!(
        letters.len(),
        cases.len(),
        "one dead letter per malformed job"
    );
    let mut wrong = Vec::new();
    for case in &cases {
        let letter = letters
            .iter()
            .find(|l| l.headers.get("x-refund-job-id").map(String::as_str) == Some(case.name))
            .unwrap_or_else(|| panic!("no dead letter for {}", case.name));
        if case.body.len() > MAX_BODY_BYTES {
            // A body over the limit is not kept: the letter is empty and its reason names the
            // body's digest, so the publisher can find which message it was.
            assert!(letter.body.is_empty(), "{}: oversized body kept", case.name);
            let digest = hex::encode(sha2::Sha256::digest(&case.body));
            assert!(
                letter.headers["x-refund-error"].contains(&format!("sha256 {digest}")),
                "{}: reason lacks the body's digest: {:?}",
                case.name,
                letter.headers["x-refund-error"]
            );
        } else {
            assert!(
                letter.body == case.body,
                "{}: body kept byte for byte",
                case.name
            );
        }
        let h = &letter.headers;
        assert_eq!(h["x-refund-error-class"], "invalid", "{}", case.name);
        assert_eq!(h["x-refund-attempts"], "0", "{}", case.name);
        for header in [
            "x-refund-first-seen",
            "x-refund-last-seen",
            "x-refund-provider",
        ] {
            assert!(h.contains_key(header), "{}: {header} missing", case.name);
        }
        let reason = &h["x-refund-error"];
        let names_field = reason.starts_with(&format!("field `{}`: ", case.field));
        if !names_field || !reason.contains(case.says) {
            wrong.push(format!(
                "{}: expected field `{}` and {:?}, got {reason:?}",
                case.name, case.field, case.says
            ));
        }
        assert!(reason.len() < 600, "{}: reason too long", case.name);
    }
    assert!(wrong.is_empty(), "reasons:\n{}", wrong.join("\n"));
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_refused_for_its_declared_media_is_replayed_as_json_and_refunded_once() {
    let env = TestEnv::start("malformed-replay").await;
    let body = serde_json::to_vec(&stripe_job("pi_declared_text", 4200)).unwrap();
    let declared = BasicProperties::default()
        .with_message_id("job-declared-text".into())
        .with_content_type("text/plain".into())
        .with_content_encoding("identity".into());
    env.publish_raw(&body, declared).await;
    env.run_until_idle().await;
    assert!(env.ledger().is_empty(), "refused for its content type");

    // `dlq replay` validates the body as a JSON job and republishes it declared as one.
    let stdout = crate::helpers::succeeds(
        tokio::process::Command::new(binary())
            .args(["dlq", "replay", "--all"])
            .envs(env.child_env()),
    )
    .await;
    assert!(stdout.contains("1 replayed"), "{stdout}");
    let run = env.run_until_idle().await;
    assert!(
        matches!(run.reports[..], [ref r] if matches!(r.outcome, Outcome::Refunded { amount: 4200, .. })),
        "{:#?}",
        run.reports
    );
    assert_eq!(env.ledger().len(), 1);
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn a_message_the_broker_dead_lettered_itself_is_listed_with_the_brokers_reason() {
    // A publisher's per-message TTL ran out in the jobs queue: RabbitMQ dead-letters it with
    // `x-first-death-reason: expired` and none of the worker's headers.
    let env = TestEnv::start("malformed-expired").await;
    let amqp = refund_worker::broker::connect(crate::helpers::AMQP_URL, "malformed test")
        .await
        .unwrap();
    let publisher = refund_worker::broker::Publisher::open(&amqp).await.unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-first-death-reason".into(),
        lapin::types::AMQPValue::LongString("expired".into()),
    );
    let body = serde_json::to_vec(&stripe_job("pi_expired", 100)).unwrap();
    publisher
        .publish(
            &env.topology.dead_exchange(),
            "",
            &body,
            BasicProperties::default()
                .with_message_id("job-expired".into())
                .with_headers(headers),
        )
        .await
        .unwrap();
    let output = tokio::process::Command::new(binary())
        .args(["dlq", "export"])
        .envs(env.child_env())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["job_id"], "job-expired");
    assert_eq!(
        row["error"],
        "dead-lettered by RabbitMQ (expired) before a worker handled it"
    );
    let _ = amqp.close(200, "done".into()).await;
    env.cleanup().await;
}

/// A tiny deterministic generator (xorshift64), so the mutations are the same on every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Fragments a mutation splices in: the tokens parsers trip on.
const FRAGMENTS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"-",
    b"0",
    b"1e309",
    b"1.5",
    b"-1",
    b"18446744073709551616",
    b"1000000000001",
    b"\"amount\":",
    b"\"amount\":1,",
    b"\"metadata\":{\"a\":1,\"a\":2},",
    b"\xEF\xBB\xBF",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xe2\x82\xac",
    b"{tag}",
    b" ",
    b"\n",
    b"\"notify\":{",
    b"\"date\":\"2026-02-29\",",
    b"\"provider\":\"pix\",",
    b"\"order_id\":\"o-1\",",
];

/// One random edit of `input`.
fn mutate(input: &[u8], seeds: &[&[u8]], state: &mut u64) -> Vec<u8> {
    let mut out = input.to_vec();
    let pick = |state: &mut u64, n: usize| (xorshift(state) % n.max(1) as u64) as usize;
    let edits = 1 + pick(state, 2);
    for _ in 0..edits {
        let at = pick(state, out.len() + 1);
        match pick(state, 8) {
            // Swap one digit for another: mostly still a valid job, with another amount or id.
            7 if out.iter().any(u8::is_ascii_digit) => {
                let digits: Vec<usize> = (0..out.len())
                    .filter(|i| out[*i].is_ascii_digit())
                    .collect();
                out[digits[pick(state, digits.len())]] = b'0' + pick(state, 10) as u8;
            }
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << pick(state, 8);
            }
            1 => out.insert(at, xorshift(state) as u8),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => {
                let fragment = FRAGMENTS[pick(state, FRAGMENTS.len())];
                out.splice(at..at, fragment.iter().copied());
            }
            4 if at < out.len() => {
                let end = (at + 1 + pick(state, 16)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(end..end, copy);
            }
            5 => out.truncate(at),
            _ => {
                // Splice the tail of another seed in.
                let other = seeds[pick(state, seeds.len())];
                let from = pick(state, other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
    out
}

/// Valid jobs the mutations start from: every field, both flows, the edges of each rule.
const VALID_SEEDS: &[&str] = &[
    r#"{"payment_id":"pi_1","amount":18600,"provider":"stripe"}"#,
    r#"{"payment_id":"E12345678202611241200abcdefghijk","amount":1,"provider":"pix","date":"2026-11-24","reason":"PIX_WITHDRAWAL_OR_CHANGE_ERROR"}"#,
    r#"{"order_id":"8421","amount":1000000000000,"agent_id":"support-bot","mandate_id":"cm_support","credit_note":true,"notify":{"channel":"whatsapp","to":"+5511999990000","template":"refund_done"}}"#,
    r#"{"payment_id":"pay_080225913252","amount":99,"provider":"asaas","currency":"JPY","description":"Reembolso: pedido duplicado, cliente Ana — obrigado!\n","idempotency_key":"second-refund:pay_080225913252:2","metadata":{"ticket":42,"tags":["a","b"],"nested":{"x":-1.5e-7,"y":null,"z":true}}}"#,
    r#"{ "payment_id" : "tx-9.9:1" , "amount" : 18600 , "provider" : "rinne" , "currency" : null , "date" : null }"#,
    r#"{"payment_id":"1234567890","amount":500,"provider":"mercadopago","reason":"DUPLICATE","date":"2028-02-29"}"#,
];

#[test]
fn corpus_and_mutations_keep_the_parser_invariants() {
    let cases = all_cases();
    for case in &cases {
        let verdict = invariants::check(&case.body)
            .unwrap_or_else(|broken| panic!("{}: {broken}", case.name));
        // Bodies refused only for their declared media are valid JSON jobs on their own.
        let media_only = matches!(case.field, "content_type" | "content_encoding");
        match verdict {
            Verdict::Rejected(_) => {}
            Verdict::Accepted(_) if media_only => {}
            Verdict::Accepted(job) => panic!("{} was accepted: {job:?}", case.name),
        }
    }

    let mut seeds: Vec<&[u8]> = VALID_SEEDS.iter().map(|s| s.as_bytes()).collect();
    for seed in &seeds {
        assert!(
            matches!(invariants::check(seed), Ok(Verdict::Accepted(_))),
            "seed {:?} is valid",
            String::from_utf8_lossy(seed)
        );
    }
    seeds.extend(
        cases
            .iter()
            .filter(|c| c.body.len() < 4096)
            .map(|c| c.body.as_slice()),
    );

    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..8000 {
        let seed = seeds[round % VALID_SEEDS.len().max(1) % seeds.len()];
        let seed = if round % 5 == 4 {
            seeds[(xorshift(&mut state) % seeds.len() as u64) as usize]
        } else {
            seed
        };
        let input = mutate(seed, &seeds, &mut state);
        let verdict = std::panic::catch_unwind(|| invariants::check(&input))
            .unwrap_or_else(|_| panic!("parsing panicked on {input:?}"));
        match verdict {
            Ok(Verdict::Accepted(_)) => accepted += 1,
            Ok(Verdict::Rejected(_)) => rejected += 1,
            Err(broken) => panic!(
                "round {round}: {broken}\ninput: {:?}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
    eprintln!("{accepted} mutations accepted, {rejected} refused");
    // The mutations explore both sides of the parser, or this test proves little.
    assert!(
        accepted >= 300,
        "only {accepted} mutations were still valid jobs"
    );
    assert!(rejected >= 3000, "only {rejected} mutations were refused");
}
