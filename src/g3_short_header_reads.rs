//! G3: no false "not a database".
//!
//! When a read of the first page of a database comes back short, SQLite zero-fills the
//! buffer and carries on: `sqlite3PagerReadFileheader` and `readDbPage` both turn
//! `SQLITE_IOERR_SHORT_READ` into success, and `lockBtree` then finds no magic string
//! in a file that `xFileSize` says is non-empty and reports `SQLITE_NOTADB` ("file is not
//! a database") for a perfectly good file. Applications quarantine or delete it.
//!
//! [`on_short_header_read`] is called by the io layer only when the wrapped `xRead` of a
//! main database returned `SQLITE_IOERR_SHORT_READ` at an offset below 100. It asks the
//! wrapped file for its size:
//! - the file ends at or before `offset` (a new, empty database): the short read is
//!   genuine and is returned unchanged, so SQLite creates the database as usual;
//! - otherwise it re-reads through the same wrapped handle with bounded exponential
//!   back-off ([`BACKOFF_MS`], about 100 ms in all). When the file holds the whole range
//!   the read must come back complete; when it ends inside the range (a partial last
//!   page) only the bytes the file holds must come back, and the tail is zero-filled as
//!   SQLite's contract for a short read requires;
//! - if it stays short, the caller gets `SQLITE_IOERR_READ`, a retryable I/O error, never
//!   a zero-filled header reported as success (and so never `SQLITE_NOTADB`).
//!
//! [`on_suspicious_size`] covers the other half of the same failure: a transient size of
//! 0 (or an error) from `xFileSize` of a database the handle has seen non-empty. A size
//! of 0 makes the pager delete a live `-wal` (`pagerOpenWalIfPresent`) or take the file
//! for a new database, so the size is re-read with the same back-off. A size is never
//! invented: if the file stays empty it is reported empty (a real truncation), and if
//! `xFileSize` keeps failing its error is returned.
//!
//! A real non-SQLite file is not short, so none of this runs for it: SQLite still says
//! `SQLITE_NOTADB`.

use std::os::raw::c_int;
use std::time::Duration;

use libsqlite3_sys::{SQLITE_IOERR_READ, SQLITE_IOERR_SHORT_READ, SQLITE_OK};

use crate::file_ops::FileOps;
use crate::stats::bump;

/// Pauses before each retry, in milliseconds. The first retry is immediate (a second
/// read often succeeds at once); the rest double, capped so that the total is about
/// 100 ms.
pub(crate) const BACKOFF_MS: [u64; 8] = [0, 1, 2, 4, 8, 16, 32, 40];

/// Handles a short read of the header region of a main database (see the module doc).
///
/// `buf` is SQLite's buffer as the wrapped `xRead` left it (its tail zero-filled);
/// `offset` is below 100. Returns `SQLITE_OK` (the buffer now holds the data),
/// `SQLITE_IOERR_SHORT_READ` (the file really ends there; the unread tail is zero), or an
/// I/O error (`SQLITE_IOERR_READ` when the read stayed short, or whatever error a retry
/// returned). `last_known` is the largest size this handle has proven (a complete header
/// read, its own truncate): a size at or below `offset` is then not believed at once — it
/// is the same transient failure as the short read — but only when every retry sees it.
pub(crate) fn on_short_header_read(
    f: &mut dyn FileOps,
    path: &str,
    buf: &mut [u8],
    offset: i64,
    last_known: i64,
) -> c_int {
    let want = buf.len();
    if want == 0 || offset < 0 {
        return SQLITE_IOERR_SHORT_READ;
    }
    let distrust_small = last_known > offset;
    // A genuinely empty (new) or short file: nothing to retry.
    if let Ok(size) = f.size() {
        if size <= offset && !distrust_small {
            return SQLITE_IOERR_SHORT_READ;
        }
    }

    let mut last_size: Option<i64> = None;
    for (attempt, &ms) in BACKOFF_MS.iter().enumerate() {
        if ms > 0 {
            f.pause(Duration::from_millis(ms));
        }
        // The size can change between attempts (and may have been unknown at first).
        let size = f.size().ok();
        if let Some(s) = size {
            last_size = Some(s);
            if s <= offset {
                if distrust_small && attempt + 1 < BACKOFF_MS.len() {
                    continue; // the file was bigger: see whether the size comes back
                }
                // Genuinely short (the file was truncated): nothing of the range exists,
                // so the whole buffer is zero as for any short read.
                buf.fill(0);
                return SQLITE_IOERR_SHORT_READ;
            }
        }
        // How many bytes of the range the file holds (all of them when unknown).
        let avail = match size {
            Some(s) => usize::try_from(s - offset).map_or(want, |a| a.min(want)),
            None => want,
        };
        match f.read(&mut buf[..avail], offset) {
            SQLITE_OK if avail == want => {
                bump!(header_retries);
                tracing::info!(
                    target: "walguard",
                    path,
                    offset,
                    len = want,
                    retries = attempt + 1,
                    decision = "retried",
                    "short read of the database header of {path} retried: the read succeeded"
                );
                return SQLITE_OK;
            }
            SQLITE_OK => {
                // The file ends inside the range and every byte it holds was read: the
                // short read is genuine. Zero the tail as SQLite expects.
                buf[avail..].fill(0);
                if attempt > 0 {
                    bump!(header_retries);
                    tracing::info!(
                        target: "walguard",
                        path,
                        offset,
                        len = want,
                        available = avail,
                        retries = attempt + 1,
                        decision = "retried",
                        "short read of the database header of {path} retried: every byte the \
                         file holds was read"
                    );
                }
                return SQLITE_IOERR_SHORT_READ;
            }
            SQLITE_IOERR_SHORT_READ => continue,
            other => return other,
        }
    }

    bump!(header_retry_exhausted);
    let total_ms: u64 = BACKOFF_MS.iter().sum();
    let size_text = last_size.map_or_else(|| "an unknown number of".to_owned(), |s| s.to_string());
    tracing::warn!(
        target: "walguard",
        path,
        offset,
        len = want,
        size = last_size,
        retries = BACKOFF_MS.len(),
        decision = "SQLITE_IOERR_READ",
        "read of the database header of {path} stayed short after {} retries over {total_ms} ms \
         although the file holds {size_text} bytes; returning SQLITE_IOERR_READ instead of a \
         zero-filled header. The read is retryable: the file is not known to be damaged, do \
         not treat it as corrupt",
        BACKOFF_MS.len()
    );
    SQLITE_IOERR_READ
}

/// Handles an `xFileSize` of a main database that returned 0 or an error (`first`) while
/// the handle had seen `last_known > 0` bytes (see the module doc). Returns the size to
/// report, or the error to return.
pub(crate) fn on_suspicious_size(
    f: &mut dyn FileOps,
    path: &str,
    first: Result<i64, c_int>,
    last_known: i64,
) -> Result<i64, c_int> {
    let suspicious = matches!(first, Ok(0) | Err(_));
    if !suspicious || last_known <= 0 {
        return first;
    }
    let mut last = first;
    for (attempt, &ms) in BACKOFF_MS.iter().enumerate().skip(1) {
        f.pause(Duration::from_millis(ms));
        last = f.size();
        if let Ok(size) = last {
            if size > 0 {
                bump!(size_retries);
                tracing::info!(
                    target: "walguard",
                    path,
                    size,
                    last_known,
                    retries = attempt,
                    decision = "retried",
                    "size of {path} read as {} retried: the file holds {size} bytes",
                    describe(first)
                );
                return Ok(size);
            }
        }
    }
    match last {
        Ok(_) => tracing::warn!(
            target: "walguard",
            path,
            last_known,
            decision = "reported empty",
            "{path} stayed empty after retries although it held {last_known} bytes: \
             reporting the truncation to SQLite"
        ),
        Err(code) => tracing::warn!(
            target: "walguard",
            path,
            last_known,
            code,
            decision = "reported error",
            "the size of {path} could not be read after retries (SQLite error {code}); \
             returning the error, which is retryable"
        ),
    }
    last
}

fn describe(r: Result<i64, c_int>) -> String {
    match r {
        Ok(s) => format!("{s} bytes"),
        Err(code) => format!("error {code}"),
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Test doubles shared by the G3 and G5 unit tests: an in-memory [`FileOps`] with
    //! scripted faults, and a `tracing` subscriber that records events.

    use std::collections::VecDeque;
    use std::os::raw::c_int;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use libsqlite3_sys::{SQLITE_IOERR_SHORT_READ, SQLITE_OK};

    use crate::file_ops::FileOps;

    /// What one `read` call does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum ReadFault {
        /// Behave like a file: copy what exists, zero-fill the rest.
        Normal,
        /// Return no bytes (zero-filled) and SQLITE_IOERR_SHORT_READ.
        Empty,
        /// Return this error code.
        Error(c_int),
    }

    /// An in-memory file. `reads` and `sizes` are consumed one per call; when empty,
    /// reads behave normally and sizes report `data.len()`.
    #[derive(Default)]
    pub(crate) struct FakeFile {
        pub data: Vec<u8>,
        pub reads: VecDeque<ReadFault>,
        pub sizes: VecDeque<Result<i64, c_int>>,
        pub pauses: Vec<Duration>,
        pub read_calls: usize,
        pub size_calls: usize,
        /// Applied to `data` right before the n-th read call (0-based), to model another
        /// writer.
        pub change_before_read: Option<(usize, Vec<u8>)>,
    }

    impl FakeFile {
        pub(crate) fn with_data(data: Vec<u8>) -> Self {
            FakeFile {
                data,
                ..FakeFile::default()
            }
        }
    }

    impl FileOps for FakeFile {
        fn read(&mut self, buf: &mut [u8], offset: i64) -> c_int {
            if let Some((n, new)) = &self.change_before_read {
                if *n == self.read_calls {
                    self.data = new.clone();
                }
            }
            self.read_calls += 1;
            match self.reads.pop_front().unwrap_or(ReadFault::Normal) {
                ReadFault::Error(code) => code,
                ReadFault::Empty => {
                    buf.fill(0);
                    SQLITE_IOERR_SHORT_READ
                }
                ReadFault::Normal => {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    let have = self.data.get(start..).unwrap_or(&[]);
                    let n = have.len().min(buf.len());
                    buf[..n].copy_from_slice(&have[..n]);
                    buf[n..].fill(0);
                    if n == buf.len() {
                        SQLITE_OK
                    } else {
                        SQLITE_IOERR_SHORT_READ
                    }
                }
            }
        }

        fn size(&mut self) -> Result<i64, c_int> {
            self.size_calls += 1;
            self.sizes.pop_front().unwrap_or(Ok(self.data.len() as i64))
        }

        fn pause(&mut self, d: Duration) {
            self.pauses.push(d);
        }
    }

    /// One recorded `tracing` event.
    #[derive(Debug, Clone)]
    pub(crate) struct Event {
        pub target: String,
        pub level: tracing::Level,
        /// `message` and every other field, rendered as `name=value`.
        pub fields: Vec<(String, String)>,
    }

    impl Event {
        pub(crate) fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        pub(crate) fn message(&self) -> &str {
            self.field("message").unwrap_or("")
        }
    }

    struct Recorder(Arc<Mutex<Vec<Event>>>);

    struct Visitor<'a>(&'a mut Vec<(String, String)>);

    impl tracing::field::Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl tracing::Subscriber for Recorder {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Visitor(&mut fields));
            let meta = event.metadata();
            let rec = Event {
                target: meta.target().to_owned(),
                level: *meta.level(),
                fields,
            };
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Runs `f` with a subscriber that records every event emitted on this thread.
    pub(crate) fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Event>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let r = tracing::subscriber::with_default(Recorder(Arc::clone(&events)), f);
        let got = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (r, got)
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{capture, FakeFile, ReadFault};
    use super::*;
    use crate::header::tests::make_header;
    use libsqlite3_sys::{SQLITE_IOERR_FSTAT, SQLITE_IOERR_SHORT_READ};

    // Counters are process-wide and tests run in parallel: assert "grew", not exact
    // values, and rely on the returned codes and captured events for exactness.
    fn stats() -> crate::Stats {
        crate::stats::snapshot()
    }

    fn db_bytes(pages: u32) -> Vec<u8> {
        let mut d = vec![0xAB; 4096 * pages as usize];
        d[..100].copy_from_slice(&make_header(4096, pages));
        d
    }

    #[test]
    fn transient_empty_read_is_retried_and_succeeds() {
        let mut f = FakeFile::with_data(db_bytes(2));
        f.reads.push_back(ReadFault::Empty); // the first retry is short too
        let mut buf = vec![0u8; 100]; // as the wrapped read left it
        let before = stats().header_retries;
        let (rc, events) = capture(|| on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0));
        assert_eq!(rc, SQLITE_OK);
        assert_eq!(&buf[..], &db_bytes(2)[..100]);
        assert!(stats().header_retries > before);
        assert_eq!(f.pauses, vec![Duration::from_millis(1)]);
        let ev = events
            .iter()
            .find(|e| e.target == "walguard")
            .expect("an event");
        assert_eq!(ev.level, tracing::Level::INFO);
        assert_eq!(ev.field("path"), Some("/d/app.db"));
        assert!(ev.message().contains("retried"));
    }

    #[test]
    fn a_transient_size_of_zero_at_a_short_read_is_not_believed() {
        // Defect 5: a short header read plus one fstat of 0 used to be taken as a new,
        // empty file (zero-filled header: SQLITE_NOTADB for a good database). With the
        // last size the handle proved, that 0 is retried like the read.
        let mut f = FakeFile::with_data(db_bytes(2));
        f.sizes.push_back(Ok(0)); // the first xFileSize lies
        let mut buf = vec![0u8; 100];
        let rc = on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 2 * 4096);
        assert_eq!(rc, SQLITE_OK, "the header is read once the size is back");
        assert_eq!(&buf[..], &db_bytes(2)[..100]);

        // Without a proven size the same 0 is believed (a new database), as before.
        let mut f = FakeFile::with_data(db_bytes(2));
        f.sizes.push_back(Ok(0));
        let mut buf = vec![0u8; 100];
        let rc = on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0);
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
    }

    #[test]
    fn a_size_that_stays_zero_is_reported_as_the_truth() {
        // A size is never invented: a file that really was truncated reads as empty.
        let mut f = FakeFile::with_data(Vec::new());
        let mut buf = vec![7u8; 100];
        let rc = on_short_header_read(&mut f, "/d/gone.db", &mut buf, 0, 4096);
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
        assert!(
            buf.iter().all(|&b| b == 0),
            "zero-filled as for any short read"
        );
    }

    #[test]
    fn whole_page_one_is_retried_too() {
        let data = db_bytes(3);
        let mut f = FakeFile::with_data(data.clone());
        let mut buf = vec![0u8; 4096];
        let rc = on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0);
        assert_eq!(rc, SQLITE_OK);
        assert_eq!(&buf[..], &data[..4096]);
        assert!(f.pauses.is_empty(), "the first retry is immediate");
    }

    #[test]
    fn persistent_short_read_becomes_retryable_ioerr_read() {
        let mut f = FakeFile::with_data(db_bytes(2));
        f.reads.extend([ReadFault::Empty; 32]);
        let mut buf = vec![0u8; 100];
        let before = stats().header_retry_exhausted;
        let (rc, events) = capture(|| on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0));
        assert_eq!(rc, SQLITE_IOERR_READ);
        assert_ne!(rc, libsqlite3_sys::SQLITE_NOTADB);
        assert!(stats().header_retry_exhausted > before);
        assert_eq!(f.read_calls, BACKOFF_MS.len());
        let total: Duration = f.pauses.iter().sum();
        assert!(
            total >= Duration::from_millis(50) && total <= Duration::from_millis(200),
            "back-off is bounded, of the order of 100 ms: {total:?}"
        );
        // Exponential: each pause at least as long as the one before.
        assert!(f.pauses.windows(2).all(|w| w[0] <= w[1]));
        let warn = events
            .iter()
            .find(|e| e.level == tracing::Level::WARN)
            .expect("a warning");
        assert_eq!(warn.target, "walguard");
        assert_eq!(warn.field("path"), Some("/d/app.db"));
        assert!(warn.message().contains("/d/app.db"));
        assert!(warn.message().contains("retryable"));
    }

    #[test]
    fn a_later_attempt_after_exhaustion_succeeds() {
        let mut f = FakeFile::with_data(db_bytes(2));
        f.reads.extend([ReadFault::Empty; BACKOFF_MS.len()]);
        let mut buf = vec![0u8; 100];
        assert_eq!(
            on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0),
            SQLITE_IOERR_READ
        );
        // The caller retries later: the fault is gone.
        f.reads.push_back(ReadFault::Empty); // its own first read was short once more
        assert_eq!(
            on_short_header_read(&mut f, "/d/app.db", &mut buf, 0, 0),
            SQLITE_OK
        );
        assert_eq!(&buf[..16], b"SQLite format 3\0");
    }

    #[test]
    fn genuinely_empty_file_is_left_short() {
        let mut f = FakeFile::with_data(Vec::new());
        let mut buf = vec![0u8; 100];
        let (rc, events) = capture(|| on_short_header_read(&mut f, "/d/new.db", &mut buf, 0, 0));
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
        assert_eq!(f.read_calls, 0, "no retry");
        assert!(f.pauses.is_empty());
        assert!(buf.iter().all(|&b| b == 0));
        assert!(events.is_empty(), "no intervention, no event: {events:?}");
    }

    #[test]
    fn file_ending_at_the_offset_is_left_short() {
        let mut f = FakeFile::with_data(vec![1u8; 24]);
        let mut buf = vec![0u8; 16];
        assert_eq!(
            on_short_header_read(&mut f, "/d/x.db", &mut buf, 24, 0),
            SQLITE_IOERR_SHORT_READ
        );
        assert_eq!(f.read_calls, 0);
    }

    #[test]
    fn partial_first_page_yields_every_byte_the_file_holds() {
        // The file ends inside page 1: the short read is genuine, but only once the
        // bytes that exist were really read.
        let data = db_bytes(1)[..1000].to_vec();
        let mut f = FakeFile::with_data(data.clone());
        f.reads.push_back(ReadFault::Empty);
        let mut buf = vec![0u8; 4096];
        let rc = on_short_header_read(&mut f, "/d/p.db", &mut buf, 0, 0);
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
        assert_eq!(&buf[..1000], &data[..]);
        assert!(buf[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn partial_first_page_read_at_once_costs_no_pause() {
        let data = db_bytes(1)[..1000].to_vec();
        let mut f = FakeFile::with_data(data);
        let mut buf = vec![0u8; 4096];
        let (rc, events) = capture(|| on_short_header_read(&mut f, "/d/p.db", &mut buf, 0, 0));
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
        assert!(f.pauses.is_empty());
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn file_truncated_during_retries_is_reported_short_and_zeroed() {
        let mut f = FakeFile::with_data(db_bytes(1));
        f.reads.push_back(ReadFault::Empty);
        f.sizes.extend([Ok(4096), Ok(4096), Ok(0)]);
        let mut buf = vec![7u8; 100];
        let rc = on_short_header_read(&mut f, "/d/t.db", &mut buf, 0, 0);
        assert_eq!(rc, SQLITE_IOERR_SHORT_READ);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn unknown_size_still_retries() {
        let mut f = FakeFile::with_data(db_bytes(1));
        f.sizes.push_back(Err(SQLITE_IOERR_FSTAT));
        let mut buf = vec![0u8; 100];
        assert_eq!(
            on_short_header_read(&mut f, "/d/u.db", &mut buf, 0, 0),
            SQLITE_OK
        );
        assert_eq!(&buf[..16], b"SQLite format 3\0");
    }

    #[test]
    fn unknown_size_and_persistent_short_read_is_ioerr_read() {
        let mut f = FakeFile::with_data(db_bytes(1));
        f.sizes.extend([Err(SQLITE_IOERR_FSTAT); 32]);
        f.reads.extend([ReadFault::Empty; 32]);
        let mut buf = vec![0u8; 100];
        assert_eq!(
            on_short_header_read(&mut f, "/d/u.db", &mut buf, 0, 0),
            SQLITE_IOERR_READ
        );
    }

    #[test]
    fn a_hard_error_on_retry_is_returned_as_is() {
        let mut f = FakeFile::with_data(db_bytes(1));
        f.reads
            .push_back(ReadFault::Error(libsqlite3_sys::SQLITE_IOERR_CORRUPTFS));
        let mut buf = vec![0u8; 100];
        assert_eq!(
            on_short_header_read(&mut f, "/d/e.db", &mut buf, 0, 0),
            libsqlite3_sys::SQLITE_IOERR_CORRUPTFS
        );
    }

    #[test]
    fn read_at_a_nonzero_header_offset() {
        // The pager reads the change counter alone (16 bytes at offset 24).
        let data = db_bytes(1);
        let mut f = FakeFile::with_data(data.clone());
        let mut buf = vec![0u8; 16];
        assert_eq!(
            on_short_header_read(&mut f, "/d/o.db", &mut buf, 24, 0),
            SQLITE_OK
        );
        assert_eq!(&buf[..], &data[24..40]);
    }

    #[test]
    fn transient_zero_size_is_retried() {
        let mut f = FakeFile::with_data(db_bytes(3));
        f.sizes.extend([Ok(0), Ok(0)]);
        let before = stats().size_retries;
        let (r, events) = capture(|| on_suspicious_size(&mut f, "/d/app.db", Ok(0), 3 * 4096));
        assert_eq!(r, Ok(3 * 4096));
        assert!(stats().size_retries > before);
        assert_eq!(f.size_calls, 3);
        assert_eq!(f.pauses.len(), 3);
        let ev = events
            .iter()
            .find(|e| e.target == "walguard")
            .expect("event");
        assert_eq!(ev.field("path"), Some("/d/app.db"));
    }

    #[test]
    fn transient_size_error_is_retried() {
        let mut f = FakeFile::with_data(db_bytes(2));
        let r = on_suspicious_size(&mut f, "/d/app.db", Err(SQLITE_IOERR_FSTAT), 8192);
        assert_eq!(r, Ok(8192));
    }

    #[test]
    fn real_truncation_is_reported_as_zero() {
        let mut f = FakeFile::with_data(Vec::new());
        let (r, events) = capture(|| on_suspicious_size(&mut f, "/d/gone.db", Ok(0), 8192));
        assert_eq!(r, Ok(0), "a size is never invented");
        assert_eq!(f.size_calls, BACKOFF_MS.len() - 1);
        let total: Duration = f.pauses.iter().sum();
        assert!(total <= Duration::from_millis(200), "{total:?}");
        assert!(events
            .iter()
            .any(|e| e.level == tracing::Level::WARN && e.message().contains("/d/gone.db")));
    }

    #[test]
    fn persistent_size_error_is_returned() {
        let mut f = FakeFile::with_data(db_bytes(1));
        f.sizes.extend([Err(SQLITE_IOERR_FSTAT); 32]);
        let r = on_suspicious_size(&mut f, "/d/app.db", Err(SQLITE_IOERR_FSTAT), 4096);
        assert_eq!(r, Err(SQLITE_IOERR_FSTAT));
    }

    #[test]
    fn unsuspicious_sizes_pass_through_untouched() {
        let mut f = FakeFile::with_data(db_bytes(1));
        assert_eq!(
            on_suspicious_size(&mut f, "/d/a.db", Ok(4096), 4096),
            Ok(4096)
        );
        assert_eq!(on_suspicious_size(&mut f, "/d/a.db", Ok(0), 0), Ok(0));
        assert_eq!(
            on_suspicious_size(&mut f, "/d/a.db", Err(SQLITE_IOERR_FSTAT), 0),
            Err(SQLITE_IOERR_FSTAT)
        );
        assert_eq!(f.size_calls, 0);
        assert!(f.pauses.is_empty());
    }
}
