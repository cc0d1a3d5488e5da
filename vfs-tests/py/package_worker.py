"""A process writing to a shared WAL database on command, with or without the installed
walguard package. Used by vfs-tests/tests/python_package.rs (run by the venv's python).

Usage: package_worker.py MODE DATABASE NAME

MODE:
  plain    the sqlite3 module as it is (unix VFS); never imports walguard, so it is an
           unmodified program (`walguard exec` or WALGUARD_AUTO=1 may still guard it)
  install  walguard.install(), then sqlite3.connect(DATABASE)
  apsw     walguard.load(apsw.Connection(":memory:")), then apsw.Connection(DATABASE)

With WALGUARD_TEST_SIMULATE_NOLOAD=1, `install` first makes sqlite3.connect return
connections without enable_load_extension (a Python built without it).

Prints `ready pid=P sqlite=V walguard=HOW` once the database is open (HOW: `load`
through enable_load_extension, `autoext` through the sqlite3 module's library, `auto`
by WALGUARD_AUTO, `preload` by walguard exec, `none`), then answers one line per
command line on stdin with `ok PAYLOAD` or `err CODE MESSAGE`:
  wal          PRAGMA journal_mode=WAL                     -> ok wal
  write N      N rows, one BEGIN IMMEDIATE transaction each -> ok ID:TAG ...
  rows         every row                                   -> ok ID:TAG ...
  peek         open()/read(100)/close() of the database file (drops this process's
               POSIX locks on it)                          -> ok BYTES
  checkpoint   PRAGMA wal_checkpoint(PASSIVE)              -> ok BUSY LOG CHECKPOINTED
  integrity    PRAGMA integrity_check                      -> ok ok
  stats        walguard.stats(conn) as JSON; in plain mode walguard_stats() if the
               connection has it (exec, WALGUARD_AUTO), else `none`
  close        closes the connection                       -> ok
  quit         closes and exits                            -> bye
"""

import json
import os
import sqlite3
import sys

SCHEMA = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL)"
BUSY_MS = 10000


def reply(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class NoLoadConnection(sqlite3.Connection):
    """A connection as a Python built without extension loading has it."""

    def __getattribute__(self, name):
        if name in ("enable_load_extension", "load_extension"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def simulate_noload():
    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real_connect(*a, factory=NoLoadConnection, **k)


class Stdlib:
    def __init__(self, db):
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=BUSY_MS / 1000)
        self.version = sqlite3.sqlite_version

    def query(self, sql, params=()):
        return self.conn.execute(sql, params).fetchall()

    def exec(self, sql, params=()):
        self.conn.execute(sql, params)

    def last_rowid(self):
        return self.query("SELECT last_insert_rowid()")[0][0]

    def close(self):
        self.conn.close()

    @staticmethod
    def code(e):
        return getattr(e, "sqlite_errorcode", -1)


class Apsw:
    def __init__(self, db):
        import apsw

        self.apsw = apsw
        self.conn = apsw.Connection(db)
        self.conn.setbusytimeout(BUSY_MS)
        self.version = apsw.sqlite_lib_version()

    def query(self, sql, params=()):
        return list(self.conn.cursor().execute(sql, params))

    def exec(self, sql, params=()):
        self.conn.cursor().execute(sql, params)

    def last_rowid(self):
        return self.conn.last_insert_rowid()

    def close(self):
        self.conn.close()

    @staticmethod
    def code(e):
        return getattr(e, "extendedresult", -1)


def sql_stats(conn):
    """walguard_stats() of the connection, or None (no walguard in its runtime)."""
    try:
        return conn.query("SELECT walguard_stats()")[0][0]
    except Exception:
        return None


def reached(mode, conn):
    """How walguard reached this process (see the module documentation)."""
    if mode == "apsw":
        return "load"
    if mode == "install":
        return "autoext" if "walguard._autoext" in sys.modules else "load"
    if sql_stats(conn) is None:
        return "none"
    if "walguard_preload" in os.environ.get("LD_PRELOAD", ""):
        return "preload"
    return "auto" if "walguard" in sys.modules else "?"


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("plain", "install", "apsw"):
        sys.exit(f"usage: {sys.argv[0]} plain|install|apsw DATABASE NAME")
    mode, db, name = sys.argv[1:]
    walguard = None
    if mode != "plain":
        import walguard
    if mode == "install":
        if os.environ.get("WALGUARD_TEST_SIMULATE_NOLOAD") == "1":
            simulate_noload()
        walguard.install()
        conn = Stdlib(db)
    elif mode == "apsw":
        import apsw

        walguard.load(apsw.Connection(":memory:"))
        conn = Apsw(db)
    else:
        conn = Stdlib(db)
    errors = (sqlite3.Error,) + ((conn.apsw.Error,) if isinstance(conn, Apsw) else ())
    reply(f"ready pid={os.getpid()} sqlite={conn.version} walguard={reached(mode, conn)}")
    seq = 0
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "wal":
                reply(f"ok {conn.query('PRAGMA journal_mode=WAL')[0][0]}")
            elif cmd == "write":
                acks = []
                for _ in range(int(args[0])):
                    seq += 1
                    tag = f"{name}-{os.getpid()}-{seq}"
                    conn.exec("BEGIN IMMEDIATE")
                    try:
                        conn.exec(SCHEMA)
                        conn.exec("INSERT INTO t(tag) VALUES (?)", (tag,))
                        rowid = conn.last_rowid()
                        conn.exec("COMMIT")
                    except BaseException:
                        try:
                            conn.exec("ROLLBACK")
                        except errors:
                            pass
                        raise
                    acks.append(f"{rowid}:{tag}")
                reply(f"ok {' '.join(acks)}")
            elif cmd == "rows":
                rows = conn.query("SELECT id || ':' || tag FROM t ORDER BY id")
                reply(f"ok {' '.join(r[0] for r in rows)}")
            elif cmd == "peek":
                with open(db, "rb") as f:
                    got = len(f.read(100))
                reply(f"ok {got}")
            elif cmd == "checkpoint":
                r = conn.query("PRAGMA wal_checkpoint(PASSIVE)")[0]
                reply(f"ok {' '.join(str(v) for v in r)}")
            elif cmd == "integrity":
                reply(f"ok {';'.join(r[0] for r in conn.query('PRAGMA integrity_check'))}")
            elif cmd == "stats":
                if walguard is not None:
                    reply(f"ok {json.dumps(walguard.stats(conn.conn), separators=(',', ':'))}")
                else:
                    reply(f"ok {sql_stats(conn) or 'none'}")
            elif cmd == "close":
                conn.close()
                reply("ok")
            elif cmd == "quit":
                break
            else:
                reply(f"err -1 unknown command {cmd!r}")
        except errors as e:
            reply(f"err {conn.code(e)} {type(e).__name__}: {e}")
    try:
        conn.close()
    except errors:
        pass
    reply("bye")


if __name__ == "__main__":
    main()
