//! Issue 17, defect 2: a refused first `-shm` mapping must leave nothing registered.
//!
//! walguard registers a process as a holder of a database's WAL index while it maps it,
//! and every walguard process's last close asks "does anyone else hold it?" before it
//! deletes `-wal` and `-shm`. A first mapping that is refused (another process is setting
//! up the index) must give back whatever it registered: otherwise, once that process has
//! closed its connection, it still counts as a holder — for as long as it lives — and
//! every other process's last close keeps the sidecars ("persist"), and `walguard doctor`
//! shows a holder that holds nothing.
//!
//! The other process is played by a helper (`vfs-tests worker defect17 hold`) holding
//! POSIX write locks:
//! - **refused until SQLite gives up**: the `-shm` dead-man-switch byte (128), as a plain
//!   unix SQLite process holds it while it initialises the index. Process A's first read
//!   is refused at every retry until SQLite's WAL code gives up (SQLITE_PROTOCOL after
//!   about 100 tries, ~10 s); A closes its connection, the helper lets go, and process
//!   B's write and last close must delete `-wal` and `-shm`.
//! - **retried, then mapped**: both set-up locks of the two designs for a moment — the
//!   old life-cycle byte (byte 1 of `<db>-walguard`), the new gate (database byte
//!   PENDING_BYTE + 513) — and the dead-man switch. A must not map while they are held,
//!   maps once they are released, closes, and B's last close must delete the sidecars.
//!   (This one passes on e4e5d0e: a later successful mapping there released what the
//!   refused attempts had registered.)
//!
//! On e4e5d0e (the build before the fix) this fails:
//! ```text
//! refused until SQLite gives up: process A (walguard, pid 17346, still running, its
//! connection closed after its first read: code 15: locking protocol) still blocks the
//! last-close clean-up: after B's last close the directory holds ["app.db", "app.db-shm",
//! "app.db-wal", "app.db-walguard"]
//! ```
//! (runtime: ~11 s, nearly all of it SQLite's own retries of the refused mapping.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{exe, list_dir, tempdir};
use rusqlite::Connection;
use vfs_tests::defect17::{hold, release, worker_command, Answer, Proc};
use vfs_tests::worker::Vfs;

/// SQLite's PENDING_BYTE; the new design's gate is PENDING_BYTE + 513.
const PENDING_BYTE: u64 = 0x4000_0000;

fn create(db: &Path) {
    let c = Connection::open(db).expect("create the database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);
         INSERT INTO t(tag) VALUES ('seed');",
    )
    .expect("fill the database");
}

/// B writes and closes last; returns what is left in the directory.
fn last_close_by_b(db: &Path) -> Vec<String> {
    let cmd = worker_command(exe(), Vfs::Walguard, db, &["--name", "B"]);
    let mut b = Proc::spawn("B (walguard)", cmd);
    b.ok("write 1");
    assert!(
        b.exit().is_some_and(|s| s.success()),
        "B exits cleanly:\n{}",
        b.stderr()
    );
    list_dir(db.parent().expect("db has a directory"))
}

fn sidecars_left(names: &[String]) -> bool {
    names.iter().any(|n| n == "app.db-wal" || n == "app.db-shm")
}

#[test]
fn a_refused_first_mapping_does_not_block_other_processes_clean_up() {
    // Retried, then mapped.
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create(&db);
    let d = db.display();
    let h = hold(
        exe(),
        &[
            format!("{d}-walguard:1:1"),
            format!("{d}:{}:1", PENDING_BYTE + 513),
            format!("{d}-shm:128:1"),
        ],
    );
    let mut a = Proc::spawn(
        "A (walguard)",
        worker_command(exe(), Vfs::Walguard, &db, &["--name", "A"]),
    );
    a.send("count").expect("send to A");
    match a.answer(Duration::from_millis(500)) {
        Answer::Silent | Answer::Reply(Err(_)) => {}
        Answer::Reply(Ok(n)) => {
            panic!("A mapped the WAL index ({n} rows) while another process held the set-up locks")
        }
        Answer::Gone(why) => panic!("{why}"),
    }
    release(h);
    match a.answer(Duration::from_secs(60)) {
        Answer::Reply(Ok(n)) => assert_eq!(n, "1", "A reads the seed row"),
        other => panic!("A's read after the set-up locks were released: {other:?}"),
    }
    a.ok("close");
    let left = last_close_by_b(&db);
    assert!(
        !sidecars_left(&left),
        "retried, then mapped: process A (walguard, pid {}, still running, its connection \
         closed) blocks the last-close clean-up: after B's last close the directory holds \
         {left:?}",
        a.pid()
    );
    a.exit();

    // Refused until SQLite gives up.
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create(&db);
    let h = hold(exe(), &[format!("{}-shm:128:1", db.display())]);
    let mut a = Proc::spawn(
        "A (walguard)",
        worker_command(exe(), Vfs::Walguard, &db, &["--name", "A"]),
    );
    let first = a.request("count").unwrap_or_else(|e| panic!("{e}"));
    a.ok("close");
    release(h);
    let left = last_close_by_b(&db);
    let first = match first {
        Ok(n) => format!("ok {n}"),
        Err((code, msg)) => format!("code {code}: {msg}"),
    };
    assert!(
        !sidecars_left(&left),
        "refused until SQLite gives up: process A (walguard, pid {}, still running, its \
         connection closed after its first read: {first}) still blocks the last-close \
         clean-up: after B's last close the directory holds {left:?}",
        a.pid()
    );
    a.exit();
}
