//! The desired znode of a resource: path, config data and ACL. No client.

use paddock_recipes::config::to_znode;
use paddock_recipes::identity::namespace_acl;
use paddock_recipes::{Layout, Name, zk};

use super::Identities;
use crate::crd::{DistributedLockSpec, WorkQueueSpec};
use crate::validate::{self, Invalid};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub path: String,
    /// The config JSON the sidecar reads.
    pub data: Vec<u8>,
    /// The namespace's identity and the operator's.
    pub acl: Vec<zk::Acl>,
    /// Paddock's root: the operator's alone.
    pub root_acl: Vec<zk::Acl>,
}

fn operator_only(ids: &Identities) -> Vec<zk::Acl> {
    vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &ids.operator.acl_id()))]
}

pub fn lock(
    layout: &Layout,
    ns: &Name,
    name: &Name,
    spec: &DistributedLockSpec,
    ids: &Identities,
) -> Result<Desired, Invalid> {
    let config = validate::lock(spec)?;
    Ok(Desired {
        path: layout.lock(ns, name),
        data: to_znode(&config),
        acl: namespace_acl(&ids.namespace, &ids.operator),
        root_acl: operator_only(ids),
    })
}

pub fn queue(
    layout: &Layout,
    ns: &Name,
    name: &Name,
    spec: &WorkQueueSpec,
    ids: &Identities,
) -> Result<Desired, Invalid> {
    let config = validate::queue(spec)?;
    Ok(Desired {
        path: layout.queue(ns, name).base,
        data: to_znode(&config),
        acl: namespace_acl(&ids.namespace, &ids.operator),
        root_acl: operator_only(ids),
    })
}

#[cfg(test)]
mod tests {
    use paddock_recipes::LockConfig;
    use paddock_recipes::identity::DigestIdentity;

    use super::*;
    use crate::crd::DeletionPolicy;

    #[test]
    fn a_lock_is_its_path_config_and_the_two_identities() {
        let ids = Identities {
            namespace: DigestIdentity::parse("paddock-ns-shop:pw1").unwrap(),
            operator: DigestIdentity::parse("paddock-operator:pw2").unwrap(),
        };
        let spec = DistributedLockSpec {
            max_holders: 2,
            ttl: None,
            lock_delay: None,
            deletion_policy: DeletionPolicy::Retain,
        };
        let layout = Layout::new("/paddock").unwrap();
        let (ns, name) = (Name::new("namespace", "shop").unwrap(), Name::new("lock", "orders").unwrap());
        let desired = lock(&layout, &ns, &name, &spec, &ids).unwrap();
        assert_eq!(desired.path, "/paddock/shop/locks/orders");
        assert_eq!(LockConfig::from_znode(&desired.path, &desired.data).unwrap().max_holders, 2);
        let ids_in_acl: Vec<&str> = desired.acl.iter().map(|a| a.id()).collect();
        assert_eq!(ids_in_acl, [ids.namespace.acl_id().as_str(), ids.operator.acl_id().as_str()]);
        assert!(desired.acl.iter().all(|a| a.scheme() == "digest"), "no world or ip access");
    }
}
