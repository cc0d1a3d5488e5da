//! Transparency: the deterministic mixed workload (schema, bulk insert, updates,
//! deletes, indexes, a trigger, upserts, a 3 MiB blob, a rolled-back transaction,
//! savepoints, VACUUM, `wal_checkpoint(TRUNCATE)`, `integrity_check`) gives
//! byte-identical transcripts through `unix` and through walguard, in rollback-journal
//! mode and in WAL mode, and leaves byte-identical database files behind.

mod common;

use std::fs;
use std::path::Path;

use common::{snapshot, tempdir, vfs_name};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::workload::mixed_workload;

/// Runs the workload on a fresh `app.db` in `dir` through `vfs` in journal `mode`,
/// closes the connection, and returns the transcript.
fn run(dir: &Path, vfs: &str, mode: &str) -> String {
    let db = dir.join("app.db");
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags_and_vfs(&db, flags, vfs)
        .unwrap_or_else(|e| panic!("open {} via {vfs}: {e}", db.display()));
    let reported = vfs_name(&conn);
    assert!(
        reported.starts_with(vfs),
        "{} opened via {vfs} reports VFS {reported:?}",
        db.display()
    );
    let set: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("journal_mode={mode} on {} via {vfs}: {e}", db.display()));
    assert_eq!(set, mode, "{} via {vfs}", db.display());
    let transcript = mixed_workload(&conn)
        .unwrap_or_else(|e| panic!("workload on {} via {vfs} ({mode}): {e}", db.display()));
    conn.close()
        .unwrap_or_else(|(_, e)| panic!("close {} via {vfs}: {e}", db.display()));
    transcript
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
        if la != lb {
            return format!("line {}:\n  unix:     {la}\n  walguard: {lb}", i + 1);
        }
    }
    format!(
        "one transcript is a prefix of the other ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

#[test]
fn mixed_workload_is_identical_through_unix_and_walguard() {
    walguard::register(walguard::Options::default().make_default(false))
        .expect("register walguard (not as default)");

    for mode in ["delete", "wal"] {
        let dir_unix = tempdir();
        let dir_wg = tempdir();

        let before = walguard::stats();
        let t_unix = run(dir_unix.path(), "unix", mode);
        let mid = walguard::stats();
        let t_wg = run(dir_wg.path(), walguard::DEFAULT_NAME, mode);
        let after = walguard::stats();

        // The unix run did not touch walguard; the walguard run went through it.
        assert_eq!(
            mid.db_opened, before.db_opened,
            "{mode}: unix run opened via walguard"
        );
        assert!(
            after.db_opened > mid.db_opened,
            "{mode}: walguard run bypassed walguard"
        );
        if mode == "wal" {
            assert!(
                after.wal_opened > mid.wal_opened,
                "wal: no -wal opened via walguard"
            );
            assert!(
                after.shm_mapped > mid.shm_mapped,
                "wal: no -shm mapped via walguard"
            );
        }

        // The transcript is meaningful and the same byte for byte.
        assert!(
            t_unix.contains(&format!("journal_mode: [\"{mode}\"]")),
            "{mode}: transcript does not show the journal mode:\n{t_unix}"
        );
        assert!(t_unix.contains("integrity_check: [\"ok\"]"), "{t_unix}");
        assert!(t_unix.contains("identical=true"), "{t_unix}");
        assert!(
            t_unix == t_wg,
            "{mode}: transcripts differ at {}",
            first_difference(&t_unix, &t_wg)
        );

        // The files left behind are the same, apart from walguard's own lock file.
        let snap_unix = snapshot(dir_unix.path());
        let mut snap_wg = snapshot(dir_wg.path());
        snap_wg.remove("app.db-walguard");
        assert_eq!(
            snap_unix,
            snap_wg,
            "{mode}: files differ between {} (unix) and {} (walguard)",
            dir_unix.path().display(),
            dir_wg.path().display()
        );
        let unix_bytes = fs::read(dir_unix.path().join("app.db")).expect("read unix app.db");
        assert!(
            unix_bytes.len() > 4096,
            "{mode}: unix app.db is suspiciously small"
        );
    }
}
