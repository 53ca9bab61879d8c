//! Spend mandates against the real Redis (SPEC §5): atomic daily budgets under racing
//! workers, every refusal, idempotent reservations, the CLI, and the Cluster-safe key layout.

use std::{collections::BTreeSet, sync::Arc};

use refund_worker::{
    governance::{
        MandateError, MandatePolicy,
        mandate::{Ask, Denial, Mandate, Reservation},
    },
    job::{Currency, IdempotencyKey, JobDate, Token},
    signing::KeyPair,
    store::{self, MandateStore},
};
use serde_json::Value;
use time::{Duration as Span, OffsetDateTime};
use tokio::process::Command;

use crate::helpers::{REDIS_URL, TestEnv, binary};

fn token(s: &str) -> Token {
    Token::parse(s).unwrap()
}

fn job_key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).unwrap()
}

/// The key the binary signs with (the development key of `config/default.toml`).
fn signing_key(env: &TestEnv) -> KeyPair {
    let seed = env
        .settings
        .mandates
        .signing_key()
        .expect("the development key");
    KeyPair::from_seed(seed, "[mandates] signing_key").unwrap()
}

async fn mandate_store(env: &TestEnv) -> MandateStore {
    MandateStore::new(store::connect(REDIS_URL).await.unwrap(), env.prefix())
}

async fn policy(env: &TestEnv, required: bool) -> MandatePolicy {
    MandatePolicy::new(
        mandate_store(env).await,
        signing_key(env).public().into(),
        required,
    )
}

async fn grant(
    env: &TestEnv,
    id: &str,
    max_per_refund: u64,
    max_per_day: u64,
    expires_at: Option<&str>,
) -> Mandate {
    let mandate = Mandate::new_signed(
        token(id),
        token("support-bot"),
        max_per_refund,
        max_per_day,
        Currency::BRL,
        expires_at.map(str::to_owned),
        &signing_key(env),
    );
    mandate_store(env).await.grant(&mandate).await.unwrap();
    mandate
}

/// A raw Redis connection, to do what only an attacker or a bug would.
async fn raw(env: &TestEnv) -> (redis::aio::ConnectionManager, MandateStore) {
    (
        store::connect(REDIS_URL).await.unwrap(),
        mandate_store(env).await,
    )
}

/// What a job published by `publisher` for `agent` asks.
fn ask_as<'a>(
    agent: Option<&'a Token>,
    publisher: Option<&'a str>,
    minor: u64,
    currency: Currency,
) -> Ask<'a> {
    Ask {
        agent,
        publisher,
        amount: minor,
        currency,
    }
}

/// `authorize` for agent support-bot in BRL.
async fn ask(
    policy: &MandatePolicy,
    mandate: &str,
    minor: u64,
    key: &str,
    now: OffsetDateTime,
) -> Result<Option<Reservation>, MandateError> {
    policy
        .authorize(
            &ask_as(
                Some(&token("support-bot")),
                Some("support-bot"),
                minor,
                Currency::BRL,
            ),
            Some(&token(mandate)),
            &job_key(key),
            now,
        )
        .await
}

fn denial(result: Result<Option<Reservation>, MandateError>) -> Denial {
    match result {
        Err(MandateError::Denied(d)) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_workers_spending_one_daily_budget_never_exceed_it() {
    let env = TestEnv::start("mandate-race").await;
    grant(&env, "cm_race", 10_000, 500_000, None).await;
    let now = OffsetDateTime::now_utc();
    let start = Arc::new(tokio::sync::Barrier::new(8));

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        // Each worker has its own Redis connection, as separate processes would.
        let policy = policy(&env, false).await;
        let start = Arc::clone(&start);
        workers.spawn(async move {
            start.wait().await;
            let mut granted = Vec::new();
            let mut refused = Vec::new();
            for job in (worker..100).step_by(8) {
                let key = format!("race-job-{job}");
                match ask(&policy, "cm_race", 7_000, &key, now).await {
                    Ok(Some(r)) => granted.push((key, r)),
                    Err(MandateError::Denied(Denial::OverBudget { left, .. })) => {
                        refused.push(left)
                    }
                    other => panic!("unexpected answer for {key}: {other:?}"),
                }
            }
            (granted, refused)
        });
    }
    let mut granted = Vec::new();
    let mut refused = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (g, r) = done.unwrap();
        granted.extend(g);
        refused.extend(r);
    }

    let total: u64 = granted.iter().map(|(_, r)| r.amount).sum();
    assert!(total <= 500_000, "reserved {total} of a 500000 budget");
    assert_eq!(
        granted.len(),
        500_000 / 7_000,
        "exactly floor(500000/7000) fit"
    );
    assert_eq!(refused.len(), 100 - 71);
    assert!(
        refused.iter().all(|left| *left < 7_000),
        "a refusal only when less than one refund is left: {refused:?}"
    );
    let keys: BTreeSet<_> = granted.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), granted.len(), "one reservation per job");
    let today = JobDate::of(now);
    assert!(granted.iter().all(|(_, r)| r.day == today.to_string()
        && r.mandate_id == "cm_race"
        && r.agent_id == "support-bot"));
    let spent = mandate_store(&env)
        .await
        .spent("cm_race", today)
        .await
        .unwrap();
    assert_eq!(spent, total);
    assert_eq!(spent, 71 * 7_000);
    env.cleanup().await;
}

#[tokio::test]
async fn each_broken_rule_is_refused_with_its_denial_and_spends_nothing() {
    let env = TestEnv::start("mandate-deny").await;
    let policy = policy(&env, false).await;
    let required = self::policy(&env, true).await;
    let now = OffsetDateTime::now_utc();
    grant(
        &env,
        "cm_deny",
        50_000,
        500_000,
        Some("2099-01-01T00:00:00Z"),
    )
    .await;

    // The cap itself is allowed; one minor unit more is not.
    let ok = ask(&policy, "cm_deny", 50_000, "deny-ok", now)
        .await
        .unwrap();
    assert_eq!(ok.map(|r| r.amount), Some(50_000));
    assert_eq!(
        denial(ask(&policy, "cm_deny", 50_001, "deny-cap", now).await),
        Denial::OverCap {
            id: "cm_deny".into(),
            amount: 50_001,
            cap: 50_000
        }
    );
    let other_agent = policy
        .authorize(
            &ask_as(
                Some(&token("rogue-bot")),
                Some("support-bot"),
                100,
                Currency::BRL,
            ),
            Some(&token("cm_deny")),
            &job_key("deny-agent"),
            now,
        )
        .await;
    assert_eq!(
        denial(other_agent),
        Denial::WrongAgent {
            id: "cm_deny".into(),
            agent: "rogue-bot".into(),
            expected: "support-bot".into()
        }
    );
    let no_agent = policy
        .authorize(
            &ask_as(None, Some("support-bot"), 100, Currency::BRL),
            Some(&token("cm_deny")),
            &job_key("deny-noagent"),
            now,
        )
        .await;
    assert!(matches!(denial(no_agent), Denial::WrongAgent { agent, .. } if agent.is_empty()));
    let dollars = policy
        .authorize(
            &ask_as(
                Some(&token("support-bot")),
                Some("support-bot"),
                100,
                Currency::parse("USD").unwrap(),
            ),
            Some(&token("cm_deny")),
            &job_key("deny-usd"),
            now,
        )
        .await;
    assert_eq!(
        denial(dollars),
        Denial::WrongCurrency {
            id: "cm_deny".into(),
            expected: "BRL".into(),
            got: "USD".into()
        }
    );
    let later = OffsetDateTime::parse(
        "2099-01-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        denial(ask(&policy, "cm_deny", 100, "deny-late", later).await),
        Denial::Expired {
            id: "cm_deny".into(),
            at: "2099-01-01T00:00:00Z".into()
        }
    );
    assert_eq!(
        denial(ask(&policy, "cm_nowhere", 100, "deny-unknown", now).await),
        Denial::Unknown {
            id: "cm_nowhere".into()
        }
    );

    // No mandate named: refused only when mandates are required.
    let none = |p: &MandatePolicy| {
        let p = p.clone();
        async move {
            p.authorize(
                &ask_as(
                    Some(&token("support-bot")),
                    Some("support-bot"),
                    100,
                    Currency::BRL,
                ),
                None,
                &job_key("deny-none"),
                now,
            )
            .await
        }
    };
    // An agent spends only under a mandate (SPEC §5: every job that names one is gated).
    assert_eq!(
        denial(none(&policy).await),
        Denial::AgentWithoutMandate {
            agent: "support-bot".into()
        }
    );
    assert_eq!(denial(none(&required).await), Denial::NoMandate);
    let nobody = policy
        .authorize(
            &ask_as(None, Some("support-bot"), 100, Currency::BRL),
            None,
            &job_key("deny-nobody"),
            now,
        )
        .await;
    assert_eq!(
        nobody.unwrap(),
        None,
        "a job naming nobody needs no mandate"
    );

    // A cap raised directly in Redis: the signature no longer matches.
    grant(&env, "cm_forged", 50_000, 500_000, None).await;
    let (mut conn, store) = raw(&env).await;
    let _: () = redis::cmd("HSET")
        .arg(store.mandate_key("cm_forged"))
        .arg("max_per_refund")
        .arg("5000000")
        .query_async(&mut conn)
        .await
        .unwrap();
    let tampered = store.get("cm_forged").await.unwrap().unwrap();
    assert_eq!(tampered.mandate.max_per_refund, 5_000_000);
    assert!(!tampered.mandate.verify(&signing_key(&env).public().into()));
    assert_eq!(
        denial(ask(&policy, "cm_forged", 60_000, "deny-forged", now).await),
        Denial::Forged {
            id: "cm_forged".into()
        }
    );
    // A validly signed mandate copied under another id is a forgery too.
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(store.mandate_key("cm_deny"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut copy = redis::cmd("HSET");
    copy.arg(store.mandate_key("cm_copy"));
    for (k, v) in &fields {
        copy.arg(k).arg(v);
    }
    let _: () = copy.query_async(&mut conn).await.unwrap();
    assert_eq!(
        denial(ask(&policy, "cm_copy", 100, "deny-copy", now).await),
        Denial::Forged {
            id: "cm_copy".into()
        }
    );

    // Revoked: refused at once, with the time it was revoked.
    let at = refund_worker::governance::mandate::rfc3339(now);
    assert!(
        store
            .revoke("cm_deny", &signing_key(&env), &at)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .revoke("cm_nowhere", &signing_key(&env), &at)
            .await
            .unwrap()
            .is_none()
    );
    let revoked_at = store
        .get("cm_deny")
        .await
        .unwrap()
        .unwrap()
        .mandate
        .revoked_at;
    assert!(revoked_at.is_some());
    assert_eq!(
        denial(ask(&policy, "cm_deny", 100, "deny-revoked", now).await),
        Denial::Revoked {
            id: "cm_deny".into(),
            at: revoked_at.unwrap()
        }
    );

    // Only the one allowed refund was ever reserved.
    let today = JobDate::of(now);
    assert_eq!(store.spent("cm_deny", today).await.unwrap(), 50_000);
    assert_eq!(store.spent("cm_forged", today).await.unwrap(), 0);
    assert_eq!(store.spent("cm_copy", today).await.unwrap(), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_retried_job_spends_once_and_a_release_gives_back_once() {
    let env = TestEnv::start("mandate-idem").await;
    let policy = policy(&env, false).await;
    let store = mandate_store(&env).await;
    let now = OffsetDateTime::now_utc();
    let today = JobDate::of(now);
    grant(&env, "cm_idem", 7_000, 14_000, None).await;

    let first = ask(&policy, "cm_idem", 7_000, "idem-a", now)
        .await
        .unwrap()
        .unwrap();
    let again = ask(&policy, "cm_idem", 7_000, "idem-a", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, again, "the same reservation");
    assert_eq!(store.spent("cm_idem", today).await.unwrap(), 7_000);
    // A retry on the next day finds its reservation and spends nothing of that day.
    let tomorrow = now + Span::days(1);
    let next_day = ask(&policy, "cm_idem", 7_000, "idem-a", tomorrow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_day, first);
    assert_eq!(
        store.spent("cm_idem", JobDate::of(tomorrow)).await.unwrap(),
        0
    );

    let second = ask(&policy, "cm_idem", 7_000, "idem-b", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.spent("cm_idem", today).await.unwrap(), 14_000);
    assert_eq!(
        denial(ask(&policy, "cm_idem", 7_000, "idem-c", now).await),
        Denial::OverBudget {
            id: "cm_idem".into(),
            amount: 7_000,
            left: 0
        }
    );
    // Another amount under a key that holds a reservation is another refund, not a retry.
    assert!(matches!(
        denial(ask(&policy, "cm_idem", 6_000, "idem-b", now).await),
        Denial::KeyReused {
            reserved: 7_000,
            asked: 6_000,
            ..
        }
    ));

    // Released twice: given back once (idem-b still holds its 7000).
    policy.release(&first, &job_key("idem-a")).await.unwrap();
    policy.release(&first, &job_key("idem-a")).await.unwrap();
    assert_eq!(store.spent("cm_idem", today).await.unwrap(), 7_000);
    // A reservation the key does not hold gives nothing back.
    let wrong = Reservation {
        amount: 6_000,
        ..second.clone()
    };
    policy.release(&wrong, &job_key("idem-b")).await.unwrap();
    assert_eq!(store.spent("cm_idem", today).await.unwrap(), 7_000);

    // The released budget can be spent again, once.
    ask(&policy, "cm_idem", 7_000, "idem-c", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.spent("cm_idem", today).await.unwrap(), 14_000);
    // The released job, replayed, needs a fresh reservation: the budget is full now.
    assert!(matches!(
        denial(ask(&policy, "cm_idem", 7_000, "idem-a", now).await),
        Denial::OverBudget { left: 0, .. }
    ));
    env.cleanup().await;
}

async fn cli(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("mandate")
        .args(args)
        .envs(env.child_env())
        .output()
        .await
        .expect("the refund-worker binary runs")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandate_cli_grants_shows_revokes_and_lists() {
    let env = TestEnv::start("mandate-cli").await;
    let granted = stdout(
        &cli(
            &env,
            &[
                "grant",
                "--id",
                "cm_cli",
                "--agent",
                "support-bot",
                "--max-per-refund",
                "50000",
                "--max-per-day",
                "500000",
                "--expires",
                "2099-01-01T00:00:00Z",
            ],
        )
        .await,
    );
    assert!(
        granted.contains(
            "granted mandate cm_cli (version 1) to agent support-bot, spent by support-bot"
        ),
        "{granted}"
    );

    // What the binary signed, a worker obeys.
    let policy = policy(&env, true).await;
    ask(
        &policy,
        "cm_cli",
        7_000,
        "cli-job",
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap()
    .unwrap();

    let shown = stdout(&cli(&env, &["show", "cm_cli"]).await);
    for line in [
        "mandate          cm_cli",
        "agent            support-bot",
        "per refund       R$ 500,00 (50000 minor units)",
        "per day          R$ 5.000,00 (500000 minor units)",
        "expires          2099-01-01T00:00:00Z",
        "state            active",
        "spent today      R$ 70,00 (7000 minor units)",
        "left today       R$ 4.930,00 (493000 minor units)",
        "signature valid  yes",
    ] {
        assert!(shown.contains(line), "missing {line:?} in:\n{shown}");
    }

    let revoked = stdout(&cli(&env, &["revoke", "cm_cli"]).await);
    assert!(revoked.contains("revoked mandate cm_cli"), "{revoked}");
    assert!(revoked.contains("(version 2)"), "{revoked}");
    let shown = stdout(&cli(&env, &["show", "cm_cli"]).await);
    assert!(shown.contains("state            revoked at "), "{shown}");
    let as_json: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&env, &["show", "cm_cli", "--json"]).await)).unwrap();
    assert_eq!(as_json["id"], "cm_cli", "{as_json:#}");
    assert!(
        as_json["state"].as_str().unwrap().starts_with("revoked"),
        "{as_json:#}"
    );
    assert!(shown.contains("version          2"), "{shown}");
    assert!(
        shown.contains("signature valid  yes"),
        "a revocation is signed: {shown}"
    );
    assert!(matches!(
        denial(
            ask(
                &policy,
                "cm_cli",
                100,
                "cli-after",
                OffsetDateTime::now_utc()
            )
            .await
        ),
        Denial::Revoked { .. }
    ));

    // A second mandate, then tampering, as `list --json` reports them.
    stdout(
        &cli(
            &env,
            &[
                "grant",
                "--id",
                "cm_cli2",
                "--agent",
                "refund-bot",
                "--max-per-refund",
                "100",
                "--max-per-day",
                "1000",
                "--currency",
                "USD",
            ],
        )
        .await,
    );
    let (mut conn, store) = raw(&env).await;
    let _: () = redis::cmd("HSET")
        .arg(store.mandate_key("cm_cli2"))
        .arg("max_per_day")
        .arg("1000000")
        .query_async(&mut conn)
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&stdout(&cli(&env, &["list", "--json"]).await))
        .expect("list --json prints JSON");
    let rows = listed.as_array().expect("an array of mandates");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], "cm_cli");
    assert_eq!(rows[0]["state"], "revoked");
    assert_eq!(rows[0]["spent_today"], 7_000);
    assert_eq!(rows[0]["left_today"], 493_000);
    assert_eq!(rows[0]["max_per_refund"], 50_000);
    assert_eq!(rows[0]["signature_valid"], true);
    assert_eq!(rows[1]["id"], "cm_cli2");
    assert_eq!(rows[1]["currency"], "USD");
    assert_eq!(rows[1]["state"], "active");
    assert_eq!(rows[1]["expires_at"], Value::Null);
    assert_eq!(rows[1]["signature_valid"], false);
    let table = stdout(&cli(&env, &["list"]).await);
    assert!(
        table.contains("cm_cli2") && table.contains("INVALID"),
        "{table}"
    );
    let shown = stdout(&cli(&env, &["show", "cm_cli2"]).await);
    assert!(shown.contains("signature valid  NO"), "{shown}");

    // Unknown mandates and bad keys are one clear line each, with their exit codes.
    let missing = cli(&env, &["show", "cm_missing"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no mandate cm_missing"));
    let bad_key = Command::new(binary())
        .args(["mandate", "grant", "--id", "cm_x", "--agent", "a"])
        .args(["--max-per-refund", "1", "--max-per-day", "1"])
        .envs(env.child_env())
        .env("REFUND_MANDATES__SIGNING_KEY", "not-hex")
        .output()
        .await
        .unwrap();
    assert_eq!(bad_key.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_key.stderr);
    assert!(stderr.contains("[mandates] signing_key"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(store.get("cm_x").await.unwrap().is_none());

    // Granting an existing id needs --replace; only finance's key signs.
    let again = cli(
        &env,
        &[
            "grant",
            "--id",
            "cm_cli",
            "--agent",
            "support-bot",
            "--max-per-refund",
            "1",
            "--max-per-day",
            "1",
        ],
    )
    .await;
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));
    let no_key = Command::new(binary())
        .args(["mandate", "revoke", "cm_cli2"])
        .envs(env.child_env())
        .env("REFUND_MANDATES__SIGNING_KEY", "")
        .output()
        .await
        .unwrap();
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("finance's key"));
    let replaced = stdout(
        &cli(
            &env,
            &[
                "grant",
                "--id",
                "cm_cli",
                "--agent",
                "support-bot",
                "--max-per-refund",
                "100",
                "--max-per-day",
                "1000",
                "--publisher",
                "bot-a",
                "--publisher",
                "bot-b",
                "--replace",
            ],
        )
        .await,
    );
    assert!(
        replaced.contains("(version 3)") && replaced.contains("spent by bot-a, bot-b"),
        "{replaced}"
    );
    env.cleanup().await;
}

/// The hash tag Redis Cluster slots a key by: the text between the first `{` and the next
/// `}`, when not empty; otherwise the whole key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[tokio::test]
async fn every_key_a_mandate_script_touches_shares_the_mandates_hash_tag() {
    let env = TestEnv::start("mandate-keys").await;
    let policy = policy(&env, false).await;
    let (mut conn, store) = raw(&env).await;
    let now = OffsetDateTime::now_utc();
    let day = JobDate::of(now).to_string();
    // An id that looks like part of a key layout must still get a tag of its own.
    let id = "cm:layout.1";
    grant(&env, id, 10_000, 100_000, None).await;
    let first = ask(&policy, id, 1_000, "keys-a", now)
        .await
        .unwrap()
        .unwrap();
    ask(&policy, id, 1_000, "keys-b", now).await.unwrap();
    policy.release(&first, &job_key("keys-a")).await.unwrap();
    store
        .revoke(
            id,
            &signing_key(&env),
            &refund_worker::governance::mandate::rfc3339(now),
        )
        .await
        .unwrap();

    let scripted = [
        store.mandate_key(id),
        store.keys().floor(id),
        store.day_key(id, &day),
        store.reservation_key(id, "keys-a"),
        store.reservation_key(id, "keys-b"),
    ];
    for key in &scripted {
        assert_eq!(hash_tag(key), id, "{key} is slotted by the mandate id");
        assert!(key.starts_with(&format!("{}:", env.prefix())), "{key}");
    }

    // What is in Redis is exactly those keys, plus the index set no script touches.
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:mandate*", env.prefix()))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut expected: BTreeSet<String> = scripted.iter().cloned().collect();
    expected.insert(store.index_key());
    assert_eq!(found, expected);
    let ttl: i64 = redis::cmd("TTL")
        .arg(store.day_key(id, &day))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "budget counters expire");
    env.cleanup().await;
}
