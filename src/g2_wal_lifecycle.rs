//! **G2 — serialised WAL life-cycle**, through one byte of the database file: the
//! *gate* (`db_locks::GATE`).
//!
//! - **Mapping an index holds the gate shared.** Every walguard process that maps the
//!   current `-shm` holds a shared OFD lock on the gate for as long as it maps it and its
//!   watcher thread watches the files (`g4_sidecar_watch`); without a watcher, only during
//!   each write transaction and checkpoint (`shm::ShmNode::lock`). The shared hold is also
//!   walguard's *presence*: a closer sees it.
//! - **Setting up a new index takes it exclusively.** A process's first mapping opens the
//!   `-shm` at the path and asks its dead-man switch whether anyone maps it (as os_unix.c
//!   does). If someone does, the process joins (gate shared). If nobody does, this is a
//!   new index — the first one after everybody closed, or a replacement made by `rm`/`mv`
//!   while processes still map the old one — and the process takes the gate exclusively
//!   (non-blocking), resets the index and keeps the gate until SQLite has recovered it from
//!   the `-wal` (`shm.rs`), then downgrades. So an index is never rebuilt while a walguard
//!   process can still write through an older one: those hold the gate until they notice
//!   (G4 poisons their mapping and gives the gate back after the write in flight), and a
//!   newcomer waits for that.
//! - **Tearing down takes it exclusively.** The last-close checkpoint and unlink (and a
//!   switch out of WAL mode) start only when this handle is the only one mapping the index
//!   here, no other process holds the gate, nobody else holds the dead-man switch
//!   (processes without walguard included), and its `-shm` and `-wal` are still the files
//!   at their paths (one replaced since the handle's last transaction means others may use
//!   a newer index: the mapping is poisoned and the close persists the WAL). Until the
//!   handle leaves EXCLUSIVE no set-up can start anywhere.
//!
//! Nobody ever blocks inside SQLite on the gate. A first mapping of a live index joins
//! whoever holds the gate (a process recovering that index holds it exclusively: the
//! newcomer then meets SQLite's own RECOVER lock, as through unix). A first mapping that
//! must set up a new index while the gate is held returns `SQLITE_BUSY`, which SQLite's
//! WAL code treats as transient and retries for about ten seconds (then
//! `SQLITE_PROTOCOL`); it never proceeds unguarded. A closer that finds it
//! held skips the clean-up (always safe). A process that can open the database only
//! read-only cannot take the gate exclusively: it sets up only when a probe finds nobody
//! holding the gate, and waits otherwise.
//!
//! The previous walguard build took byte `GATE` exclusively for its checkpoints and
//! recoveries and `OLD_WRITE` for its writes: a set-up here also takes `OLD_WRITE`, so
//! the two builds exclude each other during a rolling upgrade (the previous build's
//! checkpoints wait while this build maps an index; this build's checkpoints do not).
//!
//! Cost: at a process's first mapping of a database, two `fcntl`s on the gate and the
//! dead-man switch os_unix.c also takes; at its last unmap, one. None per transaction
//! while the watcher runs.

use crate::fd::Inode;
use crate::g1_one_wal_index as g1;
use crate::g4_sidecar_identity as g4;
use crate::refusal::{Level, Refusal};
use crate::registry::DbNode;
use crate::shm::{Dms, ShmHold, ShmNode};
use crate::stats::{bump, COUNTERS};
use libsqlite3_sys as ffi;
use std::sync::Arc;

/// What a handle's first `xShmMap` brings.
pub(crate) struct MapRequest {
    pub handle: u64,
    /// The connection asked for `readonly_shm=1`.
    pub readonly_shm: bool,
    /// The `-wal` this connection opened.
    pub wal: Option<Inode>,
}

fn setup_busy(msg: &'static str) -> Refusal {
    Refusal::busy(&COUNTERS.setup_busy, "busy", msg)
}

/// A handle's first mapping: joins this process's current mapping of the database, or
/// opens the `-shm` and joins or sets up the index (see the module documentation).
pub(crate) fn attach(node: &Arc<DbNode>, req: &MapRequest) -> Result<Arc<ShmNode>, Refusal> {
    // The node's state is held through the set-up: this process's other handles of the
    // database wait for it here rather than start a second one.
    let mut st = node.state.lock();
    if let Some(cur) = st.current.clone() {
        if !cur.is_poisoned() && g4::joinable(node, &cur, req.wal)? {
            cur.attach();
            return Ok(cur);
        }
        st.current = None;
    }
    st.mappings.retain(|m| m.strong_count() > 0);
    let Some(db_stat) = st.db_stat else {
        return Err(Refusal::new(
            ffi::SQLITE_IOERR_SHMOPEN,
            &COUNTERS.degraded,
            "error",
            Level::Alarm,
            "no stat of the database is known",
        ));
    };
    let open = |kept| {
        ShmNode::open(
            &node.cpath,
            &db_stat,
            req.readonly_shm,
            req.wal,
            node.locks.clone(),
            kept,
            node.unix_vfs,
        )
    };
    let shm = match open(st.kept.take()) {
        // Out of descriptors: idle databases give theirs back, and one more try.
        Err(e) if e.out_of_descriptors && crate::registry::evict_idle() => open(None),
        other => other,
    }
    .map_err(|e| {
        Refusal::new(
            e.code,
            &COUNTERS.degraded,
            "cantopen",
            Level::Alarm,
            e.message,
        )
    })?;
    let shm = Arc::new(shm);
    let mut gate_held = false;
    if shm.readonly {
        // A read-only index is only read: no gate (os_unix.c's rules for readonly_shm).
        match shm.lock_dms() {
            Ok(_) => {}
            Err(rc) if rc == ffi::SQLITE_BUSY => {
                return Err(setup_busy(
                    "WAL set-up waits: another process is resetting the index",
                ))
            }
            Err(rc) => return Err(lock_error(rc, &shm)),
        }
    } else {
        gate_held = set_up(node, &shm, req.handle)?;
    }
    // A joined index must be the one at the paths (a set-up's is checked by its next
    // transactions, none of which can run on a replaced one unchecked).
    if !shm.setting_up() {
        if let Err(r) = g4::still_at_paths(node, &shm) {
            // Replaced since the open: this index is nobody's.
            if gate_held {
                node.locks.gate_leave();
            }
            return Err(r);
        }
    }
    // The mapping starts unwatched (each transaction checks with `stat`, a write holds the
    // gate while it runs): a short-lived connection never pays for watches, and its own
    // tear-down wakes no thread. G4 watches it once it has served a few transactions.
    if gate_held {
        node.locks.gate_leave();
    }
    shm.attach();
    bump!(shm_mapped);
    st.mappings.push(Arc::downgrade(&shm));
    st.current = Some(shm.clone());
    Ok(shm)
}

/// Joins or sets up the index of the `-shm` just opened. `Ok(true)`: it holds one
/// reference on the gate (the caller gives it back once the join is checked). The
/// dead-man switch is asked first: a live index is joined with the gate shared; a new one
/// is set up with the gate (and the previous build's WRITE mirror) exclusive.
///
/// A live index whose gate another process holds exclusively is joined without it
/// (`Ok(false)`): that process is recovering this very index (a newcomer then meets
/// SQLite's own RECOVER and WRITE locks and waits in the busy handler, as through unix,
/// instead of in SQLite's ten-second `SQLITE_PROTOCOL` retry loop: SQLite's
/// walsetlk_recover test), or it is attempting a tear-down that cannot succeed while this
/// connection holds SHARED on the database. The join is still checked against the paths,
/// the mapping starts unwatched (each transaction checks, each write takes the gate).
fn set_up(node: &DbNode, shm: &ShmNode, handle: u64) -> Result<bool, Refusal> {
    let locks = &node.locks;
    match shm.lock_dms() {
        Ok(Dms::Live) | Ok(Dms::CantInit) => return Ok(locks.gate_enter()),
        Ok(Dms::Fresh) => {}
        Err(rc) if rc == ffi::SQLITE_BUSY => {
            return Err(setup_busy(
                "WAL set-up waits: another process is resetting the index",
            ))
        }
        Err(rc) => return Err(lock_error(rc, shm)),
    }
    // Nobody maps this -shm: a new index. Nobody may still map an older one either.
    let new_index = if locks.writable() {
        if !locks.gate_setup_exclusive(handle) {
            shm.release_dms();
            return Err(stale_holders());
        }
        shm.begin_setup(handle);
        true
    } else {
        // Read-only here: probe, and wait while anyone holds the gate.
        if locks.gate_held_elsewhere() || !locks.gate_enter() {
            shm.release_dms();
            return Err(stale_holders());
        }
        false
    };
    if let Err(e) = shm.reset() {
        if new_index {
            // Ends the set-up (the exclusive bytes released).
            shm.purge(false, false);
        } else {
            shm.release_dms();
        }
        locks.gate_leave();
        return Err(Refusal::new(
            e.code,
            &COUNTERS.degraded,
            "error",
            Level::Alarm,
            e.message,
        ));
    }
    Ok(true)
}

fn stale_holders() -> Refusal {
    setup_busy(
        "WAL set-up waits: the -shm at the path is new, and a process still holds the index \
         it replaced (it gives it up as soon as it notices the replacement)",
    )
}

fn lock_error(rc: i32, shm: &ShmNode) -> Refusal {
    Refusal::new(
        rc,
        &COUNTERS.degraded,
        "error",
        Level::Alarm,
        format!("cannot lock the WAL index {}", shm.cpath.to_string_lossy()),
    )
}

/// A handle stops mapping `shm` (`xShmUnmap`): its WAL locks are released; the last
/// handle purges the mapping, deleting the `-shm` when SQLite asked to and this handle's
/// tear-down was allowed (never from a stale index).
pub(crate) fn detach(
    node: &Arc<DbNode>,
    handle: u64,
    shm: &Arc<ShmNode>,
    hold: &mut ShmHold,
    delete: bool,
) {
    shm.release_all(hold);
    if shm.detach() > 0 {
        return;
    }
    let mut st = node.state.lock();
    let delete = delete && !shm.is_poisoned() && st.teardown == Some(handle);
    if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, shm)) {
        st.current = None;
    }
    drop(st);
    // The descriptor is kept for the next mapping where the watcher will tell if the file
    // goes (registry: closing it could cancel another runtime's POSIX locks). Deleted
    // files take their kernel watches with them.
    let kept = if shm.is_poisoned() || delete {
        g4::KeptWatch::No
    } else {
        g4::watch_kept(node, shm)
    };
    if kept == g4::KeptWatch::No {
        g4::unwatch(shm, !delete);
    }
    if let Some(mut k) = shm.purge(delete, kept != g4::KeptWatch::No) {
        k.swept = kept == g4::KeptWatch::Swept;
        crate::registry::keep_shm(node, k);
    }
}

/// A handle is about to ask the wrapped VFS for EXCLUSIVE. With the WAL index mapped
/// (`shm`) this is a tear-down (last close, leaving WAL mode, `locking_mode=EXCLUSIVE`):
/// it starts only if this handle alone uses the index (see the module documentation), and
/// holds the gate exclusively until the handle leaves EXCLUSIVE. The sole SHARED holder's
/// mirror is dropped for the attempt (an OFD lock conflicts with this process's own POSIX
/// write lock). Returns whether the mirror was dropped.
pub(crate) fn before_exclusive(
    node: &DbNode,
    handle: u64,
    shm: Option<&Arc<ShmNode>>,
) -> Result<bool, Refusal> {
    if let Some(shm) = shm {
        begin_teardown(node, handle, shm)?;
    }
    Ok(node.locks.drop_mirror_for_exclusive())
}

/// The tear-down decision (see the module documentation): the gate exclusively, then
/// nobody else using the index, and the index still the one at the path (two `stat`s).
fn begin_teardown(node: &DbNode, handle: u64, shm: &ShmNode) -> Result<(), Refusal> {
    if node.state.lock().teardown == Some(handle) {
        return Ok(());
    }
    if shm.is_poisoned() {
        return Err(g1::exclusive_refusal());
    }
    let own_refs = usize::from(shm.watched());
    if !node.locks.gate_try_exclusive(handle, own_refs) {
        return Err(Refusal::busy(
            &COUNTERS.teardown_busy,
            "busy",
            "tear-down waits: another process maps or is setting up this WAL",
        ));
    }
    if g1::others_use(node, shm) {
        node.locks.gate_end_exclusive(handle);
        return Err(g1::exclusive_refusal());
    }
    // The index must still be the one at the path: a `-shm` or `-wal` replaced since this
    // handle's last transaction (an outside `cp`+`mv`, unnoticed where no watcher runs or
    // not yet noticed where one does) means others may use a newer index this one does
    // not know. Checkpointing through it would miss their frames and could truncate the
    // database below pages their checkpoints wrote; deleting the `-wal` would lose their
    // commits. The mapping is poisoned instead and the close persists the WAL. With the
    // gate held exclusively no walguard process can set an index up meanwhile.
    if g4::check_mapping(node, shm).is_err() {
        node.locks.gate_end_exclusive(handle);
        return Err(g1::exclusive_refusal());
    }
    node.state.lock().teardown = Some(handle);
    Ok(())
}

/// At last close (`SQLITE_FCNTL_PERSIST_WAL` asked while SQLite holds EXCLUSIVE): whether
/// handle `handle` may delete the `-wal` and `-shm`. Decided when it asked for EXCLUSIVE
/// with the index mapped; a handle that mapped it only after (its close checkpoints a WAL
/// it never read) decides now, the same way. A handle without a mapping (its index in
/// heap memory: `locking_mode=EXCLUSIVE` before the WAL was first used, or a VFS without
/// `xShm*` stacked on walguard) decides by the gate alone (see `begin_unmapped_teardown`).
pub(crate) fn may_clean_up(node: &DbNode, handle: u64, shm: Option<&Arc<ShmNode>>) -> bool {
    let decided = match shm {
        Some(shm) => begin_teardown(node, handle, shm).is_ok(),
        None => begin_unmapped_teardown(node, handle),
    };
    if decided {
        bump!(unlink_allowed);
    } else {
        bump!(unlink_refused);
        tracing::info!(target: "walguard", path = %node.path, decision = "persist",
            "last-close clean-up of -wal/-shm refused: another holder still uses the WAL index");
    }
    decided
}

/// The tear-down decision of a handle that maps no index. SQLite holds EXCLUSIVE on the
/// database for it, so no other connection holds SHARED (through unix's POSIX locks, or
/// walguard's OFD mirror in another process), and every WAL user holds SHARED for as long
/// as it has the database open: nobody else can be using the WAL. The gate, taken
/// exclusively, adds that no process of any walguard build is setting up or mapping an
/// index (this process included: the gate must be free of its own holds too); it is held
/// until the handle leaves EXCLUSIVE, like a mapped handle's.
fn begin_unmapped_teardown(node: &DbNode, handle: u64) -> bool {
    if node.state.lock().teardown == Some(handle) {
        return true;
    }
    if !node.locks.gate_try_exclusive(handle, 0) {
        return false;
    }
    node.state.lock().teardown = Some(handle);
    true
}

/// The handle left EXCLUSIVE (or never got it): the tear-down window ends, and the mirror
/// comes back if the handle keeps SHARED.
pub(crate) fn after_exclusive(node: &DbNode, handle: u64, keeps_shared: bool) {
    {
        let mut st = node.state.lock();
        if st.teardown == Some(handle) {
            st.teardown = None;
        }
    }
    node.locks.gate_end_exclusive(handle);
    if keeps_shared {
        g1::restore_mirror(node);
    }
}
