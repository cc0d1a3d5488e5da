//! Who has the database's files open: a scan of `/proc/PID/fd` (which files), `fdinfo`
//! (the open-file-description locks taken through each descriptor), `maps` (the `-shm`
//! mapping and every mapped executable or library), `cmdline` and `status`.
//!
//! Nothing here opens the files the processes hold: the `fd` entries are only
//! `readlink`ed and `stat`ed (a stat of `/proc/PID/fd/N` names the inode without opening
//! it). Mapped libraries are opened read-only to read their symbol tables.

use crate::elf::{self, ElfFacts};
use crate::files::Role;
use crate::locks::{self, KernelLock};
use crate::sys;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One of the database's files as a process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFd {
    pub fd: u32,
    pub role: Role,
    /// The `readlink` text, e.g. `/data/app.db-shm (deleted)`.
    pub link: String,
    pub dev: u64,
    pub ino: u64,
    /// The kernel says the name was unlinked.
    pub deleted: bool,
    /// The inode is the one the path names now.
    pub current: bool,
    /// `flags:` of fdinfo (octal, as open(2) flags).
    pub flags: Option<u32>,
    /// Locks taken through this open file description (fdinfo `lock:` lines).
    pub locks: Vec<KernelLock>,
}

impl OpenFd {
    /// A descriptor of a file that is no longer the one at the path: deleted, or
    /// replaced by another file of the same name.
    pub fn stale(&self) -> bool {
        self.deleted || !self.current
    }

    pub fn access(&self) -> &'static str {
        match self.flags.map(|f| f as i32 & libc::O_ACCMODE) {
            Some(libc::O_RDONLY) => "read-only",
            Some(libc::O_WRONLY) => "write-only",
            Some(libc::O_RDWR) => "read-write",
            _ => "?",
        }
    }
}

/// A mapping of one of the database's files (the `-shm`; the database with mmap_size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub role: Role,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
    pub deleted: bool,
    pub current: bool,
    pub shared: bool,
}

/// An executable or library mapped by a process.
#[derive(Debug, Clone)]
pub struct MappedElf {
    pub path: String,
    /// It is the process's executable (`/proc/PID/exe`), not a library it loaded.
    pub main: bool,
    pub facts: Option<ElfFacts>,
    /// Why it could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub uid: Option<u32>,
    pub comm: String,
    pub cmdline: String,
    /// `/proc/PID/exe` (the executable's path as the process sees it), when readable.
    pub exe: Option<String>,
    pub fds: Vec<OpenFd>,
    pub maps: Vec<FileMap>,
    pub elfs: Vec<MappedElf>,
    /// `/proc/PID/maps` could not be read.
    pub maps_error: Option<String>,
}

impl Proc {
    pub fn sqlite_libs(&self) -> Vec<&MappedElf> {
        self.elfs
            .iter()
            .filter(|e| e.facts.as_ref().is_some_and(|f| f.sqlite.is_some()))
            .collect()
    }

    pub fn walguard_linked(&self) -> Vec<&MappedElf> {
        self.elfs
            .iter()
            .filter(|e| {
                e.facts.as_ref().is_some_and(|f| f.walguard)
                    || Path::new(&e.path)
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libwalguard"))
            })
            .collect()
    }

    /// A Python interpreter: the executable is `python*`, or it maps `libpython*`
    /// (an interpreter embedded in uwsgi, a game, an editor...).
    pub fn is_python(&self) -> bool {
        let base = |p: &str| {
            Path::new(p.strip_suffix(" (deleted)").unwrap_or(p))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        self.exe
            .as_deref()
            .is_some_and(|e| base(e).starts_with("python"))
            || self.elfs.iter().any(|e| {
                let b = base(&e.path);
                b.starts_with("libpython") || (e.main && b.starts_with("python"))
            })
    }

    pub fn has_open(&self, role: Role) -> bool {
        self.fds.iter().any(|f| f.role == role)
    }

    pub fn maps_role(&self, role: Role) -> bool {
        self.maps.iter().any(|m| m.role == role)
    }
}

/// A process whose descriptors could not be seen.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub pid: i32,
    pub uid: Option<u32>,
    pub comm: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub procs: Vec<Proc>,
    pub unseen: Vec<Unseen>,
    /// Processes looked at (all of `/proc`, minus the doctor).
    pub total: usize,
    /// `/proc` itself could not be listed.
    pub error: Option<String>,
    /// `/proc` is mounted with hidepid: other users' processes are not even listed.
    pub hidepid: bool,
}

/// The files to look for: role, canonical path, and the inode the path names now.
#[derive(Debug, Clone)]
pub struct Target {
    pub role: Role,
    pub path: PathBuf,
    pub current: Option<(u64, u64)>,
}

/// The role of a `readlink` target (` (deleted)` stripped), if it is one of ours by name.
fn role_by_name(link_path: &str, targets: &[Target]) -> Option<(Role, bool)> {
    targets.iter().find_map(|t| {
        let p = t.path.to_string_lossy();
        if link_path == p {
            return Some((t.role, true));
        }
        let name = t.path.file_name()?.to_string_lossy().into_owned();
        let base = Path::new(link_path)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        (base == name).then_some((t.role, false))
    })
}

fn read_text(p: &Path) -> io::Result<String> {
    sys::read_proc(p).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn cmdline_of(pid: i32) -> String {
    let b = sys::read_proc(Path::new(&format!("/proc/{pid}/cmdline"))).unwrap_or_default();
    let parts: Vec<String> = b
        .split(|&c| c == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    parts.join(" ")
}

fn comm_of(pid: i32) -> String {
    read_text(Path::new(&format!("/proc/{pid}/comm")))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn uid_of(pid: i32) -> Option<u32> {
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Parses `flags:` of an fdinfo file.
pub fn fdinfo_flags(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub range: String,
    pub perms: String,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
    pub path: String,
    pub deleted: bool,
}

pub fn parse_maps(text: &str) -> Vec<MapLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(ino)) = (
            u32::from_str_radix(maj, 16),
            u32::from_str_radix(min, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        let path = it.next().unwrap_or("").trim_start().to_owned();
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p.to_owned(), true),
            None => (path, false),
        };
        out.push(MapLine {
            range: range.to_owned(),
            perms: perms.to_owned(),
            major,
            minor,
            ino,
            path,
            deleted,
        });
    }
    out
}

/// Reads the ELF facts of a mapped file, caching by (device, inode).
struct ElfCache {
    map: HashMap<(u32, u32, u64), Result<Option<ElfFacts>, String>>,
}

impl ElfCache {
    fn facts(&mut self, pid: i32, m: &MapLine) -> Result<Option<ElfFacts>, String> {
        let key = (m.major, m.minor, m.ino);
        if let Some(v) = self.map.get(&key) {
            return v.clone();
        }
        // map_files names exactly the mapped file, even deleted or in another mount
        // namespace (root only); then the path inside the process's root; then as is.
        let candidates = [
            PathBuf::from(format!("/proc/{pid}/map_files/{}", m.range)),
            PathBuf::from(format!("/proc/{pid}/root{}", m.path)),
            PathBuf::from(&m.path),
        ];
        let mut last_err = String::from("not readable");
        let mut result = None;
        for c in &candidates {
            match sys::open_read(c) {
                Ok(f) => {
                    // The path variant may name a newer file than the mapped one.
                    if let Ok(meta) = f.metadata() {
                        if meta.ino() != m.ino {
                            last_err = "the mapped file was replaced on disk".to_owned();
                            continue;
                        }
                    }
                    result = Some(elf::inspect(&f).map_err(|e| e.to_string()));
                    break;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        let v = result.unwrap_or(Err(last_err));
        self.map.insert(key, v.clone());
        v
    }
}

/// Scans every process (but the doctor) for the target files.
pub fn scan(targets: &[Target]) -> Scan {
    let mut out = Scan::default();
    let me = std::process::id() as i32;
    let entries = match fs::read_dir("/proc") {
        Ok(e) => e,
        Err(e) => {
            out.error = Some(format!("cannot list /proc: {e}"));
            return out;
        }
    };
    out.hidepid = fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                l.contains(" /proc ") && l.contains("hidepid=") && !l.contains("hidepid=0")
            })
        })
        .unwrap_or(false);
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    let mut cache = ElfCache {
        map: HashMap::new(),
    };
    for pid in pids {
        out.total += 1;
        let fd_dir = format!("/proc/{pid}/fd");
        let dir = match fs::read_dir(&fd_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // exited
            Err(e) => {
                // Kernel threads have an empty, readable fd directory; this is a
                // process of another user (or one we may not trace).
                out.unseen.push(Unseen {
                    pid,
                    uid: uid_of(pid),
                    comm: comm_of(pid),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let mut fds = Vec::new();
        for entry in dir.filter_map(Result::ok) {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let link_path = entry.path();
            let Ok(link) = fs::read_link(&link_path) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if !link.starts_with('/') {
                continue; // socket:[..], pipe:[..], anon_inode:...
            }
            let (name, deleted) = match link.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (link.as_str(), false),
            };
            let Some((role, same_path)) = role_by_name(name, targets) else {
                continue;
            };
            let Ok(meta) = fs::metadata(&link_path) else {
                continue; // closed in the meantime
            };
            let current = targets
                .iter()
                .find(|t| t.role == role)
                .and_then(|t| t.current)
                .is_some_and(|c| c == (meta.dev(), meta.ino()));
            // Same file name in another directory, and not our inode: another database.
            if !same_path && !current {
                continue;
            }
            let info =
                read_text(Path::new(&format!("/proc/{pid}/fdinfo/{fd}"))).unwrap_or_default();
            fds.push(OpenFd {
                fd,
                role,
                link: link.clone(),
                dev: meta.dev(),
                ino: meta.ino(),
                deleted,
                current,
                flags: fdinfo_flags(&info),
                locks: locks::parse_fdinfo(&info),
            });
        }
        if fds.is_empty() {
            continue;
        }
        fds.sort_by_key(|f| f.fd);
        out.procs
            .push(inspect_process(pid, fds, targets, &mut cache));
    }
    out
}

/// Reads a holder's command line, mappings and libraries.
fn inspect_process(pid: i32, fds: Vec<OpenFd>, targets: &[Target], cache: &mut ElfCache) -> Proc {
    let mut p = Proc {
        pid,
        uid: uid_of(pid),
        comm: comm_of(pid),
        cmdline: cmdline_of(pid),
        exe: fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned()),
        fds,
        maps: Vec::new(),
        elfs: Vec::new(),
        maps_error: None,
    };
    let maps = match read_text(Path::new(&format!("/proc/{pid}/maps"))) {
        Ok(t) => parse_maps(&t),
        Err(e) => {
            p.maps_error = Some(e.to_string());
            return p;
        }
    };
    // The executable's identity: a stat through the `exe` link names its inode (also
    // when it was deleted or lives in another mount namespace).
    let exe_id = fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (sys::dev_major(m.dev()), sys::dev_minor(m.dev()), m.ino()));
    let mut seen_elf: Vec<(u32, u32, u64)> = Vec::new();
    for m in &maps {
        if m.ino == 0 || !m.path.starts_with('/') {
            continue;
        }
        if let Some((role, _)) = role_by_name(&m.path, targets) {
            let current = targets
                .iter()
                .find(|t| t.role == role)
                .and_then(|t| t.current)
                .is_some_and(|(dev, ino)| {
                    ino == m.ino && sys::dev_major(dev) == m.major && sys::dev_minor(dev) == m.minor
                });
            let fm = FileMap {
                role,
                major: m.major,
                minor: m.minor,
                ino: m.ino,
                deleted: m.deleted,
                current,
                shared: m.perms.ends_with('s'),
            };
            if !p.maps.contains(&fm) {
                p.maps.push(fm);
            }
            continue;
        }
        if !m.perms.contains('x') {
            continue;
        }
        let key = (m.major, m.minor, m.ino);
        if seen_elf.contains(&key) {
            continue;
        }
        seen_elf.push(key);
        let (facts, error) = match cache.facts(pid, m) {
            Ok(f) => (f, None),
            Err(e) => (None, Some(e)),
        };
        let path = if m.deleted {
            format!("{} (deleted)", m.path)
        } else {
            m.path.clone()
        };
        p.elfs.push(MappedElf {
            path,
            main: exe_id == Some(key),
            facts,
            error,
        });
    }
    p
}

/// Command line and name of a process that is not a holder (e.g. the owner of a lock
/// whose descriptors could not be read).
pub fn describe(pid: i32) -> (String, String, Option<u32>) {
    (comm_of(pid), cmdline_of(pid), uid_of(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let text = "7f4438191000-7f4438199000 rw-s 00000000 fe:00 10010726                   /tmp/exp/app.db-shm\n\
                    7f4438191000-7f4438199000 rw-s 00000000 fe:00 10010700                   /tmp/exp/app.db-shm (deleted)\n\
                    7fffac28a000-7fffac2ab000 rw-p 00000000 00:00 0                          [stack]\n\
                    55d0c0000000-55d0c0100000 r-xp 00001000 08:01 4242 /usr/lib/libsqlite3.so.0.8.6\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/tmp/exp/app.db-shm");
        assert_eq!((m[0].major, m[0].minor, m[0].ino), (0xfe, 0, 10_010_726));
        assert!(!m[0].deleted && m[1].deleted);
        assert_eq!(m[1].path, "/tmp/exp/app.db-shm");
        assert_eq!(m[2].path, "[stack]");
        assert_eq!(m[3].perms, "r-xp");
    }

    #[test]
    fn fdinfo_flags_parse() {
        assert_eq!(fdinfo_flags("pos:\t0\nflags:\t02500002\n"), Some(0o2500002));
        assert_eq!(fdinfo_flags("pos:\t0\n"), None);
    }

    #[test]
    fn targets_match_by_path_or_by_name() {
        let targets = vec![
            Target {
                role: Role::Database,
                path: PathBuf::from("/data/app.db"),
                current: None,
            },
            Target {
                role: Role::Shm,
                path: PathBuf::from("/data/app.db-shm"),
                current: None,
            },
        ];
        assert_eq!(
            role_by_name("/data/app.db", &targets),
            Some((Role::Database, true))
        );
        assert_eq!(
            role_by_name("/data/app.db-shm", &targets),
            Some((Role::Shm, true))
        );
        // Another mount namespace (or another directory): same name, caller checks inode.
        assert_eq!(
            role_by_name("/srv/app.db-shm", &targets),
            Some((Role::Shm, false))
        );
        assert_eq!(role_by_name("/data/other.db", &targets), None);
    }

    #[test]
    fn this_process_is_seen_holding_a_file() {
        // The doctor skips itself, so look at a child that holds a file open.
        let dir = std::env::temp_dir().join(format!("walguard-holders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let db = dir.join("held.db");
        std::fs::write(&db, b"x").expect("write");
        let meta = std::fs::metadata(&db).expect("stat");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 7<\"$1\"; echo ready; read line")
            .arg("sh")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready line");
        assert_eq!(line.trim(), "ready");
        let targets = vec![Target {
            role: Role::Database,
            path: db.clone(),
            current: Some((meta.dev(), meta.ino())),
        }];
        let s = scan(&targets);
        drop(child.stdin.take()); // lets the child exit
        let _ = child.wait();
        let p = s
            .procs
            .iter()
            .find(|p| p.pid == child.id() as i32)
            .unwrap_or_else(|| panic!("child not found among {:?}", s.procs));
        assert_eq!(p.fds.len(), 1);
        assert_eq!(p.fds[0].fd, 7);
        assert!(p.fds[0].current && !p.fds[0].stale());
        assert_eq!(p.fds[0].access(), "read-only");
        assert!(p.cmdline.contains("exec 7<"));
        // Its executable is told apart from the libraries it maps.
        let exe = p.exe.as_deref().unwrap_or_default();
        assert!(exe.ends_with("sh"), "{exe}");
        let mains: Vec<&str> = p
            .elfs
            .iter()
            .filter(|e| e.main)
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(mains, vec![exe], "{:?}", p.elfs);
        assert!(!p.is_python());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
