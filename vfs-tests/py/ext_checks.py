"""Loads libwalguard.so into Debian's python3 sqlite3 module and reports what happened.

Usage: ext_checks.py EXTENSION SCENARIO   (run in an empty directory)

Prints `key=value` lines that the Rust test (vfs-tests/tests/extension_python.rs)
asserts on. Only the standard library is used. Any unexpected exception ends the script
with a traceback and a non-zero status.
"""

import gc
import json
import os
import sqlite3
import sys


def out(key, value):
    print(f"{key}={value}", flush=True)


def connect(target, uri=False):
    # isolation_level=None: autocommit; transactions only where the script says BEGIN.
    return sqlite3.connect(target, uri=uri, isolation_level=None, timeout=30)


def loader(ext, entry=None):
    """A :memory: connection with the extension loaded on it."""
    m = connect(":memory:")
    if not hasattr(m, "enable_load_extension"):
        sys.exit(
            f"{sys.executable}'s sqlite3 module was built without load_extension support; "
            "use Debian's /usr/bin/python3 (apt-get install -y python3)"
        )
    m.enable_load_extension(True)
    if entry is None:
        m.load_extension(ext)
    else:
        m.execute("SELECT load_extension(?, ?)", (ext, entry))
    return m


def stats(conn):
    (text,) = conn.execute("SELECT walguard_stats()").fetchone()
    return json.loads(text)


def out_stats(prefix, s):
    for k, v in s.items():
        out(f"{prefix}.{k}", v)


def files():
    return ",".join(sorted(os.listdir(".")))


def scenario_default(ext):
    m = loader(ext)
    out("sqlite_version", sqlite3.sqlite_version)
    out_stats("before", stats(m))
    c = connect("app.db")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES (42)")
    out("read", c.execute("SELECT x FROM t").fetchone()[0])
    # The function is on the new connection too, not only on the one that loaded.
    out_stats("app", stats(c))
    c.close()
    out_stats("after", stats(m))
    out("files", files())


def scenario_uri(ext):
    m = loader(ext)
    out_stats("before", stats(m))
    c = connect("file:app.db?vfs=walguard", uri=True)
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES ('via-uri')")
    out("read", c.execute("SELECT x FROM t").fetchone()[0])
    c.close()
    out_stats("after", stats(m))
    try:
        connect("file:other.db?vfs=no_such_vfs", uri=True)
        out("bogus_vfs", "opened")
    except sqlite3.OperationalError as e:
        out("bogus_vfs", f"error: {e}")


def scenario_wal(ext):
    m = loader(ext)
    out_stats("before", stats(m))
    a = connect("app.db")
    out("journal_mode", a.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT)")
    b = connect("app.db")
    out("b_journal_mode", b.execute("PRAGMA journal_mode").fetchone()[0])

    a.execute("BEGIN")
    a.executemany("INSERT INTO t(who) VALUES (?)", [("a",)] * 10)
    a.execute("COMMIT")
    out("b_sees_a", b.execute("SELECT count(*) FROM t WHERE who='a'").fetchone()[0])

    # A read transaction in b keeps its snapshot while a commits more (WAL readers do
    # not block writers), then sees the new rows once it ends.
    b.execute("BEGIN")
    snap = b.execute("SELECT count(*) FROM t").fetchone()[0]
    a.execute("INSERT INTO t(who) VALUES ('a-late')")
    out("b_snapshot_before", snap)
    out("b_snapshot_during", b.execute("SELECT count(*) FROM t").fetchone()[0])
    b.execute("COMMIT")
    out("b_after_snapshot", b.execute("SELECT count(*) FROM t").fetchone()[0])

    b.execute("BEGIN IMMEDIATE")
    b.executemany("INSERT INTO t(who) VALUES (?)", [("b",)] * 5)
    b.execute("COMMIT")
    out("a_sees_b", a.execute("SELECT count(*) FROM t WHERE who='b'").fetchone()[0])
    out("wal_exists_while_open", int(os.path.exists("app.db-wal")))
    out("shm_exists_while_open", int(os.path.exists("app.db-shm")))
    out("integrity", a.execute("PRAGMA integrity_check").fetchone()[0])
    out_stats("open", stats(m))
    a.close()
    b.close()
    out_stats("after", stats(m))
    # A fresh connection after both closed still sees everything.
    c = connect("app.db")
    out("total", c.execute("SELECT count(*) FROM t").fetchone()[0])
    out("reopened_journal_mode", c.execute("PRAGMA journal_mode").fetchone()[0])
    c.close()
    out("files", files())


def scenario_survives_close(ext):
    m = loader(ext)
    out_stats("before", stats(m))
    m.close()
    del m
    gc.collect()
    c = connect("app.db")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES (1)")
    out_stats("after_plain", stats(c))
    u = connect("file:app.db?vfs=walguard", uri=True)
    out("uri_read", u.execute("SELECT count(*) FROM t").fetchone()[0])
    out_stats("after_uri", stats(u))
    u.close()
    c.close()


def scenario_nodefault(ext):
    m = loader(ext, entry="sqlite3_walguard_nodefault_init")
    out_stats("before", stats(m))
    p = connect("plain.db")
    p.execute("CREATE TABLE t(x)")
    p.execute("INSERT INTO t VALUES (1)")
    out("plain_read", p.execute("SELECT count(*) FROM t").fetchone()[0])
    p.close()
    out_stats("after_plain", stats(m))
    w = connect("file:guarded.db?vfs=walguard", uri=True)
    w.execute("CREATE TABLE t(x)")
    w.execute("INSERT INTO t VALUES (2)")
    out("uri_read", w.execute("SELECT x FROM t").fetchone()[0])
    w.close()
    out_stats("after_uri", stats(m))
    # And after all that, a plain connection is still not walguard's.
    p2 = connect("plain.db")
    p2.execute("SELECT count(*) FROM t").fetchone()
    p2.close()
    out_stats("after_plain2", stats(m))


def scenario_host(ext):
    out("sqlite_version", sqlite3.sqlite_version)
    out("sqlite_version_number", sqlite3.sqlite_version_info[0] * 1000000
        + sqlite3.sqlite_version_info[1] * 1000 + sqlite3.sqlite_version_info[2])
    m = loader(ext)
    out("loaded", 1)
    out_stats("stats", stats(m))
    # Loading again (second connection) must not count the host twice.
    m2 = loader(ext)
    out_stats("stats2", stats(m2))


SCENARIOS = {
    "default": scenario_default,
    "uri": scenario_uri,
    "wal": scenario_wal,
    "survives-close": scenario_survives_close,
    "nodefault": scenario_nodefault,
    "host": scenario_host,
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        sys.exit(f"usage: {sys.argv[0]} EXTENSION {{{'|'.join(SCENARIOS)}}}")
    SCENARIOS[sys.argv[2]](sys.argv[1])
    out("done", 1)


if __name__ == "__main__":
    main()
