//! What the benchmark binaries share: the example tenants' rows built in-process, the embedded
//! store's raw-insert baseline, and CPU accounting.

pub mod cpu;
pub mod embedded;
pub mod rows;
