"""walguard.install() in whatever Python runs this (vfs-tests/tests/python_reach.rs).

Usage: reach_checks.py install DB     (in an empty directory)

With WALGUARD_TEST_SIMULATE_NOLOAD=1, sqlite3.connect first returns connections without
enable_load_extension (a stand-in for a Python built without it).

Prints `key=value` lines: has_enable_load_extension (of this Python's sqlite3
connections), path (how install() reached SQLite: `load` through
enable_load_extension, `autoext` through the library the sqlite3 module uses),
journal_mode, walguard's counters after writing through a connection to DB, and the
outcome of calling install() and load() again. Ends with done=1.
"""

import os
import sqlite3
import sys


def out(key, value):
    print(f"{key}={value}", flush=True)


class NoLoadConnection(sqlite3.Connection):
    def __getattribute__(self, name):
        if name in ("enable_load_extension", "load_extension"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def scenario_install(db):
    if os.environ.get("WALGUARD_TEST_SIMULATE_NOLOAD") == "1":
        real_connect = sqlite3.connect
        sqlite3.connect = lambda *a, **k: real_connect(*a, factory=NoLoadConnection, **k)
    probe = sqlite3.connect(":memory:")
    out("has_enable_load_extension", int(hasattr(probe, "enable_load_extension")))
    probe.close()

    import walguard

    walguard.install()
    out("path", "autoext" if "walguard._autoext" in sys.modules else "load")
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    out("journal_mode", conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    stats = walguard.stats()
    for key in ("registrations", "db_opened", "wal_opened", "shm_mapped"):
        out(key, stats[key])
    walguard.install()
    out("second_install", "ok")
    walguard.load(conn)
    out("load_again", "ok")
    out("registrations_after", walguard.stats()["registrations"])
    out("version", walguard.__version__)
    conn.close()


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "install":
        sys.exit(f"usage: {sys.argv[0]} install DB")
    scenario_install(sys.argv[2])
    out("done", 1)


if __name__ == "__main__":
    main()
