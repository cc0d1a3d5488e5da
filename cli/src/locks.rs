//! The kernel's lock table (`/proc/locks`, and the `lock:` lines of `/proc/PID/fdinfo/N`)
//! and what each locked byte means to SQLite and to walguard.
//!
//! Line format (fs/locks.c, lock_get_status):
//! `ID: [-> ]KIND ADVISORY|MANDATORY READ|WRITE PID MAJ:MIN:INODE START END|EOF`, with the
//! device in hex. `->` marks a waiter blocked on the lock above it. KIND is `POSIX`
//! (fcntl F_SETLK: owned by a process, dropped by any close() of the file in it),
//! `OFDLCK` (F_OFD_SETLK: owned by an open file description; the PID is -1, so the
//! owner is found through the `lock:` lines of `/proc/PID/fdinfo`), `FLOCK`, `LEASE`...
//!
//! [`TABLE`] is the one place that says which bytes mean what. The core engineer may add
//! walguard bytes: add a row here and nothing else changes.

use crate::files::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Posix,
    Ofd,
    Flock,
    Lease,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Posix => "POSIX",
            Kind::Ofd => "OFD",
            Kind::Flock => "FLOCK",
            Kind::Lease => "LEASE",
            Kind::Other => "other",
        }
    }
}

/// One lock (or waiter) from the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelLock {
    pub kind: Kind,
    /// A waiter (`->`), not a holder.
    pub blocked: bool,
    pub write: bool,
    /// -1 for OFD locks; 0 when the owner is outside this pid namespace.
    pub pid: i64,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
    pub start: u64,
    /// Inclusive; None means "to the end of the file" (EOF).
    pub end: Option<u64>,
}

impl KernelLock {
    /// Parses one line of `/proc/locks` (or the part after `lock:\t` in fdinfo).
    pub fn parse(line: &str) -> Option<KernelLock> {
        let mut t = line.split_whitespace().peekable();
        let id = t.next()?;
        if !id.ends_with(':') {
            return None;
        }
        let mut blocked = false;
        let mut kind_tok = t.next()?;
        if let Some(rest) = kind_tok.strip_prefix("->") {
            blocked = true;
            kind_tok = if rest.is_empty() { t.next()? } else { rest };
        }
        let kind = match kind_tok {
            "POSIX" => Kind::Posix,
            "OFDLCK" => Kind::Ofd,
            "FLOCK" => Kind::Flock,
            "LEASE" | "DELEG" => Kind::Lease,
            _ => Kind::Other,
        };
        let _mode = t.next()?; // ADVISORY / MANDATORY / ACTIVE / BREAKING...
        let write = match t.next()? {
            "WRITE" => true,
            "READ" => false,
            _ => return None, // UNLCK and lease states: not a lock on bytes
        };
        let pid: i64 = t.next()?.parse().ok()?;
        let dev = t.next()?;
        let mut parts = dev.split(':');
        let major = u32::from_str_radix(parts.next()?, 16).ok()?;
        let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
        let ino: u64 = parts.next()?.parse().ok()?;
        let start: u64 = t.next()?.parse().ok()?;
        let end = match t.next()? {
            "EOF" => None,
            e => Some(e.parse().ok()?),
        };
        Some(KernelLock {
            kind,
            blocked,
            write,
            pid,
            major,
            minor,
            ino,
            start,
            end,
        })
    }

    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let last = start + len - 1;
        self.start <= last && self.end.is_none_or(|e| e >= start)
    }

    pub fn covers(&self, start: u64, len: u64) -> bool {
        self.start <= start && self.end.is_none_or(|e| e >= start + len - 1)
    }

    /// `READ 1073741826..1073742335` style range text.
    pub fn range_text(&self) -> String {
        match self.end {
            Some(e) if e == self.start => format!("byte {}", self.start),
            Some(e) => format!("bytes {}..{}", self.start, e),
            None => format!("bytes {}..EOF", self.start),
        }
    }
}

/// Parses the whole of `/proc/locks`.
pub fn parse_table(text: &str) -> Vec<KernelLock> {
    text.lines().filter_map(KernelLock::parse).collect()
}

/// Parses the `lock:` lines of one `/proc/PID/fdinfo/N`.
pub fn parse_fdinfo(text: &str) -> Vec<KernelLock> {
    text.lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .filter_map(|l| KernelLock::parse(l.trim_start()))
        .collect()
}

/// One named lock range of one of the database's files.
#[derive(Debug, Clone, Copy)]
pub struct LockByte {
    pub file: Role,
    pub start: u64,
    pub len: u64,
    pub name: &'static str,
    /// What a read (shared) lock on it means.
    pub read: &'static str,
    /// What a write (exclusive) lock on it means.
    pub write: &'static str,
    /// What an earlier walguard build meant by an exclusive lock on the same byte, where
    /// that differs (PENDING_BYTE + 512/513).
    pub earlier: Option<EarlierUse>,
}

/// The earlier build's name and meaning of an exclusive lock on a byte.
#[derive(Debug, Clone, Copy)]
pub struct EarlierUse {
    pub name: &'static str,
    pub write: &'static str,
}

/// Which walguard build the owner of a lock runs. The current build has no
/// `<db>-walguard` file; an earlier build holds it open for as long as it uses the
/// database, and used PENDING_BYTE + 512/513 as mirrors of the WAL WRITE/CKPT locks.
/// During a rolling upgrade both run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Current,
    Earlier,
    /// No visible owner, or owners of both builds: both meanings are given.
    Unknown,
}

const PENDING: u64 = 0x4000_0000;

/// The decoding table: every byte SQLite's unix VFS and walguard lock.
///
/// - Database (os_unix.c): PENDING_BYTE 0x40000000, RESERVED_BYTE 0x40000001, SHARED range
///   0x40000002..+510. SHARED = read lock on the range; EXCLUSIVE = write lock on it.
///   walguard mirrors SHARED as an OFD read lock on the same range, and uses two bytes
///   past SQLite's range:
///   - PENDING_BYTE + 513, **the gate**: a shared OFD lock held by every walguard process
///     that maps the current WAL index (for as long as it maps it, or per write
///     transaction and checkpoint when it runs no watcher thread); exclusive while a
///     process sets up a new WAL index or tears it down at last close. An earlier build
///     used this byte as its mirror of WAL CKPT (exclusive during its checkpoints and
///     recoveries): that is why the two builds exclude each other.
///   - PENDING_BYTE + 512: exclusive while the current build sets up a new WAL index; an
///     earlier build's mirror of WAL WRITE (exclusive per write transaction).
/// - `-shm` (wal.c/os_unix.c): WAL locks at 120 + i (WRITE, CKPT, RECOVER, READ-0..4),
///   the dead-man switch (DMS) at 128. SQLite's unix VFS takes them as POSIX locks; the
///   current walguard serves the `-shm` of its connections itself and takes the same
///   bytes as OFD locks on its own descriptor (the kind column tells them apart).
/// - `<db>-walguard` (earlier builds only; the current build neither creates nor uses it):
///   presence at 0, life-cycle at 1, mirrors of the WAL WRITE and CKPT locks at 120/121.
pub const TABLE: &[LockByte] = &[
    LockByte {
        file: Role::Database,
        start: PENDING,
        len: 1,
        name: "PENDING",
        read: "taking SHARED (held for an instant)",
        write: "PENDING: a writer waits for readers to leave so it can take EXCLUSIVE",
        earlier: None,
    },
    LockByte {
        file: Role::Database,
        start: PENDING + 1,
        len: 1,
        name: "RESERVED",
        read: "RESERVED byte read-locked (not done by SQLite)",
        write: "RESERVED: a rollback-mode write transaction is open",
        earlier: None,
    },
    LockByte {
        file: Role::Database,
        start: PENDING + 2,
        len: 510,
        name: "SHARED",
        read: "SHARED: a connection is open on it (WAL mode) or reading (rollback mode)",
        write: "EXCLUSIVE: writing the database file (rollback commit, last-close checkpoint, or locking_mode=EXCLUSIVE)",
        earlier: None,
    },
    LockByte {
        file: Role::Database,
        start: PENDING + 512,
        len: 1,
        name: "walguard set-up",
        read: "walguard byte PENDING+512 read-locked (not done by walguard)",
        write: "walguard set-up: a walguard process sets up a new WAL index",
        earlier: Some(EarlierUse {
            name: "walguard WRITE mirror",
            write: "walguard mirror of WAL WRITE on the database (earlier build): a walguard writer holds the write lock",
        }),
    },
    LockByte {
        file: Role::Database,
        start: PENDING + 513,
        len: 1,
        name: "walguard gate",
        read: "walguard gate (shared): this walguard process maps the current WAL index",
        write: "walguard gate exclusive: a walguard process sets up a new WAL index or tears it down at last close",
        earlier: Some(EarlierUse {
            name: "walguard CKPT mirror",
            write: "walguard mirror of WAL CKPT on the database (earlier build): a walguard checkpoint or recovery is running",
        }),
    },
    LockByte {
        file: Role::Shm,
        start: 120,
        len: 1,
        name: "WAL WRITE",
        read: "WAL WRITE byte read-locked (not done by SQLite)",
        write: "WAL WRITE: a write transaction is open",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 121,
        len: 1,
        name: "WAL CKPT",
        read: "WAL CKPT byte read-locked (not done by SQLite)",
        write: "WAL CKPT: a checkpoint is running",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 122,
        len: 1,
        name: "WAL RECOVER",
        read: "WAL RECOVER byte read-locked (not done by SQLite)",
        write: "WAL RECOVER: the wal-index is being rebuilt from the -wal",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 123,
        len: 1,
        name: "READ-0",
        read: "READ-0: a reader reads the database file only (WAL fully checkpointed)",
        write: "READ-0 exclusive: recovery or a WAL restart",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 124,
        len: 1,
        name: "READ-1",
        read: "READ-1: a read transaction uses read mark 1",
        write: "READ-1 exclusive: setting read mark 1, or a checkpoint waiting for readers",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 125,
        len: 1,
        name: "READ-2",
        read: "READ-2: a read transaction uses read mark 2",
        write: "READ-2 exclusive: setting read mark 2, or a checkpoint waiting for readers",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 126,
        len: 1,
        name: "READ-3",
        read: "READ-3: a read transaction uses read mark 3",
        write: "READ-3 exclusive: setting read mark 3, or a checkpoint waiting for readers",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 127,
        len: 1,
        name: "READ-4",
        read: "READ-4: a read transaction uses read mark 4",
        write: "READ-4 exclusive: setting read mark 4, or a checkpoint waiting for readers",
        earlier: None,
    },
    LockByte {
        file: Role::Shm,
        start: 128,
        len: 1,
        name: "DMS",
        read: "dead-man switch: this process maps the -shm",
        write: "dead-man switch exclusive: the first process is initialising the -shm",
        earlier: None,
    },
    LockByte {
        file: Role::Walguard,
        start: 0,
        len: 1,
        name: "walguard presence",
        read: "walguard presence (earlier build): a walguard instance uses the WAL index",
        write: "walguard presence probed exclusively (earlier build; transient)",
        earlier: None,
    },
    LockByte {
        file: Role::Walguard,
        start: 1,
        len: 1,
        name: "walguard life-cycle",
        read: "walguard life-cycle byte read-locked (not done by walguard)",
        write: "walguard life-cycle (earlier build): WAL set-up or tear-down in progress",
        earlier: None,
    },
    LockByte {
        file: Role::Walguard,
        start: 120,
        len: 1,
        name: "walguard WRITE mirror",
        read: "walguard WRITE mirror read-locked (not done by walguard)",
        write: "walguard mirror of WAL WRITE (earlier build): a walguard writer holds the write lock",
        earlier: None,
    },
    LockByte {
        file: Role::Walguard,
        start: 121,
        len: 1,
        name: "walguard CKPT mirror",
        read: "walguard CKPT mirror read-locked (not done by walguard)",
        write: "walguard mirror of WAL CKPT (earlier build): a walguard checkpoint is running",
        earlier: None,
    },
];

impl LockByte {
    /// The name and meaning of a lock on this byte held by a process of `build`.
    fn text(&self, write: bool, build: Build) -> (String, String) {
        let now = (self.name, if write { self.write } else { self.read });
        match (self.earlier, write, build) {
            (Some(e), true, Build::Earlier) => (e.name.to_owned(), e.write.to_owned()),
            (Some(e), true, Build::Unknown) => (
                format!("{}/{}", now.0, e.name),
                format!("{}; or, from an earlier walguard build: {}", now.1, e.write),
            ),
            _ => (now.0.to_owned(), now.1.to_owned()),
        }
    }
}

/// The named bytes one kernel lock on `file` covers (the kernel merges adjacent locks of
/// one owner, so one line can carry several, e.g. RESERVED + EXCLUSIVE).
pub fn decode(file: Role, lock: &KernelLock) -> Vec<&'static LockByte> {
    TABLE
        .iter()
        .filter(|b| b.file == file && lock.overlaps(b.start, b.len))
        .collect()
}

/// The row named `name` of `file` (panics only on a typo in this crate's own names,
/// which the unit tests exercise).
pub fn byte(file: Role, name: &str) -> &'static LockByte {
    TABLE
        .iter()
        .find(|b| b.file == file && b.name == name)
        .unwrap_or_else(|| panic!("lock table has no {name} on {file:?}"))
}

/// One line of meaning for a lock: e.g. `SHARED: a connection is open on it`.
pub fn meaning(file: Role, lock: &KernelLock, build: Build) -> Vec<String> {
    let bytes = decode(file, lock);
    if bytes.is_empty() {
        return vec![format!(
            "{} {} (not a byte SQLite or walguard uses)",
            if lock.write {
                "write lock on"
            } else {
                "read lock on"
            },
            lock.range_text()
        )];
    }
    bytes
        .iter()
        .map(|b| {
            let partial = if lock.covers(b.start, b.len) {
                ""
            } else {
                " (part of the range)"
            };
            format!("{}{partial}", b.text(lock.write, build).1)
        })
        .collect()
}

/// Short names, e.g. `EXCLUSIVE` / `SHARED` / `WAL WRITE+CKPT`.
pub fn short_names(file: Role, lock: &KernelLock, build: Build) -> String {
    let bytes = decode(file, lock);
    if bytes.is_empty() {
        return lock.range_text();
    }
    bytes
        .iter()
        .map(|b| match (b.name, lock.write) {
            ("SHARED", true) => "EXCLUSIVE".to_owned(),
            ("DMS", true) => "DMS (exclusive)".to_owned(),
            ("PENDING", false) => "PENDING (read: taking SHARED)".to_owned(),
            _ => b.text(lock.write, build).0,
        })
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks_lines() {
        let text = "1: OFDLCK ADVISORY  READ -1 fe:00:10010727 0 0\n\
                    2: POSIX  ADVISORY  READ 3831 fe:00:10010726 128 128\n\
                    3: POSIX  ADVISORY  WRITE 3831 08:01:10010724 1073741825 1073742335\n\
                    3: -> POSIX  ADVISORY  WRITE 4000 08:01:10010724 1073741826 1073742335\n\
                    4: FLOCK  ADVISORY  WRITE 77 00:2e:19 0 EOF\n\
                    5: LEASE  ACTIVE    READ 88 00:2e:20 0 EOF\n\
                    6: DELEG  ACTIVE    UNLCK 88 00:2e:21 0 EOF\n\
                    nonsense\n";
        let t = parse_table(text);
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].kind, Kind::Ofd);
        assert_eq!(t[0].pid, -1);
        assert_eq!((t[0].major, t[0].minor, t[0].ino), (0xfe, 0, 10_010_727));
        assert_eq!((t[1].start, t[1].end), (128, Some(128)));
        assert!(t[2].write && !t[2].blocked);
        assert_eq!((t[2].major, t[2].minor), (8, 1));
        assert!(t[3].blocked && t[3].pid == 4000);
        assert_eq!(t[4].kind, Kind::Flock);
        assert_eq!(t[4].end, None);
        assert_eq!(t[5].kind, Kind::Lease);
    }

    #[test]
    fn parses_fdinfo_lock_lines() {
        let text = "pos:\t0\nflags:\t02500002\nmnt_id:\t27\nino:\t10010726\n\
                    lock:\t1: POSIX  ADVISORY  READ 3831 fe:00:10010726 128 128\n\
                    lock:\t2: OFDLCK ADVISORY  READ -1 fe:00:10010726 124 124\n";
        let l = parse_fdinfo(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].kind, Kind::Ofd);
        assert_eq!(l[1].start, 124);
    }

    fn lock(write: bool, start: u64, end: u64) -> KernelLock {
        KernelLock {
            kind: Kind::Posix,
            blocked: false,
            write,
            pid: 1,
            major: 0,
            minor: 0,
            ino: 1,
            start,
            end: Some(end),
        }
    }

    #[test]
    fn database_locks_decode_in_sqlite_terms() {
        let shared = lock(false, 0x4000_0002, 0x4000_0002 + 509);
        assert_eq!(
            short_names(Role::Database, &shared, Build::Current),
            "SHARED"
        );
        let excl = lock(true, 0x4000_0002, 0x4000_0002 + 509);
        assert_eq!(
            short_names(Role::Database, &excl, Build::Current),
            "EXCLUSIVE"
        );
        // The kernel merges RESERVED and EXCLUSIVE of one process into one line.
        let merged = lock(true, 0x4000_0000, 0x4000_0002 + 509);
        assert_eq!(
            short_names(Role::Database, &merged, Build::Current),
            "PENDING+RESERVED+EXCLUSIVE"
        );
        let reserved = lock(true, 0x4000_0001, 0x4000_0001);
        assert_eq!(
            short_names(Role::Database, &reserved, Build::Current),
            "RESERVED"
        );
        assert!(meaning(Role::Database, &reserved, Build::Current)[0].contains("write transaction"));
        let other = lock(true, 0, 10);
        assert!(meaning(Role::Database, &other, Build::Current)[0].contains("not a byte"));
    }

    #[test]
    fn shm_and_walguard_locks_decode() {
        assert_eq!(
            short_names(Role::Shm, &lock(true, 120, 121), Build::Current),
            "WAL WRITE+WAL CKPT"
        );
        assert_eq!(
            short_names(Role::Shm, &lock(false, 127, 128), Build::Current),
            "READ-4+DMS"
        );
        assert_eq!(
            short_names(Role::Shm, &lock(false, 128, 128), Build::Current),
            "DMS"
        );
        assert_eq!(
            short_names(Role::Shm, &lock(true, 128, 128), Build::Current),
            "DMS (exclusive)"
        );
        assert_eq!(
            short_names(Role::Walguard, &lock(false, 0, 0), Build::Current),
            "walguard presence"
        );
        assert_eq!(
            short_names(Role::Walguard, &lock(true, 1, 1), Build::Current),
            "walguard life-cycle"
        );
        assert_eq!(
            short_names(Role::Walguard, &lock(true, 120, 121), Build::Current),
            "walguard WRITE mirror+walguard CKPT mirror"
        );
        // A whole-file lock covers all nine -shm lock bytes; a lock on part of the
        // SHARED range says so.
        let eof = KernelLock {
            end: None,
            ..lock(true, 0, 0)
        };
        assert_eq!(meaning(Role::Shm, &eof, Build::Current).len(), 9);
        let part = lock(false, 0x4000_0010, 0x4000_0020);
        assert!(meaning(Role::Database, &part, Build::Current)[0].contains("part of the range"));
        assert_eq!(byte(Role::Shm, "DMS").start, 128);
        assert_eq!(byte(Role::Database, "SHARED").len, 510);
        assert_eq!(byte(Role::Walguard, "walguard life-cycle").start, 1);
    }

    #[test]
    fn the_gate_and_set_up_bytes_decode_for_both_builds() {
        let gate = 0x4000_0201;
        assert_eq!(byte(Role::Database, "walguard gate").start, gate);
        assert_eq!(byte(Role::Database, "walguard set-up").start, gate - 1);
        let shared = KernelLock {
            kind: Kind::Ofd,
            ..lock(false, gate, gate)
        };
        // Only the current build takes the gate shared, whoever the owner is.
        for build in [Build::Current, Build::Earlier, Build::Unknown] {
            assert_eq!(short_names(Role::Database, &shared, build), "walguard gate");
            assert!(
                meaning(Role::Database, &shared, build)[0].contains("maps the current WAL index")
            );
        }
        let excl = lock(true, gate, gate);
        assert_eq!(
            short_names(Role::Database, &excl, Build::Current),
            "walguard gate"
        );
        assert!(meaning(Role::Database, &excl, Build::Current)[0].contains("tears it down"));
        assert_eq!(
            short_names(Role::Database, &excl, Build::Earlier),
            "walguard CKPT mirror"
        );
        assert!(meaning(Role::Database, &excl, Build::Earlier)[0].contains("checkpoint"));
        let both = meaning(Role::Database, &excl, Build::Unknown);
        assert!(both[0].contains("tears it down") && both[0].contains("earlier walguard build"));
        assert_eq!(
            short_names(Role::Database, &excl, Build::Unknown),
            "walguard gate/walguard CKPT mirror"
        );
        // The earlier build's WRITE mirror and the current build's set-up, merged with
        // the gate in one kernel line (one owner holding both exclusively).
        let set_up = lock(true, gate - 1, gate);
        assert_eq!(
            short_names(Role::Database, &set_up, Build::Current),
            "walguard set-up+walguard gate"
        );
        assert_eq!(
            short_names(Role::Database, &set_up, Build::Earlier),
            "walguard WRITE mirror+walguard CKPT mirror"
        );
        // SQLite's SHARED range does not reach the walguard bytes.
        let shared_range = lock(false, 0x4000_0002, 0x4000_0002 + 509);
        assert_eq!(decode(Role::Database, &shared_range).len(), 1);
        // The earlier build's lock file rows say whose they are.
        assert!(
            meaning(Role::Walguard, &lock(false, 0, 0), Build::Unknown)[0]
                .contains("earlier build")
        );
    }
}
