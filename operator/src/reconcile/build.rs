//! The desired znode of a resource: path, config data and ACL. No client.

use paddock_recipes::config::to_znode;
use paddock_recipes::identity::acl_for;
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
    acl_for(&[&ids.operator])
}

/// The namespace's identities (its digest one too while it is being moved to a
/// certificate) and the operator's.
fn namespace_and_operator(ids: &Identities) -> Vec<zk::Acl> {
    let mut all = vec![&ids.namespace, &ids.operator];
    all.extend(&ids.legacy);
    acl_for(&all)
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
        acl: namespace_and_operator(ids),
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
        acl: namespace_and_operator(ids),
        root_acl: operator_only(ids),
    })
}

#[cfg(test)]
mod tests {
    use paddock_recipes::LockConfig;
    use paddock_recipes::identity::{DigestIdentity, ZkId};

    use super::*;
    use crate::crd::DeletionPolicy;

    #[test]
    fn a_lock_is_its_path_config_and_the_two_identities() {
        let (ns_id, op_id) = (
            DigestIdentity::parse("paddock-ns-shop:pw1").unwrap(),
            DigestIdentity::parse("paddock-operator:pw2").unwrap(),
        );
        let ids =
            Identities { namespace: ZkId::Digest(ns_id.clone()), operator: ZkId::Digest(op_id.clone()), legacy: None };
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
        assert_eq!(ids_in_acl, [ns_id.acl_id().as_str(), op_id.acl_id().as_str()]);
        assert!(desired.acl.iter().all(|a| a.scheme() == "digest"), "no world or ip access");
        let x509 = Identities {
            namespace: ZkId::X509("CN=paddock-ns-shop,O=paddock".into()),
            operator: ZkId::X509("CN=paddock-operator,O=paddock".into()),
            legacy: None,
        };
        let desired = lock(&layout, &ns, &name, &spec, &x509).unwrap();
        let acl: Vec<(&str, &str)> = desired.acl.iter().map(|a| (a.scheme(), a.id())).collect();
        assert_eq!(acl, [("x509", "CN=paddock-ns-shop,O=paddock"), ("x509", "CN=paddock-operator,O=paddock")]);
        assert_eq!(desired.root_acl.len(), 1);
        assert_eq!(desired.root_acl[0].id(), "CN=paddock-operator,O=paddock");
        // Moving from digest: the namespace's digest identity stays in the ACL meanwhile.
        let moving = Identities { legacy: Some(ZkId::Digest(ns_id.clone())), ..x509 };
        let desired = queue(&layout, &ns, &name, &WorkQueueSpec::default(), &moving).unwrap();
        let acl: Vec<(&str, &str)> = desired.acl.iter().map(|a| (a.scheme(), a.id())).collect();
        assert_eq!(acl[2], ("digest", ns_id.acl_id().as_str()), "{acl:?}");
        assert_eq!(desired.root_acl.len(), 1, "the root stays the operator's alone");
    }
}
