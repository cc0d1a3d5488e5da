//! G5: torn extends are caught at commit.
//!
//! A torn extend is a database file that holds fewer bytes than were written to it: the
//! header (page 1) reached the disk but the pages that grew the file did not (a lying
//! `fsync`, a file system that drops writes past the end of the file, a crash after
//! either, or another actor truncating the file). SQLite notices only much later, when a
//! new connection reads page 1 (`lockBtree` reports `SQLITE_CORRUPT`), long after the
//! commit that lost the data returned `SQLITE_OK`.
//!
//! ## What is judged: only what this handle proves
//! Each walguard handle of a main database remembers the end of the furthest byte it
//! wrote since its last verified size (`xWrite`, lowered by its own `xTruncate`). After
//! a successful `xSync`, if that end lies beyond the last size this handle verified,
//! [`check_after_sync`] asks `xFileSize` (the wrapped handle: never a second descriptor,
//! whose close would drop the process's POSIX locks). A file that ends before a byte this
//! very handle wrote and synced was torn: `SQLITE_IOERR_FSYNC`.
//!
//! Earlier versions compared the page count in the header with the file size. That is a
//! claim, not a proof, and it is false in legitimate states: `sqlite3_backup` into a
//! database with another page size (the header is written before the final truncate;
//! SQLite's `pager1-9.4`), shims that split a database into chunk files (multiplex), a
//! checkpoint in progress in WAL mode, the lock-byte page. A guard that fails a legitimate
//! backup is worse than none, so only the proof is used.
//!
//! ## The code returned: `SQLITE_IOERR_FSYNC`
//! The data did not become durable, which is what `SQLITE_IOERR_FSYNC` says. Returned
//! from `xSync`, it makes the pager enter its error state, so the commit fails, the page
//! cache is dropped, and the hot journal (still on disk) rolls the file back to the
//! last good state at the next access: the database is *not* corrupt afterwards, and the
//! application sees a retryable I/O error rather than `SQLITE_CORRUPT`.
//!
//! Cost: no system call when the synced writes stayed inside the verified size (updates in
//! place); one `fstat` (through `xFileSize`) after a sync that grew the file.

use std::os::raw::c_int;

use libsqlite3_sys::{SQLITE_IOERR_FSYNC, SQLITE_OK};

use crate::file_ops::FileOps;
use crate::stats::bump;

/// What a handle wrote since its size was last verified.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    /// One past the furthest byte written (0: nothing).
    pub end: i64,
    /// The size the file was last seen to have through this handle (0: unknown).
    pub verified: i64,
}

impl Written {
    /// Records a successful write of `amt` bytes at `ofst` (no system call).
    pub(crate) fn wrote(&mut self, ofst: i64, amt: i64) {
        self.end = self.end.max(ofst.saturating_add(amt));
    }

    /// Records this handle's own truncate to `size`.
    pub(crate) fn truncated(&mut self, size: i64) {
        self.end = self.end.min(size);
        self.verified = size;
    }
}

/// After a successful `xSync` of a main database through this handle.
pub(crate) fn check_after_sync(f: &mut dyn FileOps, path: &str, w: &mut Written) -> c_int {
    if w.end <= w.verified {
        w.end = 0;
        return SQLITE_OK;
    }
    let size = match f.size() {
        Ok(s) => s,
        Err(_) => return SQLITE_OK, // cannot prove anything; the sync itself succeeded
    };
    if size >= w.end {
        w.verified = size;
        w.end = 0;
        return SQLITE_OK;
    }
    let written = w.end;
    // The next commit starts from what the file really holds.
    w.verified = size;
    w.end = 0;
    bump!(torn_extends);
    tracing::error!(
        target: "walguard",
        path,
        written_bytes = written,
        file_bytes = size,
        decision = "SQLITE_IOERR_FSYNC",
        "torn extend in {path}: this connection wrote and synced {written} bytes but the file \
         holds only {size}; the pages that extended it did not reach the file. Failing the \
         commit with SQLITE_IOERR_FSYNC so that SQLite rolls back from its journal instead \
         of reporting success"
    );
    SQLITE_IOERR_FSYNC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g3_short_header_reads::testkit::{capture, FakeFile};

    fn torn_count() -> u64 {
        crate::stats::snapshot().torn_extends
    }

    #[test]
    fn writes_inside_the_verified_size_cost_no_system_call() {
        let mut f = FakeFile::with_data(vec![0; 8192]);
        let mut w = Written {
            end: 0,
            verified: 8192,
        };
        w.wrote(4096, 4096);
        assert_eq!(check_after_sync(&mut f, "/d/ok.db", &mut w), SQLITE_OK);
        assert_eq!(f.size_calls, 0, "no xFileSize for an update in place");
    }

    #[test]
    fn a_growth_that_reached_the_file_passes() {
        let mut f = FakeFile::with_data(vec![0; 3 * 4096]);
        let mut w = Written::default();
        w.wrote(2 * 4096, 4096);
        assert_eq!(check_after_sync(&mut f, "/d/ok.db", &mut w), SQLITE_OK);
        assert_eq!(w.verified, 3 * 4096);
    }

    #[test]
    fn a_growth_that_did_not_reach_the_file_is_reported() {
        let mut f = FakeFile::with_data(vec![0; 2 * 4096]);
        let mut w = Written::default();
        w.wrote(4 * 4096, 4096);
        let before = torn_count();
        let (rc, events) = capture(|| check_after_sync(&mut f, "/d/torn.db", &mut w));
        assert_eq!(rc, SQLITE_IOERR_FSYNC);
        assert!(torn_count() > before);
        let ev = events
            .iter()
            .find(|e| e.level == tracing::Level::ERROR)
            .expect("an error event");
        assert_eq!(ev.field("path"), Some("/d/torn.db"));
        assert!(ev.message().contains("torn extend"));
        // Reported once: the next sync judges only what is written after it.
        assert_eq!(check_after_sync(&mut f, "/d/torn.db", &mut w), SQLITE_OK);
    }

    #[test]
    fn the_handles_own_truncate_is_not_a_torn_extend() {
        // sqlite3_backup into a database with larger pages: pages written, then the file
        // truncated to the source's size, then synced (SQLite's pager1-9.4).
        let mut f = FakeFile::with_data(vec![0; 1024]);
        let mut w = Written::default();
        w.wrote(0, 3 * 4096);
        w.truncated(1024);
        assert_eq!(check_after_sync(&mut f, "/d/backup.db", &mut w), SQLITE_OK);
    }

    #[test]
    fn a_size_error_proves_nothing() {
        let mut f = FakeFile::with_data(vec![0; 10]);
        f.sizes.push_back(Err(libsqlite3_sys::SQLITE_IOERR_FSTAT));
        let mut w = Written::default();
        w.wrote(0, 4096);
        assert_eq!(check_after_sync(&mut f, "/d/x.db", &mut w), SQLITE_OK);
    }
}
