//! `refund-worker audit list|verify`, and [`record`]: how every operator action of the CLI
//! lands in the audit log (who, when, what, the preview shown, the result).

use serde_json::Value;

use super::{CommandError, Context, runtime};
use crate::{
    cli::{AuditArgs, AuditCommand},
    governance::audit::{Action, Entry},
    signing::KeyPair,
    store::{self, AuditLog},
};

/// Opens the audit log of the context's prefix (signed with the receipts key).
pub async fn open(ctx: &Context) -> Result<AuditLog, CommandError> {
    let key = KeyPair::from_seed(&ctx.settings.receipts.signing_key, "[receipts] signing_key")
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let conn = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    Ok(AuditLog::new(conn, &ctx.connections.prefix, key))
}

/// Records an action this CLI run carried out. The action is already done, so a log that
/// cannot be written is an error that says so (exit 1), never silence.
pub async fn record(
    ctx: &Context,
    action: &str,
    target: Value,
    preview: Value,
    result: Value,
) -> Result<Entry, CommandError> {
    record_as(ctx, &ctx.operator, action, target, preview, result).await
}

/// Records an action `operator` carried out (the console passes the signed-in operator).
pub async fn record_as(
    ctx: &Context,
    operator: &super::Operator,
    action: &str,
    target: Value,
    preview: Value,
    result: Value,
) -> Result<Entry, CommandError> {
    let entry = Action {
        who: operator.who.clone(),
        via: operator.via.to_owned(),
        action: action.to_owned(),
        target,
        preview,
        result,
    };
    let log = open(ctx).await?;
    log.append(entry).await.map_err(|e| {
        CommandError::Runtime(format!(
            "{action} was carried out, but could not be recorded in the audit log: {e}"
        ))
    })
}

/// Runs an `audit` subcommand.
pub async fn run(ctx: &Context, args: AuditArgs) -> Result<(), CommandError> {
    let log = open(ctx).await?;
    match args.command {
        AuditCommand::List { limit, json } => {
            let entries = log.list(limit).await.map_err(runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).map_err(runtime)?
                );
                return Ok(());
            }
            if entries.is_empty() {
                println!("no audit entries under prefix {}", ctx.connections.prefix);
            }
            for e in &entries {
                println!(
                    "{:>5}  {}  {:<24} {:<8} {:<16} {}  => {}",
                    e.seq,
                    e.at,
                    e.action.who,
                    e.action.via,
                    e.action.action,
                    e.action.target,
                    e.action.result
                );
            }
            Ok(())
        }
        AuditCommand::Verify { json } => {
            let report = log.verify().await.map_err(runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(runtime)?
                );
            } else {
                for (seq, what) in &report.problems {
                    match seq {
                        0 => println!("log: {what}"),
                        seq => println!("entry {seq}: {what}"),
                    }
                }
            }
            if report.is_intact() {
                if !json {
                    println!("audit log intact: {} entries verified", report.checked);
                }
                Ok(())
            } else {
                Err(CommandError::Runtime(format!(
                    "the audit log is not intact: {} problem(s)",
                    report.problems.len()
                )))
            }
        }
    }
}
