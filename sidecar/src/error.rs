//! The one error type of the HTTP API. Every error is JSON
//! `{"error": "<stable code>", "message": "<what happened and what to do>", ...details}`;
//! internal details go to the log, not to the caller.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paddock_recipes::{Name, zk};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "zookeeper-unavailable", message)
    }

    /// A lock or queue whose znode does not exist: no custom resource provisions it.
    /// `what` is "lock" or "queue", `kind` the resource kind that would provision it.
    pub fn not_provisioned(what: &str, kind: &str, name: &Name, namespace: &Name, path: &str) -> Self {
        Self::not_found(
            if what == "lock" { "lock-not-found" } else { "queue-not-found" },
            format!(
                "{what} {name} does not exist in namespace {namespace} (no znode {path}): \
                 create a {kind} named {name} in namespace {namespace} first"
            ),
        )
    }

    /// A lock's or queue's znode holds a config the sidecar cannot use: the resource is
    /// misconfigured (409, not a server error); retrying will not help until it is fixed.
    pub fn config_invalid(what: &str, kind: &str, name: &Name, namespace: &Name, err: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            if what == "lock" { "lock-config-invalid" } else { "queue-config-invalid" },
            format!("{err}; fix the {kind} {name} in namespace {namespace}"),
        )
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// A ZooKeeper failure while doing `what` (e.g. "acquiring lock orders").
    pub fn zookeeper(what: &str, err: zk::Error) -> Self {
        match err {
            err if paddock_recipes::retry::unavailable(&err) => Self::unavailable(format!(
                "{what}: ZooKeeper is unreachable ({err}); the outcome is unknown, retry when /readyz answers 200"
            )),
            zk::Error::NoAuth => Self::new(
                StatusCode::FORBIDDEN,
                "zookeeper-no-auth",
                format!("{what}: ZooKeeper refused this namespace's identity (NoAuth); check PADDOCK_ZK_AUTH"),
            ),
            other => {
                tracing::error!(what, error = %other, "unexpected ZooKeeper error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{what}: ZooKeeper error: {other}"))
            }
        }
    }
}

impl From<paddock_recipes::session::SessionError> for ApiError {
    fn from(err: paddock_recipes::session::SessionError) -> Self {
        Self::unavailable(format!("{err}; retry when /readyz answers 200"))
    }
}

impl From<paddock_recipes::names::NameError> for ApiError {
    fn from(err: paddock_recipes::names::NameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-name", err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::body_too_large();
        }
        Self::new(
            status,
            "invalid-json",
            format!("{}; send a JSON object as documented in /openapi.json", rejection.body_text()),
        )
    }
}

impl ApiError {
    /// A request body over [`crate::api::MAX_BODY_BYTES`].
    pub fn body_too_large() -> Self {
        let limit = crate::api::MAX_BODY_BYTES;
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "the request body is over the sidecar's limit of {limit} bytes; a queue item holds at most \
                 1,000,000 bytes (or its queue's maxPayloadBytes): store large data elsewhere and enqueue a \
                 reference, or split a batch"
            ),
        )
        .with_details(json!({ "limit": limit }))
    }
}

/// Makes every error JSON, also those written by the framework and its layers (a body
/// over the limit, an unknown route, a wrong method), so an app can always read `error`
/// and `message`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::body_too_large(),
        StatusCode::NOT_FOUND => {
            ApiError::not_found("no-such-endpoint", "no such endpoint; GET /openapi.json lists the API")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts.headers.get(axum::http::header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            ApiError::new(
                status,
                "method-not-allowed",
                format!("this endpoint answers {allowed}; see GET /openapi.json"),
            )
        }
        _ if status.is_client_error() => ApiError::new(status, "bad-request", format!("{text}; see GET /openapi.json")),
        _ => {
            tracing::error!(%status, body = text, "a server error without a JSON body");
            ApiError::new(status, "internal", format!("internal error ({text}); see the sidecar's log"))
        }
    };
    let mut response = error.into_response();
    for name in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-path", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let (Some(Value::Object(details)), Value::Object(map)) = (self.details, &mut body) {
            map.extend(details);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

/// Extractors whose rejections are [`ApiError`]s, so malformed input gets the same JSON shape.
pub mod extract {
    use axum::extract::FromRequest;
    use axum::extract::FromRequestParts;

    use super::ApiError;

    #[derive(Debug, FromRequest)]
    #[from_request(via(axum::Json), rejection(ApiError))]
    pub struct Json<T>(pub T);

    #[derive(Debug, FromRequestParts)]
    #[from_request(via(axum::extract::Query), rejection(ApiError))]
    pub struct Query<T>(pub T);

    #[derive(Debug, FromRequestParts)]
    #[from_request(via(axum::extract::Path), rejection(ApiError))]
    pub struct Path<T>(pub T);
}

/// Parses a user-supplied duration (`250ms`, `5s`, `1m`), naming the field on error.
pub fn parse_duration(field: &str, value: &str) -> ApiResult<std::time::Duration> {
    humantime::parse_duration(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-duration",
            format!("{field} {value:?} is not a duration ({e}); use e.g. \"250ms\", \"5s\", \"1m\""),
        )
    })
}
