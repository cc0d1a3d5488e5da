"""Checks of the installed walguard package, run by the venv's python from
vfs-tests/tests/python_package.rs.

Usage: package_checks.py SCENARIO [ARG]   (run in an empty directory)

`record WHEEL` needs no installed package: it checks the wheel's RECORD.

Prints `key=value` lines that the Rust test asserts on. Any unexpected exception ends
the script with a traceback and a non-zero status.
"""

import base64
import hashlib
import importlib.util
import os
import shutil
import sqlite3
import sys
import zipfile


def out(key, value):
    print(f"{key}={value}", flush=True)


def error_of(fn, *args, **kwargs):
    """(exception type name, message) raised by fn, or ("none", "")."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # the scenarios print what was raised
        return e, type(e).__name__, str(e).replace("\n", " ")
    return None, "none", ""


def connect(target, uri=False):
    return sqlite3.connect(target, uri=uri, isolation_level=None, timeout=30)


def load_function_refused(conn):
    """1 when SQL load_extension() is refused on conn (extension loading disabled)."""
    try:
        conn.execute("SELECT load_extension('no-such-library')").fetchall()
    except sqlite3.OperationalError as e:
        return int("not authorized" in str(e))
    return 0


def scenario_api():
    import walguard

    out("version", walguard.__version__)
    path = walguard.loadable_path()
    pkg_dir = os.path.dirname(os.path.abspath(walguard.__file__))
    out("path_in_package", int(os.path.dirname(path) == pkg_dir and os.path.isfile(path)))
    out("path_name", os.path.basename(path))
    out("py_typed", int(os.path.isfile(os.path.join(pkg_dir, "py.typed"))))
    for name in ("install", "load", "stats", "loadable_path"):
        out(f"doc.{name}", int(bool((getattr(walguard, name).__doc__ or "").strip())))
    out("annotations.load", ",".join(sorted(walguard.load.__annotations__)))

    _, kind, msg = error_of(walguard.stats)
    out("stats_before.error", kind)
    out("stats_before.names_install", int("walguard.install()" in msg))

    walguard.install()
    c = connect("app.db")
    out("journal_mode", c.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES (1)")
    s = walguard.stats()
    out("stats_type", type(s).__name__)
    out("stats_all_int", int(all(isinstance(v, int) for v in s.values())))
    for k in ("registrations", "db_opened", "wal_opened", "shm_mapped"):
        out(f"after_install.{k}", s[k])
    out("stats_via_conn_equal", int(walguard.stats(c) == walguard.stats()))
    c.close()
    walguard.install()  # a second call is harmless
    out("second_install", "ok")

    # load() leaves extension loading disabled on the connection afterwards.
    m = sqlite3.connect(":memory:")
    walguard.load(m)
    out("loading_disabled_after_load", load_function_refused(m))
    m.close()

    _, kind, msg = error_of(walguard.load, object())
    out("load_object.error", kind)


def scenario_nodefault():
    import walguard

    walguard.install(default=False)
    p = connect("plain.db")
    p.execute("CREATE TABLE t(x)")
    p.close()
    out("after_plain.db_opened", walguard.stats()["db_opened"])
    w = connect("file:guarded.db?vfs=walguard", uri=True)
    w.execute("CREATE TABLE t(x)")
    w.close()
    out("after_uri.db_opened", walguard.stats()["db_opened"])


class NoLoadConnection(sqlite3.Connection):
    """A connection as a Python built without extension loading has it: no
    enable_load_extension / load_extension methods."""

    def __getattribute__(self, name):
        if name in ("enable_load_extension", "load_extension"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def simulate_no_loading():
    """Makes sqlite3.connect return connections without enable_load_extension."""
    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real_connect(*a, factory=NoLoadConnection, **k)


def has_walguard(conn):
    try:
        conn.execute("SELECT walguard_stats()").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def scenario_no_loading():
    # A sqlite3 module without enable_load_extension: walguard reaches its SQLite
    # through the library the module uses (sqlite3_auto_extension).
    import walguard

    simulate_no_loading()
    conn = sqlite3.connect(":memory:")
    out("simulated_has_method", int(hasattr(conn, "enable_load_extension")))
    _, kind, msg = error_of(walguard.load, conn)
    out("load.error", kind)
    out("load.message", msg)
    _, kind, msg = error_of(walguard.install)
    out("install.error", kind)
    out("install.message", msg)
    out("install.via_library", int("walguard._autoext" in sys.modules))
    c = connect("app.db")
    c.execute("CREATE TABLE t(x)")
    c.close()
    out("db_opened", walguard.stats()["db_opened"])


def scenario_hidden_api():
    # The same, but the module's SQLite hides its API: apsw's extension module stands in
    # for a _sqlite3 that links SQLite statically with hidden symbols.
    import _sqlite3

    import apsw
    import walguard

    _sqlite3.__file__ = apsw.__file__
    simulate_no_loading()
    out("simulated_has_method", int(hasattr(sqlite3.connect(":memory:"), "enable_load_extension")))
    e, kind, msg = error_of(walguard.install)
    out("install.error", kind)
    out("install.is_walguard_error", int(isinstance(e, walguard.WalguardError)))
    out("install.names_library", int(apsw.__file__ in msg))
    out("install.says_hidden", int("does not export sqlite3_auto_extension" in msg))
    out("install.names_configure_flag", int("--enable-loadable-sqlite-extensions" in msg))
    out("install.suggests_apsw", int("apsw.Connection" in msg))
    out("install.suggests_exec", int("walguard exec" in msg))
    out("install.names_python", int(sys.executable in msg))
    c = connect("app.db")
    out("after.db_opened_plain", "walguard" if has_walguard(c) else "unix")
    c.close()


def scenario_missing_so():
    # A copy of the installed package without its .so, imported in its place.
    spec = importlib.util.find_spec("walguard")
    src = os.path.dirname(spec.origin)
    root = os.path.abspath("pkgcopy")
    dst = os.path.join(root, "walguard")
    os.makedirs(dst)
    for name in os.listdir(src):
        if name.endswith(".py") or name == "py.typed":
            shutil.copy(os.path.join(src, name), dst)
    sys.path.insert(0, root)
    import walguard

    out("imported_copy", int(os.path.dirname(walguard.__file__) == dst))
    expected = os.path.join(dst, "libwalguard.so")
    e, kind, msg = error_of(walguard.loadable_path)
    out("path.error", kind)
    out("path.is_file_not_found", int(isinstance(e, FileNotFoundError)))
    out("path.names_path", int(expected in msg))
    out("path.filename", getattr(e, "filename", None))
    out("expected", expected)
    _, kind, msg = error_of(walguard.install)
    out("install.error", kind)
    out("install.names_path", int(expected in msg))


def scenario_runtimes():
    # Both SQLite runtimes of one process: the sqlite3 module's (Debian's libsqlite3) and
    # apsw's (bundled in apsw). One walguard state serves both.
    import apsw
    import walguard

    out("sqlite3_version", sqlite3.sqlite_version)
    out("apsw_sqlite_version", apsw.sqlite_lib_version())
    walguard.install()
    boot = apsw.Connection(":memory:")
    was = boot.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1)
    walguard.load(boot)
    out(
        "apsw_loading_restored",
        int(boot.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1) == was),
    )
    enabled = apsw.Connection(":memory:")
    enabled.enable_load_extension(True)
    walguard.load(enabled, default=True)
    out("apsw_enabled_kept", enabled.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1))

    s = connect("app.db")
    out("journal_mode", s.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    s.execute("CREATE TABLE t(src TEXT)")
    s.execute("INSERT INTO t VALUES ('sqlite3')")
    a = apsw.Connection("app.db")
    a.setbusytimeout(30000)
    out("apsw_vfs", a.vfsname("main"))
    a.cursor().execute("INSERT INTO t VALUES ('apsw')")
    out("sqlite3_sees", ",".join(r[0] for r in s.execute("SELECT src FROM t ORDER BY src")))
    out("apsw_sees", ",".join(r[0] for r in a.cursor().execute("SELECT src FROM t ORDER BY src")))
    from_sqlite3 = walguard.stats()
    from_apsw = walguard.stats(a)
    out("same_counters", int(from_sqlite3 == from_apsw))
    out("registrations", from_apsw["registrations"])
    out("db_opened", from_apsw["db_opened"])
    out("integrity", s.execute("PRAGMA integrity_check").fetchone()[0])
    a.close()
    s.close()


def scenario_record(wheel):
    # Every file is listed in RECORD with its sha256 and size (RECORD itself unhashed).
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        records = [n for n in names if n.endswith(".dist-info/RECORD")]
        out("records", len(records))
        listed = {}
        for line in zf.read(records[0]).decode("utf-8").splitlines():
            path, digest, size = line.rsplit(",", 2)
            listed[path] = (digest, size)
        bad = []
        for n in names:
            if n == records[0]:
                ok = listed.get(n) == ("", "")
            else:
                data = zf.read(n)
                want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
                    b"="
                ).decode("ascii")
                ok = listed.get(n) == (want, str(len(data)))
            if not ok:
                bad.append(n)
        out("unlisted_or_wrong", ",".join(bad) or "none")
        out("listed_not_in_wheel", ",".join(sorted(set(listed) - set(names))) or "none")
        elf = ("walguard/libwalguard.so", "walguard/libwalguard_preload.so", "walguard/walguard")
        modes = {i.filename: oct((i.external_attr >> 16) & 0o777) for i in zf.infolist()}
        out("elf_modes", ",".join(modes.get(n, "none") for n in elf))


SCENARIOS = {
    "api": scenario_api,
    "nodefault": scenario_nodefault,
    "no-loading": scenario_no_loading,
    "hidden-api": scenario_hidden_api,
    "missing-so": scenario_missing_so,
    "runtimes": scenario_runtimes,
    "record": scenario_record,
}


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}} [ARG]")
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
    out("done", 1)


if __name__ == "__main__":
    main()
