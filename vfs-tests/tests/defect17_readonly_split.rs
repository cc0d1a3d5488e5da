//! Issue 17, defect 3: a process that can open the database only read-only must be
//! excluded from other processes' writes like everyone else.
//!
//! After an outside `rm` of the `-shm` while a read-write process W has a write
//! transaction in flight, the next process that maps the WAL index sets up a new `-shm`
//! and recovers it from the `-wal`. If that recovery runs while W's write is still in
//! flight, it cannot see W's commit; processes that join the new index then append their
//! frames where W's commit went, and W's acknowledged commit is gone. walguard keeps the
//! two apart — but on e4e5d0e a process that opened the database read-only mirrored its
//! WAL locks on `<db>-walguard` (or nowhere, when that file is not writable for it) while
//! read-write processes mirrored them on the database file: the two groups never excluded
//! each other.
//!
//! Scenario: a root-owned 0644 database in a directory everyone may write (so the
//! read-only process can create the new `-shm`). W (root, walguard) commits a row and
//! starts another write (BEGIN IMMEDIATE + INSERT); the test removes `app.db-shm`; R
//! (uid 65534, walguard; SQLite opens the database read-only for it) reads — recovery —
//! and the test waits for its answer (at most 3 s: a fixed build makes R wait for W);
//! W commits; W2 (root, walguard, a new process) commits three rows; W (reopening after
//! walguard fails its stale connection) commits once more; R reads again. Every
//! acknowledged commit must be in the database and `integrity_check` must say `ok`.
//!
//! On e4e5d0e (the build before the fix) this fails:
//! ```text
//! read-only split: acknowledged commits lost: ["W-inflight"], integrity_check: ok (R's
//! first read: Ok("2"), answered before W committed). Present: ["seed", "W-21890-1",
//! "W2-21902-1", "W2-21902-2", "W2-21902-3", "W-21890-3"]
//! events: ["W (root, walguard) (pid 21890): code 6922: write after acks []: disk I/O
//! error; reopening", "R's second read: Ok(\"6\")"]
//! ```
//! With R read-write instead (root, no `--uid`), e4e5d0e passes: R's recovery waits for
//! W's commit (the WRITE mirror on the database file), which is the exclusion a
//! read-only process must get too.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{exe, tempdir};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::defect17::{is_busy, is_ioerr, worker_command, Answer, Proc};
use vfs_tests::worker::{parse_rows, Vfs};

/// `write 1` through a scripted worker, reopening its connection after an I/O error
/// (walguard's SQLITE_IOERR_VNODE for a stale connection) and retrying after BUSY.
/// Returns the acknowledged tag, if any.
fn ledger_write(w: &mut Proc, log: &mut Vec<String>) -> Option<String> {
    for _ in 0..5 {
        match w.request("write 1").unwrap_or_else(|e| panic!("{e}")) {
            Ok(payload) => {
                return parse_rows(&payload).first().map(|(_, tag)| tag.clone());
            }
            Err((code, msg)) if is_ioerr(code) => {
                log.push(format!("{}: code {code}: {msg}; reopening", w.label()));
                w.ok("close");
                w.ok("open");
            }
            Err((code, msg)) if is_busy(code) => {
                log.push(format!("{}: code {code}: {msg}; retrying", w.label()));
            }
            Err((code, msg)) => panic!("{}: write failed: code {code}: {msg}", w.label()),
        }
    }
    None
}

#[test]
fn a_read_only_process_does_not_recover_inside_another_process_s_write() {
    let dir = tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
        .expect("chmod 777 the test directory");
    let db = dir.path().join("app.db");
    {
        let c = Connection::open(&db).expect("create the database");
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);
             INSERT INTO t(tag) VALUES ('seed');",
        )
        .expect("fill the database");
    }
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).expect("chmod 644 app.db");
    let mut acked = vec!["seed".to_owned()];
    let mut log = Vec::new();

    let mut w = Proc::spawn(
        "W (root, walguard)",
        worker_command(exe(), Vfs::Walguard, &db, &["--name", "W"]),
    );
    acked.extend(ledger_write(&mut w, &mut log));
    w.ok("exec BEGIN IMMEDIATE; INSERT INTO t(tag) VALUES ('W-inflight')");

    fs::remove_file(dir.path().join("app.db-shm")).expect("rm app.db-shm");

    let mut r = Proc::spawn(
        "R (uid 65534, walguard, read-only)",
        worker_command(
            exe(),
            Vfs::Walguard,
            &db,
            &["--name", "R", "--uid", "65534", "--flags", "rw"],
        ),
    );
    r.send("count").expect("send to R");
    let early = r.answer(Duration::from_secs(3));
    let commit = w.request("exec COMMIT").unwrap_or_else(|e| panic!("{e}"));
    if commit.is_ok() {
        acked.push("W-inflight".to_owned());
    } else {
        log.push(format!("W's COMMIT: {commit:?}"));
    }
    let first_read = match early {
        Answer::Silent => match r.answer(Duration::from_secs(60)) {
            Answer::Reply(rep) => format!("{rep:?}, answered after W committed"),
            other => panic!("R's first read: {other:?}"),
        },
        Answer::Reply(rep) => format!("{rep:?}, answered before W committed"),
        Answer::Gone(why) => panic!("{why}"),
    };

    let mut w2 = Proc::spawn(
        "W2 (root, walguard)",
        worker_command(exe(), Vfs::Walguard, &db, &["--name", "W2"]),
    );
    for _ in 0..3 {
        acked.extend(ledger_write(&mut w2, &mut log));
    }
    acked.extend(ledger_write(&mut w, &mut log));
    let second_read = r.request("count").unwrap_or_else(|e| panic!("{e}"));
    log.push(format!("R's second read: {second_read:?}"));
    for p in [&mut w, &mut w2, &mut r] {
        let label = p.label().to_owned();
        let status = p.exit();
        assert!(
            status.is_some_and(|s| s.success()),
            "{label} did not exit cleanly: {status:?}\n{}",
            p.stderr()
        );
    }

    let c = Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, "unix")
        .expect("open for the final check");
    let present: Vec<String> = c
        .prepare("SELECT tag FROM t ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read every row");
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let lost: Vec<&String> = acked.iter().filter(|t| !present.contains(t)).collect();
    assert!(
        lost.is_empty() && check == "ok",
        "read-only split: acknowledged commits lost: {lost:?}, integrity_check: {check} \
         (R's first read: {first_read}). Present: {present:?}\nevents: {log:#?}"
    );
}
