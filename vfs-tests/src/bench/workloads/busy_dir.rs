//! `busy-dir`: the `write-normal` workload (single-row commits, WAL,
//! `synchronous=NORMAL`) while another process creates and removes unrelated files in the
//! database's directory at a fixed rate.
//!
//! A WAL database rarely has its directory to itself: log files, temporary files saved by
//! rename, other applications' lock files. walguard's watcher thread watches the
//! database's directory; whatever the kernel reports for files that are not the
//! database's sidecars must cost nothing measurable (DESIGN.md: "events for unrelated
//! files in the same directory cost nothing measurable"). The plain unix VFS pays nothing
//! for them, so the ratio shows exactly what walguard pays.
//!
//! **The same disruption on both sides.** The disruptor is this binary re-executed as
//! `vfs-tests bench-child busy-dir --dir D --rate R`, one per VFS run, started before the
//! database is created and stopped after the timed commits. It keeps to a fixed schedule
//! (file number k is due at k/R seconds after it started, whatever the machine does), so
//! both VFSs run against the same rate of directory events per second, not against
//! "as fast as the other side lets it". Each file: `open(O_CREAT)`, a 64-byte `write`,
//! `close`, then for every second file a `rename` to another name (the atomic-save
//! pattern), and `unlink`: `IN_CREATE`, `IN_MODIFY`, `IN_CLOSE_WRITE`, `IN_MOVED_FROM`/
//! `IN_MOVED_TO`, `IN_DELETE` for a watch of the whole directory. It reports the rate it
//! achieved; the report shows it per side and warns when either fell behind (then the
//! two sides did not get the same disruption and the ratio is not comparable).
//!
//! The rate ([`RATE`], 5,000 files per second = about 27,500 directory events per second)
//! costs the disruptor a fraction of one core on the project's 2-core VM, so that the
//! committing thread, walguard's watcher thread and the disruptor fit on the machine.
//! Target: ratio ≤ 1.05, the target for `write-normal` (what a busy directory
//! adds on top must be lost in that margin).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{write, Workload};
use crate::bench::measure::Sample;
use crate::bench::Env;
use crate::worker::Vfs;

/// Files created and removed per second beside the database.
pub(crate) const RATE: u64 = 5_000;
/// A side that achieved less than this share of [`RATE`] fell behind its schedule.
pub(crate) const MIN_SHARE: f64 = 0.9;
/// Names in use at once: the disruptor reuses `busy-<pid>-<k % NAMES>.*`.
const NAMES: u64 = 64;

/// One VFS's run: the `write-normal` commits while the disruptor runs.
pub(crate) fn busy_dir(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let path = env.db(Workload::BusyDir, vfs, round);
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    let disruptor = Disruptor::start(&env.exe, dir, env.sizes.busy_dir_rate)?;
    let sample = write::single_row_commits(env, Workload::BusyDir, vfs, round);
    let rate = disruptor.stop()?;
    let mut s = sample?;
    s.dir_files_per_s = rate;
    Ok(s)
}

/// The disruptor process, running (killed if dropped before [`Disruptor::stop`]).
struct Disruptor {
    child: Option<Child>,
}

impl Disruptor {
    /// Starts `exe bench-child busy-dir` in `dir` and waits until it runs.
    fn start(exe: &Path, dir: &Path, rate: u64) -> Result<Disruptor, String> {
        let child = Command::new(exe)
            .args(["bench-child", "busy-dir", "--dir"])
            .arg(dir)
            .args(["--rate", &rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} bench-child busy-dir: {e}", exe.display()))?;
        let mut d = Disruptor { child: Some(child) };
        let mut line = String::new();
        let ready = d
            .child
            .as_mut()
            .and_then(|c| c.stdout.as_mut())
            .is_some_and(|out| {
                BufReader::new(out).read_line(&mut line).is_ok() && line.trim() == "ready"
            });
        if !ready {
            let err = d
                .child
                .take()
                .and_then(|mut c| {
                    let _ = c.kill();
                    c.wait_with_output().ok()
                })
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_default();
            return Err(format!(
                "the busy-dir disruptor did not start: {}{err}",
                line.trim()
            ));
        }
        Ok(d)
    }

    /// Stops it (closes its stdin) and returns the rate it achieved, files per second.
    fn stop(mut self) -> Result<u64, String> {
        let mut child = self
            .child
            .take()
            .ok_or("internal: the busy-dir disruptor was already stopped")?;
        drop(child.stdin.take());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for the busy-dir disruptor: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), parse_report(&stdout)) {
            (true, Some(rate)) => Ok(rate),
            _ => Err(format!(
                "the busy-dir disruptor exited with {}: {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

impl Drop for Disruptor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `disrupted files=N secs=S` → files per second.
fn parse_report(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("disrupted "))?;
    let (mut files, mut secs) = (None, None);
    for kv in line.split_whitespace() {
        match kv.split_once('=')? {
            ("files", v) => files = v.parse::<u64>().ok(),
            ("secs", v) => secs = v.parse::<f64>().ok(),
            _ => {}
        }
    }
    let (files, secs) = (files?, secs?);
    (secs > 0.0).then(|| (files as f64 / secs).round() as u64)
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} contains NUL", p.display()))
}

/// One file's life: create, write, close, (rename,) unlink. Plain libc calls: exactly the
/// system calls named, nothing the standard library adds (`statx` on open, `O_CLOEXEC`
/// aside).
fn one_file(tmp: &Path, renamed: &Path, rename: bool, data: &[u8]) -> Result<(), String> {
    let (t, r) = (cpath(tmp)?, cpath(renamed)?);
    // SAFETY: `t` is a NUL-terminated path that lives for the call.
    let fd = unsafe {
        libc::open(
            t.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot create {}: {}",
            tmp.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is the descriptor just opened; `data` is readable for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(format!(
            "cannot write {}: {}",
            tmp.display(),
            std::io::Error::last_os_error()
        ));
    }
    let gone = if rename {
        // SAFETY: both paths are NUL-terminated and live for the call.
        if unsafe { libc::rename(t.as_ptr(), r.as_ptr()) } != 0 {
            return Err(format!(
                "cannot rename {}: {}",
                tmp.display(),
                std::io::Error::last_os_error()
            ));
        }
        &r
    } else {
        &t
    };
    // SAFETY: a NUL-terminated path that lives for the call.
    if unsafe { libc::unlink(gone.as_ptr()) } != 0 {
        return Err(format!(
            "cannot remove a file in {}: {}",
            tmp.parent().unwrap_or(tmp).display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `vfs-tests bench-child busy-dir --dir D --rate R`: creates and removes files in D at R
/// per second, on a fixed schedule, until its stdin closes; then prints
/// `disrupted files=N secs=S`.
pub(crate) fn disrupt_child(dir: &Path, rate: u64) -> Result<(), String> {
    if rate == 0 {
        return Err("busy-dir: --rate must be positive".to_owned());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::Release);
        });
    }
    let pid = std::process::id();
    let names: Vec<(PathBuf, PathBuf)> = (0..NAMES)
        .map(|k| {
            (
                dir.join(format!("busy-{pid}-{k}.tmp")),
                dir.join(format!("busy-{pid}-{k}.dat")),
            )
        })
        .collect();
    let data = [b'x'; 64];
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .map_err(|e| format!("busy-dir: cannot report: {e}"))?;
    }
    let started = Instant::now();
    let mut done: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if done < due {
            let (tmp, dat) = &names[(done % NAMES) as usize];
            one_file(tmp, dat, done % 2 == 1, &data)?;
            done += 1;
        } else {
            std::thread::sleep(period);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("disrupted files={done} secs={secs:.6}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line() {
        assert_eq!(
            parse_report("noise\ndisrupted files=5000 secs=2.0\n"),
            Some(2500)
        );
        assert_eq!(parse_report("disrupted files=1"), None);
        assert_eq!(parse_report("disrupted files=1 secs=0"), None);
    }

    #[test]
    fn disruptor_keeps_the_directory_clean() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let names = (dir.path().join("a.tmp"), dir.path().join("a.dat"));
        one_file(&names.0, &names.1, true, b"abc").expect("rename variant");
        one_file(&names.0, &names.1, false, b"abc").expect("unlink variant");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
