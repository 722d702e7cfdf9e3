//! What a cluster does with a pod spec, done by hand for podman: the kubelet's part
//! (resolve the environment, apply the securityContext, mount the volumes, run the
//! command or the image's entrypoint) and the API server's (send the webhook an
//! AdmissionReview). Each function takes the spec as the chart or the webhook's patch
//! wrote it, so the containers run exactly that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{eventually, host_flags, workspace_binary};

/// The environment the kubelet gives `container` of pod `pod_name` in `namespace`: values
/// as written, downward-API fields, Secret keys through `secret(name, key)` (an optional
/// one that cannot be read is left out).
pub fn resolve_env(
    container: &Value,
    pod_name: &str,
    namespace: &str,
    secret: impl Fn(&str, &str) -> Result<String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().context("env name")?;
        let from = &var["valueFrom"];
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => pod_name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                other => bail!("{name}: the kubelet stand-in knows no field {other}"),
            }
        } else if from["secretKeyRef"].is_object() {
            let selector = &from["secretKeyRef"];
            match secret(selector["name"].as_str().context("name")?, selector["key"].as_str().context("key")?) {
                Ok(value) => value,
                // As the kubelet does: an optional key the Secret lacks sets nothing.
                Err(_) if selector["optional"] == true => continue,
                Err(err) => return Err(err),
            }
        } else {
            bail!("{name} has no value the kubelet stand-in can resolve: {var}");
        };
        ensure!(env.insert(name.to_owned(), value).is_none(), "{name} is set twice");
    }
    Ok(env)
}

/// podman flags for a container securityContext as the kubelet applies it (the pod's
/// runAsUser/runAsGroup unless the container's say otherwise).
pub fn security_flags(pod_security: &Value, container_security: &Value) -> Result<Vec<String>> {
    let field = |name: &str| container_security.get(name).or_else(|| pod_security.get(name)).filter(|v| !v.is_null());
    let mut flags = Vec::new();
    if let Some(user) = field("runAsUser") {
        let user = user.as_u64().context("runAsUser")?;
        // Without runAsGroup the runtime takes the user's group from the image's /etc/passwd.
        match field("runAsGroup").and_then(Value::as_u64) {
            Some(group) => flags.push(format!("--user={user}:{group}")),
            None => flags.push(format!("--user={user}")),
        }
    }
    if container_security["readOnlyRootFilesystem"] == true {
        flags.push("--read-only".to_owned());
    }
    if container_security["allowPrivilegeEscalation"] == false {
        flags.push("--security-opt=no-new-privileges".to_owned());
    }
    for capability in container_security["capabilities"]["drop"].as_array().into_iter().flatten() {
        flags.push(format!("--cap-drop={}", capability.as_str().context("a capability")?));
    }
    Ok(flags)
}

/// A volume the test provides: a host directory for the pod's volume `name`.
pub struct HostVolume<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
}

/// podman flags for the container's volume mounts: `given` host directories by volume
/// name (read-only as the mount says), emptyDirs as tmpfs; any other volume is an error.
pub fn volume_flags(pod: &Value, container: &Value, given: &[HostVolume]) -> Result<Vec<String>> {
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().into_iter().flatten().filter_map(|v| Some((v["name"].as_str()?, v))).collect();
    let mut flags = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().context("mount name")?;
        let path = mount["mountPath"].as_str().context("mountPath")?;
        if let Some(volume) = given.iter().find(|v| v.name == name) {
            let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
            flags.push(format!("--volume={}:{path}{read_only}", volume.dir.display()));
        } else if volumes.get(name).is_some_and(|v| v["emptyDir"].is_object()) {
            flags.push(format!("--tmpfs={path}"));
        } else {
            bail!("volume {name} at {path}: nothing stands for it");
        }
    }
    Ok(flags)
}

/// The arguments of `podman run -d` that start `container` of `pod` as the kubelet
/// would: on this machine's flags (host network), with its security context, volumes
/// (`volumes`, then `extra` flags), the resolved `env`, its command as the entrypoint
/// (none: the image's), its image and its args.
pub fn run_args(
    name: &str,
    pod: &Value,
    container: &Value,
    env: &BTreeMap<String, String>,
    volumes: &[HostVolume],
    extra: &[String],
) -> Result<Vec<String>> {
    let mut args = vec!["run".to_owned(), "-d".to_owned(), format!("--name={name}")];
    args.extend(host_flags());
    args.extend(security_flags(&pod["securityContext"], &container["securityContext"])?);
    args.extend(volume_flags(pod, container, volumes)?);
    args.extend_from_slice(extra);
    args.extend(env.iter().map(|(k, v)| format!("--env={k}={v}")));
    if container["command"].is_array() {
        args.push(format!("--entrypoint={}", container["command"]));
    }
    args.push(container["image"].as_str().context("the container's image")?.to_owned());
    args.extend(strings(&container["args"]));
    Ok(args)
}

/// An AdmissionReview as the API server sends it for the CREATE of `pod`.
pub fn admission_review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "images-test-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The strings of a JSON list (none when it is not one).
pub fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// The `kube-standin` binary (the Kubernetes API stand-in, tools/kube-standin) on
/// 127.0.0.1, with the kubeconfig it wrote; killed when dropped.
pub struct Standin {
    child: Child,
    pub kubeconfig: PathBuf,
}

impl Standin {
    pub fn start(kubeconfig: &Path) -> Result<Self> {
        let child = Command::new(workspace_binary("kube-standin")?)
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting kube-standin")?;
        let standin = Self { child, kubeconfig: kubeconfig.to_owned() };
        eventually(Duration::from_secs(30), "kube-standin writes its kubeconfig", || {
            std::fs::read_to_string(kubeconfig).is_ok_and(|k| k.contains("current-context"))
        })?;
        Ok(standin)
    }

    /// kubectl against the stand-in; `input` on its stdin.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        crate::kubectl(&self.kubeconfig, args, input)
    }

    /// One key of a Secret, decoded (what a secretKeyRef gives).
    pub fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<String> {
        let secret: Value =
            serde_json::from_str(&self.kubectl(&["get", "secret", "-n", namespace, name, "-o", "json"], None)?)?;
        let encoded =
            secret["data"][key].as_str().with_context(|| format!("key {key} of Secret {namespace}/{name}"))?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded)?)?)
    }

    /// The kubelet's part for the Secret volumes that `container` of `pod` (in `namespace`)
    /// mounts: each Secret's keys, or its `items`, written as files under `dir/<volume>`,
    /// readable by any user as the kubelet's default mode (0644) makes them. (volume name,
    /// directory) pairs, for [`HostVolume`]s.
    pub fn secret_volumes(
        &self,
        pod: &Value,
        container: &Value,
        namespace: &str,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        use std::os::unix::fs::PermissionsExt as _;
        let mounted: Vec<&str> =
            container["volumeMounts"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
        let mut out = Vec::new();
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            let (Some(name), Some(secret)) = (volume["name"].as_str(), volume["secret"]["secretName"].as_str()) else {
                continue;
            };
            if !mounted.contains(&name) {
                continue;
            }
            let data: Value =
                serde_json::from_str(&self.kubectl(&["get", "secret", "-n", namespace, secret, "-o", "json"], None)?)?;
            let data = data["data"].as_object().with_context(|| format!("Secret {namespace}/{secret} has data"))?;
            let items: Vec<(String, String)> = match volume["secret"]["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        Ok((
                            i["key"].as_str().context("key")?.to_owned(),
                            i["path"].as_str().context("path")?.to_owned(),
                        ))
                    })
                    .collect::<Result<_>>()?,
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            let volume_dir = dir.join(name);
            std::fs::create_dir_all(&volume_dir)?;
            std::fs::set_permissions(&volume_dir, std::fs::Permissions::from_mode(0o755))?;
            for (key, path) in items {
                let encoded = data.get(&key).and_then(Value::as_str);
                let encoded = encoded.with_context(|| format!("key {key} of Secret {namespace}/{secret}"))?;
                let file = volume_dir.join(path);
                std::fs::write(&file, base64::engine::general_purpose::STANDARD.decode(encoded)?)?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
            }
            out.push((name.to_owned(), volume_dir));
        }
        Ok(out)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_contexts_become_podman_flags() {
        let pod = json!({"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true});
        let container = json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                               "capabilities": {"drop": ["ALL"]}});
        assert_eq!(
            security_flags(&pod, &container).unwrap(),
            ["--user=65532:65532", "--read-only", "--security-opt=no-new-privileges", "--cap-drop=ALL"]
        );
        let own = json!({"runAsUser": 7, "readOnlyRootFilesystem": true});
        assert_eq!(security_flags(&pod, &own).unwrap(), ["--user=7:65532", "--read-only"]);
        assert_eq!(security_flags(&Value::Null, &own).unwrap(), ["--user=7", "--read-only"]);
    }

    #[test]
    fn the_environment_is_resolved_as_the_kubelet_resolves_it() {
        let container = json!({"env": [
            {"name": "A", "value": "1"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "AUTH", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]});
        let env = resolve_env(&container, "app", "demo", |name, key| Ok(format!("{name}/{key}"))).unwrap();
        let expected = [("A", "1"), ("AUTH", "s/k"), ("POD_NAME", "app"), ("POD_NAMESPACE", "demo")];
        assert_eq!(env, expected.map(|(k, v)| (k.to_owned(), v.to_owned())).into());
    }
}
