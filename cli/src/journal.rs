//! The rollback journal `-journal` (sqlite.org/fileformat2.html §3, src/pager.c).
//!
//! Header (big-endian): 8-byte magic d9 d5 05 f9 20 a1 63 d7, record count (0xffffffff:
//! "until the end of the file", written by a no-sync journal), checksum nonce, the
//! database size in pages before the transaction, sector size, page size.
//!
//! SQLite calls a journal *hot* (pager.c hasHotJournal) when it exists, is not empty,
//! its first byte is not zero (journal_mode=PERSIST zeroes the header at commit, and a
//! safe writer writes the magic only just before it first overwrites the database), the
//! database is not empty, and nobody holds the database's RESERVED lock. The next
//! connection that reads then rolls it back, which needs write access.

pub const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
pub const HEADER_LEN: usize = 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub file_size: u64,
    /// The first byte is not zero (SQLite's own test for "may be hot").
    pub first_byte_nonzero: bool,
    pub magic_ok: bool,
    pub records: Option<u32>,
    pub nonce: Option<u32>,
    pub initial_pages: Option<u32>,
    pub sector_size: Option<u32>,
    pub page_size: Option<u32>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Journal {
    pub fn parse(b: &[u8], file_size: u64) -> Journal {
        let full = b.len() >= HEADER_LEN;
        let magic_ok = b.len() >= 8 && b[..8] == MAGIC;
        let field = |at| (full && magic_ok).then(|| be32(b, at));
        Journal {
            file_size,
            first_byte_nonzero: b.first().is_some_and(|&x| x != 0),
            magic_ok,
            records: field(8),
            nonce: field(12),
            initial_pages: field(16),
            sector_size: field(20),
            page_size: field(24),
        }
    }

    /// Could this journal be hot, as far as its own content goes (the lock and the
    /// database size are judged by the caller)?
    pub fn may_be_hot(&self) -> bool {
        self.file_size > 0 && self.first_byte_nonzero
    }

    /// What the record count means.
    pub fn records_text(&self) -> String {
        match self.records {
            Some(0xFFFF_FFFF) => "records to the end of the file (no-sync journal)".to_owned(),
            Some(n) => format!("{n} page records"),
            None => "no valid header".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_journal_header() {
        let mut b = MAGIC.to_vec();
        for v in [3u32, 0x1234, 10, 512, 4096] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.resize(512, 0);
        let j = Journal::parse(&b, 8704);
        assert!(j.magic_ok && j.may_be_hot());
        assert_eq!(j.records, Some(3));
        assert_eq!(j.initial_pages, Some(10));
        assert_eq!(j.page_size, Some(4096));
        assert_eq!(j.records_text(), "3 page records");
    }

    #[test]
    fn zeroed_and_empty_journals_are_not_hot() {
        let j = Journal::parse(&[0u8; 512], 4096);
        assert!(!j.may_be_hot() && !j.magic_ok);
        assert_eq!(j.records, None);
        let j = Journal::parse(&[], 0);
        assert!(!j.may_be_hot());
    }
}
