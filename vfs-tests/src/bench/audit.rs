//! The syscall audit: the read-heavy and the write-heavy workload once per VFS under
//! `strace -f` (this binary re-executed as `bench-child audit`), phases marked by writes
//! to /dev/null, system calls counted per phase and compared; then the steady state
//! (`steady`: its budgets, and the calls inside the WAL WRITE lock's critical section,
//! `write_lock`) and the churn cycle by system call name (`churn_trace`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::params;

use crate::bench::db::{create_db, ctx, open, remove_db, set_sync};
use crate::bench::measure::{payload, Rng};
use crate::bench::strace::{mark, strace_call, strace_path, MARK};
use crate::bench::{churn_trace, recheck_arg, steady, write_lock, Env};
use crate::worker::Vfs;

/// One connection's whole life, phases marked by writes to /dev/null for strace.
pub(crate) fn audit_child(
    vfs: Vfs,
    db: &Path,
    mode: &str,
    n: u64,
    rows: u64,
) -> Result<(), String> {
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
// Running strace and counting
// ---------------------------------------------------------------------------------

pub(crate) const PHASES: [&str; 4] = ["open", "first", "txn", "close"];

pub(crate) fn phase_label(p: &str) -> &'static str {
    match p {
        "open" => "per open",
        "first" => "first query (first -shm map)",
        "txn" => "per transaction",
        _ => "per close",
    }
}

/// syscall counts per phase, from an `strace -f` log.
pub(crate) type Counts = BTreeMap<String, BTreeMap<String, u64>>;

pub(crate) fn parse_strace(text: &str) -> Counts {
    let mut counts: Counts = BTreeMap::new();
    let mut phase: Option<String> = None;
    for raw in text.lines() {
        let Some((name, _, line)) = strace_call(raw) else {
            continue;
        };
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

/// A system call whose count differs between the two sides in one phase.
pub(crate) struct AuditRow {
    pub(crate) mode: &'static str,
    pub(crate) phase: &'static str,
    pub(crate) syscall: String,
    /// Baseline (unix, or REF with `--compare`): per transaction in the `txn` phase.
    pub(crate) base: f64,
    /// Candidate (walguard, or the current build).
    pub(crate) cand: f64,
}

/// Every count of one phase of one mode, both sides (for the JSON).
pub(crate) struct AuditPhase {
    pub(crate) mode: &'static str,
    pub(crate) phase: &'static str,
    /// Transactions in this phase (`txn`), 0 elsewhere.
    pub(crate) transactions: u64,
    pub(crate) base: BTreeMap<String, u64>,
    pub(crate) cand: BTreeMap<String, u64>,
}

/// One line of the audit's verdicts.
pub(crate) struct Check {
    pub(crate) what: String,
    /// `Some(pass)` for a judged check (it decides the overall verdict), `None` for a
    /// figure that is only reported.
    pub(crate) verdict: Option<bool>,
    pub(crate) detail: String,
}

impl Check {
    fn judged(what: String, pass: bool, detail: String) -> Check {
        Check {
            what,
            verdict: Some(pass),
            detail,
        }
    }

    fn info(what: String, detail: String) -> Check {
        Check {
            what,
            verdict: None,
            detail,
        }
    }
}

pub(crate) struct AuditResult {
    pub(crate) rows: Vec<AuditRow>,
    pub(crate) phases: Vec<AuditPhase>,
    pub(crate) checks: Vec<Check>,
    pub(crate) txns: u64,
    /// The steady-state trace (see `steady`): both sides and its transaction count.
    pub(crate) steady: Option<(steady::Trace, steady::Trace, u64)>,
    /// The churn-cycle trace (see `churn_trace`): both sides and its cycle count.
    pub(crate) churn: Option<(steady::Trace, steady::Trace, u64)>,
}

/// Rows of the steady-state trace's database (~3 MB; the child caches 8 pages).
const STEADY_ROWS: u64 = 25_000;

pub(crate) fn audit(env: &Env) -> Result<AuditResult, String> {
    let strace = strace_path().ok_or(
        "strace is not installed (scripts/setup installs it): cannot run the syscall audit",
    )?;
    let n = env.sizes.audit_txns;
    let [b, c] = [&env.sides[0].label, &env.sides[1].label];
    // strace writes its logs all along: not in a directory walguard watches.
    let logs = env.dir.join("strace-logs");
    fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let mut rows = Vec::new();
    let mut phases = Vec::new();
    let mut checks = Vec::new();
    for mode in ["read", "write"] {
        let mut per_side = Vec::new();
        for side in &env.sides {
            let vfs = side.vfs;
            let (db, nrows) = if mode == "read" {
                let (p, r) = env
                    .read_db
                    .as_ref()
                    .ok_or("internal: the read database was not created")?;
                (p.clone(), *r)
            } else {
                let p = env.dir.join(format!("audit-write-{}.db", side.key));
                create_db(vfs, &p, 0)?;
                (p, 0)
            };
            let log = logs.join(format!("audit-{mode}-{}.strace", side.key));
            let out = Command::new(&strace)
                .args(["-f", "-qq", "-o"])
                .arg(&log)
                .arg(side.binary(env))
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
                    "strace of the {mode} audit child ({}) failed ({}): {}{}",
                    side.label,
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
            per_side.push(counts);
            if mode == "write" {
                remove_db(&db);
            }
        }
        let (u, g) = (&per_side[0], &per_side[1]);
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
                        base: cu as f64 / div,
                        cand: cg as f64 / div,
                    });
                }
            }
            phases.push(AuditPhase {
                mode: if mode == "read" { "read" } else { "write" },
                phase,
                transactions: if phase == "txn" { n } else { 0 },
                base: pu.clone(),
                cand: pg.clone(),
            });
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
        checks.push(Check::judged(
            format!("{mode}: no extra system call per page {mode} ({io} in the transaction phase)"),
            cu == cg && cu > 0,
            format!(
                "{b} {cu} ({:.2}/txn), {c} {cg} ({:.2}/txn){}",
                cu as f64 / n as f64,
                cg as f64 / n as f64,
                if cu == 0 {
                    " — no page I/O seen, check inconclusive"
                } else {
                    ""
                }
            ),
        ));
        let total_u: u64 = txn_u.values().sum();
        let total_g: u64 = txn_g.values().sum();
        checks.push(Check::info(
            format!("{mode}: extra system calls per transaction, total"),
            format!(
                "{b} {:.2}/txn, {c} {:.2}/txn, extra {:+.2}/txn",
                total_u as f64 / n as f64,
                total_g as f64 / n as f64,
                (total_g as f64 - total_u as f64) / n as f64
            ),
        ));
    }
    // The steady state: one open connection, read, write and mmap-read transactions.
    let base_db = env.dir.join("steady-base.db");
    steady::prepare_db(&base_db, STEADY_ROWS)?;
    let mut traces = Vec::new();
    for side in &env.sides {
        // A directory of its own: walguard watches it, and the strace log stays outside.
        let db_dir = env.dir.join(format!("steady-{}", side.key));
        fs::create_dir_all(&db_dir)
            .map_err(|e| format!("cannot create {}: {e}", db_dir.display()))?;
        let db = db_dir.join("steady.db");
        fs::copy(&base_db, &db).map_err(|e| format!("cannot copy {}: {e}", base_db.display()))?;
        let log = logs.join(format!("steady-{}.strace", side.key));
        let ms = crate::bench::READ_RECHECK_MS.load(std::sync::atomic::Ordering::Relaxed);
        traces.push(steady::trace(
            side.binary(env),
            side.vfs,
            &db,
            STEADY_ROWS,
            n,
            true,
            &log,
            ms,
        )?);
        steady::remove(&db);
    }
    steady::remove(&base_db);
    let cand = traces.pop().ok_or("internal: no steady-state trace")?;
    let base = traces.pop().ok_or("internal: no steady-state trace")?;
    checks.extend(steady_checks(&base, &cand, n, env.comparing()));
    let churn = churn_traces(env, &logs)?;
    Ok(AuditResult {
        rows,
        phases,
        checks,
        txns: n,
        steady: Some((base, cand, n)),
        churn: Some(churn),
    })
}

/// The steady-state budgets per transaction (`brk` not counted, see
/// [`steady::budgeted`]); `tests/hot_path_syscalls.rs` asserts the same numbers.
pub(crate) const STEADY_BUDGETS: [(&str, u64); 3] = [("read", 0), ("write", 1), ("mmap-read", 0)];

/// The steady-state verdicts: each transaction phase against its budget, and the calls
/// walguard adds inside the WAL WRITE lock's critical section (budget 0). Judged only
/// against unix (not between two builds of walguard, `--compare`).
fn steady_checks(
    base: &steady::Trace,
    cand: &steady::Trace,
    n: u64,
    comparing: bool,
) -> Vec<Check> {
    let div = n.max(1) as f64;
    let mut checks = Vec::new();
    for (phase, budget) in STEADY_BUDGETS {
        let (b, c) = (steady::budgeted(base, phase), steady::budgeted(cand, phase));
        let what = format!("steady {phase}: extra system calls per transaction (budget +{budget}, brk not counted)");
        let detail = format!(
            "{:.2} against {:.2}: extra {:+.2}",
            c as f64 / div,
            b as f64 / div,
            (c as f64 - b as f64) / div
        );
        checks.push(if comparing {
            Check::info(what, detail)
        } else {
            Check::judged(what, c <= b + budget * n, detail)
        });
    }
    let (sb, sc) = (
        write_lock::sections(base, "write"),
        write_lock::sections(cand, "write"),
    );
    let added = write_lock::added(&sb, &sc);
    let what = "steady write: calls added inside the WAL WRITE lock's critical section (budget 0)"
        .to_owned();
    let detail = format!(
        "{:.2} against {:.2} per transaction: added {:+.2} ({} and {} sections for {n} transactions)",
        sc.inside.len() as f64 / div,
        sb.inside.len() as f64 / div,
        added as f64 / div,
        sc.count,
        sb.count
    );
    let measured = sb.count >= n && sc.count >= n;
    checks.push(if comparing {
        Check::info(what, detail)
    } else if !measured {
        Check::judged(
            what,
            false,
            format!("{detail} — fewer sections than transactions: the trace did not see the lock"),
        )
    } else {
        Check::judged(what, added <= 0, detail)
    });
    checks
}

/// The churn-cycle trace of both sides (each database in a directory of its own).
fn churn_traces(env: &Env, logs: &Path) -> Result<(steady::Trace, steady::Trace, u64), String> {
    let n = env.sizes.audit_churn;
    let ms = crate::bench::READ_RECHECK_MS.load(std::sync::atomic::Ordering::Relaxed);
    let mut traces = Vec::new();
    for side in &env.sides {
        let db_dir = env.dir.join(format!("churn-audit-{}", side.key));
        fs::create_dir_all(&db_dir)
            .map_err(|e| format!("cannot create {}: {e}", db_dir.display()))?;
        let db = db_dir.join("churn.db");
        churn_trace::prepare_db(&db)?;
        let log = logs.join(format!("churn-{}.strace", side.key));
        traces.push(churn_trace::trace(
            side.binary(env),
            side.vfs,
            &db,
            n,
            &log,
            ms,
        )?);
        remove_db(&db);
        let _ = fs::remove_dir_all(&db_dir);
    }
    let cand = traces.pop().ok_or("internal: no churn trace")?;
    let base = traces.pop().ok_or("internal: no churn trace")?;
    Ok((base, cand, n))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
