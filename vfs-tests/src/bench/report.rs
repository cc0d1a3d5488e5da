//! The report: the human-readable table (stdout, or stderr with `--json`) and the JSON
//! document.

use std::fmt::Write as _;
use std::fs;
use std::time::{Instant, SystemTime};

use crate::bench::audit::{phase_label, AuditResult, Check};
use crate::bench::measure::min_max;
use crate::bench::options::Opts;
use crate::bench::workloads::busy_dir;
use crate::bench::workloads::speedtest1::SPEEDTEST1_NOTE;
use crate::bench::workloads::{Target, Workload, WorkloadResult};
use crate::bench::{churn_trace, steady, write_lock, Env};

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
    let comparing = env.comparing();
    let [base, cand] = [&env.sides[0].label, &env.sides[1].label];
    let mut rep = String::new();
    let _ = writeln!(rep, "{header}");
    let _ = writeln!(
        rep,
        "ratio = {cand} / {base} per round (cost per operation; contention: commits in {} ms), \
         median [min .. max]; cpu = the same ratio of CPU time",
        env.sizes.contend_ms
    );
    let _ = writeln!(
        rep,
        "{:<13} {:>11} {:<17} {:>9}  {:>26}  {:>26}  {:<8} verdict",
        "workload", "ratio", "[min .. max]", "cpu", base, cand, "target"
    );
    let mut all_pass = true;
    for r in results {
        let (lo, hi) = min_max(&r.ratios);
        let judged = !comparing && !matches!(r.w.target(), Target::Info);
        let pass = !judged || r.pass();
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
            if comparing {
                "-".to_owned()
            } else {
                r.w.target().text()
            },
            if !judged {
                "-"
            } else if pass {
                "PASS"
            } else {
                "FAIL"
            }
        );
    }
    if let Some(r) = results.iter().find(|r| r.w == Workload::Contention) {
        let _ = writeln!(
            rep,
            "contention SQLITE_BUSY ({} processes; median per round; busy-handler calls = \
             SQLITE_BUSY results SQLite slept on, errors = SQLITE_BUSY that reached the \
             application):",
            env.sizes.contend_procs
        );
        for (i, side) in env.sides.iter().enumerate() {
            let (calls, slept, errors) = r.busy(i);
            let _ = writeln!(
                rep,
                "  {:<26} {:>8.0} busy-handler calls ({:.2} per 1000 commits), {:>7.0} ms slept, \
                 {:.0} errors",
                side.label,
                calls,
                r.busy_per_1000(i),
                slept,
                errors
            );
        }
    }
    if let Some(r) = results.iter().find(|r| r.w == Workload::BusyDir) {
        let target = env.sizes.busy_dir_rate as f64;
        let mut line = format!(
            "busy-dir disruption (another process creates and removes files beside the \
             database; target {target:.0} files/s; median [lowest] per round):"
        );
        let mut behind = Vec::new();
        for (i, side) in env.sides.iter().enumerate() {
            let (med, low) = r.disruption(i);
            let _ = write!(line, " {} {med:.0} [{low:.0}]", side.label);
            if low < busy_dir::MIN_SHARE * target {
                behind.push(side.label.as_str());
            }
        }
        let _ = writeln!(rep, "{line}");
        if !behind.is_empty() {
            let _ = writeln!(
                rep,
                "  WARNING: the disruptor fell behind its schedule (below {:.0}% of the target) \
                 while {} ran: the two sides did not get the same disruption; the busy-dir \
                 ratio is not comparable (a busy machine?)",
                busy_dir::MIN_SHARE * 100.0,
                behind.join(" and ")
            );
        }
    }
    if let (false, Some(ns), Some(r)) = (
        comparing,
        stat_ns,
        results.iter().find(|r| r.w == Workload::ReadPoint),
    ) {
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
    if !comparing && !opts.workloads.contains(&Workload::Speedtest1) {
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
            "mode",
            "phase",
            "syscall",
            short(base),
            short(cand),
            "extra"
        );
        for row in &a.rows {
            let _ = writeln!(
                rep,
                "{:<6} {:<30} {:<18} {:>10.3} {:>10.3} {:>+10.3}",
                row.mode,
                phase_label(row.phase),
                row.syscall,
                row.base,
                row.cand,
                row.cand - row.base
            );
        }
        for c in a.checks.iter().filter(|c| !c.what.starts_with("steady")) {
            all_pass &= check_line(&mut rep, c);
        }
        if let Some((tb, tc, n)) = &a.steady {
            let names = [short(base), short(cand)];
            let _ = writeln!(
                rep,
                "\nsteady state (one open connection, sidecars unchanged; strace -f -y -k; \
                 calls by file):"
            );
            for p in steady::TXN_PHASES {
                let (b, c) = (tb.total(p), tc.total(p));
                let _ = writeln!(
                    rep,
                    "audit steady {p:<9} transaction: {} {:.2}, {} {:.2} system calls, extra {:+.2}",
                    names[0],
                    b as f64 / *n as f64,
                    names[1],
                    c as f64 / *n as f64,
                    (c as f64 - b as f64) / *n as f64
                );
            }
            // The per-run phases are in the JSON (and in the audit above).
            for p in steady::TXN_PHASES {
                rep.push_str(&steady::phase_table(tb, tc, names, p, *n));
            }
            let _ = writeln!(
                rep,
                "WAL WRITE lock critical section (write transactions above; the calls one thread \
                 makes between the fcntl that takes the -shm WRITE lock, byte 120, and the one \
                 that releases it; F_SETLK or F_OFD_SETLK, whoever makes it):"
            );
            rep.push_str(&write_lock::table(
                &write_lock::sections(tb, "write"),
                &write_lock::sections(tc, "write"),
                names,
                *n,
            ));
            for c in a.checks.iter().filter(|c| c.what.starts_with("steady")) {
                all_pass &= check_line(&mut rep, c);
            }
            for p in steady::TXN_PHASES {
                for (what, count) in steady::non_lock_own_calls(tc, p) {
                    let _ = writeln!(
                        rep,
                        "audit steady {p}: {} makes {what} {:.2} times per transaction (not a lock: \
                         the hot path allows none)",
                        names[1],
                        count as f64 / *n as f64
                    );
                }
            }
        }
    }
    if let Some((tb, tc, n)) = audit.and_then(|a| a.churn.as_ref()) {
        let _ = writeln!(
            rep,
            "\nchurn cycle by system call (strace -f -y; a 100-row WAL database no other \
             connection keeps open; the first cycle of the process not counted):"
        );
        rep.push_str(&churn_trace::table(tb, tc, [short(base), short(cand)], *n));
    }
    let _ = writeln!(
        rep,
        "total {:.1} s; overall: {}",
        started.elapsed().as_secs_f64(),
        if all_pass { "PASS" } else { "FAIL" }
    );
    (rep, all_pass)
}

/// One audit check as a report line (`audit WHAT: DETAIL  PASS|FAIL`); whether it passed
/// (a figure that is only reported passes).
fn check_line(rep: &mut String, c: &Check) -> bool {
    let _ = writeln!(
        rep,
        "audit {}: {}{}",
        c.what,
        c.detail,
        match c.verdict {
            Some(true) => "  PASS",
            Some(false) => "  FAIL",
            None => "",
        }
    );
    c.verdict.unwrap_or(true)
}

/// A side's label without its parenthesised detail (`main (e700e8a)` -> `main`), for
/// narrow columns.
fn short(label: &str) -> &str {
    label.split(" (").next().unwrap_or(label)
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
    let [kb, kc] = [env.sides[0].key, env.sides[1].key];
    let mut j = String::from("{");
    let _ = write!(
        j,
        "\"date\":{},\"cpu\":{},\"cores\":{},\"sqlite\":{},\"quick\":{},\"rounds\":{},\
         \"mode\":{},\"baseline\":{{\"key\":{},\"label\":{}}},\"candidate\":{{\"key\":{},\
         \"label\":{}}},\"workloads\":[",
        json_str(&utc_now()),
        json_str(&cpu_model()),
        cpu_count(),
        json_str(rusqlite::version()),
        opts.quick,
        env.sizes.rounds,
        json_str(if env.comparing() { "compare" } else { "vfs" }),
        json_str(kb),
        json_str(&env.sides[0].label),
        json_str(kc),
        json_str(&env.sides[1].label),
    );
    for (i, r) in results.iter().enumerate() {
        let (lo, hi) = min_max(&r.ratios);
        let ratios: Vec<String> = r.ratios.iter().map(|&x| json_num(x)).collect();
        let _ = write!(
            j,
            "{}{{\"name\":{},\"unit\":{},\"ratio\":{},\"min\":{},\"max\":{},\"cpu_ratio\":{},\
             {}:{},{}:{},\"target\":{},\"pass\":{},\"ratios\":[{}]",
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
            json_str(kb),
            json_num(r.figure(0)),
            json_str(kc),
            json_num(r.figure(1)),
            json_str(&if env.comparing() {
                "(compare)".to_owned()
            } else {
                r.w.target().text()
            }),
            env.comparing() || r.pass(),
            ratios.join(",")
        );
        if r.w == Workload::BusyDir {
            let (mb, lb) = r.disruption(0);
            let (mc, lc) = r.disruption(1);
            let _ = write!(
                j,
                ",\"disruption\":{{\"target_files_per_s\":{},{}:{{\"median\":{},\"lowest\":{}}},\
                 {}:{{\"median\":{},\"lowest\":{}}}}}",
                env.sizes.busy_dir_rate,
                json_str(kb),
                json_num(mb),
                json_num(lb),
                json_str(kc),
                json_num(mc),
                json_num(lc)
            );
        }
        if r.w == Workload::Contention {
            j.push_str(",\"busy\":{");
            for (s, key) in [kb, kc].iter().enumerate() {
                let (calls, slept, errors) = r.busy(s);
                let rounds: Vec<String> = r
                    .rounds
                    .iter()
                    .map(|rd| {
                        let x = if s == 0 { &rd.0 } else { &rd.1 };
                        format!(
                            "{{\"commits\":{},\"handler_calls\":{},\"slept_ms\":{},\"errors\":{}}}",
                            x.ops, x.busy.handler_calls, x.busy.slept_ms, x.busy.errors
                        )
                    })
                    .collect();
                let _ = write!(
                    j,
                    "{}{}:{{\"handler_calls\":{},\"per_1000_commits\":{},\"slept_ms\":{},\
                     \"errors\":{},\"rounds\":[{}]}}",
                    if s > 0 { "," } else { "" },
                    json_str(key),
                    json_num(calls),
                    json_num(r.busy_per_1000(s)),
                    json_num(slept),
                    json_num(errors),
                    rounds.join(",")
                );
            }
            j.push('}');
        }
        j.push('}');
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
                "{}{{\"mode\":{},\"phase\":{},\"syscall\":{},{}:{},{}:{}}}",
                if i > 0 { "," } else { "" },
                json_str(row.mode),
                json_str(row.phase),
                json_str(&row.syscall),
                json_str(kb),
                json_num(row.base),
                json_str(kc),
                json_num(row.cand)
            );
        }
        j.push_str("],\"phases\":[");
        for (i, p) in a.phases.iter().enumerate() {
            let side = |m: &std::collections::BTreeMap<String, u64>| {
                let calls: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json_str(k)))
                    .collect();
                format!(
                    "{{\"total\":{},\"calls\":{{{}}}}}",
                    m.values().sum::<u64>(),
                    calls.join(",")
                )
            };
            let _ = write!(
                j,
                "{}{{\"mode\":{},\"phase\":{},\"transactions\":{},{}:{},{}:{}}}",
                if i > 0 { "," } else { "" },
                json_str(p.mode),
                json_str(p.phase),
                p.transactions,
                json_str(kb),
                side(&p.base),
                json_str(kc),
                side(&p.cand)
            );
        }
        j.push_str("],\"checks\":[");
        for (i, c) in a.checks.iter().enumerate() {
            let _ = write!(
                j,
                "{}{{\"check\":{},\"judged\":{},\"pass\":{},\"detail\":{}}}",
                if i > 0 { "," } else { "" },
                json_str(&c.what),
                c.verdict.is_some(),
                c.verdict.unwrap_or(true),
                json_str(&c.detail)
            );
        }
        j.push(']');
        if let Some((tb, tc, n)) = &a.steady {
            let _ = write!(j, ",\"steady\":{}", steady::to_json(tb, tc, [kb, kc], *n));
            let _ = write!(
                j,
                ",\"write_lock\":{}",
                write_lock::to_json(
                    &write_lock::sections(tb, "write"),
                    &write_lock::sections(tc, "write"),
                    [kb, kc],
                    *n
                )
            );
        }
        if let Some((tb, tc, n)) = &a.churn {
            let _ = write!(
                j,
                ",\"churn\":{}",
                churn_trace::to_json(tb, tc, [kb, kc], *n)
            );
        }
        j.push('}');
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
