//! Defect 7 (issue 10): G4 must compare the `-wal` a connection itself opened.
//!
//! G4 fails a transaction whose `-wal` or `-shm` is no longer the file at the path. The
//! `-wal` identity was recorded per database node (the last `-wal` any connection of the
//! process opened) and copied into a connection at its first WAL-index mapping, not taken
//! from the `-wal` that connection opened. A connection whose first mapping comes after
//! the `-wal` was replaced and a second connection opened the new one therefore checks
//! the new file while it writes into the old one: its commit is acknowledged into an
//! orphaned `-wal`.
//!
//! Scenario (one Debian python3 process through walguard, connections C and D, every step
//! acknowledged before the next):
//! 1. this test holds walguard's gate exclusively (an OFD write lock on byte
//!    `PENDING_BYTE + 513` of the database; issue 10's builds used byte 1 of
//!    `app.db-walguard`, the test takes both), as another process's WAL set-up would: C
//!    opens the database and reads; it opens the `-wal` (W1), its first `xShmMap` gets
//!    SQLITE_BUSY until SQLite gives up;
//! 2. the `-wal` is replaced (`cp` + `mv` over it: W2 holds the same frames);
//! 3. the lock is released; D opens and reads (it opens W2);
//! 4. C inserts a row: C must fail with an SQLITE_IOERR code (SQLITE_IOERR_VNODE)
//!    instead of committing into W1; the process then leaves with `os._exit` (no close,
//!    no checkpoint), and every acknowledged commit must be visible to a fresh
//!    connection.
//!
//! The database is created (and its `-wal` removed by the last close) before X starts, so
//! C creates W1 and no other process keeps it. Baseline: the same steps on plain unix
//! (no life-cycle lock there) acknowledge C's commit and lose it.

use std::os::fd::AsRawFd;
use std::path::Path;

use vfs_tests::defects::Driver;

/// An OFD write lock on byte `byte` of `path` (walguard's set-up lock; the file is created
/// if missing), held until drop.
struct LifecycleLock {
    /// Closing it releases the lock.
    _file: std::fs::File,
}

impl LifecycleLock {
    fn take(path: &Path, byte: i64) -> LifecycleLock {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: all-zero is a valid flock.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte as libc::off_t;
        fl.l_len = 1;
        // SAFETY: a valid descriptor and flock for the duration of the call.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        assert_eq!(
            rc,
            0,
            "OFD write lock on byte 1 of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        LifecycleLock { _file: f }
    }
}

struct Outcome {
    c_first_read: Result<String, String>,
    d_read: Result<String, String>,
    c_write: Result<String, i64>,
    d_after: Result<String, String>,
    rows: Vec<String>,
    integrity: String,
}

fn replace_wal(db: &Path) {
    let wal = db.with_file_name("app.db-wal");
    let copy = db.with_file_name("app.db-wal.copy");
    std::fs::copy(&wal, &copy).expect("cp app.db-wal");
    std::fs::rename(&copy, &wal).expect("mv over app.db-wal");
}

fn scenario(walguard: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    {
        // Created through plain unix; the last close checkpoints and removes the -wal.
        let c = rusqlite::Connection::open(&db).expect("create the database");
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('k0');")
            .expect("fill the database");
    }

    let mut x = Driver::spawn("X (connections C and D)", dir.path(), walguard, &[]);
    let lock = walguard.then(|| {
        (
            LifecycleLock::take(&db, 0x4000_0000 + 513),
            LifecycleLock::take(&db.with_file_name("app.db-walguard"), 1),
        )
    });
    x.ok("open c app.db");
    let c_first_read = x
        .cmd("exec c SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    replace_wal(&db);
    drop(lock);
    x.ok("open d app.db");
    let d_read = x
        .cmd("exec d SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    let c_write = x
        .cmd("exec c INSERT INTO t VALUES ('c1'); SELECT count(*) FROM t")
        .map_err(|e| e.code);
    let d_after = x
        .cmd("exec d SELECT count(*) FROM t")
        .map_err(|e| e.to_string());
    // No close: what is committed must already be where the next connection looks.
    x.hard_exit();

    let c = rusqlite::Connection::open(&db).expect("fresh connection");
    let rows = c
        .prepare("SELECT x FROM t ORDER BY rowid")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| vec![format!("fresh read failed: {e}")]);
    let integrity = c
        .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("integrity_check failed: {e}"));
    Outcome {
        c_first_read,
        d_read,
        c_write,
        d_after,
        rows,
        integrity,
    }
}

fn lost(o: &Outcome) -> bool {
    o.c_write.is_ok() && !o.rows.iter().any(|r| r == "c1")
}

fn describe(o: &Outcome) -> String {
    format!(
        "C's first read {:?}; D's read {:?}; C's insert {:?}; D's read after it {:?}; fresh \
         connection sees {:?} (integrity {})",
        o.c_first_read, o.d_read, o.c_write, o.d_after, o.rows, o.integrity
    )
}

#[test]
fn a_connection_checks_the_wal_it_opened_not_the_one_another_connection_opened() {
    let unix = scenario(false);
    assert!(
        lost(&unix) || unix.integrity != "ok",
        "baseline: on plain unix C's commit after the -wal was replaced was not lost \
         ({}); the scenario cannot show the defect",
        describe(&unix)
    );

    let guarded = scenario(true);
    assert!(
        guarded.c_first_read.is_err(),
        "C's first read should have been refused while the life-cycle lock was held \
         (the scenario needs C's first mapping after the replacement): {}",
        describe(&guarded)
    );
    assert!(
        matches!(guarded.c_write, Err(code) if code & 0xff == 10)
            && !lost(&guarded)
            && guarded.integrity == "ok",
        "through walguard, C (which opened the -wal before it was replaced) must fail its \
         write with an SQLITE_IOERR code (SQLITE_IOERR_VNODE) and nothing acknowledged may \
         be lost: {} (plain unix: {})",
        describe(&guarded),
        describe(&unix)
    );
}
