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
//!
//! ## The fork disruptor ([`Knob::Fork`])
//! Writers, readers and the checkpointer (processes that hold a connection) fork now and
//! then, the way a pre-forking server does after opening its database. The child (see
//! [`Worker::fork_child_work`]) either leaves the connection it inherited untouched
//! (never used, never closed) or first closes it; then it opens a connection of its own,
//! commits 1-20 transactions exactly as a writer does, logging each acknowledged one to a
//! ledger of its own (`slotS.incI.forkN.writer`, tags `sSiIfNnK`), so the verification
//! and the readers account for them like every other commit; it closes its own
//! connection or leaves it open, and leaves through `_exit` (no destructor, no clean-up).
//! It sends its counters back through a pipe; the parent adds them to its own. A child
//! that crashes, or is still running after [`FORK_CHILD_DEADLINE`], is a `fork-crash`
//! event, which fails the run. Children die with their parent (`PR_SET_PDEATHSIG`, set
//! again in the child: it is not inherited), so `kill -9` of a worker takes its child too.
//!
//! The worker has helper threads (stdin watcher, counter reports, disruptors); a child of
//! a multi-threaded process has only the forking thread. The helpers hold
//! [`FORK_GATE`] (shared) around everything that takes a lock a child could need (stdout,
//! the second runtime), `fork` holds it exclusively, and the child writes its lines to
//! descriptor 1 directly; SQLite is used by the main thread only.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
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

/// Held shared by the helper threads around their output and disruptions, exclusively
/// around `fork()`: a forked child starts with none of their locks held.
static FORK_GATE: RwLock<()> = RwLock::new(());

fn fork_gate_shared() -> RwLockReadGuard<'static, ()> {
    FORK_GATE.read().unwrap_or_else(|e| e.into_inner())
}

/// Set in a forked child: [`say`] writes to descriptor 1 itself (one `write` per line,
/// atomic on a pipe below `PIPE_BUF`), never through the inherited `Stdout`.
static IN_FORK_CHILD: AtomicBool = AtomicBool::new(false);

/// Transactions a forked child commits: 1 to this many.
const FORK_CHILD_TXNS: u64 = 20;
/// A forked child starts no transaction after this long.
const FORK_CHILD_BUDGET: Duration = Duration::from_secs(5);
/// A forked child still running this long after the fork is killed and counted as hung.
pub const FORK_CHILD_DEADLINE: Duration = Duration::from_secs(30);
/// At stop, how long a worker waits for its forked child before killing it (counted as
/// hung). Well inside the campaign's 20 s stop deadline.
const FORK_STOP_WAIT: Duration = Duration::from_secs(12);

/// Writes all of `bytes` to descriptor `fd` (retrying short writes and EINTR).
fn write_fd(fd: libc::c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice to a descriptor this process holds.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Prints one line to the parent (stdout is line-buffered and locked per call).
fn say(line: &str) {
    if IN_FORK_CHILD.load(Ordering::Relaxed) {
        let mut cut = line.len().min(3800);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut l = String::with_capacity(cut + 1);
        l.push_str(&line[..cut]);
        l.push('\n');
        write_fd(1, l.as_bytes());
        return;
    }
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

/// A forked child in flight.
struct ForkChild {
    pid: libc::pid_t,
    /// Read end of the pipe the child sends its counters through.
    pipe: File,
    started: Instant,
    n: u64,
}

/// What a forked child is to do (decided by the parent, from the parent's seed).
#[derive(Debug, Clone, Copy)]
struct ForkPlan {
    n: u64,
    close_inherited: bool,
    close_own: bool,
    txns: u64,
    seed: u64,
}

struct Worker {
    a: WorkerArgs,
    rng: Prng,
    conn: Option<Connection>,
    ledger: File,
    /// Tags are `<tag_prefix>n<seq>`: `sSiI` for the worker, `sSiIfN` for its children.
    tag_prefix: String,
    seq: u64,
    /// The forked child in flight (the fork disruptor), at most one.
    fork: Option<ForkChild>,
    /// When the next fork is due (`None` until the first look after the warm-up).
    next_fork: Option<Instant>,
    /// Children forked so far.
    forks: u64,
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
        let tag = format!("{}n{}", self.tag_prefix, self.seq);
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
            if self.a.role.long_lived() {
                self.maybe_fork();
            }
        }
        self.disarm();
        self.reap_fork(true);
        self.close();
    }

    /// The fork disruptor: reaps a finished child, and forks a new one when one is due.
    /// Called between operations (no transaction open, no fault armed).
    fn maybe_fork(&mut self) {
        self.reap_fork(false);
        if !self.on(Knob::Fork) || self.fork.is_some() || !disrupting() {
            return;
        }
        let now = Instant::now();
        match self.next_fork {
            None => {
                self.next_fork = Some(now + Duration::from_millis(self.rng.below(1500)));
                return;
            }
            Some(t) if now < t => return,
            Some(_) => {}
        }
        self.next_fork = Some(now + Duration::from_millis(200 + self.rng.below(800)));
        let plan = ForkPlan {
            n: self.forks,
            close_inherited: self.rng.below(2) == 0 && self.conn.is_some(),
            close_own: self.rng.below(2) == 0,
            txns: 1 + self.rng.below(FORK_CHILD_TXNS),
            seed: self.rng.next_u64(),
        };
        self.forks += 1;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            self.fork_error(&format!("pipe2: {}", io::Error::last_os_error()));
            return;
        }
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let gate = FORK_GATE.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the helper threads are held off by the gate (none holds a lock the
        // child needs); the child runs `fork_child_main` and leaves through `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            self.fork_child_main(parent, plan, fds);
        }
        drop(gate);
        // SAFETY: the write end is ours and used only by the child from now on.
        unsafe { libc::close(fds[1]) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the read end is ours and not used any more.
            unsafe { libc::close(fds[0]) };
            self.fork_error(&format!("fork: {e}"));
            return;
        }
        bump(C::fork_children);
        if plan.close_inherited {
            bump(C::fork_closed_inherited);
        }
        self.fork = Some(ForkChild {
            pid,
            // SAFETY: a descriptor pipe2 just gave us, owned by this File from now on.
            pipe: unsafe { File::from_raw_fd(fds[0]) },
            started: now,
            n: plan.n,
        });
    }

    /// A fork that could not be made (out of processes or descriptors): the harness's
    /// problem, not the VFS's.
    fn fork_error(&mut self, e: &str) {
        bump(C::disrupt_err);
        if self.sampled.insert("fork-error") {
            say(&format!("sample disrupt fork: {}", one_line(e)));
        }
    }

    /// Collects the forked child if it has finished (with `wait`: waits for it, at most
    /// [`FORK_STOP_WAIT`]); one still running past its deadline is killed and counted.
    fn reap_fork(&mut self, wait: bool) {
        let Some(mut ch) = self.fork.take() else {
            return;
        };
        let kill_at = if wait {
            (Instant::now() + FORK_STOP_WAIT).min(ch.started + FORK_CHILD_DEADLINE)
        } else {
            ch.started + FORK_CHILD_DEADLINE
        };
        let mut status = 0;
        let mut hung = false;
        loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(ch.pid, &mut status, libc::WNOHANG) };
            if rc == ch.pid {
                break;
            }
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return; // not our child any more: nothing to collect
            }
            if Instant::now() >= kill_at {
                hung = true;
                // SAFETY: kill and a blocking waitpid of our own, unreaped child.
                unsafe {
                    libc::kill(ch.pid, libc::SIGKILL);
                    libc::waitpid(ch.pid, &mut status, 0);
                }
                break;
            }
            if !wait {
                self.fork = Some(ch);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut text = String::new();
        let _ = ch.pipe.read_to_string(&mut text);
        counters::add_deltas(text.trim());
        let what = if hung {
            Some(format!(
                "still running {:.1} s after the fork: killed",
                ch.started.elapsed().as_secs_f64()
            ))
        } else if libc::WIFSIGNALED(status) {
            Some(format!("killed by signal {}", libc::WTERMSIG(status)))
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            Some(format!("exit status {}", libc::WEXITSTATUS(status)))
        } else {
            None
        };
        if let Some(what) = what {
            bump(C::fork_failed);
            say(&format!(
                "event fork-crash child {} of {} slot {} inc {} (pid {}): {what}",
                ch.n,
                self.a.role.name(),
                self.a.slot,
                self.a.inc,
                ch.pid
            ));
        }
    }

    /// The forked child: never returns.
    fn fork_child_main(&mut self, parent: libc::pid_t, plan: ForkPlan, fds: [libc::c_int; 2]) -> ! {
        IN_FORK_CHILD.store(true, Ordering::SeqCst);
        // SAFETY: closing the pipe's read end (the parent's), then plain prctl/getppid;
        // _exit ends the child at once if its parent is already gone.
        unsafe {
            libc::close(fds[0]);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                libc::_exit(97);
            }
        }
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.fork_child_work(plan, fds[1])
        }))
        .unwrap_or(101);
        // SAFETY: leaves the child without destructors or exit handlers, like os._exit.
        unsafe { libc::_exit(code) }
    }

    /// What a forked child does (see the module documentation). Returns the exit status.
    fn fork_child_work(&mut self, plan: ForkPlan, report_fd: libc::c_int) -> i32 {
        let before = counters::snapshot();
        match self.conn.take() {
            // SQLite forbids using an inherited connection; closing one is what real
            // children do (explicitly, or a garbage collector does it).
            Some(c) if plan.close_inherited => {
                let _ = c.close();
            }
            // Left untouched: never used, never closed (no destructor runs before _exit).
            Some(c) => std::mem::forget(c),
            None => {}
        }
        self.armed = None;
        self.rng = Prng::new(plan.seed);
        self.seq = 0;
        self.busy_ms = 2_000;
        self.tag_prefix = format!("s{}i{}f{}", self.a.slot, self.a.inc, plan.n);
        let ledger = self.a.ledger_dir.join(format!(
            "slot{}.inc{}.fork{}.writer",
            self.a.slot, self.a.inc, plan.n
        ));
        self.ledger = match OpenOptions::new().create(true).append(true).open(&ledger) {
            Ok(f) => f,
            Err(e) => {
                say(&format!(
                    "sample disrupt fork child cannot open ledger {}: {e}",
                    ledger.display()
                ));
                return 3;
            }
        };
        self.a.ledger = ledger;
        let start = Instant::now();
        let (mut done, mut tries) = (0, 0);
        while done < plan.txns && tries < plan.txns * 4 && start.elapsed() < FORK_CHILD_BUDGET {
            tries += 1;
            if self.write_txn() {
                done += 1;
                bump(C::fork_acked);
            } else {
                std::thread::sleep(Duration::from_millis(1 + self.rng.below(3)));
            }
        }
        if plan.close_own {
            self.close();
        } else if let Some(c) = self.conn.take() {
            std::mem::forget(c); // exits with it open, like a killed process
        }
        let mut line = counters::delta_line(&before);
        line.push('\n');
        write_fd(report_fd, line.as_bytes());
        0
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
        let _gate = fork_gate_shared();
        match kind.run_once(&db) {
            Ok(_) => bump(match kind {
                Disruptor::Peek => C::peek,
                Disruptor::Fchmod => C::fchmod,
                Disruptor::SecondRuntime => C::second_runtime,
            }),
            Err(e) => {
                // The second runtime's query can fail on a database the baseline already
                // broke; its open and close (the disruption) happened all the same.
                if kind == Disruptor::SecondRuntime && e.contains("query failed") {
                    bump(C::second_runtime);
                }
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
        {
            let _gate = fork_gate_shared();
            say(&counters::stats_line());
        }
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
        tag_prefix: format!("s{}i{}", a.slot, a.inc),
        seq: 0,
        fork: None,
        next_fork: None,
        forks: 0,
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
