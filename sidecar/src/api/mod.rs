//! The HTTP API: one module per area, each exposing a `router()`; `router` merges them.

mod events;
mod health;
mod locks;
mod metrics;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

/// Largest request body accepted (queue payloads are capped lower by the queue's config).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(locks::router())
        .merge(events::router())
        .merge(metrics::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
