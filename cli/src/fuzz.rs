//! The doctor reads damaged files for a living: nothing a file claims may size an
//! allocation or a loop. This test feeds it thousands of mutated copies of real files —
//! a WAL database with its `-wal` and `-shm`, one whose `-wal` restarted over older
//! frames, a rollback database with a hot `-journal` — built by SQLite itself, and runs
//! each through the whole doctor but `/proc` (inspection of the files, the verdict, the
//! text and JSON reports). Mutations: bit flips (mostly in headers and frame headers),
//! fields overwritten with extreme values (with the checksums recomputed half of the
//! time, so that the damage reaches past the checksum checks), counts that claim 2^32
//! pages, truncations at and around every boundary, extensions, files removed or swapped.
//!
//! The campaign runs in a child process (this test executable, filtered to
//! [`campaign`]) under an address-space limit, so that a huge allocation aborts the
//! child instead of the machine, and under a time limit, so that a loop sized by a claim
//! fails too. The parent checks that the child ran every input and exited cleanly.
//! A panic is caught per input and reported with the input's description.
//!
//! The seed is fixed (printed; `WALGUARD_FUZZ_SEED=N` picks another), and SQLite's own
//! PRNG is seeded from it, so the base files and every mutation repeat exactly.

use crate::files::Role;
use crate::holders::{FileMap, OpenFd, Proc};
use crate::{inspect, report, sys, verdict, wal};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEFAULT_SEED: u64 = 0x0018_d0c7_f022;
const CASES: usize = 5000;
/// Address space for the child: the test executable needs well under 256 MiB; the
/// largest base file is under 100 KiB.
const MEMORY_LIMIT: u64 = 1 << 30;
/// The whole campaign takes a few seconds in a debug build; a claim that sizes a loop
/// takes hours.
const TIME_LIMIT: Duration = Duration::from_secs(300);

const DB: usize = 0;
const WAL: usize = 1;
const SHM: usize = 2;
const JOURNAL: usize = 3;
const NAMES: [&str; 4] = ["database", "-wal", "-shm", "-journal"];
const SUFFIX: [&str; 4] = ["", "-wal", "-shm", "-journal"];

fn seed() -> u64 {
    std::env::var("WALGUARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// The four files of one database (None: absent).
#[derive(Clone)]
struct Set {
    name: &'static str,
    files: [Option<Vec<u8>>; 4],
}

/// Builds the base files with the bundled SQLite, deterministically.
fn bases(dir: &Path, seed: u64) -> Vec<Set> {
    // SAFETY: a test control call with its documented arguments (an int seed and a null
    // connection); nothing else in this child process uses SQLite concurrently.
    unsafe {
        rusqlite::ffi::sqlite3_test_control(
            rusqlite::ffi::SQLITE_TESTCTRL_PRNG_SEED,
            (seed as i32) | 1,
            std::ptr::null_mut::<rusqlite::ffi::sqlite3>(),
        );
    }
    let read = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        fs::read(PathBuf::from(s)).ok()
    };
    let snapshot = |name, p: &Path| Set {
        name,
        files: [
            read(p, ""),
            read(p, "-wal"),
            read(p, "-shm"),
            read(p, "-journal"),
        ],
    };
    let mut out = Vec::new();

    // A WAL database, small pages: commits of one and of several frames, a reader
    // holding a read mark, a commit after the reader's snapshot.
    let p = dir.join("wal1k.db");
    let w = rusqlite::Connection::open(&p).expect("open wal1k");
    w.execute_batch(
        "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB);",
    )
    .expect("create wal1k");
    for i in 0..6i64 {
        w.execute(
            "INSERT INTO t(tag, payload) VALUES (?1, randomblob(?2))",
            (format!("row{i}"), 100 + 300 * i),
        )
        .expect("insert");
    }
    w.execute_batch(
        "BEGIN; INSERT INTO t(tag, payload) WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL \
         SELECT i+1 FROM c WHERE i<8) SELECT 'bulk', randomblob(700) FROM c; COMMIT;",
    )
    .expect("bulk");
    let r = rusqlite::Connection::open(&p).expect("open reader");
    r.execute_batch("BEGIN").expect("begin");
    let _: i64 = r
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .expect("read");
    w.execute("DELETE FROM t WHERE id % 3 = 0", [])
        .expect("delete");
    out.push(snapshot("wal-1k", &p));
    drop(r);
    drop(w);

    // A WAL database whose -wal restarted after a checkpoint: frames of the new
    // generation, then frames of the old one (other salts); nBackfill set.
    let p = dir.join("wal4k.db");
    let w = rusqlite::Connection::open(&p).expect("open wal4k");
    w.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB);",
    )
    .expect("create wal4k");
    for n in [3000, 5000, 9000, 200] {
        w.execute("INSERT INTO t(payload) VALUES (randomblob(?1))", [n])
            .expect("insert");
    }
    let _: (i64, i64, i64) = w
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .expect("checkpoint");
    w.execute("UPDATE t SET payload = randomblob(100) WHERE id = 2", [])
        .expect("update");
    out.push(snapshot("wal-4k-restarted", &p));
    drop(w);

    // A rollback database in the middle of a transaction that spilled its cache: the
    // -journal is hot, the database half-written.
    let p = dir.join("rollback.db");
    let c = rusqlite::Connection::open(&p).expect("open rollback");
    c.execute_batch(
        "PRAGMA page_size=1024; CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB);
         INSERT INTO t(payload) WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 \
         FROM c WHERE i<40) SELECT randomblob(500) FROM c;
         PRAGMA cache_size=2; BEGIN; UPDATE t SET payload = randomblob(600);",
    )
    .expect("rollback transaction");
    out.push(snapshot("rollback-hot-journal", &p));
    c.execute_batch("ROLLBACK").expect("rollback");
    drop(c);

    for s in &out {
        assert!(s.files[DB].as_ref().is_some_and(|d| d.len() >= 1024));
    }
    assert!(out[0].files[WAL].as_ref().is_some_and(|w| w.len() > 32));
    assert!(out[0].files[SHM].as_ref().is_some_and(|s| s.len() >= 136));
    assert!(out[2].files[JOURNAL].is_some(), "the transaction spilled");
    out
}

/// FNV-1a of every base file, printed so that a run can be compared with another.
fn digest(sets: &[Set]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sets.iter().flat_map(|s| s.files.iter().flatten()).flatten() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if at + bytes.len() > b.len() {
        return;
    }
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Page size of a `-wal` by its header, if usable for delimiting frames.
fn wal_page(w: &[u8]) -> Option<usize> {
    let p = be32(w, 8)?;
    ((512..=65_536).contains(&p) && p.is_power_of_two()).then_some(p as usize)
}

/// Values a damaged or hostile file may hold in a 32-bit field.
const EXTREMES: [u32; 12] = [
    0,
    1,
    2,
    3,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    4_127_195_137,
    4062,
    4063,
    65_536,
];

fn extreme(r: &mut Rng) -> u32 {
    if r.chance(20) {
        r.next() as u32
    } else {
        r.pick(&EXTREMES)
    }
}

/// An offset in the structured part of a file (headers, frame headers, index entries),
/// or anywhere.
fn offset(r: &mut Rng, which: usize, b: &[u8]) -> usize {
    if b.is_empty() {
        return 0;
    }
    let anywhere = r.below(b.len());
    if r.chance(40) {
        return anywhere;
    }
    let at = match which {
        DB => r.below(100),
        WAL => match wal_page(b) {
            Some(p) if r.chance(60) => {
                let frames = (b.len().saturating_sub(32) / (24 + p)).max(1);
                32 + r.below(frames) * (24 + p) + r.below(24)
            }
            _ => r.below(32),
        },
        SHM => {
            if r.chance(70) {
                r.below(136)
            } else {
                136 + r.below(4 * 64)
            }
        }
        _ => r.below(28),
    };
    at.min(b.len() - 1)
}

/// Field offsets (4-byte unless said) per file.
const DB_FIELDS: [usize; 12] = [24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 92, 96];
const WAL_FIELDS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];
const SHM_FIELDS: [usize; 18] = [
    0, 8, 16, 20, 24, 28, 32, 36, 40, 48, 64, 68, 96, 100, 104, 108, 112, 128,
];
const JOURNAL_FIELDS: [usize; 5] = [8, 12, 16, 20, 24];

/// One mutation; returns its description.
fn mutate(r: &mut Rng, set: &mut Set) -> String {
    let which = r.pick(&[DB, DB, WAL, WAL, WAL, SHM, SHM, SHM, JOURNAL]);
    let kind = r.below(12);
    let name = NAMES[which];
    if set.files[which].is_none() {
        // Make it exist: empty, or another file's bytes, or a journal header.
        let from = r.below(4);
        let made = match (which, r.below(3)) {
            (JOURNAL, 0) => {
                let mut j = crate::journal::MAGIC.to_vec();
                for _ in 0..5 {
                    j.extend_from_slice(&extreme(r).to_be_bytes());
                }
                j.resize(512, 0);
                j
            }
            (_, 1) => set.files[from].clone().unwrap_or_default(),
            _ => Vec::new(),
        };
        set.files[which] = Some(made);
        return format!(
            "{name} created ({} bytes)",
            set.files[which].as_ref().map_or(0, Vec::len)
        );
    }
    match kind {
        10 if which == DB && r.chance(80) => {
            // Keep the database (an absent one is "could not inspect"), but now and then
            // try that too.
            return claim_pages(r, set);
        }
        10 => {
            set.files[which] = None;
            return format!("{name} removed");
        }
        11 => {
            let from = r.pick(&[DB, WAL, SHM, JOURNAL]);
            let keep = r.pick(&[16usize, 32, 100, 136, 4096, usize::MAX]);
            set.files[which] = set.files[from].clone().map(|mut v| {
                v.truncate(keep);
                v
            });
            return format!("{name} := first {keep} bytes of the {}", NAMES[from]);
        }
        _ => {}
    }
    let page = set.files[DB]
        .as_ref()
        .and_then(|d| d.get(16..18).map(|p| u16::from_be_bytes([p[0], p[1]])))
        .map_or(4096, |p| {
            if p == 1 {
                65_536
            } else {
                usize::from(p.max(512))
            }
        });
    let wal_frame = set.files[WAL].as_deref().and_then(wal_page).map(|p| 24 + p);
    let b = set.files[which].as_mut().expect("present");
    match kind {
        0..=2 => {
            let at = offset(r, which, b);
            let mask = 1u8 << r.below(8) | if r.chance(30) { r.next() as u8 } else { 0 };
            if let Some(x) = b.get_mut(at) {
                *x ^= mask;
            }
            format!("{name} byte {at} ^= {mask:#04x}")
        }
        3..=5 => {
            let fields: &[usize] = match which {
                DB => &DB_FIELDS,
                WAL => &WAL_FIELDS,
                SHM => &SHM_FIELDS,
                _ => &JOURNAL_FIELDS,
            };
            let mut at = r.pick(fields);
            if which == WAL && r.chance(50) {
                // A frame header field: page number, database size, salts, checksum.
                if let Some(f) = wal_frame {
                    let frames = (b.len().saturating_sub(32) / f).max(1);
                    at = 32 + r.below(frames) * f + 4 * r.below(6);
                }
            }
            if which == SHM && r.chance(30) {
                at = 136 + 4 * r.below(64); // a page-number entry of the index
            }
            let v = extreme(r);
            // The database and -wal are big-endian, the -shm native.
            let bytes = if which == SHM {
                v.to_ne_bytes()
            } else {
                v.to_be_bytes()
            };
            put(b, at, &bytes);
            format!("{name} field at {at} = {v}")
        }
        6 if which == DB => {
            // The page size (2 bytes) or the journal-mode bytes.
            if r.chance(60) {
                let v = r.pick(&[0u16, 1, 2, 256, 511, 512, 1000, 1024, 4096, 32768, 65535]);
                put(b, 16, &v.to_be_bytes());
                format!("database page size field = {v}")
            } else {
                let v = [r.pick(&[0u8, 1, 2, 3, 255]), r.pick(&[0u8, 1, 2, 3, 255])];
                put(b, 18, &v);
                format!("database bytes 18/19 = {}/{}", v[0], v[1])
            }
        }
        6 | 7 => {
            let len = b.len();
            let cuts = [
                0,
                1,
                15,
                16,
                31,
                32,
                33,
                55,
                56,
                99,
                100,
                101,
                135,
                136,
                137,
                page - 1,
                page,
                page + 1,
                wal_frame.map_or(len, |f| 32 + f - 1),
                wal_frame.map_or(len, |f| 32 + f),
                wal_frame.map_or(len, |f| 32 + 2 * f + 24),
                r.below(len + 1),
                len.saturating_sub(1),
            ];
            let to = r.pick(&cuts).min(len);
            b.truncate(to);
            format!("{name} truncated to {to} of {len} bytes")
        }
        8 => {
            let any = r.below(70_000);
            let n = r.pick(&[1usize, 7, 8, 24, 100, page, page + 24, 32_768, any]);
            let fill = r.below(3);
            for _ in 0..n {
                let x = match fill {
                    0 => 0,
                    1 => 0xff,
                    _ => r.next() as u8,
                };
                b.push(x);
            }
            format!(
                "{name} extended by {n} bytes ({})",
                ["zeros", "0xff", "random"][fill]
            )
        }
        _ => {
            // A frame of the -wal repeated at its end, or a zeroed range anywhere.
            if let (WAL, Some(f)) = (which, wal_frame) {
                let frames = b.len().saturating_sub(32) / f;
                if frames > 0 {
                    let k = r.below(frames);
                    let frame = b[32 + k * f..32 + (k + 1) * f].to_vec();
                    b.extend_from_slice(&frame);
                    return format!("-wal frame {} appended again", k + 1);
                }
            }
            let at = offset(r, which, b).min(b.len());
            let n = r.pick(&[4usize, 24, 48, 100, 4096]).min(b.len() - at);
            for x in b.iter_mut().skip(at).take(n) {
                *x = 0;
            }
            format!("{name} bytes {at}..+{n} zeroed")
        }
    }
}

/// The case and its relatives: the header claims up to 2^32 pages (trusted:
/// version-valid-for = change counter), and the last commit of the -wal claims as many.
fn claim_pages(r: &mut Rng, set: &mut Set) -> String {
    let v = r.pick(&[4_127_195_137u32, 0xffff_ffff, 0x8000_0000, 1 << 20, 7]);
    if let Some(d) = set.files[DB].as_mut() {
        if let Some(cc) = be32(d, 24) {
            put(d, 28, &v.to_be_bytes());
            put(d, 92, &cc.to_be_bytes());
        }
    }
    let mut also = String::new();
    if let Some(w) = set.files[WAL].as_mut() {
        if let Some(f) = wal_page(w).map(|p| 24 + p) {
            let frames = w.len().saturating_sub(32) / f;
            // The last commit frame claims it too.
            if let Some(k) = (0..frames)
                .rev()
                .find(|k| be32(w, 32 + k * f + 4).is_some_and(|s| s != 0))
            {
                put(w, 32 + k * f + 4, &v.to_be_bytes());
                fix_wal(w);
                also = format!(", and so does -wal frame {}", k + 1);
            }
        }
    }
    format!("the header claims {v} pages (trusted){also}")
}

/// Recomputes the -wal header checksum and the cumulative checksum of every frame that
/// carries the header's salts, as a writer would have: the damage then reaches past
/// SQLite's checksum checks into everything that trusts a valid frame.
fn fix_wal(w: &mut [u8]) {
    if w.len() < 32 {
        return;
    }
    let be = w[3] & 1 == 1;
    let c = wal::checksum(be, &w[..24], (0, 0));
    w[24..28].copy_from_slice(&c.0.to_be_bytes());
    w[28..32].copy_from_slice(&c.1.to_be_bytes());
    let Some(page) = wal_page(w) else {
        return;
    };
    let f = 24 + page;
    let salt = w[16..24].to_vec();
    let mut running = c;
    let mut at = 32;
    while at + f <= w.len() {
        if w[at + 8..at + 16] != salt[..] {
            break;
        }
        let c = wal::checksum(be, &w[at..at + 8], running);
        let c = wal::checksum(be, &w[at + 24..at + f], c);
        w[at + 16..at + 20].copy_from_slice(&c.0.to_be_bytes());
        w[at + 20..at + 24].copy_from_slice(&c.1.to_be_bytes());
        running = c;
        at += f;
    }
}

/// Recomputes the wal-index header checksum and makes both copies agree.
fn fix_shm(s: &mut [u8]) {
    if s.len() < 96 {
        return;
    }
    let c = wal::checksum(cfg!(target_endian = "big"), &s[..40], (0, 0));
    s[40..44].copy_from_slice(&c.0.to_ne_bytes());
    s[44..48].copy_from_slice(&c.1.to_ne_bytes());
    let copy = s[..48].to_vec();
    s[48..96].copy_from_slice(&copy);
}

/// A process that holds the current files open and maps the -shm (and sometimes a
/// deleted -wal): the verdict's "in use" and split paths, without `/proc`.
fn fake_holder(ins: &inspect::Inspection, stale_wal: bool) -> Proc {
    let mut fds = Vec::new();
    let mut maps = Vec::new();
    for (i, role) in [Role::Database, Role::Wal, Role::Shm]
        .into_iter()
        .enumerate()
    {
        let Some(m) = ins.meta(role) else { continue };
        let stale = stale_wal && role == Role::Wal;
        fds.push(OpenFd {
            fd: 3 + i as u32,
            role,
            link: ins.file(role).path.display().to_string(),
            dev: m.dev,
            ino: if stale { m.ino + 1 } else { m.ino },
            deleted: stale,
            current: !stale,
            flags: Some(libc::O_RDWR as u32),
            locks: Vec::new(),
        });
        if role == Role::Shm {
            maps.push(FileMap {
                role,
                major: sys::dev_major(m.dev),
                minor: sys::dev_minor(m.dev),
                ino: m.ino,
                deleted: false,
                current: true,
                shared: true,
            });
        }
    }
    Proc {
        pid: 1 << 22,
        uid: Some(0),
        comm: "fuzz-holder".into(),
        cmdline: "fuzz-holder".into(),
        exe: None,
        fds,
        maps,
        elfs: Vec::new(),
        maps_error: None,
    }
}

/// One input through the doctor: inspection, verdict, both reports. Returns the exit
/// status the binary would have and the codes of the findings.
fn doctor(db: &Path, holder: Option<bool>) -> (i32, Vec<&'static str>) {
    match inspect::inspect_files(&db.to_string_lossy()) {
        Ok(mut ins) => {
            if let Some(stale) = holder {
                let p = fake_holder(&ins, stale);
                ins.holders.procs.push(p);
            }
            let v = verdict::judge(&ins);
            let text = report::text(&ins, &v);
            let json = report::json(&ins, &v).render();
            assert!(text.contains("verdict: ") && json.starts_with('{'));
            (v.exit, v.findings.iter().map(|f| f.code).collect())
        }
        Err(f) => {
            let text = report::fatal_text(&f);
            let json = report::fatal_json(&f, 0).render();
            assert!(!text.is_empty() && json.starts_with('{'));
            (3, vec!["could-not-inspect"])
        }
    }
}

fn write_set(dir: &Path, set: &Set) -> PathBuf {
    let db = dir.join("fuzz.db");
    for (i, f) in set.files.iter().enumerate() {
        let mut p = db.as_os_str().to_owned();
        p.push(SUFFIX[i]);
        let p = PathBuf::from(p);
        match f {
            Some(b) => fs::write(&p, b).expect("write a mutated file"),
            None => {
                let _ = fs::remove_file(&p);
            }
        }
    }
    db
}

/// The campaign itself; run by [`mutated_files_never_crash_the_doctor`] in a child
/// process under limits.
#[test]
#[ignore = "run by mutated_files_never_crash_the_doctor in a child process under a memory limit"]
fn campaign() {
    let seed = seed();
    let cases: usize = std::env::var("WALGUARD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let tmp = tempfile::Builder::new()
        .prefix("walguard-doctor-fuzz-")
        .tempdir()
        .expect("temporary directory");
    let base_dir = tmp.path().join("base");
    let case_dir = tmp.path().join("case");
    fs::create_dir_all(&base_dir).expect("mkdir");
    fs::create_dir_all(&case_dir).expect("mkdir");
    let sets = bases(&base_dir, seed);
    println!(
        "fuzz: seed {seed}, base files digest {:016x}, {cases} inputs",
        digest(&sets)
    );
    // Each base as it is first: the doctor reads them without trouble.
    for s in &sets {
        let (status, codes) = doctor(&write_set(&case_dir, s), None);
        assert!(status <= 1, "{}: exit {status} {codes:?}", s.name);
    }
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut statuses = [0usize; 4];
    let mut seen: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for case in 0..cases {
        let mut set = sets[rng.below(sets.len())].clone();
        let mut what = vec![set.name.to_owned()];
        if rng.chance(8) {
            what.push(claim_pages(&mut rng, &mut set));
        }
        for _ in 0..1 + rng.below(4) {
            what.push(mutate(&mut rng, &mut set));
        }
        if rng.chance(50) {
            if let Some(w) = set.files[WAL].as_mut() {
                fix_wal(w);
                what.push("-wal checksums recomputed".into());
            }
        }
        if rng.chance(50) {
            if let Some(s) = set.files[SHM].as_mut() {
                fix_shm(s);
                what.push("-shm header checksum recomputed, copies made equal".into());
            }
        }
        let holder = match rng.below(4) {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        if let Some(stale) = holder {
            what.push(format!(
                "a holder maps the -shm{}",
                if stale {
                    " and holds a deleted -wal"
                } else {
                    ""
                }
            ));
        }
        let what = what.join("; ");
        // Printed before the input runs: after an abort, the last line names it.
        println!("case {case}: {what}");
        let db = write_set(&case_dir, &set);
        match std::panic::catch_unwind(|| doctor(&db, holder)) {
            Ok((s, codes)) if (0..=3).contains(&s) => {
                statuses[s as usize] += 1;
                for c in codes {
                    *seen.entry(c).or_default() += 1;
                }
            }
            Ok((s, _)) => failures.push(format!("case {case} ({what}): exit status {s}")),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("case {case} ({what}): panic: {msg}"));
            }
        }
    }
    println!(
        "fuzz: findings reached: {}",
        seen.iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "fuzz campaign done: {cases} inputs, exit statuses 0/1/2/3: {}/{}/{}/{}, {} failures",
        statuses[0],
        statuses[1],
        statuses[2],
        statuses[3],
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {cases} inputs failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs [`campaign`] in a child process with an address-space limit and a time limit,
/// and checks that it ran every input and exited cleanly.
#[test]
fn mutated_files_never_crash_the_doctor() {
    let seed = seed();
    println!("fuzz seed {seed} (WALGUARD_FUZZ_SEED picks another)");
    let logs = tempfile::Builder::new()
        .prefix("walguard-doctor-fuzz-log-")
        .tempdir()
        .expect("temporary directory");
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "fuzz::campaign",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("WALGUARD_FUZZ_SEED", seed.to_string())
    .env("WALGUARD_FUZZ_CASES", CASES.to_string())
    .env("RUST_BACKTRACE", "0")
    .stdin(Stdio::null())
    .stdout(fs::File::create(&out_path).expect("stdout file"))
    .stderr(fs::File::create(&err_path).expect("stderr file"));
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            let set = |what, v: u64| {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(what, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            set(libc::RLIMIT_AS, MEMORY_LIMIT)?;
            set(libc::RLIMIT_CORE, 0)
        });
    }
    let mut child = cmd.spawn().expect("start the fuzz campaign");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(TIME_LIMIT) {
        Ok(st) => Some(st.expect("wait for the campaign")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped
            // (the waiting thread still waits for it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            None
        }
    };
    let lines = |p: &Path| -> Vec<String> {
        fs::File::open(p)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    };
    let tail = |v: &[String]| v[v.len().saturating_sub(25)..].join("\n");
    let all_out = lines(&out_path);
    let out = tail(&all_out);
    let err = tail(&lines(&err_path));
    let Some(status) = status else {
        panic!(
            "seed {seed}: the campaign did not finish within {} s (a loop sized by a \
             file's claim?); last input:\n{out}",
            TIME_LIMIT.as_secs()
        );
    };
    assert!(
        status.success(),
        "seed {seed}: the campaign failed ({status}; an abort is a huge allocation under the \
         {} MiB limit or a panic outside the per-input guard)\nstdout:\n{out}\nstderr:\n{err}",
        MEMORY_LIMIT >> 20
    );
    let done = format!("fuzz campaign done: {CASES} inputs");
    assert!(
        out.contains(&done) && out.contains(" 0 failures"),
        "seed {seed}: the child did not run the campaign:\n{out}\n{err}"
    );
    for l in all_out
        .iter()
        .filter_map(|l| l.find("fuzz").map(|i| &l[i..]))
    {
        println!("{l}");
    }
}
