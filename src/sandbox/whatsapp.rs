//! The whatsapp fake. Placeholder until its twin lands.

use axum::Router;

use super::Sandbox;

/// The fake's memory.
#[derive(Debug, Default)]
pub(crate) struct State {}

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
}
