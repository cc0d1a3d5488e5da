//! Helpers shared by the integration tests (each test file uses a subset).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vfs_tests::worker::{Vfs, Worker};
use vfs_tests::workload::fnv1a64;

/// The `vfs-tests` binary built for these tests.
pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vfs-tests"))
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walguard-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Starts a worker process on `db` through `vfs`.
pub fn spawn(vfs: Vfs, db: &Path, name: &str) -> Worker {
    Worker::spawn(exe(), vfs, db, name)
        .unwrap_or_else(|e| panic!("start worker {name} ({vfs}) on {}: {e}", db.display()))
}

/// Sends `cmd` to `w` and returns the payload of its `ok` reply; panics with the
/// worker's message otherwise.
pub fn ok(w: &mut Worker, cmd: &str) -> String {
    w.ok(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// What a directory holds: file name -> (length, FNV-1a of the contents, mode).
pub type Snapshot = BTreeMap<String, (u64, u64, u32)>;

/// Lists `dir` (not recursively) with each file's length, content digest and mode;
/// directories are listed with their mode only.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let mode = meta.permissions().mode();
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_file() {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.insert(name, (meta.len(), fnv1a64(&data), mode));
        } else {
            out.insert(name, (0, 0, mode));
        }
    }
    out
}

/// The names in `dir` (not recursively), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Makes `dir` traversable and listable by other users (tempdirs are 0700).
pub fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 755 {}: {e}", dir.display()));
}

/// The VFS name the connection's main database file reports (`SQLITE_FCNTL_VFSNAME`):
/// `unix` for the unix VFS, walguard's own name when the file went through walguard.
pub fn vfs_name(conn: &rusqlite::Connection) -> String {
    use rusqlite::ffi;
    use std::ffi::{c_char, CStr};
    let mut p: *mut c_char = std::ptr::null_mut();
    // SAFETY: `conn.handle()` is the live sqlite3* of `conn`, used only for this call on
    // this thread; "main" is NUL-terminated; VFSNAME writes a `char*` allocated with
    // sqlite3_malloc (or leaves NULL) into the pointer we pass.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFSNAME,
            (&mut p as *mut *mut c_char).cast(),
        )
    };
    assert_eq!(rc, ffi::SQLITE_OK, "SQLITE_FCNTL_VFSNAME failed");
    assert!(!p.is_null(), "SQLITE_FCNTL_VFSNAME returned no name");
    // SAFETY: non-null NUL-terminated string from sqlite3_malloc; copied, then freed once.
    let name = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: see above.
    unsafe { ffi::sqlite3_free(p.cast()) };
    name
}
