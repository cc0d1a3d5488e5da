//! G3 (no false "not a database"), G4 (a replaced sidecar is detected) and G5 (torn
//! extends caught at commit), end to end.
//!
//! Each behaviour runs on SQLite's own `unix` VFS first and shows the bad outcome, then
//! through `walguard` and shows the guarded one. Faults are injected beneath the `unix`
//! VFS by [`vfs_tests::faults`] (which also acts beneath walguard: walguard forwards to
//! `unix` in the same process), on files matched by their full path.
//!
//! walguard's counters are process-wide, so the tests of this file run one at a time
//! (see [`serial`]) and compare counters before and after.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{ffi, Connection, OpenFlags};
use vfs_tests::faults::{self, Fault, Times};
use vfs_tests::worker::Vfs;

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the tests of this file one at a time, with the fault hooks installed and
/// walguard registered (by name only, never as the default VFS).
fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    faults::install().expect("install the fault hooks beneath the unix VFS");
    Vfs::Walguard.prepare().expect("register walguard");
    guard
}

fn open(vfs: Vfs, path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        vfs.name(),
    )
}

fn must_open(vfs: Vfs, path: &Path) -> Connection {
    open(vfs, path).unwrap_or_else(|e| panic!("open {} through {vfs}: {e}", path.display()))
}

/// The suffix that matches exactly this file (its full path).
fn exact(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}

fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

/// Opens `path` through `vfs` and counts the rows of `t`: the whole of "reading a
/// database" as an application does it, whichever step fails.
fn open_and_count(vfs: Vfs, path: &Path) -> rusqlite::Result<i64> {
    let conn = open(vfs, path)?;
    count(&conn)
}

fn code(e: &rusqlite::Error) -> Option<i32> {
    e.sqlite_error().map(|s| s.extended_code)
}

fn stats() -> walguard::Stats {
    walguard::stats()
}

/// A rollback-journal database with table `t` holding `rows` rows, written through
/// `unix` and closed.
fn make_db(dir: &Path, name: &str, rows: i64) -> PathBuf {
    let path = dir.join(name);
    let conn = must_open(Vfs::Unix, &path);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
        .expect("create t");
    for i in 0..rows {
        conn.execute("INSERT INTO t(payload) VALUES (randomblob(?1))", [100 + i])
            .expect("insert");
    }
    path
}

// ---------------------------------------------------------------------------------
// G3: short reads of the header.
// ---------------------------------------------------------------------------------

#[test]
fn g3_unix_two_empty_header_reads_make_a_good_file_not_a_database() {
    let _s = serial();
    let dir = common::tempdir();
    let db = make_db(dir.path(), "good.db", 3);

    // The header read at open and the page-1 read of the first query both come back
    // empty; SQLite zero-fills them and judges the file.
    let armed = faults::arm(&exact(&db), Fault::EmptyRead, Times::Calls(2));
    let err = open_and_count(Vfs::Unix, &db).expect_err("unix is fooled by two empty reads");
    assert_eq!(armed.disarm(), 2);
    assert_eq!(code(&err), Some(ffi::SQLITE_NOTADB), "{err}");
    assert!(err.to_string().contains("file is not a database"), "{err}");

    // Yet the file was good all along.
    assert_eq!(
        open_and_count(Vfs::Unix, &db).expect("read the good file"),
        3
    );
}

#[test]
fn g3_walguard_transient_short_header_reads_are_retried_invisibly() {
    let _s = serial();
    let dir = common::tempdir();
    for (i, fault) in [Fault::EmptyRead, Fault::ShortRead].into_iter().enumerate() {
        let db = make_db(dir.path(), &format!("good{i}.db"), 3);
        let before = stats().header_retries;
        let armed = faults::arm(&exact(&db), fault, Times::Calls(2));
        let n = open_and_count(Vfs::Walguard, &db);
        let injected = armed.disarm();
        assert_eq!(n.expect("walguard retries the header read"), 3, "{fault:?}");
        assert_eq!(injected, 2, "{fault:?}");
        assert!(
            stats().header_retries > before,
            "{fault:?}: the retry is counted"
        );
    }
}

#[test]
fn g3_walguard_persistent_short_read_is_a_retryable_ioerr_read() {
    let _s = serial();
    let dir = common::tempdir();
    let db = make_db(dir.path(), "flaky.db", 3);

    // On unix: "not a database".
    let armed = faults::arm(&exact(&db), Fault::EmptyRead, Times::WhileArmed);
    let err = open_and_count(Vfs::Unix, &db).expect_err("every header read is empty");
    drop(armed);
    assert_eq!(code(&err), Some(ffi::SQLITE_NOTADB), "{err}");

    // Through walguard: a retryable I/O error, never NOTADB.
    let before = stats().header_retry_exhausted;
    let armed = faults::arm(&exact(&db), Fault::EmptyRead, Times::WhileArmed);
    let err = open_and_count(Vfs::Walguard, &db).expect_err("every header read is empty");
    assert!(armed.disarm() > 2, "walguard retried");
    assert_eq!(code(&err), Some(ffi::SQLITE_IOERR_READ), "{err}");
    assert!(stats().header_retry_exhausted > before);

    // The storage recovers: a later attempt succeeds.
    assert_eq!(
        open_and_count(Vfs::Walguard, &db).expect("later attempt"),
        3
    );
}

#[test]
fn g3_walguard_genuinely_empty_file_still_opens_as_a_new_database() {
    let _s = serial();
    let dir = common::tempdir();
    let db = dir.path().join("empty.db");
    std::fs::write(&db, b"").expect("create an empty file");
    let before = stats();

    let conn = must_open(Vfs::Walguard, &db);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t DEFAULT VALUES;")
        .expect("an empty file is a new database");
    assert_eq!(count(&conn).expect("count"), 1);
    drop(conn);

    let after = stats();
    assert_eq!(
        after.header_retries, before.header_retries,
        "nothing to retry"
    );
    assert_eq!(after.header_retry_exhausted, before.header_retry_exhausted);
    assert_eq!(
        open_and_count(Vfs::Unix, &db).expect("an ordinary database"),
        1
    );
}

#[test]
fn g3_walguard_real_non_sqlite_file_is_still_not_a_database() {
    let _s = serial();
    let dir = common::tempdir();
    let db = dir.path().join("notes.db");
    std::fs::write(&db, b"these are my notes, not a database\n".repeat(300)).expect("write");
    let before = stats();

    for vfs in [Vfs::Unix, Vfs::Walguard] {
        let err = open_and_count(vfs, &db).expect_err("a text file is not a database");
        assert_eq!(code(&err), Some(ffi::SQLITE_NOTADB), "{vfs}: {err}");
    }
    let after = stats();
    assert_eq!(after.header_retries, before.header_retries);
    assert_eq!(after.header_retry_exhausted, before.header_retry_exhausted);
}

/// A database whose last commits live only in its `-wal`, as a crashed process leaves
/// it: 2 rows in the database file, 5 more in the WAL. Returns the database path.
fn crashed_wal_image(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    let conn = must_open(Vfs::Unix, &src);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB);
         INSERT INTO t(payload) VALUES (randomblob(100)), (randomblob(100));
         PRAGMA journal_mode=WAL;
         PRAGMA wal_autocheckpoint=0;",
    )
    .expect("set up");
    for _ in 0..5 {
        conn.execute("INSERT INTO t(payload) VALUES (randomblob(3000))", [])
            .expect("insert into the WAL");
    }
    // Copy the files as they are now (a crash image). The copies are read through
    // descriptors of their own; the source connection is discarded afterwards.
    let img = dir.join(name);
    std::fs::copy(&src, &img).expect("copy the database");
    std::fs::copy(
        dir.join(format!("{name}.src-wal")),
        dir.join(format!("{name}-wal")),
    )
    .expect("copy the WAL");
    drop(conn);
    img
}

#[test]
fn g3_unix_transient_zero_size_deletes_a_live_wal() {
    let _s = serial();
    let dir = common::tempdir();
    let db = crashed_wal_image(dir.path(), "crash.db");
    let wal = dir.path().join("crash.db-wal");
    assert!(wal.exists());

    let conn = must_open(Vfs::Unix, &db);
    let armed = faults::arm(&exact(&db), Fault::ZeroSize, Times::Calls(1));
    let n = count(&conn).expect("the query itself succeeds");
    assert_eq!(armed.disarm(), 1);
    // The pager took the database for empty and deleted its WAL: 5 commits are gone.
    assert_eq!(n, 2, "unix lost the commits that lived in the WAL");
    drop(conn);
    assert_eq!(
        open_and_count(Vfs::Unix, &db).expect("reopen"),
        2,
        "for good"
    );
}

#[test]
fn g3_walguard_live_wal_survives_a_transient_zero_size() {
    let _s = serial();
    let dir = common::tempdir();
    for (i, fault) in [Fault::ZeroSize, Fault::FstatError(faults::EIO)]
        .into_iter()
        .enumerate()
    {
        let name = format!("crash{i}.db");
        let db = crashed_wal_image(dir.path(), &name);
        let before = stats().size_retries;
        let conn = must_open(Vfs::Walguard, &db);
        let armed = faults::arm(&exact(&db), fault, Times::Calls(1));
        let n = count(&conn);
        assert_eq!(armed.disarm(), 1, "{fault:?}");
        assert_eq!(
            n.expect("the size is re-read"),
            7,
            "{fault:?}: every commit survives"
        );
        assert!(
            stats().size_retries > before,
            "{fault:?}: the retry is counted"
        );
        drop(conn);
        assert_eq!(
            open_and_count(Vfs::Unix, &db).expect("reopen"),
            7,
            "{fault:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// G4: sidecars unlinked or replaced under an open connection.
// ---------------------------------------------------------------------------------

/// A WAL database with one row, fully checkpointed, and a connection `a` on it through
/// `vfs` that has its `-wal` and `-shm` open.
fn wal_db_with_connection(dir: &Path, vfs: Vfs) -> (PathBuf, Connection) {
    let db = dir.join("shared.db");
    let a = must_open(vfs, &db);
    a.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT);
         INSERT INTO t(who) VALUES ('before');
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .expect("set up");
    assert!(dir.join("shared.db-wal").exists() && dir.join("shared.db-shm").exists());
    (db, a)
}

fn remove_sidecars(db: &Path) {
    for ext in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", db.display()));
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
    }
}

#[test]
fn g4_unix_writes_into_orphaned_sidecars() {
    let _s = serial();
    let dir = common::tempdir();
    let (db, a) = wal_db_with_connection(dir.path(), Vfs::Unix);

    // Another actor removes the sidecars (rm, a cleanup script, a process without
    // walguard that thought it was last).
    remove_sidecars(&db);

    // The connection goes on committing, into files nobody else can open.
    a.execute("INSERT INTO t(who) VALUES ('orphan')", [])
        .expect("unix accepts the write");
    assert_eq!(count(&a).expect("count"), 2);

    // Another process opening the database now does not see that commit: a split.
    let mut b = common::spawn(Vfs::Unix, &db, "b");
    assert_eq!(
        common::ok(&mut b, "count"),
        "1",
        "the commit is invisible to others"
    );
    b.exit().expect("worker exits");
}

#[test]
fn g4_walguard_unlinked_sidecars_fail_the_next_transaction() {
    let _s = serial();
    let dir = common::tempdir();
    let (db, a) = wal_db_with_connection(dir.path(), Vfs::Walguard);
    let before = stats().sidecar_replaced;

    remove_sidecars(&db);

    let err = a
        .execute("INSERT INTO t(who) VALUES ('orphan')", [])
        .expect_err("walguard refuses to write into unlinked sidecars");
    assert_eq!(code(&err), Some(ffi::SQLITE_IOERR_VNODE), "{err}");
    assert!(stats().sidecar_replaced > before);
    drop(a);

    // A reopened connection works, and others see what it writes.
    let a = must_open(Vfs::Walguard, &db);
    a.execute("INSERT INTO t(who) VALUES ('after')", [])
        .expect("a reopened connection writes");
    assert_eq!(count(&a).expect("count"), 2);
    let mut b = common::spawn(Vfs::Unix, &db, "b");
    assert_eq!(common::ok(&mut b, "count"), "2");
    b.exit().expect("worker exits");
}

#[test]
fn g4_walguard_replaced_sidecars_fail_the_next_transaction() {
    let _s = serial();
    let dir = common::tempdir();
    let (db, a) = wal_db_with_connection(dir.path(), Vfs::Walguard);
    let before = stats().sidecar_replaced;

    // A backup tool moves the sidecars away; another process (without walguard) then
    // creates fresh ones at the same paths and commits through them.
    for ext in ["-wal", "-shm"] {
        std::fs::rename(
            format!("{}{ext}", db.display()),
            format!("{}{ext}.moved", db.display()),
        )
        .expect("mv");
    }
    let mut b = common::spawn(Vfs::Unix, &db, "b");
    common::ok(&mut b, "exec INSERT INTO t(who) VALUES ('other process')");

    let err = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .expect_err("the next transaction fails");
    assert_eq!(code(&err), Some(ffi::SQLITE_IOERR_VNODE), "{err}");
    assert!(stats().sidecar_replaced > before);
    drop(a);

    // Reopened, the connection joins the sidecars now at the path.
    let a = must_open(Vfs::Walguard, &db);
    assert_eq!(
        count(&a).expect("count"),
        2,
        "sees the other process's commit"
    );
    a.execute("INSERT INTO t(who) VALUES ('reopened')", [])
        .expect("and writes");
    assert_eq!(
        common::ok(&mut b, "count"),
        "3",
        "which the other process sees"
    );
    b.exit().expect("worker exits");
}

// ---------------------------------------------------------------------------------
// G5: torn extends.
// ---------------------------------------------------------------------------------

/// A rollback-journal database with one small row, its connection, and its size.
fn small_rollback_db(dir: &Path, vfs: Vfs) -> (PathBuf, Connection, u64) {
    let db = dir.join("grow.db");
    let conn = must_open(vfs, &db);
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB);
         INSERT INTO t(payload) VALUES (randomblob(10));",
    )
    .expect("set up");
    let size = std::fs::metadata(&db).expect("stat").len();
    (db, conn, size)
}

#[test]
fn g5_unix_torn_extend_goes_unnoticed_at_commit() {
    let _s = serial();
    let dir = common::tempdir();
    let (db, conn, size) = small_rollback_db(dir.path(), Vfs::Unix);

    // The pages that extend the file never reach it; the new header (page 1) does.
    let armed = faults::arm(
        &exact(&db),
        Fault::DropWrite { from: size as i64 },
        Times::WhileArmed,
    );
    conn.execute("INSERT INTO t(payload) VALUES (randomblob(65536))", [])
        .expect("unix reports the commit as a success");
    assert!(armed.disarm() > 0);
    assert_eq!(
        std::fs::metadata(&db).expect("stat").len(),
        size,
        "nothing was added"
    );

    // Only a later reader finds out, and finds the database "malformed".
    let err = open_and_count(Vfs::Unix, &db).expect_err("the header claims missing pages");
    assert_eq!(
        code(&err).map(|c| c & 0xff),
        Some(ffi::SQLITE_CORRUPT),
        "{err}"
    );
}

#[test]
fn g5_walguard_torn_extend_is_reported_at_commit() {
    let _s = serial();
    let dir = common::tempdir();
    let (db, conn, size) = small_rollback_db(dir.path(), Vfs::Walguard);
    let before = stats().torn_extends;

    let armed = faults::arm(
        &exact(&db),
        Fault::DropWrite { from: size as i64 },
        Times::WhileArmed,
    );
    let err = conn
        .execute("INSERT INTO t(payload) VALUES (randomblob(65536))", [])
        .expect_err("walguard fails the commit");
    assert!(armed.disarm() > 0);
    assert_eq!(code(&err), Some(ffi::SQLITE_IOERR_FSYNC), "{err}");
    assert!(stats().torn_extends > before);
    drop(conn);

    // The journal rolled the failed transaction back: the database is intact.
    let conn = must_open(Vfs::Walguard, &db);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    assert_eq!(count(&conn).expect("count"), 1);
}

#[test]
fn g5_walguard_no_false_alarms_in_wal_mode() {
    let _s = serial();
    let dir = common::tempdir();
    let db = dir.path().join("busy.db");
    let before = stats().torn_extends;

    // Several processes write, grow and shrink the database, and checkpoint, while a
    // reader in this process pins an old snapshot (so checkpoints are partial and the
    // database file's header runs ahead of, or behind, the file).
    let setup = must_open(Vfs::Walguard, &db);
    setup
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB);",
        )
        .expect("set up");
    let mut workers: Vec<_> = (0..4)
        .map(|i| common::spawn(Vfs::Walguard, &db, &format!("w{i}")))
        .collect();
    let reader = must_open(Vfs::Walguard, &db);
    for round in 0..3 {
        reader.execute_batch("BEGIN").expect("begin");
        count(&reader).expect("pin a snapshot");
        for w in &mut workers {
            common::ok(w, "write 10 4000");
            common::ok(w, "checkpoint PASSIVE");
        }
        common::ok(&mut workers[round], "exec DELETE FROM t WHERE id % 3 = 0");
        common::ok(&mut workers[round], "checkpoint PASSIVE");
        reader.execute_batch("COMMIT").expect("end the read");
        common::ok(&mut workers[(round + 1) % 4], "checkpoint FULL");
    }
    common::ok(&mut workers[0], "exec VACUUM");
    common::ok(&mut workers[1], "checkpoint TRUNCATE");

    let mut worker_alarms = 0;
    for mut w in workers {
        let json = common::ok(&mut w, "stats");
        worker_alarms += vfs_tests::worker::stat(&json, "torn_extends").expect("counter");
        w.exit().expect("worker exits");
    }
    assert_eq!(worker_alarms, 0, "no false torn-extend alarm in any worker");
    assert_eq!(stats().torn_extends, before, "nor in this process");
    let check: String = setup
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

// ---------------------------------------------------------------------------------
// The fault layer, armed from the environment of a child process.
// ---------------------------------------------------------------------------------

const CHILD_DB: &str = "G3G4G5_CHILD_DB";

/// Not a test: the body of the child process that
/// [`faults_armed_from_the_environment_act_in_a_child_process`] starts (this same test
/// binary, with [`faults::ENV_VAR`] and [`CHILD_DB`] set).
#[test]
#[ignore = "helper: runs only as the child process of another test"]
fn child_arms_faults_from_its_environment() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let armed = faults::arm_from_env().expect("arm from the environment");
    let result = match open_and_count(Vfs::Unix, Path::new(&db)) {
        Ok(n) => format!("rows={n}"),
        Err(e) => format!("code={}", code(&e).unwrap_or(-1)),
    };
    println!("CHILD armed={armed} {result} {}", faults::counts());
}

#[test]
fn faults_armed_from_the_environment_act_in_a_child_process() {
    let _s = serial();
    let dir = common::tempdir();
    let db = make_db(dir.path(), "env.db", 3);
    let spec = faults::to_env(&[faults::Spec {
        suffix: exact(&db),
        fault: Fault::EmptyRead,
        times: Times::Calls(2),
    }]);
    let exe = std::env::current_exe().expect("this test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_arms_faults_from_its_environment",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(faults::ENV_VAR, &spec)
        .env(CHILD_DB, &db)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("CHILD armed=").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    assert!(line.contains("armed=1"), "{line}");
    assert!(
        line.contains(&format!("code={}", ffi::SQLITE_NOTADB)),
        "{line}"
    );
    assert!(line.contains("empty_read=2"), "{line}");
    // The parent process was not affected.
    assert_eq!(open_and_count(Vfs::Unix, &db).expect("parent reads"), 3);
}
