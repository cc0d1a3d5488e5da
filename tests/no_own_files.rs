//! walguard creates no file of its own (earlier builds kept a lock file `<db>-walguard`:
//! whatever is left there is ignored), and readers in a read-only directory work through
//! it exactly as through unix.

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

/// Writes a few rows to a fresh WAL database in `dir` through `vfs` and closes it;
/// returns what the directory holds afterwards.
fn write_and_close(dir: &Path, vfs: &str) -> Vec<String> {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let db = dir.join("app.db");
    {
        let c = Connection::open_with_flags_and_vfs(&db, OpenFlags::default(), vfs).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .expect("write");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 2);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// walguard creates no file of its own: after a WAL session through it, the directory
/// holds what it holds after the same session through unix.
#[test]
fn walguard_creates_no_file_of_its_own() {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let unix = write_and_close(a.path(), "unix");
    let guarded = write_and_close(b.path(), "walguard");
    assert_eq!(unix, vec!["app.db".to_owned()], "the unix baseline");
    assert_eq!(guarded, unix, "walguard left files of its own");
}

/// Earlier walguard builds used a sidecar lock file `<db>-walguard`. Whatever is left at
/// that path (a file of mode 000, one truncated to nothing, a directory, a symlink to
/// something precious) changes nothing now: the database opens and writes exactly as
/// through unix, and the thing itself is untouched.
#[test]
fn a_leftover_lock_file_of_any_kind_changes_nothing() {
    type Plant = fn(&Path, &Path);
    let kinds: [(&str, Plant); 4] = [
        ("mode 000", |p, _| {
            std::fs::write(p, b"old").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        }),
        ("empty", |p, _| std::fs::write(p, b"").expect("write")),
        ("directory", |p, _| std::fs::create_dir(p).expect("mkdir")),
        ("symlink", |p, victim| {
            std::os::unix::fs::symlink(victim, p).expect("symlink")
        }),
    ];
    for (kind, plant) in kinds {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").expect("victim");
        let lock = dir.path().join("app.db-walguard");
        plant(&lock, &victim);
        let before = std::fs::symlink_metadata(&lock).expect("planted");
        let left = write_and_close(dir.path(), "walguard");
        assert!(
            left.contains(&"app.db".to_owned()) && !left.iter().any(|n| n.ends_with("-wal")),
            "{kind}: {left:?}"
        );
        let after = std::fs::symlink_metadata(&lock).expect("still there");
        assert_eq!(
            (before.mode(), before.len(), before.mtime(), before.ino()),
            (after.mode(), after.len(), after.mtime(), after.ino()),
            "{kind}: walguard touched the leftover"
        );
        assert_eq!(
            std::fs::read(&victim).expect("victim"),
            b"precious",
            "{kind}"
        );
    }
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
fn readers_in_a_read_only_directory_work_without_a_warning() {
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
    assert!(stdout.contains("WARNINGS 0"), "{stdout}");
    assert!(!stdout.contains("ERROR"), "{stdout}");
    assert!(!dir.path().join("app.db-walguard").exists());
    drop(writer);
}
