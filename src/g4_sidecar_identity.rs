//! G4: a split is detected, not written into.
//!
//! A connection keeps using the `-wal` and `-shm` it opened and mapped. If anything
//! unlinks or replaces them underneath it (a process without walguard that thought it
//! was the last one, a backup tool, `rm`, `mv`), the connection would go on committing
//! into files no other connection will ever open, while new connections build a second
//! WAL index from the path: two groups of writers, one database, lost commits and
//! `database disk image is malformed`.
//!
//! The io layer remembers each sidecar's identity (`st_dev`, `st_ino`) when it opens it,
//! and at the start of each transaction (reads too, unless the application set a read
//! re-check interval) calls [`check_sidecar`], which compares it with one `stat(path)`. Identity is the only test: `st_nlink` and `/proc/.../fd` showing
//! "(deleted)" are not used (they give false alarms on some file systems and need more
//! system calls).
//!
//! A mismatch returns `SQLITE_IOERR_VNODE`, an `SQLITE_IOERR` code that SQLite's core
//! never produces itself (it is reserved for VFS extensions), so an application can tell
//! this failure apart; the transaction fails before it writes anything, and the event
//! tells the operator to reopen the connection (a new connection opens the sidecars now
//! at the path). A `stat` that fails for another reason than "no such file" returns
//! `SQLITE_IOERR_FSTAT`: the identity cannot be confirmed, so the guard fails closed
//! with a retryable error rather than risk writing into a split.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsqlite3_sys::{SQLITE_IOERR_FSTAT, SQLITE_IOERR_VNODE, SQLITE_OK};

use crate::stats::bump;

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

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// `stat(path)` (following symbolic links, as SQLite's `open` does): the identity of the
/// file the path names now, or `Ok(None)` when no file has that name.
pub(crate) fn file_id_of_path(path: &CStr) -> io::Result<Option<FileId>> {
    match std::fs::metadata(OsStr::from_bytes(path.to_bytes())) {
        Ok(m) => Ok(Some(FileId::of(&m))),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Just before the wrapped VFS opens the `-wal` at `path`: the identity of the file the
/// path names, creating it first (as the unix VFS would: the database's permissions and
/// owner) when it is missing and SQLite asked for creation. With [`confirm_opened`]
/// afterwards this proves which file the wrapped VFS opened, without its descriptor.
/// SQLite never locks a `-wal`, so the descriptor used here is closed at once.
pub(crate) fn identify_before_open(path: &CStr, create: bool) -> Option<FileId> {
    if let Ok(Some(id)) = file_id_of_path(path) {
        return Some(id);
    }
    if !create {
        return None;
    }
    let db = CString::new(path.to_bytes().strip_suffix(b"-wal")?).ok()?;
    let like = crate::fd::stat(&db).ok();
    let fd = crate::fd::open_or_create_like(path, like.as_ref()).ok()?;
    let id = crate::fd::fstat(fd).ok().map(|st| {
        let (dev, ino) = crate::registry::inode_of(&st);
        FileId { dev, ino }
    });
    crate::fd::close(fd);
    id
}

/// Right after the wrapped VFS opened the `-wal` at `path`: `before` (from
/// [`identify_before_open`]) when the path still names that file — then it is the file
/// the wrapped VFS opened. `None`: the `-wal` was removed or replaced while it was being
/// opened; the caller opens again.
pub(crate) fn confirm_opened(path: &CStr, before: Option<FileId>) -> Option<FileId> {
    let before = before?;
    matches!(file_id_of_path(path), Ok(Some(now)) if now == before).then_some(before)
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
    use std::os::unix::fs::PermissionsExt;

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
