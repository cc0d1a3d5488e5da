//! Per-process state shared by every walguard handle of one database: one node per
//! database inode (per copy of walguard loaded in the process), holding the mirror
//! descriptors and lock counts the guards need.
//!
//! The registry is touched on open, first map, unmap and close — never on the per-page
//! path. A mirror descriptor of a database or `-shm` is closed only when this process
//! holds no POSIX lock on that inode any more; until then it waits in a deferred list,
//! because closing it would cancel SQLite's own locks (the bug walguard exists to stop).

use crate::fd::{self, Lock};
use crate::lock_file::LockFile;
use crate::stats::bump;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::{Arc, LazyLock};

/// `(st_dev, st_ino)`.
pub(crate) type Inode = (u64, u64);

#[allow(clippy::unnecessary_cast)] // the field types differ between unixes
pub(crate) fn inode_of(st: &libc::stat) -> Inode {
    (st.st_dev as u64, st.st_ino as u64)
}

/// One database file as this walguard instance sees it.
pub(crate) struct DbNode {
    pub inode: Inode,
    /// The database name as SQLite passed it to `xOpen` (sidecars are named from it).
    pub cpath: CString,
    /// For messages.
    pub path: String,
    /// Read-only descriptor that carries the OFD mirror of SQLite's SHARED lock. `None`
    /// when it could not be opened (the guarantee is degraded and that was logged).
    pub db_mirror: Option<RawFd>,
    pub state: Mutex<DbState>,
}

#[derive(Default)]
pub(crate) struct DbState {
    /// walguard handles open on this database.
    pub handles: usize,
    /// Handles at SHARED or above.
    pub shared_holders: usize,
    /// Whether the OFD mirror of the SHARED range is held.
    pub mirror_held: bool,
    /// The sidecar lock file, opened at the first WAL-index mapping.
    pub lock_file: Option<LockFile>,
    /// The lock file was tried and cannot be used (read-only place): logged once.
    pub lock_file_unusable: bool,
    /// Handle id holding the life-cycle lock (G2), if any.
    pub lifecycle_holder: Option<u64>,
    pub shm: Option<Arc<ShmNode>>,
    pub shm_handles: usize,
    /// The `-shm` dead-man-switch mirror is dropped for a tear-down attempt.
    pub dms_dropped: bool,
    /// The tear-down under way (life-cycle lock held) found no other holder: the unmap
    /// and delete that follow need not probe again.
    pub teardown_clear: bool,
    /// Identity of the `-wal` most recently opened for this database (G4).
    pub wal_inode: Option<Inode>,
}

/// The `-shm` of one database: the descriptor walguard owns and the WAL lock table that
/// walguard serves as OFD locks (see `g1_one_wal_index`).
pub(crate) struct ShmNode {
    pub fd: RawFd,
    /// `false` when the `-shm` could only be opened read-only: WAL locks are then
    /// forwarded to the wrapped VFS unguarded (logged once).
    pub writable: bool,
    pub inode: Inode,
    pub cpath: CString,
    /// The inotify instance watching the database's directory (0: none; G4 then
    /// checks with `stat` at every transaction).
    pub watch: u64,
    /// Per WAL lock slot: 0 free, n > 0 shared by n handles, -1 exclusive.
    pub slots: Mutex<[i32; 8]>,
    /// The sidecar lock file (a duplicate descriptor), where the WRITE and CKPT locks
    /// are mirrored too: a `-shm` that was removed or replaced under running processes
    /// cannot give a second set of writers or checkpointers (see g1_one_wal_index).
    pub lock_file: Option<std::os::fd::OwnedFd>,
}

static DBS: LazyLock<Mutex<HashMap<Inode, Arc<DbNode>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Mirror descriptors waiting until closing them cancels nobody's POSIX locks.
static DEFERRED: Mutex<Vec<(RawFd, u64)>> = Mutex::new(Vec::new());

/// Registers one more walguard handle on the main database SQLite just opened as `cpath`.
pub(crate) fn attach_db(cpath: &CStr) -> Arc<DbNode> {
    let mut dbs = DBS.lock();
    // Most opens name the database as before: no system call to find its node.
    if let Some(node) = dbs.values().find(|n| n.cpath.as_c_str() == cpath) {
        node.state.lock().handles += 1;
        return node.clone();
    }
    let known = || fd::stat(cpath).ok().map(|st| inode_of(&st));
    let path = cpath.to_string_lossy().into_owned();
    // Without OFD locks (non-Linux) a mirror could hold nothing and could never be
    // proven safe to close: none is opened (the degradation was logged at registration).
    let mirror = if fd::HAVE_OFD {
        fd::open(cpath, libc::O_RDONLY, 0)
    } else {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    };
    let (db_mirror, inode) = match mirror {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => (None, known()),
        Ok(fd) => (
            Some(fd),
            fd::fstat(fd).ok().map(|st| inode_of(&st)).or_else(known),
        ),
        Err(e) => {
            bump!(degraded);
            tracing::warn!(target: "walguard", path = %path, error = %e,
                "cannot open a mirror descriptor of the database; lost-lock protection (G1) is off for it");
            (None, known())
        }
    };
    let inode = inode.unwrap_or((0, 0));
    if let Some(node) = dbs.get(&inode) {
        // The same database under another name (a link): keep the fresh descriptor
        // until closing it cannot cancel SQLite's locks.
        if let Some(fd) = db_mirror {
            defer_close(fd, inode.1);
        }
        node.state.lock().handles += 1;
        return node.clone();
    }
    let node = Arc::new(DbNode {
        inode,
        cpath: cpath.to_owned(),
        path,
        db_mirror,
        state: Mutex::new(DbState {
            handles: 1,
            ..DbState::default()
        }),
    });
    dbs.insert(inode, node.clone());
    node
}

/// One walguard handle on `node` closed (after the wrapped file was closed).
pub(crate) fn detach_db(node: &Arc<DbNode>) {
    let mut dbs = DBS.lock();
    let mut st = node.state.lock();
    st.handles = st.handles.saturating_sub(1);
    if st.handles > 0 {
        return;
    }
    if dbs.get(&node.inode).is_some_and(|n| Arc::ptr_eq(n, node)) {
        dbs.remove(&node.inode);
    }
    // Dropping the lock file releases presence; safe (only OFD locks live there).
    st.lock_file = None;
    if let Some(fd) = node.db_mirror {
        st.mirror_held = false;
        close_when_safe(fd, node.inode.1);
    }
    drop(st);
    drop(dbs);
    flush_deferred();
}

/// The node this instance has for the database named `db_path`, if any.
pub(crate) fn find_by_path(db_path: &CStr) -> Option<Arc<DbNode>> {
    let dbs = DBS.lock();
    if let Some(n) = dbs.values().find(|n| n.cpath.as_c_str() == db_path) {
        return Some(n.clone());
    }
    let inode = fd::stat(db_path).ok().map(|st| inode_of(&st))?;
    dbs.get(&inode).cloned()
}

/// Closes a mirror descriptor now if no POSIX lock of this process can be cancelled by
/// it, else defers the close.
pub(crate) fn close_when_safe(fd: RawFd, ino: u64) {
    if fd::close_could_cancel_locks(fd, ino) {
        defer_close(fd, ino);
    } else {
        fd::close(fd);
    }
}

fn defer_close(fd: RawFd, ino: u64) {
    // A descriptor that waits must not keep holding walguard's own locks.
    let _ = fd::ofd_lock(fd, Lock::Unlock, 0, 0);
    bump!(mirror_close_deferred);
    tracing::debug!(target: "walguard", fd, ino, "mirror close deferred: this process still holds POSIX locks on the file");
    DEFERRED.lock().push((fd, ino));
}

/// Closes deferred descriptors whose files carry no POSIX lock of this process any more.
pub(crate) fn flush_deferred() {
    let mut deferred = DEFERRED.lock();
    if deferred.is_empty() {
        return;
    }
    deferred.retain(|&(fd, ino)| {
        if fd::close_could_cancel_locks(fd, ino) {
            true
        } else {
            fd::close(fd);
            false
        }
    });
}

/// `true` the first time `key` (a path and what is wrong with it) is reported in this
/// process: degradation warnings are logged once, not at every open.
pub(crate) fn first_warning(key: &str) -> bool {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock();
    if seen.iter().any(|p| p == key) {
        return false;
    }
    seen.push(key.to_owned());
    true
}
