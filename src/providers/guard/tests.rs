use std::{
    collections::VecDeque,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::{
    job::{Amount, Currency, IdempotencyKey, Reason, Token},
    providers::RefundStatus,
};

/// A connector that answers from a script and counts the calls that reached it.
#[derive(Debug, Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<ProviderRefund, ProviderError>>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Scripted {
    fn new(answers: Vec<Result<ProviderRefund, ProviderError>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into()),
            ..Self::default()
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl RefundProvider for Scripted {
    fn name(&self) -> ProviderName {
        ProviderName::Stripe
    }
    async fn refund(&self, _: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Ok(done()))
    }
    async fn find(
        &self,
        _: &RefundRequest,
        _: Option<&str>,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        Ok(None)
    }
    async fn status(&self, _: &RefundRequest, _: &str) -> Result<ProviderRefund, ProviderError> {
        Ok(done())
    }
}

fn done() -> ProviderRefund {
    ProviderRefund {
        refund_id: "re_1".into(),
        status: RefundStatus::Succeeded,
        amount: 1,
    }
}

fn request() -> RefundRequest {
    RefundRequest {
        key: IdempotencyKey::parse("k").unwrap(),
        payment_id: Token::parse("pi_1").unwrap(),
        amount: Amount::new(1).unwrap(),
        currency: Currency::BRL,
        reason: Reason::CustomerRequest,
        description: None,
        job_id: "j".into(),
    }
}

fn limits(failures: u32) -> Limits {
    Limits {
        concurrency: 0,
        rate_limit: 0,
        max_rate_wait: Duration::from_secs(1),
        circuit_failures: failures,
        circuit_open_for: Duration::from_secs(30),
        call_timeout: Duration::ZERO,
    }
}

fn gauge() -> IntGauge {
    IntGauge::new("circuit_test", "test gauge").unwrap()
}

fn down() -> Result<ProviderRefund, ProviderError> {
    Err(ProviderError::unknown("503"))
}

fn skipped(result: &Result<ProviderRefund, ProviderError>) -> Option<Duration> {
    match result {
        Err(ProviderError::Skipped { retry_after, .. }) => *retry_after,
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_after_consecutive_failures_and_stops_calling() {
    let provider = Scripted::new(vec![down(), down(), down()]);
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(3), circuit.clone());
    for _ in 0..3 {
        assert!(matches!(
            guard.refund(&request()).await,
            Err(ProviderError::Unknown { .. })
        ));
    }
    assert_eq!(circuit.get(), 1);
    let result = guard.refund(&request()).await;
    let wait = skipped(&result).expect("skipped while open");
    assert!(
        wait <= Duration::from_secs(30) && wait > Duration::from_secs(29),
        "{wait:?}"
    );
    assert_eq!(
        provider.calls(),
        3,
        "no call reaches a provider whose circuit is open"
    );
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_closes_the_circuit() {
    let provider = Scripted::new(vec![down(), down()]);
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(2), circuit.clone());
    let _ = guard.refund(&request()).await;
    let _ = guard.refund(&request()).await;
    assert_eq!(circuit.get(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(
        guard.refund(&request()).await.is_ok(),
        "the probe goes through"
    );
    assert_eq!(circuit.get(), 0);
    assert!(guard.refund(&request()).await.is_ok());
    assert_eq!(provider.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_at_once() {
    let provider = Scripted::new(vec![down(), down(), down()]);
    let guard = Guarded::new(provider.clone(), limits(2), gauge());
    let _ = guard.refund(&request()).await;
    let _ = guard.refund(&request()).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(matches!(
        guard.refund(&request()).await,
        Err(ProviderError::Unknown { .. })
    ));
    assert!(skipped(&guard.refund(&request()).await).is_some());
    assert_eq!(provider.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn answers_of_any_kind_mean_the_provider_is_up() {
    let refused = Err(ProviderError::permanent("declined"));
    let provider = Scripted::new(vec![down(), refused, down(), down()]);
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(3), circuit.clone());
    for _ in 0..4 {
        let _ = guard.refund(&request()).await;
    }
    assert_eq!(circuit.get(), 0, "a refusal in between resets the count");
    assert_eq!(provider.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_every_call_until_retry_after() {
    let limited = Err(ProviderError::Transient {
        why: "429".into(),
        retry_after: Some(Duration::from_secs(2)),
    });
    let provider = Scripted::new(vec![limited]);
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(1), circuit.clone());
    assert!(matches!(
        guard.refund(&request()).await,
        Err(ProviderError::Transient { .. })
    ));
    let wait = skipped(&guard.refund(&request()).await).expect("held back");
    assert!(wait <= Duration::from_secs(2));
    assert_eq!(
        circuit.get(),
        0,
        "a provider asking for a pause is up, not broken"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(guard.refund(&request()).await.is_ok());
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_circuit_held_back_by_a_429_probes_once_the_pause_ends() {
    // Two calls in flight: one answers 429 (pause 60 s), the other fails (opens the circuit
    // for 30 s). At 31 s the circuit is half-open but the pause still holds.
    let limited = Err(ProviderError::Transient {
        why: "429".into(),
        retry_after: Some(Duration::from_secs(60)),
    });
    let provider = Arc::new(Scripted {
        answers: Mutex::new(vec![limited, down()].into()),
        delay: Duration::from_secs(1),
        ..Scripted::default()
    });
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(1), circuit.clone());
    let (first, second) = (request(), request());
    let _ = tokio::join!(guard.refund(&first), guard.refund(&second));
    assert_eq!(circuit.get(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    let held = guard.refund(&request()).await;
    assert!(skipped(&held).is_some(), "still paused: {held:?}");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        guard.refund(&request()).await.is_ok(),
        "the first call after the pause probes, and the circuit closes"
    );
    assert_eq!(circuit.get(), 0);
    assert_eq!(provider.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_lets_the_next_call_probe() {
    let provider = Arc::new(Scripted {
        answers: Mutex::new(vec![down()].into()),
        delay: Duration::from_secs(5),
        ..Scripted::default()
    });
    let circuit = gauge();
    let guard = Guarded::new(provider.clone(), limits(1), circuit.clone());
    let _ = guard.refund(&request()).await;
    assert_eq!(circuit.get(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    // The probe's job is cancelled (a timeout, a shutdown) while the provider works.
    let cancelled = tokio::time::timeout(Duration::from_secs(1), guard.refund(&request())).await;
    assert!(cancelled.is_err());
    assert!(
        guard.refund(&request()).await.is_ok(),
        "the next call probes instead of waiting for a probe that will never answer"
    );
    assert_eq!(circuit.get(), 0);
    assert_eq!(provider.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_paces_calls_in_order_and_skips_what_would_wait_too_long() {
    let provider = Scripted::new(vec![]);
    let guard = Arc::new(Guarded::new(
        provider.clone(),
        Limits {
            rate_limit: 2,
            ..limits(0)
        },
        gauge(),
    ));
    let started = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let guard = Arc::clone(&guard);
            tokio::spawn(async move {
                let result = guard.refund(&request()).await;
                (result.is_ok(), started.elapsed())
            })
        })
        .collect();
    let mut finished = Vec::new();
    for call in calls {
        finished.push(call.await.unwrap());
    }
    // Two tokens at once, then one every 500 ms; the fifth would wait 1.5 s > 1 s: skipped.
    let ok: Vec<_> = finished
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(ok.len(), 4, "{finished:?}");
    let latest = ok.iter().max().unwrap();
    assert!(
        *latest >= Duration::from_millis(950) && *latest <= Duration::from_millis(1050),
        "{finished:?}"
    );
    assert_eq!(provider.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_holds_calls_and_skips_them_after_a_while() {
    let provider = Arc::new(Scripted {
        delay: Duration::from_secs(10),
        ..Scripted::default()
    });
    let guard = Arc::new(Guarded::new(
        provider.clone(),
        Limits {
            concurrency: 1,
            ..limits(0)
        },
        gauge(),
    ));
    let first = tokio::spawn({
        let guard = Arc::clone(&guard);
        async move { guard.refund(&request()).await }
    });
    tokio::task::yield_now().await;
    let second = guard.refund(&request()).await;
    assert!(skipped(&second).is_some(), "{second:?}");
    assert!(first.await.unwrap().is_ok());
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_at_its_rate() {
    let mut bucket = TokenBucket::new(3);
    assert!((0..3).all(|_| bucket.take().is_ok()));
    let wait = bucket.take().unwrap_err();
    assert!(wait <= Duration::from_millis(334), "{wait:?}");
    tokio::time::advance(Duration::from_millis(334)).await;
    assert!(bucket.take().is_ok());
    // Reservations queue up: the next one about a third of a second after the last.
    let next = bucket.reserve(Duration::from_secs(1)).unwrap();
    assert!(
        next > Duration::from_millis(320) && next <= Duration::from_millis(334),
        "{next:?}"
    );
    assert!(
        bucket.reserve(Duration::from_millis(100)).is_err(),
        "too far away: not booked"
    );
}

/// A pre-send check that notes when it ran (and the calls the provider had seen by then), and
/// allows the send or not.
fn check_at(
    seen: &Arc<Mutex<Vec<(Duration, usize)>>>,
    provider: &Arc<Scripted>,
    started: Instant,
    allow: bool,
) -> BeforeSend<'static> {
    let (seen, provider) = (Arc::clone(seen), Arc::clone(provider));
    Box::new(move || {
        Box::pin(async move {
            seen.lock()
                .unwrap()
                .push((started.elapsed(), provider.calls()));
            if allow {
                Ok(())
            } else {
                Err(ProviderError::transient("the claim was taken over"))
            }
        })
    })
}

#[tokio::test(start_paused = true)]
async fn the_pre_send_check_runs_after_the_rate_wait_and_its_refusal_sends_nothing() {
    let provider = Scripted::new(vec![]);
    let guard = Guarded::new(
        provider.clone(),
        Limits {
            rate_limit: 1,
            max_rate_wait: Duration::from_secs(10),
            ..limits(1)
        },
        gauge(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let first = guard
        .refund_checked(&request(), check_at(&seen, &provider, started, true))
        .await;
    assert!(first.is_ok(), "{first:?}");
    // The second call waits a second for its token: its check runs after that wait.
    let second = guard
        .refund_checked(&request(), check_at(&seen, &provider, started, true))
        .await;
    assert!(second.is_ok(), "{second:?}");
    // The third call's check refuses: the provider is not asked, and the refusal is not a
    // failure of the provider's (a circuit of one failure would open on it).
    let refused = guard
        .refund_checked(&request(), check_at(&seen, &provider, started, false))
        .await;
    assert!(
        matches!(&refused, Err(ProviderError::Transient { why, .. }) if why.contains("taken over")),
        "{refused:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].0 < Duration::from_millis(10), "{seen:?}");
    assert!(
        seen[1].0 >= Duration::from_millis(990) && seen[1].0 <= Duration::from_millis(1010),
        "checked before the rate wait ended: {seen:?}"
    );
    assert!(
        seen[2].0 >= Duration::from_millis(1990),
        "checked before the rate wait ended: {seen:?}"
    );
    // Each check ran before its own call reached the provider.
    assert_eq!(
        seen.iter().map(|(_, calls)| *calls).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(provider.calls(), 2);
    assert!(
        guard.refund(&request()).await.is_ok(),
        "circuit still closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_bound_is_an_unknown_outcome() {
    let provider = Arc::new(Scripted {
        delay: Duration::from_secs(30),
        ..Scripted::default()
    });
    let guard = Guarded::new(
        provider.clone(),
        Limits {
            call_timeout: Duration::from_secs(10),
            ..limits(0)
        },
        gauge(),
    );
    let started = Instant::now();
    let result = guard.refund(&request()).await;
    assert!(
        matches!(&result, Err(ProviderError::Unknown { why }) if why.contains("no answer within")),
        "{result:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
}
