//! Scripted worker processes: `vfs-tests worker --vfs unix|walguard --db PATH`.
//!
//! A worker is a real OS process with one SQLite connection (through the named VFS). It
//! reads one command per line on stdin and answers exactly one line on stdout:
//! `ok [payload]` or `err <code> <message>`, where `<code>` is SQLite's extended result
//! code, or -1 for errors that are not SQLite's. Tests drive workers step by step
//! through [`Worker`], so multi-process interleavings are deterministic.
//!
//! ## Options
//! - `--vfs unix|walguard` (required): `walguard` registers walguard with
//!   `Options::default().make_default(false)` and opens through it by name.
//! - `--db PATH` (required): the database.
//! - `--name NAME`: label used in row tags (default `w<pid>`).
//! - `--flags rwc|rw|ro`: open flags (default `rwc`).
//! - `--uid N`: if running as root, drop to this uid (and gid) before opening.
//! - `--busy-ms N`: busy timeout (default 5000).
//!
//! The connection is opened at start-up. If that fails the worker keeps running and
//! `status` reports the error; connection commands answer `err`.
//!
//! ## Commands
//! | command | reply |
//! |---|---|
//! | `status` | `ok open` / `ok closed` / the open error |
//! | `open` / `close` | `ok` (re)open or close the connection |
//! | `wal` | `ok wal` (`PRAGMA journal_mode=WAL`) |
//! | `write N [BYTES]` | `ok id:tag id:tag ...`: N rows, one transaction each, into `t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB)` (created if missing), payload BYTES long (default 64); tags are `NAME-PID-SEQ`, unique |
//! | `count` | `ok N` rows in `t` |
//! | `rows` | `ok id:tag id:tag ...` every row of `t`, by id |
//! | `checkpoint [PASSIVE\|FULL\|RESTART\|TRUNCATE]` | `ok busy log checkpointed` |
//! | `integrity` | `ok <integrity_check rows joined by "; ">` |
//! | `exec SQL` | `ok` (`execute_batch`) |
//! | `query SQL` | `ok` rows joined by `;`, columns by `,` |
//! | `peek` | `ok <bytes>`: open()/read()/close() of the db file in this process |
//! | `fchmod` | `ok <files>`: open(O_RDONLY)/fchmod/close of db, -wal, -shm |
//! | `second-runtime` | `ok <version> <n>`: open/read/close through `libsqlite3.so.0` |
//! | `disrupt start peek\|fchmod\|second-runtime [INTERVAL_MS]` | `ok`: run it in a background thread |
//! | `disrupt stop` | `ok <passes> <errors> [first error]` |
//! | `replace-after-open -shm\|-wal` | `ok <n>`: the next open of such a sidecar by the unix VFS in this process is followed at once by an external `cp` + `mv` over it ([`disrupt::replace_after_next_open`]) |
//! | `replacements` | `ok <n>` replacements made so far by that hook |
//! | `stats` | `ok {json}` (`walguard::stats().to_json()`) |
//! | `shm-inode` | `ok <ino>` / `ok <ino> deleted` / `ok none`: the -shm this process maps |
//! | `deleted-sidecars` | `ok <n> [targets joined by "\|"]`: own fds on deleted -wal/-shm |
//! | `pid` | `ok <pid>` |
//! | `exit` | `ok`, closes the connection and exits 0 |
//!
//! End of input closes the connection and exits.
//!
//! ## `vfs-tests worker fork-writers --vfs V --dir DIR [--children N] [--rows N] [--reps N]`
//! A different mode: forked writers with `libc::fork` (the Rust twin of
//! `vfs-tests/py/fork_writers.py`), see [`fork_writers_main`]. Used by `tests/fork.rs`.
//!
//! ## `vfs-tests worker fork-stale-shm --vfs V --dir DIR --variant untouched|closed`
//! A child inherits a connection whose `-shm` was removed before the fork, and writes
//! through a connection of its own; see [`fork_stale_shm_main`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::disrupt::{self, DisruptLoop, Disruptor};

/// Which VFS a worker (or a test) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vfs {
    /// SQLite's own `unix` VFS, untouched.
    Unix,
    /// walguard, registered under its default name and opened by name.
    Walguard,
}

impl Vfs {
    /// The VFS name SQLite knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Vfs::Unix => "unix",
            Vfs::Walguard => walguard::DEFAULT_NAME,
        }
    }

    /// Parses `unix` or `walguard`.
    pub fn parse(s: &str) -> Option<Vfs> {
        match s {
            "unix" => Some(Vfs::Unix),
            "walguard" => Some(Vfs::Walguard),
            _ => None,
        }
    }

    /// Makes the VFS available in this process (registers walguard, not as default).
    pub fn prepare(self) -> Result<(), String> {
        match self {
            Vfs::Unix => Ok(()),
            Vfs::Walguard => walguard::register(walguard::Options::default().make_default(false))
                .map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for Vfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------
// The worker process.
// ---------------------------------------------------------------------------------

struct Config {
    vfs: Vfs,
    db: PathBuf,
    name: String,
    flags: OpenFlags,
    uid: Option<u32>,
    busy: Duration,
}

fn usage() -> String {
    "usage: vfs-tests worker --vfs unix|walguard --db PATH [--name NAME] \
     [--flags rwc|rw|ro] [--uid N] [--busy-ms N]"
        .to_owned()
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut vfs = None;
    let mut db = None;
    let mut name = format!("w{}", std::process::id());
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let mut uid = None;
    let mut busy = Duration::from_millis(5_000);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value; {}", usage()))
        };
        match arg.as_str() {
            "--vfs" => {
                let v = value()?;
                vfs =
                    Some(Vfs::parse(&v).ok_or_else(|| format!("unknown VFS {v:?}; {}", usage()))?);
            }
            "--db" => db = Some(PathBuf::from(value()?)),
            "--name" => name = value()?,
            "--flags" => {
                let v = value()?;
                flags = match v.as_str() {
                    "rwc" => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
                    "rw" => OpenFlags::SQLITE_OPEN_READ_WRITE,
                    "ro" => OpenFlags::SQLITE_OPEN_READ_ONLY,
                    _ => return Err(format!("unknown --flags {v:?}; {}", usage())),
                };
            }
            "--uid" => {
                let v = value()?;
                uid = Some(v.parse().map_err(|_| format!("bad --uid {v:?}"))?);
            }
            "--busy-ms" => {
                let v = value()?;
                busy =
                    Duration::from_millis(v.parse().map_err(|_| format!("bad --busy-ms {v:?}"))?);
            }
            other => return Err(format!("unknown argument {other:?}; {}", usage())),
        }
    }
    Ok(Config {
        vfs: vfs.ok_or_else(usage)?,
        db: db.ok_or_else(usage)?,
        name,
        flags,
        uid,
        busy,
    })
}

/// Drops root privileges to `uid` (group `uid` too, no supplementary groups).
fn drop_privileges(uid: u32) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(()); // already unprivileged: permissions apply as they are
    }
    // SAFETY: setgroups with a zero count does not read the (null) list; setgid/setuid
    // take plain integers. The worker is single-threaded at this point, so the
    // credential change applies to the whole process.
    let rc = unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            -1
        } else if libc::setgid(uid) != 0 {
            -2
        } else if libc::setuid(uid) != 0 {
            -3
        } else {
            0
        }
    };
    if rc != 0 {
        return Err(format!(
            "dropping privileges to uid {uid} failed at step {rc}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// SQLite's extended code and message of an error (-1 when it is not SQLite's).
pub fn error_code(e: &rusqlite::Error) -> (i32, String) {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => (
            f.extended_code,
            msg.clone().unwrap_or_else(|| f.to_string()),
        ),
        other => (-1, other.to_string()),
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn err_reply(code: i32, msg: &str) -> String {
    format!("err {code} {}", one_line(msg))
}

fn sql_err(e: &rusqlite::Error) -> String {
    let (code, msg) = error_code(e);
    err_reply(code, &msg)
}

struct Server {
    cfg: Config,
    conn: Option<Connection>,
    open_error: Option<(i32, String)>,
    seq: u64,
    disrupt: Option<DisruptLoop>,
}

impl Server {
    fn open(&mut self) -> String {
        self.conn = None;
        match Connection::open_with_flags_and_vfs(&self.cfg.db, self.cfg.flags, self.cfg.vfs.name())
        {
            Ok(c) => {
                if let Err(e) = c.busy_timeout(self.cfg.busy) {
                    return sql_err(&e);
                }
                self.conn = Some(c);
                self.open_error = None;
                "ok".to_owned()
            }
            Err(e) => {
                let (code, msg) = error_code(&e);
                let msg = format!("open {} via {}: {msg}", self.cfg.db.display(), self.cfg.vfs);
                self.open_error = Some((code, msg.clone()));
                err_reply(code, &msg)
            }
        }
    }

    fn conn(&self) -> Result<&Connection, String> {
        match (&self.conn, &self.open_error) {
            (Some(c), _) => Ok(c),
            (None, Some((code, msg))) => Err(err_reply(*code, &format!("no connection: {msg}"))),
            (None, None) => Err(err_reply(-1, "no connection: closed")),
        }
    }

    fn write(&mut self, n: u64, bytes: usize) -> Result<String, String> {
        let first = self.seq + 1;
        self.seq += n;
        let conn = self.conn()?;
        let mut acks = Vec::new();
        let pid = std::process::id();
        for seq in first..first + n {
            let tag = format!("{}-{pid}-{seq}", self.cfg.name);
            let mut payload = vec![0u8; bytes];
            crate::workload::Prng::new(seq ^ (u64::from(pid) << 32)).fill(&mut payload);
            let res = (|| -> rusqlite::Result<i64> {
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     CREATE TABLE IF NOT EXISTS t(
                         id INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB);",
                )?;
                let r = conn
                    .execute(
                        "INSERT INTO t(tag, payload) VALUES (?1, ?2)",
                        rusqlite::params![tag, payload],
                    )
                    .map(|_| conn.last_insert_rowid());
                match r {
                    Ok(id) => {
                        conn.execute_batch("COMMIT")?;
                        Ok(id)
                    }
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            })();
            match res {
                Ok(id) => acks.push(format!("{id}:{tag}")),
                Err(e) => {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    let (code, msg) = error_code(&e);
                    return Err(err_reply(
                        code,
                        &format!("write after acks [{}]: {msg}", acks.join(" ")),
                    ));
                }
            }
        }
        Ok(format!("ok {}", acks.join(" ")).trim_end().to_owned())
    }

    fn query(&self, sql: &str) -> Result<Vec<String>, String> {
        let conn = self.conn()?;
        let run = || -> rusqlite::Result<Vec<String>> {
            let mut stmt = conn.prepare(sql)?;
            let ncols = stmt.column_count();
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut cols = Vec::with_capacity(ncols);
                for i in 0..ncols {
                    cols.push(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        rusqlite::types::ValueRef::Blob(b) => format!("blob({})", b.len()),
                    });
                }
                out.push(cols.join(","));
            }
            Ok(out)
        };
        run().map_err(|e| sql_err(&e))
    }

    fn handle(&mut self, line: &str) -> Result<String, String> {
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let args: Vec<&str> = rest.split_whitespace().collect();
        let db = self.cfg.db.clone();
        match cmd {
            "status" => match (&self.conn, &self.open_error) {
                (Some(_), _) => Ok("ok open".into()),
                (None, Some((code, msg))) => Err(err_reply(*code, msg)),
                (None, None) => Ok("ok closed".into()),
            },
            "open" => {
                let r = self.open();
                if r.starts_with("ok") {
                    Ok(r)
                } else {
                    Err(r)
                }
            }
            "close" => match self.conn.take() {
                None => Ok("ok".into()),
                Some(c) => match c.close() {
                    Ok(()) => Ok("ok".into()),
                    Err((c, e)) => {
                        self.conn = Some(c);
                        Err(sql_err(&e))
                    }
                },
            },
            "wal" => self
                .query("PRAGMA journal_mode=WAL")
                .map(|r| format!("ok {}", r.join(";"))),
            "write" => {
                let n: u64 = args
                    .first()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| err_reply(-1, "usage: write N [BYTES]"))?;
                let bytes: usize = match args.get(1) {
                    None => 64,
                    Some(b) => b
                        .parse()
                        .map_err(|_| err_reply(-1, "usage: write N [BYTES]"))?,
                };
                self.write(n, bytes)
            }
            "count" => self
                .query("SELECT count(*) FROM t")
                .map(|r| format!("ok {}", r.join(";"))),
            "rows" => self
                .query("SELECT id || ':' || tag FROM t ORDER BY id")
                .map(|r| format!("ok {}", r.join(" ")).trim_end().to_owned()),
            "checkpoint" => {
                let mode = args
                    .first()
                    .copied()
                    .unwrap_or("PASSIVE")
                    .to_ascii_uppercase();
                if !["PASSIVE", "FULL", "RESTART", "TRUNCATE"].contains(&mode.as_str()) {
                    return Err(err_reply(-1, &format!("unknown checkpoint mode {mode}")));
                }
                self.query(&format!("PRAGMA wal_checkpoint({mode})"))
                    .map(|r| format!("ok {}", r.join(";").replace(',', " ")))
            }
            "integrity" => self
                .query("PRAGMA integrity_check")
                .map(|r| format!("ok {}", r.join("; "))),
            "exec" => {
                let conn = self.conn()?;
                conn.execute_batch(rest)
                    .map(|()| "ok".to_owned())
                    .map_err(|e| sql_err(&e))
            }
            "query" => self.query(rest).map(|r| format!("ok {}", r.join(";"))),
            "peek" => disrupt::peek_header(&db)
                .map(|n| format!("ok {n}"))
                .map_err(|e| err_reply(-1, &e.to_string())),
            "fchmod" => disrupt::fchmod_pass(&db)
                .map(|n| format!("ok {n}"))
                .map_err(|e| err_reply(-1, &e.to_string())),
            "second-runtime" => crate::second_runtime::open_read_close(&db)
                .map(|s| format!("ok {s}"))
                .map_err(|e| err_reply(-1, &e)),
            "disrupt" => match args.as_slice() {
                ["start", kind, rest @ ..] => {
                    if self.disrupt.is_some() {
                        return Err(err_reply(-1, "a disruptor is already running"));
                    }
                    let kind = Disruptor::parse(kind)
                        .ok_or_else(|| err_reply(-1, &format!("unknown disruptor {kind}")))?;
                    let ms: u64 = match rest.first() {
                        None => 0,
                        Some(v) => v
                            .parse()
                            .map_err(|_| err_reply(-1, &format!("bad interval {v}")))?,
                    };
                    let l = DisruptLoop::start(kind, &db, Duration::from_millis(ms))
                        .map_err(|e| err_reply(-1, &e.to_string()))?;
                    self.disrupt = Some(l);
                    Ok("ok".into())
                }
                ["stop"] => {
                    let l = self
                        .disrupt
                        .take()
                        .ok_or_else(|| err_reply(-1, "no disruptor is running"))?;
                    let r = l.stop();
                    Ok(one_line(&format!(
                        "ok {} {}{}",
                        r.ok,
                        r.errors,
                        r.first_error.map(|e| format!(" {e}")).unwrap_or_default()
                    )))
                }
                _ => Err(err_reply(
                    -1,
                    "usage: disrupt start peek|fchmod|second-runtime [MS] | disrupt stop",
                )),
            },
            "replace-after-open" => disrupt::replace_after_next_open(rest)
                .map(|n| format!("ok {n}"))
                .map_err(|e| err_reply(-1, &e)),
            "replacements" => Ok(format!("ok {}", disrupt::replacements_after_open())),
            "stats" => Ok(format!("ok {}", walguard::stats().to_json())),
            "shm-inode" => match disrupt::mapped_shm(&db) {
                Ok(Some(m)) if m.deleted => Ok(format!("ok {} deleted", m.inode)),
                Ok(Some(m)) => Ok(format!("ok {}", m.inode)),
                Ok(None) => Ok("ok none".into()),
                Err(e) => Err(err_reply(-1, &format!("/proc/self/maps: {e}"))),
            },
            "deleted-sidecars" => {
                let d = disrupt::own_deleted_sidecars(&db);
                let targets: Vec<String> = d.iter().map(|d| d.target.clone()).collect();
                Ok(format!("ok {} {}", d.len(), targets.join("|"))
                    .trim_end()
                    .to_owned())
            }
            "pid" => Ok(format!("ok {}", std::process::id())),
            "" => Err(err_reply(-1, "empty command")),
            other => Err(err_reply(-1, &format!("unknown command {other:?}"))),
        }
    }

    fn shutdown(&mut self) {
        if let Some(l) = self.disrupt.take() {
            l.stop();
        }
        if let Some(c) = self.conn.take() {
            if let Err((_, e)) = c.close() {
                eprintln!(
                    "worker {}: close {}: {e}",
                    self.cfg.name,
                    self.cfg.db.display()
                );
            }
        }
    }
}

/// Entry point of `vfs-tests worker ARGS...`.
pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("fork-writers") => return fork_writers_main(&args[1..]),
        Some("fork-stale-shm") => return fork_stale_shm_main(&args[1..]),
        _ => {}
    }
    let cfg = match parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vfs-tests worker: {e}");
            return ExitCode::from(2);
        }
    };
    // Faults armed by the parent (`WALGUARD_FAULTS`, see `faults`) act beneath the unix
    // VFS of this process, under walguard too.
    if let Err(e) = crate::faults::arm_from_env() {
        eprintln!("vfs-tests worker {}: {e}", cfg.name);
        return ExitCode::from(2);
    }
    if let Err(e) = cfg.vfs.prepare() {
        eprintln!(
            "vfs-tests worker {}: cannot register walguard: {e}",
            cfg.name
        );
        return ExitCode::from(2);
    }
    if let Some(uid) = cfg.uid {
        if let Err(e) = drop_privileges(uid) {
            eprintln!("vfs-tests worker {}: {e}", cfg.name);
            return ExitCode::from(2);
        }
    }
    let mut server = Server {
        cfg,
        conn: None,
        open_error: None,
        seq: 0,
        disrupt: None,
    };
    let _ = server.open(); // a failure is remembered and reported by `status`

    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "exit" {
            server.shutdown();
            let _ = writeln!(stdout, "ok");
            let _ = stdout.flush();
            return ExitCode::SUCCESS;
        }
        let reply =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.handle(&line))) {
                Ok(Ok(r)) | Ok(Err(r)) => r,
                Err(_) => err_reply(-1, &format!("worker panicked on {line:?}")),
            };
        if writeln!(stdout, "{}", one_line(&reply))
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    server.shutdown();
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// `vfs-tests worker fork-writers`: forked writers, the Rust twin of
// `vfs-tests/py/fork_writers.py`.
// ---------------------------------------------------------------------------------

const FORK_WRITERS_USAGE: &str = "usage: vfs-tests worker fork-writers --vfs unix|walguard \
     --dir DIR [--children N] [--rows N] [--reps N]";

/// Busy timeout of every connection of `fork-writers`.
const FORK_BUSY: Duration = Duration::from_secs(20);

struct ForkConfig {
    vfs: Vfs,
    dir: PathBuf,
    children: usize,
    rows: u64,
    reps: usize,
}

fn parse_fork_args(args: &[String]) -> Result<ForkConfig, String> {
    let mut cfg = ForkConfig {
        vfs: Vfs::Unix,
        dir: PathBuf::new(),
        children: 4,
        rows: 1000,
        reps: 1,
    };
    let (mut vfs, mut dir) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{arg} needs a value; {FORK_WRITERS_USAGE}"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{arg}: expected a number, got {v:?}"))
        };
        match arg.as_str() {
            "--vfs" => vfs = Some(Vfs::parse(v).ok_or_else(|| format!("unknown VFS {v:?}"))?),
            "--dir" => dir = Some(PathBuf::from(v)),
            "--children" => cfg.children = num(v)?.clamp(1, 64) as usize,
            "--rows" => cfg.rows = num(v)?.max(2),
            "--reps" => cfg.reps = num(v)?.clamp(1, 1000) as usize,
            other => return Err(format!("unknown argument {other:?}; {FORK_WRITERS_USAGE}")),
        }
    }
    cfg.vfs = vfs.ok_or(FORK_WRITERS_USAGE)?;
    cfg.dir = dir.ok_or(FORK_WRITERS_USAGE)?;
    Ok(cfg)
}

/// Threads of this process other than the main one and walguard's own G4 watcher
/// (`walguard-watch`, which walguard's `pthread_atfork` handlers take care of), by name:
/// the harness forks only without threads of its own.
fn harness_threads() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return vec!["/proc/self/task unreadable".to_owned()];
    };
    tasks
        .flatten()
        .filter(|t| t.file_name().to_string_lossy() != me)
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default()
        })
        .filter(|comm| comm != "walguard-watch")
        .collect()
}

fn fork_open(db: &Path, vfs: Vfs) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let c = Connection::open_with_flags_and_vfs(db, flags, vfs.name())?;
    c.busy_timeout(FORK_BUSY)?;
    // What WAL applications use; nothing here simulates a power loss.
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

/// Inserts rows `(who, first..first+count)`, one transaction each. Returns how many
/// were acknowledged and the first error (it stops there, as a real worker would).
fn fork_insert(conn: &Connection, who: &str, first: u64, count: u64) -> (u64, Option<String>) {
    let mut acked = 0;
    for n in first..first + count {
        let r = conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| {
                conn.execute(
                    "INSERT INTO t(who, n) VALUES (?1, ?2)",
                    rusqlite::params![who, n as i64],
                )
            })
            .and_then(|_| conn.execute_batch("COMMIT"));
        match r {
            Ok(()) => acked += 1,
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                let (code, msg) = error_code(&e);
                return (
                    acked,
                    Some(one_line(&format!("{who} row {n}: code {code}: {msg}"))),
                );
            }
        }
    }
    (acked, None)
}

/// After `fork()` in a child: die with the parent (the setting is not inherited), so
/// that a killed test leaves nothing behind.
fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl and getppid take plain integers; _exit ends the process at once.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent {
            libc::_exit(97);
        }
    }
}

/// `fork()`; in the child, runs `body` and leaves through `_exit` (no destructor runs:
/// nothing is closed behind the test's back). Returns the child's pid in the parent.
fn fork_child(body: impl FnOnce() -> i32) -> Result<libc::pid_t, String> {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork with no harness thread besides this one (checked by the caller;
    // walguard's watcher thread is covered by walguard's own atfork handlers); the child
    // only runs `body` and then _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(format!("fork: {}", io::Error::last_os_error())),
        0 => {
            die_with_parent(parent);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: leaves the child without running destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

/// Waits for `pid`; the raw wait status, or -1.
fn wait_pid(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return status;
        }
        if rc == -1 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return -1;
        }
    }
}

fn write_result(dir: &Path, who: &str, acked: u64, err: &Option<String>) {
    let text = format!("{acked}\n{}\n", err.as_deref().unwrap_or("-"));
    let _ = std::fs::write(dir.join(format!("{who}.result")), text);
}

fn read_result(dir: &Path, who: &str) -> Result<(u64, Option<String>), String> {
    let path = dir.join(format!("{who}.result"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{who}: no result ({e})"))?;
    let mut lines = text.lines();
    let acked = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| format!("{who}: bad result {text:?}"))?;
    let err = lines.next().filter(|l| *l != "-").map(str::to_owned);
    Ok((acked, err))
}

/// The grandchild: closes every connection it inherited, writes `rows` rows through
/// its own.
fn fork_grandchild(db: &Path, vfs: Vfs, rows: u64, inherited: &mut [Option<Connection>]) -> i32 {
    let who = "grandchild";
    for c in inherited.iter_mut() {
        if let Some(c) = c.take() {
            let _ = c.close();
        }
    }
    let (acked, err) = match fork_open(db, vfs) {
        Ok(conn) => {
            let r = fork_insert(&conn, who, 0, rows);
            let _ = conn.close();
            r
        }
        Err(e) => (0, Some(format!("{who}: open: {e}"))),
    };
    write_result(db.parent().unwrap_or(Path::new(".")), who, acked, &err);
    i32::from(err.is_some())
}

/// Child `idx`: odd children close the connections they inherited first, even ones leave
/// them untouched (never used, never closed: `_exit` skips their destructors). Child 1
/// forks the grandchild half-way through.
fn fork_child_body(
    idx: usize,
    db: &Path,
    vfs: Vfs,
    rows: u64,
    inherited: &mut [Option<Connection>],
) -> i32 {
    let who = format!("child{idx}");
    let dir = db.parent().unwrap_or(Path::new(".")).to_path_buf();
    if idx % 2 == 1 {
        for c in inherited.iter_mut() {
            if let Some(c) = c.take() {
                let _ = c.close();
            }
        }
    }
    let mut grandchild = None;
    let (acked, mut err) = match fork_open(db, vfs) {
        Ok(conn) => {
            let half = if idx == 1 { rows / 2 } else { rows };
            let (mut acked, mut err) = fork_insert(&conn, &who, 0, half);
            if idx == 1 && err.is_none() {
                let mut mine = [Some(conn)];
                match fork_child(|| fork_grandchild(db, vfs, rows, &mut mine)) {
                    Ok(pid) => grandchild = Some(pid),
                    Err(e) => err = Some(format!("{who}: {e}")),
                }
                if let Some(conn) = mine[0].take() {
                    if err.is_none() {
                        let (more, e) = fork_insert(&conn, &who, half, rows - half);
                        acked += more;
                        err = e;
                    }
                    let _ = conn.close();
                }
            } else {
                let _ = conn.close();
            }
            (acked, err)
        }
        Err(e) => (0, Some(format!("{who}: open: {e}"))),
    };
    if let Some(pid) = grandchild {
        let status = wait_pid(pid);
        if status != 0 && err.is_none() {
            err = Some(format!("{who}: grandchild wait status {status:#x}"));
        }
    }
    write_result(&dir, &who, acked, &err);
    i32::from(err.is_some())
}

fn integrity(conn: &Connection) -> String {
    let rows = conn.prepare("PRAGMA integrity_check").and_then(|mut st| {
        st.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()
    });
    match rows {
        Ok(r) if r == ["ok"] => "ok".to_owned(),
        Ok(r) => one_line(&r.join("; ")).chars().take(300).collect(),
        Err(e) => one_line(&e.to_string()),
    }
}

/// One repetition; prints its line and returns whether it was clean.
fn fork_rep(n: usize, cfg: &ForkConfig) -> Result<bool, String> {
    let d = cfg.dir.join(format!("rep{n}"));
    std::fs::create_dir(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    let db = d.join("app.db");
    let ctx = |what: &str, e: rusqlite::Error| format!("{}: {what}: {e}", db.display());
    {
        let c = fork_open(&db, cfg.vfs).map_err(|e| ctx("open", e))?;
        let mode: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| ctx("journal_mode", e))?;
        if mode != "wal" {
            return Err(format!("{}: journal_mode is {mode:?}", db.display()));
        }
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER NOT NULL)",
        )
        .map_err(|e| ctx("create table", e))?;
        c.close().map_err(|(_, e)| ctx("close", e))?;
    }
    let idle = fork_open(&db, cfg.vfs).map_err(|e| ctx("open idle", e))?;
    let reader = fork_open(&db, cfg.vfs).map_err(|e| ctx("open reader", e))?;
    reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .map_err(|e| ctx("first read", e))?;
    if cfg.vfs == Vfs::Walguard && walguard::stats().db_opened < 1 {
        return Err("walguard::stats() says db_opened=0: not through walguard".to_owned());
    }
    let threads = harness_threads();
    if !threads.is_empty() {
        return Err(format!(
            "threads {threads:?} besides the main one: fork-writers forks only without \
             threads of its own"
        ));
    }

    let mut inherited = [Some(idle), Some(reader)];
    let mut pids = Vec::new();
    for i in 0..cfg.children {
        let pid = fork_child(|| fork_child_body(i, &db, cfg.vfs, cfg.rows, &mut inherited))?;
        pids.push(pid);
    }
    let mut failed = 0;
    for pid in pids {
        if wait_pid(pid) != 0 {
            failed += 1;
        }
    }
    let mut who_all: Vec<String> = (0..cfg.children).map(|i| format!("child{i}")).collect();
    if cfg.children > 1 {
        who_all.push("grandchild".to_owned());
    }
    let mut acked = 0;
    let mut errors = Vec::new();
    for who in &who_all {
        match read_result(&d, who) {
            Ok((a, e)) => {
                acked += a;
                errors.extend(e);
            }
            Err(e) => errors.push(e),
        }
    }
    let [Some(idle), Some(reader)] = inherited else {
        return Err("the parent lost its connections".to_owned());
    };
    let mut parent_acked = 0;
    for (c, label) in [(&idle, "parent-idle"), (&reader, "parent-reader")] {
        let (a, e) = fork_insert(c, label, 0, 1);
        parent_acked += a;
        errors.extend(e);
    }
    let (count, mut check) =
        match reader.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)) {
            Ok(c) => (c, integrity(&reader)),
            Err(e) => (-1, one_line(&e.to_string())),
        };
    let fresh = match fork_open(&db, cfg.vfs) {
        Ok(f) => {
            let r = integrity(&f);
            let _ = f.close();
            r
        }
        Err(e) => one_line(&e.to_string()),
    };
    if fresh != "ok" && check == "ok" {
        check = format!("fresh connection: {fresh}");
    }
    let deleted = crate::disrupt::own_deleted_sidecars(&db);
    let expected = acked + parent_acked;
    let intended = cfg.rows * who_all.len() as u64 + 2;
    let _ = idle.close();
    let _ = reader.close();
    let clean = failed == 0
        && errors.is_empty()
        && expected == intended
        && count == expected as i64
        && check == "ok"
        && deleted.is_empty();
    let lost = if count >= 0 {
        expected.saturating_sub(count as u64)
    } else {
        expected
    };
    let mut shown: Vec<String> = errors.iter().take(4).cloned().collect();
    shown.extend(deleted.iter().take(2).map(|d| d.to_string()));
    let errs = if shown.is_empty() {
        "-".to_owned()
    } else {
        shown.join(" | ")
    };
    println!(
        "rep={n} clean={} rows={count} expected={expected} intended={intended} lost={lost} \
         integrity={} deleted={} failed={failed} errors={errs}",
        u8::from(clean),
        check.replace(' ', "_"),
        deleted.len()
    );
    Ok(clean)
}

/// Entry point of `vfs-tests worker fork-writers ARGS...`: the pattern of a pre-forking
/// server (gunicorn `--preload`, Celery prefork) with `libc::fork`. Each repetition (in
/// `DIR/repN/app.db`): the parent opens the database in WAL mode, keeps an idle
/// connection and one that has read, forks `--children` children; odd children close
/// the two inherited connections first, even ones leave them untouched; every child
/// inserts `--rows` rows (one transaction each) through a connection of its own; child
/// 1 forks a grandchild half-way that closes what it inherited and inserts `--rows` rows
/// too. Children leave through `_exit`. Then the parent commits one row through each of
/// its connections and checks row count, `integrity_check` (held and fresh connection)
/// and its own descriptors on deleted `-wal`/`-shm`. Output, one line per repetition:
/// `rep=N clean=1|0 rows=R expected=E intended=I lost=L integrity=ok|... deleted=K
/// failed=F errors=...`, then `clean_reps=C` and `reps=N`. walguard is registered with
/// `walguard::register` (not as the default) and opened by name.
pub fn fork_writers_main(args: &[String]) -> ExitCode {
    let cfg = match parse_fork_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vfs-tests worker fork-writers: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cfg.vfs.prepare() {
        eprintln!("vfs-tests worker fork-writers: cannot register walguard: {e}");
        return ExitCode::from(2);
    }
    println!(
        "mode={} sqlite={} pid={}",
        cfg.vfs,
        rusqlite::version(),
        std::process::id()
    );
    let mut clean = 0;
    for n in 0..cfg.reps {
        match fork_rep(n, &cfg) {
            Ok(true) => clean += 1,
            Ok(false) => {}
            Err(e) => {
                eprintln!("vfs-tests worker fork-writers: repetition {n}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!("clean_reps={clean}");
    println!("reps={}", cfg.reps);
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// `vfs-tests worker fork-stale-shm`: a child inherits a connection whose `-shm` was
// replaced before the fork.
// ---------------------------------------------------------------------------------

const STALE_USAGE: &str = "usage: vfs-tests worker fork-stale-shm --vfs unix|walguard \
     --dir DIR --variant untouched|closed";

/// Rows the other process (Q) and the child (C) commit.
const STALE_ROWS: usize = 5;

/// A scripted `vfs-tests worker` driven from this (single) thread: one command, one
/// reply line, no reader threads (this process forks).
struct Scripted {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Scripted {
    fn start(vfs: Vfs, db: &Path, name: &str) -> Result<Scripted, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(["worker", "--vfs", vfs.name(), "--name", name, "--db"])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start worker {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Scripted {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends `cmd`; the reply line (`ok ...` or `err ...`).
    fn say(&mut self, cmd: &str) -> Result<String, String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("send {cmd:?}: {e}"))?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("worker exited before answering {cmd:?}")),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("read reply to {cmd:?}: {e}")),
        }
    }

    fn finish(mut self) {
        let _ = self.say("exit");
        let _ = self.child.wait();
    }
}

/// Entry point of `vfs-tests worker fork-stale-shm ARGS...`. Deterministic:
/// 1. this process (P) opens the database in WAL mode through `--vfs`, creates the
///    worker table, commits a row and keeps the connection A open (its `-shm` mapped);
/// 2. the `-shm` is removed (an outside `rm`);
/// 3. another process Q (`vfs-tests worker`, same VFS) opens the database, which
///    creates a new `-shm`, and commits 5 rows; Q stays open;
/// 4. P forks a child C: with `--variant untouched` C leaves A alone (never used, never
///    closed), with `closed` it closes A first; then C opens a connection of its own and
///    commits 5 rows (one transaction each), and leaves through `_exit`. With `no-fork`,
///    P itself opens that second connection and commits the rows (A stays open);
/// 5. while P still holds A (not used again) and Q its connection, a third process
///    (plain unix) reads every row and runs `integrity_check`.
///
/// On plain unix, C's new connection reuses the `-shm` mapping SQLite's unix VFS
/// inherited with A (its per-inode state survives the fork): C writes through the
/// removed `-shm`, over Q's frames, and Q's acknowledged commits are lost. Prints
/// `variant=V acked_p=1 acked_q=N acked_c=N rows=R lost=L integrity=... c_error=...
/// clean=1|0`.
pub fn fork_stale_shm_main(args: &[String]) -> ExitCode {
    match fork_stale_shm(args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vfs-tests worker fork-stale-shm: {e}");
            ExitCode::from(2)
        }
    }
}

fn fork_stale_shm(args: &[String]) -> Result<String, String> {
    let (mut vfs, mut dir, mut variant) = (None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{arg} needs a value; {STALE_USAGE}"))?;
        match arg.as_str() {
            "--vfs" => vfs = Some(Vfs::parse(v).ok_or_else(|| format!("unknown VFS {v:?}"))?),
            "--dir" => dir = Some(PathBuf::from(v)),
            "--variant" if ["untouched", "closed", "no-fork"].contains(&v.as_str()) => {
                variant = Some(v.clone())
            }
            other => return Err(format!("bad argument {other:?} {v:?}; {STALE_USAGE}")),
        }
    }
    let (vfs, dir, variant) = match (vfs, dir, variant) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(STALE_USAGE.to_owned()),
    };
    vfs.prepare()?;
    let db = dir.join("app.db");
    let ctx = |what: &str, e: rusqlite::Error| format!("{}: {what}: {e}", db.display());
    let a = fork_open(&db, vfs).map_err(|e| ctx("open A", e))?;
    let mode: String = a
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| ctx("journal_mode", e))?;
    if mode != "wal" {
        return Err(format!("journal_mode is {mode:?}"));
    }
    a.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB);
         INSERT INTO t(tag, payload) VALUES ('p0', zeroblob(64));",
    )
    .map_err(|e| ctx("create and insert", e))?;
    a.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .map_err(|e| ctx("read", e))?;
    let shm = crate::disrupt::sidecar(&db, "-shm");
    std::fs::remove_file(&shm).map_err(|e| format!("rm {}: {e}", shm.display()))?;

    let mut q = Scripted::start(vfs, &db, "Q")?;
    let mut acked_q = Vec::new();
    for i in 0..STALE_ROWS {
        let r = q.say(&format!(
            "exec INSERT INTO t(tag, payload) VALUES ('q{i}', zeroblob(64))"
        ))?;
        if r == "ok" {
            acked_q.push(format!("q{i}"));
        } else {
            return Err(format!("Q's commit {i} failed: {r}"));
        }
    }
    let threads = harness_threads();
    if !threads.is_empty() {
        return Err(format!("threads {threads:?} besides the main one"));
    }

    let close_a = variant == "closed";
    let mut inherited = [Some(a)];
    let second_connection = || {
        let (acked, err) = match fork_open(&db, vfs) {
            Ok(conn) => {
                let mut acked = 0;
                let mut err = None;
                for i in 0..STALE_ROWS {
                    let r = conn.execute(
                        "INSERT INTO t(tag, payload) VALUES (?1, zeroblob(64))",
                        [format!("c{i}")],
                    );
                    match r {
                        Ok(_) => acked += 1,
                        Err(e) => {
                            err = Some(one_line(&format!("row c{i}: {}", error_code(&e).1)));
                            break;
                        }
                    }
                }
                std::mem::forget(conn); // _exit with it open
                (acked, err)
            }
            Err(e) => (0, Some(format!("open: {e}"))),
        };
        write_result(&dir, "stale-child", acked, &err);
    };
    let status = if variant == "no-fork" {
        second_connection();
        0
    } else {
        let pid = fork_child(|| {
            if close_a {
                if let Some(c) = inherited[0].take() {
                    let _ = c.close();
                }
            }
            second_connection();
            0
        })?;
        wait_pid(pid)
    };
    let (acked_c, c_error) = read_result(&dir, "stale-child")?;

    // The verdict, read by a third process through plain unix while A and Q are open.
    let mut r = Scripted::start(Vfs::Unix, &db, "R")?;
    let rows = r.say("rows")?;
    let integrity = r.say("integrity")?;
    r.finish();
    q.finish();
    let [a] = inherited;
    std::mem::forget(a); // A is never used again (its -shm is gone)

    let tags: Vec<String> = match rows.strip_prefix("ok") {
        Some(p) => parse_rows(p.trim()).into_iter().map(|(_, t)| t).collect(),
        None => Vec::new(),
    };
    let mut expected = vec!["p0".to_owned()];
    expected.extend(acked_q);
    expected.extend((0..acked_c).map(|i| format!("c{i}")));
    let missing: Vec<&String> = expected.iter().filter(|t| !tags.contains(t)).collect();
    let integrity_ok = integrity == "ok ok";
    let clean = status == 0 && missing.is_empty() && integrity_ok && rows.starts_with("ok");
    Ok(format!(
        "variant={variant} acked_p=1 acked_q={STALE_ROWS} acked_c={acked_c} rows={} lost={} \
         missing={} integrity={} c_error={} child_status={status:#x} clean={}",
        tags.len(),
        missing.len(),
        if missing.is_empty() {
            "-".to_owned()
        } else {
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        },
        if integrity_ok {
            "ok".to_owned()
        } else {
            one_line(&integrity).replace(' ', "_")
        },
        c_error.as_deref().unwrap_or("-").replace(' ', "_"),
        u8::from(clean)
    ))
}

// ---------------------------------------------------------------------------------
// The client side, used by tests and the torture harness.
// ---------------------------------------------------------------------------------

/// Why talking to a worker failed.
#[derive(Debug)]
pub enum WorkerError {
    /// Spawning or writing to the worker failed.
    Io {
        /// Which worker.
        worker: String,
        /// What went wrong.
        error: io::Error,
        /// The worker's stderr so far.
        stderr: String,
    },
    /// No reply within the timeout; the worker was killed.
    Timeout {
        /// Which worker.
        worker: String,
        /// The command that got no answer.
        command: String,
        /// The worker's stderr so far.
        stderr: String,
    },
    /// The worker exited (or closed stdout) before answering.
    Exited {
        /// Which worker.
        worker: String,
        /// The command that got no answer.
        command: String,
        /// The worker's stderr.
        stderr: String,
    },
    /// The worker answered `err CODE MESSAGE`.
    Refused {
        /// Which worker.
        worker: String,
        /// The command.
        command: String,
        /// SQLite extended result code, or -1.
        code: i32,
        /// The message.
        message: String,
    },
    /// The reply was neither `ok` nor `err CODE ...`.
    Protocol {
        /// Which worker.
        worker: String,
        /// The reply line.
        line: String,
    },
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::Io {
                worker,
                error,
                stderr,
            } => write!(f, "worker {worker}: {error}; stderr: {stderr}"),
            WorkerError::Timeout {
                worker,
                command,
                stderr,
            } => write!(
                f,
                "worker {worker}: no reply to {command:?} in time (killed); stderr: {stderr}"
            ),
            WorkerError::Exited {
                worker,
                command,
                stderr,
            } => write!(
                f,
                "worker {worker}: exited before answering {command:?}; stderr: {stderr}"
            ),
            WorkerError::Refused {
                worker,
                command,
                code,
                message,
            } => write!(
                f,
                "worker {worker}: {command:?} failed: code {code}: {message}"
            ),
            WorkerError::Protocol { worker, line } => {
                write!(f, "worker {worker}: unexpected reply {line:?}")
            }
        }
    }
}

impl std::error::Error for WorkerError {}

/// A reply: `Ok(payload)` for `ok payload`, `Err((code, message))` for `err ...`.
pub type Reply = Result<String, (i32, String)>;

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    timeout: Duration,
    db: PathBuf,
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The `vfs-tests` binary (`env!("CARGO_BIN_EXE_vfs-tests")` in tests,
    /// `std::env::current_exe()` in the binary itself).
    pub exe: PathBuf,
    /// The VFS.
    pub vfs: Vfs,
    /// The database.
    pub db: PathBuf,
    /// The worker's label (row tags, error messages).
    pub name: String,
    /// `--flags` (`rwc` when `None`).
    pub flags: Option<String>,
    /// `--uid`.
    pub uid: Option<u32>,
}

impl WorkerSpec {
    /// A spec with default flags and no uid change.
    pub fn new(exe: &Path, vfs: Vfs, db: &Path, name: &str) -> WorkerSpec {
        WorkerSpec {
            exe: exe.to_path_buf(),
            vfs,
            db: db.to_path_buf(),
            name: name.to_owned(),
            flags: None,
            uid: None,
        }
    }

    /// Starts the worker.
    pub fn spawn(&self) -> Result<Worker, WorkerError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker")
            .arg("--vfs")
            .arg(self.vfs.name())
            .arg("--db")
            .arg(&self.db)
            .arg("--name")
            .arg(&self.name);
        if let Some(f) = &self.flags {
            cmd.arg("--flags").arg(f);
        }
        if let Some(u) = self.uid {
            cmd.arg("--uid").arg(u.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let io_err = |error: io::Error| WorkerError::Io {
            worker: self.name.clone(),
            error: io::Error::new(
                error.kind(),
                format!(
                    "spawn {} worker on {}: {error}",
                    self.exe.display(),
                    self.db.display()
                ),
            ),
            stderr: String::new(),
        };
        let mut child = cmd.spawn().map_err(io_err)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        if let Some(out) = stdout {
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
        if let Some(err) = stderr_pipe {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = sink.lock() {
                        // keep the tail only
                        if s.len() > 64 * 1024 {
                            let cut = s.len() - 32 * 1024;
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        Ok(Worker {
            name: self.name.clone(),
            child,
            stdin,
            lines: rx,
            stderr,
            timeout: Duration::from_secs(60),
            db: self.db.clone(),
        })
    }
}

impl Worker {
    /// Starts a worker with default options.
    pub fn spawn(exe: &Path, vfs: Vfs, db: &Path, name: &str) -> Result<Worker, WorkerError> {
        WorkerSpec::new(exe, vfs, db, name).spawn()
    }

    /// The worker's label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The database the worker opened.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Sets how long to wait for each reply (default 60 s).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// What the worker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends one command and returns its reply, `ok` or `err` alike. Fails only if the
    /// worker cannot be reached, dies, or does not answer in time (it is then killed).
    pub fn request(&mut self, command: &str) -> Result<Reply, WorkerError> {
        let line = self.roundtrip(command)?;
        parse_reply(&line).ok_or_else(|| WorkerError::Protocol {
            worker: self.name.clone(),
            line,
        })
    }

    /// Sends one command and returns the payload of an `ok` reply; an `err` reply is
    /// an error.
    pub fn ok(&mut self, command: &str) -> Result<String, WorkerError> {
        match self.request(command)? {
            Ok(payload) => Ok(payload),
            Err((code, message)) => Err(WorkerError::Refused {
                worker: self.name.clone(),
                command: command.to_owned(),
                code,
                message,
            }),
        }
    }

    fn roundtrip(&mut self, command: &str) -> Result<String, WorkerError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.exited(command));
        };
        if let Err(error) = writeln!(stdin, "{}", one_line(command)).and_then(|()| stdin.flush()) {
            if error.kind() == io::ErrorKind::BrokenPipe {
                return Err(self.exited(command));
            }
            return Err(WorkerError::Io {
                worker: self.name.clone(),
                error,
                stderr: self.stderr(),
            });
        }
        let deadline = Instant::now() + self.timeout;
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(WorkerError::Timeout {
                    worker: self.name.clone(),
                    command: command.to_owned(),
                    stderr: self.stderr(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.exited(command)),
        }
    }

    fn exited(&mut self, command: &str) -> WorkerError {
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        // Give the stderr reader a moment to drain the pipe.
        std::thread::sleep(Duration::from_millis(50));
        WorkerError::Exited {
            worker: self.name.clone(),
            command: command.to_owned(),
            stderr: format!("[{status}] {}", self.stderr()),
        }
    }

    /// Asks the worker to close its connection and exit, and waits for it.
    pub fn exit(mut self) -> Result<ExitStatus, WorkerError> {
        self.ok("exit")?;
        self.stdin = None;
        self.child.wait().map_err(|error| WorkerError::Io {
            worker: self.name.clone(),
            error,
            stderr: self.stderr(),
        })
    }

    /// Kills the worker without letting it close anything (a crash).
    pub fn kill(mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker still running here belongs to a failed test: do not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses `ok [payload]` / `err CODE MESSAGE`.
pub fn parse_reply(line: &str) -> Option<Reply> {
    if line == "ok" {
        return Some(Ok(String::new()));
    }
    if let Some(p) = line.strip_prefix("ok ") {
        return Some(Ok(p.to_owned()));
    }
    let rest = line.strip_prefix("err ")?;
    let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Err((code.parse().ok()?, msg.to_owned())))
}

/// Parses the payload of `write`/`rows` (`id:tag id:tag ...`).
pub fn parse_rows(payload: &str) -> Vec<(i64, String)> {
    payload
        .split_whitespace()
        .filter_map(|item| {
            let (id, tag) = item.split_once(':')?;
            Some((id.parse().ok()?, tag.to_owned()))
        })
        .collect()
}

/// Reads one counter from a `stats` payload (`{"name":value,...}`).
pub fn stat(json: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let start = json.find(&key)? + key.len();
    let digits: String = json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply("ok"), Some(Ok(String::new())));
        assert_eq!(parse_reply("ok 3 4"), Some(Ok("3 4".into())));
        assert_eq!(
            parse_reply("err 11 database disk image is malformed"),
            Some(Err((11, "database disk image is malformed".into())))
        );
        assert_eq!(parse_reply("err -1 x"), Some(Err((-1, "x".into()))));
        assert_eq!(parse_reply("nonsense"), None);
        assert_eq!(
            parse_rows("1:A-1-1 2:B-2-1"),
            vec![(1, "A-1-1".to_owned()), (2, "B-2-1".to_owned())]
        );
        assert_eq!(
            stat("{\"a\":1,\"files_opened\":23}", "files_opened"),
            Some(23)
        );
        assert_eq!(stat("{\"a\":1}", "b"), None);
    }
}
