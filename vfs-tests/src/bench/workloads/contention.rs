//! `contention`: 8 processes (this binary re-executed as `vfs-tests bench-child contend`)
//! commit single rows into one database for a fixed time.
//!
//! Each process counts SQLITE_BUSY: its busy handler (SQLite's own default schedule,
//! re-implemented so that it can count: sleeps of 1, 2, 5, 10, 15, 20, 25, 25, 25, 50,
//! 50, 100, 100, ... ms up to a 30 s timeout) counts its invocations and the time it
//! slept, and a statement that still fails with SQLITE_BUSY is counted and retried.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::Workload;
use crate::bench::db::{create_db, ctx, open, remove_db, set_sync};
use crate::bench::measure::{epoch_ms, payload, Busy, Sample, Timer};
use crate::bench::{recheck_arg, Env};
use crate::worker::Vfs;

pub(crate) fn contention(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let path = env.db(Workload::Contention, vfs, round);
    create_db(vfs, &path, 0)?;
    let ms = env.sizes.contend_ms;
    let start_at = epoch_ms() + 300 + 40 * env.sizes.contend_procs as u64;
    let mut children = Vec::new();
    for i in 0..env.sizes.contend_procs {
        let child = Command::new(&env.exe)
            .args(["bench-child", "contend", "--vfs", vfs.name(), "--db"])
            .arg(&path)
            .args([
                "--start-at-ms",
                &start_at.to_string(),
                "--ms",
                &ms.to_string(),
                "--id",
                &i.to_string(),
                "--read-recheck-ms",
                &recheck_arg(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} bench-child: {e}", env.exe.display()))?;
        children.push(child);
    }
    let t = Timer::start();
    let mut commits = 0u64;
    let mut busy = Busy::default();
    let mut errors = Vec::new();
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for bench-child: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), parse_child_line(&stdout)) {
            (true, Some((c, b))) => {
                commits += c;
                busy.add(b);
            }
            _ => errors.push(format!(
                "bench-child ({vfs}) exited with {}: {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
    let mut s = t.stop(commits);
    s.wall = Duration::from_millis(ms);
    s.busy = busy;
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    // Every commit is in the database.
    let c = open(vfs, &path)?;
    let rows: i64 = ctx(
        "count",
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)),
    )?;
    drop(c);
    remove_db(&path);
    if rows as u64 != commits {
        return Err(format!(
            "contention ({vfs}): children reported {commits} commits, the database holds {rows} rows"
        ));
    }
    Ok(s)
}

/// The child's report line: `commits=N busy_calls=B busy_slept_ms=S busy_errors=E`.
fn parse_child_line(stdout: &str) -> Option<(u64, Busy)> {
    let line = stdout.lines().find(|l| l.starts_with("commits="))?;
    let mut commits = None;
    let mut b = Busy::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "commits" => commits = Some(v),
            "busy_calls" => b.handler_calls = v,
            "busy_slept_ms" => b.slept_ms = v,
            "busy_errors" => b.errors = v,
            _ => {}
        }
    }
    Some((commits?, b))
}

/// The busy handler's timeout (what `busy_timeout(30 s)` gave before it counted).
const BUSY_TIMEOUT_MS: u64 = 30_000;

/// SQLite's `sqliteDefaultBusyCallback` schedule: how long invocation `count` (0-based)
/// sleeps, or `None` once the timeout is spent.
pub(crate) fn busy_delay_ms(count: u64, timeout_ms: u64) -> Option<u64> {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    const TOTALS: [u64; 12] = [0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228];
    let last = DELAYS.len() as u64 - 1;
    let (mut delay, prior) = if count <= last {
        (DELAYS[count as usize], TOTALS[count as usize])
    } else {
        (
            DELAYS[last as usize],
            TOTALS[last as usize] + DELAYS[last as usize] * (count - last),
        )
    };
    if prior + delay > timeout_ms {
        if timeout_ms <= prior {
            return None;
        }
        delay = timeout_ms - prior;
    }
    Some(delay)
}

pub(crate) fn contend(vfs: Vfs, db: &Path, start_at: u64, ms: u64, id: u64) -> Result<(), String> {
    let mut c = open(vfs, db)?;
    let calls = Arc::new(AtomicU64::new(0));
    let slept = Arc::new(AtomicU64::new(0));
    let (h_calls, h_slept) = (Arc::clone(&calls), Arc::clone(&slept));
    ctx(
        "busy_handler",
        c.busy_handler(Some(move |count: i32| -> bool {
            h_calls.fetch_add(1, Ordering::Relaxed);
            match busy_delay_ms(count.max(0) as u64, BUSY_TIMEOUT_MS) {
                Some(d) => {
                    std::thread::sleep(Duration::from_millis(d));
                    h_slept.fetch_add(d, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        })),
    )?;
    set_sync(&c, "NORMAL")?;
    let data = payload(100 + id);
    let mut stmt = ctx(
        "prepare",
        c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
    )?;
    let now = epoch_ms();
    if start_at > now {
        std::thread::sleep(Duration::from_millis(start_at - now));
    }
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut commits = 0u64;
    let mut busy_errors = 0u64;
    while Instant::now() < deadline {
        match stmt.execute(params![(id << 32 | commits) as i64, &data[..]]) {
            Ok(_) => commits += 1,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                busy_errors += 1;
            }
            Err(e) => return Err(format!("insert: {e}")),
        }
    }
    drop(stmt);
    drop(c);
    println!(
        "commits={commits} busy_calls={} busy_slept_ms={} busy_errors={busy_errors}",
        calls.load(Ordering::Relaxed),
        slept.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_schedule_is_sqlites() {
        assert_eq!(busy_delay_ms(0, 30_000), Some(1));
        assert_eq!(busy_delay_ms(11, 30_000), Some(100));
        assert_eq!(busy_delay_ms(12, 30_000), Some(100));
        // 228 ms slept before invocation 11; a 250 ms timeout leaves 22 for it.
        assert_eq!(busy_delay_ms(11, 250), Some(22));
        assert_eq!(busy_delay_ms(12, 250), None);
        let total: u64 = (0..).map_while(|i| busy_delay_ms(i, 1_000)).sum();
        assert_eq!(total, 1_000);
    }

    #[test]
    fn child_line() {
        let (c, b) = parse_child_line("commits=12 busy_calls=3 busy_slept_ms=8 busy_errors=1\n")
            .expect("parses");
        assert_eq!(c, 12);
        assert_eq!(
            b,
            Busy {
                handler_calls: 3,
                slept_ms: 8,
                errors: 1
            }
        );
        assert!(parse_child_line("nothing").is_none());
    }
}
