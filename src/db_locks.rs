//! walguard's locks on a database file, and the descriptor that carries them.
//!
//! Every lock here is an open-file-description (OFD) lock: it belongs to one open file
//! description, survives a stray `close()` of another descriptor of the file in this
//! process, and conflicts with every other process's POSIX locks (and with other
//! descriptions' OFD locks, including another copy of walguard in this process).
//!
//! | bytes | lock | held |
//! |---|---|---|
//! | `PENDING_BYTE+2` .. `+511` (SQLite's SHARED range) | read | while a handle of this process holds SHARED or more (G1: a stray close cannot let another process reach EXCLUSIVE) |
//! | [`GATE`] = `PENDING_BYTE+513` | read | while this process maps the current WAL index and watches it, or during each write transaction/checkpoint when it cannot watch (see `g2_wal_lifecycle`) |
//! | [`GATE`] | write | while this process sets up a new WAL index or tears one down |
//! | [`OLD_WRITE`] = `PENDING_BYTE+512` | write | while this process sets up a new WAL index (excludes the previous walguard build's writers) |
//!
//! SQLite never locks past its SHARED range, and record locks do not affect reads or
//! writes of the bytes (the lock-byte page holds no data).
//!
//! ## The carrier
//! The locks are taken through one descriptor per database and process, the *carrier*:
//! the descriptor the unix VFS opened for one of this process's connections to the
//! database (`unix_fd`), lent for as long as that connection is open — so walguard spends
//! no descriptor of its own. When that connection closes, every lock moves to another
//! open connection's descriptor first (each is a read lock at that moment: taken on the
//! new one, then released on the old one, never a moment without). An exclusive lock is
//! taken only through the requesting connection's own descriptor, which that connection
//! releases before it closes, so an exclusive lock never has to move. Where no
//! connection's descriptor can be read (a wrapped VFS that is not os_unix.c's), walguard
//! opens one of its own, kept until the database's last walguard connection closes.
//!
//! Lock order: `DbLocks` is taken after a database's state and a `-shm` node's locks,
//! never before.

use crate::fd::{self, Lock};
use parking_lot::Mutex;
use std::ffi::CStr;
use std::os::fd::RawFd;

/// SQLite's lock bytes on the database file (os_unix.c, pager.c).
pub(crate) const PENDING_BYTE: i64 = 0x4000_0000;
pub(crate) const SHARED_FIRST: i64 = PENDING_BYTE + 2;
pub(crate) const SHARED_SIZE: i64 = 510;
/// The previous walguard build's WRITE mirror byte (exclusive during its write
/// transactions).
pub(crate) const OLD_WRITE: i64 = SHARED_FIRST + SHARED_SIZE;
/// The gate (see the module table). The previous build locked this byte exclusively
/// during its checkpoints and WAL recoveries, so its recovery of a new index waits while
/// any process of this build maps an old one, and this build's set-up waits for its
/// checkpoints.
pub(crate) const GATE: i64 = OLD_WRITE + 1;

/// A connection's descriptor that may carry the locks.
struct Candidate {
    handle: u64,
    fd: RawFd,
    writable: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Lent by the connection `handle`.
    Lent(u64),
    /// Opened by walguard.
    Own,
}

#[derive(Clone, Copy)]
struct Carrier {
    fd: RawFd,
    writable: bool,
    source: Source,
}

#[derive(Default)]
struct Inner {
    carrier: Option<Carrier>,
    candidates: Vec<Candidate>,
    /// Handles of this process at SHARED or above, and whether the SHARED mirror is held.
    shared_holders: usize,
    mirror: bool,
    /// Reasons to hold the gate shared (see `g2_wal_lifecycle`), the handle holding it
    /// exclusively, and what the carrier holds now.
    gate_refs: usize,
    gate_excl: Option<u64>,
    gate_held: Option<Lock>,
    old_write: bool,
}

/// walguard's locks on one database (see the module documentation).
pub(crate) struct DbLocks {
    inner: Mutex<Inner>,
    ino: u64,
}

impl DbLocks {
    pub(crate) fn new(ino: u64) -> DbLocks {
        DbLocks {
            inner: Mutex::new(Inner::default()),
            ino,
        }
    }

    /// A connection `handle` opened the database; `fd` is the unix VFS's descriptor of it
    /// (`None`: unknown) and `writable` whether it is open for writing.
    pub(crate) fn add_connection(&self, handle: u64, fd: Option<RawFd>, writable: bool) {
        let mut s = self.inner.lock();
        if let Some(fd) = fd {
            s.candidates.push(Candidate {
                handle,
                fd,
                writable,
            });
        }
        match s.carrier {
            None => {
                if let Some(fd) = fd {
                    fd::lend(fd, writable);
                    s.carrier = Some(Carrier {
                        fd,
                        writable,
                        source: Source::Lent(handle),
                    });
                }
            }
            // A writable descriptor is preferred (exclusive locks need one).
            Some(c) if !c.writable && writable && s.gate_excl.is_none() && !s.old_write => {
                s.move_to(handle, self.ino);
            }
            Some(_) => {}
        }
    }

    /// Before the connection `handle` closes: its descriptor stops carrying anything.
    pub(crate) fn remove_connection(&self, handle: u64) {
        let mut s = self.inner.lock();
        if let Some(i) = s.candidates.iter().position(|c| c.handle == handle) {
            s.candidates.swap_remove(i);
        }
        if !matches!(s.carrier, Some(c) if c.source == Source::Lent(handle)) {
            return;
        }
        if s.gate_excl == Some(handle) {
            s.end_exclusive(handle);
        }
        let next = s
            .candidates
            .iter()
            .max_by_key(|c| c.writable)
            .map(|c| c.handle);
        match next {
            Some(h) => s.move_to(h, self.ino),
            None => s.drop_carrier(self.ino),
        }
    }

    /// Opens a descriptor of its own when no connection could lend one (the wrapped VFS
    /// is not os_unix.c's). `Err` names the file and the reason.
    pub(crate) fn ensure_carrier(&self, path: &CStr) -> Result<(), String> {
        let mut s = self.inner.lock();
        if s.carrier.is_some() {
            return Ok(());
        }
        let opened = fd::open_owned(path, libc::O_RDWR, 0)
            .map(|fd| (fd, true))
            .or_else(|_| fd::open_owned(path, libc::O_RDONLY, 0).map(|fd| (fd, false)));
        match opened {
            Ok((fd, writable)) => {
                crate::stats::bump!(own_descriptors);
                s.carrier = Some(Carrier {
                    fd,
                    writable,
                    source: Source::Own,
                });
                Ok(())
            }
            Err(e) => Err(fd::open_error_message(&path.to_string_lossy(), &e)),
        }
    }

    /// Whether the carrier can take exclusive locks (it is open for writing).
    pub(crate) fn writable(&self) -> bool {
        self.inner.lock().carrier.is_some_and(|c| c.writable)
    }

    // ---- the SHARED mirror (G1) ----

    /// A handle entered SHARED: the first one takes the mirror.
    pub(crate) fn entered_shared(&self) -> Result<(), String> {
        let mut s = self.inner.lock();
        s.shared_holders += 1;
        s.take_mirror()
    }

    /// A handle left SHARED for NONE: the last one drops the mirror.
    pub(crate) fn left_shared(&self) {
        let mut s = self.inner.lock();
        s.shared_holders = s.shared_holders.saturating_sub(1);
        if s.shared_holders == 0 {
            s.drop_mirror();
        }
    }

    /// Before a handle asks for EXCLUSIVE: the SHARED mirror would conflict with this
    /// process's own POSIX write lock, so the sole holder drops it. Returns whether it was
    /// dropped.
    pub(crate) fn drop_mirror_for_exclusive(&self) -> bool {
        let mut s = self.inner.lock();
        if s.shared_holders == 1 && s.mirror {
            s.drop_mirror();
            true
        } else {
            false
        }
    }

    /// The handle keeps SHARED after EXCLUSIVE ended or failed: the mirror comes back.
    pub(crate) fn restore_mirror(&self) -> Result<(), String> {
        let mut s = self.inner.lock();
        if s.shared_holders > 0 {
            s.take_mirror()
        } else {
            Ok(())
        }
    }

    /// With this handle's own mirror down: who else holds the SHARED range, for the
    /// message when EXCLUSIVE is refused (`Some(pid)`, -1 for an OFD lock).
    pub(crate) fn shared_holder(&self) -> Option<i32> {
        let s = self.inner.lock();
        let c = s.carrier?;
        fd::posix_probe(c.fd, Lock::Write, SHARED_FIRST, SHARED_SIZE)
            .ok()
            .flatten()
            .map(|h| h.pid)
    }

    // ---- the gate (G2) ----

    /// One more reason to hold the gate shared. `false`: another process holds it
    /// exclusively (setting up or tearing down), nothing changed.
    pub(crate) fn gate_enter(&self) -> bool {
        let mut s = self.inner.lock();
        if s.gate_held.is_none() {
            let Some(c) = s.carrier else { return false };
            if !matches!(fd::ofd_lock(c.fd, Lock::Read, GATE, 1), Ok(true)) {
                return false;
            }
            s.gate_held = Some(Lock::Read);
        }
        s.gate_refs += 1;
        true
    }

    /// One reason fewer; the last one releases the gate (unless held exclusively).
    pub(crate) fn gate_leave(&self) {
        let mut s = self.inner.lock();
        s.gate_refs = s.gate_refs.saturating_sub(1);
        if s.gate_refs == 0 && s.gate_excl.is_none() {
            s.unlock_gate();
        }
    }

    /// Takes the gate exclusively for `handle` (through its own descriptor when it lent
    /// one), converting this process's shared hold — only if this process holds it for no
    /// more than the caller's `own_refs` reasons (another mapping of this process with a
    /// write in flight must finish first). `false`: someone else holds it in any mode, or
    /// this carrier cannot write.
    pub(crate) fn gate_try_exclusive(&self, handle: u64, own_refs: usize) -> bool {
        let mut s = self.inner.lock();
        if let Some(h) = s.gate_excl {
            return h == handle;
        }
        if s.gate_refs > own_refs {
            return false;
        }
        let Some(c) = s.writable_carrier_for(handle, self.ino) else {
            return false;
        };
        if !matches!(fd::ofd_lock(c.fd, Lock::Write, GATE, 1), Ok(true)) {
            return false;
        }
        s.gate_held = Some(Lock::Write);
        s.gate_excl = Some(handle);
        true
    }

    /// For a set-up of a new index by `handle`: the gate exclusively *and* the previous
    /// build's WRITE mirror byte, in one `fcntl` (they are adjacent), plus one reference
    /// on the gate (the set-up's own). Only when this process holds the gate for nothing
    /// else. `false`: someone else holds either byte, or the carrier cannot write.
    pub(crate) fn gate_setup_exclusive(&self, handle: u64) -> bool {
        let mut s = self.inner.lock();
        if s.gate_excl.is_some() || s.gate_refs > 0 || s.old_write {
            return false;
        }
        let Some(c) = s.writable_carrier_for(handle, self.ino) else {
            return false;
        };
        if !matches!(fd::ofd_lock(c.fd, Lock::Write, OLD_WRITE, 2), Ok(true)) {
            return false;
        }
        s.gate_held = Some(Lock::Write);
        s.gate_excl = Some(handle);
        s.old_write = true;
        s.gate_refs += 1;
        true
    }

    /// Ends `handle`'s exclusive hold: back to shared if this process still has reasons,
    /// else released.
    pub(crate) fn gate_end_exclusive(&self, handle: u64) {
        self.inner.lock().end_exclusive(handle);
    }

    /// Whether another process (or another copy of walguard here) holds the gate in any
    /// mode. An error counts as yes.
    pub(crate) fn gate_held_elsewhere(&self) -> bool {
        let s = self.inner.lock();
        let Some(c) = s.carrier else { return true };
        !matches!(fd::ofd_probe(c.fd, Lock::Write, GATE, 1), Ok(None))
    }

    /// The set-up by `handle` is done (the index is recovered): the previous build's WRITE
    /// mirror byte is released and the gate goes back to shared (or is released when this
    /// process has no other reason to hold it: one `fcntl` for both bytes then).
    pub(crate) fn end_setup(&self, handle: u64) {
        let mut s = self.inner.lock();
        if s.gate_excl != Some(handle) {
            return;
        }
        let Some(c) = s.carrier else { return };
        if s.gate_refs == 0 {
            let _ = fd::ofd_lock(c.fd, Lock::Unlock, OLD_WRITE, 2);
            s.gate_held = None;
            s.gate_excl = None;
            s.old_write = false;
            return;
        }
        if std::mem::take(&mut s.old_write) {
            let _ = fd::ofd_lock(c.fd, Lock::Unlock, OLD_WRITE, 1);
        }
        s.end_exclusive(handle);
    }

    /// Whether `handle` holds the gate exclusively (its set-up or tear-down is under way:
    /// no other process can map, set up or write an index meanwhile).
    pub(crate) fn gate_held_exclusively_by(&self, handle: u64) -> bool {
        self.inner.lock().gate_excl == Some(handle)
    }
}

impl Inner {
    /// The carrier an exclusive lock of `handle` goes through: its own descriptor when it
    /// lent a writable one (see the module documentation), else the current carrier if
    /// that is writable.
    fn writable_carrier_for(&mut self, handle: u64, ino: u64) -> Option<Carrier> {
        let lent_writable = self
            .candidates
            .iter()
            .any(|c| c.handle == handle && c.writable);
        if lent_writable && !matches!(self.carrier, Some(c) if c.source == Source::Lent(handle)) {
            self.move_to(handle, ino);
        }
        self.carrier.filter(|c| c.writable)
    }

    fn take_mirror(&mut self) -> Result<(), String> {
        if self.mirror {
            return Ok(());
        }
        let Some(c) = self.carrier else {
            return Ok(());
        };
        match fd::ofd_lock(c.fd, Lock::Read, SHARED_FIRST, SHARED_SIZE) {
            Ok(true) => {
                self.mirror = true;
                Ok(())
            }
            Ok(false) => Err(
                "could not mirror the SHARED lock: another process holds the \
                 database EXCLUSIVE"
                    .to_owned(),
            ),
            Err(e) => Err(format!("could not mirror the SHARED lock: {e}")),
        }
    }

    fn drop_mirror(&mut self) {
        if std::mem::take(&mut self.mirror) {
            if let Some(c) = self.carrier {
                let _ = fd::ofd_lock(c.fd, Lock::Unlock, SHARED_FIRST, SHARED_SIZE);
            }
        }
    }

    fn unlock_gate(&mut self) {
        if self.gate_held.take().is_some() {
            if let Some(c) = self.carrier {
                let _ = fd::ofd_lock(c.fd, Lock::Unlock, GATE, 1);
            }
        }
    }

    fn end_exclusive(&mut self, handle: u64) {
        if self.gate_excl != Some(handle) {
            return;
        }
        self.gate_excl = None;
        let Some(c) = self.carrier else { return };
        if self.gate_refs > 0 {
            // A downgrade of our own write lock: cannot conflict.
            let _ = fd::ofd_lock(c.fd, Lock::Read, GATE, 1);
            self.gate_held = Some(Lock::Read);
        } else {
            let _ = fd::ofd_lock(c.fd, Lock::Unlock, GATE, 1);
            self.gate_held = None;
        }
    }

    /// Moves every (read) lock to the descriptor of `handle`: taken there first, then
    /// released on the old carrier. Exclusive locks are never moved (see the module
    /// documentation); if a lock cannot be taken on the new descriptor the carrier stays.
    fn move_to(&mut self, handle: u64, ino: u64) {
        let Some(new) = self.candidates.iter().find(|c| c.handle == handle) else {
            return;
        };
        let (new_fd, new_writable) = (new.fd, new.writable);
        let old = self.carrier;
        if old.is_some_and(|c| c.fd == new_fd) {
            self.carrier = Some(Carrier {
                fd: new_fd,
                writable: new_writable,
                source: Source::Lent(handle),
            });
            return;
        }
        if self.gate_excl.is_some() || self.old_write {
            return;
        }
        // Recorded before any lock is taken through it: a fork from another thread from
        // now on gives the child a fresh description of it, never one with our locks.
        fd::lend(new_fd, new_writable);
        let mut taken: Vec<(i64, i64)> = Vec::with_capacity(2);
        // (`taken` then names what the old carrier held: released there once moved.)
        let wanted = [
            (self.mirror, SHARED_FIRST, SHARED_SIZE),
            (self.gate_held.is_some(), GATE, 1),
        ];
        for (held, start, len) in wanted {
            if !held {
                continue;
            }
            if matches!(fd::ofd_lock(new_fd, Lock::Read, start, len), Ok(true)) {
                taken.push((start, len));
            } else {
                for (s, l) in taken {
                    let _ = fd::ofd_lock(new_fd, Lock::Unlock, s, l);
                }
                fd::give_back(new_fd);
                return;
            }
        }
        self.carrier = Some(Carrier {
            fd: new_fd,
            writable: new_writable,
            source: Source::Lent(handle),
        });
        if let Some(old) = old {
            release_carrier(old, ino, &taken);
        }
    }

    /// No connection is left to carry the locks: release everything still held.
    fn drop_carrier(&mut self, ino: u64) {
        let held = self.held();
        self.mirror = false;
        self.gate_held = None;
        self.gate_refs = 0;
        self.gate_excl = None;
        self.old_write = false;
        if let Some(old) = self.carrier.take() {
            release_carrier(old, ino, &held);
        }
    }

    /// The byte ranges locked through the carrier now.
    fn held(&self) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        if self.mirror {
            v.push((SHARED_FIRST, SHARED_SIZE));
        }
        if self.old_write {
            v.push((OLD_WRITE, 1));
        }
        if self.gate_held.is_some() {
            v.push((GATE, 1));
        }
        v
    }
}

/// Gives a former carrier back: its locks released, a lent descriptor returned to its
/// connection, an own one closed when that cannot cancel POSIX locks.
fn release_carrier(c: Carrier, ino: u64, held: &[(i64, i64)]) {
    match c.source {
        Source::Lent(_) => {
            for &(start, len) in held {
                let _ = fd::ofd_lock(c.fd, Lock::Unlock, start, len);
            }
            fd::give_back(c.fd);
        }
        Source::Own => fd::close_when_safe(c.fd, ino),
    }
}

impl Drop for DbLocks {
    fn drop(&mut self) {
        let ino = self.ino;
        self.inner.get_mut().drop_carrier(ino);
    }
}
