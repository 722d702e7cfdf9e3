//! What differs between a DistributedLock and a WorkQueue: one trait, [`Kind`], whose
//! methods are the pipeline's steps for that kind (build, apply, observe, cleanup) and the
//! status they make. The controllers run one generic flow over it
//! (`crate::controller::flow`); nothing kind-specific lives there.
//!
//! Invariants: the steps here neither check the leadership nor write to Kubernetes — the
//! flow does both, so every kind gets the same checks before each write. Each step's
//! error says which step failed on which znode ([`At`]).

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::events::EventType;
use paddock_recipes::{Layout, Name, zk};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::ApplyError;
use super::build::Desired;
use super::cleanup::Cleanup;
use super::{Identities, apply, build, cleanup, observe};
use crate::crd::{DistributedLock, DistributedLockStatus, WorkQueue, WorkQueueStatus};
use crate::error::{At, Error};
use crate::metrics::{ObjectLabel, StatusMetrics};
use crate::validate::Invalid;

/// Where a resource's znodes are, and the session to reach them with.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub client: &'a zk::Client,
    pub layout: &'a Layout,
    pub ns: &'a Name,
    pub name: &'a Name,
}

/// What cleanup did, as the Event that says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// A resource kind the operator reconciles into ZooKeeper.
pub trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    type Status: Serialize + DeserializeOwned + PartialEq + Send;

    /// The status as last written.
    fn status(&self) -> Option<&Self::Status>;
    /// The conditions of a status.
    fn status_conditions(status: &Self::Status) -> &[Condition];
    /// The conditions of the status as last written (none yet: empty).
    fn conditions(&self) -> &[Condition] {
        self.status().map_or(&[], Self::status_conditions)
    }
    /// The resource's znode.
    fn path(layout: &Layout, ns: &Name, name: &Name) -> String;
    /// Build: the desired znodes from the spec (no client).
    fn desired(&self, layout: &Layout, ns: &Name, name: &Name, ids: &Identities) -> Result<Desired, Invalid>;
    /// Apply: create the znodes or put them right.
    fn provision(target: Target<'_>, desired: &Desired) -> impl Future<Output = Result<(), ApplyError>> + Send;
    /// Observe: the status, `ready` its condition.
    fn observe(
        &self,
        target: Target<'_>,
        desired: Desired,
        ready: Condition,
        at: At,
    ) -> impl Future<Output = Result<Self::Status, Error>> + Send;
    /// Cleanup (the finalizer): remove the znodes, or keep them and say why.
    fn cleanup(&self, target: Target<'_>, at: At) -> impl Future<Output = Result<Notice, Error>> + Send;
    /// The status's figures as gauges.
    fn report(status: &Self::Status, metrics: &StatusMetrics, label: &ObjectLabel);
}

impl Kind for DistributedLock {
    type Status = DistributedLockStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn status_conditions(status: &Self::Status) -> &[Condition] {
        &status.conditions
    }

    fn path(layout: &Layout, ns: &Name, name: &Name) -> String {
        layout.lock(ns, name)
    }

    fn desired(&self, layout: &Layout, ns: &Name, name: &Name, ids: &Identities) -> Result<Desired, Invalid> {
        build::lock(layout, ns, name, &self.spec, ids)
    }

    async fn provision(target: Target<'_>, desired: &Desired) -> Result<(), ApplyError> {
        apply::lock(target.client, target.layout, target.ns, target.name, desired).await
    }

    async fn observe(
        &self,
        target: Target<'_>,
        desired: Desired,
        ready: Condition,
        at: At,
    ) -> Result<Self::Status, Error> {
        let (holders, waiters) =
            observe::lock(target.client, &desired.path, self.spec.max_holders).await.map_err(|e| at.lock(e))?;
        Ok(DistributedLockStatus {
            path: Some(desired.path),
            holders,
            waiters,
            observed_generation: self.metadata.generation,
            conditions: vec![ready],
        })
    }

    async fn cleanup(&self, target: Target<'_>, at: At) -> Result<Notice, Error> {
        let path = Self::path(target.layout, target.ns, target.name);
        cleanup::lock(target.client, &path).await.map_err(|e| at.zk(e))?;
        Ok(Notice { type_: EventType::Normal, reason: "Deleted", note: "the lock's znodes were removed".into() })
    }

    fn report(status: &Self::Status, metrics: &StatusMetrics, label: &ObjectLabel) {
        metrics.set(
            label,
            &[(&metrics.lock_holders, status.holders.len() as u64), (&metrics.lock_waiters, status.waiters.into())],
        );
    }
}

impl Kind for WorkQueue {
    type Status = WorkQueueStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn status_conditions(status: &Self::Status) -> &[Condition] {
        &status.conditions
    }

    fn path(layout: &Layout, ns: &Name, name: &Name) -> String {
        layout.queue(ns, name).base
    }

    fn desired(&self, layout: &Layout, ns: &Name, name: &Name, ids: &Identities) -> Result<Desired, Invalid> {
        build::queue(layout, ns, name, &self.spec, ids)
    }

    async fn provision(target: Target<'_>, desired: &Desired) -> Result<(), ApplyError> {
        apply::queue(target.client, target.layout, target.ns, target.name, desired).await
    }

    async fn observe(
        &self,
        target: Target<'_>,
        desired: Desired,
        ready: Condition,
        at: At,
    ) -> Result<Self::Status, Error> {
        let paths = target.layout.queue(target.ns, target.name);
        let stats = observe::queue(target.client, &paths).await.map_err(|e| at.queue(e))?;
        Ok(WorkQueueStatus {
            path: Some(desired.path),
            depth: stats.depth,
            in_flight: stats.in_flight,
            delayed: stats.delayed,
            dead_lettered: stats.dead_lettered,
            observed_generation: self.metadata.generation,
            conditions: vec![ready],
        })
    }

    async fn cleanup(&self, target: Target<'_>, at: At) -> Result<Notice, Error> {
        let paths = target.layout.queue(target.ns, target.name);
        let outcome =
            cleanup::queue(target.client, &paths, self.spec.deletion_policy).await.map_err(|e| at.queue(e))?;
        Ok(match outcome {
            Cleanup::Deleted => {
                Notice { type_: EventType::Normal, reason: "Deleted", note: "the queue's znodes were removed".into() }
            }
            Cleanup::Kept { depth, dead_lettered } => Notice {
                type_: EventType::Warning,
                reason: "Retained",
                note: format!(
                    "kept {} in ZooKeeper: it holds {depth} items and {dead_lettered} dead letters \
                     (deletionPolicy Retain); recreate the WorkQueue to use them",
                    paths.base
                ),
            },
        })
    }

    fn report(status: &Self::Status, metrics: &StatusMetrics, label: &ObjectLabel) {
        metrics.set(
            label,
            &[
                (&metrics.queue_depth, status.depth),
                (&metrics.queue_in_flight, status.in_flight),
                (&metrics.queue_delayed, status.delayed),
                (&metrics.queue_dead_letters, status.dead_lettered),
            ],
        );
    }
}
