//! The counters a torture worker reports to the parent, one `stats` line at a time.
//!
//! A worker prints `stats name=value name=value ...` about ten times a second and when
//! it exits; the parent keeps the last line of every worker incarnation and adds them
//! up. Events that decide the verdict (`notadb`, `corrupt`, `hash`, `live-missing`) are
//! also printed as `event ...` lines the moment they happen, so that a worker killed a
//! moment later still has them counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A worker counter.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum C { $( $(#[$doc])* $name, )* }

        impl C {
            /// Every counter, in declaration order.
            pub const ALL: &'static [C] = &[ $( C::$name, )* ];

            /// The name on the `stats` line.
            pub fn name(self) -> &'static str {
                match self { $( C::$name => stringify!($name), )* }
            }
        }
    };
}

counters! {
    /// Transactions committed and written to the ledger.
    acked,
    /// Rows in those transactions.
    rows_written,
    /// Write transactions that failed (not acknowledged).
    txn_failed,
    /// Read transactions completed.
    reads,
    /// Rows whose payload hash a reader checked.
    rows_verified,
    /// Acknowledged transactions of other workers that a reader looked for.
    live_checked,
    /// Connections opened.
    opens,
    /// Opens that failed.
    open_failed,
    /// SQLITE_BUSY / SQLITE_LOCKED.
    busy,
    /// SQLITE_IOERR of any kind except VNODE.
    ioerr,
    /// SQLITE_IOERR_VNODE (walguard G4: a sidecar was replaced).
    vnode,
    /// SQLITE_CORRUPT.
    corrupt,
    /// SQLITE_CORRUPT right after an injected EIO read (SQLite maps a read's EIO to
    /// SQLITE_CORRUPT); not evidence of a damaged file.
    eio_corrupt,
    /// SQLITE_NOTADB.
    notadb,
    /// SQLITE_CANTOPEN.
    cantopen,
    /// Every other error.
    other_err,
    /// Header peeks done.
    peek,
    /// fchmod passes done.
    fchmod,
    /// Second-runtime open/read/close cycles done.
    second_runtime,
    /// In-process disruptions that failed.
    disrupt_err,
    /// Exclusive-mode writes tried.
    excl_tried,
    /// Exclusive-mode writes acknowledged.
    excl_ok,
    /// Checkpoints run.
    checkpoints,
    /// Checkpoints that reported busy (could not finish).
    checkpoint_busy,
    /// Faults armed (each may or may not be injected).
    fault_arms,
    /// Children forked (the fork disruptor).
    fork_children,
    /// Of those, children that first closed the connection they inherited.
    fork_closed_inherited,
    /// Transactions the forked children committed and logged (included in `acked`).
    fork_acked,
    /// Forked children that crashed, hung (killed after a deadline) or could not be
    /// forked.
    fork_failed,
}

const N: usize = C::ALL.len();
static VALUES: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Adds `n` to a counter.
pub fn add(c: C, n: u64) {
    VALUES[c as usize].fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub fn bump(c: C) {
    add(c, 1);
}

/// The current value of a counter.
pub fn get(c: C) -> u64 {
    VALUES[c as usize].load(Ordering::Relaxed)
}

/// Every counter's current value, by [`C`] index.
pub fn snapshot() -> Vec<u64> {
    C::ALL.iter().map(|c| get(*c)).collect()
}

/// `name=delta ...` of every counter that grew since `before` (a [`snapshot`]): what a
/// forked child did, for its parent to [`add_deltas`].
pub fn delta_line(before: &[u64]) -> String {
    let mut s = String::new();
    for (i, c) in C::ALL.iter().enumerate() {
        let d = get(*c).saturating_sub(before.get(i).copied().unwrap_or(0));
        if d > 0 {
            s.push_str(&format!("{}={d} ", c.name()));
        }
    }
    s.trim_end().to_owned()
}

/// Adds the counters of a [`delta_line`] (unknown names are ignored).
pub fn add_deltas(line: &str) {
    for (k, v) in parse_stats(line) {
        if let Some(c) = C::ALL.iter().find(|c| c.name() == k) {
            add(*c, v);
        }
    }
}

/// The `stats` line of this process: the counters, the faults injected by kind
/// (`fault_<kind>`) and walguard's counters (`wg_<name>`).
pub fn stats_line() -> String {
    let mut s = String::from("stats");
    for c in C::ALL {
        s.push_str(&format!(" {}={}", c.name(), get(*c)));
    }
    let faults = crate::faults::counts();
    for k in crate::faults::Kind::ALL {
        s.push_str(&format!(" fault_{}={}", k.name(), faults.get(k)));
    }
    for (name, v) in walguard::stats().fields() {
        s.push_str(&format!(" wg_{name}={v}"));
    }
    s
}

/// Parses the payload of a `stats` line (after `stats `).
pub fn parse_stats(payload: &str) -> BTreeMap<String, u64> {
    payload
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_round_trips() {
        bump(C::peek);
        let line = stats_line();
        let payload = line.strip_prefix("stats ").expect("prefix");
        let m = parse_stats(payload);
        assert!(m["peek"] >= 1);
        assert!(m.contains_key("fault_empty_read"));
        assert!(m.contains_key("wg_sidecar_replaced"));
        assert_eq!(m.len(), C::ALL.len() + 8 + walguard::stats().fields().len());
    }

    #[test]
    fn deltas_round_trip() {
        let before = snapshot();
        add(C::fork_acked, 3);
        bump(C::opens);
        let line = delta_line(&before);
        assert!(line.contains("fork_acked=3"), "{line}");
        assert!(line.contains("opens="), "{line}");
        assert!(!line.contains("fork_failed="), "{line}");
        let was = get(C::fork_acked);
        add_deltas(&line);
        assert_eq!(get(C::fork_acked), was + 3);
        add_deltas("no_such_counter=5 fork_acked=x");
        assert_eq!(get(C::fork_acked), was + 3);
    }
}
