//! `read-point` and `scan`: both VFSs read one shared database, created once per run
//! through `unix` (identical layout, identical page cache).

use std::fs;
use std::path::Path;
use std::time::Instant;

use super::Workload;
use crate::bench::db::{create_db, ctx, open};
use crate::bench::measure::{Rng, Sample, Timer};
use crate::bench::{note, Env, PAYLOAD};
use crate::worker::Vfs;

/// One point lookup by primary key per operation, pseudo-random keys (the same on both).
pub(crate) fn point(env: &Env, vfs: Vfs, round: usize) -> Result<Sample, String> {
    let n = env.sizes.ops(Workload::ReadPoint);
    let (path, rows) = env
        .read_db
        .as_ref()
        .ok_or("internal: the read database was not created")?;
    let c = open(vfs, path)?;
    let mut stmt = ctx("prepare", c.prepare("SELECT payload FROM t WHERE id = ?1"))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ round as u64);
    let mut lookup = |id: u64| -> Result<usize, String> {
        ctx(
            "lookup",
            stmt.query_row([id as i64], |r| {
                r.get_ref(0).map(|v| v.as_bytes().map_or(0, <[u8]>::len))
            }),
        )
    };
    lookup(1)?; // maps the -shm, reads the schema: not part of the figure
    let t = Timer::start();
    let mut bytes = 0usize;
    for _ in 0..n {
        bytes += lookup(rng.next() % rows + 1)?;
    }
    let s = t.stop(n);
    if bytes != n as usize * PAYLOAD {
        return Err(format!(
            "read-point: {bytes} payload bytes read, expected {}",
            n as usize * PAYLOAD
        ));
    }
    drop(stmt);
    drop(c);
    Ok(s)
}

/// One full scan of the table per operation.
pub(crate) fn scan(env: &Env, vfs: Vfs) -> Result<Sample, String> {
    let n = env.sizes.ops(Workload::Scan);
    let (path, rows) = env
        .read_db
        .as_ref()
        .ok_or("internal: the read database was not created")?;
    let c = open(vfs, path)?;
    let mut stmt = ctx(
        "prepare",
        c.prepare("SELECT count(*), sum(length(payload)) FROM t"),
    )?;
    let mut scan = || -> Result<(i64, i64), String> {
        ctx("scan", stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
    };
    ctx(
        "warm-up",
        c.query_row("SELECT 1 FROM t LIMIT 1", [], |_| Ok(())),
    )?;
    let t = Timer::start();
    for _ in 0..n {
        let (count, bytes) = scan()?;
        if count as u64 != *rows || bytes as u64 != rows * PAYLOAD as u64 {
            return Err(format!(
                "scan: read {count} rows / {bytes} bytes, expected {rows} rows"
            ));
        }
    }
    let s = t.stop(n);
    drop(stmt);
    drop(c);
    Ok(s)
}

pub(crate) fn create_read_db(env: &mut Env) -> Result<(), String> {
    let path = env.dir.join("read.db");
    // ~120 bytes per row on disk (100-byte payload, cell header, page fill).
    let rows = (env.sizes.read_db_bytes / 120).max(1_000);
    let t = Instant::now();
    create_db(Vfs::Unix, &path, rows)?;
    let c = open(Vfs::Unix, &path)?;
    let bytes: i64 = ctx(
        "db size",
        c.query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get(0),
        ),
    )?;
    ctx(
        "warm scan",
        c.query_row("SELECT sum(length(payload)) FROM t", [], |_| Ok(())),
    )?;
    drop(c);
    note(&format!(
        "read database: {rows} rows, {:.1} MB, created in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    env.read_db = Some((path, rows));
    Ok(())
}

// ---------------------------------------------------------------------------------
// G4's stat, measured in isolation
// ---------------------------------------------------------------------------------

/// Nanoseconds per `stat` of a sidecar-like path in the bench directory (what the G4
/// identity check does twice at every transaction start).
pub(crate) fn stat_cost(dir: &Path) -> Option<f64> {
    let p = dir.join("stat-probe.db-shm");
    fs::write(&p, b"x").ok()?;
    let n = 100_000u32;
    let t = Instant::now();
    for _ in 0..n {
        fs::metadata(&p).ok()?;
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let _ = fs::remove_file(&p);
    Some(ns)
}
