//! Command-line options of `vfs-tests bench`.

use std::path::PathBuf;

use crate::bench::workloads::{Workload, ALL};

pub(crate) fn usage() -> String {
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
    /// SQLite's `test/speedtest1.c`, to build and run as one more workload.
    pub(crate) speedtest1: Option<PathBuf>,
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
    }
}
