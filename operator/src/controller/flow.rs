//! The one reconcile flow, generic over the resource [`Kind`]: the finalizer routes a
//! resource to apply (identity -> build -> apply -> observe -> status) or to cleanup, and
//! [`settle`] turns a failure into `Ready=False`, an Event and what to do next.
//!
//! Invariants: nothing is done unless this replica leads — checked when a reconcile
//! starts and again before each write; the status is written only when it changed; each
//! reconcile is counted once in the metrics, and a success resets the object's back-off.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as Finalizer, finalizer};
use paddock_recipes::Name;
use serde_json::json;

use super::{Context, FINALIZER, backoff, last_written};
use crate::error::{Error, Step};
use crate::metrics::ObjectLabel;
use crate::reconcile::kind::{Kind, Target};
use crate::reconcile::status;

/// Runs one reconcile of `obj` (none unless this replica leads), counts it in the metrics,
/// and resets the object's back-off when it succeeds.
pub async fn reconcile<K: Kind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = backoff::key(&*obj);
    if ctx.leading().is_err() {
        // Another replica may write statuses meanwhile: this one's records say nothing.
        ctx.written.forget_all();
        tracing::debug!(object = key, "not leading: reconciling nothing");
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let result = finalized(obj, &ctx).await;
    ctx.metrics.reconciles.observe(&K::kind(&()), started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

/// How long a failed reconcile of `obj` waits before the next try.
pub fn retry_policy<K: Kind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(backoff::key(&*obj));
    tracing::debug!(reason = err.reason(), ?delay, "requeue after error");
    Action::requeue(delay)
}

/// The finalizer's routing: apply while the resource lives, cleanup when it is deleted.
async fn finalized<K: Kind>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&*obj, ctx).await,
            Finalizer::Cleanup(obj) => cleanup(&*obj, ctx).await,
        }
    })
    .await;
    settle(&*obj, &api, result, ctx).await
}

async fn apply<K: Kind>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = names(obj)?;
    let (ids, client) = ctx.identities.get(ns.as_str()).await?;
    if let Some(note) = ctx.identities.cleartext_warning(ns.as_str()) {
        ctx.event(obj, EventType::Warning, "CredentialsInClear", note).await;
    }
    let desired = obj.desired(&ctx.layout, &ns, &name, &ids).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    ctx.leading()?;
    let target = Target { client: &client, layout: &ctx.layout, ns: &ns, name: &name };
    K::provision(target, &desired).await.map_err(|e| ctx.at(Step::Provision, &e.path, ns.as_str()).zk(e.source))?;
    let at = ctx.at(Step::Observe, &desired.path, ns.as_str());
    let known: Option<K::Status> = ctx.written.get(&backoff::key(obj));
    let ready = status::ready(known.as_ref().map_or(obj.conditions(), K::status_conditions), obj.meta().generation);
    let status = obj.observe(target, desired, ready, at).await?;
    K::report(&status, &ctx.metrics.status, &object_label(&ns, &name));
    if !last_written::unchanged(obj.status() == Some(&status), known.as_ref(), |known| known == &status) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns.as_str());
        patch_status(&api, ctx, obj, serde_json::to_value(status).expect("status serializes")).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn cleanup<K: Kind>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = names(obj)?;
    let (_, client) = ctx.identities.get(ns.as_str()).await?;
    let at = ctx.at(Step::Cleanup, &K::path(&ctx.layout, &ns, &name), ns.as_str());
    ctx.leading()?;
    let target = Target { client: &client, layout: &ctx.layout, ns: &ns, name: &name };
    let notice = obj.cleanup(target, at).await?;
    ctx.metrics.status.forget(&object_label(&ns, &name));
    ctx.written.forget(&backoff::key(obj));
    ctx.event(obj, notice.type_, notice.reason, notice.note).await;
    Ok(Action::await_change())
}

/// Turns a failed reconcile into `Ready=False` with the reason, an Event, and what to do
/// next: wait for a change (invalid spec) or retry (ZooKeeper, API trouble). A replica
/// that stopped leading writes nothing.
async fn settle<K: Kind>(
    obj: &K,
    api: &Api<K>,
    result: Result<Action, finalizer::Error<Error>>,
    ctx: &Context,
) -> Result<Action, Error> {
    use kube::runtime::finalizer::Error as F;
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let err = match result {
        Ok(action) => return Ok(action),
        Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => e,
        // The finalizer's patch tests what the cache said; the cache had not caught up
        // with the server yet (this replica's own previous patch). Not a failure: try
        // again once the watch has brought the object.
        Err(F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e)))
            if e.code == 409 || e.code == 422 =>
        {
            tracing::debug!(kind = %K::kind(&()), namespace, object = %obj.name_any(), "finalizers changed meanwhile");
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        Err(F::AddFinalizer(e) | F::RemoveFinalizer(e)) => {
            Error::kube(format!("updating the finalizers of {} {}", K::kind(&()), obj.name_any()), &namespace)(e)
        }
        Err(F::UnnamedObject) => Error::InvalidSpec("the object has no name".into()),
        Err(F::InvalidFinalizer) => Error::InvalidSpec(format!("invalid finalizer {FINALIZER}")),
    };
    if matches!(err, Error::NotLeading) || ctx.leading().is_err() {
        return Ok(Action::await_change());
    }
    let reason = err.reason();
    tracing::warn!(kind = %K::kind(&()), namespace, object = %obj.name_any(), reason, error = %err, "reconcile failed");
    let known: Option<K::Status> = ctx.written.get(&backoff::key(obj));
    let previous = known.as_ref().map_or(obj.conditions(), K::status_conditions);
    let condition = status::not_ready(previous, reason, err.to_string(), obj.meta().generation);
    let unchanged = last_written::unchanged(obj.conditions().contains(&condition), known.as_ref(), |known| {
        K::status_conditions(known).contains(&condition)
    });
    if !unchanged && let Err(e) = patch_status(api, ctx, obj, json!({ "conditions": [condition] })).await {
        tracing::warn!(error = %e, "could not set Ready=False");
    }
    ctx.event(obj, EventType::Warning, reason, err.to_string()).await;
    if err.retry() { Err(err) } else { Ok(Action::await_change()) }
}

/// The resource's namespace and name as ZooKeeper path segments.
fn names(obj: &impl ResourceExt) -> Result<(Name, Name), Error> {
    let ns =
        Name::new("namespace", &obj.namespace().unwrap_or_default()).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let name = Name::new("resource", &obj.name_any()).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    Ok((ns, name))
}

/// Merges `status` into the resource's status (leading only), and records the status the
/// API server answered with (`last_written`).
async fn patch_status<K: Kind>(api: &Api<K>, ctx: &Context, obj: &K, status: serde_json::Value) -> Result<(), Error> {
    ctx.leading()?;
    let name = obj.meta().name.clone().unwrap_or_default();
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let written = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status })))
        .await
        .map_err(Error::kube(format!("writing the status of {} {name}", K::kind(&())), &namespace))?;
    ctx.written.record(backoff::key(obj), written.status());
    Ok(())
}

fn object_label(ns: &Name, name: &Name) -> ObjectLabel {
    ObjectLabel { namespace: ns.to_string(), name: name.to_string() }
}
