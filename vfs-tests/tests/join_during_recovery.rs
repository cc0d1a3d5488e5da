//! A newcomer whose WAL index another process is recovering waits in SQLite's busy
//! handler (its `busy_timeout`, then `SQLITE_BUSY`), as through unix — not in SQLite's
//! ten-second retry loop for a busy `xShmMap`, which ends in `SQLITE_PROTOCOL` whatever the
//! timeout. SQLite's walsetlk_recover.test (3.53) found a build whose first mapping
//! refused to join while the recovering process held walguard's gate exclusively.
//!
//! Scenario: a helper process stands in for the recovering one: it maps the index (one
//! region, zeroed: its header is not written yet; a
//! shared dead-man switch on `-shm` byte 128), holds SQLite's WRITE and RECOVER locks
//! (bytes 120 and 122) as a recovering unix process does, and walguard's gate
//! (PENDING_BYTE + 513 of the database) as a recovering walguard process does — plain
//! unix ignores that byte. A connection with a 200 ms busy timeout reads: `database is
//! locked` (`SQLITE_BUSY_RECOVERY`) on both VFSs; once the helper lets go, the same connection reads the row.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{exe, tempdir};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::defect17::{hold, release};

const PENDING_BYTE: u64 = 0x4000_0000;

fn count(c: &Connection) -> Result<i64, String> {
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, m) => {
                format!("code {}: {}", f.extended_code, m.unwrap_or_default())
            }
            other => other.to_string(),
        })
}

fn steps(dir: &Path, vfs: &str) -> (Result<i64, String>, Result<i64, String>) {
    let db = dir.join(format!("{vfs}.db"));
    Connection::open(&db)
        .and_then(|c| {
            c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        })
        .expect("create the database");
    // The index the helper is "recovering": one region, its header not written yet.
    std::fs::write(dir.join(format!("{vfs}.db-shm")), vec![0u8; 32768]).expect("-shm");
    let d = db.display();
    let h = hold(
        exe(),
        &[
            format!("{d}:{}:1", PENDING_BYTE + 513),
            format!("{d}-shm:128:1:r"),
            format!("{d}-shm:120:1"),
            format!("{d}-shm:122:1"),
        ],
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE;
    let c = Connection::open_with_flags_and_vfs(&db, flags, vfs).expect("open");
    c.busy_timeout(Duration::from_millis(200))
        .expect("busy_timeout");
    let during = count(&c);
    release(h);
    (during, count(&c))
}

#[test]
fn a_newcomer_waits_for_a_recovery_in_the_busy_handler() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let dir = tempdir();
    let unix = steps(dir.path(), "unix");
    assert_eq!(
        unix,
        (Err("code 261: database is locked".into()), Ok(1)),
        "the baseline"
    );
    assert_eq!(steps(dir.path(), "walguard"), unix, "walguard as unix");
}
