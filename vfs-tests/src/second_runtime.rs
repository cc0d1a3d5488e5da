//! A second SQLite runtime in this process: the system's `libsqlite3.so.0`, loaded with
//! `dlopen` and driven through `sqlite3_open_v2` / `sqlite3_exec` / `sqlite3_close`.
//!
//! This is the "stdlib sqlite3 + apsw" (or "better-sqlite3 + node:sqlite") situation:
//! two copies of SQLite in one process, each with its own table of open inodes. When
//! the second copy closes its descriptor on a database, `-wal` or `-shm`, the kernel
//! drops every POSIX lock the *process* holds on that file, including the locks of the
//! first copy, which still believes it holds them.
//!
//! The library is loaded once (`RTLD_NOW | RTLD_LOCAL`) and never unloaded. It does not
//! load walguard: it stands for a runtime walguard cannot see into.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

/// The shared object loaded as the second runtime (Debian package `libsqlite3-0`).
pub const LIBRARY: &str = "libsqlite3.so.0";

const SQLITE_OK: c_int = 0;
const SQLITE_OPEN_READWRITE: c_int = 0x0000_0002;
const SQLITE_OPEN_NOMUTEX: c_int = 0x0000_8000;

type OpenV2 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, *const c_char) -> c_int;
type ExecCallback =
    unsafe extern "C" fn(*mut c_void, c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type Exec = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    Option<ExecCallback>,
    *mut c_void,
    *mut *mut c_char,
) -> c_int;
type Close = unsafe extern "C" fn(*mut c_void) -> c_int;
type ErrMsg = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type Free = unsafe extern "C" fn(*mut c_void);
type LibVersion = unsafe extern "C" fn() -> *const c_char;
type BusyTimeout = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

/// Entry points of the second SQLite library.
pub struct SecondRuntime {
    open_v2: OpenV2,
    exec: Exec,
    close: Close,
    errmsg: ErrMsg,
    free: Free,
    busy_timeout: BusyTimeout,
    version: String,
}

// SAFETY: the struct holds only function pointers into a library that is never
// unloaded, and a String. The system libsqlite3 is built thread-safe (serialized by
// default), and every database handle opened through these pointers is created, used
// and closed within one call of `open_read_close`, or owned by a `Held` (neither Send
// nor Sync: its raw handle stays on the thread that opened it).
unsafe impl Send for SecondRuntime {}
// SAFETY: see `Send`; nothing in the struct is mutated after loading.
unsafe impl Sync for SecondRuntime {}

impl std::fmt::Debug for SecondRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondRuntime")
            .field("library", &LIBRARY)
            .field("version", &self.version)
            .finish()
    }
}

fn dlerror_string() -> String {
    // SAFETY: dlerror takes no arguments and returns either NULL or a pointer to a
    // NUL-terminated string owned by libc, valid until the next dl* call on this thread;
    // it is copied out immediately.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlerror".to_owned()
    } else {
        // SAFETY: non-null, NUL-terminated, owned by libc (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Looks `name` up in `handle` and returns it as a raw pointer.
fn symbol(handle: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: `handle` is a live handle returned by dlopen and never closed; `name` is a
    // valid NUL-terminated string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        Err(format!(
            "{LIBRARY}: symbol {} not found: {}",
            name.to_string_lossy(),
            dlerror_string()
        ))
    } else {
        Ok(p)
    }
}

impl SecondRuntime {
    fn load_uncached() -> Result<SecondRuntime, String> {
        let lib = CString::new(LIBRARY).map_err(|e| e.to_string())?;
        // SAFETY: `lib` is a valid NUL-terminated file name. Loading libsqlite3 runs no
        // constructors with preconditions; RTLD_LOCAL keeps its symbols from
        // interposing on the SQLite linked into this program.
        let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "cannot load {LIBRARY} ({}); install it with \
                 `apt-get install -y libsqlite3-0`",
                dlerror_string()
            ));
        }
        // SAFETY (all transmutes below): each symbol is the documented public SQLite C
        // API function of that name, whose C signature the corresponding type alias
        // reproduces exactly; a non-null data pointer from dlsym for a function symbol is
        // that function's address on Linux.
        let rt = unsafe {
            SecondRuntime {
                open_v2: std::mem::transmute::<*mut c_void, OpenV2>(symbol(
                    handle,
                    c"sqlite3_open_v2",
                )?),
                exec: std::mem::transmute::<*mut c_void, Exec>(symbol(handle, c"sqlite3_exec")?),
                close: std::mem::transmute::<*mut c_void, Close>(symbol(handle, c"sqlite3_close")?),
                errmsg: std::mem::transmute::<*mut c_void, ErrMsg>(symbol(
                    handle,
                    c"sqlite3_errmsg",
                )?),
                free: std::mem::transmute::<*mut c_void, Free>(symbol(handle, c"sqlite3_free")?),
                busy_timeout: std::mem::transmute::<*mut c_void, BusyTimeout>(symbol(
                    handle,
                    c"sqlite3_busy_timeout",
                )?),
                version: String::new(),
            }
        };
        let libversion =
            // SAFETY: as above, `sqlite3_libversion` is `const char *(void)`.
            unsafe { std::mem::transmute::<*mut c_void, LibVersion>(symbol(handle, c"sqlite3_libversion")?) };
        // SAFETY: sqlite3_libversion returns a pointer to a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(libversion()) }
            .to_string_lossy()
            .into_owned();
        Ok(SecondRuntime { version, ..rt })
    }

    /// The second runtime, loaded on first use (and never unloaded).
    pub fn get() -> Result<&'static SecondRuntime, String> {
        static RUNTIME: OnceLock<Result<SecondRuntime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(SecondRuntime::load_uncached)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `sqlite3_libversion()` of the second runtime, e.g. `3.40.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Opens `db` read-write (no create) through the second runtime's default VFS, runs
    /// `sql`, closes the database, and returns every result row (columns joined by `|`).
    ///
    /// This is exactly what an application's second SQLite copy does to a shared
    /// database: the close at the end releases this process's POSIX locks on every file
    /// the second runtime opened.
    pub fn open_read_close(&'static self, db: &Path, sql: &str) -> Result<Vec<String>, String> {
        let held = self.open(db)?;
        let rows = held.query(sql)?;
        held.close()?;
        Ok(rows)
    }

    /// Opens `db` read-write (no create) through the second runtime's default VFS and
    /// keeps it open: an application's second SQLite copy holding a connection (and, once
    /// it has read a WAL database, a mapping of its `-shm`).
    pub fn open(&'static self, db: &Path) -> Result<Held, String> {
        let cpath = CString::new(db.as_os_str().as_bytes())
            .map_err(|_| format!("{}: path contains a NUL byte", db.display()))?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `cpath` is NUL-terminated; `handle` is a valid out-pointer; a NULL VFS
        // name selects the second runtime's own default VFS. NOMUTEX is sound because a
        // `Held` (which owns the handle) is neither Send nor Sync.
        let rc = unsafe {
            (self.open_v2)(
                cpath.as_ptr(),
                &mut handle,
                SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                std::ptr::null(),
            )
        };
        let held = Held {
            rt: self,
            handle,
            db: db.display().to_string(),
        };
        if rc != SQLITE_OK {
            // `held` closes the handle sqlite3_open_v2 allocates even on failure.
            return Err(format!(
                "{}: second runtime ({LIBRARY} {}) open failed with code {rc}: {}",
                held.db,
                self.version,
                self.errmsg_of(handle)
            ));
        }
        Ok(held)
    }

    fn errmsg_of(&self, handle: *mut c_void) -> String {
        if handle.is_null() {
            return "out of memory".to_owned();
        }
        // SAFETY: `handle` is a live connection of this library; sqlite3_errmsg returns a
        // NUL-terminated string owned by the connection, copied out immediately.
        let p = unsafe { (self.errmsg)(handle) };
        if p.is_null() {
            "no message".to_owned()
        } else {
            // SAFETY: non-null NUL-terminated string (see above).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }

    fn exec_collect(&self, handle: *mut c_void, sql: &CStr) -> Result<Vec<String>, String> {
        unsafe extern "C" fn collect(
            arg: *mut c_void,
            ncols: c_int,
            values: *mut *mut c_char,
            _names: *mut *mut c_char,
        ) -> c_int {
            let result = std::panic::catch_unwind(|| {
                // SAFETY: `arg` is the `&mut Vec<String>` passed to sqlite3_exec below,
                // alive and not otherwise borrowed for the duration of the call.
                let rows = unsafe { &mut *arg.cast::<Vec<String>>() };
                let mut cols = Vec::new();
                for i in 0..usize::try_from(ncols).unwrap_or(0) {
                    // SAFETY: sqlite3_exec passes an array of `ncols` value pointers.
                    let v = unsafe { *values.add(i) };
                    if v.is_null() {
                        cols.push("NULL".to_owned());
                    } else {
                        // SAFETY: non-null values are NUL-terminated text owned by SQLite
                        // for the duration of the callback; copied out here.
                        cols.push(unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned());
                    }
                }
                rows.push(cols.join("|"));
            });
            // Non-zero aborts the query instead of unwinding into C.
            if result.is_ok() {
                0
            } else {
                1
            }
        }

        let mut rows: Vec<String> = Vec::new();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `handle` is a live connection of this library; `sql` is NUL-terminated;
        // the callback matches sqlite3_exec's callback type and only touches `rows`,
        // which outlives the call; `err` is a valid out-pointer.
        let rc = unsafe {
            (self.busy_timeout)(handle, 5_000);
            (self.exec)(
                handle,
                sql.as_ptr(),
                Some(collect),
                (&mut rows as *mut Vec<String>).cast(),
                &mut err,
            )
        };
        if rc == SQLITE_OK {
            if !err.is_null() {
                // SAFETY: a non-null error string is allocated by this library's
                // sqlite3_malloc and must be freed with its sqlite3_free.
                unsafe { (self.free)(err.cast()) };
            }
            return Ok(rows);
        }
        let msg = if err.is_null() {
            self.errmsg_of(handle)
        } else {
            // SAFETY: non-null NUL-terminated message allocated by this library; copied
            // out, then freed with the same library's sqlite3_free.
            let m = unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: see above.
            unsafe { (self.free)(err.cast()) };
            m
        };
        Err(format!("code {rc}: {msg}"))
    }
}

/// A connection of the second runtime, closed on drop (or by [`Held::close`]).
pub struct Held {
    rt: &'static SecondRuntime,
    handle: *mut c_void,
    db: String,
}

impl Held {
    /// Runs `sql` and returns every result row (columns joined by `|`).
    pub fn query(&self, sql: &str) -> Result<Vec<String>, String> {
        let csql = CString::new(sql).map_err(|_| format!("SQL contains a NUL byte: {sql:?}"))?;
        self.rt.exec_collect(self.handle, &csql).map_err(|e| {
            format!(
                "{}: second runtime ({LIBRARY} {}) query failed: {e}",
                self.db, self.rt.version
            )
        })
    }

    /// Closes the connection: this process's POSIX locks on every file it opened go.
    pub fn close(mut self) -> Result<(), String> {
        self.close_handle()
    }

    fn close_handle(&mut self) -> Result<(), String> {
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        if handle.is_null() {
            return Ok(());
        }
        // SAFETY: `handle` came from sqlite3_open_v2 of this library and is closed once
        // (it is nulled above); sqlite3_exec finalizes its own statements.
        let rc = unsafe { (self.rt.close)(handle) };
        if rc == SQLITE_OK {
            Ok(())
        } else {
            Err(format!(
                "{}: second runtime close failed with code {rc}",
                self.db
            ))
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.close_handle();
    }
}

/// Opens, reads (`SELECT count(*) FROM sqlite_schema`) and closes `db` through the
/// second runtime; returns `"<version> <schema objects>"`.
pub fn open_read_close(db: &Path) -> Result<String, String> {
    let rt = SecondRuntime::get()?;
    let rows = rt.open_read_close(db, "SELECT count(*) FROM sqlite_schema")?;
    Ok(format!("{} {}", rt.version(), rows.join(";")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_database_written_by_rusqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("x.db");
        let conn = rusqlite::Connection::open(&db).expect("open x.db");
        conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2), (3);")
            .expect("fill x.db");
        let rt = SecondRuntime::get().expect("load libsqlite3.so.0");
        assert!(rt.version().starts_with("3."), "{}", rt.version());
        let rows = rt
            .open_read_close(&db, "SELECT count(*), sum(a) FROM t")
            .expect("second runtime read");
        assert_eq!(rows, vec!["3|6".to_owned()]);
        let err = rt
            .open_read_close(&db, "SELECT * FROM missing")
            .expect_err("query of a missing table must fail");
        assert!(err.contains("no such table"), "{err}");
        let err = rt
            .open_read_close(&dir.path().join("absent.db"), "SELECT 1")
            .expect_err("no-create open of a missing file must fail");
        assert!(err.contains("absent.db"), "{err}");
    }
}
