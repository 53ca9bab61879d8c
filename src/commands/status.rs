//! `refund-worker status`: where one job stands — its idempotency record (state, refund,
//! why it ended), its sealed receipt and any dead letter of it — found by job id, payment,
//! order or key.

use serde_json::{Value, json};

use super::{CommandError, Context, runtime};
use crate::{
    cli::StatusArgs,
    governance::receipt::Receipt,
    job::{IdempotencyKey, JobDate},
    signing::KeyPair,
    store::{self, ReceiptChain},
};

/// Dead letters searched.
const READ_LIMIT: usize = 10_000;

/// Runs `status`.
pub async fn run(ctx: &Context, args: StatusArgs) -> Result<(), CommandError> {
    let date = match &args.date {
        Some(text) => {
            JobDate::parse(text).map_err(|e| CommandError::Usage(format!("--date {e}")))?
        }
        None => JobDate::today(),
    };
    let key_text = match (&args.key, &args.payment, &args.order) {
        (Some(key), _, _) => Some(key.clone()),
        (None, Some(payment), _) => Some(format!("{payment}:{date}")),
        (None, None, Some(order)) => Some(format!("order:{order}:{date}")),
        _ => None,
    };
    let conn = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    let receipt_key =
        KeyPair::from_seed(&ctx.settings.receipts.signing_key, "[receipts] signing_key")
            .map_err(|e| CommandError::Usage(e.to_string()))?;
    let chain = ReceiptChain::new(conn, &ctx.connections.prefix, receipt_key);

    // By job id: its receipt names its key.
    let mut receipt: Option<Receipt> = None;
    let key_text = match (key_text, &args.job_id) {
        (Some(key), _) => Some(key),
        (None, Some(job_id)) => {
            chain
                .read_each(|_, text| {
                    if let Ok(r) = Receipt::parse(&text)
                        && r.body.job_id == *job_id
                    {
                        receipt = Some(r);
                    }
                })
                .await
                .map_err(runtime)?;
            receipt.as_ref().map(|r| r.body.idempotency_key.clone())
        }
        (None, None) => None,
    };
    let key = match &key_text {
        Some(text) => {
            Some(IdempotencyKey::parse(text).map_err(|e| CommandError::Usage(format!("key {e}")))?)
        }
        None => None,
    };
    let mut out = json!({ "key": key_text, "record": null, "receipt": null, "dead_letters": [] });
    if let Some(key) = &key {
        let store = ctx
            .connections
            .idempotency_store(&ctx.settings)
            .await
            .map_err(runtime)?;
        if let Some(record) = store.get(key).await.map_err(runtime)? {
            out["record"] = json!({
                "state": record.state.as_str(),
                "provider": record.result.as_ref().map(|r| r.provider.to_string()),
                "refund_id": record.result.as_ref().map(|r| r.refund.refund_id.clone()),
                "amount": record.result.as_ref().map(|r| r.refund.amount),
                "uncertain": record.uncertain,
                "claims": record.claims,
                "reason": record.reason,
            });
        }
        if receipt.is_none() {
            receipt = chain.by_key(key.as_str()).await.map_err(runtime)?;
        }
    }
    if let Some(r) = &receipt {
        out["receipt"] = json!({
            "seq": r.seq,
            "sealed_at": r.sealed_at,
            "hash": r.hash,
            "kind": r.body.kind,
            "job_id": r.body.job_id,
            "refund_id": r.body.refund_id,
            "amount": r.body.amount,
            "currency": r.body.currency,
            "steps": r.body.steps,
        });
    }
    out["dead_letters"] = Value::Array(dead_letters(ctx, &args).await?);

    if args.json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(runtime)?);
        return Ok(());
    }
    let line = |k: &str, v: String| println!("{k:<14} {v}");
    line(
        "key",
        key_text
            .clone()
            .unwrap_or_else(|| "unknown (no receipt names this job id)".into()),
    );
    match &out["record"] {
        Value::Null => line("record", "none (never claimed, or expired)".into()),
        r => {
            line("state", r["state"].as_str().unwrap_or("").to_owned());
            if let Some(id) = r["refund_id"].as_str() {
                line(
                    "refund",
                    format!("{id} at {}", r["provider"].as_str().unwrap_or("?")),
                );
            }
            if let Some(reason) = r["reason"].as_str().filter(|t| !t.is_empty()) {
                line("reason", reason.to_owned());
            }
        }
    }
    match &out["receipt"] {
        Value::Null => line("receipt", "none".into()),
        r => line(
            "receipt",
            format!(
                "#{} sealed {} ({})",
                r["seq"],
                r["sealed_at"].as_str().unwrap_or(""),
                r["kind"].as_str().unwrap_or("")
            ),
        ),
    }
    let letters = out["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        line("dead letter", "none".into());
    }
    for l in letters {
        line(
            "dead letter",
            format!(
                "{} [{}] {}",
                l["job_id"].as_str().unwrap_or(""),
                l["class"].as_str().unwrap_or("unknown"),
                l["error"].as_str().unwrap_or("")
            ),
        );
    }
    Ok(())
}

/// The dead letters of the job asked about (by job id, payment or order).
async fn dead_letters(ctx: &Context, args: &StatusArgs) -> Result<Vec<Value>, CommandError> {
    let open = super::dlq::OpenQueue::open(ctx, "refund-worker status", READ_LIMIT).await?;
    let queue = &open.queue;
    let order_of = |body: &[u8]| {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["order_id"].as_str().map(str::to_owned))
    };
    let found = queue
        .letters
        .iter()
        .filter(|l| {
            args.job_id.as_deref() == Some(l.job_id.as_str())
                || (args.payment.is_some() && l.payment_id == args.payment)
                || (args.order.is_some() && order_of(&l.body) == args.order)
        })
        .map(|l| {
            json!({
                "job_id": l.job_id,
                "class": l.class.map(|c| c.as_str()),
                "error": l.error,
                "sealed": l.envelope.seal.is_sealed(),
            })
        })
        .collect();
    open.close().await;
    Ok(found)
}
