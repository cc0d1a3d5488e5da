//! The report, as text for people and as JSON for monitoring.

use crate::files::{FileState, Role};
use crate::header;
use crate::inspect::{Fatal, HeaderState, Inspection};
use crate::json::J;
use crate::locks::{Build, Kind};
use crate::shm::READMARK_NOT_USED;
use crate::sys;
use crate::verdict::{self, plural, shorten, Verdict};
use std::fmt::Write;

fn user(uid: u32) -> String {
    sys::user_name(uid).unwrap_or_else(|| uid.to_string())
}

fn group(gid: u32) -> String {
    sys::group_name(gid).unwrap_or_else(|| gid.to_string())
}

/// The text report. The first line carries the time; `--watch` compares the rest.
pub fn text(ins: &Inspection, v: &Verdict) -> String {
    let mut s = String::new();
    // The first line changes on every run (time, processes on the machine); `--watch`
    // compares the rest.
    let _ = writeln!(
        s,
        "walguard doctor {} — {} ({} processes looked at)",
        ins.db.display(),
        sys::utc(ins.time),
        ins.holders.total
    );
    let _ = writeln!(
        s,
        "verdict: {} (exit status {})",
        v.status().to_uppercase(),
        v.exit
    );
    let serious: Vec<_> = v
        .findings
        .iter()
        .filter(|f| f.severity > verdict::Severity::Note)
        .collect();
    if serious.is_empty() {
        let _ = writeln!(s, "  no problems found");
    }
    let mut n = 0;
    for f in &v.findings {
        n += 1;
        let _ = writeln!(s, "  {n}. [{}] {}", f.severity.name(), f.message);
        let _ = writeln!(s, "     -> {}", f.action);
    }

    // ---- files ----------------------------------------------------------------------
    let _ = writeln!(s);
    let fs = &ins.fs;
    let _ = writeln!(
        s,
        "files (file system {}{}{})",
        fs.name,
        fs.mount_point
            .as_ref()
            .map_or(String::new(), |m| format!(" mounted on {m}")),
        fs.source
            .as_ref()
            .map_or(String::new(), |m| format!(" from {m}"))
    );
    for f in &ins.files {
        let name = f
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match &f.state {
            FileState::Absent => {
                let _ = writeln!(s, "  {:<10} {name}: absent", f.role.label());
            }
            FileState::Error(e) => {
                let _ = writeln!(s, "  {:<10} {name}: cannot stat: {e}", f.role.label());
            }
            FileState::Present(m) => {
                let link = m
                    .symlink
                    .as_ref()
                    .map_or(String::new(), |t| format!(" -> {}", t.display()));
                let _ = writeln!(
                    s,
                    "  {:<10} {name}{link}: {} bytes, inode {}, mode {}, {}:{}, modified {}{}",
                    f.role.label(),
                    m.size,
                    m.ino,
                    m.perms(),
                    user(m.uid),
                    group(m.gid),
                    sys::utc(m.mtime),
                    match walguard_file_note(ins, f.role) {
                        Some(n) => format!(" — {n}"),
                        None => String::new(),
                    }
                );
            }
        }
    }

    // ---- database header --------------------------------------------------------------
    let _ = writeln!(s);
    let _ = writeln!(s, "database header");
    match &ins.header {
        HeaderState::Empty => {
            let _ = writeln!(s, "  empty file (no header)");
        }
        HeaderState::Truncated(n) => {
            let _ = writeln!(s, "  truncated: {n} of 100 header bytes");
        }
        HeaderState::Ok(h) => {
            let size = ins.meta(Role::Database).map_or(0, |m| m.size);
            let file_pages = size / u64::from(h.page_size.max(1));
            let _ = writeln!(
                s,
                "  magic ok; page size {}; {} pages in the header{}, {} in the file",
                h.page_size,
                h.page_count,
                if h.page_count_trusted() {
                    ""
                } else {
                    " (not trusted)"
                },
                file_pages
            );
            let _ = writeln!(
                s,
                "  journal mode {} (bytes 18/19 = {}/{}); change counter {}; schema cookie {}; {}; freelist {} pages",
                h.journal_mode().name(),
                h.write_version,
                h.read_version,
                h.change_counter,
                h.schema_cookie,
                h.text_encoding_name(),
                h.freelist_count
            );
            let _ = writeln!(
                s,
                "  last written by SQLite {}",
                header::version_string(h.sqlite_version_number)
            );
        }
    }

    // ---- -wal ----------------------------------------------------------------------
    let _ = writeln!(s);
    let _ = writeln!(s, "-wal");
    match &ins.wal {
        None => {
            let _ = writeln!(s, "  absent");
        }
        Some(w) => match &w.header {
            None => {
                let _ = writeln!(s, "  {} bytes: no header", w.file_size);
            }
            Some(h) => {
                let _ = writeln!(
                    s,
                    "  magic 0x{:08x} ({} checksums), format {}, page size {}, checkpoint sequence {}, salts {:08x}/{:08x}",
                    h.magic,
                    if h.big_endian_checksums() { "big-endian" } else { "little-endian" },
                    h.format,
                    h.page_size,
                    h.checkpoint_seq,
                    h.salt.0,
                    h.salt.1
                );
                let _ = writeln!(
                    s,
                    "  header checksum {:08x}/{:08x}: {}",
                    h.stored_checksum.0,
                    h.stored_checksum.1,
                    match h.problem() {
                        None => "ok".to_owned(),
                        Some(p) => p,
                    }
                );
                let last = w.last_commit();
                let _ = writeln!(
                    s,
                    "  {} in the file, {} valid, {}; last valid commit: {}",
                    plural(w.frames_in_file, "frame"),
                    w.valid_frames,
                    plural(w.commits.len() as u64, "commit"),
                    last.map_or("none".to_owned(), |c| format!(
                        "frame {} (database {} pages)",
                        c.frame, c.db_pages
                    ))
                );
                if w.uncommitted_tail() > 0 {
                    let _ = writeln!(
                        s,
                        "  {} valid frames after the last commit (not committed)",
                        w.uncommitted_tail()
                    );
                }
                if let Some((f, p)) = &w.first_invalid {
                    let _ = writeln!(s, "  first invalid frame {f}: {}", p.describe());
                }
                if w.trailing_bytes > 0 {
                    let _ = writeln!(
                        s,
                        "  {} bytes of a partial frame at the end",
                        w.trailing_bytes
                    );
                }
            }
        },
    }

    // ---- -shm ----------------------------------------------------------------------
    let _ = writeln!(s);
    let _ = writeln!(s, "-shm wal-index");
    match &ins.shm {
        None => {
            let _ = writeln!(s, "  absent");
        }
        Some(st) => match &st.parsed {
            None => {
                let _ = writeln!(s, "  {} bytes: no header", st.bytes.len());
            }
            Some(shm) => {
                let h = &shm.copy1;
                let _ = writeln!(
                    s,
                    "  copies {}; version {}, isInit {}, change {}, page size {}, mxFrame {}, {} pages, salts {:08x}/{:08x}, checksum {}",
                    if shm.copies_agree { "agree" } else { "DISAGREE" },
                    h.version,
                    h.is_init,
                    h.change,
                    h.page_size,
                    h.mx_frame,
                    h.n_page,
                    h.salt.0,
                    h.salt.1,
                    if h.checksum_ok() { "ok" } else { "BAD" }
                );
                let marks: Vec<String> = shm
                    .ckpt
                    .read_marks
                    .iter()
                    .map(|&m| {
                        if m == READMARK_NOT_USED {
                            "-".to_owned()
                        } else {
                            m.to_string()
                        }
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "  nBackfill {} (attempted {}), read marks [{}]; {}",
                    shm.ckpt.n_backfill,
                    shm.ckpt.n_backfill_attempted,
                    marks.join(", "),
                    if ins.shm_live() {
                        "in use (mapped / dead-man switch held)"
                    } else {
                        "not in use"
                    }
                );
            }
        },
    }
    for l in &v.consistency {
        let _ = writeln!(s, "  {l}");
    }
    if let Some(j) = &ins.journal {
        let _ = writeln!(s);
        let _ = writeln!(s, "-journal");
        let _ = writeln!(
            s,
            "  {} bytes, magic {}, {}{}",
            j.file_size,
            if j.magic_ok { "ok" } else { "not set" },
            j.records_text(),
            j.initial_pages.map_or(String::new(), |p| format!(
                ", database had {p} pages before"
            ))
        );
    }

    if !v.checkpoint.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "checkpoint");
        for l in &v.checkpoint {
            let _ = writeln!(s, "  {l}");
        }
    }

    // ---- processes --------------------------------------------------------------------
    let _ = writeln!(s);
    let procs = &ins.holders.procs;
    let _ = writeln!(
        s,
        "processes holding these files: {}{}",
        procs.len(),
        if ins.holders.unseen.is_empty() {
            String::new()
        } else {
            format!(
                " ({} other processes could not be seen)",
                ins.holders.unseen.len()
            )
        }
    );
    for p in procs {
        let _ = writeln!(
            s,
            "  {} [{}] {}",
            p.pid,
            p.uid.map_or("?".to_owned(), user),
            shorten(
                &verdict::one_line(if p.cmdline.is_empty() {
                    &p.comm
                } else {
                    &p.cmdline
                }),
                120
            )
        );
        let fds: Vec<String> = p
            .fds
            .iter()
            .map(|f| {
                let mut t = format!("{} fd {} {}", f.role.label(), f.fd, f.access());
                if f.deleted {
                    t.push_str(" DELETED");
                } else if !f.current {
                    t.push_str(" REPLACED");
                }
                t
            })
            .collect();
        let _ = writeln!(s, "      open: {}", fds.join(", "));
        for m in &p.maps {
            let _ = writeln!(
                s,
                "      maps the {} (inode {}{})",
                m.role.label(),
                m.ino,
                if m.deleted {
                    ", deleted"
                } else if !m.current {
                    ", replaced"
                } else {
                    ""
                }
            );
        }
        let mine: Vec<String> = ins
            .locks
            .iter()
            .filter(|l| l.owners.contains(&p.pid))
            .map(|l| {
                format!(
                    "{} {} ({}{}{})",
                    l.role.label(),
                    l.names,
                    l.lock.kind.name(),
                    if l.stale { ", on a stale inode" } else { "" },
                    if l.lock.blocked { ", WAITING" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "      locks: {}",
            if mine.is_empty() {
                "none".to_owned()
            } else {
                mine.join(", ")
            }
        );
        let libs = p.sqlite_libs();
        let lib_list: Vec<String> = libs.iter().map(|l| verdict::lib_text(l)).collect();
        if let Some(e) = &p.maps_error {
            let _ = writeln!(s, "      SQLite: unknown (maps: {e})");
        } else {
            let _ = writeln!(
                s,
                "      SQLite: {}",
                if lib_list.is_empty() {
                    "none found in its mapped files".to_owned()
                } else {
                    lib_list.join("; ")
                }
            );
        }
        let wg = match verdict::walguard_build(ins, p) {
            Some(Build::Earlier) => format!(
                "active on this database (an earlier build: it uses {})",
                Role::Walguard
                    .path_for(&ins.db)
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
            Some(_) => "active on this database".to_owned(),
            None => {
                let base = if p.walguard_linked().is_empty() {
                    "no"
                } else {
                    "linked in, but not used for this database"
                };
                match verdict::reach(ins, p) {
                    Some(r) if r != verdict::Reach::LinkedUnused => {
                        format!("{base} ({})", r.what())
                    }
                    _ => base.to_owned(),
                }
            }
        };
        let _ = writeln!(s, "      walguard: {wg}");
        for e in p.elfs.iter().filter(|e| e.error.is_some()) {
            let _ = writeln!(
                s,
                "      could not read {}: {}",
                e.path,
                e.error.as_deref().unwrap_or("")
            );
        }
    }
    for (pid, comm, cmd, uid) in &ins.lock_owners_unseen {
        let _ = writeln!(
            s,
            "  {pid} [{}] {} (holds locks; its open files could not be seen)",
            uid.map_or("?".to_owned(), user),
            shorten(
                &verdict::one_line(if cmd.is_empty() { comm } else { cmd }),
                120
            )
        );
    }

    // ---- locks ----------------------------------------------------------------------
    let _ = writeln!(s);
    match &ins.locks_error {
        Some(e) => {
            let _ = writeln!(s, "locks: {e}");
        }
        None => {
            let _ = writeln!(s, "locks (/proc/locks): {}", ins.locks.len());
            for l in &ins.locks {
                let owner = match (l.lock.kind, l.owners.is_empty()) {
                    (Kind::Ofd, true) => "OFD, owner not visible".to_owned(),
                    (Kind::Ofd, false) if l.ambiguous => {
                        format!("OFD, shared by or one of {}", join_pids(&l.owners))
                    }
                    (Kind::Ofd, false) => format!("OFD, held by {}", join_pids(&l.owners)),
                    (k, true) => format!("{} pid {}", k.name(), l.lock.pid),
                    (k, false) => format!("{} pid {}", k.name(), join_pids(&l.owners)),
                };
                let _ = writeln!(
                    s,
                    "  {}{} {} {} [{}]: {}",
                    if l.lock.blocked { "WAITING " } else { "" },
                    l.role.label(),
                    if l.lock.write { "WRITE" } else { "READ" },
                    l.lock.range_text(),
                    owner,
                    l.meanings.join("; ")
                        + if l.stale {
                            " (on a deleted or replaced inode)"
                        } else {
                            ""
                        }
                );
            }
        }
    }
    s
}

fn join_pids(p: &[i32]) -> String {
    p.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the `<db>-walguard` file is to the current build (nothing) and to an earlier one.
fn walguard_file_note(ins: &Inspection, role: Role) -> Option<String> {
    if role != Role::Walguard {
        return None;
    }
    let users = verdict::earlier_build_users(ins);
    Some(if users.is_empty() {
        "left by an earlier walguard build, unused by this one".to_owned()
    } else {
        format!(
            "the lock file of an earlier walguard build, in use by process {} (the current build has none)",
            join_pids(&users)
        )
    })
}

/// The message for a database that could not be inspected at all.
pub fn fatal_text(f: &Fatal) -> String {
    format!(
        "walguard doctor: {}: {}\n  -> {}\n(exit status 3: could not inspect; nothing was written)\n",
        f.path, f.message, f.hint
    )
}

pub fn fatal_json(f: &Fatal, time: i64) -> J {
    J::obj([
        ("walguard_doctor", J::num(1)),
        ("time", J::str(sys::utc(time))),
        ("database", J::str(f.path.clone())),
        ("status", J::str("could-not-inspect")),
        ("exit_status", J::num(3)),
        ("error", J::str(f.message.clone())),
        ("action", J::str(f.hint.clone())),
        (
            "findings",
            J::Arr(vec![J::obj([
                ("severity", J::str("incomplete")),
                ("code", J::str("could-not-inspect")),
                ("pids", J::Arr(Vec::new())),
                ("message", J::str(format!("{}: {}", f.path, f.message))),
                ("action", J::str(f.hint.clone())),
            ])]),
        ),
    ])
}

fn pair(p: (u32, u32)) -> J {
    J::Arr(vec![J::num(p.0), J::num(p.1)])
}

/// The JSON report.
pub fn json(ins: &Inspection, v: &Verdict) -> J {
    let files = J::Arr(
        ins.files
            .iter()
            .map(|f| {
                let mut o = vec![
                    ("role".to_owned(), J::str(f.role.label())),
                    ("path".to_owned(), J::str(f.path.to_string_lossy())),
                ];
                match &f.state {
                    FileState::Absent => o.push(("exists".into(), J::Bool(false))),
                    FileState::Error(e) => {
                        o.push(("exists".into(), J::Null));
                        o.push(("error".into(), J::str(e.to_string())));
                    }
                    FileState::Present(m) => {
                        o.push(("exists".into(), J::Bool(true)));
                        if let Some(n) = walguard_file_note(ins, f.role) {
                            o.push(("note".into(), J::str(n)));
                        }
                        o.push(("size".into(), J::num(m.size)));
                        o.push(("inode".into(), J::num(m.ino)));
                        o.push((
                            "device".into(),
                            J::str(format!(
                                "{:02x}:{:02x}",
                                sys::dev_major(m.dev),
                                sys::dev_minor(m.dev)
                            )),
                        ));
                        o.push(("mode".into(), J::str(m.perms())));
                        o.push(("uid".into(), J::num(m.uid)));
                        o.push(("owner".into(), J::str(user(m.uid))));
                        o.push(("gid".into(), J::num(m.gid)));
                        o.push(("mtime".into(), J::num(m.mtime)));
                        o.push((
                            "symlink".into(),
                            J::opt(m.symlink.as_ref(), |t| J::str(t.to_string_lossy())),
                        ));
                    }
                }
                J::Obj(o)
            })
            .collect(),
    );
    let header = match &ins.header {
        HeaderState::Empty => J::obj([("state", J::str("empty"))]),
        HeaderState::Truncated(n) => J::obj([("state", J::str("truncated")), ("bytes", J::num(n))]),
        HeaderState::Ok(h) => J::obj([
            ("state", J::str("ok")),
            ("page_size", J::num(h.page_size)),
            ("page_count", J::num(h.page_count)),
            ("page_count_trusted", J::Bool(h.page_count_trusted())),
            ("journal_mode", J::str(h.journal_mode().name())),
            ("write_version", J::num(h.write_version)),
            ("read_version", J::num(h.read_version)),
            ("change_counter", J::num(h.change_counter)),
            ("schema_cookie", J::num(h.schema_cookie)),
            ("text_encoding", J::str(h.text_encoding_name())),
            (
                "sqlite_version",
                J::str(header::version_string(h.sqlite_version_number)),
            ),
            (
                "violations",
                J::Arr(h.violations().into_iter().map(J::Str).collect()),
            ),
        ]),
    };
    let wal = J::opt(ins.wal.as_ref(), |w| {
        J::obj([
            ("size", J::num(w.file_size)),
            (
                "header",
                J::opt(w.header.as_ref(), |h| {
                    J::obj([
                        ("magic", J::str(format!("0x{:08x}", h.magic))),
                        ("big_endian_checksums", J::Bool(h.big_endian_checksums())),
                        ("format", J::num(h.format)),
                        ("page_size", J::num(h.page_size)),
                        ("checkpoint_seq", J::num(h.checkpoint_seq)),
                        ("salts", pair(h.salt)),
                        ("checksum_ok", J::Bool(h.checksum_ok())),
                        ("problem", J::opt(h.problem(), J::Str)),
                    ])
                }),
            ),
            ("frames_in_file", J::num(w.frames_in_file)),
            ("valid_frames", J::num(w.valid_frames)),
            ("commits", J::num(w.commits.len())),
            (
                "last_commit_frame",
                J::opt(w.last_commit(), |c| J::num(c.frame)),
            ),
            (
                "last_commit_db_pages",
                J::opt(w.last_commit(), |c| J::num(c.db_pages)),
            ),
            ("uncommitted_frames", J::num(w.uncommitted_tail())),
            (
                "first_invalid_frame",
                J::opt(w.first_invalid.as_ref(), |(f, p)| {
                    J::obj([("frame", J::num(f)), ("problem", J::str(p.describe()))])
                }),
            ),
            ("trailing_bytes", J::num(w.trailing_bytes)),
        ])
    });
    let shm = J::opt(ins.shm.as_ref(), |st| {
        J::opt(st.parsed.as_ref(), |s| {
            let h = &s.copy1;
            J::obj([
                ("size", J::num(s.file_size)),
                ("copies_agree", J::Bool(s.copies_agree)),
                ("checksum_ok", J::Bool(h.checksum_ok())),
                ("version", J::num(h.version)),
                ("is_init", J::num(h.is_init)),
                ("change", J::num(h.change)),
                ("page_size", J::num(h.page_size)),
                ("mx_frame", J::num(h.mx_frame)),
                ("n_page", J::num(h.n_page)),
                ("salts", pair(h.salt)),
                ("n_backfill", J::num(s.ckpt.n_backfill)),
                ("n_backfill_attempted", J::num(s.ckpt.n_backfill_attempted)),
                (
                    "read_marks",
                    J::Arr(
                        s.ckpt
                            .read_marks
                            .iter()
                            .map(|&m| {
                                if m == READMARK_NOT_USED {
                                    J::Null
                                } else {
                                    J::num(m)
                                }
                            })
                            .collect(),
                    ),
                ),
                ("in_use", J::Bool(ins.shm_live())),
                ("trusted", J::Bool(s.trusted().is_some())),
            ])
        })
    });
    let journal = J::opt(ins.journal.as_ref(), |j| {
        J::obj([
            ("size", J::num(j.file_size)),
            ("magic_ok", J::Bool(j.magic_ok)),
            ("may_be_hot", J::Bool(j.may_be_hot())),
            ("records", J::opt(j.records, J::num)),
            ("initial_pages", J::opt(j.initial_pages, J::num)),
        ])
    });
    let locks_of = |pid: i32| {
        J::Arr(
            ins.locks
                .iter()
                .filter(|l| l.owners.contains(&pid))
                .map(lock_json)
                .collect(),
        )
    };
    let procs = J::Arr(
        ins.holders
            .procs
            .iter()
            .map(|p| {
                J::obj([
                    ("pid", J::num(p.pid)),
                    ("uid", J::opt(p.uid, J::num)),
                    ("comm", J::str(p.comm.clone())),
                    ("cmdline", J::str(p.cmdline.clone())),
                    (
                        "files",
                        J::Arr(
                            p.fds
                                .iter()
                                .map(|f| {
                                    J::obj([
                                        ("role", J::str(f.role.label())),
                                        ("fd", J::num(f.fd)),
                                        ("inode", J::num(f.ino)),
                                        ("access", J::str(f.access())),
                                        ("deleted", J::Bool(f.deleted)),
                                        ("current", J::Bool(f.current)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    (
                        "maps",
                        J::Arr(
                            p.maps
                                .iter()
                                .map(|m| {
                                    J::obj([
                                        ("role", J::str(m.role.label())),
                                        ("inode", J::num(m.ino)),
                                        ("deleted", J::Bool(m.deleted)),
                                        ("current", J::Bool(m.current)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    ("locks", locks_of(p.pid)),
                    (
                        "sqlite_libraries",
                        J::Arr(
                            p.sqlite_libs()
                                .iter()
                                .map(|l| {
                                    let sq = l.facts.as_ref().and_then(|f| f.sqlite.as_ref());
                                    let ver = sq.and_then(|s| s.version.clone());
                                    J::obj([
                                        ("path", J::str(l.path.clone())),
                                        ("version", J::opt(ver.clone(), J::Str)),
                                        (
                                            "wal_reset_bug",
                                            J::opt(
                                                ver.as_deref().and_then(crate::elf::parse_version),
                                                |v| J::Bool(crate::elf::wal_reset_bug(v)),
                                            ),
                                        ),
                                        (
                                            "source_id",
                                            J::opt(sq.and_then(|s| s.source_id.clone()), J::Str),
                                        ),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    (
                        "walguard",
                        J::str(if verdict::walguard_active(ins, p) {
                            "active"
                        } else if !p.walguard_linked().is_empty() {
                            "linked"
                        } else {
                            "no"
                        }),
                    ),
                    (
                        "walguard_build",
                        J::opt(verdict::walguard_build(ins, p), |b| {
                            J::str(match b {
                                Build::Earlier => "earlier",
                                _ => "current",
                            })
                        }),
                    ),
                    (
                        "guard_with",
                        J::opt(verdict::reach(ins, p), |r| J::str(r.code())),
                    ),
                    ("maps_error", J::opt(p.maps_error.clone(), J::Str)),
                ])
            })
            .collect(),
    );
    let findings = J::Arr(
        v.findings
            .iter()
            .map(|f| {
                J::obj([
                    ("severity", J::str(f.severity.name())),
                    ("code", J::str(f.code)),
                    ("pids", J::Arr(f.pids.iter().map(J::num).collect())),
                    ("message", J::str(f.message.clone())),
                    ("action", J::str(f.action.clone())),
                ])
            })
            .collect(),
    );
    J::obj([
        ("walguard_doctor", J::num(1)),
        ("time", J::str(sys::utc(ins.time))),
        ("database", J::str(ins.db.to_string_lossy())),
        ("argument", J::str(ins.arg.clone())),
        ("doctor_uid", J::num(ins.euid)),
        ("status", J::str(v.status())),
        ("exit_status", J::num(v.exit)),
        ("findings", findings),
        ("files", files),
        (
            "filesystem",
            J::obj([
                ("type", J::str(ins.fs.name.clone())),
                (
                    "magic",
                    J::opt(ins.fs.magic, |m| J::str(format!("0x{m:x}"))),
                ),
                ("mount_point", J::opt(ins.fs.mount_point.clone(), J::Str)),
                (
                    "class",
                    J::str(format!("{:?}", ins.fs.class).to_lowercase()),
                ),
            ]),
        ),
        ("header", header),
        ("wal", wal),
        ("shm", shm),
        ("journal", journal),
        (
            "consistency",
            J::Arr(v.consistency.iter().cloned().map(J::Str).collect()),
        ),
        (
            "checkpoint",
            J::Arr(v.checkpoint.iter().cloned().map(J::Str).collect()),
        ),
        ("processes", procs),
        ("locks", J::Arr(ins.locks.iter().map(lock_json).collect())),
        (
            "unseen_processes",
            J::Arr(
                ins.holders
                    .unseen
                    .iter()
                    .map(|u| {
                        J::obj([
                            ("pid", J::num(u.pid)),
                            ("uid", J::opt(u.uid, J::num)),
                            ("comm", J::str(u.comm.clone())),
                            ("reason", J::str(u.reason.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("locks_error", J::opt(ins.locks_error.clone(), J::Str)),
        ("locks_unsettled", J::Bool(ins.locks_unsettled)),
    ])
}

fn lock_json(l: &crate::inspect::DecodedLock) -> J {
    J::obj([
        ("file", J::str(l.role.label())),
        ("kind", J::str(l.lock.kind.name())),
        ("type", J::str(if l.lock.write { "WRITE" } else { "READ" })),
        ("start", J::num(l.lock.start)),
        ("end", J::opt(l.lock.end, J::num)),
        ("pid", J::num(l.lock.pid)),
        ("owners", J::Arr(l.owners.iter().map(J::num).collect())),
        ("owners_ambiguous", J::Bool(l.ambiguous)),
        ("names", J::str(l.names.clone())),
        (
            "meaning",
            J::Arr(l.meanings.iter().cloned().map(J::Str).collect()),
        ),
        ("stale_inode", J::Bool(l.stale)),
        ("waiting", J::Bool(l.lock.blocked)),
    ])
}
