//! Defect 1 (issue 10): check-then-close of walguard's own descriptors.
//!
//! walguard decided whether closing its database mirror or `-shm` descriptor was safe
//! with a lock probe (F_OFD_GETLK, then `/proc/locks`), then closed it. Another SQLite
//! runtime of the process can take a POSIX lock on that inode between the probe and the
//! close; the close then cancels it (POSIX locks belong to the process and vanish when
//! any of its descriptors of the file is closed): exactly the lost lock walguard exists
//! to prevent. The guarantee: walguard never closes such a descriptor while a runtime of
//! the process may lock the file (it keeps one per inode for the life of the process).
//!
//! The other runtime is played by an LD_PRELOAD shim (`vfs-tests/shim/close_window.c`)
//! in the walguard process: at the close of a descriptor whose last fcntl was
//! F_OFD_GETLK and which names the database or its `-shm`, it takes a POSIX read lock
//! through its own descriptor of that inode (the database's first SHARED byte, the
//! `-shm` dead-man switch), keeps that descriptor open, and logs the lock. After the
//! walguard connection closed, every logged lock must still be in `/proc/locks`.
//!
//! Scenario: this test process holds the database open through plain unix (a read has
//! mapped the `-shm`), so the walguard process's close persists the sidecars and both of
//! walguard's descriptors of them are closed (or kept) with the files still in place.
//! The walguard process is Debian python3 on the system SQLite (defect driver).

use std::ffi::OsStr;

use rusqlite::{Connection, OpenFlags};
use vfs_tests::defects::{build_shim, proc_locks, Driver};

#[test]
fn no_posix_lock_taken_before_walguard_closes_its_descriptor_is_lost() {
    scenario(false);
}

/// The same without a watcher thread (`WALGUARD_WATCHER=0`): the `-shm` descriptor was
/// closed right after a probe there (found by the torture campaign without a watcher:
/// another runtime's WAL locks cancelled, lost commits). It is kept now, like everywhere.
#[test]
fn without_a_watcher_no_posix_lock_is_lost_either() {
    scenario(true);
}

fn scenario(no_watcher: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    {
        let c = Connection::open(&db).expect("create the database");
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("fill the database");
    }
    // Another process keeps the database open: the walguard process's close is not the
    // last one, the sidecars stay.
    let holder =
        Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, "unix")
            .expect("holder opens the database");
    let n: i64 = holder
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("holder reads");
    assert_eq!(n, 1);

    let shim = build_shim("close_window", dir.path());
    let log = dir.path().join("close_window.log");
    let db_s = db.to_str().expect("utf-8 temp path");
    let mut w = Driver::spawn(
        "W (walguard, close_window shim)",
        dir.path(),
        true,
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("CLOSE_WINDOW_DB", OsStr::new(db_s)),
            ("CLOSE_WINDOW_LOG", log.as_os_str()),
            (
                "WALGUARD_WATCHER",
                OsStr::new(if no_watcher { "0" } else { "1" }),
            ),
        ],
    );
    let pid = i64::from(w.pid());
    w.ok(&format!("open w {db_s}"));
    w.ok("exec w INSERT INTO t VALUES (2); SELECT count(*) FROM t");
    w.ok("close w");

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines().any(|l| l.starts_with("ofd-seen ")),
        "the shim saw no open-file-description lock request on the database or its -shm: \
         it is not interposed under walguard, the test proves nothing. Log:\n{text}"
    );
    let locks = proc_locks();
    let mut taken = Vec::new();
    let mut lost = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("locked ")) {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let (ino, byte): (u64, u64) = (
            f[1].parse().expect("inode in the shim log"),
            f[2].parse().expect("byte in the shim log"),
        );
        let held = locks.iter().any(|l| {
            l.class == "POSIX" && l.pid == pid && l.ino == ino && l.start <= byte && byte <= l.end
        });
        taken.push(line.to_owned());
        if !held {
            lost.push(format!("{} byte {byte}", f.get(3).unwrap_or(&"?")));
        }
    }
    drop(w.exit());
    drop(holder);
    assert!(
        lost.is_empty(),
        "walguard closed a descriptor of the database or -shm right after probing it: the \
         POSIX lock another runtime of the process took in between was cancelled by that \
         close. Lost: {lost:?} (locks the shim took: {taken:?})"
    );
}
