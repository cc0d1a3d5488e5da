//! Issue 3's soak: 30 seconds, six real processes on one WAL database through walguard —
//! two writers (each with a thread peeking at the database header by `open()/close()`
//! every few milliseconds, which cancels its own POSIX locks), a reader, a process that
//! opens and closes its connection in a tight loop, a process that does header peeks by
//! `open()/close()` every 2 ms while holding a connection, and a checkpointer running
//! `wal_checkpoint(TRUNCATE)`. At the end every commit SQLite acknowledged is present
//! with its content, `integrity_check` is ok, and no process held a deleted sidecar.
//!
//! The plain unix VFS is shown to break under the same lock loss by `split_index.rs`
//! (deterministic sequences); this test is about walguard holding up under load.

mod common;

use common::{ok, spawn, tempdir};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vfs_tests::worker::{parse_rows, Vfs, Worker};

const DURATION: Duration = Duration::from_secs(30);
/// SQLITE_BUSY and its extended codes: expected under contention, never data loss.
const BUSY: [i32; 4] = [5, 261, 517, 773];

#[derive(Default)]
struct Outcome {
    acked: Vec<(i64, String)>,
    counts: Vec<i64>,
    busy: u64,
    errors: Vec<String>,
    ops: u64,
}

fn drive(mut w: Worker, role: &str, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    if role == "writer" {
        ok(&mut w, "disrupt start peek 3");
    }
    if role == "peeker" {
        ok(&mut w, "disrupt start peek 2");
    }
    while Instant::now() < deadline {
        let cmd = match role {
            "writer" => "write 1 200",
            "reader" | "peeker" => "count",
            "churner" => {
                if out.ops % 2 == 0 {
                    "close"
                } else {
                    "open"
                }
            }
            _ => "checkpoint TRUNCATE",
        };
        out.ops += 1;
        match w.request(cmd) {
            Ok(Ok(payload)) => {
                if role == "writer" {
                    out.acked.extend(parse_rows(&payload));
                } else if cmd == "count" {
                    out.counts.push(payload.trim().parse().unwrap_or(-1));
                }
            }
            Ok(Err((code, _))) if BUSY.contains(&code) => out.busy += 1,
            Ok(Err((code, msg))) => out.errors.push(format!("{role}: {cmd}: {code} {msg}")),
            Err(e) => {
                out.errors.push(format!("{role}: worker failed: {e}"));
                return out;
            }
        }
        if role == "churner" || role == "checkpointer" {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if role == "writer" || role == "peeker" {
        let _ = w.request("disrupt stop");
    }
    match w.request("deleted-sidecars") {
        Ok(Ok(p)) if p.trim_start().starts_with('0') => {}
        other => out
            .errors
            .push(format!("{role}: deleted sidecars held: {other:?}")),
    }
    let _ = w.exit();
    out
}

#[test]
fn six_processes_for_thirty_seconds_lose_nothing_through_walguard() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let mut setup = spawn(Vfs::Walguard, &db, "setup");
    ok(&mut setup, "wal");
    ok(&mut setup, "write 1");
    let _ = setup.exit();

    let roles = [
        "writer",
        "writer",
        "reader",
        "churner",
        "peeker",
        "checkpointer",
    ];
    let deadline = Instant::now() + DURATION;
    let outcomes: Vec<(String, Outcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| {
                let name = format!("{role}{i}");
                let w = spawn(Vfs::Walguard, &db, &name);
                s.spawn(move || (name, drive(w, role, deadline)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("driver thread"))
            .collect()
    });

    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, o) in &outcomes {
        println!(
            "{name}: {} ops, {} acked, {} busy, {} errors",
            o.ops,
            o.acked.len(),
            o.busy,
            o.errors.len()
        );
        errors.extend(o.errors.iter().cloned());
        for (id, tag) in &o.acked {
            assert!(
                acked.insert(*id, tag.clone()).is_none(),
                "row id {id} acknowledged twice"
            );
        }
        assert!(
            o.counts.windows(2).all(|w| w[0] <= w[1]),
            "{name} saw the row count go backwards: {:?}",
            o.counts
        );
    }
    assert!(
        errors.is_empty(),
        "non-busy errors under walguard: {errors:#?}"
    );
    assert!(
        acked.len() > 100,
        "the writers made progress ({} commits)",
        acked.len()
    );

    // Verify from a fresh process after everyone is gone.
    let mut check = spawn(Vfs::Walguard, &db, "check");
    assert_eq!(ok(&mut check, "integrity").trim(), "ok");
    let present: BTreeMap<i64, String> = parse_rows(&ok(&mut check, "rows")).into_iter().collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, tag)| present.get(id) != Some(tag))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost or changed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let _ = check.exit();
}
