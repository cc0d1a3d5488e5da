//! G4's watcher: one thread per process (`walguard-watch`) that blocks on an inotify
//! instance watching the `-shm` and `-wal` files of every WAL index this process maps,
//! and tells their owners at once when one of them is moved, unlinked or replaced.
//!
//! Only those files are watched — by inode, through `/proc/self/fd/N` of the descriptor in
//! use, so the watch is on the file the process really has open, not on whatever the path
//! names by then — for `IN_ATTRIB` (an unlink or a rename over it changes the link count),
//! `IN_MOVE_SELF` and `IN_DELETE_SELF`. Unrelated files in the same directory, and
//! SQLite's own reads and writes, wake nothing.
//!
//! What a change means is decided by the owner ([`Watched::changed`], implemented by G4 in
//! `g4_sidecar_identity`): it checks its files with `stat` and, if one was replaced,
//! poisons its mapping. The owner also holds the gate for its whole mapping only while
//! this thread watches it ([`Watched::unwatched`] tells it when that ends).
//!
//! **Where a write starts**, the writer reads the queue itself ([`drain`]: one
//! non-blocking `read`, normally `EAGAIN`), so an `rm`/`mv` that returned before the
//! write began is always seen, whether or not this thread ran yet.
//!
//! Not used where inotify cannot see every change: network and FUSE file systems, a
//! platform without inotify, the watch limit reached — or not wanted:
//! `WALGUARD_WATCHER=0` / `Options::watcher(false)` (hosts that must stay
//! single-threaded). Mappings there check with `stat` at every transaction instead.
//!
//! The thread blocks every asynchronous signal (a host's signal handling is unchanged).
//! Before a fork it is stopped and joined (a host that counts threads at fork sees only
//! its own), and the parent's next transaction starts it again; a child starts its own.

use parking_lot::Mutex;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};

/// The owner of watched files.
pub(crate) trait Watched: Send + Sync {
    /// One of its files changed (moved, unlinked, its metadata changed) or was forgotten
    /// by the kernel; or events may have been lost. Called off the owner's hot path.
    fn changed(&self);
    /// Nothing watches its files any more (the thread stopped for a fork, or retired).
    fn unwatched(&self);
}

/// The environment variable that turns the watcher thread off (`0`, `off`, `false`).
pub(crate) const WATCHER_ENV: &str = "WALGUARD_WATCHER";

/// The inotify descriptor (-1: none), its instance number (0: none), the eventfd that
/// asks the thread to leave, and the thread's state.
static FD: AtomicI32 = AtomicI32::new(-1);
static WAKE: AtomicI32 = AtomicI32::new(-1);
static INSTANCE: AtomicU64 = AtomicU64::new(0);
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);
static RUNNING: AtomicBool = AtomicBool::new(false);
static ENABLED: AtomicBool = AtomicBool::new(true);
/// Readers of the queue holding events they have not dispatched yet.
static READING: AtomicU32 = AtomicU32::new(0);
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// One watch descriptor and the owner it reports to.
struct Target {
    wd: i32,
    owner: Weak<dyn Watched>,
}

/// Every watch of the current instance. Never held while an owner is called.
static TARGETS: Mutex<Vec<Target>> = Mutex::new(Vec::new());
/// File systems (`st_dev`) already classified by [`sees_every_change`].
static FS_SEEN: Mutex<Vec<(u64, bool)>> = Mutex::new(Vec::new());

/// Allows or forbids the watcher thread (already running watchers keep running).
pub(crate) fn set_enabled(yes: bool) {
    let env_off = std::env::var(WATCHER_ENV).is_ok_and(|v| {
        let v = v.trim();
        v == "0" || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false")
    });
    ENABLED.store(yes && !env_off, SeqCst);
}

/// A file to watch: an open descriptor of it (preferred), or its path.
pub(crate) enum File<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

/// What [`watch`] registered, to give back with [`unwatch`].
pub(crate) struct Registration {
    wds: Vec<i32>,
    instance: u64,
}

impl Registration {
    /// The watcher instance (never 0).
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }
}

/// Watches `files` (on the file system `dev`, where `fs_fd` is open) for `owner`. `None`: no watcher here
/// (turned off, not possible on this file system, no inotify or thread); the owner then
/// checks with `stat` at every transaction.
pub(crate) fn watch(
    dev: u64,
    fs_fd: RawFd,
    files: &[File],
    owner: Weak<dyn Watched>,
) -> Option<Registration> {
    #[cfg(target_os = "linux")]
    {
        if !ENABLED.load(SeqCst) || !sees_every_change(dev, fs_fd) {
            return None;
        }
        register_fork_hooks();
        let mut targets = TARGETS.lock();
        let instance = match INSTANCE.load(SeqCst) {
            0 => start(&mut targets)?,
            i => i,
        };
        if !RUNNING.load(SeqCst) && !spawn(instance) {
            return None;
        }
        let ifd = FD.load(SeqCst);
        let mask = libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF;
        let mut wds = Vec::with_capacity(files.len());
        for f in files {
            let proc_path;
            let path = match f {
                File::Fd(fd) => {
                    proc_path = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
                    proc_path.as_c_str()
                }
                File::Path(p) => p,
            };
            // SAFETY: `path` is NUL-terminated; adding a watch twice returns the same wd.
            let wd = unsafe { libc::inotify_add_watch(ifd, path.as_ptr(), mask) };
            if wd < 0 {
                forget_wds(&mut targets, &wds, None, true);
                return None;
            }
            wds.push(wd);
            targets.push(Target {
                wd,
                owner: owner.clone(),
            });
        }
        Some(Registration { wds, instance })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (dev, fs_fd, files, owner);
        None
    }
}

/// `owner` stops watching what `reg` registered. The kernel's watches go too when
/// `kernel` and no other owner shares them (they go by themselves when a file is deleted:
/// pass `false` then, and save the system calls).
pub(crate) fn unwatch(reg: &Registration, owner: &Weak<dyn Watched>, kernel: bool) {
    let mut targets = TARGETS.lock();
    if reg.instance != INSTANCE.load(SeqCst) {
        return;
    }
    forget_wds(&mut targets, &reg.wds, Some(owner), kernel);
}

/// Removes `owner`'s entries for `wds` (every owner's when `None`), and (`kernel`) the
/// kernel watch of a wd nobody uses any more.
fn forget_wds(
    targets: &mut Vec<Target>,
    wds: &[i32],
    owner: Option<&Weak<dyn Watched>>,
    kernel: bool,
) {
    for &wd in wds {
        targets.retain(|t| t.wd != wd || owner.is_some_and(|o| !Weak::ptr_eq(&t.owner, o)));
        if kernel && !targets.iter().any(|t| t.wd == wd) {
            // SAFETY: plain syscall; a wd the kernel already dropped gives EINVAL.
            unsafe { libc::inotify_rm_watch(FD.load(SeqCst), wd) };
        }
    }
}

/// Whether this process has a watcher instance (running, or stopped for a fork). One
/// atomic load.
pub(crate) fn has_instance() -> bool {
    INSTANCE.load(SeqCst) != 0
}

/// Whether the watcher `instance` is running now. Two atomic loads.
pub(crate) fn watching(instance: u64) -> bool {
    RUNNING.load(SeqCst) && INSTANCE.load(SeqCst) == instance
}

/// Starts the thread of `instance` again if a fork stopped it. Whether it runs.
pub(crate) fn resume(instance: u64) -> bool {
    if watching(instance) {
        return true;
    }
    if INSTANCE.load(SeqCst) != instance {
        return false; // retired: that instance never comes back
    }
    #[cfg(target_os = "linux")]
    {
        let _targets = TARGETS.lock();
        if INSTANCE.load(SeqCst) != instance || !ENABLED.load(SeqCst) {
            return false;
        }
        RUNNING.load(SeqCst) || spawn(instance)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Where a write transaction or a checkpoint starts: reads what the kernel has queued
/// (one non-blocking `read`, normally `EAGAIN`) and tells the owners. Returns `true`
/// when the caller must check its files itself: events may sit unread in the watcher
/// thread's hands, or the queue could not be read.
pub(crate) fn drain(instance: u64) -> bool {
    if instance == 0 || instance != INSTANCE.load(SeqCst) {
        return true;
    }
    let fd = FD.load(SeqCst);
    if fd < 0 {
        return true;
    }
    match read_and_dispatch(fd) {
        Ok(()) => READING.load(SeqCst) != 0,
        Err(()) => true,
    }
}

/// Creates the inotify instance and the eventfd (TARGETS held).
#[cfg(target_os = "linux")]
fn start(targets: &mut Vec<Target>) -> Option<u64> {
    let fd = crate::fd::create_owned(|| {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(fd)
        }
    })
    .ok()?;
    let wake = crate::fd::create_owned(|| {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(fd)
        }
    });
    let Ok(wake) = wake else {
        crate::fd::close(fd);
        return None;
    };
    targets.clear();
    let instance = NEXT_INSTANCE.fetch_add(1, SeqCst);
    FD.store(fd, SeqCst);
    WAKE.store(wake, SeqCst);
    INSTANCE.store(instance, SeqCst);
    Some(instance)
}

/// Starts the thread that reads the queue of `instance` (TARGETS held).
#[cfg(target_os = "linux")]
fn spawn(instance: u64) -> bool {
    if let Some(old) = THREAD.lock().take() {
        let _ = old.join(); // it has left (RUNNING is false)
    }
    RUNNING.store(true, SeqCst);
    // The thread starts with every asynchronous signal blocked: set the mask in this
    // thread around the spawn (a new thread inherits it), so there is no moment in which
    // a host's signal could be delivered to it.
    // SAFETY: all-zero sigset_t values are filled by sigfillset; pthread_sigmask only
    // reads/writes them.
    let spawned = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = std::thread::Builder::new()
            .name("walguard-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || run(instance));
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    };
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

/// The watcher thread: blocks until the queue has events (and dispatches them) or it is
/// asked to leave.
#[cfg(target_os = "linux")]
fn run(instance: u64) {
    let (fd, wake) = (FD.load(SeqCst), WAKE.load(SeqCst));
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
            return;
        }
        if rc < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return retire(instance);
        }
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reads the eventfd's 8-byte counter into `v`.
            unsafe { libc::read(wake, &mut v as *mut u64 as *mut libc::c_void, 8) };
            // Asked to stop (a fork is coming); the queue stays with the descriptor.
            RUNNING.store(false, SeqCst);
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return retire(instance);
        }
        if read_and_dispatch(fd).is_err() {
            return retire(instance);
        }
    }
}

/// Reads what is queued on the (non-blocking) descriptor and calls the owners of the
/// files concerned. `Err` when the descriptor is unusable.
fn read_and_dispatch(fd: RawFd) -> Result<(), ()> {
    // u64 words: aligned for `inotify_event`. Not zeroed: only the bytes `read` returns
    // are looked at (this runs at every write transaction's start).
    let mut buf = std::mem::MaybeUninit::<[u64; 256]>::uninit();
    READING.fetch_add(1, SeqCst);
    let result = (|| loop {
        // SAFETY: `buf` is writable for its whole size.
        let n = unsafe {
            libc::read(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                std::mem::size_of::<[u64; 256]>(),
            )
        };
        if n < 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(()),
                _ => Err(()),
            };
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: `read` initialised the first `n` bytes of `buf`.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
        dispatch(&events(bytes));
    })();
    READING.fetch_sub(1, SeqCst);
    result
}

/// What one read of the queue said.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Something happened to the file of this watch descriptor.
    File(i32),
    /// The kernel dropped this watch (the file was deleted, or the watch removed).
    Gone(i32),
    /// Events were lost (queue overflow) or the buffer made no sense: every owner checks.
    Lost,
}

/// Parses a buffer of `inotify_event`s (as plain bytes: safe, and tested).
fn events(mut bytes: &[u8]) -> Vec<Event> {
    const HEADER: usize = 16; // wd, mask, cookie, len: four 32-bit fields
    const IN_Q_OVERFLOW: u32 = 0x4000;
    const IN_IGNORED: u32 = 0x8000;
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < HEADER {
            out.push(Event::Lost);
            break;
        }
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        if bytes.len() < HEADER + len {
            out.push(Event::Lost);
            break;
        }
        out.push(if mask & IN_Q_OVERFLOW != 0 {
            Event::Lost
        } else if mask & IN_IGNORED != 0 {
            Event::Gone(wd)
        } else {
            Event::File(wd)
        });
        bytes = &bytes[HEADER + len..];
    }
    out
}

/// Calls the owners concerned by `events`, outside the table's lock.
fn dispatch(events: &[Event]) {
    let owners: Vec<Arc<dyn Watched>> = {
        let mut targets = TARGETS.lock();
        let mut owners = Vec::new();
        for e in events {
            match *e {
                Event::File(wd) | Event::Gone(wd) => owners.extend(
                    targets
                        .iter()
                        .filter(|t| t.wd == wd)
                        .filter_map(|t| t.owner.upgrade()),
                ),
                Event::Lost => owners.extend(targets.iter().filter_map(|t| t.owner.upgrade())),
            }
            if let Event::Gone(wd) = *e {
                targets.retain(|t| t.wd != wd);
            }
        }
        targets.retain(|t| t.owner.strong_count() > 0);
        owners
    };
    let mut seen: Vec<*const ()> = Vec::with_capacity(owners.len());
    for o in owners {
        let key = Arc::as_ptr(&o) as *const ();
        if !seen.contains(&key) {
            seen.push(key);
            o.changed();
        }
    }
}

/// Ends an instance whose queue can no longer be read: every owner checks and falls back
/// to `stat` at every transaction; the next mapping starts a new instance.
#[cfg(target_os = "linux")]
fn retire(instance: u64) {
    let owners: Vec<Arc<dyn Watched>> = {
        let mut targets = TARGETS.lock();
        RUNNING.store(false, SeqCst);
        if INSTANCE
            .compare_exchange(instance, 0, SeqCst, SeqCst)
            .is_err()
        {
            return;
        }
        let owners = targets.iter().filter_map(|t| t.owner.upgrade()).collect();
        targets.clear();
        for fd in [FD.swap(-1, SeqCst), WAKE.swap(-1, SeqCst)] {
            if fd >= 0 {
                crate::fd::close(fd);
            }
        }
        owners
    };
    for o in owners {
        o.unwatched();
        o.changed();
    }
}

// ---- fork (see fork_safety) ----------------------------------------------------------

fn register_fork_hooks() {
    use crate::fork_safety::{hold, register, release, Hooks, Order};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        register(Hooks {
            order: Order::StopThreads,
            prepare: stop_for_fork,
            parent: || {},
            child: || {},
        });
        register(Hooks {
            order: Order::Watcher,
            prepare: || {
                hold(&TARGETS);
                hold(&THREAD);
                hold(&FS_SEEN);
            },
            // SAFETY: prepare held these in this thread.
            parent: || unsafe {
                release(&FS_SEEN);
                release(&THREAD);
                release(&TARGETS);
            },
            child: child_after_fork,
        });
    });
}

/// Before a fork, first of all: the thread is stopped and joined (the process forks with
/// the threads its host made), and every owner is told that nothing watches its files
/// until the thread runs again (the parent's next transaction start restarts it).
fn stop_for_fork() {
    let wake = WAKE.load(SeqCst);
    if RUNNING.load(SeqCst) && wake >= 0 {
        let one = 1u64;
        // SAFETY: writes 8 bytes to the eventfd the thread polls.
        unsafe { libc::write(wake, &one as *const u64 as *const libc::c_void, 8) };
        if let Some(handle) = THREAD.lock().take() {
            let _ = handle.join();
        }
        let owners: Vec<Arc<dyn Watched>> = TARGETS
            .lock()
            .iter()
            .filter_map(|t| t.owner.upgrade())
            .collect();
        for o in owners {
            o.unwatched();
        }
    }
}

/// In the child: no thread, no instance (its descriptors were closed with the ledger);
/// the inherited tables are forgotten without freeing (no allocator use here).
fn child_after_fork() {
    FD.store(-1, SeqCst);
    WAKE.store(-1, SeqCst);
    RUNNING.store(false, SeqCst);
    INSTANCE.store(0, SeqCst);
    // SAFETY: prepare locked these before the fork; the child runs one thread.
    unsafe {
        std::mem::forget((*THREAD.data_ptr()).take());
        std::mem::forget(std::mem::take(&mut *TARGETS.data_ptr()));
        crate::fork_safety::release(&FS_SEEN);
        crate::fork_safety::release(&THREAD);
        crate::fork_safety::release(&TARGETS);
    }
}

/// Whether inotify sees every change to the file system holding `fd`: not on network or
/// FUSE file systems, where other machines or the server change files unseen. One
/// `fstatfs` per file system and process.
#[cfg(target_os = "linux")]
fn sees_every_change(dev: u64, fd: RawFd) -> bool {
    if let Some(&(_, yes)) = FS_SEEN.lock().iter().find(|(d, _)| *d == dev) {
        return yes;
    }
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
    let yes = !REMOTE.contains(&(sfs.f_type as i64));
    FS_SEEN.lock().push((dev, yes));
    yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(wd: i32, mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        if !padded.is_empty() {
            padded.resize(name.len().next_multiple_of(16) + 16, 0);
        }
        let mut v = Vec::new();
        for w in [wd as u32, mask, 0, padded.len() as u32] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(&padded);
        v
    }

    #[test]
    fn events_are_parsed_per_watch_and_a_bad_buffer_means_lost() {
        assert_eq!(events(&event(3, 0x4, "")), vec![Event::File(3)]);
        let two = [event(3, 0x800, ""), event(4, 0x8000, "")].concat();
        assert_eq!(events(&two), vec![Event::File(3), Event::Gone(4)]);
        assert_eq!(events(&event(-1, 0x4000, "")), vec![Event::Lost]);
        let mut cut = event(5, 0x4, "");
        cut.truncate(10);
        assert_eq!(
            events(&cut),
            vec![Event::Lost],
            "a malformed buffer is the worst case"
        );
    }

    struct Counter(std::sync::atomic::AtomicUsize);
    impl Watched for Counter {
        fn changed(&self) {
            self.0.fetch_add(1, SeqCst);
        }
        fn unwatched(&self) {}
    }

    #[test]
    fn an_unlink_of_a_watched_file_reaches_its_owner_and_an_unrelated_file_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shm = dir.path().join("app.db-shm");
        std::fs::write(&shm, b"x").expect("shm");
        let f = std::fs::File::open(&shm).expect("open");
        let owner = Arc::new(Counter(std::sync::atomic::AtomicUsize::new(0)));
        let weak: Weak<dyn Watched> = Arc::downgrade(&(owner.clone() as Arc<dyn Watched>));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let dev = std::os::unix::fs::MetadataExt::dev(&f.metadata().expect("metadata"));
        let reg = watch(dev, fd, &[File::Fd(fd)], weak.clone()).expect("a local file is watched");
        // Unrelated activity in the same directory: no event for the owner.
        for i in 0..20 {
            let p = dir.path().join(format!("other-{i}"));
            std::fs::write(&p, b"y").expect("write");
            std::fs::remove_file(&p).expect("rm");
        }
        drain(reg.instance());
        assert_eq!(owner.0.load(SeqCst), 0, "unrelated files woke the owner");
        std::fs::remove_file(&shm).expect("rm the watched file");
        // The owner hears of it through the thread or a drain (bounded wait, no timing
        // assertion).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while owner.0.load(SeqCst) == 0 && std::time::Instant::now() < deadline {
            drain(reg.instance());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(owner.0.load(SeqCst) > 0, "the unlink reached the owner");
        unwatch(&reg, &weak, true);
    }
}
