//! Descriptors and record locks, as safe functions over `libc`.
//!
//! Two kinds of lock matter here (fcntl(2)):
//! - POSIX record locks (`F_SETLK`), which SQLite's unix VFS uses. They belong to the
//!   *process* and vanish when the process closes *any* descriptor of the file.
//! - Open-file-description locks (`F_OFD_SETLK`, Linux), which walguard uses. They belong
//!   to one open file description, survive a stray `close()` elsewhere in the process,
//!   and conflict with POSIX locks of every other owner — other processes *and* this
//!   process (so a read/read pair is compatible, but an OFD write lock conflicts with
//!   this process's own POSIX lock on the same byte).

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

/// A record-lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    Read,
    Write,
    Unlock,
}

impl Lock {
    fn l_type(self) -> libc::c_short {
        (match self {
            Lock::Read => libc::F_RDLCK,
            Lock::Write => libc::F_WRLCK,
            Lock::Unlock => libc::F_UNLCK,
        }) as libc::c_short
    }
}

/// A lock another owner holds, as `F_GETLK`/`F_OFD_GETLK` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub write: bool,
    /// The holder's pid for a POSIX lock, -1 for an open-file-description lock.
    pub pid: i32,
}

fn flock(kind: Lock, start: i64, len: i64) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind.l_type();
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

#[cfg(target_os = "linux")]
const OFD_SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(target_os = "linux")]
const OFD_GETLK: libc::c_int = libc::F_OFD_GETLK;

/// Whether this platform has open-file-description locks.
pub(crate) const HAVE_OFD: bool = cfg!(target_os = "linux");

/// Takes or releases an open-file-description lock without blocking. `Ok(false)` means
/// another owner holds a conflicting lock.
pub(crate) fn ofd_lock(fd: RawFd, kind: Lock, start: i64, len: i64) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        let fl = flock(kind, start, len);
        // SAFETY: `fl` is a valid flock for the duration of the call; fcntl does not keep it.
        let rc = unsafe { libc::fcntl(fd, OFD_SETLK, &fl) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(err),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, kind, start, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

fn getlk(
    fd: RawFd,
    cmd: libc::c_int,
    kind: Lock,
    start: i64,
    len: i64,
) -> io::Result<Option<Holder>> {
    let mut fl = flock(kind, start, len);
    // SAFETY: `fl` is a valid, writable flock for the duration of the call.
    let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        Ok(None)
    } else {
        Ok(Some(Holder {
            write: fl.l_type == libc::F_WRLCK as libc::c_short,
            pid: fl.l_pid,
        }))
    }
}

/// A lock that would conflict with an OFD lock of `kind` on `fd`: held by another process,
/// another open file description, or this process's own POSIX locks.
pub(crate) fn ofd_probe(fd: RawFd, kind: Lock, start: i64, len: i64) -> io::Result<Option<Holder>> {
    #[cfg(target_os = "linux")]
    {
        getlk(fd, OFD_GETLK, kind, start, len)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, kind, start, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// A lock that would conflict with a POSIX lock of `kind`: held by another process or by
/// any open-file-description lock (this process's own POSIX locks are invisible).
pub(crate) fn posix_probe(
    fd: RawFd,
    kind: Lock,
    start: i64,
    len: i64,
) -> io::Result<Option<Holder>> {
    getlk(fd, libc::F_GETLK, kind, start, len)
}

/// Opens `path` with `flags | O_CLOEXEC` (and `mode` when creating).
pub(crate) fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<RawFd> {
    // SAFETY: `path` is NUL-terminated; open does not keep the pointer.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// `(st_dev, st_ino, st_mode, st_uid, st_gid)` of an open descriptor.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable for the duration of the call.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `stat(2)` of a path (following links, as SQLite's own opens do).
pub(crate) fn stat(path: &CStr) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` writable for the call.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Closes a descriptor walguard owns (and forgets it in the ledger if it was there).
/// Callers decide *whether* closing is safe (see [`process_holds_posix_lock`]).
pub(crate) fn close(fd: RawFd) {
    {
        let mut owned = OWNED.lock();
        if let Some(i) = owned.iter().position(|&o| o == fd) {
            owned.swap_remove(i);
        }
    }
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

// ---- the ledger of long-lived descriptors ---------------------------------------------

/// Every descriptor walguard keeps beyond one call (database mirrors, `-shm` descriptors,
/// lock files, the inotify instance), owned by the process that opened it. A forked child
/// inherits the descriptors but not their ownership: [`close_inherited`] closes the
/// child's copies in the `pthread_atfork` child handler, before any code of the child
/// runs. That is safe and necessary:
/// - safe: a child holds no POSIX lock at that moment (fork does not inherit them), so a
///   close cancels nothing, and the parent's OFD locks stay (they belong to the open file
///   description, which the parent's descriptor keeps open);
/// - necessary: through an inherited description the child would be the *same* OFD lock
///   owner as its parent (their locks never conflict), and it would keep the parent's
///   locks alive after the parent exits.
static OWNED: parking_lot::Mutex<Vec<RawFd>> = parking_lot::Mutex::new(Vec::new());

/// Records `fd` as a long-lived descriptor of this process (see [`OWNED`]).
pub(crate) fn own(fd: RawFd) -> RawFd {
    OWNED.lock().push(fd);
    fd
}

/// `pthread_atfork` prepare: no thread may be changing the ledger while the process forks.
pub(crate) fn fork_prepare() {
    crate::fork_safety::hold(&OWNED);
}

/// [`fork_prepare`] in a child made without the fork handlers.
pub(crate) fn fork_prepare_forced() {
    crate::fork_safety::hold_forced(&OWNED);
}

/// `pthread_atfork` parent: undoes [`fork_prepare`].
pub(crate) fn fork_parent() {
    // SAFETY: fork_prepare held OWNED in this thread.
    unsafe { crate::fork_safety::release(&OWNED) };
}

/// `pthread_atfork` child: closes the child's copies of every owned descriptor and
/// empties the ledger (no allocation, only `close`, which is async-signal-safe).
pub(crate) fn close_inherited() {
    // SAFETY: fork_prepare locked OWNED before the fork; the child has this one thread,
    // so nothing else can touch the vector until the force_unlock below.
    unsafe {
        let owned = &mut *OWNED.data_ptr();
        for &fd in owned.iter() {
            libc::close(fd);
        }
        owned.clear();
        crate::fork_safety::release(&OWNED);
    }
}

/// Opens `path` read-write, creating it if missing the way the unix VFS creates a
/// database's `-wal` and `-shm`: `O_NOFOLLOW`, the permission bits of `like` (the
/// database), and — when the file is new (empty) — its exact mode and owner.
pub(crate) fn open_or_create_like(path: &CStr, like: Option<&libc::stat>) -> io::Result<RawFd> {
    let mode = like.map_or(0o644, |st| st.st_mode & 0o777);
    let fd = open(path, libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW, mode)?;
    if let Some(st) = like {
        if fstat(fd).is_ok_and(|s| s.st_size == 0) {
            match_owner_and_mode(fd, st);
        }
    }
    Ok(fd)
}

/// `fchmod`/`fchown` a file walguard just created so it matches the database's owner and
/// permissions exactly (umask would otherwise narrow them). Best effort.
pub(crate) fn match_owner_and_mode(fd: RawFd, like: &libc::stat) {
    // SAFETY: plain syscalls on a descriptor walguard owns.
    unsafe {
        libc::fchmod(fd, like.st_mode & 0o7777);
        if libc::geteuid() == 0 {
            libc::fchown(fd, like.st_uid, like.st_gid);
        }
    }
}

/// Whether this process holds any POSIX record lock on a file with inode `ino`, from
/// `/proc/locks`. Closing any descriptor of such a file would cancel those locks (SQLite's
/// own, or another runtime's), so a mirror descriptor is closed only when this is false.
/// Errs on the side of `true` (keep the descriptor) when `/proc/locks` cannot be read.
/// Matching by inode alone (not device) is deliberate: some filesystems (overlayfs, btrfs)
/// report a different device there than `stat` does; a false match only delays a close.
pub(crate) fn process_holds_posix_lock(ino: u64) -> bool {
    // One large read: the kernel holds its global lock table while /proc/locks is
    // formatted, for every read call, so small reads slow down every fcntl on the machine.
    let Ok(text) = read_proc_locks() else {
        return true;
    };
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() }.to_string();
    let ino = ino.to_string();
    text.lines().any(|line| {
        let mut f = line.split_whitespace().skip(1);
        let (Some(class), Some(_), Some(_), Some(p), Some(id)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        class == "POSIX" && p == pid && id.rsplit(':').next() == Some(ino.as_str())
    })
}

fn read_proc_locks() -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/locks")?;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let spare = buf.capacity() - buf.len();
        let start = buf.len();
        buf.resize(start + spare, 0);
        let n = f.read(&mut buf[start..])?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
    }
}

/// Whether closing a descriptor of inode `ino` (whose own OFD locks are released) could
/// cancel a POSIX lock of this process. First one lock probe over the whole file through
/// `fd`: nothing held by anyone (the usual case) means no, a lock of ours means yes; only
/// when another process's lock hides the answer is `/proc/locks` read.
pub(crate) fn close_could_cancel_locks(fd: RawFd, ino: u64) -> bool {
    match ofd_probe(fd, Lock::Write, 0, 0) {
        Ok(None) => false,
        // SAFETY: getpid cannot fail.
        Ok(Some(h)) if h.pid == unsafe { libc::getpid() } => true,
        _ => process_holds_posix_lock(ino),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn temp_file(dir: &tempfile::TempDir, name: &str) -> CString {
        let p = dir.path().join(name);
        std::fs::write(&p, b"x").expect("create temp file");
        CString::new(p.to_str().expect("utf-8 temp path")).expect("no NUL")
    }

    #[test]
    fn ofd_lock_survives_a_stray_close_and_posix_lock_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = temp_file(&dir, "f");
        let mirror = open(&path, libc::O_RDWR, 0).expect("open mirror");
        let sqlite = open(&path, libc::O_RDWR, 0).expect("open 'sqlite' fd");
        // A POSIX read lock as SQLite would take it, and an OFD read mirror.
        let fl = flock(Lock::Read, 10, 1);
        // SAFETY: valid flock.
        assert_eq!(unsafe { libc::fcntl(sqlite, libc::F_SETLK, &fl) }, 0);
        assert!(ofd_lock(mirror, Lock::Read, 10, 1).expect("ofd lock"));
        let ino = fstat(mirror).expect("fstat").st_ino;
        assert!(
            process_holds_posix_lock(ino),
            "/proc/locks shows our POSIX lock"
        );
        assert!(
            close_could_cancel_locks(mirror, ino),
            "the probe sees our POSIX lock"
        );
        // A stray open/close elsewhere in the process.
        let stray = open(&path, libc::O_RDONLY, 0).expect("stray open");
        close(stray);
        assert!(
            !process_holds_posix_lock(ino),
            "the stray close cancelled the POSIX lock"
        );
        assert!(
            !close_could_cancel_locks(mirror, ino),
            "nothing of ours left to cancel"
        );
        // The OFD lock is still there: a probe through another description sees it.
        let other = open(&path, libc::O_RDWR, 0).expect("open other");
        let seen = ofd_probe(other, Lock::Write, 10, 1).expect("probe");
        assert_eq!(
            seen,
            Some(Holder {
                write: false,
                pid: -1
            })
        );
        // And this process's own POSIX write lock would now conflict with it.
        assert!(!ofd_lock(other, Lock::Write, 10, 1).expect("ofd write attempt"));
        for fd in [mirror, sqlite, other] {
            close(fd);
        }
    }
}
