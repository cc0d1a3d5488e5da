//! The steady-state system-call trace: one connection, already open, sidecars unchanged,
//! runs N read transactions, N write transactions and N read transactions through a
//! memory map, each phase marked for strace. Every system call is recorded with the
//! file its descriptor names (`strace -y`) and, where strace can unwind (`strace -k`),
//! the innermost function of this binary that made it, so a call can be told apart as
//! SQLite's own (forwarded by walguard) or walguard's.
//!
//! Used by `tests/hot_path_syscalls.rs` (which asserts the counts) and by
//! `vfs-tests bench --audit` (which reports them, text and JSON).
//!
//! The child is this binary re-executed as `vfs-tests bench-child steady --vfs V --db D
//! --n N --rows R`. It sets `cache_size` to 8 pages so that point lookups really read
//! pages (`xRead` past the header on every transaction), and `wal_autocheckpoint=0` so
//! that no checkpoint falls inside the write phase (a checkpoint is not a transaction).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rusqlite::params;

use crate::bench::db::{create_db, ctx, open, remove_db, set_sync};
use crate::bench::measure::{payload, Rng};
use crate::bench::strace::{mark, strace_call, strace_path, MARK};
use crate::worker::Vfs;

/// The phases, in the order the child runs them. `read`, `write` and `mmap-read` are the
/// steady-state transaction phases (N transactions each).
pub const PHASES: [&str; 7] = [
    "open",
    "first",
    "read",
    "write",
    "mmap-setup",
    "mmap-read",
    "close",
];

/// The phases that consist of N transactions of an already open connection.
pub const TXN_PHASES: [&str; 3] = ["read", "write", "mmap-read"];

/// Page cache of the child's connection, in pages: small, so that lookups read pages.
const CACHE_PAGES: u32 = 8;

/// `vfs-tests bench-child steady`: one connection's life in marked phases.
/// Read transactions before the steady state is measured: past walguard's unwatched
/// start (`g4_sidecar_identity::FIRST_WATCH_AFTER`, 1,024).
const WARM_TXNS: u64 = 1_100;

pub(crate) fn child(vfs: Vfs, db: &Path, n: u64, rows: u64) -> Result<(), String> {
    let mut devnull = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let rows = rows.max(1);
    let data = payload(5);
    mark(&mut devnull, "open");
    let c = open(vfs, db)?;
    mark(&mut devnull, "first");
    ctx(
        "pragmas",
        c.execute_batch(&format!(
            "PRAGMA cache_size={CACHE_PAGES}; PRAGMA wal_autocheckpoint=0;"
        )),
    )?;
    set_sync(&c, "NORMAL")?;
    let mut lookup = ctx("prepare", c.prepare("SELECT payload FROM t WHERE id = ?1"))?;
    let mut insert = ctx(
        "prepare",
        c.prepare("INSERT INTO t(k, payload) VALUES(?1, ?2)"),
    )?;
    let mut rng = Rng(0x5EED_0F57_EAD7_5A7E);
    // Warm: the first read maps the -shm and opens the -wal, the first write starts
    // the WAL's first frames; neither belongs to the steady state. Nor does a young
    // connection: walguard watches a process's first mapping from its 1,024th
    // transaction on (before that each transaction checks the sidecars with `stat`).
    for _ in 0..WARM_TXNS {
        ctx(
            "lookup",
            lookup.query_row([(rng.next() % rows + 1) as i64], |_| Ok(())),
        )?;
    }
    ctx("insert", insert.execute(params![0i64, &data[..]]))?;
    mark(&mut devnull, "read");
    for _ in 0..n {
        ctx(
            "lookup",
            lookup.query_row([(rng.next() % rows + 1) as i64], |_| Ok(())),
        )?;
    }
    mark(&mut devnull, "write");
    for i in 0..n {
        ctx("insert", insert.execute(params![i as i64, &data[..]]))?;
    }
    mark(&mut devnull, "mmap-setup");
    ctx(
        "mmap_size",
        c.query_row("PRAGMA mmap_size=268435456", [], |_| Ok(())),
    )?;
    for _ in 0..4 {
        ctx(
            "lookup",
            lookup.query_row([(rng.next() % rows + 1) as i64], |_| Ok(())),
        )?;
    }
    mark(&mut devnull, "mmap-read");
    for _ in 0..n {
        ctx(
            "lookup",
            lookup.query_row([(rng.next() % rows + 1) as i64], |_| Ok(())),
        )?;
    }
    mark(&mut devnull, "close");
    drop(lookup);
    drop(insert);
    ctx("close", c.close().map_err(|(_, e)| e))?;
    mark(&mut devnull, "end");
    Ok(())
}

/// Creates the database the steady-state child runs on (WAL, `rows` rows, checkpointed,
/// no sidecars left), through the plain `unix` VFS.
pub fn prepare_db(path: &Path, rows: u64) -> Result<(), String> {
    create_db(Vfs::Unix, path, rows)
}

/// Removes a database and its sidecars.
pub fn remove(path: &Path) {
    remove_db(path);
}

/// Whose code made a system call, from the innermost frames strace unwound.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// walguard's own code (the innermost frame of interest is in `walguard::`).
    Walguard(String),
    /// SQLite or the harness (the innermost frame of interest is elsewhere).
    Other(String),
    /// No usable stack (strace without `-k`, or nothing resolved).
    Unknown,
}

/// One system call of the traced child.
#[derive(Clone, Debug)]
pub struct Call {
    pub phase: String,
    /// The thread that made it (strace `-f`'s pid column; 0 when the log has none).
    pub pid: u32,
    pub name: String,
    /// What the call's descriptor or path argument names: `db`, `wal`, `shm`,
    /// `lock-file` (`<db>-walguard`), `dir`, `inotify`, `other`, or `-` (no file).
    pub file: &'static str,
    /// The arguments and result as strace printed them (a call strace printed as
    /// `<unfinished ...>` gets the text of its `<... resumed>` line appended).
    pub text: String,
    pub owner: Owner,
    /// The unwound frames of this binary and the libraries, innermost first.
    pub stack: Vec<String>,
}

impl Call {
    /// A lock set or released with `fcntl` (the only system call the hot path may make,
    /// in `xShmLock`, and only for the lock itself).
    pub fn is_lock(&self) -> bool {
        self.name == "fcntl"
            && ["F_SETLK,", "F_SETLKW,", "F_OFD_SETLK,", "F_OFD_SETLKW,"]
                .iter()
                .any(|c| self.text.contains(c))
    }

    /// The walguard `sqlite3_io_methods` trampoline the stack shows, e.g. `x_read` from
    /// `walguard::io::x_read::{{closure}}` (strace's unwinder does not always show it).
    pub fn walguard_method(&self) -> Option<&str> {
        self.stack.iter().find_map(|f| {
            let i = f.find("walguard::")?;
            f[i..]
                .split("::")
                .map(|seg| {
                    let end = seg
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(seg.len());
                    &seg[..end]
                })
                .find(|seg| seg.starts_with("x_"))
        })
    }
}

/// A traced run of the steady-state child.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub calls: Vec<Call>,
    /// Whether strace unwound stacks (`-k`) and any frame resolved to a symbol.
    pub stacks: bool,
}

impl Trace {
    /// Calls of one phase.
    pub fn phase<'a>(&'a self, phase: &'a str) -> impl Iterator<Item = &'a Call> + 'a {
        self.calls.iter().filter(move |c| c.phase == phase)
    }

    /// Number of calls in a phase.
    pub fn total(&self, phase: &str) -> u64 {
        self.phase(phase).count() as u64
    }

    /// Number of calls in a phase by (system call, file).
    pub fn counts(&self, phase: &str) -> BTreeMap<(String, &'static str), u64> {
        let mut m = BTreeMap::new();
        for c in self.phase(phase) {
            *m.entry((c.name.clone(), c.file)).or_default() += 1;
        }
        m
    }

    /// Number of calls named `name` on `file` in a phase.
    pub fn count(&self, phase: &str, name: &str, file: &str) -> u64 {
        self.phase(phase)
            .filter(|c| c.name == name && c.file == file)
            .count() as u64
    }
}

/// Calls of a phase, `brk` left out: the C allocator growing the heap lands in a phase
/// on one VFS and not on the other depending on where the heap's top falls.
pub fn budgeted(t: &Trace, phase: &str) -> u64 {
    t.phase(phase).filter(|c| c.name != "brk").count() as u64
}

/// Where strace is, if installed.
pub fn strace() -> Option<PathBuf> {
    strace_path()
}

/// Runs the steady-state child of `exe` (a `vfs-tests` binary) under `strace -f -y`
/// (`-k` too when `stacks`), on `db` (made by [`prepare_db`] with `rows` rows), `n`
/// transactions per phase, and parses the log (kept as `log`).
#[allow(clippy::too_many_arguments)]
pub fn trace(
    exe: &Path,
    vfs: Vfs,
    db: &Path,
    rows: u64,
    n: u64,
    stacks: bool,
    log: &Path,
    read_recheck_ms: u64,
) -> Result<Trace, String> {
    let args: Vec<String> = [
        "steady",
        "--vfs",
        vfs.name(),
        "--n",
        &n.to_string(),
        "--rows",
        &rows.to_string(),
        "--read-recheck-ms",
        &read_recheck_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = run_traced(exe, &args, db, stacks, log)
        .map_err(|e| format!("the steady-state child ({vfs}): {e}"))?;
    for p in PHASES {
        if !t.calls.iter().any(|c| c.phase == p) && p != "mmap-setup" {
            return Err(format!(
                "strace log {} has no call in phase {p}: is strace writing the expected format?",
                log.display()
            ));
        }
    }
    Ok(t)
}

/// Runs `exe bench-child ARGS --db DB` under `strace -f -qq -y` (`-k` too when `stacks`),
/// the log kept as `log`, and parses the log ([`parse`]).
pub(crate) fn run_traced(
    exe: &Path,
    args: &[String],
    db: &Path,
    stacks: bool,
    log: &Path,
) -> Result<Trace, String> {
    let strace = strace().ok_or("strace is not installed (scripts/setup installs it)")?;
    let mut cmd = Command::new(&strace);
    cmd.args(["-f", "-qq", "-y"]);
    if stacks {
        cmd.arg("-k");
    }
    let out = cmd
        .arg("-o")
        .arg(log)
        .arg(exe)
        .arg("bench-child")
        .args(args)
        .arg("--db")
        .arg(db)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", strace.display()))?;
    if !out.status.success() {
        return Err(format!(
            "strace failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text =
        fs::read_to_string(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    Ok(parse(&text, db))
}

/// What a descriptor's path (`strace -y`) or a path argument names, for database `db`.
fn classify(target: &str, db: &str, dir: &str) -> &'static str {
    if target.starts_with("anon_inode:inotify") {
        return "inotify";
    }
    match target.strip_prefix(db) {
        Some("") => "db",
        Some("-wal") => "wal",
        Some("-shm") => "shm",
        Some("-walguard") => "lock-file",
        Some("-journal") => "journal",
        _ if target == dir => "dir",
        _ => "other",
    }
}

/// The file a call's first argument names: `fd<path>` with `-y`, or a quoted path.
fn file_of(args: &str, db: &str, dir: &str) -> &'static str {
    let first = args.split(", ").next().unwrap_or("");
    let after_dirfd = args.split(", ").nth(1).unwrap_or("");
    // `7</d/a.db-shm>` or `7</d/a.db-shm>(deleted)`.
    if let (Some(open), Some(close)) = (first.find('<'), first.rfind('>')) {
        if open > 0 && open < close && first[..open].bytes().all(|b| b.is_ascii_digit()) {
            return classify(&first[open + 1..close], db, dir);
        }
    }
    let quoted = |s: &str| -> Option<String> {
        let s = s.strip_prefix('"')?;
        Some(s[..s.find('"')?].to_owned())
    };
    if let Some(p) = quoted(first) {
        return classify(&p, db, dir);
    }
    if first.starts_with("AT_FDCWD") {
        if let Some(p) = quoted(after_dirfd) {
            return classify(&p, db, dir);
        }
    }
    "-"
}

/// The symbol of a `-k` frame line (` > /lib/x.so(symbol+0x10) [0x1234]`), or the object.
fn frame_symbol(line: &str) -> Option<(String, String)> {
    let l = line.trim_start().strip_prefix('>')?.trim();
    let open = l.find('(')?;
    let object = l[..open].to_owned();
    let inner = &l[open + 1..l.rfind(')')?];
    let sym = match inner.rfind("+0x") {
        Some(i) => &inner[..i],
        None => inner,
    };
    Some((object, sym.to_owned()))
}

/// Frames that say nothing about who made a call: the C library and Rust's standard
/// library (which walguard and the harness both call).
fn uninteresting(object: &str, sym: &str) -> bool {
    let o = object.rsplit('/').next().unwrap_or(object);
    o.starts_with("libc.so")
        || o.starts_with("libc-")
        || o.starts_with("ld-linux")
        || o.starts_with("libpthread")
        || sym.is_empty()
        || [
            "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust", "libc::",
        ]
        .iter()
        .any(|p| sym.starts_with(p))
}

/// The pid column of an `strace -f` line (0 without one) and the rest of the line.
fn split_pid(raw: &str) -> (u32, &str) {
    let line = raw.trim_start();
    match line.split_once(' ') {
        Some((pid, rest)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            (pid.parse().unwrap_or(0), rest.trim_start())
        }
        _ => (0, line),
    }
}

/// Parses an `strace -f -y [-k]` log of a traced child (the steady state, the churn
/// cycles): every call after the first phase marker, with its phase and thread.
pub fn parse(text: &str, db: &Path) -> Trace {
    let db_s = db.to_string_lossy().into_owned();
    let dir_s = db
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut t = Trace::default();
    let mut phase: Option<String> = None;
    // Index of the last call recorded, to attach the frames that follow it.
    let mut last: Option<usize> = None;
    // Per thread, the call strace left `<unfinished ...>`.
    let mut unfinished: BTreeMap<u32, usize> = BTreeMap::new();
    for raw in text.lines() {
        if raw.trim_start().starts_with('>') {
            if let (Some(i), Some((object, sym))) = (last, frame_symbol(raw)) {
                let c = &mut t.calls[i];
                if !sym.is_empty() {
                    t.stacks = true;
                }
                if c.owner == Owner::Unknown && !uninteresting(&object, &sym) {
                    c.owner = if sym.contains("walguard::") {
                        Owner::Walguard(sym.clone())
                    } else {
                        Owner::Other(sym.clone())
                    };
                }
                c.stack.push(if sym.is_empty() { object } else { sym });
            }
            continue;
        }
        last = None;
        let (pid, after_pid) = split_pid(raw);
        // `PID <... name resumed>REST`: the end of a call printed unfinished.
        if after_pid.starts_with("<... ") {
            if let (Some(r), Some(&idx)) = (after_pid.find(" resumed>"), unfinished.get(&pid)) {
                let rest = &after_pid[r + " resumed>".len()..];
                let c = &mut t.calls[idx];
                if let Some(cut) = c.text.find("<unfinished ...>") {
                    c.text.truncate(cut);
                }
                c.text.push_str(rest);
                unfinished.remove(&pid);
                last = Some(idx);
            }
            continue;
        }
        let Some((name, rest, line)) = strace_call(raw) else {
            continue;
        };
        if let Some(pos) = line.find(MARK) {
            let p: String = line[pos + MARK.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            phase = Some(p);
            continue;
        }
        let Some(p) = phase.as_ref() else { continue };
        if rest.contains("<unfinished ...>") {
            unfinished.insert(pid, t.calls.len());
        }
        t.calls.push(Call {
            phase: p.clone(),
            pid,
            name: name.to_owned(),
            file: file_of(rest, &db_s, &dir_s),
            text: rest.to_owned(),
            owner: Owner::Unknown,
            stack: Vec::new(),
        });
        last = Some(t.calls.len() - 1);
    }
    t
}

/// A table of one phase: per (system call, file), the counts of both traces per
/// transaction (`n` transactions; phases that are not transaction phases: per run).
/// `names` label the baseline and the candidate (`["unix", "walguard"]`).
pub fn phase_table(base: &Trace, cand: &Trace, names: [&str; 2], phase: &str, n: u64) -> String {
    let div = if TXN_PHASES.contains(&phase) {
        n.max(1) as f64
    } else {
        1.0
    };
    let [nb, nc] = names;
    let (cu, cg) = (base.counts(phase), cand.counts(phase));
    let mut keys: Vec<&(String, &'static str)> = cu.keys().chain(cg.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut s = format!(
        "  {phase} ({}): {nb} {:.2}, {nc} {:.2}, extra {:+.2}\n",
        if div > 1.0 {
            format!("{n} transactions, per transaction")
        } else {
            "per run".to_owned()
        },
        base.total(phase) as f64 / div,
        cand.total(phase) as f64 / div,
        (cand.total(phase) as f64 - base.total(phase) as f64) / div
    );
    for k in keys {
        let (u, g) = (
            cu.get(k).copied().unwrap_or(0),
            cg.get(k).copied().unwrap_or(0),
        );
        s.push_str(&format!(
            "    {:<14} {:<10} {nb} {:>8.2}  {nc} {:>8.2}{}\n",
            k.0,
            k.1,
            u as f64 / div,
            g as f64 / div,
            if u == g {
                String::new()
            } else {
                format!("  extra {:+.2}", (g as f64 - u as f64) / div)
            }
        ));
    }
    s
}

/// walguard's own calls of a phase that are not a lock (`fcntl` set/unlock): what the
/// hot-path rule forbids in a steady-state transaction. Grouped by (call, file, owner,
/// walguard method if the stack shows it) with a count.
pub fn non_lock_own_calls(walguard: &Trace, phase: &str) -> Vec<(String, u64)> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for c in walguard.phase(phase) {
        if let Owner::Walguard(f) = &c.owner {
            if !c.is_lock() {
                let key = format!(
                    "{}({}) by {f}{}",
                    c.name,
                    c.file,
                    c.walguard_method()
                        .map(|m| format!(" in {m}"))
                        .unwrap_or_default()
                );
                *m.entry(key).or_default() += 1;
            }
        }
    }
    m.into_iter().collect()
}

/// walguard's own calls of a phase made inside one of the per-page methods (`xRead`,
/// `xWrite`, `xShmBarrier`, `xFetch`, `xUnfetch`), as far as the stacks show them.
pub fn per_page_own_calls(walguard: &Trace, phase: &str) -> Vec<(String, u64)> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for c in walguard.phase(phase) {
        let Owner::Walguard(f) = &c.owner else {
            continue;
        };
        let Some(method) = c.walguard_method() else {
            continue;
        };
        if ["x_read", "x_write", "x_shm_barrier", "x_fetch", "x_unfetch"].contains(&method) {
            *m.entry(format!("{}({}) by {f} in {method}", c.name, c.file))
                .or_default() += 1;
        }
    }
    m.into_iter().collect()
}

/// JSON of both traces: per phase, per side (`keys`, e.g. `["unix", "walguard"]`), the
/// count of every (call, file), the total, and the transaction count of the transaction
/// phases.
pub fn to_json(base: &Trace, cand: &Trace, keys: [&str; 2], n: u64) -> String {
    let js = crate::json_string;
    let mut j = format!("{{\"txns\":{n},\"phases\":[");
    for (i, p) in PHASES.iter().enumerate() {
        j.push_str(&format!(
            "{}{{\"phase\":{},\"transactions\":{},",
            if i > 0 { "," } else { "" },
            js(p),
            if TXN_PHASES.contains(p) { n } else { 0 }
        ));
        for (k, (name, t)) in [(keys[0], base), (keys[1], cand)].iter().enumerate() {
            let counts: Vec<String> = t
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
                "{}{}:{{\"total\":{},\"calls\":[{}]}}",
                if k > 0 { "," } else { "" },
                js(name),
                t.total(p),
                counts.join(",")
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

    #[test]
    fn parses_files_owners_and_phases() {
        let log = "\
10 write(3</dev/null>, \"WGBENCH-PHASE read\", 18) = 18
10 pread64(5</d/a.db>, \"...\"..., 4096, 8192) = 4096
 > /usr/lib/x86_64-linux-gnu/libc.so.6(pread64+0x13) [0xf6483]
 > /t/vfs-tests(seekAndRead+0x4e) [0x3661fe]
 > /t/vfs-tests(walguard::io::x_read::{{closure}}+0x107) [0x29bf67]
10 read(11<anon_inode:inotify>, 0x7ffe, 4096) = -1 EAGAIN (Resource temporarily unavailable)
 > /usr/lib/x86_64-linux-gnu/libc.so.6(read+0xd) [0xf82ad]
 > /t/vfs-tests(walguard::g4_sidecar_watch::drain+0x74) [0x2a0454]
10 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
 > /usr/lib/x86_64-linux-gnu/libc.so.6(__libc_fcntl64+0x44) [0xf87e4]
 > /t/vfs-tests(walguard::fd::ofd_lock+0x6e) [0x271c3e]
10 write(3</dev/null>, \"WGBENCH-PHASE mmap-read\", 23) = 23
10 newfstatat(AT_FDCWD, \"/d/a.db-wal\", {st_mode=S_IFREG|0644, ...}, 0) = 0
10 fcntl(12</d/a.db-walguard>, F_OFD_SETLK, {l_type=F_UNLCK}) = 0
10 statx(AT_FDCWD</w>, \"/d/a.db-shm\", AT_STATX_SYNC_AS_STAT, STATX_ALL, {...}) = 0
10 close(9</d/a.db-shm>(deleted)) = 0
";
        let t = parse(log, Path::new("/d/a.db"));
        assert!(t.stacks);
        let read: Vec<&Call> = t.phase("read").collect();
        assert_eq!(read.len(), 3);
        assert_eq!((read[0].name.as_str(), read[0].file), ("pread64", "db"));
        assert_eq!(read[0].owner, Owner::Other("seekAndRead".into()));
        assert_eq!(read[0].walguard_method(), Some("x_read"));
        assert_eq!(read[1].file, "inotify");
        assert!(matches!(&read[1].owner, Owner::Walguard(f) if f.contains("drain")));
        assert!(read[2].is_lock() && !read[1].is_lock());
        assert_eq!(t.count("mmap-read", "newfstatat", "wal"), 1);
        assert_eq!(t.count("mmap-read", "fcntl", "lock-file"), 1);
        assert_eq!(t.count("mmap-read", "statx", "shm"), 1);
        assert_eq!(t.count("mmap-read", "close", "shm"), 1);
        let own = non_lock_own_calls(&t, "read");
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(own[0].0.starts_with("read(inotify)"), "{own:?}");
        assert!(per_page_own_calls(&t, "read").is_empty());
    }
}
