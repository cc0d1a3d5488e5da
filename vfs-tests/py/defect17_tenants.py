"""One WAL database per tenant in one process, until the descriptor limit (issue 17, defect 5).

Usage: defect17_tenants.py DIR LIMIT [EXTENSION]   (Debian python3; standard library only)

Sets RLIMIT_NOFILE's soft limit to LIMIT, loads EXTENSION (walguard, as the default VFS)
when given, then opens tenant0.db, tenant1.db, ... in DIR, each kept open in WAL mode
with a committed row (so its -wal and -shm are open too), until SQLite refuses one.
Prints `opened=N` (tenants fully open), `error=MESSAGE` (the refusal), `fds=N` (open
descriptors at that moment) and `limit=N`.
"""

import os
import resource
import sqlite3
import sys

MAX_TENANTS = 5000


def main():
    directory, limit = sys.argv[1], int(sys.argv[2])
    ext = sys.argv[3] if len(sys.argv) > 3 else None
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if ext:
        m = sqlite3.connect(":memory:")
        m.enable_load_extension(True)
        m.load_extension(ext)
        m.close()
    conns = []
    error = ""
    while len(conns) < MAX_TENANTS:
        path = os.path.join(directory, f"tenant{len(conns)}.db")
        c = None
        try:
            c = sqlite3.connect(path, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=OFF")
            c.execute("CREATE TABLE IF NOT EXISTS t(x)")
            c.execute("INSERT INTO t VALUES (1)")
            c.execute("SELECT count(*) FROM t").fetchone()
        except sqlite3.Error as e:
            error = str(e)
            if c is not None:
                c.close()
            break
        conns.append(c)
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # at the limit exactly: listing needs a descriptor too
        fds = limit
    print(f"opened={len(conns)}")
    print(f"error={error}")
    print(f"fds={fds}")
    print(f"limit={limit}", flush=True)
    for c in conns:
        c.close()


main()
