//! Issue 3: one WAL database shared at the same time by three different loaders of
//! walguard, each with its own SQLite:
//! - a Rust process that called `walguard::register` (bundled SQLite),
//! - Debian's python3 that loaded libwalguard.so (system SQLite 3.40.1),
//! - Debian's sqlite3 shell that `.load`ed it (its own SQLite 3.40.1).
//!
//! They write interleaved (every round, one insert is sent to each before any reply is
//! read, so the three commit concurrently); every ten rounds the shell or the Python
//! process quits and a fresh one joins. Every acknowledged row must be present at
//! the end, every process must see every acknowledged row while all are open (a split
//! WAL index shows up as diverging counts), `integrity_check` must be `ok`, and when all
//! have closed the directory must hold only `app.db` and walguard's sidecar lock file
//! `app.db-walguard` (the last closer checkpointed and removed `-wal` and `-shm`).
//!
//! The Rust process is the harness's scripted worker, `vfs-tests worker --vfs walguard`
//! (walguard registered with `walguard::register`, the connection opened through the
//! VFS by name); its line protocol is documented in `vfs-tests/src/worker.rs`.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use vfs_tests::extension::{
    extension_load_arg, extension_path, parse_stats_json, python_command, shell_quote_arg,
    sqlite3_shell_path, LineProcess,
};

const ROUNDS: u64 = 60;
/// A guard against hangs, not a performance assertion.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mixed(\
    id INTEGER PRIMARY KEY, src TEXT NOT NULL, n INTEGER NOT NULL, UNIQUE(src, n))";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `vfs-tests worker`: one `ok …`/`err …` reply per command line.
    RustWorker,
    /// `py/mixed_worker.py`: replies `ok N`/`err N …`, `count K`, `bye`.
    Python,
    /// The `sqlite3` shell, fed SQL whose SELECTs print the replies.
    Shell,
}

/// One of the three loaders.
struct Loader {
    src: &'static str,
    kind: Kind,
    proc: LineProcess,
}

fn check_stats(proc: &LineProcess, json: &str) {
    let stats = parse_stats_json(json)
        .unwrap_or_else(|e| panic!("{}: bad walguard_stats(): {e}", proc.name()));
    assert!(
        stats.get("db_opened").is_some_and(|&n| n >= 1),
        "{} did not open the database through walguard: {stats:?}",
        proc.name()
    );
}

impl Loader {
    fn rust(db: &Path) -> Loader {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfs-tests"));
        cmd.arg("worker")
            .args([
                "--vfs",
                "walguard",
                "--name",
                "rust",
                "--busy-ms",
                "60000",
                "--db",
            ])
            .arg(db);
        let mut l = Loader {
            src: "rust",
            kind: Kind::RustWorker,
            proc: LineProcess::spawn("rust worker", cmd),
        };
        assert_eq!(l.worker("status"), "ok open", "{}", l.proc.name());
        assert_eq!(l.worker("wal"), "ok wal", "{}", l.proc.name());
        assert_eq!(
            l.worker(&format!("exec {SCHEMA}")),
            "ok",
            "{}",
            l.proc.name()
        );
        let stats = l.worker("stats");
        let json = stats.strip_prefix("ok ").unwrap_or(&stats).to_owned();
        check_stats(&l.proc, &json);
        l
    }

    fn python(db: &Path) -> Loader {
        let ext = extension_path();
        let dir = db.parent().expect("db has a directory");
        let cmd = python_command(
            "mixed_worker.py",
            &[ext.as_os_str(), db.as_os_str(), OsStr::new("python")],
            dir,
        );
        Loader::ready(
            "python",
            Kind::Python,
            LineProcess::spawn("python loader", cmd),
        )
    }

    fn shell(db: &Path) -> Loader {
        let dir = db.parent().expect("db has a directory");
        let mut cmd = Command::new(sqlite3_shell_path());
        cmd.current_dir(dir);
        let mut proc = LineProcess::spawn("sqlite3 shell loader", cmd);
        proc.send(&format!(".load {}", shell_quote_arg(&extension_load_arg())));
        // The database opened after `.load` goes through the default VFS, walguard.
        proc.send(&format!(".open {}", shell_quote_arg(&db.to_string_lossy())));
        proc.send(".timeout 60000");
        proc.send("PRAGMA journal_mode=WAL;");
        proc.send(&format!("{SCHEMA};"));
        proc.send(
            "SELECT 'ready mode=' || journal_mode || ' stats=' || walguard_stats() \
             FROM pragma_journal_mode;",
        );
        Loader::ready("shell", Kind::Shell, proc)
    }

    /// Waits for `ready mode=wal stats=<json>` and checks the process uses walguard.
    fn ready(src: &'static str, kind: Kind, mut proc: LineProcess) -> Loader {
        let (mode, stats) = proc.expect(REPLY_TIMEOUT, "the ready line", |l| {
            let rest = l.strip_prefix("ready mode=")?;
            let (mode, stats) = rest.split_once(" stats=")?;
            Some((mode.to_owned(), stats.to_owned()))
        });
        assert_eq!(mode, "wal", "{} did not switch to WAL", proc.name());
        check_stats(&proc, &stats);
        Loader { src, kind, proc }
    }

    /// Sends a worker command and returns its one-line reply.
    fn worker(&mut self, command: &str) -> String {
        self.proc.send(command);
        self.proc
            .expect(REPLY_TIMEOUT, &format!("the reply to {command:?}"), |l| {
                (l.starts_with("ok") || l.starts_with("err")).then(|| l.to_owned())
            })
    }

    fn send_insert(&mut self, n: u64) {
        match self.kind {
            // Autocommit: the statement committed or failed as a whole.
            Kind::RustWorker => self.proc.send(&format!(
                "exec INSERT INTO mixed(src, n) VALUES ('rust', {n})"
            )),
            Kind::Python => self.proc.send(&format!("insert {n}")),
            Kind::Shell => {
                // Autocommit as well; the SELECT then reports what is really there.
                self.proc
                    .send(&format!("INSERT INTO mixed(src, n) VALUES ('shell', {n});"));
                self.proc.send(&format!(
                    "SELECT CASE WHEN EXISTS(SELECT 1 FROM mixed WHERE src='shell' AND n={n}) \
                     THEN 'ok {n}' ELSE 'err {n} not committed' END;"
                ));
            }
        }
    }

    /// `Ok(())` if insert `n` was acknowledged, `Err(message)` if it failed.
    fn ack(&mut self, n: u64) -> Result<(), String> {
        let what = format!("the reply to insert {n}");
        if self.kind == Kind::RustWorker {
            // One reply per command, in order.
            return self.proc.expect(REPLY_TIMEOUT, &what, |l| {
                if l == "ok" {
                    Some(Ok(()))
                } else {
                    l.starts_with("err").then(|| Err(l.to_owned()))
                }
            });
        }
        let ok = format!("ok {n}");
        let err = format!("err {n} ");
        self.proc.expect(REPLY_TIMEOUT, &what, |l| {
            if l == ok {
                Some(Ok(()))
            } else {
                l.strip_prefix(&err).map(|m| Err(m.to_owned()))
            }
        })
    }

    fn count(&mut self) -> u64 {
        let (command, prefix) = match self.kind {
            Kind::RustWorker => ("query SELECT count(*) FROM mixed", "ok "),
            Kind::Python => ("count", "count "),
            Kind::Shell => ("SELECT 'count ' || count(*) FROM mixed;", "count "),
        };
        self.proc.send(command);
        self.proc.expect(REPLY_TIMEOUT, "the count", |l| {
            l.strip_prefix(prefix)?.trim().parse().ok()
        })
    }

    fn quit(mut self) {
        let (command, reply) = match self.kind {
            Kind::RustWorker => ("exit", "ok"),
            Kind::Python => ("quit", "bye"),
            Kind::Shell => (".print bye", "bye"),
        };
        self.proc.send(command);
        self.proc
            .expect(REPLY_TIMEOUT, reply, |l| (l == reply).then_some(()));
        self.proc.finish_ok(REPLY_TIMEOUT);
    }
}

#[test]
fn three_loaders_share_one_wal_database() {
    let dir = TempDir::new().expect("temp dir");
    let db = dir.path().join("app.db");
    // Started one after the other so the WAL switch and schema are not raced at start.
    let mut loaders = vec![Loader::python(&db), Loader::rust(&db), Loader::shell(&db)];

    let mut acked: BTreeSet<(&'static str, u64)> = BTreeSet::new();
    let mut errors = Vec::new();
    for round in 0..ROUNDS {
        // Rotate who is sent first, then send to all before reading any reply.
        let k = loaders.len();
        let order: Vec<usize> = (0..k).map(|i| (i + round as usize) % k).collect();
        for &i in &order {
            loaders[i].send_insert(round);
        }
        for &i in &order {
            match loaders[i].ack(round) {
                Ok(()) => {
                    acked.insert((loaders[i].src, round));
                }
                Err(e) => errors.push(format!("{} insert {round}: {e}", loaders[i].src)),
            }
        }
        if round % 10 == 5 {
            // A foreign loader leaves and a fresh one of its kind joins while the others
            // hold the database open (WAL tear-down attempt and set-up under use):
            // neither may split the WAL index. Alternately the shell and Python.
            let kind = if round % 20 == 5 {
                Kind::Shell
            } else {
                Kind::Python
            };
            let i = loaders
                .iter()
                .position(|l| l.kind == kind)
                .expect("one loader of each kind");
            loaders.remove(i).quit();
            loaders.push(match kind {
                Kind::Shell => Loader::shell(&db),
                _ => Loader::python(&db),
            });
        }
    }
    assert!(errors.is_empty(), "writes failed: {errors:#?}");
    assert_eq!(acked.len() as u64, 3 * ROUNDS);

    // While all are open, each sees every acknowledged row.
    for l in &mut loaders {
        let seen = l.count();
        assert_eq!(
            seen,
            acked.len() as u64,
            "{} sees {seen} rows, {} were acknowledged",
            l.proc.name(),
            acked.len()
        );
    }

    // Close them all: Rust, Python, then the shell last.
    loaders.sort_by_key(|l| match l.src {
        "rust" => 0,
        "python" => 1,
        _ => 2,
    });
    for l in loaders {
        l.quit();
    }

    let files = common::list_dir(dir.path());

    // Check the content with a plain connection of this (walguard-free) process.
    let conn = rusqlite::Connection::open(&db).expect("open app.db");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let mut stmt = conn.prepare("SELECT src, n FROM mixed").expect("prepare");
    let present: BTreeSet<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let missing: Vec<_> = acked
        .iter()
        .filter(|(s, n)| !present.contains(&(s.to_string(), *n as i64)))
        .collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    assert_eq!(present.len(), acked.len(), "unexpected extra rows");
    drop(stmt);
    drop(conn);

    assert_eq!(
        files,
        ["app.db"],
        "after every loader closed, the directory should hold only the database and \
         walguard's lock file"
    );
}
