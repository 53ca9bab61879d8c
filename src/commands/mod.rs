//! One file per subcommand. Each returns a [`CommandError`] that `main` prints as one line and
//! maps to an exit code (1 runtime failure, 2 bad usage or configuration).

pub mod audit;
pub mod bench;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod mandate;
pub mod provider;
pub mod publish;
pub mod receipts;
pub mod run;
pub mod sandbox;
pub mod status;

use tokio_util::sync::CancellationToken;

use crate::{app::Connections, config::Settings};

/// What every command gets: where things are, and the settings.
#[derive(Debug, Clone)]
pub struct Context {
    /// RabbitMQ, Redis, prefix.
    pub connections: Connections,
    /// Loaded settings.
    pub settings: Settings,
    /// Who runs the command, for the audit log.
    pub operator: Operator,
}

/// The longest user or `--as` name the audit log records.
const MAX_NAME_CHARS: usize = 64;

/// Who an action is recorded as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// `ana`, or `ana as ops-bot` when the CLI ran with `--as ops-bot`.
    pub who: String,
    /// `cli` or `console`.
    pub via: &'static str,
}

impl Operator {
    /// A CLI run: the OS user, and the name given with `--as`.
    pub fn of_cli(named: Option<String>) -> Self {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        // Both come from outside (the environment, a flag): bounded, so an entry stays a line.
        let bounded = |text: String| text.chars().take(MAX_NAME_CHARS).collect::<String>();
        let who = match named.filter(|n| !n.is_empty()) {
            Some(name) => format!("{} as {}", bounded(user), bounded(name)),
            None => bounded(user),
        };
        Self { who, via: "cli" }
    }

    /// A console operator (their configured sign-in name).
    pub fn of_console(name: &str) -> Self {
        Self {
            who: name.to_owned(),
            via: "console",
        }
    }
}

/// A command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Something outside went wrong (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// The user asked for something invalid (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Stopped by Ctrl-C after saying where things stand (exit 130, as shells report it).
    #[error("interrupted")]
    Interrupted,
}

impl CommandError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Runtime(_) => 1,
            CommandError::Usage(_) => 2,
            CommandError::Interrupted => 130,
        }
    }
}

/// Wraps any displayable error as a runtime failure.
pub fn runtime(error: impl std::fmt::Display) -> CommandError {
    CommandError::Runtime(error.to_string())
}

/// A throwaway world for a self-contained run (demo, bench): a fresh `{kind}-xxxxxxxx` prefix,
/// and RabbitMQ and Redis connected, or one line saying which is missing and how to start it.
pub async fn scratch_world(
    ctx: &Context,
    kind: &str,
) -> Result<
    (
        Connections,
        lapin::Connection,
        redis::aio::ConnectionManager,
    ),
    CommandError,
> {
    let prefix = format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let connections = Connections {
        prefix,
        ..ctx.connections.clone()
    };
    let name = format!("refund-worker {kind}");
    let connection = crate::broker::connect(&connections.amqp_url, &name)
        .await
        .map_err(|e| {
            CommandError::Runtime(format!("{e} (start it with: rabbitmq-server -detached)"))
        })?;
    let redis = crate::store::connect(&connections.redis_url)
        .await
        .map_err(|e| {
            CommandError::Runtime(format!("{e} (start it with: redis-server --daemonize yes)"))
        })?;
    Ok((connections, connection, redis))
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested; finishing in-flight jobs");
        cancel.cancel();
    });
    token
}
