//! Lock-losing disruptors and split-index detectors.
//!
//! Each disruptor does something ordinary applications do, and which silently drops
//! every POSIX (fcntl) lock this process holds on a file because it closes a descriptor
//! of that file:
//! - [`peek_header`]: `open()/read()/close()` of the database to look at its header;
//! - [`fchmod_pass`]: `open(O_RDONLY)/fchmod()/close()` of the database, `-wal` and
//!   `-shm` (a "fix the permissions" loop);
//! - [`Disruptor::SecondRuntime`]: open/read/close through a second SQLite library
//!   ([`crate::second_runtime`]).
//!
//! Sidecar replacement from outside: [`replace_with_copy`] (an external `cp` + `mv`), and
//! [`replace_after_next_open`], which lands one exactly between SQLite's own `open()`
//! of a `-shm` or `-wal` and whatever follows it.
//!
//! The detectors read `/proc`: [`scan_deleted_sidecars`] (every process),
//! [`own_deleted_sidecars`] and [`mapped_shm`] (this process).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `<db>-wal`, `<db>-shm`, ... next to `db`.
pub fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The absolute path of `db` as the kernel reports it in `/proc` (directory
/// canonicalized, file name kept, so it works before the file exists).
pub fn kernel_path(db: &Path) -> PathBuf {
    let abs = if db.is_absolute() {
        db.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(db))
            .unwrap_or_else(|_| db.to_path_buf())
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// `cp P P.torture-copy && mv P.torture-copy P`: same bytes, new inode. `Ok(false)`
/// when `P` does not exist.
pub fn replace_with_copy(p: &Path) -> Result<bool, String> {
    let data = match fs::read(p) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("read {}: {e}", p.display())),
    };
    let tmp = sidecar(p, ".torture-copy");
    fs::write(&tmp, &data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    match fs::rename(&tmp, p) {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(format!("mv {} {}: {e}", tmp.display(), p.display()))
        }
    }
}

type OpenFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    std::ffi::c_int,
    std::ffi::c_int,
) -> std::ffi::c_int;
static ORIGINAL_OPEN: std::sync::OnceLock<OpenFn> = std::sync::OnceLock::new();
/// What the next matching open replaces: 0 nothing, 1 a `-shm`, 2 a `-wal`.
static REPLACE_NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
static REPLACED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The sidecars [`replace_after_next_open`] can replace.
const HOOKED_SUFFIXES: [&str; 2] = ["-shm", "-wal"];

unsafe extern "C" fn hook_open(
    path: *const std::ffi::c_char,
    flags: std::ffi::c_int,
    mode: std::ffi::c_int,
) -> std::ffi::c_int {
    let Some(real) = ORIGINAL_OPEN.get() else {
        return -1;
    };
    // SAFETY: SQLite's own arguments for its open() entry, passed through unchanged.
    let fd = unsafe { real(path, flags, mode) };
    if fd >= 0 && !path.is_null() {
        // SAFETY: SQLite passes a NUL-terminated path.
        let p = unsafe { std::ffi::CStr::from_ptr(path) };
        let armed = REPLACE_NEXT.load(Ordering::SeqCst);
        let matches = HOOKED_SUFFIXES
            .iter()
            .position(|s| p.to_bytes().ends_with(s.as_bytes()))
            .is_some_and(|i| i + 1 == usize::from(armed));
        if matches
            && REPLACE_NEXT
                .compare_exchange(armed, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            use std::os::unix::ffi::OsStrExt;
            let p = Path::new(std::ffi::OsStr::from_bytes(p.to_bytes()));
            if matches!(replace_with_copy(p), Ok(true)) {
                REPLACED.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    fd
}

/// Arms a one-shot disruption: the next time SQLite's `unix` VFS (in this process)
/// opens a file whose name ends in `suffix` (`-shm` or `-wal`), the file is replaced by
/// a copy ([`replace_with_copy`]) right after SQLite's `open()` returns — an external
/// `cp` + `mv` landing in the narrowest window of WAL set-up. Hooks the VFS's `open`
/// system-call entry (once; it passes every call through). Returns how many
/// replacements the hook has made so far.
pub fn replace_after_next_open(suffix: &str) -> Result<u64, String> {
    let Some(which) = HOOKED_SUFFIXES.iter().position(|s| *s == suffix) else {
        return Err(format!(
            "can replace {HOOKED_SUFFIXES:?} after open, not {suffix:?}"
        ));
    };
    if ORIGINAL_OPEN.get().is_none() {
        let orig = crate::faults::unix_syscall(c"open")?;
        // SAFETY: os_unix.c stores its open entry as `int(*)(const char*,int,int)` and
        // casts it back to that type at every call; so does the hook's type.
        let orig = unsafe { std::mem::transmute::<unsafe extern "C" fn(), OpenFn>(orig) };
        let _ = ORIGINAL_OPEN.set(orig);
        // SAFETY: as above, the other way round.
        let hook = unsafe { std::mem::transmute::<OpenFn, unsafe extern "C" fn()>(hook_open) };
        // SAFETY: `hook` has the open entry's real type and lives forever.
        unsafe { crate::faults::set_unix_syscall(c"open", hook)? };
    }
    REPLACE_NEXT.store(which as u8 + 1, Ordering::SeqCst);
    Ok(REPLACED.load(Ordering::SeqCst))
}

/// How many replacements [`replace_after_next_open`] has made.
pub fn replacements_after_open() -> u64 {
    REPLACED.load(Ordering::SeqCst)
}

/// The lock-losing header peek: `open()`, `read()` of the first 100 bytes, `close()`.
/// Returns how many bytes were read.
pub fn peek_header(db: &Path) -> io::Result<usize> {
    let mut f = File::open(db)
        .map_err(|e| io::Error::new(e.kind(), format!("peek {}: {e}", db.display())))?;
    let mut buf = [0u8; 100];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("peek {}: read: {e}", db.display()),
                ))
            }
        }
    }
    Ok(got)
    // `f` is closed here: this process's POSIX locks on the database are gone.
}

/// One pass of the fchmod disruptor: for the database, `-wal` and `-shm` (those that
/// exist), `open(O_RDONLY)`, `fchmod` to the mode the file already has, `close()`.
/// Returns how many files were touched. Contents and modes are unchanged.
pub fn fchmod_pass(db: &Path) -> io::Result<usize> {
    let mut touched = 0;
    for path in [db.to_path_buf(), sidecar(db, "-wal"), sidecar(db, "-shm")] {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("fchmod pass: open {}: {e}", path.display()),
                ))
            }
        };
        let perms = f
            .metadata()
            .map_err(|e| io::Error::new(e.kind(), format!("fstat {}: {e}", path.display())))?
            .permissions();
        // std implements File::set_permissions with fchmod(2) on this descriptor.
        f.set_permissions(perms)
            .map_err(|e| io::Error::new(e.kind(), format!("fchmod {}: {e}", path.display())))?;
        touched += 1;
        // `f` is closed here.
    }
    Ok(touched)
}

/// A descriptor of a deleted `-wal` or `-shm` of the database, held by some process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSidecar {
    /// The holding process.
    pub pid: u32,
    /// The descriptor number in that process.
    pub fd: u32,
    /// The `readlink` of `/proc/PID/fd/FD`, e.g. `/tmp/x/app.db-shm (deleted)`.
    pub target: String,
}

impl std::fmt::Display for DeletedSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} fd {} -> {}", self.pid, self.fd, self.target)
    }
}

fn deleted_targets(db: &Path) -> [String; 2] {
    let base = kernel_path(db).to_string_lossy().into_owned();
    [
        format!("{base}-wal (deleted)"),
        format!("{base}-shm (deleted)"),
    ]
}

fn scan_fd_dir(pid: u32, fd_dir: &Path, wanted: &[String; 2], out: &mut Vec<DeletedSidecar>) {
    // Processes come and go, and some /proc entries may be unreadable: skip quietly.
    let Ok(entries) = fs::read_dir(fd_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if wanted.contains(&target) {
            let fd = entry
                .file_name()
                .to_string_lossy()
                .parse()
                .unwrap_or(u32::MAX);
            out.push(DeletedSidecar { pid, fd, target });
        }
    }
}

/// Every descriptor, in every process visible in `/proc`, that refers to a deleted
/// `-wal` or `-shm` of `db`: the fingerprint of a split WAL index.
pub fn scan_deleted_sidecars(db: &Path) -> Vec<DeletedSidecar> {
    let wanted = deleted_targets(db);
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        scan_fd_dir(pid, &p.path().join("fd"), &wanted, &mut out);
    }
    out.sort_by_key(|d| (d.pid, d.fd));
    out
}

/// The deleted `-wal`/`-shm` descriptors of `db` held by this process.
pub fn own_deleted_sidecars(db: &Path) -> Vec<DeletedSidecar> {
    let wanted = deleted_targets(db);
    let mut out = Vec::new();
    scan_fd_dir(
        std::process::id(),
        Path::new("/proc/self/fd"),
        &wanted,
        &mut out,
    );
    out.sort_by_key(|d| d.fd);
    out
}

/// The `-shm` of a database as mapped into this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmMapping {
    /// Device, as `/proc/self/maps` prints it (`major:minor`, hex).
    pub dev: String,
    /// Inode number of the mapped file.
    pub inode: u64,
    /// The mapped file has been unlinked.
    pub deleted: bool,
}

/// Parses `/proc/PID/maps` text for the mapping of `<db>-shm`.
pub fn find_shm_mapping(maps: &str, db: &Path) -> Option<ShmMapping> {
    let shm = format!("{}-shm", kernel_path(db).to_string_lossy());
    let shm_deleted = format!("{shm} (deleted)");
    for line in maps.lines() {
        // address perms offset dev inode pathname (pathname may contain spaces)
        let mut rest = line;
        let mut fields = Vec::with_capacity(5);
        for _ in 0..5 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let path = rest.trim_start();
        let deleted = if path == shm {
            false
        } else if path == shm_deleted {
            true
        } else {
            continue;
        };
        let Ok(inode) = fields[4].parse() else {
            continue;
        };
        return Some(ShmMapping {
            dev: fields[3].to_owned(),
            inode,
            deleted,
        });
    }
    None
}

/// The `-shm` of `db` that this process has mapped, if any (from `/proc/self/maps`).
pub fn mapped_shm(db: &Path) -> io::Result<Option<ShmMapping>> {
    let maps = fs::read_to_string("/proc/self/maps")?;
    Ok(find_shm_mapping(&maps, db))
}

/// The kinds of lock-losing disruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruptor {
    /// [`peek_header`].
    Peek,
    /// [`fchmod_pass`].
    Fchmod,
    /// Open, read and close through [`crate::second_runtime`].
    SecondRuntime,
}

impl Disruptor {
    /// Parses `peek`, `fchmod` or `second-runtime`.
    pub fn parse(s: &str) -> Option<Disruptor> {
        match s {
            "peek" => Some(Disruptor::Peek),
            "fchmod" => Some(Disruptor::Fchmod),
            "second-runtime" => Some(Disruptor::SecondRuntime),
            _ => None,
        }
    }

    /// Does the disruption once; returns a short description of what it saw.
    pub fn run_once(self, db: &Path) -> Result<String, String> {
        match self {
            Disruptor::Peek => peek_header(db)
                .map(|n| n.to_string())
                .map_err(|e| e.to_string()),
            Disruptor::Fchmod => fchmod_pass(db)
                .map(|n| n.to_string())
                .map_err(|e| e.to_string()),
            Disruptor::SecondRuntime => crate::second_runtime::open_read_close(db),
        }
    }
}

/// A disruptor running in a background thread of this process until stopped.
#[derive(Debug)]
pub struct DisruptLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, u64, Option<String>)>,
}

/// What a [`DisruptLoop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopReport {
    /// Passes completed without error.
    pub ok: u64,
    /// Passes that failed.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
}

impl DisruptLoop {
    /// Starts running `kind` on `db` every `interval` (back to back when zero).
    pub fn start(kind: Disruptor, db: &Path, interval: Duration) -> io::Result<DisruptLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let db = db.to_path_buf();
        let handle = std::thread::Builder::new()
            .name(format!("disrupt-{kind:?}"))
            .spawn(move || {
                let (mut ok, mut errors, mut first) = (0u64, 0u64, None);
                while !flag.load(Ordering::Relaxed) {
                    match kind.run_once(&db) {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                    }
                    if !interval.is_zero() {
                        std::thread::sleep(interval);
                    }
                }
                (ok, errors, first)
            })?;
        Ok(DisruptLoop { stop, handle })
    }

    /// Stops the loop and reports what it did.
    pub fn stop(self) -> LoopReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok((ok, errors, first_error)) => LoopReport {
                ok,
                errors,
                first_error,
            },
            Err(_) => LoopReport {
                ok: 0,
                errors: 1,
                first_error: Some("disruptor thread panicked".to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines_with_and_without_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        let k = kernel_path(&db);
        let maps = format!(
            "7f00-7f08 rw-s 00000000 08:01 4242                       {k}-wal\n\
             7f10-7f18 rw-s 00000000 08:01 777                        {k}-shm (deleted)\n",
            k = k.display()
        );
        assert_eq!(
            find_shm_mapping(&maps, &db),
            Some(ShmMapping {
                dev: "08:01".into(),
                inode: 777,
                deleted: true
            })
        );
        let maps = format!("7f10-7f18 rw-s 00000000 00:2a 9 {}-shm\n", k.display());
        assert_eq!(find_shm_mapping(&maps, &db).map(|m| m.deleted), Some(false));
        assert_eq!(find_shm_mapping("7f10-7f18 r--p 0 00:00 0\n", &db), None);
    }

    #[test]
    fn sees_own_deleted_sidecar_and_peek_reads_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        fs::write(&db, b"SQLite format 3\0 and more bytes").expect("write app.db");
        assert_eq!(peek_header(&db).expect("peek"), 31);
        let shm = sidecar(&db, "-shm");
        let held = File::create(&shm).expect("create -shm");
        assert!(own_deleted_sidecars(&db).is_empty());
        assert_eq!(fchmod_pass(&db).expect("fchmod pass"), 2);
        fs::remove_file(&shm).expect("unlink -shm");
        let own = own_deleted_sidecars(&db);
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(own[0].target.ends_with("app.db-shm (deleted)"));
        let all = scan_deleted_sidecars(&db);
        assert!(all.iter().any(|d| d.pid == std::process::id()), "{all:?}");
        drop(held);
        assert!(own_deleted_sidecars(&db).is_empty());
    }
}
