//! The loadable extension's entry points (`--features loadable_extension`, built as a
//! cdylib; see the README). SQLite derives `sqlite3_walguard_init` from the file name
//! `libwalguard.so`. Every SQLite call goes through the host's `sqlite3_api_routines`,
//! so the library carries no SQLite of its own.

#[cfg(feature = "loadable_extension")]
mod entry {
    use crate::{api, io::guard, sqlfn, Options};
    use libsqlite3_sys as ffi;
    use std::os::raw::{c_char, c_int};

    /// Loads walguard and makes it the process's default VFS.
    ///
    /// # Safety
    /// Called by SQLite's extension loader with its own arguments.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_walguard_init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        routines: *const ffi::sqlite3_api_routines,
    ) -> c_int {
        // SAFETY: forwarded loader arguments.
        unsafe { init(db, err, routines, true) }
    }

    /// Loads walguard without making it the default: only `?vfs=walguard` uses it.
    ///
    /// # Safety
    /// Called by SQLite's extension loader with its own arguments.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_walguard_nodefault_init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        routines: *const ffi::sqlite3_api_routines,
    ) -> c_int {
        // SAFETY: forwarded loader arguments.
        unsafe { init(db, err, routines, false) }
    }

    /// [`sqlite3_walguard_init`] for `sqlite3_auto_extension` (hosts that cannot load
    /// extensions but can arm an auto extension: Python without
    /// `enable_load_extension`, the preload library): answers `SQLITE_OK`, as an auto
    /// extension must (`SQLITE_OK_LOAD_PERMANENTLY` is an error there, which a connection
    /// opened with extended result codes would see).
    ///
    /// # Safety
    /// Called by SQLite with an auto extension's arguments.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_walguard_auto_init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        routines: *const ffi::sqlite3_api_routines,
    ) -> c_int {
        // SAFETY: forwarded arguments.
        match unsafe { init(db, err, routines, true) } {
            ffi::SQLITE_OK_LOAD_PERMANENTLY => ffi::SQLITE_OK,
            rc => rc,
        }
    }

    /// [`sqlite3_walguard_nodefault_init`] for `sqlite3_auto_extension` (see
    /// [`sqlite3_walguard_auto_init`]).
    ///
    /// # Safety
    /// Called by SQLite with an auto extension's arguments.
    #[no_mangle]
    pub unsafe extern "C" fn sqlite3_walguard_nodefault_auto_init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        routines: *const ffi::sqlite3_api_routines,
    ) -> c_int {
        // SAFETY: forwarded arguments.
        match unsafe { init(db, err, routines, false) } {
            ffi::SQLITE_OK_LOAD_PERMANENTLY => ffi::SQLITE_OK,
            rc => rc,
        }
    }

    unsafe fn init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        routines: *const ffi::sqlite3_api_routines,
        make_default: bool,
    ) -> c_int {
        guard("extension init", ffi::SQLITE_ERROR, || {
            // SAFETY: `routines` is the host's table, passed by its loader.
            // One table per host SQLite: two libraries in one process may both load us.
            // SAFETY: `routines` is the host's table, passed by its loader.
            let Some((host, api)) = api::install(routines as usize, || unsafe {
                api::from_routines(routines)
            }) else {
                return ffi::SQLITE_ERROR;
            };
            let mut options = Options::default().make_default(make_default);
            // Extension users set the G4 read re-check interval from the environment.
            if let Some(ms) = std::env::var("WALGUARD_READ_RECHECK_MS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                options = options.read_recheck(std::time::Duration::from_millis(ms));
            }
            if let Err(e) = crate::vfs::register_in(host, &options) {
                if !err.is_null() {
                    // SAFETY: SQLite frees *err with sqlite3_free; we allocate with its malloc.
                    unsafe { *err = api::sqlite_strdup(api, &e.to_string()) };
                }
                return ffi::SQLITE_ERROR;
            }
            // SAFETY: `db` is the connection loading us, of this host.
            unsafe { sqlfn::add_to(host, db) };
            // Stay loaded: the VFS outlives the connection that loaded it.
            ffi::SQLITE_OK_LOAD_PERMANENTLY
        })
    }
}
