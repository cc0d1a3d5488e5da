//! No false G4 alarm when connections of one process switch a database between rollback
//! and WAL mode (SQLite's own walthread.test and symlink-2.2.6/2.2.7 found it): SQLite
//! deletes `-wal`/`-shm` when the last WAL user leaves and creates new ones when a
//! connection comes back. A connection's `-wal` identity belongs to one WAL session of
//! that connection; it must be taken again at the next one, not compared with the file a
//! previous session used. Same steps through plain unix as the baseline.

use rusqlite::{Connection, OpenFlags};

fn open(path: &std::path::Path, vfs: &str) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    Connection::open_with_flags_and_vfs(path, flags, vfs).expect("open")
}

fn steps(vfs: &str) -> Result<i64, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switch.db");
    let a = open(&path, vfs);
    a.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .map_err(|e| format!("a wal: {e}"))?;
    let mut old_wals = Vec::new();
    for round in 0..3 {
        // Keep the old -wal's inode alive, so the file system cannot hand its number to
        // the next -wal (ext4 and tmpfs reuse freed inode numbers at once, which would
        // hide the comparison with a stale identity). SQLite never locks a -wal: this
        // descriptor's close cancels nothing.
        old_wals.push(std::fs::File::open(dir.path().join("switch.db-wal")).expect("-wal"));
        // A leaves WAL: the -wal and -shm are deleted (A is their last user).
        a.execute_batch("PRAGMA journal_mode=DELETE;")
            .map_err(|e| format!("round {round}: a delete: {e}"))?;
        assert!(
            !dir.path().join("switch.db-wal").exists(),
            "{vfs}: the -wal went away with the last WAL user"
        );
        // B brings the database back to WAL: new -wal and -shm.
        let b = open(&path, vfs);
        b.execute_batch("PRAGMA journal_mode=WAL; INSERT INTO t VALUES (2);")
            .map_err(|e| format!("round {round}: b wal: {e}"))?;
        // A comes back too (it sees WAL mode in the header) and reads and writes.
        a.execute_batch("INSERT INTO t VALUES (3);")
            .map_err(|e| format!("round {round}: a after b: {e}"))?;
        drop(b);
    }
    a.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .map_err(|e| format!("count: {e}"))
}

#[test]
fn switching_between_rollback_and_wal_is_no_sidecar_replacement() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let unix = steps("unix").expect("plain unix");
    let before = walguard::stats().sidecar_replaced;
    let walguard = steps("walguard");
    assert_eq!(walguard, Ok(unix), "walguard behaves as unix");
    assert_eq!(
        walguard::stats().sidecar_replaced,
        before,
        "no replaced sidecar reported: SQLite itself deleted and recreated them"
    );
}

/// WAL with its index in heap memory (`locking_mode=EXCLUSIVE` set before the WAL is first
/// used: no `-shm`, the handle never maps an index): leaving WAL mode and closing delete
/// the `-wal` as they do through unix (SQLite's walnoshm.test 1.9/1.11 found a build that
/// kept it, so the next statement reopened the database in WAL mode). Returns, per step,
/// whether a `-wal` is left, and what the database reads.
fn heap_memory_steps(vfs: &str) -> Result<(bool, String, bool, i64), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heap.db");
    let wal = dir.path().join("heap.db-wal");
    let a = open(&path, vfs);
    a.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;
         CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    )
    .map_err(|e| format!("heap-memory wal: {e}"))?;
    if !wal.exists() || dir.path().join("heap.db-shm").exists() {
        return Err("expected a -wal and no -shm (heap-memory WAL index)".into());
    }
    let mode: String = a
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(|e| format!("leave wal: {e}"))?;
    let wal_after_switch = wal.exists();
    // Still the rollback journal: the next statement must not find a -wal to reopen.
    let locking: String = a
        .query_row("PRAGMA locking_mode=NORMAL", [], |r| r.get(0))
        .map_err(|e| format!("locking_mode: {e}"))?;
    a.execute_batch("INSERT INTO t VALUES (2);")
        .map_err(|e| format!("insert after: {e}"))?;
    drop(a);
    // Again in WAL, closed while still in WAL mode: the last close deletes the -wal.
    let b = open(&path, vfs);
    b.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; INSERT INTO t VALUES (3);",
    )
    .map_err(|e| format!("wal again: {e}"))?;
    drop(b);
    let wal_after_close = wal.exists();
    let n: i64 = open(&path, vfs)
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .map_err(|e| format!("count: {e}"))?;
    Ok((
        wal_after_switch,
        format!("{mode} {locking}"),
        wal_after_close,
        n,
    ))
}

#[test]
fn heap_memory_wal_is_cleaned_up_as_through_unix() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let unix = heap_memory_steps("unix").expect("plain unix");
    assert_eq!(
        unix,
        (false, "delete normal".to_string(), false, 3),
        "unix deletes the -wal"
    );
    assert_eq!(
        heap_memory_steps("walguard"),
        Ok(unix),
        "walguard behaves as unix"
    );
}

/// `locking_mode=EXCLUSIVE` set while the WAL index is mapped, then back to rollback mode
/// (SQLite's wal2-6.3): the `-wal` goes, and the next write uses a rollback journal.
/// Returns whether a `-wal` is left after the switch and after the next write, and
/// whether that write made a journal.
fn exclusive_after_mapping_steps(vfs: &str) -> Result<(bool, bool, bool, i64), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("excl.db");
    let wal = dir.path().join("excl.db-wal");
    let a = open(&path, vfs);
    a.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA locking_mode=EXCLUSIVE;
         BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1); COMMIT;",
    )
    .map_err(|e| format!("wal, then exclusive: {e}"))?;
    a.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(|e| format!("leave wal: {e}"))?;
    let wal_after_switch = wal.exists();
    a.execute_batch("BEGIN; INSERT INTO t VALUES (2);")
        .map_err(|e| format!("write: {e}"))?;
    let wal_in_write = wal.exists();
    let journal = dir.path().join("excl.db-journal").exists();
    a.execute_batch("COMMIT;")
        .map_err(|e| format!("commit: {e}"))?;
    let n = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .map_err(|e| format!("count: {e}"))?;
    Ok((wal_after_switch, wal_in_write, journal, n))
}

#[test]
fn leaving_wal_in_exclusive_mode_is_cleaned_up_as_through_unix() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let unix = exclusive_after_mapping_steps("unix").expect("plain unix");
    assert_eq!(unix, (false, false, true, 2), "unix deletes the -wal");
    assert_eq!(
        exclusive_after_mapping_steps("walguard"),
        Ok(unix),
        "walguard behaves as unix"
    );
}
