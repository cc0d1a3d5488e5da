//! `libwalguard_preload.so`: walguard for programs you did not write (`walguard exec`).
//!
//! USING. `walguard exec -- CMD [ARGS...]` runs CMD with this library in `LD_PRELOAD`
//! (every child inherits it) and `WALGUARD_EXTENSION` naming walguard's loadable extension
//! `libwalguard.so`. The library interposes exactly three functions, `sqlite3_open`,
//! `sqlite3_open_v2` and `sqlite3_open16`. At the first call that reaches a given SQLite
//! library it registers walguard as that library's default VFS, then calls the real
//! function, so the program's first database and every later one go through walguard.
//!
//! WHY AT THE FIRST OPEN, NOT AT LOAD. A program may configure SQLite before it opens
//! anything (`sqlite3_config` fails with "attempt to configure SQLite after
//! initialization" once any connection was opened). Registering in a constructor would
//! break it; registering inside the program's first open runs after its configuration,
//! exactly when its own open would initialise SQLite anyway. Nothing runs at load: a
//! program that never opens a database never sees walguard, and nothing is printed.
//!
//! HOW IT REGISTERS. Through the program's own SQLite library, never a second copy (this
//! library links no SQLite and defines no other `sqlite3_*` symbol): that library's
//! `sqlite3_auto_extension` is given an entry point of ours that calls walguard's
//! `sqlite3_walguard_init` (which receives the library's `sqlite3_api_routines`, as a
//! `load_extension` would hand them), one private `:memory:` connection is opened and
//! closed through the library's real `sqlite3_open_v2`, and the entry point is cancelled
//! with `sqlite3_cancel_auto_extension`. walguard's extension library is loaded once per
//! process (`dlopen`, `RTLD_LOCAL`). A failure is reported through that library's
//! `sqlite3_log` (and on stderr only with `WALGUARD_STDERR=1`); the program's open then
//! proceeds unguarded, as without this library.
//!
//! FINDING THE REAL FUNCTIONS. Through the library that defines them:
//! 1. `dlsym(RTLD_NEXT, name)`: a definition in the global scope (the `sqlite3` shell, Tcl,
//!    anything linked against `libsqlite3.so.0`) is what every caller binds to;
//! 2. otherwise the SQLite was loaded with `RTLD_LOCAL` (CPython's `_sqlite3` module loads
//!    `libsqlite3.so.0` that way; `RTLD_NEXT` finds nothing there, and a prototype that
//!    relied on it crashed Python): the caller's own lookup scope is searched. The
//!    interposers are naked functions that pass their return address on; `dladdr` names the
//!    calling object, and `dlsym` on a handle of that object (`RTLD_NOLOAD`) finds the
//!    definition that object would have bound to without us;
//! 3. with no caller information (architectures other than x86-64 and AArch64), the one
//!    loaded object that defines the function, if there is exactly one.
//!
//! A SQLite linked statically into an executable is left alone: its calls never go
//! through the dynamic linker, so they never reach these functions.

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// An opaque `sqlite3` connection of the program's library.
type Db = c_void;
type OpenV2Fn = unsafe extern "C" fn(*const c_char, *mut *mut Db, c_int, *const c_char) -> c_int;
type OpenFn = unsafe extern "C" fn(*const c_char, *mut *mut Db) -> c_int;
type Open16Fn = unsafe extern "C" fn(*const c_void, *mut *mut Db) -> c_int;
type CloseFn = unsafe extern "C" fn(*mut Db) -> c_int;
type ErrmsgFn = unsafe extern "C" fn(*mut Db) -> *const c_char;
type LogFn = unsafe extern "C" fn(c_int, *const c_char, ...);
type InitFn = unsafe extern "C" fn(*mut Db, *mut *mut c_char, *const c_void) -> c_int;
type AutoExtFn = unsafe extern "C" fn(Option<unsafe extern "C" fn()>) -> c_int;

const SQLITE_OK: c_int = 0;
const SQLITE_ERROR: c_int = 1;
const SQLITE_WARNING: c_int = 28;
const SQLITE_OK_LOAD_PERMANENTLY: c_int = 256;
const SQLITE_OPEN_READWRITE: c_int = 0x2;
const SQLITE_OPEN_CREATE: c_int = 0x4;

/// The environment variable naming walguard's loadable extension (set by `walguard exec`).
const EXTENSION_ENV: &str = "WALGUARD_EXTENSION";
/// Its file name, looked for next to this library when the variable is unset.
const EXTENSION_FILE: &str = "libwalguard.so";
/// The entry point that registers walguard as the default VFS.
const ENTRY: &CStr = c"sqlite3_walguard_init";

// ---------------------------------------------------------------------------------------
// The interposers: naked trampolines that append their return address as one more
// argument and jump to the Rust function that does the work.

#[cfg(target_arch = "x86_64")]
mod trampolines {
    use super::*;

    /// Interposes `sqlite3_open_v2`; the 5th argument (r8) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        _name: *const c_char,
        _db: *mut *mut Db,
        _flags: c_int,
        _vfs: *const c_char,
    ) -> c_int {
        core::arch::naked_asm!("mov r8, qword ptr [rsp]", "jmp {}", sym open_v2_from)
    }

    /// Interposes `sqlite3_open`; the 3rd argument (rdx) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(_name: *const c_char, _db: *mut *mut Db) -> c_int {
        core::arch::naked_asm!("mov rdx, qword ptr [rsp]", "jmp {}", sym open_from)
    }

    /// Interposes `sqlite3_open16`; the 3rd argument (rdx) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(_name: *const c_void, _db: *mut *mut Db) -> c_int {
        core::arch::naked_asm!("mov rdx, qword ptr [rsp]", "jmp {}", sym open16_from)
    }
}

#[cfg(target_arch = "aarch64")]
mod trampolines {
    use super::*;

    /// Interposes `sqlite3_open_v2`; the 5th argument (x4) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        _name: *const c_char,
        _db: *mut *mut Db,
        _flags: c_int,
        _vfs: *const c_char,
    ) -> c_int {
        core::arch::naked_asm!("mov x4, x30", "b {}", sym open_v2_from)
    }

    /// Interposes `sqlite3_open`; the 3rd argument (x2) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(_name: *const c_char, _db: *mut *mut Db) -> c_int {
        core::arch::naked_asm!("mov x2, x30", "b {}", sym open_from)
    }

    /// Interposes `sqlite3_open16`; the 3rd argument (x2) is the caller's address.
    #[unsafe(naked)]
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(_name: *const c_void, _db: *mut *mut Db) -> c_int {
        core::arch::naked_asm!("mov x2, x30", "b {}", sym open16_from)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod trampolines {
    use super::*;

    /// Interposes `sqlite3_open_v2` (no caller information on this architecture).
    ///
    /// # Safety
    /// The contract of SQLite's `sqlite3_open_v2`.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open_v2(
        name: *const c_char,
        db: *mut *mut Db,
        flags: c_int,
        vfs: *const c_char,
    ) -> c_int {
        // SAFETY: forwarded arguments; no caller address.
        unsafe { open_v2_from(name, db, flags, vfs, ptr::null()) }
    }

    /// Interposes `sqlite3_open` (no caller information on this architecture).
    ///
    /// # Safety
    /// The contract of SQLite's `sqlite3_open`.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open(name: *const c_char, db: *mut *mut Db) -> c_int {
        // SAFETY: forwarded arguments; no caller address.
        unsafe { open_from(name, db, ptr::null()) }
    }

    /// Interposes `sqlite3_open16` (no caller information on this architecture).
    ///
    /// # Safety
    /// The contract of SQLite's `sqlite3_open16`.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_open16(name: *const c_void, db: *mut *mut Db) -> c_int {
        // SAFETY: forwarded arguments; no caller address.
        unsafe { open16_from(name, db, ptr::null()) }
    }
}

/// The addresses of our own interposers: a lookup that returns one of them found us, not
/// the program's SQLite.
fn own_addresses() -> [usize; 3] {
    [
        trampolines::sqlite3_open_v2 as *const () as usize,
        trampolines::sqlite3_open as *const () as usize,
        trampolines::sqlite3_open16 as *const () as usize,
    ]
}

/// Fails an open that has no real function to go to (a program cannot normally get here:
/// it would not have linked). `*db` is set to NULL as SQLite does on failure.
///
/// # Safety
/// `db` is the caller's out-pointer (or NULL).
unsafe fn no_real_function(db: *mut *mut Db) -> c_int {
    if !db.is_null() {
        // SAFETY: the caller's out-pointer, as SQLite would write it.
        unsafe { *db = ptr::null_mut() };
    }
    SQLITE_ERROR
}

unsafe extern "C" fn open_v2_from(
    name: *const c_char,
    db: *mut *mut Db,
    flags: c_int,
    vfs: *const c_char,
    caller: *const c_void,
) -> c_int {
    let Some(real) = resolve(&OPEN_V2, c"sqlite3_open_v2", caller) else {
        // SAFETY: the caller's out-pointer.
        return unsafe { no_real_function(db) };
    };
    register_in_library_of(real);
    // SAFETY: `real` is the program's `sqlite3_open_v2` (resolved by name, not ours).
    unsafe {
        let f = std::mem::transmute::<usize, OpenV2Fn>(real);
        f(name, db, flags, vfs)
    }
}

unsafe extern "C" fn open_from(
    name: *const c_char,
    db: *mut *mut Db,
    caller: *const c_void,
) -> c_int {
    let Some(real) = resolve(&OPEN, c"sqlite3_open", caller) else {
        // SAFETY: the caller's out-pointer.
        return unsafe { no_real_function(db) };
    };
    register_in_library_of(real);
    // SAFETY: `real` is the program's `sqlite3_open`.
    unsafe {
        let f = std::mem::transmute::<usize, OpenFn>(real);
        f(name, db)
    }
}

unsafe extern "C" fn open16_from(
    name: *const c_void,
    db: *mut *mut Db,
    caller: *const c_void,
) -> c_int {
    let Some(real) = resolve(&OPEN16, c"sqlite3_open16", caller) else {
        // SAFETY: the caller's out-pointer.
        return unsafe { no_real_function(db) };
    };
    register_in_library_of(real);
    // SAFETY: `real` is the program's `sqlite3_open16`.
    unsafe {
        let f = std::mem::transmute::<usize, Open16Fn>(real);
        f(name, db)
    }
}

// ---------------------------------------------------------------------------------------
// Finding the real functions

/// A definition found in the global scope (step 1), cached: objects added to the global
/// scope later come after it, so the first definition stays the first.
static OPEN_V2: AtomicUsize = AtomicUsize::new(0);
static OPEN: AtomicUsize = AtomicUsize::new(0);
static OPEN16: AtomicUsize = AtomicUsize::new(0);

/// The program's definition of `name` for a call from `caller` (see the module
/// documentation), never one of ours.
fn resolve(global: &AtomicUsize, name: &CStr, caller: *const c_void) -> Option<usize> {
    let cached = global.load(Ordering::Acquire);
    if cached != 0 {
        return Some(cached);
    }
    let own = own_addresses();
    let usable = |p: usize| (p != 0 && !own.contains(&p)).then_some(p);
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let next = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if let Some(p) = usable(next) {
        global.store(p, Ordering::Release);
        return Some(p);
    }
    if !caller.is_null() {
        if let Some(object) = object_of(caller as usize) {
            if !object.is_main {
                if let Some(p) = lookup_in(&object.path, name).and_then(usable) {
                    return Some(p);
                }
            }
        }
    }
    sole_definer(name).and_then(usable)
}

/// A loaded object, as `dladdr` names it.
struct Object {
    path: CString,
    base: usize,
    is_main: bool,
}

/// The loaded object that contains `addr`.
fn object_of(addr: usize) -> Option<Object> {
    // SAFETY: Dl_info is plain data; dladdr fills it or returns 0.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_owned();
    let base = info.dli_fbase as usize;
    Some(Object {
        path,
        base,
        is_main: base == main_program_base(),
    })
}

/// The load address of the main program (the first object `dl_iterate_phdr` reports).
fn main_program_base() -> usize {
    static BASE: OnceLock<usize> = OnceLock::new();
    *BASE.get_or_init(|| {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: the loader passes a valid info; `data` is our usize.
            unsafe { *(data as *mut usize) = (*info).dlpi_addr as usize };
            1 // stop after the first object
        }
        let mut base = usize::MAX;
        // SAFETY: the callback only writes the usize it is given.
        unsafe { libc::dl_iterate_phdr(Some(first), &mut base as *mut usize as *mut c_void) };
        base
    })
}

/// `dlsym` in the lookup scope of the loaded object at `path` (the object and its
/// dependencies): what that object binds `name` to when we are not in the way.
fn lookup_in(path: &CStr, name: &CStr) -> Option<usize> {
    // SAFETY: RTLD_NOLOAD never loads anything: it returns a handle of a loaded object
    // (taking a reference that dlclose gives back) or NULL.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if h.is_null() {
        return None;
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) } as usize;
    // SAFETY: gives back the reference taken above; the object stays loaded.
    unsafe { libc::dlclose(h) };
    (p != 0).then_some(p)
}

/// The one loaded object other than the main program and this library that itself
/// defines `name`; `None` when there are none or several.
fn sole_definer(name: &CStr) -> Option<usize> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid info; `data` is our Vec.
        unsafe {
            let names = &mut *(data as *mut Vec<CString>);
            let n = (*info).dlpi_name;
            if !n.is_null() && *n != 0 {
                names.push(CStr::from_ptr(n).to_owned());
            }
        }
        0
    }
    let mut names: Vec<CString> = Vec::new();
    // SAFETY: the callback only copies names into the Vec it is given; dlopen is called
    // after dl_iterate_phdr returns, outside its lock.
    unsafe { libc::dl_iterate_phdr(Some(collect), &mut names as *mut _ as *mut c_void) };
    let own_base = object_of(own_addresses()[0]).map(|o| o.base);
    let mut found: Option<usize> = None;
    for path in names {
        let Some(p) = lookup_in(&path, name) else {
            continue;
        };
        let Some(definer) = object_of(p) else {
            continue;
        };
        if definer.is_main || Some(definer.base) == own_base || definer.path != path {
            continue; // found in a dependency: that object is visited itself
        }
        match found {
            None => found = Some(p),
            Some(q) if q == p => {}
            Some(_) => return None,
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// Registering walguard in a SQLite library, once per library

/// The SQLite libraries walguard was registered in (or tried to be), by load address.
static DONE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Registers walguard in the library that defines `real` unless that was done already.
fn register_in_library_of(real: usize) {
    let Some(lib) = object_of(real) else {
        return;
    };
    let mut done = match DONE.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if done.contains(&lib.base) {
        return;
    }
    // Marked first: one attempt per library, whatever the outcome, and a re-entrant
    // open on this thread (none is expected) would not try again.
    done.push(lib.base);
    let outcome = std::panic::catch_unwind(|| register(&lib));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => report(&lib, &msg),
        Err(_) => report(&lib, "walguard preload: registration panicked"),
    }
}

/// The SQLite functions of one library that registration calls.
struct Sqlite {
    open_v2: OpenV2Fn,
    close: CloseFn,
    errmsg: ErrmsgFn,
    auto_extension: AutoExtFn,
    cancel_auto_extension: Option<AutoExtFn>,
}

/// `name` as defined by the library `lib` itself (not one of its dependencies).
fn own_symbol(lib: &Object, name: &CStr) -> Option<usize> {
    let p = lookup_in(&lib.path, name)?;
    (object_of(p)?.base == lib.base).then_some(p)
}

impl Sqlite {
    fn of(lib: &Object) -> Result<Sqlite, String> {
        let need = |name: &CStr| {
            own_symbol(lib, name).ok_or_else(|| {
                format!(
                    "walguard preload: {} does not export {}: walguard is not registered \
                     in it",
                    lib.path.to_string_lossy(),
                    name.to_string_lossy()
                )
            })
        };
        // SAFETY: each pointer is the library's definition of the SQLite function of that
        // name, whose C signature the type states.
        unsafe {
            Ok(Sqlite {
                open_v2: std::mem::transmute::<usize, OpenV2Fn>(need(c"sqlite3_open_v2")?),
                close: std::mem::transmute::<usize, CloseFn>(need(c"sqlite3_close")?),
                errmsg: std::mem::transmute::<usize, ErrmsgFn>(need(c"sqlite3_errmsg")?),
                auto_extension: std::mem::transmute::<usize, AutoExtFn>(need(
                    c"sqlite3_auto_extension",
                )?),
                cancel_auto_extension: own_symbol(lib, c"sqlite3_cancel_auto_extension")
                    .map(|p| std::mem::transmute::<usize, AutoExtFn>(p)),
            })
        }
    }
}

/// walguard's entry point while a registration runs (0 otherwise). Registrations are
/// serialised by `DONE`'s lock.
static ARMED: AtomicUsize = AtomicUsize::new(0);

/// The auto-extension entry point handed to the program's SQLite. It calls walguard's
/// `sqlite3_walguard_init` while a registration is armed and does nothing otherwise (a
/// library too old to cancel an auto extension keeps calling it). walguard's init
/// answers `SQLITE_OK_LOAD_PERMANENTLY`, which `sqlite3_load_extension` understands but
/// the auto-extension loop would take for an error: it becomes `SQLITE_OK`.
unsafe extern "C" fn auto_entry(db: *mut Db, err: *mut *mut c_char, api: *const c_void) -> c_int {
    let init = ARMED.load(Ordering::Acquire);
    if init == 0 {
        return SQLITE_OK;
    }
    // SAFETY: `init` is walguard's sqlite3_walguard_init (see `extension_entry`), called
    // with the arguments SQLite gave us.
    let rc = unsafe { std::mem::transmute::<usize, InitFn>(init)(db, err, api) };
    if rc == SQLITE_OK_LOAD_PERMANENTLY {
        SQLITE_OK
    } else {
        rc
    }
}

fn register(lib: &Object) -> Result<(), String> {
    let sqlite = Sqlite::of(lib)?;
    let init = extension_entry()?;
    // SAFETY: SQLite stores the entry untyped and calls it with the entry-point signature.
    let entry =
        unsafe { std::mem::transmute::<InitFn, unsafe extern "C" fn()>(auto_entry as InitFn) };
    ARMED.store(init, Ordering::Release);
    // SAFETY: the library's own sqlite3_auto_extension with a function that lives as long
    // as this library (never unloaded: nothing dlcloses a preloaded library).
    let rc = unsafe { (sqlite.auto_extension)(Some(entry)) };
    let result = if rc != SQLITE_OK {
        Err(format!(
            "walguard preload: sqlite3_auto_extension of {} failed ({rc})",
            lib.path.to_string_lossy()
        ))
    } else {
        let mut db: *mut Db = ptr::null_mut();
        // SAFETY: the library's real sqlite3_open_v2 with a private in-memory database; its
        // auto extensions (ours) run inside it.
        let rc = unsafe {
            (sqlite.open_v2)(
                c":memory:".as_ptr(),
                &mut db,
                SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                ptr::null(),
            )
        };
        let result = if rc == SQLITE_OK {
            Ok(())
        } else {
            let why = if db.is_null() {
                format!("error {rc}")
            } else {
                // SAFETY: errmsg of the connection the same library just returned.
                let m = unsafe { (sqlite.errmsg)(db) };
                if m.is_null() {
                    format!("error {rc}")
                } else {
                    // SAFETY: SQLite's NUL-terminated message, copied before the close.
                    unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned()
                }
            };
            Err(format!(
                "walguard preload: registering walguard in {} failed: {why}",
                lib.path.to_string_lossy()
            ))
        };
        if !db.is_null() {
            // SAFETY: closes the private connection (SQLite returns one even on failure).
            unsafe { (sqlite.close)(db) };
        }
        if let Some(cancel) = sqlite.cancel_auto_extension {
            // SAFETY: removes the entry registered above.
            unsafe { cancel(Some(entry)) };
        }
        result
    };
    ARMED.store(0, Ordering::Release);
    result
}

/// walguard's `sqlite3_walguard_init`, from its extension library, loaded once per process.
fn extension_entry() -> Result<usize, String> {
    static ENTRY_FN: OnceLock<Result<usize, String>> = OnceLock::new();
    ENTRY_FN.get_or_init(load_extension).clone()
}

fn extension_path() -> Result<CString, String> {
    if let Some(p) = std::env::var_os(EXTENSION_ENV).filter(|p| !p.is_empty()) {
        use std::os::unix::ffi::OsStrExt;
        return CString::new(p.as_bytes())
            .map_err(|_| format!("walguard preload: {EXTENSION_ENV} contains a NUL byte"));
    }
    let own = object_of(own_addresses()[0]).ok_or_else(|| {
        format!("walguard preload: cannot locate this library to find {EXTENSION_FILE}; set {EXTENSION_ENV}")
    })?;
    let mut path = own.path.into_bytes();
    match path.iter().rposition(|&c| c == b'/') {
        Some(slash) => path.truncate(slash + 1),
        None => path.clear(),
    }
    path.extend_from_slice(EXTENSION_FILE.as_bytes());
    CString::new(path).map_err(|_| "walguard preload: library path with a NUL byte".to_owned())
}

fn load_extension() -> Result<usize, String> {
    let path = extension_path()?;
    let shown = path.to_string_lossy().into_owned();
    // SAFETY: dlopen of walguard's extension, which links no SQLite; RTLD_LOCAL keeps its
    // symbols out of the program's scope. A second dlopen of the same file (a later
    // `load_extension` of it) returns this same copy.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns the loader's message for this thread, or NULL.
        let e = unsafe { libc::dlerror() };
        let why = if e.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: a NUL-terminated message owned by the loader.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        };
        return Err(format!(
            "walguard preload: cannot load walguard's extension {shown}: {why}. Set \
             {EXTENSION_ENV} to the path of libwalguard.so (walguard exec does)"
        ));
    }
    // SAFETY: a live handle, a NUL-terminated name.
    let init = unsafe { libc::dlsym(h, ENTRY.as_ptr()) } as usize;
    if init == 0 {
        return Err(format!(
            "walguard preload: {shown} has no entry point {}: not walguard's extension",
            ENTRY.to_string_lossy()
        ));
    }
    Ok(init)
}

/// Reports a failed registration: through the library's `sqlite3_log` (a warning, as
/// walguard reports everything), and on stderr only with `WALGUARD_STDERR=1`.
fn report(lib: &Object, msg: &str) {
    if std::env::var_os("WALGUARD_STDERR").is_some_and(|v| v == "1") {
        eprintln!("{msg}");
    }
    let Some(log) = own_symbol(lib, c"sqlite3_log") else {
        return;
    };
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: the library's sqlite3_log with a "%s" format and one string argument.
    unsafe {
        let log = std::mem::transmute::<usize, LogFn>(log);
        log(SQLITE_WARNING, c"%s".as_ptr(), text.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_program_is_recognised() {
        // A function of this test executable lies in the main program.
        let here = the_main_program_is_recognised as *const () as usize;
        let o = object_of(here).expect("dladdr finds the test executable");
        assert!(
            o.is_main,
            "base {:#x} != {:#x}",
            o.base,
            main_program_base()
        );
        // libc's malloc does not.
        let m = object_of(libc::malloc as *const () as usize).expect("dladdr finds libc");
        assert!(!m.is_main);
        assert!(m.path.to_string_lossy().contains("libc"));
    }

    #[test]
    fn lookups_find_a_libc_function_in_libc_and_nothing_for_sqlite() {
        let m = object_of(libc::malloc as *const () as usize).expect("libc");
        assert!(lookup_in(&m.path, c"malloc").is_some());
        assert!(lookup_in(&m.path, c"sqlite3_open_v2").is_none());
        assert_eq!(sole_definer(c"sqlite3_open_v2"), None);
        assert!(sole_definer(c"pthread_create").is_some());
        assert_eq!(
            resolve(&AtomicUsize::new(0), c"sqlite3_open_v2", ptr::null()),
            None
        );
    }

    #[test]
    fn the_auto_entry_is_inert_unless_armed() {
        // SAFETY: not armed: returns at once without touching its arguments.
        let rc = unsafe { auto_entry(ptr::null_mut(), ptr::null_mut(), ptr::null()) };
        assert_eq!(rc, SQLITE_OK);
    }

    #[test]
    fn a_missing_extension_is_an_error_naming_the_variable() {
        std::env::set_var(EXTENSION_ENV, "/nonexistent/libwalguard.so");
        let e = load_extension().expect_err("no such file");
        std::env::remove_var(EXTENSION_ENV);
        assert!(
            e.contains("/nonexistent/libwalguard.so") && e.contains(EXTENSION_ENV),
            "{e}"
        );
    }
}
