//! Defect 2 (issue 10): descriptor growth under connection churn.
//!
//! While another user of the database in this process that walguard does not see (here
//! a connection through the plain `unix` VFS, inside a read transaction) keeps it open,
//! the process holds POSIX locks on the database and its `-shm`. A walguard that closes
//! its per-inode descriptors (database mirror, `-shm`) only when closing cannot cancel
//! such a lock defers them, and as long as the other user stays it never frees them:
//! every open/query/close cycle of a walguard connection leaves two descriptors behind,
//! until the process hits EMFILE.
//!
//! Guarantee tested: 200 such cycles grow `/proc/self/fd` by at most a small constant
//! (one descriptor per inode, kept for the life of the process and reused), as they do
//! through plain unix (the baseline run in the same test).
//!
//! Why not the system `libsqlite3.so.0` as the other user: its locks are cancelled by the
//! wrapped unix VFS's own close of its descriptors, before walguard looks, so walguard
//! sees no lock of this process and closes at once; only a holder whose descriptors the
//! wrapped VFS keeps open (a connection of the same SQLite) keeps them alive.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

const CYCLES: usize = 200;
/// What a fixed number of per-inode descriptors (database mirror, `-shm`, lock file,
/// inotify) may add once, whatever the cycle count.
const ALLOWED_GROWTH: usize = 8;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

/// Targets of this process's descriptors in `dir`, sorted.
fn fds_in(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let Ok(e) = e else { continue };
        if let Ok(t) = std::fs::read_link(e.path()) {
            if t.starts_with(dir) {
                v.push(
                    t.file_name()
                        .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                );
            }
        }
    }
    v.sort();
    v
}

/// Descriptor growth over `CYCLES` open/query/close cycles through `vfs`, while a unix
/// connection of this process holds a read transaction. Returns (before, after, listing).
fn churn(vfs: &str) -> (usize, usize, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    {
        let c = Connection::open(&db).expect("create the database");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
        )
        .expect("fill the database");
    }
    let holder =
        Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, "unix")
            .expect("the other user opens the database through unix");
    holder
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .expect("the other user starts a read transaction");

    let cycle = |i: usize| {
        let conn = Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, vfs)
            .unwrap_or_else(|e| panic!("{vfs} cycle {i}: open: {e}"));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{vfs} cycle {i}: read: {e}"));
        assert_eq!(n, 3, "{vfs} cycle {i}: rows");
        conn.close()
            .unwrap_or_else(|(_, e)| panic!("{vfs} cycle {i}: close: {e}"));
    };
    // Warm-up: whatever is kept per inode is opened here.
    cycle(0);
    let before = open_fds();
    for i in 1..=CYCLES {
        cycle(i);
    }
    let after = open_fds();
    let listing = fds_in(dir.path());
    holder
        .execute_batch("COMMIT")
        .expect("the other user ends its read");
    drop(holder);
    (before, after, listing)
}

fn summary(listing: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for name in listing {
        match counts.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn churn_beside_another_user_of_the_database_does_not_grow_the_descriptor_table() {
    walguard::register(walguard::Options::default().make_default(false))
        .expect("register walguard");

    let (before, after, listing) = churn("unix");
    assert!(
        after <= before + ALLOWED_GROWTH,
        "baseline: {CYCLES} cycles through plain unix grew the descriptor table from {before} \
         to {after}; the scenario itself leaks ({})",
        summary(&listing)
    );

    let (before, after, listing) = churn("walguard");
    assert!(
        after <= before + ALLOWED_GROWTH,
        "{CYCLES} open/query/close cycles of a walguard connection, while a unix connection \
         of the process holds a read transaction, grew the descriptor table from {before} to \
         {after} (+{}; at most +{ALLOWED_GROWTH} allowed, plain unix stays flat). Descriptors \
         on the database's directory: {}",
        after - before,
        summary(&listing)
    );
}
