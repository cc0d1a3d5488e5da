"""Threads at fork(): walguard's watcher thread must not be there when the host forks.

Usage: fork_threads.py EXTENSION DB
Prints one line: before=N at_fork=M after=K rows=R
  before   threads of the process with walguard working (its watcher thread included)
  at_fork  threads of the parent right after os.fork() returned (Python >= 3.12 counts
           these to decide whether to warn "multi-threaded ... fork() may lead to deadlocks")
  after    threads once the parent ran another transaction (the watcher restarted)
Standard library only.
"""

import os
import sqlite3
import sys


def threads():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[17])


ext, db = sys.argv[1], sys.argv[2]
boot = sqlite3.connect(":memory:")
boot.enable_load_extension(True)
boot.load_extension(ext)
boot.close()
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
conn.execute("INSERT INTO t VALUES (1)")
# A process starts walguard's watcher once a mapping has served 1,024 transactions
# (short processes never pay for it): enough of them that it runs before the fork.
for _ in range(1100):
    conn.execute("SELECT count(*) FROM t").fetchone()
before = threads()
pid = os.fork()
if pid == 0:
    child = sqlite3.connect(db, isolation_level=None)
    child.execute("INSERT INTO t VALUES (2)")
    child.close()
    os._exit(0)
at_fork = threads()
_, status = os.waitpid(pid, 0)
conn.execute("INSERT INTO t VALUES (3)")
after = threads()
rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
print(f"before={before} at_fork={at_fork} after={after} rows={rows} child_status={status}")
