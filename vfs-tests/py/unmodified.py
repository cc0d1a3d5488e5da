"""A Python program that knows nothing about walguard: it never imports it. Used by
vfs-tests/tests/python_reach.rs and exec_preload.rs to show what `walguard exec` and
WALGUARD_AUTO=1 do to programs nobody changed.

Usage: unmodified.py COMMAND ...

  vfs DB            PRAGMA journal_mode=WAL on DB, then the VFS its connection went
                    through: two lines, e.g. `wal` and `walguard` (`unix` when the
                    connection has no walguard_stats(), the function walguard adds)
  probe DB          key=value lines: journal_mode, vfs, db_opened (walguard's counter, or
                    -1), and what the process holds: walguard_imported (the package,
                    imported by the WALGUARD_AUTO hook), autoext_imported, finder (the
                    hook's sys.meta_path entry), libwalguard_mapped,
                    preload_mapped (/proc/self/maps)
  insert DB TAG N   N rows into t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL), one
                    BEGIN IMMEDIATE transaction each, tags TAG-1..TAG-N; prints
                    `ok ID:TAG ...` and `vfs=walguard|unix` (a command-line tool of
                    the fleet)
  nosqlite          never imports sqlite3; prints the probe's process lines
  apsw DB           opens DB with apsw only; prints apsw_vfs (its connection's VFS) and
                    the probe's process lines
"""

import os
import sys

SCHEMA = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL)"


def out(key, value):
    print(f"{key}={value}", flush=True)


def process_lines():
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    out("walguard_imported", int("walguard" in sys.modules))
    out("autoext_imported", int("walguard._autoext" in sys.modules))
    out("sqlite3_imported", int("sqlite3" in sys.modules))
    out("finder", int(any(type(f).__module__.startswith("walguard") for f in sys.meta_path)))
    out("libwalguard_mapped", int("/libwalguard.so" in maps))
    out("preload_mapped", int("/libwalguard_preload.so" in maps))


def stats_of(conn):
    """walguard_stats() of the connection as text, or None."""
    import sqlite3

    try:
        return conn.execute("SELECT walguard_stats()").fetchone()[0]
    except sqlite3.OperationalError:
        return None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "nosqlite":
        process_lines()
        return
    if cmd == "apsw":
        import apsw

        conn = apsw.Connection(args[0])
        out("apsw_vfs", conn.vfsname("main"))
        conn.close()
        process_lines()
        return
    import sqlite3

    conn = sqlite3.connect(args[0], isolation_level=None, timeout=10)
    if cmd == "vfs":
        print(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        print("walguard" if stats_of(conn) is not None else "unix")
    elif cmd == "probe":
        out("journal_mode", conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        conn.execute(SCHEMA)
        stats = stats_of(conn)
        out("vfs", "walguard" if stats is not None else "unix")
        if stats is None:
            out("db_opened", -1)
        else:
            import json

            out("db_opened", json.loads(stats)["db_opened"])
        process_lines()
    elif cmd == "insert":
        tag, n = args[1], int(args[2])
        acks = []
        for i in range(1, n + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SCHEMA)
            cur = conn.execute("INSERT INTO t(tag) VALUES (?)", (f"{tag}-{i}",))
            conn.execute("COMMIT")
            acks.append(f"{cur.lastrowid}:{tag}-{i}")
        print("ok " + " ".join(acks), flush=True)
        out("vfs", "walguard" if stats_of(conn) is not None else "unix")
    else:
        sys.exit(f"unknown command {cmd!r}")
    conn.close()


if __name__ == "__main__":
    main()
