//! Smoke tests of `vfs-tests bench`: it runs, and it reports. Timing is never asserted
//! here (the machine may be busy); only that every workload printed a ratio line, that
//! contention reports SQLITE_BUSY counts per VFS, busy-dir the disruptor's rate per VFS,
//! that the audit's per-phase counts, churn-cycle listing and WRITE-lock critical section
//! are in the report and the JSON, and, from the syscall audit (counting system calls is
//! deterministic), that walguard adds no system call per page read or written. (The
//! steady-state budgets are asserted by `hot_path_syscalls.rs`.)

use std::path::Path;
use std::process::{Command, Output};

const WORKLOADS: [&str; 8] = [
    "write-normal",
    "busy-dir",
    "write-full",
    "batched",
    "read-point",
    "scan",
    "churn",
    "contention",
];

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vfs-tests"))
}

fn bench(args: &[&str]) -> Output {
    let out = Command::new(exe())
        .arg("bench")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} bench: {e}", exe().display()));
    assert!(
        out.status.success(),
        "vfs-tests bench {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The ratio a report line gives for `workload` (`<workload> ratio <x> [...] ...`).
fn ratio_of(report: &str, workload: &str) -> Option<f64> {
    report.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        if f.next() != Some(workload) || f.next() != Some("ratio") {
            return None;
        }
        f.next()?.parse().ok()
    })
}

#[test]
fn quick_bench_prints_a_ratio_for_every_workload() {
    let out = bench(&["--quick"]);
    let report = String::from_utf8_lossy(&out.stdout);
    for w in WORKLOADS {
        let r = ratio_of(&report, w)
            .unwrap_or_else(|| panic!("no ratio line for workload {w} in the report:\n{report}"));
        assert!(
            r.is_finite() && r > 0.0,
            "workload {w}: ratio {r} is not a positive number\n{report}"
        );
    }
    assert!(
        report.contains("speedtest1"),
        "the report says what became of speedtest1:\n{report}"
    );
    // busy-dir: the disruption each side got, so that "the same" can be checked.
    let line = report
        .lines()
        .find(|l| l.starts_with("busy-dir disruption"))
        .unwrap_or_else(|| panic!("no busy-dir disruption line in the report:\n{report}"));
    assert!(
        line.contains(" unix ") && line.contains(" walguard "),
        "{line}"
    );
}

#[test]
fn quick_json_reports_the_busy_dir_disruption() {
    let out = bench(&["--quick", "--json", "--only", "busy-dir"]);
    let json = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "\"name\":\"busy-dir\"",
        "\"disruption\":{\"target_files_per_s\":",
        "\"unix\":{\"median\":",
        "\"walguard\":{\"median\":",
    ] {
        assert!(json.contains(needle), "no {needle} in the JSON:\n{json}");
    }
}

#[test]
fn quick_json_has_every_workload() {
    let out = bench(&["--quick", "--json", "--only", "read-point,churn,contention"]);
    let json = String::from_utf8_lossy(&out.stdout);
    let json = json.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    for w in ["read-point", "churn", "contention"] {
        assert!(json.contains(&format!("\"name\":\"{w}\"")), "{json}");
    }
    assert!(json.contains("\"ratio\":"), "{json}");
    // SQLITE_BUSY counts per VFS for contention.
    for vfs in ["unix", "walguard"] {
        assert!(
            json.contains(&format!("\"{vfs}\":{{\"handler_calls\":")),
            "no busy counts for {vfs}: {json}"
        );
    }
    // The human report goes to stderr with --json.
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(ratio_of(&report, "churn").is_some(), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.trim_start().starts_with("walguard") && l.contains("busy-handler calls")),
        "no SQLITE_BUSY line for walguard in the report:\n{report}"
    );
}

#[test]
fn help_documents_compare_and_busy_counts() {
    let out = bench(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--compare REF",
        "git worktree",
        "current/REF",
        "SQLITE_BUSY",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle:?}:\n{help}"
        );
    }
}

#[test]
fn compare_with_an_unknown_revision_fails_clearly() {
    let out = Command::new(exe())
        .args([
            "bench",
            "--quick",
            "--only",
            "churn",
            "--compare",
            "no-such-revision-of-walguard",
        ])
        .output()
        .expect("run vfs-tests bench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no-such-revision-of-walguard") && err.contains("not a commit"),
        "{err}"
    );
}

#[test]
fn audit_finds_no_extra_syscall_per_page() {
    if !["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!("SKIPPED: strace is not installed (scripts/setup installs it)");
        return;
    }
    let out = bench(&["--quick", "--json", "--only", "audit"]);
    let json = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "\"phases\":[{\"mode\":\"read\",\"phase\":\"open\"",
        "\"phase\":\"txn\",\"transactions\":",
        "\"steady\":{\"txns\":",
        "\"phase\":\"write\",\"transactions\":",
        "\"write_lock\":{\"txns\":",
        "\"churn\":{\"cycles\":",
        "\"phase\":\"cycle\",\"cycles\":",
        "\"judged\":true",
    ] {
        assert!(
            json.contains(needle),
            "no {needle} in the audit JSON:\n{json}"
        );
    }
    let report = String::from_utf8_lossy(&out.stderr);
    for io in ["read", "write"] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("audit {io}: no extra system call per page")))
            .unwrap_or_else(|| panic!("no per-page {io} check in the audit:\n{report}"));
        assert!(
            line.ends_with("PASS"),
            "walguard adds system calls per page {io}: {line}\n{report}"
        );
    }
    // Reported (their verdicts are hot_path_syscalls.rs's to assert).
    for needle in [
        "audit steady write: calls added inside the WAL WRITE lock's critical section",
        "WRITE lock critical sections: unix ",
        "churn cycle (open, one query, close; ",
    ] {
        assert!(
            report.contains(needle),
            "no {needle:?} in the audit report:\n{report}"
        );
    }
}
