//! Issue 17, defect 4: no process keeps a deleted `-shm` open after a peer's tear-down.
//!
//! A walguard process P that stops using a database (its last connection to it closes
//! while another process still has it open) may keep the `-shm` descriptor for its next
//! mapping. When the peer then closes last and deletes `-wal` and `-shm`, P must not go
//! on holding the deleted file: `/proc/P/fd` would show `x.db-shm (deleted)` (the
//! symptom of a split WAL index that `walguard doctor` reports as damage, exit status 2,
//! and a wasted descriptor in a process that opens a database per tenant).
//!
//! Scenario, with the watcher thread on and off (`WALGUARD_WATCHER=0`): P (Debian python3
//! on the system SQLite with the extension, `defect_driver.py`) keeps three databases of
//! one directory: it reads x and y; Q (a walguard worker) reads x; P closes x; Q exits
//! (last close: x's sidecars are deleted); P then writes to y three times and opens, reads
//! and closes z (a transaction start and a first mapping elsewhere in the process, where
//! housekeeping could run). Then — allowing the watcher up to 2 s — P must hold no
//! descriptor of a deleted `-shm`.
//!
//! A second test (`a_concurrent_writer_does_not_hide_a_peer_s_tear_down`) runs the same
//! cycle 500 times with the watcher on while a thread of P writes to y.db without pause
//! (`vfs-tests/py/defect17_kept_shm.py`): after every cycle P must give the deleted `-shm`
//! back within two seconds.
//!
//! On e4e5d0e (the build before the fix) both fail. Without a watcher nothing ever drops
//! a kept descriptor whose file was deleted (only the watcher thread does, after an
//! event), deterministically:
//! ```text
//! P (WALGUARD_WATCHER=0) still holds a deleted -shm after the peer's tear-down:
//! ["/tmp/walguard-test-js5ruj/x.db-shm (deleted)"]
//! ```
//! (`walguard doctor x.db` on such a process: exit status 2, "-shm fd 7 read-write
//! DELETED".) With the watcher on, a single quiet cycle passes on e4e5d0e (the watcher
//! thread reads the deletion event and drops the descriptor); with a writer in the same
//! process, the writer's own read of the inotify queue at its transaction start
//! (`drain_now`) sometimes consumes the event first, and nothing drops the descriptor
//! then — 9 of 100 cycles in an experiment, 0 of 100 without the writer:
//! ```text
//! with a writer in the same process (watcher on), P kept a deleted -shm open for two
//! seconds after the peer's tear-down in cycle 21 of 21 (teardowns 21, writes on y.db
//! 123332): /tmp/walguard-test-Zerxf8/x.db-shm (deleted)
//! ```
//! That second check is probabilistic on e4e5d0e: it fails when any of 500 cycles loses
//! the race (10 of 10 runs failed, at cycles 5 to 124). On a correct build no
//! interleaving keeps the descriptor, so it cannot fail by chance.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{exe, tempdir};
use rusqlite::Connection;
use vfs_tests::defect17::{driver_command, open_sidecars, worker_command, Proc};
use vfs_tests::extension::{extension_path, python_command, run_with_timeout};
use vfs_tests::worker::Vfs;

fn create(db: &Path) {
    let c = Connection::open(db).expect("create a database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);
         INSERT INTO t(tag) VALUES ('seed');",
    )
    .expect("fill a database");
}

/// Runs the scenario; returns P's descriptors on deleted `-shm` files at the end.
fn run(watcher: bool) -> Vec<String> {
    let dir = tempdir();
    let path = |n: &str| dir.path().join(n);
    for n in ["x.db", "y.db", "z.db"] {
        create(&path(n));
    }
    let s = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
    let mut cmd = driver_command(dir.path());
    cmd.env_remove("WALGUARD_WATCHER");
    if !watcher {
        cmd.env("WALGUARD_WATCHER", OsStr::new("0"));
    }
    let label = if watcher {
        "P (watcher on)"
    } else {
        "P (WALGUARD_WATCHER=0)"
    };
    let mut p = Proc::spawn(label, cmd);
    p.ok(&format!("load {}", extension_path().display()));
    let pid: u32 = p.ok("pid").parse().expect("pid");
    p.ok(&format!("open x {}", s(&path("x.db"))));
    p.ok(&format!("open y {}", s(&path("y.db"))));
    p.ok("exec x SELECT count(*) FROM t");
    p.ok("exec y SELECT count(*) FROM t");

    let mut q = Proc::spawn(
        "Q (walguard)",
        worker_command(exe(), Vfs::Walguard, &path("x.db"), &["--name", "Q"]),
    );
    assert_eq!(q.ok("count"), "1", "Q reads x");
    p.ok("close x");
    assert!(
        q.exit().is_some_and(|st| st.success()),
        "Q exits cleanly:\n{}",
        q.stderr()
    );
    assert!(
        !path("x.db-shm").exists() && !path("x.db-wal").exists(),
        "Q's last close did not delete x's sidecars: the scenario does not reach the \
         tear-down, the test proves nothing"
    );

    for i in 0..3 {
        p.ok(&format!("exec y INSERT INTO t(tag) VALUES ('y{i}')"));
    }
    p.ok(&format!("open z {}", s(&path("z.db"))));
    p.ok("exec z SELECT count(*) FROM t");
    p.ok("close z");

    let deadline = Instant::now() + Duration::from_secs(2);
    let held = loop {
        let held = open_sidecars(pid, "-shm (deleted)");
        if held.is_empty() || Instant::now() >= deadline {
            break held;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = p.exit();
    assert!(
        status.is_some_and(|st| st.success()),
        "{label} exits cleanly: {status:?}\n{}",
        p.stderr()
    );
    held
}

#[test]
fn no_deleted_shm_stays_open_after_a_peer_s_tear_down() {
    let mut failures = Vec::new();
    for watcher in [false, true] {
        let held = run(watcher);
        if !held.is_empty() {
            let which = if watcher {
                "watcher on"
            } else {
                "WALGUARD_WATCHER=0"
            };
            failures.push(format!(
                "P ({which}) still holds a deleted -shm after the peer's tear-down: {held:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_concurrent_writer_does_not_hide_a_peer_s_tear_down() {
    let dir = tempdir();
    let ext = extension_path();
    let mut cmd = python_command(
        "defect17_kept_shm.py",
        &[ext.as_os_str(), dir.path().as_os_str(), OsStr::new("500")],
        dir.path(),
    );
    cmd.env_remove("WALGUARD_WATCHER");
    let out = run_with_timeout(cmd, None, Duration::from_secs(300));
    out.assert_success("defect17_kept_shm.py");
    let num = |k: &str| -> u64 {
        out.value(k)
            .parse()
            .unwrap_or_else(|e| panic!("{k}= is not a number ({e}):\n{out}"))
    };
    let (cycles, teardowns, leaked) = (num("cycles"), num("teardowns"), num("leaked"));
    assert!(
        teardowns == cycles && cycles > 0,
        "only {teardowns} of {cycles} cycles ended with the peer deleting x.db-shm: the \
         scenario does not reach the tear-down, the test proves nothing:\n{out}"
    );
    assert_eq!(
        leaked,
        0,
        "with a writer in the same process (watcher on), P kept a deleted -shm open for \
         two seconds after the peer's tear-down in cycle {leaked} of {cycles} (teardowns \
         {teardowns}, writes on y.db {}): {}",
        out.value("writes"),
        out.value("held")
    );
}
