//! Never worse than unix (issue 10): what SQLite's own test suite found walguard doing
//! differently, each run through walguard (registered as the default VFS) and through
//! `unix` in the same test, with the same expectations.
//!
//! - **Backup into a database with another page size** (SQLite's pager1-9.4.1/2):
//!   `sqlite3_backup` from an empty database with 1,024-byte pages into one with
//!   4,096-byte pages succeeds and leaves the destination 1,024 bytes. walguard's G5
//!   misjudged the destination (SQLITE_IOERR_FSYNC, 12,288 bytes left).
//! - **A shim stacked over walguard** (what multiplex.test does): the multiplex VFS opens
//!   its chunk files through the VFS below it with the main database's flags. Chunk 0
//!   starts with a real SQLite header that counts every page of the database, most of
//!   which live in the other chunks, so chunk 0 is shorter than its header says. The
//!   sequence here drives the walguard `sqlite3_vfs` directly (raw `xOpen` with
//!   `SQLITE_OPEN_MAIN_DB`) the way multiplex drives a chunk: write, sync, size,
//!   truncate, rewrite, short read at offset 0; every call must give what unix gives.
//!   walguard's G5 failed the sync of chunk 0 with SQLITE_IOERR_FSYNC ("disk I/O
//!   error" in multiplex-2.5.3 and the chunk-size failures after it).

use std::ffi::{c_int, c_void, CStr, CString};
use std::path::Path;

use rusqlite::{ffi, Connection, OpenFlags};

fn register_default() {
    walguard::register(walguard::Options::default()).expect("register walguard as default");
}

/// Opens `path` through `vfs` (`None`: the default VFS, walguard).
fn open(path: &Path, vfs: Option<&str>) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(path, flags, v),
        None => Connection::open_with_flags(path, flags),
    }
    .unwrap_or_else(|e| panic!("open {} through {vfs:?}: {e}", path.display()))
}

fn vfs_of(c: &Connection) -> String {
    // SAFETY: a live connection's handle; SQLITE_FCNTL_VFSNAME writes a string we free.
    unsafe {
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        let rc = ffi::sqlite3_file_control(
            c.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFSNAME,
            (&mut name as *mut *mut std::ffi::c_char).cast(),
        );
        if rc != ffi::SQLITE_OK || name.is_null() {
            return format!("unknown (rc {rc})");
        }
        let s = CStr::from_ptr(name).to_string_lossy().into_owned();
        ffi::sqlite3_free(name.cast());
        s
    }
}

/// pager1-9.4.1/2: returns (step result, finish result, destination size, vfs names).
fn backup_into_other_page_size(dir: &Path, vfs: Option<&str>) -> (c_int, c_int, u64, String) {
    let src_path = dir.join("src.db");
    let dst_path = dir.join("dst.db");
    let src = open(&src_path, vfs);
    src.execute_batch("PRAGMA page_size = 1024;")
        .expect("source page size");
    let dst = open(&dst_path, vfs);
    dst.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t1(a, b); CREATE TABLE t2(a, b);")
        .expect("fill the destination");
    let names = format!("{} -> {}", vfs_of(&src), vfs_of(&dst));
    // SAFETY: both handles are live for the duration of the backup, which is finished
    // before they are dropped.
    let (step, finish) = unsafe {
        let b = ffi::sqlite3_backup_init(
            dst.handle(),
            c"main".as_ptr(),
            src.handle(),
            c"main".as_ptr(),
        );
        assert!(!b.is_null(), "sqlite3_backup_init failed ({names})");
        let step = ffi::sqlite3_backup_step(b, -1);
        (step, ffi::sqlite3_backup_finish(b))
    };
    drop(dst);
    drop(src);
    let size = std::fs::metadata(&dst_path).expect("stat dst.db").len();
    (step, finish, size, names)
}

/// A temporary directory with a `unix` and a `walguard` subdirectory (one per VFS run).
fn two_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let unix_dir = dir.path().join("unix");
    let wg_dir = dir.path().join("walguard");
    std::fs::create_dir(&unix_dir).expect("mkdir");
    std::fs::create_dir(&wg_dir).expect("mkdir");
    (dir, unix_dir, wg_dir)
}

#[test]
fn backup_into_a_database_with_another_page_size_works_as_on_unix() {
    register_default();
    let (_dir, unix_dir, wg_dir) = two_dirs();

    let unix = backup_into_other_page_size(&unix_dir, Some("unix"));
    assert_eq!(
        (unix.0, unix.1, unix.2),
        (ffi::SQLITE_DONE, ffi::SQLITE_OK, 1024),
        "baseline (unix): backup step/finish/destination size ({})",
        unix.3
    );
    let guarded = backup_into_other_page_size(&wg_dir, None);
    assert!(
        guarded.3.contains("walguard"),
        "the default VFS is not walguard: {}",
        guarded.3
    );
    assert_eq!(
        (guarded.0, guarded.1, guarded.2),
        (ffi::SQLITE_DONE, ffi::SQLITE_OK, 1024),
        "through walguard ({}): sqlite3_backup from an empty 1,024-byte-page database into \
         a 4,096-byte-page one must give what unix gives (step SQLITE_DONE={}, finish \
         SQLITE_OK, 1,024 bytes); got step {} finish {} and {} bytes \
         (SQLITE_IOERR_FSYNC = {})",
        guarded.3,
        ffi::SQLITE_DONE,
        guarded.0,
        guarded.1,
        guarded.2,
        ffi::SQLITE_IOERR_FSYNC
    );
}

// ---- raw VFS: a multiplex chunk ----------------------------------------------------

/// A file opened directly through a `sqlite3_vfs`, closed on drop.
struct RawFile {
    buf: Vec<u64>,
    open: bool,
    _name: Name,
}

/// A main-database name as SQLite builds it (`sqlite3_create_filename`: URI parameters
/// after the name, which `xOpen` implementations may read).
struct Name(ffi::sqlite3_filename);

impl Drop for Name {
    fn drop(&mut self) {
        // SAFETY: allocated by sqlite3_create_filename, freed once.
        unsafe { ffi::sqlite3_free_filename(self.0) }
    }
}

impl RawFile {
    fn open(vfs: &str, path: &Path) -> RawFile {
        let cvfs = CString::new(vfs).expect("vfs name");
        let p = path.to_str().expect("utf-8 temp path");
        let db = CString::new(p).expect("path");
        let journal = CString::new(format!("{p}-journal")).expect("path");
        let wal = CString::new(format!("{p}-wal")).expect("path");
        // SAFETY: plain SQLite calls with NUL-terminated strings; the VFS is registered
        // for the life of the process; the file buffer is szOsFile bytes, 8-aligned, and
        // outlives the open file (closed in Drop before the buffer goes).
        unsafe {
            let v = ffi::sqlite3_vfs_find(cvfs.as_ptr());
            assert!(!v.is_null(), "no VFS named {vfs}");
            let name = Name(ffi::sqlite3_create_filename(
                db.as_ptr(),
                journal.as_ptr(),
                wal.as_ptr(),
                0,
                std::ptr::null_mut(),
            ));
            assert!(!name.0.is_null(), "sqlite3_create_filename");
            let words = usize::try_from((*v).szOsFile)
                .expect("szOsFile")
                .div_ceil(8);
            let mut buf = vec![0u64; words.max(1)];
            let file = buf.as_mut_ptr() as *mut ffi::sqlite3_file;
            let flags =
                ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
            let mut out = 0;
            let rc = ((*v).xOpen.expect("xOpen"))(v, name.0, file, flags, &mut out);
            assert_eq!(
                rc,
                ffi::SQLITE_OK,
                "xOpen of {} through {vfs}",
                path.display()
            );
            RawFile {
                buf,
                open: true,
                _name: name,
            }
        }
    }

    fn file(&mut self) -> *mut ffi::sqlite3_file {
        self.buf.as_mut_ptr() as *mut ffi::sqlite3_file
    }

    fn methods(&mut self) -> &ffi::sqlite3_io_methods {
        // SAFETY: an open file's pMethods is valid until xClose.
        unsafe { &*(*self.file()).pMethods }
    }

    fn write(&mut self, data: &[u8], ofst: i64) -> c_int {
        let f = self.file();
        let m = self.methods().xWrite.expect("xWrite");
        let n = c_int::try_from(data.len()).expect("length");
        // SAFETY: an open file and a buffer of `n` bytes.
        unsafe { m(f, data.as_ptr() as *const c_void, n, ofst) }
    }

    fn read(&mut self, len: usize, ofst: i64) -> (c_int, Vec<u8>) {
        let f = self.file();
        let m = self.methods().xRead.expect("xRead");
        let mut out = vec![0xA5u8; len];
        let n = c_int::try_from(len).expect("length");
        // SAFETY: an open file and a writable buffer of `n` bytes.
        let rc = unsafe { m(f, out.as_mut_ptr() as *mut c_void, n, ofst) };
        (rc, out)
    }

    fn truncate(&mut self, size: i64) -> c_int {
        let f = self.file();
        let m = self.methods().xTruncate.expect("xTruncate");
        // SAFETY: an open file.
        unsafe { m(f, size) }
    }

    fn sync(&mut self) -> c_int {
        let f = self.file();
        let m = self.methods().xSync.expect("xSync");
        // SAFETY: an open file.
        unsafe { m(f, ffi::SQLITE_SYNC_NORMAL) }
    }

    fn size(&mut self) -> (c_int, i64) {
        let f = self.file();
        let m = self.methods().xFileSize.expect("xFileSize");
        let mut size = -1;
        // SAFETY: an open file and a writable out-pointer.
        let rc = unsafe { m(f, &mut size) };
        (rc, size)
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            let f = self.file();
            if let Some(close) = self.methods().xClose {
                // SAFETY: closed once; the buffer is still alive.
                unsafe { close(f) };
            }
        }
    }
}

/// Chunk 0 of a multiplexed database with 1,024-byte pages: a valid rollback-journal
/// header that counts `pages` pages, followed by page data, `len` bytes in all.
fn chunk0(len: usize, pages: u32) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    d[..16].copy_from_slice(b"SQLite format 3\0");
    d[16..18].copy_from_slice(&1024u16.to_be_bytes()); // page size
    d[18] = 1; // write version: rollback journal
    d[19] = 1; // read version
    d[20] = 0; // reserved bytes
    d[21] = 64;
    d[22] = 32;
    d[23] = 32;
    d[24..28].copy_from_slice(&7u32.to_be_bytes()); // change counter
    d[28..32].copy_from_slice(&pages.to_be_bytes()); // in-header database size
    d[32..40].fill(0); // no freelist
    d[40..44].copy_from_slice(&1u32.to_be_bytes()); // schema cookie
    d[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    d[48..56].fill(0);
    d[56..60].copy_from_slice(&1u32.to_be_bytes()); // text encoding UTF-8
    d[60..92].fill(0);
    d[92..96].copy_from_slice(&7u32.to_be_bytes()); // version-valid-for = change counter
    d[96..100].copy_from_slice(&3_040_001u32.to_be_bytes());
    d
}

/// What multiplex does to a chunk, one line per call.
fn chunk_transcript(dir: &Path, vfs: &str) -> Vec<String> {
    const CHUNK: usize = 65_536;
    let mut t = Vec::new();
    let mut f = RawFile::open(vfs, &dir.join("test.x"));
    // A database of 80 pages: 64 in chunk 0, the rest in chunk 1 (not opened here).
    let data = chunk0(CHUNK, 80);
    t.push(format!("write {CHUNK} at 0: rc {}", f.write(&data, 0)));
    let (rc, head) = f.read(100, 0);
    t.push(format!(
        "read header: rc {rc}, matches {}",
        head == data[..100]
    ));
    t.push(format!("sync: rc {}", f.sync()));
    t.push(format!("size: {:?}", f.size()));
    t.push(format!("truncate 0: rc {}", f.truncate(0)));
    t.push(format!("size: {:?}", f.size()));
    let shorter = chunk0(11_264, 11);
    t.push(format!("write 11264 at 0: rc {}", f.write(&shorter, 0)));
    t.push(format!("sync: rc {}", f.sync()));
    t.push(format!("size: {:?}", f.size()));
    let (rc, back) = f.read(16_384, 0);
    let zero_tail = back[11_264..].iter().all(|&b| b == 0);
    t.push(format!(
        "read 16384 at 0: rc {rc}, data matches {}, tail zero-filled {zero_tail}",
        back[..11_264] == shorter[..]
    ));
    t.push(format!("truncate 0: rc {}", f.truncate(0)));
    t.push(format!("size: {:?}", f.size()));
    let (rc, back) = f.read(100, 0);
    t.push(format!(
        "read header of the empty file: rc {rc}, zero-filled {}",
        back.iter().all(|&b| b == 0)
    ));
    t
}

#[test]
fn a_chunk_file_opened_as_a_main_database_behaves_as_on_unix() {
    register_default();
    let (_dir, unix_dir, wg_dir) = two_dirs();
    let unix = chunk_transcript(&unix_dir, "unix");
    assert!(
        unix.iter().any(|l| l == "sync: rc 0"),
        "baseline (unix): {unix:#?}"
    );
    let guarded = chunk_transcript(&wg_dir, walguard::DEFAULT_NAME);
    let diff: Vec<String> = unix
        .iter()
        .zip(&guarded)
        .filter(|(u, g)| u != g)
        .map(|(u, g)| format!("unix: {u} | walguard: {g}"))
        .collect();
    assert!(
        diff.is_empty(),
        "a file opened with SQLITE_OPEN_MAIN_DB through walguard (as the multiplex VFS opens \
         its chunks) must behave as through unix; differences (SQLITE_IOERR_FSYNC = {}):\n{}",
        ffi::SQLITE_IOERR_FSYNC,
        diff.join("\n")
    );
}
