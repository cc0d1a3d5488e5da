//! The rounds of one workload: each side run in turn, baseline first in even rounds and
//! candidate first in odd ones, in this process or in a child of the side's binary
//! (`--compare`).

use crate::bench::compare::run_in_child;
use crate::bench::measure::Sample;
use crate::bench::workloads::{ratio_of, run_once, Workload, WorkloadResult};
use crate::bench::{Env, Side};

/// One side's run of one workload in one round: in this process, or in a child of the
/// side's binary (`--compare`).
fn run_side(env: &Env, w: Workload, side: &Side, round: usize) -> Result<Sample, String> {
    match &side.exe {
        None => run_once(env, w, side.vfs, round),
        Some(exe) => run_in_child(env, exe, side, w, round),
    }
}

pub(crate) fn run_workload(env: &Env, w: Workload) -> Result<WorkloadResult, String> {
    if env.sizes.warmup {
        for side in &env.sides {
            run_side(env, w, side, 999)?;
        }
    }
    let mut res = WorkloadResult {
        w,
        rounds: Vec::new(),
        ratios: Vec::new(),
        cpu_ratios: Vec::new(),
    };
    for r in 0..env.sizes.rounds {
        // Baseline first in even rounds, candidate first in odd ones.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut samples = [Sample::default(); 2];
        for i in order {
            samples[i] = run_side(env, w, &env.sides[i], r)?;
        }
        let (ratio, cpu) = ratio_of(w, &samples[0], &samples[1]);
        res.ratios.push(ratio);
        res.cpu_ratios.push(cpu);
        res.rounds.push((samples[0], samples[1]));
    }
    Ok(res)
}
