//! The HTTP API: one module per area, each exposing a `router()`; `router` merges them.

mod events;
mod health;
mod locks;
mod metrics;
mod queues;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

/// Largest request body accepted: a queue payload of up to 1,000,000 bytes (the most a
/// znode holds with its envelope), or a batch of that size. Queues may set a lower limit.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(locks::router())
        .merge(events::router())
        .merge(metrics::router())
        .merge(queues::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
