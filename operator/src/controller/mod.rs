//! The controllers: Kubernetes watches drive the reconcile pipeline (validate -> build ->
//! apply -> observe -> status), a finalizer drives cleanup, and one persistent recursive
//! watch on Paddock's ZooKeeper subtree re-reconciles the resource whose znodes changed,
//! so `kubectl get` shows holders and depth within a second of a change.
//!
//! Triggers ([`triggers`]): a resource's spec and lifecycle changes, and the ZooKeeper
//! changes that can change its status or its znodes, throttled.
//!
//! Status ([`crate::reconcile::status`]): written only when it changed; the Ready
//! condition keeps its lastTransitionTime unless its status changes.
//!
//! Errors ([`crate::error`]): each says which step failed where, with its own reason on
//! the condition, the Event and the failure metric. An invalid spec sets `Ready=False`
//! and waits for a change; anything else is retried with back-off.
//!
//! Nothing is done unless this replica leads ([`Leadership`]): checked when a reconcile
//! starts and again before each write.

pub mod triggers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::{Layout, Name, Session};
use serde_json::json;

use crate::crd::{DistributedLock, DistributedLockStatus, WorkQueue, WorkQueueStatus};
pub use crate::error::Error;
use crate::error::{At, Step};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::reconcile::cleanup::Cleanup;
use crate::reconcile::identity::{self, NamespaceIdentities};
use crate::reconcile::{apply, build, cleanup, observe, status};

pub use self::triggers::STATUS_INTERVAL;

pub const FINALIZER: &str = "paddock.dev/znodes";

pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    pub session: Session,
    pub layout: Layout,
    pub operator: DigestIdentity,
    /// Whether this replica leads; nothing is written unless it does.
    pub leadership: Leadership,
    /// Each namespace's identity, from its Secret, on the session.
    pub identities: NamespaceIdentities,
    recorder: Recorder,
    /// Consecutive failures per object, for the back-off.
    failures: Mutex<std::collections::HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        session: Session,
        layout: Layout,
        operator: DigestIdentity,
        leadership: Leadership,
    ) -> Self {
        let reporter = Reporter { controller: "paddock-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        let identities = NamespaceIdentities::new(
            client.clone(),
            session.clone(),
            layout.root(),
            operator.clone(),
            leadership.clone(),
        );
        Self {
            client,
            session,
            layout,
            operator,
            leadership,
            identities,
            recorder,
            failures: Mutex::default(),
            metrics: Metrics::new(),
        }
    }

    fn at(&self, step: Step, path: &str, namespace: &str) -> At {
        At::new(step, path, namespace, &identity::user(&self.operator))
    }

    /// Ok while this replica leads; checked before every write.
    fn leading(&self) -> Result<(), Error> {
        if self.leadership.is_leading() { Ok(()) } else { Err(Error::NotLeading) }
    }

    async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        if self.leading().is_err() {
            return;
        }
        let event =
            KubeEvent { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %err, reason, "could not publish an Event");
        }
    }
}

/// The resources' conditions, for the Ready condition's lastTransitionTime.
trait Conditions {
    fn conditions(&self) -> &[Condition];
}

impl Conditions for DistributedLock {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl Conditions for WorkQueue {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

fn names(obj: &impl ResourceExt) -> Result<(Name, Name), Error> {
    let ns =
        Name::new("namespace", &obj.namespace().unwrap_or_default()).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let name = Name::new("resource", &obj.name_any()).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    Ok((ns, name))
}

async fn patch_status<K>(api: &Api<K>, ctx: &Context, obj: &K, status: serde_json::Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    ctx.leading()?;
    let name = obj.meta().name.clone().unwrap_or_default();
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status })))
        .await
        .map_err(Error::kube(format!("writing the status of {} {name}", K::kind(&())), &namespace))?;
    Ok(())
}

async fn reconcile_lock(lock: Arc<DistributedLock>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = lock.object_ref(&()).to_string_key();
    accounted("DistributedLock", key, &ctx.clone(), reconcile_lock_inner(lock, ctx)).await
}

async fn reconcile_queue(queue: Arc<WorkQueue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = queue.object_ref(&()).to_string_key();
    accounted("WorkQueue", key, &ctx.clone(), reconcile_queue_inner(queue, ctx)).await
}

/// Runs one reconcile (none unless this replica leads), counts it in the metrics, and
/// resets the object's back-off when it succeeds.
async fn accounted(
    kind: &str,
    key: String,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    if ctx.leading().is_err() {
        tracing::debug!(object = key, "not leading: reconciling nothing");
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciles.observe(kind, started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

async fn reconcile_lock_inner(lock: Arc<DistributedLock>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<DistributedLock> = Api::namespaced(ctx.client.clone(), &lock.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, lock.clone(), |event| async {
        match event {
            Finalizer::Apply(lock) => apply_lock(&lock, &ctx).await,
            Finalizer::Cleanup(lock) => {
                let (ns, name) = names(&*lock)?;
                let (_, client) = ctx.identities.get(ns.as_str()).await?;
                let path = ctx.layout.lock(&ns, &name);
                ctx.leading()?;
                cleanup::lock(&client, &path).await.map_err(|e| ctx.at(Step::Cleanup, &path, ns.as_str()).zk(e))?;
                ctx.event(&*lock, EventType::Normal, "Deleted", "the lock's znodes were removed".into()).await;
                Ok(Action::await_change())
            }
        }
    })
    .await;
    settle(&*lock, &api, result, &ctx).await
}

async fn apply_lock(lock: &DistributedLock, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = names(lock)?;
    let (ids, client) = ctx.identities.get(ns.as_str()).await?;
    let desired =
        build::lock(&ctx.layout, &ns, &name, &lock.spec, &ids).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    ctx.leading()?;
    apply::lock(&client, &ctx.layout, &ns, &name, &desired)
        .await
        .map_err(|e| ctx.at(Step::Provision, &e.path, ns.as_str()).zk(e.source))?;
    let (holders, waiters) = observe::lock(&client, &desired.path, lock.spec.max_holders)
        .await
        .map_err(|e| ctx.at(Step::Observe, &desired.path, ns.as_str()).lock(e))?;
    let generation = lock.metadata.generation;
    let status = DistributedLockStatus {
        path: Some(desired.path),
        holders,
        waiters,
        observed_generation: generation,
        conditions: vec![status::ready(lock.conditions(), generation)],
    };
    if lock.status.as_ref() != Some(&status) {
        let api: Api<DistributedLock> = Api::namespaced(ctx.client.clone(), ns.as_str());
        patch_status(&api, ctx, lock, serde_json::to_value(status).expect("status serializes")).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn reconcile_queue_inner(queue: Arc<WorkQueue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<WorkQueue> = Api::namespaced(ctx.client.clone(), &queue.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, queue.clone(), |event| async {
        match event {
            Finalizer::Apply(queue) => apply_queue(&queue, &ctx).await,
            Finalizer::Cleanup(queue) => {
                let (ns, name) = names(&*queue)?;
                let (_, client) = ctx.identities.get(ns.as_str()).await?;
                let paths = ctx.layout.queue(&ns, &name);
                ctx.leading()?;
                let outcome = cleanup::queue(&client, &paths, queue.spec.deletion_policy)
                    .await
                    .map_err(|e| ctx.at(Step::Cleanup, &paths.base, ns.as_str()).queue(e))?;
                match outcome {
                    Cleanup::Deleted => {
                        ctx.event(&*queue, EventType::Normal, "Deleted", "the queue's znodes were removed".into()).await
                    }
                    Cleanup::Kept { depth, dead_lettered } => {
                        let note = format!(
                            "kept {} in ZooKeeper: it holds {depth} items and {dead_lettered} dead letters \
                             (deletionPolicy Retain); recreate the WorkQueue to use them",
                            paths.base
                        );
                        ctx.event(&*queue, EventType::Warning, "Retained", note).await;
                    }
                }
                Ok(Action::await_change())
            }
        }
    })
    .await;
    settle(&*queue, &api, result, &ctx).await
}

async fn apply_queue(queue: &WorkQueue, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = names(queue)?;
    let (ids, client) = ctx.identities.get(ns.as_str()).await?;
    let desired =
        build::queue(&ctx.layout, &ns, &name, &queue.spec, &ids).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    ctx.leading()?;
    apply::queue(&client, &ctx.layout, &ns, &name, &desired)
        .await
        .map_err(|e| ctx.at(Step::Provision, &e.path, ns.as_str()).zk(e.source))?;
    let paths = ctx.layout.queue(&ns, &name);
    let stats =
        observe::queue(&client, &paths).await.map_err(|e| ctx.at(Step::Observe, &paths.base, ns.as_str()).queue(e))?;
    let generation = queue.metadata.generation;
    let status = WorkQueueStatus {
        path: Some(desired.path),
        depth: stats.depth,
        in_flight: stats.in_flight,
        delayed: stats.delayed,
        dead_lettered: stats.dead_lettered,
        observed_generation: generation,
        conditions: vec![status::ready(queue.conditions(), generation)],
    };
    if queue.status.as_ref() != Some(&status) {
        let api: Api<WorkQueue> = Api::namespaced(ctx.client.clone(), ns.as_str());
        patch_status(&api, ctx, queue, serde_json::to_value(status).expect("status serializes")).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Turns a failed reconcile into `Ready=False` with the reason, an Event, and what to do
/// next: wait for a change (invalid spec) or retry (ZooKeeper, API trouble). A replica
/// that stopped leading writes nothing.
async fn settle<K>(
    obj: &K,
    api: &Api<K>,
    result: Result<Action, kube::runtime::finalizer::Error<Error>>,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Conditions + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
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
    let condition = status::not_ready(obj.conditions(), reason, err.to_string(), obj.meta().generation);
    let unchanged = obj.conditions().contains(&condition);
    if !unchanged && let Err(e) = patch_status(api, ctx, obj, json!({ "conditions": [condition] })).await {
        tracing::warn!(error = %e, "could not set Ready=False");
    }
    ctx.event(obj, EventType::Warning, reason, err.to_string()).await;
    if err.retry() { Err(err) } else { Ok(Action::await_change()) }
}

/// Exponential back-off per object (0.5 s doubling to 60 s), reset by a success. ZooKeeper
/// coming back does not wait for it: a session change re-reconciles everything at once.
fn retry_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = obj.object_ref(&()).to_string_key();
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(key).or_insert(0);
    *n = (*n + 1).min(8);
    let delay = (Duration::from_millis(500) * 2u32.pow(*n - 1)).min(Duration::from_secs(60));
    tracing::debug!(reason = err.reason(), ?delay, "requeue after error");
    Action::requeue(delay)
}

trait StringKey {
    fn to_string_key(&self) -> String;
}

impl StringKey for k8s_openapi::api::core::v1::ObjectReference {
    fn to_string_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind.as_deref().unwrap_or_default(),
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default()
        )
    }
}

/// The controller of `K`: its watch filtered to spec and lifecycle changes.
fn controller<K>(client: kube::Client) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let changes = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(triggers::spec_or_lifecycle, Default::default());
    Controller::for_stream(changes, reader)
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let (lock_triggers, queue_triggers) = triggers::zookeeper(ctx.session.clone(), ctx.layout.root().to_owned());
    // Every change of the ZooKeeper session re-reconciles everything: losing it turns the
    // resources Ready=False, getting it back turns them Ready again — no restart needed.
    let session_changes = || tokio_stream::wrappers::BroadcastStream::new(ctx.session.subscribe()).map(|_| ());
    // No debounce: ZooKeeper's triggers come throttled, and a trigger for a resource being
    // reconciled waits for that reconcile to end (the controller runs one per object).
    let config = ControllerConfig::default();
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let locks = controller::<DistributedLock>(ctx.client.clone())
        .with_config(config.clone())
        .reconcile_on(lock_triggers)
        .reconcile_all_on(session_changes())
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile_lock, retry_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "lock reconcile");
            }
        });
    let queues = controller::<WorkQueue>(ctx.client.clone())
        .with_config(config)
        .reconcile_on(queue_triggers)
        .reconcile_all_on(session_changes())
        .graceful_shutdown_on(shutdown)
        .run(reconcile_queue, retry_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "queue reconcile");
            }
        });
    futures::join!(locks, queues);
}
