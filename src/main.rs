//! The `refund-worker` binary: parse the command line, run a command, map errors to exit
//! codes (0 done, 1 runtime failure, 2 bad usage or configuration) with one clear line.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use refund_worker::{
    app::Connections,
    cli::{Cli, Command, LogFormat},
    commands::{self, CommandError, Context},
    config::Settings,
};
use tracing_subscriber::EnvFilter;

/// mimalloc: per-job allocations are many and small; glibc's malloc spent a sixth of the
/// worker's CPU on them and kept more memory resident (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if reports(&cli.command) {
        restore_sigpipe();
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(&CommandError::Runtime(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// The commands that print for an operator and end: they log only warnings, and end quietly
/// when their reader goes away.
fn reports(command: &Command) -> bool {
    matches!(
        command,
        Command::Publish(_)
            | Command::Dlq(_)
            | Command::Mandate(_)
            | Command::Receipts(_)
            | Command::Audit(_)
            | Command::Provider(_)
            | Command::Status(_)
    )
}

/// Reporting commands end quietly when their reader goes away (`dlq list | head`), like any
/// Unix tool, instead of failing on a broken pipe. The long-running commands keep Rust's
/// default (SIGPIPE ignored), so a peer closing a socket can never kill a worker.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn fail(error: &CommandError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}

async fn dispatch(cli: Cli) -> Result<(), CommandError> {
    let (path, required) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from("config/default.toml"), false),
    };
    let settings =
        Settings::load(&path, required).map_err(|e| CommandError::Usage(e.to_string()))?;
    refund_worker::broker::check_url(&cli.amqp_url).map_err(CommandError::Usage)?;
    refund_worker::store::check_url(&cli.redis_url).map_err(CommandError::Usage)?;
    let ctx = Context {
        connections: Connections {
            amqp_url: cli.amqp_url,
            redis_url: cli.redis_url,
            prefix: cli.prefix,
        },
        settings,
        operator: commands::Operator::of_cli(cli.operator),
    };
    match cli.command {
        Command::Run(args) => commands::run::run(&ctx, args).await,
        Command::Publish(args) => commands::publish::run(&ctx, args).await,
        Command::Sandbox(args) => commands::sandbox::run(args).await,
        Command::Demo(args) => commands::demo::run(&ctx, args).await,
        Command::Dlq(args) => commands::dlq::run(&ctx, args).await,
        Command::Mandate(args) => commands::mandate::run(&ctx, args).await,
        Command::Receipts(args) => commands::receipts::run(&ctx, args).await,
        Command::Bench(args) => commands::bench::run(&ctx, args).await,
        Command::Audit(args) => commands::audit::run(&ctx, args).await,
        Command::Provider(args) => commands::provider::run(&ctx, args).await,
        Command::Console(args) => commands::console::run(&ctx, args).await,
        Command::Status(args) => commands::status::run(&ctx, args).await,
    }
}

fn init_logging(cli: &Cli) {
    // Interactive commands keep the terminal for their own output; services log at info.
    let default = match cli.command {
        _ if reports(&cli.command) => "warn",
        // The demo's dead letters are expected; its summary reports them. The bench measures
        // the hot path, which logs nothing at error level.
        Command::Demo(_) | Command::Bench(_) => "error",
        _ => "info",
    };
    // lapin logs its own connection errors, which the command reports once in its own words.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},lapin=off")));
    // Colour only on a terminal (and never with NO_COLOR): logs that go to files or
    // journald stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
