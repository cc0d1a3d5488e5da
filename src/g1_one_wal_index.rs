//! **G1 — one WAL index.** A walguard process never unlinks `-wal` or `-shm` while any
//! other handle still has them open, and no stray `close()` can make another process
//! believe it is the last one.
//!
//! How:
//! - **Database SHARED mirror.** While any walguard handle of this process holds SHARED
//!   (or more) on a database, walguard holds an open-file-description (OFD) read lock on
//!   SQLite's SHARED byte range through its own read-only descriptor. A closer elsewhere
//!   (with or without walguard) cannot get EXCLUSIVE, so it never checkpoints-and-unlinks,
//!   even after a header peek or a second SQLite runtime in this process cancelled our
//!   POSIX locks. The mirror is dropped just before this process's own sole holder asks
//!   for EXCLUSIVE (an OFD lock conflicts with this process's own POSIX write lock).
//! - **WAL locks as OFD locks.** The `-shm` lock bytes 120..127 are served by walguard
//!   itself as OFD locks on its own `-shm` descriptor (with the same in-process counting
//!   the unix VFS does), instead of process-owned POSIX locks: they survive stray closes
//!   and conflict correctly with every other process's POSIX locks. Exclusive locks
//!   cannot be *mirrored* (an OFD write lock conflicts with the process's own POSIX write
//!   lock on the same byte: measured), so walguard takes them instead of the unix VFS.
//!   The dead-man-switch byte 128 is mirrored with an OFD read lock, so nobody
//!   re-initialises a `-shm` this process still maps.
//! - **A live index is never re-initialised under another runtime.** Before the wrapped
//!   VFS's first mapping, walguard takes its dead-man-switch mirror if anyone (another
//!   SQLite runtime of this very process included) holds that byte; the unix VFS then
//!   does not truncate a `-shm` another runtime still maps.
//! - **The file walguard locks is the file SQLite maps.** walguard opens the `-shm`
//!   just before the wrapped VFS does and checks afterwards that the path still names it;
//!   a `-shm` removed or replaced in between makes the mapping retry. Otherwise a process
//!   could map one `-shm` while walguard held its locks (and watched, G4) on another —
//!   and a newcomer would trust that other file's stale contents without recovery.
//! - **Refusal as the second wall.** At last close SQLite asks
//!   `SQLITE_FCNTL_PERSIST_WAL`; walguard answers "persist" while another holder exists
//!   (presence byte of `<db>-walguard`, or any lock on the `-shm` dead-man-switch byte
//!   held by a process without walguard), and suppresses `xShmUnmap(delete)` and
//!   `xDelete` of `-wal`/`-shm` likewise.
//!
//! Cost: an `open`+`fstat` of the database at first open, one `fcntl` when a handle
//! enters or leaves SHARED (the unix VFS makes the same transitions), an `open`+`fstat`+
//! `stat`+`fcntl` of the `-shm` at the first mapping, WAL lock `fcntl`s exactly where the unix VFS
//! makes its own (none added), and at close a read of `/proc/locks` and two lock probes.

use crate::fd::{self, Lock};
use crate::g2_wal_lifecycle as g2;
use crate::registry::{self, inode_of, DbNode, DbState, Inode, ShmLocks, ShmNode};
use crate::stats::bump;
use libsqlite3_sys as ffi;
use parking_lot::Mutex;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::os::raw::c_int;
use std::sync::Arc;

/// SQLite's lock bytes on the database file (os_unix.c / pager).
const PENDING_BYTE: i64 = 0x4000_0000;
const SHARED_FIRST: i64 = PENDING_BYTE + 2;
const SHARED_SIZE: i64 = 510;
/// First WAL lock byte of the `-shm` and its dead-man switch.
pub(crate) const SHM_BASE: i64 = 120;
pub(crate) const SHM_DMS: i64 = 128;
pub(crate) const SHM_NLOCK: usize = 8;

// ---- database SHARED mirror -------------------------------------------------------

fn take_mirror(node: &DbNode, st: &mut DbState) {
    let Some(fd) = node.db_mirror else { return };
    if st.mirror_held {
        return;
    }
    match fd::ofd_lock(fd, Lock::Read, SHARED_FIRST, SHARED_SIZE) {
        Ok(true) => st.mirror_held = true,
        Ok(false) => tracing::warn!(target: "walguard", path = %node.path,
            "could not mirror the SHARED lock: another process holds the database EXCLUSIVE"),
        Err(e) => tracing::warn!(target: "walguard", path = %node.path, error = %e,
            "could not mirror the SHARED lock"),
    }
}

fn drop_mirror(node: &DbNode, st: &mut DbState) {
    if let (Some(fd), true) = (node.db_mirror, st.mirror_held) {
        let _ = fd::ofd_lock(fd, Lock::Unlock, SHARED_FIRST, SHARED_SIZE);
        st.mirror_held = false;
    }
}

/// A handle went from NONE to SHARED or above.
pub(crate) fn entered_shared(node: &DbNode) {
    let mut st = node.state.lock();
    st.shared_holders += 1;
    take_mirror(node, &mut st);
}

/// A handle is about to ask the wrapped VFS for EXCLUSIVE. Only when it is this
/// process's sole SHARED holder are the mirrors dropped for it (an OFD lock conflicts with
/// our own POSIX write lock, and SQLite >= 3.50 also refuses EXCLUSIVE while any lock on
/// the `-shm` dead-man switch is visible — ours included). In WAL mode that EXCLUSIVE is
/// the start of a tear-down (last close, journal-mode change), so it is taken under the
/// life-cycle lock (G2); if that is busy nothing is dropped and the attempt fails.
/// Returns whether the mirrors were dropped.
///
/// A handle that has the WAL index mapped (`has_shm`) is refused EXCLUSIVE
/// (`Err(SQLITE_BUSY)`) while any other holder uses that index — another process (with or
/// without walguard), another copy of walguard, another handle of this one — as
/// SQLite >= 3.51's unix VFS does (`unixIsSharingShmNode`). In WAL mode that EXCLUSIVE
/// is the last-close checkpoint or a switch out of WAL: after it SQLite checkpoints in
/// exclusive mode (ignoring other readers' marks) and then deletes or truncates the
/// `-wal` (`journal_size_limit`), losing frames another holder appended or still reads.
/// Refusing here, before anything happened, makes the close skip its clean-up; the
/// `SQLITE_FCNTL_PERSIST_WAL` refusal stays as the second wall.
pub(crate) fn before_exclusive(node: &DbNode, id: u64, has_shm: bool) -> Result<bool, c_int> {
    if has_shm {
        // The presence probe below must look at the lock file now at the path.
        let _ = g2::check_lock_file(node, &mut node.state.lock(), true);
    }
    let mut st = node.state.lock();
    let sole = st.shared_holders == 1 && st.mirror_held;
    match st.shm.clone() {
        Some(_) if st.shm_handles > 1 => {
            drop(st);
            return Err(refuse_exclusive(node));
        }
        Some(shm) => {
            // The tear-down window: under the life-cycle lock (G2), so no set-up can slip
            // in between this decision and the unlinks.
            if !g2::try_acquire(&mut st, id) {
                bump!(teardown_busy);
                tracing::info!(target: "walguard", path = %node.path, decision = "busy",
                    "tear-down waits: another process is setting up or tearing down this WAL");
                return Err(ffi::SQLITE_BUSY);
            }
            // Our own dead-man-switch mirror would hide nobody but would be seen by the
            // probe and by SQLite >= 3.50's own check: drop it for the attempt.
            let _ = fd::ofd_lock(shm.fd, Lock::Unlock, SHM_DMS, 1);
            st.dms_dropped = true;
            drop(st);
            if others_hold_wal_index(node, false) {
                let mut st = node.state.lock();
                restore_after_exclusive(node, &mut st, id, true);
                drop(st);
                return Err(refuse_exclusive(node));
            }
            st = node.state.lock();
            // Nobody else holds the index, checked under the life-cycle lock: the
            // last-close question that follows (PERSIST_WAL) need not probe again.
            st.teardown_clear = true;
        }
        None if has_shm => {
            // Unguarded mapping (no -shm descriptor of ours): presence and the kept
            // descriptor still tell.
            drop(st);
            if others_hold_wal_index(node, false) {
                return Err(refuse_exclusive(node));
            }
            st = node.state.lock();
        }
        None => {}
    }
    if !sole {
        return Ok(st.dms_dropped);
    }
    drop_mirror(node, &mut st);
    Ok(true)
}

fn refuse_exclusive(node: &DbNode) -> c_int {
    bump!(exclusive_refused);
    tracing::info!(target: "walguard", path = %node.path, decision = "busy",
        "EXCLUSIVE refused: another holder still uses the WAL index (the close skips its checkpoint and clean-up)");
    ffi::SQLITE_BUSY
}

/// Puts back what `before_exclusive` dropped and ends the tear-down window. The
/// database mirror is re-taken only if the handle keeps SHARED.
fn restore_after_exclusive(node: &DbNode, st: &mut DbState, id: u64, keeps_shared: bool) {
    if keeps_shared {
        take_mirror(node, st);
    }
    if st.dms_dropped {
        if let Some(shm) = st.shm.as_ref() {
            let _ = fd::ofd_lock(shm.fd, Lock::Read, SHM_DMS, 1);
        }
        st.dms_dropped = false;
    }
    g2::release_locked(st, id);
}

/// The wrapped VFS refused EXCLUSIVE. Put the mirrors back, and say who blocked us.
pub(crate) fn exclusive_refused(node: &DbNode, dropped: bool, id: u64) {
    let mut st = node.state.lock();
    if dropped {
        restore_after_exclusive(node, &mut st, id, true);
    }
    drop(st);
    // Only when our own mirror was down can a lock the probe sees be someone else's.
    if let (Some(fd), true) = (node.db_mirror, dropped) {
        if let Ok(Some(h)) = fd::posix_probe(fd, Lock::Write, SHARED_FIRST, SHARED_SIZE) {
            bump!(exclusive_blocked);
            tracing::debug!(target: "walguard", path = %node.path, holder_pid = h.pid,
                by_ofd_mirror = (h.pid == -1),
                "EXCLUSIVE refused: another holder still has the database open");
        }
    }
}

/// The handle left EXCLUSIVE, for SHARED (`keeps_shared`) or straight for NONE.
pub(crate) fn left_exclusive(node: &DbNode, id: u64, keeps_shared: bool) {
    let mut st = node.state.lock();
    restore_after_exclusive(node, &mut st, id, keeps_shared);
}

/// A handle dropped from SHARED or above to NONE.
pub(crate) fn left_shared(node: &DbNode) {
    let mut st = node.state.lock();
    st.shared_holders = st.shared_holders.saturating_sub(1);
    if st.shared_holders == 0 {
        drop_mirror(node, &mut st);
    }
}

// ---- -shm: presence, dead-man switch, WAL locks -----------------------------------

/// Registers this instance as a WAL-index holder (presence byte of the lock file).
pub(crate) fn hold_presence(node: &DbNode, st: &DbState) {
    if let Some(lf) = st.lock_file.as_ref() {
        if let Err(e) = lf.hold_presence() {
            tracing::warn!(target: "walguard", path = %node.path, error = %e, "cannot register presence");
        }
    }
}

/// What [`prepare_shm`] found before a handle's first `xShmMap`.
pub(crate) enum ShmPrep {
    /// This instance already serves the `-shm` of this database: the wrapped VFS shares
    /// its mapping with the handles already attached.
    Served,
    /// The `-shm`, opened by walguard *before* the wrapped VFS opens it, so that
    /// [`attach_shm`] can prove both name the same file.
    Opened {
        fd: RawFd,
        writable: bool,
        inode: Inode,
        /// The dead-man-switch mirror is already held (someone else held the byte).
        dms_held: bool,
    },
    /// No OFD locks here, or the `-shm` cannot be opened (logged): WAL locks stay with
    /// the wrapped VFS.
    Unguarded,
}

/// Why a first mapping must be retried.
pub(crate) struct Retry;

fn shm_cpath(node: &DbNode) -> Option<CString> {
    CString::new([node.cpath.to_bytes(), b"-shm"].concat()).ok()
}

/// Before a handle's first `xShmMap` (under the life-cycle lock): opens the `-shm` the
/// wrapped VFS is about to open, creating it as the unix VFS would (the database's
/// permissions and owner) unless the connection asked for `readonly_shm`.
pub(crate) fn prepare_shm(node: &DbNode, readonly_shm: bool) -> ShmPrep {
    let kept = {
        let mut st = node.state.lock();
        if st.shm.is_some() {
            return ShmPrep::Served;
        }
        st.shm_kept.take()
    };
    if !fd::HAVE_OFD {
        return ShmPrep::Unguarded; // logged at registration
    }
    let Some(cpath) = shm_cpath(node) else {
        return ShmPrep::Unguarded;
    };
    #[cfg(test)]
    if crate::testing::take_shm_open_failure() {
        if let Some(k) = kept {
            node.state.lock().shm_kept = Some(k);
        }
        return ShmPrep::Unguarded;
    }
    // The descriptor of this process's last mapping, if the path still names its file:
    // no open (the next connection of a cycle costs one `stat`).
    if let Some(k) = kept {
        if fd::stat(&cpath).is_ok_and(|s| inode_of(&s) == k.inode) {
            return opened_prep(k.fd, k.writable, k.inode);
        }
        // Removed or replaced since: given up for good.
        registry::close_when_safe(k.fd, k.inode.1);
    }
    let nofollow = libc::O_NOFOLLOW;
    let opened = match fd::open(&cpath, libc::O_RDWR | nofollow, 0) {
        Ok(fd) => Ok((fd, true)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !readonly_shm => {
            let like = node.db_mirror.and_then(|m| fd::fstat(m).ok());
            fd::open_or_create_like(&cpath, like.as_ref()).map(|fd| (fd, true))
        }
        Err(_) => fd::open(&cpath, libc::O_RDONLY | nofollow, 0).map(|fd| (fd, false)),
    };
    let (fd, writable) = match opened {
        Ok((fd, w)) => (fd::own(fd), w),
        Err(e) => {
            bump!(degraded);
            tracing::warn!(target: "walguard", path = %node.path, error = %e,
                "cannot open the -shm; WAL locks are left to the wrapped VFS, unguarded");
            return ShmPrep::Unguarded;
        }
    };
    let inode = fd::fstat(fd).map(|s| inode_of(&s)).unwrap_or((0, 0));
    opened_prep(fd, writable, inode)
}

fn opened_prep(fd: RawFd, writable: bool, inode: Inode) -> ShmPrep {
    // If anyone holds the dead-man switch, the index is live: take walguard's mirror now,
    // before the wrapped VFS looks. The unix VFS's test cannot see this process's own
    // POSIX locks, so when the only holder is another SQLite runtime of this process
    // (which walguard does not see into), it would otherwise truncate and rebuild the
    // `-shm` under that runtime's mapping (SIGBUS there, a reset index everywhere).
    // An OFD probe sees every lock, this process's POSIX locks included.
    let dms_held = matches!(fd::ofd_probe(fd, Lock::Write, SHM_DMS, 1), Ok(Some(_)))
        && matches!(fd::ofd_lock(fd, Lock::Read, SHM_DMS, 1), Ok(true));
    ShmPrep::Opened {
        fd,
        writable,
        inode,
        dms_held,
    }
}

/// Gives back what [`prepare_shm`] opened when the wrapped `xShmMap` failed: kept for the
/// next attempt (unlocked), or closed when safe if this process already keeps one.
pub(crate) fn abandon_shm(node: &DbNode, prep: ShmPrep) {
    if let ShmPrep::Opened {
        fd,
        inode,
        writable,
        dms_held,
    } = prep
    {
        if dms_held {
            let _ = fd::ofd_lock(fd, Lock::Unlock, SHM_DMS, 1);
        }
        let mut st = node.state.lock();
        if st.shm.as_ref().is_some_and(|s| s.fd == fd) {
            return; // the served mapping's own descriptor
        }
        if st.shm_kept.is_none() {
            st.shm_kept = Some(registry::KeptShm {
                fd,
                inode,
                writable,
            });
        } else {
            drop(st);
            registry::close_when_safe(fd, inode.1);
        }
    }
}

/// Attaches a handle whose wrapped file just mapped the `-shm` for the first time.
/// `Err(Retry)` when the `-shm` was removed or replaced while the wrapped VFS opened it:
/// walguard cannot prove which file the wrapped VFS mapped, so the caller undoes the
/// mapping and SQLite retries (it never runs on an index walguard does not guard).
pub(crate) fn attach_shm(node: &DbNode, prep: ShmPrep) -> Result<Option<Arc<ShmNode>>, Retry> {
    let mut st = node.state.lock();
    if let Some(shm) = st.shm.clone() {
        // Served, or (without a usable lock file, where set-ups are not serialised)
        // another handle of this process attached first: share its node.
        drop(st);
        abandon_shm(node, prep);
        let mut st = node.state.lock();
        st.shm_handles += 1;
        return Ok(Some(shm));
    }
    let (fd, writable, inode, dms_held) = match prep {
        ShmPrep::Unguarded => {
            st.unguarded_handles += 1;
            return Ok(None);
        }
        // The node went away since `prepare_shm` (its last handle unmapped): the wrapped
        // VFS may have opened the `-shm` anew; start over.
        ShmPrep::Served => return Err(Retry),
        ShmPrep::Opened {
            fd,
            writable,
            inode,
            dms_held,
        } => (fd, writable, inode, dms_held),
    };
    let Some(cpath) = shm_cpath(node) else {
        drop(st);
        abandon_shm(node, prep);
        return Ok(None);
    };
    // The path named walguard's file before the wrapped VFS opened it and still names
    // it: the wrapped VFS opened (and mapped) that same file.
    if !fd::stat(&cpath).is_ok_and(|s| inode_of(&s) == inode) {
        if dms_held {
            let _ = fd::ofd_lock(fd, Lock::Unlock, SHM_DMS, 1);
        }
        drop(st);
        registry::close_when_safe(fd, inode.1);
        bump!(sidecar_replaced);
        tracing::info!(target: "walguard", path = %node.path, decision = "retry",
            "the -shm was removed or replaced during WAL set-up; mapping again");
        return Err(Retry);
    }
    if !writable && registry::first_warning(&format!("{}-shm read-only", node.path)) {
        bump!(degraded);
        tracing::warn!(target: "walguard", path = %node.path,
            "the -shm is read-only here; WAL locks are left to the wrapped VFS, unguarded");
    }
    if !dms_held {
        if let Err(e) = fd::ofd_lock(fd, Lock::Read, SHM_DMS, 1) {
            tracing::warn!(target: "walguard", path = %node.path, error = %e, "cannot mirror the -shm dead-man switch");
        }
    }
    let dir = node
        .path
        .rfind('/')
        .map_or(".", |i| if i == 0 { "/" } else { &node.path[..i] });
    let watch = CString::new(dir).map_or(0, |d| crate::g4_sidecar_watch::watch(fd, &d));
    let mirror_fd = mirror_target(node, &st);
    let shm = Arc::new(ShmNode {
        fd,
        writable,
        inode,
        cpath,
        watch,
        locks: Mutex::new(ShmLocks {
            slots: [0; SHM_NLOCK],
            mirror_fd,
        }),
        record: std::sync::atomic::AtomicPtr::new(
            st.lock_file
                .as_ref()
                .map_or(std::ptr::null(), |lf| lf.record_ptr()) as *mut _,
        ),
    });
    // Proven just above to be the -shm at the path: tell every process (G4).
    if let Some(r) = shm.record() {
        r.publish_shm(inode);
    }
    bump!(shm_mapped);
    st.watch = watch;
    st.shm = Some(shm.clone());
    st.shm_handles = 1;
    Ok(Some(shm))
}

/// A handle unmapped the `-shm` (after the wrapped VFS did; `deleted`: it was asked to
/// delete it and walguard let it). The last one releases this instance's hold on the
/// WAL index — the dead-man-switch mirror and presence — and keeps the descriptor,
/// unlocked, for the next mapping (closing it could cancel POSIX locks of this process).
pub(crate) fn detach_shm(node: &DbNode, deleted: bool) {
    let mut st = node.state.lock();
    st.shm_handles = st.shm_handles.saturating_sub(1);
    if st.shm_handles > 0 {
        return;
    }
    let dms_dropped = std::mem::take(&mut st.dms_dropped);
    release_presence(&st);
    let Some(shm) = st.shm.take() else { return };
    if !dms_dropped {
        let _ = fd::ofd_lock(shm.fd, Lock::Unlock, SHM_DMS, 1);
    }
    let kept = registry::KeptShm {
        fd: shm.fd,
        inode: shm.inode,
        writable: shm.writable,
    };
    let old = st.shm_kept.take();
    if !deleted {
        st.shm_kept = Some(kept);
    }
    drop(st);
    if let Some(old) = old.filter(|o| o.fd != kept.fd) {
        registry::close_when_safe(old.fd, old.inode.1);
    }
    if deleted {
        // The file is gone from its path: the descriptor cannot be reused.
        registry::close_when_safe(kept.fd, kept.inode.1);
    }
}

/// A handle whose mapping walguard could not guard unmapped: the last such handle (with
/// no guarded one left) ends this instance's presence.
pub(crate) fn detach_unguarded(node: &DbNode) {
    let mut st = node.state.lock();
    st.unguarded_handles = st.unguarded_handles.saturating_sub(1);
    release_presence(&st);
}

/// Ends this instance's presence (on the lock file and on any it moved away from) once
/// no handle of it, guarded or not, maps the WAL index any more.
fn release_presence(st: &DbState) {
    if st.shm_handles > 0 || st.unguarded_handles > 0 {
        return;
    }
    for lf in st.lock_file.iter().chain(&st.retired_lock_files) {
        lf.release_presence();
    }
}

/// A handle's hold on WAL lock slots.
#[derive(Default)]
pub(crate) struct ShmHold {
    pub shared: u8,
    pub excl: u8,
}

/// Serves one `xShmLock` call as OFD locks (semantics of the unix VFS's unixShmLock).
pub(crate) fn shm_lock(
    shm: &ShmNode,
    hold: &mut ShmHold,
    ofst: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    if ofst < 0 || n < 1 || (ofst + n) as usize > SHM_NLOCK {
        return ffi::SQLITE_IOERR_SHMLOCK;
    }
    let (first, count) = (ofst as usize, n as usize);
    let mask: u8 = (((1u16 << n) - 1) << ofst) as u8;
    let byte = SHM_BASE + ofst as i64;
    let mut locks = shm.locks.lock();
    let mirror_fd = locks.mirror_fd;
    let slots = &mut locks.slots;
    let unlock = flags & ffi::SQLITE_SHM_UNLOCK != 0;
    let shared = flags & ffi::SQLITE_SHM_SHARED != 0;
    if unlock {
        if (hold.shared | hold.excl) & mask == 0 {
            return ffi::SQLITE_OK;
        }
        if shared && slots[first] > 1 {
            slots[first] -= 1;
            hold.shared &= !mask;
            return ffi::SQLITE_OK;
        }
        // Released in the reverse order of acquisition: the lock-file mirror first, so
        // another process that gets the `-shm` lock next never finds the mirror still
        // held (it would see SQLITE_BUSY and sleep in its busy handler).
        if hold.excl & mask != 0 {
            mirror_on_lock_file(mirror_fd, Lock::Unlock, first, count);
        }
        if fd::ofd_lock(shm.fd, Lock::Unlock, byte, n as i64).is_err() {
            return ffi::SQLITE_IOERR_UNLOCK;
        }
        slots[first..first + count].fill(0);
        hold.shared &= !mask;
        hold.excl &= !mask;
        return ffi::SQLITE_OK;
    }
    if shared {
        if hold.shared & mask != 0 {
            return ffi::SQLITE_OK;
        }
        if slots[first] < 0 {
            return ffi::SQLITE_BUSY;
        }
        if slots[first] == 0 {
            match fd::ofd_lock(shm.fd, Lock::Read, byte, 1) {
                Ok(true) => {
                    bump!(shm_locks_taken);
                }
                Ok(false) => return ffi::SQLITE_BUSY,
                Err(_) => return ffi::SQLITE_IOERR_SHMLOCK,
            }
        }
        slots[first] += 1;
        hold.shared |= mask;
        return ffi::SQLITE_OK;
    }
    if slots[first..first + count].iter().any(|&s| s != 0) {
        return ffi::SQLITE_BUSY;
    }
    match fd::ofd_lock(shm.fd, Lock::Write, byte, n as i64) {
        Ok(true) => {
            bump!(shm_locks_taken);
        }
        Ok(false) => return ffi::SQLITE_BUSY,
        Err(_) => return ffi::SQLITE_IOERR_SHMLOCK,
    }
    if let Some(rc) = mirror_on_lock_file(mirror_fd, Lock::Write, first, count) {
        let _ = fd::ofd_lock(shm.fd, Lock::Unlock, byte, n as i64);
        return rc;
    }
    slots[first..first + count].fill(-1);
    hold.excl |= mask;
    ffi::SQLITE_OK
}

/// Whether another process (or another copy of walguard) holds a WAL read mark: an
/// OFD probe of the read-mark bytes ignores this instance's own locks.
pub(crate) fn external_reader(shm: &ShmNode) -> std::io::Result<bool> {
    Ok(fd::ofd_probe(shm.fd, Lock::Write, SHM_BASE + 3, SHM_NLOCK as i64 - 3)?.is_some())
}

/// WAL lock slots mirrored outside the `-shm`: WRITE (0) and CKPT (1).
const MIRRORED_SLOTS: usize = 2;

/// Where the WRITE/CKPT mirror lives on the database file: just past SQLite's own lock
/// range (PENDING, RESERVED and the 510-byte SHARED range). SQLite never locks these
/// bytes, and record locks do not affect reads or writes of the data they cover.
pub(crate) const DB_MIRROR_BASE: i64 = SHARED_FIRST + SHARED_SIZE;

/// Where a WAL index's WRITE/CKPT locks are mirrored: the database file (through a
/// writable mirror descriptor) — whose inode no `rm`/`mv` of the sidecars replaces — or,
/// when the database cannot be opened for writing, the lock file (which survives a
/// replaced `-shm` but not `rm <db>-walguard`).
pub(crate) fn mirror_target(node: &DbNode, st: &DbState) -> Option<(RawFd, i64)> {
    match (node.db_mirror, node.db_mirror_writable) {
        (Some(fd), true) => Some((fd, DB_MIRROR_BASE)),
        _ => st
            .lock_file
            .as_ref()
            .and_then(|lf| lf.fd_for_locks())
            .map(|fd| (fd, SHM_BASE)),
    }
}

/// Mirrors an exclusive WRITE/CKPT lock (or its release) on the database file (see
/// [`mirror_target`]). Processes that map a replaced `-shm` and processes still on the
/// old one then still exclude each other's writers and checkpointers (even when the lock
/// file was removed too): a new index is recovered only once the old index's last writer
/// has committed (it fails its next transaction, G4), so recovery sees every commit.
/// `Some(code)` when the lock is held elsewhere (BUSY) or failed.
fn mirror_on_lock_file(
    mirror: Option<(RawFd, i64)>,
    kind: Lock,
    first: usize,
    count: usize,
) -> Option<c_int> {
    let (lf, base) = mirror?;
    let end = (first + count).min(MIRRORED_SLOTS);
    if first >= end {
        return None;
    }
    let (start, len) = (base + first as i64, (end - first) as i64);
    match fd::ofd_lock(lf, kind, start, len) {
        Ok(true) => None,
        Ok(false) => Some(ffi::SQLITE_BUSY),
        Err(_) if kind == Lock::Unlock => None,
        Err(_) => Some(ffi::SQLITE_IOERR_SHMLOCK),
    }
}

/// Releases whatever WAL locks a handle still holds (at unmap).
pub(crate) fn release_all(shm: &ShmNode, hold: &mut ShmHold) {
    for i in 0..SHM_NLOCK as c_int {
        let bit = 1u8 << i;
        if hold.excl & bit != 0 {
            shm_lock(
                shm,
                hold,
                i,
                1,
                ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE,
            );
        } else if hold.shared & bit != 0 {
            shm_lock(
                shm,
                hold,
                i,
                1,
                ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED,
            );
        }
    }
}

// ---- refusal --------------------------------------------------------------------

/// Whether any holder other than this handle still uses the WAL index of `node`:
/// another handle of this instance, another walguard instance (presence), or a process
/// without walguard (any lock on the `-shm` dead-man-switch byte besides our own).
/// `exclude_own_dms`: drop our own dead-man-switch mirror first (at tear-down).
pub(crate) fn others_hold_wal_index(node: &DbNode, exclude_own_dms: bool) -> bool {
    let st = node.state.lock();
    if st.shm_handles > 1 {
        return true;
    }
    if st.lock_file.as_ref().is_some_and(|lf| lf.others_present())
        || st.retired_lock_files.iter().any(|lf| lf.others_present())
    {
        return true;
    }
    if let Some(shm) = st.shm.as_ref() {
        if exclude_own_dms && !st.dms_dropped {
            let _ = fd::ofd_lock(shm.fd, Lock::Unlock, SHM_DMS, 1);
        }
        // POSIX probe: sees other processes' POSIX locks and every OFD lock; this
        // process's own POSIX lock (SQLite's) is invisible to it, as it should be.
        let other = !matches!(fd::posix_probe(shm.fd, Lock::Write, SHM_DMS, 1), Ok(None));
        if other && exclude_own_dms && !st.dms_dropped {
            let _ = fd::ofd_lock(shm.fd, Lock::Read, SHM_DMS, 1);
        }
        return other;
    }
    // No mapping here now: probe the -shm descriptor kept from the last one, if any
    // (it carries no lock of ours).
    if let Some(k) = st.shm_kept {
        return !matches!(fd::posix_probe(k.fd, Lock::Write, SHM_DMS, 1), Ok(None));
    }
    false
}

/// Whether a delete of the sidecar `path` (`<db>-wal` / `<db>-shm`) must be refused.
/// At an unmap with delete: whether the `-shm` may go. The tear-down's own decision
/// (taken under the life-cycle lock and EXCLUSIVE, so nobody can have arrived since)
/// stands; otherwise probe.
pub(crate) fn may_delete_shm(node: &DbNode) -> bool {
    node.state.lock().teardown_clear || !others_hold_wal_index(node, true)
}

pub(crate) fn refuse_sidecar_delete(path: &CStr) -> bool {
    let bytes = path.to_bytes();
    let Some(db) = bytes
        .strip_suffix(b"-wal")
        .or_else(|| bytes.strip_suffix(b"-shm"))
    else {
        return false;
    };
    let Ok(db) = CString::new(db) else {
        return false;
    };
    let others = match registry::find_by_path(&db) {
        Some(node) => !node.state.lock().teardown_clear && others_hold_wal_index(&node, false),
        None => crate::lock_file::others_present_at(&db),
    };
    if others {
        bump!(unlink_refused);
        tracing::info!(target: "walguard", path = %path.to_string_lossy(), decision = "refused",
            "delete of a WAL sidecar refused: another holder still uses the WAL index");
    }
    others
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    /// Defect 6: "is this the handle's first mapping?" was `shm.is_none()`. After a first
    /// mapping walguard could not guard (the `-shm` could not be opened), every later
    /// `xShmMap` — each further 32 KiB page of the WAL index — re-ran the set-up, and an
    /// attach from then on switched the handle's WAL locks from the wrapped VFS to
    /// walguard in mid-use (and a Retry there unmapped regions SQLite still used). The
    /// first-mapping test is now a per-handle flag: nothing re-runs.
    #[test]
    fn an_unguarded_first_mapping_is_not_set_up_again_at_later_pages() {
        crate::register(crate::Options::named("walguard-g1-unit").make_default(false))
            .expect("register");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pages.db");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = Connection::open_with_flags_and_vfs(&path, flags, "walguard-g1-unit")
            .expect("open through walguard");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF;
             CREATE TABLE t(b BLOB);",
        )
        .expect("set up");
        // The next set-up cannot open the -shm: this handle stays unguarded.
        conn.execute_batch("PRAGMA journal_mode=DELETE;")
            .expect("leave WAL (unmaps)");
        crate::testing::FAIL_NEXT_SHM_OPEN.store(true, std::sync::atomic::Ordering::SeqCst);
        conn.execute_batch("PRAGMA journal_mode=WAL;")
            .expect("back to WAL");
        let mapped_before = crate::stats::snapshot().shm_mapped;
        // More than 4,062 frames: the WAL index grows past its first page.
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO t SELECT randomblob(3000) FROM n;",
        )
        .expect("a transaction of 5,000 pages");
        let frames: i64 = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .expect("checkpoint");
        assert!(
            frames > 4062,
            "the index needed a second page ({frames} frames)"
        );
        assert_eq!(
            crate::stats::snapshot().shm_mapped,
            mapped_before,
            "a later page of an unguarded index re-ran the first-mapping set-up"
        );
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
        assert!(!crate::testing::FAIL_NEXT_SHM_OPEN.load(std::sync::atomic::Ordering::SeqCst));
    }
}
