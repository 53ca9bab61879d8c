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
        ProviderCommand::Pause {
            provider,
            reason,
            json,
        } => {
            let name = provider_name(&provider)?;
            let paused = pause(ctx, &ctx.operator, &controls, name, &reason).await?;
            let current = controls.paused().await.map_err(runtime)?;
            let standing = current.get(name.as_str());
            if json {
                let out = serde_json::json!({
                    "provider": name.as_str(),
                    "paused_now": paused,
                    "pause": standing,
                });
                println!("{}", serde_json::to_string_pretty(&out).map_err(runtime)?);
            } else if !paused {
                println!(
                    "{name} was already paused {}",
                    standing.map_or_else(|| "(and resumed meanwhile)".into(), ToString::to_string)
                );
            } else {
                println!(
                    "paused refunds to {name}: every worker holds its jobs within seconds, spending no attempts; `refund-worker provider resume {name}` lets them go"
                );
            }
            Ok(())
        }
        ProviderCommand::Resume { provider, json } => {
            let name = provider_name(&provider)?;
            let resumed = resume(ctx, &ctx.operator, &controls, name).await?;
            if json {
                let out = serde_json::json!({ "provider": name.as_str(), "resumed_now": resumed });
                println!("{}", serde_json::to_string_pretty(&out).map_err(runtime)?);
            } else if resumed {
                println!("resumed refunds to {name}: waiting jobs go at their next retry");
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

/// Pauses `name` as `operator` (the CLI's user or a console operator), and records it in the
/// audit log; `false` when it already was paused (the first pause stands, nothing recorded).
pub(crate) async fn pause(
    ctx: &Context,
    operator: &super::Operator,
    controls: &Controls,
    name: ProviderName,
    reason: &str,
) -> Result<bool, CommandError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(CommandError::Usage(
            "a pause must say why (--reason), in at most 500 bytes".into(),
        ));
    }
    let pause = Pause {
        by: operator.who.clone(),
        at: rfc3339(time::OffsetDateTime::now_utc()),
        reason: reason.to_owned(),
    };
    if !controls
        .pause(name.as_str(), &pause)
        .await
        .map_err(runtime)?
    {
        return Ok(false);
    }
    super::audit::record_as(
        ctx,
        operator,
        "provider pause",
        json!({ "provider": name.as_str() }),
        Value::Null,
        json!({ "paused": true, "reason": reason }),
    )
    .await?;
    Ok(true)
}

/// Resumes `name` as `operator`, and records it; `false` when it was not paused.
pub(crate) async fn resume(
    ctx: &Context,
    operator: &super::Operator,
    controls: &Controls,
    name: ProviderName,
) -> Result<bool, CommandError> {
    if !controls.resume(name.as_str()).await.map_err(runtime)? {
        return Ok(false);
    }
    super::audit::record_as(
        ctx,
        operator,
        "provider resume",
        json!({ "provider": name.as_str() }),
        Value::Null,
        json!({ "resumed": true }),
    )
    .await?;
    Ok(true)
}

/// A provider named on the command line, or a usage error that suggests the closest name.
pub(crate) fn provider_name(text: &str) -> Result<ProviderName, CommandError> {
    ProviderName::parse(text).map_err(|_| {
        let lower = text.to_ascii_lowercase();
        let closest = ProviderName::ALL
            .into_iter()
            .map(|p| (strsim::levenshtein(&lower, p.as_str()), p))
            .min_by_key(|(distance, _)| *distance)
            .filter(|(distance, p)| *distance <= 2.max(p.as_str().len() / 3));
        let hint = closest.map_or(String::new(), |(_, p)| format!(" (did you mean {p}?)"));
        CommandError::Usage(format!(
            "unknown provider {:?}{hint}; one of {}",
            crate::job::truncate(text, 40),
            ProviderName::ALL_NAMES
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_provider_gets_the_closest_name() {
        let said = |text: &str| provider_name(text).unwrap_err().to_string();
        assert!(
            said("strip").contains("did you mean stripe?"),
            "{}",
            said("strip")
        );
        assert!(said("MercadoPago").contains("did you mean mercadopago?"));
        assert!(said("mercado-pago").contains("did you mean mercadopago?"));
        assert!(said("pics").contains("did you mean pix?"));
        assert!(
            !said("paypal").contains("did you mean"),
            "{}",
            said("paypal")
        );
        assert!(said("paypal").contains("stripe, mercadopago, asaas, pix, rinne"));
        assert_eq!(provider_name("rinne").unwrap(), ProviderName::Rinne);
    }
}
