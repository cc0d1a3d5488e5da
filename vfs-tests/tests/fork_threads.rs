//! walguard's watcher thread (G4's fast path) is not there when the host forks: the
//! `pthread_atfork` prepare handler stops and joins it, and the parent restarts it at its
//! next transaction. A host that counts its threads at `fork()` — Python >= 3.12 warns
//! "This process is multi-threaded, use of fork() may lead to deadlocks in the child"
//! from the parent, right after the fork — sees only its own threads.
//!
//! The same script shows the thread exists before the fork (so the test can fail: were
//! the thread not stopped, the count at the fork would be the count before), and that
//! `WALGUARD_WATCHER=0` starts no thread at all.

use std::time::Duration;

use vfs_tests::extension::{extension_path, python_command, run_with_timeout};

fn field(line: &str, name: &str) -> i64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

fn run(watcher_env: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let ext = extension_path();
    let db = dir.path().join("app.db");
    let mut cmd = python_command(
        "fork_threads.py",
        &[ext.as_os_str(), db.as_os_str()],
        dir.path(),
    );
    cmd.env_remove("WALGUARD_WATCHER");
    if let Some(v) = watcher_env {
        cmd.env("WALGUARD_WATCHER", v);
    }
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert!(
        out.status.is_some_and(|s| s.success()) && !out.timed_out,
        "{} failed:\n{}\n{}",
        out.command,
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stderr, "", "nothing on stderr");
    out.stdout.trim().to_owned()
}

#[test]
fn the_watcher_thread_is_stopped_across_fork_and_restarted_after() {
    let line = run(None);
    assert!(
        field(&line, "before") >= 2,
        "walguard's watcher thread runs before the fork: {line}"
    );
    assert_eq!(
        field(&line, "at_fork"),
        1,
        "only the host's thread is there right after fork(): {line}"
    );
    assert!(
        field(&line, "after") >= 2,
        "the watcher is back after the next transaction: {line}"
    );
    assert_eq!(field(&line, "rows"), 3, "parent, child, parent: {line}");
    assert_eq!(field(&line, "child_status"), 0, "{line}");
}

#[test]
fn walguard_watcher_0_starts_no_thread() {
    let line = run(Some("0"));
    assert_eq!(field(&line, "before"), 1, "no watcher thread: {line}");
    assert_eq!(field(&line, "rows"), 3, "{line}");
}
