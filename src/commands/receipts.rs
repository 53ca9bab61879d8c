//! `refund-worker receipts verify|export|public-key`. Placeholder until receipts land.

use super::{CommandError, Context};
use crate::cli::ReceiptsArgs;

/// Runs a `receipts` subcommand.
pub async fn run(_ctx: &Context, _args: ReceiptsArgs) -> Result<(), CommandError> {
    Err(CommandError::Runtime(
        "receipts are not available in this build".into(),
    ))
}
