//! Per-process state shared by every walguard handle of one database: one node per
//! database inode and name (per copy of walguard loaded in the process), like os_unix.c's
//! `unixInodeInfo`. The name is part of the key because SQLite names the `-wal` and `-shm`
//! after it (two hard links of one file have two WALs), and because an idle node does not
//! hold its database open: its inode number can come back as another database's, at
//! another path. Touched on open, first map, unmap and close — never on the per-page
//! path. Guards call the registry; the registry calls no guard.
//!
//! ## Ownership of descriptors and locks
//! Every descriptor below belongs to the process that opened it (recorded in the
//! descriptor ledger, `fd.rs`; a forked child closes or re-opens its copies before any of
//! its code runs, see `fork_safety`) and names one inode.
//!
//! | descriptor | inode | opened / closed by | walguard's locks on it (all OFD) | lives until |
//! |---|---|---|---|---|
//! | the carrier (`db_locks`) | the database | the unix VFS, for one connection (lent to walguard while that connection is open) | SHARED mirror, gate, previous build's WRITE mirror during a set-up | that connection closes: the locks move to another open connection's descriptor first |
//! | the carrier, where no connection's descriptor can be read | the database | walguard | the same | the database's last walguard connection closes (closed then only if that cancels no POSIX lock of this process; else deferred) |
//! | `ShmNode::fd` | the `-shm` | walguard (the unix VFS opens no `-shm` for a walguard connection) | WAL locks 120..127, dead-man switch 128 | the mapping's last handle unmaps; then kept, unlocked, in `DbState::kept` |
//! | `DbState::kept` | a `-shm` this process mapped | walguard | none | reused by the next mapping if the path still names it; closed when the watcher sees it replaced or removed (where the process has no watcher yet: when a database is opened after the file went, `sweep_kept`), when the database's node is evicted (more than [`IDLE_CAP`] idle databases, or the process ran out of descriptors) (closed as above). Never closed at once: a probe then a close would leave a window |
//! | the watcher's inotify instance and eventfd | — | walguard | none | the process (or a watcher retired after a read error) |
//!
//! So an open database costs the descriptors SQLite's unix VFS would use (database,
//! `-wal`, `-shm`) and nothing more, plus two per process for the watcher; an idle one
//! (no connection open) at most its kept `-shm`. walguard creates no file of its own.
//!
//! Why keep a `-shm` descriptor at all: closing one cancels every POSIX lock this process
//! holds on that file — another SQLite runtime's dead-man switch, say — and a probe before
//! the close leaves a window in which that runtime can lock it. Kept descriptors are closed
//! only where that cannot matter (the file is gone from its path) or at eviction, after a
//! probe (the window remains there, and is documented).
//!
//! ## Lock order
//! `DBS` → a node's `state` → a mapping's (`ShmNode`) lock table → the node's `DbLocks`
//! → the descriptor ledger. The watcher's table is taken alone or after a node's state,
//! never before it.

use crate::db_locks::DbLocks;
use crate::fd::{self, Inode};
use crate::shm::{Kept, ShmNode};
use crate::unix_fd::UnixVfs;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};

/// One database file as this walguard instance sees it.
pub(crate) struct DbNode {
    pub inode: Inode,
    /// The database name as SQLite passed it to `xOpen` (sidecars are named from it).
    pub cpath: CString,
    /// For messages.
    pub path: String,
    pub locks: Arc<DbLocks>,
    pub state: Mutex<DbState>,
    /// The wrapped VFS when it is os_unix.c's (its `open` entry opens the `-shm`).
    pub unix_vfs: Option<UnixVfs>,
}

/// A registered os_unix.c VFS (registered VFSs live for the process).
// SAFETY: `libc::stat` is plain data; everything mutable is behind the mutexes.
unsafe impl Send for DbNode {}
// SAFETY: as above.
unsafe impl Sync for DbNode {}

#[derive(Default)]
pub(crate) struct DbState {
    /// walguard handles open on this database.
    pub handles: usize,
    /// The mapping a handle's first `xShmMap` joins (none yet, or the last one was
    /// unmapped or found stale).
    pub current: Option<Arc<ShmNode>>,
    /// Every mapping of this database this process still has: the current one and stale
    /// ones still used by their handles.
    pub mappings: Vec<Weak<ShmNode>>,
    /// The handle tearing the WAL down (it holds the gate exclusively and found nobody
    /// else): its `-wal`/`-shm` deletes are allowed.
    pub teardown: Option<u64>,
    /// The database's permissions and owner as last opened (new sidecars get them).
    pub db_stat: Option<libc::stat>,
    /// The `-shm` descriptor of the last mapping, unlocked, for the next one.
    pub kept: Option<Kept>,
    /// When the node last went idle (eviction order).
    pub idle_since: u64,
}

/// How many databases without an open handle a process keeps state (a kept `-shm`
/// descriptor) for.
pub(crate) const IDLE_CAP: usize = 32;
static IDLE_TICK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl DbState {
    /// Live mappings of the `-shm` inode `inode` other than `except`.
    pub(crate) fn other_mappings_of(&self, inode: Inode, except: &ShmNode) -> bool {
        self.mappings
            .iter()
            .filter_map(Weak::upgrade)
            .any(|m| !std::ptr::eq(Arc::as_ptr(&m), except) && m.inode == inode && !m.purged())
    }
}

/// The databases this process has open or keeps a `-shm` descriptor of. Lock order: the
/// registry before a node's state (`detach`, `evict`); code holding a node's state
/// (a first mapping's set-up) reaches the registry only through `evict_idle`, which
/// never waits for either.
static DBS: LazyLock<Mutex<HashMap<Key, Arc<DbNode>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A node's key in `DBS`: the database's inode and the name SQLite opened it by.
type Key = (Inode, CString);

impl DbNode {
    fn key(&self) -> Key {
        (self.inode, self.cpath.clone())
    }
}

/// Removes `node` from `dbs` if it is the node registered under its key.
fn unregister(dbs: &mut HashMap<Key, Arc<DbNode>>, node: &Arc<DbNode>) {
    let key = node.key();
    if dbs.get(&key).is_some_and(|n| Arc::ptr_eq(n, node)) {
        dbs.remove(&key);
    }
}

/// Registers walguard handle `handle` on the main database SQLite just opened as `cpath`,
/// whose `fstat` is `st`. `fd` is the descriptor the unix VFS opened for it, if known
/// (open for writing when `writable`).
pub(crate) fn attach(
    cpath: &CStr,
    st: &libc::stat,
    handle: u64,
    fd: Option<RawFd>,
    writable: bool,
    unix_vfs: Option<UnixVfs>,
) -> Arc<DbNode> {
    register_fork_hooks();
    sweep_kept();
    let inode = fd::inode_of(st);
    let node = {
        let mut dbs = DBS.lock();
        dbs.entry((inode, cpath.to_owned()))
            .or_insert_with(|| {
                Arc::new(DbNode {
                    inode,
                    cpath: cpath.to_owned(),
                    path: cpath.to_string_lossy().into_owned(),
                    locks: Arc::new(DbLocks::new(inode.1)),
                    state: Mutex::new(DbState::default()),
                    unix_vfs,
                })
            })
            .clone()
    };
    {
        let mut state = node.state.lock();
        state.handles += 1;
        state.db_stat = Some(*st);
    }
    node.locks.add_connection(handle, fd, writable);
    node
}

/// Handle `handle` is about to close (its descriptor will be closed by the wrapped VFS
/// right after): its descriptor stops carrying walguard's locks, and the last handle
/// removes the node.
pub(crate) fn detach(node: &Arc<DbNode>, handle: u64) {
    node.locks.remove_connection(handle);
    let mut dbs = DBS.lock();
    let mut st = node.state.lock();
    st.handles = st.handles.saturating_sub(1);
    if st.teardown == Some(handle) {
        st.teardown = None;
    }
    if st.handles > 0 {
        return;
    }
    st.idle_since = IDLE_TICK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keeps = st.kept.is_some();
    drop(st);
    if !keeps {
        // Nothing to keep: the node goes.
        unregister(&mut dbs, node);
        return;
    }
    let idle: Vec<Arc<DbNode>> = dbs
        .values()
        .filter(|n| n.state.lock().handles == 0)
        .cloned()
        .collect();
    if idle.len() > IDLE_CAP {
        if let Some(oldest) = idle.iter().min_by_key(|n| n.state.lock().idle_since) {
            evict(&mut dbs, oldest);
        }
    }
}

/// Removes an idle node and closes its kept descriptor.
fn evict(dbs: &mut HashMap<Key, Arc<DbNode>>, node: &Arc<DbNode>) {
    let mut st = node.state.lock();
    if st.handles > 0 {
        return;
    }
    unregister(dbs, node);
    if let Some(k) = st.kept.take() {
        fd::close_when_safe(k.fd, k.inode.1);
    }
}

/// This process ran out of descriptors: every idle database gives its kept descriptor
/// back. Whether any was.
///
/// Called where a caller may hold a node's state (a handle's first mapping holds its
/// database's through the set-up) while other threads take the registry and then a
/// node's state (`detach`): so it never waits for either. A node whose state is held
/// elsewhere is not idle for this purpose; a registry held elsewhere for longer than
/// `EVICT_WAIT` means no eviction this time (the open then fails with `EMFILE`'s message).
pub(crate) fn evict_idle() -> bool {
    let Some(mut dbs) = DBS.try_lock_for(EVICT_WAIT) else {
        return false;
    };
    let mut evicted = Vec::new();
    dbs.retain(|_, n| {
        let Some(mut st) = n.state.try_lock() else {
            return true;
        };
        if st.handles > 0 {
            return true;
        }
        match st.kept.take() {
            Some(k) => {
                evicted.push(k);
                false
            }
            None => true,
        }
    });
    drop(dbs);
    for k in &evicted {
        fd::close_when_safe(k.fd, k.inode.1);
    }
    !evicted.is_empty()
}

/// How long `evict_idle` waits for the registry.
const EVICT_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The last mapping of `node` ended with its `-shm` still at the path: the descriptor is
/// kept for the next one (an older kept one is closed).
pub(crate) fn keep_shm(node: &DbNode, kept: Kept) {
    crate::stats::bump!(kept_shm);
    let old = node.state.lock().kept.replace(kept);
    if kept.swept {
        SWEEP.store(true, Ordering::Relaxed);
    }
    if let Some(old) = old.filter(|o| o.fd != kept.fd) {
        fd::close_when_safe(old.fd, old.inode.1);
    }
}

/// Whether a descriptor may be kept unwatched (`Kept::swept`): [`sweep_kept`] has work.
static SWEEP: AtomicBool = AtomicBool::new(false);

/// Kept `-shm` descriptors no watcher watches (the process has none yet, or none can
/// watch: `g4_sidecar_identity::KeptWatch::Swept`) whose file is gone from its path are closed:
/// at every open of a database, one `stat` per such descriptor (none in a process that
/// keeps none). A process that never opens a database again holds such a descriptor until
/// it exits.
fn sweep_kept() {
    if !SWEEP.swap(false, Ordering::Relaxed) {
        return;
    }
    let nodes: Vec<Arc<DbNode>> = DBS.lock().values().cloned().collect();
    let mut left = false;
    for node in nodes {
        let swept = node.state.lock().kept.filter(|k| k.swept);
        if let Some(k) = swept {
            left |= !drop_kept_if_gone(&node, k.inode);
        }
    }
    if left {
        SWEEP.store(true, Ordering::Relaxed);
    }
}

/// The kept `-shm` of `node` (`inode`) may have changed (the watcher saw it, or
/// [`sweep_kept`] asks): if the path no longer names it, it is closed (a process must not
/// sit on a deleted `-shm` it does not use). Whether the node no longer keeps it.
pub(crate) fn drop_kept_if_gone(node: &DbNode, inode: Inode) -> bool {
    let mut st = node.state.lock();
    let Some(k) = st.kept.filter(|k| k.inode == inode) else {
        return true;
    };
    let Ok(path) = CString::new([node.cpath.to_bytes(), b"-shm"].concat()) else {
        return false;
    };
    // The kernel reports an unlink a moment before the name disappears: a file at its
    // path with no link left is on its way out (local file systems only are watched).
    if fd::stat(&path).is_ok_and(|s| fd::inode_of(&s) == inode && s.st_nlink > 0) {
        return false;
    }
    st.kept = None;
    drop(st);
    // Gone from its path: nobody can open it again, and a lock another runtime of this
    // process may still hold on it guards nothing anyone else sees. Closed at once (a
    // probe could find the remover's lock still there and defer the close).
    crate::stats::bump!(kept_shm_dropped);
    fd::close(k.fd);
    true
}

/// The node of the database named `db_path` that a handle of this process has open, if
/// any: nodes kept idle (their `-shm` descriptor only) do not count, and when handles are
/// open on two files of that name (the first removed and recreated meanwhile), the one now
/// at the path.
pub(crate) fn find_by_path(db_path: &CStr) -> Option<Arc<DbNode>> {
    let open: Vec<Arc<DbNode>> = DBS
        .lock()
        .values()
        .filter(|n| n.cpath.as_c_str() == db_path && n.state.lock().handles > 0)
        .cloned()
        .collect();
    if open.len() > 1 {
        if let Ok(st) = fd::stat(db_path) {
            let now = fd::inode_of(&st);
            if let Some(n) = open.iter().find(|n| n.inode == now) {
                return Some(n.clone());
            }
        }
    }
    open.into_iter().next()
}

/// A mapping of `node` was found stale (G4): new handles no longer join it.
pub(crate) fn forget_current(node: &DbNode, shm: &ShmNode) {
    let mut st = node.state.lock();
    if st
        .current
        .as_ref()
        .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), shm))
    {
        st.current = None;
    }
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

// ---- fork (see fork_safety) --------------------------------------------------------

fn register_fork_hooks() {
    use crate::fork_safety::{hold, register, release, Hooks, Order};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        register(Hooks {
            order: Order::Registry,
            prepare: || hold(&*DBS),
            // SAFETY: prepare held DBS in this thread.
            parent: || unsafe { release(&*DBS) },
            child: || {
                // The parent's nodes are forgotten, never dropped: their descriptors were
                // closed or re-opened with the ledger, and handles inherited through the
                // fork are forward-only (they never touch their node again). The nodes'
                // own mutexes may have been held by other threads of the parent: nobody
                // in the child takes them.
                // SAFETY: prepare locked DBS before the fork; the child runs one thread.
                unsafe {
                    std::mem::forget(std::mem::take(&mut *DBS.data_ptr()));
                    release(&*DBS);
                }
            },
        })
    });
}
