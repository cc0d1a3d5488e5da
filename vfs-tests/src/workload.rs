//! A deterministic mixed workload whose transcript proves a VFS transparent.
//!
//! [`mixed_workload`] runs schema changes, bulk inserts, updates, deletes, indexes,
//! a trigger, upserts, a multi-megabyte blob, a rolled-back transaction, nested
//! savepoints, `VACUUM`, `PRAGMA wal_checkpoint(TRUNCATE)` and `integrity_check`, and
//! records the result of every query in a text transcript. Two runs on fresh databases
//! in the same journal mode must produce byte-identical transcripts, whichever VFS
//! carries them.
//!
//! Everything is derived from a hand-written, seeded PRNG ([`Prng`]): no clock, no
//! randomness from SQLite or the OS reaches the transcript.

use std::fmt::Write as _;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection};

/// Size of the large blob written by the workload (a little over 3 MiB, so it spans
/// hundreds of overflow pages and several autocheckpoints in WAL mode).
pub const BIG_BLOB_BYTES: usize = 3 * 1024 * 1024 + 12_345;

/// Number of rows the workload inserts into `items` in its bulk transaction.
pub const ITEM_ROWS: i64 = 4_000;

/// Query results with more rows than this are recorded as a count plus a digest
/// instead of row by row, to keep the transcript readable.
const MAX_LISTED_ROWS: usize = 40;

/// SplitMix64: a tiny, well-distributed, seeded generator. Deterministic across
/// platforms and runs; not for cryptography.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`; returns 0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A lowercase word of `min..=max` letters.
    pub fn word(&mut self, min: usize, max: usize) -> String {
        let span = max.saturating_sub(min) as u64 + 1;
        let len = min + self.below(span) as usize;
        (0..len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// FNV-1a, 64 bit: a stable digest for transcripts (not for security).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Renders one SQLite value exactly (reals with a round-trip representation, blobs as
/// hex when short and as length plus digest when long).
fn render(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => format!("{r:?}"),
        ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) if b.len() <= 32 => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("x'");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
            s.push('\'');
            s
        }
        ValueRef::Blob(b) => format!("blob(len={},fnv={:016x})", b.len(), fnv1a64(b)),
    }
}

/// The transcript being built.
struct Transcript {
    out: String,
}

impl Transcript {
    fn line(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{label}: {value}");
    }

    /// Runs `sql` and records every row (or a count and digest for long results).
    fn query(&mut self, conn: &Connection, label: &str, sql: &str) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare(sql)?;
        let ncols = stmt.column_count();
        let mut rows = stmt.query([])?;
        let mut rendered: Vec<String> = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cols = Vec::with_capacity(ncols);
            for i in 0..ncols {
                cols.push(render(row.get_ref(i)?));
            }
            rendered.push(cols.join(","));
        }
        if rendered.len() <= MAX_LISTED_ROWS {
            self.line(label, format!("[{}]", rendered.join(" | ")));
        } else {
            let joined = rendered.join("\n");
            self.line(
                label,
                format!(
                    "{} rows, first [{}], last [{}], fnv={:016x}",
                    rendered.len(),
                    rendered[0],
                    rendered[rendered.len() - 1],
                    fnv1a64(joined.as_bytes())
                ),
            );
        }
        Ok(())
    }

    /// Executes one statement and records how many rows it changed.
    fn exec(
        &mut self,
        conn: &Connection,
        label: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> rusqlite::Result<()> {
        let changed = conn.execute(sql, params)?;
        self.line(label, format!("changed {changed}"));
        Ok(())
    }
}

const TAGS: [&str; 8] = [
    "red", "green", "blue", "cyan", "mauve", "ochre", "teal", "umber",
];

/// Runs the deterministic mixed workload on `conn` (a fresh, empty database whose
/// journal mode the caller has already chosen) and returns the transcript of every
/// query result.
///
/// The workload leaves the database in place (tables `items`, `blobs`, `audit`, `kv`)
/// so the caller can compare files afterwards.
pub fn mixed_workload(conn: &Connection) -> Result<String, rusqlite::Error> {
    let mut t = Transcript { out: String::new() };
    let mut rng = Prng::new(0x005E_ED0F_DA7A_BA5E);

    t.query(conn, "journal_mode", "PRAGMA journal_mode")?;
    t.query(conn, "page_size", "PRAGMA page_size")?;
    conn.execute_batch("PRAGMA user_version = 7")?;
    t.query(conn, "user_version", "PRAGMA user_version")?;

    // Schema, including a trigger and a WITHOUT ROWID table.
    conn.execute_batch(
        "CREATE TABLE items(
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             qty INTEGER NOT NULL,
             price REAL NOT NULL,
             tag TEXT
         );
         CREATE TABLE blobs(id INTEGER PRIMARY KEY, label TEXT NOT NULL, data BLOB);
         CREATE TABLE audit(id INTEGER PRIMARY KEY, item INTEGER NOT NULL, what TEXT NOT NULL);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TRIGGER items_deleted AFTER DELETE ON items BEGIN
             INSERT INTO audit(item, what) VALUES (old.id, 'deleted ' || old.name);
         END;",
    )?;
    t.query(
        conn,
        "schema",
        "SELECT type, name, tbl_name FROM sqlite_schema ORDER BY name",
    )?;

    // Bulk insert in one transaction.
    conn.execute_batch("BEGIN")?;
    {
        let mut ins =
            conn.prepare("INSERT INTO items(name, qty, price, tag) VALUES (?1, ?2, ?3, ?4)")?;
        for _ in 0..ITEM_ROWS {
            let name = rng.word(4, 18);
            let qty = rng.below(1000) as i64;
            let price = rng.below(100_000) as f64 / 100.0;
            let tag = match rng.below(9) as usize {
                8 => None,
                i => Some(TAGS[i]),
            };
            ins.execute(params![name, qty, price, tag])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    t.query(
        conn,
        "after insert",
        "SELECT count(*), sum(qty), total(price), min(name), max(name) FROM items",
    )?;

    // Indexes, and a query that uses them.
    conn.execute_batch(
        "CREATE INDEX items_tag ON items(tag);
         CREATE INDEX items_qty_price ON items(qty, price);",
    )?;
    t.query(
        conn,
        "by tag",
        "SELECT tag, count(*), sum(qty) FROM items GROUP BY tag ORDER BY tag",
    )?;
    t.query(
        conn,
        "top qty",
        "SELECT id, name, qty, price FROM items ORDER BY qty DESC, price DESC, id LIMIT 10",
    )?;

    // Random updates in one transaction, then a set-wide update.
    conn.execute_batch("BEGIN")?;
    {
        let mut upd = conn.prepare("UPDATE items SET qty = ?1, price = ?2 WHERE id = ?3")?;
        let mut changed = 0usize;
        for _ in 0..500 {
            let id = 1 + rng.below(ITEM_ROWS as u64) as i64;
            let qty = rng.below(1000) as i64;
            let price = rng.below(100_000) as f64 / 100.0;
            changed += upd.execute(params![qty, price, id])?;
        }
        t.line("random updates", format!("changed {changed}"));
    }
    t.exec(
        conn,
        "hot tag",
        "UPDATE items SET tag = 'hot' WHERE qty > 900",
        [],
    )?;
    conn.execute_batch("COMMIT")?;
    t.query(
        conn,
        "after update",
        "SELECT count(*), sum(qty), total(price) FROM items WHERE tag = 'hot'",
    )?;

    // Deletes, which fire the trigger.
    t.exec(
        conn,
        "delete every 5th",
        "DELETE FROM items WHERE id % 5 = 0",
        [],
    )?;
    t.query(
        conn,
        "audit",
        "SELECT count(*), min(item), max(item) FROM audit",
    )?;

    // Upserts into the WITHOUT ROWID table.
    conn.execute_batch("BEGIN")?;
    {
        let mut up = conn.prepare(
            "INSERT INTO kv(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = v + excluded.v",
        )?;
        for _ in 0..300 {
            let k = format!("key{:03}", rng.below(120));
            let v = rng.below(50) as i64;
            up.execute(params![k, v])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    t.query(
        conn,
        "kv",
        "SELECT count(*), sum(v), min(k), max(k) FROM kv",
    )?;

    // A multi-megabyte blob and a few small ones.
    let mut big = vec![0u8; BIG_BLOB_BYTES];
    rng.fill(&mut big);
    let big_fnv = fnv1a64(&big);
    t.line(
        "big blob written",
        format!("{BIG_BLOB_BYTES} bytes fnv={big_fnv:016x}"),
    );
    conn.execute(
        "INSERT INTO blobs(label, data) VALUES ('big', ?1)",
        params![big],
    )?;
    for i in 0..5 {
        let mut small = vec![0u8; 10 + 37 * i];
        rng.fill(&mut small);
        conn.execute(
            "INSERT INTO blobs(label, data) VALUES (?1, ?2)",
            params![format!("small{i}"), small],
        )?;
    }
    t.query(
        conn,
        "blobs",
        "SELECT id, label, length(data), hex(substr(data, 1, 16)), hex(substr(data, 2000001, 16))
         FROM blobs ORDER BY id",
    )?;
    let back: Vec<u8> = conn.query_row("SELECT data FROM blobs WHERE label = 'big'", [], |r| {
        r.get(0)
    })?;
    t.line(
        "big blob read back",
        format!(
            "{} bytes fnv={:016x} identical={}",
            back.len(),
            fnv1a64(&back),
            back == big
        ),
    );
    drop(back);
    drop(big);

    // A transaction that is rolled back.
    conn.execute_batch(
        "BEGIN;
         DELETE FROM items;
         INSERT INTO blobs(label, data) VALUES ('doomed', zeroblob(100000));
         UPDATE kv SET v = 0;",
    )?;
    t.query(conn, "inside doomed txn", "SELECT count(*) FROM items")?;
    conn.execute_batch("ROLLBACK")?;
    t.query(
        conn,
        "after rollback",
        "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM blobs),
                (SELECT sum(v) FROM kv), (SELECT count(*) FROM audit)",
    )?;

    // Nested savepoints: the inner delete is rolled back, the rest is kept.
    conn.execute_batch("SAVEPOINT outer_sp")?;
    for i in 0..5 {
        conn.execute(
            "INSERT INTO items(id, name, qty, price, tag) VALUES (?1, ?2, ?3, 1.5, 'sp')",
            params![ITEM_ROWS + 1 + i, format!("saved{i}"), i],
        )?;
    }
    conn.execute_batch("SAVEPOINT inner_sp")?;
    t.exec(
        conn,
        "inner delete",
        "DELETE FROM items WHERE qty < 500",
        [],
    )?;
    conn.execute_batch("ROLLBACK TO inner_sp")?;
    t.exec(
        conn,
        "inner update",
        "UPDATE items SET qty = qty + 1000 WHERE tag = 'sp'",
        [],
    )?;
    conn.execute_batch("RELEASE inner_sp; RELEASE outer_sp")?;
    t.query(
        conn,
        "after savepoints",
        &format!("SELECT id, name, qty, price, tag FROM items WHERE id > {ITEM_ROWS} ORDER BY id"),
    )?;
    t.query(conn, "items count", "SELECT count(*) FROM items")?;

    // Free the big blob, then VACUUM.
    t.exec(
        conn,
        "drop big blob",
        "DELETE FROM blobs WHERE label = 'big'",
        [],
    )?;
    t.query(conn, "freelist before vacuum", "PRAGMA freelist_count")?;
    conn.execute_batch("VACUUM")?;
    t.query(conn, "freelist after vacuum", "PRAGMA freelist_count")?;
    t.query(conn, "page_count after vacuum", "PRAGMA page_count")?;

    // A write after VACUUM, so the WAL has frames, then a truncating checkpoint (a
    // no-op reporting 0|-1|-1 in rollback-journal mode).
    t.exec(
        conn,
        "after vacuum",
        "INSERT INTO kv(k, v) VALUES ('after-vacuum', 1)",
        [],
    )?;
    t.query(conn, "wal_checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)")?;

    t.query(conn, "integrity_check", "PRAGMA integrity_check")?;
    t.query(conn, "quick_check", "PRAGMA quick_check")?;

    // Final contents, table by table.
    t.query(conn, "final items", "SELECT * FROM items ORDER BY id")?;
    t.query(conn, "final blobs", "SELECT * FROM blobs ORDER BY id")?;
    t.query(conn, "final audit", "SELECT * FROM audit ORDER BY id")?;
    t.query(conn, "final kv", "SELECT * FROM kv ORDER BY k")?;
    t.query(
        conn,
        "final index order",
        "SELECT id FROM items INDEXED BY items_qty_price WHERE qty >= 0 ORDER BY qty, price, id",
    )?;
    t.query(conn, "journal_mode at end", "PRAGMA journal_mode")?;

    Ok(t.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_deterministic_and_spread() {
        let mut a = Prng::new(42);
        let mut b = Prng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "100 draws should not repeat");
        let mut c = Prng::new(43);
        assert_ne!(c.next_u64(), xs[0]);
    }

    #[test]
    fn transcript_is_repeatable_in_memory() {
        let a = Connection::open_in_memory().expect("open in-memory db");
        let b = Connection::open_in_memory().expect("open in-memory db");
        let ta = mixed_workload(&a).expect("workload a");
        let tb = mixed_workload(&b).expect("workload b");
        assert_eq!(ta, tb);
        assert!(ta.contains("integrity_check: [\"ok\"]"), "{ta}");
        assert!(ta.contains("identical=true"), "{ta}");
    }
}
