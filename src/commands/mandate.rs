//! `refund-worker mandate grant|revoke|show|list`. Placeholder until mandates land.

use super::{CommandError, Context};
use crate::cli::MandateArgs;

/// Runs a `mandate` subcommand.
pub async fn run(_ctx: &Context, _args: MandateArgs) -> Result<(), CommandError> {
    Err(CommandError::Runtime(
        "mandates are not available in this build".into(),
    ))
}
