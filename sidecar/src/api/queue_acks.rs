//! `POST /queue/{name}/ack` with `{"ids": [...]}`: acks up to 1000 items in as few
//! ZooKeeper transactions as it can, with an outcome per id.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::queues::{item_id, queue_error, queue_name};
use crate::error::extract::{Json, Path};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Most ids one request acks.
const MAX_ACKS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckBody {
    ids: Vec<String>,
}

/// Answers 200 with `{"results": [{"id", "outcome", "message"?}], "acked": N}`: `acked`,
/// or the error code a single ack would have answered (`claim-lost`, `dead-lettered`).
/// One item's failure does not fail the others. When every id fails for a reason that is
/// not the item's own (the queue is not provisioned, ZooKeeper is unreachable), that error
/// is the answer.
pub(super) async fn ack_many(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<AckBody>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    if body.ids.is_empty() || body.ids.len() > MAX_ACKS {
        return Err(ApiError::bad_request(format!(
            "\"ids\" holds 1 to {MAX_ACKS} item ids, got {}; split larger acks",
            body.ids.len()
        )));
    }
    let ids = body.ids.iter().map(|id| item_id(id)).collect::<ApiResult<Vec<_>>>()?;
    let answers = state.queues.ack_many(&queue, &ids).await;
    let mut acked = 0;
    let mut results: Vec<Value> = Vec::with_capacity(ids.len());
    let mut common_failure = None;
    for (id, answer) in ids.iter().zip(answers) {
        match answer {
            Ok(()) => {
                acked += 1;
                results.push(json!({ "id": id.to_string(), "outcome": "acked" }));
            }
            Err(err) => {
                let error = queue_error(&state, &queue, err);
                results.push(json!({ "id": id.to_string(), "outcome": error.code, "message": error.message }));
                if error.status != StatusCode::CONFLICT {
                    common_failure.get_or_insert(error);
                }
            }
        }
    }
    match common_failure {
        Some(error) if acked == 0 && results.iter().all(|r| r["outcome"] == error.code) => Err(error),
        _ => Ok(axum::Json(json!({ "queue": queue.as_str(), "results": results, "acked": acked })).into_response()),
    }
}
