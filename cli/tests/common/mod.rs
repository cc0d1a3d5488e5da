//! Shared by the doctor's integration tests: a small test runner (these test binaries
//! have their own `main`, because they also serve as vfs-tests worker processes:
//! `<test exe> worker --vfs ... --db ...`), the doctor runner, a JSON reader, and
//! before/after snapshots of files and locks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vfs_tests::worker::{Vfs, Worker};

pub type Test = (&'static str, fn());

/// `tests![a, b]`: the test list for [`main`], each named after its function.
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), $f as fn())),*]
    };
}

/// Runs the named tests in order (or serves as a worker process). Arguments that do not
/// start with `-` filter by substring, as libtest does.
pub fn main(tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return vfs_tests::worker::main(&args[2..]);
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => skips.extend(it.next().cloned()),
            "--test-threads" | "--format" | "--color" | "-Z" => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => filters.push(s.to_owned()),
        }
    }
    let chosen: Vec<&Test> = tests
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .filter(|(n, _)| !skips.iter().any(|s| n.contains(s.as_str())))
        .collect();
    println!("\nrunning {} tests", chosen.len());
    let mut failed = Vec::new();
    for (name, f) in &chosen {
        println!("test {name} ...");
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; {} filtered out",
        if failed.is_empty() { "ok" } else { "FAILED" },
        chosen.len() - failed.len(),
        failed.len(),
        tests.len() - chosen.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {failed:?}");
        ExitCode::from(101)
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walguard-doctor-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Starts a worker process (this test executable in worker mode) on `db`.
pub fn spawn(vfs: Vfs, db: &Path, name: &str) -> Worker {
    let exe = std::env::current_exe().expect("current_exe");
    Worker::spawn(&exe, vfs, db, name)
        .unwrap_or_else(|e| panic!("start worker {name} ({vfs}) on {}: {e}", db.display()))
}

/// Sends `cmd` and returns the payload of the `ok` reply (panics otherwise). Each reply
/// is the synchronisation point: the worker has finished the command.
pub fn ok(w: &mut Worker, cmd: &str) -> String {
    w.ok(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// What one doctor run printed.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Json {
        Json::parse(&self.stdout)
            .unwrap_or_else(|e| panic!("doctor output is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The doctor binary.
pub fn doctor_exe() -> &'static str {
    env!("CARGO_BIN_EXE_walguard")
}

/// The address space every doctor run gets in these tests: far more than it needs, far
/// less than what a count read from a damaged file could make it allocate (an abort).
pub const DOCTOR_MEMORY_LIMIT: u64 = 1 << 30;

/// Runs the doctor with `args` (as `uid` when given), under [`DOCTOR_MEMORY_LIMIT`];
/// 120 s hang guard.
pub fn doctor_as(uid: Option<u32>, args: &[&str]) -> Run {
    let mut cmd = Command::new(doctor_exe());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = uid {
        // std drops the supplementary groups when a root parent sets uid/gid.
        cmd.uid(u).gid(u);
    }
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
    // the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: DOCTOR_MEMORY_LIMIT,
                rlim_max: DOCTOR_MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn().expect("spawn the doctor");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(out)) => Run {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for the doctor: {e}"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("the doctor did not finish within 120 s: {args:?}");
        }
    }
}

pub fn doctor(args: &[&str]) -> Run {
    doctor_as(None, args)
}

/// The doctor's JSON report of `db`, asserting the expected exit status.
pub fn doctor_json(db: &Path, expect_status: i32) -> Json {
    let run = doctor(&["doctor", "--json", &db.to_string_lossy()]);
    assert_eq!(
        run.status,
        expect_status,
        "exit status of the doctor on {}; stderr: {}\nreport: {}\ntext report:\n{}",
        db.display(),
        run.stderr,
        run.stdout,
        doctor(&["doctor", &db.to_string_lossy()]).stdout
    );
    run.json()
}

/// Codes of the findings of at least `severity` (note < warning < incomplete < damage).
pub fn codes(report: &Json, min: &str) -> Vec<String> {
    let rank = |s: &str| {
        ["note", "warning", "incomplete", "damage"]
            .iter()
            .position(|x| *x == s)
    };
    let floor = rank(min).expect("severity name");
    report["findings"]
        .items()
        .iter()
        .filter(|f| rank(f["severity"].text()).is_some_and(|r| r >= floor))
        .map(|f| f["code"].text().to_owned())
        .collect()
}

/// The finding with `code`, panicking with the report when there is none.
pub fn finding<'a>(report: &'a Json, code: &str) -> &'a Json {
    report["findings"]
        .items()
        .iter()
        .find(|f| f["code"].text() == code)
        .unwrap_or_else(|| panic!("no {code} finding in {}", report.render_findings()))
}

/// The process `pid` of a report.
pub fn process(report: &Json, pid: u32) -> &Json {
    report["processes"]
        .items()
        .iter()
        .find(|p| p["pid"].num() == pid as f64)
        .unwrap_or_else(|| {
            panic!(
                "process {pid} not in the report: {}",
                report["processes"].render()
            )
        })
}

// ---- a small JSON reader ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl std::ops::Index<&str> for Json {
    type Output = Json;
    fn index(&self, k: &str) -> &Json {
        match self {
            Json::Obj(v) => v.iter().find(|(key, _)| key == k).map_or(&NULL, |(_, x)| x),
            _ => &NULL,
        }
    }
}

impl Json {
    pub fn parse(s: &str) -> Result<Json, String> {
        let b = s.trim().as_bytes();
        let mut i = 0;
        let v = parse_value(b, &mut i)?;
        if i != b.len() {
            return Err(format!("trailing data at {i}"));
        }
        Ok(v)
    }
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            _ => &[],
        }
    }
    pub fn text(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => "",
        }
    }
    pub fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            _ => f64::NAN,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
    pub fn render(&self) -> String {
        format!("{self:?}")
    }
    pub fn render_findings(&self) -> String {
        self["findings"]
            .items()
            .iter()
            .map(|f| {
                format!(
                    "\n  [{}] {}: {}",
                    f["severity"].text(),
                    f["code"].text(),
                    f["message"].text()
                )
            })
            .collect()
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> Result<Json, String> {
    skip_ws(b, i);
    match b.get(*i) {
        Some(b'{') => {
            *i += 1;
            let mut v = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(v));
            }
            loop {
                skip_ws(b, i);
                let Json::Str(k) = parse_value(b, i)? else {
                    return Err(format!("object key expected at {i}"));
                };
                skip_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("':' expected at {i}"));
                }
                *i += 1;
                v.push((k, parse_value(b, i)?));
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(v));
                    }
                    _ => return Err(format!("',' or '}}' expected at {i}")),
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut v = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(v));
            }
            loop {
                v.push(parse_value(b, i)?);
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(v));
                    }
                    _ => return Err(format!("',' or ']' expected at {i}")),
                }
            }
        }
        Some(b'"') => {
            *i += 1;
            let mut out = Vec::new();
            while let Some(&c) = b.get(*i) {
                *i += 1;
                match c {
                    b'"' => return Ok(Json::Str(String::from_utf8_lossy(&out).into_owned())),
                    b'\\' => {
                        let e = *b.get(*i).ok_or("bad escape")?;
                        *i += 1;
                        match e {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'u' => {
                                let h = std::str::from_utf8(b.get(*i..*i + 4).ok_or("bad \\u")?)
                                    .map_err(|e| e.to_string())?;
                                let c = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                *i += 4;
                                let ch = char::from_u32(c).unwrap_or('?');
                                out.extend_from_slice(ch.to_string().as_bytes());
                            }
                            other => out.push(other),
                        }
                    }
                    c => out.push(c),
                }
            }
            Err("unterminated string".into())
        }
        Some(b't') if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        Some(b'f') if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        Some(b'n') if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        Some(_) => {
            let start = *i;
            while *i < b.len()
                && (b[*i] == b'-'
                    || b[*i] == b'+'
                    || b[*i] == b'.'
                    || b[*i] == b'e'
                    || b[*i] == b'E'
                    || b[*i].is_ascii_digit())
            {
                *i += 1;
            }
            std::str::from_utf8(&b[start..*i])
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Json::Num)
                .ok_or_else(|| format!("bad value at {start}"))
        }
        None => Err("unexpected end".into()),
    }
}

// ---- snapshots ----------------------------------------------------------------------------

/// One file's state: size, content digest, mtime and atime (ns), mode, inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub size: u64,
    pub digest: u64,
    pub mtime_ns: i128,
    pub atime_ns: i128,
    pub mode: u32,
    pub ino: u64,
}

/// FNV-1a 64 of a file's bytes.
fn digest(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return h;
        }
        for &b in &buf[..n] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Every file of `dir` (not recursively) with its state. The digests are read with
/// O_NOATIME, so a snapshot does not change the access times it records.
pub fn snapshot(dir: &Path) -> BTreeMap<String, FileState> {
    let mut out = BTreeMap::new();
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    let metas: Vec<(PathBuf, fs::Metadata)> = names
        .into_iter()
        .map(|p| {
            let m =
                fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            (p, m)
        })
        .collect();
    for (p, m) in metas {
        let d = if m.is_file() { digest_noatime(&p) } else { 0 };
        out.insert(
            p.file_name().expect("name").to_string_lossy().into_owned(),
            FileState {
                size: m.len(),
                digest: d,
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                atime_ns: i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec()),
                mode: m.mode(),
                ino: m.ino(),
            },
        );
    }
    out
}

/// `snap` without access times: a doctor run as another user than the files' owner
/// may not use O_NOATIME, and the kernel then updates atime (relatime) on its reads.
pub fn without_atime(mut snap: BTreeMap<String, FileState>) -> BTreeMap<String, FileState> {
    for v in snap.values_mut() {
        v.atime_ns = 0;
    }
    snap
}

/// Digest of a file read with O_NOATIME, so that taking a snapshot does not itself
/// change the access times the test compares.
fn digest_noatime(path: &Path) -> u64 {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Ok(mut f) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                if n == 0 {
                    return h;
                }
                for &b in &buf[..n] {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        Err(_) => digest(path),
    }
}

/// The lines of `/proc/locks` on the inodes of the files in `dir`, without the table
/// position (which other processes' locks shift): `POSIX ADVISORY READ 1234 fe:00:77 128 128`.
pub fn locks_in(dir: &Path) -> Vec<String> {
    let inodes: Vec<u64> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.ino())
        .collect();
    let dev = fs::metadata(dir).expect("stat dir").dev();
    let dev = format!(
        "{:02x}:{:02x}:",
        ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
        ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
    );
    let read = || {
        let text = fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let mut out: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(':')?.1.trim();
                let id = rest.split_whitespace().nth(4)?;
                let ino: u64 = id.strip_prefix(&dev)?.parse().ok()?;
                inodes
                    .contains(&ino)
                    .then(|| rest.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .collect();
        out.sort();
        out
    };
    // The kernel serves /proc/locks a page per read() and other processes' locks change
    // between reads: take it when two reads agree.
    let mut last = read();
    for _ in 0..20 {
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("/proc/locks never read the same twice: {last:?}");
}

/// The lock lines of one pid among `lines`.
pub fn locks_of(lines: &[String], pid: u32) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.split_whitespace().any(|t| t == pid.to_string()))
        .cloned()
        .collect()
}

/// Makes `dir` traversable and listable by other users (tempdirs are 0700).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 755 {}: {e}", dir.display()));
}
