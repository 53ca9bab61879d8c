//! The ops console over HTTP, as a browser without JavaScript uses it: nothing without signing
//! in, sign-in with argon2id hashes made by `console operator add`, dead letters found by
//! payment id, a provider paused and resumed with the session's CSRF token (refused without
//! it, and to a read-only operator), every action in the audit log under the operator's name.

use std::{process::Stdio, time::Duration};

use reqwest::{StatusCode, redirect::Policy};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use crate::helpers::{TestEnv, binary, eventually, today};

/// `console operator add NAME` with `password` on stdin: the entry it prints.
pub(crate) async fn operator_entry(name: &str, password: &str, read_only: bool) -> String {
    let mut command = Command::new(binary());
    command.args(["console", "operator", "add", name]);
    if read_only {
        command.arg("--read-only");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(password), "the password is never printed");
    assert!(text.contains("$argon2id$"), "{text}");
    text
}

/// Starts the console on a free port; its child and base URL.
pub(crate) async fn start_console(env: &TestEnv, config: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(binary())
        .args(["console", "--listen", "127.0.0.1:0"])
        .envs(env.child_env())
        .env("REFUND_CONFIG", config)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the console starts")
        .unwrap()
        .expect("a line");
    let url = line
        .strip_prefix("console listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    (child, url)
}

/// Signs in; the session cookie.
async fn sign_in(client: &reqwest::Client, url: &str, name: &str, password: &str) -> String {
    let answer = client
        .post(format!("{url}/login"))
        .form(&[("name", name), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

async fn page(client: &reqwest::Client, url: &str, cookie: &str) -> (StatusCode, String) {
    let answer = client
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (answer.status(), answer.text().await.unwrap())
}

/// A console for `env` with one operator, ana, signed in: its child, configuration file,
/// URL, an HTTP client that does not follow redirects, and ana's session cookie.
async fn console_as_ana(
    env: &TestEnv,
) -> (Child, std::path::PathBuf, String, reqwest::Client, String) {
    let config = std::env::temp_dir().join(format!("{}-console.toml", env.prefix()));
    std::fs::write(
        &config,
        operator_entry("ana", "correct horse battery", false).await,
    )
    .unwrap();
    let (console, url) = start_console(env, &config).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let ana = sign_in(&client, &url, "ana", "correct horse battery").await;
    (console, config, url, client, ana)
}

/// The value of the hidden field `name` in a page (the first one).
fn hidden_of(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_finds_a_letter_pauses_and_resumes_a_provider_and_it_is_audited() {
    let env = TestEnv::start("console").await;
    let config = std::env::temp_dir().join(format!("{}-console.toml", env.prefix()));
    let entries = format!(
        "{}\n{}",
        operator_entry("ana", "correct horse battery", false).await,
        operator_entry("rita", "read only staple", true).await
    );
    std::fs::write(&config, entries).unwrap();
    let (_console, url) = start_console(&env, &config).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();

    // Nothing but the sign-in page without a session.
    for path in [
        "/",
        "/dead-letters",
        "/audit",
        "/dead-letters/x",
        "/mandates",
        "/receipts",
    ] {
        let answer = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()["location"], "/login");
    }
    let unsigned = client
        .post(format!("{url}/providers/stripe/pause"))
        .form(&[("csrf", "x"), ("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::SEE_OTHER);
    let wrong = client
        .post(format!("{url}/login"))
        .form(&[("name", "ana"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("wrong name or password")
    );

    // A dead letter to find.
    let ids = env
        .publish_json(&[json!({ "payment_id": "pi_console_1", "amount": -5, "provider": "stripe", "date": today().to_string() })])
        .await;
    env.run_until_idle().await;

    let ana = sign_in(&client, &url, "ana", "correct horse battery").await;
    let (status, overview) = page(&client, &format!("{url}/"), &ana).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        overview.contains(&format!("{}.jobs", env.prefix())),
        "{overview}"
    );
    assert!(overview.contains("1</strong> dead letters"), "{overview}");
    let (_, found) = page(&client, &format!("{url}/dead-letters?q=pi_console_1"), &ana).await;
    assert!(found.contains(&ids[0]), "{found}");
    let (_, none) = page(&client, &format!("{url}/dead-letters?q=pi_nowhere"), &ana).await;
    assert!(none.contains("0 letters"), "{none}");
    let (status, letter) = page(&client, &format!("{url}/dead-letters/{}", ids[0]), &ana).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        letter.contains("yes: written by this deployment") && letter.contains("pi_console_1"),
        "{letter}"
    );

    // A replay of that letter is previewed first; an invalid body would be skipped, and the
    // preview moves nothing.
    assert!(letter.contains("Preview a replay"), "{letter}");
    let preview = client
        .post(format!("{url}/dead-letters/{}/replay", ids[0]))
        .header("cookie", &ana)
        .form(&[("csrf", csrf_of(&letter).as_str())])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        preview.contains("<td>skipped</td>") && preview.contains("Confirm the replay"),
        "{preview}"
    );
    assert_eq!(env.dead_letters_kept().await.len(), 1);

    // Edit & retry: a body that is still not a job is refused before anything is sent; the
    // fixed one is previewed, then confirmed.
    let edit = |body: &str, confirm: Option<&str>| {
        let mut form = vec![("csrf", csrf_of(&letter)), ("body", body.to_owned())];
        if let Some(preview) = confirm {
            form.push(("confirm", "yes".to_owned()));
            form.push(("preview", "1 would replay".to_owned()));
            form.push(("letters", hidden_of(preview, "letters")));
        }
        form
    };
    let still_bad = client
        .post(format!("{url}/dead-letters/{}/replay", ids[0]))
        .header("cookie", &ana)
        .form(&edit(
            r#"{"payment_id":"pi_console_1","amount":"many","provider":"stripe"}"#,
            None,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(still_bad.status(), StatusCode::BAD_REQUEST);
    assert!(still_bad.text().await.unwrap().contains("not a valid job"));
    let fixed = format!(
        r#"{{"payment_id":"pi_console_1","amount":500,"provider":"stripe","date":"{}"}}"#,
        today()
    );
    let previewed = client
        .post(format!("{url}/dead-letters/{}/replay", ids[0]))
        .header("cookie", &ana)
        .form(&edit(&fixed, None))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(previewed.contains("<td>would replay</td>"), "{previewed}");
    let replayed = client
        .post(format!("{url}/dead-letters/{}/replay", ids[0]))
        .header("cookie", &ana)
        .form(&edit(&fixed, Some(&previewed)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(replayed.contains("<td>replayed</td>"), "{replayed}");
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 1, "{:#?}", env.ledger());
    assert_eq!(env.ledger()[0].amount, 500);
    assert!(env.dead_letters_kept().await.is_empty());

    // Pause: refused without the session's token, done with it.
    let forged = client
        .post(format!("{url}/providers/stripe/pause"))
        .header("cookie", &ana)
        .form(&[("csrf", "not-the-token"), ("reason", "INC-7")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let csrf = csrf_of(&overview);
    let paused = client
        .post(format!("{url}/providers/stripe/pause"))
        .header("cookie", &ana)
        .form(&[("csrf", csrf.as_str()), ("reason", "Stripe incident INC-7")])
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    let listed = crate::ops::cli_ok(&env, &["provider", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["stripe"]["by"], "ana");
    assert_eq!(listed["stripe"]["reason"], "Stripe incident INC-7");
    let (_, overview) = page(&client, &format!("{url}/"), &ana).await;
    assert!(overview.contains("paused by ana"), "{overview}");

    // A read-only operator sees, but may not act.
    let rita = sign_in(&client, &url, "rita", "read only staple").await;
    let (_, seen) = page(&client, &format!("{url}/"), &rita).await;
    assert!(
        seen.contains("(read-only)") && !seen.contains(">Resume<"),
        "{seen}"
    );
    let refused = client
        .post(format!("{url}/providers/stripe/resume"))
        .header("cookie", &rita)
        .form(&[("csrf", csrf_of(&seen).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let resumed = client
        .post(format!("{url}/providers/stripe/resume"))
        .header("cookie", &ana)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::SEE_OTHER);
    let listed = crate::ops::cli_ok(&env, &["provider", "list", "--json"]).await;
    assert_eq!(listed.trim(), "{}");

    let (_, audit) = page(&client, &format!("{url}/audit"), &ana).await;
    assert!(audit.contains("Intact: 3 entries verified"), "{audit}");
    assert!(
        audit.contains("provider pause") && audit.contains("provider resume"),
        "{audit}"
    );
    let log: Vec<refund_worker::governance::audit::Entry> =
        serde_json::from_str(&crate::ops::cli_ok(&env, &["audit", "list", "--json"]).await)
            .unwrap();
    assert!(
        log.iter()
            .all(|e| e.action.who == "ana" && e.action.via == "console"),
        "{log:#?}"
    );

    // Signed out: back to nothing.
    let out = client
        .post(format!("{url}/logout"))
        .header("cookie", &ana)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (status, _) = page(&client, &format!("{url}/"), &ana).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let _ = std::fs::remove_file(&config);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_previewed_then_replayed_canary_first_and_the_books_and_the_log_agree() {
    let env = TestEnv::start("console-canary").await;
    crate::helpers::grant_mandate(&env, "cm_canary", "canary-bot", (1_000, 1_000), &["guest"])
        .await;
    let job = |payment: &str| {
        let mut job = crate::helpers::stripe_job(payment, 600);
        job["agent_id"] = json!("canary-bot");
        job["mandate_id"] = json!("cm_canary");
        job
    };
    env.publish_json(&[job("pi_canary_0")]).await;
    env.run_until_idle().await;
    // Over what is left today: two letters of one group (class mandate, same cause).
    env.publish_json(&[job("pi_canary_1"), job("pi_canary_2")])
        .await;
    env.run_until_idle().await;
    assert_eq!(env.ledger().len(), 1);
    let letters = env.dead_letters_kept().await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let cause = refund_worker::commands::dlq::cause(&letters[0].headers["x-refund-error"]);
    assert_eq!(
        cause,
        refund_worker::commands::dlq::cause(&letters[1].headers["x-refund-error"])
    );

    let (_console, config, url, client, ana) = console_as_ana(&env).await;
    let (_, listing) = page(&client, &format!("{url}/dead-letters"), &ana).await;
    assert!(listing.contains("canary first"), "{listing}");
    let csrf = csrf_of(&listing);

    // Finance raises the budget; the operator previews the group: nothing moves.
    crate::helpers::grant_mandate(&env, "cm_canary", "canary-bot", (1_000, 10_000), &["guest"])
        .await;
    let form = |confirm: Option<&str>| {
        let mut f = vec![
            ("csrf", csrf.clone()),
            ("class", "mandate".to_owned()),
            ("cause", cause.clone()),
            ("canary", "on".to_owned()),
        ];
        if let Some(preview) = confirm {
            f.push(("confirm", "yes".to_owned()));
            f.push(("preview", "2 would replay".to_owned()));
            f.push(("letters", hidden_of(preview, "letters")));
        }
        f
    };
    let preview = client
        .post(format!("{url}/groups/replay"))
        .header("cookie", &ana)
        .form(&form(None))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        preview.matches("<td>would replay</td>").count(),
        2,
        "{preview}"
    );
    assert!(preview.contains("Confirm the replay"), "{preview}");
    assert_eq!(
        env.dead_letters_kept().await.len(),
        2,
        "a preview moves nothing"
    );

    // Confirmed, canary first, with a worker running: the canary refunds, then the rest go.
    let mut worker = env.spawn_worker().await;
    let done = client
        .post(format!("{url}/groups/replay"))
        .header("cookie", &ana)
        .form(&form(Some(&preview)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        done.contains("refunded; the rest (1) were replayed"),
        "{done}"
    );
    worker
        .collect_until(Duration::from_secs(30), |seen| seen.len() >= 2)
        .await;
    worker.stop().await;
    let mut paid: Vec<String> = env.ledger().into_iter().map(|e| e.payment_id).collect();
    paid.sort();
    assert_eq!(paid, ["pi_canary_0", "pi_canary_1", "pi_canary_2"]);
    assert!(env.dead_letters_kept().await.is_empty());

    let log: Vec<refund_worker::governance::audit::Entry> =
        serde_json::from_str(&crate::ops::cli_ok(&env, &["audit", "list", "--json"]).await)
            .unwrap();
    let entry = log
        .iter()
        .find(|e| e.action.action == "dlq replay group (canary)")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(entry.action.who, "ana");
    // The preview recorded is the server's own dry run just before the replay, not text
    // the browser sent back (this test even sends some, which is ignored).
    let preview = entry
        .action
        .preview
        .as_str()
        .expect("the preview is recorded");
    assert_eq!(preview.matches("would replay").count(), 2, "{preview}");
    assert!(!preview.contains("2 would replay"), "{preview}");
    assert_eq!(
        entry.action.result["counts"]["replayed"], 2,
        "the canary, then the rest: {entry:#?}"
    );

    // The mandate and the receipts, as finance and auditors see them in the console.
    let (_, mandates) = page(&client, &format!("{url}/mandates"), &ana).await;
    assert!(
        mandates.contains("cm_canary") && mandates.contains("<td class=\"ok\">valid</td>"),
        "{mandates}"
    );
    assert!(
        mandates.contains("R$ 18,00"),
        "3 × 6.00 spent today: {mandates}"
    );
    let (_, receipts) = page(&client, &format!("{url}/receipts"), &ana).await;
    assert!(receipts.contains("3 receipts intact"), "{receipts}");
    let _ = std::fs::remove_file(&config);
    env.cleanup().await;
}

/// A purge confirmed after more letters of its group arrived takes only the letters its
/// preview showed; a planted letter carrying a real letter's job id is never taken along
/// with it (the action is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_takes_only_what_its_preview_showed_and_never_a_planted_twin() {
    let env = TestEnv::start("console-purge").await;
    let bad = |payment: &str| json!({ "payment_id": payment, "amount": 0, "provider": "stripe", "date": today().to_string() });
    let first = env
        .publish_json(&[bad("pi_purge_1"), bad("pi_purge_2")])
        .await;
    env.run_until_idle().await;
    let letters = env.dead_letters_kept().await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let cause = refund_worker::commands::dlq::cause(&letters[0].headers["x-refund-error"]);

    let (_console, config, url, client, ana) = console_as_ana(&env).await;
    let (_, listing) = page(&client, &format!("{url}/dead-letters"), &ana).await;
    let csrf = csrf_of(&listing);
    let post = |form: Vec<(&'static str, String)>| {
        let request = client
            .post(format!("{url}/dead-letters/remove"))
            .header("cookie", &ana)
            .form(&form);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let group = |confirm: Option<&str>| {
        let mut f = vec![
            ("csrf", csrf.clone()),
            ("action", "purge".to_owned()),
            ("class", "invalid".to_owned()),
            ("cause", cause.clone()),
        ];
        if let Some(preview) = confirm {
            f.push(("confirm", "yes".to_owned()));
            f.push(("letters", hidden_of(preview, "letters")));
        }
        f
    };
    let preview = post(group(None)).await;
    assert!(
        preview.contains("would purge 2 dead letter(s)") && preview.contains("Confirm the purge"),
        "{preview}"
    );
    // A third letter of the same group arrives while the operator reads the preview.
    let late = env.publish_json(&[bad("pi_purge_3")]).await;
    env.run_until_idle().await;
    let done = post(group(Some(&preview))).await;
    assert!(done.contains("purged 2 dead letter(s)"), "{done}");
    eventually(
        Duration::from_secs(20),
        "only the late letter is left",
        || async {
            let left = env.dead_letters_kept().await;
            left.len() == 1 && left[0].headers["x-refund-job-id"] == late[0]
        },
    )
    .await;

    // A planted letter with the late letter's job id as its message id: an action on that
    // job id is refused, and both stay.
    crate::hostile::plant_dead_letter(
        &env,
        br#"{"payment_id":"pi_planted","amount":990000,"provider":"stripe"}"#,
        &late[0],
        lapin::types::FieldTable::default(),
    )
    .await;
    let refused = post(vec![
        ("csrf", csrf.clone()),
        ("action", "purge".to_owned()),
        ("job_id", late[0].clone()),
    ])
    .await;
    assert!(
        refused.contains("2 different letters carry job id") && !refused.contains("Confirm"),
        "{refused}"
    );
    eventually(Duration::from_secs(20), "both are still queued", || async {
        env.dead_letters_kept().await.len() == 2
    })
    .await;

    // The audit names exactly the two letters purged.
    let log: Vec<refund_worker::governance::audit::Entry> =
        serde_json::from_str(&crate::ops::cli_ok(&env, &["audit", "list", "--json"]).await)
            .unwrap();
    let purged: Vec<_> = log
        .iter()
        .filter(|e| e.action.action == "dlq purge")
        .collect();
    assert_eq!(purged.len(), 1, "{log:#?}");
    let mut targets: Vec<String> = purged[0].action.target["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    targets.sort();
    let mut want = first.clone();
    want.sort();
    assert_eq!(targets, want);
    let _ = std::fs::remove_file(&config);
    env.cleanup().await;
}
