//! Defect 4 (issue 10): an application's `SQLITE_FCNTL_PERSIST_WAL` query must not start
//! a tear-down.
//!
//! SQLite itself asks `SQLITE_FCNTL_PERSIST_WAL` (value -1) only at last close, holding
//! EXCLUSIVE; walguard treated every query as that moment and took the database's
//! life-cycle lock (an OFD write lock on byte 1 of `<db>-walguard`), which then stayed
//! held until the connection closed. An application may ask at any time (apsw's
//! `filecontrol`, a C program checking its settings); every other process's first
//! `xShmMap` then found the life-cycle lock held, returned SQLITE_BUSY, and SQLite's
//! retries ended in SQLITE_PROTOCOL ("locking protocol") about ten seconds later.
//!
//! Scenario (Debian python3, system SQLite, ctypes): A opens a WAL database through
//! walguard, writes, asks `PERSIST_WAL` (-1) and keeps its connection; B opens the
//! database through walguard and reads and writes: that must succeed, and A must still
//! write afterwards. The same steps on plain unix are the baseline.

use vfs_tests::defects::{inode, proc_locks, Driver};

struct Outcome {
    answer: String,
    lifecycle_held: bool,
    b_read: Result<String, String>,
    b_write: Result<String, String>,
    a_write: Result<String, String>,
    rows: i64,
}

fn scenario(walguard: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let mut a = Driver::spawn("A", dir.path(), walguard, &[]);
    a.ok("open a app.db");
    assert_eq!(a.ok("exec a PRAGMA journal_mode=WAL"), "wal");
    a.ok("exec a CREATE TABLE t(x); INSERT INTO t VALUES ('a1')");
    let answer = a.ok("persist a -1");
    let lock_file = db.with_file_name("app.db-walguard");
    let lifecycle_held = lock_file.exists() && {
        let ino = inode(&lock_file);
        proc_locks()
            .iter()
            .any(|l| l.ino == ino && l.start <= 1 && l.end >= 1 && l.kind == "WRITE")
    };

    let mut b = Driver::spawn("B", dir.path(), walguard, &[]);
    b.ok("open b app.db");
    let b_read = b
        .cmd("exec b SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    // Each refused first mapping costs SQLite's whole retry budget (about ten seconds):
    // the write is tried only after a successful read.
    let b_write = match &b_read {
        Ok(_) => b
            .cmd("exec b INSERT INTO t VALUES ('b1'); SELECT count(*) FROM t")
            .map_err(|e| e.to_string()),
        Err(_) => Err("not tried (the read failed)".to_owned()),
    };
    let a_write = a
        .cmd("exec a INSERT INTO t VALUES ('a2'); SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    drop(b.exit());
    drop(a.exit());
    let c = rusqlite::Connection::open(&db).expect("fresh connection");
    let rows = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("fresh count");
    Outcome {
        answer,
        lifecycle_held,
        b_read,
        b_write,
        a_write,
        rows,
    }
}

fn describe(o: &Outcome) -> String {
    format!(
        "PERSIST_WAL answer {}; life-cycle byte of app.db-walguard write-locked after the \
         query: {}; B read: {:?}; B write: {:?}; A write afterwards: {:?}; rows at the end: {}",
        o.answer, o.lifecycle_held, o.b_read, o.b_write, o.a_write, o.rows
    )
}

#[test]
fn a_persist_wal_query_leaves_other_processes_free_to_map_the_wal_index() {
    let unix = scenario(false);
    assert!(
        unix.b_read.is_ok() && unix.b_write.is_ok() && unix.a_write.is_ok() && unix.rows == 3,
        "baseline on plain unix failed: {}",
        describe(&unix)
    );

    let guarded = scenario(true);
    assert!(
        guarded.b_read.as_ref().is_ok_and(|n| n == "1")
            && guarded.b_write.as_ref().is_ok_and(|n| n == "2")
            && guarded.a_write.as_ref().is_ok_and(|n| n == "3")
            && guarded.rows == 3,
        "through walguard, an SQLITE_FCNTL_PERSIST_WAL query (-1) on A's open connection \
         kept other processes from the WAL index: {}. A query on a connection that is not \
         at EXCLUSIVE must not take the life-cycle lock (plain unix: {})",
        describe(&guarded),
        describe(&unix)
    );
}
