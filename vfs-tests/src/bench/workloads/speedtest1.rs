//! SQLite's own `test/speedtest1.c`, only with `--speedtest1 FILE`: built against the
//! system libsqlite3 with walguard loaded as the extension, run on both VFSs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Workload;
use crate::bench::db::remove_db;
use crate::bench::measure::{Sample, Timer};
use crate::bench::{note, Env};
use crate::worker::Vfs;

pub(crate) const SPEEDTEST1_NOTE: &str =
    "speedtest1: not run (give --speedtest1 PATH/TO/speedtest1.c). \
No crates.io, PyPI or npm package found here ships speedtest1 or its source, and the \
SQLite amalgamation libsqlite3-sys bundles does not contain it; Debian's sqlite3 *source* \
package does (test/speedtest1.c, SQLite 3.40.1 on bookworm: `apt-get source sqlite3` once a \
deb-src line is configured). The project does not vendor SQLite's source.";

/// `main` for the speedtest1 binary: loads walguard (not as the default VFS) from
/// `$WALGUARD_EXT` into the system SQLite, then runs speedtest1's own `main`, so both VFSs
/// run in the same binary with the extension loaded and `--vfs` picks one.
pub(crate) const SPEEDTEST1_WRAPPER: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <sqlite3.h>
int speedtest1_main(int, char **);
int main(int argc, char **argv) {
  const char *ext = getenv("WALGUARD_EXT");
  if (ext && *ext) {
    sqlite3 *db = 0;
    char *err = 0;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) { fprintf(stderr, "open failed\n"); return 1; }
    sqlite3_enable_load_extension(db, 1);
    if (sqlite3_load_extension(db, ext, "sqlite3_walguard_nodefault_init", &err) != SQLITE_OK) {
      fprintf(stderr, "cannot load %s: %s\n", ext, err ? err : "?");
      return 1;
    }
    sqlite3_close(db);
  }
  return speedtest1_main(argc, argv);
}
"#;

/// Builds `speedtest1.c` (SQLite's `test/speedtest1.c`) against the system libsqlite3
/// with the wrapper above, and the walguard extension. Returns (binary, extension).
pub(crate) fn build_speedtest1(src: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    if !src.is_file() {
        return Err(format!(
            "--speedtest1 {}: no such file (SQLite's test/speedtest1.c is expected)",
            src.display()
        ));
    }
    let ext = crate::extension::try_extension_path()?;
    let wrapper = dir.join("speedtest1-main.c");
    fs::write(&wrapper, SPEEDTEST1_WRAPPER)
        .map_err(|e| format!("cannot write {}: {e}", wrapper.display()))?;
    let obj = dir.join("speedtest1.o");
    let bin = dir.join("speedtest1");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let steps: [Vec<std::ffi::OsString>; 2] = [
        vec![
            "-O2".into(),
            "-c".into(),
            "-Dmain=speedtest1_main".into(),
            src.into(),
            "-o".into(),
            obj.clone().into(),
        ],
        vec![
            "-O2".into(),
            wrapper.into(),
            obj.into(),
            "-lsqlite3".into(),
            "-lm".into(),
            "-o".into(),
            bin.clone().into(),
        ],
    ];
    for args in steps {
        let out = Command::new(&cc)
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run the C compiler {cc:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building speedtest1 failed ({cc:?} {args:?}): {}\n(needs a C compiler and \
                 libsqlite3-dev: apt-get install -y gcc libsqlite3-dev)",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    note(&format!(
        "speedtest1 built from {} against the system libsqlite3; walguard loaded from {}",
        src.display(),
        ext.display()
    ));
    Ok((bin, ext))
}

/// One speedtest1 run per operation.
pub(crate) fn run(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let w = Workload::Speedtest1;
    let (bin, ext) = env
        .speedtest1
        .as_ref()
        .ok_or("internal: speedtest1 was not built")?;
    let path = env.db(w, vfs, round);
    remove_db(&path);
    let t = Timer::start();
    let out = Command::new(bin)
        .env("WALGUARD_EXT", ext)
        .args(["--vfs", vfs.name(), "--journal", "wal", "--size"])
        .arg(env.sizes.speedtest1_size.to_string())
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let s = t.stop(1);
    remove_db(&path);
    if !out.status.success() {
        return Err(format!(
            "speedtest1 ({vfs}) failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(s)
}
