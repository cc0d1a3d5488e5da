//! The five files of a database (`DB`, `DB-wal`, `DB-shm`, `DB-journal`, `DB-walguard`):
//! what the directory says about each, and what file system they live on.

use crate::sys;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which of the database's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Database,
    Wal,
    Shm,
    Journal,
    Walguard,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Database,
        Role::Wal,
        Role::Shm,
        Role::Journal,
        Role::Walguard,
    ];

    /// The suffix SQLite (or walguard) appends to the database path.
    pub fn suffix(self) -> &'static str {
        match self {
            Role::Database => "",
            Role::Wal => "-wal",
            Role::Shm => "-shm",
            Role::Journal => "-journal",
            Role::Walguard => "-walguard",
        }
    }

    /// Short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Role::Database => "database",
            Role::Wal => "-wal",
            Role::Shm => "-shm",
            Role::Journal => "-journal",
            Role::Walguard => "-walguard",
        }
    }

    /// The path of this file for the database at `db`.
    pub fn path_for(self, db: &Path) -> PathBuf {
        let mut s = db.as_os_str().to_owned();
        s.push(self.suffix());
        PathBuf::from(s)
    }
}

/// What `lstat`/`stat` say about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// The link's target, when the path is a symbolic link (the metadata is the target's).
    pub symlink: Option<PathBuf>,
}

impl Meta {
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// `rw-r--r--`-style permission bits as octal, e.g. `0644`.
    pub fn perms(&self) -> String {
        format!("{:04o}", self.mode & 0o7777)
    }

    /// File type in words, for anything but a regular file.
    pub fn kind(&self) -> &'static str {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => "regular file",
            libc::S_IFDIR => "directory",
            libc::S_IFLNK => "symbolic link",
            libc::S_IFIFO => "FIFO",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR => "character device",
            libc::S_IFBLK => "block device",
            _ => "special file",
        }
    }
}

/// The state of one of the five paths.
#[derive(Debug)]
pub enum FileState {
    Absent,
    Present(Meta),
    /// `stat` failed for another reason than ENOENT (EACCES on the directory, ELOOP...).
    Error(io::Error),
}

#[derive(Debug)]
pub struct FileInfo {
    pub role: Role,
    pub path: PathBuf,
    pub state: FileState,
}

impl FileInfo {
    pub fn meta(&self) -> Option<&Meta> {
        match &self.state {
            FileState::Present(m) => Some(m),
            _ => None,
        }
    }
}

/// `stat` of a path, following a final symbolic link (SQLite does) but remembering it.
pub fn stat_path(path: &Path) -> FileState {
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return FileState::Absent,
        Err(e) => return FileState::Error(e),
    };
    let symlink = if link.file_type().is_symlink() {
        Some(fs::read_link(path).unwrap_or_else(|_| PathBuf::from("?")))
    } else {
        None
    };
    let m = if symlink.is_some() {
        match fs::metadata(path) {
            Ok(m) => m,
            // A dangling link: nothing SQLite could open either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return FileState::Absent,
            Err(e) => return FileState::Error(e),
        }
    } else {
        link
    };
    FileState::Present(Meta {
        size: m.size(),
        dev: m.dev(),
        ino: m.ino(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        symlink,
    })
}

/// The five files of the database at `db` (an absolute, canonical path).
pub fn survey(db: &Path) -> Vec<FileInfo> {
    Role::ALL
        .iter()
        .map(|&role| {
            let path = role.path_for(db);
            let state = stat_path(&path);
            FileInfo { role, path, state }
        })
        .collect()
}

/// The file system a directory lives on.
#[derive(Debug, Clone, Default)]
pub struct FsInfo {
    /// Type name: from `/proc/self/mountinfo` (e.g. `fuse.sshfs`), else from the statfs magic.
    pub name: String,
    pub magic: Option<u64>,
    pub mount_point: Option<String>,
    pub source: Option<String>,
    pub class: FsClass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsClass {
    #[default]
    Local,
    /// NFS, SMB/CIFS, 9p, Ceph, Lustre, AFS, cluster file systems...
    Network,
    Fuse,
    Overlay,
    Unknown,
}

/// The name and class of a statfs magic number (linux/magic.h and file-system sources).
pub fn classify_magic(magic: u64) -> (&'static str, FsClass) {
    use FsClass::*;
    match magic {
        0xEF53 => ("ext4", Local),
        0x5846_5342 => ("xfs", Local),
        0x9123_683E => ("btrfs", Local),
        0x2FC1_2FC1 => ("zfs", Local),
        0x0102_1994 => ("tmpfs", Local),
        0xF2F5_2010 => ("f2fs", Local),
        0x4d44 => ("vfat", Local),
        0x2011_BAB0 => ("exfat", Local),
        0x3153_464a => ("jfs", Local),
        0x5265_4973 => ("reiserfs", Local),
        0x6969 => ("nfs", Network),
        0x517B => ("smb", Network),
        0xFF53_4D42 => ("cifs", Network),
        0xFE53_4D42 => ("smb2", Network),
        0x0102_1997 => ("9p", Network),
        0x00C3_6400 => ("ceph", Network),
        0x0BD0_0BD0 => ("lustre", Network),
        0x5346_414F => ("afs", Network),
        0x6B41_4653 => ("afs", Network),
        0x0116_1970 => ("gfs2", Network),
        0x7461_636f => ("ocfs2", Network),
        0x6573_5546 => ("fuse", Fuse),
        0x794C_7630 => ("overlay", Overlay),
        _ => ("unknown", Unknown),
    }
}

/// The class of a mountinfo file-system type name.
pub fn classify_name(name: &str) -> FsClass {
    let n = name.to_ascii_lowercase();
    if n == "overlay" || n == "overlayfs" || n == "aufs" {
        FsClass::Overlay
    } else if n.starts_with("fuse") {
        // fuse.sshfs, fuse.glusterfs, fuse.s3fs, fuseblk (ntfs-3g: local, but still FUSE)
        FsClass::Fuse
    } else if [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "lustre",
        "afs",
        "gfs2",
        "ocfs2",
        "glusterfs",
        "beegfs",
        "gpfs",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
    ]
    .contains(&n.as_str())
    {
        FsClass::Network
    } else {
        FsClass::Local
    }
}

/// One line of `/proc/self/mountinfo`: (major, minor, mount point, fs type, source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLine {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Parses `/proc/self/mountinfo` text (see proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        let Some((maj, min)) = fields[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        out.push(MountLine {
            major,
            minor,
            mount_point: unescape_mount(fields[4]),
            fstype: fields[sep + 1].to_owned(),
            source: unescape_mount(fields[sep + 2]),
            super_options: fields.get(sep + 3).copied().unwrap_or("").to_owned(),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system of directory `dir` whose device is `dev`.
pub fn filesystem(dir: &Path, dev: u64) -> FsInfo {
    let magic = sys::fs_magic(dir).ok();
    let (magic_name, magic_class) = magic.map_or(("unknown", FsClass::Unknown), classify_magic);
    let mounts = sys::read_proc(Path::new("/proc/self/mountinfo"))
        .map(|b| parse_mountinfo(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let (maj, min) = (sys::dev_major(dev), sys::dev_minor(dev));
    let dir_s = dir.to_string_lossy();
    // The mount with this device whose mount point is the longest prefix of the directory.
    let best = mounts
        .iter()
        .filter(|m| m.major == maj && m.minor == min)
        .filter(|m| {
            dir_s == m.mount_point
                || m.mount_point == "/"
                || dir_s.starts_with(&format!("{}/", m.mount_point))
        })
        .max_by_key(|m| m.mount_point.len());
    match best {
        Some(m) => {
            let mut class = classify_name(&m.fstype);
            if class == FsClass::Local && magic_class != FsClass::Local {
                class = magic_class;
            }
            FsInfo {
                name: m.fstype.clone(),
                magic,
                mount_point: Some(m.mount_point.clone()),
                source: Some(m.source.clone()),
                class,
            }
        }
        None => FsInfo {
            name: magic_name.to_owned(),
            magic,
            mount_point: None,
            source: None,
            class: magic_class,
        },
    }
}

/// Why WAL mode is unsafe on this class of file system (None when it is fine).
pub fn wal_hazard(class: FsClass, name: &str) -> Option<String> {
    match class {
        FsClass::Local | FsClass::Unknown => None,
        FsClass::Network => Some(format!(
            "the database is on a network file system ({name}): WAL mode needs the -shm \
             wal-index in memory shared by every process, which only processes on one host \
             have (each host maps its own copy), and POSIX locks on network file systems are \
             often emulated or lost on reconnect; two hosts writing in WAL mode corrupt the \
             database"
        )),
        FsClass::Fuse => Some(format!(
            "the database is on a FUSE file system ({name}): the -shm wal-index is shared \
             through mmap, which FUSE may not keep coherent between processes, and many FUSE \
             file systems (sshfs, s3fs, gcsfuse) implement POSIX locks per client or not at \
             all; if the file system is shared between hosts, WAL mode across them is unsafe"
        )),
        FsClass::Overlay => Some(format!(
            "the database is on an overlay file system ({name}): a file from a lower layer is \
             copied up on its first write, so processes that opened it before and after (or in \
             containers with different upper layers) can use different copies of the \
             database, -wal and -shm; WAL sharing is only safe among processes that see the \
             same upper layer (better: put the database on a volume, not in the image)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_the_five_files() {
        let db = Path::new("/data/app.db");
        let paths: Vec<String> = Role::ALL
            .iter()
            .map(|r| r.path_for(db).to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/data/app.db",
                "/data/app.db-wal",
                "/data/app.db-shm",
                "/data/app.db-journal",
                "/data/app.db-walguard"
            ]
        );
    }

    #[test]
    fn magic_numbers_classify() {
        assert_eq!(classify_magic(0xEF53), ("ext4", FsClass::Local));
        assert_eq!(classify_magic(0x6969), ("nfs", FsClass::Network));
        assert_eq!(classify_magic(0xFF53_4D42), ("cifs", FsClass::Network));
        assert_eq!(classify_magic(0x6573_5546), ("fuse", FsClass::Fuse));
        assert_eq!(classify_magic(0x794C_7630), ("overlay", FsClass::Overlay));
        assert_eq!(classify_magic(0x1234).1, FsClass::Unknown);
        assert_eq!(classify_name("fuse.sshfs"), FsClass::Fuse);
        assert_eq!(classify_name("nfs4"), FsClass::Network);
        assert_eq!(classify_name("ext4"), FsClass::Local);
        assert!(wal_hazard(FsClass::Network, "nfs4").is_some());
        assert!(wal_hazard(FsClass::Local, "ext4").is_none());
    }

    #[test]
    fn mountinfo_lines_parse() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 0:35 / /mnt/my\\040share rw - nfs4 srv:/export rw,vers=4.2\n\
                    41 22 0:36 / /ovl rw - overlay overlay rw,lowerdir=/l\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].major, m[0].minor), (254, 0));
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[1].mount_point, "/mnt/my share");
        assert_eq!(m[1].fstype, "nfs4");
        assert_eq!(m[1].source, "srv:/export");
        assert_eq!(m[2].fstype, "overlay");
    }

    #[test]
    fn stat_reports_absent_and_present() {
        let dir = std::env::temp_dir().join(format!("walguard-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let db = dir.join("x.db");
        std::fs::write(&db, b"abc").expect("write");
        let s = survey(&db);
        assert!(matches!(&s[0].state, FileState::Present(m) if m.size == 3 && m.is_regular()));
        assert!(matches!(s[1].state, FileState::Absent));
        std::os::unix::fs::symlink(&db, dir.join("y.db")).expect("symlink");
        match stat_path(&dir.join("y.db")) {
            FileState::Present(m) => assert_eq!(m.symlink.as_deref(), Some(db.as_path())),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
