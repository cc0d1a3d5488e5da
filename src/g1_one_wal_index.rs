//! **G1 — one WAL index.** A walguard process never unlinks `-wal` or `-shm` while any
//! other handle still has them open, and no stray `close()` can make another process
//! believe it is the last one.
//!
//! How:
//! - **Database SHARED mirror.** While any walguard handle of this process holds SHARED
//!   (or more) on a database, walguard holds an open-file-description (OFD) read lock on
//!   SQLite's SHARED byte range (`db_locks`). A closer elsewhere (with or without walguard)
//!   cannot get EXCLUSIVE, so it never checkpoints-and-unlinks, even after a header peek or
//!   a second SQLite runtime in this process cancelled our POSIX locks. The mirror is
//!   dropped just before this process's own sole holder asks for EXCLUSIVE (an OFD lock
//!   conflicts with this process's own POSIX write lock).
//! - **WAL locks as OFD locks.** walguard serves the `-shm` itself (`shm.rs`): the WAL
//!   locks and the dead-man switch are OFD locks on its own descriptor, so they survive
//!   stray closes and conflict correctly with every other process's POSIX locks.
//! - **Refusal.** A tear-down (the last-close checkpoint and unlink) starts only where
//!   nobody else maps the index (see `g2_wal_lifecycle`, which asks the facts here). At
//!   last close SQLite asks `SQLITE_FCNTL_PERSIST_WAL`; walguard answers "persist" unless
//!   that tear-down was allowed, and suppresses `xShmUnmap(delete)` and `xDelete` of
//!   `-wal`/`-shm` likewise.
//!
//! Cost: one `fcntl` when the first handle of a process enters SHARED and one when the
//! last leaves it (the unix VFS makes the same transitions); WAL lock `fcntl`s exactly
//! where the unix VFS makes its own.

use crate::refusal::Refusal;
use crate::registry::{self, DbNode};
use crate::shm::ShmNode;
use crate::stats::{bump, COUNTERS};
use std::ffi::{CStr, CString};

/// A handle went from NONE to SHARED or above.
pub(crate) fn entered_shared(node: &DbNode) {
    if let Err(msg) = node.locks.entered_shared() {
        tracing::warn!(target: "walguard", path = %node.path, "{msg}");
    }
}

/// A handle dropped from SHARED or above to NONE.
pub(crate) fn left_shared(node: &DbNode) {
    node.locks.left_shared();
}

/// After EXCLUSIVE was refused or ended while the handle keeps SHARED: the mirror comes
/// back (it was dropped for the attempt).
pub(crate) fn restore_mirror(node: &DbNode) {
    if let Err(msg) = node.locks.restore_mirror() {
        tracing::warn!(target: "walguard", path = %node.path, "{msg}");
    }
}

/// The wrapped VFS refused EXCLUSIVE after the mirror was dropped: say who holds the
/// database (only then can a lock the probe sees be someone else's).
pub(crate) fn exclusive_refused(node: &DbNode, mirror_dropped: bool) {
    if !mirror_dropped {
        return;
    }
    if let Some(pid) = node.locks.shared_holder() {
        bump!(exclusive_blocked);
        tracing::debug!(target: "walguard", path = %node.path, holder_pid = pid,
            by_ofd_mirror = (pid == -1),
            "EXCLUSIVE refused: another holder still has the database open");
    }
}

/// Whether anyone besides the mapping `shm`'s single handle uses it or another index of
/// this database: another handle of this mapping, another mapping of the same `-shm` in
/// this process, or — through the dead-man switch — any other process or SQLite runtime
/// that maps it.
pub(crate) fn others_use(node: &DbNode, shm: &ShmNode) -> bool {
    shm.handles() > 1 || node.state.lock().other_mappings_of(shm.inode, shm) || shm.others_map()
}

/// The refusal of an EXCLUSIVE lock to a handle whose WAL index others still use.
pub(crate) fn exclusive_refusal() -> Refusal {
    Refusal::busy(
        &COUNTERS.exclusive_refused,
        "busy",
        "EXCLUSIVE refused: another holder still uses the WAL index (the close skips its \
         checkpoint and clean-up)",
    )
}

/// Whether a delete of the sidecar `path` (`<db>-wal` / `<db>-shm`) must be refused: a
/// tear-down under way allows it; otherwise it is refused while anyone else maps the
/// database's index (the gate held elsewhere, or the current mapping's dead-man switch).
/// A database no walguard handle of this process has open is left to the wrapped VFS.
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
    let Some(node) = registry::find_by_path(&db) else {
        return false;
    };
    let (teardown, current) = {
        let st = node.state.lock();
        (st.teardown.is_some(), st.current.clone())
    };
    if teardown {
        return false;
    }
    let others = node.locks.gate_held_elsewhere() || current.is_some_and(|shm| shm.others_map());
    if others {
        bump!(unlink_refused);
        tracing::info!(target: "walguard", path = %path.to_string_lossy(), decision = "refused",
            "delete of a WAL sidecar refused: another holder still uses the WAL index");
    }
    others
}
