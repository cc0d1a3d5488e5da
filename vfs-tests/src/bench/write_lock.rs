//! The WAL WRITE lock's critical section, read from a steady-state trace.
//!
//! Everything a writer does while it holds the `-shm` WRITE lock (byte 120 of the
//! `-shm`, SQLite's `WAL_WRITE_LOCK`) makes every other writer wait: a system call
//! walguard adds there costs contention, not only the time of the call. A critical
//! section here is what one thread does from the `fcntl` that takes a lock covering byte
//! 120 of the `-shm` (successfully: `= 0`) to the `fcntl` that releases it; the two
//! bounding calls are not counted, everything that thread calls in between is.
//!
//! Who takes the lock does not matter: the unix VFS takes it with `F_SETLK` (a POSIX
//! lock) on its own `-shm` descriptor; walguard takes it with `F_OFD_SETLK` on the
//! descriptor it serves the `-shm` through. If both took one (a POSIX lock and an OFD
//! lock on byte 120), the section starts at the first and ends at the last release, and
//! the inner lock and release count as calls inside it. So the measure is comparable
//! between builds that split the work between unix and walguard differently: compare
//! the totals of the two VFSs, not who made the calls.
//!
//! Calls of other threads of the process while a section is open (walguard's watcher
//! thread) are listed apart: they do not hold the lock, but they run while it is held.

use std::collections::BTreeMap;

use crate::bench::steady::{Call, Trace};

/// SQLite's WAL WRITE lock: byte 120 of the `-shm` (`WALINDEX_LOCK_OFFSET + 0`).
pub const WRITE_LOCK_BYTE: u64 = 120;

/// What a call does to the WRITE lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockChange {
    /// A successful `F_WRLCK` whose range covers byte 120 of the `-shm`.
    Take,
    /// A successful `F_UNLCK` whose range covers byte 120 of the `-shm`.
    Release,
}

/// `NAME=VALUE` out of strace's `struct flock` text (`l_type=F_WRLCK, ...`).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let i = text.find(&format!("{name}="))? + name.len() + 1;
    let v = &text[i..];
    let end = v.find([',', '}', ' ']).unwrap_or(v.len());
    Some(&v[..end])
}

/// Whether a call takes or releases the `-shm` WRITE lock.
pub fn write_lock_change(c: &Call) -> Option<LockChange> {
    if c.name != "fcntl" || c.file != "shm" || !c.is_lock() {
        return None;
    }
    // The result: `) = 0` (strace prints `= -1 EAGAIN (...)` for a refused lock).
    let ok = c
        .text
        .rsplit_once(") = ")
        .is_some_and(|(_, r)| r.trim() == "0" || r.starts_with("0 "));
    if !ok {
        return None;
    }
    let start: u64 = field(&c.text, "l_start")?.parse().ok()?;
    let len: u64 = field(&c.text, "l_len")?.parse().ok()?;
    // l_len 0: to the end of the file.
    let covers = start <= WRITE_LOCK_BYTE && (len == 0 || WRITE_LOCK_BYTE < start + len);
    if !covers {
        return None;
    }
    match field(&c.text, "l_type")? {
        "F_WRLCK" => Some(LockChange::Take),
        "F_UNLCK" => Some(LockChange::Release),
        _ => None,
    }
}

/// The WRITE lock's critical sections of one phase of a trace.
#[derive(Debug, Default)]
pub struct Sections<'a> {
    /// Sections seen from take to release.
    pub count: u64,
    /// The lock holder's calls inside them, the bounding `fcntl`s excluded.
    pub inside: Vec<&'a Call>,
    /// Other threads' calls while a section was open.
    pub other_threads: Vec<&'a Call>,
}

impl Sections<'_> {
    /// Calls inside by (system call, file).
    pub fn counts(&self) -> BTreeMap<(String, &'static str), u64> {
        let mut m = BTreeMap::new();
        for c in &self.inside {
            *m.entry((c.name.clone(), c.file)).or_default() += 1;
        }
        m
    }
}

/// The WRITE lock's critical sections in `phase` of `t` (see the module documentation).
pub fn sections<'a>(t: &'a Trace, phase: &str) -> Sections<'a> {
    let mut s = Sections::default();
    // Per thread: how many WRITE-lock takes are open (1 normally; 2 if a POSIX and an
    // OFD lock were both taken).
    let mut open: BTreeMap<u32, u32> = BTreeMap::new();
    for c in t.calls.iter().filter(|c| c.phase == phase) {
        let change = write_lock_change(c);
        if let Some(depth) = open.get_mut(&c.pid) {
            match change {
                Some(LockChange::Take) => {
                    *depth += 1;
                    s.inside.push(c);
                }
                Some(LockChange::Release) => {
                    *depth -= 1;
                    if *depth == 0 {
                        open.remove(&c.pid);
                        s.count += 1;
                    } else {
                        s.inside.push(c);
                    }
                }
                None => s.inside.push(c),
            }
        } else if change == Some(LockChange::Take) {
            open.insert(c.pid, 1);
        } else if !open.is_empty() {
            s.other_threads.push(c);
        }
    }
    s
}

/// Calls walguard adds inside the critical sections: walguard's total minus unix's
/// (negative when walguard makes fewer).
pub fn added(base: &Sections, cand: &Sections) -> i64 {
    cand.inside.len() as i64 - base.inside.len() as i64
}

/// The text table: sections, calls inside per transaction by (system call, file) for
/// both, the difference, and other threads' calls.
pub fn table(base: &Sections, cand: &Sections, names: [&str; 2], n: u64) -> String {
    let div = n.max(1) as f64;
    let [nb, nc] = names;
    let (cb, cc) = (base.counts(), cand.counts());
    let mut keys: Vec<&(String, &'static str)> = cb.keys().chain(cc.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut s = format!(
        "  WRITE lock critical sections: {nb} {}, {nc} {} (for {n} write transactions); \
         calls inside per transaction: {nb} {:.2}, {nc} {:.2}, {nc}-added {:+.2}\n",
        base.count,
        cand.count,
        base.inside.len() as f64 / div,
        cand.inside.len() as f64 / div,
        added(base, cand) as f64 / div
    );
    for k in keys {
        let (b, c) = (
            cb.get(k).copied().unwrap_or(0),
            cc.get(k).copied().unwrap_or(0),
        );
        s.push_str(&format!(
            "    {:<14} {:<10} {nb} {:>8.2}  {nc} {:>8.2}{}\n",
            k.0,
            k.1,
            b as f64 / div,
            c as f64 / div,
            if b == c {
                String::new()
            } else {
                format!("  added {:+.2}", (c as f64 - b as f64) / div)
            }
        ));
    }
    for (name, sec) in [(nb, base), (nc, cand)] {
        if !sec.other_threads.is_empty() {
            s.push_str(&format!(
                "    (other threads of {name} while the lock was held: {} calls)\n",
                sec.other_threads.len()
            ));
        }
    }
    s
}

/// JSON: per side (`keys`), sections, the calls inside (total and by call and file),
/// other threads' calls; and what the candidate adds.
pub fn to_json(base: &Sections, cand: &Sections, keys: [&str; 2], n: u64) -> String {
    let js = crate::json_string;
    let side = |s: &Sections| {
        let calls: Vec<String> = s
            .counts()
            .iter()
            .map(|((call, file), c)| {
                format!(
                    "{{\"syscall\":{},\"file\":{},\"count\":{c}}}",
                    js(call),
                    js(file)
                )
            })
            .collect();
        format!(
            "{{\"sections\":{},\"inside\":{},\"other_threads\":{},\"calls\":[{}]}}",
            s.count,
            s.inside.len(),
            s.other_threads.len(),
            calls.join(",")
        )
    };
    format!(
        "{{\"txns\":{n},\"byte\":{WRITE_LOCK_BYTE},{}:{},{}:{},\"added\":{},\"added_per_txn\":{:.6}}}",
        js(keys[0]),
        side(base),
        js(keys[1]),
        side(cand),
        added(base, cand),
        added(base, cand) as f64 / n.max(1) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::steady::parse;
    use std::path::Path;

    const UNIX: &str = "\
7 write(3</dev/null>, \"WGBENCH-PHASE write\", 19) = 19
7 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_RDLCK, l_whence=SEEK_SET, l_start=124, l_len=1}) = 0
7 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
7 pwrite64(5</d/a.db-wal>, \"...\", 24, 4152) = 24
7 pwrite64(5</d/a.db-wal>, \"...\", 4096, 4176) = 4096
7 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
7 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=124, l_len=1}) = 0
";

    // e4e5d0e's walguard: the WRITE/CKPT mirror on the database file and the strict
    // inotify read inside the section; a refused lock; a second thread; a call strace
    // printed unfinished.
    const WALGUARD: &str = "\
8 write(3</dev/null>, \"WGBENCH-PHASE write\", 19) = 19
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = -1 EAGAIN (Resource temporarily unavailable)
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
8 fcntl(5</d/a.db>, F_OFD_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=1073742336, l_len=1}) = 0
9 read(11<anon_inode:inotify>,  <unfinished ...>
8 read(11<anon_inode:inotify>, 0x7ffe, 4096) = -1 EAGAIN (Resource temporarily unavailable)
8 pwrite64(6</d/a.db-wal>, \"...\", 24, 4152) = 24
8 pwrite64(6</d/a.db-wal>, \"...\", 4096, 4176) = 4096
8 fcntl(5</d/a.db>, F_OFD_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=1073742336, l_len=1}) = 0
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=120, l_len=1} <unfinished ...>
9 <... read resumed>\"...\", 4096) = 32
8 <... fcntl resumed>) = 0
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=124, l_len=1}) = 0
";

    #[test]
    fn sections_count_what_the_holder_does_inside() {
        let (u, g) = (
            parse(UNIX, Path::new("/d/a.db")),
            parse(WALGUARD, Path::new("/d/a.db")),
        );
        let (su, sg) = (sections(&u, "write"), sections(&g, "write"));
        assert_eq!((su.count, su.inside.len()), (1, 2));
        assert_eq!((sg.count, sg.inside.len()), (1, 5), "{sg:?}");
        assert_eq!(sg.other_threads.len(), 1);
        assert_eq!(added(&su, &sg), 3);
        let c = sg.counts();
        assert_eq!(c[&("fcntl".to_owned(), "db")], 2);
        assert_eq!(c[&("read".to_owned(), "inotify")], 1);
        let t = table(&su, &sg, ["unix", "walguard"], 1);
        assert!(t.contains("walguard-added +3.00"), "{t}");
        let j = to_json(&su, &sg, ["unix", "walguard"], 1);
        assert!(j.contains("\"added\":3"), "{j}");
    }

    #[test]
    fn a_posix_and_an_ofd_lock_on_the_byte_make_one_section() {
        let log = "\
8 write(3</dev/null>, \"WGBENCH-PHASE write\", 19) = 19
8 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
8 pwrite64(6</d/a.db-wal>, \"...\", 24, 4152) = 24
8 fcntl(8</d/a.db-shm>, F_OFD_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=120, l_len=1}) = 0
8 fcntl(6</d/a.db-shm>, F_SETLK, {l_type=F_UNLCK, l_whence=SEEK_SET, l_start=120, l_len=8}) = 0
";
        let t = parse(log, Path::new("/d/a.db"));
        let s = sections(&t, "write");
        assert_eq!((s.count, s.inside.len()), (1, 3));
    }
}
