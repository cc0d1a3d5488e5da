//! Overhead benchmarks: walguard against the plain `unix` VFS, in one process run.
//!
//! `vfs-tests bench [--quick] [--json] [--audit] [--rounds N] [--only a,b] [--dir D]
//! [--keep] [--strict]`
//!
//! Every workload runs on `unix` and on `walguard` alternately, several rounds in one
//! run (round r runs unix first when r is even, walguard first when r is odd, so a
//! drift in machine load hits both), with fresh database files per round where the
//! workload writes. One untimed warm-up round comes first (not in `--quick`). The figure
//! reported is the **median of the per-round ratios walguard/unix** with min and max: a
//! ratio is measured within one round, a few hundred milliseconds apart, so it is far
//! less disturbed by other work on the machine than the absolute times are. The CPU time
//! ratio (user + system, `getrusage`) is shown beside it as a second opinion: it is
//! hardly touched by other processes competing for the cores.
//!
//! | workload | what one operation is | target |
//! |---|---|---|
//! | `write-normal` | one single-row INSERT commit, WAL, `synchronous=NORMAL` | ratio ≤ 1.02 |
//! | `write-full` | the same with `synchronous=FULL` (an fsync per commit) | ratio ≤ 1.02 |
//! | `batched` | one 10,000-row INSERT transaction (WAL, `synchronous=NORMAL`) | ratio ≤ 1.02 |
//! | `read-point` | one point lookup by primary key on a 100 MB WAL database (its own read transaction) | ratio ≤ 1.02 |
//! | `scan` | one full scan of the same database | ratio ≤ 1.02 |
//! | `churn` | open, one query, close (the pattern of CLIs and workers) | ratio ≤ 1.10 |
//! | `contention` | 8 processes commit single rows into one database for a fixed time | commits walguard/unix ≥ 0.98 |
//!
//! The read workloads share one database file, created once per run (through `unix`)
//! and read alternately by both VFSs: identical layout and identical OS page cache, the
//! fairest comparison there is. Point lookups use the same pseudo-random keys on both.
//!
//! `--audit` then runs the read-heavy and the write-heavy workload once per VFS under
//! `strace -f` (this binary re-executed as `bench-child audit`), with marker writes
//! between the phases (open, first query = first `-shm` mapping, N transactions,
//! close), and prints every system call walguard adds, by name and phase, per
//! transaction. It checks that no call is added per page read or written (the `pread64`
//! and `pwrite64` counts of the transaction phase must be equal). Counting system calls
//! is deterministic, so this part is also a test (`tests/bench_smoke.rs`).
//!
//! Timing is never asserted by tests. `--quick` (the CI smoke run) uses tiny sizes and
//! three rounds; its PASS/FAIL verdicts mean nothing. `--strict` makes a FAIL the exit
//! status (1); otherwise `bench` exits 0 whenever it ran to the end.
//!
//! `contention` re-executes this binary as `vfs-tests bench-child contend ...`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

use crate::worker::Vfs;

const VFSS: [Vfs; 2] = [Vfs::Unix, Vfs::Walguard];

/// Rows of a batched transaction (the issue's "10,000-row transactions").
const BATCH_ROWS: u64 = 10_000;
/// Bytes of payload per row in every workload.
const PAYLOAD: usize = 100;
/// Marker prefix the audit child writes to /dev/null between phases.
const MARK: &str = "WGBENCH-PHASE ";

fn usage() -> String {
    "usage: vfs-tests bench [--quick] [--json] [--audit] [--rounds N] [--only LIST] \
     [--dir DIR] [--keep] [--strict] [--read-recheck-ms MS]\n  \
     LIST: comma-separated among write-normal,write-full,batched,read-point,scan,churn,\
     contention,audit (audit alone: only the syscall audit)\n  \
     --json: JSON on stdout, the human-readable report on stderr\n  \
     --strict: exit 1 if a target is missed\n  \
     --read-recheck-ms MS: walguard's Options::read_recheck (default 0: G4 checks every read)\n  \
     --speedtest1 FILE: also build SQLite's test/speedtest1.c (against the system \
     libsqlite3, walguard loaded as the extension) and run it on both VFSs"
        .to_owned()
}

// ---------------------------------------------------------------------------------
// Workloads and sizes
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    WriteNormal,
    WriteFull,
    Batched,
    ReadPoint,
    Scan,
    Churn,
    Contention,
    /// SQLite's speedtest1, only with `--speedtest1 FILE` (see [`build_speedtest1`]).
    Speedtest1,
}

const ALL: [Workload; 7] = [
    Workload::WriteNormal,
    Workload::WriteFull,
    Workload::Batched,
    Workload::ReadPoint,
    Workload::Scan,
    Workload::Churn,
    Workload::Contention,
];

/// What a workload's figure must meet.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Cost per operation, walguard/unix, at most this.
    MaxCostRatio(f64),
    /// Operations in a fixed time, walguard/unix, at least this.
    MinThroughputRatio(f64),
    /// Reported, not judged.
    Info,
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::MaxCostRatio(x) => ratio <= x,
            Target::MinThroughputRatio(x) => ratio >= x,
            Target::Info => true,
        }
    }

    fn text(self) -> String {
        match self {
            Target::MaxCostRatio(x) => format!("<= {x:.2}"),
            Target::MinThroughputRatio(x) => format!(">= {x:.2}"),
            Target::Info => "(info)".to_owned(),
        }
    }
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::WriteNormal => "write-normal",
            Workload::WriteFull => "write-full",
            Workload::Batched => "batched",
            Workload::ReadPoint => "read-point",
            Workload::Scan => "scan",
            Workload::Churn => "churn",
            Workload::Contention => "contention",
            Workload::Speedtest1 => "speedtest1",
        }
    }

    fn parse(s: &str) -> Option<Workload> {
        ALL.into_iter()
            .chain([Workload::Speedtest1])
            .find(|w| w.name() == s)
    }

    fn target(self) -> Target {
        match self {
            Workload::Churn => Target::MaxCostRatio(1.10),
            Workload::Contention => Target::MinThroughputRatio(0.98),
            Workload::Speedtest1 => Target::Info,
            _ => Target::MaxCostRatio(1.02),
        }
    }

    /// What one operation is, for the report.
    fn unit(self) -> &'static str {
        match self {
            Workload::WriteNormal | Workload::WriteFull => "commit",
            Workload::Batched => "10k-row txn",
            Workload::ReadPoint => "lookup",
            Workload::Scan => "scan",
            Workload::Churn => "cycle",
            Workload::Contention => "commit",
            Workload::Speedtest1 => "run",
        }
    }

    fn reads_shared_db(self) -> bool {
        matches!(self, Workload::ReadPoint | Workload::Scan)
    }
}

/// How much each workload does per VFS per round.
#[derive(Clone, Debug)]
struct Sizes {
    rounds: usize,
    warmup: bool,
    write_normal: u64,
    write_full: u64,
    batched_txns: u64,
    read_db_bytes: u64,
    lookups: u64,
    scans: u64,
    churn: u64,
    contend_procs: usize,
    contend_ms: u64,
    audit_txns: u64,
    speedtest1_size: u64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            rounds: 9,
            warmup: true,
            write_normal: 30_000,
            write_full: 1_500,
            batched_txns: 40,
            read_db_bytes: 100 << 20,
            lookups: 100_000,
            scans: 5,
            churn: 1_000,
            contend_procs: 8,
            contend_ms: 2_000,
            audit_txns: 1_000,
            speedtest1_size: 20,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            rounds: 3,
            warmup: false,
            write_normal: 200,
            write_full: 20,
            batched_txns: 1,
            read_db_bytes: 4 << 20,
            lookups: 2_000,
            scans: 1,
            churn: 50,
            contend_procs: 8,
            contend_ms: 300,
            audit_txns: 200,
            speedtest1_size: 2,
        }
    }

    fn ops(&self, w: Workload) -> u64 {
        match w {
            Workload::WriteNormal => self.write_normal,
            Workload::WriteFull => self.write_full,
            Workload::Batched => self.batched_txns,
            Workload::ReadPoint => self.lookups,
            Workload::Scan => self.scans,
            Workload::Churn => self.churn,
            Workload::Contention => 0, // counted, not fixed
            Workload::Speedtest1 => 1,
        }
    }
}

// ---------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Opts {
    quick: bool,
    json: bool,
    audit: bool,
    strict: bool,
    keep: bool,
    rounds: Option<usize>,
    workloads: Vec<Workload>,
    dir: Option<PathBuf>,
    /// walguard `Options::read_recheck` in milliseconds (0, the default: every read).
    read_recheck_ms: u64,
    /// SQLite's `test/speedtest1.c`, to build and run as one more workload.
    speedtest1: Option<PathBuf>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        json: false,
        audit: false,
        strict: false,
        keep: false,
        rounds: None,
        workloads: ALL.to_vec(),
        dir: None,
        read_recheck_ms: 0,
        speedtest1: None,
    };
    let mut only = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = true,
            "--audit" => o.audit = true,
            "--strict" => o.strict = true,
            "--keep" => o.keep = true,
            "--rounds" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("--rounds needs a positive integer, not {v:?}"))?;
                o.rounds = Some(n);
            }
            "--only" => {
                only = true;
                let v = value()?;
                let mut list = Vec::new();
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if name == "audit" {
                        o.audit = true;
                        continue;
                    }
                    list.push(Workload::parse(name).ok_or_else(|| {
                        format!("unknown workload {name:?} in --only\n{}", usage())
                    })?);
                }
                o.workloads = list;
            }
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--speedtest1" => o.speedtest1 = Some(PathBuf::from(value()?)),
            "--read-recheck-ms" => {
                let v = value()?;
                o.read_recheck_ms = v.parse().map_err(|_| {
                    format!("--read-recheck-ms needs a number of milliseconds, not {v:?}")
                })?;
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    match (&o.speedtest1, o.workloads.contains(&Workload::Speedtest1)) {
        (Some(_), false) if !only => o.workloads.push(Workload::Speedtest1),
        (None, true) => {
            return Err("workload speedtest1 needs --speedtest1 PATH/TO/speedtest1.c".to_owned())
        }
        _ => {}
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------
// Measurement helpers
// ---------------------------------------------------------------------------------

/// One VFS's run of one workload in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ops: u64,
    wall: Duration,
    cpu: Duration,
}

impl Sample {
    fn wall_per_op(&self) -> f64 {
        self.wall.as_secs_f64() / self.ops.max(1) as f64
    }

    fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() / self.ops.max(1) as f64
    }
}

fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable for the duration of the call.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time of `f` (this process, or its waited-for children too).
struct Timer {
    wall: Instant,
    cpu_self: Duration,
    cpu_children: Duration,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            cpu_self: cpu_time(libc::RUSAGE_SELF),
            cpu_children: cpu_time(libc::RUSAGE_CHILDREN),
            wall: Instant::now(),
        }
    }

    fn stop(&self, ops: u64) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = cpu_time(libc::RUSAGE_SELF).saturating_sub(self.cpu_self)
            + cpu_time(libc::RUSAGE_CHILDREN).saturating_sub(self.cpu_children);
        Sample { ops, wall, cpu }
    }
}

/// xorshift64*: the same keys on both VFSs, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn payload(seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..PAYLOAD).map(|_| r.next() as u8).collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        "n/a".to_owned()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

// ---------------------------------------------------------------------------------
// SQLite helpers
// ---------------------------------------------------------------------------------

fn ctx<T>(what: impl std::fmt::Display, r: rusqlite::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn open(vfs: Vfs, path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    ctx(
        format_args!("open {} through {vfs}", path.display()),
        Connection::open_with_flags_and_vfs(path, flags, vfs.name()),
    )
}

/// Removes a database and every sidecar SQLite or walguard may have left.
fn remove_db(path: &Path) {
    let _ = fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal", "-walguard"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, payload BLOB);";

/// A fresh WAL database with the bench table, through `vfs`, closed again.
fn create_db(vfs: Vfs, path: &Path, rows: u64) -> Result<(), String> {
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

fn set_sync(c: &Connection, mode: &str) -> Result<(), String> {
    ctx(
        format_args!("PRAGMA synchronous={mode}"),
        c.execute_batch(&format!("PRAGMA synchronous={mode}")),
    )
}

// ---------------------------------------------------------------------------------
// The workloads, one VFS, one round
// ---------------------------------------------------------------------------------

struct Env {
    dir: PathBuf,
    exe: PathBuf,
    sizes: Sizes,
    /// The shared read database and its row count.
    read_db: Option<(PathBuf, u64)>,
    /// The built speedtest1 binary and the walguard extension it loads.
    speedtest1: Option<(PathBuf, PathBuf)>,
}

impl Env {
    fn db(&self, w: Workload, vfs: Vfs, round: usize) -> PathBuf {
        self.dir.join(format!("{}-{vfs}-{round}.db", w.name()))
    }
}

fn run_once(env: &Env, w: Workload, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let n = env.sizes.ops(w);
    match w {
        Workload::WriteNormal | Workload::WriteFull => {
            let path = env.db(w, vfs, round);
            create_db(vfs, &path, 0)?;
            let c = open(vfs, &path)?;
            set_sync(
                &c,
                if w == Workload::WriteFull {
                    "FULL"
                } else {
                    "NORMAL"
                },
            )?;
            let data = payload(7);
            let mut stmt = ctx(
                "prepare",
                c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
            )?;
            ctx("warm-up insert", stmt.execute(params![0i64, &data[..]]))?;
            let t = Timer::start();
            for i in 0..n {
                ctx("insert", stmt.execute(params![i as i64, &data[..]]))?;
            }
            let s = t.stop(n);
            drop(stmt);
            drop(c);
            remove_db(&path);
            Ok(s)
        }
        Workload::Batched => {
            let path = env.db(w, vfs, round);
            create_db(vfs, &path, 0)?;
            let mut c = open(vfs, &path)?;
            set_sync(&c, "NORMAL")?;
            let data = payload(11);
            let t = Timer::start();
            for b in 0..n {
                let tx = ctx("begin", c.transaction())?;
                {
                    let mut stmt = ctx(
                        "prepare",
                        tx.prepare_cached("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
                    )?;
                    for i in 0..BATCH_ROWS {
                        ctx(
                            "insert",
                            stmt.execute(params![(b * BATCH_ROWS + i) as i64, &data[..]]),
                        )?;
                    }
                }
                ctx("commit", tx.commit())?;
            }
            let s = t.stop(n);
            drop(c);
            remove_db(&path);
            Ok(s)
        }
        Workload::ReadPoint => {
            let (path, rows) = env
                .read_db
                .as_ref()
                .ok_or("internal: the read database was not created")?;
            let c = open(vfs, path)?;
            let mut stmt = ctx("prepare", c.prepare("SELECT payload FROM t WHERE id = ?1"))?;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ round as u64);
            let mut lookup = |id: u64| -> Result<usize, String> {
                ctx(
                    "lookup",
                    stmt.query_row([id as i64], |r| {
                        r.get_ref(0).map(|v| v.as_bytes().map_or(0, <[u8]>::len))
                    }),
                )
            };
            lookup(1)?; // maps the -shm, reads the schema: not part of the figure
            let t = Timer::start();
            let mut bytes = 0usize;
            for _ in 0..n {
                bytes += lookup(rng.next() % rows + 1)?;
            }
            let s = t.stop(n);
            if bytes != n as usize * PAYLOAD {
                return Err(format!(
                    "read-point: {bytes} payload bytes read, expected {}",
                    n as usize * PAYLOAD
                ));
            }
            drop(stmt);
            drop(c);
            Ok(s)
        }
        Workload::Scan => {
            let (path, rows) = env
                .read_db
                .as_ref()
                .ok_or("internal: the read database was not created")?;
            let c = open(vfs, path)?;
            let mut stmt = ctx(
                "prepare",
                c.prepare("SELECT count(*), sum(length(payload)) FROM t"),
            )?;
            let mut scan = || -> Result<(i64, i64), String> {
                ctx("scan", stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            };
            ctx(
                "warm-up",
                c.query_row("SELECT 1 FROM t LIMIT 1", [], |_| Ok(())),
            )?;
            let t = Timer::start();
            for _ in 0..n {
                let (count, bytes) = scan()?;
                if count as u64 != *rows || bytes as u64 != rows * PAYLOAD as u64 {
                    return Err(format!(
                        "scan: read {count} rows / {bytes} bytes, expected {rows} rows"
                    ));
                }
            }
            let s = t.stop(n);
            drop(stmt);
            drop(c);
            Ok(s)
        }
        Workload::Churn => {
            let path = env.db(w, vfs, round);
            create_db(vfs, &path, 100)?;
            let t = Timer::start();
            for _ in 0..n {
                let c = open(vfs, &path)?;
                let count: i64 = ctx(
                    "churn query",
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)),
                )?;
                if count != 100 {
                    return Err(format!("churn: {count} rows, expected 100"));
                }
                ctx("close", c.close().map_err(|(_, e)| e))?;
            }
            let s = t.stop(n);
            remove_db(&path);
            Ok(s)
        }
        Workload::Contention => contention(env, vfs, round),
        Workload::Speedtest1 => {
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
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 8 processes commit single rows into one database for a fixed time.
fn contention(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let path = env.db(Workload::Contention, vfs, round);
    create_db(vfs, &path, 0)?;
    let ms = env.sizes.contend_ms;
    let start_at = epoch_ms() + 300 + 40 * env.sizes.contend_procs as u64;
    let mut children = Vec::new();
    for i in 0..env.sizes.contend_procs {
        let child = Command::new(&env.exe)
            .args(["bench-child", "contend", "--vfs", vfs.name(), "--db"])
            .arg(&path)
            .args([
                "--start-at-ms",
                &start_at.to_string(),
                "--ms",
                &ms.to_string(),
                "--id",
                &i.to_string(),
                "--read-recheck-ms",
                &recheck_arg(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} bench-child: {e}", env.exe.display()))?;
        children.push(child);
    }
    let t = Timer::start();
    let mut commits = 0u64;
    let mut errors = Vec::new();
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for bench-child: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("commits="))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok());
        match (out.status.success(), parsed) {
            (true, Some(c)) => commits += c,
            _ => errors.push(format!(
                "bench-child ({vfs}) exited with {}: {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
    let mut s = t.stop(commits);
    s.wall = Duration::from_millis(ms);
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    // Every commit is in the database.
    let c = open(vfs, &path)?;
    let rows: i64 = ctx(
        "count",
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)),
    )?;
    drop(c);
    remove_db(&path);
    if rows as u64 != commits {
        return Err(format!(
            "contention ({vfs}): children reported {commits} commits, the database holds {rows} rows"
        ));
    }
    Ok(s)
}

/// Creates the shared read database (through `unix`) and reads it once (page cache).
fn create_read_db(env: &mut Env) -> Result<(), String> {
    let path = env.dir.join("read.db");
    // ~120 bytes per row on disk (100-byte payload, cell header, page fill).
    let rows = (env.sizes.read_db_bytes / 120).max(1_000);
    let t = Instant::now();
    create_db(Vfs::Unix, &path, rows)?;
    let c = open(Vfs::Unix, &path)?;
    let bytes: i64 = ctx(
        "db size",
        c.query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get(0),
        ),
    )?;
    ctx(
        "warm scan",
        c.query_row("SELECT sum(length(payload)) FROM t", [], |_| Ok(())),
    )?;
    drop(c);
    note(&format!(
        "read database: {rows} rows, {:.1} MB, created in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    env.read_db = Some((path, rows));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------

/// `vfs-tests bench-child contend|audit ...` (hidden; re-executed by `bench`).
pub fn child_main(args: &[String]) -> ExitCode {
    match child(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfs-tests bench-child: {e}");
            ExitCode::FAILURE
        }
    }
}

fn child(args: &[String]) -> Result<(), String> {
    let (what, rest) = args
        .split_first()
        .ok_or("bench-child needs a mode: contend or audit")?;
    let mut kv = BTreeMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let k = k
            .strip_prefix("--")
            .ok_or_else(|| format!("bench-child: unexpected argument {k:?}"))?;
        let v = it
            .next()
            .ok_or_else(|| format!("bench-child: --{k} needs a value"))?;
        kv.insert(k.to_owned(), v.clone());
    }
    let get = |k: &str| {
        kv.get(k)
            .cloned()
            .ok_or_else(|| format!("bench-child {what}: --{k} is required"))
    };
    let num = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        v.parse()
            .map_err(|_| format!("bench-child {what}: --{k} must be a number, not {v:?}"))
    };
    let vfs_name = get("vfs")?;
    let vfs = Vfs::parse(&vfs_name).ok_or_else(|| format!("unknown VFS {vfs_name:?}"))?;
    let db = PathBuf::from(get("db")?);
    if let Some(v) = kv.get("read-recheck-ms") {
        let ms = v
            .parse()
            .map_err(|_| format!("bench-child: --read-recheck-ms must be a number, not {v:?}"))?;
        READ_RECHECK_MS.store(ms, Ordering::Relaxed);
    }
    register()?;
    match what.as_str() {
        "contend" => contend(vfs, &db, num("start-at-ms")?, num("ms")?, num("id")?),
        "audit" => audit_child(vfs, &db, &get("mode")?, num("n")?, num("rows")?),
        other => Err(format!("unknown bench-child mode {other:?}")),
    }
}

/// walguard registered, not as the default, without the per-connection SQL function
/// (an auto-extension would run on the `unix` connections too and blur the baseline).
/// `Options::read_recheck` applies (`--read-recheck-ms`, passed on to the children).
fn register() -> Result<(), String> {
    walguard::register(
        walguard::Options::default()
            .make_default(false)
            .sql_functions(false)
            .read_recheck(Duration::from_millis(
                READ_RECHECK_MS.load(Ordering::Relaxed),
            )),
    )
    .map_err(|e| e.to_string())
}

/// walguard's G4 read re-check interval for this run (0: every read transaction).
static READ_RECHECK_MS: AtomicU64 = AtomicU64::new(0);

fn recheck_arg() -> String {
    READ_RECHECK_MS.load(Ordering::Relaxed).to_string()
}

fn contend(vfs: Vfs, db: &Path, start_at: u64, ms: u64, id: u64) -> Result<(), String> {
    let c = open(vfs, db)?;
    ctx("busy_timeout", c.busy_timeout(Duration::from_secs(30)))?;
    set_sync(&c, "NORMAL")?;
    let data = payload(100 + id);
    let mut stmt = ctx(
        "prepare",
        c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
    )?;
    let now = epoch_ms();
    if start_at > now {
        std::thread::sleep(Duration::from_millis(start_at - now));
    }
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut commits = 0u64;
    while Instant::now() < deadline {
        ctx(
            "insert",
            stmt.execute(params![(id << 32 | commits) as i64, &data[..]]),
        )?;
        commits += 1;
    }
    drop(stmt);
    drop(c);
    println!("commits={commits}");
    Ok(())
}

fn mark(devnull: &mut fs::File, phase: &str) {
    let _ = devnull.write_all(format!("{MARK}{phase}").as_bytes());
}

/// One connection's whole life, phases marked by writes to /dev/null for strace.
fn audit_child(vfs: Vfs, db: &Path, mode: &str, n: u64, rows: u64) -> Result<(), String> {
    let mut devnull = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let data = payload(3);
    mark(&mut devnull, "open");
    let c = open(vfs, db)?;
    mark(&mut devnull, "first");
    match mode {
        "read" => {
            let mut stmt = ctx("prepare", c.prepare("SELECT payload FROM t WHERE id = ?1"))?;
            let mut lookup = |id: u64| ctx("lookup", stmt.query_row([id as i64], |_| Ok(())));
            lookup(1)?;
            let mut rng = Rng(0xA5A5_5A5A_1234_5678);
            mark(&mut devnull, "txn");
            for _ in 0..n {
                lookup(rng.next() % rows + 1)?;
            }
        }
        "write" => {
            set_sync(&c, "NORMAL")?;
            let mut stmt = ctx(
                "prepare",
                c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
            )?;
            ctx("insert", stmt.execute(params![0i64, &data[..]]))?;
            mark(&mut devnull, "txn");
            for i in 0..n {
                ctx("insert", stmt.execute(params![i as i64, &data[..]]))?;
            }
        }
        other => return Err(format!("unknown audit mode {other:?}")),
    }
    mark(&mut devnull, "close");
    ctx("close", c.close().map_err(|(_, e)| e))?;
    mark(&mut devnull, "end");
    Ok(())
}

// ---------------------------------------------------------------------------------
// The syscall audit
// ---------------------------------------------------------------------------------

const PHASES: [&str; 4] = ["open", "first", "txn", "close"];

fn phase_label(p: &str) -> &'static str {
    match p {
        "open" => "per open",
        "first" => "first query (first -shm map)",
        "txn" => "per transaction",
        _ => "per close",
    }
}

/// syscall counts per phase, from an `strace -f` log.
type Counts = BTreeMap<String, BTreeMap<String, u64>>;

fn parse_strace(text: &str) -> Counts {
    let mut counts: Counts = BTreeMap::new();
    let mut phase: Option<String> = None;
    for line in text.lines() {
        // "PID name(args) = r" with -f; a bare "name(...)" without.
        let line = line.trim_start();
        let line = match line.split_once(' ') {
            Some((pid, rest)) if pid.bytes().all(|b| b.is_ascii_digit()) => rest.trim_start(),
            _ => line,
        };
        if line.starts_with("<...") || line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        let Some((name, _)) = line.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(pos) = line.find(MARK) {
            let p: String = line[pos + MARK.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            phase = Some(p);
            continue;
        }
        if let Some(p) = phase.as_ref() {
            *counts
                .entry(p.clone())
                .or_default()
                .entry(name.to_owned())
                .or_default() += 1;
        }
    }
    counts
}

struct AuditRow {
    mode: &'static str,
    phase: &'static str,
    syscall: String,
    unix: f64,
    walguard: f64,
}

struct AuditResult {
    rows: Vec<AuditRow>,
    /// (mode, check, pass, detail)
    checks: Vec<(String, bool, String)>,
    txns: u64,
}

fn strace_path() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn audit(env: &Env) -> Result<AuditResult, String> {
    let strace = strace_path().ok_or(
        "strace is not installed (scripts/setup installs it): cannot run the syscall audit",
    )?;
    let n = env.sizes.audit_txns;
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for mode in ["read", "write"] {
        let mut per_vfs = Vec::new();
        for vfs in VFSS {
            let (db, nrows) = if mode == "read" {
                let (p, r) = env
                    .read_db
                    .as_ref()
                    .ok_or("internal: the read database was not created")?;
                (p.clone(), *r)
            } else {
                let p = env.dir.join(format!("audit-write-{vfs}.db"));
                create_db(vfs, &p, 0)?;
                (p, 0)
            };
            let log = env.dir.join(format!("audit-{mode}-{vfs}.strace"));
            let out = Command::new(&strace)
                .args(["-f", "-qq", "-o"])
                .arg(&log)
                .arg(&env.exe)
                .args(["bench-child", "audit", "--vfs", vfs.name(), "--db"])
                .arg(&db)
                .args(["--mode", mode, "--n", &n.to_string(), "--rows"])
                .arg(nrows.to_string())
                .args(["--read-recheck-ms", &recheck_arg()])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", strace.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "strace of the {mode} audit child ({vfs}) failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let text = fs::read_to_string(&log)
                .map_err(|e| format!("cannot read strace log {}: {e}", log.display()))?;
            let counts = parse_strace(&text);
            if !counts.contains_key("end") && !counts.contains_key("close") {
                return Err(format!(
                    "strace log {} has no phase markers: is strace writing the expected format?",
                    log.display()
                ));
            }
            per_vfs.push(counts);
            if mode == "write" {
                remove_db(&db);
            }
        }
        let (u, g) = (&per_vfs[0], &per_vfs[1]);
        let empty = BTreeMap::new();
        for phase in PHASES {
            let (pu, pg) = (
                u.get(phase).unwrap_or(&empty),
                g.get(phase).unwrap_or(&empty),
            );
            let div = if phase == "txn" { n.max(1) as f64 } else { 1.0 };
            let names: std::collections::BTreeSet<&String> = pu.keys().chain(pg.keys()).collect();
            for name in names {
                let cu = pu.get(name).copied().unwrap_or(0);
                let cg = pg.get(name).copied().unwrap_or(0);
                if cu != cg {
                    rows.push(AuditRow {
                        mode: if mode == "read" { "read" } else { "write" },
                        phase,
                        syscall: name.clone(),
                        unix: cu as f64 / div,
                        walguard: cg as f64 / div,
                    });
                }
            }
        }
        let txn_u = u.get("txn").unwrap_or(&empty);
        let txn_g = g.get("txn").unwrap_or(&empty);
        let io = if mode == "read" {
            "pread64"
        } else {
            "pwrite64"
        };
        let (cu, cg) = (
            txn_u.get(io).copied().unwrap_or(0),
            txn_g.get(io).copied().unwrap_or(0),
        );
        checks.push((
            format!("{mode}: no extra system call per page {mode} ({io} in the transaction phase)"),
            cu == cg && cu > 0,
            format!(
                "unix {cu} ({:.2}/txn), walguard {cg} ({:.2}/txn){}",
                cu as f64 / n as f64,
                cg as f64 / n as f64,
                if cu == 0 {
                    " — no page I/O seen, check inconclusive"
                } else {
                    ""
                }
            ),
        ));
        // Any other call whose count grows with the pages touched would show up as a
        // non-integral per-transaction difference; list the integral ones by name.
        let total_u: u64 = txn_u.values().sum();
        let total_g: u64 = txn_g.values().sum();
        checks.push((
            format!("{mode}: extra system calls per transaction, total"),
            true,
            format!(
                "unix {:.2}/txn, walguard {:.2}/txn, extra {:+.2}/txn",
                total_u as f64 / n as f64,
                total_g as f64 / n as f64,
                (total_g as f64 - total_u as f64) / n as f64
            ),
        ));
    }
    Ok(AuditResult {
        rows,
        checks,
        txns: n,
    })
}

// ---------------------------------------------------------------------------------
// SQLite's speedtest1
// ---------------------------------------------------------------------------------

const SPEEDTEST1_NOTE: &str = "speedtest1: not run (give --speedtest1 PATH/TO/speedtest1.c). \
No crates.io, PyPI or npm package found here ships speedtest1 or its source, and the \
SQLite amalgamation libsqlite3-sys bundles does not contain it; Debian's sqlite3 *source* \
package does (test/speedtest1.c, SQLite 3.40.1 on bookworm: `apt-get source sqlite3` once a \
deb-src line is configured). The project does not vendor SQLite's source.";

/// `main` for the speedtest1 binary: loads walguard (not as the default VFS) from
/// `$WALGUARD_EXT` into the system SQLite, then runs speedtest1's own `main`, so both VFSs
/// run in the same binary with the extension loaded and `--vfs` picks one.
const SPEEDTEST1_WRAPPER: &str = r#"#include <stdio.h>
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
fn build_speedtest1(src: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
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

// ---------------------------------------------------------------------------------
// G4's stat, measured in isolation
// ---------------------------------------------------------------------------------

/// Nanoseconds per `stat` of a sidecar-like path in the bench directory (what the G4
/// identity check does twice at every transaction start).
fn stat_cost(dir: &Path) -> Option<f64> {
    let p = dir.join("stat-probe.db-shm");
    fs::write(&p, b"x").ok()?;
    let n = 100_000u32;
    let t = Instant::now();
    for _ in 0..n {
        fs::metadata(&p).ok()?;
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let _ = fs::remove_file(&p);
    Some(ns)
}

// ---------------------------------------------------------------------------------
// Running and reporting
// ---------------------------------------------------------------------------------

struct WorkloadResult {
    w: Workload,
    rounds: Vec<(Sample, Sample)>,
    ratios: Vec<f64>,
    cpu_ratios: Vec<f64>,
}

impl WorkloadResult {
    fn ratio(&self) -> f64 {
        median(&self.ratios)
    }

    fn cpu_ratio(&self) -> f64 {
        median(&self.cpu_ratios)
    }

    fn pass(&self) -> bool {
        self.w.target().met(self.ratio())
    }

    /// Median cost per op (or commits per second for contention) of one VFS.
    fn figure(&self, which: usize) -> f64 {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| {
                let s = if which == 0 { &r.0 } else { &r.1 };
                if self.w == Workload::Contention {
                    s.ops as f64 / s.wall.as_secs_f64()
                } else {
                    s.wall_per_op()
                }
            })
            .collect();
        median(&v)
    }

    fn figure_text(&self, which: usize) -> String {
        let f = self.figure(which);
        if self.w == Workload::Contention {
            format!("{f:.0} commits/s")
        } else {
            format!("{}/{}", fmt_secs(f), self.w.unit())
        }
    }
}

fn ratio_of(w: Workload, unix: &Sample, wg: &Sample) -> (f64, f64) {
    if w == Workload::Contention {
        // throughput walguard/unix; CPU per commit walguard/unix
        (
            wg.ops as f64 / unix.ops.max(1) as f64,
            wg.cpu_per_op() / unix.cpu_per_op(),
        )
    } else {
        (
            wg.wall_per_op() / unix.wall_per_op(),
            wg.cpu_per_op() / unix.cpu_per_op(),
        )
    }
}

fn run_workload(env: &Env, w: Workload) -> Result<WorkloadResult, String> {
    if env.sizes.warmup {
        for vfs in VFSS {
            run_once(env, w, vfs, 999)?;
        }
    }
    let mut res = WorkloadResult {
        w,
        rounds: Vec::new(),
        ratios: Vec::new(),
        cpu_ratios: Vec::new(),
    };
    for r in 0..env.sizes.rounds {
        let order = if r % 2 == 0 {
            [Vfs::Unix, Vfs::Walguard]
        } else {
            [Vfs::Walguard, Vfs::Unix]
        };
        let mut unix = Sample::default();
        let mut wg = Sample::default();
        for vfs in order {
            let s = run_once(env, w, vfs, r)?;
            if vfs == Vfs::Unix {
                unix = s;
            } else {
                wg = s;
            }
        }
        let (ratio, cpu) = ratio_of(w, &unix, &wg);
        res.ratios.push(ratio);
        res.cpu_ratios.push(cpu);
        res.rounds.push((unix, wg));
    }
    Ok(res)
}

/// A progress note (stderr), so that stdout stays the report (or the JSON).
fn note(s: &str) {
    eprintln!("bench: {s}");
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// UTC date and time of now, to the second.
fn utc_now() -> String {
    crate::utc_timestamp(SystemTime::now(), true)
}

fn json_str(s: &str) -> String {
    crate::json_string(s)
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".to_owned()
    }
}

/// `vfs-tests bench ...`
pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse_opts(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vfs-tests bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(all_pass) => {
            if opts.strict && !all_pass {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vfs-tests bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Opts) -> Result<bool, String> {
    READ_RECHECK_MS.store(opts.read_recheck_ms, Ordering::Relaxed);
    register()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let (dir, owned) = match &opts.dir {
        Some(d) => {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("walguard-bench-{}", std::process::id()));
            fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            (d, true)
        }
    };
    let mut sizes = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(r) = opts.rounds {
        sizes.rounds = r;
    }
    let mut env = Env {
        dir: dir.clone(),
        exe,
        sizes,
        read_db: None,
        speedtest1: None,
    };
    let result = run_in(opts, &mut env);
    if owned && !opts.keep {
        let _ = fs::remove_dir_all(&dir);
    } else {
        note(&format!("files kept in {}", dir.display()));
    }
    result
}

fn run_in(opts: &Opts, env: &mut Env) -> Result<bool, String> {
    let started = Instant::now();
    let header = format!(
        "walguard bench{} — {} — CPU: {} ({} cores) — SQLite {} — dir {}\n\
         {} rounds per workload, unix and walguard alternating (A B, B A, ...){}; \
         walguard read_recheck = {} ms{}",
        if opts.quick {
            " --quick (smoke run: sizes too small for the verdicts to mean anything)"
        } else {
            ""
        },
        utc_now(),
        cpu_model(),
        cpu_count(),
        rusqlite::version(),
        env.dir.display(),
        env.sizes.rounds,
        if env.sizes.warmup {
            ", after one untimed warm-up round"
        } else {
            ""
        },
        opts.read_recheck_ms,
        if opts.read_recheck_ms == 0 {
            " (G4 checks every read transaction)"
        } else {
            " (G4 checks reads at most that often)"
        },
    );
    note(&header.replace('\n', " "));
    if opts.workloads.iter().any(|w| w.reads_shared_db()) || opts.audit {
        create_read_db(env)?;
    }
    if let (Some(src), true) = (
        &opts.speedtest1,
        opts.workloads.contains(&Workload::Speedtest1),
    ) {
        env.speedtest1 = Some(build_speedtest1(src, &env.dir)?);
    }
    let mut results = Vec::new();
    for &w in &opts.workloads {
        let t = Instant::now();
        let r = run_workload(env, w).map_err(|e| format!("workload {}: {e}", w.name()))?;
        note(&format!(
            "{:<13} ratio {:.3} [{:.3} .. {:.3}]  ({:.1} s)",
            w.name(),
            r.ratio(),
            min_max(&r.ratios).0,
            min_max(&r.ratios).1,
            t.elapsed().as_secs_f64()
        ));
        results.push(r);
    }
    let stat_ns = if opts.workloads.contains(&Workload::ReadPoint) {
        stat_cost(&env.dir)
    } else {
        None
    };
    let audit = if opts.audit {
        note("syscall audit under strace ...");
        Some(audit(env)?)
    } else {
        None
    };

    // ---- the report ----
    let mut rep = String::new();
    let _ = writeln!(rep, "{header}");
    let _ = writeln!(
        rep,
        "ratio = walguard/unix per round (cost per operation; contention: commits in {} ms), \
         median [min .. max]; cpu = the same ratio of CPU time",
        env.sizes.contend_ms
    );
    let _ = writeln!(
        rep,
        "{:<13} {:>11} {:<17} {:>9}  {:>26}  {:>26}  {:<8} verdict",
        "workload", "ratio", "[min .. max]", "cpu", "unix", "walguard", "target"
    );
    let mut all_pass = true;
    for r in &results {
        let (lo, hi) = min_max(&r.ratios);
        let pass = r.pass();
        all_pass &= pass;
        let _ = writeln!(
            rep,
            "{:<13} ratio {:>5.3} [{:.3} .. {:.3}] cpu {:>5.3}  {:>26}  {:>26}  {:<8} {}",
            r.w.name(),
            r.ratio(),
            lo,
            hi,
            r.cpu_ratio(),
            r.figure_text(0),
            r.figure_text(1),
            r.w.target().text(),
            if matches!(r.w.target(), Target::Info) {
                "-"
            } else if pass {
                "PASS"
            } else {
                "FAIL"
            }
        );
    }
    if let (Some(ns), Some(r)) = (stat_ns, results.iter().find(|r| r.w == Workload::ReadPoint)) {
        let lookup = r.figure(0) * 1e9;
        let _ = writeln!(
            rep,
            "G4 identity check: one stat of a sidecar costs {ns:.0} ns here; two per read \
             transaction = {:.0} ns = {:.1}% of a unix point lookup ({:.0} ns)",
            2.0 * ns,
            200.0 * ns / lookup,
            lookup
        );
    }
    if !opts.workloads.contains(&Workload::Speedtest1) {
        let _ = writeln!(rep, "{SPEEDTEST1_NOTE}");
    }
    if let Some(a) = &audit {
        let _ = writeln!(
            rep,
            "\nsyscall audit (strace -f; {} transactions per run; counts that differ, per phase; \
             per-transaction rows divided by the transaction count)",
            a.txns
        );
        let _ = writeln!(
            rep,
            "{:<6} {:<30} {:<18} {:>10} {:>10} {:>10}",
            "mode", "phase", "syscall", "unix", "walguard", "extra"
        );
        for row in &a.rows {
            let _ = writeln!(
                rep,
                "{:<6} {:<30} {:<18} {:>10.3} {:>10.3} {:>+10.3}",
                row.mode,
                phase_label(row.phase),
                row.syscall,
                row.unix,
                row.walguard,
                row.walguard - row.unix
            );
        }
        for (what, pass, detail) in &a.checks {
            let _ = writeln!(
                rep,
                "audit {what}: {detail}{}",
                if what.contains("per page") {
                    if *pass {
                        "  PASS"
                    } else {
                        "  FAIL"
                    }
                } else {
                    ""
                }
            );
            if what.contains("per page") {
                all_pass &= *pass;
            }
        }
    }
    let _ = writeln!(
        rep,
        "total {:.1} s; overall: {}",
        started.elapsed().as_secs_f64(),
        if all_pass { "PASS" } else { "FAIL" }
    );

    if opts.json {
        eprint!("{rep}");
        println!(
            "{}",
            to_json(opts, env, &results, audit.as_ref(), stat_ns, all_pass)
        );
    } else {
        print!("{rep}");
    }
    Ok(all_pass)
}

fn to_json(
    opts: &Opts,
    env: &Env,
    results: &[WorkloadResult],
    audit: Option<&AuditResult>,
    stat_ns: Option<f64>,
    all_pass: bool,
) -> String {
    let mut j = String::from("{");
    let _ = write!(
        j,
        "\"date\":{},\"cpu\":{},\"cores\":{},\"sqlite\":{},\"quick\":{},\"rounds\":{},\"workloads\":[",
        json_str(&utc_now()),
        json_str(&cpu_model()),
        cpu_count(),
        json_str(rusqlite::version()),
        opts.quick,
        env.sizes.rounds
    );
    for (i, r) in results.iter().enumerate() {
        let (lo, hi) = min_max(&r.ratios);
        let ratios: Vec<String> = r.ratios.iter().map(|&x| json_num(x)).collect();
        let _ = write!(
            j,
            "{}{{\"name\":{},\"unit\":{},\"ratio\":{},\"min\":{},\"max\":{},\"cpu_ratio\":{},\
             \"unix\":{},\"walguard\":{},\"target\":{},\"pass\":{},\"ratios\":[{}]}}",
            if i > 0 { "," } else { "" },
            json_str(r.w.name()),
            json_str(if r.w == Workload::Contention {
                "commits/s"
            } else {
                "seconds per op"
            }),
            json_num(r.ratio()),
            json_num(lo),
            json_num(hi),
            json_num(r.cpu_ratio()),
            json_num(r.figure(0)),
            json_num(r.figure(1)),
            json_str(&r.w.target().text()),
            r.pass(),
            ratios.join(",")
        );
    }
    j.push(']');
    if let Some(ns) = stat_ns {
        let _ = write!(j, ",\"g4_stat_ns\":{}", json_num(ns));
    }
    if let Some(a) = audit {
        let _ = write!(j, ",\"audit\":{{\"txns\":{},\"extra\":[", a.txns);
        for (i, row) in a.rows.iter().enumerate() {
            let _ = write!(
                j,
                "{}{{\"mode\":{},\"phase\":{},\"syscall\":{},\"unix\":{},\"walguard\":{}}}",
                if i > 0 { "," } else { "" },
                json_str(row.mode),
                json_str(row.phase),
                json_str(&row.syscall),
                json_num(row.unix),
                json_num(row.walguard)
            );
        }
        j.push_str("],\"checks\":[");
        for (i, (what, pass, detail)) in a.checks.iter().enumerate() {
            let _ = write!(
                j,
                "{}{{\"check\":{},\"pass\":{},\"detail\":{}}}",
                if i > 0 { "," } else { "" },
                json_str(what),
                pass,
                json_str(detail)
            );
        }
        j.push_str("]}");
    }
    let _ = write!(j, ",\"pass\":{all_pass}}}");
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }

    #[test]
    fn strace_phases_are_counted() {
        let log = "\
123 execve(\"x\", [], 0x0) = 0
123 write(3, \"WGBENCH-PHASE open\", 18) = 18
123 openat(AT_FDCWD, \"/d/a.db\", O_RDWR) = 4
123 newfstatat(4, \"\", {...}, AT_EMPTY_PATH) = 0
123 write(3, \"WGBENCH-PHASE txn\", 17) = 17
123 pread64(4, \"...\"..., 4096, 0) = 4096
123 fcntl(5, F_OFD_SETLK, {l_type=F_RDLCK}) = 0
123 pread64(4, \"...\"..., 4096, 4096) = 4096
123 +++ exited with 0 +++
";
        let c = parse_strace(log);
        assert_eq!(c["open"]["openat"], 1);
        assert_eq!(c["open"]["newfstatat"], 1);
        assert_eq!(c["txn"]["pread64"], 2);
        assert_eq!(c["txn"]["fcntl"], 1);
        assert!(!c.contains_key("startup"));
    }

    #[test]
    fn options() {
        let o = parse_opts(&["--quick".into(), "--only".into(), "scan,audit".into()])
            .expect("valid options");
        assert!(o.quick && o.audit);
        assert_eq!(o.workloads, vec![Workload::Scan]);
        assert!(parse_opts(&["--only".into(), "nope".into()]).is_err());
        assert!(parse_opts(&["--rounds".into(), "0".into()]).is_err());
    }

    #[test]
    fn dates() {
        let d = utc_now();
        assert!(d.starts_with("20") && d.ends_with("UTC"), "{d}");
    }
}
