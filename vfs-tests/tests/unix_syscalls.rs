//! walguard does the unix VFS's `-shm` work itself, with the unix VFS's own system-call
//! table: a call an application (or SQLite's test suite: `test_syscall pagesize 65536` in
//! wal64k.test) replaced through `xSetSystemCall` is the one used. Here `getpagesize`
//! reports 64 KiB, as on an aarch64 kernel built with 64 KiB pages: the unix VFS then maps
//! (and grows) the `-shm` two 32 KiB regions at a time, and so must walguard.

use std::os::raw::c_int;
use std::path::Path;

use rusqlite::ffi;
use rusqlite::{Connection, OpenFlags};

unsafe extern "C" fn page_64k() -> c_int {
    65536
}

/// Replaces (or, with `None`, restores) the unix VFS's `getpagesize` entry.
fn set_pagesize(entry: Option<unsafe extern "C" fn() -> c_int>) {
    // SAFETY: the unix VFS is registered for the life of the process; xSetSystemCall takes
    // a NUL-terminated name and an entry of the call's type (NULL restores the default).
    // `rusqlite::ffi` initialised SQLite when the connection in `main` registered walguard.
    unsafe {
        let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
        assert!(!unix.is_null(), "no unix VFS");
        let set = (*unix).xSetSystemCall.expect("unix has xSetSystemCall");
        let ptr: ffi::sqlite3_syscall_ptr = entry.map(|f| {
            std::mem::transmute::<unsafe extern "C" fn() -> c_int, unsafe extern "C" fn()>(f)
        });
        assert_eq!(set(unix, c"getpagesize".as_ptr(), ptr), ffi::SQLITE_OK);
    }
}

/// The `-shm` size after the first write, and once the index needs a third region.
fn shm_sizes(dir: &Path, vfs: &str) -> (u64, u64) {
    let db = dir.join(format!("{vfs}.db"));
    let shm = dir.join(format!("{vfs}.db-shm"));
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let c = Connection::open_with_flags_and_vfs(&db, flags, vfs).expect("open");
    c.execute_batch(
        "PRAGMA page_size=512; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(x);",
    )
    .expect("wal");
    let first = std::fs::metadata(&shm).expect("-shm").len();
    // 4096 frames per region after the first: 9000 one-page commits need a third.
    for i in 0..9000 {
        c.execute("INSERT INTO t VALUES (?1)", [i]).expect("insert");
    }
    let grown = std::fs::metadata(&shm).expect("-shm").len();
    (first, grown)
}

#[test]
fn the_shm_is_mapped_in_the_unix_vfs_page_size() {
    walguard::register(walguard::Options::default().make_default(false)).expect("register");
    let dir = tempfile::tempdir().expect("tempdir");
    set_pagesize(Some(page_64k));
    let unix = shm_sizes(dir.path(), "unix");
    let walguard = shm_sizes(dir.path(), "walguard");
    set_pagesize(None);
    assert_eq!(unix, (65536, 131072), "unix: 64 KiB pieces");
    assert_eq!(walguard, unix, "walguard maps as unix does");
}
