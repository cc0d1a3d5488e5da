//! `write-normal`, `write-full` (single-row commits) and `batched` (10,000-row
//! transactions): fresh WAL database per VFS per round.

use rusqlite::params;

use super::Workload;
use crate::bench::db::{create_db, ctx, open, remove_db, set_sync};
use crate::bench::measure::{payload, Sample, Timer};
use crate::bench::{Env, BATCH_ROWS};
use crate::worker::Vfs;

/// One single-row INSERT commit per operation (`synchronous` NORMAL or FULL by workload).
pub(crate) fn single_row_commits(
    env: &Env,
    w: Workload,
    vfs: Vfs,
    round: usize,
) -> Result<Sample, String> {
    let n = env.sizes.ops(w);
    let path = env.db(w, vfs, round);
    create_db(vfs, &path, 0)?;
    let c = open(vfs, &path)?;
    set_sync(
        &c,
        if w == Workload::WriteFull {
            "FULL"
        } else {
            "NORMAL"
        },
    )?;
    let data = payload(7);
    let mut stmt = ctx(
        "prepare",
        c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
    )?;
    ctx("warm-up insert", stmt.execute(params![0i64, &data[..]]))?;
    let t = Timer::start();
    for i in 0..n {
        ctx("insert", stmt.execute(params![i as i64, &data[..]]))?;
    }
    let s = t.stop(n);
    drop(stmt);
    drop(c);
    remove_db(&path);
    Ok(s)
}

/// One 10,000-row INSERT transaction per operation.
pub(crate) fn batched(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let w = Workload::Batched;
    let n = env.sizes.ops(w);
    let path = env.db(w, vfs, round);
    create_db(vfs, &path, 0)?;
    let mut c = open(vfs, &path)?;
    set_sync(&c, "NORMAL")?;
    let data = payload(11);
    let t = Timer::start();
    for b in 0..n {
        let tx = ctx("begin", c.transaction())?;
        {
            let mut stmt = ctx(
                "prepare",
                tx.prepare_cached("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
            )?;
            for i in 0..BATCH_ROWS {
                ctx(
                    "insert",
                    stmt.execute(params![(b * BATCH_ROWS + i) as i64, &data[..]]),
                )?;
            }
        }
        ctx("commit", tx.commit())?;
    }
    let s = t.stop(n);
    drop(c);
    remove_db(&path);
    Ok(s)
}
