//! Living through `fork()`.
//!
//! A child process inherits walguard's memory (the registry of databases, the per-handle
//! states of every connection open at the fork) and its open file descriptions. Through an
//! inherited description the child would be the same OFD lock owner as its parent, so the
//! locks walguard exists to provide would never conflict between them, and a child that
//! closes an inherited connection would unlock the parent's mirrors. Measured: forked
//! writers lost rows through walguard where plain unix lost none.
//!
//! So ownership is per process, and a fork ends it (`pthread_atfork`, installed when
//! walguard registers):
//! - *prepare* (parent, forking thread): takes the registry's, the watcher's and the
//!   descriptor ledger's locks, so the child sees none of them half-changed;
//! - *child*: closes the child's copies of every descriptor walguard owns
//!   ([`crate::fd::close_inherited`]; nothing is unlocked — the parent's locks belong to
//!   the parent's descriptions and stay), forgets the inherited registry without dropping
//!   it (its nodes name descriptors that are closed now), forgets the watcher, and
//!   advances the [generation](generation);
//! - *parent*: releases the locks.
//!
//! A connection opened before the fork and used (or closed) in the child belongs to an
//! older generation: its file handles become *forward-only* — every call goes straight to
//! the wrapped VFS, exactly as plain unix would behave, and their walguard state is leaked
//! at close, never unlocked or closed through. SQLite forbids using an inherited
//! connection; closing one is harmless. New connections in the child get fresh
//! descriptors, locks of their own, and every guarantee.
//!
//! A child made without the `pthread_atfork` handlers (a raw `clone`) is caught at the
//! next `xOpen` by a pid check, which does the same reset (best effort).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(1);
/// The process that owns walguard's current state (0: not installed yet).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);

/// The current ownership generation: a handle whose generation differs was inherited
/// from a parent process.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Installs the fork handlers (once per process and copy of walguard).
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: getpid cannot fail.
        OWNER_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
        // SAFETY: the handlers only take/release walguard's own locks, close descriptors
        // and store atomics.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// Takes `m` and keeps it locked across the fork (the guard is forgotten): the child
/// sees its contents whole. [`release`] (parent) or the child's reset unlocks it.
pub(crate) fn hold<T: ?Sized>(m: &parking_lot::Mutex<T>) {
    std::mem::forget(m.lock());
}

/// [`hold`] in a child made without the fork handlers: a lock held by a thread that
/// does not exist here stays locked, as `hold` would leave it.
pub(crate) fn hold_forced<T: ?Sized>(m: &parking_lot::Mutex<T>) {
    if let Some(g) = m.try_lock() {
        std::mem::forget(g);
    }
}

/// Unlocks what [`hold`] or [`hold_forced`] kept locked.
///
/// # Safety
/// `m` is held by `hold`/`hold_forced` of this thread (or, in a child, of the thread that
/// forked), and no guard of it exists.
pub(crate) unsafe fn release<T: ?Sized>(m: &parking_lot::Mutex<T>) {
    // SAFETY: per the contract, the lock is held with its guard forgotten.
    unsafe { m.force_unlock() };
}

/// At `xOpen`: a process forked without the handlers (raw `clone`) resets here.
pub(crate) fn check_pid() {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let owner = OWNER_PID.load(Ordering::SeqCst);
    if owner != 0 && owner != pid {
        // No prepare ran: take the locks as the handlers would (a lock held by a thread of
        // the parent at the clone is lost with that thread: released by force).
        crate::registry::fork_prepare_forced();
        crate::g4_sidecar_watch::fork_prepare_forced();
        crate::fd::fork_prepare_forced();
        child();
    }
}

extern "C" fn prepare() {
    crate::g4_sidecar_watch::fork_stop_watcher();
    crate::registry::fork_prepare();
    crate::g4_sidecar_watch::fork_prepare();
    crate::fd::fork_prepare();
}

extern "C" fn parent() {
    crate::fd::fork_parent();
    crate::g4_sidecar_watch::fork_parent();
    crate::registry::fork_parent();
}

extern "C" fn child() {
    crate::fd::close_inherited();
    crate::g4_sidecar_watch::fork_child();
    crate::registry::fork_child();
    // SAFETY: getpid cannot fail.
    OWNER_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    GENERATION.fetch_add(1, Ordering::SeqCst);
}
