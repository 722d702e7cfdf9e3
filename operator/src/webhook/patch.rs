//! The injected pod as a JSONPatch on the pod as the API server sent it (`raw`): each
//! thing the injection added, added on its own and addressed in `raw` — labels and
//! annotations, variables and volume mounts inside the pod's own containers, volumes, the
//! new containers at their places — so fields this operator's Kubernetes types do not
//! know stay where they are. The one value it rewrites is a variable the injection changed
//! (`PATH`, with `paddock.dev/cli`), and only that variable's `value`.

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

/// The patch from `raw` to `injected` (which `inject` made from `raw`).
pub fn patch(raw: &Value, injected: &Pod) -> json_patch::Patch {
    let spec = injected.spec.as_ref().expect("an injected pod has a spec");
    let lists =
        [("containers", &spec.containers[..]), ("initContainers", spec.init_containers.as_deref().unwrap_or_default())];
    let mut operations = metadata(raw, injected);
    // Inside the containers the pod had, while they keep their indices.
    for (list, containers) in lists {
        for (index, old) in items(raw, &format!("/spec/{list}")).iter().enumerate() {
            if let Some(new) = containers.iter().find(|c| old["name"] == c.name.as_str()) {
                inside(&mut operations, &format!("/spec/{list}/{index}"), old, &to_value(new));
            }
        }
    }
    let volumes = spec.volumes.iter().flatten().map(to_value);
    let known = items(raw, "/spec/volumes");
    let added = volumes.filter(|v| !known.iter().any(|k| k["name"] == v["name"])).collect();
    append(&mut operations, is_list(raw, "/spec/volumes"), "/spec/volumes", added);
    // The new containers, each at its index in the injected list: inserted in that order,
    // the pod's own keep their order around them.
    for (list, containers) in lists {
        let pointer = format!("/spec/{list}");
        let known = items(raw, &pointer);
        let is_new = |c: &&Container| !known.iter().any(|k| k["name"] == c.name.as_str());
        if is_list(raw, &pointer) {
            for (index, container) in containers.iter().enumerate().filter(|(_, c)| is_new(c)) {
                operations.push(add(format!("{pointer}/{index}"), to_value(container)));
            }
        } else {
            append(&mut operations, false, &pointer, containers.iter().filter(is_new).map(to_value).collect());
        }
    }
    json_patch::Patch(operations)
}

fn add(path: String, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::parse(path).expect("a valid pointer"), value })
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("a Kubernetes object serializes")
}

/// The list at `pointer` in `raw` (none when it is absent).
fn items<'a>(raw: &'a Value, pointer: &str) -> &'a [Value] {
    raw.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn is_list(raw: &Value, pointer: &str) -> bool {
    raw.pointer(pointer).is_some_and(Value::is_array)
}

/// `added` at the end of the list at `pointer` when that list `exists`, else as the list.
fn append(operations: &mut Vec<PatchOperation>, exists: bool, pointer: &str, added: Vec<Value>) {
    if added.is_empty() {
        return;
    }
    if exists {
        operations.extend(added.into_iter().map(|item| add(format!("{pointer}/-"), item)));
    } else {
        operations.push(add(pointer.to_owned(), Value::Array(added)));
    }
}

/// The labels and annotations the injection added (sidecar label; status, scrape), each
/// on its own, or as the whole map when the pod had none.
fn metadata(raw: &Value, injected: &Pod) -> Vec<PatchOperation> {
    let mut operations = Vec::new();
    for (field, map) in [("labels", &injected.metadata.labels), ("annotations", &injected.metadata.annotations)] {
        let pointer = format!("/metadata/{field}");
        let added: serde_json::Map<String, Value> = map
            .iter()
            .flatten()
            .filter(|(key, _)| raw.pointer(&pointer).and_then(|a| a.get(key.as_str())).is_none())
            .map(|(key, value)| (key.clone(), value.clone().into()))
            .collect();
        match raw.pointer(&pointer) {
            Some(Value::Object(_)) => {
                for (key, value) in added {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    operations.push(add(format!("{pointer}/{key}"), value));
                }
            }
            _ if added.is_empty() => {}
            _ => operations.push(add(pointer, added.into())),
        }
    }
    operations
}

/// What the injection did inside one of the pod's containers (`old` at `at`, `new` as
/// injected): variables it added (`PADDOCK_URL`, `PATH`) and values it changed (`PATH`),
/// volume mounts it added.
fn inside(operations: &mut Vec<PatchOperation>, at: &str, old: &Value, new: &Value) {
    let env = old["env"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut added = Vec::new();
    for var in new["env"].as_array().into_iter().flatten() {
        match env.iter().position(|e| e["name"] == var["name"]) {
            None => added.push(var.clone()),
            Some(j) if var.get("value").is_some() && var.get("value") != env[j].get("value") => {
                operations.push(add(format!("{at}/env/{j}/value"), var["value"].clone()));
            }
            Some(_) => {}
        }
    }
    append(operations, old["env"].is_array(), &format!("{at}/env"), added);
    let mounts = old["volumeMounts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let same = |a: &Value, b: &Value| a["name"] == b["name"] && a["mountPath"] == b["mountPath"];
    let added = new["volumeMounts"].as_array().into_iter().flatten().filter(|m| !mounts.iter().any(|k| same(k, m)));
    append(operations, old["volumeMounts"].is_array(), &format!("{at}/volumeMounts"), added.cloned().collect());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webhook::cli::{CLI_ANNOTATION, CLI_DIR, CLI_NAME};
    use crate::webhook::inject::tests::template;
    use crate::webhook::inject::{self, Injection};

    /// `raw` through `inject` and the patch: the patched object, which parses into the
    /// injected pod itself.
    fn injected_and_patched(raw: &Value, native: bool) -> Value {
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let Ok(Injection::Inject(injected)) = inject::inject(&pod, &template(native)) else { panic!() };
        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &patch(raw, &injected)).unwrap();
        assert_eq!(serde_json::from_value::<Pod>(patched.clone()).unwrap(), *injected, "native={native}: {raw}");
        patched
    }

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
            let patched = injected_and_patched(&raw, native);
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
            assert!(patched["spec"].get("volumes").is_none(), "no paddock.dev/cli, no volume");
        }
        // A pod without annotations at all gets them in one object.
        let bare = json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
        let mut pod: Pod = serde_json::from_value(bare.clone()).unwrap();
        pod.metadata.annotations = Some([("paddock.dev/inject".to_owned(), "true".to_owned())].into());
        let Ok(Injection::Inject(injected)) = inject::inject(&pod, &template(true)) else { panic!() };
        let mut patched = bare.clone();
        json_patch::patch(&mut patched, &patch(&bare, &injected)).unwrap();
        assert_eq!(patched["metadata"]["annotations"]["prometheus.io/scrape"], "true");
        assert_eq!(patched["metadata"]["annotations"]["paddock.dev/status"], "injected");
    }

    /// `paddock.dev/cli: "true"`: the patch adds the installer first, the volume, and in
    /// each of the pod's containers the read-only mount and `PATH` — a `PATH` of its own
    /// keeps its place and gets the directory in front; the rest stays as it was.
    #[test]
    fn the_patch_gives_the_app_containers_the_command() {
        let annotations = json!({"paddock.dev/inject": "true", CLI_ANNOTATION: "true"});
        let full = json!({
            "metadata": {"name": "report", "annotations": annotations},
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {}, "futureField": 1}],
                "initContainers": [{"name": "migrate", "image": "app:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "containers": [
                    {"name": "app", "image": "app:1", "futureField": true, "env": [
                        {"name": "A", "value": "1"}, {"name": "PATH", "value": "/opt/app/bin:/bin", "futureField": 2}]},
                    {"name": "helper", "image": "helper:1"}
                ]
            }
        });
        let bare = json!({"metadata": {"name": "report", "annotations": annotations},
                          "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
        let default_path = format!("{CLI_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        for native in [true, false] {
            let patched = injected_and_patched(&full, native);
            let spec = &patched["spec"];
            let init: Vec<&Value> = spec["initContainers"].as_array().unwrap().iter().collect();
            assert_eq!(init[0]["name"], CLI_NAME, "native={native}: the installer first");
            assert_eq!(init[0]["command"], json!(["/usr/local/bin/paddock", "install", "/paddock/bin"]));
            assert_eq!(init.last().unwrap()["name"], "migrate");
            assert_eq!(spec["volumes"][0]["futureField"], 1);
            assert_eq!(spec["volumes"][1], json!({"name": CLI_NAME, "emptyDir": {"sizeLimit": "64Mi"}}));
            let app = &spec["containers"][0];
            assert_eq!(app["futureField"], true);
            assert_eq!(
                app["env"][1],
                json!({"name": "PATH", "value": "/paddock/bin:/opt/app/bin:/bin", "futureField": 2})
            );
            let mount = json!({"name": CLI_NAME, "mountPath": CLI_DIR, "readOnly": true});
            assert_eq!(app["volumeMounts"], json!([mount]));
            let helper = &spec["containers"][1];
            assert_eq!(helper["env"][0], json!({"name": "PATH", "value": default_path}));
            assert_eq!(helper["env"][1], json!({"name": "PADDOCK_URL", "value": "http://127.0.0.1:7420"}));
            let migrate = init.last().unwrap();
            assert_eq!(migrate["volumeMounts"], json!([{"name": "data", "mountPath": "/data"}, mount]));

            let patched = injected_and_patched(&bare, native);
            assert_eq!(patched["spec"]["volumes"][0]["name"], CLI_NAME);
            assert_eq!(patched["spec"]["initContainers"][0]["name"], CLI_NAME);
            assert_eq!(patched["spec"]["containers"][0]["volumeMounts"], json!([mount]));
        }
    }
}
