//! Paddock's full-stack tools, on top of the test kit (`paddock_testkit`) and the
//! Kubernetes API stand-in (`paddock_kube_standin`): the benchmarks, the fault suite and
//! the local stack. Never shipped.

pub mod bench;
pub mod chaos;
pub mod stack;
