//! The `sqlite3_io_methods` trampolines: the thin unsafe layer between SQLite and the
//! guards. Every method forwards to the wrapped file through its own `pMethods` (read at
//! call time); the guards hook in only where the design says, and the per-page path
//! (`xRead`/`xWrite` past the header, `xShmBarrier`, `xFetch`) adds no system call,
//! allocation or lock.
//!
//! A walguard file is a [`WgFile`] header followed in the same allocation by the wrapped
//! VFS's file (SQLite allocates `szOsFile` bytes = header + wrapped size).

use crate::file_ops::FileOps;
use crate::g1_one_wal_index::{self as g1, ShmHold};
use crate::g2_wal_lifecycle as g2;
use crate::registry::{self, DbNode, Inode, ShmNode};
use crate::stats::bump;
use crate::{g3_short_header_reads as g3, g4_sidecar_identity as g4, g5_torn_extend as g5};
use libsqlite3_sys as ffi;
use std::cell::Cell;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    shm: Option<Arc<ShmNode>>,
    /// This handle's first `xShmMap` succeeded (guarded or not): later calls map further
    /// pages of the same index and never re-run set-up.
    shm_attached: bool,
    hold: ShmHold,
    /// The `-wal` identity this handle's own connection opened, and its path (G4).
    wal_inode: Option<Inode>,
    wal_path: Option<std::ffi::CString>,
    /// What this handle wrote since its size was last verified (G5).
    written: g5::Written,
    /// When the sidecars were last confirmed, and the watch epoch then (G4).
    checked: g4::Checked,
    seen_epoch: u64,
    /// Last size the wrapped `xFileSize` reported (G3).
    last_size: i64,
    /// The connection asked for `readonly_shm=1` (walguard then never creates a `-shm`).
    readonly_shm: bool,
}

impl FileState {
    /// Whether this handle was opened by a parent process before a fork (see
    /// `fork_safety`): it is then forward-only. One relaxed atomic load.
    fn inherited(&self) -> bool {
        self.generation != crate::fork_safety::generation()
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
/// and methods. Returns an SQLite error (after closing the wrapped file) if it cannot.
///
/// # Safety
/// `file` is the walguard file SQLite passed to xOpen, its wrapped part just opened;
/// `name` is SQLite's file name (or NULL).
pub(crate) unsafe fn opened(
    file: *mut ffi::sqlite3_file,
    name: *const c_char,
    flags: c_int,
    wal_id: Option<g4::FileId>,
    wal_epoch: u64,
    vfs_name: &'static str,
    api: &'static crate::api::Api,
) -> c_int {
    // SAFETY: per the contract, the wrapped part was opened by the wrapped VFS.
    let inner = unsafe { inner(file) };
    let path = if name.is_null() {
        String::new()
    } else {
        // SAFETY: SQLite file names are NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    };
    let kind = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        Kind::MainDb
    } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Kind::Wal
    } else {
        Kind::Other
    };
    let db = if kind == Kind::MainDb && !name.is_null() {
        // SAFETY: as above.
        Some(registry::attach_db(unsafe {
            std::ffi::CStr::from_ptr(name)
        }))
    } else {
        None
    };
    if kind == Kind::Wal && !name.is_null() {
        // SAFETY: as above.
        note_wal_opened(unsafe { std::ffi::CStr::from_ptr(name) }, wal_id, wal_epoch);
    }
    bump!(files_opened);
    match kind {
        Kind::MainDb => bump!(db_opened),
        Kind::Wal => bump!(wal_opened),
        Kind::Other => 0,
    };
    tracing::debug!(target: "walguard", path = %path, kind = ?kind, flags, "opened");
    let st = Box::new(FileState {
        kind,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        generation: crate::fork_safety::generation(),
        vfs_name,
        api,
        path,
        db,
        level: ffi::SQLITE_LOCK_NONE,
        shm: None,
        shm_attached: false,
        hold: ShmHold::default(),
        wal_inode: None,
        wal_path: None,
        written: g5::Written::default(),
        checked: g4::Checked::default(),
        seen_epoch: 0,
        last_size: 0,
        // SAFETY: a main database's name as SQLite passed it to xOpen.
        readonly_shm: kind == Kind::MainDb
            && unsafe { crate::api::uri_flag(api, name, c"readonly_shm") },
    });
    // SAFETY: the wrapped open succeeded, so its pMethods is set.
    let version = unsafe { (*(*inner).pMethods).iVersion };
    let wg = file as *mut WgFile;
    // SAFETY: `file` is ours to initialise; SQLite calls no method before xOpen returns.
    unsafe {
        (*wg).state = Box::into_raw(st);
        (*wg).base.pMethods = methods_for(version);
    }
    ffi::SQLITE_OK
}

/// The `-wal` a connection opened, waiting for the first `xShmMap` of that connection's
/// database handle. SQLite opens a connection's `-wal` (`sqlite3WalOpen`) and maps its
/// WAL index in the same call on the same thread, before any other connection of the
/// thread can open another `-wal`; so the identity belongs to one connection, not to the
/// database (two connections of a process may have opened different `-wal` files if one
/// was replaced in between: each must be checked against its own).
struct OpenedWal {
    path: std::ffi::CString,
    id: Option<g4::FileId>,
    /// The watch epoch before the identity was proven (G4 fast path).
    epoch: u64,
}

thread_local! {
    static OPENED_WAL: std::cell::RefCell<Option<OpenedWal>> = const { std::cell::RefCell::new(None) };
}

/// Records the identity of the `-wal` the wrapped VFS just opened (proven by
/// [`g4::confirm_opened`]; `None` when it could not be), for this thread's next first
/// mapping of its database (G4).
fn note_wal_opened(wal: &std::ffi::CStr, id: Option<g4::FileId>, epoch: u64) {
    let _ = OPENED_WAL.try_with(|w| {
        *w.borrow_mut() = Some(OpenedWal {
            path: wal.to_owned(),
            id,
            epoch,
        })
    });
}

/// The `-wal` this thread opened last, if it is `wal_path` (taken: used once).
fn take_opened_wal(wal_path: &std::ffi::CStr) -> Option<OpenedWal> {
    OPENED_WAL
        .try_with(|w| {
            let mut w = w.borrow_mut();
            if w.as_ref().is_some_and(|o| o.path.as_c_str() == wal_path) {
                w.take()
            } else {
                None
            }
        })
        .ok()
        .flatten()
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
            // Opened by the parent process before a fork: its walguard state names the
            // parent's descriptors and locks. Close like plain unix; leak the state.
            inherited_unmapped(&mut st);
            let rc = fwd!(inner, xClose);
            std::mem::forget(st);
            return rc;
        }
        if let (Some(node), Some(shm)) = (st.db.clone(), st.shm.take()) {
            // Never unmapped (SQLite always unmaps first; be safe anyway).
            g1::release_all(&shm, &mut st.hold);
            drop(shm);
            g1::detach_shm(&node, false);
        }
        let rc = fwd!(inner, xClose);
        if let Some(node) = st.db.as_ref() {
            g2::release(node, st.id);
            if st.level >= ffi::SQLITE_LOCK_SHARED {
                g1::left_shared(node);
            }
            registry::detach_db(node);
        }
        rc
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
        if rc == ffi::SQLITE_IOERR_SHORT_READ && ofst < 100 {
            // SAFETY: as above.
            let st = unsafe { state(file) };
            if st.kind == Kind::MainDb && amt > 0 && !st.inherited() {
                // SAFETY: SQLite's buffer holds `amt` bytes.
                let slice = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize) };
                let rc = g3::on_short_header_read(
                    &mut InnerOps(inner),
                    &st.path,
                    slice,
                    ofst,
                    st.last_size,
                );
                if rc == ffi::SQLITE_OK {
                    st.last_size = st.last_size.max(ofst + i64::from(amt));
                }
                return rc;
            }
        } else if rc == ffi::SQLITE_OK && ofst < 100 {
            // A good header read proves the file holds at least that much: a later
            // transient size of 0 is then caught (G3). No system call.
            // SAFETY: as above.
            let st = unsafe { state(file) };
            if st.kind == Kind::MainDb {
                st.last_size = st.last_size.max(ofst + i64::from(amt));
            }
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
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above.
            let st = unsafe { state(file) };
            if st.kind == Kind::MainDb {
                // G5 bookkeeping: arithmetic only, no system call.
                st.written.wrote(ofst, i64::from(amt));
            }
        }
        rc
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    guard("xTruncate", ffi::SQLITE_IOERR_TRUNCATE, || {
        // SAFETY: SQLite passes an open walguard file.
        let rc = fwd!(unsafe { inner(file) }, xTruncate, size);
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above.
            let st = unsafe { state(file) };
            if st.kind == Kind::MainDb {
                // This handle's own truncate proves the size (G3 and G5 judge from it:
                // a stacked shim such as multiplex truncates its chunk files to 0).
                st.written.truncated(size);
                st.last_size = size;
            }
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
        if (rc != ffi::SQLITE_OK || size == 0) && st.last_size > 0 {
            let first = if rc == ffi::SQLITE_OK {
                Ok(size)
            } else {
                Err(rc)
            };
            return match g3::on_suspicious_size(&mut InnerOps(inner), &st.path, first, st.last_size)
            {
                Ok(s) => {
                    // SAFETY: `out` is writable.
                    unsafe { *out = s };
                    st.last_size = s;
                    ffi::SQLITE_OK
                }
                Err(code) => code,
            };
        }
        if rc == ffi::SQLITE_OK {
            st.last_size = size;
        }
        rc
    })
}

// ---- database locks (G1 mirror) ------------------------------------------------------

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xLock", ffi::SQLITE_IOERR_LOCK, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        let Some(node) = st.db.clone().filter(|_| !st.inherited()) else {
            return fwd!(inner, xLock, level);
        };
        let dropped = if level == ffi::SQLITE_LOCK_EXCLUSIVE && st.level < level {
            match g1::before_exclusive(&node, st.id, st.shm_attached) {
                Ok(d) => d,
                Err(rc) => return rc,
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
        } else if level == ffi::SQLITE_LOCK_EXCLUSIVE {
            g1::exclusive_refused(&node, dropped, st.id);
        }
        rc
    })
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xUnlock", ffi::SQLITE_IOERR_UNLOCK, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        let rc = fwd!(inner, xUnlock, level);
        let Some(node) = st.db.clone().filter(|_| !st.inherited()) else {
            return rc;
        };
        if st.level > level {
            if st.level >= ffi::SQLITE_LOCK_EXCLUSIVE {
                g1::left_exclusive(&node, st.id, level != ffi::SQLITE_LOCK_NONE);
            }
            if level == ffi::SQLITE_LOCK_NONE {
                g2::release(&node, st.id);
                if st.level >= ffi::SQLITE_LOCK_SHARED {
                    g1::left_shared(&node);
                }
            }
            st.level = level;
        }
        rc
    })
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

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    guard("xFileControl", ffi::SQLITE_IOERR, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        if st.inherited() && op != ffi::SQLITE_FCNTL_VFSNAME {
            return fwd!(inner, xFileControl, op, arg);
        }
        match op {
            ffi::SQLITE_FCNTL_VFSNAME => {
                let rc = fwd!(inner, xFileControl, op, arg);
                if !arg.is_null() {
                    let slot = arg as *mut *mut c_char;
                    // SAFETY: for VFSNAME, arg is a `char**` SQLite will sqlite3_free.
                    unsafe {
                        (st.api.free)(*slot as *mut c_void);
                        *slot = crate::api::sqlite_strdup(st.api, st.vfs_name);
                    }
                }
                let _ = rc;
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PERSIST_WAL if !arg.is_null() => {
                let slot = arg as *mut c_int;
                // SAFETY: for PERSIST_WAL, arg is an `int*`.
                let query = unsafe { *slot } < 0;
                let rc = fwd!(inner, xFileControl, op, arg);
                // Only SQLite's own last-close question (asked while it holds EXCLUSIVE)
                // starts a tear-down; an application's query at any other time is
                // answered as the wrapped VFS answers it.
                let at_exclusive = st.level >= ffi::SQLITE_LOCK_EXCLUSIVE;
                // SAFETY: as above.
                if rc == ffi::SQLITE_OK && query && at_exclusive && unsafe { *slot } == 0 {
                    if let Some(node) = st.db.as_ref() {
                        if !g2::begin_teardown(node, st.id) {
                            // SAFETY: as above.
                            unsafe { *slot = 1 };
                        }
                    }
                }
                rc
            }
            // The unix VFS answers with F_GETLK on the -shm read marks, which would now
            // see this process's own OFD locks: answer from walguard's descriptor.
            ffi::SQLITE_FCNTL_EXTERNAL_READER if !arg.is_null() => {
                match st.shm.as_ref().filter(|s| s.writable) {
                    Some(shm) => match g1::external_reader(shm) {
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

// ---- shared memory (G1 WAL locks, G2 set-up, G4 identity) ----------------------------

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    guard("xShmMap", ffi::SQLITE_IOERR_SHMMAP, || {
        // SAFETY: SQLite passes an open walguard file.
        let (inner, st) = unsafe { (inner(file), state(file)) };
        let node = match &st.db {
            Some(node) if !st.shm_attached && !st.inherited() => node.clone(),
            _ => return fwd!(inner, xShmMap, page, page_size, extend, out),
        };
        // The `-wal` this connection opened just before (per connection, G4): taken at
        // the first attempt, kept across retries.
        if st.wal_path.is_none() {
            let wal_path = std::ffi::CString::new([node.cpath.to_bytes(), b"-wal"].concat()).ok();
            if let Some(opened) = wal_path.as_deref().and_then(take_opened_wal) {
                st.wal_inode = opened.id.map(|id| (id.dev, id.ino));
                st.seen_epoch = opened.epoch;
            }
            st.wal_path = wal_path;
        }
        // A handle's first mapping: WAL set-up, serialised (G2).
        if let Err(rc) = g2::begin_setup(&node, st.id) {
            return rc;
        }
        let epoch_before = crate::g4_sidecar_watch::epoch();
        let prep = g1::prepare_shm(&node, st.readonly_shm);
        // Joining a mapping this process already has proves nothing about the path: that
        // index may be on a `-shm` removed since (the first transaction then checks).
        let fresh = matches!(prep, g1::ShmPrep::Opened { .. });
        if let g1::ShmPrep::Opened { inode, .. } = prep {
            if let Some(stale) = registry::inherited_stale_mapping(node.inode, inode) {
                g1::abandon_shm(&node, prep);
                g2::release(&node, st.id);
                return refuse_inherited_stale(&st.path, stale);
            }
        }
        let mut rc = fwd!(inner, xShmMap, page, page_size, extend, out);
        // The wrapped VFS attached this handle to its shared memory (even when the page
        // itself is not there yet and `*out` is NULL): from now on walguard serves its
        // WAL locks.
        if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_READONLY {
            match g1::attach_shm(&node, prep) {
                Ok(shm) => {
                    st.shm = shm;
                    st.shm_attached = true;
                    // The -wal this connection proved at its open, for every process.
                    if let (Some(shm), Some(wal)) = (st.shm.as_ref(), st.wal_inode) {
                        if let Some(r) = shm.record() {
                            r.publish_wal(wal);
                        }
                    }
                    // Both identities were proven after these epochs (the `-wal` at its
                    // open, the `-shm` by attach's `stat`): the first transaction need not
                    // prove them again unless an event came since (0: no watcher).
                    if !fresh || st.wal_inode.is_none() || st.seen_epoch == 0 || epoch_before == 0 {
                        st.seen_epoch = 0;
                    } else {
                        st.seen_epoch = st.seen_epoch.min(epoch_before);
                    }
                }
                Err(g1::Retry) => {
                    // Undo the mapping; SQLite treats BUSY from a first xShmMap as
                    // transient and retries its read transaction.
                    // SAFETY: `out` is SQLite's; nothing was handed out to use yet.
                    unsafe { *out = std::ptr::null_mut() };
                    fwd!(inner, xShmUnmap, 0);
                    rc = ffi::SQLITE_BUSY;
                }
            }
        } else {
            g1::abandon_shm(&node, prep);
        }
        g2::release(&node, st.id);
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
        let Some(shm) = st.shm.as_ref().filter(|s| s.writable && !st.inherited()) else {
            return fwd!(inner, xShmLock, ofst, n, flags);
        };
        let rc = g1::shm_lock(shm, &mut st.hold, ofst, n, flags);
        // A write transaction (WRITE slot, exclusive; checked again even inside a checked
        // read transaction: the sidecars may have been replaced since it began) or a read
        // transaction (a READ slot, shared) starts: are the sidecars still ours (G4)?
        let locking = flags & ffi::SQLITE_SHM_LOCK != 0;
        let write = locking && flags & ffi::SQLITE_SHM_EXCLUSIVE != 0 && ofst == 0;
        let read = locking && flags & ffi::SQLITE_SHM_SHARED != 0 && ofst >= 3;
        // A checkpoint (CKPT slot, exclusive) writes the database file from this index:
        // it must not run from a replaced one either.
        let write = write || (locking && flags & ffi::SQLITE_SHM_EXCLUSIVE != 0 && ofst == 1);
        if rc == ffi::SQLITE_OK && (write || read) && st.checked.due(write) {
            // The watcher's epoch (an atomic load) says whether anything happened to a
            // sidecar since this connection last confirmed them; only then the `stat`s.
            let (must, epoch) = crate::g4_sidecar_watch::must_check(shm.watch, st.seen_epoch);
            // A write or checkpoint also reads the kernel's queue itself (one system
            // call): nothing is written through a sidecar removed before it began.
            let must = must || (write && crate::g4_sidecar_watch::drain_now(shm.watch, epoch));
            // The identity record: another walguard process that set up a new index on
            // a replaced -shm (or opened a replaced -wal) said so (memory loads only).
            let record = shm.record();
            let disagrees = record.is_some_and(|r| r.disagrees(shm.inode, st.wal_inode));
            if must || disagrees {
                if let Err(code) = check_sidecars(st, shm) {
                    let undo = (flags & !ffi::SQLITE_SHM_LOCK) | ffi::SQLITE_SHM_UNLOCK;
                    g1::shm_lock(shm, &mut st.hold, ofst, n, undo);
                    return code;
                }
                st.seen_epoch = epoch;
                if let (true, Some(r)) = (disagrees, record) {
                    // Proven again just now: the record was stale, put ours back.
                    r.publish_shm(shm.inode);
                    if let Some(wal) = st.wal_inode {
                        r.publish_wal(wal);
                    }
                }
            }
            st.checked.confirmed();
        }
        rc
    })
}

/// An inherited handle (opened before a fork) stops mapping its WAL index.
fn inherited_unmapped(st: &mut FileState) {
    if std::mem::take(&mut st.shm_attached) {
        if let Some(db) = st.db.as_ref() {
            registry::inherited_unmapped(db.inode, st.shm.as_ref().map(|s| s.inode));
        }
    }
}

/// A new connection of a forked child would be served, by the wrapped VFS, from a WAL
/// index on a `-shm` that was removed or replaced since: connections inherited from the
/// parent still map it. Fails the connection's first mapping (G4) instead.
fn refuse_inherited_stale(path: &str, stale: Inode) -> c_int {
    bump!(sidecar_replaced);
    let msg = format!(
        "walguard: {path}: this process inherited (through fork) connections that still map          a -shm that was removed or replaced since (inode {}); SQLite would serve new          connections from that stale WAL index. Close the inherited connections (SQLite          forbids using them after fork) and open again.",
        stale.1
    );
    tracing::error!(target: "walguard", path, decision = "SQLITE_IOERR_VNODE", "{msg}");
    crate::api::sqlite_log(ffi::SQLITE_IOERR_VNODE, &msg);
    ffi::SQLITE_IOERR_VNODE
}

fn check_sidecars(st: &FileState, shm: &ShmNode) -> Result<(), c_int> {
    let shm_id = g4::FileId {
        dev: shm.inode.0,
        ino: shm.inode.1,
    };
    let rc = g4::check_sidecar(&st.path, &shm.cpath, shm_id);
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    if let (Some(wal), Some(wal_path)) = (st.wal_inode, st.wal_path.as_ref()) {
        let rc = g4::check_sidecar(
            &st.path,
            wal_path,
            g4::FileId {
                dev: wal.0,
                ino: wal.1,
            },
        );
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
    }
    Ok(())
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    guard("xShmBarrier", (), || {
        // SAFETY: SQLite passes an open walguard file.
        let inner = unsafe { inner(file) };
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
        if st.inherited() {
            inherited_unmapped(st);
        }
        let Some(node) = st.db.clone().filter(|_| !st.inherited()) else {
            return fwd!(inner, xShmUnmap, delete);
        };
        let was_attached = std::mem::take(&mut st.shm_attached);
        // The connection leaves WAL mode (or closes): the -wal it used is not the one it
        // will open if it comes back (SQLite may delete and recreate both); its next
        // first mapping takes the identity of the -wal opened then.
        st.wal_path = None;
        st.wal_inode = None;
        st.seen_epoch = 0;
        let mut delete = delete;
        // Refused even where walguard does not serve this handle's WAL locks (degraded):
        // presence and the dead-man-switch probe still see the other holders.
        if delete != 0 && !g1::may_delete_shm(&node) {
            bump!(unlink_refused);
            tracing::info!(target: "walguard", path = %st.path, decision = "keep -shm",
                "unlink of -shm refused: another holder still uses the WAL index");
            delete = 0;
        }
        let Some(shm) = st.shm.take() else {
            let rc = fwd!(inner, xShmUnmap, delete);
            if was_attached {
                g1::detach_unguarded(&node);
            }
            return rc;
        };
        g1::release_all(&shm, &mut st.hold);
        let rc = fwd!(inner, xShmUnmap, delete);
        drop(shm);
        g1::detach_shm(&node, delete != 0 && rc == ffi::SQLITE_OK);
        rc
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

const fn table(version: c_int) -> ffi::sqlite3_io_methods {
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
        xShmMap: if version >= 2 { Some(x_shm_map) } else { None },
        xShmLock: if version >= 2 { Some(x_shm_lock) } else { None },
        xShmBarrier: if version >= 2 {
            Some(x_shm_barrier)
        } else {
            None
        },
        xShmUnmap: if version >= 2 {
            Some(x_shm_unmap)
        } else {
            None
        },
        xFetch: if version >= 3 { Some(x_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(x_unfetch) } else { None },
    }
}

static METHODS_V1: ffi::sqlite3_io_methods = table(1);
static METHODS_V2: ffi::sqlite3_io_methods = table(2);
static METHODS_V3: ffi::sqlite3_io_methods = table(3);

/// The walguard table reporting the same `iVersion` as the wrapped file (at most 3).
fn methods_for(version: c_int) -> *const ffi::sqlite3_io_methods {
    match version {
        ..=1 => &METHODS_V1,
        2 => &METHODS_V2,
        _ => &METHODS_V3,
    }
}
