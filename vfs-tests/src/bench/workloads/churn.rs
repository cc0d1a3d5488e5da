//! `churn`: open, one query, close — the pattern of CLIs and short-lived workers.

use super::Workload;
use crate::bench::db::{create_db, ctx, open, remove_db};
use crate::bench::measure::{Sample, Timer};
use crate::bench::Env;
use crate::worker::Vfs;

/// One open/query/close cycle per operation on a 100-row database.
pub(crate) fn churn(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let w = Workload::Churn;
    let n = env.sizes.ops(w);
    let path = env.db(w, vfs, round);
    create_db(vfs, &path, 100)?;
    let t = Timer::start();
    for _ in 0..n {
        let c = open(vfs, &path)?;
        let count: i64 = ctx(
            "churn query",
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)),
        )?;
        if count != 100 {
            return Err(format!("churn: {count} rows, expected 100"));
        }
        ctx("close", c.close().map_err(|(_, e)| e))?;
    }
    let s = t.stop(n);
    remove_db(&path);
    Ok(s)
}
