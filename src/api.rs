//! The few SQLite entry points walguard calls, taken once from the SQLite walguard runs
//! in: the linked library (Rust applications) or the host's `sqlite3_api_routines`
//! table (the loadable extension, which must not carry a SQLite of its own).
//!
//! None of these is on a hot path: they are used at registration, on connection set-up
//! (the SQL function) and when something is logged.

use libsqlite3_sys as ffi;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub(crate) type SqlFn =
    unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);
pub(crate) type Destructor = Option<unsafe extern "C" fn(*mut c_void)>;

pub(crate) struct Api {
    pub vfs_find: unsafe extern "C" fn(*const c_char) -> *mut ffi::sqlite3_vfs,
    pub vfs_register: unsafe extern "C" fn(*mut ffi::sqlite3_vfs, c_int) -> c_int,
    pub malloc: unsafe extern "C" fn(c_int) -> *mut c_void,
    pub free: unsafe extern "C" fn(*mut c_void),
    pub libversion_number: unsafe extern "C" fn() -> c_int,
    #[allow(clippy::type_complexity)]
    pub create_function_v2: unsafe extern "C" fn(
        *mut ffi::sqlite3,
        *const c_char,
        c_int,
        c_int,
        *mut c_void,
        Option<SqlFn>,
        Option<SqlFn>,
        Option<unsafe extern "C" fn(*mut ffi::sqlite3_context)>,
        Option<unsafe extern "C" fn(*mut c_void)>,
    ) -> c_int,
    pub result_text:
        unsafe extern "C" fn(*mut ffi::sqlite3_context, *const c_char, c_int, Destructor),
    pub auto_extension: unsafe extern "C" fn(Option<unsafe extern "C" fn()>) -> c_int,
    pub log: Option<unsafe extern "C" fn(c_int, *const c_char, ...)>,
    /// `sqlite3_uri_boolean` (SQLite >= 3.7.7; `None` on older hosts).
    pub uri_boolean: Option<unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> c_int>,
}

/// How many distinct SQLite libraries ("hosts") one copy of walguard can serve in one
/// process: e.g. Python's stdlib `sqlite3` and apsw's bundled SQLite both loading the same
/// `libwalguard.so`. Each gets its own VFS and SQL function; the guards' state is shared,
/// which is what makes the runtimes see each other.
pub(crate) const MAX_HOSTS: usize = 8;

static HOSTS: [OnceLock<Api>; MAX_HOSTS] = [const { OnceLock::new() }; MAX_HOSTS];
/// The key (address of the host's routines table; 0 for the linked SQLite) of each slot.
static KEYS: parking_lot::Mutex<Vec<usize>> = parking_lot::Mutex::new(Vec::new());

/// The first host's table (used where no particular host is at hand: logging).
pub(crate) fn get() -> Option<&'static Api> {
    HOSTS[0].get()
}

/// Host number `index`'s table.
pub(crate) fn host(index: usize) -> Option<&'static Api> {
    HOSTS.get(index)?.get()
}

/// The slot of the host identified by `key`, installing the table built by `make` the
/// first time that host is seen. `None` if `make` fails or every slot is taken.
pub(crate) fn install(
    key: usize,
    make: impl FnOnce() -> Option<Api>,
) -> Option<(usize, &'static Api)> {
    let mut keys = KEYS.lock();
    if let Some(i) = keys.iter().position(|&k| k == key) {
        return HOSTS[i].get().map(|api| (i, api));
    }
    if keys.len() >= MAX_HOSTS {
        return None;
    }
    let api = make()?;
    let i = keys.len();
    keys.push(key);
    Some((i, HOSTS[i].get_or_init(|| api)))
}

/// The table of the SQLite linked into this program.
#[cfg(not(feature = "loadable_extension"))]
pub(crate) fn linked() -> Api {
    unsafe extern "C" fn auto_extension(entry: Option<unsafe extern "C" fn()>) -> c_int {
        type Entry = unsafe extern "C" fn(
            *mut ffi::sqlite3,
            *mut *mut c_char,
            *const ffi::sqlite3_api_routines,
        ) -> c_int;
        // SAFETY: walguard only registers functions of the `Entry` signature (see
        // `sqlfn::auto_entry`); SQLite calls them back with that signature.
        let typed: Option<Entry> =
            entry.map(|f| unsafe { std::mem::transmute::<unsafe extern "C" fn(), Entry>(f) });
        // SAFETY: plain call into the linked SQLite.
        unsafe { ffi::sqlite3_auto_extension(typed) }
    }
    Api {
        vfs_find: ffi::sqlite3_vfs_find,
        vfs_register: ffi::sqlite3_vfs_register,
        malloc: ffi::sqlite3_malloc,
        free: ffi::sqlite3_free,
        libversion_number: ffi::sqlite3_libversion_number,
        create_function_v2: ffi::sqlite3_create_function_v2,
        result_text: ffi::sqlite3_result_text,
        auto_extension,
        log: Some(ffi::sqlite3_log),
        uri_boolean: Some(ffi::sqlite3_uri_boolean),
    }
}

/// The table of the host SQLite that loaded the extension. Only slots that exist since
/// SQLite 3.7.3 are read (the struct only grows at its end), so old hosts work.
///
/// # Safety
/// `routines` is the pointer SQLite passed to an extension entry point.
#[cfg(feature = "loadable_extension")]
pub(crate) unsafe fn from_routines(routines: *const ffi::sqlite3_api_routines) -> Option<Api> {
    if routines.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `routines` is SQLite's live, static routines table.
    let r = unsafe { &*routines };
    Some(Api {
        vfs_find: r.vfs_find?,
        vfs_register: r.vfs_register?,
        malloc: r.malloc?,
        free: r.free?,
        libversion_number: r.libversion_number?,
        create_function_v2: r.create_function_v2?,
        result_text: r.result_text?,
        auto_extension: r.auto_extension?,
        log: r.log,
        uri_boolean: r.uri_boolean,
    })
}

/// Whether the URI parameter `param` of the main-database name `name` (as SQLite passed
/// it to `xOpen`) is true; `false` when the host cannot say.
///
/// # Safety
/// `name` is the name SQLite passed to `xOpen` for a main database (it carries the URI
/// parameters after its terminating NUL).
pub(crate) unsafe fn uri_flag(api: &Api, name: *const c_char, param: &std::ffi::CStr) -> bool {
    match api.uri_boolean {
        // SAFETY: per the contract; `param` is NUL-terminated.
        Some(f) if !name.is_null() => unsafe { f(name, param.as_ptr(), 0) != 0 },
        _ => false,
    }
}

/// Sends a message to SQLite's error log (`SQLITE_CONFIG_LOG`), where hosts that listen
/// to it will see it next to SQLite's own messages.
pub(crate) fn sqlite_log(code: c_int, msg: &str) {
    let Some(api) = get() else { return };
    let Some(log) = api.log else { return };
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: "%s" with one NUL-terminated string argument matches the format.
    unsafe { log(code, c"%s".as_ptr(), text.as_ptr()) };
}

/// Copies `s` into memory from the host's `sqlite3_malloc` (for strings it will free).
pub(crate) fn sqlite_strdup(api: &Api, s: &str) -> *mut c_char {
    let bytes = s.as_bytes();
    let Ok(len) = c_int::try_from(bytes.len() + 1) else {
        return std::ptr::null_mut();
    };
    // SAFETY: sqlite3_malloc returns either NULL or `len` writable bytes.
    let p = unsafe { (api.malloc)(len) } as *mut u8;
    if p.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `p` has room for the bytes plus the terminating NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
    }
    p as *mut c_char
}

/// `true` when the SQLite of `version` (sqlite3_libversion_number) has the WAL-reset bug
/// that loses commits whatever the VFS does: 3.7.0 to 3.51.2, except the fixed backports
/// 3.44.6+ (3.44 line) and 3.50.7+ (3.50 line).
pub(crate) fn has_wal_reset_bug(version: c_int) -> bool {
    let fixed_backport =
        (3_044_006..3_045_000).contains(&version) || (3_050_007..3_051_000).contains(&version);
    (3_007_000..3_051_003).contains(&version) && !fixed_backport
}

#[cfg(test)]
mod tests {
    use super::has_wal_reset_bug;

    #[test]
    fn wal_reset_bug_range() {
        assert!(has_wal_reset_bug(3_040_001)); // Debian 12
        assert!(has_wal_reset_bug(3_051_002));
        assert!(!has_wal_reset_bug(3_051_003));
        assert!(!has_wal_reset_bug(3_054_001));
        assert!(!has_wal_reset_bug(3_044_006));
        assert!(has_wal_reset_bug(3_044_005));
        assert!(!has_wal_reset_bug(3_050_007));
        assert!(has_wal_reset_bug(3_050_006));
        assert!(!has_wal_reset_bug(3_006_023));
    }
}
