//! The churn cycle's system calls: open a connection, run one query, close it — the
//! `churn` workload's operation — N times on a 100-row WAL database that no other
//! connection keeps open (so every cycle maps a fresh `-shm` and its last close
//! checkpoints and removes the sidecars), under `strace -f -y`, counted per cycle and
//! listed by system call name, for both VFSs.
//!
//! Used by `vfs-tests bench --audit` (text and JSON) and printed by
//! `tests/hot_path_syscalls.rs`. The child is this binary re-executed as
//! `vfs-tests bench-child churn --vfs V --db D --n N`. Its first cycle is a phase of its
//! own (`first-cycle`): what a process pays once (walguard's watcher thread, the first
//! descriptors per process) is not a per-cycle cost.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::bench::db::{create_db, ctx, open};
use crate::bench::steady::{run_traced, Trace};
use crate::bench::strace::mark;
use crate::worker::Vfs;

/// The phases, in order: one cycle, then N cycles.
pub const PHASES: [&str; 2] = ["first-cycle", "cycle"];

/// Rows of the churn database (as the `churn` workload's).
pub const ROWS: u64 = 100;

fn cycle(vfs: Vfs, db: &Path) -> Result<(), String> {
    let c = open(vfs, db)?;
    let count: i64 = ctx(
        "churn query",
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)),
    )?;
    if count != ROWS as i64 {
        return Err(format!("churn: {count} rows, expected {ROWS}"));
    }
    ctx("close", c.close().map_err(|(_, e)| e))
}

/// `vfs-tests bench-child churn --vfs V --db D --n N`.
pub(crate) fn child(vfs: Vfs, db: &Path, n: u64) -> Result<(), String> {
    let mut devnull = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    mark(&mut devnull, "first-cycle");
    cycle(vfs, db)?;
    mark(&mut devnull, "cycle");
    for _ in 0..n {
        cycle(vfs, db)?;
    }
    mark(&mut devnull, "end");
    Ok(())
}

/// Creates the churn database (WAL, [`ROWS`] rows, no sidecars left) through `unix`.
pub fn prepare_db(path: &Path) -> Result<(), String> {
    create_db(Vfs::Unix, path, ROWS)
}

/// Runs the churn child of `exe` (a `vfs-tests` binary) under `strace -f -y` on `db`
/// (made by [`prepare_db`]), `n` cycles, and parses the log (kept as `log`).
pub fn trace(
    exe: &Path,
    vfs: Vfs,
    db: &Path,
    n: u64,
    log: &Path,
    read_recheck_ms: u64,
) -> Result<Trace, String> {
    let args: Vec<String> = [
        "churn",
        "--vfs",
        vfs.name(),
        "--n",
        &n.to_string(),
        "--read-recheck-ms",
        &read_recheck_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = run_traced(exe, &args, db, false, log)
        .map_err(|e| format!("the churn child ({vfs}): {e}"))?;
    for p in PHASES {
        if !t.calls.iter().any(|c| c.phase == p) {
            return Err(format!(
                "strace log {} has no call in phase {p}: is strace writing the expected format?",
                log.display()
            ));
        }
    }
    Ok(t)
}

/// Calls of a phase by system call name.
pub fn by_name(t: &Trace, phase: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for c in t.phase(phase) {
        *m.entry(c.name.clone()).or_default() += 1;
    }
    m
}

/// Calls of a phase made by threads other than the busiest one (the thread that runs the
/// cycles): walguard's watcher thread, for instance.
pub fn other_threads(t: &Trace, phase: &str) -> u64 {
    let mut per: BTreeMap<u32, u64> = BTreeMap::new();
    for c in t.phase(phase) {
        *per.entry(c.pid).or_default() += 1;
    }
    let busiest = per.values().copied().max().unwrap_or(0);
    per.values().sum::<u64>() - busiest
}

/// The per-cycle listing: every system call name either side makes in the `cycle`
/// phase, both counts per cycle and the difference (`n` cycles), most added first.
pub fn table(base: &Trace, cand: &Trace, names: [&str; 2], n: u64) -> String {
    let div = n.max(1) as f64;
    let [nb, nc] = names;
    let (b, c) = (by_name(base, "cycle"), by_name(cand, "cycle"));
    let mut keys: Vec<&String> = b.keys().chain(c.keys()).collect();
    keys.sort();
    keys.dedup();
    let get = |m: &BTreeMap<String, u64>, k: &String| m.get(k).copied().unwrap_or(0);
    // Most added first, then by name.
    keys.sort_by_key(|k| (std::cmp::Reverse(get(&c, k) as i64 - get(&b, k) as i64), *k));
    let (tb, tc) = (base.total("cycle"), cand.total("cycle"));
    let mut s = format!(
        "  churn cycle (open, one query, close; {n} cycles, per cycle): {nb} {:.2}, {nc} {:.2}, \
         extra {:+.2} (of which other threads than the cycling one: {nb} {:.2}, {nc} {:.2})\n    \
         {:<18} {:>9} {:>9} {:>9}\n",
        tb as f64 / div,
        tc as f64 / div,
        (tc as f64 - tb as f64) / div,
        other_threads(base, "cycle") as f64 / div,
        other_threads(cand, "cycle") as f64 / div,
        "syscall",
        nb,
        nc,
        "extra"
    );
    for k in keys {
        let (x, y) = (get(&b, k), get(&c, k));
        s.push_str(&format!(
            "    {:<18} {:>9.2} {:>9.2} {:>+9.2}\n",
            k,
            x as f64 / div,
            y as f64 / div,
            (y as f64 - x as f64) / div
        ));
    }
    s
}

/// JSON of both traces: per phase and side (`keys`), the total and the count of every
/// system call name, and by (call, file).
pub fn to_json(base: &Trace, cand: &Trace, keys: [&str; 2], n: u64) -> String {
    let js = crate::json_string;
    let mut j = format!("{{\"cycles\":{n},\"phases\":[");
    for (i, p) in PHASES.iter().enumerate() {
        j.push_str(&format!(
            "{}{{\"phase\":{},\"cycles\":{},",
            if i > 0 { "," } else { "" },
            js(p),
            if *p == "cycle" { n } else { 1 }
        ));
        for (k, (key, t)) in [(keys[0], base), (keys[1], cand)].iter().enumerate() {
            let names: Vec<String> = by_name(t, p)
                .iter()
                .map(|(call, c)| format!("{}:{c}", js(call)))
                .collect();
            let files: Vec<String> = t
                .counts(p)
                .iter()
                .map(|((call, file), c)| {
                    format!(
                        "{{\"syscall\":{},\"file\":{},\"count\":{c}}}",
                        js(call),
                        js(file)
                    )
                })
                .collect();
            j.push_str(&format!(
                "{}{}:{{\"total\":{},\"other_threads\":{},\"calls\":{{{}}},\"by_file\":[{}]}}",
                if k > 0 { "," } else { "" },
                js(key),
                t.total(p),
                other_threads(t, p),
                names.join(","),
                files.join(",")
            ));
        }
        j.push('}');
    }
    j.push_str("]}");
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::steady::parse;

    #[test]
    fn cycles_are_listed_by_name() {
        let u = parse(
            "1 write(3</dev/null>, \"WGBENCH-PHASE first-cycle\", 25) = 25\n\
             1 openat(AT_FDCWD, \"/d/a.db\", O_RDWR) = 4\n\
             1 write(3</dev/null>, \"WGBENCH-PHASE cycle\", 19) = 19\n\
             1 openat(AT_FDCWD, \"/d/a.db\", O_RDWR) = 4\n\
             1 close(4</d/a.db>) = 0\n",
            Path::new("/d/a.db"),
        );
        let g = parse(
            "2 write(3</dev/null>, \"WGBENCH-PHASE first-cycle\", 25) = 25\n\
             2 write(3</dev/null>, \"WGBENCH-PHASE cycle\", 19) = 19\n\
             2 openat(AT_FDCWD, \"/d/a.db\", O_RDWR) = 4\n\
             2 getpid() = 2\n\
             2 close(4</d/a.db>) = 0\n\
             3 read(9<anon_inode:inotify>, \"...\", 4096) = 32\n",
            Path::new("/d/a.db"),
        );
        assert_eq!(by_name(&g, "cycle")["getpid"], 1);
        assert_eq!(other_threads(&g, "cycle"), 1);
        let t = table(&u, &g, ["unix", "walguard"], 1);
        let first = t.lines().nth(2).expect("a row");
        assert!(first.trim_start().starts_with("getpid"), "{t}");
        assert!(t.contains("extra +2.00 (of which other threads"), "{t}");
        let j = to_json(&u, &g, ["unix", "walguard"], 1);
        assert!(
            j.contains(
                "\"walguard\":{\"total\":4,\"other_threads\":1,\"calls\":{\"close\":1,\"getpid\":1,\"openat\":1,\"read\":1}"
            ),
            "{j}"
        );
    }
}
