//! The SQL function `walguard_stats()`: walguard's counters as a JSON object, so a
//! Python or shell user can see what walguard did. Added to every new connection through
//! `sqlite3_auto_extension` (and to the connection that loads the extension).

use crate::{api, io::guard};
use libsqlite3_sys as ffi;
use std::os::raw::{c_char, c_int, c_void};

/// `walguard_stats()` for host number `H` (one instantiation per host, so each calls
/// back into the SQLite library that owns the context).
unsafe extern "C" fn walguard_stats<const H: usize>(
    ctx: *mut ffi::sqlite3_context,
    _argc: c_int,
    _argv: *mut *mut ffi::sqlite3_value,
) {
    guard("walguard_stats", (), || {
        let Some(api) = api::host(H) else { return };
        let json = crate::stats().to_json();
        let Ok(len) = c_int::try_from(json.len()) else {
            return;
        };
        // SQLITE_TRANSIENT: SQLite copies the text before we drop it.
        // SAFETY: -1 is SQLite's documented SQLITE_TRANSIENT sentinel, never called.
        let transient =
            Some(unsafe { std::mem::transmute::<isize, unsafe extern "C" fn(*mut c_void)>(-1) });
        // SAFETY: `ctx` is the live context SQLite passed; the text is valid for `len`.
        unsafe { (api.result_text)(ctx, json.as_ptr() as *const c_char, len, transient) };
    })
}

const STATS_FNS: [api::SqlFn; api::MAX_HOSTS] = [
    walguard_stats::<0>,
    walguard_stats::<1>,
    walguard_stats::<2>,
    walguard_stats::<3>,
    walguard_stats::<4>,
    walguard_stats::<5>,
    walguard_stats::<6>,
    walguard_stats::<7>,
];

type Entry = unsafe extern "C" fn(
    *mut ffi::sqlite3,
    *mut *mut c_char,
    *const ffi::sqlite3_api_routines,
) -> c_int;

const AUTO_ENTRIES: [Entry; api::MAX_HOSTS] = [
    auto_entry::<0>,
    auto_entry::<1>,
    auto_entry::<2>,
    auto_entry::<3>,
    auto_entry::<4>,
    auto_entry::<5>,
    auto_entry::<6>,
    auto_entry::<7>,
];

/// Adds `walguard_stats()` to the connection `db` of host number `host`.
///
/// # Safety
/// `db` is an open connection of that host's SQLite.
pub(crate) unsafe fn add_to(host: usize, db: *mut ffi::sqlite3) -> c_int {
    let (Some(api), Some(&f)) = (api::host(host), STATS_FNS.get(host)) else {
        return ffi::SQLITE_ERROR;
    };
    // SAFETY: plain SQLite call; the function has no user data to destroy.
    unsafe {
        (api.create_function_v2)(
            db,
            c"walguard_stats".as_ptr(),
            0,
            ffi::SQLITE_UTF8 | ffi::SQLITE_INNOCUOUS,
            std::ptr::null_mut(),
            Some(f),
            None,
            None,
            None,
        )
    }
}

/// The auto-extension entry point of host `H`: it calls it for every new connection.
unsafe extern "C" fn auto_entry<const H: usize>(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite passes the connection being opened.
    guard("walguard_stats registration", ffi::SQLITE_OK, || unsafe {
        add_to(H, db)
    })
}

/// Makes `walguard_stats()` available on every connection host `host` opens from now on.
pub(crate) fn enable_everywhere(host: usize, yes: bool) {
    if !yes {
        return;
    }
    let (Some(api), Some(&entry)) = (api::host(host), AUTO_ENTRIES.get(host)) else {
        return;
    };
    // SAFETY: SQLite stores the pointer untyped and calls it back with the entry-point
    // signature; registering the same entry twice is a no-op in SQLite.
    unsafe {
        let untyped = std::mem::transmute::<Entry, unsafe extern "C" fn()>(entry);
        (api.auto_extension)(Some(untyped));
    }
}
