//! Verification after a run, once every worker is gone: `integrity_check`, then every
//! acknowledged transaction of every ledger must be present with its content hash.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::role::{complete_entries, txn_hash, Entry};
use crate::workload::fnv1a64;

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Acknowledged transactions (complete ledger lines).
    pub acked: u64,
    /// Acknowledged transactions present with the right content hash.
    pub present: u64,
    /// Acknowledged transactions with rows missing.
    pub missing: u64,
    /// Acknowledged transactions present with other contents.
    pub mismatched: u64,
    /// `integrity_check` said `ok`.
    pub integrity_ok: bool,
    /// The first lines of `integrity_check` (or the error that stopped it).
    pub integrity: String,
    /// Lines `integrity_check` reported.
    pub integrity_lines: u64,
    /// Rows in `t`.
    pub rows_in_table: u64,
    /// Rows in `t` that no ledger acknowledges (commits whose acknowledgement was lost
    /// to a kill or an error after COMMIT; allowed).
    pub unacknowledged_rows: u64,
    /// Why the table could not be read completely, if it could not.
    pub read_error: Option<String>,
    /// The first few lost transactions, for the report.
    pub lost_examples: Vec<String>,
}

impl Verification {
    /// Acknowledged transactions lost (missing or changed).
    pub fn lost(&self) -> u64 {
        self.missing + self.mismatched
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(n).collect();
        c.push_str("...");
        c
    }
}

/// Reads every ledger in `dir`.
pub fn read_ledgers(dir: &Path) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("list ledgers in {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("list ledgers in {}: {e}", dir.display()))?
            .path();
        let bytes =
            std::fs::read(&path).map_err(|e| format!("read ledger {}: {e}", path.display()))?;
        out.extend(complete_entries(&String::from_utf8_lossy(&bytes)));
    }
    Ok(out)
}

fn open(db: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags_and_vfs(db, flags, "unix")?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(c)
}

/// Verifies `db` (through the plain unix VFS: the file format is the same) against the
/// ledgers in `ledger_dir`.
pub fn verify(db: &Path, ledger_dir: &Path) -> Result<Verification, String> {
    let ledger = read_ledgers(ledger_dir)?;
    let mut v = Verification {
        acked: ledger.len() as u64,
        ..Verification::default()
    };
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match open(db, ro) {
        Ok(c) => c,
        Err(e) => {
            v.integrity = format!("cannot open {}: {e}", db.display());
            v.read_error = Some(v.integrity.clone());
            v.missing = v.acked;
            return Ok(v);
        }
    };

    // integrity_check
    let check = (|| -> rusqlite::Result<Vec<String>> {
        let mut st = conn.prepare("PRAGMA integrity_check")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    match check {
        Ok(rows) => {
            v.integrity_ok = rows.len() == 1 && rows[0] == "ok";
            // A row may hold several problems, one per line.
            let lines: Vec<&str> = rows
                .iter()
                .flat_map(|r| r.lines())
                .filter(|l| !l.trim().is_empty() && !l.starts_with("***"))
                .collect();
            v.integrity_lines = lines.len() as u64;
            v.integrity = clip(
                &lines.iter().take(3).copied().collect::<Vec<_>>().join("; "),
                300,
            );
        }
        Err(e) => {
            v.integrity = format!("integrity_check failed: {e}");
        }
    }

    // Every row's content hash, by tag.
    let mut rows: HashMap<String, u64> = HashMap::new();
    let read = (|| -> rusqlite::Result<()> {
        let mut st = conn.prepare("SELECT tag, payload FROM t")?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let tag: String = r.get(0)?;
            let p: Vec<u8> = r.get(1)?;
            rows.insert(tag, fnv1a64(&p));
        }
        Ok(())
    })();
    if let Err(e) = read {
        v.read_error = Some(format!("reading table t of {}: {e}", db.display()));
    }
    v.rows_in_table = rows.len() as u64;

    for e in &ledger {
        let mut hashes = Vec::with_capacity(e.rows as usize);
        let mut missing = 0;
        for i in 0..e.rows {
            match rows.get(&format!("{}.{i}", e.tag)) {
                Some(h) => hashes.push(*h),
                None => missing += 1,
            }
        }
        if missing > 0 {
            v.missing += 1;
            if v.lost_examples.len() < 5 {
                v.lost_examples
                    .push(format!("{} ({missing} of {} rows missing)", e.tag, e.rows));
            }
        } else if txn_hash(&hashes) != e.hash {
            v.mismatched += 1;
            if v.lost_examples.len() < 5 {
                v.lost_examples
                    .push(format!("{} (present with other contents)", e.tag));
            }
        } else {
            v.present += 1;
        }
    }
    let acked_tags: std::collections::HashSet<&str> =
        ledger.iter().map(|e| e.tag.as_str()).collect();
    v.unacknowledged_rows = rows
        .keys()
        .filter(|t| !acked_tags.contains(t.rsplit_once('.').map_or(t.as_str(), |(p, _)| p)))
        .count() as u64;
    drop(conn);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_missing_and_changed_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let ledgers = dir.path().join("ledgers");
        std::fs::create_dir(&ledgers).expect("mkdir");
        let conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL UNIQUE,
                            h INTEGER NOT NULL, payload BLOB NOT NULL);",
        )
        .expect("schema");
        let mut ledger = std::fs::File::create(ledgers.join("a")).expect("ledger");
        for (tag, payloads, store) in [
            ("good", vec![b"aa".to_vec(), b"bbb".to_vec()], true),
            ("gone", vec![b"cc".to_vec()], false),
            ("changed", vec![b"dd".to_vec()], true),
        ] {
            let hashes: Vec<u64> = payloads.iter().map(|p| fnv1a64(p)).collect();
            let e = Entry {
                tag: tag.into(),
                rows: payloads.len() as u32,
                hash: txn_hash(&hashes),
            };
            ledger.write_all(e.line().as_bytes()).expect("write");
            if store {
                for (i, p) in payloads.iter().enumerate() {
                    let p = if tag == "changed" {
                        b"xx".to_vec()
                    } else {
                        p.clone()
                    };
                    conn.execute(
                        "INSERT INTO t(tag, h, payload) VALUES (?1, 0, ?2)",
                        rusqlite::params![format!("{tag}.{i}"), p],
                    )
                    .expect("insert");
                }
            }
        }
        conn.execute(
            "INSERT INTO t(tag, h, payload) VALUES ('extra.0', 0, x'00')",
            [],
        )
        .expect("insert");
        ledger.write_all(b"cut 1 00").expect("cut line");
        drop(conn);
        let v = verify(&db, &ledgers).expect("verify");
        assert_eq!(v.acked, 3);
        assert_eq!(v.present, 1);
        assert_eq!(v.missing, 1);
        assert_eq!(v.mismatched, 1);
        assert_eq!(v.lost(), 2);
        assert!(v.integrity_ok, "{}", v.integrity);
        assert_eq!(v.rows_in_table, 4);
        assert_eq!(v.unacknowledged_rows, 1);
        assert!(v.read_error.is_none());
    }
}
