//! `contention`: 8 processes (this binary re-executed as `vfs-tests bench-child contend`)
//! commit single rows into one database for a fixed time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::params;

use super::Workload;
use crate::bench::db::{create_db, ctx, open, remove_db, set_sync};
use crate::bench::measure::{epoch_ms, payload, Sample, Timer};
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
    let mut errors = Vec::new();
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for bench-child: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("commits="))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok());
        match (out.status.success(), parsed) {
            (true, Some(c)) => commits += c,
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

pub(crate) fn contend(vfs: Vfs, db: &Path, start_at: u64, ms: u64, id: u64) -> Result<(), String> {
    let c = open(vfs, db)?;
    ctx("busy_timeout", c.busy_timeout(Duration::from_secs(30)))?;
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
    while Instant::now() < deadline {
        ctx(
            "insert",
            stmt.execute(params![(id << 32 | commits) as i64, &data[..]]),
        )?;
        commits += 1;
    }
    drop(stmt);
    drop(c);
    println!("commits={commits}");
    Ok(())
}
