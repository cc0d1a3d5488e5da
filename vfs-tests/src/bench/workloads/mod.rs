//! The workloads: what each measures, its sizes and target, and one VFS's run of one
//! round ([`run_once`]); `rounds` alternates the VFSs over the rounds.

pub(crate) mod busy_dir;
pub(crate) mod churn;
pub(crate) mod contention;
pub(crate) mod read;
pub(crate) mod speedtest1;
pub(crate) mod write;

use crate::bench::measure::{fmt_secs, median, min_max, Sample};
use crate::bench::Env;
use crate::worker::Vfs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    WriteNormal,
    /// `write-normal` while another process creates and removes files beside the database.
    BusyDir,
    WriteFull,
    Batched,
    ReadPoint,
    Scan,
    Churn,
    Contention,
    /// SQLite's speedtest1, only with `--speedtest1 FILE` (see [`build_speedtest1`]).
    Speedtest1,
}

pub(crate) const ALL: [Workload; 8] = [
    Workload::WriteNormal,
    Workload::BusyDir,
    Workload::WriteFull,
    Workload::Batched,
    Workload::ReadPoint,
    Workload::Scan,
    Workload::Churn,
    Workload::Contention,
];

/// What a workload's figure must meet.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Cost per operation, walguard/unix, at most this.
    MaxCostRatio(f64),
    /// Operations in a fixed time, walguard/unix, at least this.
    MinThroughputRatio(f64),
    /// Reported, not judged.
    Info,
}

impl Target {
    pub(crate) fn met(self, ratio: f64) -> bool {
        match self {
            Target::MaxCostRatio(x) => ratio <= x,
            Target::MinThroughputRatio(x) => ratio >= x,
            Target::Info => true,
        }
    }

    pub(crate) fn text(self) -> String {
        match self {
            Target::MaxCostRatio(x) => format!("<= {x:.2}"),
            Target::MinThroughputRatio(x) => format!(">= {x:.2}"),
            Target::Info => "(info)".to_owned(),
        }
    }
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::WriteNormal => "write-normal",
            Workload::BusyDir => "busy-dir",
            Workload::WriteFull => "write-full",
            Workload::Batched => "batched",
            Workload::ReadPoint => "read-point",
            Workload::Scan => "scan",
            Workload::Churn => "churn",
            Workload::Contention => "contention",
            Workload::Speedtest1 => "speedtest1",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Workload> {
        ALL.into_iter()
            .chain([Workload::Speedtest1])
            .find(|w| w.name() == s)
    }

    /// The targets of issue 17 (its goals are tighter: write-normal 1.02, contention
    /// 0.98).
    pub(crate) fn target(self) -> Target {
        match self {
            Workload::Churn | Workload::BusyDir | Workload::WriteNormal => {
                Target::MaxCostRatio(1.05)
            }
            Workload::Contention => Target::MinThroughputRatio(0.95),
            Workload::Speedtest1 => Target::Info,
            _ => Target::MaxCostRatio(1.02),
        }
    }

    /// What one operation is, for the report.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Workload::WriteNormal | Workload::BusyDir | Workload::WriteFull => "commit",
            Workload::Batched => "10k-row txn",
            Workload::ReadPoint => "lookup",
            Workload::Scan => "scan",
            Workload::Churn => "cycle",
            Workload::Contention => "commit",
            Workload::Speedtest1 => "run",
        }
    }

    pub(crate) fn reads_shared_db(self) -> bool {
        matches!(self, Workload::ReadPoint | Workload::Scan)
    }
}

/// How much each workload does per VFS per round.
#[derive(Clone, Debug)]
pub(crate) struct Sizes {
    pub(crate) rounds: usize,
    pub(crate) warmup: bool,
    pub(crate) write_normal: u64,
    /// `busy-dir`: commits, and the disruptor's files per second.
    pub(crate) busy_dir: u64,
    pub(crate) busy_dir_rate: u64,
    pub(crate) write_full: u64,
    pub(crate) batched_txns: u64,
    pub(crate) read_db_bytes: u64,
    pub(crate) lookups: u64,
    pub(crate) scans: u64,
    pub(crate) churn: u64,
    pub(crate) contend_procs: usize,
    pub(crate) contend_ms: u64,
    pub(crate) audit_txns: u64,
    /// Churn cycles traced by the audit.
    pub(crate) audit_churn: u64,
    pub(crate) speedtest1_size: u64,
}

impl Sizes {
    pub(crate) fn full() -> Sizes {
        Sizes {
            rounds: 9,
            warmup: true,
            write_normal: 30_000,
            busy_dir: 30_000,
            busy_dir_rate: busy_dir::RATE,
            write_full: 1_500,
            batched_txns: 40,
            read_db_bytes: 100 << 20,
            lookups: 100_000,
            scans: 5,
            churn: 1_000,
            contend_procs: 8,
            contend_ms: 2_000,
            audit_txns: 1_000,
            audit_churn: 200,
            speedtest1_size: 20,
        }
    }

    pub(crate) fn quick() -> Sizes {
        Sizes {
            rounds: 3,
            warmup: false,
            write_normal: 200,
            busy_dir: 200,
            busy_dir_rate: busy_dir::RATE,
            write_full: 20,
            batched_txns: 1,
            read_db_bytes: 4 << 20,
            lookups: 2_000,
            scans: 1,
            churn: 50,
            contend_procs: 8,
            contend_ms: 300,
            audit_txns: 200,
            audit_churn: 50,
            speedtest1_size: 2,
        }
    }

    pub(crate) fn ops(&self, w: Workload) -> u64 {
        match w {
            Workload::WriteNormal => self.write_normal,
            Workload::BusyDir => self.busy_dir,
            Workload::WriteFull => self.write_full,
            Workload::Batched => self.batched_txns,
            Workload::ReadPoint => self.lookups,
            Workload::Scan => self.scans,
            Workload::Churn => self.churn,
            Workload::Contention => 0, // counted, not fixed
            Workload::Speedtest1 => 1,
        }
    }
}

/// One VFS's run of one workload in one round.
pub(crate) fn run_once(env: &Env, w: Workload, vfs: Vfs, round: usize) -> Result<Sample, String> {
    match w {
        Workload::WriteNormal | Workload::WriteFull => {
            write::single_row_commits(env, w, vfs, round)
        }
        Workload::BusyDir => busy_dir::busy_dir(env, vfs, round),
        Workload::Batched => write::batched(env, vfs, round),
        Workload::ReadPoint => read::point(env, vfs, round),
        Workload::Scan => read::scan(env, vfs),
        Workload::Churn => churn::churn(env, vfs, round),
        Workload::Contention => contention::contention(env, vfs, round),
        Workload::Speedtest1 => speedtest1::run(env, vfs, round),
    }
}

pub(crate) struct WorkloadResult {
    pub(crate) w: Workload,
    pub(crate) rounds: Vec<(Sample, Sample)>,
    pub(crate) ratios: Vec<f64>,
    pub(crate) cpu_ratios: Vec<f64>,
}

impl WorkloadResult {
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.ratios)
    }

    pub(crate) fn cpu_ratio(&self) -> f64 {
        median(&self.cpu_ratios)
    }

    pub(crate) fn pass(&self) -> bool {
        self.w.target().met(self.ratio())
    }

    /// Median cost per op (or commits per second for contention) of one VFS.
    pub(crate) fn figure(&self, which: usize) -> f64 {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| {
                let s = if which == 0 { &r.0 } else { &r.1 };
                if self.w == Workload::Contention {
                    s.ops as f64 / s.wall.as_secs_f64()
                } else {
                    s.wall_per_op()
                }
            })
            .collect();
        median(&v)
    }

    /// Median over the rounds of one side's SQLITE_BUSY counts (contention).
    pub(crate) fn busy(&self, which: usize) -> (f64, f64, f64) {
        let pick = |f: fn(&Sample) -> u64| {
            let v: Vec<f64> = self
                .rounds
                .iter()
                .map(|r| f(if which == 0 { &r.0 } else { &r.1 }) as f64)
                .collect();
            median(&v)
        };
        (
            pick(|s| s.busy.handler_calls),
            pick(|s| s.busy.slept_ms),
            pick(|s| s.busy.errors),
        )
    }

    /// Busy-handler invocations per 1000 commits, median over the rounds.
    pub(crate) fn busy_per_1000(&self, which: usize) -> f64 {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| {
                let s = if which == 0 { &r.0 } else { &r.1 };
                1000.0 * s.busy.handler_calls as f64 / s.ops.max(1) as f64
            })
            .collect();
        median(&v)
    }

    /// `busy-dir`: the disruptor's achieved files per second over the rounds of one
    /// side: (median, lowest).
    pub(crate) fn disruption(&self, which: usize) -> (f64, f64) {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| (if which == 0 { &r.0 } else { &r.1 }).dir_files_per_s as f64)
            .collect();
        (median(&v), min_max(&v).0)
    }

    pub(crate) fn figure_text(&self, which: usize) -> String {
        let f = self.figure(which);
        if self.w == Workload::Contention {
            format!("{f:.0} commits/s")
        } else {
            format!("{}/{}", fmt_secs(f), self.w.unit())
        }
    }
}

pub(crate) fn ratio_of(w: Workload, unix: &Sample, wg: &Sample) -> (f64, f64) {
    if w == Workload::Contention {
        // throughput walguard/unix; CPU per commit walguard/unix
        (
            wg.ops as f64 / unix.ops.max(1) as f64,
            wg.cpu_per_op() / unix.cpu_per_op(),
        )
    } else {
        (
            wg.wall_per_op() / unix.wall_per_op(),
            wg.cpu_per_op() / unix.cpu_per_op(),
        )
    }
}
