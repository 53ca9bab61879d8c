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
            "integer number of minor units",
        ),
        (
            r#"{"payment_id":"p","provider":"stripe","amount":1.5}"#,
            "integer number of minor units",
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
            "integer number",
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
        (huge.as_bytes(), "at most 65536 bytes"),
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
