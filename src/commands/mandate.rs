//! `refund-worker mandate grant|revoke|show|list`: finance's spend mandates (SPEC §5).
//!
//! `grant` and `revoke` sign a new version with finance's `[mandates] signing_key` (only where
//! finance runs them); `show` and `list` verify every mandate with `[mandates] verify_keys`, so
//! an operator sees at once a mandate edited behind the tool's back.

use serde::Serialize;
use time::OffsetDateTime;

use super::{CommandError, Context, runtime};
use crate::{
    cli::{MandateArgs, MandateCommand},
    governance::mandate::{MAX_CAP, Terms, parse_rfc3339, rfc3339},
    job::{Currency, JobDate, Token, format_money},
    signing::{KeyPair, VerifyKeys},
    store::{self, MandateStore, StoredMandate},
};

/// Runs a `mandate` subcommand.
pub async fn run(ctx: &Context, args: MandateArgs) -> Result<(), CommandError> {
    // Keys are checked before Redis is reached: a bad key is a configuration error (2).
    let verify =
        VerifyKeys::from_hex_list(&ctx.settings.mandates.verify_keys, "[mandates] verify_keys")
            .map_err(|e| CommandError::Usage(e.to_string()))?;
    match args.command {
        MandateCommand::Grant {
            id,
            agent,
            max_per_refund,
            max_per_day,
            currency,
            expires,
            publishers,
            replace,
        } => {
            let key = finance_key(ctx, "grant")?;
            let now = OffsetDateTime::now_utc();
            let grant = GrantRequest::parse(
                &id,
                &agent,
                max_per_refund,
                max_per_day,
                &currency,
                expires.as_deref(),
                now,
            )?;
            let terms = grant.with_publishers(publishers)?;
            let store = open(ctx).await?;
            if store
                .get(terms.id.as_str())
                .await
                .map_err(runtime)?
                .is_some()
                && !replace
            {
                return Err(CommandError::Usage(format!(
                    "mandate {} exists; pass --replace to grant a new version of it (`mandate show {}` shows the current one)",
                    terms.id, terms.id
                )));
            }
            let mandate = store
                .grant_terms(terms, &key, &rfc3339(now))
                .await
                .map_err(runtime)?;
            println!(
                "granted mandate {} (version {}) to agent {}, spent by {}: up to {} per refund, {} per day, expires {} (signed by {})",
                mandate.id,
                mandate.version,
                mandate.agent_id,
                mandate.publishers.join(", "),
                money(mandate.max_per_refund, mandate.currency),
                money(mandate.max_per_day, mandate.currency),
                mandate.expires_at.as_deref().unwrap_or("never"),
                key.public_hex(),
            );
            super::audit::record(
                ctx,
                "mandate grant",
                serde_json::json!({ "mandate_id": mandate.id.as_str() }),
                serde_json::Value::Null,
                serde_json::json!({
                    "version": mandate.version,
                    "agent_id": mandate.agent_id.as_str(),
                    "publishers": mandate.publishers,
                    "max_per_refund": mandate.max_per_refund,
                    "max_per_day": mandate.max_per_day,
                    "currency": mandate.currency.code(),
                    "expires_at": mandate.expires_at,
                    "signed_by": key.public_hex(),
                }),
            )
            .await?;
            if !verify.verifies(&mandate.canonical_bytes(), &mandate.signature) {
                eprintln!(
                    "warning: [mandates] verify_keys does not hold this key ({}): workers will refuse the mandate until it does",
                    key.public_hex()
                );
            }
            Ok(())
        }
        MandateCommand::Revoke { id } => {
            let key = finance_key(ctx, "revoke")?;
            let at = rfc3339(OffsetDateTime::now_utc());
            let revoked = open(ctx)
                .await?
                .revoke(&id, &key, &at)
                .await
                .map_err(runtime)?
                .ok_or_else(|| unknown(ctx, &id))?;
            match revoked.revoked_at.as_deref() {
                Some(when) if when != at => println!("mandate {id} was already revoked at {when}"),
                _ => {
                    println!(
                        "revoked mandate {id} at {at} (version {}); refunds under it stop at once",
                        revoked.version
                    );
                    super::audit::record(
                        ctx,
                        "mandate revoke",
                        serde_json::json!({ "mandate_id": id }),
                        serde_json::Value::Null,
                        serde_json::json!({ "version": revoked.version, "revoked_at": at }),
                    )
                    .await?;
                }
            }
            Ok(())
        }
        MandateCommand::Show { id, json } => {
            let store = open(ctx).await?;
            let stored = store
                .get(&id)
                .await
                .map_err(runtime)?
                .ok_or_else(|| unknown(ctx, &id))?;
            let view = MandateView::of(&store, &stored, &verify, OffsetDateTime::now_utc()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view).map_err(runtime)?);
            } else {
                view.print();
            }
            Ok(())
        }
        MandateCommand::List { json } => {
            let store = open(ctx).await?;
            let now = OffsetDateTime::now_utc();
            let mut views = Vec::new();
            for stored in store.list().await.map_err(runtime)? {
                views.push(MandateView::of(&store, &stored, &verify, now).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&views).map_err(runtime)?);
            } else {
                print_table(&views);
            }
            Ok(())
        }
    }
}

/// Finance's signing key, which only `grant` and `revoke` need.
fn finance_key(ctx: &Context, what: &str) -> Result<KeyPair, CommandError> {
    let seed = ctx.settings.mandates.signing_key().ok_or_else(|| {
        CommandError::Usage(format!(
            "mandate {what} signs with finance's key: set [mandates] signing_key (REFUND_MANDATES__SIGNING_KEY) where finance runs it; workers never hold it"
        ))
    })?;
    KeyPair::from_seed(seed, "[mandates] signing_key")
        .map_err(|e| CommandError::Usage(e.to_string()))
}

async fn open(ctx: &Context) -> Result<MandateStore, CommandError> {
    let conn = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    Ok(MandateStore::new(conn, &ctx.connections.prefix))
}

fn unknown(ctx: &Context, id: &str) -> CommandError {
    CommandError::Runtime(format!(
        "no mandate {id} under prefix {}; see `refund-worker mandate list`",
        ctx.connections.prefix
    ))
}

/// A validated `mandate grant`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantRequest {
    id: Token,
    agent: Token,
    max_per_refund: u64,
    max_per_day: u64,
    currency: Currency,
    expires_at: Option<String>,
}

impl GrantRequest {
    fn parse(
        id: &str,
        agent: &str,
        max_per_refund: u64,
        max_per_day: u64,
        currency: &str,
        expires: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Self, CommandError> {
        let usage = CommandError::Usage;
        let id = Token::parse(id).map_err(|rule| usage(format!("--id {rule}")))?;
        let agent = Token::parse(agent).map_err(|rule| usage(format!("--agent {rule}")))?;
        let currency = Currency::parse(currency).ok_or_else(|| {
            usage(format!(
                "--currency must be an ISO 4217 code like BRL, got {currency:?}"
            ))
        })?;
        if !(1..=MAX_CAP).contains(&max_per_refund) {
            return Err(usage(format!(
                "--max-per-refund must be from 1 to {MAX_CAP} minor units, got {max_per_refund}"
            )));
        }
        if !(max_per_refund..=MAX_CAP).contains(&max_per_day) {
            return Err(usage(format!(
                "--max-per-day must be from --max-per-refund ({max_per_refund}) to {MAX_CAP} minor units, got {max_per_day}"
            )));
        }
        let expires_at = expires
            .map(|text| {
                let at = parse_rfc3339(text).ok_or_else(|| {
                    usage(format!(
                        "--expires must be an RFC 3339 time like 2027-01-01T00:00:00Z, got {text:?}"
                    ))
                })?;
                if at <= now {
                    return Err(usage(format!(
                        "--expires {text} is in the past; a mandate must expire later than now"
                    )));
                }
                Ok(rfc3339(at))
            })
            .transpose()?;
        Ok(Self {
            id,
            agent,
            max_per_refund,
            max_per_day,
            currency,
            expires_at,
        })
    }

    /// The terms, spent by `publishers` (RabbitMQ users; none: the agent id).
    fn with_publishers(self, publishers: Vec<String>) -> Result<Terms, CommandError> {
        for user in &publishers {
            if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
                return Err(CommandError::Usage(format!(
                    "--publisher must be a RabbitMQ user name (1 to 255 bytes, no control characters), got {user:?}"
                )));
            }
        }
        Ok(Terms {
            id: self.id,
            agent_id: self.agent,
            max_per_refund: self.max_per_refund,
            max_per_day: self.max_per_day,
            currency: self.currency,
            expires_at: self.expires_at,
            publishers,
        })
    }
}

/// `R$ 12,34 (1234 minor units)`.
fn money(minor: u64, currency: Currency) -> String {
    format!("{} ({minor} minor units)", format_money(minor, currency))
}

/// A mandate as operators see it (`show`, `list`, `list --json`).
#[derive(Debug, Serialize)]
struct MandateView {
    id: String,
    agent_id: String,
    max_per_refund: u64,
    max_per_day: u64,
    currency: Currency,
    expires_at: Option<String>,
    issued_at: String,
    /// Grows with every grant and revocation.
    version: u64,
    /// The broker users whose jobs may spend it.
    publishers: Vec<String>,
    /// `active`, `revoked` or `expired`.
    state: &'static str,
    revoked_at: Option<String>,
    /// The UTC day `spent_today` counts.
    today: String,
    spent_today: u64,
    left_today: u64,
    /// Whether a key of `[mandates] verify_keys` signed exactly these fields.
    signature_valid: bool,
    signature: String,
}

impl MandateView {
    async fn of(
        store: &MandateStore,
        stored: &StoredMandate,
        keys: &VerifyKeys,
        now: OffsetDateTime,
    ) -> Result<Self, CommandError> {
        let m = &stored.mandate;
        let today = JobDate::of(now);
        let spent = store.spent(m.id.as_str(), today).await.map_err(runtime)?;
        Ok(Self {
            id: m.id.to_string(),
            agent_id: m.agent_id.to_string(),
            max_per_refund: m.max_per_refund,
            max_per_day: m.max_per_day,
            currency: m.currency,
            expires_at: m.expires_at.clone(),
            issued_at: m.issued_at.clone(),
            version: m.version,
            publishers: m.publishers.clone(),
            state: m.state(now).as_str(),
            revoked_at: m.revoked_at.clone(),
            today: today.to_string(),
            spent_today: spent,
            left_today: m.max_per_day.saturating_sub(spent),
            signature_valid: m.verify(keys),
            signature: m.signature.clone(),
        })
    }

    fn state_text(&self) -> String {
        match (&self.revoked_at, self.state) {
            (Some(at), "revoked") => format!("revoked at {at}"),
            (_, "expired") => format!(
                "expired at {}",
                self.expires_at.as_deref().unwrap_or("an unreadable time")
            ),
            (_, state) => state.to_owned(),
        }
    }

    fn print(&self) {
        let line = |k: &str, v: &str| println!("{k:<16} {v}");
        line("mandate", &self.id);
        line("agent", &self.agent_id);
        line("per refund", &money(self.max_per_refund, self.currency));
        line("per day", &money(self.max_per_day, self.currency));
        line("currency", self.currency.code());
        line("expires", self.expires_at.as_deref().unwrap_or("never"));
        line("issued", &self.issued_at);
        line("version", &self.version.to_string());
        line("publishers", &self.publishers.join(", "));
        line("state", &self.state_text());
        line(
            "spent today",
            &format!(
                "{} on {} (UTC)",
                money(self.spent_today, self.currency),
                self.today
            ),
        );
        line("left today", &money(self.left_today, self.currency));
        line(
            "signature valid",
            if self.signature_valid {
                "yes"
            } else {
                "NO: altered after signing, signed with a key [mandates] verify_keys does not hold, or in an older format; refunds under it are refused (grant it again with --replace)"
            },
        );
    }
}

fn print_table(views: &[MandateView]) {
    if views.is_empty() {
        println!("no mandates");
        return;
    }
    let amount = |minor: u64, currency: Currency| format_money(minor, currency);
    let header = [
        "ID",
        "AGENT",
        "PER REFUND",
        "PER DAY",
        "SPENT TODAY",
        "STATE",
        "EXPIRES",
        "SIGNATURE",
    ];
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            [
                v.id.clone(),
                v.agent_id.clone(),
                amount(v.max_per_refund, v.currency),
                amount(v.max_per_day, v.currency),
                amount(v.spent_today, v.currency),
                v.state.to_owned(),
                v.expires_at.clone().unwrap_or_else(|| "never".into()),
                if v.signature_valid {
                    "valid"
                } else {
                    "INVALID"
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print_row = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    print_row(&header);
    for row in &rows {
        print_row(&row.each_ref().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        parse_rfc3339("2026-06-01T12:00:00Z").unwrap()
    }

    fn parse(
        per_refund: u64,
        per_day: u64,
        currency: &str,
        expires: Option<&str>,
    ) -> Result<GrantRequest, CommandError> {
        GrantRequest::parse(
            "cm_support",
            "support-bot",
            per_refund,
            per_day,
            currency,
            expires,
            now(),
        )
    }

    fn usage(result: Result<GrantRequest, CommandError>) -> String {
        match result {
            Err(CommandError::Usage(text)) => text,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn grants_are_validated_before_signing() {
        let ok = parse(50_000, 500_000, "BRL", Some("2027-01-01T03:00:00+03:00")).unwrap();
        assert_eq!(ok.expires_at.as_deref(), Some("2027-01-01T00:00:00Z"));
        assert!(usage(parse(0, 500_000, "BRL", None)).contains("--max-per-refund"));
        assert!(usage(parse(50_000, 40_000, "BRL", None)).contains("--max-per-day"));
        assert!(usage(parse(50_000, MAX_CAP + 1, "BRL", None)).contains("--max-per-day"));
        assert!(usage(parse(50_000, 500_000, "brl", None)).contains("--currency"));
        assert!(usage(parse(1, 1, "BRL", Some("tomorrow"))).contains("RFC 3339"));
        assert!(usage(parse(1, 1, "BRL", Some("2026-01-01T00:00:00Z"))).contains("in the past"));
        let bad_id = GrantRequest::parse("cm support", "a", 1, 1, "BRL", None, now());
        assert!(usage(bad_id).starts_with("--id "));
    }

    #[test]
    fn money_is_formatted_from_integers() {
        assert_eq!(
            money(50_000, Currency::BRL),
            "R$ 500,00 (50000 minor units)"
        );
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(money(7, jpy), "JPY 7 (7 minor units)");
        assert_eq!(
            money(123_456_789, Currency::BRL),
            "R$ 1.234.567,89 (123456789 minor units)"
        );
    }
}
