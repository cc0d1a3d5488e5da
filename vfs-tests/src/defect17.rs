//! Helpers of issue 17's defect reproductions (`tests/defect17_*.rs`).
//!
//! - [`Proc`]: a line-driven child (a `vfs-tests worker`, or `vfs-tests/py/defect_driver.py`
//!   under Debian's python3) started from a `Command` the test builds (environment,
//!   `LD_PRELOAD`, resource limits), whose replies can be awaited with a bound and
//!   whose death by a signal is reported instead of panicking.
//! - `vfs-tests worker defect17 hold PATH:START:LEN[:r] ...`: a helper process that holds
//!   POSIX write locks (read locks with `:r`), as a plain-unix SQLite process would, until
//!   told to release them.
//! - [`old_extension`]: the loadable extension of the build before issue 17 (commit
//!   [`OLD_COMMIT`]), built once from the git history into `target/walguard-<commit>/`.
//! - [`open_sidecars`]: what `/proc/PID/fd` shows of a process's `-wal`/`-shm` descriptors.
//! - [`Tmpfs`]: a small tmpfs mounted for one test (the tests run as root).
//!
//! Everything here names behaviour (replies, exit statuses, files, descriptors), never
//! walguard's internal lock layout: the tests must mean the same before and after the
//! issue-17 rewrite. The one exception is the `hold` role's byte list, which the test
//! that uses it spells out itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::worker::{parse_reply, Reply, Vfs};

/// How long one command may take (a guard against hangs, not a timing assertion).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The commit of the build before issue 17's rewrite (main when the issue was taken).
pub const OLD_COMMIT: &str = "e4e5d0e4272e12069930de4e6dbdcf6a97af2348";

/// SQLite's extended result code for a connection whose `-shm`/`-wal` was removed or
/// replaced (walguard's G4 refusal).
pub const SQLITE_IOERR_VNODE: i32 = 6922;

// ---------------------------------------------------------------------------------------
// A line-driven child

/// What came back for a command.
#[derive(Debug)]
pub enum Answer {
    /// `ok ...` or `err CODE ...`.
    Reply(Reply),
    /// Nothing yet (the process still runs).
    Silent,
    /// The process is gone (its exit status and stderr, described).
    Gone(String),
}

/// A child process driven one line at a time (`ok ...` / `err CODE ...` replies).
pub struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with piped stdio. `label` names it in messages.
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        if s.len() < 256 * 1024 {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            });
        }
        Proc {
            label: format!("{label} (pid {})", child.id()),
            child,
            stdin,
            lines,
            stderr,
            status: None,
        }
    }

    /// The label used in messages (with the pid).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Writes one command line.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(format!("{}: stdin closed", self.label));
        };
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: cannot send {line:?}: {e}", self.label))
    }

    /// The next reply line, waiting at most `timeout`.
    pub fn answer(&mut self, timeout: Duration) -> Answer {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => match parse_reply(&line) {
                Some(r) => Answer::Reply(r),
                None => Answer::Reply(Err((-1, format!("unexpected reply line {line:?}")))),
            },
            Err(RecvTimeoutError::Timeout) => Answer::Silent,
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.wait(Duration::from_secs(10));
                Answer::Gone(self.describe_end(status))
            }
        }
    }

    /// Sends `line` and waits for its reply; `Err` describes a process that died or
    /// did not answer within [`REPLY_TIMEOUT`].
    pub fn request(&mut self, line: &str) -> Result<Reply, String> {
        self.send(line)?;
        match self.answer(REPLY_TIMEOUT) {
            Answer::Reply(r) => Ok(r),
            Answer::Silent => Err(format!(
                "{}: no reply to {line:?} within {REPLY_TIMEOUT:?}; stderr:\n{}",
                self.label,
                self.stderr()
            )),
            Answer::Gone(why) => Err(format!("{why} (while answering {line:?})")),
        }
    }

    /// [`Proc::request`], panicking unless the reply is `ok`; returns its payload.
    pub fn ok(&mut self, line: &str) -> String {
        match self.request(line) {
            Ok(Ok(payload)) => payload,
            Ok(Err((code, msg))) => panic!(
                "{}: {line:?} failed: code {code}: {msg}\nstderr:\n{}",
                self.label,
                self.stderr()
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// The signal that ended the process, if it has ended by one.
    pub fn killed_by(&mut self) -> Option<i32> {
        self.wait(Duration::ZERO).and_then(|s| s.signal())
    }

    /// Sends `signal` to the process and waits for it to end.
    pub fn kill(&mut self, signal: i32) -> Option<ExitStatus> {
        if self.status.is_none() {
            // SAFETY: kill on the pid of our own child, not yet reaped (status is None).
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
        self.wait(Duration::from_secs(10))
    }

    /// Sends `exit` (when the process still answers) and waits for its end; returns the
    /// exit status (or `None` if it had to be killed).
    pub fn exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && self.send("exit").is_ok() {
            let _ = self.answer(REPLY_TIMEOUT);
        }
        drop(self.stdin.take());
        match self.wait(REPLY_TIMEOUT) {
            Some(s) => Some(s),
            None => {
                self.kill(libc::SIGKILL);
                None
            }
        }
    }

    fn describe_end(&self, status: Option<ExitStatus>) -> String {
        // Let the stderr reader catch up.
        std::thread::sleep(Duration::from_millis(50));
        let how = match status {
            Some(s) => match s.signal() {
                Some(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
                None => format!("exited with {s}"),
            },
            None => "closed its stdout but did not exit".to_owned(),
        };
        format!("{} {how}; stderr:\n{}", self.label, self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A signal's name, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGBUS => "SIGBUS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

/// `vfs-tests worker --vfs V --db DB [extra...]` (the scripted worker, see `worker`).
pub fn worker_command(exe: &Path, vfs: Vfs, db: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--vfs")
        .arg(vfs.name())
        .arg("--db")
        .arg(db)
        .args(extra);
    cmd
}

/// Debian's python3 running `vfs-tests/py/defect_driver.py` (system SQLite) in `cwd`.
pub fn driver_command(cwd: &Path) -> Command {
    crate::extension::python_command("defect_driver.py", &[], cwd)
}

/// Whether an extended result code belongs to SQLITE_IOERR (VNODE included).
pub fn is_ioerr(code: i32) -> bool {
    code & 0xff == 10
}

/// Whether an extended result code is a SQLITE_BUSY/SQLITE_LOCKED variant.
pub fn is_busy(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

// ---------------------------------------------------------------------------------------
// The `hold` helper role

/// Starts a `hold` helper (`exe` is the vfs-tests binary) and waits until it holds
/// `locks` (`PATH:START:LEN[:r]`); panics if it cannot.
pub fn hold(exe: &Path, locks: &[String]) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(["worker", "defect17", "hold"]).args(locks);
    let mut h = Proc::spawn("helper (holds locks)", cmd);
    match h.answer(REPLY_TIMEOUT) {
        Answer::Reply(Ok(r)) if r == "held" => h,
        other => panic!("the helper could not hold {locks:?}: {other:?}"),
    }
}

/// Tells a `hold` helper to release its locks and waits for it to exit.
pub fn release(mut h: Proc) {
    assert_eq!(
        h.request("release").unwrap_or_else(|e| panic!("{e}")),
        Ok("released".to_owned())
    );
    h.exit();
}

/// Entry point of `vfs-tests worker defect17 ROLE ...`.
pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("hold") => hold_main(&args[1..]),
        _ => {
            eprintln!(
                "usage: vfs-tests worker defect17 hold PATH:START:LEN[:r] ...\n  \
                 holds a POSIX write lock (read lock with :r) on each range (creating the \
                 file if missing), \
                 replies `ok held`, releases everything at the line `release` (reply \
                 `ok released`) or at end of input"
            );
            ExitCode::from(2)
        }
    }
}

fn hold_main(specs: &[String]) -> ExitCode {
    let mut files = Vec::new();
    for spec in specs {
        let (spec, read) = match spec.strip_suffix(":r") {
            Some(s) => (s, true),
            None => (spec.as_str(), false),
        };
        let mut parts = spec.rsplitn(3, ':');
        let (len, start, path) = (parts.next(), parts.next(), parts.next());
        let (Some(len), Some(start), Some(path)) = (len, start, path) else {
            println!("err -1 bad lock spec {spec:?} (PATH:START:LEN)");
            return ExitCode::from(2);
        };
        let (Ok(start), Ok(len)) = (parse_num(start), parse_num(len)) else {
            println!("err -1 bad numbers in lock spec {spec:?}");
            return ExitCode::from(2);
        };
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                println!("err -1 open {path}: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = posix_lock(&file, read, start, len) {
            println!("err -1 lock {path} bytes {start}+{len}: {e}");
            return ExitCode::from(1);
        }
        files.push(file);
    }
    println!("ok held");
    let _ = io::stdout().flush();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "release" {
            break;
        }
    }
    drop(files); // closing releases every POSIX lock of this process on them
    println!("ok released");
    let _ = io::stdout().flush();
    ExitCode::SUCCESS
}

fn parse_num(s: &str) -> Result<i64, std::num::ParseIntError> {
    match s.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => s.parse(),
    }
}

fn posix_lock(file: &File, read: bool, start: i64, len: i64) -> io::Result<()> {
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if read { libc::F_RDLCK } else { libc::F_WRLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: a valid flock for the duration of the call, on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Descriptors of a process

/// The targets of `pid`'s descriptors whose `readlink` ends in `suffix` (e.g. `-shm`,
/// `-shm (deleted)`), sorted.
pub fn open_sidecars(pid: u32, suffix: &str) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.ends_with(suffix))
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// A small tmpfs

/// A tmpfs mounted on a fresh temporary directory; unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `256k`). Needs root (CAP_SYS_ADMIN).
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("walguard-tmpfs-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs -o size={size} tmpfs {} failed ({}): {} (this test mounts a \
                 small tmpfs and must run as root with CAP_SYS_ADMIN)",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file `name` until the file system is full; returns its size.
    pub fn fill(&self, name: &str) -> io::Result<u64> {
        let mut f = File::create(self.path.join(name))?;
        let block = [0x5au8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => return Ok(n),
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            // A process of a failed test may still have files open there.
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The build before issue 17

/// The loadable extension built from [`OLD_COMMIT`], built on first use (and kept) under
/// `target/walguard-<commit>/`: `git archive` of the commit, then `cargo rustc --release
/// -p walguard --lib --no-default-features --features loadable_extension --crate-type
/// cdylib` there. Serialised across test processes with an `flock`. `Err` says why (for
/// instance: a shallow clone or a source archive has no such commit).
pub fn old_extension() -> Result<PathBuf, String> {
    let root = crate::extension::workspace_root();
    let short = &OLD_COMMIT[..7];
    let base = root.join("target").join(format!("walguard-{short}"));
    fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join("build.lock"))
        .map_err(|e| format!("cannot open {}/build.lock: {e}", base.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed at return.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("cannot lock {}/build.lock: {e}", base.display()));
        }
    }
    let target = base.join("target");
    let so = target.join("release").join("libwalguard.so");
    let done = base.join("built");
    if so.is_file() && fs::read_to_string(&done).is_ok_and(|s| s.trim() == OLD_COMMIT) {
        return Ok(so);
    }
    let git = |args: &[&str]| -> Result<std::process::Output, String> {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run git (apt-get install -y git): {e}"))
    };
    let have = git(&["cat-file", "-e", &format!("{OLD_COMMIT}^{{commit}}")])?;
    if !have.status.success() {
        return Err(format!(
            "the git history of {} does not contain commit {OLD_COMMIT} (the build before \
             issue 17), so the rolling-upgrade test cannot build the old extension. Run the \
             tests from a full clone (git fetch --unshallow). git said: {}",
            root.display(),
            String::from_utf8_lossy(&have.stderr).trim()
        ));
    }
    let src = base.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).map_err(|e| format!("cannot remove {}: {e}", src.display()))?;
    }
    fs::create_dir_all(&src).map_err(|e| format!("cannot create {}: {e}", src.display()))?;
    let tar = base.join("src.tar");
    let tar_s = tar.to_string_lossy().into_owned();
    let out = git(&["archive", "--format=tar", "-o", &tar_s, OLD_COMMIT])?;
    if !out.status.success() {
        return Err(format!(
            "git archive {OLD_COMMIT} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar -xf {} failed: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = fs::remove_file(&tar);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&src)
        .args([
            "rustc",
            "--release",
            "-p",
            "walguard",
            "--lib",
            "--no-default-features",
            "--features",
            "loadable_extension",
            "--crate-type",
            "cdylib",
            "--target-dir",
        ])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() || !so.is_file() {
        return Err(format!(
            "building the extension of {OLD_COMMIT} in {} failed ({}):\n{}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::write(&done, OLD_COMMIT).map_err(|e| format!("cannot write {}: {e}", done.display()))?;
    Ok(so)
}
