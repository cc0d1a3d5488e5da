//! Defect 3 (issue 10): the last-close EXCLUSIVE must be refused while others hold the
//! WAL index.
//!
//! SQLite's last close of a WAL database (sqlite3WalClose) takes EXCLUSIVE on the
//! database file, checkpoints in exclusive mode (which skips the read-mark locks, so it
//! ignores every other reader), then asks `SQLITE_FCNTL_PERSIST_WAL`: on "delete" it
//! unlinks `-wal` and `-shm`; on "persist" with `journal_size_limit >= 0` it truncates
//! the `-wal` (walLimitSize). EXCLUSIVE is only possible when no other connection's
//! SHARED lock is visible, i.e. when another process lost its POSIX locks (a header peek:
//! open/read/close of the database file). SQLite >= 3.51 refuses it while any process
//! holds the `-shm` dead-man switch; the host SQLite here (Debian 12's 3.40.1) does not.
//!
//! Scenario (deterministic, three processes driven step by step, Debian python3 on the
//! system SQLite): U (plain SQLite) creates a WAL database and writes 10 rows; W writes
//! 10 rows with `journal_size_limit=0`; U begins a read-modify-write transaction (BEGIN;
//! SELECT) and then peeks at the database header, which drops its POSIX locks on the
//! database file (not those on the `-shm`); W closes; U inserts 10 rows in its
//! transaction, commits, and leaves with `os._exit` (no close, no checkpoint); a fresh
//! connection counts.
//! - W on plain unix: W checkpoints and deletes `-wal`/`-shm` under U; U commits into the
//!   unlinked files: its rows are lost (the baseline: proof the scenario can fail).
//! - W through walguard (before the fix): walguard answers "persist", SQLite truncates
//!   the `-wal` to 0 bytes under U; U appends its frames past a zeroed WAL header;
//!   recovery finds no valid WAL: its rows are lost too.
//! - Guarantee: walguard refuses EXCLUSIVE at `xLock` (SQLITE_BUSY) while another holder
//!   has the WAL index, so the close skips the checkpoint and U's commit is kept: 30 rows.

use vfs_tests::defects::Driver;

const INSERT10: &str = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c \
                        WHERE i < 10) INSERT INTO t(who, i) SELECT";

fn insert10(who: &str) -> String {
    format!("{INSERT10} '{who}', i FROM c")
}

struct Outcome {
    rows: i64,
    by_who: String,
    integrity: String,
    wal_len_after_close: Option<u64>,
    shm_after_close: bool,
}

fn scenario(w_through_walguard: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let mut u = Driver::spawn("U (plain SQLite)", dir.path(), false, &[]);
    u.ok("open u app.db");
    assert_eq!(u.ok("exec u PRAGMA journal_mode=WAL"), "wal");
    u.ok("exec u CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, i INTEGER)");
    u.ok(&format!("exec u {}", insert10("u-first")));

    let label = if w_through_walguard {
        "W (walguard)"
    } else {
        "W (plain SQLite)"
    };
    let mut w = Driver::spawn(label, dir.path(), w_through_walguard, &[]);
    w.ok("open w app.db");
    w.ok("exec w PRAGMA journal_size_limit=0");
    w.ok(&format!("exec w {}", insert10("w")));

    // U's read-modify-write transaction: its snapshot holds 20 rows.
    assert_eq!(u.ok("exec u BEGIN; SELECT count(*) FROM t"), "20");
    // A header peek in U's process: the close drops U's POSIX locks on the database file.
    u.ok("peek app.db");

    // W's last close: EXCLUSIVE is free on the database file.
    w.ok("close w");
    let wal = db.with_file_name("app.db-wal");
    let wal_len_after_close = std::fs::metadata(&wal).ok().map(|m| m.len());
    let shm_after_close = db.with_file_name("app.db-shm").exists();

    u.ok(&format!("exec u {}; COMMIT", insert10("u-second")));
    u.hard_exit();
    drop(w.exit());

    let c = rusqlite::Connection::open(&db).expect("fresh connection");
    let rows: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("fresh count");
    let by_who: String = c
        .query_row(
            "SELECT group_concat(who || ':' || n, ' ') FROM \
             (SELECT who, count(*) AS n FROM t GROUP BY who ORDER BY who)",
            [],
            |r| r.get(0),
        )
        .expect("fresh count by writer");
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    Outcome {
        rows,
        by_who,
        integrity,
        wal_len_after_close,
        shm_after_close,
    }
}

fn describe(o: &Outcome) -> String {
    format!(
        "{} rows ({}), integrity {}; right after W's close: -wal {}, -shm {}",
        o.rows,
        o.by_who,
        o.integrity,
        o.wal_len_after_close
            .map_or("absent".to_owned(), |n| format!("{n} bytes")),
        if o.shm_after_close {
            "present"
        } else {
            "absent"
        }
    )
}

#[test]
fn last_close_exclusive_is_refused_while_another_process_maps_the_wal_index() {
    let unix = scenario(false);
    assert!(
        unix.rows < 30,
        "baseline: with W on plain unix the scenario lost nothing ({}); it cannot show the \
         defect",
        describe(&unix)
    );

    let guarded = scenario(true);
    assert_eq!(
        guarded.rows,
        30,
        "W through walguard: U's commit after W's last close was lost ({}). walguard must \
         refuse the last-close EXCLUSIVE (SQLITE_BUSY at xLock) while another process holds \
         the WAL index, so that SQLite skips the exclusive-mode checkpoint and the -wal \
         truncation. Plain unix baseline: {}",
        describe(&guarded),
        describe(&unix)
    );
    assert_eq!(guarded.integrity, "ok");
}
