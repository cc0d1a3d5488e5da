//! The sidecar lock file `<db>-walguard` (G1 presence, G2 life-cycle): created with the
//! database's permissions, never through a symlink, never deleted; a read-only place
//! degrades with one warning and readers keep working.

use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Captures walguard's tracing output of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

fn with_captured_events<T>(f: impl FnOnce() -> T) -> (T, String) {
    let cap = Captured::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, cap.text())
}

fn open_walguard(path: &Path) -> Connection {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    Connection::open_with_flags_and_vfs(path, OpenFlags::default(), "walguard")
        .expect("open through walguard")
}

#[test]
fn lock_file_has_the_database_permissions_and_is_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    std::fs::write(&db, b"").expect("create db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod db");
    {
        let c = open_walguard(&db);
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("write");
    }
    let lock = dir.path().join("app.db-walguard");
    let meta = std::fs::symlink_metadata(&lock).expect("lock file exists after the last close");
    assert!(meta.file_type().is_file());
    assert_eq!(
        meta.mode() & 0o777,
        0o640,
        "lock file has the database's permissions"
    );
    assert_eq!(meta.uid(), std::fs::metadata(&db).expect("db meta").uid());
}

#[test]
fn a_planted_symlink_is_refused_with_a_clear_error_and_nothing_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").expect("victim");
    let before = std::fs::metadata(&victim).expect("victim meta");
    std::os::unix::fs::symlink(&victim, dir.path().join("app.db-walguard")).expect("plant symlink");

    let (result, events) = with_captured_events(|| {
        let c = open_walguard(&db);
        c.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);"))
    });
    let err = result.expect_err("walguard refuses to use a symlinked lock file");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    assert!(
        events.contains("app.db-walguard") && events.contains("symbolic link"),
        "{events}"
    );
    let after = std::fs::metadata(&victim).expect("victim meta");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert_eq!(
        (before.mtime(), before.mode()),
        (after.mtime(), after.mode())
    );
    assert!(
        std::fs::symlink_metadata(dir.path().join("app.db-walguard"))
            .expect("symlink still there")
            .file_type()
            .is_symlink()
    );
}

const CHILD_ENV: &str = "WALGUARD_READONLY_CHILD_DB";

/// The child half of the read-only test: runs as an unprivileged user, so the directory
/// really is read-only for it (root ignores permissions).
#[test]
fn readonly_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    // SAFETY: plain syscalls dropping privileges before any file is opened.
    unsafe {
        assert_eq!(libc::setgid(65534), 0, "setgid");
        assert_eq!(libc::setuid(65534), 0, "setuid");
    }
    let (rows, events) = with_captured_events(|| {
        walguard::register(walguard::Options::default().make_default(false)).expect("register");
        let uri = format!("file:{db}?mode=ro");
        let c = Connection::open_with_flags_and_vfs(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            "walguard",
        )
        .expect("open read-only");
        let first: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read 1");
        let second: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read 2");
        (first, second)
    });
    println!("ROWS {} {}", rows.0, rows.1);
    println!(
        "WARNINGS {}",
        events.lines().filter(|l| l.contains("WARN")).count()
    );
    println!("EVENTS {events}");
}

#[test]
fn a_read_only_directory_degrades_with_one_warning_and_readers_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    // The writer uses the plain unix VFS, so no lock file exists and none can be created.
    let writer =
        Connection::open_with_flags_and_vfs(&db, OpenFlags::default(), "unix").expect("writer");
    writer
        .pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    writer
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);")
        .expect("write");
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "readonly_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ROWS 3 3"),
        "the reader reads through walguard: {stdout}"
    );
    assert!(
        stdout.contains("WARNINGS 1") || stdout.contains("WARNINGS 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app.db-walguard"),
        "the warning names the lock file: {stdout}"
    );
    assert!(
        !stdout.contains("ERROR"),
        "degradation is a warning, not an error: {stdout}"
    );
    assert!(!dir.path().join("app.db-walguard").exists());
    drop(writer);
}
