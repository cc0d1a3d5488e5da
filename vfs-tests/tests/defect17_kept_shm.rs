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
//! On e4e5d0e (the build before the fix) the variant without a watcher fails (nothing
//! there ever drops a kept descriptor whose file was deleted: only the watcher thread
//! does, after an event):
//! ```text
//! P (WALGUARD_WATCHER=0) still holds a deleted -shm after the peer's tear-down:
//! ["/tmp/walguard-test-js5ruj/x.db-shm (deleted)"]
//! ```
//! (`walguard doctor x.db` on such a process: exit status 2, "-shm fd 7 read-write
//! DELETED".)
//! With the watcher on, e4e5d0e's watcher thread drops it after the deletion event; the
//! issue's suspicion (a writer's `drain_now` consuming that event first) needs the event to
//! be read by a transaction start on another database before the watcher thread is
//! scheduled, which this test does not force (it only asserts the outcome).

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{exe, tempdir};
use rusqlite::Connection;
use vfs_tests::defect17::{driver_command, open_sidecars, worker_command, Proc};
use vfs_tests::extension::extension_path;
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
