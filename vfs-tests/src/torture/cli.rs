//! Command line of `vfs-tests torture` and the names of the disruptors.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::worker::Vfs;

/// One thing the campaign does to the database besides the ordinary workload. Each can
/// be switched off by name (`--disable`); the opt-in ones are off unless `--enable`d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Knob {
    /// `open()/read()/close()` of the database header inside worker processes that hold
    /// a connection (drops the process's POSIX locks on the database).
    Peek,
    /// `open()/fchmod()/close()` of the database, `-wal` and `-shm` inside worker
    /// processes (drops the process's POSIX locks on all three).
    Fchmod,
    /// Open/read/close through a second SQLite library (`libsqlite3.so.0`) inside
    /// worker processes.
    SecondRuntime,
    /// A worker that holds a connection forks (a pre-forking server); the child opens
    /// a connection of its own, commits a few transactions (logged to a ledger of its
    /// own, verified like every other worker's) and leaves through `_exit`. Half the
    /// children first close the connection they inherited.
    Fork,
    /// Churners sometimes open with `PRAGMA locking_mode=EXCLUSIVE` (a maintenance job
    /// that wants the database to itself) and write.
    ExclusiveOpen,
    /// `kill -9` of a random worker at a random moment; the worker is respawned.
    Kill,
    /// The parent unlinks `-shm` (an external `rm`).
    RmShm,
    /// The parent moves a copy over `-shm` (an external `cp` + `mv`: same contents, new
    /// inode).
    MvShm,
    /// The parent unlinks `-wal`. Opt-in: the commits the unlinked `-wal` holds are gone
    /// whatever a VFS does.
    RmWal,
    /// Header reads of the database come back short (first half, then end of file).
    ShortRead,
    /// Header reads of the database come back empty.
    EmptyRead,
    /// `pread`, `pwrite` or `fstat` of the database or `-wal` fail with `EIO`.
    Eio,
    /// `fstat` of the database reports a size of 0. Opt-in.
    ZeroSize,
}

impl Knob {
    /// Every knob, in the order of the report.
    pub const ALL: [Knob; 13] = [
        Knob::Peek,
        Knob::Fchmod,
        Knob::SecondRuntime,
        Knob::Fork,
        Knob::ExclusiveOpen,
        Knob::Kill,
        Knob::RmShm,
        Knob::MvShm,
        Knob::RmWal,
        Knob::ShortRead,
        Knob::EmptyRead,
        Knob::Eio,
        Knob::ZeroSize,
    ];

    /// The knobs that are off unless enabled.
    pub const OPT_IN: [Knob; 2] = [Knob::RmWal, Knob::ZeroSize];

    /// The fault-layer knobs.
    pub const FAULTS: [Knob; 4] = [Knob::ShortRead, Knob::EmptyRead, Knob::Eio, Knob::ZeroSize];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Knob::Peek => "peek",
            Knob::Fchmod => "fchmod",
            Knob::SecondRuntime => "second-runtime",
            Knob::Fork => "fork",
            Knob::ExclusiveOpen => "exclusive-open",
            Knob::Kill => "kill",
            Knob::RmShm => "rm-shm",
            Knob::MvShm => "mv-shm",
            Knob::RmWal => "rm-wal",
            Knob::ShortRead => "short-read",
            Knob::EmptyRead => "empty-read",
            Knob::Eio => "eio",
            Knob::ZeroSize => "zero-size",
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Knob::Peek => "open()/read()/close() of the db header inside workers",
            Knob::Fchmod => "open()/fchmod()/close() of db, -wal, -shm inside workers",
            Knob::SecondRuntime => "open/read/close through libsqlite3.so.0 inside workers",
            Knob::Fork => "workers fork; the child writes through its own connection, _exits",
            Knob::ExclusiveOpen => "churners sometimes write with locking_mode=EXCLUSIVE",
            Knob::Kill => "kill -9 of a random worker (respawned)",
            Knob::RmShm => "external rm of -shm",
            Knob::MvShm => "external cp + mv over -shm (same bytes, new inode)",
            Knob::RmWal => "external rm of -wal (opt-in: destroys the commits it holds)",
            Knob::ShortRead => "short reads of the db header (fault layer)",
            Knob::EmptyRead => "empty reads of the db header (fault layer)",
            Knob::Eio => "EIO from pread/pwrite/fstat of db and -wal (fault layer)",
            Knob::ZeroSize => "fstat of the db reports size 0 (fault layer, opt-in)",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Parses a comma-separated list; `faults` stands for every fault-layer knob and
    /// `all` for every knob.
    pub fn parse_list(s: &str) -> Result<BTreeSet<Knob>, String> {
        let mut out = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "all" => out.extend(Knob::ALL),
                "faults" => out.extend(Knob::FAULTS),
                _ => {
                    out.insert(Knob::parse(item).ok_or_else(|| {
                        format!(
                            "unknown disruptor {item:?}; known: {}, faults, all",
                            Knob::ALL.map(Knob::name).join(", ")
                        )
                    })?);
                }
            }
        }
        Ok(out)
    }

    /// Formats a set as a comma-separated list (`-` when empty).
    pub fn list(set: &BTreeSet<Knob>) -> String {
        if set.is_empty() {
            "-".to_owned()
        } else {
            set.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
        }
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `vfs-tests torture` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Length of each VFS's run.
    pub duration: Duration,
    /// Worker processes per run.
    pub processes: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// The VFSes to run, in order.
    pub vfs: Vec<Vfs>,
    /// `--db PATH`.
    pub db: Option<PathBuf>,
    /// `--force`.
    pub force: bool,
    /// `--json`.
    pub json: bool,
    /// The knobs in force.
    pub enabled: BTreeSet<Knob>,
}

/// Default length of each run.
pub const DEFAULT_SECS: u64 = 30;
/// Default number of worker processes.
pub const DEFAULT_PROCESSES: usize = 8;

/// `--help`.
pub fn usage() -> String {
    let mut s = String::from(
        "usage: vfs-tests torture [--duration SECS] [--processes N] [--seed SEED]\n\
         \x20                        [--vfs unix|walguard|both] [--db PATH [--force]] [--json]\n\
         \x20                        [--disable NAME[,NAME]] [--enable NAME[,NAME]]\n\
         \n\
         Runs the same seeded multi-process campaign on one WAL database through the plain\n\
         `unix` VFS and through walguard, then verifies every acknowledged commit and prints\n\
         what each VFS let happen. Exit status 1 if walguard lost or corrupted anything (the\n\
         unix run is expected to fail and does not count), 2 on a usage or harness error,\n\
         130/143 when interrupted.\n\
         \n\
         options:\n\
         \x20 --duration SECS    length of each VFS's run (default 30; `both` runs twice)\n\
         \x20 --processes N      worker processes per run (default 8)\n\
         \x20 --seed SEED        seed of every random choice (decimal or 0x-hex; default: random,\n\
         \x20                    printed so the run can be replayed)\n\
         \x20 --vfs V            unix, walguard or both (default both)\n\
         \x20 --db PATH          database to use instead of one in a temporary directory; refused\n\
         \x20                    if it (or its -wal/-shm) holds data, unless --force. With\n\
         \x20                    `--vfs both` the runs use PATH.unix and PATH.walguard\n\
         \x20 --json             print the results as one JSON object instead of the table\n\
         \x20 --disable LIST     switch disruptors off (`faults` = every fault kind, `all`)\n\
         \x20 --enable LIST      switch disruptors on (opt-in ones; wins over --disable)\n\
         \n\
         disruptors:\n",
    );
    for k in Knob::ALL {
        let opt = if Knob::OPT_IN.contains(&k) {
            " [opt-in]"
        } else {
            ""
        };
        s.push_str(&format!("  {:<16} {}{opt}\n", k.name(), k.help()));
    }
    s
}

/// A seed from the clock and the process id.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut p = crate::workload::Prng::new(nanos ^ (u64::from(std::process::id()) << 40));
    p.next_u64() & 0xffff_ffff_ffff
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What the command line asks for: run, or print help.
#[derive(Debug)]
pub enum Parsed {
    /// Run the campaign.
    Run(Config),
    /// `--help`.
    Help,
}

/// Parses the arguments after `torture`.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut cfg = Config {
        duration: Duration::from_secs(DEFAULT_SECS),
        processes: DEFAULT_PROCESSES,
        seed: 0,
        vfs: vec![Vfs::Unix, Vfs::Walguard],
        db: None,
        force: false,
        json: false,
        enabled: BTreeSet::new(),
    };
    let mut seed = None;
    let mut disabled = BTreeSet::new();
    let mut enabled_extra = BTreeSet::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `--name=value` is accepted too.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value (see --help)")),
            }
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--duration" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .ok_or_else(|| {
                        format!("--duration: expected seconds (0 < s <= 86400), got {v:?}")
                    })?;
                cfg.duration = Duration::from_secs_f64(secs);
            }
            "--processes" => {
                let v = value()?;
                cfg.processes = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--processes: expected 1..=64, got {v:?}"))?;
            }
            "--seed" => {
                let v = value()?;
                seed = Some(
                    parse_u64(&v).ok_or_else(|| format!("--seed: expected a number, got {v:?}"))?,
                );
            }
            "--vfs" => {
                let v = value()?;
                cfg.vfs = match v.as_str() {
                    "unix" => vec![Vfs::Unix],
                    "walguard" => vec![Vfs::Walguard],
                    "both" => vec![Vfs::Unix, Vfs::Walguard],
                    _ => return Err(format!("--vfs: expected unix, walguard or both, got {v:?}")),
                };
            }
            "--db" => cfg.db = Some(PathBuf::from(value()?)),
            "--force" => cfg.force = true,
            "--json" => cfg.json = true,
            "--disable" => disabled.extend(Knob::parse_list(&value()?)?),
            "--enable" => enabled_extra.extend(Knob::parse_list(&value()?)?),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if cfg.force && cfg.db.is_none() {
        return Err("--force only applies to --db PATH".to_owned());
    }
    cfg.seed = seed.unwrap_or_else(fresh_seed);
    // Defaults minus --disable, plus --enable (so `--disable all --enable rm-shm` runs
    // only that one).
    cfg.enabled = Knob::ALL
        .into_iter()
        .filter(|k| {
            enabled_extra.contains(k) || (!Knob::OPT_IN.contains(k) && !disabled.contains(k))
        })
        .collect();
    Ok(Parsed::Run(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn run(s: &str) -> Config {
        match parse(&args(s)) {
            Ok(Parsed::Run(c)) => c,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run("");
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.processes, 8);
        assert_eq!(c.vfs, vec![Vfs::Unix, Vfs::Walguard]);
        assert!(c.enabled.contains(&Knob::Fchmod));
        assert!(c.enabled.contains(&Knob::Fork));
        assert!(!c.enabled.contains(&Knob::RmWal));
        assert!(!c.enabled.contains(&Knob::ZeroSize));
    }

    #[test]
    fn options() {
        let c = run(
            "--duration 2.5 --processes 3 --seed 0x10 --vfs walguard --json \
                     --disable peek,faults,fork --enable rm-wal",
        );
        assert_eq!(c.duration, Duration::from_millis(2500));
        assert_eq!(c.processes, 3);
        assert_eq!(c.seed, 16);
        assert_eq!(c.vfs, vec![Vfs::Walguard]);
        assert!(c.json);
        assert!(!c.enabled.contains(&Knob::Peek));
        assert!(!c.enabled.contains(&Knob::Fork));
        assert!(!c.enabled.contains(&Knob::Eio));
        assert!(c.enabled.contains(&Knob::RmWal));
        assert!(c.enabled.contains(&Knob::Kill));
        let c = run("--seed=42 --disable=all");
        assert_eq!(c.seed, 42);
        assert!(c.enabled.is_empty());
        let c = run("--disable all --enable rm-shm");
        assert_eq!(c.enabled.into_iter().collect::<Vec<_>>(), vec![Knob::RmShm]);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "--duration 0",
            "--duration x",
            "--processes 0",
            "--processes 65",
            "--vfs nfs",
            "--disable bogus",
            "--seed",
            "--force",
            "--what",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(parse(&args("--help")), Ok(Parsed::Help)));
    }
}
