//! The results: a side-by-side table for people, one JSON object for programs.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::campaign::RunResult;
use super::cli::{Config, Knob};

/// `12345` -> `12,345`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` of a time.
pub fn utc(t: SystemTime) -> String {
    crate::utc_timestamp(t, false)
}

/// The command that replays a run with the same seed and settings.
pub fn replay_command(cfg: &Config) -> String {
    let mut s = format!(
        "vfs-tests torture --seed {:#x} --processes {} --duration {}",
        cfg.seed,
        cfg.processes,
        cfg.duration.as_secs_f64()
    );
    match cfg.vfs.as_slice() {
        [one] => s.push_str(&format!(" --vfs {one}")),
        _ => s.push_str(" --vfs both"),
    }
    let off: Vec<&str> = Knob::ALL
        .into_iter()
        .filter(|k| !Knob::OPT_IN.contains(k) && !cfg.enabled.contains(k))
        .map(Knob::name)
        .collect();
    if !off.is_empty() {
        s.push_str(&format!(" --disable {}", off.join(",")));
    }
    let on: Vec<&str> = Knob::OPT_IN
        .into_iter()
        .filter(|k| cfg.enabled.contains(k))
        .map(Knob::name)
        .collect();
    if !on.is_empty() {
        s.push_str(&format!(" --enable {}", on.join(",")));
    }
    s
}

fn integrity_cell(r: &RunResult) -> String {
    let v = &r.verification;
    if v.integrity_ok {
        "ok".to_owned()
    } else if v.integrity_lines > 0 {
        format!("FAILED ({} lines)", v.integrity_lines)
    } else {
        "FAILED".to_owned()
    }
}

fn pair(a: u64, b: u64) -> String {
    format!("{} / {}", thousands(a), thousands(b))
}

/// The side-by-side table (one column per run) and the details under it.
pub fn table(cfg: &Config, runs: &[RunResult], started: SystemTime) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "walguard torture — {}, seed {:#x}, {} processes, {} s per VFS, {cpus} CPUs",
        utc(started),
        cfg.seed,
        cfg.processes,
        cfg.duration.as_secs_f64()
    );
    let n = |key: &str| -> Vec<String> { runs.iter().map(|r| thousands(r.total(key))).collect() };
    let f = |g: &dyn Fn(&RunResult) -> String| -> Vec<String> { runs.iter().map(g).collect() };
    let wg = |key: &str| -> Vec<String> {
        runs.iter()
            .map(|r| {
                if r.vfs == Some(crate::worker::Vfs::Walguard) {
                    thousands(r.total(&format!("wg_{key}")))
                } else {
                    "-".to_owned()
                }
            })
            .collect()
    };
    let ext = |r: &RunResult, k: Knob| r.external.get(k.name()).copied().unwrap_or(0);
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            String::new(),
            f(&|r| r.vfs.map_or("?".to_owned(), |v| v.to_string())),
        ),
        (
            "transactions acknowledged".into(),
            f(&|r| thousands(r.verification.acked)),
        ),
        (
            "transactions verified present".into(),
            f(&|r| thousands(r.verification.present)),
        ),
        (
            "acknowledged transactions lost".into(),
            f(&|r| thousands(r.verification.lost())),
        ),
        (
            "  acked commits invisible to readers (live)".into(),
            f(&|r| thousands(r.event("live-missing"))),
        ),
        (
            "  rows read back with wrong contents".into(),
            f(&|r| thousands(r.event("hash"))),
        ),
        ("integrity_check".into(), f(&integrity_cell)),
        (
            "NOTADB on a good file (seen by workers)".into(),
            f(&|r| thousands(r.event("notadb"))),
        ),
        (
            "SQLITE_CORRUPT seen by workers".into(),
            f(&|r| thousands(r.event("corrupt"))),
        ),
        (
            "  SQLITE_CORRUPT for an injected EIO read".into(),
            n("eio_corrupt"),
        ),
        (
            "split sidecars seen (deleted -wal/-shm held)".into(),
            f(&|r| thousands(r.split.len() as u64)),
        ),
        (
            "worker crashes".into(),
            f(&|r| thousands(r.crashes.len() as u64)),
        ),
        (
            "  forked children crashed or hung".into(),
            f(&|r| thousands(r.event("fork-crash"))),
        ),
        ("faults injected".into(), f(&|r| thousands(r.faults()))),
        (
            "  short / empty header reads".into(),
            f(&|r| pair(r.total("fault_short_read"), r.total("fault_empty_read"))),
        ),
        (
            "  EIO: pread / pwrite / fstat".into(),
            f(&|r| {
                format!(
                    "{} / {} / {}",
                    thousands(r.total("fault_read_error")),
                    thousands(r.total("fault_write_error")),
                    thousands(r.total("fault_fstat_error"))
                )
            }),
        ),
    ];
    if cfg.enabled.contains(&Knob::ZeroSize) {
        rows.push(("  zero size".into(), n("fault_zero_size")));
    }
    rows.extend([
        ("disruptions".to_owned(), vec![String::new(); runs.len()]),
        ("  header peeks, open()/close()".to_owned(), n("peek")),
        ("  fchmod passes".to_owned(), n("fchmod")),
        (
            "  second-runtime open/read/close".to_owned(),
            n("second_runtime"),
        ),
        (
            "  forked children / closing inherited first".to_owned(),
            f(&|r| pair(r.total("fork_children"), r.total("fork_closed_inherited"))),
        ),
        (
            "  transactions acked by forked children".to_owned(),
            n("fork_acked"),
        ),
        (
            "  exclusive-mode writes acked / tried".to_owned(),
            f(&|r| pair(r.total("excl_ok"), r.total("excl_tried"))),
        ),
        (
            "  kill -9 (respawned)".to_owned(),
            f(&|r| thousands(r.kills)),
        ),
        (
            "  external rm -shm / cp+mv over -shm".to_owned(),
            f(&|r| pair(ext(r, Knob::RmShm), ext(r, Knob::MvShm))),
        ),
    ]);
    if cfg.enabled.contains(&Knob::RmWal) {
        rows.push((
            "  external rm -wal".to_owned(),
            f(&|r| thousands(ext(r, Knob::RmWal))),
        ));
    }
    rows.extend([
        (
            "transient errors: busy / I/O / G4 vnode".to_owned(),
            f(&|r| {
                format!(
                    "{} / {} / {}",
                    thousands(r.total("busy")),
                    thousands(r.total("ioerr")),
                    thousands(r.total("vnode"))
                )
            }),
        ),
        ("walguard: unlinks refused".to_owned(), wg("unlink_refused")),
        (
            "walguard: exclusive locks blocked".to_owned(),
            wg("exclusive_blocked"),
        ),
        (
            "walguard: header reads retried (G3)".to_owned(),
            wg("header_retries"),
        ),
        (
            "walguard: replaced sidecars caught (G4)".to_owned(),
            wg("sidecar_replaced"),
        ),
        (
            "throughput (acknowledged txn/s)".to_owned(),
            f(&|r| {
                let s = r.elapsed.as_secs_f64();
                if s > 0.0 {
                    thousands((r.verification.acked as f64 / s).round() as u64)
                } else {
                    "-".to_owned()
                }
            }),
        ),
        (
            "verdict".to_owned(),
            f(&|r| {
                if !r.harness_errors.is_empty() {
                    "HARNESS ERROR".to_owned()
                } else if r.failed() {
                    "FAILED".to_owned()
                } else {
                    "clean".to_owned()
                }
            }),
        ),
    ]);
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    let col_w = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0)
        .max(10)
        + 3;
    for (label, vals) in &rows {
        let _ = write!(out, "{label:<label_w$}");
        for v in vals {
            let _ = write!(out, "{v:>col_w$}");
        }
        out.push('\n');
    }
    out.push('\n');
    for r in runs {
        let name = r.vfs.map_or("?".to_owned(), |v| v.to_string());
        let failures = r.failures();
        if failures.is_empty() {
            let _ = writeln!(out, "{name}: clean");
        } else {
            let _ = writeln!(out, "{name}: FAILED: {}", failures.join("; "));
        }
        if !r.verification.lost_examples.is_empty() {
            let _ = writeln!(
                out,
                "  lost, e.g.: {}",
                r.verification.lost_examples.join(", ")
            );
        }
        if let Some(e) = &r.verification.read_error {
            let _ = writeln!(out, "  {e}");
        }
        for (ev, msg) in &r.event_examples {
            let _ = writeln!(out, "  first {ev}: {}", clip(msg, 240));
        }
        for s in r.split.iter().take(3) {
            let _ = writeln!(out, "  split: {s}");
        }
        for c in r.crashes.iter().take(3) {
            let _ = writeln!(out, "  crash: {}", clip(c, 400));
        }
        for e in &r.harness_errors {
            let _ = writeln!(out, "  harness error: {e}");
        }
    }
    let _ = writeln!(out, "replay: {}", replay_command(cfg));
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(n).collect();
        c.push('…');
        c
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    crate::json_string(s)
}

fn json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_str(s))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// One run as a flat JSON object (every counter at top level; lists of strings for the
/// details).
pub fn run_json(r: &RunResult) -> String {
    let v = &r.verification;
    let mut fields: Vec<(String, String)> = vec![
        (
            "vfs".into(),
            json_str(&r.vfs.map_or("?".to_owned(), |v| v.to_string())),
        ),
        ("db".into(), json_str(&r.db.to_string_lossy())),
        ("seconds".into(), format!("{:.1}", r.elapsed.as_secs_f64())),
        ("acked".into(), v.acked.to_string()),
        ("verified".into(), v.present.to_string()),
        ("lost".into(), v.lost().to_string()),
        ("missing".into(), v.missing.to_string()),
        ("mismatched".into(), v.mismatched.to_string()),
        ("rows_in_table".into(), v.rows_in_table.to_string()),
        (
            "unacknowledged_rows".into(),
            v.unacknowledged_rows.to_string(),
        ),
        ("integrity_ok".into(), v.integrity_ok.to_string()),
        ("integrity".into(), json_str(&v.integrity)),
        ("notadb".into(), r.event("notadb").to_string()),
        ("corrupt".into(), r.event("corrupt").to_string()),
        ("live_missing".into(), r.event("live-missing").to_string()),
        ("hash_mismatch".into(), r.event("hash").to_string()),
        ("split".into(), r.split.len().to_string()),
        ("scans".into(), r.scans.to_string()),
        ("crashes".into(), r.crashes.len().to_string()),
        ("fork_crashes".into(), r.event("fork-crash").to_string()),
        ("faults".into(), r.faults().to_string()),
        ("kills".into(), r.kills.to_string()),
        ("spawned".into(), r.spawned.to_string()),
        (
            "throughput".into(),
            format!(
                "{:.1}",
                if r.elapsed.as_secs_f64() > 0.0 {
                    v.acked as f64 / r.elapsed.as_secs_f64()
                } else {
                    0.0
                }
            ),
        ),
        ("failed".into(), r.failed().to_string()),
        (
            "harness_error".into(),
            (!r.harness_errors.is_empty()).to_string(),
        ),
    ];
    for (k, n) in &r.external {
        fields.push((format!("ext_{}", k.replace('-', "_")), n.to_string()));
    }
    for (k, n) in &r.totals {
        // Worker counters whose name is taken by a verdict field above get a prefix.
        let key = if fields.iter().any(|(f, _)| f == k) {
            format!("worker_{k}")
        } else {
            k.clone()
        };
        fields.push((key, n.to_string()));
    }
    fields.push(("failures".into(), json_list(&r.failures())));
    fields.push(("lost_examples".into(), json_list(&v.lost_examples)));
    fields.push((
        "events".into(),
        json_list(
            &r.event_examples
                .iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect::<Vec<_>>(),
        ),
    ));
    fields.push((
        "samples".into(),
        json_list(
            &r.samples
                .iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect::<Vec<_>>(),
        ),
    ));
    fields.push((
        "split_holders".into(),
        json_list(&r.split.iter().cloned().collect::<Vec<_>>()),
    ));
    fields.push(("crash_details".into(), json_list(&r.crashes)));
    fields.push(("harness_errors".into(), json_list(&r.harness_errors)));
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", json_str(&k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// The whole result as one JSON object.
pub fn json(
    cfg: &Config,
    runs: &[RunResult],
    started: SystemTime,
    walguard_failed: bool,
) -> String {
    format!(
        "{{\"date\":{},\"seed\":{},\"seed_hex\":{},\"processes\":{},\"duration\":{},\
         \"disruptors\":{},\"replay\":{},\"walguard_failed\":{walguard_failed},\"runs\":[{}]}}",
        json_str(&utc(started)),
        cfg.seed,
        json_str(&format!("{:#x}", cfg.seed)),
        cfg.processes,
        cfg.duration.as_secs_f64(),
        json_str(&Knob::list(&cfg.enabled)),
        json_str(&replay_command(cfg)),
        runs.iter().map(run_json).collect::<Vec<_>>().join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(
            utc(SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_931_720)),
            "2025-11-23 21:02 UTC"
        );
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
