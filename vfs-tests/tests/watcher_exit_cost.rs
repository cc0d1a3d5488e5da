//! walguard's watcher thread costs a short process nothing at exit. A process that exits
//! holding inotify watches waits in the kernel for an SRCU grace period while its
//! descriptors close (9–18 ms measured on this project's VMs, asleep, whatever the
//! number of watches): SQLite's walcrash3 ran 3.1× slower under walguard for it (10,000
//! child processes), and every CLI invocation that ran nine statements, or closed while
//! another process kept the database open, paid it. So a process starts its watcher
//! (thread and inotify instance) only once one of its mappings has served 1,024
//! transactions, and a `-shm` descriptor kept at a last unmap is not a reason to start
//! one: it is kept unwatched, and closed once its file is gone when the process opens a
//! database again.
//!
//! Scenario: Q (a walguard worker) keeps x.db mapped, as a gateway would. P (Debian
//! python3 with the extension) opens x.db, runs 20 transactions and closes it — a CLI
//! invocation. P then has no inotify descriptor and no `walguard-watch` thread. Q exits:
//! its close tears x.db's WAL down (the `-shm` is deleted). P opens y.db: it holds no
//! deleted `-shm` any more. P runs 1,100 transactions on y.db: now it watches (an inotify
//! descriptor, the thread) — the probes see them when they are there.
//!
//! On e2d7ae6 (the build before) the first check fails: P watched x.db from its ninth
//! transaction, and its close put the kept `-shm` descriptor under a watch.

mod common;

use std::path::Path;

use common::{exe, tempdir};
use rusqlite::Connection;
use vfs_tests::defect17::{driver_command, open_sidecars, worker_command, Proc};
use vfs_tests::extension::extension_path;
use vfs_tests::worker::Vfs;

fn create(db: &Path) {
    let c = Connection::open(db).expect("create a database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL);
         INSERT INTO t(tag) VALUES ('seed');",
    )
    .expect("fill a database");
}

/// Threads of `pid` named `walguard-watch`.
fn watcher_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "walguard-watch")
        .count()
}

/// `n` single-row INSERTs, each its own transaction, as one `exec` line.
fn inserts(n: usize) -> String {
    "INSERT INTO t(tag) VALUES ('p');".repeat(n)
}

#[test]
fn a_short_process_starts_no_watcher_and_a_long_one_does() {
    let dir = tempdir();
    let (x, y) = (dir.path().join("x.db"), dir.path().join("y.db"));
    create(&x);
    create(&y);
    let s = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();

    let mut q = Proc::spawn(
        "Q (walguard, keeps x.db open)",
        worker_command(exe(), Vfs::Walguard, &x, &["--name", "Q"]),
    );
    assert_eq!(q.ok("count"), "1", "Q reads x");

    let mut p = Proc::spawn("P (python3 + walguard)", driver_command(dir.path()));
    p.ok(&format!("load {}", extension_path().display()));
    let pid: u32 = p.ok("pid").parse().expect("pid");
    p.ok(&format!("open x {}", s(&x)));
    p.ok(&format!("exec x {}", inserts(20)));
    p.ok("close x");
    let short = (
        open_sidecars(pid, "anon_inode:inotify"),
        watcher_threads(pid),
    );
    assert_eq!(q.ok("count"), "21", "Q sees P's 20 commits on x.db");
    assert!(
        q.exit().is_some_and(|st| st.success()),
        "Q exits cleanly:\n{}",
        q.stderr()
    );
    assert!(
        !x.with_extension("db-shm").exists(),
        "Q's close did not tear x.db's WAL down: the sweep is not tested"
    );

    p.ok(&format!("open y {}", s(&y)));
    let deleted = open_sidecars(pid, "x.db-shm (deleted)");
    p.ok(&format!("exec y {}", inserts(1_100)));
    let long = (
        open_sidecars(pid, "anon_inode:inotify"),
        watcher_threads(pid),
    );
    p.ok("close y");
    let status = p.exit();
    assert!(
        status.is_some_and(|st| st.success()),
        "P exits cleanly: {status:?}\n{}",
        p.stderr()
    );

    assert_eq!(
        short,
        (Vec::new(), 0),
        "after 20 transactions and a close while Q maps x.db, P must hold no inotify \
         instance and run no watcher thread (inotify descriptors, watcher threads)"
    );
    assert!(
        deleted.is_empty(),
        "P still holds x.db's deleted -shm after opening another database: {deleted:?}"
    );
    assert!(
        long.0.len() == 1 && long.1 == 1,
        "after 1,100 transactions on y.db P watches it: one inotify descriptor and one \
         watcher thread, found {long:?}"
    );
}
