//! The strace plumbing the audit, steady-state and churn traces share: the phase marker a
//! traced child writes to /dev/null, where strace is, and one strace line taken apart.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;

/// Marker prefix the audit child writes to /dev/null between phases.
pub(crate) const MARK: &str = "WGBENCH-PHASE ";

pub(crate) fn mark(devnull: &mut fs::File, phase: &str) {
    let _ = devnull.write_all(format!("{MARK}{phase}").as_bytes());
}

/// One line of strace output as `(call name, what follows its '(', the line without its
/// pid)`: "PID name(args) = r" with -f, a bare "name(...)" without. `None` for resumed
/// calls, exits, signals and anything that is not a call.
pub(crate) fn strace_call(raw: &str) -> Option<(&str, &str, &str)> {
    let line = raw.trim_start();
    let line = match line.split_once(' ') {
        Some((pid, rest)) if pid.bytes().all(|b| b.is_ascii_digit()) => rest.trim_start(),
        _ => line,
    };
    if line.starts_with("<...") || line.starts_with("+++") || line.starts_with("---") {
        return None;
    }
    let (name, rest) = line.split_once('(')?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some((name, rest, line))
}

pub(crate) fn strace_path() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
