//! What reaches processes without code changes (issue 18), made once per test process:
//!
//! - [`built`]: walguard's loadable extension ([`extension_path`]), its preload library
//!   `libwalguard_preload.so` (the `preload/` crate) and the `walguard` binary (`cli/`),
//!   the last two built by a nested `cargo build --release --target-dir target/ext`
//!   under the extension build's lock, so the three sit in one directory (the binary
//!   finds the libraries next to itself, as in an install);
//! - [`wheel`]: the Python wheel packed from those three (`scripts/build-wheel --so
//!   --preload --cli`);
//! - [`venv`]: a fresh venv of a given Python with the wheel installed `--no-index` (and
//!   apsw from the wheelhouse `scripts/setup` fills, on request);
//! - [`noload_python`]: a Python whose `sqlite3` module has no `enable_load_extension`
//!   (this machine's pyenv `python3`), for `walguard.install()`'s auto-extension path;
//! - [`PyWorker`] and [`peek_run`]: long-lived `py/package_worker.py` processes and the
//!   header-peek split driven through them (shared with `tests/python_package.rs`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::disrupt::{self, ShmMapping};
use crate::extension::{
    extension_target_dir, py_script, python3_path, run_with_timeout, try_extension_path,
    workspace_root, FileLock, LineProcess, RunOutput, SCRIPT_TIMEOUT,
};
use crate::worker::parse_rows;

/// A guard against hangs of venv creation and pip, not a performance assertion.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A guard against hangs of one worker reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable naming the wheelhouse (as in `scripts/setup`).
pub const WHEELHOUSE_ENV: &str = "WALGUARD_WHEELHOUSE";
/// The environment variable naming a Python without `enable_load_extension`.
pub const NOLOAD_PYTHON_ENV: &str = "WALGUARD_NOLOAD_PYTHON";
/// Set for `py/` scripts when no such Python exists here: they then take Debian's
/// Python's `sqlite3.connect` away from `enable_load_extension` (as
/// `package_checks.py` always did), so the same path is exercised.
pub const SIMULATE_NOLOAD_ENV: &str = "WALGUARD_TEST_SIMULATE_NOLOAD";

// ---------------------------------------------------------------------------------------
// The three artifacts

/// Paths of what the tests run or pack.
#[derive(Debug, Clone)]
pub struct Built {
    /// `libwalguard.so`.
    pub extension: PathBuf,
    /// `libwalguard_preload.so`.
    pub preload: PathBuf,
    /// The `walguard` binary (doctor, exec).
    pub cli: PathBuf,
}

/// The extension, the preload library and the `walguard` binary, built on first use in
/// this process. Panics with the build's output if they cannot be built.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<Built, String> {
    let extension = try_extension_path()?;
    let target_dir = extension_target_dir();
    let lock_path = target_dir.join("walguard-ext-build.lock");
    let _lock = FileLock::exclusive(&lock_path)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "walguard-preload",
            "-p",
            "walguard-cli",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null());
    let shown = format!(
        "{} build --release -p walguard-preload -p walguard-cli --target-dir {}",
        Path::new(&cargo).display(),
        target_dir.display()
    );
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let release = target_dir.join("release");
    let b = Built {
        extension,
        preload: release.join("libwalguard_preload.so"),
        cli: release.join("walguard"),
    };
    for p in [&b.preload, &b.cli] {
        if !p.is_file() {
            return Err(format!("`{shown}` succeeded but made no {}", p.display()));
        }
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------
// A temporary directory for the whole test process

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture_dir() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// A directory removed when the test process exits (wheel, venvs).
pub fn fixture_dir() -> &'static Path {
    FIXTURE_DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("walguard-reach-")
            .tempdir()
            .expect("create a temporary directory")
            .keep();
        // SAFETY: registers a plain `extern "C" fn()` that only reads a OnceLock and
        // removes a directory; it runs at process exit, after the tests.
        unsafe { libc::atexit(remove_fixture_dir) };
        dir
    })
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walguard-reach-test-")
        .tempdir()
        .expect("create a temporary directory")
}

fn run_step(what: &str, cmd: Command, timeout: Duration) -> Result<RunOutput, String> {
    let out = run_with_timeout(cmd, None, timeout);
    if out.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed:\n{out}"))
    }
}

// ---------------------------------------------------------------------------------------
// The wheel and venvs

/// The wheel, packed once per test process from [`built`].
pub fn wheel() -> &'static Path {
    static WHEEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match WHEEL.get_or_init(|| {
        let b = built();
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("scripts").join("build-wheel"))
            .arg("--so")
            .arg(&b.extension)
            .arg("--preload")
            .arg(&b.preload)
            .arg("--cli")
            .arg(&b.cli)
            .arg("--out")
            .arg(fixture_dir().join("wheels"));
        let out = run_step("scripts/build-wheel", cmd, SCRIPT_TIMEOUT)?;
        let wheel = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
        if wheel.is_file() {
            Ok(wheel)
        } else {
            Err(format!(
                "scripts/build-wheel did not print the wheel's path last:\n{out}"
            ))
        }
    }) {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    }
}

/// `$WALGUARD_WHEELHOUSE`, else `$HOME/.cache/walguard-wheelhouse` (`scripts/setup`).
pub fn wheelhouse() -> PathBuf {
    if let Some(p) = std::env::var_os(WHEELHOUSE_ENV) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache").join("walguard-wheelhouse")
}

/// `pip` of a venv, ignoring the user's pip configuration and environment.
pub fn pip(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args([
        "-I",
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// A venv with the wheel installed.
#[derive(Debug)]
pub struct Venv {
    /// The Python it was made from.
    pub base: PathBuf,
    /// The venv's interpreter (`bin/python`).
    pub python: PathBuf,
    /// The `walguard` command pip made (`bin/walguard`).
    pub walguard: PathBuf,
    /// Its `site-packages/walguard` directory.
    pub package: PathBuf,
}

/// A fresh venv of `base` with the wheel (and apsw from the wheelhouse when `apsw`),
/// made once per (base, apsw) in this test process.
pub fn venv(base: &Path, apsw: bool) -> &'static Venv {
    static VENVS: Mutex<BTreeMap<(PathBuf, bool), &'static Venv>> = Mutex::new(BTreeMap::new());
    let key = (base.to_path_buf(), apsw);
    let mut venvs = VENVS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = venvs.get(&key) {
        return v;
    }
    let v: &'static Venv = match make_venv(base, apsw, venvs.len()) {
        Ok(v) => Box::leak(Box::new(v)),
        Err(e) => panic!("{e}"),
    };
    venvs.insert(key, v);
    v
}

fn make_venv(base: &Path, apsw: bool, n: usize) -> Result<Venv, String> {
    let wheel = wheel();
    let dir = fixture_dir().join(format!("venv{n}"));
    let mut mk = Command::new(base);
    mk.args(["-I", "-m", "venv"]).arg(&dir);
    run_step(
        &format!(
            "creating a venv of {} (Debian's needs python3-venv: run scripts/setup)",
            base.display()
        ),
        mk,
        INSTALL_TIMEOUT,
    )?;
    let python = dir.join("bin").join("python");
    let mut install = pip(&python);
    install.args(["install", "--no-index"]).arg(wheel);
    run_step("pip install --no-index <wheel>", install, INSTALL_TIMEOUT)?;
    if apsw {
        let house = wheelhouse();
        let has_apsw = fs::read_dir(&house).ok().is_some_and(|entries| {
            entries.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("apsw-") && n.ends_with(".whl")
            })
        });
        if !has_apsw {
            return Err(format!(
                "no apsw wheel in {}: run scripts/setup (it downloads one for \
                 /usr/bin/python3 there; set {WHEELHOUSE_ENV} to use another directory)",
                house.display()
            ));
        }
        let mut cmd = pip(&python);
        cmd.args(["install", "--no-index", "--find-links"])
            .arg(&house)
            .arg("apsw");
        run_step(
            &format!(
                "pip install --no-index --find-links {} apsw",
                house.display()
            ),
            cmd,
            INSTALL_TIMEOUT,
        )?;
    }
    let mut where_cmd = Command::new(&python);
    where_cmd.args([
        "-I",
        "-c",
        "import os, walguard; print(os.path.dirname(walguard.__file__))",
    ]);
    let out = run_step("locating the installed package", where_cmd, SCRIPT_TIMEOUT)?;
    Ok(Venv {
        base: base.to_path_buf(),
        walguard: dir.join("bin").join("walguard"),
        package: PathBuf::from(out.stdout.trim()),
        python,
    })
}

/// The venv of Debian's `/usr/bin/python3` (with apsw).
pub fn debian_venv() -> &'static Venv {
    venv(&python3_path(), true)
}

// ---------------------------------------------------------------------------------------
// A Python without enable_load_extension

/// Whether `python`'s `sqlite3.Connection` has `enable_load_extension` (None: it does not
/// run).
pub fn has_enable_load_extension(python: &Path) -> Option<bool> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-I",
        "-c",
        "import sqlite3; print(hasattr(sqlite3.Connection, 'enable_load_extension'))",
    ]);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    if !out.success() {
        return None;
    }
    match out.stdout.trim() {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// `$WALGUARD_NOLOAD_PYTHON`, else pyenv's global `python3` (`$PYENV_ROOT/version`), else
/// any pyenv `3.x` whose `sqlite3` module has no `enable_load_extension`. `None` when
/// this machine has none (then the tests simulate one, see [`SIMULATE_NOLOAD_ENV`]).
pub fn noload_python() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(p) = std::env::var_os(NOLOAD_PYTHON_ENV) {
                let p = PathBuf::from(p);
                assert_eq!(
                    has_enable_load_extension(&p),
                    Some(false),
                    "{NOLOAD_PYTHON_ENV}={} must be a Python whose sqlite3 module has no \
                     enable_load_extension",
                    p.display()
                );
                return Some(p);
            }
            let root = std::env::var_os("PYENV_ROOT")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))?;
            let mut candidates = Vec::new();
            if let Ok(v) = fs::read_to_string(root.join("version")) {
                if let Some(first) = v.split_whitespace().next() {
                    candidates.push(root.join("versions").join(first).join("bin/python3"));
                }
            }
            let mut all: Vec<PathBuf> = fs::read_dir(root.join("versions"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("3."))
                })
                .map(|p| p.join("bin/python3"))
                .collect();
            all.sort();
            all.reverse();
            candidates.extend(all);
            candidates
                .into_iter()
                .find(|p| p.is_file() && has_enable_load_extension(p) == Some(false))
        })
        .as_deref()
}

/// The Python to run as "the one without `enable_load_extension`" and the environment
/// to give its scripts: the real one, else Debian's with [`SIMULATE_NOLOAD_ENV`].
pub fn noload_or_simulated() -> (PathBuf, Vec<(&'static str, &'static str)>) {
    match noload_python() {
        Some(p) => (p.to_path_buf(), Vec::new()),
        None => {
            eprintln!(
                "note: no Python without enable_load_extension on this machine (pyenv's \
                 python3, or {NOLOAD_PYTHON_ENV}); Debian's python3 stands in with its \
                 sqlite3.connect made to return connections without it"
            );
            (python3_path(), vec![(SIMULATE_NOLOAD_ENV, "1")])
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scripts and workers

/// `python -I -B vfs-tests/py/<script> args...` in `cwd`.
pub fn py_command(python: &Path, script: &str, args: &[&OsStr], cwd: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("-I")
        .arg("-B")
        .arg(py_script(script))
        .args(args)
        .current_dir(cwd);
    cmd
}

/// The same, run under `walguard exec --` with the built binary.
pub fn exec_command(program: &Path, args: &[&OsStr], cwd: &Path) -> Command {
    let mut cmd = Command::new(&built().cli);
    cmd.arg("exec")
        .arg("--")
        .arg(program)
        .args(args)
        .current_dir(cwd);
    cmd
}

/// A `package_worker.py` process.
pub struct PyWorker {
    pub name: String,
    pub pid: u32,
    /// How walguard reached it: `load`, `autoext`, `preload` or `none`.
    pub reached_by: String,
    proc: LineProcess,
}

impl PyWorker {
    /// `package_worker.py MODE DB NAME` run by `python` (`mode`: `plain`, `install` or
    /// `apsw`), with `env` added.
    pub fn command(python: &Path, mode: &str, db: &Path, name: &str) -> Command {
        let dir = db.parent().expect("db has a directory");
        py_command(
            python,
            "package_worker.py",
            &[OsStr::new(mode), db.as_os_str(), OsStr::new(name)],
            dir,
        )
    }

    /// Starts `cmd` (a `package_worker.py` command line) and waits for its ready line.
    pub fn spawn(cmd: Command, name: &str) -> PyWorker {
        let mut proc = LineProcess::spawn(&format!("python worker {name}"), cmd);
        let (pid, reached_by) = proc.expect(REPLY_TIMEOUT, "the ready line", |l| {
            let rest = l.strip_prefix("ready ")?;
            let mut pid = None;
            let mut by = String::from("?");
            for w in rest.split_whitespace() {
                if let Some(p) = w.strip_prefix("pid=") {
                    pid = p.parse::<u32>().ok();
                } else if let Some(b) = w.strip_prefix("walguard=") {
                    by = b.to_owned();
                }
            }
            Some((pid?, by))
        });
        PyWorker {
            name: name.to_owned(),
            pid,
            reached_by,
            proc,
        }
    }

    pub fn send(&mut self, cmd: &str) {
        self.proc.send(cmd);
    }

    /// The reply to the last command sent: `Ok(payload)` or `Err(message)`.
    pub fn reply(&mut self, cmd: &str) -> Result<String, String> {
        let name = self.name.clone();
        self.proc
            .expect(REPLY_TIMEOUT, &format!("the reply to {cmd:?}"), |l| {
                if l == "ok" {
                    Some(Ok(String::new()))
                } else if let Some(p) = l.strip_prefix("ok ") {
                    Some(Ok(p.to_owned()))
                } else {
                    l.strip_prefix("err ")
                        .map(|e| Err(format!("worker {name}: {cmd:?} failed: {e}")))
                }
            })
    }

    pub fn request(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd);
        self.reply(cmd)
    }

    pub fn ok(&mut self, cmd: &str) -> String {
        self.request(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `-shm` of `db` mapped into this worker, from `/proc/PID/maps`.
    pub fn shm(&self, db: &Path) -> Option<ShmMapping> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        disrupt::find_shm_mapping(&maps, db)
    }

    /// What the worker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr_so_far()
    }

    pub fn quit(mut self) {
        self.send("quit");
        self.proc
            .expect(REPLY_TIMEOUT, "bye", |l| (l == "bye").then_some(()));
        self.proc.finish_ok(REPLY_TIMEOUT);
    }
}

/// Whether `/proc/PID/maps` shows a file whose name ends with `file_name`.
pub fn maps_file(pid: u32, file_name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.lines().any(|l| l.trim_end().ends_with(file_name)))
}

// ---------------------------------------------------------------------------------------
// The header-peek split, from Python

/// What one header-peek run saw.
#[derive(Debug, Default)]
pub struct PeekOutcome {
    pub acked: Vec<(i64, String)>,
    pub errors: Vec<String>,
    pub missing_live: Vec<String>,
    pub missing_final: Vec<String>,
    pub integrity_live: String,
    pub integrity_final: String,
    /// Deleted `-wal`/`-shm` descriptors of the database, in any process.
    pub deleted_held: Vec<disrupt::DeletedSidecar>,
    /// The `-shm` each worker maps: A, C, D.
    pub shm: Vec<(String, Option<ShmMapping>)>,
    pub a_pid: u32,
    pub stats: Vec<(String, String)>,
    /// How walguard reached each worker (its ready line).
    pub reached_by: Vec<(String, String)>,
}

impl PeekOutcome {
    pub fn damaged(&self) -> bool {
        !self.missing_live.is_empty()
            || !self.missing_final.is_empty()
            || self.integrity_live != "ok"
            || self.integrity_final != "ok"
    }

    pub fn one_shm(&self) -> bool {
        let maps: Vec<&ShmMapping> = self.shm.iter().filter_map(|(_, m)| m.as_ref()).collect();
        maps.len() == self.shm.len() && maps.iter().all(|m| !m.deleted && *m == maps[0])
    }

    pub fn a_holds_deleted_shm(&self) -> bool {
        self.deleted_held
            .iter()
            .any(|d| d.pid == self.a_pid && d.target.ends_with("-shm (deleted)"))
    }
}

fn step(w: &mut PyWorker, cmd: &str, out: &mut PeekOutcome) -> Option<String> {
    match w.request(cmd) {
        Ok(p) => Some(p),
        Err(e) => {
            out.errors.push(e);
            None
        }
    }
}

fn write(w: &mut PyWorker, n: usize, out: &mut PeekOutcome) {
    if let Some(p) = step(w, &format!("write {n}"), out) {
        out.acked.extend(parse_rows(&p));
    }
}

fn verify(w: &mut PyWorker, out: &mut PeekOutcome) -> (Vec<String>, String) {
    let seen = step(w, "rows", out)
        .map(|p| parse_rows(&p))
        .unwrap_or_default();
    let missing = out
        .acked
        .iter()
        .filter(|(_, tag)| !seen.iter().any(|(_, t)| t == tag))
        .map(|(id, tag)| format!("{id}:{tag}"))
        .collect();
    let integrity = step(w, "integrity", out).unwrap_or_else(|| "query failed".into());
    (missing, integrity)
}

fn record_stats(w: &mut PyWorker, out: &mut PeekOutcome) {
    let s = step(w, "stats", out).unwrap_or_default();
    out.stats.push((w.name.clone(), s));
}

/// A: WAL, writes, peeks at the header (its POSIX locks on the db are gone); B opens,
/// writes, closes (on unix, believing it is last: checkpoint and unlink of -wal/-shm);
/// C opens (fresh sidecars) and writes; A writes into its deleted sidecars and
/// checkpoints; D and, after everyone closed, E read. `spawn(db, name)` starts each
/// worker on `db`, a fresh database in a temporary directory.
pub fn peek_run(spawn: &dyn Fn(&Path, &str) -> PyWorker) -> PeekOutcome {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let mut out = PeekOutcome::default();
    let mut a = spawn(&db, "A");
    out.a_pid = a.pid;
    out.reached_by.push(("A".into(), a.reached_by.clone()));
    assert_eq!(a.ok("wal"), "wal");
    write(&mut a, 3, &mut out);
    assert_eq!(a.ok("peek"), "100", "A's peek reads the 100-byte header");

    let mut b = spawn(&db, "B");
    write(&mut b, 3, &mut out);
    record_stats(&mut b, &mut out);
    step(&mut b, "close", &mut out);
    b.quit();

    let mut c = spawn(&db, "C");
    write(&mut c, 3, &mut out);
    write(&mut a, 3, &mut out);
    step(&mut a, "checkpoint", &mut out);
    out.deleted_held = disrupt::scan_deleted_sidecars(&db);
    out.shm.push(("A".into(), a.shm(&db)));
    out.shm.push(("C".into(), c.shm(&db)));

    let mut d = spawn(&db, "D");
    let (missing, integrity) = verify(&mut d, &mut out);
    out.missing_live = missing;
    out.integrity_live = integrity;
    out.shm.push(("D".into(), d.shm(&db)));
    for w in [&mut a, &mut c, &mut d] {
        record_stats(w, &mut out);
    }
    d.quit();
    a.quit();
    c.quit();

    let mut e = spawn(&db, "E");
    let (missing, integrity) = verify(&mut e, &mut out);
    out.missing_final = missing;
    out.integrity_final = integrity;
    e.quit();
    out
}
