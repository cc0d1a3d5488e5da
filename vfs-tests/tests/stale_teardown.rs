//! G2 with G4: a connection whose `-shm` was replaced under it must not tear the WAL down
//! at its last close. Found by the torture campaign with `WALGUARD_WATCHER=0` (2026-12-06,
//! seed 0xfe12511ee69d, about one run in three: hundreds to all acknowledged transactions
//! lost, `database disk image is malformed`, the database file shorter than its header).
//!
//! A maps the index (S1). An operator replaces the `-shm` (`cp` + `mv`: S2, a copy). B
//! opens the database, sets S2 up (recovering it from the `-wal`), commits 50 rows into
//! the `-wal` and closes: A still holds SHARED, so B's close leaves the `-wal` alone. A,
//! which made no transaction since the replacement (nothing checked its files: no watcher
//! runs for it), closes last. Its close checkpoints through S1, which knows none of B's
//! frames, and deletes the `-wal` — B's 50 acknowledged commits are gone (and a
//! checkpoint through a stale index can truncate the database below pages newer
//! checkpoints wrote: the malformed files the campaign found).
//!
//! walguard's tear-down decision now checks, with the gate held, that the mapping's
//! `-shm` and `-wal` are still the files at their paths; a replaced one poisons the
//! mapping and the close persists the WAL instead. The same scenario on plain `unix`
//! loses the rows (the baseline: the test can fail), and so did walguard before the fix.
//!
//! A runs with `WALGUARD_WATCHER=0` so that nothing notices the replacement before the
//! close (with the watcher, it usually notices within microseconds, which only narrows
//! the window the tear-down check closes).

use std::ffi::OsStr;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use vfs_tests::defect17::{driver_command, Proc};
use vfs_tests::extension::extension_path;

fn driver(label: &str, dir: &Path, walguard: bool) -> Proc {
    let mut cmd = driver_command(dir);
    cmd.env("WALGUARD_WATCHER", OsStr::new("0"));
    let mut p = Proc::spawn(label, cmd);
    if walguard {
        p.ok(&format!("load {}", extension_path().display()));
    }
    p
}

/// Runs the scenario; returns the rows the database holds afterwards and its
/// `integrity_check`.
fn scenario(walguard: bool) -> (i64, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let s = db.to_str().expect("utf-8 temp path").to_owned();
    {
        let c = Connection::open(&db).expect("create the database");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('seed');",
        )
        .expect("fill the database");
    }
    let shm = dir.path().join("app.db-shm");
    let which = if walguard { "walguard" } else { "unix" };

    let mut a = driver(&format!("A ({which})"), dir.path(), walguard);
    a.ok(&format!("open a {s}"));
    assert_eq!(a.ok("exec a SELECT count(*) FROM t"), "1");
    assert!(shm.exists(), "A maps the index");

    let copy = dir.path().join("shm.copy");
    std::fs::copy(&shm, &copy).expect("cp -shm");
    std::fs::rename(&copy, &shm).expect("mv over -shm");

    let mut b = driver(&format!("B ({which})"), dir.path(), walguard);
    b.ok(&format!("open b {s}"));
    b.ok(&format!(
        "exec b {}",
        "INSERT INTO t VALUES ('b');".repeat(50)
    ));
    assert_eq!(b.ok("exec b SELECT count(*) FROM t"), "51");
    b.ok("close b");
    assert!(
        b.exit().is_some_and(|st| st.success()),
        "B exits cleanly:\n{}",
        b.stderr()
    );
    let wal = dir.path().join("app.db-wal");
    assert!(
        wal.metadata().is_ok_and(|m| m.len() > 0),
        "B's close left its frames in the -wal (A holds SHARED): the scenario holds"
    );

    // A's close: the last one.
    let _ = a.request("close a");
    assert!(
        a.exit().is_some_and(|st| st.success()),
        "A exits cleanly:\n{}",
        a.stderr()
    );

    let c = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .expect("open the database afterwards");
    let rows: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap_or(-1);
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    (rows, integrity)
}

#[test]
fn a_close_through_a_replaced_shm_does_not_tear_the_wal_down() {
    let unix = scenario(false);
    assert_ne!(
        unix,
        (51, "ok".to_owned()),
        "baseline: on plain unix A's close loses B's 50 commits (else the scenario proves nothing)"
    );
    let wg = scenario(true);
    assert_eq!(
        wg,
        (51, "ok".to_owned()),
        "with walguard, B's 50 acknowledged commits survive A's close (unix: {unix:?})"
    );
}
