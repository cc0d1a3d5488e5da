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
    open_lock_file(node, st)
}

/// Checks that the lock file this process uses is still the one at its path (`strict`:
/// always with a `stat`; otherwise only when the directory watch saw a change since the
/// last check), and moves to the one at the path if not. Without this, `rm <db>-walguard`
/// while processes run would split them: newcomers register presence and take the
/// life-cycle lock on a new file, old processes on the removed one, and an old process's
/// last close would find nobody present and delete `-wal`/`-shm` under the newcomers.
/// The replaced file is kept (with this instance's presence) until the node goes idle,
/// so processes that have not noticed yet still see this one.
pub(crate) fn check_lock_file(node: &DbNode, st: &mut DbState, strict: bool) -> Result<(), c_int> {
    let Some(lf) = st.lock_file.as_ref() else {
        return ensure_lock_file(node, st);
    };
    if st.lifecycle_holder.is_some() {
        return Ok(()); // mid set-up or tear-down: checked when it began
    }
    // The fast path needs a watcher that covers this database's directory.
    let epoch = crate::g4_sidecar_watch::epoch();
    let watched = st.watch != 0 && st.watch == crate::g4_sidecar_watch::instance();
    if !strict && watched && epoch == st.lock_file_epoch {
        return Ok(());
    }
    if lf.still_at_path() {
        st.lock_file_epoch = epoch;
        return Ok(());
    }
    replace_lock_file(node, st)?;
    st.lock_file_epoch = epoch;
    Ok(())
}

fn replace_lock_file(node: &DbNode, st: &mut DbState) -> Result<(), c_int> {
    let Some(old) = st.lock_file.take() else {
        return Ok(());
    };
    bump!(lock_file_replaced);
    tracing::warn!(target: "walguard", path = %old.path,
        "the walguard lock file was removed or replaced while this process used it; moving to the file now at the path (do not remove <db>-walguard while processes have the database open)");
    if let Err(rc) = open_lock_file(node, st) {
        st.lock_file = Some(old);
        return Err(rc);
    }
    if let (Some(shm), Some(new)) = (st.shm.as_ref(), st.lock_file.as_ref()) {
        let _ = new.hold_presence();
        shm.record.store(
            new.record_ptr() as *mut _,
            std::sync::atomic::Ordering::Release,
        );
        let mirror = crate::g1_one_wal_index::mirror_target(node, st);
        let mut locks = shm.locks.lock();
        // Mirrors move only between transactions; a WRITE/CKPT held now stays mirrored
        // where it was until this mapping ends.
        if locks.slots[..2].iter().all(|&v| v >= 0) {
            locks.mirror_fd = mirror;
        }
    }
    st.retired_lock_files.push(old);
    Ok(())
}

fn open_lock_file(node: &DbNode, st: &mut DbState) -> Result<(), c_int> {
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
    if st.shm.is_some() {
        // This process maps the `-shm` already: the new handle shares that mapping (the
        // wrapped VFS never re-initialises an index it maps), and presence is held.
        return Ok(());
    }
    check_lock_file(node, &mut st, false)?;
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
        if st.lifecycle_holder == Some(id) && st.teardown_clear {
            // Decided at this handle's EXCLUSIVE request, under the life-cycle lock.
            bump!(unlink_allowed);
            return true;
        }
        if check_lock_file(node, &mut st, true).is_err() {
            return false;
        }
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
