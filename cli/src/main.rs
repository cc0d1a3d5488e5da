//! `walguard doctor DB`: read-only incident triage for a shared SQLite database.
//!
//! It reads the database's files and `/proc` and never opens the database through SQLite
//! (that would run recovery, roll back a hot journal, checkpoint, or delete the `-wal` at
//! close); see `sys` for why its own reads cannot drop anybody's locks.
//!
//! Exit status: 0 healthy, 1 warnings, 2 damage or a live split, 3 could not inspect
//! (bad input, or part of the picture unreadable), 64 usage error.

mod elf;
mod exec;
mod files;
mod header;
mod holders;
mod inspect;
mod journal;
mod json;
mod locks;
mod report;
mod shm;
mod sys;
mod verdict;
mod wal;

#[cfg(test)]
mod fuzz;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: walguard doctor [--json] [--watch SECS [--count N]] DB
       walguard exec [--check] -- CMD [ARGS...]   (see walguard exec --help)

Read-only incident triage for a SQLite database shared by many processes: its files
(-wal, -shm, -journal, -walguard), header invariants, the -wal's frames and checksums,
the -shm wal-index, who holds which file and lock (from /proc), second SQLite libraries,
and a verdict with what to do. It never writes, locks, maps or opens the database
through SQLite.

options:
  --json        one JSON document (for monitoring)
  --watch SECS  inspect again every SECS seconds (fractions allowed) and print only what changed
  --count N     with --watch: stop after N inspections (default: until interrupted)

exit status: 0 healthy, 1 warnings, 2 damage or a live split, 3 could not inspect
(missing path, a directory, not a SQLite database, no permission, or processes /proc
does not show), 64 usage error";

struct Args {
    json: bool,
    watch: Option<Duration>,
    count: Option<u64>,
    db: String,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("doctor") => {}
        Some("-h" | "--help" | "help") => return Ok(None),
        Some("-V" | "--version") => {
            println!("walguard {}", env!("CARGO_PKG_VERSION"));
            return Err(String::new());
        }
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("missing command".into()),
    }
    let mut json = false;
    let mut watch = None;
    let mut count = None;
    let mut db = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--watch" => {
                let v = it.next().ok_or("--watch needs SECS")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e7)
                    .ok_or_else(|| format!("--watch {v:?}: give a positive number of seconds"))?;
                watch = Some(Duration::from_secs_f64(secs));
            }
            "--count" => {
                let v = it.next().ok_or("--count needs N")?;
                count = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("--count {v:?}: give a positive integer"))?,
                );
            }
            "-h" | "--help" => return Ok(None),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s:?}")),
            s => {
                if db.replace(s.to_owned()).is_some() {
                    return Err("give one database".into());
                }
            }
        }
    }
    if count.is_some() && watch.is_none() {
        return Err("--count only goes with --watch".into());
    }
    Ok(Some(Args {
        json,
        watch,
        count,
        db: db.ok_or("missing DB")?,
    }))
}

/// One inspection, rendered: (text or JSON document, exit status, comparison key,
/// could not inspect at all).
fn run_once(a: &Args) -> (String, i32, String, bool) {
    match inspect::inspect(&a.db) {
        Ok(ins) => {
            let v = verdict::judge(&ins);
            if a.json {
                let doc = report::json(&ins, &v);
                let key = without_time(&doc).render();
                (doc.render() + "\n", v.exit, key, false)
            } else {
                let t = report::text(&ins, &v);
                let key = t.lines().skip(1).collect::<Vec<_>>().join("\n");
                (t, v.exit, key, false)
            }
        }
        Err(f) => {
            if a.json {
                let doc = report::fatal_json(&f, sys::now_secs());
                let key = without_time(&doc).render();
                (doc.render() + "\n", 3, key, true)
            } else {
                let t = report::fatal_text(&f);
                (t.clone(), 3, t, true)
            }
        }
    }
}

fn without_time(j: &json::J) -> json::J {
    match j {
        json::J::Obj(v) => json::J::Obj(v.iter().filter(|(k, _)| k != "time").cloned().collect()),
        other => other.clone(),
    }
}

/// Prints to stdout; false when stdout is gone (a closed pipe).
fn emit(s: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

/// Lines of `new` not in `old` (+) and of `old` not in `new` (-), in order.
fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pool: Vec<&str> = new.lines().collect();
    for l in old.lines() {
        if let Some(i) = pool.iter().position(|n| *n == l) {
            pool.remove(i);
        } else {
            out.push(format!("- {l}"));
        }
    }
    let mut pool_old: Vec<&str> = old.lines().collect();
    for l in new.lines() {
        if let Some(i) = pool_old.iter().position(|o| *o == l) {
            pool_old.remove(i);
        } else {
            out.push(format!("+ {l}"));
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "exec") {
        return exec::main(&args[1..]);
    }
    let a = match parse_args(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) if e.is_empty() => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walguard: {e}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let (text, mut status, mut key, fatal) = run_once(&a);
    if fatal && !a.json {
        // Could not inspect at all: the message goes to stderr.
        eprint!("{text}");
    } else if !emit(&text) {
        return ExitCode::from(status as u8);
    }
    let Some(interval) = a.watch else {
        return ExitCode::from(status as u8);
    };
    let mut runs = 1u64;
    while a.count.is_none_or(|n| runs < n) {
        std::thread::sleep(interval);
        runs += 1;
        let (text, st, k, _) = run_once(&a);
        if k != key {
            let ok = if a.json {
                emit(&text)
            } else {
                let mut out = format!(
                    "--- {}: verdict {} (exit status {}){}\n",
                    sys::utc(sys::now_secs()),
                    verdict::status_name(st).to_uppercase(),
                    st,
                    if st != status {
                        format!(", was {status}")
                    } else {
                        String::new()
                    }
                );
                for l in diff_lines(&key, &k) {
                    out.push_str(&l);
                    out.push('\n');
                }
                emit(&out)
            };
            if !ok {
                return ExitCode::from(st as u8);
            }
            key = k;
        }
        status = st;
    }
    ExitCode::from(status as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments_parse() {
        let a = parse_args(&s(&["doctor", "--json", "app.db"]))
            .expect("ok")
            .expect("args");
        assert!(a.json && a.watch.is_none() && a.db == "app.db");
        let a = parse_args(&s(&["doctor", "--watch", "0.5", "--count", "3", "x"]))
            .expect("ok")
            .expect("args");
        assert_eq!(a.watch, Some(Duration::from_millis(500)));
        assert_eq!(a.count, Some(3));
        assert!(parse_args(&s(&["doctor"])).is_err());
        assert!(parse_args(&s(&["doctor", "a", "b"])).is_err());
        assert!(parse_args(&s(&["doctor", "--watch", "-1", "a"])).is_err());
        assert!(parse_args(&s(&["doctor", "--count", "2", "a"])).is_err());
        assert!(parse_args(&s(&["doctor", "--frobnicate", "a"])).is_err());
        assert!(parse_args(&s(&["repair", "a"])).is_err());
        assert!(parse_args(&s(&["--help"])).expect("ok").is_none());
    }

    #[test]
    fn diffs_show_changed_lines_only() {
        let d = diff_lines("a\nb\nc", "a\nB\nc\nd");
        assert_eq!(d, vec!["- b", "+ B", "+ d"]);
        assert!(diff_lines("x\ny", "x\ny").is_empty());
    }
}
