//! libwalguard.so loaded into Debian's `/usr/bin/sqlite3` shell with `.load`.
//!
//! The shell opens its first database lazily; `.load` opens `:memory:` to load on, and
//! the following `.open app.db` then goes through the default VFS — walguard.

mod common;

use std::path::Path;

use tempfile::TempDir;
use vfs_tests::extension::{
    extension_load_arg, parse_kv, parse_stats_json, run_sqlite3_shell, shell_quote_arg, RunOutput,
    SCRIPT_TIMEOUT,
};

/// `.bail on` (stop and exit non-zero at the first error), `.load` the extension by its
/// path without `.so`, then `.open app.db`, then `body`.
fn shell(dir: &Path, body: &str) -> RunOutput {
    let script = format!(
        ".bail on\n.load {}\n.open app.db\n{body}\n",
        shell_quote_arg(&extension_load_arg())
    );
    let out = run_sqlite3_shell(dir, &[], &script, SCRIPT_TIMEOUT);
    out.assert_success("sqlite3 shell");
    out
}

fn stats_line(out: &RunOutput) -> std::collections::BTreeMap<String, u64> {
    let line = match out.stdout.lines().find(|l| l.starts_with('{')) {
        Some(l) => l,
        None => panic!("no walguard_stats() JSON in the output:\n{out}"),
    };
    match parse_stats_json(line) {
        Ok(m) => m,
        Err(e) => panic!("walguard_stats() returned bad JSON ({e}):\n{out}"),
    }
}

#[test]
fn dot_load_makes_walguard_the_vfs_of_the_next_open() {
    let dir = TempDir::new().expect("temp dir");
    let out = shell(dir.path(), ".print vfsname:\n.vfsname\n.vfslist");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "vfsname:")
        .unwrap_or_else(|| panic!("marker missing:\n{out}"));
    let name = lines.get(at + 1).copied().unwrap_or("");
    // The shim may report the stack (`walguard/unix`); its top must be walguard.
    assert_eq!(
        name.split('/').next(),
        Some("walguard"),
        ".vfsname after .load + .open printed {name:?}:\n{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("vfs.zName")
            && l.contains("\"walguard\"")
            && l.contains("CURRENT")),
        ".vfslist does not mark walguard as the VFS of the open database:\n{out}"
    );
}

#[test]
fn wal_write_and_read_back_in_one_and_in_a_second_shell() {
    let dir = TempDir::new().expect("temp dir");
    let first = shell(
        dir.path(),
        "PRAGMA journal_mode=WAL;\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT);\n\
         BEGIN;\n\
         INSERT INTO t(who) VALUES ('shell-1');\n\
         INSERT INTO t(who) VALUES ('shell-1');\n\
         COMMIT;\n\
         INSERT INTO t(who) VALUES ('shell-1b');\n\
         SELECT 'mode=' || journal_mode FROM pragma_journal_mode;\n\
         SELECT 'count=' || count(*) FROM t;\n\
         SELECT 'last=' || who FROM t ORDER BY id DESC LIMIT 1;\n\
         SELECT walguard_stats();",
    );
    assert!(
        first.stdout.lines().next() == Some("wal"),
        "PRAGMA journal_mode=WAL did not answer wal:\n{first}"
    );
    let kv = first.kv();
    assert_eq!(kv.get("mode").map(String::as_str), Some("wal"), "{first}");
    assert_eq!(kv.get("count").map(String::as_str), Some("3"), "{first}");
    assert_eq!(
        kv.get("last").map(String::as_str),
        Some("shell-1b"),
        "{first}"
    );
    let s = stats_line(&first);
    assert!(
        s.get("db_opened").is_some_and(|&n| n >= 1),
        "{s:?}\n{first}"
    );
    assert!(
        s.get("wal_opened").is_some_and(|&n| n >= 1),
        "{s:?}\n{first}"
    );
    assert!(
        s.get("shm_mapped").is_some_and(|&n| n >= 1),
        "{s:?}\n{first}"
    );
    let after_first = common::list_dir(dir.path());
    assert!(
        !after_first
            .iter()
            .any(|f| f == "app.db-wal" || f == "app.db-shm"),
        "the shell's last close left WAL sidecars behind: {after_first:?}"
    );

    // A second process: the rows are there, the database is still WAL, and it writes.
    let second = shell(
        dir.path(),
        "SELECT 'mode=' || journal_mode FROM pragma_journal_mode;\n\
         SELECT 'count=' || count(*) FROM t;\n\
         INSERT INTO t(who) VALUES ('shell-2');\n\
         SELECT 'count2=' || count(*) FROM t;\n\
         SELECT 'integrity=' || integrity_check FROM pragma_integrity_check;\n\
         SELECT walguard_stats();",
    );
    let kv = second.kv();
    assert_eq!(kv.get("mode").map(String::as_str), Some("wal"), "{second}");
    assert_eq!(kv.get("count").map(String::as_str), Some("3"), "{second}");
    assert_eq!(kv.get("count2").map(String::as_str), Some("4"), "{second}");
    assert_eq!(
        kv.get("integrity").map(String::as_str),
        Some("ok"),
        "{second}"
    );
    assert!(
        stats_line(&second)
            .get("db_opened")
            .is_some_and(|&n| n >= 1),
        "{second}"
    );

    // A shell that never loads walguard reads the same file: the format is untouched.
    let plain = run_sqlite3_shell(
        dir.path(),
        &["-bail", "app.db"],
        "SELECT 'count=' || count(*) FROM t;\n\
         SELECT 'integrity=' || integrity_check FROM pragma_integrity_check;\n",
        SCRIPT_TIMEOUT,
    );
    plain.assert_success("sqlite3 shell without walguard");
    let kv = parse_kv(&plain.stdout);
    assert_eq!(kv.get("count").map(String::as_str), Some("4"), "{plain}");
    assert_eq!(
        kv.get("integrity").map(String::as_str),
        Some("ok"),
        "{plain}"
    );
}

#[test]
fn walguard_stats_is_available_in_the_shell() {
    let dir = TempDir::new().expect("temp dir");
    let out = shell(
        dir.path(),
        "CREATE TABLE t(x);\n\
         SELECT 'valid=' || json_valid(walguard_stats());\n\
         SELECT walguard_stats();",
    );
    assert_eq!(
        out.kv().get("valid").map(String::as_str),
        Some("1"),
        "{out}"
    );
    let s = stats_line(&out);
    for key in [
        "registrations",
        "files_opened",
        "db_opened",
        "wal_opened",
        "shm_mapped",
        "host_wal_reset_bug",
    ] {
        assert!(s.contains_key(key), "walguard_stats() lacks {key}: {s:?}");
    }
    assert!(s["registrations"] >= 1, "{s:?}");
    assert!(s["db_opened"] >= 1, "{s:?}");
    // The shell links Debian's SQLite 3.40.1, which has the WAL-reset bug.
    let version = run_sqlite3_shell(dir.path(), &["-version"], "", SCRIPT_TIMEOUT);
    if version.stdout.starts_with("3.40.1 ") {
        assert_eq!(s["host_wal_reset_bug"], 1, "{s:?}");
    }
}
