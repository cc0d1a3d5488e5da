//! Command-line options of `vfs-tests bench`.

use std::path::PathBuf;

use crate::bench::workloads::{Workload, ALL};

pub(crate) fn usage() -> String {
    "usage: vfs-tests bench [--quick] [--json] [--audit] [--rounds N] [--only LIST] \
     [--dir DIR] [--keep] [--strict] [--read-recheck-ms MS] [--busy-dir-rate N] \
     [--speedtest1 FILE] [--compare REF [--repo DIR]]\n\
     \n\
     Benchmarks walguard against the plain unix VFS: every workload alternates the two \
     (A B, B A, ...) over several rounds with fresh files; ratio = walguard/unix per round, \
     median [min .. max].\n\
     \n  \
     --quick: smoke-run sizes (verdicts mean nothing)\n  \
     --rounds N: rounds per workload (default 9; --quick 3)\n  \
     --only LIST: comma-separated among write-normal,busy-dir,write-full,batched,read-point,\
     scan,churn,contention,speedtest1,audit (audit alone: only the syscall audit)\n  \
     --audit: also count system calls under strace, by phase (open, first query, \
     transactions, close), per churn cycle (open, query, close) by call name, and in the \
     steady state (read, write and mmap read transactions of an open connection, and the \
     calls inside the WAL WRITE lock's critical section); the counts go into the JSON too\n  \
     --json: JSON on stdout, the human-readable report on stderr\n  \
     --strict: exit 1 if a target is missed\n  \
     --dir DIR / --keep: where the databases go / keep them afterwards\n  \
     --read-recheck-ms MS: walguard's Options::read_recheck (default 0: G4 checks every read)\n  \
     --busy-dir-rate N: files per second the busy-dir workload's disruptor creates and \
     removes beside the database (default 5000)\n  \
     --speedtest1 FILE: also build SQLite's test/speedtest1.c (against the system \
     libsqlite3, walguard loaded as the extension) and run it on both VFSs\n  \
     --compare REF: bench two builds of walguard against each other instead of unix: REF \
     (a git revision: a branch, tag, sha, HEAD~1) is checked out in a temporary git worktree, \
     the current harness (vfs-tests/) is copied over its own so that only the walguard crate \
     differs, and it is built with this binary's profile into target/bench-compare (kept \
     between runs). Both builds run every workload as child processes, alternating; \
     ratio = current/REF (below 1: the current tree is faster; contention: commits, above 1 \
     is better). --audit then compares the two builds' system calls. No targets are judged.\n  \
     --repo DIR: the repository REF is looked up in (default: the tree this binary was \
     built from)\n\
     \n\
     busy-dir is write-normal while another process creates and removes unrelated files \
     beside the database at a fixed rate (the same schedule for both VFSs; the report shows \
     the rate each achieved).\n\
     \n\
     contention also counts SQLITE_BUSY per VFS: busy-handler invocations (each one a \
     SQLITE_BUSY that SQLite got from a lock and slept on, SQLite's own 1, 2, 5, ... 100 ms \
     schedule), the time slept in them, and SQLITE_BUSY errors that reached the application."
        .to_owned()
}

#[derive(Debug)]
pub(crate) struct Opts {
    pub(crate) quick: bool,
    pub(crate) json: bool,
    pub(crate) audit: bool,
    pub(crate) strict: bool,
    pub(crate) keep: bool,
    pub(crate) rounds: Option<usize>,
    pub(crate) workloads: Vec<Workload>,
    pub(crate) dir: Option<PathBuf>,
    /// walguard `Options::read_recheck` in milliseconds (0, the default: every read).
    pub(crate) read_recheck_ms: u64,
    /// `busy-dir`: the disruptor's files per second (`None`: the default).
    pub(crate) busy_dir_rate: Option<u64>,
    /// SQLite's `test/speedtest1.c`, to build and run as one more workload.
    pub(crate) speedtest1: Option<PathBuf>,
    /// `--compare REF`: a git revision whose walguard is the baseline.
    pub(crate) compare: Option<String>,
    /// `--repo DIR`: where REF is looked up.
    pub(crate) repo: Option<PathBuf>,
    /// `-h`/`--help`: print the usage and exit.
    pub(crate) help: bool,
}

pub(crate) fn parse_opts(args: &[String]) -> Result<Opts, String> {
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
        busy_dir_rate: None,
        speedtest1: None,
        compare: None,
        repo: None,
        help: false,
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
            "--busy-dir-rate" => {
                let v = value()?;
                let n: u64 = v.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!(
                        "--busy-dir-rate needs a positive number of files per second, not {v:?}"
                    )
                })?;
                o.busy_dir_rate = Some(n);
            }
            "--compare" => o.compare = Some(value()?),
            "--repo" => o.repo = Some(PathBuf::from(value()?)),
            "-h" | "--help" => o.help = true,
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
    if o.compare.is_some() && o.workloads.contains(&Workload::Speedtest1) {
        return Err(
            "--compare does not run speedtest1 (it loads the extension of the \
                    current tree only)"
                .to_owned(),
        );
    }
    if o.repo.is_some() && o.compare.is_none() {
        return Err("--repo only goes with --compare REF".to_owned());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_opts(&["--quick".into(), "--only".into(), "scan,audit".into()])
            .expect("valid options");
        assert!(o.quick && o.audit);
        assert_eq!(o.workloads, vec![Workload::Scan]);
        assert!(parse_opts(&["--only".into(), "nope".into()]).is_err());
        assert!(parse_opts(&["--rounds".into(), "0".into()]).is_err());
        let o = parse_opts(&["--busy-dir-rate".into(), "20000".into()]).expect("valid options");
        assert_eq!(o.busy_dir_rate, Some(20000));
        assert_eq!(o.workloads[1], Workload::BusyDir);
        assert!(parse_opts(&["--busy-dir-rate".into(), "0".into()]).is_err());
        let o = parse_opts(&["--compare".into(), "HEAD~1".into()]).expect("valid options");
        assert_eq!(o.compare.as_deref(), Some("HEAD~1"));
        assert!(parse_opts(&["--compare".into()]).is_err());
        assert!(parse_opts(&["--repo".into(), "/x".into()]).is_err());
        assert!(parse_opts(&["--help".into()]).expect("help").help);
        assert!(usage().contains("--compare REF"));
    }
}
