//! Issue 10, fork(): a pre-forking server (gunicorn `--preload`, Celery prefork,
//! `multiprocessing` with the fork start method) must lose nothing through walguard where
//! the plain unix VFS loses nothing.
//!
//! The pattern, in both tests: a parent opens a WAL database and keeps two connections
//! (one idle, one that has read), then forks 4 children. Odd children first close the
//! two connections they inherited (SQLite forbids *using* an inherited connection;
//! closing one happens in real code, explicitly or through a garbage collector), even
//! children leave them untouched. Every child inserts rows through a connection of its
//! own, one transaction each; child 1 forks a grandchild half-way that closes what it
//! inherited and inserts rows too. Children leave without clean-up (`os._exit`,
//! `_exit`). The parent then commits one row through each of its two connections and
//! checks: every acknowledged row present, `integrity_check` ok on a held and on a fresh
//! connection, no descriptor on a deleted `-wal`/`-shm`, no child failed.
//!
//! - [`python_os_fork`]: Debian's `/usr/bin/python3` with `libwalguard.so` loaded as the
//!   default VFS (`vfs-tests/py/fork_writers.py`), and the same script without it.
//! - [`rust_libc_fork`]: `libc::fork` in `vfs-tests worker fork-writers` (a separate
//!   process without threads of its own besides walguard's watcher: never fork the
//!   multi-threaded test harness), walguard registered with `walguard::register`, and
//!   the same on plain unix.
//!
//! - [`child_of_a_connection_on_a_replaced_shm`]: deterministic. The parent's
//!   connection maps a `-shm` that is removed (and re-created by another process that
//!   commits) before the fork; a child that leaves the inherited connection alone and
//!   opens its own reuses SQLite's inherited mapping of the removed `-shm`. Plain unix
//!   loses the other process's commits (the baseline); walguard must not (G4).
//!
//! Each test runs the unix baseline first (it must be clean: otherwise the scenario, not
//! walguard, is broken), then walguard, several repetitions each. The two tests take
//! turns.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use vfs_tests::extension::{extension_path, python_command, run_with_timeout, RunOutput};

/// Children per repetition (plus child 1's grandchild).
const CHILDREN: usize = 4;
/// Rows each child and the grandchild insert.
const ROWS: u64 = 2000;
/// Repetitions per VFS.
const REPS: usize = 6;
/// A guard against hangs, not a performance assertion.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `rep=N clean=...` line.
#[derive(Debug)]
struct Rep {
    line: String,
    clean: bool,
    rows: i64,
    expected: u64,
    intended: u64,
    lost: u64,
    integrity_ok: bool,
    deleted: u64,
    failed: u64,
    errors: String,
}

fn parse_rep(line: &str) -> Option<Rep> {
    if !line.starts_with("rep=") {
        return None;
    }
    // `errors=` comes last and may contain spaces.
    let (head, errors) = line.split_once(" errors=").unwrap_or((line, "-"));
    let kv = vfs_tests::extension::parse_kv(&head.replace(' ', "\n"));
    let n = |k: &str| kv.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(Rep {
        line: line.to_owned(),
        clean: n("clean")? == 1,
        rows: n("rows")?,
        expected: n("expected")? as u64,
        intended: n("intended")? as u64,
        lost: n("lost")? as u64,
        integrity_ok: kv.get("integrity")? == "ok",
        deleted: n("deleted")? as u64,
        failed: n("failed")? as u64,
        errors: errors.to_owned(),
    })
}

/// What one VFS's run showed.
struct Outcome {
    vfs: &'static str,
    out: RunOutput,
    reps: Vec<Rep>,
}

impl Outcome {
    fn new(vfs: &'static str, out: RunOutput) -> Outcome {
        let reps = out.stdout.lines().filter_map(parse_rep).collect();
        Outcome { vfs, out, reps }
    }

    /// Panics unless the run finished and printed every repetition.
    fn assert_complete(&self, what: &str) {
        assert!(
            self.out.success(),
            "{what} ({}) did not finish cleanly:\n{}",
            self.vfs,
            self.out
        );
        assert_eq!(
            self.reps.len(),
            REPS,
            "{what} ({}) printed {} repetition lines, not {REPS}:\n{}",
            self.vfs,
            self.reps.len(),
            self.out
        );
    }

    fn clean_reps(&self) -> usize {
        self.reps.iter().filter(|r| r.clean).count()
    }

    /// `clean 1 of 4; rows lost 0; integrity failed 0; children failed 0; deleted 0`,
    /// then the repetition lines.
    fn figures(&self) -> String {
        let lost: u64 = self.reps.iter().map(|r| r.lost).sum();
        let expected: u64 = self.reps.iter().map(|r| r.expected).sum();
        let unacked: u64 = self
            .reps
            .iter()
            .map(|r| r.intended.saturating_sub(r.expected))
            .sum();
        let bad_integrity = self.reps.iter().filter(|r| !r.integrity_ok).count();
        let failed: u64 = self.reps.iter().map(|r| r.failed).sum();
        let deleted: u64 = self.reps.iter().map(|r| r.deleted).sum();
        let with_errors = self.reps.iter().filter(|r| r.errors != "-").count();
        let mut s = format!(
            "{}: {} of {} repetitions clean; acknowledged rows lost {lost} of {expected}; \
             rows never acknowledged (writer stopped on an error) {unacked}; integrity_check \
             failed in {bad_integrity}; children failed {failed}; repetitions with errors \
             {with_errors}; descriptors on deleted sidecars {deleted}\n",
            self.vfs,
            self.clean_reps(),
            self.reps.len()
        );
        for r in &self.reps {
            s.push_str("  ");
            s.push_str(&r.line);
            s.push('\n');
        }
        s
    }
}

fn check(what: &str, unix: &Outcome, walguard: &Outcome) {
    eprintln!("{what}\n{}{}", unix.figures(), walguard.figures());
    unix.assert_complete(what);
    for r in &unix.reps {
        assert!(r.rows >= 0, "{what}: unreadable table on unix: {}", r.line);
    }
    assert_eq!(
        unix.clean_reps(),
        REPS,
        "{what}: the plain unix baseline is not clean, so the scenario itself is broken:\n{}",
        unix.figures()
    );
    walguard.assert_complete(what);
    assert_eq!(
        walguard.clean_reps(),
        REPS,
        "{what}: walguard lost data or failed where plain unix did not:\n{}\n{}",
        walguard.figures(),
        unix.figures()
    );
}

fn python(mode: &str, ext: &Path, dir: &Path) -> RunOutput {
    let children = CHILDREN.to_string();
    let rows = ROWS.to_string();
    let reps = REPS.to_string();
    let args: [&OsStr; 5] = [
        OsStr::new(mode),
        ext.as_os_str(),
        OsStr::new(&children),
        OsStr::new(&rows),
        OsStr::new(&reps),
    ];
    run_with_timeout(
        python_command("fork_writers.py", &args, dir),
        None,
        RUN_TIMEOUT,
    )
}

#[test]
fn python_os_fork() {
    let _turn = serial();
    let ext = extension_path();
    let (du, dw) = (common::tempdir(), common::tempdir());
    let unix = Outcome::new("unix", python("unix", Path::new("-"), du.path()));
    let walguard = Outcome::new("walguard", python("walguard", &ext, dw.path()));
    assert!(
        walguard.out.stdout.contains("mode=walguard"),
        "fork_writers.py did not load the extension:\n{}",
        walguard.out
    );
    check("Python os.fork (fork_writers.py)", &unix, &walguard);
}

fn rust(vfs: &str, dir: &Path) -> RunOutput {
    let mut cmd = Command::new(common::exe());
    cmd.args(["worker", "fork-writers", "--vfs", vfs, "--dir"])
        .arg(dir)
        .args(["--children", &CHILDREN.to_string()])
        .args(["--rows", &ROWS.to_string()])
        .args(["--reps", &REPS.to_string()]);
    run_with_timeout(cmd, None, RUN_TIMEOUT)
}

#[test]
fn rust_libc_fork() {
    let _turn = serial();
    let (du, dw) = (common::tempdir(), common::tempdir());
    let unix = Outcome::new("unix", rust("unix", du.path()));
    let walguard = Outcome::new("walguard", rust("walguard", dw.path()));
    check(
        "Rust libc::fork (vfs-tests worker fork-writers)",
        &unix,
        &walguard,
    );
}

#[test]
fn repetition_lines_parse() {
    let r = parse_rep(
        "rep=2 clean=0 rows=4002 expected=4005 intended=5002 lost=3 integrity=ok deleted=0 \
         failed=1 errors=child2 row 3: code 11: database disk image is malformed",
    )
    .expect("parses");
    assert!(!r.clean);
    assert_eq!(
        (r.rows, r.expected, r.intended, r.lost),
        (4002, 4005, 5002, 3)
    );
    assert!(r.integrity_ok);
    assert_eq!((r.deleted, r.failed), (0, 1));
    assert_eq!(
        r.errors,
        "child2 row 3: code 11: database disk image is malformed"
    );
    assert!(parse_rep("clean_reps=3").is_none());
    assert!(parse_rep("rep=1 clean=1").is_none());
}

/// One `vfs-tests worker fork-stale-shm` run: its `key=value` line.
fn stale_shm(vfs: &str, variant: &str) -> std::collections::BTreeMap<String, String> {
    let dir = common::tempdir();
    let mut cmd = Command::new(common::exe());
    cmd.args([
        "worker",
        "fork-stale-shm",
        "--vfs",
        vfs,
        "--variant",
        variant,
    ])
    .arg("--dir")
    .arg(dir.path());
    let out = run_with_timeout(cmd, None, RUN_TIMEOUT);
    out.assert_success(&format!("fork-stale-shm --vfs {vfs} --variant {variant}"));
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("variant="))
        .unwrap_or_else(|| panic!("no result line:\n{out}"));
    eprintln!("{vfs:>8}: {line}");
    vfs_tests::extension::parse_kv(&line.replace(' ', "\n"))
}

/// A child inherits a connection whose `-shm` was removed (an outside `rm`) before the
/// fork; another process has since created a new `-shm` and committed. A child that
/// leaves the inherited connection alone and opens one of its own gets SQLite's
/// inherited per-inode state, the removed `-shm` included: on plain unix it writes
/// through the stale WAL index over the other process's frames, and those acknowledged
/// commits are gone (the baseline). walguard must not write through a replaced `-shm`
/// (G4): the child's commits may fail, but nothing acknowledged may be lost. A child
/// that closes the inherited connection first is clean on both.
#[test]
fn child_of_a_connection_on_a_replaced_shm() {
    let _turn = serial();
    let unix = stale_shm("unix", "untouched");
    assert_ne!(
        unix["lost"], "0",
        "plain unix lost nothing: the scenario no longer shows the stale -shm"
    );
    let unix_closed = stale_shm("unix", "closed");
    assert_eq!(unix_closed["clean"], "1", "{unix_closed:?}");
    let mut failures = Vec::new();
    for variant in ["untouched", "closed"] {
        let wg = stale_shm("walguard", variant);
        if wg["clean"] != "1" {
            failures.push(format!(
                "walguard, child {variant} the inherited connection: {} acknowledged \
                 commits lost ({}), integrity {}, child error {}",
                wg["lost"], wg["missing"], wg["integrity"], wg["c_error"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(plain unix, inherited connection untouched: {} lost)",
        failures.join("\n"),
        unix["lost"]
    );
}
