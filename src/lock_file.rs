//! The sidecar lock file `<db>-walguard`: one byte for presence (G1: an OFD read lock
//! per walguard instance that has the WAL index mapped) and one for the life-cycle
//! lock (G2: an OFD write lock around WAL set-up and tear-down).
//!
//! It is created next to the database with the database's owner and permissions, is
//! opened with `O_NOFOLLOW` (a planted symlink is refused, nothing is touched), and is
//! never deleted. Closing it is always safe: walguard holds only OFD locks on it.
//!
//! Its first 4 KiB also hold the **identity record** (G4): the `(st_dev, st_ino)` of the
//! `-shm` and the `-wal` that the last walguard process to prove them found at their
//! paths. Every walguard process maps it shared; a transaction start compares its own
//! sidecars with the record — two memory loads, no system call. A process that sets up
//! a new WAL index on a replaced `-shm` (or opens a replaced `-wal`) publishes it before
//! its first transaction, so every process still on the old files sees the disagreement
//! at its next transaction start and checks (then fails, G4) before it can write over
//! the newcomer's commits. Locks never touch these bytes' data (record locks are
//! advisory), and the record is only a hint: a disagreement makes a process check with
//! `stat`, an agreement is backed by the watcher thread's epoch.

use crate::fd::{self, Lock};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const SUFFIX: &str = "-walguard";
const PRESENCE: i64 = 0;
const LIFECYCLE: i64 = 1;

pub(crate) struct LockFile {
    fd: RawFd,
    writable: bool,
    /// The shared mapping of the identity record (`None`: the file could not be mapped).
    record: Option<std::ptr::NonNull<Record>>,
    /// `(st_dev, st_ino)` of the file opened.
    inode: (u64, u64),
    pub(crate) path: String,
}

/// Why the lock file could not be used.
pub(crate) enum Unusable {
    /// A symbolic link sits at the lock file's path: refused, nothing touched.
    Symlink(String),
    /// The directory or file is read-only (or similar): the guarantees are degraded.
    Degraded(String, io::Error),
}

impl LockFile {
    /// Opens (creating if needed) the lock file of the database at `db_path`.
    pub(crate) fn open(db_path: &CStr) -> Result<LockFile, Unusable> {
        let path = format!("{}{SUFFIX}", db_path.to_string_lossy());
        let Ok(cpath) = CString::new([db_path.to_bytes(), SUFFIX.as_bytes()].concat()) else {
            return Err(Unusable::Degraded(
                path,
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        };
        let nofollow = libc::O_NOFOLLOW;
        // Usually it exists: one open. Otherwise create it like the database.
        let (fd, writable) = match fd::open(&cpath, libc::O_RDWR | nofollow, 0) {
            Ok(fd) => (fd, true),
            Err(e) if is_symlink_error(&e) => return Err(Unusable::Symlink(path)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let db_stat = fd::stat(db_path).ok();
                let mode = db_stat.map_or(0o644, |st| st.st_mode & 0o666);
                match fd::open(
                    &cpath,
                    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | nofollow,
                    mode,
                ) {
                    Ok(fd) => {
                        if let Some(st) = db_stat.as_ref() {
                            fd::match_owner_and_mode(fd, st);
                        }
                        (fd, true)
                    }
                    // Lost a creation race: the other creator set it up; open it.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        match fd::open(&cpath, libc::O_RDWR | nofollow, 0) {
                            Ok(fd) => (fd, true),
                            Err(e) if is_symlink_error(&e) => return Err(Unusable::Symlink(path)),
                            Err(e) => return Err(Unusable::Degraded(path, e)),
                        }
                    }
                    Err(e) => return Err(Unusable::Degraded(path, e)),
                }
            }
            // Exists but not writable for us: presence still works read-only.
            Err(_) => match fd::open(&cpath, libc::O_RDONLY | nofollow, 0) {
                Ok(fd) => (fd, false),
                Err(e) if is_symlink_error(&e) => return Err(Unusable::Symlink(path)),
                Err(e) => return Err(Unusable::Degraded(path, e)),
            },
        };
        // O_NOFOLLOW only guards the last component; a non-regular file is refused too.
        match fd::fstat(fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let fd = fd::own(fd);
                let inode = crate::registry::inode_of(&st);
                let record = map_record(fd, writable, st.st_size);
                Ok(LockFile {
                    fd,
                    writable,
                    record,
                    inode,
                    path,
                })
            }
            Ok(_) => {
                fd::close(fd);
                Err(Unusable::Symlink(path))
            }
            Err(e) => {
                fd::close(fd);
                Err(Unusable::Degraded(path, e))
            }
        }
    }

    /// Registers this walguard instance as a holder of the WAL index.
    pub(crate) fn hold_presence(&self) -> io::Result<bool> {
        fd::ofd_lock(self.fd, Lock::Read, PRESENCE, 1)
    }

    /// Whether any *other* walguard instance (another process, or another copy of walguard
    /// in this process) holds the WAL index. An error counts as "yes" (the safe answer).
    pub(crate) fn others_present(&self) -> bool {
        !matches!(fd::ofd_probe(self.fd, Lock::Write, PRESENCE, 1), Ok(None))
    }

    /// Tries the life-cycle lock without blocking. `Ok(false)`: someone else holds it.
    pub(crate) fn try_lifecycle(&self) -> io::Result<bool> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        fd::ofd_lock(self.fd, Lock::Write, LIFECYCLE, 1)
    }

    pub(crate) fn release_lifecycle(&self) {
        let _ = fd::ofd_lock(self.fd, Lock::Unlock, LIFECYCLE, 1);
    }

    /// Ends this instance's registration as a holder of the WAL index.
    pub(crate) fn release_presence(&self) {
        let _ = fd::ofd_lock(self.fd, Lock::Unlock, PRESENCE, 1);
    }

    /// The descriptor for the WAL lock mirror (WRITE/CKPT), if writable. It stays valid
    /// for as long as this lock file: the registry keeps lock files until the database's
    /// node is evicted, after every mapping that uses it ended.
    pub(crate) fn fd_for_locks(&self) -> Option<RawFd> {
        self.writable.then_some(self.fd)
    }

    /// Whether the path still names this lock file (G2: `rm <db>-walguard` while
    /// processes run must not split presence and the life-cycle lock). An error reading
    /// the path counts as "moved".
    pub(crate) fn still_at_path(&self) -> bool {
        let Ok(cpath) = CString::new(self.path.as_bytes()) else {
            return false;
        };
        fd::stat(&cpath).is_ok_and(|st| crate::registry::inode_of(&st) == self.inode)
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }
}

/// Probes the presence byte of `<db>-walguard` without holding anything: for deletes of
/// databases this instance has no node for. `false` when there is no lock file.
pub(crate) fn others_present_at(db_path: &CStr) -> bool {
    let Ok(cpath) = CString::new([db_path.to_bytes(), SUFFIX.as_bytes()].concat()) else {
        return false;
    };
    match fd::open(&cpath, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
        Ok(fd) => {
            let present = !matches!(fd::ofd_probe(fd, Lock::Write, PRESENCE, 1), Ok(None));
            fd::close(fd);
            present
        }
        Err(_) => false,
    }
}

fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Bytes of the lock file that are mapped (the record lives at [`RECORD_OFFSET`]).
const MAP_LEN: usize = 4096;
const RECORD_OFFSET: usize = 256;
const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"wgid\0\0\0\x01");

/// The identity record (see the module documentation). All fields are atomics: other
/// processes read and write them concurrently through their own mappings.
#[repr(C)]
pub(crate) struct Record {
    magic: AtomicU64,
    shm_dev: AtomicU64,
    shm_ino: AtomicU64,
    wal_dev: AtomicU64,
    wal_ino: AtomicU64,
}

impl Record {
    /// Publishes the `-shm` this process just proved is the one at the path.
    pub(crate) fn publish_shm(&self, (dev, ino): (u64, u64)) {
        self.shm_dev.store(dev, Ordering::SeqCst);
        self.shm_ino.store(ino, Ordering::SeqCst);
        self.magic.store(RECORD_MAGIC, Ordering::SeqCst);
    }

    /// Publishes the `-wal` this process just proved is the one at the path.
    pub(crate) fn publish_wal(&self, (dev, ino): (u64, u64)) {
        self.wal_dev.store(dev, Ordering::SeqCst);
        self.wal_ino.store(ino, Ordering::SeqCst);
        self.magic.store(RECORD_MAGIC, Ordering::SeqCst);
    }

    /// Whether the record names other sidecars than `shm` / `wal` (an unwritten field
    /// disagrees with nothing). Memory loads only.
    pub(crate) fn disagrees(&self, shm: (u64, u64), wal: Option<(u64, u64)>) -> bool {
        if self.magic.load(Ordering::SeqCst) != RECORD_MAGIC {
            return false;
        }
        let differs = |dev: &AtomicU64, ino: &AtomicU64, (d, i): (u64, u64)| {
            let ino_now = ino.load(Ordering::SeqCst);
            ino_now != 0 && (ino_now != i || dev.load(Ordering::SeqCst) != d)
        };
        differs(&self.shm_dev, &self.shm_ino, shm)
            || wal.is_some_and(|w| differs(&self.wal_dev, &self.wal_ino, w))
    }
}

/// Maps the record of the lock file open as `fd` (growing the file to [`MAP_LEN`] bytes
/// first when it is shorter: mapping past the end would fault).
fn map_record(fd: RawFd, writable: bool, size: libc::off_t) -> Option<std::ptr::NonNull<Record>> {
    // Only a writable lock file is mapped: every mapping may publish (a read-only one
    // would fault on the store); readers without one rely on the watcher's epoch.
    if !writable {
        return None;
    }
    let len = MAP_LEN as libc::off_t;
    // SAFETY: plain syscall on a descriptor walguard owns; it only ever grows the file.
    if size < len && unsafe { libc::ftruncate(fd, len) } != 0 {
        return None;
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh shared mapping of MAP_LEN bytes of a file at least that long.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), MAP_LEN, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: RECORD_OFFSET + size_of::<Record>() < MAP_LEN; the offset is 8-aligned.
    std::ptr::NonNull::new(unsafe { (p as *mut u8).add(RECORD_OFFSET) } as *mut Record)
}

impl LockFile {
    /// The record's address, for handles that read it on the hot path (valid while this
    /// lock file lives: the registry keeps lock files beyond every mapping that uses it).
    pub(crate) fn record_ptr(&self) -> *const Record {
        self.record
            .map_or(std::ptr::null(), |p| p.as_ptr() as *const Record)
    }
}

// SAFETY: the mapping is process-wide shared memory accessed only through atomics; the
// descriptor is a plain integer. Nothing in LockFile is tied to a thread.
unsafe impl Send for LockFile {}
// SAFETY: as above: every access to the mapping is atomic.
unsafe impl Sync for LockFile {}

impl Drop for LockFile {
    fn drop(&mut self) {
        if let Some(p) = self.record {
            // SAFETY: `p` points RECORD_OFFSET bytes into the MAP_LEN mapping made in
            // map_record, which nothing uses after this lock file is dropped.
            unsafe {
                libc::munmap(
                    (p.as_ptr() as *mut u8).sub(RECORD_OFFSET) as *mut libc::c_void,
                    MAP_LEN,
                )
            };
        }
        // Only OFD locks live on this descriptor, so closing cancels nobody else's locks.
        fd::close(self.fd);
    }
}
