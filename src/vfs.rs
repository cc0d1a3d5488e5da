//! The `sqlite3_vfs` trampolines and registration. walguard's VFS wraps the VFS that
//! is the default when it registers (the `unix` VFS on Linux) and forwards every method
//! to it, passing the wrapped `sqlite3_vfs*`. Only `xOpen` (to wrap the file, `io.rs`)
//! and `xDelete` (G1: no unlink of a WAL sidecar another holder uses) add anything.

use crate::io::{self, guard, HEADER_SIZE};
use crate::stats::bump;
use crate::{api, g1_one_wal_index as g1, g4_sidecar_identity as g4, sqlfn, Error, Options};
use libsqlite3_sys as ffi;
use parking_lot::Mutex;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};

/// Marks a `sqlite3_vfs` as walguard's, so another copy of walguard in the same process
/// (a Rust binary plus the extension, say) recognises it instead of wrapping it.
const MAGIC: u64 = u64::from_be_bytes(*b"walguard");

#[repr(C)]
struct VfsData {
    magic: u64,
    wrapped: *mut ffi::sqlite3_vfs,
    name: &'static str,
    /// The SQLite library this VFS is registered in.
    api: &'static api::Api,
}

struct Registered(*mut ffi::sqlite3_vfs);
// SAFETY: the pointer is a leaked, immutable-after-registration `sqlite3_vfs`; SQLite
// itself shares it between threads.
unsafe impl Send for Registered {}

static REGISTERED: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Whether `vfs` is a walguard VFS (of any copy of walguard in this process).
///
/// # Safety
/// `vfs` is NULL or a registered `sqlite3_vfs`.
unsafe fn is_walguard(ours: &[Registered], vfs: *mut ffi::sqlite3_vfs) -> bool {
    // SAFETY: registered VFSs live for the process.
    unsafe {
        if vfs.is_null() {
            return false;
        }
        if ours.iter().any(|r| r.0 == vfs) {
            return true;
        }
        // Another copy of walguard (e.g. the extension loaded into a Rust program's
        // SQLite): only a VFS named like walguard is inspected, and its pAppData is a
        // VfsData whose first word is the magic.
        let named_like_us = !(*vfs).zName.is_null()
            && CStr::from_ptr((*vfs).zName)
                .to_bytes()
                .starts_with(b"walguard");
        let data = (*vfs).pAppData as *const u64;
        named_like_us && !data.is_null() && data.is_aligned() && *data == MAGIC
    }
}

/// Registers walguard with the SQLite linked into this program.
#[cfg(not(feature = "loadable_extension"))]
pub(crate) fn register(o: &Options) -> Result<(), Error> {
    let Some((host, _)) = api::install(0, || Some(api::linked())) else {
        return Err(Error::NoDefaultVfs);
    };
    register_in(host, o)
}

/// Without the linked SQLite, only the extension entry points can register.
#[cfg(feature = "loadable_extension")]
pub(crate) fn register(_o: &Options) -> Result<(), Error> {
    Err(Error::NoDefaultVfs)
}

/// Registers walguard in host number `host` (see `api::install`).
pub(crate) fn register_in(host: usize, o: &Options) -> Result<(), Error> {
    if o.name.is_empty() || o.name.contains('\0') {
        return Err(Error::InvalidName(o.name.clone()));
    }
    let Some(api) = api::host(host) else {
        return Err(Error::NoDefaultVfs);
    };
    crate::g4_sidecar_identity::set_read_recheck(o.read_recheck);
    crate::g4_sidecar_watch::set_enabled(o.watcher);
    io::install_quiet_panic_hook();
    crate::fork_safety::install();
    warn_old_host(api);
    if !crate::fd::HAVE_OFD {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            bump!(degraded);
            tracing::warn!(target: "walguard",
                "this platform has no open-file-description locks: walguard forwards every call \
                 but guarantees G1/G2 are not enforced here (Linux is the supported target)");
        });
    }
    let cname = CString::new(o.name.as_str()).map_err(|_| Error::InvalidName(o.name.clone()))?;
    let mut registered = REGISTERED.lock();
    // SAFETY: plain SQLite call with a NUL-terminated name.
    let existing = unsafe { (api.vfs_find)(cname.as_ptr()) };
    if !existing.is_null() {
        // SAFETY: `existing` is a registered VFS.
        if !unsafe { is_walguard(&registered, existing) } {
            return Err(Error::NameTaken(o.name.clone()));
        }
        if o.make_default {
            // SAFETY: re-registering a registered VFS only moves it to the default slot.
            let rc = unsafe { (api.vfs_register)(existing, 1) };
            if rc != ffi::SQLITE_OK {
                return Err(Error::Sqlite {
                    what: "sqlite3_vfs_register",
                    code: rc,
                });
            }
        }
        sqlfn::enable_everywhere(host, o.sql_functions);
        return Ok(());
    }
    // SAFETY: plain SQLite call.
    let mut wrapped = unsafe { (api.vfs_find)(std::ptr::null()) };
    // SAFETY: registered VFSs live for the process.
    if unsafe { is_walguard(&registered, wrapped) } {
        // The default is walguard under another name: wrap what it wraps, never itself.
        // SAFETY: a walguard VFS's pAppData is a VfsData.
        wrapped = unsafe { (*((*wrapped).pAppData as *const VfsData)).wrapped };
    }
    if wrapped.is_null() {
        return Err(Error::NoDefaultVfs);
    }
    let name: &'static str = Box::leak(o.name.clone().into_boxed_str());
    let zname: &'static CStr = Box::leak(cname.into_boxed_c_str());
    let data = Box::leak(Box::new(VfsData {
        magic: MAGIC,
        wrapped,
        name,
        api,
    }));
    // SAFETY: `wrapped` is a registered VFS.
    let w = unsafe { &*wrapped };
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: w.iVersion.min(3),
        szOsFile: (HEADER_SIZE as c_int) + w.szOsFile,
        mxPathname: w.mxPathname,
        pNext: std::ptr::null_mut(),
        zName: zname.as_ptr(),
        pAppData: data as *mut VfsData as *mut c_void,
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: w.xDlOpen.map(|_| x_dl_open as _),
        xDlError: w.xDlError.map(|_| x_dl_error as _),
        xDlSym: w.xDlSym.map(|_| x_dl_sym as _),
        xDlClose: w.xDlClose.map(|_| x_dl_close as _),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: Some(x_set_system_call),
        xGetSystemCall: Some(x_get_system_call),
        xNextSystemCall: Some(x_next_system_call),
    }));
    // SAFETY: `vfs` is leaked, so it outlives its registration (the process).
    let rc = unsafe { (api.vfs_register)(vfs, c_int::from(o.make_default)) };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Sqlite {
            what: "sqlite3_vfs_register",
            code: rc,
        });
    }
    registered.push(Registered(vfs));
    bump!(registrations);
    // SAFETY: zName of a registered VFS is a NUL-terminated static string.
    let wrapped_name = unsafe { CStr::from_ptr(w.zName) }.to_string_lossy();
    tracing::info!(target: "walguard", name, wraps = %wrapped_name, default = o.make_default,
        sqlite = unsafe { (api.libversion_number)() }, "registered");
    drop(registered);
    sqlfn::enable_everywhere(host, o.sql_functions);
    Ok(())
}

fn warn_old_host(api: &api::Api) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain SQLite call.
        let version = unsafe { (api.libversion_number)() };
        if api::has_wal_reset_bug(version) {
            bump!(host_wal_reset_bug);
            let msg = format!(
                "walguard: this process's SQLite ({}.{}.{}) has the WAL-reset bug that can lose commits \
                 whatever the VFS does (3.7.0 - 3.51.2); upgrade SQLite to 3.51.3 or later (or 3.44.6 / 3.50.7)",
                version / 1_000_000,
                version / 1000 % 1000,
                version % 1000
            );
            tracing::warn!(target: "walguard", sqlite = version, "{msg}");
            api::sqlite_log(ffi::SQLITE_WARNING, &msg);
            // A library writes nothing to stderr on its own (test suites read it); an
            // operator who wants the warning there asks for it.
            crate::stderr_if_asked(&msg);
        }
    });
}

/// # Safety
/// `vfs` is a walguard VFS.
unsafe fn data<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a VfsData {
    // SAFETY: every walguard VFS's pAppData is a leaked VfsData.
    unsafe { &*((*vfs).pAppData as *const VfsData) }
}

/// Calls a method of the wrapped VFS, passing the wrapped `sqlite3_vfs*`.
macro_rules! wfwd {
    ($vfs:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        // SAFETY: SQLite passes our registered VFS; the wrapped VFS outlives it.
        let w = unsafe { data($vfs) }.wrapped;
        // SAFETY: forwarding SQLite's own arguments to the wrapped VFS.
        match unsafe { (*w).$method } {
            Some(method) => unsafe { method(w $(, $arg)*) },
            None => $missing,
        }
    }};
}

/// How many times a `-wal` that keeps being replaced while it opens is opened before the
/// open fails (SQLITE_CANTOPEN): each replacement is an outside `rm`/`mv` racing SQLite.
const WAL_OPEN_ATTEMPTS: usize = 3;

/// Closes a wrapped file if the wrapped VFS left it open (methods set), once.
///
/// # Safety
/// `inner` is the wrapped part of a walguard file allocation.
unsafe fn close_wrapped(inner: *mut ffi::sqlite3_file) {
    // SAFETY: per the contract; a set pMethods means the wrapped VFS expects xClose.
    unsafe {
        if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
            close(inner);
        }
        (*inner).pMethods = std::ptr::null();
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands us szOsFile bytes at `file`; pMethods NULL means "not open"
    // if we fail before setting it.
    unsafe { (*file).pMethods = std::ptr::null() };
    guard("xOpen", ffi::SQLITE_CANTOPEN, || {
        if crate::testing::take_panic_request() {
            panic!("walguard test hook: forced panic in xOpen");
        }
        // SAFETY: as above; the wrapped file lives right after walguard's header.
        let inner = unsafe { (file as *mut u8).add(HEADER_SIZE) as *mut ffi::sqlite3_file };
        // SAFETY: inner's pMethods must start NULL for the wrapped VFS too.
        unsafe { (*inner).pMethods = std::ptr::null() };
        // SAFETY: SQLite passes our VFS; the wrapped VFS is registered.
        let wrapped = unsafe { data(vfs) }.wrapped;
        // SAFETY: as above.
        let unix = unsafe { crate::unix_fd::is_unix(wrapped) };
        let is_wal = flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null();
        let mut reported = flags;
        let mut rc = ffi::SQLITE_CANTOPEN;
        let mut descriptor = None;
        let open = |reported: &mut c_int| {
            wfwd!(
                vfs,
                xOpen,
                ffi::SQLITE_CANTOPEN,
                name,
                inner,
                flags,
                reported
            )
        };
        for attempt in 1..=WAL_OPEN_ATTEMPTS {
            rc = open(&mut reported);
            if rc != ffi::SQLITE_OK
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EMFILE)
                && crate::registry::evict_idle()
            {
                // Out of descriptors while idle databases keep theirs: given back, once
                // more.
                // SAFETY: as above.
                unsafe { close_wrapped(inner) };
                rc = open(&mut reported);
            }
            if rc != ffi::SQLITE_OK {
                break;
            }
            // SAFETY: `inner` was just opened by the wrapped VFS, a unix one when `unix`.
            descriptor = unix
                .then(|| unsafe { crate::unix_fd::descriptor(inner) })
                .flatten();
            // SAFETY: SQLite file names are NUL-terminated.
            let path = is_wal.then(|| unsafe { CStr::from_ptr(name) });
            match path {
                Some(p) if !g4::opened_is_at_path(p, descriptor.as_ref().map(|(_, st)| st)) => {}
                _ => break,
            }
            // G4 keeps the -wal this connection really opened: one that left its path
            // between SQLite's open and now would be a -wal nobody else reads. Open again.
            bump!(sidecar_replaced);
            tracing::info!(target: "walguard", path = ?path, decision = "reopen",
                "the -wal was removed or replaced while it was being opened; opening again");
            // SAFETY: the wrapped open succeeded, so its methods are set.
            unsafe { close_wrapped(inner) };
            rc = ffi::SQLITE_CANTOPEN;
            descriptor = None;
            if attempt == WAL_OPEN_ATTEMPTS {
                let shown = path
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let msg = format!(
                    "walguard: {shown} was removed or replaced each of the {WAL_OPEN_ATTEMPTS} \
                     times SQLite opened it (something outside SQLite keeps replacing it); \
                     the open fails. Stop whatever rewrites {shown} and retry."
                );
                tracing::error!(target: "walguard", path = %shown, "{msg}");
                api::sqlite_log(ffi::SQLITE_CANTOPEN, &msg);
            }
        }
        if !out_flags.is_null() {
            // SAFETY: SQLite's out-pointer, writable when not NULL.
            unsafe { *out_flags = reported };
        }
        if rc != ffi::SQLITE_OK {
            // SAFETY: if the wrapped open left methods set, it expects xClose.
            unsafe { close_wrapped(inner) };
            bump!(open_errors);
            return rc;
        }
        // SAFETY: the wrapped open succeeded; `vfs` is ours.
        unsafe {
            let d = data(vfs);
            io::opened(
                file,
                name,
                flags,
                reported,
                descriptor,
                unix.then_some(wrapped),
                d.name,
                d.api,
            );
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    guard("xDelete", ffi::SQLITE_IOERR_DELETE, || {
        // SAFETY: SQLite passes a NUL-terminated name.
        if !name.is_null() && g1::refuse_sidecar_delete(unsafe { CStr::from_ptr(name) }) {
            return ffi::SQLITE_OK;
        }
        wfwd!(vfs, xDelete, ffi::SQLITE_IOERR_DELETE, name, sync_dir)
    })
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard("xAccess", ffi::SQLITE_IOERR_ACCESS, || {
        wfwd!(vfs, xAccess, ffi::SQLITE_IOERR_ACCESS, name, flags, out)
    })
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xFullPathname", ffi::SQLITE_CANTOPEN_FULLPATH, || {
        wfwd!(
            vfs,
            xFullPathname,
            ffi::SQLITE_CANTOPEN_FULLPATH,
            name,
            n,
            out
        )
    })
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    guard("xDlOpen", std::ptr::null_mut(), || {
        wfwd!(vfs, xDlOpen, std::ptr::null_mut(), name)
    })
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    guard("xDlError", (), || wfwd!(vfs, xDlError, (), n, out))
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    sym: *const c_char,
) -> Option<DlSym> {
    guard("xDlSym", None, || wfwd!(vfs, xDlSym, None, handle, sym))
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    guard("xDlClose", (), || wfwd!(vfs, xDlClose, (), handle))
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    guard("xRandomness", 0, || wfwd!(vfs, xRandomness, 0, n, out))
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    guard("xSleep", 0, || wfwd!(vfs, xSleep, 0, micros))
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    guard("xCurrentTime", ffi::SQLITE_ERROR, || {
        wfwd!(vfs, xCurrentTime, ffi::SQLITE_ERROR, out)
    })
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xGetLastError", 0, || wfwd!(vfs, xGetLastError, 0, n, out))
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    guard("xCurrentTimeInt64", ffi::SQLITE_ERROR, || {
        // SAFETY: SQLite passes our VFS.
        let w = unsafe { data(vfs) }.wrapped;
        // SAFETY: iVersion >= 2 VFSs have xCurrentTimeInt64; otherwise use xCurrentTime.
        unsafe {
            match ((*w).iVersion >= 2)
                .then_some((*w).xCurrentTimeInt64)
                .flatten()
            {
                Some(m) => m(w, out),
                None => {
                    let mut days = 0f64;
                    let rc = (*w)
                        .xCurrentTime
                        .map_or(ffi::SQLITE_ERROR, |m| m(w, &mut days));
                    *out = (days * 86_400_000.0) as i64;
                    rc
                }
            }
        }
    })
}

unsafe extern "C" fn x_set_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    ptr: ffi::sqlite3_syscall_ptr,
) -> c_int {
    guard("xSetSystemCall", ffi::SQLITE_ERROR, || {
        wfwd!(vfs, xSetSystemCall, ffi::SQLITE_NOTFOUND, name, ptr)
    })
}

unsafe extern "C" fn x_get_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> ffi::sqlite3_syscall_ptr {
    guard("xGetSystemCall", None, || {
        wfwd!(vfs, xGetSystemCall, None, name)
    })
}

unsafe extern "C" fn x_next_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> *const c_char {
    guard("xNextSystemCall", std::ptr::null(), || {
        wfwd!(vfs, xNextSystemCall, std::ptr::null(), name)
    })
}
