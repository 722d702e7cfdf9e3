//! `POST /inject`: an AdmissionReview (admission.k8s.io/v1) in, one out. A pod that asks
//! for a sidecar gets a JSONPatch; anything else is allowed unchanged; a pod that cannot
//! be injected is denied with a message saying what to do; a body that is no
//! AdmissionReview gets a 400 with a JSON message.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::json;

use super::WebhookContext;
use super::inject::{self, Injection, SidecarTemplate};
use super::patch::patch;
use super::tls_identity;
use crate::reconcile::identity::CREDENTIALS_SECRET;

/// The webhook's state: where to look up credentials, what to count, and the sidecar to add.
pub struct Webhook {
    ctx: WebhookContext,
    template: SidecarTemplate,
}

pub fn router(webhook: Arc<Webhook>) -> axum::Router {
    axum::Router::new()
        .route("/inject", post(review))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(4 * 1024 * 1024))
        .with_state(webhook)
}

async fn review(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(err) => return malformed(format!("the body is not an AdmissionReview (admission.k8s.io/v1): {err}")),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => return malformed("the AdmissionReview has no request".into()),
    };
    let response = webhook.admit(&request).await;
    Json(wire_format(response.into_review())).into_response()
}

/// The review as the API server documents it: kube serializes the patch bytes as a JSON
/// array of numbers, the documented form is a base64 string (Go's `[]byte`).
fn wire_format(review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    use base64::Engine as _;
    let mut value = serde_json::to_value(review).expect("an AdmissionReview serializes");
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone())
    {
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    value
}

/// A refusal (400, Invalid) that keeps the request's uid, as the API server requires.
fn invalid(allowed: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = allowed.deny(message);
    response.result.code = 400;
    response.result.reason = "Invalid".into();
    response
}

fn malformed(message: String) -> Response {
    tracing::warn!(%message, "rejected a malformed admission review");
    (StatusCode::BAD_REQUEST, Json(json!({ "error": "malformed-review", "message": message }))).into_response()
}

impl Webhook {
    pub fn new(ctx: WebhookContext, template: SidecarTemplate) -> Self {
        Self { ctx, template }
    }

    /// The answer to one admission request.
    pub async fn admit(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        let namespace = request.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let pod_name = request.name.clone();
        if request.kind.kind != "Pod" || request.operation != Operation::Create {
            return self.answer("skipped", allowed);
        }
        let raw = match request.object.as_ref().map(serde_json::to_value) {
            Some(Ok(raw)) => raw,
            Some(Err(err)) => return self.answer("invalid", invalid(allowed, format!("not a Pod: {err}"))),
            None => return self.answer("invalid", invalid(allowed, "the request carries no object".into())),
        };
        let pod: Pod = match serde_json::from_value(raw.clone()) {
            Ok(pod) => pod,
            Err(err) => return self.answer("invalid", invalid(allowed, format!("not a Pod: {err}"))),
        };
        // What the annotations ask is checked first: its refusal says what to change.
        let mut injected = match inject::inject(&pod, &self.template) {
            Ok(Injection::Skip(_)) => return self.answer("skipped", allowed),
            Err(rejected) => return self.answer("denied", allowed.deny(rejected.0)),
            Ok(Injection::Inject(injected)) => injected,
        };

        // The sidecar authenticates as the namespace; without its Secret it could not start.
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &namespace);
        match secrets.get_opt(CREDENTIALS_SECRET).await {
            // A certificate identity (TLS): the sidecar mounts it instead of the digest.
            Ok(Some(secret)) if tls_identity::is_certificate(&secret) => tls_identity::use_certificate(&mut injected),
            Ok(Some(_)) => {}
            Ok(None) => {
                let message = format!(
                    "namespace {namespace} has no Paddock credentials yet (Secret {CREDENTIALS_SECRET}): apply a \
                     DistributedLock or WorkQueue in {namespace} first; the operator then creates them, and the \
                     pod can be created again (a Deployment retries by itself)"
                );
                return self.answer("denied", allowed.deny(message));
            }
            Err(err) => {
                let message = format!("could not read Secret {namespace}/{CREDENTIALS_SECRET}: {err}; retry");
                return self.answer("denied", allowed.deny(message));
            }
        }

        match allowed.clone().with_patch(patch(&raw, &injected)) {
            Ok(response) => {
                tracing::info!(namespace, pod = pod_name, "injected the Paddock sidecar");
                self.answer("injected", response)
            }
            Err(err) => self.answer("denied", allowed.deny(format!("could not encode the patch: {err}"))),
        }
    }

    fn answer(&self, result: &'static str, response: AdmissionResponse) -> AdmissionResponse {
        if result == "denied" || result == "invalid" {
            tracing::info!(result, message = response.result.message, "admission refused");
        }
        self.ctx.admissions.admitted(result);
        response
    }
}
