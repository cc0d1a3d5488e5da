//! Judging an inspection: a short list of findings, worst first, each with what to do,
//! and the exit status.
//!
//! Exit status: 0 healthy (notes only), 1 warnings, 2 damage or a live split,
//! 3 could not inspect (the database itself, or a part of the picture: another user's
//! processes, `/proc/locks`, a sidecar that cannot be read). Damage outranks "could not
//! inspect": what was seen is bad whatever the rest holds. Nothing unseen is guessed.

use crate::elf;
use crate::files::{self, FsClass, Role};
use crate::header::JournalMode;
use crate::holders::Proc;
use crate::inspect::{HeaderState, Inspection};
use crate::locks::{Build, Kind};
use crate::shm;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Note,
    Warning,
    Incomplete,
    Damage,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Incomplete => "incomplete",
            Severity::Damage => "damage",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    /// A stable identifier for monitoring (e.g. `deleted-sidecar`).
    pub code: &'static str,
    pub pids: Vec<i32>,
    pub message: String,
    pub action: String,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// What the `-shm` and `-wal` say about each other.
    pub consistency: Vec<String>,
    /// What a checkpoint would do now.
    pub checkpoint: Vec<String>,
    pub exit: i32,
}

impl Verdict {
    pub fn status(&self) -> &'static str {
        status_name(self.exit)
    }
}

pub fn status_name(exit: i32) -> &'static str {
    match exit {
        0 => "healthy",
        1 => "warnings",
        2 => "damage",
        _ => "incomplete",
    }
}

struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn add(
        &mut self,
        severity: Severity,
        code: &'static str,
        pids: Vec<i32>,
        message: String,
        action: &str,
    ) {
        self.findings.push(Finding {
            severity,
            code,
            pids,
            message,
            action: action.to_owned(),
        });
    }
}

/// `4711 (gateway --port 80)`: pid and a short command line.
pub fn who(p: &Proc) -> String {
    format!("process {} ({})", p.pid, short_command(&p.comm, &p.cmdline))
}

/// The command line with the program's directory left out, at most 80 characters.
pub fn short_command(comm: &str, cmdline: &str) -> String {
    let (prog, rest) = cmdline.split_once(' ').unwrap_or((cmdline, ""));
    if prog.is_empty() {
        return comm.to_owned();
    }
    let base = prog.rsplit('/').next().unwrap_or(prog);
    shorten(one_line(&format!("{base} {rest}")).trim_end(), 80)
}

/// A command line on one line of text (a `python3 -c` script spans several).
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

/// `1 frame`, `2 frames`.
pub fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn pid_list(pids: &[i32]) -> String {
    let v: Vec<String> = pids.iter().take(12).map(|p| p.to_string()).collect();
    let more = if pids.len() > 12 {
        format!(" and {} more", pids.len() - 12)
    } else {
        String::new()
    };
    format!("{}{more}", v.join(", "))
}

pub fn judge(ins: &Inspection) -> Verdict {
    let mut out = Out {
        findings: Vec::new(),
    };
    let mut consistency = Vec::new();
    let mut checkpoint = Vec::new();
    let live = ins.shm_live();
    let wal_mode = ins.wal_mode();

    header_findings(ins, &mut out);
    wal_findings(ins, live, &mut out);
    shm_findings(ins, live, &mut out, &mut consistency);
    journal_findings(ins, wal_mode, &mut out);
    file_findings(ins, wal_mode, &mut out);
    holder_findings(ins, wal_mode, &mut out);
    checkpoint_plan(ins, live, &mut checkpoint);

    // Worst first; within a severity, a split first (it is what to act on before
    // anything else), then in the order found.
    out.findings.sort_by_key(|f| {
        (
            std::cmp::Reverse(f.severity),
            u8::from(f.code != "deleted-sidecar"),
        )
    });
    let worst = out.findings.iter().map(|f| f.severity).max();
    let exit = match worst {
        Some(Severity::Damage) => 2,
        Some(Severity::Incomplete) => 3,
        Some(Severity::Warning) => 1,
        _ => 0,
    };
    Verdict {
        findings: out.findings,
        consistency,
        checkpoint,
        exit,
    }
}

const BACKUP_FIRST: &str = "copy the database with its -wal, -shm and -journal (all together, \
    while no process writes) before anything else";

fn header_findings(ins: &Inspection, out: &mut Out) {
    let size = ins.meta(Role::Database).map_or(0, |m| m.size);
    match &ins.header {
        HeaderState::Empty => {
            let commits = ins.wal.as_ref().map_or(0, |w| w.commits.len());
            if commits > 0 {
                out.add(
                    Severity::Damage,
                    "empty-database-with-wal",
                    vec![],
                    format!(
                        "the database file is empty (0 bytes) but its -wal holds {commits} \
                         committed transactions: SQLite deletes the -wal of an empty database \
                         when it opens it"
                    ),
                    &format!(
                        "{BACKUP_FIRST}; do not open it with SQLite; restore the database file"
                    ),
                );
            } else {
                out.add(
                    Severity::Note,
                    "empty-database",
                    vec![],
                    "the database file is empty (0 bytes): SQLite treats it as a new, empty database".into(),
                    "nothing to do, unless it should hold data (then restore it)",
                );
            }
        }
        HeaderState::Truncated(len) => out.add(
            Severity::Damage,
            "truncated",
            vec![],
            format!(
                "the database file is truncated: {len} bytes, shorter than the 100-byte header \
                 (the smallest database is one 512-byte page)"
            ),
            &format!("{BACKUP_FIRST}; restore it from a backup"),
        ),
        HeaderState::Ok(h) => {
            let v = h.violations();
            if !v.is_empty() {
                out.add(
                    Severity::Damage,
                    "bad-header",
                    vec![],
                    format!("the database header is invalid: {}", v.join("; ")),
                    &format!("{BACKUP_FIRST}; restore it from a backup, or try `sqlite3 DB .recover` on a copy"),
                );
            }
            if let Some(n) = h.version_bytes_note() {
                out.add(
                    Severity::Warning,
                    "format-version",
                    vec![],
                    n,
                    "use a SQLite that knows this format",
                );
            }
            if !h.page_size_valid() {
                return;
            }
            let ps = u64::from(h.page_size);
            if size % ps != 0 {
                out.add(
                    Severity::Warning,
                    "partial-page",
                    vec![],
                    format!(
                        "the file size ({size} bytes) is not a multiple of the page size ({ps}): \
                         the last {} bytes are a partial page (a torn write or a copy cut short)",
                        size % ps
                    ),
                    "run PRAGMA integrity_check on a copy",
                );
            }
            let file_pages = size / ps;
            if h.page_count_trusted() {
                let claimed = u64::from(h.page_count);
                if claimed > file_pages {
                    torn_extend(ins, claimed, file_pages, out);
                } else if claimed < file_pages {
                    out.add(
                        Severity::Note,
                        "extra-pages",
                        vec![],
                        format!(
                            "the file holds {file_pages} pages, the header counts {claimed}: the \
                             {} pages beyond are unused (left by a checkpoint that shrank the \
                             database, or preallocated)",
                            file_pages - claimed
                        ),
                        "nothing to do",
                    );
                }
            } else if h.page_count != 0 {
                out.add(
                    Severity::Note,
                    "size-not-in-header",
                    vec![],
                    format!(
                        "the in-header page count ({}) is not valid (change counter {} != \
                         version-valid-for {}: last written by a library older than 3.7.0); \
                         SQLite uses the file size, so a torn extend cannot be detected from the header",
                        h.page_count, h.change_counter, h.version_valid_for
                    ),
                    "nothing to do",
                );
            }
        }
    }
}

fn torn_extend(ins: &Inspection, claimed: u64, file_pages: u64, out: &mut Out) {
    // In WAL mode the missing pages may still be in the -wal (an interrupted
    // checkpoint): then the next checkpoint writes them.
    let wal = ins.wal.as_ref().filter(|w| w.usable());
    let latest = wal
        .and_then(|w| w.last_commit())
        .map_or(claimed, |c| u64::from(c.db_pages).min(claimed));
    // Both counts come from the files and may be anything up to 2^32 pages: neither
    // sizes an allocation or a loop. The set holds what the -wal really contains, and the
    // missing pages are only walked when there are no more of them than it holds.
    let committed: std::collections::HashSet<u32> = wal
        .map(|w| {
            w.pages[..w.last_commit_frame() as usize]
                .iter()
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let missing = latest.saturating_sub(file_pages);
    let covered = wal.is_some()
        && missing <= committed.len() as u64
        && (file_pages + 1..=latest)
            .all(|p| u32::try_from(p).is_ok_and(|p| committed.contains(&p)));
    if covered {
        out.add(
            Severity::Warning,
            "short-file-covered-by-wal",
            vec![],
            format!(
                "the header counts {claimed} pages but the file holds {file_pages}; every missing \
                 page that is still in use is in the -wal (an interrupted checkpoint): the next \
                 checkpoint writes them"
            ),
            "keep the -wal; let a normal connection checkpoint (PRAGMA wal_checkpoint)",
        );
    } else {
        out.add(
            Severity::Damage,
            "torn-extend",
            vec![],
            format!(
                "torn extend: the header counts {claimed} pages but the file holds only \
                 {file_pages}; pages {}..{claimed} are missing (a crash while the file grew, \
                 with a lying fsync, a full disk, or a copy taken mid-write)",
                file_pages + 1
            ),
            &format!(
                "{BACKUP_FIRST}; do not write to it; restore from a backup or run \
                 `sqlite3 DB .recover` on a copy; walguard (G5) catches this at commit"
            ),
        );
    }
}

fn wal_findings(ins: &Inspection, live: bool, out: &mut Out) {
    let Some(w) = ins.wal.as_ref() else {
        return;
    };
    let db_ps = ins.db_header().map(|h| h.page_size);
    if w.file_size == 0 {
        return;
    }
    let Some(h) = w.header.as_ref() else {
        out.add(
            Severity::Warning,
            "wal-short",
            vec![],
            format!(
                "the -wal is {} bytes, shorter than its 32-byte header: SQLite ignores it",
                w.file_size
            ),
            "nothing to do unless commits are missing",
        );
        return;
    };
    if let Some(problem) = h.problem() {
        if !w.commits.is_empty() {
            out.add(
                Severity::Damage,
                "wal-header",
                vec![],
                format!(
                    "the -wal header is invalid ({problem}) although {} committed transactions \
                     follow it: SQLite ignores the whole -wal, so those commits are lost",
                    w.commits.len()
                ),
                &format!(
                    "{BACKUP_FIRST}; do not open the database with SQLite until the -wal is saved"
                ),
            );
        } else {
            out.add(
                Severity::Warning,
                "wal-header",
                vec![],
                format!("the -wal header is invalid ({problem}): SQLite ignores the whole -wal"),
                "nothing to do unless commits are missing",
            );
        }
        return;
    }
    if let Some(ps) = db_ps {
        if ps != h.page_size && ins.meta(Role::Database).is_some_and(|m| m.size > 0) {
            out.add(
                Severity::Warning,
                "wal-page-size",
                vec![],
                format!(
                    "the -wal's page size ({}) differs from the database's ({ps})",
                    h.page_size
                ),
                "check which program wrote the -wal",
            );
        }
    }
    if let Some((frame, problem)) = &w.first_invalid {
        use crate::wal::FrameProblem;
        let last = w.last_commit_frame();
        match problem {
            FrameProblem::SaltMismatch { .. } => {}
            _ => {
                let indexed = ins
                    .shm
                    .as_ref()
                    .and_then(|s| s.parsed.as_ref())
                    .and_then(|s| s.trusted())
                    .is_some_and(|t| t.mx_frame >= *frame && t.salt == h.salt);
                if indexed && live {
                    // Reported by the -shm cross-check as damage.
                } else {
                    let later = if w.later_frames_with_salts > 0 {
                        format!(
                            "; {}{} later frames still carry this WAL's salts ({} claim a \
                             commit) and will never be read",
                            if w.later_cut { "at least " } else { "" },
                            w.later_frames_with_salts,
                            w.later_commits_with_salts
                        )
                    } else {
                        String::new()
                    };
                    let what = if w.first_invalid_claims_commit || w.later_commits_with_salts > 0 {
                        "a transaction whose commit frame fails its checksum is dropped: if the \
                         application was told it committed (synchronous=NORMAL and a power \
                         loss, or a damaged disk), it is lost"
                    } else {
                        "an interrupted write (a writer killed or crashed mid-transaction): \
                         nothing committed is lost"
                    };
                    out.add(
                        Severity::Warning,
                        "wal-bad-frame",
                        vec![],
                        format!(
                            "-wal frame {frame} (after the last valid commit, frame {last}) has \
                             {}: SQLite ignores it and everything after it; {what}{later}",
                            problem.describe()
                        ),
                        "nothing to repair: the next writer overwrites those frames; if disks \
                         are suspect, check dmesg and run PRAGMA integrity_check",
                    );
                }
            }
        }
    }
}

fn shm_findings(ins: &Inspection, live: bool, out: &mut Out, lines: &mut Vec<String>) {
    let Some(s) = ins.shm.as_ref() else {
        return;
    };
    let Some(shm) = s.parsed.as_ref() else {
        let size = ins.meta(Role::Shm).map_or(0, |m| m.size);
        if size > 0 {
            out.add(
                Severity::Warning,
                "shm-short",
                vec![],
                format!("the -shm is {size} bytes, shorter than the 136-byte wal-index header"),
                "the next opener rebuilds it when nobody maps it",
            );
        } else {
            lines.push(
                "the -shm is empty: nobody has initialised the wal-index since the last reset"
                    .into(),
            );
        }
        return;
    };
    if let Some(why) = shm.distrust_reason() {
        if shm.all_zero && !live {
            lines.push(
                "the -shm header is zeroed: the next opener rebuilds the index from the -wal"
                    .into(),
            );
        } else {
            let sev = if live {
                Severity::Warning
            } else {
                Severity::Note
            };
            out.add(
                sev,
                "shm-header",
                vec![],
                format!("the -shm wal-index header is not usable: {why}; the next reader rebuilds the index from the -wal (recovery)"),
                "nothing to do if it recovers; if readers keep failing with SQLITE_PROTOCOL, restart the processes that map the -shm",
            );
        }
        return;
    }
    let Some(t) = shm.trusted() else {
        return;
    };
    lines.push(format!(
        "the two -shm header copies agree and their checksum holds: mxFrame {}, {} pages, nBackfill {}",
        t.mx_frame, t.n_page, shm.ckpt.n_backfill
    ));
    if ins.unstable {
        lines.push("the -wal and -shm kept changing while they were read (an active writer): cross-checks skipped".into());
        return;
    }
    let Some(w) = ins.wal.as_ref().filter(|w| w.usable()) else {
        if t.mx_frame > 0 {
            let sev = if live {
                Severity::Damage
            } else {
                Severity::Warning
            };
            out.add(
                sev,
                "index-without-wal",
                vec![],
                format!(
                    "the -shm index says {} frames are committed, but there is no usable -wal{}",
                    t.mx_frame,
                    if live {
                        ": processes that use this index read frames that are gone"
                    } else {
                        ""
                    }
                ),
                &format!("{BACKUP_FIRST}; restart the processes that map the -shm"),
            );
        }
        return;
    };
    let Some(wh) = w.header.as_ref() else {
        return;
    };
    let mut bad: Vec<String> = Vec::new();
    if t.mx_frame > 0 && t.salt != wh.salt {
        bad.push(format!(
            "the index belongs to another -wal generation (index salts {:08x}/{:08x}, -wal salts {:08x}/{:08x})",
            t.salt.0, t.salt.1, wh.salt.0, wh.salt.1
        ));
    } else {
        let last = w.last_commit_frame();
        if t.mx_frame > w.valid_frames {
            // Lost whatever happens next: recovery stops at the last valid commit.
            out.add(
                Severity::Damage,
                "index-beyond-wal",
                vec![],
                format!(
                    "the -shm index says frames up to {} are committed, but the -wal holds only \
                     {} valid frames (last valid commit: frame {last}): the commits in frames \
                     {}..{} are lost at the next recovery{}",
                    t.mx_frame,
                    w.valid_frames,
                    last + 1,
                    t.mx_frame,
                    if live { ", and readers using the index read damaged frames now" } else { "" }
                ),
                &format!("{BACKUP_FIRST}; then restart every process that maps the -shm and run PRAGMA integrity_check"),
            );
        } else if t.mx_frame > 0 && w.commit_at(t.mx_frame).is_none() {
            bad.push(format!(
                "mxFrame {} is not a commit frame of the -wal",
                t.mx_frame
            ));
        } else if t.mx_frame > 0 {
            if let Some(c) = w.commit_at(t.mx_frame) {
                if c.checksum != t.frame_checksum {
                    bad.push(format!(
                        "the index's checksum of frame {} ({:08x}/{:08x}) is not the -wal's ({:08x}/{:08x})",
                        t.mx_frame, t.frame_checksum.0, t.frame_checksum.1, c.checksum.0, c.checksum.1
                    ));
                }
                if c.db_pages != t.n_page {
                    bad.push(format!(
                        "the index says {} pages, the commit at frame {} says {}",
                        t.n_page, t.mx_frame, c.db_pages
                    ));
                }
            }
            if let Some(f) = (1..=t.mx_frame).find(|&f| {
                shm::pgno_for_frame(&s.bytes, f)
                    .is_some_and(|p| w.pages.get(f as usize - 1).is_some_and(|&q| q != p))
            }) {
                bad.push(format!(
                    "the index maps frame {f} to page {} but that frame holds page {}",
                    shm::pgno_for_frame(&s.bytes, f).unwrap_or(0),
                    w.pages[f as usize - 1]
                ));
            }
        }
        if t.mx_frame < last {
            let msg = format!(
                "the -wal holds committed frames {}..{last} that the -shm index does not know \
                 (mxFrame {})",
                t.mx_frame + 1,
                t.mx_frame
            );
            if live {
                out.add(
                    Severity::Warning,
                    "wal-beyond-index",
                    vec![],
                    format!(
                        "{msg}: a writer died between writing its commit and publishing it (that \
                         transaction was never confirmed), or another process wrote through \
                         another wal-index (a split, see the holders); the next writer overwrites them"
                    ),
                    "if a process holds a deleted -wal or -shm, treat this as a split; otherwise nothing to do",
                );
            } else {
                lines.push(format!(
                    "{msg}: nobody maps the index, so the next opener's recovery picks them up"
                ));
            }
        }
        if shm.ckpt.n_backfill > t.mx_frame {
            bad.push(format!(
                "nBackfill ({}) is beyond mxFrame ({})",
                shm.ckpt.n_backfill, t.mx_frame
            ));
        }
        if t.page_size != wh.page_size {
            bad.push(format!(
                "the index's page size ({}) is not the -wal's ({})",
                t.page_size, wh.page_size
            ));
        }
    }
    if bad.is_empty() {
        if t.mx_frame <= w.valid_frames {
            lines.push(format!(
                "the index agrees with the -wal: mxFrame {} {}, salts, checksum and page numbers match",
                t.mx_frame,
                if t.mx_frame == w.last_commit_frame() {
                    "is the last valid commit".to_owned()
                } else {
                    format!("(last valid commit {})", w.last_commit_frame())
                }
            ));
        }
    } else if live {
        out.add(
            Severity::Damage,
            "index-mismatch",
            vec![],
            format!(
                "the -shm index in use does not describe the -wal: {}: processes using it read \
                 the wrong frames",
                bad.join("; ")
            ),
            &format!("{BACKUP_FIRST}; restart every process that maps the -shm (see the holders), then run PRAGMA integrity_check"),
        );
    } else {
        lines.push(format!(
            "the -shm does not describe the -wal ({}), but nobody maps it: the next opener rebuilds it",
            bad.join("; ")
        ));
    }
}

fn journal_findings(ins: &Inspection, wal_mode: bool, out: &mut Out) {
    let Some(j) = ins.journal.as_ref() else {
        return;
    };
    let db_size = ins.meta(Role::Database).map_or(0, |m| m.size);
    if !j.may_be_hot() {
        let why = if j.file_size == 0 {
            "empty (journal_mode=TRUNCATE leaves it so)"
        } else {
            "its header is zeroed (journal_mode=PERSIST leaves it so, or a writer had not yet synced it)"
        };
        out.add(
            Severity::Note,
            "journal-cold",
            vec![],
            format!("a -journal exists but is not hot: {why}"),
            "nothing to do",
        );
        return;
    }
    let reserved = ins.held(Role::Database, "RESERVED", Some(true));
    if !reserved.is_empty() {
        let pids: Vec<i32> = reserved.iter().flat_map(|l| l.owners.clone()).collect();
        out.add(
            Severity::Note,
            "journal-live",
            pids.clone(),
            format!(
                "a write transaction is in progress (RESERVED held by {}): its -journal is live, not hot",
                pid_list(&pids)
            ),
            "nothing to do",
        );
        return;
    }
    if db_size == 0 {
        out.add(
            Severity::Note,
            "journal-empty-db",
            vec![],
            "a -journal exists next to an empty database: SQLite deletes it".into(),
            "nothing to do",
        );
        return;
    }
    let pages = j.initial_pages.map_or(String::new(), |p| {
        format!(", the database had {p} pages before it")
    });
    let mode = if wal_mode {
        " (the header says WAL mode: the journal is left from before the switch)"
    } else {
        ""
    };
    out.add(
        Severity::Warning,
        "hot-journal",
        vec![],
        format!(
            "hot journal: the last writer died in the middle of a transaction ({}{pages}){mode}; \
             the database file is half-written until the next connection that reads it rolls \
             the journal back",
            j.records_text()
        ),
        "do not delete the -journal (that leaves the database corrupt); open the database \
         once with a program that may write to it and to its directory, so SQLite rolls it \
         back (a read-only user gets SQLITE_READONLY_ROLLBACK)",
    );
}

fn file_findings(ins: &Inspection, wal_mode: bool, out: &mut Out) {
    for (role, e) in &ins.unreadable {
        out.add(
            Severity::Incomplete,
            "unreadable",
            vec![],
            format!("cannot read the {}: {e}", role.label()),
            "run the doctor as the database's owner or as root",
        );
    }
    let Some(db) = ins.meta(Role::Database) else {
        return;
    };
    for f in &ins.files {
        let Some(m) = f.meta() else {
            continue;
        };
        if let Some(target) = &m.symlink {
            let sev = if f.role == Role::Database {
                Severity::Note
            } else {
                Severity::Warning
            };
            out.add(
                sev,
                "symlink",
                vec![],
                format!("{} is a symbolic link to {}", f.path.display(), target.display()),
                if f.role == Role::Database {
                    "every program must open the database by one path (SQLite resolves the link for its side files)"
                } else {
                    "a side file must be a regular file next to the database: remove the link while no process has the database open"
                },
            );
        }
        if f.role != Role::Database && f.role != Role::Walguard && !m.is_regular() {
            out.add(
                Severity::Warning,
                "sidecar-type",
                vec![],
                format!("{} is a {}, not a regular file", f.path.display(), m.kind()),
                "remove it while no process has the database open",
            );
        }
        let leftover = f.role == Role::Walguard && earlier_build_users(ins).is_empty();
        if f.role != Role::Database && m.uid != db.uid && !leftover {
            let u = |uid| crate::sys::user_name(uid).unwrap_or_else(|| uid.to_string());
            out.add(
                Severity::Warning,
                "sidecar-owner",
                vec![],
                format!(
                    "{} is owned by {} (mode {}), the database by {}: processes running as {} \
                     may be unable to open it read-write (SQLITE_READONLY / SQLITE_CANTOPEN)",
                    f.role.label(),
                    u(m.uid),
                    m.perms(),
                    u(db.uid),
                    u(db.uid)
                ),
                "run every program that opens the database as the same user; fix the owner with chown while no process has it open",
            );
        }
    }
    // A -wal that a rollback-mode header does not explain.
    if let (Some(h), Some(w)) = (ins.db_header(), ins.wal.as_ref()) {
        if h.journal_mode() == JournalMode::Rollback && !w.commits.is_empty() && w.usable() {
            out.add(
                Severity::Warning,
                "wal-in-rollback-mode",
                vec![],
                format!(
                    "the header says rollback mode but a -wal with {} committed transactions \
                     exists: the next connection opens the database in WAL mode and reads them",
                    w.commits.len()
                ),
                "keep the -wal; let one connection open the database and checkpoint",
            );
        }
    }
    let uses_wal = wal_mode || ins.meta(Role::Wal).is_some();
    let fs = &ins.fs;
    if fs.class != FsClass::Local && fs.class != FsClass::Unknown {
        let msg = if uses_wal {
            files::wal_hazard(fs.class, &fs.name).unwrap_or_default()
        } else {
            format!(
                "the database is on a {} file system: POSIX locks there are often emulated per \
                 client or lost on reconnect; writers on two hosts can corrupt it",
                fs.name
            )
        };
        out.add(
            Severity::Warning,
            "filesystem",
            vec![],
            msg,
            "keep the database on a local file system and let one host open it; share it \
             through a server process, not through the file system",
        );
    }
}

fn holder_findings(ins: &Inspection, wal_mode: bool, out: &mut Out) {
    let procs = &ins.holders.procs;
    // ---- split: descriptors or mappings of deleted/replaced files -------------------
    // Processes on the current file of a role (the other side of a split).
    let users_of = |role: Role, except: i32| -> Vec<i32> {
        procs
            .iter()
            .filter(|q| q.pid != except && q.fds.iter().any(|f| f.role == role && f.current))
            .map(|q| q.pid)
            .collect()
    };
    for p in procs {
        let mut stale: Vec<String> = Vec::new();
        let mut saves: Vec<String> = Vec::new();
        let mut sides: Vec<(Vec<i32>, Vec<&str>)> = Vec::new();
        let mut worst = Severity::Note;
        for f in p.fds.iter().filter(|f| f.stale()) {
            let how = if f.deleted {
                "deleted"
            } else {
                "replaced (the path now names another file)"
            };
            let sev = match f.role {
                Role::Database | Role::Wal | Role::Shm => Severity::Damage,
                Role::Walguard => Severity::Warning,
                Role::Journal => Severity::Note,
            };
            worst = worst.max(sev);
            stale.push(format!(
                "a {how} {} (fd {}, inode {})",
                f.role.label(),
                f.fd,
                f.ino
            ));
            if sev == Severity::Damage {
                saves.push(format!(
                    "cp /proc/{}/fd/{} {}{}.saved-{}",
                    p.pid,
                    f.fd,
                    ins.db.display(),
                    f.role.suffix(),
                    p.pid
                ));
                let others = users_of(f.role, p.pid);
                if !others.is_empty() {
                    match sides.iter_mut().find(|(o, _)| *o == others) {
                        Some((_, roles)) => roles.push(f.role.label()),
                        None => sides.push((others, vec![f.role.label()])),
                    }
                }
            }
        }
        for m in p.maps.iter().filter(|m| !m.current && m.role == Role::Shm) {
            if !p.fds.iter().any(|f| f.ino == m.ino && f.stale()) {
                worst = Severity::Damage;
                stale.push(format!("a mapping of a deleted -shm (inode {})", m.ino));
            }
        }
        if stale.is_empty() {
            continue;
        }
        match worst {
            Severity::Damage => {
                let live = if sides.is_empty() {
                    String::new()
                } else {
                    let parts: Vec<String> = sides
                        .iter()
                        .map(|(others, roles)| {
                            format!(
                                "{} {} the current {}",
                                if others.len() == 1 {
                                    "process"
                                } else {
                                    "processes"
                                },
                                pid_list(others) + if others.len() == 1 { " uses" } else { " use" },
                                roles.join(" and ")
                            )
                        })
                        .collect();
                    format!(", while {}: the split is live", parts.join(", and "))
                };
                let save = if saves.is_empty() {
                    String::new()
                } else {
                    format!(" (save what only it still has first: {})", saves.join("; "))
                };
                out.add(
                    Severity::Damage,
                    "deleted-sidecar",
                    vec![p.pid],
                    format!(
                        "{} holds {}: it still reads and writes through files nobody else \
                         sees, a split WAL index in progress{live}",
                        who(p),
                        stale.join(", ")
                    ),
                    &format!(
                        "restart it before anything else writes{save}; then run PRAGMA \
                         integrity_check; commits made on either side after the split may be \
                         lost when the other side checkpoints"
                    ),
                );
            }
            Severity::Warning => out.add(
                Severity::Warning,
                "deleted-walguard-file",
                vec![p.pid],
                format!(
                    "{} holds {}: walguard's locks in it are on a file newcomers no longer see, \
                     so it and they do not serialise WAL set-up and tear-down",
                    who(p),
                    stale.join(", ")
                ),
                "restart it; never delete <db>-walguard while the database is in use",
            ),
            _ => out.add(
                Severity::Note,
                "deleted-journal",
                vec![p.pid],
                format!(
                    "{} holds {} (a rollback-mode commit in progress)",
                    who(p),
                    stale.join(", ")
                ),
                "nothing to do",
            ),
        }
    }

    // ---- lost locks: a WAL connection without its locks ------------------------------
    let owns = |p: &Proc, role: Role, name: &str| ins.process_holds(p, role, name, false);
    let owns_posix = |p: &Proc, role: Role, name: &str| ins.process_holds(p, role, name, true);
    for p in procs {
        let maps_shm = p.maps.iter().any(|m| m.role == Role::Shm && m.current);
        if !maps_shm || ins.locks_error.is_some() {
            continue;
        }
        let dms = owns(p, Role::Shm, "DMS");
        let db = !wal_mode || owns(p, Role::Database, "SHARED");
        let posix_db = owns_posix(p, Role::Database, "SHARED");
        if dms && db {
            if wal_mode && !posix_db {
                out.add(
                    Severity::Note,
                    "posix-lock-dropped-mirror-holds",
                    vec![p.pid],
                    format!(
                        "{} holds no POSIX lock on the database any more (a stray close() in it), \
                         but walguard's OFD mirror still holds SHARED for it",
                        who(p)
                    ),
                    "nothing urgent: walguard keeps other processes from deleting the files; find what closes the database in that process",
                );
            }
            continue;
        }
        let mut missing = Vec::new();
        if !db {
            missing.push("SHARED lock on the database");
        }
        if !dms {
            missing.push("lock on the -shm dead-man switch (byte 128)");
        }
        out.add(
            Severity::Warning,
            "lost-locks",
            vec![p.pid],
            format!(
                "{} maps the -shm but holds no {}: its POSIX locks were dropped by a \
                 close() of another descriptor of the file in that process (a header peek, a \
                 second SQLite library, a chmod or backup helper); another process may now \
                 believe it is the last one and delete the -wal and -shm under it",
                who(p),
                missing.join(" or ")
            ),
            "restart it before another process closes the database; find what opens and closes \
             the database file in it (or load walguard there, whose locks survive such a close)",
        );
    }

    // ---- two runtimes, old versions ------------------------------------------------
    let mut buggy: BTreeMap<(String, String), Vec<i32>> = BTreeMap::new();
    let mut unknown: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for p in procs {
        let libs = p.sqlite_libs();
        if libs.len() >= 2 {
            let list: Vec<String> = libs.iter().map(|l| lib_text(l)).collect();
            out.add(
                Severity::Warning,
                "two-sqlite-libraries",
                vec![p.pid],
                format!(
                    "{} maps {} SQLite libraries ({}): when one of them closes the database, \
                     the -wal or the -shm, the kernel drops the POSIX locks of the other too, and \
                     another process can then checkpoint and delete the files under it",
                    who(p),
                    libs.len(),
                    list.join("; ")
                ),
                "use one SQLite library per process, or load walguard (libwalguard.so) into every SQLite runtime of that process",
            );
        }
        for l in libs {
            let sq = l.facts.as_ref().and_then(|f| f.sqlite.as_ref());
            match sq.and_then(|s| s.version.clone()) {
                Some(v) => {
                    if elf::parse_version(&v).is_some_and(elf::wal_reset_bug) {
                        buggy.entry((v, l.path.clone())).or_default().push(p.pid);
                    }
                }
                None => unknown.entry(l.path.clone()).or_default().push(p.pid),
            }
        }
    }
    for ((v, path), pids) in buggy {
        out.add(
            Severity::Warning,
            "wal-reset-bug",
            pids.clone(),
            format!(
                "SQLite {v} ({path}, in process {}) has the WAL-reset bug (3.7.0 to 3.51.2; fixed \
                 in 3.51.3, backported to 3.44.6 and 3.50.7): a write and a checkpoint racing at \
                 the moment the WAL restarts can lose commits",
                pid_list(&pids)
            ),
            "upgrade that SQLite to 3.51.3 or later (or 3.44.6+ / 3.50.7+)",
        );
    }
    for (path, pids) in unknown {
        out.add(
            Severity::Note,
            "sqlite-version-unknown",
            pids.clone(),
            format!(
                "the SQLite in {path} (process {}) does not say its version (stripped): whether \
                 it has the WAL-reset bug (3.7.0 to 3.51.2) cannot be told",
                pid_list(&pids)
            ),
            "ask the program for sqlite_version()",
        );
    }

    // ---- walguard: who is guarded, who is not, and how to guard each ----------------
    unguarded_findings(ins, out);
    earlier_build_findings(ins, out);

    // ---- what could not be seen ------------------------------------------------------
    if let Some(e) = &ins.holders.error {
        out.add(
            Severity::Incomplete,
            "proc-unreadable",
            vec![],
            format!("{e}: holders and deleted side files are unknown"),
            "mount /proc, or run the doctor where it is mounted",
        );
    }
    if ins.holders.hidepid {
        out.add(
            Severity::Incomplete,
            "proc-hidepid",
            vec![],
            "/proc is mounted with hidepid: processes of other users are not listed at all".into(),
            "run the doctor as root",
        );
    }
    if !ins.holders.unseen.is_empty() {
        let mut by_user: BTreeMap<String, usize> = BTreeMap::new();
        for u in &ins.holders.unseen {
            let name = u
                .uid
                .map(|uid| crate::sys::user_name(uid).unwrap_or_else(|| uid.to_string()))
                .unwrap_or_else(|| "?".into());
            *by_user.entry(name).or_default() += 1;
        }
        let users: Vec<String> = by_user.iter().map(|(u, n)| format!("{u}: {n}")).collect();
        let pids: Vec<i32> = ins.holders.unseen.iter().map(|u| u.pid).collect();
        out.add(
            Severity::Incomplete,
            "processes-unseen",
            pids.clone(),
            format!(
                "could not see the open files of {} processes of other users ({}; pids {}): \
                 whether they hold the database, a deleted -wal or -shm, or a second SQLite \
                 library is unknown{}",
                pids.len(),
                users.join(", "),
                pid_list(&pids),
                if ins.lock_owners_unseen.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; of these, {} hold locks on the database's files (see the lock table)",
                        pid_list(
                            &ins.lock_owners_unseen
                                .iter()
                                .map(|u| u.0)
                                .collect::<Vec<_>>()
                        )
                    )
                }
            ),
            "run the doctor as root (or as the user those processes run as)",
        );
    }
    if let Some(e) = &ins.locks_error {
        out.add(
            Severity::Incomplete,
            "locks-unreadable",
            vec![],
            format!("{e}: who holds which lock is unknown"),
            "run the doctor where /proc/locks is readable",
        );
    }
    for p in procs.iter().filter(|p| p.maps_error.is_some()) {
        out.add(
            Severity::Incomplete,
            "maps-unreadable",
            vec![p.pid],
            format!(
                "cannot read the mappings of {} ({}): its SQLite libraries and -shm mapping are unknown",
                who(p),
                p.maps_error.as_deref().unwrap_or("")
            ),
            "run the doctor as root",
        );
    }
    if ins.locks_unsettled {
        out.add(
            Severity::Note,
            "locks-unsettled",
            vec![],
            "the kernel's lock table kept changing while it was read (it is read one page at a \
             time): a lock in this report may be missing or repeated"
                .into(),
            "run the doctor again",
        );
    }
    let orphan_ofd = ins
        .locks
        .iter()
        .filter(|l| l.lock.kind == Kind::Ofd && l.owners.is_empty() && !l.stale)
        .count();
    if orphan_ofd > 0 && ins.holders.unseen.is_empty() {
        out.add(
            Severity::Note,
            "ofd-owner-unknown",
            vec![],
            format!("{orphan_ofd} open-file-description locks have no visible owner (a process in another pid namespace?)"),
            "nothing to do",
        );
    }
    // Blocked waiters: somebody waits (F_SETLKW) for a lock on these files.
    for l in ins.locks.iter().filter(|l| l.lock.blocked) {
        out.add(
            Severity::Note,
            "lock-waiter",
            l.owners.clone(),
            format!(
                "{} waits for a {} lock on the {} ({})",
                if l.owners.is_empty() {
                    "a process".to_owned()
                } else {
                    format!("process {}", pid_list(&l.owners))
                },
                if l.lock.write { "write" } else { "read" },
                l.role.label(),
                l.names
            ),
            "nothing to do unless it waits for long (then see who holds that lock)",
        );
    }
}

/// Which walguard build guards this database in `p`, if any: an earlier build holds the
/// `<db>-walguard` lock file open (or a lock on it); the current build has no such file
/// and shows itself by its open-file-description locks on the database or the `-shm`
/// (SQLite's unix VFS takes only POSIX locks; walguard's mirrors, its gate and its WAL
/// locks are OFD locks). A current-build process that holds no lock at this moment (a
/// rollback-mode connection between transactions) cannot be told from an unguarded one.
pub fn walguard_build(ins: &Inspection, p: &Proc) -> Option<Build> {
    let on_lock_file = p.has_open(Role::Walguard)
        || ins
            .locks
            .iter()
            .any(|l| l.role == Role::Walguard && l.owners.contains(&p.pid));
    if on_lock_file {
        return Some(Build::Earlier);
    }
    let ofd_role = |r: Role| matches!(r, Role::Database | Role::Shm);
    let ofd = ins
        .locks
        .iter()
        .any(|l| l.lock.kind == Kind::Ofd && ofd_role(l.role) && l.owners.contains(&p.pid))
        || p.fds
            .iter()
            .any(|f| ofd_role(f.role) && f.locks.iter().any(|l| l.kind == Kind::Ofd && !l.blocked));
    ofd.then_some(Build::Current)
}

/// walguard guards this database in `p` (either build).
pub fn walguard_active(ins: &Inspection, p: &Proc) -> bool {
    walguard_build(ins, p).is_some()
}

/// How a process that uses the database without walguard can be guarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A Python interpreter: `WALGUARD_AUTO=1` (the package installed) or `walguard.install()`.
    Python,
    /// walguard is linked into the program, but this database is opened through another VFS.
    LinkedUnused,
    /// It uses a shared libsqlite3 (path): `walguard exec -- CMD` registers walguard in it.
    SharedLibrary(String),
    /// Its SQLite is linked into the executable or bundled into another library (path):
    /// nothing from outside the program reaches it.
    Static(String),
    /// Its SQLite could not be found (mappings unreadable, or stripped beyond recognition).
    Unknown,
}

impl Reach {
    /// A stable name for monitoring.
    pub fn code(&self) -> &'static str {
        match self {
            Reach::Python => "python",
            Reach::LinkedUnused => "linked-unused",
            Reach::SharedLibrary(_) => "walguard-exec",
            Reach::Static(_) => "static",
            Reach::Unknown => "unknown",
        }
    }

    /// What the process is, in a few words.
    pub fn what(&self) -> String {
        match self {
            Reach::Python => "a Python interpreter".to_owned(),
            Reach::LinkedUnused => "walguard linked in, not used for this database".to_owned(),
            Reach::SharedLibrary(l) => format!("uses the shared {l}"),
            Reach::Static(l) => format!("SQLite linked into {l}"),
            Reach::Unknown => "its SQLite library was not found".to_owned(),
        }
    }
}

/// Whether `p` uses this database through a SQLite that walguard does not guard, and how
/// it could be guarded. None: guarded, not a SQLite user of the database (a copy or
/// backup tool holding the file, with no SQLite mapped and no SQLite lock), or not
/// judgeable (a program with walguard linked in that holds no lock on the database or
/// the `-shm` at this moment shows nothing either way).
pub fn reach(ins: &Inspection, p: &Proc) -> Option<Reach> {
    if walguard_active(ins, p) || !(p.has_open(Role::Database) || p.maps_role(Role::Shm)) {
        return None;
    }
    let libs = p.sqlite_libs();
    let locks_sqlite_bytes = [Role::Database, Role::Shm].into_iter().any(|r| {
        ins.locks_on(r).any(|l| l.owners.contains(&p.pid))
            || p.fds
                .iter()
                .any(|f| f.role == r && f.locks.iter().any(|l| !l.blocked))
    }) || p.maps_role(Role::Shm);
    let linked = !p.walguard_linked().is_empty();
    if p.maps_error.is_none() && libs.is_empty() && !linked && !locks_sqlite_bytes {
        return None;
    }
    if linked && !locks_sqlite_bytes {
        // walguard is in the process, and no lock says whether this database goes
        // through it (rollback mode between transactions, a connection that has not read
        // yet): judge only what the lock table proves.
        return None;
    }
    if p.is_python() {
        return Some(Reach::Python);
    }
    if linked {
        return Some(Reach::LinkedUnused);
    }
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
    if let Some(l) = libs
        .iter()
        .find(|l| !l.main && base(&l.path).starts_with("libsqlite3"))
    {
        return Some(Reach::SharedLibrary(l.path.clone()));
    }
    match libs.first() {
        Some(l) => Some(Reach::Static(l.path.clone())),
        None => Some(Reach::Unknown),
    }
}

/// What to do for one unguarded process.
fn remedy(p: &Proc, r: &Reach) -> String {
    let who = who(p);
    let cmd = if p.cmdline.is_empty() {
        p.comm.clone()
    } else {
        shorten(&one_line(&p.cmdline), 160)
    };
    match r {
        Reach::Python => format!(
            "{who}: set WALGUARD_AUTO=1 in its environment and restart it (the walguard \
             package must be installed for that interpreter: {} -m pip install walguard), or \
             call walguard.install() before its first connection",
            p.exe.as_deref().unwrap_or("python3")
        ),
        Reach::LinkedUnused => format!(
            "{who}: walguard is linked in but this database is opened through another VFS: \
             make walguard the default VFS (walguard::register with the default options, or \
             load libwalguard.so once) or open the database with ?vfs=walguard"
        ),
        Reach::SharedLibrary(_) => format!(
            "{who}: restart it as `walguard exec -- {cmd}` (a systemd service: prefix its \
             ExecStart= command with `walguard exec --`)"
        ),
        Reach::Static(l) => format!(
            "{who}: its SQLite is linked into {l}, so neither `walguard exec` nor \
             WALGUARD_AUTO can reach it; nothing from outside guards it — only a change to \
             the program does (load libwalguard.so as an extension, or walguard::register in \
             Rust), or keep it away from the shared database"
        ),
        Reach::Unknown => format!(
            "{who}: its SQLite library was not found (run the doctor as root to read its \
             mappings); guard it by how it links SQLite: `walguard exec` for a shared \
             libsqlite3, WALGUARD_AUTO=1 for Python"
        ),
    }
}

/// Processes that use the database without walguard while others use it with walguard.
fn unguarded_findings(ins: &Inspection, out: &mut Out) {
    let procs = &ins.holders.procs;
    let guarded = procs.iter().filter(|p| walguard_active(ins, p)).count();
    if guarded == 0 {
        return;
    }
    let unguarded: Vec<(&Proc, Reach)> = procs
        .iter()
        .filter_map(|p| reach(ins, p).map(|r| (p, r)))
        .collect();
    if unguarded.is_empty() {
        return;
    }
    let names: Vec<String> = unguarded
        .iter()
        .map(|(p, r)| format!("{} [{}]", who(p), r.what()))
        .collect();
    let actions: Vec<String> = unguarded.iter().map(|(p, r)| remedy(p, r)).collect();
    out.add(
        Severity::Warning,
        "unguarded-processes",
        unguarded.iter().map(|(p, _)| p.pid).collect(),
        format!(
            "walguard guards {guarded} of the {} processes that use the database; not {}: \
             their locks are plain POSIX locks, which a stray close() in them drops (a header \
             peek, a second SQLite library), and then even a guarded process can take them \
             for gone and delete the -wal and -shm under them",
            guarded + unguarded.len(),
            names.join(", ")
        ),
        &actions.join("; "),
    );
}

/// An earlier walguard build's lock file: in use by processes of that build, or left
/// behind.
fn earlier_build_findings(ins: &Inspection, out: &mut Out) {
    let Some(f) = ins.files.iter().find(|f| f.role == Role::Walguard) else {
        return;
    };
    if f.meta().is_none() {
        return;
    }
    let users = earlier_build_users(ins);
    if users.is_empty() {
        out.add(
            Severity::Note,
            "walguard-file-left",
            vec![],
            format!(
                "{} was left by an earlier walguard build, unused by this one (no process \
                 holds it; the current build neither creates nor reads it)",
                f.path.display()
            ),
            "nothing to do; it may be removed once no process runs an earlier walguard build",
        );
    }
}

/// Processes of an earlier walguard build: they hold `<db>-walguard` open or locked.
pub fn earlier_build_users(ins: &Inspection) -> Vec<i32> {
    ins.holders
        .procs
        .iter()
        .filter(|p| walguard_build(ins, p) == Some(Build::Earlier))
        .map(|p| p.pid)
        .collect()
}

pub fn lib_text(l: &crate::holders::MappedElf) -> String {
    let v = l
        .facts
        .as_ref()
        .and_then(|f| f.sqlite.as_ref())
        .and_then(|s| s.version.clone())
        .map_or_else(|| "version unknown".to_owned(), |v| format!("SQLite {v}"));
    format!("{} ({v})", l.path)
}

fn checkpoint_plan(ins: &Inspection, live: bool, lines: &mut Vec<String>) {
    let Some(w) = ins.wal.as_ref() else {
        if ins
            .db_header()
            .is_some_and(|h| h.journal_mode() == JournalMode::Wal)
        {
            lines.push(
                "no -wal: nothing to checkpoint (the last connection checkpointed and removed it)"
                    .into(),
            );
        }
        return;
    };
    if !w.usable() {
        lines.push("the -wal is not usable: a checkpoint copies nothing".into());
        return;
    }
    let trusted = ins
        .shm
        .as_ref()
        .and_then(|s| s.parsed.as_ref())
        .filter(|_| live)
        .and_then(|s| s.trusted().map(|t| (t.clone(), s.ckpt.clone())))
        .filter(|(t, _)| {
            w.header
                .as_ref()
                .is_some_and(|h| t.salt == h.salt || t.mx_frame == 0)
        });
    let (from, to) = match &trusted {
        Some((t, c)) => (c.n_backfill, t.mx_frame.min(w.valid_frames)),
        None => {
            lines.push(format!(
                "nobody uses the -shm index: the next connection first rebuilds it from the -wal \
                 (recovery: {} valid frames, last commit at frame {})",
                w.valid_frames,
                w.last_commit_frame()
            ));
            (0, w.last_commit_frame())
        }
    };
    if to == 0 || from >= to {
        lines.push(format!(
            "nothing to copy: the -wal is fully checkpointed ({} frames); the next writer restarts it from frame 1 when no reader uses it",
            to
        ));
        return;
    }
    let mut pages: Vec<u32> = w.pages[from as usize..to as usize].to_vec();
    pages.sort_unstable();
    pages.dedup();
    let db_pages = w.commit_at(to).map_or(0, |c| c.db_pages);
    let now = ins
        .meta(Role::Database)
        .zip(ins.db_header())
        .map_or(0, |(m, h)| m.size / u64::from(h.page_size.max(1)));
    lines.push(format!(
        "a checkpoint copies {} ({}) into the database, which then has {db_pages} pages (now {now})",
        if from + 1 == to {
            format!("frame {to}")
        } else {
            format!("frames {}..{to}", from + 1)
        },
        plural(pages.len() as u64, "distinct page")
    ));
    // Readers holding a read mark below `to` hold a PASSIVE checkpoint back.
    if let Some((_, c)) = &trusted {
        for i in 1..5usize {
            let name = format!("READ-{i}");
            let holders = ins.held(Role::Shm, &name, Some(false));
            let mark = c.read_marks[i];
            if holders.is_empty() || mark == shm::READMARK_NOT_USED || mark >= to {
                continue;
            }
            let pids: Vec<i32> = holders.iter().flat_map(|l| l.owners.clone()).collect();
            lines.push(format!(
                "a reader on read mark {i} (frame {mark}, process {}) holds it back: PASSIVE stops at frame {mark}; FULL/RESTART/TRUNCATE wait for that reader",
                pid_list(&pids)
            ));
        }
    }
    lines.push(
        "it runs at the next commit once the -wal exceeds wal_autocheckpoint (1000 pages by default), on PRAGMA wal_checkpoint, or when the last connection closes (which then deletes the -wal and -shm)"
            .into(),
    );
}
