//! The parent side of one run: create the database, start the workers, disrupt from
//! outside (kill -9, rm/mv of sidecars), watch `/proc` for split sidecars, stop,
//! verify.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::cli::{Config, Knob};
use super::counters::parse_stats;
use super::role::{Role, WorkerArgs};
use super::verify::{self, Verification};
use crate::disrupt;
use crate::worker::Vfs;
use crate::workload::Prng;

/// After an external rm/mv of a sidecar, processes may legitimately still hold the old
/// file until their next transaction notices; `/proc` scans wait this long after one.
pub const SCAN_GRACE: Duration = Duration::from_millis(1000);

/// The first part of a run is plain workload (a fifth, at most 5 s): the database has
/// acknowledged commits to lose before the disruptors start.
pub fn warmup(duration: Duration) -> Duration {
    (duration / 5).min(Duration::from_secs(5))
}

/// A slot whose worker exits on its own this often is not respawned any more.
const MAX_CRASHES_PER_SLOT: u32 = 20;

// ---------------------------------------------------------------------------------
// Signals.
// ---------------------------------------------------------------------------------

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to a flag the campaign polls (it then kills its workers,
/// removes its temporary directory and exits 128 + signal).
pub fn install_signal_handlers() -> Result<(), String> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
        // handler only stores into an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "sigaction({sig}) failed: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The signal received so far (0 if none).
pub fn signal_received() -> i32 {
    SIGNAL.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------
// What workers report.
// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Agg {
    /// The last `stats` line of every incarnation, by (slot, incarnation).
    latest: HashMap<(usize, u32), BTreeMap<String, u64>>,
    /// `event` lines by kind.
    events: BTreeMap<String, u64>,
    /// The first message of each event kind.
    event_examples: BTreeMap<String, String>,
    /// The first message of each error class.
    samples: BTreeMap<String, String>,
}

impl Agg {
    fn totals(&self) -> BTreeMap<String, u64> {
        let mut t = BTreeMap::new();
        for m in self.latest.values() {
            for (k, v) in m {
                *t.entry(k.clone()).or_insert(0) += v;
            }
        }
        t
    }

    fn line(&mut self, key: (usize, u32), line: &str) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "stats" => {
                self.latest.insert(key, parse_stats(rest));
            }
            "event" => {
                let (ev, _) = rest.split_once(' ').unwrap_or((rest, ""));
                *self.events.entry(ev.to_owned()).or_insert(0) += 1;
                self.event_examples
                    .entry(ev.to_owned())
                    .or_insert_with(|| rest.to_owned());
            }
            "sample" => {
                let (class, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                self.samples
                    .entry(class.to_owned())
                    .or_insert_with(|| msg.to_owned());
            }
            _ => {}
        }
    }
}

/// One worker process.
struct Slot {
    role: Role,
    inc: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    crashes: u32,
    retired: bool,
}

impl Slot {
    fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let s = s.trim();
        let cut = s.len().saturating_sub(400);
        let cut = (cut..=s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s[cut..].replace('\n', " | ")
    }
}

/// Everything one run produced.
#[derive(Debug, Default)]
pub struct RunResult {
    /// The VFS.
    pub vfs: Option<Vfs>,
    /// The database.
    pub db: PathBuf,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// Worker counters, summed.
    pub totals: BTreeMap<String, u64>,
    /// Verdict events by kind (`notadb`, `corrupt`, `hash`, `live-missing`,
    /// `fork-crash`).
    pub events: BTreeMap<String, u64>,
    /// First message of each event kind.
    pub event_examples: BTreeMap<String, String>,
    /// First message of each error class.
    pub samples: BTreeMap<String, String>,
    /// Workers killed with SIGKILL.
    pub kills: u64,
    /// External operations done, by knob name.
    pub external: BTreeMap<&'static str, u64>,
    /// External operations that failed.
    pub external_errors: Vec<String>,
    /// Distinct (process, deleted sidecar) pairs seen in `/proc` outside the grace
    /// period after an external rm/mv.
    pub split: BTreeSet<String>,
    /// `/proc` scans done.
    pub scans: u64,
    /// Workers that died on their own (crash, panic, unexpected exit).
    pub crashes: Vec<String>,
    /// Worker incarnations started.
    pub spawned: u64,
    /// Verification after the run.
    pub verification: Verification,
    /// Problems of the harness itself.
    pub harness_errors: Vec<String>,
    /// The run was cut short by this signal.
    pub interrupted: Option<i32>,
}

impl RunResult {
    /// A counter summed over every worker.
    pub fn total(&self, key: &str) -> u64 {
        self.totals.get(key).copied().unwrap_or(0)
    }

    /// A verdict event count.
    pub fn event(&self, key: &str) -> u64 {
        self.events.get(key).copied().unwrap_or(0)
    }

    /// Faults injected, all kinds.
    pub fn faults(&self) -> u64 {
        crate::faults::Kind::ALL
            .iter()
            .map(|k| self.total(&format!("fault_{}", k.name())))
            .sum()
    }

    /// What went wrong with the data, one phrase each (empty when clean).
    pub fn failures(&self) -> Vec<String> {
        let v = &self.verification;
        let mut f = Vec::new();
        if v.lost() > 0 {
            f.push(format!("{} acknowledged transactions lost", v.lost()));
        }
        if !v.integrity_ok {
            f.push(format!("integrity_check: {}", v.integrity));
        }
        for (ev, what) in [
            ("notadb", "NOTADB errors on a good file"),
            ("corrupt", "SQLITE_CORRUPT errors seen by workers"),
            ("live-missing", "acknowledged commits invisible to readers"),
            ("hash", "rows read back with wrong contents"),
            ("fork-crash", "forked children crashed or hung"),
        ] {
            if self.event(ev) > 0 {
                f.push(format!("{} {what}", self.event(ev)));
            }
        }
        if !self.split.is_empty() {
            f.push(format!(
                "{} split sidecars (deleted -wal/-shm held open)",
                self.split.len()
            ));
        }
        if !self.crashes.is_empty() {
            f.push(format!("{} workers crashed", self.crashes.len()));
        }
        f
    }

    /// The run shows damage.
    pub fn failed(&self) -> bool {
        !self.failures().is_empty()
    }
}

// ---------------------------------------------------------------------------------
// Running.
// ---------------------------------------------------------------------------------

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The database.
    pub db: PathBuf,
    /// The ledgers' directory (created empty by the caller).
    pub ledger_dir: PathBuf,
}

fn sidecar(db: &Path, s: &str) -> PathBuf {
    disrupt::sidecar(db, s)
}

/// Creates the database in WAL mode with the campaign's table.
pub fn create_db(db: &Path, vfs: Vfs) -> Result<(), String> {
    vfs.prepare()?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags_and_vfs(db, flags, vfs.name())
        .map_err(|e| format!("create {} via {vfs}: {e}", db.display()))?;
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| format!("{}: PRAGMA journal_mode=WAL: {e}", db.display()))?;
    if mode != "wal" {
        return Err(format!(
            "{}: journal_mode is {mode:?} after PRAGMA journal_mode=WAL",
            db.display()
        ));
    }
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL UNIQUE,
                        h INTEGER NOT NULL, payload BLOB NOT NULL);",
    )
    .map_err(|e| format!("{}: create table: {e}", db.display()))?;
    c.close()
        .map_err(|(_, e)| format!("{}: close: {e}", db.display()))
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut p = Prng::new(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(32));
    p.next_u64()
}

struct Ctx<'a> {
    cfg: &'a Config,
    vfs: Vfs,
    exe: PathBuf,
    paths: &'a RunPaths,
    agg: Arc<Mutex<Agg>>,
    max: Duration,
    disrupt_from_ms: u64,
}

impl Ctx<'_> {
    fn spawn(&self, slot: usize, inc: u32) -> io::Result<Slot> {
        let role = Role::for_slot(slot);
        let args = WorkerArgs {
            role,
            slot,
            inc,
            vfs: self.vfs,
            db: self.paths.db.clone(),
            ledger: self
                .paths
                .ledger_dir
                .join(format!("slot{slot}.inc{inc}.{}", role.name())),
            ledger_dir: self.paths.ledger_dir.clone(),
            seed: mix(self.cfg.seed, slot as u64, u64::from(inc)),
            enabled: self.cfg.enabled.clone(),
            max: self.max,
            disrupt_from_ms: self.disrupt_from_ms,
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("torture-worker")
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // Die with the parent (it spawns from its main thread, which lives as
                // long as the parent does).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("parent already gone"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawn {} torture-worker: {e}", self.exe.display()),
            )
        })?;
        let stdin = child.stdin.take();
        let reader = child.stdout.take().map(|out| {
            let agg = Arc::clone(&self.agg);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut a) = agg.lock() {
                        a.line((slot, inc), &line);
                    }
                }
            })
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if s.len() > 16 * 1024 {
                            let cut = s.len() - 8 * 1024;
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            });
        }
        Ok(Slot {
            role,
            inc,
            child,
            stdin,
            reader,
            stderr,
            crashes: 0,
            retired: false,
        })
    }
}

/// Progress callback: (elapsed fraction 0..=1, one-line status).
pub type Progress<'a> = &'a mut dyn FnMut(f64, &str);

/// Kills every worker now (SIGKILL) and waits for them.
fn kill_all(slots: &mut [Slot]) {
    for s in slots.iter_mut() {
        s.stdin = None;
        let _ = s.child.kill();
    }
    for s in slots.iter_mut() {
        let _ = s.child.wait();
        if let Some(r) = s.reader.take() {
            let _ = r.join();
        }
    }
}

/// Runs one campaign on one VFS.
pub fn run(cfg: &Config, vfs: Vfs, paths: &RunPaths, progress: Progress<'_>) -> RunResult {
    let mut res = RunResult {
        vfs: Some(vfs),
        db: paths.db.clone(),
        ..RunResult::default()
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            res.harness_errors.push(format!(
                "cannot find this program's path to re-execute it: {e}"
            ));
            return res;
        }
    };
    if let Err(e) = create_db(&paths.db, vfs) {
        res.harness_errors.push(e);
        return res;
    }
    let ctx = Ctx {
        cfg,
        vfs,
        exe,
        paths,
        agg: Arc::new(Mutex::new(Agg::default())),
        max: cfg.duration + Duration::from_secs(120),
        disrupt_from_ms: super::role::now_ms() + warmup(cfg.duration).as_millis() as u64,
    };
    let mut rng = Prng::new(mix(cfg.seed, 0xC0FFEE, vfs as u64));

    let mut slots: Vec<Slot> = Vec::with_capacity(cfg.processes);
    for slot in 0..cfg.processes {
        match ctx.spawn(slot, 0) {
            Ok(s) => {
                res.spawned += 1;
                slots.push(s);
            }
            Err(e) => {
                res.harness_errors.push(e.to_string());
                kill_all(&mut slots);
                return res;
            }
        }
    }

    let start = Instant::now();
    let end = start + cfg.duration;
    let calm = start + warmup(cfg.duration);
    let ms = |lo: u64, hi: u64, rng: &mut Prng| Duration::from_millis(lo + rng.below(hi - lo));
    let mut next_kill = calm + ms(0, 1000, &mut rng);
    let mut next_ext = calm + ms(0, 1500, &mut rng);
    let mut last_ext: Option<Instant> = None;
    let mut next_scan = start + Duration::from_millis(200);
    let mut next_progress = start;
    let ext_knobs: Vec<Knob> = [Knob::RmShm, Knob::MvShm, Knob::RmWal]
        .into_iter()
        .filter(|k| cfg.enabled.contains(k))
        .collect();
    let shm = sidecar(&paths.db, "-shm");
    let wal = sidecar(&paths.db, "-wal");

    loop {
        let sig = signal_received();
        if sig != 0 {
            res.interrupted = Some(sig);
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }

        // Workers that died on their own.
        for (i, s) in slots.iter_mut().enumerate() {
            if s.retired {
                continue;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                if let Some(r) = s.reader.take() {
                    let _ = r.join();
                }
                res.crashes.push(format!(
                    "{} slot {i} inc {} exited on its own ({status}); stderr: {}",
                    s.role.name(),
                    s.inc,
                    s.stderr_tail()
                ));
                let crashes = s.crashes + 1;
                if crashes >= MAX_CRASHES_PER_SLOT {
                    s.retired = true;
                    res.harness_errors
                        .push(format!("slot {i} crashed {crashes} times: not respawned"));
                    continue;
                }
                match ctx.spawn(i, s.inc + 1) {
                    Ok(mut n) => {
                        res.spawned += 1;
                        n.crashes = crashes;
                        *s = n;
                    }
                    Err(e) => {
                        s.retired = true;
                        res.harness_errors.push(e.to_string());
                    }
                }
            }
        }

        // kill -9 of a random worker at a random moment.
        if cfg.enabled.contains(&Knob::Kill) && now >= next_kill && !slots.is_empty() {
            let i = rng.below(slots.len() as u64) as usize;
            let s = &mut slots[i];
            if !s.retired {
                let _ = s.child.kill();
                let _ = s.child.wait();
                if let Some(r) = s.reader.take() {
                    let _ = r.join();
                }
                res.kills += 1;
                match ctx.spawn(i, s.inc + 1) {
                    Ok(mut n) => {
                        res.spawned += 1;
                        n.crashes = s.crashes;
                        *s = n;
                    }
                    Err(e) => {
                        s.retired = true;
                        res.harness_errors.push(e.to_string());
                    }
                }
            }
            next_kill = now + ms(300, 1500, &mut rng);
        }

        // An external tool removes or replaces a sidecar.
        if !ext_knobs.is_empty() && now >= next_ext {
            let k = ext_knobs[rng.below(ext_knobs.len() as u64) as usize];
            let done = match k {
                Knob::RmShm => remove_if_present(&shm),
                Knob::RmWal => remove_if_present(&wal),
                _ => crate::disrupt::replace_with_copy(&shm),
            };
            match done {
                Ok(true) => {
                    *res.external.entry(k.name()).or_insert(0) += 1;
                    last_ext = Some(Instant::now());
                }
                Ok(false) => {}
                Err(e) => res.external_errors.push(e),
            }
            next_ext = now + ms(800, 2500, &mut rng);
        }

        // Split sidecars: deleted -wal/-shm still held open.
        if now >= next_scan && last_ext.is_none_or(|t| now.duration_since(t) >= SCAN_GRACE) {
            res.scans += 1;
            for d in disrupt::scan_deleted_sidecars(&paths.db) {
                let role = slots
                    .iter()
                    .find(|s| s.child.id() == d.pid)
                    .map_or("?", |s| s.role.name());
                res.split
                    .insert(format!("{role} pid {} holds {}", d.pid, d.target));
            }
            next_scan = now + Duration::from_millis(200);
        }

        if now >= next_progress {
            let (acked, faults) = {
                let t = ctx.agg.lock().map(|a| a.totals()).unwrap_or_default();
                let faults: u64 = t
                    .iter()
                    .filter(|(k, _)| k.starts_with("fault_"))
                    .map(|(_, v)| *v)
                    .sum();
                (t.get("acked").copied().unwrap_or(0), faults)
            };
            let frac = now.duration_since(start).as_secs_f64() / cfg.duration.as_secs_f64();
            let phase = if now < calm { "warm-up  " } else { "" };
            progress(
                frac.min(1.0),
                &format!("{phase}acked {acked}  faults {faults}  kills {}", res.kills),
            );
            next_progress = now + Duration::from_millis(250);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    res.elapsed = start.elapsed();

    if res.interrupted.is_some() {
        kill_all(&mut slots);
        return res;
    }

    // Stop: close every worker's stdin, give them time to finish and close.
    for s in slots.iter_mut() {
        s.stdin = None;
    }
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut running = 0;
        for s in slots.iter_mut() {
            if let Ok(None) = s.child.try_wait() {
                running += 1;
            }
        }
        if running == 0 || Instant::now() >= stop_deadline || signal_received() != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, s) in slots.iter_mut().enumerate() {
        if let Ok(None) = s.child.try_wait() {
            res.harness_errors.push(format!(
                "{} slot {i} did not stop within 20 s: killed; stderr: {}",
                s.role.name(),
                s.stderr_tail()
            ));
            let _ = s.child.kill();
        }
        match s.child.wait() {
            Ok(st) if st.success() || st.signal() == Some(libc::SIGKILL) => {}
            Ok(st) => res.crashes.push(format!(
                "{} slot {i} inc {} ended with {st}; stderr: {}",
                s.role.name(),
                s.inc,
                s.stderr_tail()
            )),
            Err(e) => res.harness_errors.push(format!("wait for slot {i}: {e}")),
        }
        if let Some(r) = s.reader.take() {
            let _ = r.join();
        }
    }
    let sig = signal_received();
    if sig != 0 {
        res.interrupted = Some(sig);
        return res;
    }
    // Last look for split sidecars (nobody should hold anything now).
    for d in disrupt::scan_deleted_sidecars(&paths.db) {
        res.split
            .insert(format!("pid {} holds {}", d.pid, d.target));
    }
    if let Ok(a) = ctx.agg.lock() {
        res.totals = a.totals();
        res.events = a.events.clone();
        res.event_examples = a.event_examples.clone();
        res.samples = a.samples.clone();
    }
    progress(1.0, "verifying");
    match verify::verify(&paths.db, &paths.ledger_dir) {
        Ok(v) => res.verification = v,
        Err(e) => res.harness_errors.push(e),
    }
    res
}

fn remove_if_present(p: &Path) -> Result<bool, String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("rm {}: {e}", p.display())),
    }
}
