//! libwalguard.so loaded into Debian's `/usr/bin/python3` (its `sqlite3` module links
//! the system SQLite 3.40.1 on Debian 12 and allows `load_extension`).
//!
//! Each test runs `vfs-tests/py/ext_checks.py EXT SCENARIO` in a fresh temporary
//! directory; the script prints `key=value` lines (counters of `walguard_stats()` as
//! `<phase>.<counter>=N`) and the assertions live here.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use tempfile::TempDir;
use vfs_tests::extension::{extension_load_arg, extension_path, run_python, SCRIPT_TIMEOUT};

struct Run {
    kv: BTreeMap<String, String>,
    text: String,
}

impl Run {
    fn get(&self, key: &str) -> &str {
        match self.kv.get(key) {
            Some(v) => v,
            None => panic!("ext_checks.py printed no `{key}=`:\n{}", self.text),
        }
    }

    fn n(&self, key: &str) -> u64 {
        let v = self.get(key);
        match v.parse() {
            Ok(n) => n,
            Err(e) => panic!("`{key}={v}` is not a number ({e}):\n{}", self.text),
        }
    }

    /// counter `name` in phase `later` minus phase `earlier`.
    fn delta(&self, earlier: &str, later: &str, name: &str) -> i128 {
        i128::from(self.n(&format!("{later}.{name}")))
            - i128::from(self.n(&format!("{earlier}.{name}")))
    }
}

/// Runs one scenario of `ext_checks.py` with `ext` as the extension argument.
fn scenario_with(ext: &str, scenario: &str) -> Run {
    let dir = TempDir::new().expect("temp dir");
    let out = run_python(
        "ext_checks.py",
        &[OsStr::new(ext), OsStr::new(scenario)],
        dir.path(),
        SCRIPT_TIMEOUT,
    );
    out.assert_success(&format!("ext_checks.py {scenario}"));
    let run = Run {
        kv: out.kv(),
        text: out.to_string(),
    };
    assert_eq!(run.get("done"), "1", "scenario did not finish");
    run
}

fn scenario(name: &str) -> Run {
    scenario_with(&extension_path().to_string_lossy(), name)
}

#[test]
fn loading_on_memory_makes_walguard_the_default_for_later_connections() {
    // Loaded by the name without `.so`, as users write it.
    let r = scenario_with(&extension_load_arg(), "default");
    assert_eq!(r.get("read"), "42");
    assert!(
        r.delta("before", "after", "db_opened") >= 1,
        "sqlite3.connect('app.db') after loading did not open the database through \
         walguard:\n{}",
        r.text
    );
    assert!(
        r.delta("before", "after", "files_opened") >= 1,
        "{}",
        r.text
    );
    assert!(r.n("before.registrations") >= 1, "{}", r.text);
    // walguard_stats() works on a connection other than the loader, and the counters
    // are process-wide (the app connection sees its own open).
    assert!(r.n("app.db_opened") >= 1, "{}", r.text);
    assert_eq!(r.n("after.open_errors"), 0, "{}", r.text);
    assert_eq!(r.n("after.panics_caught"), 0, "{}", r.text);
}

#[test]
fn uri_vfs_parameter_selects_walguard() {
    let r = scenario("uri");
    assert_eq!(r.get("read"), "via-uri");
    assert!(r.delta("before", "after", "db_opened") >= 1, "{}", r.text);
    // The vfs= parameter is honoured at all (so the success above is not an accident).
    assert!(
        r.get("bogus_vfs").starts_with("error:"),
        "?vfs=no_such_vfs opened:\n{}",
        r.text
    );
}

#[test]
fn wal_mode_reads_and_writes_from_two_connections() {
    let r = scenario("wal");
    assert_eq!(r.get("journal_mode"), "wal");
    assert_eq!(r.get("b_journal_mode"), "wal");
    assert_eq!(r.n("b_sees_a"), 10);
    // Snapshot isolation: b's read transaction keeps its snapshot while a commits.
    assert_eq!(r.n("b_snapshot_before"), 10);
    assert_eq!(r.n("b_snapshot_during"), 10);
    assert_eq!(r.n("b_after_snapshot"), 11);
    assert_eq!(r.n("a_sees_b"), 5);
    assert_eq!(r.get("integrity"), "ok");
    assert_eq!(r.n("wal_exists_while_open"), 1);
    assert_eq!(r.n("shm_exists_while_open"), 1);
    assert!(r.delta("before", "open", "db_opened") >= 2, "{}", r.text);
    assert!(r.delta("before", "open", "wal_opened") >= 1, "{}", r.text);
    assert!(r.delta("before", "open", "shm_mapped") >= 1, "{}", r.text);
    assert_eq!(r.n("total"), 16);
    assert_eq!(r.get("reopened_journal_mode"), "wal");
    // After the last close, the WAL was checkpointed and its sidecars removed: only
    // the database and walguard's lock file remain.
    let files: Vec<&str> = r.get("files").split(',').collect();
    assert!(
        files.contains(&"app.db")
            && !files.contains(&"app.db-wal")
            && !files.contains(&"app.db-shm"),
        "files after the last close: {files:?}\n{}",
        r.text
    );
    assert_eq!(r.n("after.open_errors"), 0, "{}", r.text);
}

#[test]
fn registration_survives_closing_the_loading_connection() {
    let r = scenario("survives-close");
    assert!(
        r.delta("before", "after_plain", "db_opened") >= 1,
        "after the loading connection closed, a plain connect no longer goes through \
         walguard:\n{}",
        r.text
    );
    assert_eq!(r.n("uri_read"), 1);
    assert!(
        r.delta("after_plain", "after_uri", "db_opened") >= 1,
        "{}",
        r.text
    );
}

#[test]
fn nodefault_entry_point_leaves_unix_the_default() {
    let r = scenario("nodefault");
    assert_eq!(r.n("plain_read"), 1);
    assert_eq!(
        r.delta("before", "after_plain", "files_opened"),
        0,
        "loading through sqlite3_walguard_nodefault_init made walguard the default:\n{}",
        r.text
    );
    assert_eq!(
        r.delta("before", "after_plain", "db_opened"),
        0,
        "{}",
        r.text
    );
    assert_eq!(r.get("uri_read"), "2");
    assert!(
        r.delta("after_plain", "after_uri", "db_opened") >= 1,
        "?vfs=walguard did not go through walguard after the nodefault entry point:\n{}",
        r.text
    );
    assert_eq!(
        r.delta("after_uri", "after_plain2", "files_opened"),
        0,
        "{}",
        r.text
    );
}

/// SQLite versions with the WAL-reset bug (DESIGN.md: 3.7.0 – 3.51.2, except the
/// fixed backports 3.44.6 and 3.50.7).
fn has_wal_reset_bug(v: u64) -> bool {
    let in_range = (3_007_000..=3_051_002).contains(&v);
    let backport_3_44 = (3_044_006..3_045_000).contains(&v);
    let backport_3_50 = (3_050_007..3_051_000).contains(&v);
    in_range && !backport_3_44 && !backport_3_50
}

#[test]
fn host_with_the_wal_reset_bug_is_counted_and_still_loads() {
    let r = scenario("host");
    assert_eq!(r.get("loaded"), "1");
    let v = r.n("sqlite_version_number");
    let expected = u64::from(has_wal_reset_bug(v));
    if r.get("sqlite_version") == "3.40.1" {
        // Debian 12's SQLite, the one CI runs.
        assert_eq!(expected, 1);
    }
    assert_eq!(
        r.n("stats.host_wal_reset_bug"),
        expected,
        "host SQLite {}: host_wal_reset_bug should be {expected}:\n{}",
        r.get("sqlite_version"),
        r.text
    );
    // Loading again in the same process neither fails nor counts the host twice.
    assert_eq!(r.n("stats2.host_wal_reset_bug"), expected, "{}", r.text);
}

#[test]
fn wal_reset_bug_version_table() {
    assert!(has_wal_reset_bug(3_040_001));
    assert!(has_wal_reset_bug(3_051_002));
    assert!(has_wal_reset_bug(3_044_005));
    assert!(!has_wal_reset_bug(3_044_006));
    assert!(!has_wal_reset_bug(3_050_007));
    assert!(has_wal_reset_bug(3_050_006));
    assert!(!has_wal_reset_bug(3_051_003));
    assert!(!has_wal_reset_bug(3_006_023));
}
