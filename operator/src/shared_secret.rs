//! Secrets the operator's replicas share (the webhook's serving certificate, the
//! ensemble's CA): reading a key as text, and one Secret agreed on by every replica —
//! made by whichever comes first, written guarded by what it read.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

/// A key of a Secret as text; None when it is missing or not UTF-8.
pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// A Secret's data from (key, text) pairs.
pub fn data<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, ByteString> {
    entries.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec()))).collect()
}

/// The labels of a Secret the operator made.
pub fn managed_labels() -> BTreeMap<String, String> {
    [("app.kubernetes.io/managed-by".to_owned(), "paddock-operator".to_owned())].into()
}

/// What a replica found in the shared Secret.
pub enum Found<T> {
    /// Use it.
    Use(T),
    /// Make a new one in its place (stale or damaged).
    Replace,
}

/// The value all replicas share through the Secret `name`: what `read` takes from it, or,
/// when it is missing or `read` says to replace it, what `make` makes (the value and its
/// Secret), written with a create or a replace guarded by the version read. A replica
/// that loses the race reads the winner's. Returns the value and whether this replica made it.
pub async fn agreed<T>(
    secrets: &Api<Secret>,
    name: &str,
    read: impl Fn(&Secret) -> anyhow::Result<Found<T>>,
    make: impl Fn() -> anyhow::Result<(T, Secret)>,
) -> anyhow::Result<(T, bool)> {
    for _ in 0..5 {
        let existing = secrets.get_opt(name).await.with_context(|| format!("reading Secret {name}"))?;
        if let Some(existing) = &existing
            && let Found::Use(value) = read(existing)?
        {
            return Ok((value, false));
        }
        let (value, mut object) = make()?;
        object.metadata.name = Some(name.to_owned());
        let written = match existing {
            Some(existing) => {
                object.metadata.resource_version = existing.metadata.resource_version;
                secrets.replace(name, &PostParams::default(), &object).await
            }
            None => secrets.create(&PostParams::default(), &object).await,
        };
        match written {
            Ok(_) => return Ok((value, true)),
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(err).with_context(|| format!("writing Secret {name}")),
        }
    }
    anyhow::bail!("Secret {name} kept changing while the replicas agreed on it")
}
