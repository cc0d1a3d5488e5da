//! `walguard exec -- CMD [ARGS...]`: runs a program you did not write with walguard as the
//! default VFS of its SQLite, and of every program it starts.
//!
//! It sets `LD_PRELOAD` to walguard's preload library (`libwalguard_preload.so`, the
//! `preload/` crate) and `WALGUARD_EXTENSION` to walguard's loadable extension
//! (`libwalguard.so`), then replaces itself with CMD (`execvp`). Children inherit both
//! variables. The preload library interposes `sqlite3_open`, `sqlite3_open_v2` and
//! `sqlite3_open16` and registers walguard in the program's own SQLite at its first open
//! (not at load: a program may configure SQLite first); see `preload/src/lib.rs`.
//!
//! `walguard exec --check -- CMD` runs nothing: it reads CMD's ELF file (and the
//! interpreter of a `#!` script, and the `_sqlite3` module of a Python) and says whether
//! it uses a shared `libsqlite3` (what exec guards), a SQLite linked in statically (which
//! LD_PRELOAD cannot reach), or none.
//!
//! The libraries are taken from `$WALGUARD_PRELOAD` / `$WALGUARD_EXTENSION` when set,
//! else from the directory of this executable (a cargo `target/release/`, the Python
//! wheel's package directory), else from `EXE_DIR/../lib/walguard/` (an install under a
//! prefix: `/usr/local/bin/walguard`, `/usr/local/lib/walguard/`).

use crate::{elf, sys};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: walguard exec [--check] [--] CMD [ARGS...]

Runs CMD with walguard registered as the default VFS of its SQLite, and of every program
it starts: LD_PRELOAD of libwalguard_preload.so, which registers walguard (libwalguard.so)
in the program's own SQLite library at the program's first open. Programs that link a
shared libsqlite3 (the sqlite3 shell, Python, Tcl, Ruby, PHP, ...) are guarded; a SQLite
linked statically into a program is left as it is. Nothing is printed unless something
fails (WALGUARD_STDERR=1 prints walguard's warnings).

options:
  --check   run nothing: say whether CMD uses a shared libsqlite3 (guarded), a static
            SQLite (not guarded) or none

libraries: $WALGUARD_PRELOAD and $WALGUARD_EXTENSION when set, else next to this
executable, else in EXE_DIR/../lib/walguard/

exit status: CMD's own; 125 walguard's libraries are missing, 126 CMD cannot be run,
127 CMD not found, 64 usage error. With --check: 0 guarded (shared libsqlite3), 1 not
guarded (static SQLite), 2 no SQLite found, 127 CMD not found";

/// The environment variable naming the preload library.
pub const PRELOAD_ENV: &str = "WALGUARD_PRELOAD";
/// The environment variable naming walguard's loadable extension (read by the preload
/// library and by the Python package).
pub const EXTENSION_ENV: &str = "WALGUARD_EXTENSION";
pub const PRELOAD_FILE: &str = "libwalguard_preload.so";
pub const EXTENSION_FILE: &str = "libwalguard.so";

const EXIT_LIBRARIES: u8 = 125;
const EXIT_CANNOT_RUN: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_USAGE: u8 = 64;

/// `walguard exec ARGS` (ARGS without the word `exec`).
pub fn main(args: &[String]) -> ExitCode {
    let mut check = false;
    let mut rest = args;
    while let Some(first) = rest.first() {
        match first.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--" => {
                rest = &rest[1..];
                break;
            }
            s if s.starts_with('-') => {
                eprintln!("walguard exec: unknown option {s:?}\n{USAGE}");
                return ExitCode::from(EXIT_USAGE);
            }
            _ => break,
        }
        rest = &rest[1..];
    }
    let Some((cmd, cmd_args)) = rest.split_first() else {
        eprintln!("walguard exec: missing CMD\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    if check {
        return check_main(cmd);
    }
    let libs = match Libraries::locate() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("walguard exec: {e}");
            return ExitCode::from(EXIT_LIBRARIES);
        }
    };
    let preload = match preload_value(&libs.preload, std::env::var_os("LD_PRELOAD")) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("walguard exec: {e}");
            return ExitCode::from(EXIT_LIBRARIES);
        }
    };
    let err = Command::new(cmd)
        .args(cmd_args)
        .env("LD_PRELOAD", preload)
        .env(EXTENSION_ENV, &libs.extension)
        .exec();
    let status = match err.kind() {
        io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_RUN,
    };
    eprintln!("walguard exec: cannot run {cmd:?}: {err}");
    ExitCode::from(status)
}

// ---------------------------------------------------------------------------------------
// The libraries

/// Where the preload library and the extension are, as absolute paths.
#[derive(Debug)]
pub struct Libraries {
    pub preload: PathBuf,
    pub extension: PathBuf,
}

impl Libraries {
    /// See the module documentation for the order.
    pub fn locate() -> Result<Libraries, String> {
        let dirs = library_dirs();
        let find = |env: &str, file: &str| -> Result<PathBuf, String> {
            if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
                let p = PathBuf::from(p);
                return match p.canonicalize() {
                    Ok(abs) if abs.is_file() => Ok(abs),
                    _ => Err(format!(
                        "{env}={} names no file: correct it or unset it",
                        p.display()
                    )),
                };
            }
            dirs.iter()
                .map(|d| d.join(file))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    let looked: Vec<String> = dirs
                        .iter()
                        .map(|d| d.join(file).display().to_string())
                        .collect();
                    format!(
                        "{file} not found (looked for {}). Build it (cargo build --release \
                         -p walguard-preload; the extension: cargo rustc --release -p \
                         walguard --lib --no-default-features --features \
                         loadable_extension --crate-type cdylib), install the Python \
                         wheel (pip install walguard), or set {env}",
                        looked.join(", ")
                    )
                })
        };
        Ok(Libraries {
            preload: find(PRELOAD_ENV, PRELOAD_FILE)?,
            extension: find(EXTENSION_ENV, EXTENSION_FILE)?,
        })
    }
}

/// The directory of this executable, then `../lib/walguard` beside it.
fn library_dirs() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut dirs = vec![dir.clone()];
    if let Some(prefix) = dir.parent() {
        dirs.push(prefix.join("lib").join("walguard"));
    }
    dirs
}

/// The new `LD_PRELOAD`: the preload library first, then what was there, without any
/// other copy of it (a nested `walguard exec` of another install: two interposers would
/// chain into each other). The dynamic loader splits the variable at spaces and colons,
/// so the path may hold neither.
fn preload_value(preload: &Path, existing: Option<OsString>) -> Result<OsString, String> {
    let ours = preload.as_os_str().as_bytes();
    if ours.iter().any(|&c| c == b' ' || c == b':') {
        return Err(format!(
            "{} contains a space or a colon, which LD_PRELOAD cannot hold: install the \
             libraries under another path or set {PRELOAD_ENV}",
            preload.display()
        ));
    }
    let mut value = ours.to_vec();
    if let Some(old) = existing {
        for entry in old
            .as_bytes()
            .split(|&c| c == b' ' || c == b':')
            .filter(|e| !e.is_empty() && !e.ends_with(PRELOAD_FILE.as_bytes()))
        {
            value.push(b':');
            value.extend_from_slice(entry);
        }
    }
    Ok(OsString::from_vec(value))
}

// ---------------------------------------------------------------------------------------
// --check

/// What kind of SQLite a program uses.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A shared library that exports SQLite's API: exec guards it.
    Shared,
    /// SQLite linked into an object without exporting its API, or into the executable.
    Static,
    /// No SQLite found.
    None,
}

/// One SQLite found, in the object `path`.
#[derive(Debug)]
pub struct Found {
    pub kind: Kind,
    pub path: PathBuf,
    pub version: Option<String>,
    /// How it is reached: the `_sqlite3` module of a Python, the interpreter of a script.
    pub via: Option<String>,
}

fn check_main(cmd: &str) -> ExitCode {
    let Some(program) = find_program(cmd) else {
        eprintln!("walguard exec --check: {cmd:?} not found (no such file, or not on PATH)");
        return ExitCode::from(EXIT_NOT_FOUND);
    };
    let (kind, lines) = check(&program);
    let mut out = io::stdout().lock();
    for l in &lines {
        let _ = writeln!(out, "{l}");
    }
    match Libraries::locate() {
        Ok(l) => {
            let _ = writeln!(out, "preload: {}", l.preload.display());
            let _ = writeln!(out, "extension: {}", l.extension.display());
        }
        Err(e) => {
            let _ = writeln!(out, "libraries: {e}");
        }
    }
    ExitCode::from(match kind {
        Kind::Shared => 0,
        Kind::Static => 1,
        Kind::None => 2,
    })
}

/// The verdict for `program` and the lines that explain it.
pub fn check(program: &Path) -> (Kind, Vec<String>) {
    let mut lines = vec![format!("program: {}", program.display())];
    let (exe, via) = match follow_scripts(program) {
        Ok(x) => x,
        Err(e) => {
            lines.push(format!("sqlite: unknown ({e})"));
            lines.push("verdict: cannot tell".into());
            return (Kind::None, lines);
        }
    };
    if let Some(v) = &via {
        lines.push(format!("interpreter: {} ({v})", exe.display()));
    }
    let found = match analyse(&exe) {
        Ok(f) => f,
        Err(e) => {
            lines.push(format!("sqlite: unknown: {}: {e}", exe.display()));
            lines.push("verdict: cannot tell".into());
            return (Kind::None, lines);
        }
    };
    for f in &found {
        let version = f
            .version
            .as_deref()
            .map(|v| format!(", SQLite {v}"))
            .unwrap_or_default();
        let via = f
            .via
            .as_deref()
            .map(|v| format!(", {v}"))
            .unwrap_or_default();
        let what = match f.kind {
            Kind::Shared => "shared",
            Kind::Static => "static",
            Kind::None => continue,
        };
        lines.push(format!("sqlite: {what} {}{version}{via}", f.path.display()));
    }
    let kind = if found.iter().any(|f| f.kind == Kind::Shared) {
        lines.push(
            "verdict: guarded: walguard exec registers walguard in that library at the \
             program's first open"
                .into(),
        );
        Kind::Shared
    } else if found.iter().any(|f| f.kind == Kind::Static) {
        lines.push(
            "verdict: not guarded: its SQLite is linked in statically, so LD_PRELOAD cannot \
             reach it; load walguard's extension from inside the program, or build it \
             against the shared libsqlite3"
                .into(),
        );
        Kind::Static
    } else {
        lines.push(
            "sqlite: none found (a library it loads later with dlopen is guarded if it is \
             a shared libsqlite3)"
                .into(),
        );
        lines.push("verdict: nothing to guard found".into());
        Kind::None
    };
    (kind, lines)
}

/// `cmd` itself when it holds a slash, else the first executable `cmd` on `PATH`.
fn find_program(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Follows `#!` lines (up to four): the ELF file that runs, and how it was reached.
fn follow_scripts(program: &Path) -> Result<(PathBuf, Option<String>), String> {
    let mut current = program.to_path_buf();
    let mut via = None;
    for _ in 0..4 {
        let file = sys::open_read(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        let head = sys::read_at_most(&file, 0, 256).map_err(|e| e.to_string())?;
        let Some((interp, arg)) = parse_shebang(&head) else {
            return Ok((current, via));
        };
        let next = if interp.ends_with("/env") {
            let name = arg
                .as_deref()
                .and_then(|a| a.split_whitespace().find(|w| !w.starts_with('-')))
                .ok_or_else(|| format!("{}: `#!{interp}` without a program", current.display()))?;
            find_program(name)
                .ok_or_else(|| format!("{name} (from {}) not on PATH", current.display()))?
        } else {
            PathBuf::from(&interp)
        };
        via = Some(format!("runs {}", current.display()));
        current = next;
    }
    Err(format!(
        "{}: too many nested #! interpreters",
        program.display()
    ))
}

/// `#!INTERP [ARG]` → (INTERP, ARG).
fn parse_shebang(head: &[u8]) -> Option<(String, Option<String>)> {
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&c| c == b'\n').unwrap_or(line.len())];
    let line = std::str::from_utf8(line).ok()?.trim();
    let (interp, arg) = match line.split_once(char::is_whitespace) {
        Some((i, a)) => (i, Some(a.trim().to_owned()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    (!interp.is_empty()).then(|| (interp.to_owned(), arg))
}

/// Every SQLite the ELF file `exe` uses: in itself, in the shared libraries it needs
/// (resolved as the dynamic loader does, roughly), and for a Python interpreter in its
/// `_sqlite3` module.
fn analyse(exe: &Path) -> Result<Vec<Found>, String> {
    let dynamic = read_dynamic(exe).map_err(|e| e.to_string())?;
    let Some(dynamic) = dynamic else {
        return Err("not an ELF file".into());
    };
    let mut found = Vec::new();
    if let Some(lib) = sqlite_in(exe) {
        // Symbols prove SQLite is defined in the executable; SQLite's strings alone (a
        // stripped file) do too unless the executable imports SQLite's API from a
        // library (the sqlite3 shell carries the strings and links libsqlite3).
        if lib.evidence_is_symbols || !dynamic.imports_sqlite {
            // Calls inside an executable are bound at link time: never interposed.
            found.push(Found {
                kind: Kind::Static,
                path: exe.to_path_buf(),
                version: lib.version,
                via: Some("linked into the executable".into()),
            });
            return Ok(found);
        }
    }
    if !dynamic.has_interp {
        // A static executable: the dynamic loader (and so LD_PRELOAD) never runs.
        return Ok(found);
    }
    found.extend(scan_dependencies(exe, &dynamic, None));
    if found.is_empty() && looks_like_python(exe, &dynamic) {
        if let Some(module) = python_sqlite_module(exe) {
            let via = format!("loaded by Python's sqlite3 module {}", module.display());
            if let Some(v) = contains_sqlite(&module) {
                let exported = read_dynamic(&module)
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.exports_open);
                found.push(Found {
                    kind: if exported { Kind::Shared } else { Kind::Static },
                    path: module.clone(),
                    version: v,
                    via: Some(via.clone()),
                });
            } else if let Ok(Some(d)) = read_dynamic(&module) {
                found.extend(scan_dependencies(&module, &d, Some(&via)));
            }
        }
    }
    Ok(found)
}

/// SQLite found inside an ELF file.
struct Inside {
    version: Option<String>,
    /// Found by its defined symbols (not only by its strings in a stripped file).
    evidence_is_symbols: bool,
}

fn sqlite_in(path: &Path) -> Option<Inside> {
    let file = sys::open_read(path).ok()?;
    let lib = elf::inspect(&file).ok()??.sqlite?;
    Some(Inside {
        version: lib.version,
        evidence_is_symbols: !lib.evidence.contains("stripped"),
    })
}

/// `Some(version)` when the ELF file holds SQLite (symbols or, stripped, its strings).
fn contains_sqlite(path: &Path) -> Option<Option<String>> {
    sqlite_in(path).map(|l| l.version)
}

/// Breadth-first over the needed libraries of `root`.
fn scan_dependencies(root: &Path, dynamic: &Dynamic, via: Option<&str>) -> Vec<Found> {
    let conf_dirs = ld_so_conf_dirs(Path::new("/etc/ld.so.conf"));
    let env_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<(PathBuf, Dynamic)> = vec![(root.to_path_buf(), dynamic.clone())];
    let mut found = Vec::new();
    let mut i = 0;
    while i < queue.len() && queue.len() < 1000 {
        let (object, dynamic) = queue[i].clone();
        i += 1;
        for name in &dynamic.needed {
            let Some(lib) = resolve_library(name, &object, &dynamic, root, &env_dirs, &conf_dirs)
            else {
                continue;
            };
            let key = lib.canonicalize().unwrap_or_else(|_| lib.clone());
            if !seen.insert(key) {
                continue;
            }
            let Ok(Some(d)) = read_dynamic(&lib) else {
                continue;
            };
            if d.exports_open {
                found.push(Found {
                    kind: Kind::Shared,
                    path: lib.clone(),
                    version: contains_sqlite(&lib).flatten(),
                    via: via.map(str::to_owned),
                });
            } else if let Some(v) = contains_sqlite(&lib) {
                found.push(Found {
                    kind: Kind::Static,
                    path: lib.clone(),
                    version: v,
                    via: via.map(str::to_owned),
                });
            }
            queue.push((lib, d));
        }
    }
    found
}

/// A needed library's path: a name with a slash as is; else DT_RPATH (when there is no
/// DT_RUNPATH), LD_LIBRARY_PATH, DT_RUNPATH, the ld.so.conf directories and the
/// defaults, with `$ORIGIN` expanded; the first ELF file of the root's class and machine.
fn resolve_library(
    name: &str,
    object: &Path,
    dynamic: &Dynamic,
    root: &Path,
    env_dirs: &[PathBuf],
    conf_dirs: &[PathBuf],
) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let origin = object
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let expand = |list: &[String]| -> Vec<PathBuf> {
        list.iter()
            .flat_map(|l| l.split(':'))
            .filter(|d| !d.is_empty())
            .map(|d| {
                PathBuf::from(
                    d.replace("${ORIGIN}", &origin.to_string_lossy())
                        .replace("$ORIGIN", &origin.to_string_lossy()),
                )
            })
            .collect()
    };
    let mut dirs = Vec::new();
    if dynamic.runpath.is_empty() {
        dirs.extend(expand(&dynamic.rpath));
    }
    dirs.extend(env_dirs.iter().cloned());
    dirs.extend(expand(&dynamic.runpath));
    dirs.extend(conf_dirs.iter().cloned());
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(d));
    }
    let want = read_dynamic(root)
        .ok()
        .flatten()
        .map(|d| (d.class, d.machine));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        p.is_file()
            && read_dynamic(p)
                .ok()
                .flatten()
                .is_some_and(|d| want.is_none_or(|w| w == (d.class, d.machine)))
    })
}

/// The directories listed in an ld.so.conf file and the files it includes.
fn ld_so_conf_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    read_conf(path, &mut out, 0);
    out
}

fn read_conf(path: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            let pattern = if pattern.starts_with('/') {
                PathBuf::from(pattern)
            } else {
                path.parent().unwrap_or(Path::new("/")).join(pattern)
            };
            for file in glob_last(&pattern) {
                read_conf(&file, out, depth + 1);
            }
        } else if line.starts_with('/') {
            out.push(PathBuf::from(line));
        }
    }
}

/// Expands a `*` in the last component of `pattern` (what ld.so.conf's `include` uses).
fn glob_last(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(last)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let last = last.to_string_lossy();
    let Some((pre, post)) = last.split_once('*') else {
        return vec![pattern.to_path_buf()];
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post))
        .map(|n| dir.join(n))
        .collect();
    files.sort();
    files
}

fn looks_like_python(exe: &Path, dynamic: &Dynamic) -> bool {
    let name = exe
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    name.starts_with("python") || dynamic.needed.iter().any(|n| n.starts_with("libpython"))
}

/// `PREFIX/lib/pythonX.Y/lib-dynload/_sqlite3*.so` of the Python at `exe`
/// (`PREFIX/bin/pythonX.Y`; a venv's `bin/python` links to one).
fn python_sqlite_module(exe: &Path) -> Option<PathBuf> {
    let real = exe.canonicalize().ok()?;
    let prefix = real.parent()?.parent()?;
    let name = real.file_name()?.to_string_lossy().into_owned();
    let version = name.strip_prefix("python").filter(|v| v.contains('.'));
    let lib = prefix.join("lib");
    let mut dirs: Vec<PathBuf> = match version {
        Some(v) => vec![lib.join(format!("python{v}"))],
        None => {
            let mut d: Vec<PathBuf> = std::fs::read_dir(&lib)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
                })
                .collect();
            d.sort();
            d.reverse();
            d
        }
    };
    dirs.retain(|d| d.is_dir());
    dirs.into_iter().find_map(|d| {
        let dynload = d.join("lib-dynload");
        let mut mods: Vec<PathBuf> = std::fs::read_dir(&dynload)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("_sqlite3") && n.ends_with(".so")
                })
            })
            .collect();
        mods.sort();
        mods.into_iter().next()
    })
}

// ---------------------------------------------------------------------------------------
// Reading an ELF file's dynamic section and dynamic symbols

/// What `--check` needs from an ELF file.
#[derive(Debug, Clone, Default)]
pub struct Dynamic {
    class: u8,
    machine: u16,
    /// A PT_INTERP program header: the dynamic loader runs (LD_PRELOAD applies).
    has_interp: bool,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    /// `.dynsym` defines `sqlite3_open_v2`: the object exports SQLite's API.
    exports_open: bool,
    /// `.dynsym` has undefined `sqlite3_*` symbols: the object calls a shared SQLite.
    imports_sqlite: bool,
}

const PT_INTERP: u32 = 3;
const SHT_DYNAMIC: u32 = 6;
const SHT_DYNSYM: u32 = 11;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Larger tables than this are not read (a damaged file must not size an allocation).
const MAX_TABLE: u64 = 64 << 20;

/// `Ok(None)`: not an ELF file.
fn read_dynamic(path: &Path) -> io::Result<Option<Dynamic>> {
    let file = sys::open_read(path)?;
    parse_dynamic(&file)
}

fn parse_dynamic(file: &File) -> io::Result<Option<Dynamic>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed ELF file");
    let size = file.metadata()?.len();
    let h = sys::read_at_most(file, 0, 64)?;
    if h.len() < 52 || h[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let wide = h[4] == 2;
    let be = h[5] == 2;
    let rd = |b: &[u8], at: usize, n: usize| -> Option<u64> {
        let s = b.get(at..at + n)?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if be { s[i] } else { s[n - 1 - i] };
            v = (v << 8) | byte as u64;
        }
        Some(v)
    };
    let word = if wide { 8 } else { 4 };
    let machine = rd(&h, 18, 2).ok_or_else(bad)? as u16;
    let (phoff, shoff) = if wide {
        (rd(&h, 0x20, 8), rd(&h, 0x28, 8))
    } else {
        (rd(&h, 0x1C, 4), rd(&h, 0x20, 4))
    };
    let (phoff, shoff) = (phoff.ok_or_else(bad)?, shoff.ok_or_else(bad)?);
    let at = if wide { 0x36 } else { 0x2A };
    let phentsize = rd(&h, at, 2).ok_or_else(bad)?;
    let phnum = rd(&h, at + 2, 2).ok_or_else(bad)?;
    let shentsize = rd(&h, at + 4, 2).ok_or_else(bad)?;
    let shnum = rd(&h, at + 6, 2).ok_or_else(bad)?;
    let mut d = Dynamic {
        class: h[4],
        machine,
        ..Dynamic::default()
    };
    let table = |off: u64, n: u64, ent: u64| -> io::Result<Vec<u8>> {
        let len = n.saturating_mul(ent);
        if len > MAX_TABLE || off.saturating_add(len) > size {
            return Err(bad());
        }
        sys::read_at_most(file, off, len as usize)
    };
    let phdrs = table(phoff, phnum, phentsize)?;
    for i in 0..phnum as usize {
        if rd(&phdrs, i * phentsize as usize, 4) == Some(PT_INTERP as u64) {
            d.has_interp = true;
        }
    }
    if shoff == 0 || shnum == 0 {
        return Ok(Some(d));
    }
    let shdrs = table(shoff, shnum, shentsize)?;
    // (type, offset, size, link, entsize)
    let section = |i: usize| -> Option<(u32, u64, u64, u32, u64)> {
        let b = i * shentsize as usize;
        let (off_at, size_at, link_at, ent_at) = if wide {
            (b + 24, b + 32, b + 40, b + 56)
        } else {
            (b + 16, b + 20, b + 24, b + 36)
        };
        Some((
            rd(&shdrs, b + 4, 4)? as u32,
            rd(&shdrs, off_at, word)?,
            rd(&shdrs, size_at, word)?,
            rd(&shdrs, link_at, 4)? as u32,
            rd(&shdrs, ent_at, word)?,
        ))
    };
    let strings = |link: u32| -> io::Result<Vec<u8>> {
        let (_, off, len, _, _) = section(link as usize).ok_or_else(bad)?;
        table(off, len, 1)
    };
    let cstr = |b: &[u8], at: u64| -> String {
        let rest = b.get(at as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    };
    for i in 0..shnum as usize {
        let Some((kind, off, len, link, ent)) = section(i) else {
            continue;
        };
        if kind == SHT_DYNAMIC {
            let names = strings(link)?;
            let body = table(off, len, 1)?;
            let ent = 2 * word;
            for e in body.chunks_exact(ent) {
                let (Some(tag), Some(val)) = (rd(e, 0, word), rd(e, word, word)) else {
                    continue;
                };
                match tag {
                    0 => break,
                    DT_NEEDED => d.needed.push(cstr(&names, val)),
                    DT_RPATH => d.rpath.push(cstr(&names, val)),
                    DT_RUNPATH => d.runpath.push(cstr(&names, val)),
                    _ => {}
                }
            }
        } else if kind == SHT_DYNSYM {
            let names = strings(link)?;
            let body = table(off, len, 1)?;
            let ent = if ent == 0 {
                if wide {
                    24
                } else {
                    16
                }
            } else {
                ent as usize
            };
            let shndx_at = if wide { 6 } else { 14 };
            for e in body.chunks_exact(ent.max(1)) {
                let (Some(name), Some(shndx)) = (rd(e, 0, 4), rd(e, shndx_at, 2)) else {
                    continue;
                };
                let name = cstr(&names, name);
                if shndx != 0 && name == "sqlite3_open_v2" {
                    d.exports_open = true;
                } else if shndx == 0 && name.starts_with("sqlite3_") {
                    d.imports_sqlite = true;
                }
            }
        }
    }
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_parse() {
        assert_eq!(
            parse_shebang(b"#!/usr/bin/env python3\nimport x"),
            Some(("/usr/bin/env".into(), Some("python3".into())))
        );
        assert_eq!(
            parse_shebang(b"#! /bin/sh\n"),
            Some(("/bin/sh".into(), None))
        );
        assert_eq!(parse_shebang(b"\x7fELF"), None);
        assert_eq!(parse_shebang(b"#!\n"), None);
    }

    #[test]
    fn ld_preload_puts_ours_first_once() {
        let p = Path::new("/opt/wg/libwalguard_preload.so");
        assert_eq!(
            preload_value(p, None).expect("ok"),
            OsString::from("/opt/wg/libwalguard_preload.so")
        );
        assert_eq!(
            preload_value(
                p,
                Some("libfoo.so /opt/wg/libwalguard_preload.so:libbar.so".into())
            )
            .expect("ok"),
            OsString::from("/opt/wg/libwalguard_preload.so:libfoo.so:libbar.so")
        );
        // Another install's copy gives way: one interposer per process.
        assert_eq!(
            preload_value(p, Some("/venv/walguard/libwalguard_preload.so".into())).expect("ok"),
            OsString::from("/opt/wg/libwalguard_preload.so")
        );
        assert!(preload_value(Path::new("/my libs/x.so"), None).is_err());
        assert!(preload_value(Path::new("/a:b/x.so"), None).is_err());
    }

    #[test]
    fn ld_so_conf_includes_are_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).expect("mkdir");
        std::fs::write(d.join("ld.so.conf"), "# c\ninclude conf.d/*.conf\n/opt/x\n").expect("w");
        std::fs::write(d.join("conf.d/a.conf"), "/usr/lib/a # arch\n").expect("w");
        std::fs::write(d.join("conf.d/b.conf"), "/usr/lib/b\n").expect("w");
        std::fs::write(d.join("conf.d/c.txt"), "/nope\n").expect("w");
        assert_eq!(
            ld_so_conf_dirs(&d.join("ld.so.conf")),
            vec![
                PathBuf::from("/usr/lib/a"),
                PathBuf::from("/usr/lib/b"),
                PathBuf::from("/opt/x")
            ]
        );
    }

    #[test]
    fn this_test_executable_is_dynamic_and_exports_no_sqlite() {
        let exe = std::env::current_exe().expect("current_exe");
        let d = read_dynamic(&exe).expect("read").expect("an ELF file");
        assert!(d.has_interp);
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        assert!(!d.exports_open);
        let not_elf = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(not_elf.path(), b"#!/bin/sh\nexit 0\n").expect("write");
        assert!(read_dynamic(not_elf.path()).expect("read").is_none());
    }

    #[test]
    fn a_damaged_elf_header_is_an_error_not_an_allocation() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
        h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        h[0x38..0x3A].copy_from_slice(&65535u16.to_le_bytes()); // phnum: past the file
        std::fs::write(f.path(), &h).expect("write");
        assert!(read_dynamic(f.path()).is_err());
    }
}
