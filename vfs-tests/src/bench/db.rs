//! SQLite helpers shared by the workloads, the children and the audit.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use crate::bench::PAYLOAD;
use crate::worker::Vfs;

pub(crate) fn ctx<T>(what: impl std::fmt::Display, r: rusqlite::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

pub(crate) fn open(vfs: Vfs, path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    ctx(
        format_args!("open {} through {vfs}", path.display()),
        Connection::open_with_flags_and_vfs(path, flags, vfs.name()),
    )
}

/// Removes a database and every sidecar SQLite or walguard may have left.
pub(crate) fn remove_db(path: &Path) {
    let _ = fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal", "-walguard"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

pub(crate) const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, payload BLOB);";

/// A fresh WAL database with the bench table, through `vfs`, closed again.
pub(crate) fn create_db(vfs: Vfs, path: &Path, rows: u64) -> Result<(), String> {
    remove_db(path);
    let c = open(vfs, path)?;
    let mode: String = ctx(
        "PRAGMA journal_mode=WAL",
        c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)),
    )?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "{}: journal_mode is {mode}, not wal",
            path.display()
        ));
    }
    ctx("create table", c.execute_batch(SCHEMA))?;
    if rows > 0 {
        ctx(
            "fill table",
            c.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?1)
                 INSERT INTO t(k, payload) SELECT x, randomblob(?2) FROM c",
                params![rows as i64, PAYLOAD as i64],
            ),
        )?;
    }
    ctx(
        "checkpoint",
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())),
    )?;
    drop(c);
    Ok(())
}

pub(crate) fn set_sync(c: &Connection, mode: &str) -> Result<(), String> {
    ctx(
        format_args!("PRAGMA synchronous={mode}"),
        c.execute_batch(&format!("PRAGMA synchronous={mode}")),
    )
}
