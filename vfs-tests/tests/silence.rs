//! Silence (issue 10): a library writes nothing to stderr on its own.
//!
//! Loaded into a host whose SQLite has the WAL-reset bug (Debian 12's 3.40.1), walguard
//! warns once. That warning went to stderr unconditionally, where it ends up in output
//! that programs read from their children (SQLite's own `walcrash2.test` and `wal.test`
//! fail on it). It belongs in `sqlite3_log` (SQLITE_WARNING), `tracing` and the counter;
//! stderr only when the user asks, with `WALGUARD_STDERR=1` in the environment.
//!
//! Checked in Debian python3 (through the defect driver: load, open, WAL writes, read the
//! counter) and in the `sqlite3` shell (`.load`), both on the system SQLite 3.40.1.

use std::path::Path;
use std::process::Command;

use vfs_tests::extension::{self, run_with_timeout, RunOutput, SCRIPT_TIMEOUT};

const STDERR_ENV: &str = "WALGUARD_STDERR";

fn python(cwd: &Path, ask: bool) -> RunOutput {
    let ext = extension::extension_path();
    let mut cmd = extension::python_command("defect_driver.py", &[], cwd);
    cmd.env_remove(STDERR_ENV);
    if ask {
        cmd.env(STDERR_ENV, "1");
    }
    let input = format!(
        "load {}\nopen a app.db\nexec a PRAGMA journal_mode=WAL\n\
         exec a CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1)\n\
         exec a SELECT json_extract(walguard_stats(), '$.host_wal_reset_bug')\n\
         close a\nexit\n",
        ext.display()
    );
    run_with_timeout(cmd, Some(input.as_bytes()), SCRIPT_TIMEOUT)
}

fn shell(cwd: &Path, ask: bool) -> RunOutput {
    let mut cmd = Command::new(extension::sqlite3_shell_path());
    cmd.arg("app.db").current_dir(cwd).env_remove(STDERR_ENV);
    if ask {
        cmd.env(STDERR_ENV, "1");
    }
    let input = format!(
        ".load {}\nPRAGMA journal_mode=WAL;\nCREATE TABLE IF NOT EXISTS t(x);\n\
         INSERT INTO t VALUES (1);\nSELECT count(*) FROM t;\n",
        extension::shell_quote_arg(&extension::extension_load_arg())
    );
    run_with_timeout(cmd, Some(input.as_bytes()), SCRIPT_TIMEOUT)
}

fn host_version() -> String {
    let out = Command::new(extension::python3_path())
        .args(["-I", "-c", "import sqlite3; print(sqlite3.sqlite_version)"])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn walguard_writes_nothing_to_stderr_unless_asked() {
    let version = host_version();
    let dir = tempfile::tempdir().expect("tempdir");

    let quiet = python(dir.path(), false);
    quiet.assert_success("python3 with the extension");
    // The driver's stdout: one reply per command; the counter proves walguard did warn.
    assert!(
        quiet.stdout.lines().any(|l| l == "ok 1"),
        "the host ({version}) is expected to be in the WAL-reset bug range, so that \
         walguard has a warning to give; walguard_stats() says otherwise:\n{quiet}"
    );
    assert_eq!(
        quiet.stderr, "",
        "python3 (SQLite {version}) with walguard loaded and {STDERR_ENV} unset: stderr \
         must stay empty (warn through sqlite3_log, tracing and the counter)"
    );

    let shell_quiet = shell(dir.path(), false);
    shell_quiet.assert_success("sqlite3 shell with the extension");
    assert_eq!(
        shell_quiet.stderr, "",
        "sqlite3 shell (SQLite {version}) with walguard loaded and {STDERR_ENV} unset: \
         stderr must stay empty"
    );

    let asked = python(dir.path(), true);
    asked.assert_success("python3 with the extension and WALGUARD_STDERR=1");
    assert!(
        asked.stderr.contains("walguard") && asked.stderr.contains(&version),
        "with {STDERR_ENV}=1 the host-version warning (naming walguard and SQLite \
         {version}) must be written to stderr; it was not:\n{asked}"
    );
}
