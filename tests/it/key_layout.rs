//! The Redis key layout is Redis Cluster safe: every key one script call (or pipeline) touches
//! maps to one hash slot, and different jobs' records spread over the slots instead of piling
//! onto one. The slot is computed here as the cluster spec defines it (CRC16/XMODEM of the
//! hash tag, or of the whole key, modulo 16384), over the very key lists the stores pass to
//! their scripts (`RecordKeys`, `MandateKeys`). A run against the real Redis then checks that
//! the keys a worker leaves behind are exactly the layout's.

use std::collections::BTreeSet;

use lapin::BasicProperties;
use refund_worker::{
    job::{IdempotencyKey, JobDate},
    outcome::Outcome,
    store::{self, MandateKeys, RecordKeys},
};
use serde_json::json;

use crate::helpers::{REDIS_URL, TestEnv, stripe_job};

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster slots keys by.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// What Redis Cluster hashes: the part between the first `{` and the next `}` when that is
/// not empty, else the whole key.
fn hashed_part(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The cluster slot of a key.
fn slot(key: &str) -> u16 {
    crc16(hashed_part(key).as_bytes()) % 16384
}

/// Fails unless every key maps to one slot.
fn one_slot(what: &str, keys: &[String]) {
    let slots: BTreeSet<u16> = keys.iter().map(|k| slot(k)).collect();
    assert_eq!(slots.len(), 1, "{what} spans slots {slots:?}: {keys:?}");
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).unwrap()
}

#[test]
fn slots_are_computed_as_the_cluster_spec_says() {
    assert_eq!(crc16(b"123456789"), 0x31C3, "the CRC16/XMODEM check value");
    // `CLUSTER KEYSLOT` answers from a real cluster.
    for (key, expected) in [
        ("foo", 12182),
        ("bar", 5061),
        ("hello", 866),
        ("somekey", 11058),
    ] {
        assert_eq!(slot(key), expected, "{key}");
    }
    // The hash tag rules of the spec, with its own examples.
    assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
    assert_eq!(slot("{user1000}.following"), slot("user1000"));
    assert_eq!(
        hashed_part("foo{}{bar}"),
        "foo{}{bar}",
        "an empty tag hashes the key"
    );
    assert_eq!(hashed_part("foo{{bar}}zap"), "{bar");
    assert_eq!(
        hashed_part("foo{bar}{zap}"),
        "bar",
        "only the first tag counts"
    );
}

#[test]
fn every_script_call_touches_one_slot() {
    let records = RecordKeys::new("refunds");
    let mandates = MandateKeys::new("refunds");
    let job_keys = [
        "pi_3Qx7:2026-11-24",
        "order:8421:2026-11-24",
        "second-refund:1",
        "E12345678202611241200abcdefghijk:2026-01-02",
        &"k".repeat(255),
    ];
    for text in job_keys {
        let k = key(text);
        let [record] = records.record_script(&k);
        assert_eq!(hashed_part(&record), text, "a record is slotted by its key");
        one_slot("a record script", &records.record_script(&k));
        one_slot("the legacy read", &records.legacy_read_pipeline(&k));
        for id in ["cm_support", "cm:layout.1", "m-1"] {
            let reserve = mandates.reserve_script(id, "2026-11-24", text);
            one_slot("mandate_reserve", &reserve);
            assert_eq!(hashed_part(&reserve[0]), id, "slotted by the mandate");
            one_slot(
                "mandate_release",
                &mandates.release_script(id, "2026-11-24", text),
            );
            one_slot("mandate_grant/revoke", &mandates.mandate_script(id));
        }
    }
    for job_id in ["job-1", "body-0123abcd", "a{b}c", "}{"] {
        one_slot("pin_date", &records.pin_date_script(job_id));
    }
    one_slot(
        "the order refund pipeline",
        &records.order_refund_pipeline("8421"),
    );
}

#[test]
fn records_of_different_jobs_spread_over_the_slots() {
    let records = RecordKeys::new("refunds");
    let day = JobDate::parse("2026-11-24").unwrap();
    let slots: BTreeSet<u16> = (0..2000)
        .map(|i| {
            let k = key(&format!("pi_{i:06}:{day}"));
            slot(&records.record(&k))
        })
        .collect();
    // 2000 keys over 16384 slots: about 1880 distinct ones if they spread like random.
    assert!(
        slots.len() > 1800,
        "only {} slots for 2000 jobs",
        slots.len()
    );
    // The namespace is not the tag: one job lands on the same slot in every namespace, and
    // the mandates of one namespace do not share a slot either.
    let k = key("pi_1:2026-11-24");
    assert_eq!(
        slot(&RecordKeys::new("refunds").record(&k)),
        slot(&RecordKeys::new("it-other-prefix").record(&k))
    );
    let mandates = MandateKeys::new("refunds");
    let mandate_slots: BTreeSet<u16> = (0..200)
        .map(|i| slot(&mandates.mandate(&format!("cm_{i}"))))
        .collect();
    assert!(mandate_slots.len() > 180, "{}", mandate_slots.len());
}

/// Every key under the prefix, from the real Redis.
async fn keys_under(prefix: &str) -> BTreeSet<String> {
    let mut conn = store::connect(REDIS_URL).await.unwrap();
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn the_keys_a_worker_leaves_in_redis_are_the_layouts() {
    let env = TestEnv::start("key-layout").await;
    let today = JobDate::today();
    env.publish_json(&[
        stripe_job("pi_layout_1", 100),
        stripe_job("pi_layout_declined", 100),
    ])
    .await;
    // No date and no timestamp: the worker pins the day it first saw the job, to its message
    // id and to its body.
    let undated = serde_json::to_vec(
        &json!({"payment_id": "pi_layout_2", "amount": 100, "provider": "stripe"}),
    )
    .unwrap();
    env.publish_raw(
        &undated,
        BasicProperties::default().with_message_id("job-layout-nodate".into()),
    )
    .await;
    env.run_until_idle().await;

    let records = RecordKeys::new(env.prefix());
    let mut expected: BTreeSet<String> = ["pi_layout_1", "pi_layout_declined", "pi_layout_2"]
        .iter()
        .map(|p| records.record(&key(&format!("{p}:{today}"))))
        .collect();
    expected.insert(records.job_date("job-layout-nodate"));
    expected.insert(records.job_date(&refund_worker::broker::envelope::body_id(&undated)));
    expected.insert(records.dead_letter_amounts());
    assert_eq!(keys_under(env.prefix()).await, expected);
    env.cleanup().await;
}

#[tokio::test]
async fn a_record_from_before_the_hash_tag_is_adopted_and_nothing_is_refunded_again() {
    let env = TestEnv::start("key-legacy").await;
    let job = stripe_job("pi_legacy_1", 2500);
    env.publish_json(std::slice::from_ref(&job)).await;
    env.run_until_idle().await;
    assert_eq!(env.refund_posts(), 1);

    // Make it look as an older version left it: the same record under the untagged key.
    let records = RecordKeys::new(env.prefix());
    let k = key(&format!("pi_legacy_1:{}", JobDate::today()));
    let mut conn = store::connect(REDIS_URL).await.unwrap();
    let _: () = redis::cmd("RENAME")
        .arg(records.record(&k))
        .arg(records.legacy_record(&k))
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(records.legacy_record(&k))
        .query_async(&mut conn)
        .await
        .unwrap();

    env.publish_json(&[job]).await;
    let run = env.run_until_idle().await;
    assert_eq!(run.reports.len(), 1);
    assert_eq!(
        run.reports[0].outcome,
        Outcome::Duplicate,
        "{:?}",
        run.reports
    );
    assert_eq!(env.refund_posts(), 1, "nothing sent to the provider again");
    assert_eq!(env.ledger().len(), 1);

    let found = keys_under(env.prefix()).await;
    assert!(found.contains(&records.record(&k)), "{found:?}");
    assert!(
        !found.contains(&records.legacy_record(&k)),
        "the old key is gone"
    );
    let ttl_after: i64 = redis::cmd("PTTL")
        .arg(records.record(&k))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl_after > 0 && ttl_after <= ttl_before,
        "the adopted record keeps the time it had left ({ttl_after} of {ttl_before} ms)"
    );
    let record = env.record(k.as_str()).await.unwrap();
    assert_eq!(record.state, refund_worker::store::RecordState::Done);
    env.cleanup().await;
}
