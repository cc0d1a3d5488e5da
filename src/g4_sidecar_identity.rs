//! **G4 — a split is detected, not written into.**
//!
//! A connection keeps using the `-wal` and `-shm` it opened and mapped. If anything
//! unlinks or replaces them underneath it (a process without walguard that thought it
//! was the last one, a backup tool, `rm`, `mv`), the connection would go on committing
//! into files no other connection will ever open, while new connections build a second
//! WAL index from the path: two groups of writers, one database, lost commits and
//! `database disk image is malformed`.
//!
//! walguard identifies each sidecar by `(st_dev, st_ino)`: the `-shm` by the descriptor it
//! maps, the `-wal` by the descriptor the unix VFS opened for the connection that set the
//! mapping up. Identity is the only test (`st_nlink` and "(deleted)" give false alarms on
//! some file systems). A mapping whose sidecar no longer is the file at its path is
//! *poisoned* (`shm.rs`): every later transaction on it fails with `SQLITE_IOERR_VNODE`
//! (an `SQLITE_IOERR` code SQLite's core never produces itself) before it reads or
//! writes anything, the event tells the operator to reopen the connection, and the
//! mapping gives up the gate (`g2_wal_lifecycle`) so the replacement index can be set up.
//!
//! When is it noticed ([`transaction_start`], the one question `xShmLock` asks)?
//! - **Watched mappings** (a connection that lives on): the watcher thread (`g4_sidecar_watch`)
//!   checks and poisons as soon as the kernel reports a change to either file. A read
//!   transaction costs an atomic load. A write transaction or checkpoint also reads the
//!   kernel's queue itself before it takes the WRITE/CKPT lock (one non-blocking `read`):
//!   nothing is written through a sidecar removed before the write began. Reads in the
//!   moment between an `rm` and the watcher waking still see the old index — which no
//!   walguard process can have replaced yet, since the mapping holds the gate.
//! - **Unwatched mappings** (a mapping's first transactions — its first 1,024 in a process
//!   that watches nothing yet, else its first eight, see [`FIRST_WATCH_AFTER`] —,
//!   `WALGUARD_WATCHER=0`, NFS/FUSE, watch limit, right after a fork until the watcher
//!   runs again): one `stat` per sidecar at every transaction (reads: at most every
//!   `Options::read_recheck`), a write only after it took the gate.
//!
//! A `stat` that fails for another reason than "no such file" returns
//! `SQLITE_IOERR_FSTAT`: the identity cannot be confirmed, so the transaction fails with a
//! retryable error rather than risk writing into a split.

use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsqlite3_sys::{self as ffi, SQLITE_IOERR_FSTAT, SQLITE_IOERR_VNODE, SQLITE_OK};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

use crate::fd::Inode;
use crate::g4_sidecar_watch::{self as watch, Registration, Watched};
use crate::refusal::{Level, Refusal};
use crate::registry::{self, DbNode};
use crate::shm::{ShmHold, ShmNode};
use crate::stats::{bump, COUNTERS};

/// How often a connection's *read* transactions re-check the sidecars, in nanoseconds;
/// 0 (the default) means every read transaction, as the guarantee is stated. Write
/// transactions are checked every time whatever this says: nothing is ever written
/// through a replaced sidecar. A read through a replaced sidecar sees the last state
/// the old WAL index held (consistent, only stale). `stat` is a system call; where it is
/// slow, an application may trade that staleness window for speed
/// (`Options::read_recheck`, or `WALGUARD_READ_RECHECK_MS` for the extension).
static READ_RECHECK_NS: AtomicU64 = AtomicU64::new(0);

/// Sets the read re-check interval (see [`READ_RECHECK_NS`]).
pub(crate) fn set_read_recheck(d: Duration) {
    READ_RECHECK_NS.store(
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// When a connection last confirmed its sidecars.
#[derive(Default)]
pub(crate) struct Checked(Option<Instant>);

impl Checked {
    /// Whether a transaction starting now must check: every write; a read unless a read
    /// re-check interval is set and the last confirmation is younger than it (a vDSO
    /// clock read, no system call).
    pub(crate) fn due(&self, write: bool) -> bool {
        let every = READ_RECHECK_NS.load(Ordering::Relaxed);
        write
            || every == 0
            || self
                .0
                .is_none_or(|t| t.elapsed() >= Duration::from_nanos(every))
    }

    pub(crate) fn confirmed(&mut self) {
        self.0 = Some(Instant::now());
    }
}

/// The identity of a file: the device and inode numbers of `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// `stat(path)` (following symbolic links, as SQLite's `open` does): the identity of the
/// file the path names now, or `Ok(None)` when no file has that name.
pub(crate) fn file_id_of_path(path: &CStr) -> io::Result<Option<FileId>> {
    // One `stat(2)` on the C string SQLite's path already is (no copy, no allocation).
    match crate::fd::stat(path) {
        Ok(st) => {
            let (dev, ino) = crate::fd::inode_of(&st);
            Ok(Some(FileId { dev, ino }))
        }
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_gone(e: &io::Error) -> bool {
    // ENOTDIR: a directory on the path was replaced by something else.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Checks that `sidecar_path` (the `-wal` or `-shm` of the database `db_path`) still
/// names the file `expected` that this connection uses. One `stat`, nothing else.
/// Returns `SQLITE_OK`, `SQLITE_IOERR_VNODE` (unlinked or replaced), or
/// `SQLITE_IOERR_FSTAT` (the `stat` failed otherwise).
pub(crate) fn check_sidecar(db_path: &str, sidecar_path: &CStr, expected: FileId) -> c_int {
    let now = file_id_of_path(sidecar_path);
    if matches!(now, Ok(Some(id)) if id == expected) {
        return SQLITE_OK;
    }
    let sidecar = sidecar_path.to_string_lossy();
    match now {
        Ok(found) => {
            bump!(sidecar_replaced);
            let (what, found_text) = match found {
                Some(id) => (
                    "replaced",
                    format!("now names inode {} on device {}", id.ino, id.dev),
                ),
                None => ("unlinked", "no longer exists".to_owned()),
            };
            tracing::error!(
                target: "walguard",
                path = db_path,
                sidecar = %sidecar,
                expected_dev = expected.dev,
                expected_ino = expected.ino,
                found_dev = found.map(|id| id.dev),
                found_ino = found.map(|id| id.ino),
                decision = "SQLITE_IOERR_VNODE",
                "sidecar {sidecar} of {db_path} was {what} under an open connection (the \
                 connection uses inode {} on device {}; the path {found_text}): writing \
                 on would split the WAL index, so the transaction fails. Close and reopen \
                 the connection",
                expected.ino,
                expected.dev
            );
            SQLITE_IOERR_VNODE
        }
        Err(e) => {
            tracing::warn!(
                target: "walguard",
                path = db_path,
                sidecar = %sidecar,
                error = %e,
                decision = "SQLITE_IOERR_FSTAT",
                "cannot confirm that sidecar {sidecar} of {db_path} is still the file this \
                 connection uses (stat failed: {e}); failing the transaction with a \
                 retryable I/O error"
            );
            SQLITE_IOERR_FSTAT
        }
    }
}

// ---- the connection's -wal ------------------------------------------------------------

/// The `-wal` a connection opened, waiting for the first `xShmMap` of that connection's
/// database handle. SQLite opens a connection's `-wal` (`sqlite3WalOpen`) and maps its
/// WAL index in the same call on the same thread, before any other connection of the
/// thread can open another `-wal`; so the identity belongs to one connection, and to one
/// WAL session of it (a switch out of WAL mode and back opens the `-wal` again).
struct OpenedWal {
    path: CString,
    id: Inode,
}

thread_local! {
    static OPENED_WAL: std::cell::RefCell<Option<OpenedWal>> = const { std::cell::RefCell::new(None) };
}

/// The wrapped VFS just opened the `-wal` at `path`: `id` is the file it opened (from its
/// descriptor when known, else from the path).
pub(crate) fn wal_opened(path: &CStr, id: Inode) {
    let _ = OPENED_WAL.try_with(|w| {
        *w.borrow_mut() = Some(OpenedWal {
            path: path.to_owned(),
            id,
        })
    });
}

/// The `-wal` this thread opened last, if it is `wal_path` (taken: used once).
pub(crate) fn take_opened_wal(wal_path: &CStr) -> Option<Inode> {
    OPENED_WAL
        .try_with(|w| {
            let mut w = w.borrow_mut();
            if w.as_ref().is_some_and(|o| o.path.as_c_str() == wal_path) {
                w.take().map(|o| o.id)
            } else {
                None
            }
        })
        .ok()
        .flatten()
}

/// Right after the wrapped VFS opened the `-wal` at `path` (`opened`: its descriptor's
/// `fstat`, when known): whether the path still names that file. `false`: it was removed
/// or replaced in between; the caller opens again. Unknown (`None`) counts as yes.
pub(crate) fn opened_is_at_path(path: &CStr, opened: Option<&libc::stat>) -> bool {
    let Some(st) = opened else { return true };
    let id = crate::fd::inode_of(st);
    matches!(file_id_of_path(path), Ok(Some(now)) if now == to_id(id))
}

fn wal_path(node: &DbNode) -> Option<CString> {
    CString::new([node.cpath.to_bytes(), b"-wal"].concat()).ok()
}

fn to_id((dev, ino): Inode) -> FileId {
    FileId { dev, ino }
}

// ---- is this mapping still the index at the path? ---------------------------------------

/// Checks both sidecars of `shm` against their paths (one `stat` each). A replaced one
/// poisons the mapping (reported once, as an alarm).
pub(crate) fn check_mapping(node: &DbNode, shm: &ShmNode) -> Result<(), Refusal> {
    let mut rc = check_sidecar(&node.path, &shm.cpath, to_id(shm.inode));
    if rc == SQLITE_OK {
        if let (Some(wal), Some(path)) = (shm.wal, wal_path(node)) {
            rc = check_sidecar(&node.path, &path, to_id(wal));
        }
    }
    match rc {
        SQLITE_OK => Ok(()),
        SQLITE_IOERR_VNODE => {
            poison(node, shm);
            Err(stale())
        }
        code => Err(Refusal::new(
            code,
            &COUNTERS.stale_transactions,
            "SQLITE_IOERR_FSTAT",
            Level::Routine,
            "cannot confirm that the WAL sidecars are still this connection's files",
        )),
    }
}

/// The mapping is stale: poisoned (it gives up the gate), and new handles of this
/// process no longer join it. Takes the node's state: never called with it held.
fn poison(node: &DbNode, shm: &ShmNode) {
    if mark_poisoned(shm) {
        registry::forget_current(node, shm);
    }
}

/// Poisons `shm`; whether it was not poisoned before.
fn mark_poisoned(shm: &ShmNode) -> bool {
    let first = !shm.poison();
    if first {
        bump!(mappings_poisoned);
    }
    first
}

/// What a transaction on a poisoned mapping gets (the alarm was raised when it was found).
fn stale() -> Refusal {
    Refusal::new(
        SQLITE_IOERR_VNODE,
        &COUNTERS.stale_transactions,
        "SQLITE_IOERR_VNODE",
        Level::Routine,
        "this connection's -wal or -shm was removed or replaced since it opened them; \
         writing on would split the WAL index. Close and reopen the connection",
    )
}

/// At a handle's first mapping, before it joins this process's current mapping `cur`
/// (the node's state held): whether the `-wal` the handle opened is the one `cur`
/// describes. When they differ, the path decides: `cur` is stale (poisoned; the caller
/// forgets it and sets up anew) or the handle is (refused).
pub(crate) fn joinable(
    node: &DbNode,
    cur: &ShmNode,
    handle_wal: Option<Inode>,
) -> Result<bool, Refusal> {
    let (Some(mine), Some(theirs)) = (handle_wal, cur.wal) else {
        return Ok(true);
    };
    if mine == theirs {
        return Ok(true);
    }
    let now = wal_path(node).and_then(|p| file_id_of_path(&p).ok().flatten());
    if now == Some(to_id(mine)) {
        bump!(sidecar_replaced);
        tracing::error!(target: "walguard", path = %node.path, decision = "poison",
            "the -wal of this process's WAL index was replaced; connections still using it \
             fail their next transaction (close and reopen them)");
        mark_poisoned(cur);
        Ok(false)
    } else {
        Err(wal_replaced())
    }
}

// ---- watching ---------------------------------------------------------------------------

/// What the watcher reports to: one mapping of one database, and after it ended, the
/// `-shm` descriptor the registry keeps from it.
struct MappingWatch {
    db: Weak<DbNode>,
    shm: Weak<ShmNode>,
    shm_inode: Inode,
    reg: Mutex<Option<(Registration, Weak<dyn Watched>)>>,
}

impl Watched for MappingWatch {
    fn changed(&self) {
        let Some(db) = self.db.upgrade() else { return };
        match self.shm.upgrade() {
            Some(shm) if !shm.purged() => {
                if !shm.is_poisoned()
                    && check_mapping(&db, &shm).is_ok()
                    && being_unlinked(&db, &shm)
                {
                    poison(&db, &shm);
                    bump!(sidecar_replaced);
                    tracing::error!(target: "walguard", path = %db.path, decision = "poison",
                        "a sidecar of this process's WAL index was unlinked; connections using it \
                         fail their next transaction (close and reopen them)");
                }
            }
            _ => {
                registry::drop_kept_if_gone(&db, self.shm_inode);
            }
        }
    }

    fn unwatched(&self) {
        if let Some(shm) = self.shm.upgrade() {
            shm.unhold_gate();
        }
    }
}

/// After an event: whether a sidecar of `shm` still at its path has no link left — the
/// kernel reports an unlink a moment before the name goes, so a `stat` of the path right
/// after the event can still find the file. Only watched (local) file systems come here,
/// where a link count of 0 is exact.
fn being_unlinked(node: &DbNode, shm: &ShmNode) -> bool {
    let gone = |path: &CStr, id: Inode| {
        crate::fd::stat(path).is_ok_and(|s| crate::fd::inode_of(&s) == id && s.st_nlink == 0)
    };
    gone(&shm.cpath, shm.inode)
        || matches!((shm.wal, wal_path(node)), (Some(w), Some(p)) if gone(&p, w))
}

/// Every watched mapping (the watcher holds them weakly).
static WATCHED: Mutex<Vec<Arc<MappingWatch>>> = Mutex::new(Vec::new());

/// Whether the sidecars of the new mapping `shm` are still the files at their paths
/// (checked after [`watch`], so that a replacement made before the watch began is not
/// missed: any later one is an event). No side effect: the caller, which holds the
/// node's state, gives the mapping up. A `-shm` replaced meanwhile is `SQLITE_BUSY`
/// (SQLite retries the first mapping, which opens what is at the path now); a `-wal`
/// replaced since the connection opened it is `SQLITE_IOERR_VNODE` (the connection keeps
/// that `-wal` for its WAL session: only a reopen helps).
pub(crate) fn still_at_paths(node: &DbNode, shm: &ShmNode) -> Result<(), Refusal> {
    let at =
        |path: &CStr, id: Inode| matches!(file_id_of_path(path), Ok(Some(now)) if now == to_id(id));
    if !at(&shm.cpath, shm.inode) {
        bump!(sidecar_replaced);
        return Err(Refusal::busy(
            &COUNTERS.setup_busy,
            "retry",
            "the -shm was removed or replaced during WAL set-up; mapping again",
        ));
    }
    match (shm.wal, wal_path(node)) {
        (Some(w), Some(p)) if !at(&p, w) => Err(wal_replaced()),
        _ => Ok(()),
    }
}

/// The `-wal` a connection opened is no longer the one at the path (counted).
fn wal_replaced() -> Refusal {
    bump!(sidecar_replaced);
    Refusal::new(
        SQLITE_IOERR_VNODE,
        &COUNTERS.stale_transactions,
        "SQLITE_IOERR_VNODE",
        Level::Alarm,
        "the -wal was removed or replaced since this connection opened it. Close and reopen \
         the connection",
    )
}

/// How many transactions a mapping serves unwatched before G4 watches it, in a process
/// whose watcher already runs: a connection that opens, queries and closes (a request
/// handler that connects per request) never pays for the watches and for the watcher
/// thread waking at its own tear-down; one that lives on is watched from its ninth
/// transaction.
pub(crate) const WATCH_AFTER: u32 = 8;

/// The same, for the mapping that would start the process's watcher (its inotify
/// instance). A process that exits holding inotify watches waits in the kernel for an
/// SRCU grace period while its descriptors close (9-18 ms measured here, whatever the
/// number of watches; asleep, not busy): every CLI invocation and short worker would pay
/// that at exit. An unwatched transaction costs about 1 µs more than a watched one (one
/// `stat` per sidecar, and the gate around a write), so a process starts watching only
/// once a mapping has paid about a tenth of that exit cost this way: at its 1,024th
/// transaction. Later mappings of the process are watched from their ninth.
pub(crate) const FIRST_WATCH_AFTER: u32 = 1024;

/// Whether a mapping's `n`th transaction starts watching it.
fn watch_now(n: u32) -> bool {
    n == FIRST_WATCH_AFTER || (n == WATCH_AFTER && watch::has_instance())
}

/// Watches the sidecars of the mapping `shm`: the `-shm` through walguard's own
/// descriptor (the file it maps, whatever the path names), the `-wal` by its path (the
/// descriptor of the connection that opened it may be closed by now; the caller checks
/// that the path names the index's `-wal`). Whether it is watched.
fn watch(node: &Arc<DbNode>, shm: &Arc<ShmNode>) -> bool {
    watch_files(node, shm, true)
}

/// What becomes of the `-shm` descriptor of a mapping whose last handle unmaps without a
/// tear-down (see `registry`: closing it could cancel another runtime's POSIX locks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeptWatch {
    /// Kept; the watcher watches the file, and the descriptor is closed when it goes.
    Watched,
    /// Kept unwatched: this process has no watcher yet and does not start one for a
    /// descriptor (see [`FIRST_WATCH_AFTER`]: a CLI invocation that closes while another
    /// process maps the database would pay the watcher's exit cost), or none can watch
    /// here (`WALGUARD_WATCHER=0`, NFS/FUSE, the watch limit). The registry closes it
    /// once the file is gone from its path, checked whenever a database is opened.
    Swept,
    /// Not kept (the caller's decision: a tear-down deleted the file, or the mapping is
    /// stale).
    No,
}

/// The last handle of the mapping `shm` unmaps and the registry keeps its `-shm`
/// descriptor: how it learns that the file went (a mapping never watched is watched from
/// now on where the process's watcher runs). Never closed at once: closing it could
/// cancel a POSIX lock another SQLite runtime of this process takes on the file between
/// a probe and the close (its WAL read or write lock: the runtime would read, or recover
/// the index, unprotected).
pub(crate) fn watch_kept(node: &Arc<DbNode>, shm: &Arc<ShmNode>) -> KeptWatch {
    if shm.watched()
        || shm.watch_instance() != 0
        || (watch::has_instance() && watch_files(node, shm, false))
    {
        KeptWatch::Watched
    } else {
        KeptWatch::Swept
    }
}

fn watch_files(node: &Arc<DbNode>, shm: &Arc<ShmNode>, with_wal: bool) -> bool {
    register_fork_hooks();
    prune(node);
    let mw = Arc::new(MappingWatch {
        db: Arc::downgrade(node),
        shm: Arc::downgrade(shm),
        shm_inode: shm.inode,
        reg: Mutex::new(None),
    });
    let owner: Weak<dyn Watched> = Arc::downgrade(&(mw.clone() as Arc<dyn Watched>));
    let wal = wal_path(node);
    let mut files = vec![watch::File::Fd(shm.fd)];
    if let (true, Some(_), Some(p)) = (with_wal, shm.wal, wal.as_deref()) {
        files.push(watch::File::Path(p));
    }
    let Some(reg) = watch::watch(shm.inode.0, shm.fd, &files, owner.clone()) else {
        return false;
    };
    shm.set_watch_instance(reg.instance());
    *mw.reg.lock() = Some((reg, owner));
    WATCHED.lock().push(mw);
    true
}

/// Watches of mappings that ended (their kept descriptor is replaced by the new mapping's)
/// or of databases that went: given back.
fn prune(node: &DbNode) {
    let gone: Vec<Arc<MappingWatch>> = {
        let mut watched = WATCHED.lock();
        let (gone, live) = std::mem::take(&mut *watched).into_iter().partition(|m| {
            m.db.strong_count() == 0
                || (std::ptr::eq(m.db.as_ptr(), node) && m.shm.strong_count() == 0)
        });
        *watched = live;
        gone
    };
    for mw in gone {
        let taken = mw.reg.lock().take();
        if let Some((reg, owner)) = taken {
            watch::unwatch(&reg, &owner, true);
        }
    }
}

/// The mapping `shm` ends: its watch goes (the kernel's too, unless `kernel` is false
/// because the files are being deleted, which removes their watches by itself).
pub(crate) fn unwatch(shm: &ShmNode, kernel: bool) {
    let mw = {
        let mut watched = WATCHED.lock();
        let Some(i) = watched
            .iter()
            .position(|m| std::ptr::eq(m.shm.as_ptr(), shm))
        else {
            return;
        };
        watched.swap_remove(i)
    };
    let taken = mw.reg.lock().take();
    if let Some((reg, owner)) = taken {
        watch::unwatch(&reg, &owner, kernel);
    }
}

fn register_fork_hooks() {
    use crate::fork_safety::{hold, register, release, Hooks, Order};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        register(Hooks {
            order: Order::Guards,
            prepare: || hold(&WATCHED),
            // SAFETY: prepare held WATCHED in this thread.
            parent: || unsafe { release(&WATCHED) },
            // The parent's mappings are forgotten, never dropped (dropping one would
            // close descriptor numbers the child may reuse).
            // SAFETY: prepare locked WATCHED before the fork; the child runs one thread.
            child: || unsafe {
                std::mem::forget(std::mem::take(&mut *WATCHED.data_ptr()));
                release(&WATCHED);
            },
        })
    });
}

// ---- the transaction-start question ------------------------------------------------------

/// `xShmLock` on a mapping walguard serves: may this transaction start? Then the lock.
/// A read transaction starts with a shared READ-slot lock, a write transaction with the
/// exclusive WRITE lock, a checkpoint with the exclusive CKPT lock. Undoes nothing itself:
/// a refused transaction never took its lock.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transaction_start(
    node: &Arc<DbNode>,
    shm: &Arc<ShmNode>,
    handle: u64,
    hold: &mut ShmHold,
    checked: &mut Checked,
    ofst: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    if flags & ffi::SQLITE_SHM_LOCK == 0 {
        return shm.lock(hold, ofst, n, flags, false);
    }
    let exclusive = flags & ffi::SQLITE_SHM_EXCLUSIVE != 0;
    let write = exclusive && (ofst == 0 || ofst == 1);
    let read = !exclusive && ofst >= 3;
    if shm.is_poisoned() {
        return stale().report(&node.path);
    }
    let mut gate_taken = false;
    if write || read {
        // A checkpoint lock taken under the WRITE lock (recovery, a checkpoint after a
        // commit) was covered by the WRITE lock's own start.
        let covered = write && hold.excl & 1 != 0;
        match before_transaction(node, shm, handle, write && !covered, checked) {
            Ok(taken) => gate_taken = taken,
            Err(r) => return r.report(&node.path),
        }
    }
    let rc = shm.lock(hold, ofst, n, flags, gate_taken);
    if rc == SQLITE_IOERR_VNODE {
        return stale().report(&node.path);
    }
    rc
}

/// The mapping has served enough transactions ([`watch_now`]): from now on the watcher watches
/// its files (and it holds the gate while it maps). The paths are checked after the
/// watches began, so a replacement made before is not missed (any later one is an
/// event). Returns the watcher instance (0: no watcher here; it stays unwatched).
fn start_watching(node: &Arc<DbNode>, shm: &Arc<ShmNode>) -> Result<u64, Refusal> {
    if !watch(node, shm) {
        return Ok(0);
    }
    let replaced = still_at_paths(node, shm).err();
    if replaced.is_some() || being_unlinked(node, shm) {
        poison(node, shm);
        return Err(replaced.unwrap_or_else(stale));
    }
    Ok(shm.watch_instance())
}

/// The checks before a read or write transaction (see the module documentation).
/// `Ok(true)`: a reference on the gate was taken for this write (the lock keeps it).
fn before_transaction(
    node: &Arc<DbNode>,
    shm: &Arc<ShmNode>,
    handle: u64,
    write: bool,
    checked: &mut Checked,
) -> Result<bool, Refusal> {
    let mut instance = shm.watch_instance();
    if instance == 0 && !shm.readonly && watch_now(shm.count_transaction()) {
        instance = start_watching(node, shm)?;
    }
    if !shm.watched() && instance != 0 && watch::resume(instance) && shm.rehold_gate() {
        // Watched again (the watcher stopped for a fork): what happened meanwhile is in
        // the queue; check once now rather than wait for the thread.
        watch::drain(instance);
        check_mapping(node, shm)?;
    }
    // This handle sets the index up or tears it down right now (it holds the gate
    // exclusively): no other process can have replaced it and set up another meanwhile.
    if !shm.watched() && node.locks.gate_held_exclusively_by(handle) {
        return Ok(false);
    }
    if shm.watched() {
        if write && watch::drain(instance) {
            check_mapping(node, shm)?;
        }
        return if shm.is_poisoned() {
            Err(stale())
        } else {
            Ok(false)
        };
    }
    if !write {
        if checked.due(false) {
            check_mapping(node, shm)?;
            checked.confirmed();
        }
        return Ok(false);
    }
    // Unwatched write: the gate first, then the check — no index can be set up anew
    // between the two.
    if !node.locks.gate_enter() {
        return Err(Refusal::busy(
            &COUNTERS.setup_busy,
            "busy",
            "write waits: another process is setting up or tearing down this WAL",
        ));
    }
    if let Err(r) = check_mapping(node, shm) {
        node.locks.gate_leave();
        return Err(r);
    }
    checked.confirmed();
    Ok(true)
}

#[cfg(test)]
mod tests {

    #[test]
    fn writes_are_always_checked_and_reads_unless_an_interval_is_set() {
        let mut c = Checked::default();
        assert!(c.due(false) && c.due(true), "never confirmed: check");
        c.confirmed();
        assert!(c.due(false), "default: every read transaction checks");
        set_read_recheck(Duration::from_secs(3600));
        assert!(!c.due(false), "a read within the interval skips the stat");
        assert!(c.due(true), "a write always checks");
        set_read_recheck(Duration::ZERO);
        assert!(c.due(false));
    }

    use super::*;
    use crate::g3_short_header_reads::testkit::capture;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn cpath(p: &std::path::Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).expect("no NUL in a temp path")
    }

    fn replaced() -> u64 {
        crate::stats::snapshot().sidecar_replaced
    }

    #[test]
    fn identity_of_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db-wal");
        std::fs::write(&p, b"x").expect("write");
        let m = std::fs::metadata(&p).expect("metadata");
        let id = file_id_of_path(&cpath(&p)).expect("stat");
        assert_eq!(
            id,
            Some(FileId {
                dev: m.dev(),
                ino: m.ino()
            })
        );
    }

    #[test]
    fn missing_path_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nothing-here");
        assert_eq!(file_id_of_path(&cpath(&p)).expect("stat"), None);
        // A path through a regular file (ENOTDIR) does not exist either.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").expect("write");
        assert_eq!(file_id_of_path(&cpath(&f.join("x"))).expect("stat"), None);
    }

    #[test]
    fn same_file_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db-shm");
        std::fs::write(&p, b"x").expect("write");
        let id = file_id_of_path(&cpath(&p)).expect("stat").expect("exists");
        let (rc, events) = capture(|| check_sidecar("/d/a.db", &cpath(&p), id));
        assert_eq!(rc, SQLITE_OK);
        assert!(events.is_empty());
    }

    #[test]
    fn unlinked_sidecar_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db-wal");
        std::fs::write(&p, b"x").expect("write");
        let id = file_id_of_path(&cpath(&p)).expect("stat").expect("exists");
        std::fs::remove_file(&p).expect("rm");
        let before = replaced();
        let (rc, events) = capture(|| check_sidecar("/d/a.db", &cpath(&p), id));
        assert_eq!(rc, SQLITE_IOERR_VNODE);
        assert_eq!(rc & 0xff, libsqlite3_sys::SQLITE_IOERR);
        assert!(replaced() > before);
        let ev = events
            .iter()
            .find(|e| e.level == tracing::Level::ERROR)
            .expect("an error event");
        assert_eq!(ev.target, "walguard");
        assert_eq!(ev.field("path"), Some("/d/a.db"));
        let msg = ev.message();
        assert!(msg.contains("unlinked"), "{msg}");
        assert!(msg.contains("reopen"), "{msg}");
        assert!(msg.contains("a.db-wal"), "{msg}");
    }

    #[test]
    fn replaced_sidecar_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.db-shm");
        std::fs::write(&p, b"old").expect("write");
        let id = file_id_of_path(&cpath(&p)).expect("stat").expect("exists");
        // Keep the old inode alive so the new file cannot reuse its number.
        let kept = dir.path().join("moved-away");
        std::fs::rename(&p, &kept).expect("mv");
        std::fs::write(&p, b"new").expect("write");
        let (rc, events) = capture(|| check_sidecar("/d/a.db", &cpath(&p), id));
        assert_eq!(rc, SQLITE_IOERR_VNODE);
        let msg = events
            .iter()
            .find(|e| e.level == tracing::Level::ERROR)
            .map(|e| e.message().to_owned())
            .expect("an error event");
        assert!(msg.contains("replaced"), "{msg}");
        assert!(msg.contains("reopen"), "{msg}");
    }

    #[test]
    fn stat_failure_fails_closed_without_claiming_a_replacement() {
        // A directory we cannot search: stat fails with EACCES (unless we are root,
        // who may search anything; then the file is simply found).
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("locked");
        std::fs::create_dir(&sub).expect("mkdir");
        let p = sub.join("a.db-wal");
        std::fs::write(&p, b"x").expect("write");
        let id = file_id_of_path(&cpath(&p)).expect("stat").expect("exists");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let rc = check_sidecar("/d/a.db", &cpath(&p), id);
        let searchable = std::fs::metadata(&p).is_ok();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        if searchable {
            assert_eq!(rc, SQLITE_OK);
        } else {
            assert_eq!(rc, SQLITE_IOERR_FSTAT);
        }
    }
}
