//! Two SQLite runtimes in one process (G1, "another SQLite runtime of the same process"):
//! two independent copies of the system `libsqlite3.so.0` are loaded with `RTLD_LOCAL`
//! (as when Python's stdlib `sqlite3` and apsw's bundled SQLite live in one process).
//! Their POSIX locks have the same owner — the process — so neither sees the other.
//!
//! - On the plain unix VFS, runtime 2's connection closing believes it is the last one,
//!   checkpoints and unlinks `-wal`/`-shm` under runtime 1's open connection: the process
//!   then holds a deleted `-shm` (the test proves it breaks).
//! - With walguard loaded into *both* runtimes (the same `libwalguard.so`, one instance,
//!   two hosts), runtime 2's close leaves the sidecars alone, runtime 1 keeps working, and
//!   the last close cleans up normally.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

type Db = *mut c_void;

/// One SQLite library loaded privately, called through `dlsym`.
struct Runtime {
    open_v2: unsafe extern "C" fn(*const c_char, *mut Db, c_int, *const c_char) -> c_int,
    exec: unsafe extern "C" fn(
        Db,
        *const c_char,
        Option<
            unsafe extern "C" fn(*mut c_void, c_int, *mut *mut c_char, *mut *mut c_char) -> c_int,
        >,
        *mut c_void,
        *mut *mut c_char,
    ) -> c_int,
    close: unsafe extern "C" fn(Db) -> c_int,
    enable_load_extension: unsafe extern "C" fn(Db, c_int) -> c_int,
    load_extension:
        unsafe extern "C" fn(Db, *const c_char, *const c_char, *mut *mut c_char) -> c_int,
    errmsg: unsafe extern "C" fn(Db) -> *const c_char,
}

fn system_libsqlite() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("libsqlite3.so.0"))
        .find(|p| p.exists());
    found.expect("the system libsqlite3.so.0 is missing: run scripts/setup (apt-get install -y libsqlite3-0)")
}

impl Runtime {
    /// Loads a private copy of the system SQLite from `copy` (a distinct file, so the
    /// dynamic loader gives it its own globals).
    fn load(copy: &Path) -> Runtime {
        std::fs::copy(system_libsqlite(), copy).expect("copy libsqlite3");
        let c = CString::new(copy.to_str().expect("utf-8 path")).expect("no NUL");
        // SAFETY: dlopen of a real shared library; RTLD_LOCAL keeps its symbols private.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen {}", copy.display());
        let sym = |name: &CStr| {
            // SAFETY: looking up a symbol in the handle we just opened.
            let p = unsafe { libc::dlsym(h, name.as_ptr()) };
            assert!(!p.is_null(), "{name:?} missing in {}", copy.display());
            p
        };
        // SAFETY: each symbol is the SQLite C API function of that name, with the
        // signature declared in the field it is stored in (which names the target type).
        #[allow(clippy::missing_transmute_annotations)]
        unsafe {
            Runtime {
                open_v2: std::mem::transmute::<*mut c_void, _>(sym(c"sqlite3_open_v2")),
                exec: std::mem::transmute::<*mut c_void, _>(sym(c"sqlite3_exec")),
                close: std::mem::transmute::<*mut c_void, _>(sym(c"sqlite3_close")),
                enable_load_extension: std::mem::transmute::<*mut c_void, _>(sym(
                    c"sqlite3_enable_load_extension",
                )),
                load_extension: std::mem::transmute::<*mut c_void, _>(sym(
                    c"sqlite3_load_extension",
                )),
                errmsg: std::mem::transmute::<*mut c_void, _>(sym(c"sqlite3_errmsg")),
            }
        }
    }

    fn open(&self, path: &str) -> Db {
        let mut db: Db = std::ptr::null_mut();
        let c = CString::new(path).expect("no NUL");
        // SAFETY: plain SQLite calls with valid pointers.
        let rc = unsafe {
            (self.open_v2)(
                c.as_ptr(),
                &mut db,
                0x06, /* READWRITE|CREATE */
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "open {path}: {}", self.err(db));
        db
    }

    fn err(&self, db: Db) -> String {
        // SAFETY: errmsg returns a NUL-terminated string owned by the connection.
        unsafe { CStr::from_ptr((self.errmsg)(db)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Runs `sql`, returning every result cell as text.
    fn query(&self, db: Db, sql: &str) -> Result<Vec<String>, String> {
        unsafe extern "C" fn collect(
            out: *mut c_void,
            n: c_int,
            vals: *mut *mut c_char,
            _: *mut *mut c_char,
        ) -> c_int {
            // SAFETY: `out` is the Vec passed below; `vals` has `n` entries (NULL or text).
            unsafe {
                let out = &mut *(out as *mut Vec<String>);
                for i in 0..n as usize {
                    let v = *vals.add(i);
                    out.push(if v.is_null() {
                        "NULL".into()
                    } else {
                        CStr::from_ptr(v).to_string_lossy().into_owned()
                    });
                }
            }
            0
        }
        let mut out: Vec<String> = Vec::new();
        let c = CString::new(sql).expect("no NUL");
        // SAFETY: the callback only touches `out`, which outlives the call.
        let rc = unsafe {
            (self.exec)(
                db,
                c.as_ptr(),
                Some(collect),
                &mut out as *mut Vec<String> as *mut c_void,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(out)
        } else {
            Err(format!("{sql}: rc {rc}: {}", self.err(db)))
        }
    }

    fn load_walguard(&self, ext: &Path) {
        let boot = self.open(":memory:");
        let c = CString::new(ext.to_str().expect("utf-8 path")).expect("no NUL");
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: plain SQLite calls; `err` is left NULL on success.
        let rc = unsafe {
            (self.enable_load_extension)(boot, 1);
            (self.load_extension)(boot, c.as_ptr(), std::ptr::null(), &mut err)
        };
        assert_eq!(rc, 0, "load_extension: {}", self.err(boot));
        // SAFETY: closing the bootstrap connection; walguard stays loaded.
        unsafe { (self.close)(boot) };
    }
}

fn deleted_sidecars_held_by_this_process() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.ends_with("-shm (deleted)") || t.ends_with("-wal (deleted)"))
        .collect()
}

/// The scenario: runtime 1 holds a WAL connection; runtime 2 opens, writes and closes.
/// Returns (files present after runtime 2 closed, deleted sidecars then held, rows seen by
/// runtime 1 after it wrote again, integrity_check, files after the last close).
fn scenario(
    dir: &Path,
    r1: &Runtime,
    r2: &Runtime,
) -> (Vec<String>, Vec<String>, String, String, Vec<String>) {
    let db = dir.join("app.db");
    let path = db.to_str().expect("utf-8 path");
    let a = r1.open(path);
    r1.query(
        a,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    )
    .expect("runtime 1 writes");
    let b = r2.open(path);
    r2.query(b, "INSERT INTO t VALUES (2);")
        .expect("runtime 2 writes");
    // SAFETY: closing runtime 2's connection (it believes it is the last one).
    unsafe { (r2.close)(b) };
    let after_close = listing(dir);
    let held = deleted_sidecars_held_by_this_process();
    r1.query(a, "INSERT INTO t VALUES (3);")
        .expect("runtime 1 writes again");
    let rows = r1
        .query(a, "SELECT count(*) FROM t")
        .map(|v| v.join(","))
        .unwrap_or_else(|e| e);
    // A fresh connection of runtime 2 must see everything runtime 1 committed.
    let c = r2.open(path);
    let integrity = r2
        .query(c, "PRAGMA integrity_check; SELECT count(*) FROM t;")
        .map(|v| v.join(","))
        .unwrap_or_else(|e| e);
    // SAFETY: closing the remaining connections.
    unsafe {
        (r2.close)(c);
        (r1.close)(a);
    }
    (after_close, held, rows, integrity, listing(dir))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("app.db"))
        .collect();
    v.sort();
    v
}

#[test]
fn two_runtimes_in_one_process_split_on_unix_and_not_through_walguard() {
    let libs = tempfile::tempdir().expect("tempdir");
    // Baseline: two private runtimes without walguard.
    let u1 = Runtime::load(&libs.path().join("u1.so"));
    let u2 = Runtime::load(&libs.path().join("u2.so"));
    let plain = tempfile::tempdir().expect("tempdir");
    let (after_close, held, _rows, _integrity, _) = scenario(plain.path(), &u1, &u2);
    assert!(
        !after_close.contains(&"app.db-shm".to_string()) && held.iter().any(|h| h.ends_with("-shm (deleted)")),
        "on plain unix runtime 2's close unlinks the -shm under runtime 1 (files {after_close:?}, held {held:?})"
    );

    // walguard loaded into two fresh runtimes (one library instance, two hosts).
    let ext = vfs_tests::extension::extension_path();
    let w1 = Runtime::load(&libs.path().join("w1.so"));
    let w2 = Runtime::load(&libs.path().join("w2.so"));
    w1.load_walguard(&ext);
    w2.load_walguard(&ext);
    let guarded = tempfile::tempdir().expect("tempdir");
    let probe = w2.open(guarded.path().join("probe.db").to_str().expect("utf-8"));
    let stats = w2
        .query(probe, "SELECT walguard_stats()")
        .expect("walguard_stats() in runtime 2");
    assert!(stats[0].contains("\"db_opened\""), "{stats:?}");
    // SAFETY: closing the probe connection.
    unsafe { (w2.close)(probe) };
    let (after_close, held, rows, integrity, at_end) = scenario(guarded.path(), &w1, &w2);
    assert!(
        after_close.contains(&"app.db-shm".to_string())
            && after_close.contains(&"app.db-wal".to_string()),
        "{after_close:?}"
    );
    assert!(held.is_empty(), "no deleted sidecar held: {held:?}");
    assert_eq!(rows, "3");
    assert_eq!(integrity, "ok,3");
    assert_eq!(at_end, ["app.db"], "the last close cleans up normally");
}
