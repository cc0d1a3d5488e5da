//! One inspection of a database: every fact the doctor can read, nothing judged yet
//! (the judging is in `verdict`). Read-only by construction: see `sys` for why reading
//! these files cannot disturb any process's locks.

use crate::files::{self, FileInfo, FileState, FsInfo, Meta, Role};
use crate::header::{self, DbHeader, HeaderError};
use crate::holders::{self, Scan, Target};
use crate::journal::Journal;
use crate::locks::{self, Build, KernelLock, Kind};
use crate::shm::{self, Shm};
use crate::sys;
use crate::wal::{self, WalScan};
use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

/// The database could not be inspected at all.
#[derive(Debug, Clone)]
pub struct Fatal {
    pub path: String,
    pub message: String,
    pub hint: String,
}

#[derive(Debug, Clone)]
pub enum HeaderState {
    /// A zero-length file: SQLite treats it as a new, empty database.
    Empty,
    Ok(DbHeader),
    /// Shorter than the 100-byte header but starts like a database.
    Truncated(usize),
}

#[derive(Debug, Clone)]
pub struct ShmState {
    /// None: shorter than the 136-byte header.
    pub parsed: Option<Shm>,
    /// The header and the page-number entries for the frames the index claims.
    pub bytes: Vec<u8>,
}

/// A kernel lock on one of the database's files, with its meaning and owners.
#[derive(Debug, Clone)]
pub struct DecodedLock {
    pub lock: KernelLock,
    pub role: Role,
    /// On an inode that is no longer the one at the path (deleted or replaced).
    pub stale: bool,
    /// Processes that own it: the POSIX owner, or every process whose descriptor shares
    /// the open file description of an OFD lock.
    pub owners: Vec<i32>,
    /// `owners` are the candidates for an OFD lock that cannot be told apart (a
    /// description shared after fork, or several identical locks).
    pub ambiguous: bool,
    pub names: String,
    pub meanings: Vec<String>,
}

#[derive(Debug)]
pub struct Inspection {
    pub arg: String,
    pub db: PathBuf,
    pub time: i64,
    pub euid: u32,
    pub files: Vec<FileInfo>,
    pub fs: FsInfo,
    pub header: HeaderState,
    /// Present, readable `-wal`.
    pub wal: Option<WalScan>,
    pub shm: Option<ShmState>,
    pub journal: Option<Journal>,
    /// Files that exist but could not be read: (role, error).
    pub unreadable: Vec<(Role, String)>,
    /// The `-wal`/`-shm` kept changing while they were read (an active writer).
    pub unstable: bool,
    pub holders: Scan,
    pub locks: Vec<DecodedLock>,
    pub locks_error: Option<String>,
    /// Consecutive reads of /proc/locks disagreed at least once (a busy lock table).
    pub locks_unsettled: bool,
    /// Lock owners outside the holders (their descriptors could not be read):
    /// (pid, comm, cmdline, uid).
    pub lock_owners_unseen: Vec<(i32, String, String, Option<u32>)>,
}

impl Inspection {
    pub fn file(&self, role: Role) -> &FileInfo {
        // `files::survey` lists every role, in `Role::ALL` order.
        &self.files[Role::ALL.iter().position(|r| *r == role).unwrap_or(0)]
    }

    pub fn meta(&self, role: Role) -> Option<&Meta> {
        self.file(role).meta()
    }

    pub fn db_header(&self) -> Option<&DbHeader> {
        match &self.header {
            HeaderState::Ok(h) => Some(h),
            _ => None,
        }
    }

    /// The header says WAL mode.
    pub fn wal_mode(&self) -> bool {
        self.db_header()
            .is_some_and(|h| h.journal_mode() == header::JournalMode::Wal)
    }

    /// Locks on the current (not stale) file of `role`.
    pub fn locks_on(&self, role: Role) -> impl Iterator<Item = &DecodedLock> {
        self.locks
            .iter()
            .filter(move |l| l.role == role && !l.stale && !l.lock.blocked)
    }

    /// Whether anybody holds a lock overlapping the named byte of the current `role` file.
    pub fn held(&self, role: Role, name: &str, write: Option<bool>) -> Vec<&DecodedLock> {
        let b = locks::byte(role, name);
        self.locks_on(role)
            .filter(|l| l.lock.overlaps(b.start, b.len))
            .filter(|l| write.is_none_or(|w| l.lock.write == w))
            .collect()
    }

    /// Whether process `p` holds a lock on the named byte of the current `role` file,
    /// as the lock table or its own fdinfo shows it (two views read at different
    /// moments: either one is proof).
    pub fn process_holds(
        &self,
        p: &holders::Proc,
        role: Role,
        name: &str,
        posix_only: bool,
    ) -> bool {
        let b = locks::byte(role, name);
        let kind_ok = |k: Kind| !posix_only || k == Kind::Posix;
        self.held(role, name, None)
            .iter()
            .any(|l| kind_ok(l.lock.kind) && l.owners.contains(&p.pid))
            || p.fds
                .iter()
                .filter(|f| f.role == role && f.current)
                .any(|f| {
                    f.locks
                        .iter()
                        .any(|l| !l.blocked && kind_ok(l.kind) && l.overlaps(b.start, b.len))
                })
    }

    /// The `-shm` is in use: somebody holds its dead-man switch or maps it.
    pub fn shm_live(&self) -> bool {
        !self.held(Role::Shm, "DMS", None).is_empty()
            || self
                .holders
                .procs
                .iter()
                .any(|p| p.maps.iter().any(|m| m.role == Role::Shm && m.current))
    }
}

fn fatal(path: &str, message: String, hint: &str) -> Fatal {
    Fatal {
        path: path.to_owned(),
        message,
        hint: hint.to_owned(),
    }
}

fn owner_text(m: &Meta) -> String {
    let u = sys::user_name(m.uid).unwrap_or_else(|| m.uid.to_string());
    let g = sys::group_name(m.gid).unwrap_or_else(|| m.gid.to_string());
    format!("owner {u}:{g}, mode {}", m.perms())
}

/// Resolves the argument to the database's canonical path, or says why not.
fn resolve(arg: &str) -> Result<PathBuf, Fatal> {
    let whoami = || {
        let uid = sys::euid();
        sys::user_name(uid).map_or(format!("uid {uid}"), |n| format!("{n} (uid {uid})"))
    };
    if arg.is_empty() {
        return Err(fatal(
            arg,
            "empty database path".into(),
            "give the path of the database file",
        ));
    }
    let p = Path::new(arg);
    match files::stat_path(p) {
        FileState::Present(m) if m.is_dir() => {
            let mut candidates: Vec<String> = fs::read_dir(p)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| {
                            [".db", ".sqlite", ".sqlite3", ".db3"]
                                .iter()
                                .any(|s| n.ends_with(s))
                        })
                        .collect()
                })
                .unwrap_or_default();
            candidates.sort();
            candidates.truncate(5);
            let hint = if candidates.is_empty() {
                "give the database file inside it, e.g. DIR/app.db".to_owned()
            } else {
                format!(
                    "give the database file inside it, e.g. {}",
                    candidates
                        .iter()
                        .map(|c| p.join(c).display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            Err(Fatal {
                path: arg.to_owned(),
                message: "is a directory, not a database file".into(),
                hint,
            })
        }
        FileState::Present(m) if !m.is_regular() => Err(fatal(
            arg,
            format!("is a {}, not a database file", m.kind()),
            "give the path of the database file itself",
        )),
        FileState::Present(_) => fs::canonicalize(p).map_err(|e| {
            fatal(
                arg,
                format!("cannot resolve the path: {e}"),
                "check the path and its permissions",
            )
        }),
        FileState::Absent => {
            let sidecars: Vec<String> = [Role::Wal, Role::Shm, Role::Journal, Role::Walguard]
                .iter()
                .map(|r| r.path_for(p))
                .filter(|s| s.exists())
                .map(|s| s.display().to_string())
                .collect();
            let message = if sidecars.is_empty() {
                "no such file".to_owned()
            } else {
                format!(
                    "no such file, but its side files exist ({}): the database was deleted or \
                     renamed while they were in use",
                    sidecars.join(", ")
                )
            };
            Err(fatal(
                arg,
                message,
                "check the path (and the current directory); do not let an application open a \
                 missing path: SQLite creates a new, empty database there",
            ))
        }
        FileState::Error(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(fatal(
            arg,
            format!(
                "cannot reach the file: permission denied for {} ({e})",
                whoami()
            ),
            "a directory on the path is not searchable by this user: run the doctor as the \
             database's owner or as root",
        )),
        FileState::Error(e) => Err(fatal(arg, format!("cannot stat: {e}"), "check the path")),
    }
}

fn read_header(arg: &str, db: &Path, meta: &Meta) -> Result<HeaderState, Fatal> {
    if meta.size == 0 {
        return Ok(HeaderState::Empty);
    }
    let f = sys::open_read(db).map_err(|e| {
        let uid = sys::euid();
        let who = sys::user_name(uid).map_or(format!("uid {uid}"), |n| format!("{n} (uid {uid})"));
        if e.kind() == io::ErrorKind::PermissionDenied {
            fatal(
                arg,
                format!(
                    "permission denied reading the database as {who} ({})",
                    owner_text(meta)
                ),
                "run the doctor as the database's owner or as root (it only reads)",
            )
        } else {
            fatal(
                arg,
                format!("cannot open the database: {e}"),
                "check the file",
            )
        }
    })?;
    let b = sys::read_at_most(&f, 0, header::HEADER_LEN).map_err(|e| {
        fatal(
            arg,
            format!("cannot read the database header: {e}"),
            "check the file and the disk (dmesg)",
        )
    })?;
    match header::parse(&b) {
        Ok(h) => Ok(HeaderState::Ok(h)),
        Err(HeaderError::Truncated { len }) => Ok(HeaderState::Truncated(len)),
        Err(HeaderError::NotSqlite { first_bytes }) => {
            // A side file given instead of its database.
            let side = [Role::Wal, Role::Shm, Role::Journal, Role::Walguard]
                .into_iter()
                .find_map(|r| arg.strip_suffix(r.suffix()).map(|db| (r, db)));
            let hint = match side {
                Some((r, db)) => format!(
                    "this is the database's {} file: give the database itself ({db})",
                    r.label()
                ),
                None => "check the path; an encrypted database (SQLCipher, SEE) has no readable \
                         header and cannot be inspected"
                    .to_owned(),
            };
            Err(Fatal {
                path: arg.to_owned(),
                message: format!(
                    "is not a SQLite database: it starts with {} (a database starts with \"SQLite format 3\\0\")",
                    printable(&first_bytes)
                ),
                hint,
            })
        }
    }
}

fn printable(b: &[u8]) -> String {
    let text: String = b
        .iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    let hex: Vec<String> = b.iter().map(|c| format!("{c:02x}")).collect();
    format!("{} (\"{text}\")", hex.join(" "))
}

fn read_all_wal(path: &Path, size: u64) -> io::Result<WalScan> {
    let f = sys::open_read(path)?;
    wal::scan(BufReader::with_capacity(1 << 20, f), size)
}

/// Reads the `-shm` header plus the page-number entries up to its mxFrame. What the file
/// claims (mxFrame) never sizes the read beyond the file itself.
fn read_shm(path: &Path) -> io::Result<ShmState> {
    let f = sys::open_read(path)?;
    let size = f.metadata()?.len();
    let head = sys::read_at_most(&f, 0, shm::HEADER_LEN)?;
    let parsed = Shm::parse(&head, size);
    let want = parsed.as_ref().map_or(0, |s| {
        shm::bytes_for_frames(s.copy1.mx_frame.min(1 << 22))
            .min(usize::try_from(size).unwrap_or(usize::MAX))
    });
    let bytes = if want > head.len() {
        sys::read_at_most(&f, 0, want)?
    } else {
        head
    };
    let parsed = Shm::parse(&bytes, size);
    Ok(ShmState { parsed, bytes })
}

/// Inspects the database named by `arg`: its files, then who holds them.
pub fn inspect(arg: &str) -> Result<Inspection, Fatal> {
    let mut ins = inspect_files(arg)?;
    let targets: Vec<Target> = ins
        .files
        .iter()
        .map(|f| Target {
            role: f.role,
            path: f.path.clone(),
            current: f.meta().map(|m| (m.dev, m.ino)),
        })
        .collect();
    ins.holders = holders::scan(&targets);
    read_locks(&mut ins);
    Ok(ins)
}

/// The files of the database named by `arg`, read and parsed; `holders` and `locks`
/// stay empty (`/proc` is not looked at).
pub fn inspect_files(arg: &str) -> Result<Inspection, Fatal> {
    let db = resolve(arg)?;
    let files = files::survey(&db);
    let db_meta = match &files[0].state {
        FileState::Present(m) => m.clone(),
        FileState::Absent => {
            return Err(fatal(
                arg,
                "disappeared while being inspected".into(),
                "run the doctor again",
            ))
        }
        FileState::Error(e) => {
            return Err(fatal(arg, format!("cannot stat: {e}"), "check the path"))
        }
    };
    let header = read_header(arg, &db, &db_meta)?;
    let dir = db.parent().unwrap_or(Path::new("/")).to_path_buf();
    let dir_dev = fs::metadata(&dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .unwrap_or(db_meta.dev);
    let fs_info = files::filesystem(&dir, dir_dev);

    let mut ins = Inspection {
        arg: arg.to_owned(),
        db: db.clone(),
        time: sys::now_secs(),
        euid: sys::euid(),
        files,
        fs: fs_info,
        header,
        wal: None,
        shm: None,
        journal: None,
        unreadable: Vec::new(),
        unstable: false,
        holders: Scan::default(),
        locks: Vec::new(),
        locks_error: None,
        locks_unsettled: false,
        lock_owners_unseen: Vec::new(),
    };

    // -shm, -wal, -shm again: a live writer can change both between the reads. Retry a
    // few times until two -shm reads and the -wal size agree.
    let wal_path = Role::Wal.path_for(&db);
    let shm_path = Role::Shm.path_for(&db);
    for attempt in 0..4 {
        let shm_present = matches!(files::stat_path(&shm_path), FileState::Present(_));
        let prefix = |s: &ShmState| s.bytes[..s.bytes.len().min(100)].to_vec();
        let before = if shm_present {
            read_shm(&shm_path).ok().map(|s| prefix(&s))
        } else {
            None
        };
        let wal_before = match files::stat_path(&wal_path) {
            FileState::Present(m) if m.is_regular() => Some(m.size),
            _ => None,
        };
        let wal_res = wal_before.map(|size| read_all_wal(&wal_path, size));
        let after = if shm_present {
            Some(read_shm(&shm_path))
        } else {
            None
        };
        let wal_after = match files::stat_path(&wal_path) {
            FileState::Present(m) if m.is_regular() => Some(m.size),
            _ => None,
        };
        let after_prefix = after.as_ref().and_then(|a| a.as_ref().ok()).map(prefix);
        let stable = wal_before == wal_after && before == after_prefix;
        ins.unreadable.clear();
        ins.wal = None;
        ins.shm = None;
        match wal_res {
            Some(Ok(s)) => ins.wal = Some(s),
            Some(Err(e)) => ins.unreadable.push((Role::Wal, e.to_string())),
            None => {}
        }
        match after {
            Some(Ok(s)) => ins.shm = Some(s),
            Some(Err(e)) => ins.unreadable.push((Role::Shm, e.to_string())),
            None => {}
        }
        if stable {
            break;
        }
        if attempt == 3 {
            ins.unstable = true;
        }
    }

    let journal_path = Role::Journal.path_for(&db);
    if let FileState::Present(m) = files::stat_path(&journal_path) {
        if m.is_regular() {
            match sys::open_read(&journal_path).and_then(|f| sys::read_at_most(&f, 0, 512)) {
                Ok(b) => ins.journal = Some(Journal::parse(&b, m.size)),
                Err(e) => ins.unreadable.push((Role::Journal, e.to_string())),
            }
        }
    }
    // An earlier walguard build's lock file is only listed (size, owner); its content is
    // empty.
    Ok(ins)
}

/// Which walguard build the owners of a lock run: an earlier build holds its
/// `<db>-walguard` lock file open for as long as it uses the database; the current build
/// has none.
fn owners_build(procs: &[holders::Proc], owners: &[i32]) -> Build {
    let earlier: Vec<Option<bool>> = owners
        .iter()
        .map(|pid| {
            procs
                .iter()
                .find(|p| p.pid == *pid)
                .map(|p| p.has_open(Role::Walguard))
        })
        .collect();
    match earlier.first() {
        Some(&Some(first)) if earlier.iter().all(|e| *e == Some(first)) => {
            if first {
                Build::Earlier
            } else {
                Build::Current
            }
        }
        _ => Build::Unknown,
    }
}

/// Reads `/proc/locks`, keeps the locks on the database's files (current inodes and the
/// stale ones processes still hold) and finds their owners.
fn read_locks(ins: &mut Inspection) {
    let read = || {
        sys::read_proc(Path::new("/proc/locks")).map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let mut text = match read() {
        Ok(t) => t,
        Err(e) => {
            ins.locks_error = Some(format!("cannot read /proc/locks: {e}"));
            return;
        }
    };
    // (role, major, minor, ino, stale)
    let mut known: Vec<(Role, u32, u32, u64, bool)> = Vec::new();
    for f in &ins.files {
        if let Some(m) = f.meta() {
            known.push((
                f.role,
                sys::dev_major(m.dev),
                sys::dev_minor(m.dev),
                m.ino,
                false,
            ));
        }
    }
    for p in &ins.holders.procs {
        for fd in p.fds.iter().filter(|f| f.stale()) {
            let k = (
                fd.role,
                sys::dev_major(fd.dev),
                sys::dev_minor(fd.dev),
                fd.ino,
                true,
            );
            if !known.contains(&k) {
                known.push(k);
            }
        }
        for m in p.maps.iter().filter(|m| !m.current) {
            let k = (m.role, m.major, m.minor, m.ino, true);
            if !known.contains(&k) {
                known.push(k);
            }
        }
    }
    // btrfs subvolumes and overlayfs report a different st_dev than the superblock
    // device the lock table prints: match those by inode alone.
    let loose = matches!(ins.fs.name.as_str(), "btrfs" | "overlay");
    let ours = |l: &KernelLock| {
        known.iter().any(|(_, maj, min, ino, _)| {
            *ino == l.ino && (loose || (*maj == l.major && *min == l.minor))
        })
    };
    // The kernel hands /proc/locks out one page per read() and lets go of its lock table
    // between reads: while other processes lock and unlock, a long table can come back
    // with lines skipped or repeated. Read until two reads agree on the lines of these
    // files (a few tries), so that no lock is reported missing that was there.
    let relevant = |t: &str| {
        let mut v: Vec<String> = locks::parse_table(t)
            .into_iter()
            .filter(|l| ours(l))
            .map(|l| format!("{l:?}"))
            .collect();
        v.sort();
        v
    };
    let mut last = relevant(&text);
    ins.locks_unsettled = true;
    for _ in 0..5 {
        let Ok(again) = read() else { break };
        let now = relevant(&again);
        text = again;
        if now == last {
            ins.locks_unsettled = false;
            break;
        }
        last = now;
    }
    // An OFD lock line does not name its owner; the `lock:` lines in the owners' fdinfo
    // do, but identical locks (same inode, range and type) held through different open
    // file descriptions look alike. Lines with one key are handed out one per candidate
    // process when the counts match (then each candidate holds exactly one); otherwise
    // (a description shared after fork, or one process with several) every candidate is
    // listed and the lock is marked ambiguous.
    let table = locks::parse_table(&text);
    let key = |l: &KernelLock| (l.ino, l.start, l.end, l.write);
    let mut handed: std::collections::HashMap<(u64, u64, Option<u64>, bool), usize> =
        std::collections::HashMap::new();
    for lock in table.iter().cloned() {
        let Some(&(role, _, _, _, stale)) = known.iter().find(|(_, maj, min, ino, _)| {
            *ino == lock.ino && (loose || (*maj == lock.major && *min == lock.minor))
        }) else {
            continue;
        };
        let mut ambiguous = false;
        let owners: Vec<i32> = match lock.kind {
            Kind::Ofd => {
                let candidates: Vec<i32> = ins
                    .holders
                    .procs
                    .iter()
                    .filter(|p| {
                        p.fds.iter().any(|f| {
                            f.ino == lock.ino
                                && f.locks
                                    .iter()
                                    .any(|l| l.kind == Kind::Ofd && key(l) == key(&lock))
                        })
                    })
                    .map(|p| p.pid)
                    .collect();
                let lines = table
                    .iter()
                    .filter(|l| l.kind == Kind::Ofd && !l.blocked && key(l) == key(&lock))
                    .count();
                let n = handed.entry(key(&lock)).or_default();
                if candidates.len() == lines && !lock.blocked {
                    *n += 1;
                    candidates.get(*n - 1).copied().into_iter().collect()
                } else {
                    ambiguous = candidates.len() > 1;
                    candidates
                }
            }
            _ if lock.pid > 0 => vec![lock.pid as i32],
            _ => Vec::new(),
        };
        let build = owners_build(&ins.holders.procs, &owners);
        let names = locks::short_names(role, &lock, build);
        let meanings = locks::meaning(role, &lock, build);
        ins.locks.push(DecodedLock {
            lock,
            role,
            stale,
            owners,
            ambiguous,
            names,
            meanings,
        });
    }
    ins.locks
        .sort_by_key(|l| (l.role, l.lock.start, l.owners.first().copied()));
    let mut unseen: Vec<(i32, String, String, Option<u32>)> = Vec::new();
    for l in &ins.locks {
        for &pid in &l.owners {
            if !ins.holders.procs.iter().any(|p| p.pid == pid)
                && !unseen.iter().any(|(p, ..)| *p == pid)
            {
                let (comm, cmd, uid) = holders::describe(pid);
                unseen.push((pid, comm, cmd, uid));
            }
        }
    }
    ins.lock_owners_unseen = unseen;
}
