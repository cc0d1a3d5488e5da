//! The loadable extension must not carry its own SQLite: it calls the host's SQLite
//! through the `sqlite3_api_routines` it is handed (DESIGN.md, "Rules for the code").
//! A second copy would mean two sets of POSIX locks and two WAL-index implementations in
//! one process, the very split walguard exists to prevent.

use std::path::PathBuf;
use std::process::Command;
use vfs_tests::extension::{is_sqlite_symbol, nm};

use vfs_tests::extension::{extension_path, ldd_path, run_with_timeout, SCRIPT_TIMEOUT};

/// Debian's own libsqlite3 (`/usr/lib/<multiarch>/libsqlite3.so.0`, package
/// libsqlite3-0), used as a positive control: the same checks must flag it.
fn host_libsqlite() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("libsqlite3.so.0"))
        .find(|p| p.is_file())
}

use vfs_tests::extension::{is_entry_point, ENTRY_POINTS};

#[test]
fn exports_only_the_entry_points_and_defines_no_sqlite() {
    let so = extension_path();
    let defined = nm(&so, &["-D", "--defined-only"]);
    for entry in ENTRY_POINTS {
        assert!(
            defined.iter().any(|(ty, n)| n == entry && ty == "T"),
            "{} does not export the entry point {entry} as a function; nm -D --defined-only:\n{defined:#?}",
            so.display()
        );
    }
    let stray: Vec<_> = defined
        .iter()
        .filter(|(_, n)| is_sqlite_symbol(n) && !is_entry_point(n))
        .collect();
    assert!(
        stray.is_empty(),
        "{} exports SQLite symbols besides its entry points: {stray:?}",
        so.display()
    );

    // The full symbol table (present unless stripped) must not hold a linked-in
    // amalgamation either: a static copy would not show in the dynamic table.
    let all = nm(&so, &["--defined-only"]);
    let hidden: Vec<_> = all
        .iter()
        .filter(|(_, n)| is_sqlite_symbol(n) && !is_entry_point(n))
        .take(20)
        .collect();
    assert!(
        hidden.is_empty(),
        "{} contains SQLite's own functions (a bundled copy?): {hidden:?}",
        so.display()
    );
}

#[test]
fn imports_no_sqlite_symbol() {
    // Every call into SQLite goes through the api-routines table; an undefined
    // `sqlite3_*` would bind to whatever SQLite the dynamic linker finds first.
    let so = extension_path();
    let undefined = nm(&so, &["-D", "--undefined-only"]);
    let sqlite: Vec<_> = undefined
        .iter()
        .filter(|(_, n)| is_sqlite_symbol(n))
        .collect();
    assert!(
        sqlite.is_empty(),
        "{} imports SQLite symbols: {sqlite:?}",
        so.display()
    );
}

#[test]
fn does_not_link_libsqlite3() {
    let so = extension_path();
    let mut cmd = Command::new(ldd_path());
    cmd.arg(&so);
    let out = run_with_timeout(cmd, None, SCRIPT_TIMEOUT);
    out.assert_success("ldd");
    assert!(
        out.stdout.contains("libc.so"),
        "ldd output does not look like a dependency list:\n{out}"
    );
    assert!(
        !out.stdout.contains("libsqlite3"),
        "{} depends on a system libsqlite3:\n{out}",
        so.display()
    );
}

/// Finds SQLite's source id (`2022-12-28 14:03:47 df5c253c0b3d…`), which every build of
/// the amalgamation embeds, stripped or not.
fn find_sqlite_source_id(bytes: &[u8]) -> Option<String> {
    let is_digit = |b: u8| b.is_ascii_digit();
    let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let shape = b"dddd-dd-dd dd:dd:dd ";
    'outer: for i in 0..bytes.len().saturating_sub(shape.len() + 40) {
        for (j, &s) in shape.iter().enumerate() {
            let b = bytes[i + j];
            let ok = match s {
                b'd' => is_digit(b),
                other => b == other,
            };
            if !ok {
                continue 'outer;
            }
        }
        let hex = &bytes[i + shape.len()..];
        let n = hex.iter().take_while(|&&b| is_hex(b)).count();
        if n >= 40 {
            return Some(String::from_utf8_lossy(&bytes[i..i + shape.len() + n]).into_owned());
        }
    }
    None
}

#[test]
fn embeds_no_sqlite_source_id() {
    // Positive control first, so the scan is known to work.
    let host = match host_libsqlite() {
        Some(p) => p,
        None => panic!(
            "no /usr/lib/*/libsqlite3.so.0 for the positive control: \
             apt-get install -y libsqlite3-0"
        ),
    };
    let bytes = std::fs::read(&host).expect("read the host libsqlite3");
    assert!(
        find_sqlite_source_id(&bytes).is_some(),
        "the source-id scan found nothing in {}; the scan is broken",
        host.display()
    );
    let defined = nm(&host, &["-D", "--defined-only"]);
    assert!(
        defined.iter().any(|(_, n)| is_sqlite_symbol(n)),
        "the symbol filter flags nothing in {}; the filter is broken",
        host.display()
    );
    let so = extension_path();
    let bytes = std::fs::read(&so).expect("read the extension");
    assert_eq!(
        find_sqlite_source_id(&bytes),
        None,
        "{} embeds an SQLite source id: it links its own SQLite",
        so.display()
    );
}
