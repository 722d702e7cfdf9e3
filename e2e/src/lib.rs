//! Paddock's benchmarks and fault suite, on top of the test kit (`paddock_testkit`) and
//! the local stack (`paddock_local`). Never shipped.

pub mod bench;
pub mod chaos;
