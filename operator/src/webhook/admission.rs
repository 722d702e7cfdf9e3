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
        let injected = match inject::inject(&pod, &self.template) {
            Ok(Injection::Skip(_)) => return self.answer("skipped", allowed),
            Err(rejected) => return self.answer("denied", allowed.deny(rejected.0)),
            Ok(Injection::Inject(injected)) => injected,
        };

        // The sidecar authenticates as the namespace; without its Secret it could not start.
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &namespace);
        match secrets.get_opt(CREDENTIALS_SECRET).await {
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

        match allowed.clone().with_patch(patch(&raw, &injected, self.template.native)) {
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

/// The JSONPatch from the pod as the API server sent it (`raw`) to `injected`, as explicit
/// additions: the sidecar, `PADDOCK_URL` in each container that lacks it, the status and
/// scrape annotations. Additions only, addressed in the raw object, so fields this operator's
/// Kubernetes types do not know stay where they are.
fn patch(raw: &serde_json::Value, injected: &Pod, native: bool) -> json_patch::Patch {
    use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
    let add = |path: String, value: serde_json::Value| {
        PatchOperation::Add(AddOperation { path: PointerBuf::parse(path).expect("a valid pointer"), value })
    };
    let spec = injected.spec.as_ref().expect("an injected pod has a spec");
    let url = spec.containers[0].env.iter().flatten().find(|e| e.name == "PADDOCK_URL").cloned();
    let url = serde_json::to_value(url.expect("the app containers get PADDOCK_URL")).expect("an EnvVar serializes");
    let sidecar = match native {
        true => &spec.init_containers.as_ref().expect("the native sidecar")[0],
        false => spec.containers.last().expect("the sidecar"),
    };
    let sidecar = serde_json::to_value(sidecar).expect("a Container serializes");

    let mut operations = Vec::new();
    // The labels and annotations the injection added (sidecar label; status, scrape),
    // each on its own.
    for (field, map) in [("labels", &injected.metadata.labels), ("annotations", &injected.metadata.annotations)] {
        let pointer = format!("/metadata/{field}");
        let added: serde_json::Map<String, serde_json::Value> = map
            .iter()
            .flatten()
            .filter(|(key, _)| raw.pointer(&pointer).and_then(|a| a.get(key.as_str())).is_none())
            .map(|(key, value)| (key.clone(), value.clone().into()))
            .collect();
        match raw.pointer(&pointer) {
            Some(serde_json::Value::Object(_)) => {
                for (key, value) in added {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    operations.push(add(format!("{pointer}/{key}"), value));
                }
            }
            _ if added.is_empty() => {}
            _ => operations.push(add(pointer, added.into())),
        }
    }
    let mut add_url = |list: &str, containers: Option<&serde_json::Value>| {
        for (index, container) in containers.and_then(|c| c.as_array()).into_iter().flatten().enumerate() {
            match container.get("env").and_then(|e| e.as_array()) {
                None => operations.push(add(format!("/spec/{list}/{index}/env"), json!([url.clone()]))),
                Some(env) if !env.iter().any(|e| e["name"] == "PADDOCK_URL") => {
                    operations.push(add(format!("/spec/{list}/{index}/env/-"), url.clone()))
                }
                Some(_) => {}
            }
        }
    };
    add_url("containers", raw.pointer("/spec/containers"));
    if native {
        // Before the insert below, while the existing init containers keep their indices.
        add_url("initContainers", raw.pointer("/spec/initContainers"));
        match raw.pointer("/spec/initContainers") {
            Some(serde_json::Value::Array(_)) => operations.push(add("/spec/initContainers/0".into(), sidecar)),
            _ => operations.push(add("/spec/initContainers".into(), json!([sidecar]))),
        }
    } else {
        operations.push(add("/spec/containers/-".into(), sidecar));
    }
    json_patch::Patch(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::inject::tests::template;

    /// Fields the operator's types do not know stay with their own container.
    #[test]
    fn the_patch_adds_and_keeps_what_it_does_not_know() {
        let raw = json!({
            "metadata": {"name": "app", "annotations": {"paddock.dev/inject": "true"}},
            "spec": {
                "initContainers": [{"name": "setup", "image": "busybox", "futureField": {"x": 1}}],
                "containers": [{"name": "app", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
                               {"name": "other", "image": "busybox", "futureField": true}]
            }
        });
        for native in [true, false] {
            let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
            let Ok(Injection::Inject(injected)) = inject::inject(&pod, &template(native)) else { panic!() };
            let mut patched = raw.clone();
            json_patch::patch(&mut patched, &patch(&raw, &injected, native)).unwrap();
            let init = patched["spec"]["initContainers"].as_array().unwrap();
            let setup = init.iter().find(|c| c["name"] == "setup").unwrap();
            assert_eq!(setup["futureField"], json!({"x": 1}), "native={native}");
            let containers = patched["spec"]["containers"].as_array().unwrap();
            assert_eq!(containers[1]["futureField"], true);
            assert_eq!(containers[0]["env"][0]["name"], "A");
            assert!(
                containers.iter().take(2).all(|c| c["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["name"] == "PADDOCK_URL"))
            );
            let sidecar = if native { &init[0] } else { containers.last().unwrap() };
            assert_eq!(sidecar["name"], inject::SIDECAR_NAME);
            assert!(sidecar.get("futureField").is_none());
            assert_eq!(patched["metadata"]["annotations"]["paddock.dev/status"], "injected");
            assert_eq!(patched["metadata"]["annotations"]["paddock.dev/inject"], "true");
            assert_eq!(patched["metadata"]["annotations"]["prometheus.io/port"], "7421");
            assert_eq!(patched["metadata"]["labels"]["paddock.dev/sidecar"], "injected");
            assert_eq!(patched["metadata"]["annotations"]["prometheus.io/path"], "/metrics");
        }
        // A pod without annotations at all gets them in one object.
        let bare = json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
        let mut pod: Pod = serde_json::from_value(bare.clone()).unwrap();
        pod.metadata.annotations = Some([("paddock.dev/inject".to_owned(), "true".to_owned())].into());
        let Ok(Injection::Inject(injected)) = inject::inject(&pod, &template(true)) else { panic!() };
        let mut patched = bare.clone();
        json_patch::patch(&mut patched, &patch(&bare, &injected, true)).unwrap();
        assert_eq!(patched["metadata"]["annotations"]["prometheus.io/scrape"], "true");
        assert_eq!(patched["metadata"]["annotations"]["paddock.dev/status"], "injected");
    }
}
