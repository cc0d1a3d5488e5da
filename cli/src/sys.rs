//! The doctor's whole contact with the files it inspects, and the few libc calls it needs.
//!
//! **Why reading these files cannot disturb anybody's locks.** SQLite's unix VFS locks
//! with POSIX (`fcntl`) record locks. They belong to a *process*: a `close()` of any
//! descriptor of a file drops every POSIX lock *that process* holds on it — that is the
//! bug walguard exists for, and it is why a header peek *inside* a SQLite process splits
//! the WAL index. The doctor is its own process and never takes a lock (no `fcntl`
//! locking command, no `flock`, no `lockf`), so it holds nothing its own `close()` could
//! drop, and a `close()` can never touch the locks of another process. walguard's own
//! locks are open-file-description locks on descriptions the doctor never shares. So the
//! doctor opens the database, `-wal`, `-shm`, `-journal` and `-walguard` with plain
//! `open(O_RDONLY)`, reads them with `pread`, and closes them.
//!
//! What it never does: write, create (`O_CREAT`), truncate, `mmap` (a shared mapping of
//! the `-shm` would be harmless for locks, but `pread` sees the same page cache and cannot
//! write by accident), lock, or open through SQLite (opening a database with SQLite runs
//! recovery, may roll back a hot journal, checkpoints and deletes the `-wal` at close).
//! `O_NOATIME` keeps even the access time unchanged where the kernel permits it (the
//! file's owner or root); `O_NONBLOCK` keeps a FIFO planted at a sidecar path from hanging
//! the doctor. Opening and closing a file does not wake walguard's directory watch: it
//! listens for create/delete/rename events only.

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` read-only (with `O_NOATIME` when permitted). Never creates anything.
pub fn open_read(path: &Path) -> io::Result<File> {
    let base = libc::O_NONBLOCK | libc::O_NOCTTY;
    match OpenOptions::new()
        .read(true)
        .custom_flags(base | libc::O_NOATIME)
        .open(path)
    {
        // O_NOATIME is refused (EPERM) to anybody but the owner and root: read anyway.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            OpenOptions::new().read(true).custom_flags(base).open(path)
        }
        other => other,
    }
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
pub fn read_at_most(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads a `/proc` file with large reads: each `read()` of a seq_file such as
/// `/proc/locks` walks the kernel's table under its lock, so few big reads are kinder than
/// many small ones.
pub fn read_proc(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `f_type` of the file system holding `path` (statfs(2)).
pub fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for the whole call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's integer type differs between libcs; the magic numbers fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_type as u64) & 0xffff_ffff)
}

/// The effective user id of the doctor.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of user `uid`, if the system knows one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `passwd` is plain old data; all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pw`'s
    // string pointers, which are copied out below before `buf` is dropped.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The name of group `gid`, if the system knows one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `group` is plain old data; all-zero is a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user_name`: valid pointers, `buf` outlives the copied-out name.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || gr.gr_name.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points to a NUL-terminated string inside `buf`.
    Some(
        unsafe { CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Major device number of a `st_dev` (glibc's encoding, as the kernel exports it).
pub fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)) as u32
}

/// Minor device number of a `st_dev`.
pub fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_the_kernel_prints_them() {
        // 0xfe00 is "fe:00" in /proc/locks.
        assert_eq!((dev_major(0xfe00), dev_minor(0xfe00)), (0xfe, 0));
        assert_eq!((dev_major(0x0801), dev_minor(0x0801)), (8, 1));
        // A large minor (tmpfs/overlay anonymous devices).
        let dev = (0x12345u64 & 0xff) | ((0x12345u64 & !0xff) << 12) | (0x7 << 8);
        assert_eq!((dev_major(dev), dev_minor(dev)), (7, 0x12345));
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn reads_are_bounded_and_never_create() {
        let dir = std::env::temp_dir().join(format!("walguard-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let p = dir.join("f");
        std::fs::write(&p, b"0123456789").expect("write test file");
        let f = open_read(&p).expect("open");
        assert_eq!(read_at_most(&f, 2, 3).expect("read"), b"234");
        assert_eq!(read_at_most(&f, 8, 10).expect("read"), b"89");
        assert_eq!(read_at_most(&f, 20, 10).expect("read"), b"");
        let missing = dir.join("absent");
        assert!(open_read(&missing).is_err());
        assert!(!missing.exists(), "open_read must never create");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
