//! `refund-worker provider pause|resume|list`: stop refunds to one provider during its
//! incident and let them go again. Every worker reads the pauses every second; a paused
//! provider's jobs wait in the retry tiers without spending attempts. Pauses and resumes are
//! recorded in the audit log.

use serde_json::{Value, json};

use super::{CommandError, Context, runtime};
use crate::{
    cli::{ProviderArgs, ProviderCommand},
    governance::mandate::rfc3339,
    job::ProviderName,
    store::{self, Controls, Pause},
};

/// Runs a `provider` subcommand.
pub async fn run(ctx: &Context, args: ProviderArgs) -> Result<(), CommandError> {
    let conn = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    let controls = Controls::new(conn, &ctx.connections.prefix);
    match args.command {
        ProviderCommand::Pause { provider, reason } => {
            let name = provider_name(&provider)?;
            if reason.trim().is_empty() || reason.len() > 500 {
                return Err(CommandError::Usage(
                    "--reason must say why, in at most 500 bytes".into(),
                ));
            }
            let pause = Pause {
                by: ctx.operator.who.clone(),
                at: rfc3339(time::OffsetDateTime::now_utc()),
                reason,
            };
            let paused = controls
                .pause(name.as_str(), &pause)
                .await
                .map_err(runtime)?;
            if !paused {
                let current = controls.paused().await.map_err(runtime)?;
                let by = current.get(name.as_str()).map(ToString::to_string);
                println!(
                    "{name} was already paused {}",
                    by.unwrap_or_else(|| "(and resumed meanwhile)".into())
                );
                return Ok(());
            }
            println!(
                "paused refunds to {name}: every worker holds its jobs within seconds, spending no attempts; `refund-worker provider resume {name}` lets them go"
            );
            super::audit::record(
                ctx,
                "provider pause",
                json!({ "provider": name.as_str() }),
                Value::Null,
                json!({ "paused": true, "reason": pause.reason }),
            )
            .await?;
            Ok(())
        }
        ProviderCommand::Resume { provider } => {
            let name = provider_name(&provider)?;
            let resumed = controls.resume(name.as_str()).await.map_err(runtime)?;
            if resumed {
                println!("resumed refunds to {name}: waiting jobs go at their next retry");
                super::audit::record(
                    ctx,
                    "provider resume",
                    json!({ "provider": name.as_str() }),
                    Value::Null,
                    json!({ "resumed": true }),
                )
                .await?;
            } else {
                println!("{name} was not paused");
            }
            Ok(())
        }
        ProviderCommand::List { json } => {
            let paused = controls.paused().await.map_err(runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&paused).map_err(runtime)?
                );
            } else if paused.is_empty() {
                println!("no provider is paused");
            } else {
                for (name, pause) in &paused {
                    println!("{name:<12} paused {pause}");
                }
            }
            Ok(())
        }
    }
}

fn provider_name(text: &str) -> Result<ProviderName, CommandError> {
    ProviderName::parse(text).map_err(|_| {
        CommandError::Usage(format!(
            "unknown provider {text:?}; one of {}",
            ProviderName::ALL_NAMES
        ))
    })
}
