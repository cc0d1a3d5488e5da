//! Issue 17: a rolling upgrade — a process of the build before the issue-17 rewrite
//! (commit e4e5d0e) and a process of the current build share a database — must lose
//! nothing when the `-shm` is removed or replaced from outside.
//!
//! Both processes are Debian's python3 on the system SQLite (`defect_driver.py`); process
//! A loads the old build's extension (built once from git into `target/walguard-e4e5d0e/`,
//! see `vfs_tests::defect17::old_extension`), process B the current build's. Both write
//! with a ledger of acknowledged commits (one row per transaction; an I/O error such as
//! walguard's SQLITE_IOERR_VNODE for a connection whose `-shm` was removed makes the
//! writer close and reopen its connection and try again with a new row; BUSY retries).
//!
//! Schedule (deterministic, one command at a time): both open and commit; the test
//! removes `app.db-shm`; B closes and reopens (it sets up a new WAL index); A, B, A, B
//! commit; the test replaces `app.db-shm` (`cp` + `mv` of a copy over it); A closes and
//! reopens; B, A, B, A commit; both close. Every acknowledged commit must be in the
//! database and `integrity_check` must say `ok`.
//!
//! Baseline in the same test: the same schedule through plain unix (no extension) loses
//! acknowledged commits (each side writes through its own WAL index into the same
//! `-wal`), which shows the schedule can fail.
//!
//! If the git history does not contain e4e5d0e (a shallow clone, a source archive), the
//! test fails and says so. Until the rewrite lands both sides are the same build; the
//! test passes on e4e5d0e (old + old) and must keep passing (old + new).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};
use vfs_tests::defect17::{driver_command, is_busy, is_ioerr, old_extension, Proc, OLD_COMMIT};
use vfs_tests::extension::extension_path;

struct Side {
    p: Proc,
    name: &'static str,
    db: String,
    seq: u32,
}

impl Side {
    fn start(name: &'static str, dir: &Path, db: &Path, ext: Option<&Path>) -> Side {
        let label = match ext {
            Some(e) => format!("{name} (python3 + {})", e.display()),
            None => format!("{name} (python3, plain unix)"),
        };
        let mut cmd = driver_command(dir);
        cmd.env_remove("WALGUARD_WATCHER");
        let mut p = Proc::spawn(&label, cmd);
        if let Some(e) = ext {
            p.ok(&format!("load {}", e.display()));
        }
        let db = db.to_str().expect("utf-8 temp path").to_owned();
        p.ok(&format!("open c {db}"));
        Side {
            p,
            name,
            db,
            seq: 0,
        }
    }

    fn reopen(&mut self, events: &mut Vec<String>) {
        if let Ok(Err((code, msg))) = self.p.request("close c") {
            events.push(format!("{}: close: code {code}: {msg}", self.name));
        }
        self.p.ok(&format!("open c {}", self.db));
    }

    /// One committed row, or `None` after five failed attempts.
    fn commit(&mut self, events: &mut Vec<String>) -> Option<String> {
        for _ in 0..5 {
            self.seq += 1;
            let tag = format!("{}{}", self.name, self.seq);
            let sql = format!("exec c INSERT INTO t(tag) VALUES ('{tag}')");
            match self.p.request(&sql).unwrap_or_else(|e| panic!("{e}")) {
                Ok(_) => return Some(tag),
                Err((code, msg)) if is_ioerr(code) => {
                    events.push(format!("{tag}: code {code}: {msg}; reopening"));
                    self.reopen(events);
                }
                Err((code, msg)) if is_busy(code) => {
                    events.push(format!("{tag}: code {code}: {msg}; retrying"));
                }
                Err((code, msg)) => panic!("{}: {sql}: code {code}: {msg}", self.p.label()),
            }
        }
        None
    }
}

struct Outcome {
    lost: Vec<String>,
    integrity: String,
    events: Vec<String>,
}

fn run(a_ext: Option<&Path>, b_ext: Option<&Path>) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    {
        let c = Connection::open(&db).expect("create the database");
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL);",
        )
        .expect("create the table");
    }
    let shm = dir.path().join("app.db-shm");
    let mut events = Vec::new();
    let mut acked = Vec::new();
    let mut a = Side::start("A", dir.path(), &db, a_ext);
    let mut b = Side::start("B", dir.path(), &db, b_ext);
    acked.extend(a.commit(&mut events));
    acked.extend(b.commit(&mut events));

    fs::remove_file(&shm).expect("rm app.db-shm");
    events.push("rm app.db-shm".into());
    b.reopen(&mut events);
    for _ in 0..2 {
        acked.extend(a.commit(&mut events));
        acked.extend(b.commit(&mut events));
    }

    let out = Command::new("sh")
        .arg("-c")
        .arg("cp app.db-shm shm.copy && mv shm.copy app.db-shm")
        .current_dir(dir.path())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "cp + mv over app.db-shm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    events.push("cp + mv over app.db-shm".into());
    a.reopen(&mut events);
    for _ in 0..2 {
        acked.extend(b.commit(&mut events));
        acked.extend(a.commit(&mut events));
    }
    for side in [&mut a, &mut b] {
        let status = side.p.exit();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly: {status:?}\n{}",
            side.p.label(),
            side.p.stderr()
        );
    }

    let c = Connection::open_with_flags_and_vfs(&db, OpenFlags::SQLITE_OPEN_READ_WRITE, "unix")
        .expect("open for the final check");
    let present: Vec<String> = c
        .prepare("SELECT tag FROM t ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| format!("integrity_check failed: {e}"));
    events.push(format!("acknowledged {acked:?}, present {present:?}"));
    Outcome {
        lost: acked.into_iter().filter(|t| !present.contains(t)).collect(),
        integrity,
        events,
    }
}

#[test]
fn old_and_new_builds_lose_nothing_through_an_outside_rm_and_replace_of_the_shm() {
    let old: PathBuf = old_extension().unwrap_or_else(|e| panic!("{e}"));
    let new = extension_path();

    let unix = run(None, None);
    assert!(
        !unix.lost.is_empty() || unix.integrity != "ok",
        "baseline: plain unix lost nothing under this schedule (integrity_check: {}); the \
         scenario does not reproduce the hazard, the test proves nothing.\nevents: {:#?}",
        unix.integrity,
        unix.events
    );

    let wg = run(Some(&old), Some(&new));
    println!(
        "plain unix lost {:?}; old + current build lost {:?}\nevents (walguard): {:#?}",
        unix.lost, wg.lost, wg.events
    );
    assert!(
        wg.lost.is_empty() && wg.integrity == "ok",
        "old build ({}, {}) + current build ({}): acknowledged commits lost: {:?}, \
         integrity_check: {} (plain unix in the same schedule lost {:?}).\nevents: {:#?}",
        &OLD_COMMIT[..7],
        OsStr::new(&old).to_string_lossy(),
        new.display(),
        wg.lost,
        wg.integrity,
        unix.lost,
        wg.events
    );
}
