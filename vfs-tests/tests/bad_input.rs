//! Bad input: walguard answers exactly as `unix` does, and leaves the disk exactly as
//! `unix` leaves it.
//!
//! Each case is set up identically in two fresh directories and opened once through
//! `unix` and once through walguard; the outcomes (result codes and messages, with the
//! directory and VFS name normalised) must be equal, and so must the directory
//! listings with every file's length, content digest and mode, before and after.
//!
//! Cases: a missing file without the create flag, a missing parent directory, a
//! directory, a file without read permission (opened by a worker process that drops to
//! uid 65534 first, because root ignores permissions), a non-SQLite file, and a short
//! non-SQLite file. Finally, a panic inside walguard's xOpen becomes an SQLite error
//! code and the process carries on.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::{snapshot, tempdir};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::worker::{error_code, Vfs, WorkerSpec};

/// The panic hook is "the next open through walguard in this process": keep this
/// file's walguard opens from overlapping.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    walguard::register(walguard::Options::default().make_default(false))
        .expect("register walguard (not as default)");
    guard
}

const RW: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE;
const RWC: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_CREATE);

/// Opens `name` in `dir` through `vfs` in this process, then tries a read and a write;
/// returns what happened, with `dir` and the VFS name normalised.
fn attempt(dir: &Path, name: &str, flags: OpenFlags, vfs: &str) -> String {
    let path = dir.join(name);
    let mut out = Vec::new();
    match Connection::open_with_flags_and_vfs(&path, flags, vfs) {
        Err(e) => out.push(format!("open: {:?}", error_code(&e))),
        Ok(conn) => {
            out.push("open: ok".to_owned());
            let read: rusqlite::Result<i64> =
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0));
            out.push(format!(
                "read: {}",
                match read {
                    Ok(n) => format!("ok {n}"),
                    Err(e) => format!("{:?}", error_code(&e)),
                }
            ));
            let write = conn.execute_batch("CREATE TABLE probe(x)");
            out.push(format!(
                "write: {}",
                match write {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("{:?}", error_code(&e)),
                }
            ));
            if let Err((_, e)) = conn.close() {
                out.push(format!("close: {:?}", error_code(&e)));
            }
        }
    }
    normalise(&out.join("; "), dir, vfs)
}

fn normalise(s: &str, dir: &Path, vfs: &str) -> String {
    s.replace(&dir.display().to_string(), "<dir>")
        .replace(&format!("via {vfs}"), "via <vfs>")
}

/// Runs `setup_case` in two fresh directories, `attempt_case` once through each VFS,
/// and checks outcomes and directory contents are identical.
fn compare(
    case: &str,
    setup_case: impl Fn(&Path),
    attempt_case: impl Fn(&Path, Vfs) -> String,
) -> String {
    let dir_unix = tempdir();
    let dir_wg = tempdir();
    setup_case(dir_unix.path());
    setup_case(dir_wg.path());
    let before_unix = snapshot(dir_unix.path());
    let before_wg = snapshot(dir_wg.path());
    assert_eq!(before_unix, before_wg, "{case}: set-ups differ");

    let got_unix = attempt_case(dir_unix.path(), Vfs::Unix);
    let got_wg = attempt_case(dir_wg.path(), Vfs::Walguard);
    eprintln!("{case}: unix: {got_unix}\n{case}: walguard: {got_wg}");
    assert_eq!(
        got_unix, got_wg,
        "{case}: walguard answers differently from unix"
    );

    let after_unix = snapshot(dir_unix.path());
    let after_wg = snapshot(dir_wg.path());
    assert_eq!(
        after_unix,
        after_wg,
        "{case}: walguard left {} differently from unix ({})",
        dir_wg.path().display(),
        dir_unix.path().display()
    );
    got_unix
}

#[test]
fn missing_file_without_create_flag() {
    let _g = setup();
    let got = compare(
        "missing file",
        |_| {},
        |d, v| attempt(d, "absent.db", RW, v.name()),
    );
    assert!(
        got.starts_with("open: (14,"),
        "expected SQLITE_CANTOPEN, got {got}"
    );
}

#[test]
fn missing_parent_directory() {
    let _g = setup();
    let got = compare(
        "missing parent",
        |_| {},
        |d, v| attempt(d, "no/such/dir/app.db", RWC, v.name()),
    );
    assert!(
        got.starts_with("open: (14,"),
        "expected SQLITE_CANTOPEN, got {got}"
    );
}

#[test]
fn directory_instead_of_database() {
    let _g = setup();
    let got = compare(
        "directory",
        |d| fs::create_dir(d.join("sub.db")).expect("mkdir sub.db"),
        |d, v| {
            let rw = attempt(d, "sub.db", RW, v.name());
            let rwc = attempt(d, "sub.db", RWC, v.name());
            format!("rw [{rw}] rwc [{rwc}]")
        },
    );
    assert!(
        !got.contains("write: ok"),
        "a directory accepted a write: {got}"
    );
}

#[test]
fn non_sqlite_files() {
    let _g = setup();
    let text: Vec<u8> = b"this is a plain text file, not a database\n"
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    let got = compare(
        "non-SQLite file",
        |d| {
            fs::write(d.join("text.db"), &text).expect("write text.db");
            fs::write(d.join("short.db"), b"not a database\n").expect("write short.db");
        },
        |d, v| {
            let long = attempt(d, "text.db", RW, v.name());
            let short = attempt(d, "short.db", RWC, v.name());
            format!("long [{long}] short [{short}]")
        },
    );
    assert_eq!(
        got.matches("(26,").count(),
        4,
        "expected SQLITE_NOTADB for every read and write: {got}"
    );
}

#[test]
fn file_without_read_permission() {
    let _g = setup();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let got = compare(
        "unreadable file",
        |d| {
            // A real database, then no permissions at all; the directory itself is open
            // to everyone, so walguard *could* create files there if it wanted to.
            let db = d.join("secret.db");
            let conn = Connection::open_with_flags_and_vfs(&db, RWC, "unix")
                .unwrap_or_else(|e| panic!("create {}: {e}", db.display()));
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);")
                .unwrap_or_else(|e| panic!("fill {}: {e}", db.display()));
            drop(conn);
            fs::set_permissions(&db, fs::Permissions::from_mode(0o000))
                .unwrap_or_else(|e| panic!("chmod 000 {}: {e}", db.display()));
            fs::set_permissions(d, fs::Permissions::from_mode(0o777))
                .unwrap_or_else(|e| panic!("chmod 777 {}: {e}", d.display()));
        },
        |d, v| {
            let db = d.join("secret.db");
            let mut spec = WorkerSpec::new(common::exe(), v, &db, "unprivileged");
            if root {
                spec.uid = Some(65534);
            }
            let mut w = spec
                .spawn()
                .unwrap_or_else(|e| panic!("start worker on {}: {e}", db.display()));
            let status = w.request("status").expect("status");
            let count = w.request("count").expect("count");
            w.exit().expect("worker exits");
            normalise(&format!("status {status:?}; count {count:?}"), d, v.name())
        },
    );
    assert!(
        got.starts_with("status Err((14,"),
        "expected SQLITE_CANTOPEN for an unreadable file, got {got}"
    );
}

#[test]
fn panic_in_open_becomes_an_error_code() {
    let _g = setup();
    let dir = tempdir();
    let db = dir.path().join("panic.db");
    let before = walguard::stats();
    walguard::testing::panic_on_next_open();
    let err = Connection::open_with_flags_and_vfs(&db, RWC, walguard::DEFAULT_NAME)
        .expect_err("an open whose xOpen panics must fail");
    let (code, msg) = error_code(&err);
    assert!(
        code > 0,
        "expected an SQLite result code, got {code}: {msg}"
    );
    let after = walguard::stats();
    assert_eq!(
        after.panics_caught,
        before.panics_caught + 1,
        "the panic was not counted"
    );

    // The hook fires once; the process and walguard carry on.
    let conn = Connection::open_with_flags_and_vfs(&db, RWC, walguard::DEFAULT_NAME)
        .unwrap_or_else(|e| panic!("open {} after the panic: {e}", db.display()));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .expect("write after the panic");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read after the panic");
    assert_eq!(n, 1);
}
