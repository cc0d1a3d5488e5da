//! Living through `fork()`: the mechanism only.
//!
//! A child process inherits walguard's memory and its open file descriptions. Through an
//! inherited description the child would be the same OFD lock owner as its parent, so the
//! locks walguard exists to provide would never conflict between them, and a child that
//! outlives its parent would keep the parent's locks alive. So ownership is per process,
//! and a fork ends it.
//!
//! Each module that owns process-wide state registers its own hooks here
//! ([`register`]), defined beside the state they protect; this module knows none of them
//! by name. At a fork (`pthread_atfork`, installed when walguard registers):
//! - *prepare* (parent, forking thread) runs the hooks in ascending [`Order`]: first the
//!   watcher thread is stopped, then every lock is taken in the crate's lock order, so the
//!   child sees no state half-changed;
//! - *child* runs them in descending order (descriptors first: the child closes or
//!   re-opens its copies before anything else), then advances the [generation](generation);
//! - *parent* runs them in descending order, releasing what prepare took.
//!
//! A connection opened before the fork and used (or closed) in the child belongs to an
//! older generation: its calls are forward-only (see `io.rs`), exactly as plain unix would
//! behave, and its walguard state is leaked at close, never unlocked or closed through.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The current ownership generation: a handle whose generation differs was inherited
/// from a parent process. One relaxed load.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Where a module's hooks run among the others. Prepare runs them in ascending order,
/// parent and child in descending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Order {
    /// The watcher thread is stopped before any lock is taken (it may be waiting for one).
    StopThreads = 0,
    /// The registry of databases.
    Registry = 10,
    /// The guards' own tables (G4's watched mappings).
    Guards = 15,
    /// The watcher's tables.
    Watcher = 20,
    /// The descriptor ledger (taken last, released first: the child closes its copies).
    Descriptors = 30,
}

/// One module's fork hooks. Each runs in the forking thread (prepare, parent) or the
/// child's only thread, so they may only take and release locks, close or duplicate
/// descriptors and store atomics — no allocation in the child.
#[derive(Clone, Copy)]
pub(crate) struct Hooks {
    pub order: Order,
    pub prepare: fn(),
    pub parent: fn(),
    pub child: fn(),
}

/// Hooks registered so far, sorted by order. Held across the fork by the prepare handler.
static HOOKS: Mutex<Vec<Hooks>> = Mutex::new(Vec::new());

/// Registers a module's hooks (once per module; call it from a `Once`).
pub(crate) fn register(h: Hooks) {
    let mut hooks = HOOKS.lock();
    hooks.push(h);
    hooks.sort_by_key(|h| h.order);
}

/// Installs the `pthread_atfork` handlers (once per process and copy of walguard).
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers only run the registered hooks (locks, descriptors,
        // atomics) and store an atomic.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// Takes `m` and keeps it locked across the fork (the guard is forgotten): the child
/// sees its contents whole. [`release`] (parent) or the child's reset unlocks it.
pub(crate) fn hold<T: ?Sized>(m: &parking_lot::Mutex<T>) {
    std::mem::forget(m.lock());
}

/// Unlocks what [`hold`] kept locked.
///
/// # Safety
/// `m` is held by `hold` of this thread (or, in a child, of the thread that forked), and
/// no guard of it exists.
pub(crate) unsafe fn release<T: ?Sized>(m: &parking_lot::Mutex<T>) {
    // SAFETY: per the contract, the lock is held with its guard forgotten.
    unsafe { m.force_unlock() };
}

extern "C" fn prepare() {
    let hooks = HOOKS.lock();
    for h in hooks.iter() {
        (h.prepare)();
    }
    std::mem::forget(hooks);
}

extern "C" fn parent() {
    // SAFETY: prepare left HOOKS locked in this thread; nothing else can change it.
    let hooks = unsafe { &*HOOKS.data_ptr() };
    for h in hooks.iter().rev() {
        (h.parent)();
    }
    // SAFETY: held by prepare in this thread.
    unsafe { release(&HOOKS) };
}

extern "C" fn child() {
    // SAFETY: prepare left HOOKS locked before the fork; the child runs one thread.
    let hooks = unsafe { &*HOOKS.data_ptr() };
    for h in hooks.iter().rev() {
        (h.child)();
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
    // SAFETY: held by prepare in the thread that forked; the child runs one thread.
    unsafe { release(&HOOKS) };
}
