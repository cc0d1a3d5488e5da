//! G1: a live `-shm` is never re-initialised under another SQLite runtime of the same
//! process.
//!
//! A second SQLite library in this process (the system `libsqlite3.so.0`, which does not
//! load walguard: apsw beside the stdlib `sqlite3`, say) has a WAL database open and its
//! `-shm` mapped; no other process uses the database. Then the application's own SQLite
//! opens it. The unix VFS decides whether it is the first user of the `-shm` with a POSIX
//! lock test on the dead-man-switch byte, and a POSIX test never sees the locks of its own
//! process: it believes nobody maps the index, truncates the `-shm` and rebuilds it, under
//! the other runtime's mapping (which then faults with SIGBUS on any page beyond the
//! truncation, or reads an index being rebuilt).
//!
//! The test counts the unix VFS's `ftruncate` calls on the `-shm` during that first
//! mapping (the fault layer swallows them, so the second runtime survives to be asked
//! again): one on unix, none through walguard, which takes its open-file-description
//! mirror of the dead-man switch before the wrapped VFS looks whenever anyone — this
//! process's other runtime included — holds that byte.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};
use vfs_tests::faults::{self, Fault, Times};
use vfs_tests::second_runtime::SecondRuntime;
use vfs_tests::worker::Vfs;

/// The fault hooks act on the whole process: one scenario at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn make_wal_db(path: &Path) {
    let c = Connection::open(path).expect("create the database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); \
         INSERT INTO t VALUES (1), (2), (3);",
    )
    .expect("fill the database");
    // Last close: -wal and -shm are checkpointed and removed.
}

/// Returns the `ftruncate` calls the unix VFS made on the `-shm` while `vfs` mapped it
/// for the first time, with the second runtime holding it.
fn truncations_under_second_runtime(vfs: Vfs) -> u64 {
    vfs.prepare().expect("register the VFS");
    faults::install().expect("hook the unix VFS");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    make_wal_db(&db);

    let rt = SecondRuntime::get().expect("load libsqlite3.so.0 (apt-get install libsqlite3-0)");
    let other = rt.open(&db).expect("second runtime opens the database");
    assert_eq!(
        other
            .query("SELECT count(*) FROM t")
            .expect("second runtime reads"),
        vec!["3".to_owned()]
    );
    assert!(
        db.with_file_name("app.db-shm").exists(),
        "the second runtime mapped no -shm"
    );

    let armed = faults::arm("app.db-shm", Fault::DropTruncate, Times::WhileArmed);
    let conn =
        Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, vfs.name())
            .unwrap_or_else(|e| panic!("open through {vfs}: {e}"));
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("read through {vfs}: {e}"));
    assert_eq!(n, 3, "rows through {vfs}");
    let truncations = armed.injected();
    drop(armed);

    assert_eq!(
        other
            .query("SELECT count(*) FROM t")
            .expect("second runtime reads again"),
        vec!["3".to_owned()]
    );
    drop(conn);
    other.close().expect("second runtime closes");
    truncations
}

#[test]
fn unix_truncates_a_shm_another_runtime_of_the_process_maps() {
    let _s = serial();
    let n = truncations_under_second_runtime(Vfs::Unix);
    assert!(
        n >= 1,
        "the unix VFS did not try to re-initialise the live -shm: the scenario proves nothing"
    );
}

#[test]
fn walguard_leaves_a_shm_another_runtime_of_the_process_maps() {
    let _s = serial();
    let n = truncations_under_second_runtime(Vfs::Walguard);
    assert_eq!(
        n, 0,
        "walguard let the unix VFS truncate a -shm the second runtime still maps"
    );
}
