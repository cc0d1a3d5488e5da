//! The WAL index (`-shm`), served by walguard itself.
//!
//! os_unix.c maps the `-shm` of a database once per process and serves its eight WAL
//! locks (bytes 120..127) and the dead-man switch (byte 128) as POSIX locks. POSIX locks
//! belong to the process and vanish when *any* descriptor of the file is closed — by a
//! second SQLite runtime of the process at its last unmap, say — so walguard serves the
//! same protocol with open-file-description locks on its own descriptor instead: they
//! survive such a close, and they conflict with every other process's POSIX locks exactly
//! as os_unix.c's conflict with each other, so processes with and without walguard share
//! one index. The unix VFS never opens the `-shm` of a walguard connection; the process
//! holds one `-shm` descriptor per mapping, as with plain unix.
//!
//! What it does is os_unix.c's `unixOpenSharedMemory`/`unixShmMap`/`unixShmLock`/
//! `unixShmUnmap`, step by step, with two differences:
//! - **No truncation.** The first process to map an index resets it. os_unix.c truncates
//!   the file to 3 bytes; a process that still maps it (one whose dead-man switch was
//!   dropped by a stray close, or one that walguard has cut off from a replaced index)
//!   would then be killed by SIGBUS at its next access. walguard zeroes the header
//!   instead ([`ShmNode::reset`]): SQLite sees an index that needs recovery, exactly as
//!   after a truncation, and nobody's mapping loses its pages.
//! - **Whose index it is** is decided by `g2_wal_lifecycle` (the gate) before
//!   [`ShmNode::lock_dms`] runs; a mapping found stale by G4 is *poisoned*: every lock
//!   request fails and it gives up its hold on the gate.
//!
//! Growing the file writes one byte at the end of each new page (as os_unix.c does), never
//! `ftruncate`: on a full disk the write fails with an error where a hole would have
//! become a SIGBUS at the first store.
//!
//! Lock order: a node's `inner` is taken after its database's state and before the
//! database's `DbLocks`.

use crate::db_locks::DbLocks;
use crate::fd::{self, Lock};
use crate::stats::bump;
use crate::unix_fd::UnixVfs;
use libsqlite3_sys as ffi;
use parking_lot::Mutex;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// First WAL lock byte of the `-shm` and its dead-man switch.
pub(crate) const SHM_BASE: i64 = 120;
pub(crate) const SHM_DMS: i64 = 128;
pub(crate) const SHM_NLOCK: usize = 8;
/// Bytes of the index header SQLite keeps at the start of the `-shm` (two copies of the
/// 48-byte `WalIndexHdr` and the 40-byte `WalCkptInfo`).
const HEADER_BYTES: usize = 136;
/// The OS page os_unix.c extends the file by (a byte written at the end of each).
const EXTEND_PAGE: i64 = 4096;

pub(crate) use crate::fd::Inode;

/// Every shared mapping of a `-shm` this process made: `(address, length)`. A forked child
/// inherits the mappings, and a mapping keeps its open file description alive — with
/// the OFD locks walguard takes through that descriptor (the dead-man switch, the WRITE
/// lock of a write in flight). A child that never execs would keep its parent's locks
/// after the parent died. So the child hook replaces each inherited mapping with private
/// anonymous memory at the same address: the file is let go, and a connection the child
/// inherited (which SQLite forbids it to use) reads zeros instead of faulting; its first
/// lock request then fails (`io.rs`).
static MAPPED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn register_fork_hooks() {
    use crate::fork_safety::{hold, register, release, Hooks, Order};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        register(Hooks {
            order: Order::Descriptors,
            prepare: || hold(&MAPPED),
            // SAFETY: prepare held MAPPED in this thread.
            parent: || unsafe { release(&MAPPED) },
            child: || {
                // SAFETY: prepare locked MAPPED before the fork; the child runs one thread.
                // Each entry is a mapping made by `grow` and not unmapped since; mmap
                // with MAP_FIXED replaces it in place (no allocation here).
                unsafe {
                    let mapped = &mut *MAPPED.data_ptr();
                    for &(addr, len) in mapped.iter() {
                        libc::mmap(
                            addr as *mut c_void,
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                    }
                    mapped.clear();
                    release(&MAPPED);
                }
            },
        })
    });
}

/// A handle's hold on WAL lock slots.
#[derive(Default)]
pub(crate) struct ShmHold {
    pub shared: u8,
    pub excl: u8,
    /// Slots whose exclusive lock came with a hold on the gate (taken because the mapping
    /// itself does not hold it, see `g2_wal_lifecycle`), released with the slot.
    pub gate: u8,
}

/// What the dead-man switch said when a process first mapped the file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dms {
    /// Nobody maps this file: this process holds the switch exclusively and must reset
    /// the index (or give the switch back).
    Fresh,
    /// Someone maps it: this process holds the switch shared and joins.
    Live,
    /// Read-only `-shm` nobody maps: SQLite reads the `-wal` itself
    /// (`SQLITE_READONLY_CANTINIT`).
    CantInit,
}

#[derive(Default)]
struct Inner {
    /// Per WAL lock slot: 0 free, n > 0 shared by n handles, -1 exclusive.
    slots: [i32; SHM_NLOCK],
    /// Mapped regions (addresses), each `region_size` bytes.
    regions: Vec<usize>,
    region_size: usize,
    /// Handles attached to this mapping.
    handles: usize,
    /// The mapping holds a reference on the gate (it is watched); released after the
    /// current write or checkpoint when `release_pending`.
    mapping_ref: bool,
    release_pending: bool,
    /// The handle that set the index up and holds the gate exclusively until recovery is
    /// done (see [`ShmNode::lock`]).
    setup_holder: Option<u64>,
    /// Read-only `-shm` without a dead-man switch yet (os_unix.c's `isUnlocked`).
    unlocked: bool,
    purged: bool,
}

/// One mapping of a `-shm` file in this process.
pub(crate) struct ShmNode {
    pub fd: RawFd,
    pub inode: Inode,
    /// The `-shm` path, and the database's (for messages).
    pub cpath: CString,
    pub db_path: String,
    pub readonly: bool,
    /// The `-wal` this index describes, as the connection that mapped it first opened it
    /// (`None`: unknown). G4 watches and checks it.
    pub wal: Option<Inode>,
    pub db_locks: Arc<DbLocks>,
    /// The OS page size as the wrapped unix VFS sees it: regions are mapped in pieces of
    /// at least that size (os_unix.c's `unixShmRegionPerMap`).
    page: usize,
    inner: Mutex<Inner>,
    poisoned: AtomicBool,
    /// Mirrors `Inner::mapping_ref` for the lock-free transaction-start check.
    watched: AtomicBool,
    /// The watcher instance watching this mapping's files (0: none).
    watch_instance: AtomicU64,
    /// Transactions started on it (until G4 watches it).
    transactions: std::sync::atomic::AtomicU32,
    /// The fork generation that made it: a child never purges its parent's mappings.
    generation: u64,
}

// SAFETY: the region addresses are plain integers into shared mappings that live until
// `purge`; every access to them is SQLite's, through the pointers it was handed.
unsafe impl Send for ShmNode {}
// SAFETY: as above; all mutable state is behind the mutex or atomics.
unsafe impl Sync for ShmNode {}

/// A `-shm` descriptor kept, unlocked, between two mappings of this process (see
/// `registry`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kept {
    pub fd: RawFd,
    pub inode: Inode,
    pub readonly: bool,
    /// No watcher watches it: the registry checks it by `stat` (`registry::sweep_kept`).
    pub swept: bool,
}

/// Why the `-shm` could not be opened.
pub(crate) struct OpenError {
    pub code: c_int,
    pub message: String,
    /// The open failed with `EMFILE`: descriptors kept by idle databases may help.
    pub out_of_descriptors: bool,
}

impl ShmNode {
    /// Opens the `-shm` of the database at `db_cpath` the way os_unix.c does: read-write,
    /// created with the database's permissions (and owner, as root) unless `readonly_shm`;
    /// read-only when it cannot be opened for writing.
    ///
    /// `kept` is this process's descriptor of the last mapping's `-shm` (see `registry`):
    /// reused when the path still names that file (one `stat` instead of an open), closed
    /// otherwise.
    pub(crate) fn open(
        db_cpath: &CString,
        db_stat: &libc::stat,
        readonly_shm: bool,
        wal: Option<Inode>,
        db_locks: Arc<DbLocks>,
        kept: Option<Kept>,
        unix: Option<UnixVfs>,
    ) -> Result<ShmNode, OpenError> {
        let via = unix.and_then(|v| v.open_entry());
        let page = unix
            .and_then(|v| v.page_size())
            .unwrap_or_else(os_page_size);
        let db_path = db_cpath.to_string_lossy().into_owned();
        let cpath =
            CString::new([db_cpath.to_bytes(), b"-shm"].concat()).map_err(|_| OpenError {
                out_of_descriptors: false,
                code: ffi::SQLITE_CANTOPEN,
                message: format!("walguard: {db_path}: the -shm path contains a NUL byte"),
            })?;
        if let Some(k) = kept {
            if k.readonly == readonly_shm
                && fd::stat(&cpath).is_ok_and(|s| fd::inode_of(&s) == k.inode)
            {
                return Ok(ShmNode::new(k, cpath, db_path, wal, db_locks, page));
            }
            fd::close_when_safe(k.fd, k.inode.1);
        }
        let mode = db_stat.st_mode & 0o777;
        let nofollow = libc::O_NOFOLLOW;
        let rw = if readonly_shm {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        } else {
            fd::open_owned_via(via, &cpath, libc::O_RDWR | libc::O_CREAT | nofollow, mode)
        };
        let (fd, readonly) = match rw {
            Ok(fd) => (fd, false),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                return Err(OpenError {
                    out_of_descriptors: true,
                    code: ffi::SQLITE_CANTOPEN,
                    message: fd::open_error_message(&cpath.to_string_lossy(), &e),
                })
            }
            Err(_) => match fd::open_owned_via(via, &cpath, libc::O_RDONLY | nofollow, mode) {
                Ok(fd) => (fd, true),
                Err(e) => {
                    return Err(OpenError {
                        out_of_descriptors: e.raw_os_error() == Some(libc::EMFILE),
                        code: ffi::SQLITE_CANTOPEN,
                        message: fd::open_error_message(&cpath.to_string_lossy(), &e),
                    })
                }
            },
        };
        let st = match fd::fstat(fd) {
            Ok(st) => st,
            Err(e) => {
                fd::close(fd);
                return Err(OpenError {
                    out_of_descriptors: false,
                    code: ffi::SQLITE_IOERR_FSTAT,
                    message: format!("walguard: cannot fstat {}: {e}", cpath.to_string_lossy()),
                });
            }
        };
        if !readonly {
            fd::match_new_file(fd, &st, db_stat);
        }
        let inode = fd::inode_of(&st);
        let file = Kept {
            fd,
            inode,
            readonly,
            swept: false,
        };
        Ok(ShmNode::new(file, cpath, db_path, wal, db_locks, page))
    }

    /// The node of `file`, the `-shm` at `cpath` this process opened (or kept).
    fn new(
        file: Kept,
        cpath: CString,
        db_path: String,
        wal: Option<Inode>,
        db_locks: Arc<DbLocks>,
        page: usize,
    ) -> ShmNode {
        ShmNode {
            page,
            fd: file.fd,
            inode: file.inode,
            cpath,
            db_path,
            readonly: file.readonly,
            wal,
            db_locks,
            inner: Mutex::new(Inner::default()),
            poisoned: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            watch_instance: AtomicU64::new(0),
            transactions: std::sync::atomic::AtomicU32::new(0),
            generation: crate::fork_safety::generation(),
        }
    }

    /// The dead-man-switch step of os_unix.c's `unixLockSharedMemory`, as OFD locks (an
    /// OFD probe sees every other holder, this process's other SQLite runtimes included).
    pub(crate) fn lock_dms(&self) -> Result<Dms, c_int> {
        let mut inner = self.inner.lock();
        self.lock_dms_locked(&mut inner)
    }

    fn lock_dms_locked(&self, inner: &mut Inner) -> Result<Dms, c_int> {
        if self.readonly {
            return match fd::ofd_probe(self.fd, Lock::Write, SHM_DMS, 1) {
                Err(_) => Err(ffi::SQLITE_IOERR_LOCK),
                Ok(None) => {
                    inner.unlocked = true;
                    Ok(Dms::CantInit)
                }
                Ok(Some(h)) if h.write => Err(ffi::SQLITE_BUSY),
                Ok(Some(_)) => match fd::ofd_lock(self.fd, Lock::Read, SHM_DMS, 1) {
                    Ok(true) => {
                        inner.unlocked = false;
                        Ok(Dms::Live)
                    }
                    Ok(false) => Err(ffi::SQLITE_BUSY),
                    Err(_) => Err(ffi::SQLITE_IOERR_LOCK),
                },
            };
        }
        match fd::ofd_lock(self.fd, Lock::Write, SHM_DMS, 1) {
            Ok(true) => Ok(Dms::Fresh),
            Ok(false) => match fd::ofd_lock(self.fd, Lock::Read, SHM_DMS, 1) {
                Ok(true) => Ok(Dms::Live),
                // Someone holds it exclusively: resetting the index right now.
                Ok(false) => Err(ffi::SQLITE_BUSY),
                Err(_) => Err(ffi::SQLITE_IOERR_LOCK),
            },
            Err(_) => Err(ffi::SQLITE_IOERR_LOCK),
        }
    }

    /// After [`Dms::Fresh`]: zero the index header (see the module documentation) and
    /// downgrade the dead-man switch to shared. Writes into existing bytes, or extends a
    /// new file by the header only: a full disk gives an error, never a signal.
    pub(crate) fn reset(&self) -> Result<(), OpenError> {
        let zeros = [0u8; HEADER_BYTES];
        // SAFETY: `zeros` is readable for its whole length; pwrite does not keep it.
        let n = unsafe { libc::pwrite(self.fd, zeros.as_ptr() as *const c_void, zeros.len(), 0) };
        if n != zeros.len() as isize {
            let e = std::io::Error::last_os_error();
            return Err(OpenError {
                out_of_descriptors: false,
                code: if e.raw_os_error() == Some(libc::ENOSPC) {
                    ffi::SQLITE_FULL
                } else {
                    ffi::SQLITE_IOERR_SHMOPEN
                },
                message: format!(
                    "walguard: cannot reset the WAL index {}: {e}",
                    self.cpath.to_string_lossy()
                ),
            });
        }
        let _ = fd::ofd_lock(self.fd, Lock::Read, SHM_DMS, 1);
        Ok(())
    }

    /// Gives the dead-man switch back (a set-up that did not go ahead).
    pub(crate) fn release_dms(&self) {
        let _ = fd::ofd_lock(self.fd, Lock::Unlock, SHM_DMS, 1);
    }

    /// Whether anyone but this mapping holds the dead-man switch: another process (with
    /// or without walguard), another SQLite runtime of this process, another copy of
    /// walguard. An error counts as yes.
    pub(crate) fn others_map(&self) -> bool {
        !matches!(fd::ofd_probe(self.fd, Lock::Write, SHM_DMS, 1), Ok(None))
    }

    /// Whether another process (or another copy of walguard) holds a WAL read mark.
    pub(crate) fn external_reader(&self) -> std::io::Result<bool> {
        Ok(fd::ofd_probe(self.fd, Lock::Write, SHM_BASE + 3, SHM_NLOCK as i64 - 3)?.is_some())
    }

    // ---- handles ----

    pub(crate) fn attach(&self) {
        self.inner.lock().handles += 1;
    }

    /// A handle detached; returns how many remain.
    pub(crate) fn detach(&self) -> usize {
        let mut inner = self.inner.lock();
        inner.handles = inner.handles.saturating_sub(1);
        inner.handles
    }

    pub(crate) fn handles(&self) -> usize {
        self.inner.lock().handles
    }

    // ---- the gate, as this mapping holds it (policy in g2_wal_lifecycle) ----

    /// Takes the mapping's reference again (the watcher runs again). `false`: the gate
    /// is held exclusively elsewhere, or the mapping is poisoned or gone.
    pub(crate) fn rehold_gate(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.mapping_ref {
            inner.release_pending = false;
            self.watched.store(true, Ordering::SeqCst);
            return true;
        }
        if inner.purged || self.is_poisoned() || !self.db_locks.gate_enter() {
            return false;
        }
        inner.mapping_ref = true;
        self.watched.store(true, Ordering::SeqCst);
        true
    }

    /// The mapping stops holding the gate for itself (no watcher, or poisoned): at once
    /// when no write or checkpoint is in flight, else when the last one ends.
    pub(crate) fn unhold_gate(&self) {
        let mut inner = self.inner.lock();
        self.watched.store(false, Ordering::SeqCst);
        if !inner.mapping_ref {
            return;
        }
        if inner.slots.iter().any(|&s| s < 0) {
            inner.release_pending = true;
        } else {
            inner.mapping_ref = false;
            self.db_locks.gate_leave();
        }
    }

    pub(crate) fn set_watch_instance(&self, instance: u64) {
        self.watch_instance.store(instance, Ordering::SeqCst);
    }

    /// Counts a transaction start; returns the new count (saturating).
    pub(crate) fn count_transaction(&self) -> u32 {
        self.transactions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .map_or(u32::MAX, |n| n + 1)
    }

    /// The watcher instance watching this mapping (0: none).
    pub(crate) fn watch_instance(&self) -> u64 {
        self.watch_instance.load(Ordering::Relaxed)
    }

    /// Whether the mapping holds the gate (it is watched): one atomic load.
    pub(crate) fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// The set-up of a new index is under way: `handle` holds the gate exclusively (and
    /// the previous build's WRITE mirror) until the index is recovered.
    pub(crate) fn begin_setup(&self, handle: u64) {
        self.inner.lock().setup_holder = Some(handle);
    }

    /// Whether this mapping set a new index up (it was nobody's before).
    pub(crate) fn setting_up(&self) -> bool {
        self.inner.lock().setup_holder.is_some()
    }

    fn end_setup(&self, inner: &mut Inner) {
        if let Some(h) = inner.setup_holder.take() {
            self.db_locks.end_setup(h);
        }
    }

    // ---- poisoning (policy in g4_sidecar_identity) ----

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// The index is stale: every later lock request fails, and the mapping gives up the
    /// gate (after the write or checkpoint in flight, if any). Returns whether it was
    /// already poisoned.
    pub(crate) fn poison(&self) -> bool {
        let was = self.poisoned.swap(true, Ordering::SeqCst);
        self.unhold_gate();
        was
    }

    // ---- regions ----

    /// `xShmMap`: region `region` of `size` bytes, extending the file when `extend`
    /// (os_unix.c's `unixShmMap`). Returns the code and the address (null when the region
    /// does not exist and `extend` is false).
    pub(crate) fn map(&self, region: usize, size: usize, extend: bool) -> (c_int, *mut c_void) {
        let mut inner = self.inner.lock();
        if inner.unlocked {
            match self.lock_dms_locked(&mut inner) {
                Ok(Dms::CantInit) => return (ffi::SQLITE_READONLY_CANTINIT, std::ptr::null_mut()),
                Ok(_) => {}
                Err(rc) => return (rc, std::ptr::null_mut()),
            }
        }
        let per_map = regions_per_map(size, self.page);
        let wanted = (region + per_map) / per_map * per_map;
        let mut rc = ffi::SQLITE_OK;
        if inner.regions.len() < wanted {
            inner.region_size = size;
            rc = self.grow(&mut inner, wanted, size, extend);
        }
        let p = inner
            .regions
            .get(region)
            .map_or(std::ptr::null_mut(), |&a| a as *mut c_void);
        if self.readonly && rc == ffi::SQLITE_OK {
            rc = ffi::SQLITE_READONLY;
        }
        (rc, p)
    }

    fn grow(&self, inner: &mut Inner, wanted: usize, size: usize, extend: bool) -> c_int {
        let Some(bytes) = (wanted as i64).checked_mul(size as i64) else {
            return ffi::SQLITE_IOERR_SHMSIZE;
        };
        let st = match fd::fstat(self.fd) {
            Ok(st) => st,
            Err(_) => return ffi::SQLITE_IOERR_SHMSIZE,
        };
        #[allow(clippy::unnecessary_cast)]
        let have = st.st_size as i64;
        if have < bytes {
            if !extend {
                return ffi::SQLITE_OK;
            }
            // One byte at the end of each new page, as os_unix.c does: the pages then
            // have blocks behind them (no SIGBUS later), and a full disk says so here.
            let mut page = have / EXTEND_PAGE;
            while page < bytes / EXTEND_PAGE {
                let at = page * EXTEND_PAGE + EXTEND_PAGE - 1;
                let zero = [0u8; 1];
                // SAFETY: writes one byte from a local buffer.
                let n = unsafe { libc::pwrite(self.fd, zero.as_ptr() as *const c_void, 1, at) };
                if n != 1 {
                    let e = std::io::Error::last_os_error();
                    tracing::warn!(target: "walguard", path = %self.db_path, error = %e,
                        "cannot extend the WAL index {}", self.cpath.to_string_lossy());
                    return if e.raw_os_error() == Some(libc::ENOSPC) {
                        ffi::SQLITE_FULL
                    } else {
                        ffi::SQLITE_IOERR_SHMSIZE
                    };
                }
                page += 1;
            }
        }
        let per_map = regions_per_map(size, self.page);
        let prot = if self.readonly {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        while inner.regions.len() < wanted {
            let len = size * per_map;
            let at = (inner.regions.len() * size) as libc::off_t;
            register_fork_hooks();
            // Mapped and recorded under MAPPED's lock, which the fork prepare hook holds.
            let mut mapped = MAPPED.lock();
            // SAFETY: a fresh shared mapping of `len` bytes of our descriptor; the file
            // holds them (checked or extended above).
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    self.fd,
                    at,
                )
            };
            if p == libc::MAP_FAILED {
                return ffi::SQLITE_IOERR_SHMMAP;
            }
            mapped.push((p as usize, len));
            drop(mapped);
            for i in 0..per_map {
                inner.regions.push(p as usize + i * size);
            }
        }
        ffi::SQLITE_OK
    }

    // ---- WAL locks ----

    /// `xShmLock` as os_unix.c's `unixShmLock`, with OFD locks. A lock request on a
    /// poisoned mapping fails with `SQLITE_IOERR_VNODE`. An exclusive WRITE or CKPT lock
    /// on a mapping that does not hold the gate takes a reference on it first (and gives
    /// it back with the slot). The first read lock, or the end of a checkpoint outside a
    /// write, after a set-up ends the set-up (SQLite recovers an index before either).
    ///
    /// `gate_taken`: the caller already took that reference (it checked the sidecars under
    /// it); the lock keeps it, or gives it back if it fails or does not need it.
    pub(crate) fn lock(
        &self,
        hold: &mut ShmHold,
        ofst: c_int,
        n: c_int,
        flags: c_int,
        gate_taken: bool,
    ) -> c_int {
        let rc = self.lock_inner(hold, ofst, n, flags, gate_taken);
        if gate_taken && hold.gate & (1 << ofst.clamp(0, 7)) == 0 {
            self.db_locks.gate_leave();
        }
        rc
    }

    fn lock_inner(
        &self,
        hold: &mut ShmHold,
        ofst: c_int,
        n: c_int,
        flags: c_int,
        gate_taken: bool,
    ) -> c_int {
        if ofst < 0 || n < 1 || (ofst + n) as usize > SHM_NLOCK {
            return ffi::SQLITE_IOERR_SHMLOCK;
        }
        let (first, count) = (ofst as usize, n as usize);
        let mask: u8 = (((1u16 << n) - 1) << ofst) as u8;
        let byte = SHM_BASE + ofst as i64;
        let mut inner = self.inner.lock();
        let unlock = flags & ffi::SQLITE_SHM_UNLOCK != 0;
        let shared = flags & ffi::SQLITE_SHM_SHARED != 0;
        if unlock {
            return self.unlock(&mut inner, hold, first, count, mask, byte, shared);
        }
        if self.is_poisoned() {
            return ffi::SQLITE_IOERR_VNODE;
        }
        if shared {
            if hold.shared & mask != 0 {
                return ffi::SQLITE_OK;
            }
            if inner.slots[first] < 0 {
                return ffi::SQLITE_BUSY;
            }
            if inner.slots[first] == 0 {
                match fd::ofd_lock(self.fd, Lock::Read, byte, 1) {
                    Ok(true) => {
                        bump!(shm_locks_taken);
                    }
                    Ok(false) => return ffi::SQLITE_BUSY,
                    Err(_) => return ffi::SQLITE_IOERR_SHMLOCK,
                }
            }
            inner.slots[first] += 1;
            hold.shared |= mask;
            if first >= 3 {
                self.end_setup(&mut inner);
            }
            return ffi::SQLITE_OK;
        }
        if inner.slots[first..first + count].iter().any(|&s| s != 0) {
            return ffi::SQLITE_BUSY;
        }
        // WRITE (0) or CKPT (1) changes the -wal or the database: with the gate held (a
        // set-up holds it exclusively already).
        let needs_gate = first <= 1 && !inner.mapping_ref && inner.setup_holder.is_none();
        if needs_gate && !gate_taken && !self.db_locks.gate_enter() {
            return ffi::SQLITE_BUSY;
        }
        match fd::ofd_lock(self.fd, Lock::Write, byte, n as i64) {
            Ok(true) => {
                bump!(shm_locks_taken);
            }
            other => {
                if needs_gate && !gate_taken {
                    self.db_locks.gate_leave();
                }
                return if other.is_ok() {
                    ffi::SQLITE_BUSY
                } else {
                    ffi::SQLITE_IOERR_SHMLOCK
                };
            }
        }
        inner.slots[first..first + count].fill(-1);
        hold.excl |= mask;
        if needs_gate {
            hold.gate |= 1 << first;
        }
        ffi::SQLITE_OK
    }

    #[allow(clippy::too_many_arguments)]
    fn unlock(
        &self,
        inner: &mut Inner,
        hold: &mut ShmHold,
        first: usize,
        count: usize,
        mask: u8,
        byte: i64,
        shared: bool,
    ) -> c_int {
        if (hold.shared | hold.excl) & mask == 0 {
            return ffi::SQLITE_OK;
        }
        if shared && inner.slots[first] > 1 {
            inner.slots[first] -= 1;
            hold.shared &= !mask;
            return ffi::SQLITE_OK;
        }
        if fd::ofd_lock(self.fd, Lock::Unlock, byte, count as i64).is_err() {
            return ffi::SQLITE_IOERR_UNLOCK;
        }
        let was_excl = hold.excl & mask != 0;
        inner.slots[first..first + count].fill(0);
        hold.shared &= !mask;
        hold.excl &= !mask;
        let gate = hold.gate & mask;
        hold.gate &= !mask;
        for _ in 0..gate.count_ones() {
            self.db_locks.gate_leave();
        }
        if was_excl && first == 1 && inner.slots[0] == 0 {
            // A checkpoint ended outside a write (a connection that only checkpoints takes
            // no read lock): the index is recovered by then.
            self.end_setup(inner);
        }
        if inner.release_pending && inner.slots.iter().all(|&s| s >= 0) {
            inner.release_pending = false;
            inner.mapping_ref = false;
            self.db_locks.gate_leave();
        }
        ffi::SQLITE_OK
    }

    /// Releases whatever WAL locks a handle still holds (at unmap).
    pub(crate) fn release_all(&self, hold: &mut ShmHold) {
        for i in 0..SHM_NLOCK as c_int {
            let bit = 1u8 << i;
            let kind = if hold.excl & bit != 0 {
                ffi::SQLITE_SHM_EXCLUSIVE
            } else if hold.shared & bit != 0 {
                ffi::SQLITE_SHM_SHARED
            } else {
                continue;
            };
            self.lock(hold, i, 1, ffi::SQLITE_SHM_UNLOCK | kind, false);
        }
    }

    /// The last handle unmapped: the file is deleted when `delete` (and the path still
    /// names it), the regions unmapped, every lock of this mapping released (the gate no
    /// longer held for it), and the descriptor either handed back to be kept (`keep` and
    /// not deleted: returned, unlocked) or closed (deferred while another SQLite runtime
    /// of this process holds POSIX locks on the file).
    pub(crate) fn purge(&self, delete: bool, keep: bool) -> Option<Kept> {
        if self.generation != crate::fork_safety::generation() {
            return None; // inherited through fork: the parent's; never touched here
        }
        let mut inner = self.inner.lock();
        if std::mem::replace(&mut inner.purged, true) {
            return None;
        }
        if delete {
            // Only a tear-down deletes (G2: this process holds the gate exclusively and
            // nobody else holds the dead-man switch), as os_unix.c does at last unmap.
            // SAFETY: a NUL-terminated path.
            unsafe { libc::unlink(self.cpath.as_ptr()) };
        }
        self.end_setup(&mut inner);
        let per_map = regions_per_map(inner.region_size.max(1), self.page);
        let mut mapped = MAPPED.lock();
        for chunk in inner.regions.chunks(per_map) {
            let len = inner.region_size * per_map;
            mapped.retain(|&(a, _)| a != chunk[0]);
            // SAFETY: each chunk's first address is one mapping of size * per_map bytes
            // made in `grow`; SQLite no longer uses it (its last handle unmapped).
            unsafe { libc::munmap(chunk[0] as *mut c_void, len) };
        }
        drop(mapped);
        inner.regions.clear();
        inner.slots = [0; SHM_NLOCK];
        if std::mem::take(&mut inner.mapping_ref) {
            self.db_locks.gate_leave();
        }
        inner.release_pending = false;
        self.watched.store(false, Ordering::SeqCst);
        drop(inner);
        if keep && !delete {
            let _ = fd::ofd_lock(self.fd, Lock::Unlock, 0, 0);
            return Some(Kept {
                fd: self.fd,
                inode: self.inode,
                readonly: self.readonly,
                swept: false,
            });
        }
        if delete {
            // A tear-down found nobody else holding the file (other SQLite runtimes of
            // this process included): closing it cancels nobody's lock.
            fd::close(self.fd);
        } else {
            fd::close_when_safe(self.fd, self.inode.1);
        }
        None
    }

    pub(crate) fn purged(&self) -> bool {
        self.inner.lock().purged
    }
}

impl Drop for ShmNode {
    fn drop(&mut self) {
        // Normally purged by its last handle; a node dropped otherwise (a failed set-up)
        // gives its descriptor back here.
        self.purge(false, false);
    }
}

/// Regions per `mmap` (os_unix.c's `unixShmRegionPerMap`): more than one when the page
/// is larger than a region.
fn regions_per_map(size: usize, page: usize) -> usize {
    if size == 0 || page <= size {
        1
    } else {
        page / size
    }
}

/// The OS page size, where the wrapped VFS cannot say.
fn os_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}
