//! walguard's test harness: multi-process workers, disruptors, fault injection,
//! cross-language helpers, the torture campaign and the benchmarks.
//!
//! Module ownership (one author each, to keep parallel work apart):
//! - `worker`, `workload`, `disrupt`, `second_runtime`: scripted worker processes,
//!   the deterministic transparency workload, and the lock-losing disruptors.
//! - `extension`: building and locating `libwalguard.so`, driving Python and the shell.
//! - `faults`: fault injection beneath SQLite's unix VFS.

pub mod disrupt;
pub mod extension;
pub mod faults;
pub mod second_runtime;
pub mod worker;
pub mod workload;
