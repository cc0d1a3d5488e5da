//! `vfs-tests torture`: the same seeded multi-process campaign on one WAL database,
//! once through SQLite's plain `unix` VFS and once through walguard, and a table of
//! what each let happen. The README's main command (`scripts/torture`).
//!
//! ## The campaign
//! `--processes` worker processes (this binary re-executed as the hidden
//! `torture-worker` subcommand, each with `PR_SET_PDEATHSIG(SIGKILL)` so none outlives
//! the parent) share one WAL database: writers that log every acknowledged commit to
//! their own ledger, readers that verify what they read (including that the latest
//! acknowledged commits of other processes are visible), connection churners and a
//! checkpointer. Around them the disruptors ([`Knob`]; each can be switched off):
//! header peeks, fchmod passes and a second SQLite runtime *inside* the worker processes
//! (a peek in a separate process loses nothing: POSIX locks are per process),
//! workers that fork a child which commits through its own connection (sometimes after
//! closing the inherited one) and `_exit`s, exclusive-mode writers, `kill -9` of random workers (respawned), short/empty header
//! reads and EIO from the fault layer, and an external `rm`/`cp+mv` of `-shm`.
//!
//! ## The verdict
//! After every worker is gone the database is opened read-only: `integrity_check`, then
//! every ledger entry must be present with its content hash (an acknowledged commit of
//! a process killed later must still be there; an unacknowledged one may be absent).
//! NOTADB and SQLITE_CORRUPT errors seen by workers, acknowledged commits a reader could
//! not see, forked children that crashed or hung, and deleted `-wal`/`-shm` files held open (outside a grace period after an
//! external rm/mv) are counted too. Exit status 1 when the walguard run shows any of
//! them; the unix run is expected to fail and does not count.
//!
//! Module map: [`cli`] (arguments, disruptor names), `role` (the worker processes),
//! `gate` (header-only short reads over [`crate::faults`]), `campaign` (the parent of
//! one run), `verify`, `report` (table and JSON), `counters`.

mod campaign;
pub mod cli;
mod counters;
mod gate;
mod report;
mod role;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

pub use campaign::RunResult;
pub use cli::{Config, Knob};
pub use role::worker_main;

use crate::worker::Vfs;

/// Exit status when walguard lost or corrupted something.
pub const EXIT_WALGUARD_FAILED: u8 = 1;
/// Exit status on a usage or harness error.
pub const EXIT_HARNESS: u8 = 2;

fn db_len(p: &Path) -> Result<Option<u64>, String> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(format!(
            "{} is a directory, not a database file",
            p.display()
        )),
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("stat {}: {e}", p.display())),
    }
}

/// Checks that `--db PATH` may be used (empty or absent, or `--force`) and, when `clear`,
/// removes it and its sidecars.
fn prepare_user_db(db: &Path, force: bool, clear: bool) -> Result<(), String> {
    let parent = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "--db {}: directory {} does not exist",
            db.display(),
            parent.display()
        ));
    }
    let files = [
        db.to_path_buf(),
        crate::disrupt::sidecar(db, "-wal"),
        crate::disrupt::sidecar(db, "-shm"),
    ];
    let mut holding = Vec::new();
    for f in &files {
        if let Some(len) = db_len(f)? {
            if len > 0 {
                holding.push(format!("{} ({len} bytes)", f.display()));
            }
        }
    }
    if !holding.is_empty() && !force {
        return Err(format!(
            "refusing to use --db {}: it holds data: {}; pass --force to let the \
             campaign use (and overwrite) it",
            db.display(),
            holding.join(", ")
        ));
    }
    for f in files.iter().filter(|_| clear) {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", f.display())),
        }
    }
    Ok(())
}

fn user_db_for(db: &Path, vfs: Vfs, both: bool) -> PathBuf {
    if both {
        let mut s = db.as_os_str().to_owned();
        s.push(format!(".{}", vfs.name()));
        PathBuf::from(s)
    } else {
        db.to_path_buf()
    }
}

fn progress_bar(vfs: Vfs, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(1000);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>9} [{bar:32.cyan/blue}] {elapsed:>4} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(vfs.name().to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Entry point of `vfs-tests torture ARGS...`.
pub fn main(args: &[String]) -> ExitCode {
    let cfg = match cli::parse(args) {
        Ok(cli::Parsed::Run(c)) => c,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vfs-tests torture: {e}");
            return ExitCode::from(EXIT_HARNESS);
        }
    };
    if let Err(e) = campaign::install_signal_handlers() {
        eprintln!("vfs-tests torture: {e}");
        return ExitCode::from(EXIT_HARNESS);
    }
    let tmp = match tempfile::Builder::new()
        .prefix("walguard-torture-")
        .tempdir()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "vfs-tests torture: cannot create a temporary directory in {}: {e}",
                std::env::temp_dir().display()
            );
            return ExitCode::from(EXIT_HARNESS);
        }
    };
    let both = cfg.vfs.len() > 1;
    if let (Some(p), true) = (&cfg.db, both) {
        // The runs use PATH.unix and PATH.walguard; PATH itself is only checked, so that
        // a database given by mistake is refused all the same.
        if let Err(e) = prepare_user_db(p, cfg.force, false) {
            eprintln!("vfs-tests torture: {e}");
            return ExitCode::from(EXIT_HARNESS);
        }
    }
    let mut plans = Vec::new();
    for &vfs in &cfg.vfs {
        let db = match &cfg.db {
            Some(p) => {
                let db = user_db_for(p, vfs, both);
                if let Err(e) = prepare_user_db(&db, cfg.force, true) {
                    eprintln!("vfs-tests torture: {e}");
                    return ExitCode::from(EXIT_HARNESS);
                }
                db
            }
            None => {
                let dir = tmp.path().join(vfs.name());
                if let Err(e) = std::fs::create_dir(&dir) {
                    eprintln!("vfs-tests torture: mkdir {}: {e}", dir.display());
                    return ExitCode::from(EXIT_HARNESS);
                }
                dir.join("torture.db")
            }
        };
        let ledger_dir = tmp.path().join(format!("{}-ledgers", vfs.name()));
        if let Err(e) = std::fs::create_dir(&ledger_dir) {
            eprintln!("vfs-tests torture: mkdir {}: {e}", ledger_dir.display());
            return ExitCode::from(EXIT_HARNESS);
        }
        plans.push((vfs, campaign::RunPaths { db, ledger_dir }));
    }

    let started = SystemTime::now();
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "walguard torture: seed {:#x}, {} processes, {} s per VFS ({}), disruptors: {}",
        cfg.seed,
        cfg.processes,
        cfg.duration.as_secs_f64(),
        cfg.vfs
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(" then "),
        Knob::list(&cfg.enabled)
    );
    let mut runs = Vec::new();
    for (vfs, paths) in &plans {
        if !tty {
            eprintln!("walguard torture: {vfs} run on {}", paths.db.display());
        }
        let pb = progress_bar(*vfs, tty);
        let mut update = |frac: f64, msg: &str| {
            pb.set_position((frac * 1000.0) as u64);
            pb.set_message(msg.to_owned());
        };
        let r = campaign::run(&cfg, *vfs, paths, &mut update);
        pb.finish_and_clear();
        if let Some(sig) = r.interrupted {
            eprintln!(
                "walguard torture: interrupted by signal {sig}: workers killed, {} removed",
                tmp.path().display()
            );
            drop(tmp);
            return ExitCode::from(128 + sig.clamp(0, 127) as u8);
        }
        let failures = r.failures();
        eprintln!(
            "walguard torture: {vfs} run: {} acknowledged, {} faults injected: {}",
            report::thousands(r.verification.acked),
            report::thousands(r.faults()),
            if !r.harness_errors.is_empty() {
                format!("HARNESS ERROR: {}", r.harness_errors.join("; "))
            } else if failures.is_empty() {
                "clean".to_owned()
            } else {
                format!("FAILED: {}", failures.join("; "))
            }
        );
        runs.push(r);
    }

    let walguard_failed = runs
        .iter()
        .any(|r| r.vfs == Some(Vfs::Walguard) && r.failed());
    let harness = runs.iter().any(|r| !r.harness_errors.is_empty());
    if cfg.json {
        println!("{}", report::json(&cfg, &runs, started, walguard_failed));
    } else {
        print!("{}", report::table(&cfg, &runs, started));
    }
    drop(tmp);
    if walguard_failed {
        ExitCode::from(EXIT_WALGUARD_FAILED)
    } else if harness {
        ExitCode::from(EXIT_HARNESS)
    } else {
        ExitCode::SUCCESS
    }
}
