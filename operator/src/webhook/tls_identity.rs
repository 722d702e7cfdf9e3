//! The injected sidecar of a namespace whose identity is a client certificate: the
//! namespace's Secret mounted read-only, `PADDOCK_ZK_TLS_CA/CERT/KEY` naming its files
//! (`ca.crt`, `tls.crt`, `tls.key`) and `PADDOCK_ZK_OPERATOR_ID` from its `operator-id`.
//! The digest credentials stay, optional: a namespace that had them before TLS keeps them
//! in its Secret, and its sidecars present both identities — nodes made under digest name
//! that identity alone, and ZooKeeper's `auth` ACL of what a sidecar makes names every
//! identity of its session, so pods of both kinds share the namespace's locks and queues
//! while the app's pods are replaced. A namespace made with TLS has no such key, and the
//! variable is then left unset. The kubelet rewrites the mounted files when the
//! operator renews the certificate, and the sidecar reads them again every 10 s.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Pod, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};

use super::inject::SIDECAR_NAME;
use crate::reconcile::identity::{CA_KEY, CERT_KEY, CREDENTIALS_SECRET, KEY_KEY, OPERATOR_ID_KEY};

/// The volume holding the namespace's certificate, and where the sidecar mounts it.
pub const VOLUME: &str = "paddock-zk-identity";
pub const MOUNT_PATH: &str = "/var/run/paddock/zk-identity";

/// Whether the namespace's Secret holds a certificate identity (else digest credentials).
pub fn is_certificate(secret: &k8s_openapi::api::core::v1::Secret) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(CERT_KEY) && d.contains_key(KEY_KEY))
}

/// Switches the injected sidecar of `pod` from digest credentials to the certificate.
pub fn use_certificate(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else { return };
    let containers = spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut());
    let Some(sidecar) = containers.into_iter().find(|c| c.name == SIDECAR_NAME) else { return };
    switch_env(sidecar);
    sidecar.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
        name: VOLUME.into(),
        mount_path: MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(CREDENTIALS_SECRET.into()),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn switch_env(sidecar: &mut Container) {
    let env = sidecar.env.get_or_insert_with(Vec::new);
    let digest = env.iter_mut().find(|var| var.name == "PADDOCK_ZK_AUTH");
    if let Some(selector) = digest.and_then(|var| var.value_from.as_mut()).and_then(|f| f.secret_key_ref.as_mut()) {
        selector.optional = Some(true);
    }
    let file = |name: &str, key: &str| EnvVar {
        name: name.into(),
        value: Some(format!("{MOUNT_PATH}/{key}")),
        ..Default::default()
    };
    env.push(file("PADDOCK_ZK_TLS_CA", CA_KEY));
    env.push(file("PADDOCK_ZK_TLS_CERT", CERT_KEY));
    env.push(file("PADDOCK_ZK_TLS_KEY", KEY_KEY));
    env.push(EnvVar {
        name: "PADDOCK_ZK_OPERATOR_ID".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: CREDENTIALS_SECRET.into(),
                key: OPERATOR_ID_KEY.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::inject::tests::template;
    use crate::webhook::inject::{Injection, inject};

    fn injected_pod(native: bool) -> (serde_json::Value, Pod) {
        let raw = serde_json::json!({
            "metadata": {"name": "app", "annotations": {"paddock.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        });
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let Injection::Inject(injected) = inject(&pod, &template(native)).unwrap() else { panic!("injected") };
        (raw, *injected)
    }

    fn sidecar(pod: &Pod) -> &Container {
        let spec = pod.spec.as_ref().unwrap();
        spec.init_containers.iter().flatten().chain(&spec.containers).find(|c| c.name == SIDECAR_NAME).unwrap()
    }

    #[test]
    fn the_sidecar_mounts_the_certificate_read_only_and_names_its_files() {
        for native in [true, false] {
            let (_, mut pod) = injected_pod(native);
            use_certificate(&mut pod);
            let sidecar = sidecar(&pod);
            let env = sidecar.env.as_ref().unwrap();
            let get = |name: &str| env.iter().find(|v| v.name == name);
            // The digest credentials of a namespace that had them before TLS, if it still has.
            let digest = get("PADDOCK_ZK_AUTH").unwrap().value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
            assert_eq!((digest.name.as_str(), digest.key.as_str()), (CREDENTIALS_SECRET, "credentials"));
            assert_eq!(digest.optional, Some(true), "unset where the Secret has no digest credentials");
            assert_eq!(get("PADDOCK_ZK_TLS_CA").unwrap().value.as_deref(), Some("/var/run/paddock/zk-identity/ca.crt"));
            assert_eq!(
                get("PADDOCK_ZK_TLS_CERT").unwrap().value.as_deref(),
                Some("/var/run/paddock/zk-identity/tls.crt")
            );
            assert_eq!(
                get("PADDOCK_ZK_TLS_KEY").unwrap().value.as_deref(),
                Some("/var/run/paddock/zk-identity/tls.key")
            );
            let operator = get("PADDOCK_ZK_OPERATOR_ID").unwrap().value_from.as_ref().unwrap();
            let selector = operator.secret_key_ref.as_ref().unwrap();
            assert_eq!((selector.name.as_str(), selector.key.as_str()), (CREDENTIALS_SECRET, "operator-id"));
            let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
            assert_eq!(
                (mount.name.as_str(), mount.mount_path.as_str(), mount.read_only),
                (VOLUME, MOUNT_PATH, Some(true))
            );
            let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
            let secret = volumes.iter().find(|v| v.name == VOLUME).unwrap().secret.as_ref().unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some(CREDENTIALS_SECRET));
            // The app's containers get neither the mount nor the settings.
            let app = pod.spec.as_ref().unwrap().containers.iter().find(|c| c.name == "app").unwrap();
            assert!(app.volume_mounts.is_none());
            assert!(app.env.iter().flatten().all(|v| !v.name.starts_with("PADDOCK_ZK")));
        }
    }

    #[test]
    fn the_patch_adds_the_volume_and_the_sidecar_with_its_mount() {
        let (raw, mut pod) = injected_pod(true);
        use_certificate(&mut pod);
        let patch = crate::webhook::patch::patch(&raw, &pod);
        let text = serde_json::to_string(&patch).unwrap();
        assert!(text.contains("\"/spec/volumes\""), "{text}");
        assert!(text.contains(MOUNT_PATH) && text.contains("\"readOnly\":true"), "{text}");
        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let patched: Pod = serde_json::from_value(patched).unwrap();
        assert_eq!(sidecar(&patched), sidecar(&pod));
    }
}
