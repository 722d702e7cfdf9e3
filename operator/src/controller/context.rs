//! What the controllers share: the clients, the layout, the operator's identity, the
//! leadership, the namespace identity step, the metrics, the Event recorder, the
//! back-off and the statuses last written.
//!
//! Invariants: every write is preceded by a check of the one [`Leadership`] — status
//! patches, Events and znodes through [`Context::leading`], Secrets in the identity step —
//! so a replica that stopped leading writes nothing.

use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use paddock_recipes::{Layout, Session};

use super::backoff::Backoff;
use super::last_written::LastWritten;
use crate::error::{At, Error, Step};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::reconcile::identity::{IdentitySettings, NamespaceIdentities};

pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    pub session: Session,
    pub layout: Layout,
    /// Whether this replica leads; nothing is written unless it does.
    pub leadership: Leadership,
    /// Each namespace's identity, from its Secret, on the session.
    pub identities: NamespaceIdentities,
    recorder: Recorder,
    /// Consecutive failures per object.
    pub(super) backoff: Backoff,
    /// The status this replica last wrote, per object.
    pub(super) written: LastWritten,
}

impl Context {
    pub fn new(
        client: kube::Client,
        session: Session,
        layout: Layout,
        identity: IdentitySettings,
        leadership: Leadership,
    ) -> Self {
        let reporter = Reporter { controller: "paddock-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        let identities = NamespaceIdentities::new(client.clone(), session.clone(), identity, leadership.clone());
        Self {
            client,
            session,
            layout,
            leadership,
            identities,
            recorder,
            backoff: Backoff::default(),
            written: LastWritten::default(),
            metrics: Metrics::new(),
        }
    }

    /// Where a ZooKeeper call is made, for its error.
    pub(super) fn at(&self, step: Step, path: &str, namespace: &str) -> At {
        At::new(step, path, namespace, &self.identities.operator_name())
    }

    /// Ok while this replica leads; checked before every write.
    pub(super) fn leading(&self) -> Result<(), Error> {
        if self.leadership.is_leading() { Ok(()) } else { Err(Error::NotLeading) }
    }

    /// Publishes an Event about `obj` (leading only; a failure is only logged).
    pub(super) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
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
