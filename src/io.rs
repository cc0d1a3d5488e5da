//! The `sqlite3_io_methods` trampolines: the thin unsafe layer between SQLite and the
//! guards. Each method decodes its pointers, reads the answer fixed at open ("guarded or
//! forward-only", plus the fork generation), forwards to the wrapped file through its own
//! `pMethods` (read at call time), and makes at most one guard call per hook point:
//!
//! | method | guard |
//! |---|---|
//! | `xRead` (short read at offset < 100) | G3 `on_short_header_read` |
//! | `xFileSize` (0 or an error after a proven size) | G3 `on_suspicious_size` |
//! | `xWrite`, `xTruncate` | G5 bookkeeping (arithmetic) |
//! | `xSync` (main database) | G5 `check_after_sync` |
//! | `xLock` SHARED / EXCLUSIVE | G1 `entered_shared` / G2 `before_exclusive` |
//! | `xUnlock` | G2 `after_exclusive`, G1 `left_shared` |
//! | `xFileControl` `PERSIST_WAL` (last close), `EXTERNAL_READER`, `VFSNAME` | G2 `may_clean_up`, the `-shm` node, the name |
//! | `xShmMap` (a handle's first) | G2 `attach` (join or set up the index), then `shm.rs` |
//! | `xShmLock` | G4 `transaction_start` (which takes the lock) |
//! | `xShmUnmap` | G2 `detach` |
//! | `xShmBarrier` | a memory fence (the index is walguard's mapping) |
//! | `xCheckReservedLock`, `xSectorSize`, `xDeviceCharacteristics`, `xFetch`, `xUnfetch`, `xClose` | forwarded |
//!
//! The per-page path (`xRead`/`xWrite` past the header, `xShmBarrier`, `xFetch`) adds no
//! system call, allocation or lock.
//!
//! A walguard file is a [`WgFile`] header followed in the same allocation by the wrapped
//! VFS's file (SQLite allocates `szOsFile` bytes = header + wrapped size).

use crate::file_ops::FileOps;
use crate::g2_wal_lifecycle::{self as g2, MapRequest};
use crate::g5_torn_extend as g5;
use crate::registry::{self, DbNode};
use crate::shm::{ShmHold, ShmNode};
use crate::stats::bump;
use crate::{g1_one_wal_index as g1, g3_short_header_reads as g3, g4_sidecar_identity as g4};
use libsqlite3_sys as ffi;
use std::cell::Cell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A walguard file. `base` must be first: SQLite sees a `sqlite3_file*`.
#[repr(C)]
pub(crate) struct WgFile {
    base: ffi::sqlite3_file,
    state: *mut FileState,
}

/// Bytes before the wrapped file (a multiple of 8, so the wrapped file stays aligned).
pub(crate) const HEADER_SIZE: usize = std::mem::size_of::<WgFile>().next_multiple_of(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    MainDb,
    Wal,
    Other,
}

/// A handle's mapping of the WAL index (walguard serves it) and its WAL locks.
struct Mapped {
    shm: Arc<ShmNode>,
    hold: ShmHold,
}

pub(crate) struct FileState {
    kind: Kind,
    id: u64,
    /// The ownership generation at open (`fork_safety`): a handle inherited through
    /// `fork()` is forward-only in the child.
    generation: u64,
    vfs_name: &'static str,
    /// The SQLite library this file's VFS is registered in (owns VFSNAME strings).
    api: &'static crate::api::Api,
    path: String,
    db: Option<Arc<DbNode>>,
    /// The lock level SQLite holds through this handle.
    level: c_int,
    /// walguard serves this handle's shared memory (decided at open: a main database,
    /// OFD locks available, the wrapped file has shared memory).
    serve_shm: bool,
    shm: Option<Mapped>,
    /// The `-wal` this connection opened for its current WAL session (G4), taken at the
    /// first attempt of its first mapping and kept across retries, forgotten at unmap.
    wal: Option<crate::fd::Inode>,
    /// The connection asked for `readonly_shm=1`.
    readonly_shm: bool,
    /// G4: when this handle last confirmed its sidecars (unwatched mappings).
    checked: g4::Checked,
    /// G5: what this handle wrote since its size was last verified.
    written: g5::Written,
    /// G3: the last size the wrapped `xFileSize` reported (or a header read proved).
    last_size: i64,
}

impl FileState {
    /// Whether this handle was opened by a parent process before a fork (see
    /// `fork_safety`): it is then forward-only. One relaxed atomic load.
    fn inherited(&self) -> bool {
        self.generation != crate::fork_safety::generation()
    }

    /// The database node, for a handle walguard guards (not inherited).
    fn guarded_db(&self) -> Option<Arc<DbNode>> {
        self.db.clone().filter(|_| !self.inherited())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Set while walguard code runs inside an FFI callback (quiet panic hook).
    static IN_WALGUARD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `on_panic` (an SQLite result code). No panic crosses
/// the FFI boundary.
pub(crate) fn guard<T>(what: &'static str, on_panic: T, f: impl FnOnce() -> T) -> T {
    // try_with: SQLite may be called from a thread-local destructor at thread exit.
    let outer = IN_WALGUARD.try_with(|c| c.replace(true)).unwrap_or(false);
    let result = catch_unwind(AssertUnwindSafe(f));
    let _ = IN_WALGUARD.try_with(|c| c.set(outer));
    match result {
        Ok(v) => v,
        Err(payload) => {
            bump!(panics_caught);
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(target: "walguard", method = what, panic = %msg,
                "internal error in walguard; returned an SQLite error code instead of unwinding");
            crate::api::sqlite_log(
                ffi::SQLITE_INTERNAL,
                &format!("walguard: internal error in {what}: {msg}"),
            );
            on_panic
        }
    }
}

/// Installs (once) a panic hook that keeps panics caught inside walguard's callbacks off
/// stderr (they are reported through `tracing` and SQLite's log); every other panic goes
/// to the hook that was there before.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_WALGUARD.try_with(|c| c.get()).unwrap_or(false) {
                previous(info);
            }
        }));
    });
}

/// The wrapped file inside a walguard file.
///
/// # Safety
/// `file` points to a walguard file allocation of at least `HEADER_SIZE` bytes.
unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: the allocation is HEADER_SIZE + the wrapped szOsFile bytes (see vfs.rs).
    unsafe { (file as *mut u8).add(HEADER_SIZE) as *mut ffi::sqlite3_file }
}

/// # Safety
/// `file` is a walguard file that xOpen completed (its state is set until xClose).
unsafe fn state<'a>(file: *mut ffi::sqlite3_file) -> &'a mut FileState {
    // SAFETY: set by `opened` and freed only by `x_close`; SQLite serialises calls on one
    // file handle.
    unsafe { &mut *(*(file as *mut WgFile)).state }
}

/// Calls a method of the wrapped file through its own, current `pMethods`.
macro_rules! fwd {
    ($inner:expr, $method:ident $(, $arg:expr)*) => {{
        let inner = $inner;
        // SAFETY: `inner` is a wrapped file the wrapped VFS opened; its pMethods is
        // valid until its xClose, and the arguments are SQLite's own.
        match unsafe { (*(*inner).pMethods).$method } {
            Some(method) => unsafe { method(inner $(, $arg)*) },
            None => ffi::SQLITE_MISUSE,
        }
    }};
}

/// The wrapped file as a [`FileOps`] for the guards.
struct InnerOps(*mut ffi::sqlite3_file);

impl FileOps for InnerOps {
    fn read(&mut self, buf: &mut [u8], offset: i64) -> c_int {
        let Ok(len) = c_int::try_from(buf.len()) else {
            return ffi::SQLITE_IOERR_READ;
        };
        fwd!(self.0, xRead, buf.as_mut_ptr() as *mut c_void, len, offset)
    }

    fn size(&mut self) -> Result<i64, c_int> {
        let mut size: ffi::sqlite3_int64 = 0;
        let rc = fwd!(self.0, xFileSize, &mut size);
        if rc == ffi::SQLITE_OK {
            Ok(size)
        } else {
            Err(rc)
        }
    }
}

// ---- open / close ------------------------------------------------------------------

/// Called by the VFS's xOpen after the wrapped open succeeded: sets up walguard's state
/// and methods.
///
/// # Safety
/// `file` is the walguard file SQLite passed to xOpen, its wrapped part just opened by
/// the wrapped VFS; `name` is SQLite's file name (or NULL); `out_flags` what the wrapped
/// open reported; `descriptor` the unix VFS's descriptor of the file and its `fstat`
/// (`unix_fd`), `unix` that VFS when it is os_unix.c's.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn opened(
    file: *mut ffi::sqlite3_file,
    name: *const c_char,
    flags: c_int,
    out_flags: c_int,
    descriptor: Option<(std::os::fd::RawFd, libc::stat)>,
    unix: Option<*mut ffi::sqlite3_vfs>,
    vfs_name: &'static str,
    api: &'static crate::api::Api,
) {
    // SAFETY: per the contract, the wrapped part was opened by the wrapped VFS.
    let inner = unsafe { inner(file) };
    // SAFETY: SQLite file names are NUL-terminated.
    let cname = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) });
    let kind = match cname {
        Some(_) if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 => Kind::MainDb,
        Some(_) if flags & ffi::SQLITE_OPEN_WAL != 0 => Kind::Wal,
        _ => Kind::Other,
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let db = match (kind, cname) {
        (Kind::MainDb, Some(cname)) => open_db(
            cname,
            id,
            descriptor,
            out_flags,
            unix.map(|v| crate::unix_fd::UnixVfs(v)),
        ),
        (Kind::Wal, Some(cname)) => {
            let ident = descriptor
                .map(|(_, st)| crate::fd::inode_of(&st))
                .or_else(|| {
                    crate::fd::stat(cname)
                        .ok()
                        .map(|st| crate::fd::inode_of(&st))
                });
            if let Some(ident) = ident {
                g4::wal_opened(cname, ident);
            }
            None
        }
        _ => None,
    };
    bump!(files_opened);
    match kind {
        Kind::MainDb => bump!(db_opened),
        Kind::Wal => bump!(wal_opened),
        Kind::Other => 0,
    };
    let path = cname.map_or_else(String::new, |c| c.to_string_lossy().into_owned());
    tracing::debug!(target: "walguard", path = %path, kind = ?kind, flags, "opened");
    // SAFETY: the wrapped open succeeded, so its pMethods is set.
    let methods = unsafe { &*(*inner).pMethods };
    let has_shm = methods.iVersion >= 2 && methods.xShmMap.is_some();
    let st = Box::new(FileState {
        kind,
        id,
        generation: crate::fork_safety::generation(),
        vfs_name,
        api,
        path,
        serve_shm: db.is_some() && has_shm && crate::fd::HAVE_OFD,
        db,
        level: ffi::SQLITE_LOCK_NONE,
        shm: None,
        wal: None,
        // SAFETY: a main database's name as SQLite passed it to xOpen.
        readonly_shm: kind == Kind::MainDb
            && unsafe { crate::api::uri_flag(api, name, c"readonly_shm") },
        checked: g4::Checked::default(),
        written: g5::Written::default(),
        last_size: 0,
    });
    let wg = file as *mut WgFile;
    // SAFETY: `file` is ours to initialise; SQLite calls no method before xOpen returns.
    unsafe {
        (*wg).state = Box::into_raw(st);
        (*wg).base.pMethods = methods_for(methods.iVersion, has_shm);
    }
}

/// Registers a main database handle: the node of its inode, identified through the unix
/// VFS's descriptor when there is one (else a `stat` of the name, and a descriptor of
/// walguard's own carries the locks).
fn open_db(
    cname: &CStr,
    id: u64,
    descriptor: Option<(std::os::fd::RawFd, libc::stat)>,
    out_flags: c_int,
    unix: Option<crate::unix_fd::UnixVfs>,
) -> Option<Arc<DbNode>> {
    let writable = out_flags & ffi::SQLITE_OPEN_READONLY == 0;
    let (fd, st) = match descriptor {
        Some((fd, st)) => (Some(fd), st),
        None => (None, crate::fd::stat(cname).ok()?),
    };
    let node = registry::attach(cname, &st, id, fd, writable, unix);
    if fd.is_none() {
        if let Err(msg) = node.locks.ensure_carrier(cname) {
            if registry::first_warning(&format!("{} carrier", node.path)) {
                bump!(degraded);
                tracing::warn!(target: "walguard", path = %node.path, "{msg}; lost-lock protection (G1) is off for it");
            }
        }
    }
    Some(node)
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xClose", ffi::SQLITE_IOERR_CLOSE, || {
        // SAFETY: SQLite calls xClose once on a file xOpen completed.
        let inner = unsafe { inner(file) };
        let wg = file as *mut WgFile;
        // SAFETY: as above; we take the state back exactly once.
        let mut st = unsafe { Box::from_raw((*wg).state) };
        // SAFETY: as above.
        unsafe { (*wg).state = std::ptr::null_mut() };
        if st.inherited() {
            // Opened by the parent before a fork: its walguard state names the parent's
            // mappings and locks. Close like plain unix; leak the state.
            let rc = fwd!(inner, xClose);
            std::mem::forget(st);
            return rc;
        }
        if let Some(node) = st.db.clone() {
            if let Some(mut m) = st.shm.take() {
                // SQLite always unmaps first; be safe anyway.
                g2::detach(&node, st.id, &m.shm, &mut m.hold, false);
            }
            if st.level >= ffi::SQLITE_LOCK_EXCLUSIVE {
                g2::after_exclusive(&node, st.id, false);
            }
            if st.level >= ffi::SQLITE_LOCK_SHARED {
                g1::left_shared(&node);
            }
            // Before the wrapped close: the descriptor it closes stops carrying locks.
            registry::detach(&node, st.id);
        }
        fwd!(inner, xClose)
    })
}

// ---- data ---------------------------------------------------------------------------

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: i64,
) -> c_int {
    guard("xRead", ffi::SQLITE_IOERR_READ, || {
        // SAFETY: SQLite passes an open walguard file.
        let inner = unsafe { inner(file) };
        let rc = fwd!(inner, xRead, buf, amt, ofst);
        if ofst >= 100 || (rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ) {
            return rc;
        }
        // SAFETY: as above.
        let st = unsafe { state(file) };
        if st.kind != Kind::MainDb || st.inherited() || amt <= 0 {
            return rc;
        }
        if rc == ffi::SQLITE_OK {
            // A good header read proves the file holds at least that much: a later
            // transient size of 0 is then caught (G3). No system call.
            st.last_size = st.last_size.max(ofst + i64::from(amt));
            return rc;
        }
        // SAFETY: SQLite's buffer holds `amt` bytes.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize) };
        let rc =
            g3::on_short_header_read(&mut InnerOps(inner), &st.path, slice, ofst, st.last_size);
        if rc == ffi::SQLITE_OK {
            st.last_size = st.last_size.max(ofst + i64::from(amt));
        }
        rc
    })
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    ofst: i64,
) -> c_int {
    guard("xWrite", ffi::SQLITE_IOERR_WRITE, || {
        // SAFETY: SQLite passes an open walguard file.
        let rc = fwd!(unsafe { inner(file) }, xWrite, buf, amt, ofst);
        // SAFETY: as above.
        let st = unsafe { state(file) };
        if rc == ffi::SQLITE_OK && st.kind == Kind::MainDb {
            // G5 bookkeeping: arithmetic only, no system call.
            st.written.wrote(ofst, i64::from(amt));
        }
        rc
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    guard("xTruncate", ffi::SQLITE_IOERR_TRUNCATE, || {
        // SAFETY: SQLite passes an open walguard file.
        let rc = fwd!(unsafe { inner(file) }, xTruncate, size);
        // SAFETY: as above.
        let st = unsafe { state(file) };
        if rc == ffi::SQLITE_OK && st.kind == Kind::MainDb {
            // This handle's own truncate proves the size (G3 and G5 judge from it: a
            // stacked shim such as multiplex truncates its chunk files to 0).
            st.written.truncated(size);
            st.last_size = size;
        }
        rc
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    guard("xSync", ffi::SQLITE_IOERR_FSYNC, || {
        // SAFETY: SQLite passes an open walguard file.
        let inner = unsafe { inner(file) };
        let rc = fwd!(inner, xSync, flags);
        // SAFETY: as above.
        let st = unsafe { state(file) };
        if rc == ffi::SQLITE_OK && st.kind == Kind::MainDb && !st.inherited() {
            return g5::check_after_sync(&mut InnerOps(inner), &st.path, &mut st.written);
        }
        rc
    })
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
    guard("xFileSize", ffi::SQLITE_IOERR_FSTAT, || {
        // SAFETY: SQLite passes an open walguard file and a writable out-pointer.
        let inner = unsafe { inner(file) };
        let rc = fwd!(inner, xFileSize, out);
        // SAFETY: as above.
        let st = unsafe { state(file) };
        if st.kind != Kind::MainDb || st.inherited() {
            return rc;
        }
        // SAFETY: `out` is writable.
        let size = unsafe { *out };
        if (rc == ffi::SQLITE_OK && size > 0) || st.last_size == 0 {
            if rc == ffi::SQLITE_OK {
                st.last_size = size;
            }
            return rc;
        }
        let first = if rc == ffi::SQLITE_OK {
            Ok(size)
        } else {
            Err(rc)
        };
        match g3::on_suspicious_size(&mut InnerOps(inner), &st.path, first, st.last_size) {
            Ok(s) => {
                // SAFETY: `out` is writable.
                unsafe { *out = s };
                st.last_size = s;
                ffi::SQLITE_OK
            }
            Err(code) => code,
        }
    })
}

// ---- database locks (G1 mirror, G2 tear-down) ------------------------------------------

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xLock", ffi::SQLITE_IOERR_LOCK, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        let exclusive = level == ffi::SQLITE_LOCK_EXCLUSIVE && st.level < level;
        let Some(node) = st.guarded_db() else {
            if exclusive && st.inherited() && st.shm.is_some() {
                // A connection inherited through fork never tears the parent's WAL down.
                return ffi::SQLITE_BUSY;
            }
            return fwd!(inner, xLock, level);
        };
        let dropped = if exclusive {
            match g2::before_exclusive(&node, st.id, st.shm.as_ref().map(|m| &m.shm)) {
                Ok(d) => d,
                Err(r) => return r.report(&st.path),
            }
        } else {
            false
        };
        let rc = fwd!(inner, xLock, level);
        if rc == ffi::SQLITE_OK {
            if st.level == ffi::SQLITE_LOCK_NONE && level >= ffi::SQLITE_LOCK_SHARED {
                g1::entered_shared(&node);
            }
            st.level = st.level.max(level);
        } else if exclusive {
            g1::exclusive_refused(&node, dropped);
            g2::after_exclusive(&node, st.id, st.level >= ffi::SQLITE_LOCK_SHARED);
        }
        rc
    })
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xUnlock", ffi::SQLITE_IOERR_UNLOCK, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        let rc = fwd!(inner, xUnlock, level);
        let Some(node) = st.guarded_db() else {
            return rc;
        };
        if st.level > level {
            if st.level >= ffi::SQLITE_LOCK_EXCLUSIVE {
                g2::after_exclusive(&node, st.id, level != ffi::SQLITE_LOCK_NONE);
            }
            if level == ffi::SQLITE_LOCK_NONE && st.level >= ffi::SQLITE_LOCK_SHARED {
                g1::left_shared(&node);
            }
            st.level = level;
        }
        rc
    })
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    guard("xFileControl", ffi::SQLITE_IOERR, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        match op {
            ffi::SQLITE_FCNTL_VFSNAME => {
                // The wrapped VFS's name is replaced, not composed: stacked shims compose
                // their own on top of ours, and `walguard` is what `.vfsname` must show.
                // Its result code is irrelevant: the answer is ours either way.
                let _ = fwd!(inner, xFileControl, op, arg);
                if !arg.is_null() {
                    let slot = arg as *mut *mut c_char;
                    // SAFETY: for VFSNAME, arg is a `char**` SQLite will sqlite3_free.
                    unsafe {
                        (st.api.free)(*slot as *mut c_void);
                        *slot = crate::api::sqlite_strdup(st.api, st.vfs_name);
                    }
                }
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PERSIST_WAL if !arg.is_null() => {
                let slot = arg as *mut c_int;
                // SAFETY: for PERSIST_WAL, arg is an `int*`.
                let query = unsafe { *slot } < 0;
                let rc = fwd!(inner, xFileControl, op, arg);
                // SQLite's own last-close question (asked while it holds EXCLUSIVE);
                // an application's query at any other time is answered as unix answers.
                let at_exclusive = st.level >= ffi::SQLITE_LOCK_EXCLUSIVE;
                if let (ffi::SQLITE_OK, true, true, Some(node)) =
                    (rc, query, at_exclusive, st.guarded_db())
                {
                    // SAFETY: as above.
                    if unsafe { *slot } == 0
                        && !g2::may_clean_up(&node, st.id, st.shm.as_ref().map(|m| &m.shm))
                    {
                        // SAFETY: as above.
                        unsafe { *slot = 1 };
                    }
                }
                rc
            }
            // The unix VFS answers from its own -shm, which it does not have here.
            ffi::SQLITE_FCNTL_EXTERNAL_READER if !arg.is_null() => {
                match st.shm.as_ref().filter(|m| !m.shm.readonly) {
                    Some(m) => match m.shm.external_reader() {
                        Ok(yes) => {
                            // SAFETY: for EXTERNAL_READER, arg is an `int*`.
                            unsafe { *(arg as *mut c_int) = c_int::from(yes) };
                            ffi::SQLITE_OK
                        }
                        Err(_) => ffi::SQLITE_IOERR_LOCK,
                    },
                    None => fwd!(inner, xFileControl, op, arg),
                }
            }
            _ => fwd!(inner, xFileControl, op, arg),
        }
    })
}

// ---- shared memory (served by walguard: shm.rs; G2 set-up, G4 transaction start) -------

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    guard("xShmMap", ffi::SQLITE_IOERR_SHMMAP, || {
        // SAFETY: SQLite passes an open walguard file and a writable out-pointer.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        // SAFETY: as above.
        unsafe { *out = std::ptr::null_mut() };
        if !st.serve_shm {
            return fwd!(inner, xShmMap, page, page_size, extend, out);
        }
        if st.inherited() {
            return inherited_refusal(&st.path);
        }
        let (Ok(page), Ok(size)) = (usize::try_from(page), usize::try_from(page_size)) else {
            return ffi::SQLITE_IOERR_SHMMAP;
        };
        if st.shm.is_none() {
            let Some(node) = st.db.clone() else {
                return ffi::SQLITE_IOERR_SHMMAP;
            };
            if st.wal.is_none() {
                st.wal = std::ffi::CString::new([node.cpath.to_bytes(), b"-wal"].concat())
                    .ok()
                    .and_then(|p| g4::take_opened_wal(&p));
            }
            let req = MapRequest {
                handle: st.id,
                readonly_shm: st.readonly_shm,
                wal: st.wal,
            };
            match g2::attach(&node, &req) {
                Ok(shm) => {
                    st.shm = Some(Mapped {
                        shm,
                        hold: ShmHold::default(),
                    })
                }
                Err(r) => return r.report(&st.path),
            }
        }
        let Some(m) = st.shm.as_ref() else {
            return ffi::SQLITE_IOERR_SHMMAP;
        };
        let (rc, p) = m.shm.map(page, size, extend != 0);
        // SAFETY: as above.
        unsafe { *out = p };
        rc
    })
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    ofst: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    guard("xShmLock", ffi::SQLITE_IOERR_SHMLOCK, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        if !st.serve_shm {
            return fwd!(inner, xShmLock, ofst, n, flags);
        }
        if st.inherited() {
            return if flags & ffi::SQLITE_SHM_UNLOCK != 0 {
                ffi::SQLITE_OK
            } else {
                inherited_refusal(&st.path)
            };
        }
        let (Some(node), Some(m)) = (st.db.as_ref(), st.shm.as_mut()) else {
            return ffi::SQLITE_IOERR_SHMLOCK;
        };
        g4::transaction_start(
            node,
            &m.shm,
            st.id,
            &mut m.hold,
            &mut st.checked,
            ofst,
            n,
            flags,
        )
    })
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    guard("xShmBarrier", (), || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        if st.serve_shm {
            std::sync::atomic::fence(Ordering::SeqCst);
            return;
        }
        // SAFETY: the wrapped file's methods are valid while it is open.
        if let Some(method) = unsafe { (*(*inner).pMethods).xShmBarrier } {
            // SAFETY: forwarding SQLite's own call.
            unsafe { method(inner) }
        }
    })
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    guard("xShmUnmap", ffi::SQLITE_IOERR_SHMMAP, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        if !st.serve_shm {
            return fwd!(inner, xShmUnmap, delete);
        }
        // The connection leaves WAL mode (or closes): the -wal it used is not the one it
        // opens if it comes back (SQLite may delete and recreate both).
        st.wal = None;
        let Some(mut m) = st.shm.take() else {
            return ffi::SQLITE_OK;
        };
        match st.guarded_db() {
            Some(node) => g2::detach(&node, st.id, &m.shm, &mut m.hold, delete != 0),
            // Inherited: the parent's mapping and locks; nothing to give back here.
            None => std::mem::forget(m),
        }
        ffi::SQLITE_OK
    })
}

/// A connection inherited through `fork()` tried a transaction (SQLite forbids using a
/// connection in a forked child).
fn inherited_refusal(path: &str) -> c_int {
    crate::refusal::Refusal::new(
        ffi::SQLITE_IOERR_VNODE,
        &crate::stats::COUNTERS.stale_transactions,
        "SQLITE_IOERR_VNODE",
        crate::refusal::Level::Alarm,
        "this connection was opened before fork() in a parent process; SQLite forbids using \
         it in the child. Close it and open a new connection",
    )
    .report(path)
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    guard(
        "xCheckReservedLock",
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        || {
            // SAFETY: SQLite passes an open walguard file.
            fwd!(unsafe { inner(file) }, xCheckReservedLock, out)
        },
    )
}

// ---- pure forwards ---------------------------------------------------------------------

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xSectorSize", 4096, || {
        // SAFETY: SQLite passes an open walguard file.
        fwd!(unsafe { inner(file) }, xSectorSize)
    })
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xDeviceCharacteristics", 0, || {
        // SAFETY: SQLite passes an open walguard file.
        fwd!(unsafe { inner(file) }, xDeviceCharacteristics)
    })
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    ofst: i64,
    amt: c_int,
    out: *mut *mut c_void,
) -> c_int {
    guard("xFetch", ffi::SQLITE_IOERR_MMAP, || {
        // SAFETY: SQLite passes an open walguard file.
        fwd!(unsafe { inner(file) }, xFetch, ofst, amt, out)
    })
}

unsafe extern "C" fn x_unfetch(file: *mut ffi::sqlite3_file, ofst: i64, p: *mut c_void) -> c_int {
    guard("xUnfetch", ffi::SQLITE_IOERR_MMAP, || {
        // SAFETY: SQLite passes an open walguard file.
        fwd!(unsafe { inner(file) }, xUnfetch, ofst, p)
    })
}

// ---- method tables -------------------------------------------------------------------

/// One table per `iVersion` (1–3) and per "has shared memory" (a wrapped file of version
/// 2+ may still have no `xShmMap`, e.g. unix's `nolock=1`: then neither has ours).
const fn table(version: c_int, shm: bool) -> ffi::sqlite3_io_methods {
    let shm = shm && version >= 2;
    ffi::sqlite3_io_methods {
        iVersion: version,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(x_write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved_lock),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device_characteristics),
        xShmMap: if shm { Some(x_shm_map) } else { None },
        xShmLock: if shm { Some(x_shm_lock) } else { None },
        xShmBarrier: if shm { Some(x_shm_barrier) } else { None },
        xShmUnmap: if shm { Some(x_shm_unmap) } else { None },
        xFetch: if version >= 3 { Some(x_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(x_unfetch) } else { None },
    }
}

static METHODS: [ffi::sqlite3_io_methods; 6] = [
    table(1, false),
    table(2, false),
    table(3, false),
    table(1, true),
    table(2, true),
    table(3, true),
];

/// The walguard table reporting the same `iVersion` as the wrapped file (at most 3).
fn methods_for(version: c_int, shm: bool) -> *const ffi::sqlite3_io_methods {
    let v = version.clamp(1, 3) as usize - 1;
    &METHODS[v + if shm { 3 } else { 0 }]
}
