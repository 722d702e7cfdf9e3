//! `paddock.dev/cli: "true"`: the `paddock` command in every app container. An init
//! container of the sidecar's image copies its `/usr/local/bin/paddock` into an emptyDir
//! (`paddock install /paddock/bin`), first among the init containers so that the app's own
//! can use it too; every app container mounts that emptyDir read-only at `/paddock/bin`,
//! which is put in front of its `PATH`. Pure, like `inject`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PodSpec, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::inject::{Rejected, SidecarTemplate};

/// The annotation that asks for the `paddock` command in the app containers.
pub const CLI_ANNOTATION: &str = "paddock.dev/cli";
/// The init container that installs it, and the emptyDir volume it installs it into.
pub const CLI_NAME: &str = "paddock-cli";
/// Where the app containers find `paddock` (mounted read-only, first in `PATH`).
pub const CLI_DIR: &str = "/paddock/bin";
/// The `PATH` of a container whose `env` sets none, after `CLI_DIR`: the usual one of
/// Debian's and Alpine's shells (the image's own `PATH` cannot be read from here).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The binary in the sidecar image that installs itself.
const INSTALLER: &str = "/usr/local/bin/paddock";
/// The emptyDir's limit: the binary is a few MB.
const SIZE_LIMIT: &str = "64Mi";

/// Whether the pod asks for the command; an error saying what to write for a value that
/// is neither `"true"` nor `"false"`.
pub fn wanted(annotations: &BTreeMap<String, String>) -> Result<bool, Rejected> {
    match annotations.get(CLI_ANNOTATION).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Rejected(format!(
            "annotation {CLI_ANNOTATION}: {other:?} is neither \"true\" nor \"false\"; write {CLI_ANNOTATION}: \"true\" \
             (quoted) to get the paddock command in the app containers, or leave the annotation out"
        ))),
    }
}

/// Gives the app's containers and init containers (those `spec` holds now, so call it
/// before the sidecar is added) the volume and `PATH`, adds the volume, and returns the
/// init container to put first among the init containers. Refused when the pod already
/// uses the names or the directory.
pub fn equip(spec: &mut PodSpec, template: &SidecarTemplate, security: SecurityContext) -> Result<Container, Rejected> {
    conflicts(spec)?;
    let read_only =
        VolumeMount { name: CLI_NAME.into(), mount_path: CLI_DIR.into(), read_only: Some(true), ..Default::default() };
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        container.volume_mounts.get_or_insert_with(Vec::new).push(read_only.clone());
        put_on_path(container);
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CLI_NAME.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity(SIZE_LIMIT.into())), ..Default::default() }),
        ..Default::default()
    });
    let quantities = |pairs: &[(&str, &str)]| {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect::<BTreeMap<_, _>>())
    };
    Ok(Container {
        name: CLI_NAME.into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.pull_policy.clone()),
        command: Some([INSTALLER, "install", CLI_DIR].map(str::to_owned).to_vec()),
        volume_mounts: Some(vec![VolumeMount {
            name: CLI_NAME.into(),
            mount_path: CLI_DIR.into(),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", "10m"), ("memory", "16Mi")]),
            limits: quantities(&[("memory", "64Mi")]),
            ..Default::default()
        }),
        security_context: Some(security),
        // `kubectl describe` shows why an install failed.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    })
}

/// `CLI_DIR` in front of the `PATH` the container's `env` sets, or in front of
/// `DEFAULT_PATH`; a `PATH` from a ConfigMap or Secret is left as it is (`paddock` is then
/// `/paddock/bin/paddock`).
fn put_on_path(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    match env.iter_mut().find(|e| e.name == "PATH") {
        Some(var) if var.value_from.is_none() => {
            let value = var.value.get_or_insert_default();
            if !value.split(':').any(|dir| dir == CLI_DIR) {
                *value = if value.is_empty() { CLI_DIR.to_owned() } else { format!("{CLI_DIR}:{value}") };
            }
        }
        Some(_) => {}
        None => env.push(EnvVar {
            name: "PATH".into(),
            value: Some(format!("{CLI_DIR}:{DEFAULT_PATH}")),
            ..Default::default()
        }),
    }
}

fn conflicts(spec: &PodSpec) -> Result<(), Rejected> {
    let refuse = |what: String| {
        Err(Rejected(format!(
            "{what}, which {CLI_ANNOTATION}: \"true\" needs for the paddock command; rename it, or leave the \
             annotation out"
        )))
    };
    if spec.volumes.iter().flatten().any(|v| v.name == CLI_NAME) {
        return refuse(format!("the pod already has a volume named {CLI_NAME}"));
    }
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        if container.name == CLI_NAME {
            return refuse(format!("the pod already has a container named {CLI_NAME}"));
        }
        if container.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == CLI_DIR) {
            return refuse(format!("container {} already mounts a volume at {CLI_DIR}", container.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::inject::tests::template;
    use crate::webhook::inject::{INJECT_ANNOTATION, Injection, SIDECAR_NAME, inject};
    use k8s_openapi::api::core::v1::Pod;

    fn pod(cli: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "report", "annotations": {INJECT_ANNOTATION: "true", CLI_ANNOTATION: cli}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn app_spec() -> serde_json::Value {
        serde_json::json!({
            "initContainers": [{"name": "migrate", "image": "app:1"}],
            "containers": [
                {"name": "app", "image": "app:1", "env": [{"name": "PATH", "value": "/opt/app/bin:/usr/bin:/bin"}]},
                {"name": "helper", "image": "helper:1", "env": [{"name": "A", "value": "1"}]},
            ],
        })
    }

    fn injected_spec(pod: &Pod, native: bool) -> PodSpec {
        match inject(pod, &template(native)).unwrap() {
            Injection::Inject(pod) => pod.spec.unwrap(),
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    fn path_of(container: &Container) -> Option<&str> {
        container.env.iter().flatten().find(|e| e.name == "PATH").and_then(|e| e.value.as_deref())
    }

    #[test]
    fn the_installer_runs_first_from_the_sidecar_image_as_restricted_as_the_sidecar() {
        for native in [true, false] {
            let spec = injected_spec(&pod("true", app_spec()), native);
            let init = spec.init_containers.as_ref().unwrap();
            let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
            let expected: &[&str] = if native { &[CLI_NAME, SIDECAR_NAME, "migrate"] } else { &[CLI_NAME, "migrate"] };
            assert_eq!(names, expected, "native={native}: before the sidecar and the app's own init containers");
            let sidecar = init.iter().chain(&spec.containers).find(|c| c.name == SIDECAR_NAME).unwrap();
            let installer = &init[0];
            assert_eq!(installer.image, sidecar.image);
            assert_eq!(installer.image_pull_policy, sidecar.image_pull_policy);
            assert_eq!(installer.security_context, sidecar.security_context);
            let security = installer.security_context.as_ref().unwrap();
            assert_eq!((security.run_as_non_root, security.run_as_user), (Some(true), Some(65532)));
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(security.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(installer.restart_policy, None, "it runs to completion");
            assert_eq!(
                installer.command.as_deref().unwrap(),
                ["/usr/local/bin/paddock", "install", "/paddock/bin"].map(str::to_owned)
            );
            let mounts = installer.volume_mounts.as_ref().unwrap();
            assert_eq!(mounts.len(), 1);
            assert_eq!((mounts[0].name.as_str(), mounts[0].mount_path.as_str()), (CLI_NAME, CLI_DIR));
            assert_ne!(mounts[0].read_only, Some(true), "it writes the binary there");
            let resources = installer.resources.as_ref().unwrap();
            assert_eq!(resources.requests.as_ref().unwrap()["memory"], Quantity("16Mi".into()));
            assert_eq!(resources.limits.as_ref().unwrap()["memory"], Quantity("64Mi".into()));

            let volume = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == CLI_NAME).unwrap();
            let empty_dir = volume.empty_dir.as_ref().unwrap();
            assert_eq!(
                (empty_dir.medium.as_deref(), empty_dir.size_limit.clone()),
                (None, Some(Quantity("64Mi".into())))
            );
        }
    }

    #[test]
    fn every_app_container_mounts_it_read_only_with_it_first_in_path() {
        for native in [true, false] {
            let spec = injected_spec(&pod("true", app_spec()), native);
            let init = spec.init_containers.as_ref().unwrap();
            let apps: Vec<&Container> = spec.containers.iter().chain(init).filter(|c| c.name != SIDECAR_NAME).collect();
            assert_eq!(apps.len(), 4, "app, helper, migrate, and the installer");
            for app in apps.iter().filter(|c| c.name != CLI_NAME) {
                let mount = app.volume_mounts.iter().flatten().find(|m| m.name == CLI_NAME);
                let mount = mount.unwrap_or_else(|| panic!("{} mounts {CLI_NAME}", app.name));
                assert_eq!((mount.mount_path.as_str(), mount.read_only), (CLI_DIR, Some(true)), "{}", app.name);
            }
            let by_name = |name: &str| *apps.iter().find(|c| c.name == name).unwrap();
            assert_eq!(path_of(by_name("app")), Some("/paddock/bin:/opt/app/bin:/usr/bin:/bin"), "its own PATH, after");
            let default = "/paddock/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
            assert_eq!(path_of(by_name("helper")), Some(default));
            assert_eq!(path_of(by_name("migrate")), Some(default), "the app's init containers too");
            assert_eq!(by_name("helper").env.as_ref().unwrap()[0].name, "A", "the app's variables stay first");
            let sidecar = spec.containers.iter().chain(init).find(|c| c.name == SIDECAR_NAME).unwrap();
            assert!(sidecar.volume_mounts.is_none() && path_of(sidecar).is_none(), "the sidecar needs none of it");
        }
    }

    #[test]
    fn a_path_from_a_secret_stays_and_an_empty_one_becomes_the_directory() {
        let spec = serde_json::json!({"containers": [
            {"name": "a", "image": "a", "env": [{"name": "PATH", "valueFrom": {"configMapKeyRef": {"name": "p", "key": "k"}}}]},
            {"name": "b", "image": "b", "env": [{"name": "PATH", "value": ""}]},
        ]});
        let spec = injected_spec(&pod("true", spec), true);
        let a = &spec.containers[0].env.as_ref().unwrap()[0];
        assert!(a.value.is_none() && a.value_from.is_some(), "{a:?}");
        assert_eq!(path_of(&spec.containers[1]), Some(CLI_DIR));
    }

    #[test]
    fn without_the_annotation_or_with_false_nothing_of_it_is_added() {
        for cli in [None, Some("false")] {
            let mut pod = pod("true", app_spec());
            let annotations = pod.metadata.annotations.as_mut().unwrap();
            match cli {
                Some(value) => annotations.insert(CLI_ANNOTATION.into(), value.into()),
                None => annotations.remove(CLI_ANNOTATION),
            };
            let spec = injected_spec(&pod, true);
            assert!(spec.volumes.is_none(), "{cli:?}");
            assert!(spec.init_containers.unwrap().iter().all(|c| c.name != CLI_NAME));
            assert_eq!(path_of(&spec.containers[0]), Some("/opt/app/bin:/usr/bin:/bin"), "{cli:?}");
            assert!(spec.containers.iter().all(|c| c.volume_mounts.is_none()));
        }
        // Without paddock.dev/inject, the CLI alone adds nothing either.
        let mut alone = pod("true", app_spec());
        alone.metadata.annotations.as_mut().unwrap().remove(INJECT_ANNOTATION);
        assert!(matches!(inject(&alone, &template(true)), Ok(Injection::Skip(_))));
    }

    #[test]
    fn other_values_and_names_in_use_are_rejected_with_what_to_write() {
        for value in ["yes", "True", "1", ""] {
            let message = inject(&pod(value, app_spec()), &template(true)).unwrap_err().0;
            assert!(message.contains(&format!("{value:?} is neither")), "{message}");
            assert!(message.contains("paddock.dev/cli: \"true\""), "it says what to write: {message}");
        }
        let clashes = [
            serde_json::json!({"containers": [{"name": "app", "image": "a"}], "volumes": [{"name": "paddock-cli", "emptyDir": {}}]}),
            serde_json::json!({"containers": [{"name": "paddock-cli", "image": "a"}]}),
            serde_json::json!({"volumes": [{"name": "tools", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "tools", "mountPath": "/paddock/bin/"}]}]}),
        ];
        for spec in clashes {
            let message = inject(&pod("true", spec.clone()), &template(true)).unwrap_err().0;
            assert!(message.contains("rename it, or leave the annotation out"), "{spec}: {message}");
        }
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = match inject(&pod("true", app_spec()), &template(true)).unwrap() {
            Injection::Inject(pod) => *pod,
            other => panic!("{other:?}"),
        };
        assert!(matches!(inject(&once, &template(true)), Ok(Injection::Skip(_))));
        // Even once the status annotation is gone (a copy of the injected spec), the
        // sidecar's presence keeps it from being done again.
        let mut copy = once.clone();
        copy.metadata.annotations.as_mut().unwrap().remove(crate::webhook::inject::STATUS_ANNOTATION);
        assert!(matches!(inject(&copy, &template(true)), Ok(Injection::Skip(_))));
    }
}
