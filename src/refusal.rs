//! One way for a guard to say no.
//!
//! Every intervention that changes what SQLite sees (a busy answer, a refused delete, a
//! failed transaction) is a [`Refusal`]: the result code SQLite gets, the counter it
//! bumps, the decision recorded in the `tracing` event and a message that names the file
//! and says what to do. [`Refusal::report`] does all of it in one place; the trampolines
//! only pass the code on.

use libsqlite3_sys as ffi;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};

/// How loud a refusal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Expected in a busy fleet (a wait, a skipped clean-up): `tracing` debug/info only.
    Routine,
    /// Something outside walguard went wrong (a sidecar replaced, a file unusable): an
    /// error event and a line in SQLite's log.
    Alarm,
}

#[must_use = "a refusal does nothing until it is reported"]
pub(crate) struct Refusal {
    pub code: c_int,
    counter: &'static AtomicU64,
    decision: &'static str,
    level: Level,
    message: String,
}

impl Refusal {
    pub(crate) fn new(
        code: c_int,
        counter: &'static AtomicU64,
        decision: &'static str,
        level: Level,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            code,
            counter,
            decision,
            level,
            message: message.into(),
        }
    }

    /// `SQLITE_BUSY`, routine: SQLite retries or skips.
    pub(crate) fn busy(
        counter: &'static AtomicU64,
        decision: &'static str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal::new(ffi::SQLITE_BUSY, counter, decision, Level::Routine, message)
    }

    /// Bumps the counter, emits the event (and, for alarms, SQLite's log line) about the
    /// database `path`, and returns the code for SQLite.
    pub(crate) fn report(self, path: &str) -> c_int {
        self.counter.fetch_add(1, Ordering::Relaxed);
        match self.level {
            Level::Routine => tracing::debug!(target: "walguard", path, decision = self.decision,
                code = self.code, "{}", self.message),
            Level::Alarm => {
                tracing::error!(target: "walguard", path, decision = self.decision,
                    code = self.code, "{}", self.message);
                crate::api::sqlite_log(self.code, &format!("walguard: {path}: {}", self.message));
            }
        }
        self.code
    }
}
