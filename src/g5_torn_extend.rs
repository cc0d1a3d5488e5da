//! G5: torn extends are caught at commit.
//!
//! A torn extend is a database file that holds fewer pages than its own header says:
//! the header (page 1) reached the disk but the pages that grew the file did not (a lying
//! `fsync`, a file system that drops writes past the end of the file, a crash after
//! either, or another actor truncating the file). SQLite notices only much later, when a
//! new connection reads page 1 (`lockBtree` reports `SQLITE_CORRUPT`), long after the
//! commit that lost the data returned `SQLITE_OK`.
//!
//! [`check_after_sync`] runs after every successful `xSync` of a main database. It reads
//! the header through the wrapped handle (never a second descriptor: closing one would
//! drop the process's POSIX locks) and compares the in-header page count with
//! `xFileSize`. A disagreement is confirmed by reading header and size once more before
//! it is reported.
//!
//! ## When the header may legitimately claim more pages than the file holds
//! - **WAL mode** (header bytes 18/19 = 2). The database file is not the database: the
//!   WAL is, and SQLite itself never compares the file's header with the file's size in
//!   WAL mode (the page count comes from the WAL index). A checkpoint copies pages in
//!   page-number order, so page 1, with the new page count, lands *before* the pages
//!   that extend the file; a partial checkpoint (readers pinning older snapshots) never
//!   truncates or extends the file to the final size, skips pages beyond the newest
//!   size, and leaves a never-written free last page missing; only a complete
//!   checkpoint ends with `xTruncate(nPage * pgsz)` + `xSync`. So between checkpoints, in
//!   a checkpoint in progress in another process, and after a partial checkpoint (which
//!   some SQLite versions sync), "header > size" is normal, and with many processes it
//!   is routinely observed: that is where false "torn extend" alarms came from. And a
//!   complete checkpoint makes the size equal to the header by its own truncate just
//!   before the sync, so there is nothing left to detect. Meanwhile the committed pages
//!   are safe in the WAL: SQLite records a checkpoint as done (`nBackfill`) only after
//!   this sync. **WAL-mode databases are therefore never judged here.**
//! - **The lock-byte page.** SQLite never writes the page holding `PENDING_BYTE`
//!   (1 GiB); when that is the last page, the file is legitimately one page short
//!   (`sqlite3PagerCommitPhaseOne` grows the file to `dbSize - 1` pages in that case).
//! - **An untrusted in-header size**: zero, or version-valid-for different from the
//!   change counter (written by SQLite before 3.7.0): SQLite uses the file size then.
//! - **No header**: a file shorter than 100 bytes, or not an SQLite header at all (an
//!   encrypted database, for instance). There is no claim to check.
//!
//! In rollback-journal modes the commit's sync runs under the EXCLUSIVE lock (and the
//! hot-journal rollback's sync under the lock that recovery takes), so nobody else can
//! be changing the file between the two reads; the confirmation read guards against the
//! rest.
//!
//! ## The code returned: `SQLITE_IOERR_FSYNC`
//! The data did not become durable, which is what `SQLITE_IOERR_FSYNC` says. Returned
//! from `xSync`, it makes the pager enter its error state, so the commit fails, the page
//! cache is dropped, and the hot journal (still on disk) rolls the file back to the
//! last good state at the next access: the database is *not* corrupt afterwards, and the
//! application sees a retryable I/O error rather than `SQLITE_CORRUPT`, which
//! applications answer by quarantining or deleting the file (the very reaction G3
//! exists to prevent). `SQLITE_CORRUPT` would also not put the pager into its error
//! state.

use std::os::raw::c_int;

use libsqlite3_sys::{SQLITE_IOERR_FSYNC, SQLITE_OK};

use crate::file_ops::FileOps;
use crate::header::{DbHeader, HEADER_LEN};
use crate::stats::bump;

/// What one look at the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing to report.
    Fine,
    /// The header claims `claimed` bytes; the file holds `size`.
    Torn { claimed: u64, size: i64, pages: u32 },
}

fn look(f: &mut dyn FileOps) -> Verdict {
    let mut buf = [0u8; HEADER_LEN];
    if f.read(&mut buf, 0) != SQLITE_OK {
        return Verdict::Fine; // no complete header: no claim to check
    }
    let Ok(h) = DbHeader::parse(&buf) else {
        return Verdict::Fine;
    };
    if h.is_wal() {
        return Verdict::Fine; // see the module doc
    }
    let Some(claimed) = h.expected_min_file_size() else {
        return Verdict::Fine;
    };
    let Ok(size) = f.size() else {
        return Verdict::Fine; // no size, no evidence; never invent an error
    };
    let size_u = u64::try_from(size).unwrap_or(0);
    if size_u >= claimed {
        return Verdict::Fine;
    }
    let page = u64::from(h.page_size);
    if u64::from(h.page_count) == h.pending_byte_page() && size_u >= claimed - page {
        return Verdict::Fine; // the lock-byte page is never written
    }
    Verdict::Torn {
        claimed,
        size,
        pages: h.page_count,
    }
}

/// Checks, after a successful `xSync` of the main database `path`, that the file holds
/// every page its header claims (see the module doc for when it does not judge).
/// Returns `SQLITE_OK` or `SQLITE_IOERR_FSYNC`.
pub(crate) fn check_after_sync(f: &mut dyn FileOps, path: &str) -> c_int {
    if look(f) == Verdict::Fine {
        return SQLITE_OK;
    }
    // Confirm: header and size are two reads, and something could have changed the file
    // between them.
    let Verdict::Torn {
        claimed,
        size,
        pages,
    } = look(f)
    else {
        return SQLITE_OK;
    };
    bump!(torn_extends);
    tracing::error!(
        target: "walguard",
        path,
        header_pages = pages,
        claimed_bytes = claimed,
        file_bytes = size,
        decision = "SQLITE_IOERR_FSYNC",
        "torn extend in {path}: after the sync its header claims {pages} pages ({claimed} \
         bytes) but the file holds only {size} bytes; the pages that extended it did not \
         reach the file. Failing the commit with SQLITE_IOERR_FSYNC so that SQLite rolls \
         back from its journal instead of reporting success"
    );
    SQLITE_IOERR_FSYNC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g3_short_header_reads::testkit::{capture, FakeFile, ReadFault};
    use crate::header::tests::make_header;
    use libsqlite3_sys::{SQLITE_IOERR_FSTAT, SQLITE_IOERR_SHORT_READ};

    fn file(raw_page_size: u16, header_pages: u32, file_len: usize) -> Vec<u8> {
        let mut d = vec![0x5A; file_len.max(HEADER_LEN)];
        d[..HEADER_LEN].copy_from_slice(&make_header(raw_page_size, header_pages));
        d.truncate(file_len);
        d
    }

    fn torn_count() -> u64 {
        crate::stats::snapshot().torn_extends
    }

    #[test]
    fn consistent_file_passes() {
        let mut f = FakeFile::with_data(file(4096, 3, 3 * 4096));
        let (rc, events) = capture(|| check_after_sync(&mut f, "/d/ok.db"));
        assert_eq!(rc, SQLITE_OK);
        assert!(events.is_empty());
        assert_eq!(f.read_calls, 1, "one header read when all is well");
    }

    #[test]
    fn file_longer_than_the_header_passes() {
        // A shrinking transaction, or SQLite's chunked growth.
        let mut f = FakeFile::with_data(file(4096, 2, 5 * 4096));
        assert_eq!(check_after_sync(&mut f, "/d/ok.db"), SQLITE_OK);
    }

    #[test]
    fn torn_extend_is_reported() {
        let mut f = FakeFile::with_data(file(4096, 5, 2 * 4096));
        let before = torn_count();
        let (rc, events) = capture(|| check_after_sync(&mut f, "/d/torn.db"));
        assert_eq!(rc, SQLITE_IOERR_FSYNC);
        assert!(torn_count() > before);
        assert_eq!(f.read_calls, 2, "confirmed by a second read");
        let ev = events
            .iter()
            .find(|e| e.level == tracing::Level::ERROR)
            .expect("an error event");
        assert_eq!(ev.target, "walguard");
        assert_eq!(ev.field("path"), Some("/d/torn.db"));
        assert!(ev.message().contains("/d/torn.db"));
        assert!(ev.message().contains("torn extend"));
    }

    #[test]
    fn page_size_65536_is_honoured() {
        let mut f = FakeFile::with_data(file(1, 2, 65536 + 100));
        assert_eq!(check_after_sync(&mut f, "/d/big.db"), SQLITE_IOERR_FSYNC);
        let mut f = FakeFile::with_data(file(1, 2, 2 * 65536));
        assert_eq!(check_after_sync(&mut f, "/d/big.db"), SQLITE_OK);
    }

    #[test]
    fn disagreement_that_resolves_on_the_second_look_is_not_reported() {
        // A concurrent change between the header read and the size read.
        let mut f = FakeFile::with_data(file(4096, 4, 4 * 4096));
        f.sizes.push_back(Ok(2 * 4096));
        let (rc, events) = capture(|| check_after_sync(&mut f, "/d/race.db"));
        assert_eq!(rc, SQLITE_OK);
        assert!(events.is_empty());
        assert_eq!(f.read_calls, 2);
    }

    #[test]
    fn header_changed_between_looks_is_not_reported() {
        let mut f = FakeFile::with_data(file(4096, 9, 2 * 4096));
        f.change_before_read = Some((1, file(4096, 2, 2 * 4096)));
        assert_eq!(check_after_sync(&mut f, "/d/race.db"), SQLITE_OK);
    }

    #[test]
    fn wal_mode_is_never_judged() {
        // Between checkpoints, during another process's checkpoint (page 1 is copied
        // first), or after a partial one, the file's header may claim more pages than
        // the file holds; the WAL holds them.
        let mut d = file(4096, 40, 10 * 4096);
        d[18] = 2;
        d[19] = 2;
        let mut f = FakeFile::with_data(d);
        let (rc, events) = capture(|| check_after_sync(&mut f, "/d/wal.db"));
        assert_eq!(rc, SQLITE_OK);
        assert!(events.is_empty());
        assert_eq!(f.size_calls, 0);
    }

    #[test]
    fn untrusted_in_header_size_is_not_judged() {
        let mut d = file(4096, 40, 4096);
        d[24..28].copy_from_slice(&99u32.to_be_bytes()); // change counter != valid-for
        let mut f = FakeFile::with_data(d);
        assert_eq!(check_after_sync(&mut f, "/d/old.db"), SQLITE_OK);
        let mut f = FakeFile::with_data(file(4096, 0, 4096));
        assert_eq!(check_after_sync(&mut f, "/d/old.db"), SQLITE_OK);
    }

    #[test]
    fn lock_byte_page_may_be_missing_at_the_end() {
        // 4096-byte pages: page 262145 holds PENDING_BYTE and is never written.
        let pages = 262_145u32;
        let short = (pages as usize - 1) * 4096;
        let mut f = FakeFile::with_data(file(4096, pages, HEADER_LEN));
        f.sizes.extend([Ok(short as i64); 2]);
        assert_eq!(check_after_sync(&mut f, "/d/1g.db"), SQLITE_OK);
        // Two pages short is torn all the same.
        let mut f = FakeFile::with_data(file(4096, pages, HEADER_LEN));
        f.sizes.extend([Ok((short - 4096) as i64); 2]);
        assert_eq!(check_after_sync(&mut f, "/d/1g.db"), SQLITE_IOERR_FSYNC);
    }

    #[test]
    fn no_header_means_no_claim() {
        let mut f = FakeFile::with_data(vec![1u8; 50]);
        assert_eq!(check_after_sync(&mut f, "/d/short.db"), SQLITE_OK);
        let mut f = FakeFile::with_data(b"not a database at all, just some text".repeat(200));
        assert_eq!(check_after_sync(&mut f, "/d/text.db"), SQLITE_OK);
        let mut f = FakeFile::with_data(file(4096, 5, 4096));
        f.reads.push_back(ReadFault::Error(SQLITE_IOERR_SHORT_READ));
        assert_eq!(check_after_sync(&mut f, "/d/x.db"), SQLITE_OK);
    }

    #[test]
    fn size_error_is_not_turned_into_an_alarm() {
        let mut f = FakeFile::with_data(file(4096, 5, 4096));
        f.sizes.push_back(Err(SQLITE_IOERR_FSTAT));
        assert_eq!(check_after_sync(&mut f, "/d/x.db"), SQLITE_OK);
    }

    #[test]
    fn never_pauses() {
        let mut f = FakeFile::with_data(file(4096, 5, 4096));
        assert_eq!(check_after_sync(&mut f, "/d/torn.db"), SQLITE_IOERR_FSYNC);
        assert!(f.pauses.is_empty());
    }
}
