//! Overhead benchmarks: walguard against the plain `unix` VFS, in one process run.
//!
//! `vfs-tests bench [--quick] [--json] [--audit] [--rounds N] [--only a,b] [--dir D]
//! [--keep] [--strict] [--read-recheck-ms MS] [--busy-dir-rate N] [--speedtest1 FILE]
//! [--compare REF [--repo D]]`
//! (`--help` explains each).
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
//! | `busy-dir` | the same while another process creates and removes unrelated files beside the database (5,000 per second by default, `--busy-dir-rate`; see `workloads/busy_dir.rs`) | ratio ≤ 1.05 |
//! | `write-full` | the same with `synchronous=FULL` (an fsync per commit) | ratio ≤ 1.02 |
//! | `batched` | one 10,000-row INSERT transaction (WAL, `synchronous=NORMAL`) | ratio ≤ 1.02 |
//! | `read-point` | one point lookup by primary key on a 100 MB WAL database (its own read transaction) | ratio ≤ 1.02 |
//! | `scan` | one full scan of the same database | ratio ≤ 1.02 |
//! | `churn` | open, one query, close (the pattern of CLIs and workers) | ratio ≤ 1.05 |
//! | `contention` | 8 processes commit single rows into one database for a fixed time | commits walguard/unix ≥ 0.98 |
//!
//! `contention` also counts SQLITE_BUSY per VFS (summed over its processes, median over
//! the rounds): the busy handler's invocations (SQLite's own sleeping schedule,
//! re-implemented so that it can count), the milliseconds it slept, and SQLITE_BUSY
//! errors that reached the application.
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
//! is deterministic, so this part is also a test (`tests/bench_smoke.rs`). It also runs
//! the steady-state trace ([`steady`]: one open connection, N read, write and mmap-read
//! transactions, calls by file and by owner) and judges it against issue 17's budgets
//! (read +0, write ≤ +1, mmap read +0, and no call added inside the WAL WRITE lock's
//! critical section, [`write_lock`]), which `tests/hot_path_syscalls.rs` asserts; and
//! the churn cycle (open, one query, close, [`churn_trace`]) listed per cycle by system
//! call name for both VFSs. Every count, per phase and per VFS, is in the JSON
//! (`audit.phases`, `audit.steady`, `audit.write_lock`, `audit.churn`); `audit.checks`
//! carries each verdict (`judged`: whether it counts for the overall verdict).
//!
//! `--compare REF` benches two builds of walguard instead (see `compare.rs`): REF's
//! walguard with the current harness, built in a temporary git worktree, against the
//! current build; ratio = current/REF, no targets judged.
//!
//! Timing is never asserted by tests. `--quick` (the CI smoke run) uses tiny sizes and
//! three rounds; its PASS/FAIL verdicts mean nothing. `--strict` makes a FAIL the exit
//! status (1); otherwise `bench` exits 0 whenever it ran to the end.
//!
//! `contention` re-executes this binary as `vfs-tests bench-child contend ...`; the audit
//! as `bench-child audit|steady`; `--compare` as `bench-child run` (one round of one
//! workload).

pub(crate) mod audit;
pub(crate) mod child;
pub mod churn_trace;
pub(crate) mod compare;
pub(crate) mod db;
pub(crate) mod measure;
pub(crate) mod options;
pub(crate) mod report;
pub(crate) mod rounds;
pub mod steady;
pub(crate) mod strace;
pub(crate) mod workloads;
pub mod write_lock;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use child::child_main;

use crate::worker::Vfs;
use measure::min_max;
use options::{parse_opts, Opts};
use report::{cpu_count, cpu_model, utc_now};
use rounds::run_workload;
use workloads::read::{create_read_db, stat_cost};
use workloads::speedtest1::build_speedtest1;
use workloads::{Sizes, Workload};

/// Rows of a batched transaction (the "10,000-row transactions").
pub(crate) const BATCH_ROWS: u64 = 10_000;
/// Bytes of payload per row in every workload.
pub(crate) const PAYLOAD: usize = 100;

pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    /// This binary.
    pub(crate) exe: PathBuf,
    pub(crate) sizes: Sizes,
    /// `--quick` sizes (passed on to `bench-child run`).
    pub(crate) quick: bool,
    /// The shared read database and its row count.
    pub(crate) read_db: Option<(PathBuf, u64)>,
    /// The built speedtest1 binary and the walguard extension it loads.
    pub(crate) speedtest1: Option<(PathBuf, PathBuf)>,
    /// What is compared: `[baseline, candidate]`; every ratio is candidate/baseline.
    pub(crate) sides: [Side; 2],
}

impl Env {
    pub(crate) fn db(&self, w: Workload, vfs: Vfs, round: usize) -> PathBuf {
        self.dir.join(format!("{}-{vfs}-{round}.db", w.name()))
    }

    /// Whether this is a `--compare` run (two builds of walguard, not unix and walguard).
    pub(crate) fn comparing(&self) -> bool {
        self.sides[0].key == "ref"
    }
}

/// One of the two things a run compares.
#[derive(Clone, Debug)]
pub(crate) struct Side {
    /// Its key in the JSON: `unix`, `walguard`, `ref`, `current`.
    pub(crate) key: &'static str,
    /// Its name in the text report.
    pub(crate) label: String,
    /// The binary that runs its workloads as `bench-child run`; `None`: this process.
    pub(crate) exe: Option<PathBuf>,
    pub(crate) vfs: Vfs,
}

impl Side {
    /// The normal bench: unix (baseline) and walguard, both in this process.
    pub(crate) fn unix_walguard() -> [Side; 2] {
        [
            Side {
                key: "unix",
                label: "unix".to_owned(),
                exe: None,
                vfs: Vfs::Unix,
            },
            Side {
                key: "walguard",
                label: "walguard".to_owned(),
                exe: None,
                vfs: Vfs::Walguard,
            },
        ]
    }

    /// The binary to re-execute for this side (children, strace).
    pub(crate) fn binary<'a>(&'a self, env: &'a Env) -> &'a Path {
        self.exe.as_deref().unwrap_or(&env.exe)
    }
}

pub(crate) fn note(s: &str) {
    eprintln!("bench: {s}");
}

/// walguard registered, not as the default, without the per-connection SQL function
/// (an auto-extension would run on the `unix` connections too and blur the baseline).
/// `Options::read_recheck` applies (`--read-recheck-ms`, passed on to the children).
pub(crate) fn register() -> Result<(), String> {
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
pub(crate) static READ_RECHECK_MS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn recheck_arg() -> String {
    READ_RECHECK_MS.load(Ordering::Relaxed).to_string()
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse_opts(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vfs-tests bench: {e}");
            return ExitCode::from(2);
        }
    };
    if opts.help {
        println!("{}", options::usage());
        return ExitCode::SUCCESS;
    }
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
    if let Some(r) = opts.busy_dir_rate {
        sizes.busy_dir_rate = r;
    }
    let result = compare_sides(opts, &exe, &dir).and_then(|sides| {
        let mut env = Env {
            dir: dir.clone(),
            exe,
            sizes,
            quick: opts.quick,
            read_db: None,
            speedtest1: None,
            sides,
        };
        run_in(opts, &mut env)
    });
    if owned && !opts.keep {
        let _ = fs::remove_dir_all(&dir);
    } else {
        note(&format!("files kept in {}", dir.display()));
    }
    result
}

/// The sides of this run: unix and walguard, or with `--compare REF` the REF build and
/// the current one (both walguard, both re-executed as children).
fn compare_sides(opts: &Opts, exe: &Path, dir: &Path) -> Result<[Side; 2], String> {
    let Some(reference) = &opts.compare else {
        return Ok(Side::unix_walguard());
    };
    let repo = opts.repo.clone().unwrap_or_else(compare::default_repo);
    let built = compare::build_ref(reference, &repo, dir)?;
    note(&format!(
        "REF {} = {} built as {}",
        reference,
        built.sha,
        built.exe.display()
    ));
    Ok([
        Side {
            key: "ref",
            label: built.label,
            exe: Some(built.exe),
            vfs: Vfs::Walguard,
        },
        Side {
            key: "current",
            label: format!("current ({})", compare::describe_current(&repo)),
            exe: Some(exe.to_path_buf()),
            vfs: Vfs::Walguard,
        },
    ])
}

fn run_in(opts: &Opts, env: &mut Env) -> Result<bool, String> {
    let started = Instant::now();
    let header = format!(
        "walguard bench{} — {} — CPU: {} ({} cores) — SQLite {} — dir {}\n\
         {} rounds per workload, {} and {} alternating (A B, B A, ...){}; \
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
        env.sides[0].label,
        env.sides[1].label,
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
        Some(audit::audit(env)?)
    } else {
        None
    };

    let (rep, all_pass) = report::text(
        opts,
        env,
        &header,
        &results,
        audit.as_ref(),
        stat_ns,
        started,
    );
    if opts.json {
        eprint!("{rep}");
        println!(
            "{}",
            report::to_json(opts, env, &results, audit.as_ref(), stat_ns, all_pass)
        );
    } else {
        print!("{rep}");
    }
    Ok(all_pass)
}
