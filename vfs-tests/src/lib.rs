//! walguard's test harness: multi-process workers, disruptors, fault injection,
//! cross-language helpers, the torture campaign and the benchmarks.
//!
//! Module ownership (one author each, to keep parallel work apart):
//! - `worker`, `workload`, `disrupt`, `second_runtime`: scripted worker processes,
//!   the deterministic transparency workload, and the lock-losing disruptors.
//! - `extension`: building and locating `libwalguard.so`, driving Python and the shell.
//! - `faults`: fault injection beneath SQLite's unix VFS.
//! - `bench`: overhead benchmarks against the plain unix VFS.
//! - `torture`: the side-by-side corruption campaign (the README's main command).
//! - `reach`: the preload library, the `walguard` binary, the Python wheel and venvs of
//!   several Pythons, for the tests of guarding unmodified programs (issue 18).

pub mod bench;
pub mod disrupt;
pub mod extension;
pub mod faults;
pub mod reach;
pub mod second_runtime;
pub mod torture;
pub mod worker;
pub mod workload;

/// `YYYY-MM-DD HH:MM[:SS] UTC` of a time (no date crate needed).
pub fn utc_timestamp(t: std::time::SystemTime, with_seconds: bool) -> String {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min) = (rem / 3600, rem % 3600 / 60);
    if with_seconds {
        format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{:02} UTC", rem % 60)
    } else {
        format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02} UTC")
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub mod defect17;
/// Helpers of the defect regression tests (issue 10).
pub mod defects;
