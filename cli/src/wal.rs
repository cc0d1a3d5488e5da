//! The `-wal` file (sqlite.org/fileformat2.html §4, src/wal.c): a 32-byte header, then
//! frames of a 24-byte frame header and one page. Every field is big-endian.
//!
//! Validity is SQLite's own (walIndexRecover/walDecodeFrame): the header must have the
//! magic 0x377f0682 or 0x377f0683, a power-of-two page size from 512 to 65536 and a
//! correct checksum of its first 24 bytes, or SQLite ignores the whole file. A frame is
//! valid if its salts equal the header's, its page number is not zero, and its checksum
//! equals the checksum computed *cumulatively*, seeded with the header checksum, over the
//! first 8 bytes of every frame header and every page up to and including this frame.
//! The checksum reads the bytes as 32-bit words, big-endian when the magic's low bit is
//! set, little-endian otherwise. Recovery stops at the first invalid frame; the WAL's
//! content ends at the last valid *commit* frame (non-zero "database size" field).

use std::io::{self, Read};

pub const MAGIC: u32 = 0x377f_0682;
pub const HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
pub const FORMAT_VERSION: u32 = 3_007_000;

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `seed`.
pub fn checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    debug_assert!(data.len() % 8 == 0);
    let (mut s1, mut s2) = seed;
    let word = |c: &[u8]| {
        let b = [c[0], c[1], c[2], c[3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    for pair in data.chunks_exact(8) {
        s1 = s1.wrapping_add(word(&pair[..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(word(&pair[4..])).wrapping_add(s1);
    }
    (s1, s2)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalHeader {
    pub magic: u32,
    pub format: u32,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt: (u32, u32),
    /// The checksum stored at offsets 24/28.
    pub stored_checksum: (u32, u32),
    /// The checksum of bytes 0..24 as SQLite computes it.
    pub computed_checksum: (u32, u32),
}

impl WalHeader {
    pub fn parse(b: &[u8]) -> Option<WalHeader> {
        if b.len() < HEADER_LEN {
            return None;
        }
        let magic = be32(b, 0);
        Some(WalHeader {
            magic,
            format: be32(b, 4),
            page_size: be32(b, 8),
            checkpoint_seq: be32(b, 12),
            salt: (be32(b, 16), be32(b, 20)),
            stored_checksum: (be32(b, 24), be32(b, 28)),
            computed_checksum: checksum(magic & 1 == 1, &b[..24], (0, 0)),
        })
    }

    pub fn magic_ok(&self) -> bool {
        self.magic & 0xFFFF_FFFE == MAGIC
    }

    /// Checksums are computed on big-endian words (magic 0x377f0683).
    pub fn big_endian_checksums(&self) -> bool {
        self.magic & 1 == 1
    }

    pub fn page_size_ok(&self) -> bool {
        (512..=65_536).contains(&self.page_size) && self.page_size.is_power_of_two()
    }

    pub fn checksum_ok(&self) -> bool {
        self.stored_checksum == self.computed_checksum
    }

    /// Why SQLite ignores this WAL entirely (None: the header is good).
    pub fn problem(&self) -> Option<String> {
        if !self.magic_ok() {
            Some(format!(
                "bad magic 0x{:08x} (expected 0x377f0682 or 0x377f0683)",
                self.magic
            ))
        } else if !self.page_size_ok() {
            Some(format!("bad page size {}", self.page_size))
        } else if !self.checksum_ok() {
            Some(format!(
                "header checksum mismatch: stored {:08x}/{:08x}, computed {:08x}/{:08x}",
                self.stored_checksum.0,
                self.stored_checksum.1,
                self.computed_checksum.0,
                self.computed_checksum.1
            ))
        } else if self.format != FORMAT_VERSION {
            Some(format!(
                "unknown format version {} (expected {FORMAT_VERSION}): SQLite refuses to open it",
                self.format
            ))
        } else {
            None
        }
    }
}

/// Why a frame is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// The salts are not the header's: a frame of an earlier WAL generation (normal after
    /// the WAL restarted from the beginning) or garbage.
    SaltMismatch { salt: (u32, u32) },
    /// Page number zero.
    ZeroPage,
    /// The salts match but the cumulative checksum does not: a torn or damaged write.
    Checksum {
        stored: (u32, u32),
        computed: (u32, u32),
    },
}

impl FrameProblem {
    pub fn describe(&self) -> String {
        match self {
            FrameProblem::SaltMismatch { salt } => format!(
                "salts {:08x}/{:08x} are not this WAL's (a frame left from an earlier WAL generation)",
                salt.0, salt.1
            ),
            FrameProblem::ZeroPage => "page number 0".to_owned(),
            FrameProblem::Checksum { stored, computed } => format!(
                "bad checksum: stored {:08x}/{:08x}, computed {:08x}/{:08x}",
                stored.0, stored.1, computed.0, computed.1
            ),
        }
    }
}

/// One commit frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// 1-based frame number.
    pub frame: u32,
    /// Database size in pages after this commit.
    pub db_pages: u32,
    /// The cumulative checksum after this frame (what the `-shm` keeps as aFrameCksum).
    pub checksum: (u32, u32),
}

/// Everything learned from one pass over a `-wal`.
#[derive(Debug, Clone, Default)]
pub struct WalScan {
    pub file_size: u64,
    /// None when the file is shorter than the header.
    pub header: Option<WalHeader>,
    /// Complete frames the file holds by its size (valid or not).
    pub frames_in_file: u64,
    /// Bytes after the last complete frame.
    pub trailing_bytes: u64,
    /// Frames 1..=valid_frames are valid.
    pub valid_frames: u32,
    /// Page number of each valid frame (index 0 is frame 1).
    pub pages: Vec<u32>,
    pub commits: Vec<Commit>,
    /// The first frame that is not valid, and why.
    pub first_invalid: Option<(u32, FrameProblem)>,
    /// The first invalid frame's header claims a commit (non-zero database size).
    pub first_invalid_claims_commit: bool,
    /// Frames after the first invalid one that still carry this WAL's salts (content
    /// SQLite will never read), and how many of them claim a commit.
    pub later_frames_with_salts: u32,
    pub later_commits_with_salts: u32,
    /// Only the first [`LATER_FRAMES_LOOKED_AT`] frames after the first invalid one were
    /// read (a huge or sparse file: SQLite itself never reads past the first invalid one).
    pub later_cut: bool,
}

/// How many frames after the first invalid one are read for the report.
pub const LATER_FRAMES_LOOKED_AT: u64 = 1 << 16;

impl WalScan {
    pub fn last_commit(&self) -> Option<Commit> {
        self.commits.last().copied()
    }

    /// Frame number of the last valid commit (0: none). This is what recovery sets
    /// mxFrame to.
    pub fn last_commit_frame(&self) -> u32 {
        self.last_commit().map_or(0, |c| c.frame)
    }

    /// Valid frames after the last commit (a transaction in progress, or a writer that
    /// died mid-transaction).
    pub fn uncommitted_tail(&self) -> u32 {
        self.valid_frames - self.last_commit_frame()
    }

    /// Whether SQLite would use this WAL at all.
    pub fn usable(&self) -> bool {
        self.header.as_ref().is_some_and(|h| h.problem().is_none())
    }

    /// The commit frame `frame`, if it is one.
    pub fn commit_at(&self, frame: u32) -> Option<Commit> {
        self.commits.iter().copied().find(|c| c.frame == frame)
    }
}

/// Reads a whole `-wal` from `r` (of `file_size` bytes).
pub fn scan<R: Read>(mut r: R, file_size: u64) -> io::Result<WalScan> {
    let mut out = WalScan {
        file_size,
        ..WalScan::default()
    };
    let mut hdr = [0u8; HEADER_LEN];
    if file_size < HEADER_LEN as u64 {
        return Ok(out);
    }
    if !read_full(&mut r, &mut hdr)? {
        return Ok(out);
    }
    let Some(h) = WalHeader::parse(&hdr) else {
        return Ok(out);
    };
    let page_ok = h.page_size_ok();
    out.header = Some(h.clone());
    if !page_ok {
        // Frames cannot even be delimited.
        out.trailing_bytes = file_size - HEADER_LEN as u64;
        return Ok(out);
    }
    let frame_len = FRAME_HEADER_LEN + h.page_size as usize;
    out.frames_in_file = (file_size - HEADER_LEN as u64) / frame_len as u64;
    out.trailing_bytes = (file_size - HEADER_LEN as u64) % frame_len as u64;
    let be = h.big_endian_checksums();
    // Seeded with the stored header checksum (SQLite has checked it equals the computed
    // one; when it does not, the frames are still checked for the report).
    let mut running = h.stored_checksum;
    let mut buf = vec![0u8; frame_len];
    for i in 0..out.frames_in_file {
        if !read_full(&mut r, &mut buf)? {
            break; // the file shrank under us
        }
        let frame = (i + 1) as u32;
        let pgno = be32(&buf, 0);
        let db_size = be32(&buf, 4);
        let salt = (be32(&buf, 8), be32(&buf, 12));
        if let Some((bad, _)) = &out.first_invalid {
            if i >= u64::from(*bad) + LATER_FRAMES_LOOKED_AT {
                out.later_cut = true;
                break;
            }
            if salt == h.salt {
                out.later_frames_with_salts += 1;
                out.later_commits_with_salts += u32::from(db_size != 0);
            }
            continue;
        }
        out.first_invalid_claims_commit = db_size != 0;
        if salt != h.salt {
            out.first_invalid = Some((frame, FrameProblem::SaltMismatch { salt }));
            continue;
        }
        if pgno == 0 {
            out.first_invalid = Some((frame, FrameProblem::ZeroPage));
            continue;
        }
        let c = checksum(be, &buf[..8], running);
        let c = checksum(be, &buf[FRAME_HEADER_LEN..], c);
        let stored = (be32(&buf, 16), be32(&buf, 20));
        if c != stored {
            out.first_invalid = Some((
                frame,
                FrameProblem::Checksum {
                    stored,
                    computed: c,
                },
            ));
            continue;
        }
        running = c;
        out.valid_frames = frame;
        out.pages.push(pgno);
        if db_size != 0 {
            out.commits.push(Commit {
                frame,
                db_pages: db_size,
                checksum: c,
            });
        }
    }
    Ok(out)
}

/// `read_exact` that reports a clean end of file as `false`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Builds WAL files for tests (here and in other modules' tests).
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub(crate) struct WalBuilder {
        pub bytes: Vec<u8>,
        pub big_endian: bool,
        pub page_size: u32,
        pub salt: (u32, u32),
        pub running: (u32, u32),
    }

    impl WalBuilder {
        pub(crate) fn new(big_endian: bool, page_size: u32, salt: (u32, u32)) -> WalBuilder {
            let mut h = Vec::with_capacity(HEADER_LEN);
            h.extend_from_slice(&(MAGIC | u32::from(big_endian)).to_be_bytes());
            h.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            h.extend_from_slice(&page_size.to_be_bytes());
            h.extend_from_slice(&0u32.to_be_bytes());
            h.extend_from_slice(&salt.0.to_be_bytes());
            h.extend_from_slice(&salt.1.to_be_bytes());
            let c = checksum(big_endian, &h, (0, 0));
            h.extend_from_slice(&c.0.to_be_bytes());
            h.extend_from_slice(&c.1.to_be_bytes());
            WalBuilder {
                bytes: h,
                big_endian,
                page_size,
                salt,
                running: c,
            }
        }

        /// Appends a valid frame for page `pgno` (commit when `db_size` != 0).
        pub(crate) fn frame(&mut self, pgno: u32, db_size: u32, fill: u8) -> &mut Self {
            let mut f = Vec::with_capacity(FRAME_HEADER_LEN + self.page_size as usize);
            f.extend_from_slice(&pgno.to_be_bytes());
            f.extend_from_slice(&db_size.to_be_bytes());
            f.extend_from_slice(&self.salt.0.to_be_bytes());
            f.extend_from_slice(&self.salt.1.to_be_bytes());
            let page: Vec<u8> = (0..self.page_size)
                .map(|i| fill.wrapping_add(i as u8))
                .collect();
            let c = checksum(self.big_endian, &f[..8], self.running);
            let c = checksum(self.big_endian, &page, c);
            self.running = c;
            f.extend_from_slice(&c.0.to_be_bytes());
            f.extend_from_slice(&c.1.to_be_bytes());
            f.extend_from_slice(&page);
            self.bytes.extend_from_slice(&f);
            self
        }

        pub(crate) fn frame_offset(&self, frame: u32) -> usize {
            HEADER_LEN + (frame as usize - 1) * (FRAME_HEADER_LEN + self.page_size as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::WalBuilder;
    use super::*;

    fn scan_bytes(b: &[u8]) -> WalScan {
        scan(b, b.len() as u64).expect("in-memory scan")
    }

    #[test]
    fn checksum_matches_the_documented_recurrence() {
        // Two words per step: s1 += x0 + s2; s2 += x1 + s1.
        let data = [1u32, 2, 3, 4];
        let mut le = Vec::new();
        let mut be = Vec::new();
        for w in data {
            le.extend_from_slice(&w.to_le_bytes());
            be.extend_from_slice(&w.to_be_bytes());
        }
        // step 1: s1 = 1, s2 = 2 + 1 = 3; step 2: s1 = 1 + 3 + 3 = 7, s2 = 3 + 4 + 7 = 14
        assert_eq!(checksum(false, &le, (0, 0)), (7, 14));
        assert_eq!(checksum(true, &be, (0, 0)), (7, 14));
        assert_ne!(checksum(true, &le, (0, 0)), (7, 14));
        // Wrapping arithmetic: s1 = 1 + 0xffffffff + 1 = 1, s2 = 1 + 0xffffffff + 1 = 1.
        assert_eq!(checksum(false, &[0xFFu8; 8], (1, 1)), (1, 1));
    }

    #[test]
    fn a_clean_wal_is_valid_in_both_byte_orders() {
        for be in [false, true] {
            let mut w = WalBuilder::new(be, 512, (11, 22));
            w.frame(1, 0, 1)
                .frame(2, 2, 2)
                .frame(3, 3, 3)
                .frame(1, 0, 4);
            let s = scan_bytes(&w.bytes);
            let h = s.header.as_ref().expect("header");
            assert!(h.problem().is_none(), "{:?}", h.problem());
            assert_eq!(h.big_endian_checksums(), be);
            assert_eq!(s.frames_in_file, 4);
            assert_eq!(s.valid_frames, 4);
            assert_eq!(s.pages, vec![1, 2, 3, 1]);
            assert_eq!(s.commits.len(), 2);
            assert_eq!(s.last_commit_frame(), 3);
            assert_eq!(s.last_commit().map(|c| c.db_pages), Some(3));
            assert_eq!(s.uncommitted_tail(), 1);
            assert!(s.first_invalid.is_none());
            assert_eq!(s.trailing_bytes, 0);
        }
    }

    #[test]
    fn a_bad_checksum_after_the_last_commit_stops_validation() {
        let mut w = WalBuilder::new(false, 512, (5, 6));
        w.frame(1, 0, 1)
            .frame(2, 2, 2)
            .frame(3, 0, 3)
            .frame(4, 4, 4);
        // Damage frame 3's page: frames 3 and 4 become invalid; frame 4 still has the salts.
        let off = w.frame_offset(3) + FRAME_HEADER_LEN + 10;
        w.bytes[off] ^= 0xFF;
        let s = scan_bytes(&w.bytes);
        assert_eq!(s.valid_frames, 2);
        assert_eq!(s.last_commit_frame(), 2);
        assert!(matches!(
            s.first_invalid,
            Some((3, FrameProblem::Checksum { .. }))
        ));
        assert_eq!(s.later_frames_with_salts, 1);
        assert_eq!(s.later_commits_with_salts, 1);
        assert!(!s.first_invalid_claims_commit);
    }

    #[test]
    fn old_generation_frames_are_salt_mismatches() {
        let mut old = WalBuilder::new(false, 512, (1, 1));
        old.frame(1, 0, 1).frame(2, 0, 2).frame(3, 3, 3);
        let mut new = WalBuilder::new(false, 512, (2, 9));
        new.frame(7, 7, 7);
        // A WAL reset: the new generation overwrote the header and frame 1 only.
        let mut bytes = old.bytes.clone();
        bytes[..new.bytes.len()].copy_from_slice(&new.bytes);
        let s = scan_bytes(&bytes);
        assert_eq!(s.valid_frames, 1);
        assert_eq!(s.last_commit_frame(), 1);
        assert!(matches!(
            s.first_invalid,
            Some((2, FrameProblem::SaltMismatch { salt: (1, 1) }))
        ));
        assert_eq!(s.later_frames_with_salts, 0);
    }

    #[test]
    fn header_problems_are_named() {
        let mut w = WalBuilder::new(false, 4096, (1, 2));
        w.frame(1, 1, 0);
        let mut b = w.bytes.clone();
        b[20] ^= 1; // salt-2 changed: header checksum no longer matches
        let s = scan_bytes(&b);
        assert!(!s.usable());
        let p = s
            .header
            .as_ref()
            .and_then(WalHeader::problem)
            .expect("problem");
        assert!(p.contains("checksum"), "{p}");
        let mut b = w.bytes.clone();
        b[3] = 0x99;
        assert!(scan_bytes(&b)
            .header
            .and_then(|h| h.problem())
            .is_some_and(|p| p.contains("magic")));
        // Shorter than a header: nothing.
        let s = scan_bytes(&w.bytes[..20]);
        assert!(s.header.is_none());
        assert!(!s.usable());
    }

    #[test]
    fn a_huge_file_is_not_read_past_the_first_invalid_frame_and_a_bit() {
        // A -wal that says it is a terabyte (a sparse file): one valid frame, then zeros.
        let mut w = WalBuilder::new(false, 512, (1, 2));
        w.frame(1, 1, 0);
        let size = 1u64 << 40;
        let r = io::Read::chain(&w.bytes[..], io::repeat(0));
        let s = scan(r, size).expect("scan");
        assert_eq!(s.valid_frames, 1);
        assert!(matches!(
            s.first_invalid,
            Some((2, FrameProblem::SaltMismatch { .. }))
        ));
        assert!(s.later_cut);
        assert!(s.frames_in_file > 1 << 30);
        // A file that ends on its own is read to the end.
        let mut w = WalBuilder::new(false, 512, (1, 2));
        w.frame(1, 1, 0).frame(2, 2, 0);
        let off = w.frame_offset(1) + 30;
        w.bytes[off] ^= 1;
        assert!(!scan_bytes(&w.bytes).later_cut);
    }

    #[test]
    fn a_partial_last_frame_is_trailing_bytes() {
        let mut w = WalBuilder::new(false, 512, (1, 2));
        w.frame(1, 1, 0).frame(2, 2, 0);
        let b = &w.bytes[..w.bytes.len() - 100];
        let s = scan_bytes(b);
        assert_eq!(s.frames_in_file, 1);
        assert_eq!(s.trailing_bytes, (FRAME_HEADER_LEN + 512 - 100) as u64);
        assert_eq!(s.valid_frames, 1);
    }
}
