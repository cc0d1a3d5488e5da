//! The Python package (`python/`, built by `scripts/build-wheel`).
//!
//! Once per test binary the wheel is built from the extension, preload library and
//! `walguard` binary the other tests use (`vfs_tests::reach`: `scripts/build-wheel --so
//! --preload --cli`, so nothing is compiled twice) and installed with `pip install
//! --no-index` into a fresh venv of Debian's `/usr/bin/python3`, together with apsw from
//! the wheelhouse `scripts/setup` fills (`$WALGUARD_WHEELHOUSE`, default
//! `~/.cache/walguard-wheelhouse`). The tests then check:
//!
//! - the wheel itself (`python -m zipfile -l`): the package's modules, the three stripped
//!   ELF files (the extension, the preload library, the `walguard` binary), the `.pth`
//!   hook, the `walguard` console script, metadata with the crate's version (also written
//!   into `__init__.py`), a RECORD that matches, a manylinux tag equal to the highest
//!   `GLIBC_` version `objdump -T` lists, and no SQLite inside the packed `.so` (the `nm`
//!   checks of `extension_symbols.rs`, on the file taken from the wheel);
//! - the API in the venv (`py/package_checks.py`) and its errors (a `sqlite3` without
//!   extension loading now reached through its library; a library that hides its API;
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
use vfs_tests::extension::{crate_version, is_sqlite_symbol, nm};

use vfs_tests::extension::{
    python3_path, run_with_timeout, workspace_root, ENTRY_DEFAULT, ENTRY_NODEFAULT, SCRIPT_TIMEOUT,
};
use vfs_tests::reach::{self, peek_run, pip, py_command, PyWorker, Venv, INSTALL_TIMEOUT};
use vfs_tests::worker::{parse_rows, stat};

// ---------------------------------------------------------------------------------------
// The wheel and the venv, made once per test binary (vfs_tests::reach)

fn venv() -> &'static Venv {
    reach::debian_venv()
}

fn tempdir() -> tempfile::TempDir {
    reach::tempdir()
}

/// `vfs-tests/py/<script> args...` under the venv's python, in isolated mode.
fn venv_command(script: &str, args: &[&OsStr], cwd: &Path) -> Command {
    py_command(&venv().python, script, args, cwd)
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

fn is_entry_point(name: &str) -> bool {
    vfs_tests::extension::is_entry_point(name)
}

fn readelf_path() -> PathBuf {
    let p = Path::new("/usr/bin/readelf");
    if p.is_file() {
        return p.to_path_buf();
    }
    panic!("/usr/bin/readelf is missing: install binutils (apt-get install -y binutils)")
}

/// `readelf ARGS FILE`'s output.
fn readelf(args: &[&str], file: &Path) -> String {
    let mut cmd = Command::new(readelf_path());
    cmd.args(args).arg(file);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("readelf");
    out.stdout
}

/// The ELF files the wheel ships, by archive path.
const ELF_FILES: [&str; 3] = [
    "walguard/libwalguard.so",
    "walguard/libwalguard_preload.so",
    "walguard/walguard",
];

#[test]
fn the_wheel_holds_the_package_the_stripped_binaries_and_the_crate_version() {
    let wheel = reach::wheel();
    let built = reach::built();
    let version = crate_version();
    let arch = std::env::consts::ARCH;

    // The file name: walguard-<crate version>-py3-none-manylinux_X_Y_<arch>.whl
    let name = wheel
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
    list.args(["-I", "-m", "zipfile", "-l"]).arg(wheel);
    let listing = run_with_timeout(list, None, SCRIPT_TIMEOUT);
    listing.assert_success("python -m zipfile -l");
    let entries: BTreeSet<String> = listing
        .stdout
        .lines()
        .skip(1) // "File Name  Modified  Size"
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let dist_info = format!("walguard-{version}.dist-info");
    let mut expected: BTreeSet<String> = [
        "walguard/__init__.py",
        "walguard/__main__.py",
        "walguard/_auto.py",
        "walguard/_autoext.py",
        "walguard/py.typed",
        "walguard_auto.pth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.extend(ELF_FILES.iter().map(|s| s.to_string()));
    for f in ["METADATA", "WHEEL", "RECORD", "entry_points.txt"] {
        expected.insert(format!("{dist_info}/{f}"));
    }
    assert_eq!(entries, expected, "wheel contents:\n{listing}");

    // RECORD lists every file with its hash and size.
    let rec = tempdir();
    let out = run_with_timeout(
        py_command(
            &python3_path(),
            "package_checks.py",
            &[OsStr::new("record"), wheel.as_os_str()],
            rec.path(),
        ),
        None,
        SCRIPT_TIMEOUT,
    );
    out.assert_success("package_checks.py record");
    let kv = out.kv();
    expect_kv(&kv, "records", "1", "RECORD");
    expect_kv(&kv, "unlisted_or_wrong", "none", "RECORD");
    expect_kv(&kv, "listed_not_in_wheel", "none", "RECORD");
    expect_kv(
        &kv,
        "elf_modes",
        "0o755,0o755,0o755",
        "the ELF files' modes",
    );

    // python -m zipfile -e, then the metadata and the files as packed.
    let x = tempdir();
    let mut extract = Command::new(python3_path());
    extract
        .args(["-I", "-m", "zipfile", "-e"])
        .arg(wheel)
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
    let init = read("walguard/__init__.py");
    assert!(
        init.lines()
            .any(|l| l == format!("__version__: str = \"{version}\"")),
        "the build writes the version into __init__.py (no importlib.metadata at import)"
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
    let entry_points = read(&format!("{dist_info}/entry_points.txt"));
    assert!(
        entry_points.contains("[console_scripts]")
            && entry_points.contains("walguard = walguard.__main__:main"),
        "pip must install the walguard command:\n{entry_points}"
    );
    let pth = read("walguard_auto.pth");
    assert_eq!(pth.lines().count(), 1, "one line: {pth:?}");
    assert!(
        pth.starts_with("import os; os.environ.get(\"WALGUARD_AUTO\""),
        "the .pth line must only look WALGUARD_AUTO up unless it is set: {pth:?}"
    );

    // Stripped: no symbol table, no debug information; the dynamic symbols (what the
    // loader uses) are the built files'.
    let packed = |rel: &str| x.path().join(rel);
    let originals = [&built.extension, &built.preload, &built.cli];
    for (rel, original) in ELF_FILES.iter().zip(originals) {
        let sections = readelf(&["-S", "-W"], &packed(rel));
        // (Rust binaries keep an allocated `.debug_gdb_scripts`: not debug information.)
        assert!(
            !sections.contains(".symtab")
                && !sections.contains(".debug_info")
                && !sections.contains(".debug_line"),
            "{rel} is not stripped:\n{sections}"
        );
        assert!(
            fs::metadata(packed(rel))
                .map(|m| m.len())
                .unwrap_or(u64::MAX)
                < fs::metadata(original).map(|m| m.len()).unwrap_or(0),
            "{rel} is not smaller than the file it was made from"
        );
        if rel.ends_with(".so") {
            assert_eq!(
                nm(&packed(rel), &["-D", "--defined-only"]),
                nm(original, &["-D", "--defined-only"]),
                "{rel} exports other symbols than {}",
                original.display()
            );
        }
    }

    // The tag is honest: manylinux_X_Y with X.Y the highest GLIBC_ version any of the
    // three files requires.
    let mut highest = None;
    for rel in ELF_FILES {
        let mut od = Command::new(objdump_path());
        od.arg("-T").arg(packed(rel));
        let dump = run_with_timeout(od, None, SCRIPT_TIMEOUT);
        dump.assert_success("objdump -T");
        highest = highest.max(max_glibc(&dump.stdout));
    }
    let (major, minor) = highest.expect("objdump -T lists no GLIBC_ version");
    assert_eq!(
        glibc_tag,
        format!("{major}_{minor}"),
        "the tag must follow the highest GLIBC_ version objdump -T lists (GLIBC_{major}.{minor})"
    );

    // No second SQLite inside the packed extension (extension_symbols.rs checks the
    // unstripped file's full symbol table).
    let so = packed("walguard/libwalguard.so");
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
    let imported: Vec<_> = nm(&so, &["-D", "--undefined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .collect();
    assert!(
        imported.is_empty(),
        "the packed .so imports SQLite symbols: {imported:?}"
    );

    // The preload library defines the three interposers and no other SQLite symbol,
    // imports none, and links no SQLite.
    let preload = packed("walguard/libwalguard_preload.so");
    let sqlite_defined: BTreeSet<String> = nm(&preload, &["-D", "--defined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .map(|(_, n)| n)
        .collect();
    let interposed: BTreeSet<String> = ["sqlite3_open", "sqlite3_open16", "sqlite3_open_v2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        sqlite_defined, interposed,
        "the preload library's SQLite symbols"
    );
    let imported: Vec<_> = nm(&preload, &["-D", "--undefined-only"])
        .into_iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .collect();
    assert!(
        imported.is_empty(),
        "the preload library imports {imported:?}"
    );
    let dynamic = readelf(&["-d", "-W"], &preload);
    assert!(
        !dynamic.contains("libsqlite3"),
        "the preload library links a SQLite:\n{dynamic}"
    );

    // Installed, the binary runs, and so does the `walguard` command pip made for it.
    let installed = venv();
    for program in [
        installed.package.join("walguard"),
        installed.walguard.clone(),
    ] {
        let mut v = Command::new(&program);
        v.arg("--version");
        let out = run_with_timeout(v, None, SCRIPT_TIMEOUT);
        out.assert_success("walguard --version");
        assert_eq!(out.stdout.trim(), format!("walguard {version}"), "{out}");
    }
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
    // A sqlite3 module without enable_load_extension is no error any more: install() and
    // load() reach its SQLite through the library it uses (python_reach.rs runs a real
    // Python built that way).
    let kv = checks("no-loading");
    let ctx = "package_checks.py no-loading";
    expect_kv(&kv, "simulated_has_method", "0", ctx);
    expect_kv(&kv, "install.error", "none", ctx);
    expect_kv(&kv, "install.via_library", "1", ctx);
    expect_kv(&kv, "load.error", "none", ctx);
    assert!(counter(&kv, "db_opened") >= 1, "{kv:#?}");

    // Only a library that hides its API is refused, saying what to do instead.
    let kv = checks("hidden-api");
    let ctx = "package_checks.py hidden-api";
    expect_kv(&kv, "simulated_has_method", "0", ctx);
    expect_kv(&kv, "install.error", "ExtensionLoadingUnavailable", ctx);
    expect_kv(&kv, "install.is_walguard_error", "1", ctx);
    expect_kv(&kv, "install.names_library", "1", ctx);
    expect_kv(&kv, "install.says_hidden", "1", ctx);
    expect_kv(&kv, "install.names_configure_flag", "1", ctx);
    expect_kv(&kv, "install.suggests_apsw", "1", ctx);
    expect_kv(&kv, "install.suggests_exec", "1", ctx);
    expect_kv(&kv, "install.names_python", "1", ctx);
    expect_kv(&kv, "after.db_opened_plain", "unix", ctx);

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
// Worker processes (py/package_worker.py, driven through vfs_tests::reach::PyWorker)

/// A `package_worker.py` process of the venv; `mode`: `plain`, `install` or `apsw`.
fn spawn(mode: &str, db: &Path, name: &str) -> PyWorker {
    PyWorker::spawn(PyWorker::command(&venv().python, mode, db, name), name)
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
    let mut p = spawn(mode, &db, "P");
    assert_eq!(p.ok("wal"), "wal", "{mode}: P could not switch to WAL");
    let mut q = spawn(mode, &db, "Q");
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
// The header-peek split, from Python (vfs_tests::reach::peek_run)

#[test]
fn a_header_peek_splits_python_on_unix_and_not_with_the_package() {
    for rep in 0..2 {
        let out = peek_run(&|db, name| spawn("plain", db, name));
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
        let out = peek_run(&|db, name| spawn("install", db, name));
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
        let mut cmd = Command::new(&venv().python);
        cmd.arg("-I").arg("-B").arg(&script).current_dir(dir.path());
        let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
        out.assert_success(&format!("README example {i}:\n{code}"));
    }
}

#[test]
fn pip_builds_the_same_wheel_offline_through_the_pep517_backend() {
    let wheel = reach::wheel();
    let b = reach::built();
    let out_dir = tempdir();
    let mut cmd = pip(&venv().python);
    cmd.args(["wheel", "--no-index", "--no-deps", "--wheel-dir"])
        .arg(out_dir.path());
    for (key, path) in [
        ("so", &b.extension),
        ("preload", &b.preload),
        ("cli", &b.cli),
    ] {
        cmd.arg("--config-settings")
            .arg(format!("{key}={}", path.display()));
    }
    cmd.arg(workspace_root().join("python"));
    let out = run_with_timeout(cmd, None, INSTALL_TIMEOUT);
    out.assert_success("pip wheel --no-index ./python");
    let name = wheel.file_name().expect("wheel file name");
    let built = out_dir.path().join(name);
    let (a, b) = (fs::read(&built), fs::read(wheel));
    assert!(
        matches!((&a, &b), (Ok(a), Ok(b)) if a == b),
        "pip wheel should make {} byte for byte like scripts/build-wheel (the build is \
         reproducible): {:?}\n{out}",
        built.display(),
        list_dir(out_dir.path())
    );
}
