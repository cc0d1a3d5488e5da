//! The sidecar lock file `<db>-walguard`: one byte for presence (G1: an OFD read lock
//! per walguard instance that has the WAL index mapped) and one for the life-cycle
//! lock (G2: an OFD write lock around WAL set-up and tear-down).
//!
//! It is created next to the database with the database's owner and permissions, is
//! opened with `O_NOFOLLOW` (a planted symlink is refused, nothing is touched), and is
//! never deleted. Closing it is always safe: walguard holds only OFD locks on it.

use crate::fd::{self, Lock};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

pub(crate) const SUFFIX: &str = "-walguard";
const PRESENCE: i64 = 0;
const LIFECYCLE: i64 = 1;

pub(crate) struct LockFile {
    fd: RawFd,
    writable: bool,
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
                Ok(LockFile {
                    fd,
                    writable,
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

impl Drop for LockFile {
    fn drop(&mut self) {
        // Only OFD locks live on this descriptor, so closing cancels nobody else's locks.
        fd::close(self.fd);
    }
}
