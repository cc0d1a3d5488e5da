//! # walguard
//!
//! A SQLite VFS shim that keeps WAL databases shared by many processes from being
//! corrupted. It wraps the VFS that is the default when it registers (the `unix` VFS on
//! Linux), forwards every call to it, and adds guards at the file-system layer:
//!
//! | guarantee | module |
//! |---|---|
//! | G1 one WAL index (lock mirroring, unlink refusal) | [`g1_one_wal_index`](crate::g1_one_wal_index) |
//! | G2 serialised WAL set-up and tear-down (the gate) | `g2_wal_lifecycle` |
//! | G3 no false "not a database" | `g3_short_header_reads` |
//! | G4 a replaced sidecar is detected | `g4_sidecar_identity` |
//! | G5 torn extends caught at commit | `g5_torn_extend` |
//!
//! Beneath the guards: `shm` (the `-shm`, served by walguard with OFD locks),
//! `db_locks` (walguard's locks on the database file and the descriptor that carries
//! them), `registry` (one node per database), `fd` (descriptors and the ledger),
//! `unix_fd` (the unix VFS's own descriptors), `g4_sidecar_watch` (the watcher thread),
//! `fork_safety`, `refusal` (how a guard says no). `io` and `vfs` are the trampolines.
//!
//! ```no_run
//! walguard::register(walguard::Options::default()).expect("register walguard");
//! let conn = rusqlite::Connection::open("app.db").unwrap(); // goes through walguard
//! ```
//!
//! The same crate builds the loadable extension `libwalguard.so` for Python, the
//! `sqlite3` shell and other languages (see the README).

#![deny(unsafe_op_in_unsafe_fn)]

mod api;
mod db_locks;
mod ext;
mod fd;
mod file_ops;
mod fork_safety;
pub mod g1_one_wal_index;
mod g2_wal_lifecycle;
mod g3_short_header_reads;
mod g4_sidecar_identity;
mod g4_sidecar_watch;
mod g5_torn_extend;
mod header;
mod io;
mod refusal;
mod registry;
mod shm;
mod sqlfn;
mod stats;
mod unix_fd;
mod vfs;

use std::fmt;

pub use stats::Stats;

/// The name walguard registers under unless told otherwise.
pub const DEFAULT_NAME: &str = "walguard";

/// How [`register`] registers walguard.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The VFS name (`file:app.db?vfs=NAME`). Default `"walguard"`.
    pub name: String,
    /// Make walguard the process's default VFS, so every connection that names no VFS
    /// goes through it. Default `true`.
    pub make_default: bool,
    /// Make the SQL function `walguard_stats()` available on every new connection
    /// (through `sqlite3_auto_extension`). Default `true`.
    pub sql_functions: bool,
    /// G4, where no watcher thread watches a mapping (`watcher(false)`, NFS/FUSE): how
    /// often read transactions re-check with `stat` that `-wal`/`-shm` are still the files
    /// the connection uses. Zero (the default) checks every read transaction. Write
    /// transactions are always checked. A non-zero interval saves one `stat` per sidecar
    /// per read transaction at the price of reads that may be that much stale after an
    /// outside actor replaced a sidecar. Process-wide; the last registration sets it.
    pub read_recheck: std::time::Duration,
    /// G4's fast path: a per-process thread (`walguard-watch`) that blocks on inotify and
    /// cuts a mapping off the moment one of its sidecars is replaced. Default `true`.
    /// `false` (or `WALGUARD_WATCHER=0` in the environment) starts no thread: every
    /// transaction then checks its sidecars with a `stat` each, and a write transaction
    /// takes the gate for its duration (two `fcntl`s).
    pub watcher: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: DEFAULT_NAME.to_owned(),
            make_default: true,
            sql_functions: true,
            read_recheck: std::time::Duration::ZERO,
            watcher: true,
        }
    }
}

impl Options {
    /// Options with another VFS name.
    pub fn named(name: impl Into<String>) -> Self {
        Options {
            name: name.into(),
            ..Options::default()
        }
    }

    /// Sets whether walguard becomes the default VFS.
    pub fn make_default(mut self, yes: bool) -> Self {
        self.make_default = yes;
        self
    }

    /// Sets the G4 read re-check interval (see [`Options::read_recheck`]).
    pub fn read_recheck(mut self, every: std::time::Duration) -> Self {
        self.read_recheck = every;
        self
    }

    /// Sets whether G4's watcher thread may run (see [`Options::watcher`]).
    pub fn watcher(mut self, yes: bool) -> Self {
        self.watcher = yes;
        self
    }

    /// Sets whether `walguard_stats()` is added to every new connection.
    pub fn sql_functions(mut self, yes: bool) -> Self {
        self.sql_functions = yes;
        self
    }
}

/// Why [`register`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The VFS name is empty or contains a NUL byte.
    InvalidName(String),
    /// A VFS of that name exists and is not walguard.
    NameTaken(String),
    /// SQLite has no default VFS to wrap.
    NoDefaultVfs,
    /// A SQLite call failed with this result code.
    Sqlite { what: &'static str, code: i32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName(n) => write!(
                f,
                "walguard: invalid VFS name {n:?}: use a non-empty name without NUL bytes"
            ),
            Error::NameTaken(n) => write!(
                f,
                "walguard: a VFS named {n:?} is already registered and is not walguard; \
                 choose another name with Options::named"
            ),
            Error::NoDefaultVfs => write!(
                f,
                "walguard: SQLite has no default VFS to wrap; register walguard after SQLite \
                 is initialised with its platform VFS"
            ),
            Error::Sqlite { what, code } => {
                write!(f, "walguard: {what} failed with SQLite result code {code}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Registers walguard with the SQLite linked into this program. Idempotent and safe to
/// call from several threads: a second call with the same name only applies
/// `make_default` again.
pub fn register(options: Options) -> Result<(), Error> {
    vfs::register(&options)
}

/// The environment variable that makes walguard also write its warnings to stderr
/// (`WALGUARD_STDERR=1`). Without it walguard writes nothing to stdout or stderr: warnings
/// go to `tracing` (target `walguard`), SQLite's log (`sqlite3_log`, SQLITE_WARNING) and
/// the counters.
pub const STDERR_ENV: &str = "WALGUARD_STDERR";

/// Writes `msg` to stderr only when the user asked for it ([`STDERR_ENV`] set to anything
/// but `0` or empty).
pub(crate) fn stderr_if_asked(msg: &str) {
    let asked = std::env::var_os(STDERR_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if asked {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{msg}");
    }
}

/// A snapshot of every guard's counters (process-wide).
pub fn stats() -> Stats {
    stats::snapshot()
}

/// Test hooks. Not part of the stable API.
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub(crate) static PANIC_ON_NEXT_OPEN: AtomicBool = AtomicBool::new(false);

    /// Makes walguard's next `xOpen` panic internally, to prove that no panic crosses the
    /// FFI boundary (the caller sees an SQLite error code).
    pub fn panic_on_next_open() {
        PANIC_ON_NEXT_OPEN.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_panic_request() -> bool {
        PANIC_ON_NEXT_OPEN.swap(false, Ordering::SeqCst)
    }
}
