//! Measurement helpers: samples, wall and CPU timers, deterministic keys, statistics.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::PAYLOAD;

/// One VFS's run of one workload in one round.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) ops: u64,
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
    /// SQLITE_BUSY as the contention workload saw it (zero elsewhere).
    pub(crate) busy: Busy,
    /// `busy-dir`: files per second the disruptor created and removed beside the
    /// database during this run (zero elsewhere).
    pub(crate) dir_files_per_s: u64,
}

/// SQLITE_BUSY counts of the contention workload, summed over its processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Busy {
    /// Busy-handler invocations: each is one SQLITE_BUSY SQLite got from a lock and
    /// waited on (the handler then sleeps 1, 2, 5, ... 100 ms, SQLite's own schedule).
    pub(crate) handler_calls: u64,
    /// Milliseconds the busy handler slept in total.
    pub(crate) slept_ms: u64,
    /// SQLITE_BUSY returned to the application (the statement failed and was retried).
    pub(crate) errors: u64,
}

impl Busy {
    pub(crate) fn add(&mut self, o: Busy) {
        self.handler_calls += o.handler_calls;
        self.slept_ms += o.slept_ms;
        self.errors += o.errors;
    }
}

impl Sample {
    pub(crate) fn wall_per_op(&self) -> f64 {
        self.wall.as_secs_f64() / self.ops.max(1) as f64
    }

    pub(crate) fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() / self.ops.max(1) as f64
    }
}

pub(crate) fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable for the duration of the call.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time of `f` (this process, or its waited-for children too).
pub(crate) struct Timer {
    wall: Instant,
    cpu_self: Duration,
    cpu_children: Duration,
}

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer {
            cpu_self: cpu_time(libc::RUSAGE_SELF),
            cpu_children: cpu_time(libc::RUSAGE_CHILDREN),
            wall: Instant::now(),
        }
    }

    pub(crate) fn stop(&self, ops: u64) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = cpu_time(libc::RUSAGE_SELF).saturating_sub(self.cpu_self)
            + cpu_time(libc::RUSAGE_CHILDREN).saturating_sub(self.cpu_children);
        Sample {
            ops,
            wall,
            cpu,
            busy: Busy::default(),
            dir_files_per_s: 0,
        }
    }
}

/// xorshift64*: the same keys on both VFSs, no dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub(crate) fn payload(seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..PAYLOAD).map(|_| r.next() as u8).collect()
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

pub(crate) fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        "n/a".to_owned()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
