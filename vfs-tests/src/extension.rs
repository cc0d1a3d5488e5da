//! Building and locating the loadable extension `libwalguard.so`, and driving the two
//! foreign hosts that load it in the tests: Debian's `/usr/bin/python3` (whose `sqlite3`
//! module allows `load_extension`) and the `/usr/bin/sqlite3` shell.
//!
//! - [`extension_path`] builds the extension once per process with
//!   `cargo rustc --release -p walguard --lib --no-default-features --features
//!   loadable_extension --crate-type cdylib --target-dir <workspace>/target/ext`,
//!   serialised across processes with an `flock` on a lock file, unless the environment
//!   variable `WALGUARD_EXT` names a prebuilt `.so`. The separate target directory keeps
//!   the nested cargo from waiting on the lock of the `cargo test` that runs us.
//! - [`run_python`] and [`run_sqlite3_shell`] run a script with a timeout and capture
//!   its output; [`LineProcess`] drives a long-lived child one line at a time.
//!
//! Missing tools are reported by a panic that names the tool and the Debian package that
//! provides it (`apt-get install -y python3 sqlite3 binutils`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Environment variable naming a prebuilt `libwalguard.so`; when set, nothing is built.
pub const EXT_ENV: &str = "WALGUARD_EXT";

/// Debian's Python. Not the `python3` first on `PATH` (often a pyenv build without
/// `enable_load_extension`).
pub const DEBIAN_PYTHON3: &str = "/usr/bin/python3";

/// Debian's SQLite shell (package `sqlite3`).
pub const DEBIAN_SQLITE3: &str = "/usr/bin/sqlite3";

/// The entry point that registers `walguard` as the process's default VFS.
pub const ENTRY_DEFAULT: &str = "sqlite3_walguard_init";

/// The entry point that registers `walguard` without making it the default.
pub const ENTRY_NODEFAULT: &str = "sqlite3_walguard_nodefault_init";

/// Every symbol the extension exports: the two entry points and their auto-extension
/// variants (which answer `SQLITE_OK`, for `sqlite3_auto_extension`).
pub const ENTRY_POINTS: [&str; 4] = [
    ENTRY_DEFAULT,
    ENTRY_NODEFAULT,
    "sqlite3_walguard_auto_init",
    "sqlite3_walguard_nodefault_auto_init",
];

/// Whether `name` is one of [`ENTRY_POINTS`].
pub fn is_entry_point(name: &str) -> bool {
    ENTRY_POINTS.contains(&name)
}

/// A generous upper bound for one short script; a guard against hangs, not a
/// performance assertion.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const APT_HINT: &str = "apt-get install -y python3 sqlite3 libsqlite3-0 binutils";

/// The cargo workspace root (the parent of `vfs-tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The target directory of the nested extension build.
pub fn extension_target_dir() -> PathBuf {
    workspace_root().join("target").join("ext")
}

/// The path of `libwalguard.so`, built on first use in this process (see the module
/// documentation). Panics with the build's output if it cannot be built.
pub fn extension_path() -> PathBuf {
    match try_extension_path() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// [`extension_path`] without the panic.
pub fn try_extension_path() -> Result<PathBuf, String> {
    static EXT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXT.get_or_init(locate_or_build).clone()
}

/// The argument for `.load` / `load_extension`: the extension path without its `.so`
/// suffix (SQLite appends it), which also exercises SQLite's entry-point derivation
/// from the file name (`libwalguard` → `sqlite3_walguard_init`).
pub fn extension_load_arg() -> String {
    let p = extension_path();
    let s = p.to_string_lossy().into_owned();
    match s.strip_suffix(".so") {
        Some(stem) => stem.to_owned(),
        None => s,
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(EXT_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{EXT_ENV}={} does not name a file; unset it to have the tests build the \
                 extension, or build it with `cargo rustc --release -p walguard --lib \
                 --no-default-features --features loadable_extension --crate-type cdylib`",
                p.display()
            ))
        };
    }
    build_extension()
}

fn build_extension() -> Result<PathBuf, String> {
    let target_dir = extension_target_dir();
    fs::create_dir_all(&target_dir)
        .map_err(|e| format!("cannot create {}: {e}", target_dir.display()))?;
    let lock_path = target_dir.join("walguard-ext-build.lock");
    let _lock = FileLock::exclusive(&lock_path)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
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
            "--message-format=json-render-diagnostics",
            "--target-dir",
        ])
        .arg(&target_dir)
        // The flag wins over these anyway; removing them keeps the intent obvious.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null());
    let shown = format!(
        "{} rustc --release -p walguard --lib --no-default-features --features \
         loadable_extension --crate-type cdylib --target-dir {}",
        Path::new(&cargo).display(),
        target_dir.display()
    );
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e} (is cargo installed and on PATH?)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "building the walguard extension failed ({}):\n`{shown}`\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let from_messages = artifact_from_messages(&stdout);
    let expected = target_dir.join("release").join("libwalguard.so");
    let found = from_messages
        .into_iter()
        .chain([expected.clone()])
        .find(|p| p.is_file());
    found.ok_or_else(|| {
        format!(
            "`{shown}` succeeded but produced no libwalguard.so (looked at {} and cargo's \
             artifact messages)",
            expected.display()
        )
    })
}

/// Finds `.../libwalguard.so` in cargo's JSON artifact messages. A plain substring scan
/// is enough: the paths cargo prints are JSON strings ending in `libwalguard.so"`.
fn artifact_from_messages(stdout: &str) -> Vec<PathBuf> {
    let needle = "libwalguard.so\"";
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.contains("compiler-artifact")) {
        let mut rest = line;
        while let Some(end) = rest.find(needle) {
            let upto = &rest[..end + needle.len() - 1];
            if let Some(start) = upto.rfind('"') {
                out.push(PathBuf::from(&upto[start + 1..]));
            }
            rest = &rest[end + needle.len()..];
        }
    }
    out
}

/// An exclusive `flock` held until drop.
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    pub(crate) fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: flock on a descriptor we own and keep open for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own; closing it would unlock as well.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

// ---------------------------------------------------------------------------------------
// Tools

fn require_tool(path: &str, package: &str, why: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if !p.is_file() {
        panic!(
            "{path} is missing: {why}. Install it with `apt-get install -y {package}` \
             (the tests need: `{APT_HINT}`)"
        );
    }
    p
}

/// A generic tool: `/usr/bin/NAME`, else the first `NAME` on `PATH`.
fn require_any_tool(name: &str, package: &str, why: &str) -> PathBuf {
    let usr = Path::new("/usr/bin").join(name);
    if usr.is_file() {
        return usr;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => p,
        None => require_tool(&usr.to_string_lossy(), package, why),
    }
}

/// Debian's `/usr/bin/python3`, or a panic saying how to install it.
pub fn python3_path() -> PathBuf {
    require_tool(
        DEBIAN_PYTHON3,
        "python3",
        "the extension tests load libwalguard.so into Debian's Python, whose sqlite3 \
         module allows load_extension",
    )
}

/// Debian's `/usr/bin/sqlite3` shell, or a panic saying how to install it.
pub fn sqlite3_shell_path() -> PathBuf {
    require_tool(
        DEBIAN_SQLITE3,
        "sqlite3",
        "the extension tests `.load` libwalguard.so into the SQLite shell",
    )
}

/// `nm` from binutils (`/usr/bin/nm`, else on `PATH`), or a panic saying how to install it.
pub fn nm_path() -> PathBuf {
    require_any_tool(
        "nm",
        "binutils",
        "the symbol test lists the extension's symbols",
    )
}

/// `ldd` from libc-bin (`/usr/bin/ldd`, else on `PATH`), or a panic saying how to install it.
pub fn ldd_path() -> PathBuf {
    require_any_tool(
        "ldd",
        "libc-bin",
        "the symbol test lists the extension's shared-library dependencies",
    )
}

/// A script in `vfs-tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name);
    if !p.is_file() {
        panic!("test script {} is missing from the checkout", p.display());
    }
    p
}

/// A `Command` running `vfs-tests/py/<script>` under Debian's Python in isolated mode
/// (`-I`: no PYTHON* variables, no user site-packages) without writing bytecode.
pub fn python_command(script: &str, args: &[&OsStr], cwd: &Path) -> Command {
    let mut cmd = Command::new(python3_path());
    cmd.arg("-I")
        .arg("-B")
        .arg(py_script(script))
        .args(args)
        .current_dir(cwd);
    cmd
}

/// Runs `vfs-tests/py/<script> args...` in `cwd` under Debian's Python.
pub fn run_python(script: &str, args: &[&OsStr], cwd: &Path, timeout: Duration) -> RunOutput {
    run_with_timeout(python_command(script, args, cwd), None, timeout)
}

/// Runs the `sqlite3` shell in `cwd` with `args`, feeding `input` on stdin.
pub fn run_sqlite3_shell(cwd: &Path, args: &[&str], input: &str, timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(sqlite3_shell_path());
    cmd.args(args).current_dir(cwd);
    run_with_timeout(cmd, Some(input.as_bytes()), timeout)
}

/// Quotes an argument of a shell dot-command (`.load "…"`): double quotes, with `\` and
/// `"` escaped as the shell's argument parser expects.
pub fn shell_quote_arg(arg: &str) -> String {
    let mut s = String::with_capacity(arg.len() + 2);
    s.push('"');
    for c in arg.chars() {
        if c == '\\' || c == '"' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Quotes a string as an SQL literal.
pub fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------
// Running a child to completion

/// What a finished (or killed) child printed.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The command line, for messages.
    pub command: String,
    /// The exit status; `None` when it could not be waited for.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The child outlived its timeout and was killed.
    pub timed_out: bool,
}

impl RunOutput {
    /// Exited with status 0 within the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// Panics with everything the child printed unless it succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what} failed:\n{self}");
        self
    }

    /// `key=value` lines of stdout (later keys win); other lines are ignored.
    pub fn kv(&self) -> BTreeMap<String, String> {
        parse_kv(&self.stdout)
    }

    /// The value of `key=` in stdout, or a panic showing the whole output.
    pub fn value(&self, key: &str) -> String {
        match self.kv().remove(key) {
            Some(v) => v,
            None => panic!("no `{key}=` line in the output of {self}"),
        }
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        match (self.timed_out, self.status) {
            (true, _) => writeln!(f, "status: killed after timeout")?,
            (false, Some(s)) => writeln!(f, "status: {s}")?,
            (false, None) => writeln!(f, "status: unknown")?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(d) = cmd.get_current_dir() {
        s.push_str(&format!("   (in {})", d.display()));
    }
    s
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd`, feeding `input` (if any) on stdin, and kills it after `timeout`.
/// A child that cannot be started is reported as a panic naming the program.
pub fn run_with_timeout(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> RunOutput {
    let command = describe(&cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot start `{command}`: {e}"),
    };
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                // A child that exits early closes the pipe; its output tells why.
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    RunOutput {
        command,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

// ---------------------------------------------------------------------------------------
// Driving a long-lived child line by line

/// A child process driven one line at a time: commands on its stdin, replies read from
/// its stdout. Killed on drop if still running.
pub struct LineProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout_seen: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl LineProcess {
    /// Spawns `cmd` with piped stdio. `name` labels messages.
    pub fn spawn(name: &str, mut cmd: Command) -> LineProcess {
        let command = describe(&cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start {name} (`{command}`): {e}"),
        };
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let stdout_seen = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let seen = Arc::clone(&stdout_seen);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = seen.lock() {
                        s.push(line.clone());
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Ok(mut s) = sink.lock() {
                                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                            }
                        }
                    }
                }
            }));
        }
        LineProcess {
            name: format!("{name} (`{command}`, pid {})", child.id()),
            child,
            stdin,
            lines,
            stdout_seen,
            stderr,
            readers,
        }
    }

    /// The label used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the child has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Everything the child has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout_seen
            .lock()
            .map(|s| s.join("\n"))
            .unwrap_or_default()
    }

    fn report(&self, why: &str) -> String {
        format!(
            "{}: {why}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
            self.name,
            self.stdout_so_far(),
            self.stderr_so_far()
        )
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let res = match self.stdin.as_mut() {
            Some(s) => s
                .write_all(line.as_bytes())
                .and_then(|_| s.write_all(b"\n"))
                .and_then(|_| s.flush()),
            None => Err(io::Error::other("stdin already closed")),
        };
        if let Err(e) = res {
            panic!("{}", self.report(&format!("cannot send {line:?}: {e}")));
        }
    }

    /// The next stdout line for which `want` returns `Some`, skipping others; panics
    /// (with the child's output) if none arrives within `timeout` or stdout closes.
    pub fn expect<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        want: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = want(&line) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}", self.report(&format!("no {what} within {timeout:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Let the stderr reader catch up before reporting.
                    let _ = self.child.try_wait();
                    thread::sleep(Duration::from_millis(50));
                    panic!(
                        "{}",
                        self.report(&format!("stdout closed while waiting for {what}"))
                    )
                }
            }
        }
    }

    /// Closes stdin and waits up to `timeout` for the child to exit; kills it after
    /// that. Returns the exit status and the complete stderr.
    pub fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (status, self.stderr_so_far())
    }

    /// [`finish`](Self::finish), panicking unless the child exited with status 0.
    pub fn finish_ok(&mut self, timeout: Duration) {
        let (status, _) = self.finish(timeout);
        if !status.is_some_and(|s| s.success()) {
            panic!(
                "{}",
                self.report(&format!(
                    "did not exit cleanly within {timeout:?}: {status:?}"
                ))
            );
        }
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing what the hosts print

/// `key=value` lines (split at the first `=`, both sides trimmed); later keys win.
pub fn parse_kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace))
        .collect()
}

/// Parses `walguard_stats()` output: a flat JSON object of non-negative integers, e.g.
/// `{"files_opened":3,"db_opened":1}`.
pub fn parse_stats_json(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let t = text.trim();
    let body = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("not a JSON object: {text:?}"))?;
    let mut map = BTreeMap::new();
    if body.trim().is_empty() {
        return Ok(map);
    }
    for part in body.split(',') {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("bad member {part:?} in {text:?}"))?;
        let k = k.trim();
        let k = k
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .ok_or_else(|| format!("unquoted key {k:?} in {text:?}"))?;
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|e| format!("value of {k:?} is not a counter ({e}) in {text:?}"))?;
        if map.insert(k.to_owned(), v).is_some() {
            return Err(format!("duplicate key {k:?} in {text:?}"));
        }
    }
    Ok(map)
}

/// `(type, name)` of the symbols `nm` lists with these flags (binutils' `nm`).
pub fn nm(path: &Path, flags: &[&str]) -> Vec<(String, String)> {
    let mut cmd = Command::new(nm_path());
    cmd.args(flags).arg(path);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("nm");
    out.stdout
        .lines()
        .filter_map(|l| {
            // "0000000000012345 T name" or, for undefined symbols, "                 U name".
            let mut w = l.split_whitespace().rev();
            let name = w.next()?;
            let ty = w.next()?;
            Some((ty.to_owned(), name.to_owned()))
        })
        .collect()
}

/// SQLite's public API (`sqlite3_open_v2`) and internal functions (`sqlite3BtreeOpen`,
/// `sqlite3VdbeExec`) of the amalgamation. Rust-mangled names start with `_ZN`/`_R`.
pub fn is_sqlite_symbol(name: &str) -> bool {
    let base = name.split('@').next().unwrap_or(name);
    base.starts_with("sqlite3_")
        || base
            .strip_prefix("sqlite3")
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_uppercase())
}

/// `version` of the `[package]` table of the workspace's root `Cargo.toml`.
pub fn crate_version() -> String {
    let path = workspace_root().join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line
                .strip_prefix("version")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
            {
                return v.trim().trim_matches('"').to_owned();
            }
        }
    }
    panic!("no [package] version in {}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_round_trips_walguards_format() {
        let json = walguard::Stats::default().to_json();
        let m = parse_stats_json(&json).expect("parse");
        assert_eq!(m.len(), walguard::Stats::default().fields().len());
        assert_eq!(m.get("db_opened"), Some(&0));
        assert!(parse_stats_json("{\"a\":1,\"a\":2}").is_err());
        assert!(parse_stats_json("[1]").is_err());
        assert!(parse_stats_json("{\"a\":-1}").is_err());
    }

    #[test]
    fn kv_lines_and_artifacts() {
        let kv = parse_kv("noise\nvfs=walguard\nn = 3\nbad key=x\n");
        assert_eq!(kv.get("vfs").map(String::as_str), Some("walguard"));
        assert_eq!(kv.get("n").map(String::as_str), Some("3"));
        assert!(!kv.contains_key("bad key"));
        let msg = r#"{"reason":"compiler-artifact","filenames":["/t/ext/release/libwalguard.so"]}"#;
        assert_eq!(
            artifact_from_messages(msg),
            vec![PathBuf::from("/t/ext/release/libwalguard.so")]
        );
        assert_eq!(shell_quote_arg(r#"a b"c\d"#), r#""a b\"c\\d""#);
        assert_eq!(sql_quote("it's"), "'it''s'");
    }
}
