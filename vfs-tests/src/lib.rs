//! walguard's test harness: multi-process workers, disruptors, fault injection,
//! cross-language helpers, the torture campaign and the benchmarks.
//!
//! Module ownership (one author each, to keep parallel work apart):
//! - `worker`, `workload`, `disrupt`, `second_runtime`: scripted worker processes,
//!   the deterministic transparency workload, and the lock-losing disruptors.
//! - `extension`: building and locating `libwalguard.so`, driving Python and the shell.
//! - `faults`: fault injection beneath SQLite's unix VFS.
//! - `bench`: overhead benchmarks against the plain unix VFS.
//! - `torture`: the side-by-side corruption campaign (the README's main command).

pub mod bench;
pub mod disrupt;
pub mod extension;
pub mod faults;
pub mod second_runtime;
pub mod torture;
pub mod worker;
pub mod workload;
