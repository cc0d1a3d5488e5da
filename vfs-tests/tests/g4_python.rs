//! G4 from Python through the extension: Debian's python3 holds a WAL connection while
//! a "backup tool" moves `-wal`/`-shm` away and another process (plain unix VFS) creates
//! fresh ones and commits through them.
//!
//! - Without walguard, Python's connection reads a stale count and its next commit goes
//!   into the moved-away files: lost for everyone else (the test proves it breaks).
//! - With the extension loaded, its next read and write fail with SQLITE_IOERR_VNODE,
//!   `walguard_stats()` counts the replacement, and a reopened connection works and sees
//!   the other process's commit.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use vfs_tests::extension::{extension_load_arg, parse_kv, python3_path};
use vfs_tests::worker::{Vfs, Worker};

fn run(mode: &str, dir: &Path) -> std::collections::BTreeMap<String, String> {
    let ext = extension_load_arg();
    let script = vfs_tests::extension::py_script("g4_sidecar.py");
    let mut child = Command::new(python3_path())
        .arg("-I")
        .arg(&script)
        .arg(&ext)
        .arg(mode)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start /usr/bin/python3 (apt-get install -y python3)");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).expect("read python output");
        assert!(n > 0, "python ended before it was ready: {seen}");
        seen.push_str(&line);
        if line.trim() == "ready" {
            break;
        }
    }
    let db = dir.join("app.db");
    for ext in ["-wal", "-shm"] {
        std::fs::rename(
            format!("{}{ext}", db.display()),
            format!("{}{ext}.moved", db.display()),
        )
        .expect("mv sidecar");
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_vfs-tests"));
    let mut other = Worker::spawn(exe, Vfs::Unix, &db, "other").expect("start the other process");
    other
        .ok("exec INSERT INTO t VALUES ('other')")
        .expect("the other process commits");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("tell python to go on");
    let mut rest = String::new();
    for line in stdout.lines() {
        rest.push_str(&line.expect("read python output"));
        rest.push('\n');
    }
    let status = child.wait().expect("python exits");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        status.success(),
        "python failed ({mode}): {seen}{rest}\n{err}"
    );
    let mut kv = parse_kv(&rest);
    kv.insert(
        "other_sees".into(),
        other
            .ok("query SELECT group_concat(who) FROM t")
            .expect("other reads"),
    );
    let _ = other.exit();
    kv
}

#[test]
fn a_moved_sidecar_splits_python_on_unix_and_fails_closed_through_walguard() {
    let plain = tempfile::tempdir().expect("tempdir");
    let kv = run("unix", plain.path());
    assert_eq!(
        kv["read"], "1",
        "unix: Python reads the stale index, not the other commit: {kv:?}"
    );
    assert_eq!(kv["write"], "ok", "{kv:?}");
    assert!(
        !kv["other_sees"].contains("after"),
        "unix: Python's acknowledged commit is lost to others: {kv:?}"
    );

    let guarded = tempfile::tempdir().expect("tempdir");
    let kv = run("walguard", guarded.path());
    assert_eq!(
        kv.get("read_error").map(String::as_str),
        Some("6922"),
        "SQLITE_IOERR_VNODE on the next read: {kv:?}"
    );
    assert_eq!(
        kv.get("write_error").map(String::as_str),
        Some("6922"),
        "and on the next write: {kv:?}"
    );
    assert!(
        kv["sidecar_replaced"].parse::<u64>().expect("counter") >= 1,
        "{kv:?}"
    );
    assert_eq!(
        kv["reopened_count"], "2",
        "a reopened connection sees the other commit: {kv:?}"
    );
    assert_eq!(kv["reopened_write"], "ok");
    assert!(
        kv["other_sees"].contains("reopened"),
        "and its commits reach the others: {kv:?}"
    );
}
