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

/// A registered unix VFS (one [`is_unix`] accepted), whose system-call table walguard
/// uses where it does the unix VFS's work itself (the `-shm`): the calls an application
/// or a test replaced with `xSetSystemCall` are the ones used.
#[derive(Clone, Copy)]
pub(crate) struct UnixVfs(pub *const ffi::sqlite3_vfs);

impl UnixVfs {
    /// Its current `open` system-call entry (what `xSetSystemCall("open")` installed, or
    /// the original), read at call time.
    pub(crate) fn open_entry(self) -> Option<crate::fd::OpenFn> {
        // SAFETY: only made for a registered VFS that `is_unix` accepted; os_unix.c stores
        // its open entry as `int(*)(const char*,int,int)` and casts it back to that type at
        // every call.
        unsafe {
            let entry = self.syscall(c"open")?;
            Some(std::mem::transmute::<
                unsafe extern "C" fn(),
                crate::fd::OpenFn,
            >(entry))
        }
    }

    /// The page size its current `getpagesize` entry reports (os_unix.c maps the `-shm`
    /// in pieces of that size: `unixShmRegionPerMap`); `None` if it has no such entry.
    pub(crate) fn page_size(self) -> Option<usize> {
        // SAFETY: as above; os_unix.c calls its getpagesize entry as `int(*)(void)`.
        let size = unsafe {
            let entry = self.syscall(c"getpagesize")?;
            std::mem::transmute::<unsafe extern "C" fn(), unsafe extern "C" fn() -> c_int>(entry)()
        };
        usize::try_from(size).ok().filter(|&n| n > 0)
    }

    /// # Safety
    /// `self.0` is a registered VFS.
    unsafe fn syscall(self, name: &std::ffi::CStr) -> Option<unsafe extern "C" fn()> {
        // SAFETY: per the contract; os_unix.c's xGetSystemCall only looks the name up.
        unsafe {
            let get = (*self.0).xGetSystemCall?;
            get(self.0 as *mut ffi::sqlite3_vfs, name.as_ptr())
        }
    }
}
