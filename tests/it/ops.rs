//! Operating the worker as an operator does, through the real binary: the dead-letter commands
//! (`dlq list|show|replay|purge|export`), poison messages, workers killed mid-batch,
//! `publish --wait`, and the outcome events.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties,
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use refund_sandbox::FaultOptions;
use refund_worker::broker::{
    self, Publisher,
    envelope::{Republish, republish_properties},
    headers,
    seal::Sealer,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::{AMQP_URL, TestEnv, binary, eventually, stripe_job, today};

/// The environment of a `refund-worker` child for this env: `child_env()`, plus the settings
/// it leaves out that these tests change (a topology declared with another delivery limit
/// would be refused by the broker) or rely on (fast in-process retries, short circuits).
fn child_env(env: &TestEnv) -> Vec<(String, String)> {
    let s = &env.settings;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut vars = env.child_env();
    vars.extend([
        (
            "REFUND_WORKER__DELIVERY_LIMIT".to_owned(),
            s.worker.delivery_limit.to_string(),
        ),
        (
            "REFUND_RETRY__IN_PROCESS".to_owned(),
            s.retry.in_process.to_string(),
        ),
        (
            "REFUND_RETRY__IN_PROCESS_DELAY".to_owned(),
            ms(s.retry.in_process_delay),
        ),
        (
            "REFUND_PROVIDERS__CIRCUIT_FAILURES".to_owned(),
            s.providers.circuit_failures.to_string(),
        ),
        (
            "REFUND_PROVIDERS__CIRCUIT_OPEN_FOR".to_owned(),
            ms(s.providers.circuit_open_for),
        ),
        (
            "REFUND_PROVIDERS__CONNECT_TIMEOUT".to_owned(),
            ms(s.providers.connect_timeout),
        ),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    vars
}

/// Runs `refund-worker ARGS` to its end.
pub(crate) async fn cli(env: &TestEnv, args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(binary())
            .args(args)
            .envs(child_env(env))
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`refund-worker {}` ends within 60s", args.join(" ")))
    .expect("the refund-worker binary runs")
}

/// Runs `refund-worker ARGS`, which must succeed; returns its standard output.
pub(crate) async fn cli_ok(env: &TestEnv, args: &[&str]) -> String {
    let output = cli(env, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`refund-worker {}` failed ({:?}):\n{stdout}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `dlq list --json [ARGS]`, parsed.
async fn dlq_list(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = vec!["dlq", "list", "--json"];
    all.extend_from_slice(args);
    let stdout = cli_ok(env, &all).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("dlq list --json: {e}\n{stdout}"))
}

/// A worker child process (`run`), killed if the test drops it.
fn worker_process(env: &TestEnv) -> Child {
    Command::new(binary())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .envs(child_env(env))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the refund-worker binary starts")
}

async fn sigkill(child: &mut Child) {
    child.kill().await.expect("SIGKILL");
}

/// Stops a worker child gracefully (SIGTERM) and waits for it.
async fn sigterm(child: Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the worker stops within 20s")
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "graceful stop exits 0");
}

pub(crate) async fn amqp() -> lapin::Connection {
    broker::connect(AMQP_URL, "refund-worker ops tests")
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672 (see README)")
}

/// Messages ready in `queue`, counted without consuming any (a passive declare).
pub(crate) async fn ready(connection: &lapin::Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "counted".into()).await;
    declared.message_count()
}

/// Puts `body` into the dead-letter queue as the worker dead-letters a job: through the
/// dead-letter exchange, with the properties it republishes with.
async fn publish_dead_letter(
    env: &TestEnv,
    body: &[u8],
    job_id: &str,
    class: &str,
    error: &str,
    date: &str,
) {
    let connection = amqp().await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let original = BasicProperties::default()
        .with_message_id(job_id.into())
        .with_content_type("application/json".into());
    let now = refund_worker::clock::now_rfc3339();
    let sealer = Sealer::from_config(&env.settings.broker.seal_keys).unwrap();
    let from = Republish {
        original: &original,
        original_sealed: false,
        body,
        sealer: &sealer,
    };
    let properties = republish_properties(
        from,
        &[
            (headers::JOB_ID, job_id.to_owned()),
            (headers::ERROR_CLASS, class.to_owned()),
            (headers::ERROR, error.to_owned()),
            (headers::DATE, date.to_owned()),
            (headers::PROVIDER, "stripe".to_owned()),
            (headers::ATTEMPTS, "4".to_owned()),
            (headers::FIRST_SEEN, now.clone()),
            (headers::LAST_SEEN, now),
        ],
    );
    publisher
        .publish(&env.topology.dead_exchange(), "", body, properties)
        .await
        .expect("the dead letter is confirmed");
    let _ = connection.close(200, "published".into()).await;
}

fn payment_of(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).expect("a JSON body");
    json["payment_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_a_job_already_refunded_does_not_refund_it_again() {
    let env = TestEnv::start("ops-replay-done").await;
    let job = stripe_job("pi_ops_done", 4200);
    let ids = env.publish_json(std::slice::from_ref(&job)).await;
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(env.refund_posts(), 1);

    // A copy of that same job in the dead-letter queue, as if an earlier copy had given up.
    let body = serde_json::to_vec(&job).unwrap();
    publish_dead_letter(
        &env,
        &body,
        &ids[0],
        "exhausted",
        "gave up after 4 attempts; last error: stripe 503 api_error: down",
        &today().to_string(),
    )
    .await;
    let connection = amqp().await;
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 1);

    let stdout = cli_ok(&env, &["dlq", "replay", "--all"]).await;

    assert!(
        stdout.contains(&format!("removed       {}", ids[0]))
            && stdout.contains("already refunded under pi_ops_done:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 replayed, 1 already refunded (removed from the queue), 0 skipped"),
        "{stdout}"
    );
    assert_eq!(
        ready(&connection, &env.topology.dead_queue()).await,
        0,
        "the dead letter is gone"
    );
    assert_eq!(
        ready(&connection, &env.topology.jobs_queue()).await,
        0,
        "and nothing was republished"
    );
    let run = env.run_until_idle().await;
    assert!(run.reports.is_empty(), "{:#?}", run.reports);
    assert_eq!(env.ledger().len(), 1, "no second refund");
    assert_eq!(env.refund_posts(), 1, "no second refund call");
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_with_set_fixes_an_invalid_job_and_refunds_it_once() {
    let env = TestEnv::start("ops-replay-set").await;
    let body = br#"{"payment_id":"pi_ops_fix","amount":0,"provider":"stripe"}"#;
    let job_id = "job-ops-fix-1";
    env.publish_raw(
        body,
        BasicProperties::default().with_message_id(job_id.into()),
    )
    .await;
    env.run_until_idle().await;
    assert!(env.ledger().is_empty());
    let listed = dlq_list(&env, &[]).await;
    assert_eq!(listed["total"], 1, "{listed:#}");
    assert_eq!(listed["groups"][0]["class"], "invalid", "{listed:#}");
    assert_eq!(
        listed["groups"][0]["job_ids"],
        json!([job_id]),
        "{listed:#}"
    );

    let stdout = cli_ok(&env, &["dlq", "replay", job_id, "--set", "amount=1500"]).await;
    assert!(
        stdout.contains(&format!("replayed      {job_id} (invalid)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 replayed, 0 already refunded"),
        "{stdout}"
    );
    env.run_until_idle().await;

    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:#?}");
    assert_eq!(ledger[0].payment_id, "pi_ops_fix");
    assert_eq!(ledger[0].amount, 1500, "refunded with the fixed amount");
    let connection = amqp().await;
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 0);

    // Replaying again and running again changes nothing.
    let stdout = cli_ok(&env, &["dlq", "replay", "--all"]).await;
    assert!(
        stdout.contains("0 replayed, 0 already refunded"),
        "{stdout}"
    );
    let run = env.run_until_idle().await;
    assert!(run.reports.is_empty(), "{:#?}", run.reports);
    assert_eq!(env.ledger().len(), 1);
    assert_eq!(env.refund_posts(), 1);
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 0);
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

/// Two invalid jobs that fail alike (amount 0), and two declined refunds (BRL and USD).
async fn produce_dead_letters(env: &TestEnv) -> BTreeMap<&'static str, String> {
    let mut usd = stripe_job("pi_ops_2_declined", 700);
    usd["currency"] = json!("USD");
    let jobs = [
        ("invalid_a", stripe_job("pi_ops_bad_1", 0)),
        ("invalid_b", stripe_job("pi_ops_bad_2", 0)),
        ("declined_brl", stripe_job("pi_ops_1_declined", 2500)),
        ("declined_usd", usd),
    ];
    let bodies: Vec<Value> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let ids = env.publish_json(&bodies).await;
    env.run_until_idle().await;
    assert!(env.ledger().is_empty());
    jobs.iter().map(|(name, _)| *name).zip(ids).collect()
}

fn sorted(value: &Value) -> Vec<String> {
    let mut v: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_groups_by_class_and_cause_with_money_stuck() {
    let env = TestEnv::start("ops-list").await;
    let ids = produce_dead_letters(&env).await;

    let listed = dlq_list(&env, &[]).await;
    assert_eq!(listed["total"], 4, "{listed:#}");
    assert_eq!(
        listed["amount"],
        json!({"BRL": 2500, "USD": 700}),
        "money stuck counts only valid amounts, per currency: {listed:#}"
    );
    let groups = listed["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{listed:#}");
    let invalid = groups.iter().find(|g| g["class"] == "invalid").unwrap();
    assert_eq!(invalid["count"], 2);
    assert!(
        invalid["cause"]
            .as_str()
            .unwrap()
            .contains("field `amount`"),
        "{invalid:#}"
    );
    assert_eq!(invalid["amount"], json!({}));
    let mut expected = vec![ids["invalid_a"].clone(), ids["invalid_b"].clone()];
    expected.sort();
    assert_eq!(sorted(&invalid["job_ids"]), expected);
    let permanent = groups.iter().find(|g| g["class"] == "permanent").unwrap();
    assert_eq!(permanent["count"], 2, "{permanent:#}");
    assert_eq!(permanent["amount"], json!({"BRL": 2500, "USD": 700}));
    assert_eq!(permanent["providers"], json!(["stripe"]));

    // A class filter.
    let only = dlq_list(&env, &["--class", "permanent"]).await;
    assert_eq!(only["total"], 2, "{only:#}");
    let only_groups = only["groups"].as_array().unwrap();
    assert_eq!(only_groups.len(), 1);
    assert_eq!(only_groups[0]["class"], "permanent");
    let mut expected = vec![ids["declined_brl"].clone(), ids["declined_usd"].clone()];
    expected.sort();
    assert_eq!(sorted(&only_groups[0]["job_ids"]), expected);

    // The table says the same.
    let table = cli_ok(&env, &["dlq", "list"]).await;
    assert!(
        table.contains("4 dead letter(s) in 2 group(s); money stuck: R$ 25,00, USD 7,00"),
        "{table}"
    );

    // One letter in full.
    let shown = cli_ok(&env, &["dlq", "show", &ids["declined_brl"]]).await;
    assert!(shown.contains("class        permanent"), "{shown}");
    assert!(
        shown.contains("reason") && shown.contains("charged back"),
        "the reason is printed: {shown}"
    );
    assert!(shown.contains("payment      pi_ops_1_declined"), "{shown}");
    assert!(shown.contains("body:"), "{shown}");
    assert!(shown.contains("\"amount\": 2500"), "the body: {shown}");
    let missing = cli(&env, &["dlq", "show", "no-such-job"]).await;
    assert_eq!(missing.status.code(), Some(1));

    // Export: JSON Lines with body and headers; the queue keeps everything.
    let file = std::env::temp_dir().join(format!("{}-export.jsonl", env.prefix()));
    let out = cli(&env, &["dlq", "export", "--out", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in &rows {
        let body: Value = serde_json::from_str(row["body"].as_str().unwrap()).unwrap();
        let job_id = row["job_id"].as_str().unwrap();
        assert!(ids.values().any(|id| id == job_id), "{row:#}");
        assert_eq!(row["headers"]["x-refund-job-id"], job_id);
        assert_eq!(row["headers"]["x-refund-error-class"], row["class"]);
        assert_eq!(row["headers"]["x-refund-error"], row["error"]);
        assert_eq!(row["payment_id"], body["payment_id"]);
    }
    let again = dlq_list(&env, &[]).await;
    assert_eq!(again["total"], 4, "export removed nothing: {again:#}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_purge_needs_yes_and_then_deletes_only_the_selection() {
    let env = TestEnv::start("ops-purge").await;
    let ids = produce_dead_letters(&env).await;

    let refused = cli(&env, &["dlq", "purge", "--class", "invalid"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    let nothing = cli(&env, &["dlq", "purge", "--yes"]).await;
    assert_eq!(
        nothing.status.code(),
        Some(2),
        "no selection, no purge: {}",
        String::from_utf8_lossy(&nothing.stderr)
    );
    assert_eq!(dlq_list(&env, &[]).await["total"], 4, "nothing removed");

    let stdout = cli_ok(&env, &["dlq", "purge", "--class", "invalid", "--yes"]).await;
    assert!(stdout.contains("purged 2 dead letter(s)"), "{stdout}");

    let left = env.dead_letters().await;
    let mut left_ids: Vec<String> = left
        .iter()
        .map(|l| l.headers["x-refund-job-id"].clone())
        .collect();
    left_ids.sort();
    let mut expected = vec![ids["declined_brl"].clone(), ids["declined_usd"].clone()];
    expected.sort();
    assert_eq!(left_ids, expected, "only the invalid ones went");
    assert!(
        left.iter()
            .all(|l| l.headers["x-refund-error-class"] == "permanent")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_crashes_its_workers_is_dead_lettered_delivery_limit_and_replay_adopts_its_refund()
 {
    // Every provider call takes 1.5 s; each worker is killed as soon as its call for the job
    // reaches the provider: the first one while sending the refund (which the provider still
    // executes), the next ones while they look it up after taking the claim over.
    let faults = FaultOptions {
        latency: Duration::from_millis(1500),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("ops-poison", faults, |s| {
        s.worker.delivery_limit = 3;
        s.idempotency.lease = Duration::from_secs(3);
        s.providers.timeout = Duration::from_secs(2);
    })
    .await;
    let ids = env.publish_json(&[stripe_job("pi_ops_poison", 9900)]).await;
    let job_id = &ids[0];
    let connection = amqp().await;
    let dead_queue = env.topology.dead_queue();

    let started = Instant::now();
    let mut kills = 0;
    loop {
        assert!(
            kills < 8 && started.elapsed() < Duration::from_secs(90),
            "not dead-lettered after {kills} killed workers in {:?}; sandbox requests: {}",
            started.elapsed(),
            env.sandbox.requests().len()
        );
        let seen = env.sandbox.requests().len();
        let mut child = worker_process(&env);
        let deadline = Instant::now() + Duration::from_secs(30);
        let dead_lettered = loop {
            if ready(&connection, &dead_queue).await > 0 {
                break true;
            }
            if env.sandbox.requests().len() > seen {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "a worker neither called the provider nor dead-lettered the job within 30s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if dead_lettered {
            sigterm(child).await;
            break;
        }
        sigkill(&mut child).await;
        let _ = child.wait().await;
        kills += 1;
    }
    // The first worker died sending; each next one died after taking the claim over; the
    // one after the third takeover parks the job instead of running it again.
    assert!(
        (2..=4).contains(&kills),
        "the delivery limit (3) bounds the workers the job kills: {kills}"
    );

    let listed = dlq_list(&env, &[]).await;
    assert_eq!(listed["total"], 1, "{listed:#}");
    assert_eq!(listed["groups"][0]["class"], "delivery_limit", "{listed:#}");
    assert_eq!(listed["groups"][0]["job_ids"], json!([job_id]));
    let shown = cli_ok(&env, &["dlq", "show", job_id]).await;
    let reason = shown
        .lines()
        .find(|l| l.starts_with("reason"))
        .unwrap_or_default();
    assert!(
        reason.contains("crash") || reason.contains("hang"),
        "the reason says why: {shown}"
    );
    // The provider executes a refund even when its client dies: at most one, never more.
    eventually(
        Duration::from_secs(5),
        "the first send executes",
        || async { !env.ledger().is_empty() },
    )
    .await;
    assert!(env.ledger().len() <= 1, "{:#?}", env.ledger());

    let stdout = cli_ok(&env, &["dlq", "replay", "--all"]).await;
    assert!(stdout.contains("1 replayed"), "{stdout}");
    let posts = env.refund_posts();
    let run = env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "exactly one refund: {:#?}",
        run.reports
    );
    assert!(
        run.last_refund().2,
        "the replay adopts the refund the first worker made: {:#?}",
        run.reports
    );
    assert_eq!(
        env.refund_posts(),
        posts,
        "no new refund call after the replay"
    );
    assert_eq!(ready(&connection, &dead_queue).await, 0);
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_between_retry_publish_and_ack_loses_nothing_and_refunds_once() {
    // Every call takes 100-250 ms, so the batch spans several workers' lives and the kills
    // land in the middle of calls, retries and dispositions.
    let faults = FaultOptions {
        latency: Duration::from_millis(100),
        jitter: Duration::from_millis(150),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("ops-kills", faults, |s| {
        // Kills, not circuits, are under test: keep the circuit from opening on the 503s.
        s.providers.circuit_failures = 10_000;
    })
    .await;
    let mut jobs = Vec::new();
    let mut refundable = BTreeSet::new();
    let mut declined = BTreeSet::new();
    for i in 0..14 {
        // In-process retries are 2: a _flaky4 or _flaky5 fails a whole attempt and goes
        // through a delay tier before it succeeds.
        let id = format!("pi_kill_{i}_flaky{}", 4 + i % 2);
        jobs.push(stripe_job(&id, 1000 + i));
        refundable.insert(id);
    }
    for i in 0..16 {
        let id = format!("pi_kill_plain_{i}");
        jobs.push(stripe_job(&id, 2000 + i));
        refundable.insert(id);
    }
    for i in 0..5 {
        jobs.push(stripe_job(&format!("pi_kill_plain_{i}"), 2000 + i));
    }
    for i in 0..5 {
        let id = format!("pi_kill_{i}_declined");
        jobs.push(stripe_job(&id, 3000 + i));
        declined.insert(id);
    }
    assert_eq!(jobs.len(), 40);
    env.publish_json(&jobs).await;

    for pause in [450u64, 600, 520, 680, 410, 570, 630, 490] {
        let mut child = worker_process(&env);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        sigkill(&mut child).await;
        let _ = child.wait().await;
    }
    // Whatever the kills left (unacked deliveries, claims held by dead workers, copies in the
    // retry tiers) is finished by one last worker; run_until_idle asserts it went idle, so the
    // jobs queue and the retry tiers are empty.
    let run = env.run_until_idle().await;

    assert!(
        !run.reports.is_empty(),
        "the kills left work behind (else this test proves nothing)"
    );
    let ledger = env.ledger();
    let paid: Vec<&str> = ledger.iter().map(|e| e.payment_id.as_str()).collect();
    let unique: BTreeSet<String> = paid.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(
        paid.len(),
        unique.len(),
        "no payment refunded twice: {paid:?}"
    );
    assert_eq!(
        unique, refundable,
        "every valid payment refunded: {:#?}",
        run.reports
    );
    let connection = amqp().await;
    for queue in env.topology.work_queues() {
        assert_eq!(ready(&connection, &queue).await, 0, "{queue} is empty");
    }
    let _ = connection.close(200, "done".into()).await;

    // A declined job may be dead-lettered more than once: a kill between its dead-letter
    // publish (confirmed) and its ack brings the original back, and the next worker refuses it
    // again. That is the at-least-once side of the contract; no refund is involved.
    let letters = env.dead_letters().await;
    let mut per_payment: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        assert_eq!(
            letter.headers["x-refund-error-class"], "permanent",
            "{letter:?}"
        );
        *per_payment.entry(payment_of(&letter.body)).or_default() += 1;
    }
    let dead: BTreeSet<String> = per_payment.keys().cloned().collect();
    assert_eq!(
        dead, declined,
        "every declined job, and nothing else, is in the dead-letter queue: {per_payment:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_wait_prints_the_outcome_of_every_job_of_a_mixed_batch() {
    let env = TestEnv::start("ops-wait").await;
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.prefix()));
    let lines = [
        r#"{"payment_id":"pi_wait_1","amount":1000,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_wait_2","amount":2000,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_wait_1","amount":1000,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_wait_bad","amount":0,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_wait_3_declined","amount":300,"provider":"stripe"}"#,
        r#"{"payment_id":"pi_wait_4_flaky2","amount":400,"provider":"stripe"}"#,
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.to_str().unwrap();
    let worker = env.spawn_worker().await;

    let output = cli(
        &env,
        &["publish", path, "--wait", "--json", "--skip-invalid"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed job makes it exit 1:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("line 4: field `amount`"), "{stderr}");
    assert!(stderr.contains("1 of 5 job(s) did not refund"), "{stderr}");
    let rows: Vec<Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(rows.len(), 5, "one row per published job: {stdout}");
    let by_line: BTreeMap<u64, &Value> = rows
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r))
        .collect();
    assert_eq!(
        by_line.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 5, 6],
        "{stdout}"
    );
    // Lines 1 and 3 are the same job: whichever copy claimed it first refunded it; the other
    // is deduplicated and names that same refund.
    let mut pair = [by_line[&1], by_line[&3]];
    pair.sort_by_key(|r| r["status"] != "succeeded");
    assert_eq!(pair[0]["status"], "succeeded", "{stdout}");
    assert_eq!(pair[1]["status"], "deduplicated", "{stdout}");
    assert!(
        pair[0]["refund_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("re_"))
    );
    assert_eq!(pair[0]["refund_id"], pair[1]["refund_id"], "{stdout}");
    assert_eq!(by_line[&2]["status"], "succeeded", "{stdout}");
    assert_eq!(by_line[&2]["payment_id"], "pi_wait_2");
    assert_eq!(by_line[&5]["status"], "failed", "{stdout}");
    assert_eq!(by_line[&5]["class"], "permanent", "{stdout}");
    assert!(
        by_line[&5]["error"]
            .as_str()
            .unwrap()
            .contains("charged back"),
        "{stdout}"
    );
    assert_eq!(by_line[&6]["status"], "succeeded", "{stdout}");
    assert_eq!(by_line[&6]["payment_id"], "pi_wait_4_flaky2");
    let mut refunds: Vec<String> = env.ledger().into_iter().map(|e| e.refund_id).collect();
    refunds.sort();
    let mut reported: Vec<String> = [1, 2, 6]
        .iter()
        .map(|l| by_line[l]["refund_id"].as_str().unwrap().to_owned())
        .collect();
    reported.sort();
    assert_eq!(refunds, reported, "the refunds reported are the ones made");

    // The same file again, as a table: every valid job is now a duplicate; nothing is paid.
    let output = cli(&env, &["publish", path, "--wait", "--skip-invalid"]).await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}");
    let row = |line: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(line))
            .unwrap_or_else(|| panic!("no row for line {line}: {table}"))
            .to_owned()
    };
    for line in ["1", "2", "3", "6"] {
        assert!(row(line).contains("deduplicated"), "{table}");
    }
    assert!(row("5").contains("failed"), "{table}");
    assert!(row("5").contains("pi_wait_3_declined"), "{table}");
    assert!(!table.lines().any(|l| l.starts_with("4 ")), "{table}");
    assert_eq!(env.ledger().len(), 3, "the second publish paid nothing");

    worker.stop().await;
    let _ = std::fs::remove_file(&file);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_for_every_terminal_outcome() {
    let env = TestEnv::start("ops-events").await;
    let connection = amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{}.test-events", env.prefix());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            env.topology.events_exchange().into(),
            "refund.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let jobs = [
        stripe_job("pi_ev_1", 1100),
        stripe_job("pi_ev_2", 2200),
        stripe_job("pi_ev_1", 1100),
        stripe_job("pi_ev_3_declined", 3300),
        stripe_job("pi_ev_bad", 0),
    ];
    let ids = env.publish_json(&jobs).await;
    env.run_until_idle().await;

    let mut events: BTreeMap<String, (String, Value)> = BTreeMap::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        let job_id = event["job_id"].as_str().unwrap().to_owned();
        let previous = events.insert(job_id, (delivery.routing_key.to_string(), event));
        assert!(previous.is_none(), "one event per job: {previous:?}");
    }
    assert_eq!(events.len(), 5, "{events:#?}");
    let event = |i: usize| {
        events
            .get(&ids[i])
            .unwrap_or_else(|| panic!("no event for job {i}: {events:#?}"))
    };
    let ledger = env.ledger();
    let refund_of = |payment: &str| {
        ledger
            .iter()
            .find(|e| e.payment_id == payment)
            .map(|e| e.refund_id.clone())
            .unwrap()
    };

    // The two copies of pi_ev_1: one refunded it, the other names that refund.
    let mut copies = [event(0), event(2)];
    copies.sort_by_key(|(key, _)| key != "refund.succeeded");
    assert_eq!(copies[0].0, "refund.succeeded", "{events:#?}");
    assert_eq!(copies[1].0, "refund.deduplicated", "{events:#?}");
    for (key, body) in copies {
        assert_eq!(body["status"], key.trim_start_matches("refund."));
        assert_eq!(body["payment_id"], "pi_ev_1");
        assert_eq!(body["provider"], "stripe");
        assert_eq!(body["refund_id"], refund_of("pi_ev_1").as_str());
        assert!(body["class"].is_null() && body["error"].is_null());
    }

    let (key, body) = event(1);
    assert_eq!(key, "refund.succeeded");
    assert_eq!(body["job_id"], ids[1].as_str());
    assert_eq!(body["payment_id"], "pi_ev_2");
    assert_eq!(body["provider"], "stripe");
    assert_eq!(body["amount"], 2200);
    assert_eq!(body["refund_id"], refund_of("pi_ev_2").as_str());

    let (key, body) = event(3);
    assert_eq!(key, "refund.failed");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["payment_id"], "pi_ev_3_declined");
    assert_eq!(body["provider"], "stripe");
    assert_eq!(body["class"], "permanent");
    assert!(
        body["error"].as_str().unwrap().contains("charged back"),
        "{body:#}"
    );
    assert!(body["refund_id"].is_null());

    let (key, body) = event(4);
    assert_eq!(key, "refund.dead_lettered");
    assert_eq!(body["status"], "dead_lettered");
    assert_eq!(
        body["payment_id"],
        Value::Null,
        "an invalid job has no facts"
    );
    assert_eq!(body["class"], "invalid");
    assert!(
        body["error"].as_str().unwrap().contains("field `amount`"),
        "{body:#}"
    );
    assert!(body["refund_id"].is_null());

    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_replays_two_identical_copies_of_a_dead_letter_once() {
    // A worker killed between the broker's confirm of a dead letter and its ack leaves two
    // identical copies (the chaos suite counts them): one replay, both letters gone.
    let env = TestEnv::start("ops-replay-copies").await;
    let body = serde_json::to_vec(&stripe_job("pi_ops_copies", 990)).unwrap();
    for _ in 0..2 {
        publish_dead_letter(
            &env,
            &body,
            "job-ops-copies",
            "exhausted",
            "gave up after 4 attempts; last error: stripe 503 api_error: down",
            &today().to_string(),
        )
        .await;
    }
    let connection = amqp().await;
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 2);

    let stdout = cli_ok(&env, &["dlq", "replay", "--all"]).await;
    assert!(
        stdout.contains("removed       job-ops-copies a second copy of the letter replayed above"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 replayed, 0 already refunded (removed from the queue), 0 skipped and left in the queue, 1 duplicate copies removed"),
        "{stdout}"
    );
    assert_eq!(ready(&connection, &env.topology.dead_queue()).await, 0);
    assert_eq!(ready(&connection, &env.topology.jobs_queue()).await, 1);
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 1);
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_group_is_named_by_its_handle_and_a_failing_canary_keeps_the_rest_queued() {
    let env = TestEnv::with("canary-cli", FaultOptions::default(), |s| {
        s.retry.max_attempts = 2;
        s.providers.circuit_failures = 0;
    })
    .await;
    env.sandbox.burst(
        refund_sandbox::Burst::ServerErrors,
        Duration::from_secs(600),
    );
    let ids = env
        .publish_json(&[
            stripe_job("pi_canary_cli_1", 110),
            stripe_job("pi_canary_cli_2", 120),
            stripe_job("pi_canary_cli_3", 130),
        ])
        .await;
    env.run_until_idle().await;

    // The listing names the group by a handle, shows its jobs and says what to do next.
    let listed = cli_ok(&env, &["dlq", "list"]).await;
    let handle = listed
        .lines()
        .find(|l| l.contains("exhausted"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listed}"))
        .to_owned();
    assert!(handle.starts_with("g-"), "{listed}");
    assert!(
        ids.iter().all(|id| listed.contains(id.as_str())),
        "{listed}"
    );
    assert!(listed.contains("next: refund-worker dlq show "), "{listed}");
    assert!(
        listed.contains(&format!("dlq replay --group {handle} --canary --dry-run")),
        "{listed}"
    );
    assert_eq!(dlq_list(&env, &["--group", &handle]).await["total"], 3);
    assert_eq!(dlq_list(&env, &["--group", "g-000000"]).await["total"], 0);

    // A misspelt provider is a usage error with a suggestion.
    let typo = cli(&env, &["dlq", "list", "--provider", "strip"]).await;
    assert_eq!(typo.status.code(), Some(2));
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(said.contains("did you mean stripe?"), "{said}");

    // Stripe is still down: the canary does not refund, and the other two are not sent.
    let mut worker = env.spawn_worker().await;
    let stdout = cli_ok(
        &env,
        &[
            "dlq",
            "replay",
            "--group",
            &handle,
            "--canary",
            "--canary-wait",
            "3s",
        ],
    )
    .await;
    assert!(
        stdout.contains("did not refund within 3s; the rest (2) stay in the queue"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("replayed ").count(), 1, "{stdout}");
    assert!(env.ledger().is_empty());
    // The canary runs out of attempts again and is back: nothing lost.
    worker
        .collect_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    eventually(
        Duration::from_secs(30),
        "the canary is back in the queue",
        || async { dlq_list(&env, &["--group", &handle]).await["total"] == 3 },
    )
    .await;

    let shown: Value =
        serde_json::from_str(&cli_ok(&env, &["dlq", "show", &ids[1], "--json"]).await).unwrap();
    assert_eq!(shown["job_id"], ids[1].as_str());
    assert_eq!(shown["class"], "exhausted");
    assert_eq!(shown["sealed"], true);
    assert!(shown["body"].as_str().unwrap().contains("pi_canary_cli_2"));

    // Stripe is back: the canary refunds, then the rest go; each is paid once.
    env.sandbox
        .burst(refund_sandbox::Burst::ServerErrors, Duration::ZERO);
    let stdout = cli_ok(
        &env,
        &[
            "dlq",
            "replay",
            "--group",
            &handle,
            "--canary",
            "--canary-wait",
            "30s",
            "--json",
        ],
    )
    .await;
    let done: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        done["canary"]
            .as_str()
            .unwrap()
            .contains("refunded; the rest (2) were replayed"),
        "{done:#}"
    );
    assert_eq!(done["counts"]["replayed"], 3, "{done:#}");
    assert_eq!(done["letters"].as_array().unwrap().len(), 3, "{done:#}");
    assert_eq!(done["dry_run"], false);
    eventually(
        Duration::from_secs(30),
        "all three are refunded",
        || async { env.ledger().len() == 3 },
    )
    .await;
    worker.stop().await;
    let mut paid: Vec<_> = env.ledger().iter().map(|e| e.payment_id.clone()).collect();
    paid.sort();
    assert_eq!(
        paid,
        ["pi_canary_cli_1", "pi_canary_cli_2", "pi_canary_cli_3"]
    );
    eventually(Duration::from_secs(20), "the queue is empty", || async {
        env.dead_letters_kept().await.is_empty()
    })
    .await;
    let audit = cli_ok(&env, &["audit", "list", "--json"]).await;
    assert!(audit.contains("did not refund within 3s"), "{audit}");
    assert!(
        audit.contains("\"canary\": true") || audit.contains("\"canary\":true"),
        "{audit}"
    );
    env.cleanup().await;
}

/// Ctrl-C in the middle of a publish: it says how many the broker confirmed and the command
/// that resumes (with the day its dateless rows were given), and the resume loses nothing.
/// Rows that repeat a key are reported before anything is sent; a publish with no worker
/// running says so.
#[tokio::test]
async fn an_interrupted_publish_says_where_to_resume_and_the_resume_loses_nothing() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let env = TestEnv::start("publish-int").await;
    const ROWS: usize = 40_000;
    let mut text = String::with_capacity(ROWS * 70);
    for i in 0..ROWS {
        text.push_str(&format!(
            "{{\"payment_id\":\"pi_int_{i}\",\"amount\":100,\"provider\":\"stripe\"}}\n"
        ));
    }
    // Line ROWS+1 repeats line 1; line ROWS+2 asks another amount under line 2's key.
    text.push_str("{\"payment_id\":\"pi_int_0\",\"amount\":100,\"provider\":\"stripe\"}\n");
    text.push_str("{\"payment_id\":\"pi_int_1\",\"amount\":999,\"provider\":\"stripe\"}\n");
    let total = ROWS + 2;
    let file = std::env::temp_dir().join(format!("{}-jobs.jsonl", env.prefix()));
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap().to_owned();

    let mut child = Command::new(binary())
        .args(["publish", &path])
        .envs(child_env(&env))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        let started = line.contains("no worker is consuming");
        said.push(line);
        if started {
            break;
        }
    }
    let said_before = said.join("\n");
    assert!(
        said_before.contains(&format!("line {} repeats line 1", ROWS + 1))
            && said_before.contains(&format!("line {} shares idempotency key", ROWS + 2))
            && said_before.contains("key collision"),
        "{said_before}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: signalling a child this test spawned and still owns.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGINT);
    }
    while let Some(line) = stderr.next_line().await.unwrap() {
        said.push(line);
    }
    let status = child.wait().await.unwrap();
    let said = said.join("\n");
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("interrupted: ") && said.contains(&format!("of {total} job(s) confirmed")),
        "{said}"
    );
    let resume = said
        .lines()
        .find_map(|l| l.strip_prefix("resume with: refund-worker publish "))
        .unwrap_or_else(|| panic!("{said}"));
    let words: Vec<&str> = resume.split_whitespace().collect();
    assert_eq!(words[0], path);
    assert_eq!(words[1], "--from-line");
    let from: usize = words[2].parse().unwrap();
    assert_eq!(words[3], "--date");
    assert_eq!(words[4], today().to_string());
    assert!(from > 1 && from <= ROWS, "stopped mid-file: {said}");
    // Every line before the resume line is confirmed, and no more: the count says so.
    let confirmed: usize = said
        .split("interrupted: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert_eq!(confirmed, from - 1, "{said}");
    assert!(said.contains("keep --date"), "{said}");

    // The resume: every line is in the queue at least once, and at most one batch twice.
    let stdout = cli_ok(
        &env,
        &[
            "publish",
            &path,
            "--from-line",
            words[2],
            "--date",
            words[4],
        ],
    )
    .await;
    assert!(
        stdout.contains(&format!("published {} job(s)", total - (from - 1))),
        "{stdout}"
    );
    let connection = amqp().await;
    let queue = env.topology.jobs_queue();
    eventually(Duration::from_secs(30), "the queue settles", || async {
        ready(&connection, &queue).await as usize >= total
    })
    .await;
    let queued = ready(&connection, &queue).await as usize;
    assert!(
        (total..=total + refund_worker::broker::BATCH).contains(&queued),
        "{queued} queued for {total} rows"
    );
    let _ = connection.close(200, "done".into()).await;
    let _ = std::fs::remove_file(&file);
    env.cleanup().await;
}
