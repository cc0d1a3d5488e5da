//! The narrow view of a wrapped file that the guards use: the calls SQLite itself would
//! make on the file, through the wrapped VFS's own handle (never a second descriptor).
//! The io layer implements it over the wrapped `sqlite3_file`; guard tests implement it
//! over plain memory, so every guard is safe Rust testable without SQLite.

use std::os::raw::c_int;
use std::time::Duration;

pub(crate) trait FileOps {
    /// `xRead` of `buf.len()` bytes at `offset`: an SQLite result code (`SQLITE_OK`,
    /// `SQLITE_IOERR_SHORT_READ` with the tail zero-filled, or another error).
    fn read(&mut self, buf: &mut [u8], offset: i64) -> c_int;
    /// `xFileSize`.
    fn size(&mut self) -> Result<i64, c_int>;
    /// Back-off between retries. Tests replace it to run without sleeping.
    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}
