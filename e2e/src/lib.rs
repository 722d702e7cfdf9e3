//! Paddock's full-stack tools, on top of the test kit (`paddock_testkit`): the Kubernetes
//! API stand-in, the benchmarks, the fault suite and the local stack. Never shipped.

pub mod apiserver;
pub mod bench;
pub mod chaos;
pub mod stack;
