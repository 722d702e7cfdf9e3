//! `GET /events`: server-sent events for this pod (lock acquired, released, lost; session
//! state changes; queue claims lost). Each event's `event:` field is its type. With
//! `?watch=a,b`, also `lock.changed` for each of those locks: its holders and waiters,
//! first as they are, then at every change (observed without contending).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use paddock_recipes::Name;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::error::ApiResult;
use crate::error::extract::Query;
use crate::state::AppState;

/// The most locks one stream may watch.
const MAX_WATCHED: usize = 64;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    watch: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let watched = watched_locks(query.watch.as_deref())?;
    let pod_events = BroadcastStream::new(state.events.subscribe()).map(|item| match item {
        Ok(event) => SseEvent::default().event(event.kind()).json_data(&event).expect("events serialize"),
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            SseEvent::default().event("lagged").data(format!("{{\"missed\":{n}}}"))
        }
    });
    let changes = futures::stream::select_all(watched.into_iter().map(|name| {
        let view = state.locks.observe(&name);
        Box::pin(super::lock_observe::changes(name, view))
    }))
    .map(|change| SseEvent::default().event("lock.changed").json_data(&change).expect("events serialize"));
    let stream = futures::stream::select(pod_events, changes).map(Ok);
    let stream = futures::StreamExt::take_until(stream, state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn watched_locks(watch: Option<&str>) -> ApiResult<Vec<Name>> {
    let Some(watch) = watch else { return Ok(Vec::new()) };
    let names: Vec<Name> = watch.split(',').map(|n| Name::new("lock", n.trim())).collect::<Result<_, _>>()?;
    if names.len() > MAX_WATCHED {
        return Err(crate::error::ApiError::bad_request(format!("watch at most {MAX_WATCHED} locks per stream")));
    }
    Ok(names)
}
