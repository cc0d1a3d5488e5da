//! Per-process state shared by every walguard handle of one database: one node per
//! database inode (per copy of walguard loaded in the process).
//!
//! The registry is touched on open, first map, unmap and close — never on the per-page
//! path.
//!
//! ## Ownership of descriptors and locks
//! Every descriptor below is owned by the process that opened it (recorded in the
//! descriptor ledger, `fd::own`; a forked child closes its copies at the fork and forgets
//! this registry, see `fork_safety`), names one inode, and is closed only by walguard:
//!
//! | descriptor | inode | locks on it (all OFD) | lives until |
//! |---|---|---|---|
//! | `DbNode::db_mirror` | the database | SHARED-range read mirror while a handle is at SHARED+; WAL WRITE/CKPT mirror (bytes past SQLite's lock range) while held | the node is evicted |
//! | `ShmNode::fd` | the `-shm` | WAL lock bytes 120..127 served by walguard, dead-man-switch mirror (128) | last unmap; then kept unlocked in `DbState::shm_kept` |
//! | `DbState::shm_kept` | a `-shm` this process mapped | none | reused by the next mapping if the path still names it, else closed when safe |
//! | `DbState::lock_file` | `<db>-walguard` | presence (0), life-cycle (1), WRITE/CKPT mirrors (120, 121) only when the database is read-only here | the node is evicted |
//! | `DbState::retired_lock_files` | a `<db>-walguard` removed from its path | presence | the node goes idle |
//!
//! A node outlives its last handle: the next connection to the same database reuses its
//! descriptors (no open, no lock-file set-up, no check-then-close at every connection
//! cycle). Closing a descriptor of a database or `-shm` would cancel every POSIX lock
//! this process holds on that inode (SQLite's own, or another SQLite runtime's), so it is
//! done only at eviction — when the database was unlinked, its path names another file
//! now, or more than [`IDLE_CAP`] databases sit idle — and only after a probe found no
//! POSIX lock of this process on the inode (else the close waits in a deferred list). The
//! probe-then-close window at eviction remains (another runtime of this process could
//! lock the same inode between the two); it is never crossed at an ordinary close.
//! Lock files carry only OFD locks: closing them cancels nobody's lock.

use crate::fd::{self, Lock};
use crate::lock_file::LockFile;
use crate::stats::bump;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// `(st_dev, st_ino)`.
pub(crate) type Inode = (u64, u64);

#[allow(clippy::unnecessary_cast)] // the field types differ between unixes
pub(crate) fn inode_of(st: &libc::stat) -> Inode {
    (st.st_dev as u64, st.st_ino as u64)
}

/// How many databases without an open handle a process keeps descriptors for.
pub(crate) const IDLE_CAP: usize = 32;

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
    /// The mirror descriptor is open for writing: the WAL WRITE/CKPT mirror lives on the
    /// database file (see `g1_one_wal_index::mirror_target`).
    pub db_mirror_writable: bool,
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
    /// Lock files that were removed or replaced at their path while this process used
    /// them (G2, `replace_lock_file`): still held with presence, so processes that have
    /// not noticed yet keep seeing this one. Closed when the node goes idle.
    pub retired_lock_files: Vec<LockFile>,
    /// The lock file was tried and cannot be used (read-only place): logged once.
    pub lock_file_unusable: bool,
    /// The watch epoch at which the lock file was last found at its path, and the
    /// watcher instance that covers the database's directory (0: none).
    pub lock_file_epoch: u64,
    pub watch: u64,
    /// Handle id holding the life-cycle lock (G2), if any.
    pub lifecycle_holder: Option<u64>,
    pub shm: Option<Arc<ShmNode>>,
    pub shm_handles: usize,
    /// Handles whose first mapping walguard could not guard (their WAL locks stay with
    /// the wrapped VFS); they hold presence too.
    pub unguarded_handles: usize,
    /// The `-shm` descriptor of the last mapping, unlocked, for the next one.
    pub shm_kept: Option<KeptShm>,
    /// The `-shm` dead-man-switch mirror is dropped for a tear-down attempt.
    pub dms_dropped: bool,
    /// The tear-down under way (life-cycle lock held) found no other holder: the unmap
    /// and delete that follow need not probe again.
    pub teardown_clear: bool,
    /// When the node last went idle (for eviction order).
    pub idle_since: u64,
}

/// A `-shm` descriptor kept between mappings.
#[derive(Clone, Copy)]
pub(crate) struct KeptShm {
    pub fd: RawFd,
    pub inode: Inode,
    pub writable: bool,
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
    /// The watch instance covering the database's directory (0: none; G4 then checks
    /// with `stat` at every transaction).
    pub watch: u64,
    /// Per WAL lock slot: 0 free, n > 0 shared by n handles, -1 exclusive; and the lock
    /// descriptor (and base offset) the WRITE/CKPT locks are mirrored on.
    pub locks: Mutex<ShmLocks>,
    /// The identity record in the lock file's shared mapping (null: none), see
    /// `lock_file::Record`. Valid while this node lives (lock files outlive mappings).
    pub record: std::sync::atomic::AtomicPtr<crate::lock_file::Record>,
}

impl ShmNode {
    /// The identity record, if any.
    pub(crate) fn record(&self) -> Option<&crate::lock_file::Record> {
        let p = self.record.load(Ordering::Acquire);
        // SAFETY: set from a LockFile of this node's database, which the registry keeps
        // (current or retired) for as long as any mapping of that database exists.
        unsafe { p.as_ref() }
    }
}

pub(crate) struct ShmLocks {
    pub slots: [i32; 8],
    /// Where the WRITE and CKPT locks are mirrored too, and at which offset: the database
    /// mirror descriptor, else the lock file (both borrowed from the node, which outlives
    /// every mapping): a `-shm` removed or replaced under running processes cannot give
    /// a second set of writers or checkpointers.
    pub mirror_fd: Option<(RawFd, i64)>,
}

static DBS: LazyLock<Mutex<HashMap<Inode, Arc<DbNode>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Descriptors waiting until closing them cancels nobody's POSIX locks.
static DEFERRED: Mutex<Vec<(RawFd, u64)>> = Mutex::new(Vec::new());
static IDLE_TICK: AtomicU64 = AtomicU64::new(0);

/// Registers one more walguard handle on the main database SQLite just opened as `cpath`.
pub(crate) fn attach_db(cpath: &CStr) -> Arc<DbNode> {
    let mut dbs = DBS.lock();
    // Most opens name the database as before: no system call while a handle is open.
    if let Some(node) = dbs.values().find(|n| n.cpath.as_c_str() == cpath).cloned() {
        let mut st = node.state.lock();
        if st.handles > 0 {
            st.handles += 1;
            drop(st);
            return node;
        }
        // An idle node: does the path still name that file?
        if fd::stat(cpath).is_ok_and(|s| inode_of(&s) == node.inode) {
            st.handles = 1;
            drop(st);
            return node;
        }
        drop(st);
        evict(&mut dbs, &node);
    }
    let by_path = fd::stat(cpath).ok().map(|st| inode_of(&st));
    if let Some(node) = by_path.and_then(|i| dbs.get(&i).cloned()) {
        // The same database under another name (a link).
        node.state.lock().handles += 1;
        return node;
    }
    let path = cpath.to_string_lossy().into_owned();
    // Without OFD locks (non-Linux) a mirror could hold nothing: none is opened (the
    // degradation was logged at registration).
    // Read-write when allowed (an OFD write lock needs it: the WAL WRITE/CKPT mirror);
    // nothing is ever written through it.
    let mirror = if fd::HAVE_OFD {
        fd::open(cpath, libc::O_RDWR, 0)
            .map(|fd| (fd, true))
            .or_else(|_| fd::open(cpath, libc::O_RDONLY, 0).map(|fd| (fd, false)))
            .map(|(fd, w)| (fd::own(fd), w))
    } else {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    };
    let (db_mirror, writable, inode) = match mirror {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => (None, false, by_path),
        Ok((fd, w)) => (
            Some(fd),
            w,
            fd::fstat(fd).ok().map(|st| inode_of(&st)).or(by_path),
        ),
        Err(e) => {
            bump!(degraded);
            tracing::warn!(target: "walguard", path = %path, error = %e,
                "cannot open a mirror descriptor of the database; lost-lock protection (G1) is off for it");
            (None, false, by_path)
        }
    };
    let inode = inode.unwrap_or((0, 0));
    if let Some(node) = dbs.get(&inode).cloned() {
        // Renamed between the stat and the open: keep the fresh descriptor until closing
        // it cannot cancel SQLite's locks.
        if let Some(fd) = db_mirror {
            close_when_safe(fd, inode.1);
        }
        node.state.lock().handles += 1;
        return node;
    }
    let node = Arc::new(DbNode {
        inode,
        cpath: cpath.to_owned(),
        path,
        db_mirror,
        db_mirror_writable: writable,
        state: Mutex::new(DbState {
            handles: 1,
            ..DbState::default()
        }),
    });
    dbs.insert(inode, node.clone());
    node
}

/// One walguard handle on `node` closed (after the wrapped file was closed). The last
/// one leaves the node cached, idle; it is evicted only if the database was unlinked or
/// too many databases are idle.
pub(crate) fn detach_db(node: &Arc<DbNode>) {
    let mut dbs = DBS.lock();
    let mut st = node.state.lock();
    st.handles = st.handles.saturating_sub(1);
    if st.handles > 0 {
        return;
    }
    st.mirror_held = false;
    // Retired lock files held presence for processes that had not noticed the
    // replacement; this process holds the WAL index no more. Closing is safe (OFD only).
    st.retired_lock_files.clear();
    st.idle_since = IDLE_TICK.fetch_add(1, Ordering::Relaxed);
    let unlinked = node
        .db_mirror
        .and_then(|fd| fd::fstat(fd).ok())
        .is_some_and(|s| s.st_nlink == 0);
    drop(st);
    if unlinked {
        evict(&mut dbs, node);
    }
    let is_idle = |n: &&Arc<DbNode>| n.state.lock().handles == 0;
    if dbs.values().filter(is_idle).count() > IDLE_CAP {
        let oldest = dbs
            .values()
            .filter(is_idle)
            .min_by_key(|n| n.state.lock().idle_since)
            .cloned();
        if let Some(oldest) = oldest {
            evict(&mut dbs, &oldest);
        }
    }
    drop(dbs);
    flush_deferred();
}

/// Removes an idle node and gives back its descriptors.
fn evict(dbs: &mut HashMap<Inode, Arc<DbNode>>, node: &Arc<DbNode>) {
    if dbs.get(&node.inode).is_some_and(|n| Arc::ptr_eq(n, node)) {
        dbs.remove(&node.inode);
    }
    let mut st = node.state.lock();
    if st.handles > 0 {
        return; // never: callers evict idle nodes only
    }
    bump!(nodes_evicted);
    st.lock_file = None;
    st.retired_lock_files.clear();
    if let Some(kept) = st.shm_kept.take() {
        close_when_safe(kept.fd, kept.inode.1);
    }
    if let Some(fd) = node.db_mirror {
        // The node may still be referenced by nobody but this function; the descriptor
        // is not used again (the node is out of the registry and has no handle).
        close_when_safe(fd, node.inode.1);
    }
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

/// Closes a descriptor now if no POSIX lock of this process can be cancelled by it, else
/// defers the close. Used only where a descriptor is given up for good (eviction, a
/// replaced `-shm`, a set-up that lost a race): never at an ordinary connection close.
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
    tracing::debug!(target: "walguard", fd, ino, "close deferred: this process still holds POSIX locks on the file");
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

/// Gives back kept `-shm` descriptors whose file is no longer at its path (removed or
/// replaced while no mapping used it), so that no process keeps a `-shm (deleted)` open
/// that it does not use. Called by the watcher thread after a sidecar event (off every
/// connection's path); elsewhere the next mapping finds out with its `stat`.
pub(crate) fn drop_stale_kept_shm() {
    let nodes: Vec<Arc<DbNode>> = DBS.lock().values().cloned().collect();
    for node in nodes {
        let Some(kept) = node.state.lock().shm_kept else {
            continue;
        };
        let Ok(cpath) = CString::new([node.cpath.to_bytes(), b"-shm"].concat()) else {
            continue;
        };
        if fd::stat(&cpath).is_ok_and(|s| inode_of(&s) == kept.inode) {
            continue;
        }
        let mut st = node.state.lock();
        if st.shm_kept.is_some_and(|k| k.fd == kept.fd) {
            st.shm_kept = None;
            drop(st);
            close_when_safe(kept.fd, kept.inode.1);
        }
    }
}

// ---- fork (see fork_safety) --------------------------------------------------------

/// WAL indexes the wrapped VFS of a forked child still maps on behalf of connections it
/// inherited: SQLite's unix VFS keeps one mapping per database inode and process, shares
/// it with every new connection of the process, and a child inherits it. If the `-shm`
/// was removed or replaced since, a new connection in the child would be served from the
/// stale index (writing over another process's commits) while walguard locked the file
/// now at the path. `(database inode, -shm inode, inherited handles still mapping it)`.
static INHERITED: Mutex<Vec<(Inode, Inode, usize)>> = Mutex::new(Vec::new());

pub(crate) fn fork_prepare() {
    use crate::fork_safety::hold;
    let dbs = DBS.lock();
    // Every node's state too (DBS before state, as everywhere), so the child reads them
    // whole; and room for the child's inherited-mapping table without allocating there.
    for node in dbs.values() {
        hold(&node.state);
    }
    INHERITED.lock().reserve(dbs.len());
    std::mem::forget(dbs);
    hold(&DEFERRED);
    hold(&INHERITED);
}

pub(crate) fn fork_prepare_forced() {
    use crate::fork_safety::hold_forced;
    hold_forced(&DBS);
    hold_forced(&DEFERRED);
    hold_forced(&INHERITED);
}

pub(crate) fn fork_parent() {
    use crate::fork_safety::release;
    // SAFETY: fork_prepare held all of these in this thread.
    unsafe {
        release(&INHERITED);
        release(&DEFERRED);
        for node in (*DBS.data_ptr()).values() {
            release(&node.state);
        }
        release(&*DBS);
    }
}

/// In the child: forget the parent's nodes (never dropped: dropping would close
/// descriptor numbers the child may reuse) and the deferred closes (their descriptors
/// were closed with the ledger); remember which WAL indexes inherited connections map.
pub(crate) fn fork_child() {
    // SAFETY: fork_prepare locked all of these before the fork; the child runs one
    // thread; the nodes' states were locked by prepare, so they are read whole.
    unsafe {
        let map = &mut *DBS.data_ptr();
        let inherited = &mut *INHERITED.data_ptr();
        for node in map.values() {
            let st = &*node.state.data_ptr();
            let handles = st.shm_handles + st.unguarded_handles;
            if handles > 0 {
                let shm = st.shm.as_ref().map_or((0, 0), |s| s.inode);
                // Capacity was reserved by prepare: no allocation here.
                if inherited.len() < inherited.capacity() {
                    inherited.push((node.inode, shm, handles));
                }
            }
        }
        // Leaked on purpose (no destructor runs; the states stay locked, unused).
        std::mem::forget(std::mem::take(map));
        (*DEFERRED.data_ptr()).clear();
        crate::fork_safety::release(&INHERITED);
        crate::fork_safety::release(&DEFERRED);
        crate::fork_safety::release(&*DBS);
    }
}

/// An inherited handle of database `db` stopped mapping its WAL index (unmap or close).
pub(crate) fn inherited_unmapped(db: Inode, shm: Option<Inode>) {
    let mut inh = INHERITED.lock();
    let found = inh
        .iter()
        .position(|&(d, s, n)| d == db && n > 0 && shm.is_none_or(|x| x == s))
        .or_else(|| inh.iter().position(|&(d, _, n)| d == db && n > 0));
    if let Some(i) = found {
        inh[i].2 -= 1;
        if inh[i].2 == 0 {
            inh.swap_remove(i);
        }
    }
}

/// The `-shm` inode an inherited connection still maps for database `db`, if it is not
/// `current` (the file now at the path): the wrapped VFS would serve a new connection
/// from that stale index.
pub(crate) fn inherited_stale_mapping(db: Inode, current: Inode) -> Option<Inode> {
    let inh = INHERITED.lock();
    inh.iter()
        .find(|&&(d, s, n)| d == db && n > 0 && s != (0, 0) && s != current)
        .map(|&(_, s, _)| s)
}
