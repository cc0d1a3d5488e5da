//! A `-shm` that cannot be opened fails the statement with SQLite's own error, as through
//! unix, and never hangs the process. SQLite's walro.test (1.3.2.2) found a build that
//! deadlocked here: a failed `-shm` open (`readonly_shm=1` and no `-shm`) was taken for
//! "out of descriptors", and the eviction of idle databases waited for the lock of the
//! very database being mapped. Both VFSs run the same steps; each run has a deadline so a
//! hang is reported as one instead of stopping the test binary.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Far beyond what the steps take (milliseconds): only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(120);

fn open_uri(uri: &str, vfs: &str) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags_and_vfs(uri, flags, vfs).map_err(|e| format!("open: {e}"))
}

fn first_table(uri: &str, vfs: &str) -> String {
    let read = open_uri(uri, vfs).and_then(|c| {
        c.query_row("SELECT name FROM sqlite_master", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) => format!("error {}", f.extended_code),
            other => format!("error {other}"),
        })
    });
    read.unwrap_or_else(|e| e)
}

/// The outcome of each step, as text.
fn steps(dir: &Path, vfs: &str) -> Vec<String> {
    let db = dir.join("ro.db");
    {
        let c = open_uri(db.to_str().expect("utf-8 path"), vfs).expect("create");
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t1(x); INSERT INTO t1 VALUES (1);")
            .expect("set up");
    }
    // The last close removed -wal and -shm.
    let shm = dir.join("ro.db-shm");
    let uri = format!("file:{}?readonly_shm=1", db.display());
    let mut out = vec![format!("-shm after close: {}", shm.exists())];
    // No -shm, and readonly_shm=1 forbids creating one: "unable to open database file".
    out.push(format!("readonly_shm, no -shm: {}", first_table(&uri, vfs)));
    out.push(format!("-shm after that: {}", shm.exists()));
    // The statement still works through a normal connection afterwards.
    out.push(format!(
        "normal: {}",
        first_table(db.to_str().expect("utf-8 path"), vfs)
    ));
    out
}

fn run_with_deadline(vfs: &'static str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(steps(&path, vfs));
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{vfs}: the steps did not finish: the process hangs"))
}

#[test]
fn an_unopenable_shm_is_an_error_not_a_hang() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let unix = run_with_deadline("unix");
    assert_eq!(
        unix,
        [
            "-shm after close: false",
            "readonly_shm, no -shm: error 14",
            "-shm after that: false",
            "normal: t1",
        ],
        "the baseline: SQLITE_CANTOPEN through unix"
    );
    assert_eq!(
        run_with_deadline("walguard"),
        unix,
        "walguard answers as unix"
    );
}
