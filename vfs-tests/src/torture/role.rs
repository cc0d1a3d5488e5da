//! The worker side: `vfs-tests torture-worker ...` (a hidden subcommand the campaign
//! re-executes its own binary with). One process, one role, one SQLite connection at a
//! time, until its standard input closes (the parent's "stop") or it is killed.
//!
//! - **writer**: `BEGIN IMMEDIATE`, 1-3 rows, `COMMIT`; after SQLite acknowledged the
//!   commit, one `write(2)` of `TAG K HASH\n` to its own ledger file (O_APPEND), before
//!   the next transaction.
//! - **reader**: reads the tail of a random ledger, then, in one read transaction,
//!   checks that those acknowledged transactions are visible with their content hash,
//!   and that a run of rows hashes to what their `h` column says.
//! - **churner**: opens a connection, reads or writes (sometimes in
//!   `locking_mode=EXCLUSIVE`), closes it, again and again.
//! - **checkpointer**: `PRAGMA wal_checkpoint(TRUNCATE|PASSIVE|RESTART|FULL)`.
//!
//! Writers, readers and the checkpointer also run the in-process lock-losing disruptors
//! ([`crate::disrupt`]: header peek, fchmod pass, second SQLite runtime) in a background
//! thread, and every role arms faults of [`crate::faults`] at random moments (header
//! reads through [`super::gate`]).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{ffi, params, Connection, OpenFlags};

use super::cli::{parse_u64, Knob};
use super::counters::{self, bump, C};
use super::gate;
use crate::disrupt::Disruptor;
use crate::faults::{self, Fault, Times};
use crate::worker::Vfs;
use crate::workload::{fnv1a64, Prng};

/// What a worker process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Commits transactions and logs them to its ledger.
    Writer,
    /// Verifies what it reads.
    Reader,
    /// Opens, uses and closes connections.
    Churner,
    /// Checkpoints.
    Checkpointer,
}

impl Role {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Churner => "churner",
            Role::Checkpointer => "checkpointer",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [
            Role::Writer,
            Role::Reader,
            Role::Churner,
            Role::Checkpointer,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }

    /// The role of worker `slot`: with 8 processes, 3 writers, 2 readers, 2 churners
    /// and a checkpointer.
    pub fn for_slot(slot: usize) -> Role {
        const FIRST: [Role; 8] = [
            Role::Writer,
            Role::Reader,
            Role::Churner,
            Role::Checkpointer,
            Role::Writer,
            Role::Reader,
            Role::Writer,
            Role::Churner,
        ];
        const MORE: [Role; 3] = [Role::Writer, Role::Reader, Role::Churner];
        FIRST
            .get(slot)
            .copied()
            .unwrap_or_else(|| MORE[(slot - FIRST.len()) % MORE.len()])
    }

    /// Whether the role keeps a connection open (and so runs the in-process
    /// lock-losing disruptors: a peek in a process without a connection loses nothing).
    fn long_lived(self) -> bool {
        self != Role::Churner
    }
}

/// How the parent starts a worker.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The role.
    pub role: Role,
    /// Slot number (stable across respawns).
    pub slot: usize,
    /// Incarnation of the slot (0, then one more per respawn).
    pub inc: u32,
    /// The VFS.
    pub vfs: Vfs,
    /// The database.
    pub db: PathBuf,
    /// This incarnation's ledger file.
    pub ledger: PathBuf,
    /// The directory of every ledger (readers sample them).
    pub ledger_dir: PathBuf,
    /// Seed of this incarnation's random choices.
    pub seed: u64,
    /// Knobs in force.
    pub enabled: BTreeSet<Knob>,
    /// Safety net: exit after this long even if nobody says stop.
    pub max: Duration,
    /// Disruptions start at this wall-clock time (milliseconds since the Unix epoch):
    /// the run begins with a warm-up of plain workload.
    pub disrupt_from_ms: u64,
}

impl WorkerArgs {
    /// The command-line arguments after `torture-worker`.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--role".into(),
            self.role.name().into(),
            "--slot".into(),
            self.slot.to_string(),
            "--inc".into(),
            self.inc.to_string(),
            "--vfs".into(),
            self.vfs.name().into(),
            "--db".into(),
            self.db.to_string_lossy().into_owned(),
            "--ledger".into(),
            self.ledger.to_string_lossy().into_owned(),
            "--ledger-dir".into(),
            self.ledger_dir.to_string_lossy().into_owned(),
            "--seed".into(),
            format!("{:#x}", self.seed),
            "--enable".into(),
            Knob::list(&self.enabled),
            "--max-secs".into(),
            self.max.as_secs().max(1).to_string(),
            "--disrupt-from-ms".into(),
            self.disrupt_from_ms.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Result<WorkerArgs, String> {
        let mut role = None;
        let mut slot = None;
        let mut inc = 0;
        let mut vfs = None;
        let mut db = None;
        let mut ledger = None;
        let mut ledger_dir = None;
        let mut seed = 0;
        let mut enabled = BTreeSet::new();
        let mut max = Duration::from_secs(600);
        let mut disrupt_from_ms = 0;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{arg} needs a value"))?
                .clone();
            let num = |v: &str| parse_u64(v).ok_or_else(|| format!("{arg}: bad number {v:?}"));
            match arg.as_str() {
                "--role" => {
                    role = Some(Role::parse(&value).ok_or_else(|| format!("bad role {value:?}"))?)
                }
                "--slot" => slot = Some(num(&value)? as usize),
                "--inc" => inc = num(&value)? as u32,
                "--vfs" => {
                    vfs = Some(Vfs::parse(&value).ok_or_else(|| format!("bad VFS {value:?}"))?)
                }
                "--db" => db = Some(PathBuf::from(value)),
                "--ledger" => ledger = Some(PathBuf::from(value)),
                "--ledger-dir" => ledger_dir = Some(PathBuf::from(value)),
                "--seed" => seed = num(&value)?,
                "--enable" => {
                    if value != "-" {
                        enabled = Knob::parse_list(&value)?;
                    }
                }
                "--max-secs" => max = Duration::from_secs(num(&value)?),
                "--disrupt-from-ms" => disrupt_from_ms = num(&value)?,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(WorkerArgs {
            role: role.ok_or("--role is required")?,
            slot: slot.ok_or("--slot is required")?,
            inc,
            vfs: vfs.ok_or("--vfs is required")?,
            db: db.ok_or("--db is required")?,
            ledger: ledger.ok_or("--ledger is required")?,
            ledger_dir: ledger_dir.ok_or("--ledger-dir is required")?,
            seed,
            enabled,
            max,
            disrupt_from_ms,
        })
    }
}

/// Set when the parent closed our standard input (or the safety deadline passed).
static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// When disruptions start (ms since the Unix epoch).
static DISRUPT_FROM_MS: AtomicU64 = AtomicU64::new(0);

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The warm-up is over.
fn disrupting() -> bool {
    now_ms() >= DISRUPT_FROM_MS.load(Ordering::Relaxed)
}

/// Prints one line to the parent (stdout is line-buffered and locked per call).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The classes of SQLite errors the campaign tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Busy,
    Io,
    Vnode,
    Corrupt,
    /// SQLITE_CORRUPT caused by an injected EIO read.
    EioCorrupt,
    NotADb,
    CantOpen,
    Other,
}

impl Class {
    fn of(e: &rusqlite::Error) -> (Class, i32) {
        let code = match e {
            rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
            _ => return (Class::Other, -1),
        };
        let class = match code & 0xff {
            ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => Class::Busy,
            ffi::SQLITE_IOERR if code == ffi::SQLITE_IOERR_VNODE => Class::Vnode,
            ffi::SQLITE_IOERR => Class::Io,
            ffi::SQLITE_CORRUPT => Class::Corrupt,
            ffi::SQLITE_NOTADB => Class::NotADb,
            ffi::SQLITE_CANTOPEN => Class::CantOpen,
            _ => Class::Other,
        };
        (class, code)
    }

    fn counter(self) -> C {
        match self {
            Class::Busy => C::busy,
            Class::Io => C::ioerr,
            Class::Vnode => C::vnode,
            Class::Corrupt => C::corrupt,
            Class::EioCorrupt => C::eio_corrupt,
            Class::NotADb => C::notadb,
            Class::CantOpen => C::cantopen,
            Class::Other => C::other_err,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Busy => "busy",
            Class::Io => "ioerr",
            Class::Vnode => "vnode",
            Class::Corrupt => "corrupt",
            Class::EioCorrupt => "eio-corrupt",
            Class::NotADb => "notadb",
            Class::CantOpen => "cantopen",
            Class::Other => "other",
        }
    }
}

/// One ledger entry: a transaction's tag, row count and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Tag of the transaction; its rows are tagged `TAG.0`, `TAG.1`, ...
    pub tag: String,
    /// Rows in the transaction.
    pub rows: u32,
    /// [`txn_hash`] of the rows' payloads.
    pub hash: u64,
}

impl Entry {
    /// The ledger line (with its newline).
    pub fn line(&self) -> String {
        format!("{} {} {:016x}\n", self.tag, self.rows, self.hash)
    }

    /// Parses a ledger line (without its newline).
    pub fn parse(line: &str) -> Option<Entry> {
        let mut f = line.split(' ');
        let tag = f.next()?.to_owned();
        let rows = f.next()?.parse().ok()?;
        let hash = u64::from_str_radix(f.next()?, 16).ok()?;
        if f.next().is_some() || tag.is_empty() {
            return None;
        }
        Some(Entry { tag, rows, hash })
    }
}

/// The content hash of a transaction: FNV-1a over its rows' payload hashes, in order.
pub fn txn_hash(row_hashes: &[u64]) -> u64 {
    let bytes: Vec<u8> = row_hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    fnv1a64(&bytes)
}

/// The complete lines of `text` (a trailing line without newline was cut by a kill and
/// is not an acknowledgement).
pub fn complete_entries(text: &str) -> impl Iterator<Item = Entry> + '_ {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().filter_map(Entry::parse)
}

struct Worker {
    a: WorkerArgs,
    rng: Prng,
    conn: Option<Connection>,
    ledger: File,
    seq: u64,
    /// The fault armed for the current operation, if any.
    armed: Option<(faults::Armed, Fault)>,
    db_suffix: String,
    wal_suffix: String,
    fault_knobs: Vec<Knob>,
    busy_ms: u64,
    sampled: BTreeSet<&'static str>,
}

impl Worker {
    fn on(&self, k: Knob) -> bool {
        self.a.enabled.contains(&k)
    }

    /// Counts an error, reports the ones that matter at once, and returns its class.
    fn note(&mut self, what: &str, e: &rusqlite::Error) -> Class {
        let (mut class, code) = Class::of(e);
        // SQLite reports a read that failed with EIO as SQLITE_CORRUPT
        // (SQLITE_IOERR_CORRUPTFS, converted in sqlite3VdbeExec): when this operation
        // had an EIO read injected, that is what the error is, not a damaged file.
        if class == Class::Corrupt
            && matches!(&self.armed, Some((a, Fault::ReadError(_))) if a.injected() > 0)
        {
            class = Class::EioCorrupt;
        }
        bump(class.counter());
        let msg = one_line(&format!(
            "{} slot {} inc {} {what}: code {code}: {e}",
            self.a.role.name(),
            self.a.slot,
            self.a.inc
        ));
        match class {
            Class::NotADb => say(&format!("event notadb {msg}")),
            Class::Corrupt => say(&format!("event corrupt {msg}")),
            _ => {
                if self.sampled.insert(class.name()) {
                    say(&format!("sample {} {msg}", class.name()));
                }
            }
        }
        class
    }

    /// After an error: back off on busy, otherwise drop the connection (an application
    /// reopens after an I/O error, a replaced sidecar or a bad page) and reopen later.
    fn recover(&mut self, class: Class) {
        if let Some(c) = self.conn.as_ref() {
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
        }
        match class {
            Class::Busy => std::thread::sleep(Duration::from_millis(1 + self.rng.below(4))),
            _ => self.close(),
        }
    }

    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            // A failed close leaves the handle to SQLite's zombie close on drop.
            let _ = c.close();
        }
    }

    /// Opens the connection if there is none. `false` when that failed (counted).
    fn ensure_conn(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags_and_vfs(&self.a.db, flags, self.a.vfs.name())
            .and_then(|c| {
                c.busy_timeout(Duration::from_millis(self.busy_ms))?;
                c.pragma_update(None, "synchronous", "NORMAL")?;
                Ok(c)
            });
        match opened {
            Ok(c) => {
                bump(C::opens);
                self.conn = Some(c);
                true
            }
            Err(e) => {
                bump(C::open_failed);
                let class = self.note("open", &e);
                if class == Class::Busy {
                    std::thread::sleep(Duration::from_millis(2));
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
                false
            }
        }
    }

    /// Arms one random fault (of the enabled kinds) with probability `percent`.
    fn maybe_arm(&mut self, percent: u64, header_only: bool) {
        self.disarm();
        if self.fault_knobs.is_empty() || self.rng.below(100) >= percent || !disrupting() {
            return;
        }
        let knobs: Vec<Knob> = self
            .fault_knobs
            .iter()
            .copied()
            .filter(|k| !header_only || matches!(k, Knob::ShortRead | Knob::EmptyRead))
            .collect();
        if knobs.is_empty() {
            return;
        }
        let knob = knobs[self.rng.below(knobs.len() as u64) as usize];
        let (suffix, fault, calls, header) = match knob {
            Knob::ShortRead | Knob::EmptyRead => {
                let f = if knob == Knob::ShortRead {
                    Fault::ShortRead
                } else {
                    Fault::EmptyRead
                };
                // 1-3 in a row: G3's retries are meant to outlast a transient burst.
                (
                    self.db_suffix.clone(),
                    f,
                    1 + self.rng.below(3) as u32,
                    true,
                )
            }
            Knob::Eio => {
                let suffix = if self.rng.below(2) == 0 {
                    self.db_suffix.clone()
                } else {
                    self.wal_suffix.clone()
                };
                let f = match self.rng.below(3) {
                    0 => Fault::ReadError(faults::EIO),
                    1 => Fault::WriteError(faults::EIO),
                    _ => Fault::FstatError(faults::EIO),
                };
                (suffix, f, 1, false)
            }
            Knob::ZeroSize => (self.db_suffix.clone(), Fault::ZeroSize, 1, false),
            _ => return,
        };
        gate::header_only(header);
        bump(C::fault_arms);
        self.armed = Some((faults::arm(&suffix, fault, Times::Calls(calls)), fault));
    }

    fn disarm(&mut self) {
        if self.armed.take().is_some() {
            gate::header_only(false);
        }
    }

    /// One write transaction; acknowledged ones go to the ledger.
    fn write_txn(&mut self) -> bool {
        if !self.ensure_conn() {
            return false;
        }
        let k = 1 + self.rng.below(3) as u32;
        let tag = format!("s{}i{}n{}", self.a.slot, self.a.inc, self.seq);
        self.seq += 1;
        let mut rows = Vec::with_capacity(k as usize);
        let mut hashes = Vec::with_capacity(k as usize);
        for i in 0..k {
            let len = match self.rng.below(40) {
                0 => 2000 + self.rng.below(4000) as usize, // overflow pages
                _ => 16 + self.rng.below(240) as usize,
            };
            let mut p = vec![0u8; len];
            self.rng.fill(&mut p);
            let h = fnv1a64(&p);
            hashes.push(h);
            rows.push((format!("{tag}.{i}"), h as i64, p));
        }
        let entry = Entry {
            tag,
            rows: k,
            hash: txn_hash(&hashes),
        };
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        let res = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            {
                let mut st =
                    conn.prepare_cached("INSERT INTO t(tag, h, payload) VALUES (?1, ?2, ?3)")?;
                for (t, h, p) in &rows {
                    st.execute(params![t, h, p])?;
                }
            }
            conn.execute_batch("COMMIT")
        })();
        match res {
            Ok(()) => {
                // Acknowledged: log it before anything else happens.
                if let Err(e) = self.ledger.write_all(entry.line().as_bytes()) {
                    eprintln!(
                        "torture worker: cannot append to ledger {}: {e}",
                        self.a.ledger.display()
                    );
                    std::process::exit(3);
                }
                bump(C::acked);
                counters::add(C::rows_written, u64::from(k));
                true
            }
            Err(e) => {
                bump(C::txn_failed);
                let class = self.note("write", &e);
                self.recover(class);
                false
            }
        }
    }

    /// The last entries of a random ledger (read before the read transaction starts,
    /// so every one of them must be visible in it).
    fn ledger_sample(&mut self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.a.ledger_dir) else {
            return Vec::new();
        };
        let files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        if files.is_empty() {
            return Vec::new();
        }
        let path = &files[self.rng.below(files.len() as u64) as usize];
        let Ok(mut f) = File::open(path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(1024);
        if f.seek(SeekFrom::Start(start)).is_err() {
            return Vec::new();
        }
        let mut buf = String::new();
        if f.take(1024).read_to_string(&mut buf).is_err() {
            return Vec::new();
        }
        // The first line may be cut by the seek: skip it unless we read from 0.
        let text = if start > 0 {
            buf.split_once('\n').map(|(_, rest)| rest).unwrap_or("")
        } else {
            &buf
        };
        let all: Vec<Entry> = complete_entries(text).collect();
        all[all.len().saturating_sub(2)..].to_vec()
    }

    /// One read transaction: acknowledged commits visible, rows hash to their `h`.
    fn read_txn(&mut self) {
        let sample = self.ledger_sample();
        if !self.ensure_conn() {
            return;
        }
        let from = self.rng.next_u64();
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let mut issues = Vec::new();
        let res = (|| -> rusqlite::Result<(u64, u64)> {
            conn.execute_batch("BEGIN")?;
            let max: i64 =
                conn.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))?;
            let start = (from % (max.max(0) as u64 + 1)) as i64;
            let mut verified = 0;
            {
                let mut st = conn.prepare_cached(
                    "SELECT id, tag, h, payload FROM t WHERE id >= ?1 ORDER BY id LIMIT 8",
                )?;
                let mut rows = st.query([start])?;
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    let tag: String = r.get(1)?;
                    let h: i64 = r.get(2)?;
                    let p: Vec<u8> = r.get(3)?;
                    verified += 1;
                    if fnv1a64(&p) as i64 != h {
                        issues.push(format!(
                            "hash row {id} ({tag}): payload of {} bytes hashes to {:016x}, h says {:016x}",
                            p.len(),
                            fnv1a64(&p),
                            h as u64
                        ));
                    }
                }
            }
            let mut checked = 0;
            {
                let mut st = conn.prepare_cached("SELECT payload FROM t WHERE tag = ?1")?;
                for e in &sample {
                    checked += 1;
                    let mut hashes = Vec::new();
                    let mut missing = Vec::new();
                    for i in 0..e.rows {
                        let t = format!("{}.{i}", e.tag);
                        let mut rows = st.query([&t])?;
                        match rows.next()? {
                            Some(r) => hashes.push(fnv1a64(&r.get::<_, Vec<u8>>(0)?)),
                            None => missing.push(t),
                        }
                    }
                    if !missing.is_empty() {
                        issues.push(format!(
                            "live-missing acknowledged transaction {} not visible (rows {})",
                            e.tag,
                            missing.join(",")
                        ));
                    } else if txn_hash(&hashes) != e.hash {
                        issues.push(format!(
                            "hash acknowledged transaction {} reads back with another content hash",
                            e.tag
                        ));
                    }
                }
            }
            conn.execute_batch("COMMIT")?;
            Ok((verified, checked))
        })();
        for issue in &issues {
            say(&format!(
                "event {issue} (reader slot {} inc {})",
                self.a.slot, self.a.inc
            ));
        }
        match res {
            Ok((verified, checked)) => {
                bump(C::reads);
                counters::add(C::rows_verified, verified);
                counters::add(C::live_checked, checked);
            }
            Err(e) => {
                let class = self.note("read", &e);
                self.recover(class);
            }
        }
    }

    fn checkpoint(&mut self) {
        if !self.ensure_conn() {
            return;
        }
        let mode = match self.rng.below(10) {
            0..=3 => "TRUNCATE",
            4..=7 => "PASSIVE",
            8 => "RESTART",
            _ => "FULL",
        };
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let res = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            r.get::<_, i64>(0)
        });
        match res {
            Ok(busy) => {
                bump(C::checkpoints);
                if busy != 0 {
                    bump(C::checkpoint_busy);
                }
            }
            Err(e) => {
                let class = self.note("checkpoint", &e);
                self.recover(class);
            }
        }
    }

    /// Open, use, close.
    fn churn(&mut self) {
        self.close();
        self.maybe_arm(50, true);
        let exclusive = self.on(Knob::ExclusiveOpen) && self.rng.below(100) < 15 && disrupting();
        if !self.ensure_conn() {
            self.disarm();
            return;
        }
        if exclusive {
            bump(C::excl_tried);
            let set = self.conn.as_ref().map(|c| {
                c.execute_batch("PRAGMA locking_mode=EXCLUSIVE")
                    .and_then(|()| c.busy_timeout(Duration::from_millis(30)))
            });
            match set {
                Some(Ok(())) if self.write_txn() => bump(C::excl_ok),
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let class = self.note("exclusive", &e);
                    self.recover(class);
                }
                None => {}
            }
        } else {
            match self.rng.below(3) {
                0 => {
                    self.write_txn();
                }
                _ => self.read_txn(),
            }
        }
        self.close();
        self.disarm();
        std::thread::sleep(Duration::from_millis(self.rng.below(8)));
    }

    fn run(&mut self, deadline: Instant) {
        while !stopping() && Instant::now() < deadline {
            match self.a.role {
                Role::Writer => {
                    self.maybe_arm(6, false);
                    self.write_txn();
                    self.disarm();
                    std::thread::sleep(Duration::from_micros(self.rng.below(400)));
                }
                Role::Reader => {
                    self.maybe_arm(12, false);
                    self.read_txn();
                    self.disarm();
                    std::thread::sleep(Duration::from_micros(200 + self.rng.below(800)));
                }
                Role::Churner => self.churn(),
                Role::Checkpointer => {
                    self.maybe_arm(25, false);
                    self.checkpoint();
                    self.disarm();
                    std::thread::sleep(Duration::from_millis(5 + self.rng.below(30)));
                }
            }
        }
        self.disarm();
        self.close();
    }
}

/// The in-process lock-losing disruptors, in a background thread.
fn disrupt_thread(db: PathBuf, kinds: Vec<Disruptor>, seed: u64) {
    let mut rng = Prng::new(seed);
    while !stopping() {
        std::thread::sleep(Duration::from_millis(3 + rng.below(25)));
        if stopping() {
            break;
        }
        if !disrupting() {
            continue;
        }
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        match kind.run_once(&db) {
            Ok(_) => bump(match kind {
                Disruptor::Peek => C::peek,
                Disruptor::Fchmod => C::fchmod,
                Disruptor::SecondRuntime => C::second_runtime,
            }),
            Err(e) => {
                bump(C::disrupt_err);
                if counters::get(C::disrupt_err) == 1 {
                    say(&format!("sample disrupt {kind:?}: {}", one_line(&e)));
                }
            }
        }
    }
}

fn suffix_of(db: &Path, sidecar: &str) -> String {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("/{name}{sidecar}")
}

/// Entry point of `vfs-tests torture-worker ARGS...`.
pub fn worker_main(args: &[String]) -> ExitCode {
    let a = match WorkerArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vfs-tests torture-worker: {e}");
            return ExitCode::from(2);
        }
    };
    DISRUPT_FROM_MS.store(a.disrupt_from_ms, Ordering::Relaxed);
    if let Err(e) = a.vfs.prepare() {
        eprintln!("vfs-tests torture-worker: cannot register walguard: {e}");
        return ExitCode::from(2);
    }
    let fault_knobs: Vec<Knob> = Knob::FAULTS
        .into_iter()
        .filter(|k| a.enabled.contains(k))
        .collect();
    if !fault_knobs.is_empty() {
        if let Err(e) = gate::install() {
            eprintln!("vfs-tests torture-worker: cannot install the fault layer: {e}");
            return ExitCode::from(2);
        }
    }
    let ledger = match OpenOptions::new().create(true).append(true).open(&a.ledger) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "vfs-tests torture-worker: cannot open ledger {}: {e}",
                a.ledger.display()
            );
            return ExitCode::from(2);
        }
    };

    // Stop when the parent closes our stdin.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        STOP.store(true, Ordering::Relaxed);
    });
    // Report counters ten times a second.
    std::thread::spawn(|| loop {
        say(&counters::stats_line());
        std::thread::sleep(Duration::from_millis(100));
    });

    let mut disrupt = None;
    if a.role.long_lived() {
        let kinds: Vec<Disruptor> = [
            (Knob::Peek, Disruptor::Peek),
            (Knob::Fchmod, Disruptor::Fchmod),
            (Knob::SecondRuntime, Disruptor::SecondRuntime),
        ]
        .into_iter()
        .filter(|(k, _)| a.enabled.contains(k))
        .map(|(_, d)| d)
        .collect();
        if !kinds.is_empty() {
            let db = a.db.clone();
            let seed = a.seed ^ 0xd15c_0de5;
            disrupt = Some(std::thread::spawn(move || disrupt_thread(db, kinds, seed)));
        }
    }

    let deadline = Instant::now() + a.max;
    let mut w = Worker {
        rng: Prng::new(a.seed),
        conn: None,
        ledger,
        seq: 0,
        armed: None,
        db_suffix: suffix_of(&a.db, ""),
        wal_suffix: suffix_of(&a.db, "-wal"),
        fault_knobs,
        busy_ms: 5_000,
        sampled: BTreeSet::new(),
        a,
    };
    w.run(deadline);
    STOP.store(true, Ordering::Relaxed);
    if let Some(h) = disrupt {
        let _ = h.join();
    }
    say(&counters::stats_line());
    say("bye");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_lines_round_trip_and_cut_lines_are_ignored() {
        let e = Entry {
            tag: "s1i2n3".into(),
            rows: 2,
            hash: 0xdead_beef,
        };
        assert_eq!(Entry::parse(e.line().trim_end()), Some(e.clone()));
        let text = format!("{}{}s9i9n9 1 00", e.line(), e.line());
        assert_eq!(complete_entries(&text).count(), 2);
        assert_eq!(complete_entries("s1 1 0").count(), 0);
        assert_eq!(Entry::parse("x 1"), None);
        assert_eq!(Entry::parse("x 1 zz"), None);
    }

    #[test]
    fn roles_for_eight_processes() {
        let roles: Vec<Role> = (0..8).map(Role::for_slot).collect();
        let count = |r| roles.iter().filter(|x| **x == r).count();
        assert_eq!(count(Role::Writer), 3);
        assert_eq!(count(Role::Reader), 2);
        assert_eq!(count(Role::Churner), 2);
        assert_eq!(count(Role::Checkpointer), 1);
        assert_eq!(Role::for_slot(8), Role::Writer);
    }

    #[test]
    fn worker_args_round_trip() {
        let a = WorkerArgs {
            role: Role::Churner,
            slot: 4,
            inc: 2,
            vfs: Vfs::Walguard,
            db: "/tmp/x/t.db".into(),
            ledger: "/tmp/l/4.2".into(),
            ledger_dir: "/tmp/l".into(),
            seed: 77,
            enabled: [Knob::Peek, Knob::Eio].into_iter().collect(),
            max: Duration::from_secs(90),
            disrupt_from_ms: 1_800_000_000_000,
        };
        let b = WorkerArgs::parse(&a.to_args()).expect("parse");
        assert_eq!(b.to_args(), a.to_args());
    }
}
