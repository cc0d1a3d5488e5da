//! The hot-path rule and the steady-state budget, counted with strace (counts, never
//! times).
//!
//! One connection, already open, sidecars unchanged, runs N point lookups (each its own
//! read transaction, with an 8-page cache so that every one reads pages), N single-row
//! commits, and N lookups through a memory map (`xFetch`). The same child runs once on
//! the plain `unix` VFS and once on walguard, on identical copies of one database, under
//! `strace -f -y -k` (`vfs-tests bench-child steady`, see `src/bench/steady.rs`).
//!
//! Asserted (`brk` of the C allocator aside, see [`BRK_SLACK`]):
//! - a read transaction: walguard makes no more system calls than unix (+0);
//! - a write transaction: at most 3 more: the WRITE mirror on the database file (lock
//!   and unlock) and G4's strict check where a write starts (one non-blocking `read` of
//!   the inotify queue, normally `EAGAIN`: nothing is written through a sidecar removed
//!   before the transaction began, whether or not the watcher thread ran yet);
//! - the per-page path adds nothing: `pread64`/`pwrite64` counts per file are equal on
//!   both VFSs (`xRead`/`xWrite` forward exactly), and in the transaction phases walguard
//!   itself makes no system call that is not a lock (`xShmLock` beyond the lock itself,
//!   `xShmBarrier`, `xFetch`), and none inside `xRead`/`xWrite`/`xShmBarrier`/`xFetch`
//!   where the unwound stack shows the method.
//!
//! The unix run is the baseline and also proves the measurement works: it must read and
//! write pages in the transaction phases, and strace's stacks must attribute its calls to
//! SQLite, never to walguard.

use std::path::Path;

use vfs_tests::bench::steady::{self, Owner, Trace, PHASES, TXN_PHASES};
use vfs_tests::worker::Vfs;

/// Transactions per phase.
const N: u64 = 200;
/// Rows of the database (~3 MB: far more pages than the child's 8-page cache).
const ROWS: u64 = 25_000;
/// What walguard may add to one write transaction: the WRITE mirror lock and unlock, and
/// the strict G4 drain at write start.
const WRITE_BUDGET: u64 = 3;
/// `brk` (the C allocator growing the heap) is not counted in the budgets: walguard's
/// state shifts where the heap's top falls, so one may land in a phase on one VFS and not
/// on the other. More than this many extra in a phase would be an allocation per
/// transaction, and fails.
const BRK_SLACK: u64 = 2;

/// Calls of a phase, `brk` left out.
fn budgeted(t: &Trace, phase: &str) -> u64 {
    t.phase(phase).filter(|c| c.name != "brk").count() as u64
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vfs-tests"))
}

/// Each VFS's database in a directory of its own (walguard watches the directory; the
/// strace log, written all along, stays outside it).
fn run(vfs: Vfs, dir: &Path, base: &Path) -> Trace {
    let db_dir = dir.join(vfs.name());
    std::fs::create_dir(&db_dir).expect("database directory");
    let db = db_dir.join("steady.db");
    std::fs::copy(base, &db).expect("copy the prepared database");
    let log = dir.join(format!("{vfs}.strace"));
    steady::trace(exe(), vfs, &db, ROWS, N, true, &log, 0)
        .unwrap_or_else(|e| panic!("steady-state trace on {vfs}: {e}"))
}

fn per_txn(x: u64) -> f64 {
    x as f64 / N as f64
}

#[test]
fn steady_reads_add_nothing_and_writes_only_the_mirror_and_the_strict_check() {
    assert!(
        steady::strace().is_some(),
        "strace is required to count system calls (scripts/setup installs it)"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = dir.path().join("base.db");
    steady::prepare_db(&base, ROWS).expect("prepare the database through unix");
    let unix = run(Vfs::Unix, dir.path(), &base);
    let wg = run(Vfs::Walguard, dir.path(), &base);

    let mut report = String::from(
        "system calls per phase (steady state: connection open, sidecars unchanged):\n",
    );
    for p in PHASES {
        report.push_str(&steady::phase_table(&unix, &wg, ["unix", "walguard"], p, N));
    }

    // The baseline shows that the measurement measures something.
    let mut broken = Vec::new();
    if !unix.stacks || !wg.stacks {
        broken.push("strace -k resolved no stack frame: cannot attribute calls".to_owned());
    }
    if unix.count("read", "pread64", "db") < N {
        broken.push(format!(
            "unix read phase: only {} pread64 of the database for {N} lookups (the page path is not exercised)",
            unix.count("read", "pread64", "db")
        ));
    }
    if unix.count("write", "pwrite64", "wal") < N {
        broken.push(format!(
            "unix write phase: only {} pwrite64 of the -wal for {N} commits",
            unix.count("write", "pwrite64", "wal")
        ));
    }
    if unix.count("mmap-read", "pread64", "db") >= unix.count("read", "pread64", "db") {
        broken.push("unix mmap-read phase reads as many pages with pread64 as without the map: xFetch is not exercised".to_owned());
    }
    if let Some(c) = unix
        .calls
        .iter()
        .find(|c| matches!(c.owner, Owner::Walguard(_)))
    {
        broken.push(format!(
            "the unix run has a call attributed to walguard: {} {:?}",
            c.name, c.stack
        ));
    }
    if !wg
        .phase("read")
        .any(|c| c.name == "pread64" && c.walguard_method() == Some("x_read"))
    {
        broken.push("no pread64 of the walguard run shows walguard's xRead on its stack: stacks do not reach the VFS layer".to_owned());
    }
    assert!(
        broken.is_empty(),
        "the measurement itself failed:\n  {}\n{report}",
        broken.join("\n  ")
    );

    let mut failures = Vec::new();
    // Budgets per transaction phase.
    for p in TXN_PHASES {
        let (u, g) = (budgeted(&unix, p), budgeted(&wg, p));
        let budget = if p == "write" { WRITE_BUDGET * N } else { 0 };
        let (ub, gb) = (unix.count(p, "brk", "-"), wg.count(p, "brk", "-"));
        if gb > ub + BRK_SLACK {
            failures.push(format!(
                "{p}: brk unix {ub}, walguard {gb}: the heap grows with the transactions"
            ));
        }
        if g > u + budget {
            failures.push(format!(
                "{p}: walguard makes {:.2} system calls per transaction, unix {:.2}: extra {:+.2}, allowed {}",
                per_txn(g),
                per_txn(u),
                per_txn(g) - per_txn(u),
                budget / N
            ));
        }
    }
    // The per-page path: xRead/xWrite forward exactly, nothing else of walguard's own.
    for p in TXN_PHASES {
        for (call, file) in [
            ("pread64", "db"),
            ("pread64", "wal"),
            ("pwrite64", "db"),
            ("pwrite64", "wal"),
        ] {
            let (u, g) = (unix.count(p, call, file), wg.count(p, call, file));
            if u != g {
                failures.push(format!(
                    "{p}: {call} of the {file}: unix {u}, walguard {g} (xRead/xWrite must forward exactly)"
                ));
            }
        }
        for (what, count) in steady::non_lock_own_calls(&wg, p) {
            // The strict G4 check where a write starts: one read of the inotify queue.
            if p == "write" && what.starts_with("read(") && what.contains("read_events") {
                continue;
            }
            failures.push(format!(
                "{p}: walguard's own {what}: {count} calls ({:.2} per transaction; only the lock itself may be a system call on the hot path)",
                per_txn(count)
            ));
        }
        for (what, count) in steady::per_page_own_calls(&wg, p) {
            failures.push(format!(
                "{p}: walguard's own {what}: {count} calls inside a per-page method"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "walguard's steady state costs system calls it must not:\n  {}\n{report}",
        failures.join("\n  ")
    );
    eprintln!("{report}");
}
