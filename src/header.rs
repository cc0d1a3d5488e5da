//! The 100-byte SQLite database header (<https://sqlite.org/fileformat2.html#the_database_header>),
//! parsed in safe Rust for the guards (G3, G5). Only the fields the guards need are kept.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | magic `"SQLite format 3\0"` |
//! | 16 | 2 | page size, big-endian; a power of two in 512..=32768, or 1 meaning 65536 |
//! | 18 | 1 | file format write version (1 legacy/rollback, 2 WAL) |
//! | 19 | 1 | file format read version (1 legacy/rollback, 2 WAL) |
//! | 24 | 4 | file change counter |
//! | 28 | 4 | database size in pages ("in-header database size") |
//! | 92 | 4 | version-valid-for: the change counter when 96..100 were written |
//!
//! The in-header size is trusted (as SQLite does in `lockBtree`) only when it is non-zero
//! and version-valid-for equals the change counter; SQLite versions before 3.7.0 did not
//! maintain it, and such writers leave the two fields different.

#![allow(dead_code)] // Some accessors exist for the io layer and tests only.

use std::fmt;

/// Length of the database header.
pub(crate) const HEADER_LEN: usize = 100;

/// The magic string every SQLite 3 database begins with.
pub(crate) const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Offset of the byte range SQLite locks (`PENDING_BYTE`, 0x40000000). The page that
/// contains it is never written by SQLite.
const PENDING_BYTE: u64 = 0x4000_0000;

/// Why a header could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than 100 bytes were given.
    Truncated { len: usize },
    /// The first 16 bytes are not `"SQLite format 3\0"`.
    WrongMagic,
    /// Bytes 16..18 hold no valid page size (the raw big-endian value is kept).
    InvalidPageSize(u16),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Truncated { len } => {
                write!(f, "database header truncated: {len} of {HEADER_LEN} bytes")
            }
            HeaderError::WrongMagic => write!(f, "not an SQLite 3 database header (wrong magic)"),
            HeaderError::InvalidPageSize(raw) => {
                write!(f, "database header has an invalid page size field ({raw})")
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// The fields of a database header that walguard uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbHeader {
    /// Page size in bytes (512..=65536, a power of two; the stored value 1 is 65536).
    pub page_size: u32,
    /// Byte 18: file format write version (1 rollback journal, 2 WAL).
    pub write_version: u8,
    /// Byte 19: file format read version (1 rollback journal, 2 WAL).
    pub read_version: u8,
    /// Bytes 24..28: file change counter.
    pub change_counter: u32,
    /// Bytes 28..32: database size in pages, as written in the header.
    pub page_count: u32,
    /// Bytes 92..96: the change counter value for which the in-header size is valid.
    pub version_valid_for: u32,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl DbHeader {
    /// Parses the first 100 bytes of `bytes` (more may be given, e.g. a whole page 1).
    pub(crate) fn parse(bytes: &[u8]) -> Result<DbHeader, HeaderError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Truncated { len: bytes.len() });
        };
        if &h[..16] != MAGIC {
            return Err(HeaderError::WrongMagic);
        }
        let raw = u16::from_be_bytes([h[16], h[17]]);
        let page_size = match raw {
            1 => 65536,
            512..=32768 if raw.is_power_of_two() => u32::from(raw),
            _ => return Err(HeaderError::InvalidPageSize(raw)),
        };
        Ok(DbHeader {
            page_size,
            write_version: h[18],
            read_version: h[19],
            change_counter: be_u32(h, 24),
            page_count: be_u32(h, 28),
            version_valid_for: be_u32(h, 92),
        })
    }

    /// Whether the in-header database size can be trusted: non-zero, and written by
    /// the same transaction that wrote the change counter.
    pub(crate) fn in_header_size_valid(&self) -> bool {
        self.page_count != 0 && self.version_valid_for == self.change_counter
    }

    /// The smallest file size, in bytes, that holds every page the header claims, or
    /// `None` when the in-header size is not valid (then the file size is the database
    /// size, as in SQLite).
    pub(crate) fn expected_min_file_size(&self) -> Option<u64> {
        self.in_header_size_valid()
            .then(|| u64::from(self.page_count) * u64::from(self.page_size))
    }

    /// Whether the header marks the database as being in WAL mode (format versions 2).
    /// Either byte set to 2 is enough: SQLite writes both together.
    pub(crate) fn is_wal(&self) -> bool {
        self.write_version == 2 || self.read_version == 2
    }

    /// The 1-based number of the page that holds SQLite's lock bytes (`PENDING_BYTE`).
    /// SQLite never writes that page, so a database whose last page is this one is one
    /// page shorter on disk than its header says.
    pub(crate) fn pending_byte_page(&self) -> u64 {
        PENDING_BYTE / u64::from(self.page_size) + 1
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-formed header: page size `raw_page_size` as stored (1 = 65536), rollback
    /// mode, change counter 7, `pages` pages, valid in-header size.
    pub(crate) fn make_header(raw_page_size: u16, pages: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&raw_page_size.to_be_bytes());
        h[18] = 1;
        h[19] = 1;
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h[96..100].copy_from_slice(&3_054_001u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_valid_header() {
        let h = make_header(4096, 3);
        let d = DbHeader::parse(&h).expect("valid header");
        assert_eq!(d.page_size, 4096);
        assert_eq!(d.change_counter, 7);
        assert_eq!(d.page_count, 3);
        assert_eq!(d.version_valid_for, 7);
        assert!(d.in_header_size_valid());
        assert_eq!(d.expected_min_file_size(), Some(3 * 4096));
        assert!(!d.is_wal());
    }

    #[test]
    fn accepts_a_whole_page_one() {
        let mut page = vec![0u8; 4096];
        page[..HEADER_LEN].copy_from_slice(&make_header(4096, 9));
        assert_eq!(DbHeader::parse(&page).map(|d| d.page_count), Ok(9));
    }

    #[test]
    fn page_size_one_means_65536() {
        let d = DbHeader::parse(&make_header(1, 2)).expect("valid header");
        assert_eq!(d.page_size, 65536);
        assert_eq!(d.expected_min_file_size(), Some(2 * 65536));
    }

    #[test]
    fn every_legal_page_size_parses() {
        for shift in 9..=15 {
            let raw = 1u16 << shift;
            let d = DbHeader::parse(&make_header(raw, 1)).expect("legal page size");
            assert_eq!(d.page_size, u32::from(raw));
        }
    }

    #[test]
    fn rejects_truncated_input() {
        let h = make_header(4096, 3);
        assert_eq!(
            DbHeader::parse(&h[..99]),
            Err(HeaderError::Truncated { len: 99 })
        );
        assert_eq!(DbHeader::parse(&[]), Err(HeaderError::Truncated { len: 0 }));
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut h = make_header(4096, 3);
        h[15] = b'x';
        assert_eq!(DbHeader::parse(&h), Err(HeaderError::WrongMagic));
        assert_eq!(
            DbHeader::parse(&[0u8; HEADER_LEN]),
            Err(HeaderError::WrongMagic)
        );
    }

    #[test]
    fn rejects_invalid_page_sizes() {
        for raw in [0u16, 2, 256, 511, 513, 1000, 4097, 65535, 32769] {
            assert_eq!(
                DbHeader::parse(&make_header(raw, 1)),
                Err(HeaderError::InvalidPageSize(raw)),
                "raw page size {raw}"
            );
        }
    }

    #[test]
    fn stale_in_header_size_is_not_trusted() {
        // A pre-3.7.0 writer bumped the change counter but not version-valid-for.
        let mut h = make_header(4096, 3);
        h[24..28].copy_from_slice(&8u32.to_be_bytes());
        let d = DbHeader::parse(&h).expect("valid header");
        assert!(!d.in_header_size_valid());
        assert_eq!(d.expected_min_file_size(), None);
    }

    #[test]
    fn zero_page_count_is_not_trusted() {
        let d = DbHeader::parse(&make_header(4096, 0)).expect("valid header");
        assert!(!d.in_header_size_valid());
        assert_eq!(d.expected_min_file_size(), None);
    }

    #[test]
    fn wal_mode_is_read_from_the_format_bytes() {
        let mut h = make_header(4096, 1);
        h[18] = 2;
        h[19] = 2;
        assert!(DbHeader::parse(&h).expect("valid header").is_wal());
    }

    #[test]
    fn largest_database_size_does_not_overflow() {
        let d = DbHeader::parse(&make_header(1, u32::MAX)).expect("valid header");
        assert_eq!(
            d.expected_min_file_size(),
            Some(u64::from(u32::MAX) * 65536)
        );
    }

    #[test]
    fn pending_byte_page_for_common_page_sizes() {
        let d = DbHeader::parse(&make_header(4096, 1)).expect("valid header");
        assert_eq!(d.pending_byte_page(), 262_145);
        let d = DbHeader::parse(&make_header(1, 1)).expect("valid header");
        assert_eq!(d.pending_byte_page(), 16_385);
    }

    #[test]
    fn errors_display_something_useful() {
        assert!(HeaderError::Truncated { len: 3 }
            .to_string()
            .contains("3 of 100"));
        assert!(HeaderError::WrongMagic.to_string().contains("magic"));
        assert!(HeaderError::InvalidPageSize(7).to_string().contains('7'));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match DbHeader::parse(&bytes) {
                Ok(d) => {
                    prop_assert!(bytes.len() >= HEADER_LEN);
                    prop_assert_eq!(&bytes[..16], &MAGIC[..]);
                    prop_assert!(d.page_size.is_power_of_two());
                    prop_assert!((512..=65536).contains(&d.page_size));
                    let _ = d.expected_min_file_size();
                    let _ = d.pending_byte_page();
                }
                Err(HeaderError::Truncated { len }) => prop_assert!(len < HEADER_LEN),
                Err(_) => prop_assert!(bytes.len() >= HEADER_LEN),
            }
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_prefix_never_panic(
            shift in 9u32..=16,
            body in proptest::collection::vec(any::<u8>(), 84..200),
        ) {
            let raw: u16 = if shift == 16 { 1 } else { 1u16 << shift };
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&raw.to_be_bytes());
            bytes.extend_from_slice(&body[..82]);
            let d = DbHeader::parse(&bytes);
            prop_assert_eq!(d.map(|d| d.page_size), Ok(1u32 << shift));
        }
    }
}
