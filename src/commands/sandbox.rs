//! `refund-worker sandbox`: the provider fakes on one address.

use std::{path::Path, time::Duration};

use refund_sandbox::{FaultOptions, FixtureOrder, Sandbox, parse_fixtures};

use super::{CommandError, shutdown_on_signal};
use crate::cli::SandboxArgs;

/// Reads and checks a fixtures file; any bad line refuses the whole file (exit 2).
pub fn read_fixtures(path: &Path) -> Result<Vec<FixtureOrder>, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CommandError::Usage(format!(
            "cannot read fixtures {}: {} (check --fixtures)",
            path.display(),
            crate::diagnostics::root_cause(&e)
        ))
    })?;
    parse_fixtures(&text).map_err(|e| {
        CommandError::Usage(format!(
            "fixtures {}: {e} (see SPEC §9 for the format)",
            path.display()
        ))
    })
}

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
    // Read first: a bad file is refused before anything listens.
    let orders = match &args.fixtures {
        Some(path) => Some((path, read_fixtures(path)?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            CommandError::Usage(format!(
                "cannot listen on {}: {e} (use --listen)",
                args.listen
            ))
        })?;
    let sandbox = Sandbox::new(fault_options(&args));
    if let Some((path, orders)) = orders {
        eprintln!(
            "sandbox: {} ERP orders loaded from {}",
            orders.len(),
            path.display()
        );
        sandbox.load_orders(orders);
    }
    eprintln!(
        "sandbox listening on http://{0} — point workers at it with --providers-url http://{0}; ledger at http://{0}/_sandbox/refunds",
        args.listen
    );
    sandbox
        .serve(listener, shutdown_on_signal())
        .await
        .map_err(|e| CommandError::Runtime(format!("sandbox server failed: {e}")))
}
