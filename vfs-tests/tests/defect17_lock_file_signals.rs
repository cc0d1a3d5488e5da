//! Issue 17, defect 6: walguard's own files must never turn an error into a crash, and
//! never refuse what plain unix allows.
//!
//! - **Truncated lock file**: a writer (Debian python3 + the extension, as in the
//!   issue) and a reader (a walguard worker) run transactions while another process
//!   truncates `app.db-walguard` to 0 bytes (`: > app.db-walguard`, a clean-up script).
//! - **`cp` over the lock file**: the same while another process copies files over it
//!   (a restore: `cp` opens with O_TRUNC, then writes) — 30 copies of a full-size copy
//!   while both run transactions, then one of an empty backup.
//! - **Full file system**: a WAL database on a full 256 KiB tmpfs (as `/dev/shm`, `/run`
//!   and many containers' `/tmp` are); a new process writes. Plain unix answers an SQLite
//!   error (baseline, same test); walguard must answer an error too.
//!
//! In all three no process may be killed by a signal. A file named `app.db-walguard` is
//! created beforehand where walguard did not create one (a lock file left by an earlier
//! build: a build that does not use it must simply ignore it).
//!
//! - **Unusable lock-file path**: a directory named `app.db-walguard`, and a mode-000
//!   `app.db-walguard` owned by root, next to a database of uid 65534: walguard must
//!   open and write exactly where unix does (compared with a unix run, as uid 65534).
//!
//! On e4e5d0e (the build before the fix) these fail:
//! ```text
//! truncated lock file: processes killed by a signal: [
//!     "W (python3 + walguard) (pid 30454) was killed by signal 7 (SIGBUS); stderr:\n",
//!     "R (walguard worker) (pid 30470) was killed by signal 7 (SIGBUS); stderr:\n",
//! ]
//! cp over the lock file: processes killed by a signal: [
//!     "W (python3 + walguard) (pid 30450) was killed by signal 7 (SIGBUS); stderr:\n",
//!     "R (walguard worker) (pid 30469) was killed by signal 7 (SIGBUS); stderr:\n",
//! ]
//! full tmpfs: writer (walguard) (pid 30403) was killed by signal 7 (SIGBUS) (plain
//! unix: Ok(Err((13, "write after acks []: database or disk is full")))); walguard's reply: Err("writer (walguard) (pid 30403) was killed by signal 7 (SIGBUS)…")
//! unusable lock-file path: walguard and unix differ:
//! directory app.db-walguard: unix ["open: ok", "wal: ok", "write: ok", "count: ok"],
//! walguard ["open: ok", "wal: ok", "write: err 14", "count: err 1"]
//! ```
//! The mode-000 case agrees on e4e5d0e (it degrades with a warning and writes). The `cp`
//! loop alone (without the final copy of an empty file) killed at least one process in
//! each of three runs on e4e5d0e; the final copy makes the failure deterministic.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{exe, tempdir};
use rusqlite::{Connection, OpenFlags};
use vfs_tests::defect17::{driver_command, worker_command, Answer, Proc, Tmpfs, REPLY_TIMEOUT};
use vfs_tests::extension::extension_path;
use vfs_tests::worker::Vfs;

fn create(db: &Path) {
    let c = Connection::open(db).expect("create the database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);
         INSERT INTO t(tag) VALUES ('seed');",
    )
    .expect("fill the database");
}

fn integrity(db: &Path) -> String {
    let c = Connection::open_with_flags_and_vfs(db, OpenFlags::SQLITE_OPEN_READ_WRITE, "unix")
        .expect("open for the final check");
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// A process in the scenario, and how it ended if it died.
struct Party {
    p: Proc,
    gone: Option<String>,
}

impl Party {
    /// Sends `line` unless the process is gone; an `err` reply is fine (a failed
    /// transaction), a death is remembered.
    fn step(&mut self, line: &str) {
        if self.gone.is_some() {
            return;
        }
        let sent = self.p.send(line);
        match sent.map(|()| self.p.answer(REPLY_TIMEOUT)) {
            Ok(Answer::Reply(_)) => {}
            Ok(Answer::Gone(why)) => self.gone = Some(why),
            Ok(Answer::Silent) => panic!("{}: no reply to {line:?}", self.p.label()),
            Err(e) => {
                let _ = self.p.wait(std::time::Duration::from_secs(10));
                self.gone = Some(format!("{e}; {:?}", self.p.killed_by()));
            }
        }
    }

    /// The description of its death by a signal, if it died by one.
    fn killed(&mut self) -> Option<String> {
        self.p.killed_by()?;
        Some(
            self.gone
                .clone()
                .unwrap_or_else(|| format!("{} was killed by a signal", self.p.label())),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disruption {
    Truncate,
    Copy,
}

fn lock_file_disruption(kind: Disruption) -> Vec<String> {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create(&db);
    let lock = dir.path().join("app.db-walguard");
    if !lock.exists() {
        fs::write(&lock, vec![0u8; 4096]).expect("write a left-over app.db-walguard");
    }
    let db_s = db.to_str().expect("utf-8 temp path");

    let mut w = Party {
        p: Proc::spawn("W (python3 + walguard)", driver_command(dir.path())),
        gone: None,
    };
    w.p.ok(&format!("load {}", extension_path().display()));
    w.p.ok(&format!("open w {db_s}"));
    w.p.ok("exec w INSERT INTO t(tag) VALUES ('w0')");
    let mut r = Party {
        p: Proc::spawn(
            "R (walguard worker)",
            worker_command(exe(), Vfs::Walguard, &db, &["--name", "R"]),
        ),
        gone: None,
    };
    assert_eq!(r.p.ok("count"), "2", "R reads");

    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    match kind {
        Disruption::Truncate => sh(": > app.db-walguard"),
        Disruption::Copy => {
            sh("cp app.db-walguard full.bak && : > empty.bak");
            let stop = Arc::new(AtomicBool::new(false));
            let copier = {
                let stop = Arc::clone(&stop);
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for _ in 0..30 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let _ = Command::new("cp")
                            .args(["full.bak", "app.db-walguard"])
                            .current_dir(&d)
                            .status();
                    }
                })
            };
            for i in 0..20 {
                w.step(&format!("exec w INSERT INTO t(tag) VALUES ('c{i}')"));
                r.step("count");
            }
            stop.store(true, Ordering::SeqCst);
            copier.join().expect("copier thread");
            sh("cp empty.bak app.db-walguard");
        }
    }
    for i in 0..3 {
        w.step(&format!("exec w INSERT INTO t(tag) VALUES ('after{i}')"));
        r.step("count");
    }
    let mut killed = Vec::new();
    for party in [&mut w, &mut r] {
        if party.gone.is_none() {
            party.p.exit();
        }
        killed.extend(party.killed());
    }
    if killed.is_empty() {
        assert_eq!(integrity(&db), "ok", "integrity_check after the disruption");
    }
    killed
}

#[test]
fn truncating_the_lock_file_kills_no_process() {
    let killed = lock_file_disruption(Disruption::Truncate);
    assert!(
        killed.is_empty(),
        "truncated lock file: processes killed by a signal: {killed:#?}"
    );
}

#[test]
fn copying_over_the_lock_file_kills_no_process() {
    let killed = lock_file_disruption(Disruption::Copy);
    assert!(
        killed.is_empty(),
        "cp over the lock file: processes killed by a signal: {killed:#?}"
    );
}

#[test]
fn a_full_file_system_is_an_error_not_a_signal() {
    let fs_ = Tmpfs::mount("256k").unwrap_or_else(|e| panic!("{e}"));
    let db = fs_.path().join("app.db");
    // Keeps -wal and -shm (fully allocated by SQLite) while the file system fills up.
    let holder = Connection::open(&db).expect("create the database on the tmpfs");
    holder
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);
             INSERT INTO t(tag) VALUES ('seed');",
        )
        .expect("fill the database");
    fs_.fill("filler").expect("fill the tmpfs");

    let mut replies = Vec::new();
    for vfs in [Vfs::Unix, Vfs::Walguard] {
        let mut p = Proc::spawn(
            &format!("writer ({vfs})"),
            worker_command(exe(), vfs, &db, &["--name", "full"]),
        );
        let reply = p.request("write 1");
        p.exit();
        let killed = p.killed_by();
        replies.push((vfs, reply, killed, p.label().to_owned()));
    }
    drop(holder);
    let (_, unix, unix_killed, _) = &replies[0];
    let unix_desc = format!("{unix:?}");
    assert!(
        unix_killed.is_none() && matches!(unix, Ok(Err((code, _))) if *code > 0),
        "baseline: plain unix on a full tmpfs should answer an SQLite error: {unix_desc}"
    );
    let (_, wg, wg_killed, label) = &replies[1];
    if let Some(sig) = wg_killed {
        panic!(
            "full tmpfs: {label} was killed by signal {sig} ({}) (plain \
             unix: {unix_desc}); walguard's reply: {wg:?}",
            vfs_tests::defect17::signal_name(*sig)
        );
    }
    assert!(
        matches!(wg, Ok(Err((code, _))) if *code > 0),
        "full tmpfs: walguard should answer an SQLite error like plain unix \
         ({unix_desc}), it answered {wg:?}"
    );
}

/// What a scripted worker as uid 65534 gets for open, `wal`, `write 1`, `count`.
fn outcomes(vfs: Vfs, dir: &Path) -> Vec<String> {
    let db = dir.join("app.db");
    let mut p = Proc::spawn(
        &format!("uid 65534 ({vfs})"),
        worker_command(exe(), vfs, &db, &["--name", "U", "--uid", "65534"]),
    );
    let mut out = Vec::new();
    for (what, cmd) in [
        ("open", "status"),
        ("wal", "wal"),
        ("write", "write 1"),
        ("count", "count"),
    ] {
        let r = p.request(cmd).unwrap_or_else(|e| panic!("{e}"));
        out.push(match r {
            Ok(v) if cmd != "status" || v == "open" => format!("{what}: ok"),
            Ok(v) => format!("{what}: {v}"),
            Err((code, _)) => format!("{what}: err {code}"),
        });
    }
    let status = p.exit();
    assert!(
        status.is_some_and(|s| s.success()),
        "{} exits cleanly: {status:?}\n{}",
        p.label(),
        p.stderr()
    );
    out
}

#[test]
fn an_unusable_lock_file_path_opens_and_writes_where_unix_does() {
    let mut differ = Vec::new();
    for case in ["directory", "mode-000 file"] {
        let mut seen = Vec::new();
        for vfs in [Vfs::Unix, Vfs::Walguard] {
            let dir = tempdir();
            let path = dir.path().to_str().expect("utf-8 temp path").to_owned();
            let cpath = std::ffi::CString::new(path.clone()).expect("no NUL");
            // SAFETY: chown of a directory this test created, by a NUL-terminated path.
            let rc = unsafe { libc::chown(cpath.as_ptr(), 65534, 65534) };
            assert_eq!(rc, 0, "chown 65534 {path} (the test runs as root)");
            let lock = dir.path().join("app.db-walguard");
            if case == "directory" {
                fs::create_dir(&lock).expect("mkdir app.db-walguard");
            } else {
                fs::write(&lock, b"").expect("create app.db-walguard");
                fs::set_permissions(&lock, fs::Permissions::from_mode(0o000))
                    .expect("chmod 000 app.db-walguard");
            }
            seen.push(outcomes(vfs, dir.path()));
        }
        let all_ok = |v: &Vec<String>| v.iter().all(|s| s.ends_with(": ok"));
        assert!(
            all_ok(&seen[0]),
            "baseline: plain unix as uid 65534 next to a {case} app.db-walguard: {:?}",
            seen[0]
        );
        if seen[0] != seen[1] {
            differ.push(format!(
                "{case} app.db-walguard: unix {:?}, walguard {:?}",
                seen[0], seen[1]
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "unusable lock-file path: walguard and unix differ:\n{}",
        differ.join("\n")
    );
}
