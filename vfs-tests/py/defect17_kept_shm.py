"""A writer's own transactions must not hide a peer's tear-down (issue 17, defect 4).

Usage: defect17_kept_shm.py EXTENSION DIR CYCLES   (Debian python3; standard library only)

Process P (this one, with the walguard extension) keeps writing to y.db from a thread,
while its main thread, CYCLES times: opens x.db and reads (maps x's -shm); has process Q
(a python3 child with the extension) open x.db and read; closes its own x connection (Q
still has it, so P's close is not the last); has Q close (the last close: x.db-wal and
x.db-shm are deleted). After each cycle P must not hold a descriptor of a deleted -shm:
it may take up to two seconds to give it back (a watcher thread may need to be
scheduled).

Prints `cycles=N` (cycles run), `teardowns=N` (cycles whose last close deleted x.db-shm),
`writes=N` (transactions on y.db meanwhile), `leaked=N` (the cycle after which a deleted
-shm stayed open for two seconds, 0: none) and `held=TARGETS` (those descriptors).
"""

import os
import sqlite3
import subprocess
import sys
import threading
import time

Q_SCRIPT = """
import sqlite3, sys
m = sqlite3.connect(":memory:")
m.enable_load_extension(True)
m.load_extension(sys.argv[1])
m.close()
q = None
for line in sys.stdin:
    if line.startswith("open"):
        q = sqlite3.connect(sys.argv[2])
        q.execute("SELECT count(*) FROM t").fetchone()
    elif q is not None:
        q.close()
        q = None
    print("ok", flush=True)
"""


def deleted_shm():
    found = []
    base = f"/proc/{os.getpid()}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        if target.endswith("-shm (deleted)"):
            found.append(target)
    return sorted(found)


def main():
    ext, directory, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
    x = os.path.join(directory, "x.db")
    y = os.path.join(directory, "y.db")
    for path in (x, y):
        c = sqlite3.connect(path)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(v)")
        c.commit()
        c.close()
    m = sqlite3.connect(":memory:")
    m.enable_load_extension(True)
    m.load_extension(ext)
    m.close()

    stop = threading.Event()
    writes = [0]

    def writer():
        cy = sqlite3.connect(y, isolation_level=None, check_same_thread=False)
        cy.execute("PRAGMA synchronous=OFF")
        while not stop.is_set():
            cy.execute("INSERT INTO t VALUES (1)")
            writes[0] += 1
        cy.close()

    w = threading.Thread(target=writer)
    w.start()
    q = subprocess.Popen(
        [sys.executable, "-I", "-c", Q_SCRIPT, ext, x],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(cmd):
        q.stdin.write(cmd + "\n")
        q.stdin.flush()
        if q.stdout.readline().strip() != "ok":
            raise SystemExit(f"Q failed at {cmd!r}")

    done = teardowns = leaked = 0
    held = []
    try:
        for i in range(cycles):
            p = sqlite3.connect(x)
            p.execute("SELECT count(*) FROM t").fetchone()
            ask("open")
            p.close()
            ask("close")
            done = i + 1
            if not os.path.exists(x + "-shm"):
                teardowns += 1
            deadline = time.monotonic() + 2.0
            held = deleted_shm()
            while held and time.monotonic() < deadline:
                time.sleep(0.01)
                held = deleted_shm()
            if held:
                leaked = done
                break
    finally:
        stop.set()
        w.join()
        q.stdin.close()
        q.wait()
    print(f"cycles={done}")
    print(f"teardowns={teardowns}")
    print(f"writes={writes[0]}")
    print(f"leaked={leaked}")
    print(f"held={'|'.join(held)}", flush=True)


main()
