//! The per-job CPU path, without I/O: parsing and validating a body, rejecting bad ones,
//! deriving the idempotency key, reading the delivery's envelope, planning the job's end and
//! its event, and sealing a receipt. `cargo bench --bench job_path`; figures in
//! docs/PERFORMANCE.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lapin::BasicProperties;
use refund_worker::{
    broker::{Envelope, Topology, events::OutcomeEvent, job_properties, seal::Sealer},
    config::Secret,
    governance::receipt::{GENESIS, Receipt, ReceiptBody},
    job::{JobDate, ProviderName, RefundJob},
    outcome::Outcome,
    pipeline::{JobFacts, Processed},
    signing::KeyPair,
    worker::{Delivered, RetryPolicy, plan},
};

const VALID: &[u8] = br#"{"payment_id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","amount":4990,"provider":"stripe","reason":"CUSTOMER_REQUEST","description":"late delivery","date":"2026-11-24","metadata":{"ticket":"T-10042"}}"#;

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.bench_function("valid", |b| {
        b.iter(|| RefundJob::parse(black_box(VALID)).expect("valid"))
    });
    let rejected: [(&str, &[u8]); 3] = [
        (
            "reject_amount",
            br#"{"payment_id":"pi_1","amount":12.5,"provider":"stripe"}"#,
        ),
        (
            "reject_unknown_field",
            br#"{"payment_id":"pi_1","ammount":1250,"amount":1,"provider":"stripe","date":"2026-11-24"}"#,
        ),
        ("reject_not_json", b"payment_id=pi_1&amount=1250"),
    ];
    for (name, body) in rejected {
        group.bench_function(name, |b| {
            b.iter(|| RefundJob::parse(black_box(body)).expect_err("invalid"))
        });
    }
    group.finish();
}

/// The built-in development seal key, as a worker with the default settings has it.
fn sealer() -> Sealer {
    Sealer::from_config(&refund_worker::config::Settings::default().broker.seal_keys)
        .expect("the default seal key is valid")
}

fn keys_and_envelope(c: &mut Criterion) {
    let job = RefundJob::parse(VALID).expect("valid");
    let date = JobDate::today();
    c.bench_function("idempotency_key", |b| {
        b.iter(|| black_box(&job).idempotency_key(date))
    });
    let properties: BasicProperties = job_properties("8d0f5a7e-4a43-4b8e-9d55-1c1d2f3a4b5c", None);
    let sealer = sealer();
    c.bench_function("envelope_read", |b| {
        b.iter(|| Envelope::read(black_box(&properties), VALID, false, &sealer))
    });
}

fn outcome_mapping(c: &mut Criterion) {
    let job = RefundJob::parse(VALID).expect("valid");
    let envelope = Envelope::read(&job_properties("job-1", None), VALID, false, &sealer());
    let processed = Processed {
        outcome: Outcome::Refunded {
            provider: ProviderName::Stripe,
            refund_id: "re_3MtwBwLkdIwHu7ix0X9a1b2c".into(),
            amount: 4990,
            adopted: false,
        },
        date: Some(JobDate::today()),
        job: Some(JobFacts::of(&job)),
        existing: None,
    };
    let topology = Topology::new("bench", &[std::time::Duration::from_secs(1)], 20);
    let policy = RetryPolicy::new(&topology, 6);
    c.bench_function("outcome_event", |b| {
        b.iter(|| {
            let end = plan(&processed, &Delivered::of(black_box(&envelope)), &policy);
            let event =
                OutcomeEvent::of(&end, std::time::Duration::from_micros(1_234)).expect("terminal");
            serde_json::to_vec(&event).expect("serializes")
        })
    });
}

fn sealing(c: &mut Criterion) {
    let key = KeyPair::from_seed(&Secret::new("11".repeat(32)), "bench key").expect("a key");
    let body = ReceiptBody {
        job_id: "job-1".into(),
        idempotency_key: "pi_3MtwBwLkdIwHu7ix28a3tqPa:2026-11-24".into(),
        kind: "bulk".into(),
        provider: "stripe".into(),
        payment_id: "pi_3MtwBwLkdIwHu7ix28a3tqPa".into(),
        refund_id: "re_3MtwBwLkdIwHu7ix0X9a1b2c".into(),
        refund_status: "succeeded".into(),
        amount: 4990,
        currency: "BRL".into(),
        rail: "card".into(),
        destination: None,
        order_id: None,
        verification: None,
        mandate: None,
        credit_note: None,
        notification: None,
        steps: Default::default(),
    };
    // Format 1: a signature per receipt.
    c.bench_function("receipt_seal", |b| {
        b.iter(|| {
            let receipt = Receipt::seal(7, GENESIS.to_owned(), black_box(body.clone()), &key);
            receipt.to_text()
        })
    });
    // Format 2 (what the worker seals): one signature per group; per receipt, for a group
    // of 32, as under load.
    let group: Vec<_> = (0..32).map(|_| body.clone()).collect();
    c.bench_function("receipt_seal_group_of_32_per_receipt", |b| {
        b.iter_custom(|iters| {
            let started = std::time::Instant::now();
            for _ in 0..iters {
                let receipts = Receipt::seal_group(
                    7,
                    GENESIS.to_owned(),
                    "2026-01-02T10:00:02.000Z",
                    black_box(group.clone()),
                    &key,
                );
                black_box(receipts.iter().map(Receipt::to_text).count());
            }
            started.elapsed() / 32
        })
    });
}

criterion_group!(
    benches,
    parsing,
    keys_and_envelope,
    outcome_mapping,
    sealing
);
criterion_main!(benches);
