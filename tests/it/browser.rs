//! The console driven in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which the README's test command installs), through WebDriver: sign in, find a letter by
//! payment id, edit and retry it, pause and resume a provider, read the audit log. Every
//! assertion is checked against the sandbox ledger and the queues. With
//! `REFUND_SCREENSHOTS=DIR` it also saves the pages it visits (docs/console/ holds them).

use std::{process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::{
    console::{operator_entry, start_console},
    helpers::{TestEnv, eventually, today},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drains_a_dead_letter_and_pauses_a_provider_from_the_browser_alone() {
    let env = TestEnv::start("browser").await;
    let ids = env
        .publish_json(&[
            json!({ "payment_id": "pi_browser_1", "amount": -5, "provider": "stripe", "date": today().to_string() }),
        ])
        .await;
    env.run_until_idle().await;
    let config = std::env::temp_dir().join(format!("{}-console.toml", env.prefix()));
    std::fs::write(
        &config,
        operator_entry("ana", "correct horse battery", false).await,
    )
    .unwrap();
    let (_console, url) = start_console(&env, &config).await;
    let (_driver, port) = chromedriver().await;
    let c = browser(port).await;

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
    c.find(Locator::Css("form[action='/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(&c, "Overview").await;
    let overview = text(&c).await;
    assert!(
        overview.contains("Overview") && overview.contains("1</strong> dead letters"),
        "{overview}"
    );
    shot(&c, "overview").await;

    // Find the letter by payment id, open it, fix its body, preview, confirm.
    c.goto(&format!("{url}/dead-letters")).await.unwrap();
    c.find(Locator::Css("input[name=q]"))
        .await
        .unwrap()
        .send_keys("pi_browser_1")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/dead-letters'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//input[@name='q' and @value='pi_browser_1']",
        ))
        .await
        .unwrap();
    shot(&c, "dead-letters").await;
    c.find(Locator::LinkText(&ids[0]))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(&c, "Dead letter").await;
    shot(&c, "letter").await;
    let fixed = format!(
        r#"{{"payment_id":"pi_browser_1","amount":500,"provider":"stripe","date":"{}"}}"#,
        today()
    );
    let area = c.find(Locator::Css("textarea[name=body]")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(&fixed).await.unwrap();
    c.find(Locator::XPath(
        "//button[contains(., 'Preview the edited replay')]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    arrive(&c, "Replay: preview").await;
    let preview = text(&c).await;
    assert!(preview.contains("would replay"), "{preview}");
    assert!(env.ledger().is_empty(), "a preview moves nothing");
    shot(&c, "replay-preview").await;
    c.find(Locator::XPath(
        "//button[contains(., 'Confirm the replay')]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    arrive(&c, "Replay: done").await;
    assert!(text(&c).await.contains("<td>replayed</td>"));
    env.run_until_idle().await;
    let ledger = env.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:#?}");
    assert_eq!(
        (ledger[0].payment_id.as_str(), ledger[0].amount),
        ("pi_browser_1", 500)
    );
    assert!(env.dead_letters_kept().await.is_empty());

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
    c.find(Locator::Css(
        "form[action='/providers/stripe/pause'] button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("form[action='/providers/stripe/resume']"))
        .await
        .unwrap();
    assert!(text(&c).await.contains("paused by ana"));
    let listed = crate::ops::cli_ok(&env, &["provider", "list"]).await;
    assert!(listed.contains("INC-9"), "{listed}");
    c.find(Locator::Css(
        "form[action='/providers/stripe/resume'] button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
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
    assert!(audit.contains("Intact: 3 entries verified"), "{audit}");
    for action in ["dlq replay", "provider pause", "provider resume"] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    shot(&c, "audit").await;
    c.goto(&format!("{url}/mandates")).await.unwrap();
    shot(&c, "mandates").await;
    c.close().await.unwrap();
    let _ = std::fs::remove_file(&config);
    env.cleanup().await;
}
