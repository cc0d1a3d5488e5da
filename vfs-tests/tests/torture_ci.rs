//! Issue 5: the README's main command (`vfs-tests torture`), CI-sized.
//!
//! - [`ci_run_walguard_clean_and_unix_fails`]: `torture --duration 30 --vfs both --json`
//!   (about a minute): walguard's run must be clean (nothing lost, `integrity_check` ok,
//!   no NOTADB, no split sidecar, no crash, no SQLITE_CORRUPT, every acknowledged commit
//!   visible to readers, no forked child crashed or hung) and the unix run must show at
//!   least one failure — the proof that the campaign can fail. Every disruptor in the
//!   default rotation ran, the fork disruptor included (its children's commits are in
//!   the verified totals). Nothing may be left in the temporary directory.
//! - [`fork_only_unix_clean_walguard_clean`]: the fork disruptor alone (`--disable all
//!   --enable fork`, 10 s per VFS): workers fork children that commit through their own
//!   connections, half of them after closing the inherited one. Plain unix loses nothing
//!   here (the baseline: the pattern is legitimate), so walguard must not either.
//! - [`interrupt_leaves_no_worker_behind`]: SIGINT and SIGTERM to the parent kill every
//!   worker and remove the temporary directory.
//! - [`workers_die_with_a_killed_parent`]: SIGKILL of the parent (no chance to clean up)
//!   still takes every worker with it (`PR_SET_PDEATHSIG`).
//!
//! The tests take turns (the machine has two cores).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::exe;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `torture` parent with `TMPDIR` pointing into `tmp` (so anything it leaves behind
/// is visible) and its output drained by threads.
struct Parent {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn start(tmp: &Path, args: &[&str]) -> Parent {
    let mut child = Command::new(exe())
        .arg("torture")
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} torture: {e}", exe().display()));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr piped")));
    Parent {
        child,
        stdout,
        stderr,
    }
}

impl Parent {
    /// Waits (bounded) and returns (exit code or -signal, stdout, stderr).
    fn finish(mut self, limit: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("torture did not finish within {limit:?}");
                }
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| -status.signal().unwrap_or(0));
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        (code, out, err)
    }
}

/// `(pid, ppid, cmdline)` of every process visible in `/proc`.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces; split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, cmd));
    }
    out
}

/// Worker processes of this test: `torture-worker` with a path under `tmp`.
fn workers_of(tmp: &Path) -> Vec<u32> {
    let tag = tmp.to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(_, _, cmd)| cmd.contains("torture-worker") && cmd.contains(&tag))
        .map(|(pid, _, _)| pid)
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but is gone for every practical purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Waits until `n` workers of this test run, returns their pids.
fn wait_for_workers(tmp: &Path, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = workers_of(tmp);
        if w.len() >= n {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "only {} torture workers started within 60 s",
            w.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_all_gone(pids: &[u32], tmp: &Path, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        let more = workers_of(tmp);
        if left.is_empty() && more.iter().all(|p| !alive(*p)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: workers still running after {within:?}: {left:?} {more:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The flat JSON object of the run of `vfs` in the `--json` output.
fn run_object<'a>(json: &'a str, vfs: &str) -> &'a str {
    let key = format!("{{\"vfs\":\"{vfs}\"");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {vfs} run in the JSON output: {json}"));
    let rest = &json[start..];
    let end = rest[1..].find("{\"vfs\":").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// The raw value of a top-level scalar field (`"name":VALUE`).
fn field<'a>(obj: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let start = obj
        .find(&key)
        .unwrap_or_else(|| panic!("no field {name:?} in {obj}"))
        + key.len();
    let rest = &obj[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

fn num(obj: &str, name: &str) -> u64 {
    let v = field(obj, name);
    v.parse()
        .unwrap_or_else(|_| panic!("field {name} is not a number: {v:?}"))
}

#[test]
fn ci_run_walguard_clean_and_unix_fails() {
    let _turn = serial();
    let tmp = common::tempdir();
    let started = Instant::now();
    let parent = start(tmp.path(), &["--duration", "30", "--vfs", "both", "--json"]);
    let (code, out, err) = parent.finish(Duration::from_secs(600));
    eprintln!("torture CI run took {:.0?}\n{err}", started.elapsed());
    assert!(
        code == 0 || code == 1,
        "torture exited {code} (harness error?)\nstderr: {err}\nstdout: {out}"
    );
    let unix = run_object(&out, "unix");
    let wg = run_object(&out, "walguard");

    // The proof that the campaign can fail: the same campaign breaks plain unix.
    assert_eq!(
        field(unix, "failed"),
        "true",
        "the unix run showed no failure: the campaign is too weak\n{unix}"
    );

    // walguard: every guarantee held.
    assert!(num(wg, "acked") > 0, "walguard acknowledged nothing\n{wg}");
    assert!(num(wg, "faults") > 0, "no fault was injected\n{wg}");
    let report = format!("{wg}\nstderr: {err}");
    assert_eq!(
        num(wg, "lost"),
        0,
        "walguard lost acknowledged commits\n{report}"
    );
    assert_eq!(
        field(wg, "integrity_ok"),
        "true",
        "integrity_check\n{report}"
    );
    assert_eq!(num(wg, "notadb"), 0, "NOTADB on a good file\n{report}");
    assert_eq!(num(wg, "split"), 0, "split sidecars\n{report}");
    assert_eq!(num(wg, "corrupt"), 0, "SQLITE_CORRUPT seen\n{report}");
    assert_eq!(
        num(wg, "live_missing"),
        0,
        "acked commits invisible\n{report}"
    );
    assert_eq!(
        num(wg, "hash_mismatch"),
        0,
        "rows with wrong contents\n{report}"
    );
    assert_eq!(num(wg, "crashes"), 0, "workers crashed\n{report}");
    assert_eq!(
        num(wg, "fork_crashes"),
        0,
        "forked children crashed or hung\n{report}"
    );
    for (name, run) in [("unix", unix), ("walguard", wg)] {
        for counter in [
            "peek",
            "fchmod",
            "second_runtime",
            "fork_children",
            "excl_tried",
        ] {
            assert!(
                num(run, counter) > 0,
                "{name}: disruptor counter {counter} is 0: it did not run\n{run}"
            );
        }
    }
    assert!(
        num(wg, "fork_acked") > 0,
        "walguard: no forked child committed anything\n{report}"
    );
    assert_eq!(field(wg, "failed"), "false", "{report}");
    assert_eq!(
        code, 0,
        "exit status must be 0 when walguard is clean\n{report}"
    );

    // Nothing escapes the temporary directory.
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
    assert!(workers_of(tmp.path()).is_empty());
}

#[test]
fn fork_only_unix_clean_walguard_clean() {
    let _turn = serial();
    let tmp = common::tempdir();
    let parent = start(
        tmp.path(),
        &[
            "--duration",
            "10",
            "--vfs",
            "both",
            "--json",
            "--disable",
            "all",
            "--enable",
            "fork",
        ],
    );
    let (code, out, err) = parent.finish(Duration::from_secs(300));
    assert!(
        code == 0 || code == 1,
        "torture exited {code} (harness error?)\nstderr: {err}\nstdout: {out}"
    );
    for vfs in ["unix", "walguard"] {
        let run = run_object(&out, vfs);
        let report = format!("{vfs} run with only the fork disruptor:\n{run}\nstderr: {err}");
        eprintln!(
            "{vfs}: {} acknowledged, {} lost, integrity_ok {}, {} forked children ({} closing \
             the inherited connection first), {} transactions acked by them, {} crashed or hung",
            num(run, "acked"),
            num(run, "lost"),
            field(run, "integrity_ok"),
            num(run, "fork_children"),
            num(run, "fork_closed_inherited"),
            num(run, "fork_acked"),
            num(run, "fork_crashes")
        );
        assert!(
            num(run, "fork_children") > 0,
            "no child was forked\n{report}"
        );
        assert!(
            num(run, "fork_closed_inherited") > 0,
            "no child closed its inherited connection\n{report}"
        );
        assert!(
            num(run, "fork_acked") > 0,
            "no forked child committed anything\n{report}"
        );
        assert_eq!(num(run, "lost"), 0, "acknowledged commits lost\n{report}");
        assert_eq!(
            field(run, "integrity_ok"),
            "true",
            "integrity_check\n{report}"
        );
        assert_eq!(num(run, "notadb"), 0, "NOTADB\n{report}");
        assert_eq!(num(run, "corrupt"), 0, "SQLITE_CORRUPT\n{report}");
        assert_eq!(
            num(run, "live_missing"),
            0,
            "acked commits invisible\n{report}"
        );
        assert_eq!(num(run, "hash_mismatch"), 0, "wrong contents\n{report}");
        assert_eq!(num(run, "split"), 0, "split sidecars\n{report}");
        assert_eq!(num(run, "crashes"), 0, "workers crashed\n{report}");
        assert_eq!(
            num(run, "fork_crashes"),
            0,
            "forked children crashed\n{report}"
        );
        assert_eq!(field(run, "failed"), "false", "{report}");
    }
    assert_eq!(code, 0, "exit status must be 0 when walguard is clean");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
    assert!(workers_of(tmp.path()).is_empty());
}

#[test]
fn interrupt_leaves_no_worker_behind() {
    let _turn = serial();
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let tmp = common::tempdir();
        let parent = start(
            tmp.path(),
            &["--duration", "120", "--vfs", "walguard", "--processes", "6"],
        );
        let workers = wait_for_workers(tmp.path(), 6);
        std::thread::sleep(Duration::from_millis(1500));
        let pid = parent.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {name}");
        let (code, _out, err) = parent.finish(Duration::from_secs(60));
        assert_eq!(code, 128 + sig, "{name}: exit status\nstderr: {err}");
        assert!(err.contains("interrupted"), "{name}: {err}");
        assert_all_gone(&workers, tmp.path(), Duration::from_secs(5), name);
        assert_eq!(
            leftovers(tmp.path()),
            Vec::<String>::new(),
            "{name}: files left behind"
        );
    }
}

#[test]
fn workers_die_with_a_killed_parent() {
    let _turn = serial();
    let tmp = common::tempdir();
    let parent = start(
        tmp.path(),
        &["--duration", "120", "--vfs", "unix", "--processes", "4"],
    );
    let workers = wait_for_workers(tmp.path(), 4);
    let pid = parent.child.id() as libc::pid_t;
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (code, _, _) = parent.finish(Duration::from_secs(30));
    assert_eq!(code, -libc::SIGKILL);
    assert_all_gone(&workers, tmp.path(), Duration::from_secs(10), "SIGKILL");
}
