//! Issue 17, defect 5: walguard must not halve how many databases one process can keep
//! open.
//!
//! A multi-tenant server keeps one WAL database open per tenant (per user, per agent
//! session). Under the usual soft limit of 1024 descriptors, plain unix needs three per
//! open WAL database (database, `-wal`, `-shm`); walguard may add at most one. The test
//! runs `vfs-tests/py/defect17_tenants.py` twice under Debian's python3 with
//! RLIMIT_NOFILE 1024 set in the child — once on the plain system SQLite (unix), once
//! with the walguard extension loaded — each opening `tenantN.db` after `tenantN.db`
//! (WAL, one committed row, kept open) until SQLite refuses ("unable to open database
//! file"), and asserts that walguard got at least 75 % as far as unix.
//!
//! On e4e5d0e (the build before the fix) this fails:
//! ```text
//! walguard opened 169 tenant databases where plain unix opened 339 (49 %; at least 75 %
//! required) under RLIMIT_NOFILE 1024: unix stopped at "unable to open database file"
//! with 1023 descriptors open, walguard at "unable to open database file" with 1023
//! ```

use std::ffi::OsStr;
use std::time::Duration;

use vfs_tests::extension::{extension_path, python_command, run_with_timeout, RunOutput};

const LIMIT: &str = "1024";

fn run(ext: Option<&OsStr>) -> (u64, RunOutput) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<&OsStr> = vec![dir.path().as_os_str(), OsStr::new(LIMIT)];
    args.extend(ext);
    let mut cmd = python_command("defect17_tenants.py", &args, dir.path());
    cmd.env_remove("WALGUARD_WATCHER");
    let out = run_with_timeout(cmd, None, Duration::from_secs(120));
    out.assert_success("defect17_tenants.py");
    let n: u64 = out
        .value("opened")
        .parse()
        .unwrap_or_else(|e| panic!("opened= is not a number ({e}):\n{out}"));
    (n, out)
}

#[test]
fn walguard_opens_at_least_three_quarters_as_many_databases_as_unix() {
    let (unix, unix_out) = run(None);
    let ext = extension_path();
    let (wg, wg_out) = run(Some(ext.as_os_str()));
    println!("tenant databases open under RLIMIT_NOFILE {LIMIT}: unix {unix}, walguard {wg}");
    assert!(
        unix > 100,
        "baseline: plain unix opened only {unix} tenant databases under RLIMIT_NOFILE \
         {LIMIT}; the scenario is broken:\n{unix_out}"
    );
    assert!(
        wg * 4 >= unix * 3,
        "walguard opened {wg} tenant databases where plain unix opened {unix} ({} %; at \
         least 75 % required) under RLIMIT_NOFILE {LIMIT}: unix stopped at {:?} with {} \
         descriptors open, walguard at {:?} with {}",
        wg * 100 / unix,
        unix_out.value("error"),
        unix_out.value("fds"),
        wg_out.value("error"),
        wg_out.value("fds"),
    );
}
