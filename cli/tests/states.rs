//! The doctor against real states built by real SQLite processes: a healthy WAL database
//! with three processes, a split WAL index (the header-peek reproduction), a torn extend,
//! a bad frame checksum after the last commit, a second SQLite library in one process, a
//! hot journal, and the proof that the doctor's own run changes no byte and no lock.
//!
//! Synchronisation is by the workers' replies (each command answers when done) and by
//! the doctor's exit; no test sleeps to wait for something.

#[macro_use]
mod common;

use common::{codes, doctor, doctor_json, finding, ok, process, spawn, Json};
use std::fs;
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use vfs_tests::worker::Vfs;

fn main() -> ExitCode {
    common::main(tests![
        healthy_wal_database_with_three_processes,
        unguarded_processes_are_named_with_how_to_guard_each,
        lock_file_left_by_an_earlier_build,
        split_index_names_the_process_holding_the_deleted_wal,
        torn_extend_is_damage,
        bad_frame_checksum_after_the_last_commit,
        second_sqlite_library_in_one_process,
        rollback_database_with_a_hot_journal,
        stripped_executable_with_bundled_sqlite,
        doctor_changes_no_byte_and_no_lock,
        doctor_makes_only_read_only_system_calls,
        watch_prints_only_changes,
    ])
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn pids_of(f: &Json) -> Vec<u32> {
    f["pids"].items().iter().map(|p| p.num() as u32).collect()
}

/// Names of the locks a process holds in the report (e.g. "SHARED", "DMS").
fn lock_names(p: &Json) -> Vec<String> {
    p["locks"]
        .items()
        .iter()
        .map(|l| format!("{} {}", l["file"].text(), l["names"].text()))
        .collect()
}

/// Two processes on plain unix and one through walguard: everything is healthy but the
/// mix (the two unguarded ones are named, see also unguarded_processes_are_named...).
fn healthy_wal_database_with_three_processes() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 3");
    let mut b = spawn(Vfs::Unix, &db, "B");
    ok(&mut b, "write 2");
    let mut c = spawn(Vfs::Walguard, &db, "C");
    ok(&mut c, "write 1");
    for w in [&mut a, &mut b, &mut c] {
        assert_eq!(ok(w, "count"), "6");
    }

    let r = doctor_json(&db, 1);
    assert_eq!(r["status"].text(), "warnings");
    assert_eq!(
        codes(&r, "warning"),
        ["unguarded-processes"],
        "{}",
        r.render_findings()
    );
    let mut unguarded = pids_of(finding(&r, "unguarded-processes"));
    unguarded.sort_unstable();
    let mut plain = vec![a.pid(), b.pid()];
    plain.sort_unstable();
    assert_eq!(unguarded, plain);
    assert_eq!(r["header"]["journal_mode"].text(), "WAL");
    assert_eq!(r["wal"]["header"]["checksum_ok"], Json::Bool(true));
    assert!(r["wal"]["first_invalid_frame"].is_null());
    let last = r["wal"]["last_commit_frame"].num();
    assert!(last >= 6.0, "six commits at least: {last}");
    assert_eq!(
        r["shm"]["mx_frame"].num(),
        last,
        "the index agrees with the -wal"
    );
    assert_eq!(r["shm"]["copies_agree"], Json::Bool(true));
    assert_eq!(r["shm"]["in_use"], Json::Bool(true));
    assert_eq!(
        r["processes"].items().len(),
        3,
        "{}",
        r["processes"].render()
    );
    let version = rusqlite::version();
    for (w, walguard) in [(&a, "linked"), (&b, "linked"), (&c, "active")] {
        let p = process(&r, w.pid());
        let roles: Vec<&str> = p["files"]
            .items()
            .iter()
            .map(|f| f["role"].text())
            .collect();
        for role in ["database", "-wal", "-shm"] {
            assert!(
                roles.contains(&role),
                "{} lacks {role}: {roles:?}",
                w.name()
            );
        }
        let locks = lock_names(p);
        assert!(
            locks.iter().any(|l| l == "database SHARED"),
            "{}: {locks:?}",
            w.name()
        );
        assert!(
            locks.iter().any(|l| l == "-shm DMS"),
            "{}: {locks:?}",
            w.name()
        );
        assert!(
            p["cmdline"].text().contains("worker --vfs"),
            "{}",
            p["cmdline"].text()
        );
        assert_eq!(p["walguard"].text(), walguard, "{}", w.name());
        let libs = p["sqlite_libraries"].items();
        assert_eq!(libs.len(), 1, "{}: {:?}", w.name(), libs);
        assert_eq!(
            libs[0]["version"].text(),
            version,
            "the bundled SQLite's own version"
        );
        assert_eq!(libs[0]["wal_reset_bug"], Json::Bool(false));
    }
    // walguard's own locks are decoded too: OFD locks (mirrors, the gate, its -shm
    // locks), or with an earlier build, presence on <db>-walguard.
    let p = process(&r, c.pid());
    assert!(
        p["locks"]
            .items()
            .iter()
            .any(|l| l["kind"].text() == "OFD" || l["file"].text() == "-walguard"),
        "{:?}",
        lock_names(p)
    );
    for w in [&a, &b] {
        assert_eq!(process(&r, w.pid())["guard_with"].text(), "linked-unused");
    }
    assert!(process(&r, c.pid())["guard_with"].is_null());

    let text = doctor(&["doctor", &s(&db)]);
    assert_eq!(text.status, 1, "{}", text.stdout);
    assert!(text.stdout.contains("verdict: WARNINGS"), "{}", text.stdout);
    for w in [&a, &b, &c] {
        assert!(
            text.stdout.contains(&format!("  {} [", w.pid())),
            "{}",
            text.stdout
        );
    }
    for w in [a, b, c] {
        w.exit().expect("worker exit");
    }
}

/// A program from outside the test (the `sqlite3` shell, Debian's `python3`) that opened
/// the database, read it, answered `ready`, and keeps it open until its stdin closes.
struct Outside {
    child: Child,
}

impl Outside {
    fn start(program: &str, args: &[&str], input: &str) -> Outside {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} (scripts/setup installs it): {e}"));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write to stdin");
        stdin.flush().expect("flush stdin");
        child.stdin = Some(stdin);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with("ready") => break,
                Ok(_) => {}
                Err(_) => panic!("{program} did not answer ready within 60 s"),
            }
        }
        Outside { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // lets it exit
        let _ = self.child.wait();
    }
}

/// A copy of the test executable without symbols: a program with SQLite linked in whose
/// walguard cannot be seen (and could not be reached from outside).
fn stripped_copy(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("stripped-worker");
    fs::copy(std::env::current_exe().expect("current_exe"), &exe)
        .expect("copy the test executable");
    let st = Command::new("strip")
        .arg("--strip-all")
        .arg(&exe)
        .status()
        .expect("run strip (binutils)");
    assert!(st.success(), "strip failed");
    exe
}

/// A fleet where some processes use walguard and some do not: the finding names each
/// unguarded one with how to guard it — `walguard exec` for the `sqlite3` shell (a shared
/// libsqlite3), WALGUARD_AUTO=1 / walguard.install() for Python, nothing from outside for
/// a program with SQLite linked in, the VFS choice for a program that links walguard but
/// opens the database without it. Without any guarded process the finding is absent (the
/// baseline: it is about the mix).
fn unguarded_processes_are_named_with_how_to_guard_each() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let exe = stripped_copy(dir.path());
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 2");
    let shell = Outside::start(
        "/usr/bin/sqlite3",
        &[&s(&db)],
        "SELECT 'ready', count(*) FROM t;\n",
    );
    let python = Outside::start(
        "/usr/bin/python3",
        &[
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             print('ready', c.execute('SELECT count(*) FROM t').fetchone()[0], flush=True)\n\
             sys.stdin.readline()\n",
            &s(&db),
        ],
        "",
    );
    let mut x = vfs_tests::worker::Worker::spawn(&exe, Vfs::Unix, &db, "X")
        .expect("spawn the stripped worker");
    ok(&mut x, "write 1");

    // Nobody guarded: nothing to compare with, no finding.
    let r = doctor(&["doctor", "--json", &s(&db)]).json();
    assert_eq!(
        r["processes"].items().len(),
        4,
        "{}",
        r["processes"].render()
    );
    assert!(
        !codes(&r, "note").contains(&"unguarded-processes".to_owned()),
        "{}",
        r.render_findings()
    );

    let mut c = spawn(Vfs::Walguard, &db, "C");
    ok(&mut c, "write 1");
    let run = doctor(&["doctor", "--json", &s(&db)]);
    assert!((1..=2).contains(&run.status), "{}", run.stdout);
    let r = run.json();
    let f = finding(&r, "unguarded-processes");
    assert_eq!(f["severity"].text(), "warning");
    let mut pids = pids_of(f);
    pids.sort_unstable();
    let mut want = vec![a.pid(), shell.pid(), python.pid(), x.pid()];
    want.sort_unstable();
    assert_eq!(pids, want, "{}", f["message"].text());
    for (pid, how) in [
        (a.pid(), "linked-unused"),
        (shell.pid(), "walguard-exec"),
        (python.pid(), "python"),
        (x.pid(), "static"),
    ] {
        assert_eq!(process(&r, pid)["guard_with"].text(), how, "process {pid}");
    }
    assert_eq!(process(&r, c.pid())["walguard"].text(), "active");
    assert!(process(&r, c.pid())["guard_with"].is_null());
    let action = f["action"].text();
    let part = |pid: u32| {
        action
            .split("; process ")
            .find(|p| {
                p.trim_start_matches("process ")
                    .starts_with(&format!("{pid} ("))
            })
            .unwrap_or_else(|| panic!("no remedy for process {pid} in: {action}"))
    };
    let sh = part(shell.pid());
    assert!(
        sh.contains(&format!("walguard exec -- /usr/bin/sqlite3 {}", s(&db))),
        "{sh}"
    );
    let py = part(python.pid());
    assert!(
        py.contains("WALGUARD_AUTO=1")
            && py.contains("walguard.install()")
            && py.contains("-m pip install walguard"),
        "{py}"
    );
    let st = part(x.pid());
    assert!(
        st.contains("stripped-worker") && st.contains("nothing from outside guards it"),
        "{st}"
    );
    assert!(part(a.pid()).contains("?vfs=walguard"), "{action}");
    let text = doctor(&["doctor", &s(&db)]);
    assert!(
        text.stdout.contains("walguard guards 1 of the 5 processes"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("walguard exec -- "), "{}", text.stdout);
    // The shell carries SQLite's format string and source id for its own checks, but
    // its SQLite is the library's: one SQLite, not two.
    let libs = process(&r, shell.pid())["sqlite_libraries"]
        .items()
        .to_vec();
    assert_eq!(libs.len(), 1, "{libs:?}");
    assert!(libs[0]["path"].text().contains("libsqlite3.so"), "{libs:?}");
    drop(shell);
    drop(python);
    for w in [a, c, x] {
        let _ = w.exit();
    }
}

/// The current build has no `<db>-walguard`: one that nobody holds is shown as left by an
/// earlier build (a note, healthy), and never counted as a sign of walguard.
fn lock_file_left_by_an_earlier_build() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 1");
    let lock_file = common_sidecar(&db, "-walguard");
    let r = doctor_json(&db, 0);
    assert!(
        !codes(&r, "note").contains(&"walguard-file-left".to_owned()),
        "no file, no note: {}",
        r.render_findings()
    );
    assert!(!lock_file.exists(), "plain unix creates no lock file");
    fs::write(&lock_file, b"").expect("create a leftover lock file");
    let r = doctor_json(&db, 0);
    let f = finding(&r, "walguard-file-left");
    assert_eq!(f["severity"].text(), "note");
    let file = r["files"]
        .items()
        .iter()
        .find(|f| f["role"].text() == "-walguard")
        .expect("the -walguard file is listed");
    assert_eq!(
        file["note"].text(),
        "left by an earlier walguard build, unused by this one"
    );
    assert_eq!(process(&r, a.pid())["walguard"].text(), "linked");
    let text = doctor(&["doctor", &s(&db)]);
    assert!(
        text.stdout
            .contains("— left by an earlier walguard build, unused by this one"),
        "{}",
        text.stdout
    );
    let _ = a.exit();
}

/// The header-peek reproduction of vfs-tests/tests/split_index.rs (PeekExclusiveOpener):
/// A loses its database lock to a peek, B (locking_mode=EXCLUSIVE) gets the database to
/// itself, writes, and at close checkpoints and deletes the -wal A still has open.
fn split_index_names_the_process_holding_the_deleted_wal() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 3");
    ok(&mut a, "peek");
    let mut b = spawn(Vfs::Unix, &db, "B");
    ok(
        &mut b,
        "exec PRAGMA busy_timeout=300; PRAGMA locking_mode=EXCLUSIVE;",
    );
    ok(&mut b, "write 3");
    ok(&mut b, "close");
    b.exit().expect("B exits");
    assert_eq!(
        ok(&mut a, "deleted-sidecars").split_whitespace().next(),
        Some("1"),
        "the reproduction: A must now hold a deleted -wal"
    );

    let r = doctor_json(&db, 2);
    assert_eq!(r["status"].text(), "damage");
    let f = finding(&r, "deleted-sidecar");
    assert_eq!(f["severity"].text(), "damage");
    assert_eq!(pids_of(f), vec![a.pid()], "{}", f["message"].text());
    assert!(
        f["message"].text().contains("deleted -wal"),
        "{}",
        f["message"].text()
    );
    assert!(
        f["action"].text().contains("restart it"),
        "{}",
        f["action"].text()
    );
    // The peek dropped A's database lock: the doctor sees that too.
    let lost = finding(&r, "lost-locks");
    assert_eq!(pids_of(lost), vec![a.pid()]);
    let p = process(&r, a.pid());
    assert!(p["files"]
        .items()
        .iter()
        .any(|f| f["role"].text() == "-wal" && f["deleted"] == Json::Bool(true)));

    // C opens a fresh -wal: the split is live; the doctor still names A first.
    let mut c = spawn(Vfs::Unix, &db, "C");
    let _ = c.request("write 3").expect("C answers");
    let r = doctor_json(&db, 2);
    let first = &r["findings"].items()[0];
    assert_eq!(
        first["code"].text(),
        "deleted-sidecar",
        "{}",
        r.render_findings()
    );
    assert_eq!(pids_of(first), vec![a.pid()]);
    let text = doctor(&["doctor", &s(&db)]);
    assert_eq!(text.status, 2);
    assert!(
        text.stdout.contains(&format!("process {} (", a.pid()))
            && text.stdout.contains("holds a deleted -wal"),
        "{}",
        text.stdout
    );
    let _ = c.exit();
    let _ = a.exit();
}

fn torn_extend_is_damage() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA page_size=4096; CREATE TABLE t(x BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<10)
             INSERT INTO t SELECT randomblob(3000) FROM c;",
        )
        .expect("fill");
    }
    let pages = fs::metadata(&db).expect("stat").len() / 4096;
    assert!(pages >= 10, "{pages} pages");
    let r = doctor_json(&db, 0);
    assert_eq!(r["header"]["page_count"].num(), pages as f64);
    // Lose the last half of the file, as a crash with a lying fsync would.
    let keep = pages / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(keep * 4096))
        .expect("truncate");
    let r = doctor_json(&db, 2);
    let f = finding(&r, "torn-extend");
    let m = f["message"].text();
    assert!(
        m.contains(&format!("counts {pages} pages")) && m.contains(&format!("holds only {keep}")),
        "{m}"
    );
    assert_eq!(r["header"]["journal_mode"].text(), "rollback");
}

fn bad_frame_checksum_after_the_last_commit() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "exec PRAGMA wal_autocheckpoint=0;");
    ok(&mut a, "write 4");
    // A crash: the -wal and -shm stay as they are.
    a.kill().expect("kill A");
    let wal = common_sidecar(&db, "-wal");
    let r = doctor_json(&db, 0);
    let last = r["wal"]["last_commit_frame"].num() as u64;
    let frames = r["wal"]["frames_in_file"].num() as u64;
    assert_eq!(last, frames, "every frame committed");
    let page = r["wal"]["header"]["page_size"].num() as u64;

    // Append a copy of the last frame, not a commit, with one page byte changed: its
    // salts are right, its checksum is not — an interrupted write after the last commit.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .expect("open -wal");
    let frame_len = 24 + page;
    let off = 32 + (frames - 1) * frame_len;
    let mut buf = vec![0u8; frame_len as usize];
    f.read_exact_at(&mut buf, off).expect("read last frame");
    buf[4..8].copy_from_slice(&0u32.to_be_bytes());
    buf[24 + 100] ^= 0x5a;
    f.write_all_at(&buf, off + frame_len).expect("append frame");
    drop(f);

    let r = doctor_json(&db, 1);
    assert_eq!(r["status"].text(), "warnings");
    assert_eq!(r["wal"]["last_commit_frame"].num() as u64, last);
    assert_eq!(r["wal"]["valid_frames"].num() as u64, last);
    assert_eq!(
        r["wal"]["first_invalid_frame"]["frame"].num() as u64,
        last + 1
    );
    assert!(r["wal"]["first_invalid_frame"]["problem"]
        .text()
        .contains("bad checksum"));
    let m = finding(&r, "wal-bad-frame")["message"].text().to_owned();
    assert!(
        m.contains(&format!("frame {}", last + 1))
            && m.contains(&format!("last valid commit, frame {last}"))
            && m.contains("nothing committed is lost"),
        "{m}"
    );
    assert!(
        codes(&r, "incomplete").is_empty(),
        "{}",
        r.render_findings()
    );
}

fn common_sidecar(db: &Path, suffix: &str) -> std::path::PathBuf {
    vfs_tests::disrupt::sidecar(db, suffix)
}

fn second_sqlite_library_in_one_process() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 2");
    // B keeps the database so that A's second runtime is not the last one to close.
    let mut b = spawn(Vfs::Unix, &db, "B");
    ok(&mut b, "write 1");
    let second = ok(&mut a, "second-runtime");
    let second_version = second
        .split_whitespace()
        .next()
        .expect("version")
        .to_owned();

    let r = doctor_json(&db, 1);
    let f = finding(&r, "two-sqlite-libraries");
    assert_eq!(pids_of(f), vec![a.pid()]);
    let p = process(&r, a.pid());
    let libs = p["sqlite_libraries"].items();
    assert_eq!(libs.len(), 2, "{libs:?}");
    assert!(
        libs.iter()
            .any(|l| l["path"].text().contains("libsqlite3.so")
                && l["version"].text() == second_version),
        "{libs:?}"
    );
    assert!(
        libs.iter()
            .any(|l| l["version"].text() == rusqlite::version()),
        "{libs:?}"
    );
    // B maps one library only.
    assert_eq!(process(&r, b.pid())["sqlite_libraries"].items().len(), 1);
    // The close in A's second runtime dropped A's POSIX locks.
    assert_eq!(pids_of(finding(&r, "lost-locks")), vec![a.pid()]);
    let buggy = vfs_tests_version_has_bug(&second_version);
    assert_eq!(
        codes(&r, "warning").contains(&"wal-reset-bug".to_owned()),
        buggy
    );
    assert!(
        codes(&r, "incomplete").is_empty(),
        "{}",
        r.render_findings()
    );
    let _ = a.exit();
    let _ = b.exit();
}

/// The WAL-reset bug range, restated here so the test does not trust the code it tests.
fn vfs_tests_version_has_bug(v: &str) -> bool {
    let p: Vec<u32> = v.split('.').filter_map(|x| x.parse().ok()).collect();
    let (b, c) = (p[1], p.get(2).copied().unwrap_or(0));
    p[0] == 3
        && (7, 0) <= (b, c)
        && (b, c) <= (51, 2)
        && !(b == 44 && c >= 6)
        && !(b == 50 && c >= 7)
}

fn rollback_database_with_a_hot_journal() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    ok(&mut a, "write 1");
    // A transaction too big for a one-page cache: SQLite syncs the journal and starts
    // overwriting the database before the commit.
    ok(
        &mut a,
        "exec PRAGMA cache_size=1; BEGIN; INSERT INTO t(tag, payload) \
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300) \
         SELECT 'big', randomblob(2000) FROM c;",
    );
    let journal = common_sidecar(&db, "-journal");
    assert!(journal.exists(), "the transaction has a journal");

    // While A lives, its transaction holds the write lock: the journal is live.
    let r = doctor_json(&db, 0);
    assert_eq!(r["header"]["journal_mode"].text(), "rollback");
    assert_eq!(pids_of(finding(&r, "journal-live")), vec![a.pid()]);

    a.kill().expect("kill A mid-transaction");
    let before = fs::read(&journal).expect("read journal");
    let r = doctor_json(&db, 1);
    let f = finding(&r, "hot-journal");
    assert_eq!(f["severity"].text(), "warning");
    assert!(
        f["message"].text().contains("hot journal"),
        "{}",
        f["message"].text()
    );
    assert!(
        f["action"].text().contains("do not delete"),
        "{}",
        f["action"].text()
    );
    assert_eq!(r["journal"]["magic_ok"], Json::Bool(true));
    // The doctor did not roll it back (SQLite would have).
    assert_eq!(fs::read(&journal).expect("journal still there"), before);
    // And SQLite does roll it back: the big transaction is gone, the first row stays.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1);
}

/// A bundled SQLite in an executable without symbols is still found (by the SQLite
/// format string and the source id); its version cannot be read, and the doctor says so
/// instead of guessing.
fn stripped_executable_with_bundled_sqlite() {
    let dir = common::tempdir();
    let exe = stripped_copy(dir.path());
    let db = dir.path().join("app.db");
    let mut a =
        vfs_tests::worker::Worker::spawn(&exe, Vfs::Unix, &db, "A").expect("spawn stripped worker");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 1");
    let r = doctor_json(&db, 0);
    let libs = process(&r, a.pid())["sqlite_libraries"].items().to_vec();
    assert_eq!(libs.len(), 1, "{libs:?}");
    assert!(
        libs[0]["path"].text().ends_with("stripped-worker"),
        "{libs:?}"
    );
    assert!(libs[0]["version"].is_null(), "{libs:?}");
    assert!(
        libs[0]["wal_reset_bug"].is_null(),
        "unknown, not guessed: {libs:?}"
    );
    assert!(libs[0]["source_id"].text().starts_with("20"), "{libs:?}");
    assert_eq!(
        pids_of(finding(&r, "sqlite-version-unknown")),
        vec![a.pid()]
    );
    let _ = a.exit();
}

fn doctor_changes_no_byte_and_no_lock() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "writer");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 5");
    let mut b = spawn(Vfs::Unix, &db, "reader");
    // A read transaction (holds a WAL read mark) and an open write transaction.
    ok(&mut b, "exec BEGIN; SELECT count(*) FROM t;");
    ok(
        &mut a,
        "exec BEGIN IMMEDIATE; INSERT INTO t(tag) VALUES ('pending');",
    );

    let files_before = common::snapshot(dir.path());
    let locks_before = common::locks_in(dir.path());
    assert!(
        !common::locks_of(&locks_before, a.pid()).is_empty()
            && !common::locks_of(&locks_before, b.pid()).is_empty(),
        "both workers hold locks: {locks_before:?}"
    );

    let text = doctor(&["doctor", &s(&db)]);
    assert_eq!(text.status, 0, "{}{}", text.stdout, text.stderr);
    let r = doctor_json(&db, 0);
    let watch = doctor(&["doctor", "--watch", "0.05", "--count", "3", &s(&db)]);
    assert_eq!(watch.status, 0, "{}", watch.stderr);

    assert_eq!(
        common::locks_in(dir.path()),
        locks_before,
        "the doctor changed a lock"
    );
    assert_eq!(
        common::snapshot(dir.path()),
        files_before,
        "the doctor changed a file"
    );

    // And it saw what it did not disturb: the writer's WAL WRITE lock, the reader's mark.
    let wl = lock_names(process(&r, a.pid()));
    assert!(wl.iter().any(|l| l.starts_with("-shm WAL WRITE")), "{wl:?}");
    let rl = lock_names(process(&r, b.pid()));
    assert!(rl.iter().any(|l| l.starts_with("-shm READ-")), "{rl:?}");
    ok(&mut a, "exec COMMIT;");
    ok(&mut b, "exec COMMIT;");
    let _ = a.exit();
    let _ = b.exit();
}

/// Under strace: no write to anything but stdout/stderr, no lock, no mapping of the
/// database's files, no open for writing or creating.
fn doctor_makes_only_read_only_system_calls() {
    let Some(strace) = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!(
            "strace is needed for this test: apt-get install -y strace (scripts/test installs it)"
        );
    };
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Walguard, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 3");
    let log = dir
        .path()
        .join("..")
        .join(format!("doctor-strace-{}.log", std::process::id()));
    let out = Command::new(strace)
        .args(["-f", "-y", "-qq", "-e", "trace=%file,%desc,%memory", "-o"])
        .arg(&log)
        .arg(common::doctor_exe())
        .args(["doctor", "--json"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run strace");
    let trace = fs::read_to_string(&log).expect("read the strace log");
    let _ = fs::remove_file(&log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dbname = s(&db);
    let mut opened = 0;
    for line in trace.lines() {
        let call = line.split_once(' ').map_or(line, |(_, c)| c.trim_start());
        let mentions = call.contains(&dbname);
        if call.starts_with("openat(") && mentions {
            opened += 1;
            for bad in ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"] {
                assert!(!call.contains(bad), "opened for writing: {call}");
            }
        }
        for verb in ["write(", "pwrite64(", "writev(", "pwritev("] {
            if call.starts_with(verb) {
                assert!(
                    call.starts_with(&format!("{verb}1<"))
                        || call.starts_with(&format!("{verb}2<")),
                    "wrote to something else than stdout/stderr: {call}"
                );
            }
        }
        if call.starts_with("fcntl(") {
            for cmd in [
                "F_SETLK",
                "F_SETLKW",
                "F_OFD_SETLK",
                "F_OFD_SETLKW",
                "F_GETLK",
                "F_OFD_GETLK",
            ] {
                assert!(!call.contains(cmd), "took or probed a lock: {call}");
            }
        }
        for verb in [
            "flock(",
            "ftruncate(",
            "truncate(",
            "unlink",
            "rename",
            "fchmod",
            "chmod(",
            "fchown",
            "utimensat(",
            "mkdir",
            "symlink",
            "link(",
        ] {
            assert!(
                !(call.starts_with(verb) && mentions),
                "modified a file: {call}"
            );
        }
        if call.starts_with("mmap(") {
            assert!(!mentions, "mapped one of the database's files: {call}");
        }
    }
    assert!(
        opened >= 3,
        "the doctor read the database, -wal and -shm: {opened} opens\n{trace}"
    );
    let _ = a.exit();
}

fn watch_prints_only_changes() {
    let dir = common::tempdir();
    let db = dir.path().join("app.db");
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 1");

    // Nothing changes: one report, then silence.
    let quiet = doctor(&[
        "doctor",
        "--json",
        "--watch",
        "0.05",
        "--count",
        "4",
        &s(&db),
    ]);
    assert_eq!(quiet.status, 0);
    assert_eq!(quiet.stdout.lines().count(), 1, "{}", quiet.stdout);
    let quiet_text = doctor(&["doctor", "--watch", "0.05", "--count", "3", &s(&db)]);
    assert!(
        !quiet_text.stdout.contains("\n--- "),
        "{}",
        quiet_text.stdout
    );

    // A change: a new report line follows the commit.
    let mut child = Command::new(common::doctor_exe())
        .args(["doctor", "--json", "--watch", "0.1"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the doctor");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no report line for {what} within 120 s"))
    };
    let first = Json::parse(&next("the first report")).expect("JSON");
    let frames = first["wal"]["valid_frames"].num();
    ok(&mut a, "write 1");
    let second = Json::parse(&next("the change")).expect("JSON");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        second["wal"]["valid_frames"].num() > frames,
        "{frames} -> {}",
        second["wal"]["valid_frames"].num()
    );
    let _ = a.exit();
}
