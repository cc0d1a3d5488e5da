//! The report: the human-readable table (stdout, or stderr with `--json`) and the JSON
//! document.

use std::fmt::Write as _;
use std::fs;
use std::time::{Instant, SystemTime};

use crate::bench::audit::{phase_label, AuditResult};
use crate::bench::measure::min_max;
use crate::bench::options::Opts;
use crate::bench::workloads::speedtest1::SPEEDTEST1_NOTE;
use crate::bench::workloads::{Target, Workload, WorkloadResult};
use crate::bench::Env;

/// The human-readable report, and whether every verdict passed.
pub(crate) fn text(
    opts: &Opts,
    env: &Env,
    header: &str,
    results: &[WorkloadResult],
    audit: Option<&AuditResult>,
    stat_ns: Option<f64>,
    started: Instant,
) -> (String, bool) {
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
    for r in results {
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
    if let Some(a) = audit {
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
    (rep, all_pass)
}

pub(crate) fn cpu_model() -> String {
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

pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// UTC date and time of now, to the second.
pub(crate) fn utc_now() -> String {
    crate::utc_timestamp(SystemTime::now(), true)
}

pub(crate) fn json_str(s: &str) -> String {
    crate::json_string(s)
}

pub(crate) fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".to_owned()
    }
}

pub(crate) fn to_json(
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
    fn dates() {
        let d = utc_now();
        assert!(d.starts_with("20") && d.ends_with("UTC"), "{d}");
    }
}
