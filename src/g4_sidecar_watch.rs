//! G4's fast path: a per-process watcher thread blocks on an inotify instance that
//! watches the directory of each database with a mapped `-shm`, and publishes a
//! process-wide epoch. A transaction start reads the epoch (an atomic load, no system
//! call): a connection that confirmed its sidecars at the current epoch skips the
//! identity check (`g4_sidecar_identity::check_sidecar`, a `stat` per sidecar).
//!
//! Any event about a `-wal`, `-shm` or `-walguard` name in a watched directory (or a
//! queue overflow, or a watch that went away) advances the epoch. False positives only
//! cost a `stat`.
//!
//! **The detection window.** The kernel queues the event before the `unlink`, `rename`
//! or `link` returns, but the watcher thread publishes it only once it has been scheduled
//! and read it: typically microseconds, under heavy load up to a scheduler time slice.
//! A transaction that starts inside that window trusts its sidecars; the next one fails
//! (G4). During the window the WRITE/CKPT mirrors on `<db>-walguard` still keep writers
//! on a replaced `-shm` and writers on the new one apart (see `g1_one_wal_index`). The
//! README's "cannot do" list says so.
//!
//! Not used (every transaction does the full check instead) where inotify cannot see
//! every change: network and FUSE file systems, a platform without inotify, or when
//! inotify or the thread is unavailable (watch limit reached) — or not wanted:
//! `WALGUARD_WATCHER=0` / `Options::watcher(false)`, for hosts that must stay
//! single-threaded (a process that forks and checks its thread count: Python >= 3.12
//! warns with a DeprecationWarning at `os.fork()` in a multi-threaded process).
//!
//! Fork: the child has no watcher thread; its copy of the inotify descriptor is closed
//! with walguard's other descriptors and the next `-shm` mapping in the child starts a
//! watcher of its own.

use parking_lot::Mutex;
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

/// The inotify descriptor of this process (-1: none).
static FD: AtomicI32 = AtomicI32::new(-1);
/// Which instance `FD` is; watches remember it (0: none).
static INSTANCE: AtomicU64 = AtomicU64::new(0);
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);
/// Advanced by every relevant event. Starts above 0 so a new connection checks once.
static EPOCH: AtomicU64 = AtomicU64::new(1);
/// Whether a watcher thread may be started (`WALGUARD_WATCHER=0` or
/// `Options::watcher(false)`: no thread; every transaction checks with `stat`).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The environment variable that turns the watcher thread off (`0` or `off`).
pub(crate) const WATCHER_ENV: &str = "WALGUARD_WATCHER";

/// Allows or forbids the watcher thread (already running watchers keep running).
pub(crate) fn set_enabled(yes: bool) {
    let env_off = std::env::var(WATCHER_ENV).is_ok_and(|v| {
        let v = v.trim();
        v == "0" || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false")
    });
    ENABLED.store(yes && !env_off, SeqCst);
}

/// The eventfd that asks the watcher thread to leave (-1: none), whether a watcher
/// thread is reading now, and its handle.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// Readers of the inotify queue (the watcher thread) holding events not yet published.
static READING: AtomicU32 = AtomicU32::new(0);
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);
/// Directories already watched, with the instance that watches them.
static SETUP: Mutex<Vec<(std::ffi::CString, u64)>> = Mutex::new(Vec::new());

/// Watches the directory `dir` (of a database whose `-shm` walguard holds as `shm_fd`).
/// Returns the instance the watch belongs to, or 0 when there is none (the connection
/// then checks with `stat` at every transaction).
pub(crate) fn watch(shm_fd: RawFd, dir: &CStr) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut watched = SETUP.lock();
        let mut instance = INSTANCE.load(SeqCst);
        if instance != 0
            && watched
                .iter()
                .any(|(d, i)| *i == instance && d.as_c_str() == dir)
        {
            return instance;
        }
        if !sees_every_change(shm_fd) {
            return 0;
        }
        if instance == 0 {
            if !ENABLED.load(SeqCst) {
                return 0;
            }
            match start_watcher() {
                Some(i) => instance = i,
                None => return 0,
            }
        }
        let mask = libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        // SAFETY: `dir` is NUL-terminated; adding a watch twice returns the same one.
        let wd = unsafe { libc::inotify_add_watch(FD.load(SeqCst), dir.as_ptr(), mask) };
        if wd < 0 {
            return 0;
        }
        watched.retain(|(_, i)| *i == instance);
        watched.push((dir.to_owned(), instance));
        instance
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (shm_fd, dir);
        0
    }
}

/// Creates the inotify instance and the thread that reads it (SETUP held).
#[cfg(target_os = "linux")]
fn start_watcher() -> Option<u64> {
    // SAFETY: plain syscalls; the descriptors are owned by this module (and the ledger).
    let (fd, wake) = unsafe {
        (
            libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK),
            libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK),
        )
    };
    if fd < 0 || wake < 0 {
        for d in [fd, wake] {
            if d >= 0 {
                // SAFETY: just created here, never shared.
                unsafe { libc::close(d) };
            }
        }
        return None;
    }
    let (fd, wake) = (crate::fd::own(fd), crate::fd::own(wake));
    let instance = NEXT_INSTANCE.fetch_add(1, SeqCst);
    FD.store(fd, SeqCst);
    WAKE.store(wake, SeqCst);
    INSTANCE.store(instance, SeqCst);
    if !spawn(fd, wake, instance) {
        INSTANCE.store(0, SeqCst);
        FD.store(-1, SeqCst);
        WAKE.store(-1, SeqCst);
        crate::fd::close(fd);
        crate::fd::close(wake);
        return None;
    }
    Some(instance)
}

/// Starts the thread that reads `fd` for `instance` (SETUP held).
#[cfg(target_os = "linux")]
fn spawn(fd: RawFd, wake: RawFd, instance: u64) -> bool {
    RUNNING.store(true, SeqCst);
    let spawned = std::thread::Builder::new()
        .name("walguard-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || watcher(fd, wake, instance));
    match spawned {
        Ok(handle) => {
            *THREAD.lock() = Some(handle);
            true
        }
        Err(_) => {
            RUNNING.store(false, SeqCst);
            false
        }
    }
}

/// The watcher thread: blocks on the inotify descriptor and advances the epoch; leaves
/// when `wake` is signalled (before a fork) or its events can no longer be trusted.
#[cfg(target_os = "linux")]
fn watcher(fd: RawFd, wake: RawFd, instance: u64) {
    // u64 words: aligned for `inotify_event`.
    let mut buf = [0u64; 512];
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if INSTANCE.load(SeqCst) != instance {
            RUNNING.store(false, SeqCst);
            return; // replaced
        }
        if rc < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return retire(fd, instance);
        }
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reads the eventfd's 8-byte counter into `v`.
            unsafe { libc::read(wake, &mut v as *mut u64 as *mut libc::c_void, 8) };
            // Asked to stop (a fork is coming): the queue stays with the descriptor and
            // the next transaction start restarts a reader (see `must_check`).
            RUNNING.store(false, SeqCst);
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return retire(fd, instance);
        }
        // While this thread holds events it has not published, a writer's own drain
        // (`drain_now`) must not conclude "nothing happened".
        READING.fetch_add(1, SeqCst);
        let outcome = read_events(fd, &mut buf);
        READING.fetch_sub(1, SeqCst);
        match outcome {
            Ok(Relevance::None) => {}
            Ok(Relevance::Sidecar) => crate::registry::drop_stale_kept_shm(),
            Ok(Relevance::WatchLost) | Err(()) => return retire(fd, instance),
        }
    }
}

/// Reads what is queued on the (non-blocking) inotify descriptor and publishes it:
/// the epoch advances for any sidecar event. `Err` when the descriptor is unusable.
fn read_events(fd: RawFd, buf: &mut [u64; 512]) -> Result<Relevance, ()> {
    let mut seen = Relevance::None;
    loop {
        // SAFETY: `buf` is writable for its whole size.
        let n = unsafe {
            libc::read(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                std::mem::size_of_val(buf),
            )
        };
        if n < 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(seen),
                _ => Err(()),
            };
        }
        if n == 0 {
            return Ok(seen);
        }
        // SAFETY: `buf` holds `n` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
        match relevant(bytes) {
            Relevance::None => {}
            Relevance::Sidecar => {
                EPOCH.fetch_add(1, SeqCst);
                seen = Relevance::Sidecar;
            }
            Relevance::WatchLost => {
                EPOCH.fetch_add(1, SeqCst);
                return Ok(Relevance::WatchLost);
            }
        }
    }
}

/// Where a write transaction or a checkpoint starts: read whatever the kernel has queued
/// right now (one non-blocking `read`, normally `EAGAIN`), so that an `rm`/`mv` of a
/// sidecar that returned before this transaction began is always seen by it — the
/// watcher thread may not have been scheduled yet. Returns whether the connection must
/// check its sidecars (an event, or the watcher is holding unpublished events).
pub(crate) fn drain_now(watched: u64, seen: u64) -> bool {
    if watched == 0 || watched != INSTANCE.load(SeqCst) {
        return true;
    }
    let fd = FD.load(SeqCst);
    if fd < 0 {
        return true;
    }
    let mut buf = [0u64; 512];
    match read_events(fd, &mut buf) {
        Ok(Relevance::None) | Ok(Relevance::Sidecar) => {}
        Ok(Relevance::WatchLost) | Err(()) => {
            // The watcher would have retired on this; it will not see it now.
            #[cfg(target_os = "linux")]
            retire(fd, watched);
            return true;
        }
    }
    READING.load(SeqCst) != 0 || EPOCH.load(SeqCst) != seen
}

/// Ends a watcher whose events can no longer be trusted (queue overflow, a watch that
/// went away, a read error): connections mapped under it fall back to `stat` at every
/// transaction, and the next mapping starts a new watcher.
#[cfg(target_os = "linux")]
fn retire(fd: RawFd, instance: u64) {
    let mut watched = SETUP.lock();
    EPOCH.fetch_add(1, SeqCst);
    RUNNING.store(false, SeqCst);
    if INSTANCE
        .compare_exchange(instance, 0, SeqCst, SeqCst)
        .is_ok()
    {
        FD.store(-1, SeqCst);
        let wake = WAKE.swap(-1, SeqCst);
        watched.clear();
        crate::fd::close(fd);
        if wake >= 0 {
            crate::fd::close(wake);
        }
    }
}

/// The running watcher's instance (0: none).
pub(crate) fn instance() -> u64 {
    if RUNNING.load(SeqCst) {
        INSTANCE.load(SeqCst)
    } else {
        0
    }
}

/// The current epoch, or 0 when no watcher runs (callers then check with `stat`).
pub(crate) fn epoch() -> u64 {
    if INSTANCE.load(SeqCst) == 0 || !RUNNING.load(SeqCst) {
        0
    } else {
        EPOCH.load(SeqCst)
    }
}

/// At a transaction start: whether the connection must check its sidecars (the watch is
/// missing or stale, or an event arrived since `seen`), and the epoch to remember once
/// the check succeeded. Two atomic loads, no system call.
pub(crate) fn must_check(watched: u64, seen: u64) -> (bool, u64) {
    let epoch = EPOCH.load(SeqCst);
    if watched == 0 || watched != INSTANCE.load(SeqCst) {
        return (true, epoch);
    }
    if !RUNNING.load(SeqCst) {
        // Stopped for a fork: nobody reads the queue now. Check with `stat`, and start a
        // reader again (once; the events queued meanwhile are then read).
        restart(watched);
        return (true, epoch);
    }
    (epoch != seen, epoch)
}

/// Restarts the reader of the current instance after a fork stopped it.
fn restart(instance: u64) {
    #[cfg(target_os = "linux")]
    {
        let Some(_setup) = SETUP.try_lock() else {
            return; // another thread is at it
        };
        let (fd, wake) = (FD.load(SeqCst), WAKE.load(SeqCst));
        if RUNNING.load(SeqCst) || INSTANCE.load(SeqCst) != instance || fd < 0 || wake < 0 {
            return;
        }
        if let Some(old) = THREAD.lock().take() {
            let _ = old.join(); // it has left already (RUNNING is false)
        }
        spawn(fd, wake, instance);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = instance;
}

// ---- fork (see fork_safety) ----------------------------------------------------------

/// Before a fork, first of all (the watcher may be waiting for the registry's lock): the
/// watcher thread is stopped and joined, so the process forks with the threads its host
/// made (a host that counts them — Python >= 3.12 warns at `os.fork()` in a
/// multi-threaded process — sees none of walguard's). The parent restarts the reader at
/// its next transaction start.
pub(crate) fn fork_stop_watcher() {
    let wake = WAKE.load(SeqCst);
    if RUNNING.load(SeqCst) && wake >= 0 {
        let one = 1u64;
        // SAFETY: writes 8 bytes to the eventfd the watcher polls.
        unsafe { libc::write(wake, &one as *const u64 as *const libc::c_void, 8) };
        if let Some(handle) = THREAD.lock().take() {
            let _ = handle.join();
        }
    }
}

/// Before a fork, after [`fork_stop_watcher`] and the registry: SETUP is held across it.
pub(crate) fn fork_prepare() {
    crate::fork_safety::hold(&SETUP);
}

pub(crate) fn fork_prepare_forced() {
    crate::fork_safety::hold_forced(&SETUP);
}

pub(crate) fn fork_parent() {
    // SAFETY: fork_prepare held SETUP in this thread.
    unsafe { crate::fork_safety::release(&SETUP) };
}

/// In the child: no watcher thread runs; the descriptor was closed with the ledger.
pub(crate) fn fork_child() {
    FD.store(-1, SeqCst);
    WAKE.store(-1, SeqCst);
    RUNNING.store(false, SeqCst);
    // SAFETY: the child runs one thread; the handle names a thread of the parent.
    unsafe { std::mem::forget((*THREAD.data_ptr()).take()) };
    INSTANCE.store(0, SeqCst);
    EPOCH.fetch_add(1, SeqCst);
    // SAFETY: fork_prepare locked SETUP before the fork; the child runs one thread.
    unsafe {
        std::mem::forget(std::mem::take(&mut *SETUP.data_ptr()));
        crate::fork_safety::release(&SETUP);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Relevance {
    None,
    Sidecar,
    WatchLost,
}

/// What a buffer of `inotify_event`s says (parsed as plain bytes: safe, and tested).
fn relevant(mut bytes: &[u8]) -> Relevance {
    const HEADER: usize = 16; // wd, mask, cookie, len: four 32-bit fields
    let mut found = Relevance::None;
    while bytes.len() >= HEADER {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (mask, len) = (word(4), word(12) as usize);
        let Some(name) = bytes.get(HEADER..HEADER + len) else {
            return Relevance::WatchLost; // malformed: be safe
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
            return Relevance::WatchLost;
        }
        if name.ends_with(b"-wal")
            || name.ends_with(b"-shm")
            || name.ends_with(crate::lock_file::SUFFIX.as_bytes())
        {
            found = Relevance::Sidecar;
        }
        bytes = &bytes[HEADER + len..];
    }
    found
}

const IN_Q_OVERFLOW: u32 = 0x4000;
const IN_IGNORED: u32 = 0x8000;
const IN_DELETE_SELF: u32 = 0x400;
const IN_MOVE_SELF: u32 = 0x800;

/// Whether inotify sees every change to the file system holding `fd`: not on network or
/// FUSE file systems, where other machines or the server change files unseen.
#[cfg(target_os = "linux")]
fn sees_every_change(fd: RawFd) -> bool {
    // SAFETY: all-zero is a valid statfs; fstatfs fills it or fails.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `sfs` is writable for the call.
    if unsafe { libc::fstatfs(fd, &mut sfs) } != 0 {
        return false;
    }
    const REMOTE: [i64; 11] = [
        0x6969,                 // NFS
        0x517B,                 // SMB
        0xFF53_4D42_u32 as i64, // CIFS
        0xFE53_4D42_u32 as i64, // SMB2
        0x6573_5546,            // FUSE
        0x00C3_6400,            // Ceph
        0x0102_1997,            // 9p
        0x5346_414F,            // AFS
        0x0116_1970,            // GFS2
        0x7461_636f,            // OCFS2
        0x0BD0_0BD0,            // Lustre
    ];
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    let kind = sfs.f_type as i64;
    !REMOTE.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        padded.resize(name.len().next_multiple_of(16) + 16, 0);
        let mut v = Vec::new();
        for w in [1u32, mask, 0, padded.len() as u32] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(&padded);
        v
    }

    #[test]
    fn sidecar_events_count_and_others_do_not() {
        assert_eq!(relevant(&event(0x100, "notes.txt")), Relevance::None);
        assert_eq!(relevant(&event(0x200, "app.db-shm")), Relevance::Sidecar);
        let two = [event(0x100, "x"), event(0x40, "app.db-wal")].concat();
        assert_eq!(relevant(&two), Relevance::Sidecar);
        assert_eq!(relevant(&event(IN_Q_OVERFLOW, "")), Relevance::WatchLost);
        assert_eq!(relevant(&event(IN_IGNORED, "")), Relevance::WatchLost);
        let mut cut = event(0x200, "app.db-shm");
        cut.truncate(20);
        assert_eq!(
            relevant(&cut),
            Relevance::WatchLost,
            "a malformed buffer is taken as the worst case"
        );
    }

    #[test]
    fn a_rename_in_a_watched_directory_is_seen_by_the_next_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shm = dir.path().join("app.db-shm");
        std::fs::write(&shm, b"x").expect("shm");
        let f = std::fs::File::open(&shm).expect("open");
        let cdir = std::ffi::CString::new(dir.path().to_str().expect("utf-8")).expect("no NUL");
        let inst = watch(std::os::fd::AsRawFd::as_raw_fd(&f), &cdir);
        assert_ne!(inst, 0, "a local directory is watched");
        let (_, epoch) = must_check(inst, 0);
        let (again, _) = must_check(inst, epoch);
        assert!(!again, "nothing happened: no check");
        std::fs::rename(&shm, dir.path().join("moved")).expect("mv");
        // The watcher thread publishes the event asynchronously (the documented window):
        // wait for it (bounded), no timing assertion.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !must_check(inst, epoch).0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(must_check(inst, epoch).0, "the rename advances the epoch");
    }
}
