//! Defect 8 (issue 10): the identity of `<db>-walguard` was never checked.
//!
//! The builds of issue 10 kept presence, the life-cycle lock and the WRITE/CKPT mirrors in
//! a lock file `<db>-walguard`; `rm app.db-*` (or any cleanup that removes the lock file
//! with the sidecars) while processes ran gave newcomers a new lock file that none of the
//! running processes held anything on. Since issue 17 all of it lives on the database
//! file itself (the gate, `src/db_locks.rs`), which no `rm` of sidecars replaces; the
//! scenarios stay, with a leftover `app.db-walguard` removed too where one exists.
//!
//! Two scenarios, both Debian python3 processes on the system SQLite (3.40.1) through
//! the defect driver, every step acknowledged before the next:
//! - **write during replacement** (fails before the fix): A (walguard) is inside a write
//!   transaction (`BEGIN IMMEDIATE; INSERT`); `app.db-shm` and `app.db-walguard` are
//!   removed; B (walguard) opens, reads (it builds a new `-shm` from the `-wal`) and
//!   commits a row; A commits. Every commit that was acknowledged must be in the
//!   database afterwards. Plain unix (the baseline) loses one: B's recovery did not wait
//!   for A's transaction, and A's frames overwrite B's in the `-wal`. Through walguard
//!   B's set-up of the new index waits until A's transaction ended (A holds the gate),
//!   so B reads in a thread while A commits.
//! - **close beside a newcomer** (the scenario of the issue; holds today because the
//!   newcomer's SHARED lock keeps the closer from its last-close EXCLUSIVE, kept as a
//!   guard): A has the database open; `app.db-walguard` is removed; B opens and maps;
//!   A closes its last connection. B's later writes succeed, B has no deleted `-wal` or
//!   `-shm` open, and a fresh connection sees every row.

use std::path::Path;

use vfs_tests::defects::Driver;

struct Replacement {
    b_read: Result<String, String>,
    b_write: Result<String, String>,
    a_commit: Result<String, String>,
    rows: Vec<String>,
    integrity: String,
}

fn fresh_rows(db: &Path) -> (Vec<String>, String) {
    let c = rusqlite::Connection::open(db).expect("fresh connection");
    let mut st = c
        .prepare("SELECT x FROM t ORDER BY rowid")
        .expect("prepare fresh read");
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .expect("fresh read")
        .collect::<Result<Vec<_>, _>>()
        .expect("fresh rows");
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    (rows, integrity)
}

fn write_during_replacement(walguard: bool) -> Replacement {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let mut a = Driver::spawn("A", dir.path(), walguard, &[]);
    a.ok("open a app.db");
    assert_eq!(a.ok("exec a PRAGMA journal_mode=WAL"), "wal");
    a.ok("exec a CREATE TABLE t(x); INSERT INTO t VALUES ('a0')");
    a.ok("exec a BEGIN IMMEDIATE; INSERT INTO t VALUES ('a1')");

    std::fs::remove_file(db.with_file_name("app.db-shm")).expect("rm app.db-shm");
    let _ = std::fs::remove_file(db.with_file_name("app.db-walguard"));

    let mut b = Driver::spawn("B", dir.path(), walguard, &[]);
    b.ok("open b app.db");
    // B's first read may wait for A's transaction: A commits meanwhile.
    let (b_read, a_commit) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            b.cmd("exec b SELECT count(*) FROM t")
                .map_err(|e| e.to_string())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let a_commit = a
            .cmd("exec a COMMIT; SELECT count(*) FROM t")
            .map_err(|e| e.to_string());
        (reader.join().expect("reader thread"), a_commit)
    });
    let b_write = b
        .cmd("exec b INSERT INTO t VALUES ('b1'); SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    drop(b.exit());
    drop(a.exit());
    let (rows, integrity) = fresh_rows(&db);
    Replacement {
        b_read,
        b_write,
        a_commit,
        rows,
        integrity,
    }
}

/// The acknowledged commits missing from the fresh read.
fn lost(r: &Replacement) -> Vec<&'static str> {
    let mut lost = Vec::new();
    if !r.rows.iter().any(|x| x == "a0") {
        lost.push("a0");
    }
    if r.b_write.is_ok() && !r.rows.iter().any(|x| x == "b1") {
        lost.push("b1 (B's commit)");
    }
    if r.a_commit.is_ok() && !r.rows.iter().any(|x| x == "a1") {
        lost.push("a1 (A's commit)");
    }
    lost
}

fn describe(r: &Replacement) -> String {
    format!(
        "B read {:?}, B insert+commit {:?}, A commit {:?}; fresh connection sees {:?} \
         (integrity {}); acknowledged but lost: {:?}",
        r.b_read,
        r.b_write,
        r.a_commit,
        r.rows,
        r.integrity,
        lost(r)
    )
}

#[test]
fn a_replaced_lock_file_does_not_let_a_newcomer_write_beside_a_running_transaction() {
    let unix = write_during_replacement(false);
    assert!(
        !lost(&unix).is_empty(),
        "baseline: on plain unix nothing acknowledged was lost ({}); the scenario cannot \
         show the defect",
        describe(&unix)
    );

    let guarded = write_during_replacement(true);
    assert!(
        lost(&guarded).is_empty() && guarded.integrity == "ok",
        "through walguard, with app.db-shm and app.db-walguard removed while A was inside a \
         write transaction, an acknowledged commit was lost: {}. A newcomer's new lock file \
         must not let it recover and write a second WAL index beside A's transaction \
         (plain unix: {})",
        describe(&guarded),
        describe(&unix)
    );
}

#[test]
fn a_closer_never_unlinks_sidecars_under_a_process_that_recreated_the_lock_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let mut a = Driver::spawn("A", dir.path(), true, &[]);
    a.ok("open a app.db");
    assert_eq!(a.ok("exec a PRAGMA journal_mode=WAL"), "wal");
    a.ok("exec a CREATE TABLE t(x); INSERT INTO t VALUES ('a0')");

    let _ = std::fs::remove_file(db.with_file_name("app.db-walguard"));

    let mut b = Driver::spawn("B", dir.path(), true, &[]);
    b.ok("open b app.db");
    assert_eq!(
        b.ok("exec b INSERT INTO t VALUES ('b0'); SELECT count(*) FROM t"),
        "2"
    );

    a.ok("close a");
    let b_write = b.cmd("exec b INSERT INTO t VALUES ('b1'); SELECT count(*) FROM t");
    let deleted = b.ok("deleted");
    drop(b.exit());
    drop(a.exit());
    let (rows, integrity) = fresh_rows(&db);
    assert!(
        b_write.as_ref().is_ok_and(|n| n == "3")
            && deleted == "0"
            && rows == ["a0", "b0", "b1"]
            && integrity == "ok",
        "after A's last close beside B (which recreated app.db-walguard): B's write {b_write:?}, \
         B's descriptors on deleted sidecars: {deleted}; fresh connection sees {rows:?} \
         (integrity {integrity})"
    );
}
