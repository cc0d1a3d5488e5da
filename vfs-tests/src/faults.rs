//! Fault injection beneath SQLite's `unix` VFS.
//!
//! SQLite's `unix` VFS makes its system calls through a table that
//! `sqlite3_vfs.xSetSystemCall` can override. [`install`] replaces four of its entries
//! with hooks that pass every call through to the original unless an armed fault
//! matches. The hooks act on everything that goes through the `unix` VFS in this process
//! (its `unix-*` variants share the table), so faults armed here also act beneath
//! walguard, which forwards to `unix`.
//!
//! ## Which entries the bundled SQLite really uses
//! libsqlite3-sys 0.40 compiles SQLite 3.54.1 with no `HAVE_PREAD64`/`USE_PREAD64`, and
//! os_unix.c defines `HAVE_PREAD`/`HAVE_PWRITE` on Linux and macOS, so `USE_PREAD` is in
//! force: reads go through **`pread`** (`seekAndRead`), writes through **`pwrite`**
//! (`seekAndWriteFd`); `pread64`/`pwrite64` are null and `read`/`write` are used only
//! for other purposes. `xFileSize` is **`fstat`** (which `unixOpen`, the `-shm` code and
//! `fcntlSizeHint` also call) and `xTruncate` is **`ftruncate`**. `fsync`/`fdatasync`
//! are *not* in the table, so a lying `fsync` is modelled by [`Fault::DropWrite`] (the
//! pages written past the old end never reach the file) and [`Fault::DropTruncate`]
//! (growth by `ftruncate`, as a WAL checkpoint does it, never happens). Reads served from
//! a memory map (`PRAGMA mmap_size > 0`; the default is 0) bypass `pread`.
//!
//! Faults are matched by the *current* path of the file descriptor
//! (`/proc/self/fd/N`, without a trailing ` (deleted)`), which must end with the armed
//! suffix: `"app.db"` matches `/tmp/x/app.db` but not `/tmp/x/app.db-wal`. This needs
//! Linux's `/proc`; elsewhere nothing matches (and [`install`] says so).
//!
//! ## Arming
//! ```no_run
//! use vfs_tests::faults::{self, Fault, Times};
//! faults::install().expect("hook the unix VFS");
//! let armed = faults::arm("/app.db", Fault::EmptyRead, Times::Calls(2));
//! // ... open the database: its first two preads come back empty ...
//! assert_eq!(armed.injected(), 2);
//! drop(armed); // disarms
//! ```
//! A fault armed for [`Times::Calls`]`(n)` fires on the next `n` calls that match it and
//! then stays inert; [`Times::WhileArmed`] fires until the [`Armed`] handle is dropped or
//! [`Armed::disarm`]ed. When several faults match a call, the first armed wins.
//!
//! ## From the environment
//! A worker process calls [`arm_from_env`] at start-up; it reads [`ENV_VAR`]
//! (`WALGUARD_FAULTS`): faults separated by `;`, each `FAULT@SUFFIX` or
//! `FAULT@SUFFIX*N` (`N` calls; without it, for the life of the process). `FAULT` is
//! one of `short_read`, `empty_read`, `read_error[:ERRNO]`, `zero_size`,
//! `fstat_error[:ERRNO]`, `drop_write:OFFSET`, `write_error[:ERRNO]`, `drop_truncate`
//! (`ERRNO` defaults to 5, `EIO`). Example:
//! `WALGUARD_FAULTS='empty_read@/app.db*2;drop_write:8192@/app.db'`.
//! [`to_env`] builds such a value.

use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rusqlite::ffi;

/// The environment variable [`arm_from_env`] reads.
pub const ENV_VAR: &str = "WALGUARD_FAULTS";

/// `EIO`, the default errno of the error faults.
pub const EIO: i32 = libc::EIO;

/// A fault, injected into one system call of a matching file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `pread` returns the first half of the bytes asked for (none if one was asked
    /// for), and the follow-up `pread` that SQLite issues for the rest returns 0 (end
    /// of file): `xRead` reports `SQLITE_IOERR_SHORT_READ`.
    ShortRead,
    /// `pread` returns 0 bytes: `xRead` reports `SQLITE_IOERR_SHORT_READ`, all zeros.
    EmptyRead,
    /// `pread` fails with this errno (`EIO` makes SQLite report
    /// `SQLITE_IOERR_CORRUPTFS`, most others `SQLITE_IOERR_READ`).
    ReadError(i32),
    /// `fstat` succeeds but reports a size of 0.
    ZeroSize,
    /// `fstat` fails with this errno (`xFileSize` reports `SQLITE_IOERR_FSTAT`).
    FstatError(i32),
    /// `pwrite` silently discards the bytes at or beyond this file offset and reports
    /// them written (bytes before it are written).
    DropWrite {
        /// First offset whose bytes are dropped.
        from: i64,
    },
    /// `pwrite` fails with this errno.
    WriteError(i32),
    /// `ftruncate` reports success and changes nothing.
    DropTruncate,
}

/// A fault's kind, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ShortRead,
    EmptyRead,
    ReadError,
    ZeroSize,
    FstatError,
    DropWrite,
    WriteError,
    DropTruncate,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 8] = [
        Kind::ShortRead,
        Kind::EmptyRead,
        Kind::ReadError,
        Kind::ZeroSize,
        Kind::FstatError,
        Kind::DropWrite,
        Kind::WriteError,
        Kind::DropTruncate,
    ];

    /// The name used in [`ENV_VAR`] and in [`Counts`].
    pub fn name(self) -> &'static str {
        match self {
            Kind::ShortRead => "short_read",
            Kind::EmptyRead => "empty_read",
            Kind::ReadError => "read_error",
            Kind::ZeroSize => "zero_size",
            Kind::FstatError => "fstat_error",
            Kind::DropWrite => "drop_write",
            Kind::WriteError => "write_error",
            Kind::DropTruncate => "drop_truncate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Fault {
    /// The kind of this fault.
    pub fn kind(self) -> Kind {
        match self {
            Fault::ShortRead => Kind::ShortRead,
            Fault::EmptyRead => Kind::EmptyRead,
            Fault::ReadError(_) => Kind::ReadError,
            Fault::ZeroSize => Kind::ZeroSize,
            Fault::FstatError(_) => Kind::FstatError,
            Fault::DropWrite { .. } => Kind::DropWrite,
            Fault::WriteError(_) => Kind::WriteError,
            Fault::DropTruncate => Kind::DropTruncate,
        }
    }

    fn call(self) -> Call {
        match self {
            Fault::ShortRead | Fault::EmptyRead | Fault::ReadError(_) => Call::Pread,
            Fault::ZeroSize | Fault::FstatError(_) => Call::Fstat,
            Fault::DropWrite { .. } | Fault::WriteError(_) => Call::Pwrite,
            Fault::DropTruncate => Call::Ftruncate,
        }
    }
}

impl fmt::Display for Fault {
    /// The [`ENV_VAR`] syntax of the fault.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind().name();
        match self {
            Fault::ReadError(e) | Fault::FstatError(e) | Fault::WriteError(e) => {
                write!(f, "{name}:{e}")
            }
            Fault::DropWrite { from } => write!(f, "{name}:{from}"),
            _ => f.write_str(name),
        }
    }
}

/// How long a fault stays armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// For the next `n` matching calls.
    Calls(u32),
    /// Until disarmed.
    WhileArmed,
}

/// How many faults of each kind were injected in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u64; 8]);

impl Counts {
    /// Faults of `kind` injected.
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind.index()]
    }

    /// Faults of every kind injected.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl fmt::Display for Counts {
    /// `short_read=0 empty_read=2 ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in Kind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", k.name(), self.get(*k))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// State shared by the hooks.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Pread,
    Fstat,
    Pwrite,
    Ftruncate,
}

struct Entry {
    id: u64,
    suffix: Vec<u8>,
    fault: Fault,
    remaining: Option<u32>,
    injected: u64,
}

impl Entry {
    fn live(&self) -> bool {
        self.remaining != Some(0)
    }
}

struct State {
    entries: Vec<Entry>,
    /// After a [`Fault::ShortRead`]: the descriptor and offset of SQLite's follow-up
    /// `pread`, which must see end of file.
    pending_eof: Vec<(c_int, i64)>,
    next_id: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    entries: Vec::new(),
    pending_eof: Vec::new(),
    next_id: 1,
});

/// Faults with calls left plus pending end-of-file continuations: the hooks' fast path
/// (nothing armed, nothing pending) takes no lock and makes no extra system call.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

static COUNTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn state() -> MutexGuard<'static, State> {
    // A panic while the lock was held cannot leave the state inconsistent (every
    // update is a single field store), so a poisoned lock is used as is.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The path the descriptor names now, as bytes.
fn path_of_fd(fd: c_int) -> Option<Vec<u8>> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    use std::os::unix::ffi::OsStringExt;
    let mut p = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()?
        .into_os_string()
        .into_vec();
    if p.ends_with(b" (deleted)") {
        p.truncate(p.len() - b" (deleted)".len());
    }
    Some(p)
}

/// Picks the fault to inject into this call, if any, and accounts for it.
fn take_fault(call: Call, fd: c_int, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
    let path = path_of_fd(fd)?;
    let mut st = state();
    let e = st.entries.iter_mut().find(|e| {
        e.live() && e.fault.call() == call && path.ends_with(&e.suffix) && matches(&e.fault)
    })?;
    if let Some(n) = e.remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    e.injected += 1;
    COUNTS[e.fault.kind().index()].fetch_add(1, Ordering::SeqCst);
    Some(e.fault)
}

// ---------------------------------------------------------------------------------
// The hooks.
// ---------------------------------------------------------------------------------

type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off_t) -> libc::ssize_t;
type PwriteFn =
    unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off_t) -> libc::ssize_t;
type FstatFn = unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int;
type FtruncateFn = unsafe extern "C" fn(c_int, libc::off_t) -> c_int;

struct Originals {
    pread: PreadFn,
    pwrite: PwriteFn,
    fstat: FstatFn,
    ftruncate: FtruncateFn,
}

static ORIGINALS: OnceLock<Originals> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn originals() -> &'static Originals {
    // The hooks are only ever reachable after `install` stored the originals.
    ORIGINALS.get_or_init(|| Originals {
        pread: libc::pread,
        pwrite: libc::pwrite,
        fstat: libc::fstat,
        ftruncate: libc::ftruncate,
    })
}

fn set_errno(e: c_int) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe {
        *libc::__errno_location() = e;
    }
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly"
    ))]
    // SAFETY: `__error` returns this thread's errno slot, always valid.
    unsafe {
        *libc::__error() = e;
    }
}

unsafe extern "C" fn hook_pread(
    fd: c_int,
    buf: *mut c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    let real = originals().pread;
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        {
            let mut st = state();
            if let Some(i) = st.pending_eof.iter().position(|p| p.0 == fd) {
                let (_, eof) = st.pending_eof.swap_remove(i);
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
                if eof == off {
                    return 0; // the rest of a short read: end of file
                }
            }
        }
        match take_fault(Call::Pread, fd, |_| true) {
            Some(Fault::EmptyRead) => return 0,
            Some(Fault::ReadError(e)) => {
                set_errno(e);
                return -1;
            }
            Some(Fault::ShortRead) => {
                let half = n / 2;
                if half == 0 {
                    return 0;
                }
                // SAFETY: forwarding SQLite's own call with a smaller length; `buf`
                // holds `n >= half` bytes.
                let got = unsafe { real(fd, buf, half, off) };
                if got > 0 {
                    let eof = off + got as libc::off_t;
                    let mut st = state();
                    match st.pending_eof.iter_mut().find(|p| p.0 == fd) {
                        Some(p) => p.1 = eof,
                        None => {
                            st.pending_eof.push((fd, eof));
                            ACTIVE.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                return got;
            }
            _ => {}
        }
    }
    // SAFETY: forwarding SQLite's own call unchanged to the original entry.
    unsafe { real(fd, buf, n, off) }
}

unsafe extern "C" fn hook_pwrite(
    fd: c_int,
    buf: *const c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    let real = originals().pwrite;
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        let end = off.saturating_add(n as libc::off_t);
        let hit = take_fault(Call::Pwrite, fd, |f| match *f {
            Fault::DropWrite { from } => end > from,
            _ => true,
        });
        match hit {
            Some(Fault::WriteError(e)) => {
                set_errno(e);
                return -1;
            }
            Some(Fault::DropWrite { from }) => {
                if off < from {
                    let keep = (from - off) as libc::size_t;
                    // SAFETY: forwarding SQLite's own call with a shorter length; `buf`
                    // holds `n > keep` bytes.
                    let wrote = unsafe { real(fd, buf, keep, off) };
                    if wrote < keep as libc::ssize_t {
                        return wrote; // a real short write or error: report it
                    }
                }
                return n as libc::ssize_t;
            }
            _ => {}
        }
    }
    // SAFETY: forwarding SQLite's own call unchanged to the original entry.
    unsafe { real(fd, buf, n, off) }
}

unsafe extern "C" fn hook_fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    let real = originals().fstat;
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        match take_fault(Call::Fstat, fd, |_| true) {
            Some(Fault::FstatError(e)) => {
                set_errno(e);
                return -1;
            }
            Some(Fault::ZeroSize) => {
                // SAFETY: forwarding SQLite's own call; `st` is its stat buffer.
                let rc = unsafe { real(fd, st) };
                if rc == 0 {
                    // SAFETY: the call succeeded, so `st` is a valid, filled-in buffer.
                    unsafe { (*st).st_size = 0 };
                }
                return rc;
            }
            _ => {}
        }
    }
    // SAFETY: forwarding SQLite's own call unchanged to the original entry.
    unsafe { real(fd, st) }
}

unsafe extern "C" fn hook_ftruncate(fd: c_int, len: libc::off_t) -> c_int {
    let real = originals().ftruncate;
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        if let Some(Fault::DropTruncate) = take_fault(Call::Ftruncate, fd, |_| true) {
            return 0;
        }
    }
    // SAFETY: forwarding SQLite's own call unchanged to the original entry.
    unsafe { real(fd, len) }
}

// ---------------------------------------------------------------------------------
// Installing.
// ---------------------------------------------------------------------------------

/// Hooks `pread`, `pwrite`, `fstat` and `ftruncate` of SQLite's `unix` VFS in this
/// process. Idempotent. Call it before the connections that faults should reach are
/// busy (swapping an entry while another thread calls through it is a plain pointer
/// store: the call sees the old or the new function, both valid).
pub fn install() -> Result<(), String> {
    INSTALLED.get_or_init(install_once).clone()
}

fn install_once() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("fault injection matches files through /proc/self/fd: Linux only".into());
    }
    let (pread, pwrite, fstat, ftruncate) = (
        unix_syscall(c"pread")?,
        unix_syscall(c"pwrite")?,
        unix_syscall(c"fstat")?,
        unix_syscall(c"ftruncate")?,
    );
    // SAFETY: SQLite stores each entry as `sqlite3_syscall_ptr` and casts it back to
    // its real type at every call (os_unix.c: `ssize_t(*)(int,void*,size_t,off_t)` for
    // pread, `ssize_t(*)(int,const void*,size_t,off_t)` for pwrite,
    // `int(*)(int,struct stat*)` for fstat, `int(*)(int,off_t)` for ftruncate), which
    // are exactly these Rust types; casting between function pointer types of the same
    // size is what the C side does too.
    let orig = unsafe {
        Originals {
            pread: std::mem::transmute::<unsafe extern "C" fn(), PreadFn>(pread),
            pwrite: std::mem::transmute::<unsafe extern "C" fn(), PwriteFn>(pwrite),
            fstat: std::mem::transmute::<unsafe extern "C" fn(), FstatFn>(fstat),
            ftruncate: std::mem::transmute::<unsafe extern "C" fn(), FtruncateFn>(ftruncate),
        }
    };
    if ORIGINALS.set(orig).is_err() {
        return Err("fault hooks: originals captured twice".into());
    }
    // SAFETY: as above, the other way round: SQLite casts the stored pointer back to
    // the entry's real type, which is the hook's type.
    let hooks: [(&CStr, unsafe extern "C" fn()); 4] = unsafe {
        [
            (
                c"pread",
                std::mem::transmute::<PreadFn, unsafe extern "C" fn()>(hook_pread),
            ),
            (
                c"pwrite",
                std::mem::transmute::<PwriteFn, unsafe extern "C" fn()>(hook_pwrite),
            ),
            (
                c"fstat",
                std::mem::transmute::<FstatFn, unsafe extern "C" fn()>(hook_fstat),
            ),
            (
                c"ftruncate",
                std::mem::transmute::<FtruncateFn, unsafe extern "C" fn()>(hook_ftruncate),
            ),
        ]
    };
    for (name, hook) in hooks {
        // SAFETY: `hook` has the entry's real type (above) and lives for the program.
        unsafe { set_unix_syscall(name, hook)? };
    }
    Ok(())
}

type GetSyscall = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    *const std::ffi::c_char,
) -> ffi::sqlite3_syscall_ptr;
type SetSyscall = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    *const std::ffi::c_char,
    ffi::sqlite3_syscall_ptr,
) -> c_int;

/// SQLite's `unix` VFS and its system-call accessors.
fn unix_vfs() -> Result<(*mut ffi::sqlite3_vfs, SetSyscall, GetSyscall), String> {
    // SAFETY: sqlite3_vfs_find takes a NUL-terminated name and initialises SQLite if
    // needed; it returns a pointer to a registered VFS (valid for the process's life:
    // the unix VFS is never unregistered) or null.
    let vfs = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
    if vfs.is_null() {
        return Err("SQLite has no \"unix\" VFS".into());
    }
    // SAFETY: `vfs` is a valid VFS (above); reading its fields is sound.
    let (version, set, get) = unsafe {
        (
            (*vfs).iVersion,
            (*vfs).xSetSystemCall,
            (*vfs).xGetSystemCall,
        )
    };
    match (set, get) {
        (Some(set), Some(get)) => Ok((vfs, set, get)),
        _ => Err(format!(
            "the unix VFS (version {version}) cannot override system calls"
        )),
    }
}

/// The `unix` VFS's current entry for the system call `name` (`xGetSystemCall`): the
/// original, or whatever hook was installed last.
pub fn unix_syscall(name: &CStr) -> Result<unsafe extern "C" fn(), String> {
    let (vfs, _, get) = unix_vfs()?;
    // SAFETY: `vfs` is the unix VFS and `name` is NUL-terminated.
    unsafe { get(vfs, name.as_ptr()) }
        .ok_or_else(|| format!("the unix VFS has no {name:?} system call in this build"))
}

/// Replaces the `unix` VFS's entry for the system call `name` (`xSetSystemCall`); it
/// acts on every `unix*` VFS of this SQLite, and so beneath walguard too.
///
/// # Safety
/// `hook` has the real C type SQLite casts that entry back to (os_unix.c), and lives
/// for the rest of the program.
pub unsafe fn set_unix_syscall(name: &CStr, hook: unsafe extern "C" fn()) -> Result<(), String> {
    let (vfs, set, _) = unix_vfs()?;
    // SAFETY: `vfs` is the unix VFS, `name` NUL-terminated, `hook` per the contract.
    let rc = unsafe { set(vfs, name.as_ptr(), Some(hook)) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!("xSetSystemCall({name:?}) failed with {rc}"))
    }
}

// ---------------------------------------------------------------------------------
// Arming.
// ---------------------------------------------------------------------------------

/// An armed fault. Dropping it disarms the fault (use [`Armed::keep`] to leave it
/// armed for the rest of the process).
#[derive(Debug)]
#[must_use = "dropping an Armed fault disarms it"]
pub struct Armed {
    id: u64,
}

impl Armed {
    /// How many times this fault has been injected.
    pub fn injected(&self) -> u64 {
        state()
            .entries
            .iter()
            .find(|e| e.id == self.id)
            .map_or(0, |e| e.injected)
    }

    /// Calls left (`None` while armed without a count).
    pub fn remaining(&self) -> Option<u32> {
        state()
            .entries
            .iter()
            .find(|e| e.id == self.id)
            .and_then(|e| e.remaining)
    }

    /// Disarms the fault now and returns how many times it was injected.
    pub fn disarm(self) -> u64 {
        let n = self.injected();
        drop(self);
        n
    }

    /// Leaves the fault armed for the life of the process.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let mut st = state();
        if let Some(i) = st.entries.iter().position(|e| e.id == self.id) {
            let e = st.entries.remove(i);
            if e.live() {
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Arms `fault` on every file whose path ends with `suffix`. [`install`] must have
/// succeeded for it to take effect.
pub fn arm(suffix: &str, fault: Fault, times: Times) -> Armed {
    let mut st = state();
    let id = st.next_id;
    st.next_id += 1;
    let remaining = match times {
        Times::Calls(n) => Some(n),
        Times::WhileArmed => None,
    };
    if remaining != Some(0) {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
    }
    st.entries.push(Entry {
        id,
        suffix: suffix.as_bytes().to_vec(),
        fault,
        remaining,
        injected: 0,
    });
    Armed { id }
}

/// Faults injected in this process so far, by kind.
pub fn counts() -> Counts {
    let mut c = Counts::default();
    for k in Kind::ALL {
        c.0[k.index()] = COUNTS[k.index()].load(Ordering::SeqCst);
    }
    c
}

/// One fault of an [`ENV_VAR`] value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The path suffix.
    pub suffix: String,
    /// The fault.
    pub fault: Fault,
    /// For how long.
    pub times: Times,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.fault, self.suffix)?;
        if let Times::Calls(n) = self.times {
            write!(f, "*{n}")?;
        }
        Ok(())
    }
}

/// Builds an [`ENV_VAR`] value that [`parse`] reads back as `specs`.
pub fn to_env(specs: &[Spec]) -> String {
    specs
        .iter()
        .map(Spec::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_errno(arg: Option<&str>, what: &str) -> Result<i32, String> {
    match arg {
        None => Ok(EIO),
        Some(a) => a
            .parse::<i32>()
            .ok()
            .filter(|e| *e > 0)
            .ok_or_else(|| format!("{what}: bad errno {a:?}")),
    }
}

fn parse_fault(text: &str) -> Result<Fault, String> {
    let (name, arg) = match text.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (text, None),
    };
    let no_arg = |f: Fault| match arg {
        None => Ok(f),
        Some(a) => Err(format!("{name} takes no argument (got {a:?})")),
    };
    match name {
        "short_read" => no_arg(Fault::ShortRead),
        "empty_read" => no_arg(Fault::EmptyRead),
        "zero_size" => no_arg(Fault::ZeroSize),
        "drop_truncate" => no_arg(Fault::DropTruncate),
        "read_error" => Ok(Fault::ReadError(parse_errno(arg, name)?)),
        "fstat_error" => Ok(Fault::FstatError(parse_errno(arg, name)?)),
        "write_error" => Ok(Fault::WriteError(parse_errno(arg, name)?)),
        "drop_write" => {
            let a = arg.ok_or("drop_write needs an offset: drop_write:OFFSET")?;
            let from = a
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| format!("drop_write: bad offset {a:?}"))?;
            Ok(Fault::DropWrite { from })
        }
        other => Err(format!(
            "unknown fault {other:?}; expected one of {}",
            Kind::ALL.map(Kind::name).join(", ")
        )),
    }
}

/// Parses an [`ENV_VAR`] value (see the module doc). Empty entries are ignored.
pub fn parse(value: &str) -> Result<Vec<Spec>, String> {
    let mut out = Vec::new();
    for item in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (fault, rest) = item
            .split_once('@')
            .ok_or_else(|| format!("{item:?}: expected FAULT@SUFFIX[*N]"))?;
        let (suffix, times) = match rest.rsplit_once('*') {
            Some((s, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n = n
                    .parse::<u32>()
                    .map_err(|e| format!("{item:?}: bad count {n:?}: {e}"))?;
                (s, Times::Calls(n))
            }
            _ => (rest, Times::WhileArmed),
        };
        if suffix.is_empty() {
            return Err(format!("{item:?}: empty path suffix"));
        }
        let fault = parse_fault(fault).map_err(|e| format!("{item:?}: {e}"))?;
        out.push(Spec {
            suffix: suffix.to_owned(),
            fault,
            times,
        });
    }
    Ok(out)
}

/// Installs the hooks and arms, for the life of the process, every fault that
/// [`ENV_VAR`] names. Returns how many were armed (0, without installing anything, when
/// the variable is unset or empty).
pub fn arm_from_env() -> Result<usize, String> {
    let value = match std::env::var(ENV_VAR) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return Ok(0),
        Err(e) => return Err(format!("{ENV_VAR}: {e}")),
    };
    let specs = parse(&value).map_err(|e| format!("{ENV_VAR}: {e}"))?;
    if specs.is_empty() {
        return Ok(0);
    }
    install()?;
    for s in &specs {
        arm(&s.suffix, s.fault, s.times).keep();
    }
    Ok(specs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault_and_count() {
        let specs = parse(
            "short_read@a.db*3; empty_read@/x/b.db ;read_error@c*1;read_error:13@c;\
             zero_size@d;fstat_error:2@e*4;drop_write:8192@f;write_error@g;drop_truncate@h",
        )
        .expect("valid");
        let got: Vec<(String, Fault, Times)> = specs
            .into_iter()
            .map(|s| (s.suffix, s.fault, s.times))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.db".into(), Fault::ShortRead, Times::Calls(3)),
                ("/x/b.db".into(), Fault::EmptyRead, Times::WhileArmed),
                ("c".into(), Fault::ReadError(EIO), Times::Calls(1)),
                ("c".into(), Fault::ReadError(13), Times::WhileArmed),
                ("d".into(), Fault::ZeroSize, Times::WhileArmed),
                ("e".into(), Fault::FstatError(2), Times::Calls(4)),
                (
                    "f".into(),
                    Fault::DropWrite { from: 8192 },
                    Times::WhileArmed
                ),
                ("g".into(), Fault::WriteError(EIO), Times::WhileArmed),
                ("h".into(), Fault::DropTruncate, Times::WhileArmed),
            ]
        );
    }

    #[test]
    fn suffix_may_contain_a_star_that_is_not_a_count() {
        let s = parse("empty_read@weird*name.db").expect("valid");
        assert_eq!(s[0].suffix, "weird*name.db");
        assert_eq!(s[0].times, Times::WhileArmed);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "empty_read",
            "nonsense@a.db",
            "drop_write@a.db",
            "drop_write:-1@a.db",
            "read_error:x@a.db",
            "empty_read:3@a.db",
            "empty_read@",
            "empty_read@*3",
            "empty_read@a.db*99999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(parse(" ; ;").expect("empty is fine"), Vec::new());
    }

    #[test]
    fn to_env_round_trips() {
        let specs = vec![
            Spec {
                suffix: "/t/app.db".into(),
                fault: Fault::EmptyRead,
                times: Times::Calls(2),
            },
            Spec {
                suffix: "app.db".into(),
                fault: Fault::DropWrite { from: 4096 },
                times: Times::WhileArmed,
            },
            Spec {
                suffix: "app.db-wal".into(),
                fault: Fault::FstatError(EIO),
                times: Times::Calls(1),
            },
        ];
        let v = to_env(&specs);
        assert_eq!(
            v,
            "empty_read@/t/app.db*2;drop_write:4096@app.db;fstat_error:5@app.db-wal*1"
        );
        assert_eq!(parse(&v).expect("round trip"), specs);
    }

    #[test]
    fn counts_display_names_every_kind() {
        let text = Counts::default().to_string();
        for k in Kind::ALL {
            assert!(text.contains(&format!("{}=0", k.name())), "{text}");
        }
    }
}
