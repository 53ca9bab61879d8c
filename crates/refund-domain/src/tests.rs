use super::*;

fn parse(json: &str) -> Result<RefundJob, JobError> {
    RefundJob::parse(json.as_bytes())
}

fn rejected(json: &str) -> JobError {
    parse(json).expect_err(json)
}

#[test]
fn minimal_bulk_job_gets_the_schema_defaults() {
    let job = parse(r#"{"payment_id":"pi_123","amount":18600,"provider":"stripe"}"#).unwrap();
    assert_eq!(job.amount.minor(), 18600);
    assert_eq!(job.currency, Currency::BRL);
    assert_eq!(job.reason, Reason::CustomerRequest);
    assert_eq!(job.provider, Some(ProviderName::Stripe));
    assert!(!job.is_governed());
    let date = JobDate::parse("2026-11-24").unwrap();
    assert_eq!(job.idempotency_key(date).as_str(), "pi_123:2026-11-24");
}

#[test]
fn full_job_round_trips_every_field() {
    let job = parse(
        r#"{"payment_id":"pi_1","amount":1,"currency":"JPY","reason":"FRAUD","description":"dup",
            "provider":"pix","date":"2026-02-28","idempotency_key":"second-refund:1",
            "order_id":"8421","agent_id":"support-bot","mandate_id":"cm_support","credit_note":false,
            "notify":{"channel":"whatsapp","to":"+5511999990000","template":"refund_done"},
            "metadata":{"ticket":42}}"#,
    )
    .unwrap();
    assert_eq!(job.currency.code(), "JPY");
    assert_eq!(job.reason, Reason::Fraud);
    assert_eq!(job.date.unwrap().to_string(), "2026-02-28");
    assert_eq!(job.credit_note, Some(false));
    assert_eq!(job.notify.as_ref().unwrap().to, "+5511999990000");
    assert_eq!(job.metadata.as_ref().unwrap()["ticket"], 42);
    assert!(job.is_governed());
    // An explicit key wins over payment_id + date.
    assert_eq!(
        job.idempotency_key(JobDate::today()).as_str(),
        "second-refund:1"
    );
}

#[test]
fn governed_job_needs_neither_payment_nor_provider() {
    let job =
        parse(r#"{"order_id":"8421","amount":18600,"agent_id":"a","mandate_id":"m"}"#).unwrap();
    let date = JobDate::parse("2026-01-02").unwrap();
    assert_eq!(job.idempotency_key(date).as_str(), "order:8421:2026-01-02");
}

#[test]
fn invalid_amount_names_the_field_and_the_rule() {
    let cases = [
        (r#"{"payment_id":"p","provider":"stripe"}"#, "is required"),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":0}"#,
            "from 1 to 1000000000000",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":-5}"#,
            "from 1 to 1000000000000 (minor units), got -5",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":1.5}"#,
            "whole number of minor units (centavos), got 1.5",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":100.0}"#,
            "without a decimal point or exponent, got 100.0",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":-0}"#,
            "without a decimal point or exponent",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":99999999999999999999999999999}"#,
            "from 1 to 1000000000000 (minor units), got 1e+29",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":-9223372036854775809}"#,
            "from 1 to 1000000000000",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":[100]}"#,
            "got an array",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":1e3}"#,
            "integer number of minor units",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":"100"}"#,
            "got a string",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":1000000000001}"#,
            "from 1 to",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":18446744073709551616}"#,
            "from 1 to 1000000000000",
        ),
    ];
    for (json, rule) in cases {
        let err = rejected(json);
        assert_eq!(err.field, "amount", "{json}");
        assert!(err.rule.contains(rule), "{json}: {err}");
    }
}

#[test]
fn a_typo_is_an_unknown_field_with_a_suggestion_never_a_default() {
    let err = rejected(r#"{"payment_id":"p","provider":"stripe","ammount":100}"#);
    assert_eq!(err.field, "ammount");
    assert!(err.rule.contains("did you mean `amount`"), "{err}");
}

#[test]
fn duplicate_fields_are_rejected() {
    let err = rejected(r#"{"payment_id":"p","provider":"stripe","amount":1,"amount":100000}"#);
    assert_eq!(err.field, "body");
    assert!(err.rule.contains("`amount` twice"), "{err}");
}

#[test]
fn malformed_bodies_are_rejected_as_body_errors() {
    let huge = format!(
        r#"{{"payment_id":"p","amount":1,"provider":"stripe","description":"{}"}}"#,
        "x".repeat(70_000)
    );
    let cases: [(&[u8], &str); 7] = [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"not json", "not valid JSON"),
        (b"[1,2]", "a JSON object"),
        (b"{\"amount\":1", "not valid JSON"),
        (b"{\"payment_id\":\"\xff\"}", "UTF-8"),
        (
            huge.as_bytes(),
            "is too large: 70066 bytes, the limit is 65536 bytes",
        ),
    ];
    for (body, rule) in cases {
        let err = RefundJob::parse(body).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(err.field, "body");
        assert!(err.rule.contains(rule), "{err}");
    }
}

#[test]
fn each_field_rule_is_enforced() {
    let base = r#""payment_id":"p","provider":"stripe","amount":100"#;
    let cases = [
        (r#""currency":"brl""#, "currency", "ISO 4217"),
        (r#""currency":"XYZ""#, "currency", "ISO 4217"),
        (r#""reason":"because""#, "reason", "CUSTOMER_REQUEST"),
        (r#""provider":"paypal""#, "provider", "stripe, mercadopago"),
        (r#""date":"2026-02-30""#, "date", "real date"),
        (r#""date":"26-1-1""#, "date", "YYYY-MM-DD"),
        (
            r#""idempotency_key":"has space""#,
            "idempotency_key",
            "[A-Za-z0-9_.:-]",
        ),
        (r#""credit_note":"yes""#, "credit_note", "true or false"),
        (r#""metadata":[1]"#, "metadata", "an object"),
        (
            r#""notify":{"channel":"sms","to":"+5511999990000"}"#,
            "notify.channel",
            "whatsapp",
        ),
        (
            r#""notify":{"channel":"whatsapp","to":"11999990000"}"#,
            "notify.to",
            "E.164",
        ),
        (
            r#""notify":{"channel":"whatsapp","to":"+5511999990000","x":1}"#,
            "notify.x",
            "unknown",
        ),
        (r#""agent_id":"""#, "agent_id", "1-128"),
    ];
    for (extra, field, rule) in cases {
        let mut object: Map<String, Value> = serde_json::from_str(&format!("{{{base}}}")).unwrap();
        let extra: Map<String, Value> = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        object.extend(extra);
        let err = RefundJob::from_object(object).expect_err(field);
        assert_eq!(err.field, field);
        assert!(err.rule.contains(rule), "{field}: {err}");
    }
}

#[test]
fn limits_on_sizes() {
    let long_desc = "é".repeat(501);
    let err = rejected(&format!(
        r#"{{"payment_id":"p","provider":"stripe","amount":1,"description":"{long_desc}"}}"#
    ));
    assert_eq!(err.field, "description");
    let ok_desc = "é".repeat(500);
    parse(&format!(
        r#"{{"payment_id":"p","provider":"stripe","amount":1,"description":"{ok_desc}"}}"#
    ))
    .unwrap();

    let big_meta = format!(r#"{{"k":"{}"}}"#, "x".repeat(4100));
    let err = rejected(&format!(
        r#"{{"payment_id":"p","provider":"stripe","amount":1,"metadata":{big_meta}}}"#
    ));
    assert_eq!(err.field, "metadata");

    let long_id = "a".repeat(129);
    let err = rejected(&format!(
        r#"{{"payment_id":"{long_id}","provider":"stripe","amount":1}}"#
    ));
    assert_eq!(err.field, "payment_id");
}

#[test]
fn bulk_job_needs_payment_and_provider() {
    let err = rejected(r#"{"amount":1,"provider":"stripe"}"#);
    assert_eq!(err.field, "payment_id");
    let err = rejected(r#"{"amount":1,"payment_id":"p"}"#);
    assert_eq!(err.field, "provider");
}

#[test]
fn null_means_absent() {
    let job =
        parse(r#"{"payment_id":"p","provider":"stripe","amount":1,"date":null,"currency":null}"#)
            .unwrap();
    assert_eq!(job.date, None);
    assert_eq!(job.currency, Currency::BRL);
}

#[test]
fn error_display_names_field_then_rule() {
    let err = rejected(r#"{"payment_id":"p","provider":"stripe","amount":0}"#);
    assert_eq!(
        err.to_string(),
        "field `amount`: must be an integer from 1 to 1000000000000 (minor units), got 0"
    );
}

#[test]
fn body_limit_is_inclusive_and_configurable() {
    let job = br#"{"payment_id":"p","amount":1,"provider":"stripe"}"#;
    let mut padded = job.to_vec();
    padded.resize(MAX_BODY_BYTES, b' ');
    RefundJob::parse(&padded).expect("a body of exactly the limit is read");
    padded.push(b' ');
    let err = RefundJob::parse(&padded).unwrap_err();
    assert_eq!(err.field, "body");
    assert!(
        err.rule.contains("65537 bytes, the limit is 65536"),
        "{err}"
    );

    let err = RefundJob::parse_within(job, 20).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `body`: is too large: 49 bytes, the limit is 20 bytes"
    );
    RefundJob::parse_within(job, job.len()).unwrap();
}

#[test]
fn bodies_that_are_not_utf8_json_say_what_they_are() {
    let job = br#"{"payment_id":"p","amount":1,"provider":"stripe"}"#;
    let with = |prefix: &[u8]| [prefix, job].concat();
    let utf16: Vec<u8> = job.iter().flat_map(|b| [*b, 0]).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (with(b"\xEF\xBB\xBF"), "starts with a UTF-8 byte order mark"),
        (with(b"\xFF\xFE"), "starts with a UTF-16 byte order mark"),
        (with(b"\xFE\xFF"), "starts with a UTF-16 byte order mark"),
        (
            with(b"\xFF\xFE\x00\x00"),
            "starts with a UTF-32 byte order mark",
        ),
        (utf16, "contains a NUL byte at byte 1"),
        ([job.as_slice(), b"\x00"].concat(), "NUL byte at byte 49"),
        (
            b"{\"payment_id\":\"caf\xe9\"}".to_vec(),
            "is not valid UTF-8 (byte 18)",
        ),
        (b"\xc0\xaf".to_vec(), "is not valid UTF-8 (byte 0)"),
        (b"null".to_vec(), "must be a JSON object, got null"),
        (b"42".to_vec(), "must be a JSON object, got a number"),
        (b"true".to_vec(), "must be a JSON object, got a boolean"),
        (b"[]".to_vec(), "must be a JSON object, got an array"),
        (
            format!("\"{}\"", "x".repeat(10_000)).into_bytes(),
            "must be a JSON object, got a string",
        ),
        ([job.as_slice(), b"{}"].concat(), "trailing characters"),
        (
            b"{'amount':1}".to_vec(),
            "is not valid JSON: key must be a string",
        ),
        (
            format!(r#"{{"metadata":{}1{}}}"#, "[".repeat(200), "]".repeat(200)).into_bytes(),
            "nests arrays or objects too deep",
        ),
    ];
    for (body, rule) in cases {
        let err = RefundJob::parse(&body).expect_err(rule);
        assert_eq!(err.field, "body", "{rule}");
        assert!(err.rule.contains(rule), "expected {rule:?}, got {err}");
        assert!(err.to_string().len() < 200, "short: {err}");
    }
}

#[test]
fn duplicate_keys_are_rejected_at_any_depth() {
    let base = r#""payment_id":"p","provider":"stripe","amount":1"#;
    let cases = [
        (
            r#""notify":{"channel":"whatsapp","to":"+5511999990000","to":"+5511888880000"}"#,
            "`notify.to` twice",
        ),
        (
            r#""metadata":{"ticket":1,"ticket":2}"#,
            "`metadata.ticket` twice",
        ),
        (
            r#""metadata":{"items":[{"sku":"a","sku":"b"}]}"#,
            "`metadata.items[].sku` twice",
        ),
    ];
    for (extra, rule) in cases {
        let err = rejected(&format!("{{{base},{extra}}}"));
        assert_eq!(err.field, "body");
        assert!(err.rule.contains(rule), "{err}");
    }
    // The same key in two different objects is fine.
    parse(&format!(
        r#"{{{base},"metadata":{{"a":{{"id":1}},"b":{{"id":2}}}}}}"#
    ))
    .unwrap();
}

#[test]
fn description_refuses_control_characters_but_keeps_line_breaks() {
    let job = |d: &str| {
        format!(r#"{{"payment_id":"p","provider":"stripe","amount":1,"description":"{d}"}}"#)
    };
    let err = rejected(&job(r"a\u0000b"));
    assert_eq!(err.field, "description");
    assert!(err.rule.contains("U+0000 at byte 1"), "{err}");
    let err = rejected(&job(r"\u001b[31mred"));
    assert!(err.rule.contains("U+001B"), "{err}");
    let ok = parse(&job(r"line one\nline two\ttabbed")).unwrap();
    assert_eq!(
        ok.description.as_deref(),
        Some("line one\nline two\ttabbed")
    );
}

#[test]
fn quoted_input_in_a_reason_is_short_and_printable() {
    let long_key = "k".repeat(60_000);
    let err = rejected(&format!(r#"{{"{long_key}":1}}"#));
    assert!(err.field.chars().count() <= 65, "{}", err.field.len());
    assert!(err.to_string().len() < 600);

    let err = rejected(r#"{"\u001b[2J":1}"#);
    assert!(!err.to_string().chars().any(char::is_control), "{err}");
    assert!(err.field.contains("\\u{1b}"), "{}", err.field);

    let err = rejected(r#"{"":1}"#);
    assert!(err.rule.contains("an empty name"), "{err}");
}

#[test]
fn media_properties_other_than_plain_json_are_refused_by_name() {
    for (content_type, encoding) in [
        (None, None),
        (Some(""), Some("")),
        (Some("application/json"), None),
        (Some("Application/JSON; charset=UTF-8"), Some("identity")),
        (Some("application/vnd.refund.v1+json"), Some("utf-8")),
        (Some("text/json"), None),
    ] {
        check_media(content_type, encoding).expect("plain JSON is fine");
    }
    let cases = [
        (Some("text/xml"), None, "content_type", "\"text/xml\""),
        (
            Some("text/plain"),
            None,
            "content_type",
            "publish it as application/json",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            None,
            "content_type",
            "a refund job is JSON",
        ),
        (
            Some("application/json; charset=utf-16"),
            None,
            "content_type",
            "charset \"utf-16\"",
        ),
        (None, Some("gzip"), "content_encoding", "\"gzip\""),
        (
            Some("application/json"),
            Some("deflate"),
            "content_encoding",
            "uncompressed",
        ),
    ];
    for (content_type, encoding, field, rule) in cases {
        let err = check_media(content_type, encoding).expect_err(rule);
        assert_eq!(err.field, field);
        assert!(err.rule.contains(rule), "{err}");
    }
}

#[test]
fn invariants_hold_for_valid_jobs_and_for_refusals() {
    use invariants::{Verdict, check};
    let valid = [
        r#"{"payment_id":"pi_1","amount":18600,"provider":"stripe"}"#,
        r#"{"order_id":"8421","amount":1,"agent_id":"a","mandate_id":"m","date":"2026-02-28"}"#,
        r#"{"payment_id":"p","amount":1000000000000,"provider":"pix","currency":"JPY","reason":"FRAUD",
            "description":"é\n","idempotency_key":"k:1","credit_note":false,
            "notify":{"channel":"whatsapp","to":"+5511999990000"},"metadata":{"n":[1.5,-0.0,null,{"x":"y"}]}}"#,
    ];
    for body in valid {
        match check(body.as_bytes()) {
            Ok(Verdict::Accepted(_)) => {}
            other => panic!("{body}: {other:?}"),
        }
    }
    for body in [&b"{"[..], b"", b"{\"amount\":0}", b"\xff"] {
        match check(body) {
            Ok(Verdict::Rejected(_)) => {}
            other => panic!("{body:?}: {other:?}"),
        }
    }
}
