//! Keeps the short and empty reads of [`crate::faults`] on the database *header*.
//!
//! The fault layer matches files by path, not by offset: an `empty_read` armed on
//! `app.db` hits the next `pread` of that file wherever it reads. A zero-filled page 57
//! is not the failure the campaign models (DESIGN.md §3 is about the header: SQLite
//! turns a short read of page 1 into "file is not a database"), and no guard promises
//! anything about it. So this gate sits above the fault layer's `pread` hook in SQLite's
//! `unix` system-call table and, while a header-only fault is armed, lets only reads that
//! start in the first 100 bytes (and the follow-up read of an injected short read) reach
//! the fault layer; every other read goes straight to `pread(2)`.
//!
//! Chain: SQLite -> [`gate_pread`] -> the fault layer's hook -> `pread(2)`.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::faults::{self, Kind};

type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off_t) -> libc::ssize_t;

/// The entry that was current when the gate was installed (the fault layer's hook).
static NEXT: OnceLock<PreadFn> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
/// A header-only fault is armed.
static HEADER_ONLY: AtomicBool = AtomicBool::new(false);
/// After an injected short read: the descriptor and offset of SQLite's follow-up read.
static CONTINUATION: Mutex<Option<(c_int, i64)>> = Mutex::new(None);

/// Bytes of the database header.
const HEADER: libc::off_t = 100;

/// Restricts (or stops restricting) the armed fault to header reads.
pub fn header_only(yes: bool) {
    HEADER_ONLY.store(yes, Ordering::SeqCst);
    if !yes {
        if let Ok(mut c) = CONTINUATION.lock() {
            *c = None;
        }
    }
}

unsafe extern "C" fn gate_pread(
    fd: c_int,
    buf: *mut c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    let Some(next) = NEXT.get() else {
        // SAFETY: forwarding SQLite's own call unchanged to pread(2).
        return unsafe { libc::pread(fd, buf, n, off) };
    };
    if !HEADER_ONLY.load(Ordering::SeqCst) {
        // SAFETY: forwarding SQLite's own call unchanged to the next entry.
        return unsafe { next(fd, buf, n, off) };
    }
    if off >= HEADER {
        let continuation = CONTINUATION
            .lock()
            .map(|mut c| c.take_if(|c| *c == (fd, off)).is_some())
            .unwrap_or(false);
        if !continuation {
            // SAFETY: forwarding SQLite's own call unchanged to pread(2), past the layer.
            return unsafe { libc::pread(fd, buf, n, off) };
        }
        // SAFETY: forwarding SQLite's own call unchanged to the next entry.
        return unsafe { next(fd, buf, n, off) };
    }
    let before = faults::counts().get(Kind::ShortRead);
    // SAFETY: forwarding SQLite's own call unchanged to the next entry.
    let got = unsafe { next(fd, buf, n, off) };
    if got > 0 && faults::counts().get(Kind::ShortRead) > before {
        if let Ok(mut c) = CONTINUATION.lock() {
            *c = Some((fd, off + got as libc::off_t));
        }
    }
    got
}

/// Installs the fault layer and the gate above it. Idempotent.
pub fn install() -> Result<(), String> {
    INSTALLED.get_or_init(install_once).clone()
}

fn install_once() -> Result<(), String> {
    faults::install()?;
    let current = faults::unix_syscall(c"pread")?;
    // SAFETY: SQLite stores the entry as `sqlite3_syscall_ptr` and casts it back to
    // `ssize_t(*)(int,void*,size_t,off_t)` at every call; the current entry is the fault
    // layer's hook (installed just above), whose real type is exactly `PreadFn`.
    let current = unsafe { std::mem::transmute::<unsafe extern "C" fn(), PreadFn>(current) };
    if NEXT.set(current).is_err() {
        return Err("pread gate installed twice".into());
    }
    // SAFETY: as above, the other way round: SQLite casts the pointer back to the
    // entry's real type, which is `gate_pread`'s type; the function lives forever.
    let hook = unsafe { std::mem::transmute::<PreadFn, unsafe extern "C" fn()>(gate_pread) };
    // SAFETY: `hook` has the pread entry's real type and lives forever (above).
    unsafe { faults::set_unix_syscall(c"pread", hook) }
}
