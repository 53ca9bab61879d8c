//! `refund-worker run`: consume and process jobs, serve metrics and health.

use tracing::info;

use super::{CommandError, Context, runtime, shutdown_on_signal};
use crate::{app, cli::RunArgs, metrics, worker::RunEnd};

/// Runs the worker until a signal (or idle, with `--exit-when-idle`).
pub async fn run(ctx: &Context, args: RunArgs) -> Result<(), CommandError> {
    let mut settings = ctx.settings.clone();
    if let Some(url) = &args.providers_url {
        settings.point_providers_at(url);
    }
    let listener = metrics::bind(args.metrics_addr)
        .await
        .map_err(CommandError::Usage)?;
    let app = app::assemble(
        &ctx.connections,
        &settings,
        args.exit_when_idle,
        "refund-worker run",
    )
    .await
    .map_err(|e| {
        if e.is_config() {
            CommandError::Usage(e.to_string())
        } else {
            runtime(e)
        }
    })?;
    let shutdown = shutdown_on_signal();
    let server = tokio::spawn(metrics::serve(
        listener,
        app.metrics.clone(),
        app.health.clone(),
        shutdown.clone(),
    ));
    info!(metrics = %args.metrics_addr, prefix = %ctx.connections.prefix, "refund worker starting");
    let end = app.worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    match end.map_err(runtime)? {
        RunEnd::Idle => info!("nothing left to do; exiting"),
        RunEnd::Stopped => info!("stopped"),
    }
    Ok(())
}
