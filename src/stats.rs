//! Counters of every guard. Each intervention bumps one counter here and emits one
//! `tracing` event (target `walguard`); [`crate::stats`] and the SQL function
//! `walguard_stats()` read them.
//!
//! Counters are process-wide (per copy of walguard loaded into the process) and only
//! ever grow. They are plain relaxed atomics: bumping one is not a system call and takes
//! no lock.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A snapshot of walguard's counters, taken by [`crate::stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Counters {
            const fn new() -> Self {
                Counters { $( $name: AtomicU64::new(0), )* }
            }

            fn snapshot(&self) -> Stats {
                Stats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl Stats {
            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// VFS registrations performed (`register`, extension entry points).
    registrations,
    /// Files of any kind opened through walguard.
    files_opened,
    /// Main database files opened through walguard.
    db_opened,
    /// `-wal` files opened through walguard.
    wal_opened,
    /// Opens that failed in the wrapped VFS or in walguard.
    open_errors,
    /// Panics caught at the FFI boundary and turned into SQLite error codes.
    panics_caught,
    /// G1: shared-memory (`-shm`) first mappings performed by this process.
    shm_mapped,
    /// G1: WAL locks taken as open-file-description locks (system-level transitions;
    /// requests served from the in-process count are not counted).
    shm_locks_taken,
    /// G1: a conflicting EXCLUSIVE lock on a database was refused because another
    /// holder's lock was still present (seen from the closer's side).
    exclusive_blocked,
    /// G1: last-close deletions of `-wal`/`-shm` refused (persist answered, unmap
    /// without delete, or a suppressed `xDelete`) because another holder exists.
    unlink_refused,
    /// G1: last-close clean-ups allowed because no other holder exists anywhere.
    unlink_allowed,
    /// Descriptors whose close was deferred because the process still held POSIX locks
    /// on the file (another SQLite runtime's).
    close_deferred,
    /// A guarantee degraded or an error walguard could not hide (a `-shm` it could not
    /// open or reset, a database without a descriptor to lock through); a warning or error
    /// was logged.
    degraded,
    /// G2: first mappings of the `-shm` (or, without a watcher, write transactions)
    /// answered SQLITE_BUSY because another process was setting up or tearing down the
    /// WAL, or still held an index that was replaced.
    setup_busy,
    /// G2: tear-downs skipped (EXCLUSIVE refused) because another process held the gate.
    teardown_busy,
    /// G3: short header reads retried.
    header_retries,
    /// G3: short header reads that stayed short after every retry (caller got
    /// SQLITE_IOERR_READ).
    header_retry_exhausted,
    /// G3: transient zero file sizes retried.
    size_retries,
    /// G4: sidecars found unlinked or replaced under an open connection.
    sidecar_replaced,
    /// G4: mappings of a WAL index cut off because one of its sidecars was replaced.
    mappings_poisoned,
    /// G4: transactions refused on a mapping that was cut off (or by a connection
    /// inherited through fork).
    stale_transactions,
    /// G5: torn extends detected after a sync.
    torn_extends,
    /// Hosts whose SQLite has the WAL-reset bug (3.7.0 – 3.51.2 without backport).
    host_wal_reset_bug,
    /// G1: EXCLUSIVE refused (SQLITE_BUSY) to a handle with the WAL index mapped while
    /// another holder still used it (the close skipped its checkpoint and clean-up).
    exclusive_refused,
    /// Databases whose locks walguard had to take through a descriptor of its own (the
    /// wrapped VFS's descriptor could not be read).
    own_descriptors,
    /// `-shm` descriptors kept between two mappings (see `registry`), and those closed
    /// because their file left its path.
    kept_shm,
    kept_shm_dropped,
}

pub(crate) static COUNTERS: Counters = Counters::new();

/// Adds one to a counter.
macro_rules! bump {
    ($name:ident) => {
        $crate::stats::COUNTERS
            .$name
            .fetch_add(1, ::std::sync::atomic::Ordering::Relaxed)
    };
}
pub(crate) use bump;

pub(crate) fn snapshot() -> Stats {
    COUNTERS.snapshot()
}

impl Stats {
    /// The counters as a flat JSON object, e.g. `{"registrations":1,"files_opened":3,...}`.
    pub fn to_json(&self) -> String {
        let body: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_every_counter_once() {
        let s = Stats {
            files_opened: 7,
            ..Stats::default()
        };
        let json = s.to_json();
        assert!(json.starts_with('{') && json.ends_with('}'));
        assert!(json.contains("\"files_opened\":7"));
        assert_eq!(json.matches(':').count(), s.fields().len());
    }
}
