//! The audit log: every operator action of the CLI (dead-letter replays and purges, mandate
//! grants and revocations) is appended with who, when, what and the result, chained and
//! signed, so `audit verify` names an entry that was edited or deleted.

use refund_worker::{governance::audit::Entry, store};
use serde_json::{Value, json};

use crate::{
    helpers::{REDIS_URL, TestEnv, today},
    ops::{cli, cli_ok},
};

fn entries(stdout: &str) -> Vec<Entry> {
    serde_json::from_str(stdout).expect("audit list --json prints entries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_action_is_recorded_with_its_operator_and_a_deleted_entry_is_detected() {
    let env = TestEnv::start("audit-cli").await;
    // Two invalid jobs: one fixed and replayed, one purged.
    let bad = |payment: &str| json!({ "payment_id": payment, "amount": -5, "provider": "stripe", "date": today().to_string() });
    let ids = env
        .publish_json(&[bad("pi_audit_1"), bad("pi_audit_2")])
        .await;
    env.run_until_idle().await;

    cli_ok(
        &env,
        &[
            "--as",
            "ops-bot",
            "mandate",
            "grant",
            "--id",
            "cm_audit",
            "--agent",
            "audit-bot",
            "--max-per-refund",
            "100",
            "--max-per-day",
            "1000",
        ],
    )
    .await;
    cli_ok(
        &env,
        &["dlq", "replay", &ids[0], "--dry-run", "--set", "amount=500"],
    )
    .await;
    cli_ok(
        &env,
        &[
            "--as",
            "ops-bot",
            "dlq",
            "replay",
            &ids[0],
            "--set",
            "amount=500",
        ],
    )
    .await;
    let purged: serde_json::Value =
        serde_json::from_str(&cli_ok(&env, &["dlq", "purge", &ids[1], "--yes", "--json"]).await)
            .unwrap();
    assert_eq!(purged["purged"], 1, "{purged:#}");
    assert_eq!(purged["job_ids"][0], ids[1].as_str(), "{purged:#}");
    cli_ok(&env, &["mandate", "revoke", "cm_audit"]).await;

    let listed = entries(&cli_ok(&env, &["audit", "list", "--json"]).await);
    let actions: Vec<&str> = listed.iter().map(|e| e.action.action.as_str()).collect();
    // The dry run is a preview, not an action: it is not recorded.
    assert_eq!(
        actions,
        ["mandate grant", "dlq replay", "dlq purge", "mandate revoke"],
        "{listed:#?}"
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    assert_eq!(listed[0].action.who, format!("{user} as ops-bot"));
    assert_eq!(listed[0].action.via, "cli");
    assert_eq!(listed[0].action.target["mandate_id"], "cm_audit");
    assert_eq!(listed[1].action.target["job_ids"], json!([ids[0]]));
    assert_eq!(listed[1].action.target["set"], json!(["amount=500"]));
    assert_eq!(listed[1].action.result["replayed"], 1, "{:?}", listed[1]);
    assert_eq!(listed[2].action.result, json!({ "purged": 1 }));
    assert_eq!(listed[3].action.result["version"], 2);
    assert!(listed.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    let verified = cli_ok(&env, &["audit", "verify"]).await;
    assert!(
        verified.contains("audit log intact: 4 entries verified"),
        "{verified}"
    );

    // Someone deletes the purge from the log, then edits who replayed.
    let mut conn = store::connect(REDIS_URL).await.unwrap();
    let log = format!("{{{}:audit}}:log", env.prefix());
    let _: i64 = redis::cmd("HDEL")
        .arg(&log)
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let text: String = redis::cmd("HGET")
        .arg(&log)
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(&log)
        .arg(2)
        .arg(text.replace(" as ops-bot", ""))
        .query_async(&mut conn)
        .await
        .unwrap();
    let broken = cli(&env, &["audit", "verify"]).await;
    assert_eq!(broken.status.code(), Some(1));
    let said = String::from_utf8_lossy(&broken.stdout);
    assert!(said.contains("entry 3: missing (deleted?)"), "{said}");
    assert!(said.contains("entry 2: edited (hash mismatch)"), "{said}");
    let json: Value =
        serde_json::from_slice(&cli(&env, &["audit", "verify", "--json"]).await.stdout)
            .expect("verify --json prints JSON");
    assert_eq!(json["checked"], 3);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_provider_gets_no_call_its_jobs_wait_without_spending_attempts_and_resume_lets_them_go()
 {
    let env = TestEnv::start("pause").await;
    let mut worker = env.spawn_worker().await;
    cli_ok(
        &env,
        &[
            "--as",
            "oncall",
            "provider",
            "pause",
            "stripe",
            "--reason",
            "stripe incident INC-42",
        ],
    )
    .await;
    // A second pause changes nothing and says who paused first, for scripts too.
    let again: serde_json::Value = serde_json::from_str(
        &cli_ok(
            &env,
            &["provider", "pause", "stripe", "--reason", "dup", "--json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(again["provider"], "stripe");
    assert_eq!(again["paused_now"], false);
    assert_eq!(again["pause"]["reason"], "stripe incident INC-42");
    // Every worker reads the pauses every second.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let listed = cli_ok(&env, &["provider", "list"]).await;
    assert!(
        listed.contains("stripe") && listed.contains("INC-42"),
        "{listed}"
    );
    let asaas = json!({ "payment_id": "pay_pause_1", "amount": 500, "provider": "asaas", "date": today().to_string() });
    env.publish_json(&[crate::helpers::stripe_job("pi_pause_1", 700), asaas])
        .await;

    // Asaas goes; Stripe waits, again and again, for as long as the pause lasts.
    let waited = worker
        .collect_until(std::time::Duration::from_secs(30), |seen| {
            seen.iter()
                .any(|r| matches!(r.outcome, refund_worker::outcome::Outcome::Refunded { .. }))
                && seen.len() >= 6
        })
        .await;
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:#?}");
    assert_eq!(ledger[0].payment_id, "pay_pause_1");
    assert!(
        env.sandbox
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/stripe/")),
        "nothing reached Stripe while it was paused"
    );
    for report in waited
        .iter()
        .filter(|r| !matches!(r.outcome, refund_worker::outcome::Outcome::Refunded { .. }))
    {
        assert!(
            matches!(&report.outcome, refund_worker::outcome::Outcome::Retry { counts: false, why, .. } if why.contains("paused by ops")),
            "{report:#?}"
        );
    }
    let metrics = worker.metrics.render();
    assert!(
        metrics.contains(r#"refunds_provider_paused{provider="stripe"} 1"#),
        "{metrics}"
    );
    assert!(
        env.dead_letters_kept().await.is_empty(),
        "nothing retried into exhaustion"
    );

    cli_ok(&env, &["--as", "oncall", "provider", "resume", "stripe"]).await;
    worker
        .collect_until(std::time::Duration::from_secs(30), |seen| {
            seen.iter()
                .any(|r| matches!(r.outcome, refund_worker::outcome::Outcome::Refunded { .. }))
        })
        .await;
    worker.stop().await;
    assert_eq!(env.ledger().len(), 2, "{:#?}", env.ledger());
    let listed = entries(&cli_ok(&env, &["audit", "list", "--json"]).await);
    let actions: Vec<(&str, &str)> = listed
        .iter()
        .map(|e| {
            (
                e.action.action.as_str(),
                e.action.target["provider"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("provider pause", "stripe"), ("provider resume", "stripe")]
    );
    assert!(listed[0].action.who.ends_with(" as oncall"), "{listed:#?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_is_removed_with_set_field_equals_and_a_body_is_replaced_from_stdin() {
    let env = TestEnv::start("dlq-body").await;
    let typo = json!({ "payment_id": "pi_body_1", "ammount": 500, "provider": "stripe", "date": today().to_string() });
    let broken = json!({ "payment_id": "pi_body_2", "amount": "lots", "provider": "stripe", "date": today().to_string() });
    let ids = env.publish_json(&[typo, broken]).await;
    env.run_until_idle().await;

    // The typo goes, the right field comes.
    let out = cli_ok(
        &env,
        &[
            "dlq",
            "replay",
            &ids[0],
            "--set",
            "ammount=",
            "--set",
            "amount=500",
        ],
    )
    .await;
    assert!(out.contains("1 replayed"), "{out}");
    // A whole new body, from stdin; an invalid one is refused before anything is sent.
    let replace = |body: String| {
        let env = env.child_env();
        let id = ids[1].clone();
        async move {
            let mut child = tokio::process::Command::new(crate::helpers::binary())
                .args(["dlq", "replay", &id, "--body", "-"])
                .envs(env)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stdin, body.as_bytes())
                .await
                .unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap()
        }
    };
    let refused = replace(r#"{"payment_id":"pi_body_2","amount":-1}"#.to_owned()).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--body is not a valid job"));
    let body = json!({ "payment_id": "pi_body_2", "amount": 700, "provider": "stripe", "date": today().to_string() });
    let done = replace(body.to_string()).await;
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("1 replayed"));
    env.run_until_idle().await;
    let mut paid: Vec<(String, u64)> = env
        .ledger()
        .into_iter()
        .map(|e| (e.payment_id, e.amount))
        .collect();
    paid.sort();
    assert_eq!(paid, [("pi_body_1".into(), 500), ("pi_body_2".into(), 700)]);
    let log = entries(&cli_ok(&env, &["audit", "list", "--json"]).await);
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].action.target["body"], json!(body.to_string()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_letters_leave_the_queue_and_come_back_sealed_with_import() {
    let env = TestEnv::start("dlq-archive").await;
    let bad = |payment: &str| json!({ "payment_id": payment, "amount": -1, "provider": "stripe", "date": today().to_string() });
    env.publish_json(&[bad("pi_arch_1"), bad("pi_arch_2")])
        .await;
    env.run_until_idle().await;
    let file = std::env::temp_dir().join(format!("{}-archive.jsonl", env.prefix()));
    let path = file.to_str().unwrap();

    let refused = cli(&env, &["dlq", "archive", "--all", "--out", path]).await;
    assert_eq!(refused.status.code(), Some(2), "needs --yes");
    let out = cli_ok(&env, &["dlq", "archive", "--all", "--out", path, "--yes"]).await;
    assert!(out.contains("archived 2 dead letter(s)"), "{out}");
    assert!(env.dead_letters_kept().await.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    let again = cli(&env, &["dlq", "archive", "--all", "--out", path, "--yes"]).await;
    assert_eq!(
        again.status.code(),
        Some(2),
        "an archive is never overwritten"
    );

    let out = cli_ok(&env, &["dlq", "import", path, "--json"]).await;
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["imported"], 2, "{out}");
    let letters = env.dead_letters_kept().await;
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        let shown = cli_ok(&env, &["dlq", "show", &letter.headers["x-refund-job-id"]]).await;
        assert!(shown.contains("sealed") && shown.contains("yes"), "{shown}");
    }
    let log = entries(&cli_ok(&env, &["audit", "list", "--json"]).await);
    let actions: Vec<&str> = log.iter().map(|e| e.action.action.as_str()).collect();
    assert_eq!(actions, ["dlq archive", "dlq import"]);
    let _ = std::fs::remove_file(&file);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_where_one_job_stands_by_job_id_payment_or_key() {
    let env = TestEnv::start("status").await;
    let ids = env
        .publish_json(&[
            crate::helpers::stripe_job("pi_status_ok", 1_860),
            json!({ "payment_id": "pi_status_bad", "amount": -1, "provider": "stripe", "date": today().to_string() }),
        ])
        .await;
    env.run_until_idle().await;
    let refund_id = env.ledger()[0].refund_id.clone();

    let by_payment: Value = serde_json::from_str(
        &cli_ok(&env, &["status", "--payment", "pi_status_ok", "--json"]).await,
    )
    .unwrap();
    assert_eq!(by_payment["key"], format!("pi_status_ok:{}", today()));
    assert_eq!(by_payment["record"]["state"], "done");
    assert_eq!(by_payment["record"]["refund_id"], refund_id);
    assert_eq!(by_payment["receipt"]["job_id"], ids[0]);
    assert_eq!(by_payment["dead_letters"], json!([]));

    let by_job = cli_ok(&env, &["status", &ids[0]]).await;
    assert!(
        by_job.contains("done") && by_job.contains(&refund_id),
        "{by_job}"
    );

    let bad: Value =
        serde_json::from_str(&cli_ok(&env, &["status", &ids[1], "--json"]).await).unwrap();
    assert_eq!(bad["record"], Value::Null);
    assert_eq!(bad["dead_letters"][0]["class"], "invalid");
    assert_eq!(bad["dead_letters"][0]["sealed"], true);
    let none = cli(&env, &["status"]).await;
    assert_eq!(
        none.status.code(),
        Some(2),
        "a job id, payment, order or key is required"
    );
    env.cleanup().await;
}
