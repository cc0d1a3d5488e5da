//! The descriptor the wrapped `unix` VFS opened for a file.
//!
//! walguard takes its open-file-description locks on a database (the SHARED mirror and
//! the gate, see `db_locks`) through a descriptor of that database. Opening one of its own
//! would cost a descriptor per database beyond what SQLite uses (a multi-tenant process
//! would open fewer databases before `EMFILE`), so it uses the descriptor SQLite's unix VFS
//! already holds for the connection. And the `-wal` identity (G4) is read from the
//! descriptor the unix VFS really opened, not from a `stat` of the path that may name
//! another file by then.
//!
//! This is the one place walguard reads a private structure of the VFS it wraps:
//! os_unix.c's `unixFile` starts with `pMethod`, `pVfs`, `pInode` (three pointers) and
//! then `int h`, the file descriptor — unchanged since SQLite 3.7 (2010). It is read only
//! when the wrapped VFS is one of os_unix.c's (its name starts with `unix`) and its file
//! objects are large enough, and the value is trusted only if it names an open regular
//! file (`fstat`). Anywhere else the caller opens a descriptor of its own.

use std::os::fd::RawFd;
use std::os::raw::c_int;

use libsqlite3_sys as ffi;

/// Byte offset of `unixFile.h`: three pointers.
const OFFSET_H: usize = 3 * std::mem::size_of::<*const u8>();

/// Whether files of `vfs` are os_unix.c's `unixFile` (see the module documentation).
///
/// # Safety
/// `vfs` is a registered `sqlite3_vfs`.
pub(crate) unsafe fn is_unix(vfs: *const ffi::sqlite3_vfs) -> bool {
    // SAFETY: per the contract; zName of a registered VFS is NUL-terminated or NULL.
    unsafe {
        !vfs.is_null()
            && !(*vfs).zName.is_null()
            && std::ffi::CStr::from_ptr((*vfs).zName)
                .to_bytes()
                .starts_with(b"unix")
            && (*vfs).szOsFile as usize >= OFFSET_H + std::mem::size_of::<c_int>()
    }
}

/// The descriptor of `file`, opened by a unix VFS (`is_unix`), with its `fstat`; `None`
/// when the value read is not an open regular file.
///
/// # Safety
/// `file` is an open file of a VFS for which [`is_unix`] is true (its allocation holds at
/// least `szOsFile` bytes).
pub(crate) unsafe fn descriptor(file: *const ffi::sqlite3_file) -> Option<(RawFd, libc::stat)> {
    // SAFETY: per the contract the allocation is a unixFile, whose `h` lies at OFFSET_H
    // (aligned: it follows three pointers).
    let fd = unsafe { *((file as *const u8).add(OFFSET_H) as *const c_int) };
    if fd < 0 {
        return None;
    }
    let st = crate::fd::fstat(fd).ok()?;
    (st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some((fd, st))
}

/// The wrapped unix VFS's current `open` system-call entry (what `xSetSystemCall("open")`
/// installed, or the original), read at call time.
///
/// # Safety
/// `vfs` is a registered `sqlite3_vfs` for which [`is_unix`] is true.
pub(crate) unsafe fn open_entry(vfs: *const ffi::sqlite3_vfs) -> Option<crate::fd::OpenFn> {
    // SAFETY: per the contract; os_unix.c's xGetSystemCall only looks the name up.
    let entry = unsafe {
        let get = (*vfs).xGetSystemCall?;
        get(vfs as *mut ffi::sqlite3_vfs, c"open".as_ptr())?
    };
    // SAFETY: os_unix.c stores its open entry as `int(*)(const char*,int,int)` and casts
    // it back to that type at every call.
    Some(unsafe { std::mem::transmute::<unsafe extern "C" fn(), crate::fd::OpenFn>(entry) })
}
