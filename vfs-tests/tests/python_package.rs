//! The Python package (`python/`, built by `scripts/build-wheel`).
//!
//! Once per test binary the wheel is built from the extension the other tests use
//! (`scripts/build-wheel --so <extension_path()>`, so nothing is compiled twice) and
//! installed with `pip install --no-index` into a fresh venv of Debian's
//! `/usr/bin/python3`, together with apsw from the wheelhouse `scripts/setup` fills
//! (`$WALGUARD_WHEELHOUSE`, default `~/.cache/walguard-wheelhouse`). The tests then check:
//!
//! - the wheel itself (`python -m zipfile -l`): the `.so`, `__init__.py`, `py.typed`,
//!   metadata with the crate's version, a RECORD that matches, a manylinux tag equal to
//!   the highest `GLIBC_` version `objdump -T` lists, and no SQLite inside the packed
//!   `.so` (the `nm` checks of `extension_symbols.rs`, on the file taken from the wheel);
//! - the API in the venv (`py/package_checks.py`) and its errors (no extension loading,
//!   missing `.so`);
//! - two processes writing one WAL database, through `walguard.install()` (stdlib
//!   `sqlite3`, Debian's SQLite 3.40.1) and through `walguard.load(apsw_conn)` (apsw's
//!   SQLite), with `walguard.stats()` showing the opens went through walguard;
//! - the header-peek split from Python (`py/package_worker.py`): on Debian's SQLite 3.40.1
//!   a plain `open()/read()/close()` of the database splits the WAL index on the unix
//!   VFS (acknowledged rows lost, a deleted `-shm` still mapped); with the package
//!   installed the same sequence is clean;
//! - the README's examples (`python/README.md`) run as written;
//! - a PEP 517 frontend (`pip wheel --no-index ./python`) builds the same wheel offline.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use vfs_tests::disrupt::{self, ShmMapping};
use vfs_tests::extension::{
    extension_path, nm_path, py_script, python3_path, run_with_timeout, workspace_root,
    LineProcess, RunOutput, ENTRY_DEFAULT, ENTRY_NODEFAULT, SCRIPT_TIMEOUT,
};
use vfs_tests::worker::{parse_rows, stat};

/// A guard against hangs of venv creation and pip, not a performance assertion.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A guard against hangs of one worker reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable naming the wheelhouse (as in `scripts/setup`).
const WHEELHOUSE_ENV: &str = "WALGUARD_WHEELHOUSE";

// ---------------------------------------------------------------------------------------
// The wheel and the venv, made once per test binary

struct Fixture {
    wheel: PathBuf,
    /// The venv's interpreter.
    python: PathBuf,
}

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture_dir() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    match FIXTURE.get_or_init(make_fixture) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// `$WALGUARD_WHEELHOUSE`, else `$HOME/.cache/walguard-wheelhouse` (`scripts/setup`).
fn wheelhouse() -> PathBuf {
    if let Some(p) = std::env::var_os(WHEELHOUSE_ENV) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache").join("walguard-wheelhouse")
}

fn run_step(what: &str, cmd: Command, timeout: Duration) -> Result<RunOutput, String> {
    let out = run_with_timeout(cmd, None, timeout);
    if out.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed:\n{out}"))
    }
}

/// `pip` of the venv, ignoring the user's pip configuration and environment.
fn pip(python: &Path) -> Command {
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

fn make_fixture() -> Result<Fixture, String> {
    let dir = tempfile::Builder::new()
        .prefix("walguard-pypkg-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        .keep();
    if FIXTURE_DIR.set(dir.clone()).is_ok() {
        // SAFETY: registers a plain `extern "C" fn()` that only reads a OnceLock and
        // removes a directory; it runs at process exit, after the tests.
        unsafe { libc::atexit(remove_fixture_dir) };
    }

    let so = extension_path();
    let mut build = Command::new("bash");
    build
        .arg(workspace_root().join("scripts").join("build-wheel"))
        .arg("--so")
        .arg(&so)
        .arg("--out")
        .arg(dir.join("wheels"));
    let out = run_step("scripts/build-wheel", build, SCRIPT_TIMEOUT)?;
    let wheel = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
    if !wheel.is_file() {
        return Err(format!(
            "scripts/build-wheel did not print the wheel's path last:\n{out}"
        ));
    }

    let venv = dir.join("venv");
    let mut mk = Command::new(python3_path());
    mk.args(["-I", "-m", "venv"]).arg(&venv);
    run_step(
        "creating a venv (needs python3-venv: run scripts/setup)",
        mk,
        INSTALL_TIMEOUT,
    )?;
    let python = venv.join("bin").join("python");

    let mut install = pip(&python);
    install.args(["install", "--no-index"]).arg(&wheel);
    run_step("pip install --no-index <wheel>", install, INSTALL_TIMEOUT)?;

    let house = wheelhouse();
    let has_apsw = fs::read_dir(&house).ok().is_some_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("apsw-") && n.ends_with(".whl")
        })
    });
    if !has_apsw {
        return Err(format!(
            "no apsw wheel in {}: run scripts/setup (it downloads one for /usr/bin/python3 \
             there; set {WHEELHOUSE_ENV} to use another directory)",
            house.display()
        ));
    }
    let mut apsw = pip(&python);
    apsw.args(["install", "--no-index", "--find-links"])
        .arg(&house)
        .arg("apsw");
    run_step(
        &format!(
            "pip install --no-index --find-links {} apsw",
            house.display()
        ),
        apsw,
        INSTALL_TIMEOUT,
    )?;
    Ok(Fixture { wheel, python })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walguard-pypkg-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// `vfs-tests/py/<script> args...` under the venv's python, in isolated mode.
fn venv_command(script: &str, args: &[&OsStr], cwd: &Path) -> Command {
    let mut cmd = Command::new(&fixture().python);
    cmd.arg("-I")
        .arg("-B")
        .arg(py_script(script))
        .args(args)
        .current_dir(cwd);
    cmd
}

/// Runs a `package_checks.py` scenario in a fresh directory; its `key=value` output.
fn checks(scenario: &str) -> BTreeMap<String, String> {
    let dir = tempdir();
    let out = run_with_timeout(
        venv_command("package_checks.py", &[OsStr::new(scenario)], dir.path()),
        None,
        SCRIPT_TIMEOUT,
    );
    out.assert_success(&format!("package_checks.py {scenario}"));
    let kv = out.kv();
    assert_eq!(
        kv.get("done").map(String::as_str),
        Some("1"),
        "package_checks.py {scenario} did not finish:\n{out}"
    );
    kv
}

fn expect_kv(kv: &BTreeMap<String, String>, key: &str, want: &str, ctx: &str) {
    assert_eq!(
        kv.get(key).map(String::as_str),
        Some(want),
        "{ctx}: {key}; all output: {kv:#?}"
    );
}

fn counter(kv: &BTreeMap<String, String>, key: &str) -> u64 {
    match kv.get(key).map(|v| v.parse::<u64>()) {
        Some(Ok(n)) => n,
        _ => panic!("no counter {key} in {kv:#?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The wheel's contents

/// `version` of the `[package]` table of the workspace's root `Cargo.toml`.
fn crate_version() -> String {
    let path = workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
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

fn objdump_path() -> PathBuf {
    let p = Path::new("/usr/bin/objdump");
    if p.is_file() {
        return p.to_path_buf();
    }
    panic!("/usr/bin/objdump is missing: install binutils (apt-get install -y binutils)")
}

/// The highest `GLIBC_x.y` in `objdump -T` output.
fn max_glibc(objdump: &str) -> Option<(u32, u32)> {
    let mut best = None;
    for word in objdump.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        let Some(v) = word.strip_prefix("GLIBC_") else {
            continue;
        };
        let mut parts = v.split('.').map(str::parse::<u32>);
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
    }
    best
}

/// `(type, name)` of the symbols `nm` lists with these flags.
fn nm(path: &Path, flags: &[&str]) -> Vec<(String, String)> {
    let mut cmd = Command::new(nm_path());
    cmd.args(flags).arg(path);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("nm");
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().rev();
            let name = w.next()?;
            let ty = w.next()?;
            Some((ty.to_owned(), name.to_owned()))
        })
        .collect()
}

/// SQLite's public API (`sqlite3_open_v2`) and internal functions (`sqlite3BtreeOpen`).
fn is_sqlite_symbol(name: &str) -> bool {
    let base = name.split('@').next().unwrap_or(name);
    base.starts_with("sqlite3_")
        || base
            .strip_prefix("sqlite3")
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_uppercase())
}

fn is_entry_point(name: &str) -> bool {
    name == ENTRY_DEFAULT || name == ENTRY_NODEFAULT
}

#[test]
fn the_wheel_holds_the_extension_the_loader_and_the_crate_version() {
    let f = fixture();
    let version = crate_version();
    let arch = std::env::consts::ARCH;

    // The file name: walguard-<crate version>-py3-none-manylinux_X_Y_<arch>.whl
    let name = f
        .wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("walguard-{version}-py3-none-manylinux_");
    let suffix = format!("_{arch}.whl");
    let glibc_tag = name
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(&suffix))
        .unwrap_or_else(|| panic!("wheel name {name:?} is not {prefix}X_Y{suffix}"));

    // python -m zipfile -l
    let mut list = Command::new(python3_path());
    list.args(["-I", "-m", "zipfile", "-l"]).arg(&f.wheel);
    let listing = run_with_timeout(list, None, SCRIPT_TIMEOUT);
    listing.assert_success("python -m zipfile -l");
    let entries: BTreeSet<String> = listing
        .stdout
        .lines()
        .skip(1) // "File Name  Modified  Size"
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let dist_info = format!("walguard-{version}.dist-info");
    let expected: BTreeSet<String> = [
        "walguard/__init__.py".to_owned(),
        "walguard/py.typed".to_owned(),
        "walguard/libwalguard.so".to_owned(),
        format!("{dist_info}/METADATA"),
        format!("{dist_info}/WHEEL"),
        format!("{dist_info}/RECORD"),
    ]
    .into();
    assert_eq!(entries, expected, "wheel contents:\n{listing}");

    // RECORD lists every file with its hash and size.
    let rec = tempdir();
    let out = run_with_timeout(
        {
            let mut c = Command::new(python3_path());
            c.arg("-I")
                .arg("-B")
                .arg(py_script("package_checks.py"))
                .arg("record")
                .arg(&f.wheel)
                .current_dir(rec.path());
            c
        },
        None,
        SCRIPT_TIMEOUT,
    );
    out.assert_success("package_checks.py record");
    let kv = out.kv();
    expect_kv(&kv, "records", "1", "RECORD");
    expect_kv(&kv, "unlisted_or_wrong", "none", "RECORD");
    expect_kv(&kv, "listed_not_in_wheel", "none", "RECORD");
    expect_kv(&kv, "so_mode", "0o755", "the .so's mode");

    // python -m zipfile -e, then the metadata and the .so as packed.
    let x = tempdir();
    let mut extract = Command::new(python3_path());
    extract
        .args(["-I", "-m", "zipfile", "-e"])
        .arg(&f.wheel)
        .arg(x.path());
    run_with_timeout(extract, None, SCRIPT_TIMEOUT).assert_success("python -m zipfile -e");
    let read = |rel: &str| {
        let p = x.path().join(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    };
    let metadata = read(&format!("{dist_info}/METADATA"));
    let header: Vec<&str> = metadata.lines().take_while(|l| !l.is_empty()).collect();
    assert!(header.contains(&"Name: walguard"), "METADATA:\n{metadata}");
    assert!(
        header.contains(&format!("Version: {version}").as_str()),
        "METADATA must carry the crate's version {version}:\n{metadata}"
    );
    let wheel_file = read(&format!("{dist_info}/WHEEL"));
    let tag = format!("py3-none-manylinux_{glibc_tag}_{arch}");
    assert!(
        wheel_file.lines().any(|l| l == format!("Tag: {tag}")),
        "WHEEL does not carry the file name's tag {tag}:\n{wheel_file}"
    );
    assert!(
        wheel_file.lines().any(|l| l == "Root-Is-Purelib: false"),
        "a platform wheel installs into platlib:\n{wheel_file}"
    );

    let so = x.path().join("walguard").join("libwalguard.so");
    let packed = fs::read(&so).expect("read the packed .so");
    let built = fs::read(extension_path()).expect("read the built .so");
    assert!(
        packed == built,
        "the wheel's .so is not the library given to scripts/build-wheel --so"
    );

    // The tag is honest: manylinux_X_Y with X.Y the highest GLIBC_ version required.
    let mut od = Command::new(objdump_path());
    od.arg("-T").arg(&so);
    let dump = run_with_timeout(od, None, SCRIPT_TIMEOUT);
    dump.assert_success("objdump -T");
    let (major, minor) = max_glibc(&dump.stdout)
        .unwrap_or_else(|| panic!("objdump -T lists no GLIBC_ version:\n{dump}"));
    assert_eq!(
        glibc_tag,
        format!("{major}_{minor}"),
        "the tag must follow the highest GLIBC_ version objdump -T lists (GLIBC_{major}.{minor})"
    );

    // No second SQLite inside the packed .so (extension_symbols.rs, on this file).
    let defined = nm(&so, &["-D", "--defined-only"]);
    for entry in [ENTRY_DEFAULT, ENTRY_NODEFAULT] {
        assert!(
            defined.iter().any(|(ty, n)| n == entry && ty == "T"),
            "the packed .so does not export {entry}: {defined:#?}"
        );
    }
    let stray: Vec<_> = defined
        .iter()
        .filter(|(_, n)| is_sqlite_symbol(n) && !is_entry_point(n))
        .collect();
    assert!(stray.is_empty(), "the packed .so exports SQLite: {stray:?}");
    let hidden: Vec<_> = nm(&so, &["--defined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n) && !is_entry_point(n))
        .take(20)
        .collect();
    assert!(
        hidden.is_empty(),
        "the packed .so contains SQLite's own functions: {hidden:?}"
    );
    let imported: Vec<_> = nm(&so, &["-D", "--undefined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .collect();
    assert!(
        imported.is_empty(),
        "the packed .so imports SQLite symbols: {imported:?}"
    );
}

#[test]
fn max_glibc_reads_objdump_lines() {
    let text = "0 DF *UND* 0 (GLIBC_2.2.5) free\n0 DF *UND* 0 (GLIBC_2.34) pthread_key_create\n\
                0 w DF *UND* 0 (GLIBC_2.30) gettid\n0 DF *UND* 0 (GCC_4.2.0) _Unwind_GetIPInfo\n";
    assert_eq!(max_glibc(text), Some((2, 34)));
    assert_eq!(max_glibc("0 DF *UND* 0 (GCC_3.0) x\n"), None);
}

// ---------------------------------------------------------------------------------------
// The API in the venv

#[test]
fn the_installed_package_loads_walguard_and_reports_its_counters() {
    let kv = checks("api");
    let ctx = "package_checks.py api";
    expect_kv(&kv, "version", &crate_version(), ctx);
    expect_kv(&kv, "path_in_package", "1", ctx);
    expect_kv(&kv, "path_name", "libwalguard.so", ctx);
    expect_kv(&kv, "py_typed", "1", ctx);
    for f in ["install", "load", "stats", "loadable_path"] {
        expect_kv(&kv, &format!("doc.{f}"), "1", ctx);
    }
    expect_kv(&kv, "annotations.load", "conn,default,return", ctx);
    expect_kv(&kv, "stats_before.error", "WalguardError", ctx);
    expect_kv(&kv, "stats_before.names_install", "1", ctx);
    expect_kv(&kv, "journal_mode", "wal", ctx);
    expect_kv(&kv, "stats_type", "dict", ctx);
    expect_kv(&kv, "stats_all_int", "1", ctx);
    assert_eq!(counter(&kv, "after_install.registrations"), 1, "{kv:#?}");
    assert!(counter(&kv, "after_install.db_opened") >= 1, "{kv:#?}");
    assert!(counter(&kv, "after_install.wal_opened") >= 1, "{kv:#?}");
    assert!(counter(&kv, "after_install.shm_mapped") >= 1, "{kv:#?}");
    expect_kv(&kv, "stats_via_conn_equal", "1", ctx);
    expect_kv(&kv, "second_install", "ok", ctx);
    expect_kv(&kv, "loading_disabled_after_load", "1", ctx);
    expect_kv(&kv, "load_object.error", "TypeError", ctx);

    let kv = checks("nodefault");
    let ctx = "package_checks.py nodefault";
    expect_kv(&kv, "after_plain.db_opened", "0", ctx);
    expect_kv(&kv, "after_uri.db_opened", "1", ctx);
}

#[test]
fn errors_say_what_is_missing_and_what_to_do() {
    let kv = checks("no-loading");
    let ctx = "package_checks.py no-loading";
    expect_kv(&kv, "simulated_has_method", "0", ctx);
    expect_kv(&kv, "load.error", "ExtensionLoadingUnavailable", ctx);
    expect_kv(&kv, "load.is_walguard_error", "1", ctx);
    expect_kv(&kv, "load.says_built_without", "1", ctx);
    expect_kv(&kv, "load.names_configure_flag", "1", ctx);
    expect_kv(&kv, "load.suggests_apsw", "1", ctx);
    expect_kv(&kv, "load.names_python", "1", ctx);
    expect_kv(&kv, "install.error", "ExtensionLoadingUnavailable", ctx);

    let kv = checks("missing-so");
    let ctx = "package_checks.py missing-so";
    expect_kv(&kv, "imported_copy", "1", ctx);
    expect_kv(&kv, "path.error", "ExtensionNotFound", ctx);
    expect_kv(&kv, "path.is_file_not_found", "1", ctx);
    expect_kv(&kv, "path.names_path", "1", ctx);
    let expected = kv.get("expected").cloned().unwrap_or_default();
    expect_kv(&kv, "path.filename", &expected, ctx);
    expect_kv(&kv, "install.error", "ExtensionNotFound", ctx);
    expect_kv(&kv, "install.names_path", "1", ctx);
}

#[test]
fn one_process_with_sqlite3_and_apsw_shares_one_walguard_state() {
    let kv = checks("runtimes");
    let ctx = "package_checks.py runtimes";
    assert_ne!(
        kv.get("sqlite3_version"),
        kv.get("apsw_sqlite_version"),
        "two different SQLite runtimes expected: {kv:#?}"
    );
    expect_kv(&kv, "apsw_loading_restored", "1", ctx);
    expect_kv(&kv, "apsw_enabled_kept", "1", ctx);
    expect_kv(&kv, "journal_mode", "wal", ctx);
    expect_kv(&kv, "apsw_vfs", "walguard", ctx);
    expect_kv(&kv, "sqlite3_sees", "apsw,sqlite3", ctx);
    expect_kv(&kv, "apsw_sees", "apsw,sqlite3", ctx);
    expect_kv(&kv, "same_counters", "1", ctx);
    expect_kv(&kv, "registrations", "2", ctx);
    expect_kv(&kv, "db_opened", "2", ctx);
    expect_kv(&kv, "integrity", "ok", ctx);
}

// ---------------------------------------------------------------------------------------
// Worker processes (py/package_worker.py)

/// A `package_worker.py` process.
struct PyWorker {
    name: String,
    pid: u32,
    proc: LineProcess,
}

impl PyWorker {
    /// `mode`: `plain`, `install` or `apsw`.
    fn spawn(mode: &str, db: &Path, name: &str) -> PyWorker {
        let dir = db.parent().expect("db has a directory");
        let cmd = venv_command(
            "package_worker.py",
            &[OsStr::new(mode), db.as_os_str(), OsStr::new(name)],
            dir,
        );
        let mut proc = LineProcess::spawn(&format!("python worker {name} ({mode})"), cmd);
        let pid = proc.expect(REPLY_TIMEOUT, "the ready line", |l| {
            l.strip_prefix("ready pid=")?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        });
        PyWorker {
            name: name.to_owned(),
            pid,
            proc,
        }
    }

    fn send(&mut self, cmd: &str) {
        self.proc.send(cmd);
    }

    /// The reply to the last command sent: `Ok(payload)` or `Err(message)`.
    fn reply(&mut self, cmd: &str) -> Result<String, String> {
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

    fn request(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd);
        self.reply(cmd)
    }

    fn ok(&mut self, cmd: &str) -> String {
        self.request(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `-shm` of `db` mapped into this worker, from `/proc/PID/maps`.
    fn shm(&self, db: &Path) -> Option<ShmMapping> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        disrupt::find_shm_mapping(&maps, db)
    }

    fn quit(mut self) {
        self.send("quit");
        self.proc
            .expect(REPLY_TIMEOUT, "bye", |l| (l == "bye").then_some(()));
        self.proc.finish_ok(REPLY_TIMEOUT);
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Two processes of `mode` (`install` or `apsw`) write one WAL database concurrently.
fn two_writers(mode: &str) {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let mut p = PyWorker::spawn(mode, &db, "P");
    assert_eq!(p.ok("wal"), "wal", "{mode}: P could not switch to WAL");
    let mut q = PyWorker::spawn(mode, &db, "Q");
    assert_eq!(q.ok("wal"), "wal", "{mode}: Q sees another journal mode");

    let mut acked = BTreeSet::new();
    for _ in 0..5 {
        // Both get their command before either reply is read: they commit concurrently.
        p.send("write 4");
        q.send("write 4");
        for w in [&mut p, &mut q] {
            let rows = w.reply("write 4").unwrap_or_else(|e| panic!("{mode}: {e}"));
            acked.extend(parse_rows(&rows));
        }
    }
    assert_eq!(
        acked.len(),
        40,
        "{mode}: 40 commits acknowledged: {acked:?}"
    );
    let ids: BTreeSet<i64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids.len(),
        40,
        "{mode}: two commits got one rowid: {acked:?}"
    );
    for w in [&mut p, &mut q] {
        let seen: BTreeSet<(i64, String)> = parse_rows(&w.ok("rows")).into_iter().collect();
        assert_eq!(seen, acked, "{mode}: worker {} sees other rows", w.name);
        assert_eq!(w.ok("integrity"), "ok", "{mode}: worker {}", w.name);
    }
    let (ps, qs) = (p.shm(&db), q.shm(&db));
    assert!(
        ps.is_some() && ps == qs && ps.as_ref().is_some_and(|m| !m.deleted),
        "{mode}: both must map the same -shm: P {ps:?}, Q {qs:?}"
    );
    for w in [&mut p, &mut q] {
        let s = w.ok("stats");
        for (k, min) in [("db_opened", 1), ("wal_opened", 1), ("shm_mapped", 1)] {
            assert!(
                stat(&s, k).is_some_and(|n| n >= min),
                "{mode}: worker {} did not open the database through walguard ({k}): {s}",
                w.name
            );
        }
    }
    p.quit();
    q.quit();
    assert_eq!(
        list_dir(dir.path()),
        ["app.db"],
        "{mode}: the last closer checkpoints and removes -wal and -shm"
    );
}

#[test]
fn two_processes_write_one_wal_database_after_walguard_install() {
    two_writers("install");
}

#[test]
fn two_apsw_processes_write_one_wal_database_after_walguard_load() {
    two_writers("apsw");
}

// ---------------------------------------------------------------------------------------
// The header-peek split, from Python

#[derive(Debug, Default)]
struct Outcome {
    acked: Vec<(i64, String)>,
    errors: Vec<String>,
    missing_live: Vec<String>,
    missing_final: Vec<String>,
    integrity_live: String,
    integrity_final: String,
    /// Deleted `-wal`/`-shm` descriptors of the database, in any process.
    deleted_held: Vec<disrupt::DeletedSidecar>,
    /// The `-shm` each worker maps: A, C, D.
    shm: Vec<(String, Option<ShmMapping>)>,
    a_pid: u32,
    stats: Vec<(String, String)>,
}

impl Outcome {
    fn damaged(&self) -> bool {
        !self.missing_live.is_empty()
            || !self.missing_final.is_empty()
            || self.integrity_live != "ok"
            || self.integrity_final != "ok"
    }

    fn one_shm(&self) -> bool {
        let maps: Vec<&ShmMapping> = self.shm.iter().filter_map(|(_, m)| m.as_ref()).collect();
        maps.len() == self.shm.len() && maps.iter().all(|m| !m.deleted && *m == maps[0])
    }

    fn a_holds_deleted_shm(&self) -> bool {
        self.deleted_held
            .iter()
            .any(|d| d.pid == self.a_pid && d.target.ends_with("-shm (deleted)"))
    }
}

fn step(w: &mut PyWorker, cmd: &str, out: &mut Outcome) -> Option<String> {
    match w.request(cmd) {
        Ok(p) => Some(p),
        Err(e) => {
            out.errors.push(e);
            None
        }
    }
}

fn write(w: &mut PyWorker, n: usize, out: &mut Outcome) {
    if let Some(p) = step(w, &format!("write {n}"), out) {
        out.acked.extend(parse_rows(&p));
    }
}

fn verify(w: &mut PyWorker, out: &mut Outcome) -> (Vec<String>, String) {
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

fn record_stats(w: &mut PyWorker, out: &mut Outcome) {
    let s = step(w, "stats", out).unwrap_or_default();
    out.stats.push((w.name.clone(), s));
}

/// A: WAL, writes, peeks at the header (its POSIX locks on the db are gone); B opens,
/// writes, closes (on unix, believing it is last: checkpoint and unlink of -wal/-shm);
/// C opens (fresh sidecars) and writes; A writes into its deleted sidecars and
/// checkpoints; D and, after everyone closed, E read. `mode`: `plain` or `install`.
fn peek_run(mode: &str) -> Outcome {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let mut out = Outcome::default();
    let mut a = PyWorker::spawn(mode, &db, "A");
    out.a_pid = a.pid;
    assert_eq!(a.ok("wal"), "wal");
    write(&mut a, 3, &mut out);
    assert_eq!(a.ok("peek"), "100", "A's peek reads the 100-byte header");

    let mut b = PyWorker::spawn(mode, &db, "B");
    write(&mut b, 3, &mut out);
    record_stats(&mut b, &mut out);
    step(&mut b, "close", &mut out);
    b.quit();

    let mut c = PyWorker::spawn(mode, &db, "C");
    write(&mut c, 3, &mut out);
    write(&mut a, 3, &mut out);
    step(&mut a, "checkpoint", &mut out);
    out.deleted_held = disrupt::scan_deleted_sidecars(&db);
    out.shm.push(("A".into(), a.shm(&db)));
    out.shm.push(("C".into(), c.shm(&db)));

    let mut d = PyWorker::spawn(mode, &db, "D");
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

    let mut e = PyWorker::spawn(mode, &db, "E");
    let (missing, integrity) = verify(&mut e, &mut out);
    out.missing_final = missing;
    out.integrity_final = integrity;
    e.quit();
    out
}

#[test]
fn a_header_peek_splits_python_on_unix_and_not_with_the_package() {
    for rep in 0..2 {
        let out = peek_run("plain");
        let ctx = format!("plain sqlite3 (unix VFS), rep {rep}");
        assert_eq!(
            out.acked.len(),
            12,
            "{ctx}: every write is acknowledged\n{out:#?}"
        );
        assert!(
            out.damaged(),
            "{ctx}: expected lost rows or a failed integrity check\n{out:#?}"
        );
        assert!(
            out.a_holds_deleted_shm(),
            "{ctx}: expected A to hold app.db-shm (deleted)\n{out:#?}"
        );
        assert!(
            !out.one_shm(),
            "{ctx}: expected two -shm inodes in use\n{out:#?}"
        );
    }
    for rep in 0..3 {
        let out = peek_run("install");
        let ctx = format!("walguard.install(), rep {rep}");
        assert_eq!(
            out.acked.len(),
            12,
            "{ctx}: every write is acknowledged\n{out:#?}"
        );
        assert!(out.errors.is_empty(), "{ctx}: no command fails\n{out:#?}");
        assert!(!out.damaged(), "{ctx}: the WAL index split\n{out:#?}");
        assert!(
            out.deleted_held.is_empty(),
            "{ctx}: nobody holds a deleted sidecar\n{out:#?}"
        );
        assert!(out.one_shm(), "{ctx}: A, C and D map one -shm\n{out:#?}");
        assert_eq!(out.stats.len(), 4, "{ctx}: {out:#?}");
        for (name, s) in &out.stats {
            assert!(
                stat(s, "db_opened").is_some_and(|n| n >= 1),
                "{ctx}: worker {name} did not open the database through walguard: {s}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The README and the PEP 517 backend

/// The fenced code blocks of a Markdown text: (info string, code).
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some((_, code)), None) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn the_readme_starts_with_pip_install_and_its_examples_run() {
    let path = workspace_root().join("python").join("README.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let blocks = code_blocks(&text);
    let first = blocks.first().map(|(_, c)| c.trim()).unwrap_or_default();
    assert!(
        first.starts_with("pip install walguard"),
        "{} must start with `pip install`: first block {first:?}",
        path.display()
    );
    let python: Vec<&String> = blocks
        .iter()
        .filter(|(info, _)| info == "python")
        .map(|(_, c)| c)
        .collect();
    let connect = python
        .iter()
        .find(|c| c.contains("def connect("))
        .unwrap_or_else(|| panic!("{} shows no connect()", path.display()));
    assert!(
        connect.contains("walguard.install()")
            && connect.contains("journal_mode=WAL")
            && connect.contains("timeout="),
        "the README's connect() must install walguard and set WAL and a busy timeout"
    );
    let first_install = connect.find("walguard.install()").unwrap_or(usize::MAX);
    let first_connect = connect.find("sqlite3.connect(").unwrap_or(0);
    assert!(
        first_install < first_connect,
        "the README must install walguard before the first connection"
    );
    assert!(
        python.len() >= 2,
        "expected the connect() and apsw examples"
    );
    for (i, code) in python.iter().enumerate() {
        let dir = tempdir();
        let script = dir.path().join(format!("readme_example_{i}.py"));
        fs::write(&script, code.as_bytes()).expect("write the example");
        let mut cmd = Command::new(&fixture().python);
        cmd.arg("-I").arg("-B").arg(&script).current_dir(dir.path());
        let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
        out.assert_success(&format!("README example {i}:\n{code}"));
    }
}

#[test]
fn pip_builds_the_same_wheel_offline_through_the_pep517_backend() {
    let f = fixture();
    let out_dir = tempdir();
    let mut cmd = pip(&f.python);
    cmd.args(["wheel", "--no-index", "--no-deps", "--wheel-dir"])
        .arg(out_dir.path())
        .arg("--config-settings")
        .arg(format!("so={}", extension_path().display()))
        .arg(workspace_root().join("python"));
    let out = run_with_timeout(cmd, None, INSTALL_TIMEOUT);
    out.assert_success("pip wheel --no-index ./python");
    let name = f.wheel.file_name().expect("wheel file name");
    let built = out_dir.path().join(name);
    let (a, b) = (fs::read(&built), fs::read(&f.wheel));
    assert!(
        matches!((&a, &b), (Ok(a), Ok(b)) if a == b),
        "pip wheel should make {} byte for byte like scripts/build-wheel (the build is \
         reproducible): {:?}\n{out}",
        built.display(),
        list_dir(out_dir.path())
    );
}
