//! Where Paddock's state lives in ZooKeeper. The operator provisions these paths and the
//! sidecar only ever uses them, so both take them from here:
//!
//! ```text
//! <root>/<namespace>/locks/<name>              lock config (JSON); contenders below
//! <root>/<namespace>/queues/<name>             queue config (JSON)
//!     items/<bucket>/item-<seq>                persistent sequential items
//!     claims/<item-id>                         ephemeral claims of consumers' sessions
//!     attempts/<item-id>                       delivery count and history of an item
//!     dead/<item-id>                           dead-lettered items
//! ```

use crate::identity::NodeAcl;
use crate::names::Name;

/// The root of Paddock's subtree, e.g. `/paddock` (always absolute, never `/` itself and
/// never ending in `/`), and how the nodes this process creates there are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
    acl: NodeAcl,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid ZooKeeper root {0:?}: must be an absolute path like /paddock, \
     without a trailing '/', empty segments, '.' or '..'"
)]
pub struct RootError(pub String);

impl Layout {
    pub fn new(root: &str) -> Result<Self, RootError> {
        let valid = root.len() > 1
            && root.starts_with('/')
            && !root.ends_with('/')
            && root[1..]
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(|c| c.is_ascii_graphic()));
        if valid { Ok(Self { root: root.to_owned(), acl: NodeAcl::Open }) } else { Err(RootError(root.to_owned())) }
    }

    /// The same layout, creating nodes with `acl`.
    pub fn with_node_acl(mut self, acl: NodeAcl) -> Self {
        self.acl = acl;
        self
    }

    pub fn node_acl(&self) -> NodeAcl {
        self.acl
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn namespace(&self, namespace: &Name) -> String {
        format!("{}/{namespace}", self.root)
    }

    pub fn locks(&self, namespace: &Name) -> String {
        format!("{}/{namespace}/locks", self.root)
    }

    pub fn lock(&self, namespace: &Name, lock: &Name) -> String {
        format!("{}/{namespace}/locks/{lock}", self.root)
    }

    pub fn queues(&self, namespace: &Name) -> String {
        format!("{}/{namespace}/queues", self.root)
    }

    pub fn queue(&self, namespace: &Name, queue: &Name) -> QueuePaths {
        QueuePaths { base: format!("{}/{namespace}/queues/{queue}", self.root), acl: self.acl }
    }
}

/// The paths of one queue, and how nodes created under them are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePaths {
    pub base: String,
    pub acl: NodeAcl,
}

impl QueuePaths {
    pub fn items(&self) -> String {
        format!("{}/items", self.base)
    }

    pub fn bucket(&self, bucket: &str) -> String {
        format!("{}/items/{bucket}", self.base)
    }

    /// Groups (see `queue::group`).
    pub fn groups(&self) -> String {
        format!("{}/groups", self.base)
    }

    /// A group's node, by the key's node-name form.
    pub fn group(&self, encoded_key: &str) -> String {
        format!("{}/groups/{encoded_key}", self.base)
    }

    pub fn claims(&self) -> String {
        format!("{}/claims", self.base)
    }

    pub fn claim(&self, item_id: &str) -> String {
        format!("{}/claims/{item_id}", self.base)
    }

    pub fn attempts(&self) -> String {
        format!("{}/attempts", self.base)
    }

    pub fn attempts_of(&self, item_id: &str) -> String {
        format!("{}/attempts/{item_id}", self.base)
    }

    pub fn dead(&self) -> String {
        format!("{}/dead", self.base)
    }

    /// Idempotency records (see `queue::dedup`).
    pub fn keys(&self) -> String {
        format!("{}/keys", self.base)
    }

    pub fn dead_item(&self, item_id: &str) -> String {
        format!("{}/dead/{item_id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let layout = Layout::new("/paddock").unwrap();
        let ns = Name::new("namespace", "team-a").unwrap();
        let lock = Name::new("lock", "orders").unwrap();
        assert_eq!(layout.lock(&ns, &lock), "/paddock/team-a/locks/orders");
        let q = layout.queue(&ns, &Name::new("queue", "jobs").unwrap());
        assert_eq!(q.base, "/paddock/team-a/queues/jobs");
        assert_eq!(q.claim("0000000001-0000000007"), "/paddock/team-a/queues/jobs/claims/0000000001-0000000007");
    }

    #[test]
    fn roots_must_be_clean_absolute_paths() {
        for ok in ["/paddock", "/a/b", "/paddock-test-1"] {
            assert!(Layout::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "paddock", "/paddock/", "/a//b", "/a/../b", "/a/./b", "/a b"] {
            assert!(Layout::new(bad).is_err(), "{bad}");
        }
    }
}
