//! Bad input: a missing path, a directory, a non-SQLite file, a truncated file, a file
//! without permission, and `/proc` that does not show another user's processes. Each
//! gets a clear message and its documented exit status, and nothing is written anywhere.
//! The "no permission" cases run the doctor as uid 65534 (the machine runs as root).

#[macro_use]
mod common;

use common::{doctor, doctor_as, ok, snapshot, spawn};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use vfs_tests::worker::Vfs;

const NOBODY: u32 = 65_534;

fn main() -> ExitCode {
    common::main(tests![
        missing_path,
        directory,
        not_a_sqlite_file,
        truncated_file,
        header_claims_four_billion_pages,
        empty_file_is_an_empty_database,
        file_without_permission,
        directory_without_permission,
        other_users_processes_cannot_be_seen,
        usage_errors,
    ])
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root to run the doctor as uid {NOBODY}"
    );
}

/// Runs the doctor (text and JSON) on `path` and checks the status, the message, and
/// that the directory is unchanged.
fn bad(dir: &Path, path: &Path, uid: Option<u32>, status: i32, words: &[&str]) {
    let before = snapshot(dir);
    let text = doctor_as(uid, &["doctor", &s(path)]);
    assert_eq!(
        text.status, status,
        "{path:?}: {}{}",
        text.stdout, text.stderr
    );
    let all = format!("{}{}", text.stdout, text.stderr);
    for w in words {
        assert!(all.contains(w), "{path:?}: expected {w:?} in:\n{all}");
    }
    let json = doctor_as(uid, &["doctor", "--json", &s(path)]);
    assert_eq!(
        json.status, status,
        "{path:?} --json: {}{}",
        json.stdout, json.stderr
    );
    let r = json.json();
    assert_eq!(r["exit_status"].num() as i32, status);
    assert_eq!(
        snapshot(dir),
        before,
        "the doctor changed {}",
        dir.display()
    );
}

fn missing_path() {
    let dir = common::tempdir();
    let p = dir.path().join("absent.db");
    bad(
        dir.path(),
        &p,
        None,
        3,
        &[
            "absent.db",
            "no such file",
            "SQLite creates a new, empty database",
        ],
    );
    assert!(!p.exists());
    let r = doctor(&["doctor", "--json", &s(&p)]).json();
    assert_eq!(r["status"].text(), "could-not-inspect");
    assert_eq!(common::codes(&r, "incomplete"), ["could-not-inspect"]);
    // Side files without their database: said so.
    fs::write(dir.path().join("absent.db-wal"), b"").expect("write");
    bad(
        dir.path(),
        &p,
        None,
        3,
        &["its side files exist", "absent.db-wal"],
    );
}

fn directory() {
    let dir = common::tempdir();
    fs::write(dir.path().join("app.db"), b"").expect("write");
    bad(
        dir.path(),
        dir.path(),
        None,
        3,
        &["is a directory", "app.db"],
    );
}

fn not_a_sqlite_file() {
    let dir = common::tempdir();
    let p = dir.path().join("notes.db");
    fs::write(&p, b"just some text, certainly not a database\n".repeat(10)).expect("write");
    bad(
        dir.path(),
        &p,
        None,
        3,
        &["is not a SQLite database", "just some text"],
    );
    // A side file given instead of the database.
    let wal = dir.path().join("notes.db-wal");
    fs::write(&wal, [0x37u8, 0x7f, 0x06, 0x82, 0, 0x2d, 0xe2, 0x18]).expect("write");
    bad(
        dir.path(),
        &wal,
        None,
        3,
        &[
            "is not a SQLite database",
            "this is the database's -wal file",
        ],
    );
}

fn truncated_file() {
    let dir = common::tempdir();
    let p = dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&p).expect("open");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("fill");
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.set_len(50))
        .expect("truncate");
    bad(dir.path(), &p, None, 2, &["truncated", "50 bytes"]);
    let r = doctor(&["doctor", "--json", &s(&p)]).json();
    assert_eq!(r["findings"].items()[0]["code"].text(), "truncated");
}

/// SQLite's WAL checksum (wal.c walChecksumBytes), restated here so the test does not
/// trust the code it tests: 32-bit words in the byte order the magic's low bit names.
fn wal_checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let w = |b: &[u8]| {
            let a = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        s1 = s1.wrapping_add(w(&pair[..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(w(&pair[4..])).wrapping_add(s1);
    }
    (s1, s2)
}

/// A one-page database whose header claims 4,127,195,137 pages (trusted: the change
/// counter equals version-valid-for). The doctor once collected every missing page
/// number (33 GB) and aborted; it must say "torn extend", exit 2, and stay small (the
/// tests run it under a 1 GiB address-space limit). Then the same with a -wal whose
/// last commit claims as many pages, checksums intact.
fn header_claims_four_billion_pages() {
    const CLAIM: u32 = 4_127_195_137;
    let dir = common::tempdir();
    let p = dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&p).expect("open");
        c.execute_batch("PRAGMA page_size=4096; PRAGMA user_version=7;")
            .expect("write one page");
    }
    let mut b = fs::read(&p).expect("read");
    assert_eq!(b.len(), 4096, "one page");
    assert_eq!(b[24..28], b[92..96], "the in-header size is trusted");
    b[28..32].copy_from_slice(&CLAIM.to_be_bytes());
    fs::write(&p, &b).expect("write");
    bad(
        dir.path(),
        &p,
        None,
        2,
        &["torn extend", "counts 4127195137 pages", "holds only 1"],
    );
    let r = doctor(&["doctor", "--json", &s(&p)]).json();
    assert_eq!(
        common::finding(&r, "torn-extend")["severity"].text(),
        "damage"
    );
    assert_eq!(r["header"]["page_count"].num(), f64::from(CLAIM));

    // WAL mode: the -wal's last commit claims as many pages (its checksums recomputed,
    // so SQLite would trust it). The -wal holds a few pages, not four billion: damage.
    let dir = common::tempdir();
    let live = dir.path().join("live.db");
    let c = rusqlite::Connection::open(&live).expect("open");
    c.execute_batch(
        "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100));",
    )
    .expect("fill");
    let copy = dir.path().join("copy.db");
    let mut db = fs::read(&live).expect("read");
    let mut wal = fs::read(dir.path().join("live.db-wal")).expect("read -wal");
    drop(c);
    db[28..32].copy_from_slice(&CLAIM.to_be_bytes());
    let change_counter = db[24..28].to_vec();
    db[92..96].copy_from_slice(&change_counter);
    let page = u32::from_be_bytes([wal[8], wal[9], wal[10], wal[11]]) as usize;
    let frame = 24 + page;
    let frames = (wal.len() - 32) / frame;
    assert!(frames >= 1, "{frames} frames");
    let last = 32 + (frames - 1) * frame;
    wal[last + 4..last + 8].copy_from_slice(&CLAIM.to_be_bytes());
    let be = wal[3] & 1 == 1;
    let mut running = (
        u32::from_be_bytes([wal[24], wal[25], wal[26], wal[27]]),
        u32::from_be_bytes([wal[28], wal[29], wal[30], wal[31]]),
    );
    for k in 0..frames {
        let at = 32 + k * frame;
        let c = wal_checksum(be, &wal[at..at + 8], running);
        let c = wal_checksum(be, &wal[at + 24..at + frame], c);
        wal[at + 16..at + 20].copy_from_slice(&c.0.to_be_bytes());
        wal[at + 20..at + 24].copy_from_slice(&c.1.to_be_bytes());
        running = c;
    }
    fs::write(&copy, &db).expect("write copy");
    fs::write(dir.path().join("copy.db-wal"), &wal).expect("write copy -wal");
    let _ = fs::remove_file(&live);
    let r = doctor(&["doctor", "--json", &s(&copy)]);
    assert_eq!(r.status, 2, "{}{}", r.stdout, r.stderr);
    let r = r.json();
    assert_eq!(r["wal"]["last_commit_db_pages"].num(), f64::from(CLAIM));
    assert!(
        common::finding(&r, "torn-extend")["message"]
            .text()
            .contains("counts 4127195137 pages"),
        "{}",
        r.render_findings()
    );
}

fn empty_file_is_an_empty_database() {
    let dir = common::tempdir();
    let p = dir.path().join("app.db");
    fs::write(&p, b"").expect("write");
    bad(dir.path(), &p, None, 0, &["empty"]);
}

fn file_without_permission() {
    require_root();
    let dir = common::tempdir();
    common::open_up(dir.path());
    let p = dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&p).expect("open");
        c.execute_batch("CREATE TABLE t(x);").expect("fill");
    }
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
    bad(
        dir.path(),
        &p,
        Some(NOBODY),
        3,
        &[
            "permission denied reading the database",
            "uid 65534",
            "owner root",
            "mode 0600",
            "run the doctor as the database's owner or as root",
        ],
    );
}

fn directory_without_permission() {
    require_root();
    let dir = common::tempdir();
    common::open_up(dir.path());
    let inner = dir.path().join("private");
    fs::create_dir(&inner).expect("mkdir");
    let p = inner.join("app.db");
    fs::write(&p, b"").expect("write");
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).expect("chmod");
    bad(
        dir.path(),
        &p,
        Some(NOBODY),
        3,
        &["cannot reach the file: permission denied", "not searchable"],
    );
}

fn other_users_processes_cannot_be_seen() {
    require_root();
    let dir = common::tempdir();
    common::open_up(dir.path());
    let db = dir.path().join("app.db");
    // A root process holds the database (world-readable files).
    let mut a = spawn(Vfs::Unix, &db, "A");
    assert_eq!(ok(&mut a, "wal"), "wal");
    ok(&mut a, "write 2");
    let before = snapshot(dir.path());
    let run = doctor_as(Some(NOBODY), &["doctor", "--json", &s(&db)]);
    assert_eq!(run.status, 3, "{}{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["status"].text(), "incomplete");
    let f = common::finding(&r, "processes-unseen");
    assert_eq!(f["severity"].text(), "incomplete");
    assert!(
        f["message"].text().contains("could not see the open files"),
        "{}",
        f["message"].text()
    );
    assert!(
        f["pids"].items().iter().any(|p| p.num() as u32 == a.pid()),
        "the holder is among the unseen: {}",
        f["message"].text()
    );
    // What could be seen is reported, nothing is guessed: the lock table still shows
    // A's locks by pid, and no process is listed as a holder.
    assert!(
        r["processes"].items().is_empty(),
        "{}",
        r["processes"].render()
    );
    assert!(
        r["locks"]
            .items()
            .iter()
            .any(|l| l["pid"].num() as u32 == a.pid()),
        "{}",
        r["locks"].render()
    );
    // The files themselves were readable.
    assert_eq!(r["header"]["journal_mode"].text(), "WAL");
    let text = doctor_as(Some(NOBODY), &["doctor", &s(&db)]);
    assert_eq!(text.status, 3);
    assert!(
        text.stdout.contains("verdict: INCOMPLETE"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("holds locks; its open files could not be seen"),
        "{}",
        text.stdout
    );
    // Not the owner: no O_NOATIME, so atime may move; nothing else may.
    assert_eq!(
        common::without_atime(snapshot(dir.path())),
        common::without_atime(before)
    );
    // Root sees everything: healthy.
    let root = doctor(&["doctor", "--json", &s(&db)]);
    assert_eq!(root.status, 0, "{}", root.json().render_findings());
    let _ = a.exit();
}

fn usage_errors() {
    for args in [
        vec!["doctor"],
        vec!["doctor", "a.db", "b.db"],
        vec!["doctor", "--watch", "x", "a.db"],
        vec!["doctor", "--bogus", "a.db"],
        vec!["repair", "a.db"],
        vec![],
    ] {
        let r = doctor(&args);
        assert_eq!(r.status, 64, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("usage: walguard doctor"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let h = doctor(&["--help"]);
    assert_eq!(h.status, 0);
    assert!(h
        .stdout
        .contains("exit status: 0 healthy, 1 warnings, 2 damage"));
}
