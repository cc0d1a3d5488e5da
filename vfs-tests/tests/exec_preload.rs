//! `walguard exec` and its preload library: programs nobody changed, guarded (issue 18).
//!
//! The preload library and the `walguard` binary are built once per test binary beside
//! the extension (`vfs_tests::reach::built`); the fleet test also installs the wheel
//! into a venv of Debian's Python (for `WALGUARD_AUTO=1`). The tests check:
//!
//! - `walguard exec -- sqlite3 app.db "PRAGMA journal_mode=WAL" .vfsname` prints `wal` and
//!   `walguard` and nothing on stderr (plain: `wal`, `unix`); a shell that configures
//!   SQLite before its first open (`-mmap`, `-lookaside`) keeps its configuration;
//! - the same for a Python script that never imports walguard (this machine's pyenv
//!   `python3`, whose `_sqlite3` loads `libsqlite3` with `RTLD_LOCAL`, where `RTLD_NEXT`
//!   finds nothing), and for the children a program starts;
//! - a SQLite linked in statically is left alone: the `vfs-tests` binary (bundled SQLite)
//!   under exec never loads walguard's extension; apsw (SQLite inside its module, symbols
//!   hidden) keeps the unix VFS while the same process's `sqlite3` module is guarded;
//! - `walguard exec --check` tells a shared libsqlite3, a static one and none apart, and
//!   exec's errors say what to do;
//! - the preload library defines only the three functions it interposes and carries no
//!   SQLite;
//! - a mixed fleet of unmodified programs (a Python gateway that peeks at the header, the
//!   `sqlite3` shell run as a cron job, a Python command-line tool) loses rows or
//!   corrupts the database with guarding off, and is clean with `walguard exec` and
//!   `WALGUARD_AUTO=1`: both runs in one test.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use vfs_tests::disrupt;
use vfs_tests::extension::{
    nm_path, py_script, python3_path, run_with_timeout, sqlite3_shell_path, LineProcess, RunOutput,
    SCRIPT_TIMEOUT,
};
use vfs_tests::reach::{self, built, debian_venv, maps_file, tempdir, PyWorker, REPLY_TIMEOUT};
use vfs_tests::worker::{parse_rows, stat};

/// Runs `cmd` with WALGUARD_* / LD_PRELOAD of the test's own environment removed and
/// `env` added.
fn run(mut cmd: Command, env: &[(&str, &str)]) -> RunOutput {
    for k in [
        "WALGUARD_AUTO",
        "WALGUARD_EXTENSION",
        "WALGUARD_PRELOAD",
        "LD_PRELOAD",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, None, SCRIPT_TIMEOUT)
}

/// `program args...`, under `walguard exec --` when `guarded`.
fn program(guarded: bool, program: &Path, args: &[&OsStr], cwd: &Path) -> Command {
    let mut cmd = if guarded {
        let mut c = Command::new(&built().cli);
        c.arg("exec").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir(cwd);
    cmd
}

/// The Python without enable_load_extension (pyenv's), else Debian's: for exec either
/// reaches its SQLite the same way (an RTLD_LOCAL libsqlite3 behind `_sqlite3`).
fn gateway_python() -> PathBuf {
    reach::noload_python()
        .map(Path::to_path_buf)
        .unwrap_or_else(python3_path)
}

/// `-I -B vfs-tests/py/<script>` followed by `args`.
fn py_args(script: &str, args: &[&OsStr]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["-I".into(), "-B".into(), py_script(script).into()];
    v.extend(args.iter().map(|a| a.to_os_string()));
    v
}

fn as_refs(v: &[OsString]) -> Vec<&OsStr> {
    v.iter().map(OsString::as_os_str).collect()
}

// ---------------------------------------------------------------------------------------
// One program at a time

#[test]
fn exec_makes_the_sqlite3_shell_use_walguard_and_prints_nothing_else() {
    let shell = sqlite3_shell_path();
    let dir = tempdir();
    for (guarded, want) in [(false, "wal\nunix\n"), (true, "wal\nwalguard\n")] {
        let db = dir.path().join(format!("app-{guarded}.db"));
        let args = [
            db.as_os_str(),
            OsStr::new("PRAGMA journal_mode=WAL"),
            OsStr::new(".vfsname"),
        ];
        let out = run(program(guarded, &shell, &args, dir.path()), &[]);
        out.assert_success("sqlite3");
        assert_eq!(out.stdout, want, "guarded={guarded}:\n{out}");
        assert!(
            out.stderr.is_empty(),
            "guarded={guarded}: nothing on stderr:\n{out}"
        );
    }

    // The shell configures SQLite before its first open (-mmap: the default mmap size,
    // -lookaside): registration at the first open leaves that configuration in force.
    for guarded in [false, true] {
        let db = dir.path().join(format!("mmap-{guarded}.db"));
        let args = [
            OsStr::new("-mmap"),
            OsStr::new("65536"),
            OsStr::new("-lookaside"),
            OsStr::new("512"),
            OsStr::new("64"),
            db.as_os_str(),
            OsStr::new("PRAGMA mmap_size"),
            OsStr::new(".vfsname"),
        ];
        let out = run(program(guarded, &shell, &args, dir.path()), &[]);
        out.assert_success("sqlite3 -mmap");
        let vfs = if guarded { "walguard" } else { "unix" };
        assert_eq!(
            out.stdout,
            format!("65536\n{vfs}\n"),
            "guarded={guarded}:\n{out}"
        );
        assert!(out.stderr.is_empty(), "guarded={guarded}:\n{out}");
    }

    // The database really went through walguard: its counters, from the same shell.
    let db = dir.path().join("stats.db");
    let args = [
        db.as_os_str(),
        OsStr::new("PRAGMA journal_mode=WAL"),
        OsStr::new("CREATE TABLE t(x)"),
        OsStr::new("SELECT json_extract(walguard_stats(), '$.db_opened')"),
    ];
    let out = run(program(true, &shell, &args, dir.path()), &[]);
    out.assert_success("sqlite3 walguard_stats()");
    let opened: u64 = out
        .stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(opened >= 1, "db_opened after exec:\n{out}");
}

#[test]
fn exec_makes_a_python_script_that_never_imports_walguard_use_it() {
    let python = gateway_python();
    let dir = tempdir();
    for (guarded, want) in [(false, "wal\nunix\n"), (true, "wal\nwalguard\n")] {
        let db = dir.path().join(format!("vfs-{guarded}.db"));
        let args = py_args("unmodified.py", &[OsStr::new("vfs"), db.as_os_str()]);
        let out = run(program(guarded, &python, &as_refs(&args), dir.path()), &[]);
        out.assert_success(&format!("{} unmodified.py vfs", python.display()));
        assert_eq!(
            out.stdout,
            want,
            "guarded={guarded}, {}:\n{out}",
            python.display()
        );
        assert!(
            out.stderr.is_empty(),
            "guarded={guarded}: nothing on stderr:\n{out}"
        );

        let db = dir.path().join(format!("probe-{guarded}.db"));
        let args = py_args("unmodified.py", &[OsStr::new("probe"), db.as_os_str()]);
        let out = run(program(guarded, &python, &as_refs(&args), dir.path()), &[]);
        out.assert_success("unmodified.py probe");
        let kv = out.kv();
        let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
        // No Python hook runs either way: the script has no walguard package to import.
        assert_eq!(get("walguard_imported"), "0", "{out}");
        assert_eq!(get("finder"), "0", "{out}");
        let expect_mapped = if guarded { "1" } else { "0" };
        assert_eq!(get("preload_mapped"), expect_mapped, "{out}");
        assert_eq!(get("libwalguard_mapped"), expect_mapped, "{out}");
        if guarded {
            assert!(
                get("db_opened").parse::<i64>().is_ok_and(|n| n >= 1),
                "{out}"
            );
        }
    }
}

#[test]
fn every_program_exec_starts_is_guarded_too() {
    let python = gateway_python();
    let shell = sqlite3_shell_path();
    let dir = tempdir();
    let script = format!(
        "{shell} a.db 'PRAGMA journal_mode=WAL' .vfsname && {python} -I -B {script} vfs b.db",
        shell = shell.display(),
        python = python.display(),
        script = py_script("unmodified.py").display(),
    );
    let args = [OsStr::new("-c"), OsStr::new(&script)];
    let out = run(program(true, Path::new("/bin/sh"), &args, dir.path()), &[]);
    out.assert_success("sh -c under exec");
    assert_eq!(out.stdout, "wal\nwalguard\nwal\nwalguard\n", "{out}");
    assert!(out.stderr.is_empty(), "{out}");
}

#[test]
fn a_statically_linked_sqlite_is_left_alone() {
    let dir = tempdir();
    // The vfs-tests binary bundles SQLite: its calls never reach the preload library.
    let exe = Path::new(env!("CARGO_BIN_EXE_vfs-tests"));
    let db = dir.path().join("static.db");
    let args = [
        OsStr::new("worker"),
        OsStr::new("--vfs"),
        OsStr::new("unix"),
        OsStr::new("--db"),
        db.as_os_str(),
    ];
    let mut cmd = program(true, exe, &args, dir.path());
    cmd.env_remove("LD_PRELOAD");
    let mut w = LineProcess::spawn("static worker under exec", cmd);
    let reply = |w: &mut LineProcess, cmd: &str| {
        w.send(cmd);
        w.expect(REPLY_TIMEOUT, cmd, |l| {
            l.strip_prefix("ok").map(|p| p.trim().to_owned())
        })
    };
    let pid: u32 = reply(&mut w, "pid").parse().expect("a pid");
    assert_eq!(reply(&mut w, "wal"), "wal");
    assert_eq!(parse_rows(&reply(&mut w, "write 2")).len(), 2);
    let stats = reply(&mut w, "stats");
    assert!(
        maps_file(pid, "/libwalguard_preload.so"),
        "the preload library is loaded into the program"
    );
    assert!(
        !maps_file(pid, "/libwalguard.so"),
        "walguard's extension was loaded into a program whose SQLite is static"
    );
    assert_eq!(stat(&stats, "db_opened"), Some(0), "{stats}");
    w.send("exit");
    w.finish_ok(REPLY_TIMEOUT);

    // apsw links SQLite into its module with its symbols hidden: left alone, while the
    // same process's sqlite3 module (the shared libsqlite3) is guarded.
    let venv = debian_venv();
    let db = dir.path().join("apsw.db");
    let code = format!(
        "import apsw, sqlite3\n\
         a = apsw.Connection({db:?})\n\
         print(a.vfsname('main'))\n\
         s = sqlite3.connect({db:?})\n\
         s.execute('PRAGMA journal_mode=WAL')\n\
         print(s.execute('SELECT json_extract(walguard_stats(), \"$.db_opened\")').fetchone()[0])\n",
        db = db.display().to_string()
    );
    let args = [OsStr::new("-I"), OsStr::new("-c"), OsStr::new(&code)];
    let out = run(program(true, &venv.python, &args, dir.path()), &[]);
    out.assert_success("apsw and sqlite3 under exec");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"unix"), "apsw keeps its VFS:\n{out}");
    assert!(
        lines
            .get(1)
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|n| n >= 1),
        "the sqlite3 module is guarded:\n{out}"
    );
    assert!(out.stderr.is_empty(), "{out}");
}

// ---------------------------------------------------------------------------------------
// --check and errors

fn check(cmd: &OsStr) -> RunOutput {
    let mut c = Command::new(&built().cli);
    c.args([
        OsStr::new("exec"),
        OsStr::new("--check"),
        OsStr::new("--"),
        cmd,
    ]);
    run(c, &[])
}

#[test]
fn exec_check_tells_a_shared_a_static_and_no_sqlite_apart() {
    let shell = sqlite3_shell_path();
    let out = check(shell.as_os_str());
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out}");
    assert!(
        out.stdout.contains("sqlite: shared ") && out.stdout.contains("libsqlite3.so"),
        "{out}"
    );
    assert!(out.stdout.contains("verdict: guarded"), "{out}");
    let b = built();
    assert!(
        out.stdout
            .contains(&format!("preload: {}", b.preload.display())),
        "the binary finds the libraries next to itself:\n{out}"
    );

    // A Python: its sqlite3 module's library.
    let out = check(gateway_python().as_os_str());
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out}");
    assert!(
        out.stdout.contains("loaded by Python's sqlite3 module") && out.stdout.contains("_sqlite3"),
        "{out}"
    );

    // A script: its interpreter.
    let dir = tempdir();
    let script = dir.path().join("tool");
    std::fs::write(
        &script,
        format!("#!/usr/bin/env {}\nprint(1)\n", gateway_python().display()),
    )
    .expect("write the script");
    let out = check(script.as_os_str());
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out}");
    assert!(out.stdout.contains("interpreter: "), "{out}");

    // SQLite linked in statically.
    let exe = Path::new(env!("CARGO_BIN_EXE_vfs-tests"));
    let out = check(exe.as_os_str());
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(
        out.stdout.contains("sqlite: static ") && out.stdout.contains("verdict: not guarded"),
        "{out}"
    );

    // No SQLite at all.
    let out = check(OsStr::new("true"));
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.stdout.contains("sqlite: none found"), "{out}");

    let out = check(OsStr::new("no-such-program-walguard-test"));
    assert_eq!(out.status.and_then(|s| s.code()), Some(127), "{out}");
    assert!(out.stderr.contains("not found"), "{out}");
}

#[test]
fn exec_errors_name_what_is_wrong_and_what_to_do() {
    let cli = &built().cli;
    let mut c = Command::new(cli);
    c.args(["exec", "--", "no-such-program-walguard-test"]);
    let out = run(c, &[]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(127), "{out}");
    assert!(
        out.stderr.contains("no-such-program-walguard-test"),
        "{out}"
    );

    let mut c = Command::new(cli);
    c.args(["exec", "--", "true"]);
    let out = run(
        c,
        &[("WALGUARD_PRELOAD", "/nonexistent/libwalguard_preload.so")],
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(125), "{out}");
    assert!(
        out.stderr
            .contains("WALGUARD_PRELOAD=/nonexistent/libwalguard_preload.so"),
        "{out}"
    );

    let mut c = Command::new(cli);
    c.arg("exec");
    let out = run(c, &[]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(64), "{out}");
    assert!(out.stderr.contains("usage: walguard exec"), "{out}");

    // The command's own exit status comes back.
    let mut c = Command::new(cli);
    c.args(["exec", "--", "sh", "-c", "exit 7"]);
    let out = run(c, &[]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(7), "{out}");
}

#[test]
fn the_preload_library_defines_only_the_three_open_functions_and_no_sqlite() {
    let preload = &built().preload;
    let nm = |flags: &[&str]| -> Vec<String> {
        let mut cmd = Command::new(nm_path());
        cmd.args(flags).arg(preload);
        let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
        out.assert_success("nm");
        out.stdout
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect()
    };
    let is_sqlite = |n: &String| {
        n.starts_with("sqlite3_")
            || n.strip_prefix("sqlite3")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase())
    };
    let exported: BTreeSet<String> = nm(&["-D", "--defined-only"])
        .into_iter()
        .filter(is_sqlite)
        .collect();
    let want: BTreeSet<String> = ["sqlite3_open", "sqlite3_open16", "sqlite3_open_v2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(exported, want);
    // The full symbol table (the built file is not stripped): no SQLite inside.
    let inside: Vec<String> = nm(&["--defined-only"])
        .into_iter()
        .filter(is_sqlite)
        .filter(|n| !want.contains(n))
        .collect();
    assert!(
        inside.is_empty(),
        "SQLite inside the preload library: {inside:?}"
    );
    let imported: Vec<String> = nm(&["-D", "--undefined-only"])
        .into_iter()
        .filter(is_sqlite)
        .collect();
    assert!(
        imported.is_empty(),
        "the preload library imports {imported:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A mixed fleet of unmodified programs

/// What one fleet run saw.
#[derive(Debug, Default)]
struct Fleet {
    acked: Vec<(i64, String)>,
    errors: Vec<String>,
    missing: Vec<String>,
    integrity: String,
    deleted_held: Vec<disrupt::DeletedSidecar>,
    /// How walguard reached the gateway, and the VFS the cron job and the tool used.
    reached: Vec<String>,
    stderr: Vec<String>,
}

impl Fleet {
    fn damaged(&self) -> bool {
        !self.missing.is_empty() || self.integrity != "ok"
    }
}

const CYCLES: usize = 3;

/// A gateway (a long-lived Python process that peeks at the database header with
/// `open()/read()/close()`), the `sqlite3` shell run as a cron job, and a Python
/// command-line tool, interleaved: per cycle the gateway writes and peeks, the cron job
/// inserts, the gateway writes, the tool inserts, the gateway checkpoints. None of them
/// imports or loads walguard. `guarded`: the gateway and the cron job run under
/// `walguard exec`, the tool with `WALGUARD_AUTO=1` (the wheel is installed in its venv).
fn fleet(guarded: bool) -> Fleet {
    let dir = tempdir();
    let db = dir.path().join("fleet.db");
    let shell = sqlite3_shell_path();
    let tool_python = &debian_venv().python;
    let mut f = Fleet::default();

    let gw_args = py_args(
        "package_worker.py",
        &[OsStr::new("plain"), db.as_os_str(), OsStr::new("G")],
    );
    let mut gw_cmd = program(guarded, &gateway_python(), &as_refs(&gw_args), dir.path());
    for k in ["WALGUARD_AUTO", "WALGUARD_EXTENSION", "LD_PRELOAD"] {
        gw_cmd.env_remove(k);
    }
    let mut g = PyWorker::spawn(gw_cmd, "G");
    f.reached.push(format!("gateway: {}", g.reached_by));
    assert_eq!(g.ok("wal"), "wal");

    let g_step = |g: &mut PyWorker, cmd: &str, f: &mut Fleet| match g.request(cmd) {
        Ok(p) => {
            if cmd.starts_with("write") {
                f.acked.extend(parse_rows(&p));
            }
        }
        Err(e) => f.errors.push(e),
    };
    for cycle in 0..CYCLES {
        g_step(&mut g, "write 2", &mut f);
        g_step(&mut g, "peek", &mut f);

        // The cron job: one shell invocation.
        let tag = format!("cron-{cycle}");
        let insert = format!("INSERT INTO t(tag) VALUES ('{tag}')");
        let args = [
            db.as_os_str(),
            OsStr::new(".timeout 10000"),
            OsStr::new("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL)"),
            OsStr::new(&insert),
            OsStr::new("SELECT last_insert_rowid()"),
            OsStr::new(".vfsname"),
        ];
        let out = run(program(guarded, &shell, &args, dir.path()), &[]);
        let lines: Vec<&str> = out.stdout.lines().collect();
        match (
            out.success(),
            lines.first().and_then(|l| l.parse::<i64>().ok()),
        ) {
            (true, Some(id)) => f.acked.push((id, tag)),
            _ => f.errors.push(format!("cron {cycle}: {out}")),
        }
        f.reached
            .push(format!("cron {cycle}: {}", lines.get(1).unwrap_or(&"?")));
        if !out.stderr.is_empty() {
            f.stderr.push(format!("cron {cycle}: {}", out.stderr));
        }

        g_step(&mut g, "write 2", &mut f);

        // The command-line tool.
        let tag = format!("tool-{cycle}");
        let args = py_args(
            "unmodified.py",
            &[
                OsStr::new("insert"),
                db.as_os_str(),
                OsStr::new(&tag),
                OsStr::new("2"),
            ],
        );
        let env: &[(&str, &str)] = if guarded {
            &[("WALGUARD_AUTO", "1")]
        } else {
            &[]
        };
        let mut cmd = Command::new(tool_python);
        cmd.args(&args).current_dir(dir.path());
        let out = run(cmd, env);
        match out.stdout.lines().find_map(|l| l.strip_prefix("ok ")) {
            Some(acks) if out.success() => f.acked.extend(parse_rows(acks)),
            _ => f.errors.push(format!("tool {cycle}: {out}")),
        }
        f.reached
            .push(format!("tool {cycle}: {}", out.value("vfs")));
        if !out.stderr.is_empty() {
            f.stderr.push(format!("tool {cycle}: {}", out.stderr));
        }

        g_step(&mut g, "checkpoint", &mut f);
    }
    f.deleted_held = disrupt::scan_deleted_sidecars(&db);
    let g_stderr = g.stderr();
    if !g_stderr.is_empty() {
        f.stderr.push(format!("gateway: {g_stderr}"));
    }
    g.quit();

    // Everyone is gone: a plain reader looks at what is left.
    let args = [
        db.as_os_str(),
        OsStr::new("PRAGMA integrity_check"),
        OsStr::new("SELECT 'row=' || id || ':' || tag FROM t ORDER BY id"),
    ];
    let out = run(program(false, &shell, &args, dir.path()), &[]);
    let mut lines = out.stdout.lines();
    f.integrity = if out.success() {
        lines.next().unwrap_or("").to_owned()
    } else {
        format!("reader failed: {}", out.stderr.trim())
    };
    let seen: BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("row="))
        .filter_map(|r| r.split_once(':').map(|(_, tag)| tag))
        .collect();
    f.missing = f
        .acked
        .iter()
        .filter(|(_, tag)| !seen.contains(tag.as_str()))
        .map(|(id, tag)| format!("{id}:{tag}"))
        .collect();
    f
}

#[test]
fn a_mixed_fleet_of_unmodified_programs_is_damaged_unguarded_and_clean_with_exec_and_walguard_auto()
{
    let acked_per_run = CYCLES * (2 + 1 + 2 + 2);

    let plain = fleet(false);
    assert!(
        plain.damaged(),
        "guarding off: expected lost rows or a failed integrity check\n{plain:#?}"
    );
    assert!(
        plain
            .reached
            .iter()
            .all(|r| r.ends_with("none") || r.ends_with("unix")),
        "guarding off: nothing reached walguard\n{plain:#?}"
    );

    let guarded = fleet(true);
    assert!(
        guarded.errors.is_empty(),
        "guarded: no command fails\n{guarded:#?}"
    );
    assert_eq!(guarded.acked.len(), acked_per_run, "guarded\n{guarded:#?}");
    assert!(
        !guarded.damaged(),
        "guarded: rows lost or damage\n{guarded:#?}"
    );
    assert!(guarded.deleted_held.is_empty(), "guarded\n{guarded:#?}");
    assert!(
        guarded.stderr.is_empty(),
        "guarded: nothing printed\n{guarded:#?}"
    );
    let want_reached: Vec<String> = std::iter::once("gateway: preload".to_owned())
        .chain(
            (0..CYCLES)
                .flat_map(|c| [format!("cron {c}: walguard"), format!("tool {c}: walguard")]),
        )
        .collect();
    let mut reached = guarded.reached.clone();
    reached.sort();
    let mut want = want_reached;
    want.sort();
    assert_eq!(
        reached, want,
        "guarded: every program went through walguard"
    );
}
