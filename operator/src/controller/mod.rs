//! The controllers: a Kubernetes watch of each resource kind drives the reconcile pipeline
//! (`crate::reconcile`: identity -> validate -> build -> apply -> observe -> status) through
//! one generic flow ([`flow`]), a finalizer drives cleanup, and ZooKeeper changes
//! re-reconcile the resource whose znodes changed ([`triggers`]), so `kubectl get` shows
//! holders and depth within a second of a change.
//!
//! - [`context`]: what the reconciles share; [`backoff`]: the retries of failed ones;
//!   [`last_written`]: the status this replica wrote, which its cache may not show yet.
//! - Errors ([`crate::error`]): each says which step failed where, with its own reason on
//!   the condition, the Event and the failure metric. An invalid spec sets `Ready=False`
//!   and waits for a change; anything else is retried with back-off.
//!
//! Invariants: nothing is done unless this replica leads ([`crate::leader::Leadership`]):
//! checked when a reconcile starts and again before each write. The controller runs one
//! reconcile per object at a time; a trigger for an object being reconciled waits for it.

pub mod backoff;
pub mod context;
pub mod flow;
pub mod last_written;
pub mod triggers;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

pub use self::context::Context;
pub use self::triggers::STATUS_INTERVAL;
use crate::crd::{DistributedLock, WorkQueue};
use crate::reconcile::kind::Kind;

/// The finalizer that keeps a resource until its znodes are cleaned up.
pub const FINALIZER: &str = "paddock.dev/znodes";

/// The controller of `K`: its watch filtered to spec and lifecycle changes.
fn controller<K: Kind>(client: kube::Client) -> Controller<K> {
    let (reader, writer) = reflector::store();
    let changes = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(triggers::spec_or_lifecycle, Default::default());
    Controller::for_stream(changes, reader)
}

/// Runs the controller of `K` until `shutdown` resolves: its own changes, `zookeeper`'s
/// triggers and every change of the ZooKeeper session reconcile.
async fn drive<K: Kind>(
    ctx: Arc<Context>,
    zookeeper: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    // Every change of the ZooKeeper session re-reconciles everything: losing it turns the
    // resources Ready=False, getting it back turns them Ready again — no restart needed.
    let session_changes = tokio_stream::wrappers::BroadcastStream::new(ctx.session.subscribe()).map(|_| ());
    // No debounce: ZooKeeper's triggers come throttled, and a trigger for a resource being
    // reconciled waits for that reconcile to end (the controller runs one per object).
    controller::<K>(ctx.client.clone())
        .with_config(ControllerConfig::default())
        .reconcile_on(zookeeper)
        .reconcile_all_on(session_changes)
        .graceful_shutdown_on(shutdown)
        .run(flow::reconcile, flow::retry_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(kind = %K::kind(&()), error = %err, "reconcile");
            }
        })
        .await
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let (lock_triggers, queue_triggers) = triggers::zookeeper(ctx.session.clone(), ctx.layout.root().to_owned());
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let locks = drive::<DistributedLock>(ctx.clone(), lock_triggers, shutdown.clone());
    let queues = drive::<WorkQueue>(ctx.clone(), queue_triggers, shutdown.clone());
    // Namespace certificates are renewed on time whether or not their resources change.
    let renewals = async move {
        let Some(every) = ctx.identities.renew_interval() else { return };
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if ctx.leadership.is_leading() {
                    ctx.identities.renew_due().await;
                }
            }
        };
        tokio::select! {
            _ = renew => {}
            _ = shutdown => {}
        }
    };
    futures::join!(locks, queues, renewals);
}
