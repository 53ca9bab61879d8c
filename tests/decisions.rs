//! The decisions that move money, one delivery at a time, through the worker's own pipeline
//! and plan ([`JobRunner`]) against the real Redis and an in-process sandbox: no RabbitMQ,
//! so each test takes milliseconds where the whole-worker tests in `tests/it` take seconds.
//! A retry is driven by hand: the next delivery carries the copy the worker would publish.
//!
//! Each test has its own Redis prefix and its own sandbox, so they run in parallel. Real
//! time, and no test sleeps: the sandbox and Redis are real sockets, and a paused clock
//! (`tokio::time::pause`) auto-advances while an answer is on its way, so Redis calls time
//! out at random ("Redis is unavailable: timed out"). The one wait that matters, the client
//! timeout of a lost answer, is set to 300 ms instead.

use std::time::Duration;

use lapin::{BasicProperties, types::AMQPValue};
use refund_sandbox::{FaultOptions, Sandbox};
use refund_worker::{
    app::{Connections, JobRunner},
    broker::job_properties,
    config::Settings,
    ending::{EarlierRefund, Fate, JobEnd},
    job::{JobDate, ProviderName},
    outcome::FailureClass,
    store::IdempotencyStore,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// One test's world: a sandbox on a free port, a Redis prefix of its own, and a runner.
struct Decisions {
    runner: JobRunner,
    sandbox: Sandbox,
    store: IdempotencyStore,
    stop_sandbox: CancellationToken,
}

impl Decisions {
    async fn start(name: &str, faults: FaultOptions, tweak: impl FnOnce(&mut Settings)) -> Self {
        let sandbox = Sandbox::new(faults);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let sandbox_url = format!("http://{}", listener.local_addr().expect("bound"));
        let stop_sandbox = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

        let mut settings = Settings::default();
        settings.retry.delays = vec![Duration::from_millis(200), Duration::from_millis(500)];
        settings.retry.max_attempts = 3;
        settings.retry.in_process = 1;
        settings.retry.in_process_delay = Duration::from_millis(5);
        settings.providers.timeout = Duration::from_secs(1);
        settings.providers.connect_timeout = Duration::from_millis(500);
        settings.point_providers_at(&sandbox_url);
        tweak(&mut settings);
        let connections = Connections {
            // Never connected: a runner has no broker.
            amqp_url: "amqp://unused.invalid:5672/%2f".into(),
            redis_url: REDIS_URL.into(),
            prefix: format!(
                "dec-{name}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        let runner = JobRunner::assemble(&connections, &settings)
            .await
            .expect("Redis must be running on 127.0.0.1:6379 (see README)");
        let store = connections
            .idempotency_store(&settings)
            .await
            .expect("Redis is running");
        Self {
            runner,
            sandbox,
            store,
            stop_sandbox,
        }
    }

    /// Runs deliveries of `body` as the worker would see them: the first as published, each
    /// next one as the retry copy of the one before, until the job does not come back.
    async fn deliver_until_final(&self, body: &[u8], limit: usize) -> Vec<JobEnd> {
        let mut properties = properties();
        let mut ends = Vec::new();
        while ends.len() < limit {
            let end = self.runner.try_execute(body, &properties).await;
            let copy = self.runner.retry_copy(&end, body, &properties);
            ends.push(end);
            match copy {
                Some(next) => properties = next,
                None => return ends,
            }
        }
        panic!("still retrying after {limit} deliveries: {ends:#?}");
    }

    fn refund_posts(&self) -> usize {
        self.sandbox
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    async fn cleanup(self) {
        let _ = self.store.delete_namespace().await;
        self.stop_sandbox.cancel();
    }
}

fn properties() -> BasicProperties {
    job_properties(&uuid::Uuid::new_v4().to_string(), None)
}

fn stripe_job(payment_id: &str, amount: u64) -> Vec<u8> {
    let job = json!({
        "payment_id": payment_id,
        "amount": amount,
        "provider": "stripe",
        "date": JobDate::today().to_string(),
    });
    serde_json::to_vec(&job).expect("serializes")
}

#[tokio::test]
async fn a_valid_job_refunds_once_and_a_second_delivery_is_a_duplicate() {
    let world = Decisions::start("once", FaultOptions::default(), |_| {}).await;
    let body = stripe_job("pi_decide_once", 4990);
    let properties = properties();

    let first = world.runner.try_execute(&body, &properties).await;
    let Fate::Refunded {
        provider,
        refund_id,
        amount,
        adopted,
    } = first.fate.clone()
    else {
        panic!("the first delivery refunds: {first:#?}");
    };
    assert_eq!(
        (provider, amount, adopted),
        (ProviderName::Stripe, 4990, false)
    );
    assert_eq!(world.runner.retry_copy(&first, &body, &properties), None);

    let second = world.runner.try_execute(&body, &properties).await;
    assert_eq!(
        second.fate,
        Fate::Duplicate {
            earlier: Some(EarlierRefund {
                provider: ProviderName::Stripe,
                refund_id: refund_id.clone(),
            })
        }
    );
    assert_eq!(world.sandbox.ledger().len(), 1, "refunded exactly once");
    assert_eq!(world.sandbox.ledger()[0].refund_id, refund_id);
    assert_eq!(
        world.refund_posts(),
        1,
        "the duplicate never reached the provider"
    );
    world.cleanup().await;
}

#[tokio::test]
async fn a_provider_5xx_climbs_the_retry_tiers_then_is_exhausted_at_the_attempt_limit() {
    let faults = FaultOptions {
        fail_rate: 1.0,
        ..FaultOptions::default()
    };
    let world = Decisions::start("exhausted", faults, |s| {
        // Every call reaches the provider (the circuit breaker has its own tests).
        s.providers.circuit_failures = 0;
    })
    .await;
    let body = stripe_job("pi_decide_down", 900);

    let ends = world.deliver_until_final(&body, 5).await;

    let fates: Vec<(Option<&str>, u32)> = ends
        .iter()
        .map(|end| match &end.fate {
            Fate::Retry {
                tier,
                attempts,
                counted: true,
                ..
            } => (Some(tier.queue.as_str()), *attempts),
            Fate::DeadLetter {
                class: FailureClass::Exhausted,
                attempts,
                ..
            } => (None, *attempts),
            other => panic!("neither a counted retry nor exhausted: {other:#?}"),
        })
        .collect();
    assert_eq!(fates.len(), 3, "{ends:#?}");
    assert!(fates[0].0.is_some_and(|q| q.ends_with(".retry.200ms")));
    assert!(fates[1].0.is_some_and(|q| q.ends_with(".retry.500ms")));
    assert_eq!(
        fates.iter().map(|f| f.1).collect::<Vec<_>>(),
        [1, 2, 3],
        "each delivery counts one more failed attempt"
    );
    let Fate::DeadLetter { provider, why, .. } = &ends[2].fate else {
        unreachable!("checked above");
    };
    assert_eq!(*provider, Some(ProviderName::Stripe));
    assert!(why.starts_with("gave up after 3 attempts"), "{why}");
    assert!(why.contains("503"), "{why}");
    assert!(world.sandbox.ledger().is_empty(), "no money moved");
    assert_eq!(
        world.refund_posts(),
        1,
        "after the first uncertain 5xx, every call looks the refund up instead of sending it"
    );
    world.cleanup().await;
}

#[tokio::test]
async fn an_invalid_body_is_dead_lettered_invalid_without_calling_a_provider() {
    let world = Decisions::start("invalid", FaultOptions::default(), |_| {}).await;
    let body = br#"{"payment_id":"pi_decide_invalid","amount":12.5,"provider":"stripe"}"#;

    let end = world.runner.try_execute(body, &properties()).await;

    let Fate::DeadLetter {
        class: FailureClass::Invalid,
        provider: None,
        why,
        attempts: 0,
    } = &end.fate
    else {
        panic!("an invalid job is dead-lettered as invalid: {end:#?}");
    };
    assert!(why.contains("amount"), "names the field: {why}");
    assert_eq!(
        end.job, None,
        "nothing parsed, nothing reported as asked for"
    );
    assert_eq!(world.runner.retry_copy(&end, body, &properties()), None);
    assert!(world.sandbox.requests().is_empty());
    world.cleanup().await;
}

#[tokio::test]
async fn a_declined_refund_is_dead_lettered_permanent_with_the_providers_reason() {
    let world = Decisions::start("declined", FaultOptions::default(), |_| {}).await;
    let body = stripe_job("pi_decide_declined", 1200);

    let end = world.runner.try_execute(&body, &properties()).await;

    let Fate::DeadLetter {
        class: FailureClass::Permanent,
        why,
        ..
    } = &end.fate
    else {
        panic!("a provider's refusal is permanent: {end:#?}");
    };
    assert!(why.contains("charge_disputed"), "{why}");
    assert!(world.sandbox.ledger().is_empty());
    assert_eq!(
        world.refund_posts(),
        1,
        "a permanent refusal is not retried"
    );
    world.cleanup().await;
}

#[tokio::test]
async fn a_lost_answer_is_looked_up_and_adopted_not_sent_again() {
    let faults = FaultOptions {
        timeout_hold: Duration::from_secs(2),
        ..FaultOptions::default()
    };
    let world = Decisions::start("adopt", faults, |s| {
        s.providers.timeout = Duration::from_millis(300);
    })
    .await;
    let body = stripe_job("pi_decide_timeout", 5000);

    let ends = world.deliver_until_final(&body, 4).await;

    let last = ends.last().expect("at least one delivery");
    let Fate::Refunded {
        refund_id,
        amount,
        adopted,
        ..
    } = &last.fate
    else {
        panic!("the refund the lost answer made is found: {ends:#?}");
    };
    assert!(*adopted, "found at the provider, not created again");
    assert_eq!(*amount, 5000);
    let ledger = world.sandbox.ledger();
    assert_eq!(ledger.len(), 1, "the lost answer's refund is the only one");
    assert_eq!(&ledger[0].refund_id, refund_id);
    assert_eq!(world.refund_posts(), 1, "reconciled by looking it up");
    world.cleanup().await;
}

#[tokio::test]
async fn a_pending_refund_goes_to_the_first_tier_counting_one_status_check() {
    let world = Decisions::start("pending", FaultOptions::default(), |_| {}).await;
    let body = stripe_job("pi_decide_pending", 300);
    let properties = properties();

    let end = world.runner.try_execute(&body, &properties).await;

    let Fate::Pending { syncs, tier, .. } = &end.fate else {
        panic!("an accepted, unsettled refund is pending: {end:#?}");
    };
    assert_eq!(*syncs, 1);
    assert!(tier.queue.ends_with(".retry.200ms"), "{tier:?}");
    let copy = world
        .runner
        .retry_copy(&end, &body, &properties)
        .expect("a pending refund comes back to be checked");
    let headers = copy.headers().as_ref().expect("headers");
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("x-refund-syncs"), "1");
    assert_eq!(
        text("x-refund-date"),
        JobDate::today().to_string(),
        "the key's day travels with the copy"
    );
    assert_eq!(
        world.refund_posts(),
        1,
        "sent once; later deliveries only look"
    );
    world.cleanup().await;
}
