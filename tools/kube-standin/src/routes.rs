//! HTTP routes of the stand-in: discovery, and one handler that parses resource paths
//! `/api/v1/...` and `/apis/{group}/{version}/...` into a request on the store.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::store::{Failure, ResourceKey, Store, Write};

type Shared = Arc<Mutex<Store>>;

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/version", axum::routing::get(version))
        .route("/api", axum::routing::get(core_versions))
        .route("/apis", axum::routing::get(groups))
        .route("/openapi/v2", axum::routing::get(openapi_v2))
        .route("/openapi/v3", axum::routing::get(openapi_v3))
        .route("/openapi/v3/api/{version}", axum::routing::get(openapi_v3_core))
        .route("/openapi/v3/apis/{group}/{version}", axum::routing::get(openapi_v3_group))
        .fallback(resource)
        .with_state(store)
}

fn json_response(code: u16, body: Value) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), axum::Json(body)).into_response()
}

fn failure(f: Failure) -> Response {
    json_response(f.code, f.status())
}

async fn version() -> Response {
    json_response(
        200,
        json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-paddock-standin", "platform": "linux/amd64"}),
    )
}

/// OpenAPI for kubectl: no schemas (the stand-in validates custom resources itself,
/// against their CRD's structural schema, see `schema.rs`), but every write path declares
/// the `fieldValidation` parameter, so kubectl leaves validation to the server instead of
/// downloading protobuf documents to validate itself.
async fn openapi_v2() -> Response {
    failure(Failure::new(404, "NotFound", "the stand-in serves OpenAPI v3 only"))
}

async fn openapi_v3(State(store): State<Shared>) -> Response {
    let store = store.lock().expect("not poisoned");
    let mut paths = serde_json::Map::new();
    for key in store.resources.keys() {
        let path = if key.group.is_empty() {
            format!("api/{}", key.version)
        } else {
            format!("apis/{}/{}", key.group, key.version)
        };
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}")}));
    }
    json_response(200, json!({"paths": paths}))
}

async fn openapi_v3_core(
    State(store): State<Shared>,
    axum::extract::Path(version): axum::extract::Path<String>,
) -> Response {
    openapi_document(&store.lock().expect("not poisoned"), "", &version)
}

async fn openapi_v3_group(
    State(store): State<Shared>,
    axum::extract::Path((group, version)): axum::extract::Path<(String, String)>,
) -> Response {
    openapi_document(&store.lock().expect("not poisoned"), &group, &version)
}

fn openapi_document(store: &Store, group: &str, version: &str) -> Response {
    let validation = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]);
    let mut paths = serde_json::Map::new();
    for (key, info) in store.resources.iter().filter(|(k, _)| k.group == group && k.version == version) {
        let operation = json!({
            "parameters": validation, "responses": {"200": {"description": "OK"}},
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": info.kind},
        });
        let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let collection = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", key.plural)
        } else {
            format!("{base}/{}", key.plural)
        };
        paths.insert(collection.clone(), json!({"post": operation.clone(), "get": operation.clone()}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"patch": operation.clone(), "put": operation.clone(), "get": operation.clone(), "delete": operation.clone()}),
        );
    }
    json_response(
        200,
        json!({
            "openapi": "3.0.0", "info": {"title": "paddock stand-in", "version": version},
            "paths": paths, "components": {"schemas": {}},
        }),
    )
}

async fn core_versions() -> Response {
    json_response(200, json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}))
}

async fn groups(State(store): State<Shared>) -> Response {
    let store = store.lock().expect("not poisoned");
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for key in store.resources.keys().filter(|k| !k.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == key.group) {
            Some((_, versions)) if !versions.contains(&key.version) => versions.push(key.version.clone()),
            Some(_) => {}
            None => groups.push((key.group.clone(), vec![key.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
            json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json_response(200, json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

fn resource_list(store: &Store, group: &str, version: &str) -> Response {
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|(k, _)| k.group == group && k.version == version)
        .flat_map(|(k, info)| {
            let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
            let mut list = vec![json!({
                "name": k.plural, "singularName": info.singular, "namespaced": info.namespaced,
                "kind": info.kind, "verbs": verbs, "shortNames": info.short_names, "categories": info.categories,
            })];
            if info.status_subresource {
                list.push(
                    json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": info.namespaced,
                    "kind": info.kind, "verbs": ["get", "patch", "update"]}),
                );
            }
            list
        })
        .collect();
    if resources.is_empty() {
        return failure(Failure::new(404, "NotFound", format!("no resources in {group}/{version}")));
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    json_response(
        200,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// A parsed resource path.
struct Target {
    key: ResourceKey,
    namespace: Option<String>,
    name: Option<String>,
    subresource: String,
}

fn parse(path: &str) -> Option<Result<Target, (String, String)>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Err((group.to_owned(), version.to_owned())));
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, ""),
        [plural, name] => (*plural, Some((*name).to_owned()), ""),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), *sub),
        _ => return None,
    };
    Some(Ok(Target {
        key: ResourceKey::new(group, version, plural),
        namespace,
        name,
        subresource: subresource.to_owned(),
    }))
}

async fn resource(
    State(store): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = match parse(uri.path()) {
        None => return failure(Failure::new(404, "NotFound", format!("the server could not find {}", uri.path()))),
        Some(Err((group, version))) => return resource_list(&store.lock().expect("not poisoned"), &group, &version),
        Some(Ok(target)) => target,
    };
    let q = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if !store.lock().expect("not poisoned").resources.contains_key(&target.key) {
        // A namespace path `/api/v1/namespaces/{name}` parses as namespaces/{name}.
        return failure(Failure::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({})", target.key.plural),
        ));
    }
    let ns = target.namespace.as_deref();
    let strict = q("fieldValidation") == Some("Strict");
    match (method, target.name.as_deref()) {
        (Method::GET, None) if q("watch").is_some_and(|w| w == "true" || w == "1") => {
            let rv = q("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let timeout = q("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290u64);
            watch(store, target, rv, Duration::from_secs(timeout))
        }
        (Method::GET, None) => {
            let store = store.lock().expect("not poisoned");
            let items = store.list(&target.key, ns);
            if wants_table(&headers) {
                return json_response(
                    200,
                    super::table::table(&store.resources[&target.key], &items, store.resource_version()),
                );
            }
            let kind = store.resources[&target.key].kind.clone();
            json_response(
                200,
                json!({
                    "kind": format!("{kind}List"), "apiVersion": target.key.api_version(),
                    "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items,
                }),
            )
        }
        (Method::GET, Some(name)) => {
            let store = store.lock().expect("not poisoned");
            match store.get(&target.key, ns, name) {
                Ok(item) if wants_table(&headers) => json_response(
                    200,
                    super::table::table(&store.resources[&target.key], &[item], store.resource_version()),
                ),
                other => respond(other, 200),
            }
        }
        (Method::POST, None) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return failure(Failure::new(400, "BadRequest", "the body is not JSON"));
            };
            let mut store = store.lock().expect("not poisoned");
            let created = store.create(&target.key, ns, object, strict);
            if target.key.plural == "customresourcedefinitions"
                && let Ok(crd) = &created
            {
                if let Err(f) = store.register_crd(crd) {
                    return failure(f);
                }
                // Established at once, as a real server soon says.
                let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let mut established = crd.clone();
                established["status"] = json!({"conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}],
                    "acceptedNames": crd["spec"]["names"].clone()});
                return respond(
                    store.replace(
                        &target.key,
                        None,
                        &name,
                        established,
                        Write { subresource: "status", check_rv: false, strict: false },
                    ),
                    201,
                );
            }
            respond(created, 201)
        }
        (Method::PUT, Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return failure(Failure::new(400, "BadRequest", "the body is not JSON"));
            };
            respond(
                store.lock().expect("not poisoned").replace(
                    &target.key,
                    ns,
                    name,
                    object,
                    Write { subresource: &target.subresource, check_rv: true, strict },
                ),
                200,
            )
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let mut store = store.lock().expect("not poisoned");
            let current = match store.get(&target.key, ns, name) {
                Ok(current) => current,
                // Server-side apply creates what does not exist yet.
                Err(_) if content_type.starts_with("application/apply-patch") && target.subresource.is_empty() => {
                    let Ok(object) = parse_body(&body) else {
                        return failure(Failure::new(400, "BadRequest", "the body is not JSON or YAML"));
                    };
                    return respond(store.create(&target.key, ns, object, strict), 201);
                }
                Err(f) => return failure(f),
            };
            let patched = match apply_patch(current, content_type, &body) {
                Ok(patched) => patched,
                Err(f) => return failure(f),
            };
            respond(
                store.replace(
                    &target.key,
                    ns,
                    name,
                    patched,
                    Write { subresource: &target.subresource, check_rv: true, strict },
                ),
                200,
            )
        }
        (Method::DELETE, Some(name)) => respond(store.lock().expect("not poisoned").delete(&target.key, ns, name), 200),
        (method, _) => failure(Failure::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"))
}

fn respond(result: Result<Value, Failure>, code: u16) -> Response {
    match result {
        Ok(object) => json_response(code, object),
        Err(f) => failure(f),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ()> {
    serde_json::from_slice(body).or_else(|_| serde_yaml::from_slice(body)).map_err(drop)
}

/// JSON patch, or a merge (JSON merge patch; strategic merge and apply are treated as
/// merges, which is what custom resources get from a real server too, lists aside).
fn apply_patch(mut current: Value, content_type: &str, body: &[u8]) -> Result<Value, Failure> {
    if content_type.starts_with("application/json-patch+json") {
        let ops: Vec<Value> = serde_json::from_slice(body)
            .map_err(|e| Failure::new(400, "BadRequest", format!("bad JSON patch: {e}")))?;
        // As the real server (evanphx/json-patch) does: `test` for null passes on a
        // missing path — kube-runtime's finalizer helper relies on it.
        let ops: Vec<Value> = ops
            .into_iter()
            .filter(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && current.pointer(op["path"].as_str().unwrap_or_default()).is_none())
            })
            .collect();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| Failure::new(400, "BadRequest", format!("bad JSON patch: {e}")))?;
        json_patch::patch(&mut current, &patch).map_err(|e| Failure::new(422, "Invalid", e.to_string()))?;
        return Ok(current);
    }
    let patch = parse_body(body).map_err(|_| Failure::new(400, "BadRequest", "the patch is not JSON or YAML"))?;
    json_patch::merge(&mut current, &patch);
    Ok(current)
}

/// A watch: changes after `rv` from the history, then live ones, as JSON lines.
fn watch(store: Shared, target: Target, rv: u64, timeout: Duration) -> Response {
    let (backlog, live) = {
        let store = store.lock().expect("not poisoned");
        let live = store.changes.subscribe();
        match store.since(&target.key, target.namespace.as_deref(), rv) {
            Some(backlog) => (backlog, live),
            None => {
                let gone = Failure::new(410, "Expired", format!("too old resource version: {rv}"));
                let event = json!({"type": "ERROR", "object": gone.status()});
                return Response::new(Body::from(format!("{event}\n")));
            }
        }
    };
    let last = backlog.last().map_or(rv, |c| c.rv);
    let (key, namespace) = (target.key, target.namespace);
    let wanted = move |c: &super::store::Change| c.key == key && (namespace.is_none() || c.namespace == namespace);
    let wanted_live = wanted.clone();
    let backlog = futures::stream::iter(backlog.into_iter().filter(wanted));
    let live = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |c| {
        let keep = c.ok().filter(|c| c.rv > last && wanted_live(c));
        let lag = store.lock().expect("not poisoned").watch_lag;
        async move {
            let change = keep?;
            tokio::time::sleep_until(change.at + lag).await;
            Some(change)
        }
    });
    let stream = backlog
        .chain(live)
        .map(|c| Ok::<_, Infallible>(Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object})))))
        .take_until(tokio::time::sleep(timeout));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
