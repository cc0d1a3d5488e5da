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

use parking_lot::Mutex;
use std::ffi::{CStr, CString};
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

/// Closes a descriptor walguard owns (and forgets it in the ledger).
/// Callers decide *whether* closing is safe (see [`close_when_safe`]).
pub(crate) fn close(fd: RawFd) {
    {
        let mut ledger = LEDGER.lock();
        if let Some(i) = ledger.iter().position(|e| e.fd() == fd) {
            ledger.swap_remove(i);
        }
    }
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

// ---- the ledger of long-lived descriptors ---------------------------------------------

/// A descriptor walguard keeps beyond one call.
enum Entry {
    /// Opened by walguard (a `-shm`, a database descriptor of its own where the wrapped
    /// VFS's cannot be used, the inotify instance, the watcher's eventfd).
    Owned(RawFd),
    /// Opened by the wrapped VFS for a connection, and carrying walguard's OFD locks on
    /// the database (see `db_locks`). `reopen` is `/proc/self/fd/N`, prepared here so the
    /// fork child handler needs no allocation.
    Lent {
        fd: RawFd,
        reopen: CString,
        flags: libc::c_int,
    },
}

impl Entry {
    fn fd(&self) -> RawFd {
        match self {
            Entry::Owned(fd) | Entry::Lent { fd, .. } => *fd,
        }
    }
}

/// Every descriptor walguard keeps or locks through, owned by the process that opened it.
/// A forked child inherits the descriptors but not their ownership: the child hook, before
/// any code of the child runs, closes its copies of owned ones and points its copies of
/// lent ones at a fresh open file description of the same file. That is safe and
/// necessary:
/// - safe: a child holds no POSIX lock at that moment (fork does not inherit them), so a
///   close cancels nothing, and the parent's OFD locks stay (they belong to the open file
///   description, which the parent's descriptor keeps open);
/// - necessary: through an inherited description the child would be the *same* OFD lock
///   owner as its parent (their locks never conflict), and it would keep the parent's
///   locks alive after the parent exits.
///
/// Descriptors are opened *and* recorded under this lock ([`open_owned`], [`create_owned`]),
/// which the fork prepare hook holds: no fork from another thread can copy a descriptor
/// the ledger does not know yet.
static LEDGER: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn register_fork_hooks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        crate::fork_safety::register(crate::fork_safety::Hooks {
            order: crate::fork_safety::Order::Descriptors,
            prepare: || crate::fork_safety::hold(&LEDGER),
            // SAFETY: prepare held LEDGER in this thread.
            parent: || unsafe { crate::fork_safety::release(&LEDGER) },
            child: child_after_fork,
        })
    });
}

/// Opens `path` with `flags | O_CLOEXEC` and records the descriptor as walguard's own, in
/// one step under the ledger lock.
pub(crate) fn open_owned(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<RawFd> {
    create_owned(|| open(path, flags, mode))
}

/// The signature of os_unix.c's `open` system-call entry (`posixOpen`).
pub(crate) type OpenFn =
    unsafe extern "C" fn(*const libc::c_char, libc::c_int, libc::c_int) -> libc::c_int;

/// [`open_owned`] through `via`, the wrapped VFS's `open` entry when there is one (so
/// that whatever the host installed there with `xSetSystemCall` — fault injection in
/// SQLite's own tests, say — sees walguard's opens as it sees the unix VFS's).
pub(crate) fn open_owned_via(
    via: Option<OpenFn>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<RawFd> {
    let Some(via) = via else {
        return open_owned(path, flags, mode);
    };
    create_owned(|| {
        // SAFETY: `via` has posixOpen's type; `path` is NUL-terminated and not kept.
        let fd = unsafe { via(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_int) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(fd)
        }
    })
}

/// Runs `make` (which creates one descriptor) and records the result as walguard's own,
/// under the ledger lock.
pub(crate) fn create_owned(make: impl FnOnce() -> io::Result<RawFd>) -> io::Result<RawFd> {
    register_fork_hooks();
    let mut ledger = LEDGER.lock();
    let fd = make()?;
    ledger.push(Entry::Owned(fd));
    Ok(fd)
}

/// Records that walguard takes OFD locks through `fd`, a descriptor the wrapped VFS
/// opened (open for writing when `writable`). Idempotent.
pub(crate) fn lend(fd: RawFd, writable: bool) {
    register_fork_hooks();
    let reopen = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    let flags = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } | libc::O_CLOEXEC;
    let mut ledger = LEDGER.lock();
    if !ledger.iter().any(|e| e.fd() == fd) {
        ledger.push(Entry::Lent { fd, reopen, flags });
    }
}

/// `fd` (lent) carries no walguard lock any more and may be closed by its owner.
pub(crate) fn give_back(fd: RawFd) {
    let mut ledger = LEDGER.lock();
    if let Some(i) = ledger
        .iter()
        .position(|e| matches!(e, Entry::Lent { fd: f, .. } if *f == fd))
    {
        ledger.swap_remove(i);
    }
}

/// How many descriptors walguard itself holds open now (for messages).
pub(crate) fn owned_count() -> usize {
    LEDGER
        .lock()
        .iter()
        .filter(|e| matches!(e, Entry::Owned(_)))
        .count()
}

/// The fork child hook (no allocation, only async-signal-safe calls): closes the child's
/// copies of owned descriptors; gives each lent descriptor a fresh open file description
/// of the same file (`/proc/self/fd/N` names the inherited one), so the connection that
/// owns it in the child still reads the right file but no longer shares the parent's
/// OFD locks. If the file cannot be opened again, `/dev/null` takes its place (the child
/// may only close an inherited connection anyway).
fn child_after_fork() {
    // SAFETY: prepare locked LEDGER before the fork; the child has this one thread, so
    // nothing else can touch the vector until the release below.
    unsafe {
        let ledger = &mut *LEDGER.data_ptr();
        for e in ledger.iter() {
            match e {
                Entry::Owned(fd) => {
                    libc::close(*fd);
                }
                Entry::Lent { fd, reopen, flags } => {
                    let mut new = libc::open(reopen.as_ptr(), *flags);
                    if new < 0 {
                        new = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                    }
                    if new >= 0 {
                        libc::dup3(new, *fd, libc::O_CLOEXEC);
                        libc::close(new);
                    }
                }
            }
        }
        ledger.clear();
        crate::fork_safety::release(&LEDGER);
    }
    // SAFETY: as above; the deferred closes name descriptors of the parent's ledger,
    // closed just now (they were owned).
    unsafe {
        (*DEFERRED.data_ptr()).clear();
    }
}

/// Descriptors waiting until closing them cancels nobody's POSIX locks.
static DEFERRED: Mutex<Vec<(RawFd, u64)>> = Mutex::new(Vec::new());

/// Closes an owned descriptor of inode `ino` now if no POSIX lock of this process can be
/// cancelled by it (another SQLite runtime of the process may lock the same file), else
/// defers the close to [`flush_deferred`]. The descriptor's own OFD locks are released
/// either way.
pub(crate) fn close_when_safe(fd: RawFd, ino: u64) {
    // The probe ignores this description's own OFD locks; the close drops them.
    if close_could_cancel_locks(fd, ino) {
        let _ = ofd_lock(fd, Lock::Unlock, 0, 0);
        crate::stats::bump!(close_deferred);
        tracing::debug!(target: "walguard", fd, ino, "close deferred: this process still holds POSIX locks on the file");
        DEFERRED.lock().push((fd, ino));
    } else {
        close(fd);
    }
    flush_deferred();
}

/// Closes deferred descriptors whose files carry no POSIX lock of this process any more.
pub(crate) fn flush_deferred() {
    let Some(mut deferred) = DEFERRED.try_lock() else {
        return;
    };
    if deferred.is_empty() {
        return;
    }
    deferred.retain(|&(fd, ino)| {
        if close_could_cancel_locks(fd, ino) {
            true
        } else {
            close(fd);
            false
        }
    });
}

/// An error message for a descriptor walguard could not open, naming the file and, when
/// the process is out of descriptors, the limit and walguard's share of it.
pub(crate) fn open_error_message(path: &str, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        // SAFETY: all-zero is a valid rlimit; getrlimit fills it or fails.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `lim` is writable for the call.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.to_string()
        } else {
            "unknown".to_owned()
        };
        format!(
            "walguard: cannot open {path}: too many open files (the process may hold {limit} \
             descriptors; walguard holds {} of them: one per mapped WAL index, as SQLite's \
             unix VFS would, plus its watcher's two). Close connections or raise the limit \
             (ulimit -n, LimitNOFILE=)",
            owned_count()
        )
    } else {
        format!("walguard: cannot open {path}: {e}")
    }
}

/// `(st_dev, st_ino)`.
pub(crate) type Inode = (u64, u64);

#[allow(clippy::unnecessary_cast)] // the field types differ between unixes
pub(crate) fn inode_of(st: &libc::stat) -> Inode {
    (st.st_dev as u64, st.st_ino as u64)
}

/// After opening (maybe creating) a sidecar `fd` whose `fstat` is `st`: a new, empty file
/// gets the database's exact permission bits (umask would narrow them), and as root the
/// database's owner — what os_unix.c's `robust_open` and `robustFchown` do (the latter
/// also when nothing would change).
pub(crate) fn match_new_file(fd: RawFd, st: &libc::stat, db: &libc::stat) {
    // SAFETY: plain syscalls on a descriptor walguard owns.
    unsafe {
        if st.st_size == 0 && (st.st_mode & 0o777) != (db.st_mode & 0o777) {
            libc::fchmod(fd, db.st_mode & 0o777);
        }
        // Only when it differs: a change of owner is an inotify event for every process
        // watching the file.
        if libc::geteuid() == 0 && (st.st_uid != db.st_uid || st.st_gid != db.st_gid) {
            libc::fchown(fd, db.st_uid, db.st_gid);
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
