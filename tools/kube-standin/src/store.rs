//! The stand-in's storage: objects as JSON by resource, namespace and name, one global
//! resourceVersion counter, and a bounded history of changes for watches.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A resource type the stand-in serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl ResourceKey {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self { group: group.to_owned(), version: version.to_owned(), plural: plural.to_owned() }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }
}

#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub kind: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (spec and status then change separately).
    pub status_subresource: bool,
    /// `additionalPrinterColumns` of a CRD version: (name, type, jsonPath).
    pub columns: Vec<(String, String, String)>,
    /// A CRD version's `openAPIV3Schema`.
    pub schema: Option<Value>,
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: ResourceKey,
    pub namespace: Option<String>,
    pub rv: u64,
    pub kind: &'static str,
    pub object: Value,
    /// When it was made: a watch with a lag delivers it [`Store::watch_lag`] later.
    pub at: tokio::time::Instant,
}

/// What a request can fail with, as Kubernetes says it.
#[derive(Debug)]
pub struct Failure {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

type ObjectKey = (ResourceKey, String, String);

/// How an update is made: to `""` (the object) or `"status"`, whether the caller's
/// resourceVersion must match (PUT and patches from clients), and whether the request
/// asked for `fieldValidation=Strict`.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub subresource: &'a str,
    pub check_rv: bool,
    pub strict: bool,
}

pub struct Store {
    pub resources: BTreeMap<ResourceKey, ResourceInfo>,
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Change>,
    /// resourceVersion of the newest change dropped from the history.
    dropped_up_to: u64,

    pub changes: broadcast::Sender<Change>,
    /// How long after a change the live watches deliver it (zero unless a test sets it):
    /// a real API server's watch lags its writes, most under load, so a client's cache may
    /// not have seen the client's own write yet when it reads the cache again.
    pub watch_lag: std::time::Duration,
}

const HISTORY: usize = 10_000;

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let mut store = Self {
            resources: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            dropped_up_to: 0,
            changes: broadcast::channel(4096).0,
            watch_lag: std::time::Duration::ZERO,
        };
        for (group, version, plural, kind, namespaced) in [
            ("", "v1", "namespaces", "Namespace", false),
            ("", "v1", "secrets", "Secret", true),
            ("", "v1", "configmaps", "ConfigMap", true),
            ("", "v1", "events", "Event", true),
            ("", "v1", "pods", "Pod", true),
            // Stored only (nothing runs them): examples/ holds one.
            ("batch", "v1", "cronjobs", "CronJob", true),
            // Stored only: the operator restarts the managed ensemble's by a patch.
            ("apps", "v1", "statefulsets", "StatefulSet", true),
            ("events.k8s.io", "v1", "events", "Event", true),
            ("coordination.k8s.io", "v1", "leases", "Lease", true),
            (
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
                "MutatingWebhookConfiguration",
                false,
            ),
            ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false),
        ] {
            store.resources.insert(
                ResourceKey::new(group, version, plural),
                ResourceInfo {
                    kind: kind.to_owned(),
                    singular: kind.to_lowercase(),
                    namespaced,
                    short_names: match plural {
                        "customresourcedefinitions" => vec!["crd".to_owned(), "crds".to_owned()],
                        "namespaces" => vec!["ns".to_owned()],
                        "configmaps" => vec!["cm".to_owned()],
                        "pods" => vec!["po".to_owned()],
                        "cronjobs" => vec!["cj".to_owned()],
                        _ => Vec::new(),
                    },
                    categories: Vec::new(),
                    status_subresource: plural == "customresourcedefinitions",
                    columns: Vec::new(),
                    schema: None,
                },
            );
        }
        for ns in ["default", "kube-system"] {
            let key = ResourceKey::new("", "v1", "namespaces");
            let _ = store.create(
                &key,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
            );
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn record(&mut self, key: &ResourceKey, namespace: Option<&str>, kind: &'static str, object: Value) {
        let change = Change {
            key: key.clone(),
            namespace: namespace.map(str::to_owned),
            rv: self.rv,
            kind,
            object,
            at: tokio::time::Instant::now(),
        };
        self.history.push_back(change.clone());
        if self.history.len() > HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.dropped_up_to = dropped.rv;
        }
        let _ = self.changes.send(change);
    }

    /// Changes after `rv` of `key` (in `namespace`, if given), or None when the history no
    /// longer reaches back that far (the watcher must list again: 410 Gone).
    pub fn since(&self, key: &ResourceKey, namespace: Option<&str>, rv: u64) -> Option<Vec<Change>> {
        if rv < self.dropped_up_to {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|c| c.rv > rv && &c.key == key && (namespace.is_none() || c.namespace.as_deref() == namespace))
                .cloned()
                .collect(),
        )
    }

    fn object_key(key: &ResourceKey, namespace: Option<&str>, name: &str) -> ObjectKey {
        (key.clone(), namespace.unwrap_or_default().to_owned(), name.to_owned())
    }

    pub fn get(&self, key: &ResourceKey, namespace: Option<&str>, name: &str) -> Result<Value, Failure> {
        self.objects
            .get(&Self::object_key(key, namespace, name))
            .cloned()
            .ok_or_else(|| Failure::new(404, "NotFound", format!("{} \"{name}\" not found", key.plural)))
    }

    pub fn list(&self, key: &ResourceKey, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| k == key && (namespace.is_none() || Some(ns.as_str()) == namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `strict`: the request asked for `fieldValidation=Strict` (unknown fields are errors).
    pub fn create(
        &mut self,
        key: &ResourceKey,
        namespace: Option<&str>,
        mut object: Value,
        strict: bool,
    ) -> Result<Value, Failure> {
        let info = self.resources.get(key).cloned().ok_or_else(|| Failure::new(404, "NotFound", "no such resource"))?;
        let name = object["metadata"]["name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::new(422, "Invalid", "metadata.name: Required value"))?;
        if info.namespaced {
            let ns = namespace.unwrap_or_default();
            if self.get(&ResourceKey::new("", "v1", "namespaces"), None, ns).is_err() {
                return Err(Failure::new(404, "NotFound", format!("namespaces \"{ns}\" not found")));
            }
        }
        validate(&info, &mut object, strict)?;
        let okey = Self::object_key(key, namespace, &name);
        if self.objects.contains_key(&okey) {
            return Err(Failure::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", key.plural)));
        }
        self.rv += 1;
        let meta = object["metadata"].as_object_mut().ok_or_else(|| Failure::new(400, "BadRequest", "no metadata"))?;
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        object["apiVersion"] = json!(key.api_version());
        object["kind"] = json!(info.kind);
        if info.status_subresource && key.plural != "customresourcedefinitions" {
            object.as_object_mut().expect("object").remove("status");
        }
        self.objects.insert(okey, object.clone());
        self.record(key, namespace, "ADDED", object.clone());
        Ok(object)
    }

    /// Replaces an object (PUT, or the result of a patch). `subresource` is "status" for
    /// `/status` (only status changes) or "" (status kept when it is a subresource).
    pub fn replace(
        &mut self,
        key: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        how: Write<'_>,
    ) -> Result<Value, Failure> {
        let Write { subresource, check_rv, strict } = how;
        let info = self.resources.get(key).cloned().ok_or_else(|| Failure::new(404, "NotFound", "no such resource"))?;
        let current = self.get(key, namespace, name)?;
        let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
        if check_rv
            && let Some(rv) = object["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && rv != current_rv
        {
            return Err(Failure::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    key.plural
                ),
            ));
        }
        if info.status_subresource {
            if subresource == "status" {
                let status = object["status"].take();
                object = current.clone();
                object["status"] = status;
            } else {
                object["status"] = current["status"].clone();
                if object["status"].is_null() {
                    object.as_object_mut().expect("object").remove("status");
                }
            }
        }
        // Identity and bookkeeping come from the server.
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "namespace", "name"] {
            match current["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        validate(&info, &mut object, strict)?;
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = object.get("spec") != current.get("spec");
        object["metadata"]["generation"] = json!(if spec_changed { generation + 1 } else { generation });
        object["apiVersion"] = json!(key.api_version());
        object["kind"] = json!(info.kind);
        if object == current {
            return Ok(current); // no-op: no new resourceVersion, no event
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let okey = Self::object_key(key, namespace, name);
        let finalizers_empty = object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if object["metadata"].get("deletionTimestamp").is_some() && finalizers_empty {
            self.objects.remove(&okey);
            self.record(key, namespace, "DELETED", object.clone());
            return Ok(object);
        }
        self.objects.insert(okey, object.clone());
        self.record(key, namespace, "MODIFIED", object.clone());
        Ok(object)
    }

    /// Deletes an object; with finalizers it only gets a deletionTimestamp.
    pub fn delete(&mut self, key: &ResourceKey, namespace: Option<&str>, name: &str) -> Result<Value, Failure> {
        let mut object = self.get(key, namespace, name)?;
        let okey = Self::object_key(key, namespace, name);
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let has_finalizers = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if object["metadata"].get("deletionTimestamp").is_none() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                self.objects.insert(okey, object.clone());
                self.record(key, namespace, "MODIFIED", object.clone());
            }
            return Ok(object);
        }
        self.objects.remove(&okey);
        self.record(key, namespace, "DELETED", object.clone());
        Ok(object)
    }

    /// Registers what a CustomResourceDefinition declares.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), Failure> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().ok_or_else(|| Failure::new(422, "Invalid", "spec.group: Required value"))?;
        let names = &spec["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
        };
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"] == json!(false) {
                continue;
            }
            let key = ResourceKey::new(
                group,
                version["name"].as_str().unwrap_or_default(),
                names["plural"].as_str().unwrap_or_default(),
            );
            self.resources.insert(
                key,
                ResourceInfo {
                    kind: names["kind"].as_str().unwrap_or_default().to_owned(),
                    singular: names["singular"].as_str().unwrap_or_default().to_owned(),
                    namespaced: spec["scope"] == "Namespaced",
                    short_names: strings(&names["shortNames"]),
                    categories: strings(&names["categories"]),
                    status_subresource: version["subresources"]["status"].is_object(),
                    columns: version["additionalPrinterColumns"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                            (field("name"), field("type"), field("jsonPath"))
                        })
                        .collect(),
                    schema: version["schema"].get("openAPIV3Schema").cloned(),
                },
            );
        }
        Ok(())
    }
}

/// Defaults and validates a custom resource against its schema (422 Invalid when wrong).
fn validate(info: &ResourceInfo, object: &mut Value, strict: bool) -> Result<(), Failure> {
    let Some(schema) = &info.schema else { return Ok(()) };
    let errors = super::schema::check(schema, object, strict);
    if errors.is_empty() {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Err(Failure::new(422, "Invalid", format!("{} \"{name}\" is invalid: {}", info.kind, errors.join(", "))))
}
