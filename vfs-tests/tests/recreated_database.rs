//! A database this process no longer has open keeps, at most, an idle node with the
//! `-shm` descriptor of its last mapping. Its file is not held open, so its name and inode
//! number can both come back for another database. SQLite's walro2.test found builds
//! that mixed them up, under concurrent file churn (inode numbers reused at once):
//!
//! - **renamed**: `a.db` (closed with its `-wal`/`-shm` kept, `SQLITE_FCNTL_PERSIST_WAL`)
//!   is renamed to `b.db` with its sidecars. A build that found the node by inode number
//!   alone mapped `a.db-shm` (creating it anew) as `b.db`'s index, while SQLite wrote
//!   `b.db-wal`: an index no other process would ever see. Deterministic: a rename keeps
//!   the inode.
//! - **recreated**: only `x.db` is removed and created anew at the same name; SQLite
//!   deletes the `-wal` it finds beside the new, empty database (it belongs to the old
//!   one). A build that asked the old, idle node whether that delete was safe refused it,
//!   and SQLite replayed the old WAL into the new database ("table t1 already exists").
//!   Which node the lookup found depended on hash order: several rounds.
//!
//! The same steps run through plain unix as the baseline.

use std::os::raw::c_int;
use std::path::Path;

use rusqlite::{ffi, Connection, OpenFlags};

const ROUNDS: usize = 16;

fn open(path: &Path, vfs: &str) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    Connection::open_with_flags_and_vfs(path, flags, vfs).expect("open")
}

/// Asks SQLite to keep the `-wal` (and `-shm`) at this connection's close.
fn persist_wal(c: &Connection) {
    let mut on: c_int = 1;
    // SAFETY: a valid open connection; PERSIST_WAL takes an `int*`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            c.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            &mut on as *mut c_int as *mut std::ffi::c_void,
        )
    };
    assert_eq!(rc, ffi::SQLITE_OK, "PERSIST_WAL");
}

fn rows(c: &Connection) -> Result<Vec<String>, String> {
    c.prepare("SELECT x FROM t1")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(|e| e.to_string())
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What `b.db` reads after `a.db` was renamed to it, and the files then present.
fn renamed(dir: &Path, vfs: &str) -> (Result<Vec<String>, String>, Vec<String>) {
    let a = dir.join("a.db");
    let old = open(&a, vfs);
    old.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t1(x); INSERT INTO t1 VALUES ('a');")
        .expect("a.db");
    persist_wal(&old);
    drop(old);
    for suffix in ["", "-wal", "-shm"] {
        std::fs::rename(
            dir.join(format!("a.db{suffix}")),
            dir.join(format!("b.db{suffix}")),
        )
        .expect("rename");
    }
    let b = open(&dir.join("b.db"), vfs);
    let read = b
        .execute_batch("INSERT INTO t1 VALUES ('b');")
        .map_err(|e| e.to_string())
        .and_then(|()| rows(&b));
    let present = files(dir);
    drop(b);
    (read, present)
}

/// Per round: what a new database made where an old one was removed says.
fn recreated(dir: &Path, vfs: &str) -> Vec<String> {
    (0..ROUNDS)
        .map(|round| {
            let db = dir.join(format!("x{round}.db"));
            let old = open(&db, vfs);
            old.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE t1(x); INSERT INTO t1 VALUES ('old');",
            )
            .expect("old database");
            persist_wal(&old);
            drop(old);
            std::fs::remove_file(&db).expect("rm the database only");
            let new = open(&db, vfs);
            let made = new
                .execute_batch(
                    "PRAGMA journal_mode=WAL; CREATE TABLE t1(x); INSERT INTO t1 VALUES ('new');",
                )
                .map_err(|e| e.to_string());
            format!("round {round}: {made:?} {:?}", rows(&new))
        })
        .collect()
}

#[test]
fn a_database_does_not_inherit_another_ones_index() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let results = |vfs: &str| {
        let d1 = tempfile::tempdir().expect("tempdir");
        let d2 = tempfile::tempdir().expect("tempdir");
        (renamed(d1.path(), vfs), recreated(d2.path(), vfs))
    };
    let unix = results("unix");
    let want_renamed = (
        Ok(vec!["a".to_string(), "b".to_string()]),
        vec!["b.db".to_string(), "b.db-shm".into(), "b.db-wal".into()],
    );
    let want_recreated: Vec<String> = (0..ROUNDS)
        .map(|r| format!("round {r}: Ok(()) Ok([\"new\"])"))
        .collect();
    assert_eq!(unix, (want_renamed, want_recreated), "the baseline");
    assert_eq!(results("walguard"), unix, "walguard as unix");
}
