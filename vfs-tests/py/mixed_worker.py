"""A Python process that loaded libwalguard.so, writing to a shared WAL database on
command. Used by vfs-tests/tests/mixed_loaders.rs.

Usage: mixed_worker.py EXTENSION DATABASE SOURCE

Loads the extension on a :memory: connection (walguard becomes the default VFS), then
opens DATABASE with a plain connect. Commands on stdin, one per line:
  insert N   insert row (SOURCE, N) in its own transaction; replies `ok N` after COMMIT
             returned, or `err N <message>`
  count      replies `count K` (rows of every source)
  stats      replies `stats <walguard_stats() JSON>`
  quit       closes the connections and replies `bye`
"""

import sqlite3
import sys

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mixed("
    "id INTEGER PRIMARY KEY, src TEXT NOT NULL, n INTEGER NOT NULL, UNIQUE(src, n))"
)


def reply(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} EXTENSION DATABASE SOURCE")
    ext, db, src = sys.argv[1:]
    loader = sqlite3.connect(":memory:")
    if not hasattr(loader, "enable_load_extension"):
        sys.exit(f"{sys.executable} cannot load extensions; use Debian's /usr/bin/python3")
    loader.enable_load_extension(True)
    loader.load_extension(ext)
    loader.enable_load_extension(False)

    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    conn.execute(SCHEMA)
    (stats,) = conn.execute("SELECT walguard_stats()").fetchone()
    reply(f"ready mode={mode} stats={stats}")

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "insert":
            n = int(words[1])
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO mixed(src, n) VALUES (?, ?)", (src, n))
                conn.execute("COMMIT")
                reply(f"ok {n}")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                reply(f"err {n} {type(e).__name__}: {e}")
        elif cmd == "count":
            reply(f"count {conn.execute('SELECT count(*) FROM mixed').fetchone()[0]}")
        elif cmd == "stats":
            reply(f"stats {conn.execute('SELECT walguard_stats()').fetchone()[0]}")
        elif cmd == "quit":
            break
        else:
            reply(f"err 0 unknown command {cmd!r}")
    conn.close()
    loader.close()
    reply("bye")


if __name__ == "__main__":
    main()
