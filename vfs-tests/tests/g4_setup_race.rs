//! G4 in the narrowest window: a `-shm` or `-wal` replaced (external `cp` + `mv`) right
//! after SQLite's own `open()` of it, while a process sets up its WAL.
//!
//! **`-shm`.** The unix VFS of process N opens the old `-shm` (A) and maps it; the name
//! then points to the copy (B). Whoever opens the `-shm` later maps B. The steps (same
//! for both VFSs):
//!
//! | step | unix VFS |
//! |---|---|
//! | W: `journal_mode=WAL`, writes 5 rows, stays open | W maps A |
//! | N: arms the hook, counts (its first mapping) | N maps A; right after N's `open()`, B replaces A under the name |
//! | N: writes 5 rows | into the WAL, indexed in A only |
//! | M: fresh process, counts, writes 1 row | M maps B; nobody holds B's dead-man switch, so M rebuilds the index from the WAL (sees all 10 rows) and appends its frame |
//! | N: writes 1 row | N, still on A, appends at A's end of log: over M's frame |
//! | all close; a fresh process reads | M's acknowledged row is gone |
//!
//! Through walguard, N checks after the wrapped VFS's open that the `-shm` it locks (and
//! watches for G4) is the one SQLite mapped; the replacement makes that first mapping
//! retry, N ends up on B like everyone else, and nothing is lost. Before that check,
//! walguard opened the `-shm` separately *after* SQLite did, so it locked and watched B
//! while SQLite mapped A: N's writes then went unchallenged into a split, and M — seeing
//! N's lock on B's dead-man switch — trusted B's stale copy without rebuilding it.
//!
//! **`-wal`.** The same steps with the `-wal` replaced right after N opens it: on unix N
//! appends its commits to the old `-wal`, which no one else reads (M follows the shared
//! index into the copy, which lacks N's frames). walguard identified the `-wal` by a
//! `stat` after SQLite's open, so it recorded the copy and G4 let N write into the
//! orphan; it now proves the path named the same file before and after SQLite's open,
//! else opens again.

mod common;

use std::path::Path;

use common::{exe, tempdir};
use vfs_tests::worker::{parse_rows, stat, Vfs, Worker};

#[derive(Default, Debug)]
struct Outcome {
    acked: Vec<(i64, String)>,
    missing: Vec<String>,
    integrity: String,
    errors: Vec<String>,
    /// Replacements the hook in N made (must be 1: the scenario really ran).
    replacements: String,
    /// walguard's `sidecar_replaced` counter in N.
    n_replaced_seen: Option<u64>,
}

fn step(w: &mut Worker, cmd: &str, out: &mut Outcome) -> Option<String> {
    match w.ok(cmd) {
        Ok(p) => Some(p),
        Err(e) => {
            out.errors.push(format!("{} {cmd}: {e}", w.name()));
            None
        }
    }
}

fn write(w: &mut Worker, n: usize, out: &mut Outcome) {
    if let Some(p) = step(w, &format!("write {n}"), out) {
        out.acked.extend(parse_rows(&p));
    }
}

fn spawn(vfs: Vfs, db: &Path, name: &str) -> Worker {
    Worker::spawn(exe(), vfs, db, name)
        .unwrap_or_else(|e| panic!("start worker {name} ({vfs}) on {}: {e}", db.display()))
}

fn finish(w: Worker, out: &mut Outcome) {
    if let Err(e) = w.exit() {
        out.errors.push(e.to_string());
    }
}

fn run(vfs: Vfs, sidecar: &str) -> Outcome {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let mut out = Outcome::default();

    let mut w = spawn(vfs, &db, "w");
    step(&mut w, "wal", &mut out);
    write(&mut w, 5, &mut out);

    let mut n = spawn(vfs, &db, "n");
    step(&mut n, &format!("replace-after-open {sidecar}"), &mut out);
    step(&mut n, "count", &mut out);
    out.replacements = step(&mut n, "replacements", &mut out).unwrap_or_default();
    write(&mut n, 5, &mut out);

    let mut m = spawn(vfs, &db, "m");
    step(&mut m, "count", &mut out);
    write(&mut m, 1, &mut out);
    write(&mut n, 1, &mut out);
    if vfs == Vfs::Walguard {
        let s = step(&mut n, "stats", &mut out).unwrap_or_default();
        out.n_replaced_seen = stat(&s, "sidecar_replaced");
    }

    // W first: it is the one a split would leave behind (through walguard its index
    // is the replaced one and G4 refuses it any checkpoint).
    finish(w, &mut out);
    finish(n, &mut out);
    finish(m, &mut out);

    let mut r = spawn(vfs, &db, "reader");
    let seen = step(&mut r, "rows", &mut out)
        .map(|p| parse_rows(&p))
        .unwrap_or_default();
    out.missing = out
        .acked
        .iter()
        .filter(|(_, tag)| !seen.iter().any(|(_, t)| t == tag))
        .map(|(id, tag)| format!("{id}:{tag}"))
        .collect();
    out.integrity = step(&mut r, "integrity", &mut out).unwrap_or_else(|| "query failed".into());
    finish(r, &mut out);
    out
}

fn assert_unix_breaks(sidecar: &str) {
    let out = run(Vfs::Unix, sidecar);
    assert_eq!(
        out.replacements, "1",
        "the hook did not replace the {sidecar} once: {out:#?}"
    );
    assert!(
        !out.missing.is_empty() || out.integrity != "ok" || !out.errors.is_empty(),
        "the {sidecar} split on unix did no harm; the scenario proves nothing: {out:#?}"
    );
}

fn assert_walguard_holds(sidecar: &str) {
    let out = run(Vfs::Walguard, sidecar);
    assert_eq!(
        out.replacements, "1",
        "the hook did not replace the {sidecar} once: {out:#?}"
    );
    assert!(out.missing.is_empty(), "acknowledged rows lost: {out:#?}");
    assert_eq!(out.integrity, "ok", "{out:#?}");
    assert!(out.errors.is_empty(), "{out:#?}");
    assert_eq!(out.acked.len(), 12, "every write is acknowledged: {out:#?}");
    assert!(
        out.n_replaced_seen.is_some_and(|n| n >= 1),
        "walguard in N did not see the replacement during set-up: {out:#?}"
    );
}

#[test]
fn unix_process_on_a_replaced_shm_writes_over_a_commit() {
    assert_unix_breaks("-shm");
}

#[test]
fn walguard_first_mapping_of_a_replaced_shm_retries_and_loses_nothing() {
    assert_walguard_holds("-shm");
}

#[test]
fn unix_process_on_a_replaced_wal_writes_into_an_orphan() {
    assert_unix_breaks("-wal");
}

#[test]
fn walguard_open_of_a_replaced_wal_opens_again_and_loses_nothing() {
    assert_walguard_holds("-wal");
}
