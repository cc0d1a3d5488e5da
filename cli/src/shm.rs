//! The `-shm` wal-index (src/wal.c, "WAL-INDEX FORMAT"). It is host memory mapped from a
//! file, so integers are in the *native* byte order of this machine.
//!
//! Layout of the first 136 bytes:
//! - 0..48 and 48..96: two copies of WalIndexHdr (iVersion, unused, iChange, isInit,
//!   bigEndCksum, szPage, mxFrame, nPage, aFrameCksum[2], aSalt[2], aCksum[2]). Writers
//!   update copy 2, then copy 1; a reader trusts them only when both are byte-identical
//!   and aCksum (SQLite's WAL checksum over the first 40 bytes, native word order) holds.
//! - 96..136: WalCkptInfo: nBackfill (96), aReadMark[5] (100..120), the lock bytes
//!   (120..128, never read or written: they are locked with fcntl), nBackfillAttempted
//!   (128), unused (132).
//!
//! After the header come the index blocks: each 32 KiB block holds an array of page
//! numbers (one per WAL frame) and a hash table; the first block's array starts after
//! the 136-byte header and holds 4062 entries, every later block 4096.

use crate::wal;

pub const HEADER_COPY_LEN: usize = 48;
pub const HEADER_LEN: usize = 136;
pub const INDEX_VERSION: u32 = 3_007_000;
pub const READMARK_NOT_USED: u32 = 0xFFFF_FFFF;
pub const BLOCK_LEN: usize = 32_768;
pub const NPAGE: u32 = 4096;
pub const NPAGE_ONE: u32 = NPAGE - (HEADER_LEN as u32 / 4);

fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One copy of the wal-index header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHeader {
    pub version: u32,
    pub change: u32,
    pub is_init: u8,
    pub big_endian_checksums: bool,
    pub page_size: u32,
    /// The last valid frame (of a committed transaction) readers use.
    pub mx_frame: u32,
    /// Database size in pages.
    pub n_page: u32,
    /// Cumulative WAL checksum after frame mx_frame.
    pub frame_checksum: (u32, u32),
    /// The WAL header's salts (the shm stores the WAL header's big-endian bytes).
    pub salt: (u32, u32),
    pub stored_checksum: (u32, u32),
    pub computed_checksum: (u32, u32),
}

impl IndexHeader {
    fn parse(b: &[u8]) -> IndexHeader {
        let sz = u16::from_ne_bytes([b[14], b[15]]);
        IndexHeader {
            version: ne32(b, 0),
            change: ne32(b, 8),
            is_init: b[12],
            big_endian_checksums: b[13] != 0,
            page_size: if sz == 1 { 65_536 } else { u32::from(sz) },
            mx_frame: ne32(b, 16),
            n_page: ne32(b, 20),
            frame_checksum: (ne32(b, 24), ne32(b, 28)),
            salt: (be32(b, 32), be32(b, 36)),
            stored_checksum: (ne32(b, 40), ne32(b, 44)),
            computed_checksum: wal::checksum(cfg!(target_endian = "big"), &b[..40], (0, 0)),
        }
    }

    pub fn checksum_ok(&self) -> bool {
        self.stored_checksum == self.computed_checksum
    }
}

/// The checkpoint information after the two header copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkptInfo {
    /// Frames already copied back into the database.
    pub n_backfill: u32,
    pub read_marks: [u32; 5],
    pub n_backfill_attempted: u32,
}

/// The parsed wal-index header.
#[derive(Debug, Clone)]
pub struct Shm {
    pub file_size: u64,
    pub copy1: IndexHeader,
    pub copy2: IndexHeader,
    /// Both 48-byte copies are byte-identical.
    pub copies_agree: bool,
    pub all_zero: bool,
    pub ckpt: CkptInfo,
}

impl Shm {
    /// Parses at least the first 136 bytes. None when the file is shorter.
    pub fn parse(b: &[u8], file_size: u64) -> Option<Shm> {
        if b.len() < HEADER_LEN {
            return None;
        }
        let mut marks = [0u32; 5];
        for (i, m) in marks.iter_mut().enumerate() {
            *m = ne32(b, 100 + 4 * i);
        }
        Some(Shm {
            file_size,
            copy1: IndexHeader::parse(&b[..HEADER_COPY_LEN]),
            copy2: IndexHeader::parse(&b[HEADER_COPY_LEN..2 * HEADER_COPY_LEN]),
            copies_agree: b[..HEADER_COPY_LEN] == b[HEADER_COPY_LEN..2 * HEADER_COPY_LEN],
            all_zero: b[..120].iter().all(|&x| x == 0),
            ckpt: CkptInfo {
                n_backfill: ne32(b, 96),
                read_marks: marks,
                n_backfill_attempted: ne32(b, 128),
            },
        })
    }

    /// The header a reader would trust: both copies agree, are initialised, checksum
    /// holds and the version is known.
    pub fn trusted(&self) -> Option<&IndexHeader> {
        let h = &self.copy1;
        (self.copies_agree && h.is_init == 1 && h.checksum_ok() && h.version == INDEX_VERSION)
            .then_some(h)
    }

    /// Why a reader would not trust the header (it then runs recovery from the `-wal`).
    pub fn distrust_reason(&self) -> Option<String> {
        if self.all_zero {
            return Some("the header is zeroed (not initialised)".to_owned());
        }
        if !self.copies_agree {
            return Some(format!(
                "the two header copies disagree (copy 1: change {} mxFrame {}; copy 2: change {} \
                 mxFrame {}): a writer died while updating it, or is updating it now",
                self.copy1.change, self.copy1.mx_frame, self.copy2.change, self.copy2.mx_frame
            ));
        }
        let h = &self.copy1;
        if h.is_init != 1 {
            return Some(format!("isInit is {} (not 1)", h.is_init));
        }
        if !h.checksum_ok() {
            return Some(format!(
                "header checksum mismatch: stored {:08x}/{:08x}, computed {:08x}/{:08x}",
                h.stored_checksum.0,
                h.stored_checksum.1,
                h.computed_checksum.0,
                h.computed_checksum.1
            ));
        }
        if h.version != INDEX_VERSION {
            return Some(format!(
                "unknown wal-index version {} (expected {INDEX_VERSION})",
                h.version
            ));
        }
        None
    }
}

/// Byte offset, within the `-shm`, of the page-number entry for WAL frame `frame`.
pub fn pgno_offset(frame: u32) -> usize {
    if frame <= NPAGE_ONE {
        HEADER_LEN + 4 * (frame as usize - 1)
    } else {
        let rest = frame - NPAGE_ONE - 1;
        let block = 1 + (rest / NPAGE) as usize;
        block * BLOCK_LEN + 4 * (rest % NPAGE) as usize
    }
}

/// The page number the index records for `frame`, if `b` holds that entry.
pub fn pgno_for_frame(b: &[u8], frame: u32) -> Option<u32> {
    if frame == 0 {
        return None;
    }
    let off = pgno_offset(frame);
    (off + 4 <= b.len()).then(|| ne32(b, off))
}

/// Bytes of the `-shm` that hold the index entries for frames 1..=mx_frame.
pub fn bytes_for_frames(mx_frame: u32) -> usize {
    if mx_frame == 0 {
        HEADER_LEN
    } else {
        pgno_offset(mx_frame) + 4
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A consistent wal-index header for a WAL with the given state.
    pub(crate) fn sample(
        mx_frame: u32,
        n_page: u32,
        salt: (u32, u32),
        frame_cksum: (u32, u32),
    ) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&INDEX_VERSION.to_ne_bytes());
        h[8..12].copy_from_slice(&3u32.to_ne_bytes());
        h[12] = 1;
        h[14..16].copy_from_slice(&4096u16.to_ne_bytes());
        h[16..20].copy_from_slice(&mx_frame.to_ne_bytes());
        h[20..24].copy_from_slice(&n_page.to_ne_bytes());
        h[24..28].copy_from_slice(&frame_cksum.0.to_ne_bytes());
        h[28..32].copy_from_slice(&frame_cksum.1.to_ne_bytes());
        h[32..36].copy_from_slice(&salt.0.to_be_bytes());
        h[36..40].copy_from_slice(&salt.1.to_be_bytes());
        let c = wal::checksum(cfg!(target_endian = "big"), &h[..40], (0, 0));
        h[40..44].copy_from_slice(&c.0.to_ne_bytes());
        h[44..48].copy_from_slice(&c.1.to_ne_bytes());
        let copy = h[..48].to_vec();
        h[48..96].copy_from_slice(&copy);
        h[100..104].copy_from_slice(&0u32.to_ne_bytes());
        h[104..108].copy_from_slice(&mx_frame.to_ne_bytes());
        for i in 2..5 {
            h[100 + 4 * i..104 + 4 * i].copy_from_slice(&READMARK_NOT_USED.to_ne_bytes());
        }
        h
    }

    #[test]
    fn a_consistent_header_is_trusted() {
        let b = sample(6, 3, (0xdead_beef, 7), (1, 2));
        let s = Shm::parse(&b, 32_768).expect("parse");
        let h = s.trusted().expect("trusted");
        assert_eq!(h.mx_frame, 6);
        assert_eq!(h.n_page, 3);
        assert_eq!(h.page_size, 4096);
        assert_eq!(h.salt, (0xdead_beef, 7));
        assert_eq!(h.frame_checksum, (1, 2));
        assert_eq!(s.ckpt.n_backfill, 0);
        assert_eq!(s.ckpt.read_marks[1], 6);
        assert_eq!(s.ckpt.read_marks[4], READMARK_NOT_USED);
        assert!(s.distrust_reason().is_none());
    }

    #[test]
    fn disagreeing_copies_and_bad_checksums_are_distrusted() {
        let mut b = sample(6, 3, (1, 2), (1, 2));
        b[16] = 9; // copy 1's mxFrame changed, copy 2 not
        let s = Shm::parse(&b, 32_768).expect("parse");
        assert!(s.trusted().is_none());
        assert!(s.distrust_reason().is_some_and(|r| r.contains("disagree")));
        let mut b = sample(6, 3, (1, 2), (1, 2));
        b[20] = 99;
        b[68] = 99; // both copies changed alike: checksum fails
        let s = Shm::parse(&b, 32_768).expect("parse");
        assert!(s.distrust_reason().is_some_and(|r| r.contains("checksum")));
        let z = vec![0u8; HEADER_LEN];
        let s = Shm::parse(&z, 32_768).expect("parse");
        assert!(s.distrust_reason().is_some_and(|r| r.contains("zeroed")));
        assert!(Shm::parse(&z[..100], 100).is_none());
    }

    #[test]
    fn page_number_entries_are_located_like_wal_c() {
        assert_eq!(NPAGE_ONE, 4062);
        assert_eq!(pgno_offset(1), 136);
        assert_eq!(pgno_offset(4062), 136 + 4 * 4061);
        assert_eq!(pgno_offset(4063), 32_768);
        assert_eq!(pgno_offset(4062 + 4096), 32_768 + 4 * 4095);
        assert_eq!(pgno_offset(4062 + 4097), 65_536);
        let mut b = vec![0u8; 200];
        b[136..140].copy_from_slice(&5u32.to_ne_bytes());
        b[140..144].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(pgno_for_frame(&b, 1), Some(5));
        assert_eq!(pgno_for_frame(&b, 2), Some(9));
        assert_eq!(pgno_for_frame(&b, 100), None);
        assert_eq!(bytes_for_frames(2), 144);
    }
}
