//! walguard in any Python, and in every Python process of an environment (issue 18).
//!
//! The wheel (`vfs_tests::reach`) is installed `--no-index` into fresh venvs of two
//! Pythons: this machine's pyenv `python3`, whose `sqlite3` module has no
//! `enable_load_extension` (`walguard.install()` then registers walguard through the
//! SQLite library the module uses: `sqlite3_auto_extension`), and Debian's
//! `/usr/bin/python3`, which loads the extension. Where no such pyenv Python exists,
//! Debian's stands in with its `sqlite3.connect` returning connections without the
//! method (noted on stderr). The tests check:
//!
//! - `walguard.install()` routes connections through walguard in both, by the path
//!   expected of each;
//! - the header-peek split from Python (a plain `open()/read()/close()` of the database,
//!   two writers) loses rows on the unix VFS and is clean after `walguard.install()`, in
//!   both Pythons, both runs in one test;
//! - `WALGUARD_AUTO=1` guards a script that never imports walguard (the `.pth` hook),
//!   and apsw when it is imported; unset (or `0`) the process is exactly as before: no
//!   walguard module, no import hook, no library mapped; a process that never imports
//!   SQLite never loads walguard's library; a failure to install is one warning and the
//!   program goes on;
//! - `python -m walguard exec` and the `walguard` command pip installs run the bundled
//!   binary.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use vfs_tests::extension::{
    python3_path, run_with_timeout, sqlite3_shell_path, RunOutput, SCRIPT_TIMEOUT,
};
use vfs_tests::reach::{self, debian_venv, peek_run, py_command, tempdir, PyWorker, Venv};
use vfs_tests::worker::stat;

/// A Python under test: its venv, the environment its scripts get, and how
/// `walguard.install()` must reach its SQLite.
struct Python {
    label: String,
    venv: &'static Venv,
    env: Vec<(&'static str, &'static str)>,
    /// `autoext` (no enable_load_extension) or `load`.
    expected_path: &'static str,
}

fn pythons() -> Vec<Python> {
    let (noload, env) = reach::noload_or_simulated();
    vec![
        Python {
            label: format!("{} (no enable_load_extension)", noload.display()),
            venv: if env.is_empty() {
                reach::venv(&noload, false)
            } else {
                debian_venv()
            },
            env,
            expected_path: "autoext",
        },
        Python {
            label: format!("{} (Debian)", python3_path().display()),
            venv: debian_venv(),
            env: Vec::new(),
            expected_path: "load",
        },
    ]
}

/// Runs `cmd` with `env` added and WALGUARD_* / LD_PRELOAD of the test's own
/// environment removed.
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

fn kv_of(out: &RunOutput, what: &str) -> BTreeMap<String, String> {
    out.assert_success(what);
    out.kv()
}

fn expect(kv: &BTreeMap<String, String>, key: &str, want: &str, ctx: &str) {
    assert_eq!(
        kv.get(key).map(String::as_str),
        Some(want),
        "{ctx}: {key}; all output: {kv:#?}"
    );
}

fn number(kv: &BTreeMap<String, String>, key: &str) -> i64 {
    kv.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {kv:#?}"))
}

// ---------------------------------------------------------------------------------------
// walguard.install()

#[test]
fn install_routes_connections_through_walguard_in_both_pythons() {
    for py in pythons() {
        let dir = tempdir();
        let db = dir.path().join("app.db");
        let cmd = py_command(
            &py.venv.python,
            "reach_checks.py",
            &[OsStr::new("install"), db.as_os_str()],
            dir.path(),
        );
        let out = run(cmd, &py.env);
        let kv = kv_of(&out, &format!("reach_checks.py install in {}", py.label));
        let ctx = &py.label;
        expect(&kv, "done", "1", ctx);
        let has_method = if py.expected_path == "autoext" {
            "0"
        } else {
            "1"
        };
        expect(&kv, "has_enable_load_extension", has_method, ctx);
        expect(&kv, "path", py.expected_path, ctx);
        expect(&kv, "journal_mode", "wal", ctx);
        for k in ["db_opened", "wal_opened", "shm_mapped"] {
            assert!(number(&kv, k) >= 1, "{ctx}: {k}: {kv:#?}");
        }
        assert_eq!(number(&kv, "registrations"), 1, "{ctx}: {kv:#?}");
        expect(&kv, "second_install", "ok", ctx);
        expect(&kv, "load_again", "ok", ctx);
        assert_eq!(
            number(&kv, "registrations_after"),
            1,
            "{ctx}: install() and load() again register nothing more: {kv:#?}"
        );
        assert!(out.stderr.is_empty(), "{ctx}: stderr:\n{out}");
    }
}

#[test]
fn the_header_peek_split_fails_on_unix_and_is_clean_through_install_in_both_pythons() {
    for py in pythons() {
        let spawn = |mode: &'static str| {
            let python = py.venv.python.clone();
            let env = py.env.clone();
            move |db: &Path, name: &str| {
                let mut cmd = PyWorker::command(&python, mode, db, name);
                for (k, v) in &env {
                    cmd.env(k, v);
                }
                cmd.env_remove("WALGUARD_AUTO").env_remove("LD_PRELOAD");
                PyWorker::spawn(cmd, name)
            }
        };
        let plain = peek_run(&spawn("plain"));
        let ctx = format!("{}: plain sqlite3 (unix VFS)", py.label);
        assert_eq!(
            plain.acked.len(),
            12,
            "{ctx}: every write is acknowledged\n{plain:#?}"
        );
        assert!(
            plain.damaged(),
            "{ctx}: expected lost rows or a failed integrity check\n{plain:#?}"
        );
        assert!(
            plain.a_holds_deleted_shm() && !plain.one_shm(),
            "{ctx}: expected A on a deleted -shm and two -shm inodes in use\n{plain:#?}"
        );
        assert!(
            plain.reached_by.iter().all(|(_, by)| by == "none"),
            "{ctx}: {plain:#?}"
        );

        let guarded = peek_run(&spawn("install"));
        let ctx = format!("{}: walguard.install()", py.label);
        assert_eq!(guarded.acked.len(), 12, "{ctx}\n{guarded:#?}");
        assert!(
            guarded.errors.is_empty(),
            "{ctx}: no command fails\n{guarded:#?}"
        );
        assert!(
            !guarded.damaged(),
            "{ctx}: the WAL index split\n{guarded:#?}"
        );
        assert!(
            guarded.deleted_held.is_empty() && guarded.one_shm(),
            "{ctx}: A, C and D map one -shm, nobody a deleted one\n{guarded:#?}"
        );
        assert!(
            guarded
                .reached_by
                .iter()
                .all(|(_, by)| by == py.expected_path),
            "{ctx}: install() must take the {} path\n{guarded:#?}",
            py.expected_path
        );
        for (name, s) in &guarded.stats {
            assert!(
                stat(s, "db_opened").is_some_and(|n| n >= 1),
                "{ctx}: worker {name} did not open the database through walguard: {s}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// WALGUARD_AUTO

/// `unmodified.py ARGS` under the venv's python with `env`.
fn unmodified(py: &Python, args: &[&OsStr], env: &[(&str, &str)], cwd: &Path) -> RunOutput {
    let cmd = py_command(&py.venv.python, "unmodified.py", args, cwd);
    run(cmd, env)
}

#[test]
fn walguard_auto_guards_a_script_that_never_imports_walguard() {
    for py in pythons() {
        let dir = tempdir();
        for (value, guarded) in [(None, false), (Some("0"), false), (Some("1"), true)] {
            let env: Vec<(&str, &str)> = value.map(|v| ("WALGUARD_AUTO", v)).into_iter().collect();
            let ctx = format!("{} with WALGUARD_AUTO={value:?}", py.label);
            let db = dir
                .path()
                .join(format!("vfs-{}.db", value.unwrap_or("unset")));
            let out = unmodified(&py, &[OsStr::new("vfs"), db.as_os_str()], &env, dir.path());
            out.assert_success(&ctx);
            let want = if guarded {
                "wal\nwalguard\n"
            } else {
                "wal\nunix\n"
            };
            assert_eq!(out.stdout, want, "{ctx}:\n{out}");
            assert!(out.stderr.is_empty(), "{ctx}: nothing on stderr:\n{out}");

            let db = dir
                .path()
                .join(format!("probe-{}.db", value.unwrap_or("unset")));
            let out = unmodified(
                &py,
                &[OsStr::new("probe"), db.as_os_str()],
                &env,
                dir.path(),
            );
            let kv = kv_of(&out, &ctx);
            expect(&kv, "journal_mode", "wal", &ctx);
            if guarded {
                expect(&kv, "vfs", "walguard", &ctx);
                assert!(number(&kv, "db_opened") >= 1, "{ctx}: {kv:#?}");
                expect(&kv, "walguard_imported", "1", &ctx);
                expect(&kv, "libwalguard_mapped", "1", &ctx);
                // Both runtimes had their turn (sqlite3 now, apsw never imported): the
                // finder stays only while apsw may still come.
                expect(&kv, "finder", "1", &ctx);
            } else {
                // Exactly as before: no walguard module, no hook, no library.
                expect(&kv, "vfs", "unix", &ctx);
                expect(&kv, "walguard_imported", "0", &ctx);
                expect(&kv, "finder", "0", &ctx);
                expect(&kv, "libwalguard_mapped", "0", &ctx);
            }
            expect(&kv, "preload_mapped", "0", &ctx);
            assert!(out.stderr.is_empty(), "{ctx}: nothing on stderr:\n{out}");
        }
    }
}

#[test]
fn walguard_auto_installs_into_apsw_when_it_is_imported() {
    let py = &pythons()[1];
    let dir = tempdir();
    let db = dir.path().join("apsw.db");
    for (value, want) in [(None, "unix"), (Some("1"), "walguard")] {
        let env: Vec<(&str, &str)> = value.map(|v| ("WALGUARD_AUTO", v)).into_iter().collect();
        let ctx = format!("apsw in {} with WALGUARD_AUTO={value:?}", py.label);
        let out = unmodified(py, &[OsStr::new("apsw"), db.as_os_str()], &env, dir.path());
        let kv = kv_of(&out, &ctx);
        expect(&kv, "apsw_vfs", want, &ctx);
        expect(&kv, "sqlite3_imported", "0", &ctx);
        // apsw fired and sqlite3 was never imported: the finder waits for sqlite3.
        expect(&kv, "finder", if value.is_some() { "1" } else { "0" }, &ctx);
        assert!(out.stderr.is_empty(), "{ctx}:\n{out}");
    }
}

#[test]
fn walguard_auto_leaves_processes_that_never_touch_sqlite_free_of_it() {
    for py in pythons() {
        let dir = tempdir();
        let ctx = format!("{} with WALGUARD_AUTO=1, no SQLite", py.label);
        let out = unmodified(
            &py,
            &[OsStr::new("nosqlite")],
            &[("WALGUARD_AUTO", "1")],
            dir.path(),
        );
        let kv = kv_of(&out, &ctx);
        expect(&kv, "sqlite3_imported", "0", &ctx);
        expect(&kv, "walguard_imported", "1", &ctx);
        expect(&kv, "finder", "1", &ctx);
        expect(&kv, "autoext_imported", "0", &ctx);
        expect(&kv, "libwalguard_mapped", "0", &ctx);
        assert!(out.stderr.is_empty(), "{ctx}:\n{out}");
    }
}

#[test]
fn a_failed_auto_install_is_one_warning_and_the_program_goes_on() {
    for py in pythons() {
        let dir = tempdir();
        let db = dir.path().join("app.db");
        let missing = "/nonexistent/libwalguard.so";
        let ctx = format!("{} with WALGUARD_AUTO=1 and a missing library", py.label);
        let env = [("WALGUARD_AUTO", "1"), ("WALGUARD_EXTENSION", missing)];
        let out = unmodified(&py, &[OsStr::new("vfs"), db.as_os_str()], &env, dir.path());
        out.assert_success(&ctx);
        assert_eq!(
            out.stdout, "wal\nunix\n",
            "{ctx}: the program runs, unguarded:\n{out}"
        );
        assert_eq!(
            out.stderr.matches("WalguardAutoWarning").count(),
            1,
            "{ctx}: one warning:\n{out}"
        );
        assert!(
            out.stderr.contains(missing) && out.stderr.contains("not guarded"),
            "{ctx}: the warning names the file and the consequence:\n{out}"
        );

        let ctx = format!("{} with WALGUARD_AUTO=maybe", py.label);
        let out = unmodified(
            &py,
            &[OsStr::new("vfs"), db.as_os_str()],
            &[("WALGUARD_AUTO", "maybe")],
            dir.path(),
        );
        out.assert_success(&ctx);
        assert_eq!(out.stdout, "wal\nunix\n", "{ctx}:\n{out}");
        assert_eq!(
            out.stderr.matches("WalguardAutoWarning").count(),
            1,
            "{ctx}: an unknown value is reported once and ignored:\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The walguard command of the wheel

#[test]
fn python_m_walguard_exec_and_the_walguard_command_guard_the_sqlite3_shell() {
    let venv = debian_venv();
    let shell = sqlite3_shell_path();
    let dir = tempdir();
    let runs: [(&str, Vec<PathBuf>); 2] = [
        (
            "python -m walguard",
            vec![venv.python.clone(), "-m".into(), "walguard".into()],
        ),
        ("bin/walguard", vec![venv.walguard.clone()]),
    ];
    for (i, (label, prefix)) in runs.iter().enumerate() {
        let db = dir.path().join(format!("app{i}.db"));
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..])
            .args(["exec", "--"])
            .arg(&shell)
            .arg(&db)
            .args(["PRAGMA journal_mode=WAL", ".vfsname"])
            .current_dir(dir.path());
        let out = run(cmd, &[]);
        out.assert_success(label);
        assert_eq!(out.stdout, "wal\nwalguard\n", "{label}:\n{out}");
        assert!(out.stderr.is_empty(), "{label}: nothing on stderr:\n{out}");

        let mut check = Command::new(&prefix[0]);
        check
            .args(&prefix[1..])
            .args(["exec", "--check", "--"])
            .arg(&shell);
        let out = run(check, &[]);
        out.assert_success(&format!("{label} exec --check"));
        assert!(
            out.stdout.contains("sqlite: shared") && out.stdout.contains("verdict: guarded"),
            "{label} exec --check:\n{out}"
        );
        assert!(
            out.stdout.contains(&format!(
                "preload: {}",
                venv.package.join("libwalguard_preload.so").display()
            )),
            "{label}: the wheel's binary uses the wheel's libraries:\n{out}"
        );
    }
}
