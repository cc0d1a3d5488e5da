"""G4 from Python: a connection whose -wal/-shm are moved away under it.

Usage: g4_sidecar.py EXTENSION MODE   (MODE: walguard | unix; run in an empty directory)

Prints `ready`, waits for one line on stdin (the test moves the sidecars away and lets
another process create fresh ones meanwhile), then tries a read and a write on the same
connection and prints `key=value` lines. Standard library only.
"""

import json
import sqlite3
import sys


def out(key, value):
    print(f"{key}={value}", flush=True)


def connect(target):
    return sqlite3.connect(target, isolation_level=None, timeout=30)


def code(e):
    return getattr(e, "sqlite_errorcode", "unknown")


ext, mode = sys.argv[1], sys.argv[2]
if mode == "walguard":
    boot = connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(ext)
    boot.close()

db = connect("app.db")
out("journal_mode", db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
db.execute("CREATE TABLE t(who TEXT)")
db.execute("INSERT INTO t VALUES ('python')")
# The schema and first row live in the database file; only later commits need the sidecars.
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print("ready", flush=True)
sys.stdin.readline()

try:
    out("read", db.execute("SELECT count(*) FROM t").fetchone()[0])
except sqlite3.Error as e:
    out("read_error", code(e))
try:
    db.execute("INSERT INTO t VALUES ('after')")
    out("write", "ok")
except sqlite3.Error as e:
    out("write_error", code(e))
if mode == "walguard":
    stats = json.loads(db.execute("SELECT walguard_stats()").fetchone()[0])
    out("sidecar_replaced", stats["sidecar_replaced"])
db.close()

again = connect("app.db")
out("reopened_count", again.execute("SELECT count(*) FROM t").fetchone()[0])
again.execute("INSERT INTO t VALUES ('reopened')")
out("reopened_write", "ok")
again.close()
