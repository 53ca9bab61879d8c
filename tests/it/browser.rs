//! The console driven in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which the README's test command installs), through WebDriver: sign in, find a letter by
//! payment id, edit and retry it, pause and resume a provider, read the audit log. Every
//! assertion is checked against the sandbox ledger and the queues. With
//! `REFUND_SCREENSHOTS=DIR` it also saves the pages it visits (docs/console/ holds them).

use std::{process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use refund_sandbox::{Burst, FaultOptions};

use crate::{
    console::{operator_entry, start_console},
    helpers::{TestEnv, eventually, stripe_job, today},
};

/// chromedriver on a free port, ready.
async fn chromedriver() -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
    let status = format!("http://127.0.0.1:{port}/status");
    eventually(Duration::from_secs(20), "chromedriver answers", || {
        let status = status.clone();
        async move {
            reqwest::get(&status)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    (child, port)
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"] }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a headless Chromium session")
}

async fn shot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("REFUND_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

async fn text(client: &Client) -> String {
    client.source().await.unwrap()
}

/// Waits for the page a click leads to (the click returns before the navigation ends).
async fn arrive(client: &Client, heading: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&format!("//h1[contains(., '{heading}')]")))
        .await
        .unwrap_or_else(|e| panic!("no page {heading:?}: {e}"));
}

async fn click(client: &Client, xpath: &str) {
    match client.find(Locator::XPath(xpath)).await {
        Ok(found) => found.click().await.unwrap(),
        Err(e) => panic!("no {xpath}: {e}\n{}", text(client).await),
    }
}

/// Searches the dead letters for `q` and opens the letter `job_id`.
async fn open_letter(client: &Client, url: &str, q: &str, job_id: &str) {
    client.goto(&format!("{url}/dead-letters")).await.unwrap();
    client
        .find(Locator::Css("input[name=q]"))
        .await
        .unwrap()
        .send_keys(q)
        .await
        .unwrap();
    click(client, "//form[@action='/dead-letters']//button").await;
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&format!(
            "//input[@name='q' and @value='{q}']"
        )))
        .await
        .unwrap();
    client
        .find(Locator::LinkText(job_id))
        .await
        .unwrap_or_else(|e| panic!("{job_id} is not found by {q}: {e}"))
        .click()
        .await
        .unwrap();
    arrive(client, "Dead letter").await;
}

/// On a letter's page: replaces its body, previews the replay and confirms it.
async fn edit_and_retry(client: &Client, body: &str) -> String {
    let area = client
        .find(Locator::Css("textarea[name=body]"))
        .await
        .unwrap();
    area.clear().await.unwrap();
    area.send_keys(body).await.unwrap();
    click(client, "//button[contains(., 'Preview the edited replay')]").await;
    arrive(client, "Replay: preview").await;
    let preview = text(client).await;
    click(client, "//button[contains(., 'Confirm the replay')]").await;
    arrive(client, "Replay: done").await;
    preview
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drains_a_mixed_dead_letter_queue_and_pauses_a_provider_from_the_browser_alone()
{
    let env = TestEnv::with("browser", FaultOptions::default(), |s| {
        s.retry.max_attempts = 2;
        s.providers.circuit_failures = 0;
    })
    .await;
    let day = today().to_string();
    // Exhausted: Stripe is down while two jobs run out of attempts.
    env.sandbox
        .burst(Burst::ServerErrors, Duration::from_secs(600));
    let down = env
        .publish_json(&[
            stripe_job("pi_mix_down_1", 310),
            stripe_job("pi_mix_down_2", 320),
        ])
        .await;
    env.run_until_idle().await;
    env.sandbox.burst(Burst::ServerErrors, Duration::ZERO);
    // Invalid, permanent (the card network refuses: a dispute), and a key collision: a
    // second refund of one payment on one day under the first one's key.
    let ids = env
        .publish_json(&[
            json!({ "payment_id": "pi_browser_1", "amount": -5, "provider": "stripe", "date": day }),
            stripe_job("pi_chargeback_declined", 1200),
            stripe_job("pi_mix_col", 200),
        ])
        .await;
    env.run_until_idle().await;
    let collision = env.publish_json(&[stripe_job("pi_mix_col", 600)]).await;
    env.run_until_idle().await;
    assert_eq!(
        env.ledger().len(),
        1,
        "only the first pi_mix_col refund so far"
    );
    assert_eq!(env.dead_letters_kept().await.len(), 5);

    let archives = std::env::temp_dir().join(format!("{}-archives", env.prefix()));
    let config = std::env::temp_dir().join(format!("{}-console.toml", env.prefix()));
    std::fs::write(
        &config,
        format!(
            "[console]\nsession_ttl = \"30m\"\narchive_dir = {:?}\n{}",
            archives.display().to_string(),
            operator_entry("ana", "correct horse battery", false).await
        ),
    )
    .unwrap();
    let (_console, url) = start_console(&env, &config).await;
    let (_driver, port) = chromedriver().await;
    let c = browser(port).await;
    // A worker runs throughout, as in production: the canary needs one to refund.
    let worker = env.spawn_worker().await;

    // Nothing but the sign-in page without a session.
    c.goto(&format!("{url}/dead-letters")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    shot(&c, "sign-in").await;
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys("ana")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("correct horse battery")
        .await
        .unwrap();
    click(&c, "//form[@action='/login']//button").await;
    arrive(&c, "Overview").await;
    let overview = text(&c).await;
    assert!(
        overview.contains("Overview") && overview.contains("5</strong> dead letters"),
        "{overview}"
    );

    // The invalid letter: found by payment id, its body fixed, previewed, confirmed.
    c.goto(&format!("{url}/dead-letters")).await.unwrap();
    shot(&c, "dead-letters").await;
    open_letter(&c, &url, "pi_browser_1", &ids[0]).await;
    shot(&c, "letter").await;
    let preview = edit_and_retry(
        &c,
        &format!(
            r#"{{"payment_id":"pi_browser_1","amount":500,"provider":"stripe","date":"{day}"}}"#
        ),
    )
    .await;
    assert!(preview.contains("would replay"), "{preview}");
    assert!(text(&c).await.contains("<td>replayed</td>"));

    // The key collision: its key fields are locked, but it may take a key of its own.
    open_letter(&c, &url, "pi_mix_col", &collision[0]).await;
    let mut renamed = stripe_job("pi_mix_col", 600);
    renamed["payment_id"] = json!("pi_mix_other");
    let area = c.find(Locator::Css("textarea[name=body]")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(&renamed.to_string()).await.unwrap();
    click(&c, "//button[contains(., 'Preview the edited replay')]").await;
    arrive(&c, "Not available").await;
    let refused = text(&c).await;
    assert!(
        refused.contains("payment_id is part of the idempotency key"),
        "{refused}"
    );
    open_letter(&c, &url, "pi_mix_col", &collision[0]).await;
    let mut own_key = stripe_job("pi_mix_col", 600);
    own_key["idempotency_key"] = json!("pi_mix_col-second");
    edit_and_retry(&c, &own_key.to_string()).await;
    assert!(text(&c).await.contains("<td>replayed</td>"));

    // An exhausted letter's page says where its refund stands, and asks Stripe live.
    eventually(
        Duration::from_secs(30),
        "the two edited letters are refunded",
        || async { env.ledger().len() == 3 },
    )
    .await;
    open_letter(&c, &url, "pi_mix_down_1", &down[0]).await;
    let page = text(&c).await;
    assert!(
        page.contains(&format!("pi_mix_down_1:{day}")) && page.contains("uncertain"),
        "{page}"
    );
    click(&c, "//button[contains(., 'Look it up at the provider')]").await;
    arrive(&c, "Dead letter").await;
    let looked = text(&c).await;
    assert!(
        looked.contains(&format!("no refund under key pi_mix_down_1:{day}")),
        "{looked}"
    );
    assert_eq!(env.ledger().len(), 3, "a look-up refunds nothing");

    // The exhausted group, now that Stripe is back: previewed, then canary first.
    c.goto(&format!("{url}/dead-letters")).await.unwrap();
    click(
        &c,
        "//div[contains(., 'exhausted')]//form[@action='/groups/replay']//button",
    )
    .await;
    arrive(&c, "Replay: preview").await;
    let preview = text(&c).await;
    assert_eq!(
        preview.matches("<td>would replay</td>").count(),
        2,
        "{preview}"
    );
    shot(&c, "replay-preview").await;
    click(&c, "//button[contains(., 'Confirm the replay')]").await;
    arrive(&c, "Replay: done").await;
    let done = text(&c).await;
    assert!(
        done.contains("refunded; the rest (1) were replayed"),
        "{done}"
    );

    // The permanent refusal: archived to a file `dlq import` reads, after a preview.
    open_letter(&c, &url, "pi_chargeback_declined", &ids[1]).await;
    click(&c, "//button[contains(., 'Preview an archive')]").await;
    arrive(&c, "Archive: preview").await;
    assert!(text(&c).await.contains("would archive 1 dead letter(s)"));
    eventually(
        Duration::from_secs(20),
        "a preview removes nothing",
        || async { env.dead_letters_kept().await.len() == 1 },
    )
    .await;
    click(&c, "//button[contains(., 'Confirm the archive')]").await;
    arrive(&c, "Removed").await;
    let files: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let archived = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(archived.lines().count(), 1);
    assert!(archived.contains("pi_chargeback_declined") && archived.contains(&ids[1]));

    // Drained: every refund once, nothing lost, nothing left.
    eventually(
        Duration::from_secs(30),
        "every replayed refund is made",
        || async { env.ledger().len() >= 5 },
    )
    .await;
    let mut paid: Vec<(String, u64)> = env
        .ledger()
        .iter()
        .map(|e| (e.payment_id.clone(), e.amount))
        .collect();
    paid.sort();
    let want: Vec<(String, u64)> = [
        ("pi_browser_1", 500),
        ("pi_mix_col", 200),
        ("pi_mix_col", 600),
        ("pi_mix_down_1", 310),
        ("pi_mix_down_2", 320),
    ]
    .iter()
    .map(|(p, a)| ((*p).to_owned(), *a))
    .collect();
    assert_eq!(paid, want);
    eventually(
        Duration::from_secs(20),
        "the dead-letter queue is empty",
        || async { env.dead_letters_kept().await.is_empty() },
    )
    .await;
    assert_eq!(down.len(), 2);
    // The overview adds up every worker's counts (they flush every few seconds).
    let mut overview = String::new();
    for _ in 0..40 {
        c.goto(&format!("{url}/")).await.unwrap();
        overview = text(&c).await;
        if overview.contains("<strong>5</strong> refunded (<strong>R$ 19,30</strong>)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        overview.contains("<strong>5</strong> refunded (<strong>R$ 19,30</strong>), <strong>5</strong> dead-lettered"),
        "{overview}"
    );
    assert!(
        overview.contains("<strong>0</strong> dead letters"),
        "{overview}"
    );
    assert!(
        overview.contains("<h2>Workers</h2>") && overview.contains("<td class=\"ok\">ready</td>"),
        "{overview}"
    );
    shot(&c, "overview").await;

    // Pause Stripe with a reason, then resume it.
    c.goto(&format!("{url}/")).await.unwrap();
    c.find(Locator::Css(
        "form[action='/providers/stripe/pause'] input[name=reason]",
    ))
    .await
    .unwrap()
    .send_keys("INC-9")
    .await
    .unwrap();
    click(&c, "//form[@action='/providers/stripe/pause']//button").await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("form[action='/providers/stripe/resume']"))
        .await
        .unwrap();
    assert!(text(&c).await.contains("paused by ana"));
    let listed = crate::ops::cli_ok(&env, &["provider", "list"]).await;
    assert!(listed.contains("INC-9"), "{listed}");
    click(&c, "//form[@action='/providers/stripe/resume']//button").await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("form[action='/providers/stripe/pause']"))
        .await
        .unwrap();
    assert!(
        crate::ops::cli_ok(&env, &["provider", "list"])
            .await
            .contains("no provider is paused")
    );

    // Every action is in the audit log, under ana, and the log verifies.
    c.goto(&format!("{url}/audit")).await.unwrap();
    let audit = text(&c).await;
    assert!(audit.contains("Intact: 6 entries verified"), "{audit}");
    for action in [
        "dlq replay",
        "dlq replay group (canary)",
        "dlq archive",
        "provider pause",
        "provider resume",
    ] {
        assert!(
            audit.contains(&format!("<td>{action}</td>")),
            "{action}: {audit}"
        );
    }
    assert_eq!(audit.matches("<td>ana</td>").count(), 6, "{audit}");
    shot(&c, "audit").await;
    c.goto(&format!("{url}/mandates")).await.unwrap();
    shot(&c, "mandates").await;
    c.close().await.unwrap();
    worker.stop().await;
    assert_eq!(env.ledger().len(), 5, "nothing more was paid");
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&archives);
    env.cleanup().await;
}
