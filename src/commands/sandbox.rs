//! `refund-worker sandbox`: the provider fakes on one address.

use std::time::Duration;

use super::{CommandError, shutdown_on_signal};
use crate::{
    cli::SandboxArgs,
    sandbox::{FaultOptions, Sandbox},
};

/// The fault options a command line asks for.
pub fn fault_options(args: &SandboxArgs) -> FaultOptions {
    FaultOptions {
        latency: Duration::from_millis(args.latency_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        fail_rate: args.fail_rate,
        timeout_rate: args.timeout_rate,
        rate_limit: args.rate_limit,
        seed: args.seed,
        timeout_hold: Duration::from_millis(args.timeout_hold_ms),
    }
}

/// Serves the sandbox until a signal.
pub async fn run(args: SandboxArgs) -> Result<(), CommandError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            CommandError::Usage(format!(
                "cannot listen on {}: {e} (use --listen)",
                args.listen
            ))
        })?;
    let sandbox = Sandbox::new(fault_options(&args));
    eprintln!(
        "sandbox listening on http://{0} — point workers at it with --providers-url http://{0}; ledger at http://{0}/_sandbox/refunds",
        args.listen
    );
    sandbox
        .serve(listener, shutdown_on_signal())
        .await
        .map_err(|e| CommandError::Runtime(format!("sandbox server failed: {e}")))
}
