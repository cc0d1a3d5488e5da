//! **G2 — serialised WAL life-cycle.** WAL set-up (a handle's first mapping of the
//! `-shm`, which may re-initialise it; a switch from rollback to WAL maps it too) and
//! tear-down (the last-close checkpoint-and-unlink) run under one exclusive
//! cross-process lock per database: an OFD write lock on byte 1 of `<db>-walguard`.
//!
//! Nobody ever blocks inside SQLite on it. A first mapping that finds it held returns
//! SQLITE_BUSY, which SQLite's WAL code treats as transient and retries with its own
//! bounded back-off (then fails with SQLITE_BUSY/SQLITE_PROTOCOL; it never proceeds
//! unguarded). A closer that finds it held answers "persist" and leaves `-wal`/`-shm` for
//! the next closer: skipping a clean-up is always safe.
//!
//! Cost: two `fcntl`s around each handle's first `-shm` mapping and around tear-down.

use crate::g1_one_wal_index;
use crate::lock_file::{LockFile, Unusable};
use crate::registry::{DbNode, DbState};
use crate::stats::bump;
use libsqlite3_sys as ffi;
use std::os::raw::c_int;

/// Opens the lock file the first time it is needed. An unusable place (read-only
/// directory) degrades the guarantees with one warning; a planted symlink is an error.
pub(crate) fn ensure_lock_file(node: &DbNode, st: &mut DbState) -> Result<(), c_int> {
    if st.lock_file.is_some() || st.lock_file_unusable {
        return Ok(());
    }
    match LockFile::open(&node.cpath) {
        Ok(lf) => {
            if !lf.writable() {
                bump!(degraded);
                tracing::warn!(target: "walguard", path = %lf.path,
                    "the walguard lock file is read-only here: set-up and tear-down are not serialised (G2)");
            }
            st.lock_file = Some(lf);
            Ok(())
        }
        Err(Unusable::Symlink(path)) => {
            let msg = format!(
                "walguard: {path} is a symbolic link or not a regular file; walguard never follows links \
                 for its lock file and touched nothing. Remove it (rm '{path}') and retry."
            );
            tracing::error!(target: "walguard", path = %path, "{msg}");
            crate::api::sqlite_log(ffi::SQLITE_CANTOPEN, &msg);
            Err(ffi::SQLITE_CANTOPEN)
        }
        Err(Unusable::Degraded(path, e)) => {
            st.lock_file_unusable = true;
            if !crate::registry::first_warning(&path) {
                return Ok(());
            }
            bump!(degraded);
            tracing::warn!(target: "walguard", path = %path, error = %e,
                "cannot create or open the walguard lock file (read-only directory or file?): \
                 WAL set-up/tear-down are not serialised and only lock mirroring guards this database");
            crate::api::sqlite_log(
                ffi::SQLITE_WARNING,
                &format!("walguard: cannot use lock file {path}: {e}; guarantees G1/G2 are degraded for this database"),
            );
            Ok(())
        }
    }
}

/// Tries the life-cycle lock for handle `id`. `Ok(true)`: held now. `Ok(false)`: someone
/// else (this process or another) holds it. Without a usable lock file: `Ok(true)`,
/// nothing held (degraded, already logged).
pub(crate) fn try_acquire(st: &mut DbState, id: u64) -> bool {
    match st.lifecycle_holder {
        Some(h) if h == id => return true,
        Some(_) => return false,
        None => {}
    }
    let Some(lf) = st.lock_file.as_ref() else {
        return true;
    };
    match lf.try_lifecycle() {
        Ok(true) => {
            st.lifecycle_holder = Some(id);
            true
        }
        Ok(false) => false,
        // Read-only lock file: cannot serialise (logged when opened).
        Err(_) => true,
    }
}

/// Releases the life-cycle lock if handle `id` holds it.
pub(crate) fn release(node: &DbNode, id: u64) {
    release_locked(&mut node.state.lock(), id);
}

/// [`release`] with the node's state already locked.
pub(crate) fn release_locked(st: &mut DbState, id: u64) {
    if st.lifecycle_holder == Some(id) {
        st.lifecycle_holder = None;
        st.teardown_clear = false;
        if let Some(lf) = st.lock_file.as_ref() {
            lf.release_lifecycle();
        }
    }
}

/// Before a handle's first `xShmMap`: open the lock file, take the life-cycle lock, and
/// register presence. Err(SQLITE_BUSY) when another set-up or tear-down is under way.
pub(crate) fn begin_setup(node: &DbNode, id: u64) -> Result<(), c_int> {
    let mut st = node.state.lock();
    ensure_lock_file(node, &mut st)?;
    if !try_acquire(&mut st, id) {
        bump!(setup_busy);
        tracing::debug!(target: "walguard", path = %node.path, decision = "busy",
            "WAL set-up waits: another process is setting up or tearing down this WAL");
        return Err(ffi::SQLITE_BUSY);
    }
    g1_one_wal_index::hold_presence(node, &st);
    Ok(())
}

/// At last close (`SQLITE_FCNTL_PERSIST_WAL` query, SQLite holding EXCLUSIVE): whether
/// the `-wal`/`-shm` may be deleted. On `true` the life-cycle lock stays held until the
/// handle unlocks or closes, so no set-up can slip in before the unlinks.
pub(crate) fn begin_teardown(node: &DbNode, id: u64) -> bool {
    {
        let mut st = node.state.lock();
        if !try_acquire(&mut st, id) {
            drop(st);
            bump!(teardown_busy);
            tracing::info!(target: "walguard", path = %node.path, decision = "persist",
                "last-close clean-up skipped: another process is setting up or tearing down this WAL");
            return false;
        }
    }
    if g1_one_wal_index::others_hold_wal_index(node, true) {
        release(node, id);
        bump!(unlink_refused);
        tracing::info!(target: "walguard", path = %node.path, decision = "persist",
            "last-close unlink of -wal/-shm refused: another holder still uses the WAL index");
        return false;
    }
    node.state.lock().teardown_clear = true;
    bump!(unlink_allowed);
    tracing::debug!(target: "walguard", path = %node.path, decision = "delete",
        "last holder anywhere: normal clean-up of -wal/-shm");
    true
}
