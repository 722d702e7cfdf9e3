//! Paddock's benchmarks, on top of the test kit (`paddock_testkit`). Never shipped.

pub mod bench;
