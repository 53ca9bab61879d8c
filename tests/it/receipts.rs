//! Sealed receipts against the real Redis: many workers appending to one chain, sealing once
//! per idempotency key, and every kind of tampering found and named; the CLI an auditor uses.

use std::collections::BTreeMap;

use redis::{AsyncCommands, aio::ConnectionManager};
use refund_worker::{
    config::Secret,
    governance::receipt::{ChainReport, GENESIS, Receipt, ReceiptBody, mask_card, mask_pix_key},
    signing::KeyPair,
    store::{self, ReceiptChain},
};
use serde_json::json;
use tokio::process::Command;

use crate::helpers::{REDIS_URL, TestEnv, binary};

fn key(env: &TestEnv) -> KeyPair {
    KeyPair::from_seed(&env.settings.receipts.signing_key, "[receipts] signing_key").unwrap()
}

async fn redis() -> ConnectionManager {
    store::connect(REDIS_URL)
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (see README)")
}

async fn chain(env: &TestEnv) -> ReceiptChain {
    ReceiptChain::new(redis().await, env.prefix(), key(env))
}

/// The receipt of job `job-<n>`: a governed Pix refund of R$ 186.00 + n centavos.
fn body(n: u64) -> ReceiptBody {
    ReceiptBody {
        job_id: format!("job-{n}"),
        idempotency_key: format!("refund:pix:E{n:06}:2026-01-02"),
        kind: if n.is_multiple_of(2) {
            "governed"
        } else {
            "bulk"
        }
        .into(),
        provider: "pix".into(),
        payment_id: format!("E{n:06}"),
        refund_id: format!("D{n:06}"),
        refund_status: "succeeded".into(),
        amount: 18_600 + n,
        currency: "BRL".into(),
        rail: if n.is_multiple_of(3) { "card" } else { "pix" }.into(),
        destination: Some(if n.is_multiple_of(3) {
            mask_card("4242")
        } else {
            mask_pix_key("payer@example.com")
        }),
        order_id: Some(format!("84{n:02}")),
        verification: Some(
            json!({"order_id": format!("84{n:02}"), "total": 18_600 + n, "paid": true}),
        ),
        mandate: Some(
            json!({"mandate_id": "cm_support", "agent_id": "support-bot", "day": "2026-01-02", "amount": 18_600 + n}),
        ),
        credit_note: Some(
            json!({"number": format!("NC-{n}"), "access_key": "35260112345678000190550010000000011000000019"}),
        ),
        notification: Some(json!({"channel": "whatsapp", "message_id": format!("msg-{n}")})),
        steps: BTreeMap::from([
            ("verified".into(), "2026-01-02T10:00:00.000Z".into()),
            ("refunded".into(), "2026-01-02T10:00:01.000Z".into()),
        ]),
    }
}

fn names(report: &ChainReport) -> Vec<(u64, Option<String>, String)> {
    report
        .problems
        .iter()
        .map(|p| (p.seq, p.job_id.clone(), p.what.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sealing_builds_one_unbroken_chain() {
    let env = TestEnv::start("receipts-concurrent").await;
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        // Each task is a worker of its own, with its own connection.
        let chain = chain(&env).await;
        tasks.push(tokio::spawn(async move {
            let mut sealed = Vec::new();
            for i in 0..25 {
                sealed.push(chain.seal(body(worker * 100 + i)).await.unwrap());
            }
            sealed
        }));
    }
    // An auditor verifying while the workers seal sees an intact (shorter) chain each time.
    let auditor = chain(&env).await;
    let audits = tokio::spawn(async move {
        let mut reports = Vec::new();
        loop {
            let report = auditor.verify().await.unwrap();
            let done = report.checked == 200;
            reports.push(report);
            if done {
                return reports;
            }
        }
    });
    let mut sealed = Vec::new();
    for task in tasks {
        sealed.extend(task.await.unwrap());
    }
    let audits = audits.await.unwrap();
    assert!(audits.len() > 1, "the audit ran while sealing");
    for report in &audits {
        assert!(
            report.is_intact(),
            "mid-sealing audit of {}: {:?}",
            report.checked,
            report.problems
        );
    }

    let chain = chain(&env).await;
    let stored = chain.stored().await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let mut by_seq: Vec<u64> = sealed.iter().map(|r| r.seq).collect();
    by_seq.sort_unstable();
    assert_eq!(by_seq, seqs, "every seal returned its own position");
    for receipt in &sealed {
        assert_eq!(stored[receipt.seq as usize - 1].1, receipt.to_text());
    }
    let report = chain.verify().await.unwrap();
    assert_eq!(
        report,
        ChainReport {
            checked: 200,
            problems: vec![],
            signed_individually: 0,
            signed_per_group: 200,
        }
    );
    let last = Receipt::parse(&stored[199].1).unwrap();
    assert_eq!(chain.head().await.unwrap(), Some((200, last.hash)));
    assert_eq!(Receipt::parse(&stored[0].1).unwrap().prev_hash, GENESIS);

    chain.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_twice_for_one_key_appends_once() {
    let env = TestEnv::start("receipts-once").await;
    let chain = chain(&env).await;
    chain.seal(body(1)).await.unwrap();
    let first = chain.seal(body(2)).await.unwrap();

    // A retried job seals again later, with new step times: the first receipt stands.
    let mut retried = body(2);
    retried
        .steps
        .insert("refunded".into(), "2026-01-02T11:00:00.000Z".into());
    assert_eq!(chain.seal(retried).await.unwrap(), first);

    // Redelivered copies on several workers at once.
    let mut racers = Vec::new();
    for _ in 0..6 {
        let other = ReceiptChain::new(redis().await, env.prefix(), key(&env));
        racers.push(tokio::spawn(
            async move { other.seal(body(3)).await.unwrap() },
        ));
    }
    let mut raced = Vec::new();
    for racer in racers {
        raced.push(racer.await.unwrap());
    }
    assert!(raced.iter().all(|r| *r == raced[0]), "{raced:#?}");
    assert_eq!(raced[0].seq, 3);

    assert_eq!(chain.stored().await.unwrap().len(), 3);
    assert_eq!(
        chain.by_key(&body(2).idempotency_key).await.unwrap(),
        Some(first)
    );
    assert_eq!(chain.by_key("never-sealed").await.unwrap(), None);
    assert!(chain.verify().await.unwrap().is_intact());

    chain.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_concurrent_and_cancelled_seals_seal_each_key_once() {
    let env = TestEnv::start("receipts-grouped").await;
    // Three processes' chains; within each, many jobs seal at once and are grouped.
    let chains = [chain(&env).await, chain(&env).await, chain(&env).await];
    let mut tasks = Vec::new();
    let mut cancelled = Vec::new();
    for (p, chain) in chains.iter().enumerate() {
        for i in 0..150u64 {
            // Keys 0..49 are sealed by every process (redelivered copies racing); the others
            // by one process only.
            let n = if i < 50 {
                i
            } else {
                1_000 * (p as u64 + 1) + i
            };
            let chain = chain.clone();
            let task = tokio::spawn(async move { (n, chain.seal(body(n)).await.unwrap()) });
            if i % 17 == 5 {
                cancelled.push((n, task));
            } else {
                tasks.push(task);
            }
        }
    }
    // Cancel some seals mid-flight: the turn-holder among them may be cut off mid-append.
    tokio::task::yield_now().await;
    for (_, task) in &cancelled {
        task.abort();
    }
    let mut sealed: BTreeMap<u64, Receipt> = BTreeMap::new();
    for task in tasks {
        let (n, receipt) = task.await.unwrap();
        assert_eq!(receipt.body.idempotency_key, body(n).idempotency_key);
        if let Some(earlier) = sealed.insert(n, receipt.clone()) {
            assert_eq!(earlier, receipt, "one receipt per key, whoever sealed it");
        }
    }
    for (_, task) in cancelled {
        if let Ok((n, receipt)) = task.await {
            assert_eq!(receipt.body.idempotency_key, body(n).idempotency_key);
        }
    }

    let chain = chain(&env).await;
    let stored = chain.stored().await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let mut keys: Vec<String> = stored
        .iter()
        .map(|(_, text)| Receipt::parse(text).unwrap().body.idempotency_key)
        .collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "a key was sealed twice");
    for (n, receipt) in &sealed {
        assert_eq!(
            stored[receipt.seq as usize - 1].1,
            receipt.to_text(),
            "job {n}'s receipt is the stored one"
        );
    }
    // Every seal that finished is stored; cancelled ones at most once (already checked).
    assert!(
        stored.len() >= sealed.len(),
        "{} < {}",
        stored.len(),
        sealed.len()
    );
    assert!(chain.verify().await.unwrap().is_intact());

    chain.delete_all().await.unwrap();
    env.cleanup().await;
}

/// A byte of the stored text changed to another printable byte.
fn flip(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = match bytes[at] {
        b'0'..=b'8' => bytes[at] + 1,
        b'9' => b'0',
        b if b.is_ascii_alphabetic() => b ^ 0x20,
        b'#' => b'$',
        _ => b'#',
    };
    String::from_utf8(bytes).expect("ASCII stays UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_any_byte_of_a_stored_receipt_makes_verify_fail_and_name_it() {
    let env = TestEnv::start("receipts-tamper").await;
    let chain = chain(&env).await;
    for n in 1..=10 {
        chain.seal(body(n)).await.unwrap();
    }
    let mut conn = redis().await;
    let keys = chain.keys().clone();
    let stored = chain.stored().await.unwrap();
    let original = stored[3].1.clone();
    assert!(original.is_ascii());
    let index: BTreeMap<String, String> = conn.hgetall(&keys.index).await.unwrap();
    assert_eq!(chain.verify().await.unwrap().checked, 10);

    // Named edits.
    let field = |name: &str| original.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "amount digit",
            flip(&original, field("amount") + 1),
            "edited (hash mismatch)",
        ),
        (
            "refund id",
            original.replace("\"D000004\"", "\"D000005\""),
            "edited (hash mismatch)",
        ),
        (
            "hash",
            flip(&original, field("hash") + 5),
            "edited (hash mismatch)",
        ),
        (
            "signature",
            flip(&original, field("signature") + 9),
            "signature invalid",
        ),
        (
            "prev_hash",
            flip(&original, field("prev_hash") + 20),
            "edited (hash mismatch)",
        ),
        (
            "whitespace",
            original.replacen(",", ", ", 1),
            "edited (stored text differs from the sealed form)",
        ),
        (
            "trailing newline",
            format!("{original}\n"),
            "edited (stored text differs from the sealed form)",
        ),
    ];
    for (what, edited, expected) in cases {
        assert_ne!(edited, original, "{what}");
        let _: () = conn.hset(&keys.chain, 4, &edited).await.unwrap();
        let report = chain.verify().await.unwrap();
        let found = names(&report);
        assert!(
            found.contains(&(4, Some("job-4".into()), expected.into())),
            "{what}: {found:?}"
        );
        let _: () = conn.hset(&keys.chain, 4, &original).await.unwrap();
    }
    assert!(chain.verify().await.unwrap().is_intact());

    // Any byte at all: every 11th position, each changed alone.
    for at in (0..original.len()).step_by(11) {
        let edited = flip(&original, at);
        let _: () = conn.hset(&keys.chain, 4, &edited).await.unwrap();
        let report = chain.verify().await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.seq == 4),
            "byte {at} ({:?} → {:?}) went unnoticed: {:?}",
            &original[at..=at],
            &edited[at..=at],
            report.problems
        );
        // A changed hash also breaks the next link; nothing else is blamed.
        assert!(
            report.problems.iter().all(|p| p.seq == 4 || p.seq == 5),
            "{:?}",
            report.problems
        );
    }
    let _: () = conn.hset(&keys.chain, 4, &original).await.unwrap();

    // Deleted.
    let _: () = conn.hdel(&keys.chain, 4).await.unwrap();
    assert_eq!(
        names(&chain.verify().await.unwrap()),
        vec![(4, None, "missing (deleted?)".into())]
    );
    let _: () = conn.hset(&keys.chain, 4, &original).await.unwrap();

    // The last one deleted: the head still knows it existed.
    let _: () = conn.hdel(&keys.chain, 10).await.unwrap();
    assert_eq!(
        names(&chain.verify().await.unwrap()),
        vec![(10, None, "missing (deleted?)".into())]
    );
    let _: () = conn.hset(&keys.chain, 10, &stored[9].1).await.unwrap();

    // Inserted: a forgery linked to the head, signed with another key.
    let forger = KeyPair::from_seed(&Secret::new("66".repeat(32)), "forger").unwrap();
    let last_hash = Receipt::parse(&stored[9].1).unwrap().hash;
    let forged = Receipt::seal(11, last_hash, body(99), &forger);
    let _: () = conn.hset(&keys.chain, 11, forged.to_text()).await.unwrap();
    let found = names(&chain.verify().await.unwrap());
    assert!(
        found.contains(&(
            11,
            Some("job-99".into()),
            "inserted (after the chain head, receipt 10)".into()
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(11, Some("job-99".into()), "signature invalid".into())),
        "{found:?}"
    );
    let _: () = conn.hdel(&keys.chain, 11).await.unwrap();

    // Swapped.
    let _: () = conn.hset(&keys.chain, 3, &stored[5].1).await.unwrap();
    let _: () = conn.hset(&keys.chain, 6, &stored[2].1).await.unwrap();
    let found = names(&chain.verify().await.unwrap());
    assert!(
        found.contains(&(
            3,
            Some("job-6".into()),
            "moved: stored as receipt 3 but sealed as receipt 6".into()
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            6,
            Some("job-3".into()),
            "moved: stored as receipt 6 but sealed as receipt 3".into()
        )),
        "{found:?}"
    );
    let _: () = conn.hset(&keys.chain, 3, &stored[2].1).await.unwrap();
    let _: () = conn.hset(&keys.chain, 6, &stored[5].1).await.unwrap();

    // Its position renamed ("04"): missing, and a stray entry.
    let _: () = conn.hdel(&keys.chain, 4).await.unwrap();
    let _: () = conn.hset(&keys.chain, "04", &original).await.unwrap();
    let found = names(&chain.verify().await.unwrap());
    assert!(
        found.contains(&(4, None, "missing (deleted?)".into())),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(seq, _, what)| *seq == 0 && what.contains("\"04\"")),
        "{found:?}"
    );
    let _: () = conn.hdel(&keys.chain, "04").await.unwrap();
    let _: () = conn.hset(&keys.chain, 4, &original).await.unwrap();

    // The head rewritten, and an index entry lost.
    let _: () = conn
        .hset(&keys.head, "hash", "ab".repeat(32))
        .await
        .unwrap();
    let found = names(&chain.verify().await.unwrap());
    assert!(
        found
            .iter()
            .any(|(seq, _, what)| *seq == 10 && what.contains("head")),
        "{found:?}"
    );
    let last = Receipt::parse(&stored[9].1).unwrap();
    let _: () = conn.hset(&keys.head, "hash", &last.hash).await.unwrap();
    let _: () = conn
        .hdel(&keys.index, &body(7).idempotency_key)
        .await
        .unwrap();
    let found = names(&chain.verify().await.unwrap());
    assert!(
        found
            .iter()
            .any(|(seq, _, what)| *seq == 7 && what.contains("index")),
        "{found:?}"
    );
    let _: () = conn
        .hset(
            &keys.index,
            &body(7).idempotency_key,
            index[&body(7).idempotency_key].clone(),
        )
        .await
        .unwrap();

    // Everything restored: intact again, and the chain still takes receipts.
    assert!(chain.verify().await.unwrap().is_intact());
    assert_eq!(chain.seal(body(11)).await.unwrap().seq, 11);
    assert!(chain.verify().await.unwrap().is_intact());

    chain.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_verifies_an_export_offline_and_any_edit_fails_it() {
    let env = TestEnv::start("receipts-cli").await;
    let chain = chain(&env).await;
    for n in 1..=5 {
        chain.seal(body(n)).await.unwrap();
    }
    let run = |args: &[&str]| {
        let mut command = Command::new(binary());
        command
            .args(["receipts"])
            .args(args)
            .envs(env.child_env())
            .env("RUST_LOG", "warn");
        async move {
            let output = command.output().await.expect("refund-worker runs");
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };

    let (code, out, _) = run(&["public-key"]).await;
    assert_eq!(code, Some(0));
    let public = out.trim().to_owned();
    assert_eq!(public.len(), 64);
    assert!(public.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(public, key(&env).public_hex());

    let (code, out, err) = run(&["verify"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("5 receipts verified, chain intact"), "{out}");
    assert!(
        out.contains("formats: 0 signed one by one (format 1), 5 signed per group (format 2"),
        "{out}"
    );

    let dir = std::env::temp_dir().join(format!("{}-export", env.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("receipts.jsonl");
    let path = file.to_str().unwrap();
    let (code, _, err) = run(&["export", "--out", path]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("exported 5 receipts"), "{err}");
    let announced = err.clone();
    let exported = std::fs::read_to_string(&file).unwrap();
    let stored: Vec<String> = chain
        .stored()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        exported,
        format!("{}\n", stored.join("\n")),
        "one receipt per line, as stored"
    );

    let (code, out, err) = run(&["verify", "--file", path, "--public-key", &public]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("5 receipts verified, chain intact"), "{out}");

    // An export from before group seals (format 1, a signature per receipt) still verifies.
    let legacy_file = dir.join("legacy.jsonl");
    let mut prev = GENESIS.to_owned();
    let mut legacy = String::new();
    for n in 1..=3 {
        let receipt = Receipt::seal(n, prev, body(n), &key(&env));
        prev = receipt.hash.clone();
        legacy.push_str(&receipt.to_text());
        legacy.push('\n');
    }
    std::fs::write(&legacy_file, legacy).unwrap();
    let legacy_path = legacy_file.to_str().unwrap();
    let (code, out, err) = run(&["verify", "--file", legacy_path, "--public-key", &public]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("formats: 3 signed one by one (format 1), 0 signed per group"),
        "{out}"
    );

    // One byte of the file changed: the amount of receipt 3.
    let tampered = exported.replacen("\"amount\":18603", "\"amount\":18609", 1);
    assert_ne!(tampered, exported);
    std::fs::write(&file, &tampered).unwrap();
    let (code, out, err) = run(&["verify", "--file", path, "--public-key", &public]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("receipt 3 (job job-3): edited (hash mismatch)"),
        "{out}"
    );
    assert!(err.contains("NOT intact"), "{err}");

    // A line deleted.
    let lines: Vec<&str> = exported.lines().collect();
    std::fs::write(&file, format!("{}\n{}\n", lines[..3].join("\n"), lines[4])).unwrap();
    let (code, out, _) = run(&["verify", "--file", path, "--public-key", &public]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("receipt 4: missing (deleted?)"), "{out}");

    // Cut short by its last line: it verifies on its own, but not against the head the
    // export announced.
    let head_hash = announced
        .rsplit("hash ")
        .next()
        .unwrap()
        .trim_end_matches([')', '\n'])
        .to_owned();
    assert_eq!(head_hash.len(), 64, "{announced}");
    std::fs::write(&file, format!("{}\n", lines[..4].join("\n"))).unwrap();
    let (code, out, _) = run(&["verify", "--file", path, "--public-key", &public]).await;
    assert_eq!(code, Some(0), "a prefix of a chain is a chain: {out}");
    let (code, out, err) = run(&[
        "verify",
        "--file",
        path,
        "--public-key",
        &public,
        "--head",
        &head_hash,
        "--count",
        "5",
    ])
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("not at the expected head {head_hash}"))
            && out.contains("holds 4 receipts, not the expected 5"),
        "{out}"
    );
    let (code, out, _) = run(&[
        "verify",
        "--file",
        path,
        "--public-key",
        &public,
        "--head",
        &head_hash,
        "--json",
    ])
    .await;
    assert_eq!(code, Some(1));
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdict["intact"], false);
    assert_eq!(verdict["checked"], 4);
    assert_eq!(verdict["head"]["seq"], 4);
    // Whole again, it ends where announced.
    std::fs::write(&file, &exported).unwrap();
    let (code, out, _) = run(&[
        "verify",
        "--file",
        path,
        "--public-key",
        &public,
        "--head",
        &head_hash,
        "--count",
        "5",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the chain ends where expected"), "{out}");

    // Someone else's key does not verify it.
    std::fs::write(&file, &exported).unwrap();
    let stranger = KeyPair::from_seed(&Secret::new("77".repeat(32)), "stranger").unwrap();
    let (code, out, _) = run(&[
        "verify",
        "--file",
        path,
        "--public-key",
        &stranger.public_hex(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(out.contains("signature invalid"), "{out}");
    let (code, _, err) = run(&["verify", "--file", path, "--public-key", "abc"]).await;
    assert_eq!(code, Some(2), "{err}");

    // Tampering in Redis fails `verify` against Redis, naming the receipt.
    let mut conn = redis().await;
    let edited = stored[1].replacen("\"D000002\"", "\"D000003\"", 1);
    let _: () = conn.hset(&chain.keys().chain, 2, edited).await.unwrap();
    let (code, out, _) = run(&["verify"]).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("receipt 2 (job job-2): edited (hash mismatch)"),
        "{out}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    chain.delete_all().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn all_chain_keys_share_one_hash_tag_and_never_expire() {
    let env = TestEnv::start("receipts-keys").await;
    let chain = chain(&env).await;
    for n in 1..=3 {
        chain.seal(body(n)).await.unwrap();
    }
    let mut conn = redis().await;
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*", env.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let receipt_keys: Vec<&String> = found.iter().filter(|k| k.contains("receipts")).collect();
    // chain, head, index, and the spend tallies of mandate reservations.
    assert_eq!(receipt_keys.len(), 4, "{found:?}");
    let tag = format!("{}:receipts", env.prefix());
    for key in receipt_keys {
        let open = key.find('{').expect("a hash tag");
        let close = open + key[open..].find('}').expect("a closed hash tag");
        assert_eq!(&key[open + 1..close], tag, "{key}");
        let ttl: i64 = conn.ttl(key).await.unwrap();
        assert_eq!(ttl, -1, "{key} must not expire");
    }
    let keys = chain.keys();
    for key in [&keys.chain, &keys.head, &keys.index] {
        assert!(key.starts_with(&format!("{{{tag}}}:")), "{key}");
    }

    chain.delete_all().await.unwrap();
    env.cleanup().await;
}
