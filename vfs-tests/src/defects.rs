//! Helpers of the defect regression tests (issue 10): a line-driven Debian python3
//! process on the system SQLite (`vfs-tests/py/defect_driver.py`), with or without the
//! walguard extension; `/proc/locks` as a list; LD_PRELOAD shims from
//! `vfs-tests/shim/*.c`, compiled with `cc`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::extension::{self, LineProcess};

/// How long one driver command may take (a guard against hangs, not a timing assertion).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `defect_driver.py` process.
pub struct Driver {
    p: LineProcess,
    label: String,
}

/// An error reply: SQLite's extended result code (-1: not SQLite's) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: i64,
    pub msg: String,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)
    }
}

impl Driver {
    /// Starts the driver in `cwd`; with `walguard`, loads the extension (default VFS)
    /// first. `env` is added to the child's environment.
    pub fn spawn(label: &str, cwd: &Path, walguard: bool, env: &[(&str, &OsStr)]) -> Driver {
        let mut cmd: Command = extension::python_command("defect_driver.py", &[], cwd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let p = LineProcess::spawn(label, cmd);
        let mut d = Driver {
            p,
            label: label.to_owned(),
        };
        if walguard {
            let ext = extension::extension_path();
            d.ok(&format!("load {}", ext.display()));
        }
        d
    }

    /// Sends one command and returns its reply.
    pub fn cmd(&mut self, line: &str) -> Result<String, Fail> {
        self.p.send(line);
        let reply = self
            .p
            .expect(REPLY_TIMEOUT, &format!("a reply to {line:?}"), |l| {
                Some(l.to_owned())
            });
        if let Some(rest) = reply.strip_prefix("ok") {
            return Ok(rest.trim().to_owned());
        }
        let rest = reply.strip_prefix("err ").unwrap_or(&reply);
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        Err(Fail {
            code: code.parse().unwrap_or(-1),
            msg: msg.to_owned(),
        })
    }

    /// [`Driver::cmd`], panicking (with the process's output) on an error reply.
    pub fn ok(&mut self, line: &str) -> String {
        match self.cmd(line) {
            Ok(v) => v,
            Err(e) => panic!(
                "{}: {line:?} failed: {e}\n--- stderr so far ---\n{}",
                self.label,
                self.p.stderr_so_far()
            ),
        }
    }

    /// The process's pid.
    pub fn pid(&mut self) -> u32 {
        self.ok("pid").parse().expect("pid reply is a number")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.p.stderr_so_far()
    }

    /// `exit` (closes every connection) and waits for a clean exit; returns stderr.
    pub fn exit(mut self) -> String {
        self.ok("exit");
        self.p.finish_ok(REPLY_TIMEOUT);
        self.p.stderr_so_far()
    }

    /// `hardexit`: the process leaves with `os._exit(0)`, closing nothing.
    pub fn hard_exit(mut self) {
        self.ok("hardexit");
        self.p.finish_ok(REPLY_TIMEOUT);
    }
}

/// One line of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLock {
    /// `POSIX`, `OFDLCK`, `FLOCK`, ...
    pub class: String,
    /// `READ` or `WRITE`.
    pub kind: String,
    /// The owner's pid (-1 for OFD locks).
    pub pid: i64,
    pub ino: u64,
    pub start: u64,
    /// Inclusive; `u64::MAX` for "EOF".
    pub end: u64,
}

/// `/proc/locks`, parsed (blocked-waiter lines `->` are skipped). Read until two reads
/// agree: the kernel serves it a page per read, so one read of a changing table can tear.
pub fn proc_locks() -> Vec<ProcLock> {
    let mut last = String::new();
    for _ in 0..10 {
        let now = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        if now == last {
            break;
        }
        last = now;
    }
    last.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[1] == "->" {
                return None;
            }
            let ino = f[5].rsplit(':').next()?.parse().ok()?;
            Some(ProcLock {
                class: f[1].to_owned(),
                kind: f[3].to_owned(),
                pid: f[4].parse().ok()?,
                ino,
                start: f[6].parse().ok()?,
                end: if f[7] == "EOF" {
                    u64::MAX
                } else {
                    f[7].parse().ok()?
                },
            })
        })
        .collect()
}

/// The inode number of `path`.
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Compiles `vfs-tests/shim/<name>.c` into a shared object under `out_dir` with `cc`
/// and returns its path.
pub fn build_shim(name: &str, out_dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shim")
        .join(format!("{name}.c"));
    assert!(src.is_file(), "shim source {} is missing", src.display());
    let so = out_dir.join(format!("{name}.so"));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (apt-get install -y gcc): {e}"));
    assert!(
        out.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    so
}
