//! Registration from Rust: default VFS, idempotence, named registration, and proof that
//! connections go through walguard (its counters move).

use rusqlite::{Connection, OpenFlags};

fn register_default() {
    walguard::register(walguard::Options::default()).expect("register walguard as default");
}

#[test]
fn default_connections_go_through_walguard_in_wal_mode() {
    register_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.db");
    let before = walguard::stats();
    let a = Connection::open(&path).expect("open a");
    let mode: String = a
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .expect("write a");
    let b = Connection::open(&path).expect("open b");
    b.execute("INSERT INTO t VALUES (2)", []).expect("write b");
    let n: i64 = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2);
    let vfs: String = a
        .query_row("SELECT walguard_stats()", [], |r| r.get(0))
        .expect("walguard_stats() exists on default connections");
    assert!(vfs.contains("\"db_opened\":"), "{vfs}");
    let after = walguard::stats();
    assert!(
        after.db_opened >= before.db_opened + 2,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.wal_opened >= before.wal_opened + 2,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.shm_mapped > before.shm_mapped,
        "{before:?} -> {after:?}"
    );
    assert!(after.shm_locks_taken >= before.shm_locks_taken);
    drop(a);
    drop(b);
    // Last close anywhere: the normal clean-up happens.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["app.db"]);
}

#[test]
fn named_registration_is_used_by_uri() {
    walguard::register(walguard::Options::named("walguard-named").make_default(false))
        .expect("register named");
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!(
        "file:{}?vfs=walguard-named",
        dir.path().join("n.db").display()
    );
    let before = walguard::stats().db_opened;
    let c = Connection::open_with_flags(&uri, OpenFlags::default() | OpenFlags::SQLITE_OPEN_URI)
        .expect("open uri");
    c.execute_batch("CREATE TABLE t(x)").expect("create");
    assert!(walguard::stats().db_opened > before);
    let name: String = c
        .query_row("SELECT name FROM pragma_database_list", [], |r| r.get(0))
        .expect("db list");
    assert_eq!(name, "main");
}

#[test]
fn a_foreign_vfs_name_is_refused() {
    let err = walguard::register(walguard::Options::named("unix")).expect_err("unix is taken");
    assert!(matches!(err, walguard::Error::NameTaken(_)), "{err}");
    assert!(err.to_string().contains("Options::named"), "{err}");
}

#[test]
fn the_bundled_sqlite_has_no_wal_reset_bug() {
    // 3.7.0 - 3.51.2 lose commits on a WAL reset whatever the VFS does.
    assert!(
        rusqlite::version_number() >= 3_051_003,
        "bundled SQLite {}",
        rusqlite::version()
    );
}
