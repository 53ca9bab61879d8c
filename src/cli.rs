//! Command-line definitions (SPEC §7). Connection flags are global and fall back to their
//! environment variables.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Refunds from RabbitMQ jobs, exactly once, on the payment's original rail.
#[derive(Debug, Parser)]
#[command(name = "refund-worker", version, about, propagate_version = true)]
pub struct Cli {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every queue, exchange and Redis key; a different prefix is a separate world.
    #[arg(long, env = "REFUND_PREFIX", default_value = "refunds", global = true, value_parser = parse_prefix)]
    pub prefix: String,
    /// Settings file (optional; built-in defaults equal config/default.toml).
    #[arg(long, env = "REFUND_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        value_enum,
        env = "REFUND_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Who runs this, for the audit log (recorded with the OS user: `ana as NAME`).
    #[arg(
        long = "as",
        value_name = "NAME",
        env = "REFUND_OPERATOR",
        global = true
    )]
    pub operator: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and process refund jobs; serve /metrics, /healthz and /readyz.
    Run(RunArgs),
    /// Publish refund jobs from a JSON Lines file (or - for stdin), with publisher confirms.
    Publish(PublishArgs),
    /// Run the sandbox providers (the only fake: tests, demo and bench use it).
    Sandbox(SandboxArgs),
    /// The whole loop on localhost in one command: sandbox, publish, process, summary.
    Demo(DemoArgs),
    /// Operate the dead-letter queue: list, show, replay, purge, export.
    Dlq(DlqArgs),
    /// Manage spend mandates: grant, revoke, show, list.
    Mandate(MandateArgs),
    /// Check and export the sealed receipt chain.
    Receipts(ReceiptsArgs),
    /// Measure throughput against the sandbox, and the bare broker ceiling in the same run.
    Bench(BenchArgs),
    /// Read and check the tamper-evident log of every operator action.
    Audit(AuditArgs),
    /// Pause or resume refunds to one provider during its incident; list the pauses.
    Provider(ProviderArgs),
    /// The ops console (web): overview, dead letters, provider pauses, audit log.
    Console(ConsoleArgs),
    /// One job's outcome: its record, provider refund id, receipt and dead letters.
    Status(StatusArgs),
}

/// `status JOB_ID | --payment ID [--date D] | --order ID [--date D] | --key KEY`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["job_id", "payment", "order", "key"])))]
pub struct StatusArgs {
    /// The job id (`message_id`, `x-refund-job-id`).
    pub job_id: Option<String>,
    /// A bulk job's payment id.
    #[arg(long)]
    pub payment: Option<String>,
    /// A governed job's order id.
    #[arg(long)]
    pub order: Option<String>,
    /// The idempotency key itself.
    #[arg(long)]
    pub key: Option<String>,
    /// The day the job is keyed under (default: today, UTC).
    #[arg(long)]
    pub date: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where to listen (localhost by default: put a TLS proxy in front to reach it from afar).
    #[arg(long, default_value = "127.0.0.1:9470")]
    pub listen: SocketAddr,
    /// Point the letter page's "look it up at the provider" at one sandbox: {URL}/stripe, …
    #[arg(long, env = "REFUND_PROVIDERS_URL")]
    pub providers_url: Option<String>,
    /// `operator add NAME`, or nothing to serve.
    #[command(subcommand)]
    pub command: Option<ConsoleCommand>,
}

/// The console's subcommands.
#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Manage operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

/// `console operator`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Hash a new operator's password (read from stdin) and print the configuration entry.
    Add(OperatorAdd),
}

/// `console operator add`.
#[derive(Debug, Args)]
pub struct OperatorAdd {
    /// The operator's sign-in name.
    pub name: String,
    /// May look, may not act.
    #[arg(long)]
    pub read_only: bool,
}

/// `provider`.
#[derive(Debug, Args)]
pub struct ProviderArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ProviderCommand,
}

/// The per-provider controls.
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Stop refunds to PROVIDER: its jobs wait in the retry tiers without spending attempts;
    /// every worker honours it within seconds.
    Pause {
        /// stripe, mercadopago, asaas, pix or rinne.
        provider: String,
        /// Why (recorded with the pause and in the audit log).
        #[arg(long)]
        reason: String,
        /// Print JSON: the provider, whether this call paused it, and the pause in force.
        #[arg(long)]
        json: bool,
    },
    /// Let refunds to PROVIDER go again.
    Resume {
        /// stripe, mercadopago, asaas, pix or rinne.
        provider: String,
        /// Print JSON: the provider and whether this call resumed it.
        #[arg(long)]
        json: bool,
    },
    /// The paused providers: who paused each, when and why.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The audit log operations.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The latest entries, oldest first: who, when, what, the preview shown, the result.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every entry's hash, signature and link: an edited, inserted or deleted entry is
    /// named (exit 1).
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `mandate`.
#[derive(Debug, Args)]
pub struct MandateArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MandateCommand,
}

/// The mandate operations (SPEC §5).
#[derive(Debug, Subcommand)]
pub enum MandateCommand {
    /// Grant (or replace) a signed mandate.
    Grant {
        /// Mandate id, e.g. cm_support.
        #[arg(long)]
        id: String,
        /// The agent it authorises.
        #[arg(long)]
        agent: String,
        /// Largest single refund, in minor units.
        #[arg(long)]
        max_per_refund: u64,
        /// Daily budget, in minor units.
        #[arg(long)]
        max_per_day: u64,
        /// ISO 4217 currency of the caps.
        #[arg(long, default_value = "BRL")]
        currency: String,
        /// When it lapses (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// A RabbitMQ user whose jobs may spend it (the AMQP user_id the broker validates);
        /// repeatable. Default: the agent id.
        #[arg(long = "publisher", value_name = "USER")]
        publishers: Vec<String>,
        /// Replace an existing mandate with this id by a new version (what was spent stays
        /// spent).
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a mandate (a signed new version): refunds under it stop at once.
    Revoke {
        /// Mandate id.
        id: String,
    },
    /// Show a mandate: caps, spent today, state.
    Show {
        /// Mandate id.
        id: String,
        /// Print JSON (as `mandate list --json` prints each).
        #[arg(long)]
        json: bool,
    },
    /// List mandates.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `receipts`.
#[derive(Debug, Args)]
pub struct ReceiptsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReceiptsCommand,
}

/// The receipt operations (SPEC §6).
#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// Check every receipt's hash, signature and chain link; name any that was edited,
    /// inserted or deleted. Offline with --file and --public-key.
    Verify {
        /// A JSON Lines export to check instead of Redis.
        #[arg(long, requires = "public_key")]
        file: Option<std::path::PathBuf>,
        /// The signer's public key (hex), for offline checks.
        #[arg(long)]
        public_key: Option<String>,
        /// The head hash you were given (from `export` or an earlier `verify`): the chain
        /// must end there, so a copy cut short or extended is caught.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
        /// The number of receipts you were told the chain holds.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Write the receipt chain as JSON Lines, for auditors.
    Export {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print the public key that verifies receipts.
    PublicKey,
}

/// `dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter operations.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Group dead letters by class and cause, with counts, providers, age and money stuck.
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter: body, headers, reason, history.
    Show {
        /// Its `x-refund-job-id`.
        job_id: String,
        /// Print JSON for scripts (the `dlq export` row of the letter).
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters under their original idempotency key, skipping (and removing)
    /// any already refunded; a dead letter leaves the queue only after its replacement is
    /// confirmed.
    Replay {
        /// Job ids to replay (`x-refund-job-id`).
        job_ids: Vec<String>,
        /// Which dead letters, when not by id.
        #[command(flatten)]
        filter: DlqFilter,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Show what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fix a field while replaying, as field=value (a JSON value, or text); `field=` removes
        /// it (any name: a typo such as `ammount=` too); repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
        /// Replace the letter's whole body with this file's (or stdin's, `-`), validated as a
        /// job before anything is sent; key fields stay locked unless the letter is invalid.
        #[arg(long, value_name = "FILE|-", conflicts_with = "set")]
        body: Option<PathBuf>,
        /// Replay one letter first, wait for its refund, then the rest; if it does not
        /// refund in time, the rest stay in the queue. Not with an edit (an edit fits one
        /// letter).
        #[arg(long, conflicts_with_all = ["set", "body"])]
        canary: bool,
        /// How long a canary's refund is awaited.
        #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "canary")]
        canary_wait: std::time::Duration,
        /// Print JSON for scripts: one entry per letter, the counts and the canary's fate.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good (export them first if they matter).
    Purge {
        /// Job ids to delete.
        job_ids: Vec<String>,
        /// Which dead letters, when not by id.
        #[command(flatten)]
        filter: DlqFilter,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        /// Print JSON: what was done, and to which letters.
        #[arg(long)]
        json: bool,
    },
    /// Write every dead letter as JSON Lines (body, headers, reason), leaving them queued.
    Export {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Move dead letters to a file (the export format) and out of the queue; `dlq import`
    /// brings them back, still sealed.
    Archive {
        /// Job ids to archive.
        job_ids: Vec<String>,
        /// Which dead letters, when not by id.
        #[command(flatten)]
        filter: DlqFilter,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// The archive file (must not exist yet).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Confirm: the letters leave the queue once the file is written and synced.
        #[arg(long)]
        yes: bool,
        /// Print JSON: what was done, and to which letters.
        #[arg(long)]
        json: bool,
    },
    /// Put archived (or exported) dead letters back into the dead-letter queue.
    Import {
        /// A file written by `dlq archive` or `dlq export`.
        file: std::path::PathBuf,
        /// Print JSON: what was done, and to which letters.
        #[arg(long)]
        json: bool,
    },
}

/// Filters shared by the dead-letter commands.
#[derive(Debug, Args, Clone, Default)]
pub struct DlqFilter {
    /// Only this class: invalid, permanent, exhausted, mandate, verification, delivery_limit.
    #[arg(long)]
    pub class: Option<String>,
    /// Only this group (its handle, `g-…`, as `dlq list` prints it).
    #[arg(long)]
    pub group: Option<String>,
    /// Only this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// Only dead letters older than this (e.g. 1h, 2d).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<std::time::Duration>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Point every provider client at one sandbox: {URL}/stripe, …
    #[arg(long, env = "REFUND_PROVIDERS_URL")]
    pub providers_url: Option<String>,
    /// Exit 0 once the jobs and retry queues are empty and nothing is in flight.
    #[arg(long)]
    pub exit_when_idle: bool,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Jobs file: JSON Lines, or CSV with a header row of job field names; - for stdin.
    pub file: String,
    /// The file's format (by default: CSV if the name ends in .csv or the first line is not
    /// a JSON object, else JSON Lines).
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Publish the valid rows even if some rows are invalid (they are reported, not sent).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Wait for every job's outcome and print a per-job result table; exit 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: print the results as JSON.
    #[arg(long, requires = "wait")]
    pub json: bool,
    /// With --wait: give up waiting after this long (e.g. 10m).
    #[arg(long, default_value = "30m", value_parser = parse_duration, requires = "wait")]
    pub wait_timeout: std::time::Duration,
    /// The day given to rows without a "date" (default: today, UTC). A resume of an
    /// interrupted publish passes the day the first run used, so those rows keep their key.
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_job_date)]
    pub date: Option<crate::job::JobDate>,
    /// Start at this line of the file (1-based; a CSV's header row is line 1): what an
    /// interrupted publish prints to resume from.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub from_line: usize,
}

fn parse_job_date(s: &str) -> Result<crate::job::JobDate, String> {
    crate::job::JobDate::parse(s)
}

/// A jobs file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row of field names, then one job per row.
    Csv,
}

/// `sandbox`.
#[derive(Debug, Args, Clone)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: SocketAddr,
    /// Latency added to every provider call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this much more latency, at random.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Share of calls refused with a transient 5xx before executing (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// Share of executed refunds whose answer is then lost (the client times out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub timeout_rate: f64,
    /// Calls per second before answering 429 with Retry-After, as N/s.
    #[arg(long, value_parser = parse_per_second)]
    pub rate_limit: Option<u32>,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How long a lost answer is held back, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_hold_ms: u64,
    /// ERP orders to serve, as JSON Lines (SPEC §9); their payments are seeded too.
    #[arg(long, value_name = "FILE")]
    pub fixtures: Option<std::path::PathBuf>,
}

/// `bench` (SPEC §10).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Jobs to publish and refund (all distinct, all valid).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub jobs: u32,
    /// Sandbox latency per provider call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub provider_latency_ms: u64,
    /// Jobs processed at once (the worker's `concurrency`).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Unacknowledged deliveries the broker may hand the worker (default: twice the
    /// concurrency, at least 64).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,
    /// Publish at this many jobs per second while the worker runs, instead of all up front
    /// (measures latency below saturation).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Limit the worker's Stripe calls to N per second (the throttled scenario): the line
    /// then also gives Redis calls and broker publishes per refund, the calls that waited for
    /// the limit and the jobs deferred to a retry tier.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// Skip the bare consume-and-ack ceiling.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Also publish this many bodies over `[worker] max_body_bytes` ahead of the jobs (a burst
    /// of oversized messages: the worker must refuse each without keeping it; compare the
    /// peak RSS with a run without them).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub oversized: u32,
    /// The size of each oversized body, in MiB.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub oversized_mib: u32,
    /// Where the worker serves /metrics during the run (to watch its steps; default: any
    /// free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub worker_metrics_addr: SocketAddr,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Unique valid jobs in the sample batch (duplicates and invalid jobs are added).
    #[arg(long, default_value_t = 270, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub jobs: u32,
    /// Governed refunds (jobs naming ERP orders) in the sample batch, plus one over its cap.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub governed: u32,
    /// Sandbox latency per provider call, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Keep the demo's queues and Redis keys afterwards (to inspect them with --prefix).
    #[arg(long)]
    pub keep: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 10m: {e}"))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1-64 characters of [A-Za-z0-9_.-]".into())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("must be a share from 0.0 to 1.0, got {s:?}")),
    }
}

fn parse_per_second(s: &str) -> Result<u32, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("must be a rate like 50/s, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flag_parsers() {
        assert!(parse_prefix("refunds").is_ok());
        assert!(parse_prefix("a b").is_err());
        assert_eq!(parse_per_second("50/s"), Ok(50));
        assert!(parse_per_second("0/s").is_err());
        assert!(parse_rate("1.5").is_err());
    }
}
