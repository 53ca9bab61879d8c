//! The binary as operators run it: killed, stopped, publishing, the demo, and what it says
//! when RabbitMQ or Redis is not there.

use std::{process::Stdio, time::Duration};

use refund_sandbox::FaultOptions;
use refund_worker::outcome::Outcome;
use tokio::process::{Child, Command};

use crate::helpers::{TestEnv, binary, eventually, stripe_job};

fn worker_process(env: &TestEnv) -> Child {
    Command::new(binary())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .envs(env.child_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the refund-worker binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_the_provider_call_does_not_refund_twice() {
    // The provider takes 1.5 s; the worker dies (SIGKILL) while waiting, after the request
    // reached the provider and before anything was recorded or acked.
    let faults = FaultOptions {
        latency: Duration::from_millis(1500),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("killed", faults, |s| {
        s.providers.timeout = Duration::from_secs(2)
    })
    .await;
    env.publish_json(&[stripe_job("pi_killed", 4200)]).await;

    let mut child = worker_process(&env);
    eventually(
        Duration::from_secs(30),
        "the refund request reaches the provider",
        || async { env.refund_posts() == 1 },
    )
    .await;
    child.kill().await.expect("SIGKILL");
    eventually(
        Duration::from_secs(10),
        "the provider executes it anyway",
        || async { env.ledger().len() == 1 },
    )
    .await;

    // The unacked message comes back; a new worker must adopt the refund, not make another.
    let run = env.run_until_idle().await;

    assert_eq!(
        env.ledger().len(),
        1,
        "exactly one refund: {:#?}",
        run.reports
    );
    assert_eq!(env.refund_posts(), 1, "no second refund call");
    assert!(run.last_refund().2, "adopted: {:#?}", run.reports);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_jobs_exits_zero_and_loses_nothing() {
    let faults = FaultOptions {
        latency: Duration::from_millis(300),
        ..FaultOptions::default()
    };
    let env = TestEnv::with("sigterm", faults, |s| {
        s.worker.concurrency = 2;
        s.worker.prefetch = 4;
    })
    .await;
    let jobs: Vec<_> = (0..12)
        .map(|i| stripe_job(&format!("pi_term_{i}"), 100 + i))
        .collect();
    env.publish_json(&jobs).await;

    let child = worker_process(&env);
    let pid = child.id().expect("running");
    eventually(Duration::from_secs(30), "a few refunds done", || async {
        env.ledger().len() >= 2
    })
    .await;
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("stops within the grace period")
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let done_before = env.ledger().len();
    assert!(done_before < 12, "stopped mid-batch ({done_before} done)");

    env.run_until_idle().await;

    let mut paid: Vec<String> = env.ledger().into_iter().map(|e| e.payment_id).collect();
    paid.sort();
    paid.dedup();
    assert_eq!(paid.len(), 12, "every job refunded");
    assert_eq!(env.ledger().len(), 12, "none twice");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_file_twice_to_a_running_worker_adds_no_refund() {
    let env = TestEnv::start("publish-twice").await;
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.prefix()));
    // No dates in the file: `publish` writes today's into every job, so both runs key alike.
    let lines: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"payment_id":"pi_file_{i}","amount":{},"provider":"stripe"}}"#,
                500 + i
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let mut worker = env.spawn_worker().await;

    for _ in 0..2 {
        let output = Command::new(binary())
            .args(["publish", file.to_str().unwrap()])
            .envs(env.child_env())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("published 10 job(s), all confirmed")
        );
    }
    let reports = worker
        .collect_until(Duration::from_secs(30), |seen| {
            seen.iter()
                .filter(|r| matches!(r.outcome, Outcome::Refunded { .. } | Outcome::Duplicate))
                .count()
                == 20
        })
        .await;
    let metrics = worker.metrics.render();
    worker.stop().await;
    let _ = std::fs::remove_file(&file);
    assert!(
        metrics.contains("refunds_deduplicated_total 10"),
        "{metrics}"
    );

    assert_eq!(
        env.ledger().len(),
        10,
        "the second publish refunded nothing: {reports:#?}"
    );
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.outcome == Outcome::Duplicate)
            .count(),
        10
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_a_file_with_bad_rows_and_names_each_line() {
    let env = TestEnv::start("publish-bad").await;
    let file = std::env::temp_dir().join(format!("{}.jsonl", env.prefix()));
    std::fs::write(
        &file,
        "{\"payment_id\":\"pi_ok\",\"amount\":100,\"provider\":\"stripe\"}\n{\"payment_id\":\"pi_bad\",\"amount\":-1,\"provider\":\"stripe\"}\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["publish", file.to_str().unwrap()])
        .envs(env.child_env())
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: field `amount`"), "{stderr}");
    assert!(stderr.contains("nothing published"), "{stderr}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_whole_loop_and_checks_the_ledger() {
    let stdout = crate::helpers::succeeds(
        Command::new(binary())
            .args([
                "demo",
                "--jobs",
                "40",
                "--governed",
                "5",
                "--latency-ms",
                "1",
            ])
            .env("AMQP_URL", crate::helpers::AMQP_URL)
            .env("REDIS_URL", crate::helpers::REDIS_URL),
    )
    .await;
    assert!(
        stdout.contains("OK: ledger refunds (45) == succeeded jobs (45) == unique valid jobs (45)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn unreachable_rabbitmq_or_redis_is_one_clear_line_and_exit_1() {
    let cases = [
        (
            "AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "cannot reach RabbitMQ at 127.0.0.1:1",
        ),
        (
            "REDIS_URL",
            "redis://127.0.0.1:1/",
            "cannot reach Redis at 127.0.0.1:1",
        ),
    ];
    for (var, url, expected) in cases {
        for args in [&["demo"][..], &["run", "--metrics-addr", "127.0.0.1:0"][..]] {
            let output = Command::new(binary())
                .args(args)
                .env(var, url)
                .output()
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?} {var}: {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(lines.len(), 1, "{stderr}");
            assert!(lines[0].contains(expected), "{stderr}");
            assert!(lines[0].contains("is it running?"), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// A wrong password is not an outage: the one line says what to check, and lapin's own log
/// lines are not printed; a URL that does not parse is a usage error (exit 2) that does not
/// repeat the URL (it may hold a password). Nothing is coloured when stderr is not a terminal.
#[tokio::test]
async fn a_refused_login_and_a_malformed_url_say_what_to_fix() {
    let cases = [
        (
            "AMQP_URL",
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
            1,
            "refused by RabbitMQ at 127.0.0.1:5672",
            "check the user and password in AMQP_URL",
        ),
        (
            "AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            1,
            "refused by RabbitMQ at 127.0.0.1:5672",
            "check the vhost in AMQP_URL",
        ),
        (
            "REDIS_URL",
            "redis://:not-the-password@127.0.0.1:6379/",
            1,
            "refused by Redis at 127.0.0.1:6379",
            "check the one in REDIS_URL",
        ),
        (
            "AMQP_URL",
            "rabbit-at-secret-host",
            2,
            "AMQP_URL (--amqp-url) is not an AMQP URL",
            "expected amqp://USER:PASSWORD@HOST:5672/VHOST",
        ),
        (
            "AMQP_URL",
            "guest:secret-host@rabbit:5672/%2f",
            2,
            "AMQP_URL (--amqp-url) is not an AMQP URL",
            "expected amqp://USER:PASSWORD@HOST:5672/VHOST",
        ),
        (
            "REDIS_URL",
            "secret-host:6379",
            2,
            "REDIS_URL (--redis-url) is not a Redis URL",
            "expected redis://",
        ),
    ];
    for (var, url, code, said, fix) in cases {
        let output = Command::new(binary())
            .args(["status", "--payment", "pi_none"])
            .env(var, url)
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{var}={url}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line, no lapin logs: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(said),
            "{stderr}"
        );
        assert!(stderr.contains(fix), "{stderr}");
        assert!(!stderr.contains("is it running"), "{stderr}");
        assert!(
            !stderr.contains("secret-host"),
            "the URL is not repeated: {stderr}"
        );
        assert!(
            !stderr.contains('\x1b'),
            "no colour off a terminal: {stderr}"
        );
    }
}

#[tokio::test]
async fn bad_configuration_exits_2() {
    let output = Command::new(binary())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env("REFUND_RETRY__MAX_ATTEMPTS", "zero")
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(binary())
        .args(["run", "--config", "/nonexistent.toml"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent.toml does not exist"));
    // A watched certificate that cannot be read stops the worker before it takes a job.
    let output = Command::new(binary())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .args(["--prefix", "it-bad-certificate"])
        .env(
            "REFUND_CERTIFICATES__PIX_CLIENT",
            "/nonexistent/pix-client.pem",
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[certificates] pix_client: cannot read /nonexistent/pix-client.pem"),
        "{stderr}"
    );
}
