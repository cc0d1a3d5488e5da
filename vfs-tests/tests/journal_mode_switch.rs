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
