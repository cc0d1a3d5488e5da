//! `vfs-tests bench-child contend|audit|steady|churn|busy-dir|run ...`: the hidden child
//! modes `bench` re-executes this binary in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use crate::bench::audit::audit_child;
use crate::bench::workloads::contention::contend;
use crate::bench::{register, READ_RECHECK_MS};
use crate::worker::Vfs;

/// `vfs-tests bench-child contend|audit|steady|churn|busy-dir|run ...` (hidden; re-executed
/// by `bench`).
pub fn child_main(args: &[String]) -> ExitCode {
    match child(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfs-tests bench-child: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn child(args: &[String]) -> Result<(), String> {
    let (what, rest) = args
        .split_first()
        .ok_or("bench-child needs a mode: contend, audit, steady, churn, busy-dir or run")?;
    let mut kv = BTreeMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let k = k
            .strip_prefix("--")
            .ok_or_else(|| format!("bench-child: unexpected argument {k:?}"))?;
        let v = it
            .next()
            .ok_or_else(|| format!("bench-child: --{k} needs a value"))?;
        kv.insert(k.to_owned(), v.clone());
    }
    let get = |k: &str| {
        kv.get(k)
            .cloned()
            .ok_or_else(|| format!("bench-child {what}: --{k} is required"))
    };
    let num = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        v.parse()
            .map_err(|_| format!("bench-child {what}: --{k} must be a number, not {v:?}"))
    };
    // The busy-dir disruptor uses no SQLite at all: no VFS, nothing registered.
    if what == "busy-dir" {
        return crate::bench::workloads::busy_dir::disrupt_child(
            &PathBuf::from(get("dir")?),
            num("rate")?,
        );
    }
    let vfs_name = get("vfs")?;
    let vfs = Vfs::parse(&vfs_name).ok_or_else(|| format!("unknown VFS {vfs_name:?}"))?;
    let db = || get("db").map(PathBuf::from);
    if let Some(v) = kv.get("read-recheck-ms") {
        let ms = v
            .parse()
            .map_err(|_| format!("bench-child: --read-recheck-ms must be a number, not {v:?}"))?;
        READ_RECHECK_MS.store(ms, Ordering::Relaxed);
    }
    register()?;
    match what.as_str() {
        "contend" => contend(vfs, &db()?, num("start-at-ms")?, num("ms")?, num("id")?),
        "audit" => audit_child(vfs, &db()?, &get("mode")?, num("n")?, num("rows")?),
        "steady" => crate::bench::steady::child(vfs, &db()?, num("n")?, num("rows")?),
        "churn" => crate::bench::churn_trace::child(vfs, &db()?, num("n")?),
        "run" => crate::bench::compare::child_run(
            vfs,
            &PathBuf::from(get("dir")?),
            &get("workload")?,
            num("round")? as usize,
            &get("sizes")?,
            match kv.get("read-db") {
                Some(p) => Some((
                    PathBuf::from(p),
                    match kv.get("read-rows") {
                        Some(_) => num("read-rows")?,
                        None => 0,
                    },
                )),
                None => None,
            },
            match kv.get("busy-dir-rate") {
                Some(_) => Some(num("busy-dir-rate")?),
                None => None,
            },
        ),
        other => Err(format!("unknown bench-child mode {other:?}")),
    }
}
