//! The Rust API: `walguard::register` (default VFS, idempotent, from many threads),
//! file databases in WAL mode from two connections and from two processes, and
//! `file:...?vfs=walguard` URIs. Each test proves the connections really went through
//! walguard: the file reports walguard's VFS name (`SQLITE_FCNTL_VFSNAME`) and the
//! process's counters grew (`walguard::stats()`, or a worker's `stats` command).
//!
//! walguard is the default VFS of this whole test process. The tests share one lock
//! because the counters are process-wide and one test checks the default VFS.

mod common;

use std::ffi::CStr;
use std::sync::{Barrier, Mutex, MutexGuard};

use common::{ok, spawn, tempdir, vfs_name};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::worker::{parse_rows, stat, Vfs};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the test lock and registers walguard as the default VFS.
fn setup() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    walguard::register(walguard::Options::default()).expect("register walguard as default");
    guard
}

fn default_vfs_name() -> String {
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS (or NULL); registered VFS
    // objects and their zName live for the rest of the process.
    unsafe {
        let vfs = rusqlite::ffi::sqlite3_vfs_find(std::ptr::null());
        assert!(!vfs.is_null(), "SQLite has no default VFS");
        CStr::from_ptr((*vfs).zName).to_string_lossy().into_owned()
    }
}

fn is_walguard(reported: &str) -> bool {
    reported.starts_with(walguard::DEFAULT_NAME)
}

#[test]
fn register_as_default_is_idempotent_from_many_threads() {
    let _g = setup();
    const THREADS: usize = 8;
    let barrier = Barrier::new(THREADS);
    let results: Vec<Result<(), walguard::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    walguard::register(walguard::Options::default())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("register thread panicked"))
            .collect()
    });
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &Ok(()), "register from thread {i}");
    }
    walguard::register(walguard::Options::default()).expect("register once more");
    assert_eq!(default_vfs_name(), walguard::DEFAULT_NAME);
    assert!(walguard::stats().registrations >= 1);

    // A connection that names no VFS goes through walguard.
    let dir = tempdir();
    let db = dir.path().join("default.db");
    let before = walguard::stats();
    let conn = Connection::open(&db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .expect("write default.db");
    let reported = vfs_name(&conn);
    assert!(
        is_walguard(&reported),
        "default connection reports VFS {reported:?}"
    );
    let after = walguard::stats();
    assert!(after.db_opened > before.db_opened, "db_opened did not grow");
    assert!(
        after.files_opened > before.files_opened,
        "files_opened did not grow"
    );

    // A name that belongs to another VFS is refused, not wrapped.
    assert_eq!(
        walguard::register(walguard::Options::named("unix")),
        Err(walguard::Error::NameTaken("unix".into()))
    );
    assert!(matches!(
        walguard::register(walguard::Options::named("")),
        Err(walguard::Error::InvalidName(_))
    ));
    assert_eq!(default_vfs_name(), walguard::DEFAULT_NAME);
}

#[test]
fn wal_database_from_two_connections() {
    let _g = setup();
    let dir = tempdir();
    let db = dir.path().join("two-conns.db");
    let before = walguard::stats();

    let a = Connection::open(&db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mode: String = a
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("journal_mode=WAL");
    assert_eq!(mode, "wal");
    a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT);")
        .expect("create t");
    let b = Connection::open(&db).unwrap_or_else(|e| panic!("open {} again: {e}", db.display()));
    for i in 0..10 {
        let (conn, who) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
        conn.execute("INSERT INTO t(who) VALUES (?1)", [who])
            .unwrap_or_else(|e| panic!("insert {i} by {who}: {e}"));
    }
    for (conn, who) in [(&a, "a"), (&b, "b")] {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 10, "connection {who} sees every row");
        assert!(
            is_walguard(&vfs_name(conn)),
            "connection {who} bypassed walguard"
        );
    }
    let after = walguard::stats();
    assert!(
        after.db_opened >= before.db_opened + 2,
        "db_opened: {before:?} -> {after:?}"
    );
    assert!(
        after.wal_opened >= before.wal_opened + 2,
        "wal_opened: {before:?} -> {after:?}"
    );
    assert!(
        after.shm_mapped > before.shm_mapped,
        "shm_mapped: {before:?} -> {after:?}"
    );
    drop(a);
    drop(b);
    let check = Connection::open(&db).expect("reopen");
    let ic: String = check
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ic, "ok");
}

#[test]
fn wal_database_from_two_processes() {
    let _g = setup();
    let dir = tempdir();
    let db = dir.path().join("two-procs.db");
    let mut a = spawn(Vfs::Walguard, &db, "A");
    let mut b = spawn(Vfs::Walguard, &db, "B");
    assert_eq!(ok(&mut a, "wal"), "wal");
    let mut acked = parse_rows(&ok(&mut a, "write 5"));
    acked.extend(parse_rows(&ok(&mut b, "write 5")));
    acked.extend(parse_rows(&ok(&mut a, "write 5")));
    assert_eq!(acked.len(), 15);
    for w in [&mut a, &mut b] {
        assert_eq!(ok(w, "count"), "15", "worker {} row count", w.name());
        assert_eq!(ok(w, "integrity"), "ok");
        let seen = parse_rows(&ok(w, "rows"));
        assert_eq!(
            seen,
            acked,
            "worker {} sees every acknowledged row",
            w.name()
        );
        let s = ok(w, "stats");
        for counter in ["db_opened", "wal_opened", "shm_mapped", "files_opened"] {
            assert!(
                stat(&s, counter).is_some_and(|n| n >= 1),
                "worker {}: {counter} should be >= 1 in {s}",
                w.name()
            );
        }
    }
    let ino_a = ok(&mut a, "shm-inode");
    let ino_b = ok(&mut b, "shm-inode");
    assert!(
        ino_a != "none" && !ino_a.ends_with("deleted"),
        "A maps {ino_a}"
    );
    assert_eq!(ino_a, ino_b, "both processes map the same -shm");
    a.exit().expect("A exits");
    b.exit().expect("B exits");
}

#[test]
fn uri_selects_walguard_and_unix_bypasses_it() {
    let _g = setup();
    let dir = tempdir();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;

    let wg_path = dir.path().join("uri.db");
    let uri = format!("file:{}?vfs={}", wg_path.display(), walguard::DEFAULT_NAME);
    let before = walguard::stats();
    let conn =
        Connection::open_with_flags(&uri, flags).unwrap_or_else(|e| panic!("open {uri}: {e}"));
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap_or_else(|e| panic!("write {uri}: {e}"));
    let reported = vfs_name(&conn);
    assert!(is_walguard(&reported), "{uri} reports VFS {reported:?}");
    let after = walguard::stats();
    assert!(
        after.db_opened > before.db_opened,
        "{uri}: db_opened did not grow"
    );
    assert!(
        after.wal_opened > before.wal_opened,
        "{uri}: wal_opened did not grow"
    );
    assert!(
        wg_path.exists(),
        "{uri} did not create {}",
        wg_path.display()
    );
    drop(conn);

    // The counters are not just growing anyway: naming unix bypasses walguard.
    let unix_path = dir.path().join("uri-unix.db");
    let uri = format!("file:{}?vfs=unix", unix_path.display());
    let before = walguard::stats();
    let conn =
        Connection::open_with_flags(&uri, flags).unwrap_or_else(|e| panic!("open {uri}: {e}"));
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap_or_else(|e| panic!("write {uri}: {e}"));
    assert_eq!(vfs_name(&conn), "unix");
    let after = walguard::stats();
    assert_eq!(
        after.db_opened, before.db_opened,
        "{uri} went through walguard"
    );
    assert_eq!(
        after.wal_opened, before.wal_opened,
        "{uri} went through walguard"
    );
}
