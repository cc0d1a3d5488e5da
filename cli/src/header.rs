//! The 100-byte database header (sqlite.org/fileformat2.html §1.3). Big-endian fields.

/// The first 16 bytes of every SQLite 3 database.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
pub const HEADER_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbHeader {
    /// In bytes (the on-disk value 1 means 65536).
    pub page_size: u32,
    /// The raw two bytes at offset 16.
    pub page_size_raw: u16,
    /// Offset 18: 1 legacy (rollback journal), 2 WAL.
    pub write_version: u8,
    /// Offset 19: 1 legacy (rollback journal), 2 WAL.
    pub read_version: u8,
    pub reserved_per_page: u8,
    pub max_payload_fraction: u8,
    pub min_payload_fraction: u8,
    pub leaf_payload_fraction: u8,
    /// Offset 24.
    pub change_counter: u32,
    /// Offset 28: the "in-header database size" in pages.
    pub page_count: u32,
    pub freelist_trunk: u32,
    pub freelist_count: u32,
    pub schema_cookie: u32,
    pub schema_format: u32,
    pub text_encoding: u32,
    pub user_version: u32,
    pub application_id: u32,
    /// Offsets 72..92 must be zero.
    pub reserved_zero: bool,
    /// Offset 92: the change counter value when `page_count` was last written.
    pub version_valid_for: u32,
    /// Offset 96: SQLITE_VERSION_NUMBER of the library that last wrote the file.
    pub sqlite_version_number: u32,
}

/// Why 100 bytes are not a database header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The file starts like a database (or is a prefix of the magic) but is shorter
    /// than the header: a truncated database.
    Truncated { len: usize },
    /// The first 16 bytes are not the SQLite magic.
    NotSqlite { first_bytes: Vec<u8> },
}

/// What the journal-mode bytes 18/19 say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// 1/1: rollback journal (`-journal`).
    Rollback,
    /// 2/2: WAL (`-wal` + `-shm`).
    Wal,
    /// Any other combination.
    Other(u8, u8),
}

impl JournalMode {
    pub fn name(self) -> String {
        match self {
            JournalMode::Rollback => "rollback".to_owned(),
            JournalMode::Wal => "WAL".to_owned(),
            JournalMode::Other(w, r) => format!("unknown ({w}/{r})"),
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the first bytes of a database file. `buf` is what could be read (up to 100).
pub fn parse(buf: &[u8]) -> Result<DbHeader, HeaderError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(HeaderError::NotSqlite {
            first_bytes: buf[..buf.len().min(16)].to_vec(),
        });
    }
    if buf.len() < HEADER_LEN {
        return Err(HeaderError::Truncated { len: buf.len() });
    }
    let raw = u16::from_be_bytes([buf[16], buf[17]]);
    Ok(DbHeader {
        page_size: if raw == 1 { 65_536 } else { u32::from(raw) },
        page_size_raw: raw,
        write_version: buf[18],
        read_version: buf[19],
        reserved_per_page: buf[20],
        max_payload_fraction: buf[21],
        min_payload_fraction: buf[22],
        leaf_payload_fraction: buf[23],
        change_counter: be32(buf, 24),
        page_count: be32(buf, 28),
        freelist_trunk: be32(buf, 32),
        freelist_count: be32(buf, 36),
        schema_cookie: be32(buf, 40),
        schema_format: be32(buf, 44),
        text_encoding: be32(buf, 56),
        user_version: be32(buf, 60),
        application_id: be32(buf, 68),
        reserved_zero: buf[72..92].iter().all(|&b| b == 0),
        version_valid_for: be32(buf, 92),
        sqlite_version_number: be32(buf, 96),
    })
}

/// `3.54.1` from 3054001.
pub fn version_string(n: u32) -> String {
    format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000)
}

impl DbHeader {
    pub fn journal_mode(&self) -> JournalMode {
        match (self.write_version, self.read_version) {
            (1, 1) => JournalMode::Rollback,
            (2, 2) => JournalMode::Wal,
            (w, r) => JournalMode::Other(w, r),
        }
    }

    pub fn page_size_valid(&self) -> bool {
        let p = self.page_size;
        (512..=65_536).contains(&p) && p.is_power_of_two()
    }

    /// SQLite trusts the in-header size only when it is non-zero and was written by a
    /// library that maintains it (change counter == version-valid-for); otherwise it
    /// computes the size from the file size.
    pub fn page_count_trusted(&self) -> bool {
        self.page_count != 0 && self.change_counter == self.version_valid_for
    }

    pub fn text_encoding_name(&self) -> &'static str {
        match self.text_encoding {
            0 => "unset",
            1 => "UTF-8",
            2 => "UTF-16le",
            3 => "UTF-16be",
            _ => "invalid",
        }
    }

    /// Header invariants that do not hold: each one is corruption (or not a file SQLite
    /// wrote).
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.page_size_valid() {
            v.push(format!(
                "page size field is {} (must be a power of two from 512 to 32768, or 1 for 65536)",
                self.page_size_raw
            ));
        }
        if (
            self.max_payload_fraction,
            self.min_payload_fraction,
            self.leaf_payload_fraction,
        ) != (64, 32, 32)
        {
            v.push(format!(
                "payload fractions are {}/{}/{} (must be 64/32/32)",
                self.max_payload_fraction, self.min_payload_fraction, self.leaf_payload_fraction
            ));
        }
        if self.write_version == 0 || self.read_version == 0 {
            v.push(format!(
                "file format versions (bytes 18/19) are {}/{} (must be 1 or 2)",
                self.write_version, self.read_version
            ));
        }
        if self.schema_format > 4 {
            v.push(format!(
                "schema format number is {} (must be 1 to 4)",
                self.schema_format
            ));
        }
        if self.text_encoding > 3 {
            v.push(format!(
                "text encoding is {} (must be 1, 2 or 3)",
                self.text_encoding
            ));
        }
        if !self.reserved_zero {
            v.push("bytes 72..92 (reserved for expansion) are not zero".to_owned());
        }
        if self.page_size_valid() && u32::from(self.reserved_per_page) > self.page_size - 480 {
            v.push(format!(
                "{} reserved bytes per page leave less than 480 usable bytes",
                self.reserved_per_page
            ));
        }
        v
    }

    /// Notes about bytes 18/19 beyond the two known modes.
    pub fn version_bytes_note(&self) -> Option<String> {
        if self.read_version > 2 {
            Some(format!(
                "read version {} is newer than this format: SQLite refuses to read the file",
                self.read_version
            ))
        } else if self.write_version > 2 {
            Some(format!(
                "write version {} is newer than this format: SQLite opens the file read-only",
                self.write_version
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid header: page size 4096, `pages` pages, WAL or rollback.
    pub(crate) fn sample(pages: u32, wal: bool) -> Vec<u8> {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        let v = if wal { 2 } else { 1 };
        h[18] = v;
        h[19] = v;
        h[21] = 64;
        h[22] = 32;
        h[23] = 32;
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[44..48].copy_from_slice(&4u32.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h[96..100].copy_from_slice(&3_054_001u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_valid_header() {
        let h = parse(&sample(10, true)).expect("valid");
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.page_count, 10);
        assert_eq!(h.change_counter, 7);
        assert!(h.page_count_trusted());
        assert_eq!(h.journal_mode(), JournalMode::Wal);
        assert_eq!(h.text_encoding_name(), "UTF-8");
        assert_eq!(version_string(h.sqlite_version_number), "3.54.1");
        assert!(h.violations().is_empty(), "{:?}", h.violations());
        let r = parse(&sample(1, false)).expect("valid");
        assert_eq!(r.journal_mode(), JournalMode::Rollback);
    }

    #[test]
    fn page_size_one_means_64k() {
        let mut b = sample(1, false);
        b[16..18].copy_from_slice(&1u16.to_be_bytes());
        let h = parse(&b).expect("valid");
        assert_eq!(h.page_size, 65_536);
        assert!(h.page_size_valid());
    }

    #[test]
    fn invariants_are_checked() {
        let mut b = sample(3, true);
        b[16..18].copy_from_slice(&1000u16.to_be_bytes());
        b[21] = 10;
        b[80] = 1;
        let h = parse(&b).expect("parses");
        let v = h.violations();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("page size"));
        let mut b = sample(3, true);
        b[92..96].copy_from_slice(&6u32.to_be_bytes());
        assert!(!parse(&b).expect("parses").page_count_trusted());
        let mut b = sample(3, true);
        b[18] = 3;
        let h = parse(&b).expect("parses");
        assert_eq!(h.journal_mode(), JournalMode::Other(3, 2));
        assert!(h
            .version_bytes_note()
            .is_some_and(|n| n.contains("read-only")));
    }

    #[test]
    fn truncated_and_foreign_files_are_told_apart() {
        let b = sample(3, true);
        assert_eq!(parse(&b[..50]), Err(HeaderError::Truncated { len: 50 }));
        assert_eq!(parse(&b[..5]), Err(HeaderError::Truncated { len: 5 }));
        assert!(matches!(
            parse(b"PK\x03\x04 a zip file, not a database at all.........................................................."),
            Err(HeaderError::NotSqlite { .. })
        ));
        assert!(matches!(
            parse(b"SQLite format 2\0"),
            Err(HeaderError::NotSqlite { .. })
        ));
    }
}
