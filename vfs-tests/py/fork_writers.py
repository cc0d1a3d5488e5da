"""Forked writers on one WAL database: the pattern of gunicorn --preload, Celery prefork
and multiprocessing's fork start method. Used by vfs-tests/tests/fork.rs.

Usage: fork_writers.py MODE EXTENSION CHILDREN ROWS REPS
  MODE       unix (no extension loaded) or walguard (EXTENSION loaded as default VFS)
  EXTENSION  path of libwalguard (ignored for unix; pass -)
Run in an empty directory; repetition N uses the database repN/app.db.

Each repetition: the parent opens the database in WAL mode, keeps one idle connection and
one on which it has done a read, then forks CHILDREN children. Odd children first close
the two connections they inherited (SQLite forbids *using* an inherited connection;
closing one happens in real code, explicitly or through the garbage collector); even
children leave them untouched. Every child then opens its own connection and inserts ROWS
rows, each in its own transaction. Child 1, half-way through, forks a grandchild that
closes every connection it inherited (its grandparent's and child 1's) and inserts ROWS
rows through a connection of its own (child 1, being odd, has already closed its parent's
connections, so the grandchild inherits child 1's open connection and the parent's closed
ones). Children leave through os._exit (no interpreter
shutdown, so nothing is closed behind the test's back) after writing how many rows they
committed to childN.result (grandchild.result).

Once every child is gone the parent, still holding its two connections, commits one more
row through each, then checks the row count against what was acknowledged, runs
integrity_check (on a held connection and on a fresh one) and looks for a deleted -wal or
-shm of the database in /proc/self/fd. One line per repetition:

  rep=N clean=1|0 rows=R expected=E intended=I lost=L integrity=ok|... deleted=K failed=F
  errors=...

rows: in the table at the end; expected: acknowledged commits (children's and the parent's
two); intended: what every writer set out to commit; lost: acknowledged but absent; deleted:
descriptors of this process on a deleted -wal/-shm; failed: children with a non-zero exit.
Then clean_reps=C and reps=N.

Standard library only.
"""

import ctypes
import json
import os
import signal
import sqlite3
import sys

BUSY_SECONDS = 20


PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent):
    """In a fresh child: be killed when the parent dies (the setting is not inherited), so
    that a test killing a hung run leaves nothing behind."""
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(97)


def connect(target):
    conn = sqlite3.connect(target, isolation_level=None, timeout=BUSY_SECONDS)
    # What WAL applications use; nothing here simulates a power loss, and it keeps the
    # test from timing the disk's fsync.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def one_line(s):
    return " ".join(str(s).split())


def insert_rows(conn, who, first, count):
    """Inserts rows (who, first..first+count), one transaction each. Returns (acked,
    first error or None); stops at the first error (a real worker would log and exit)."""
    acked = 0
    for n in range(first, first + count):
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(who, n) VALUES (?, ?)", (who, n))
            conn.execute("COMMIT")
            acked += 1
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return acked, f"{who} row {n}: {type(e).__name__}: {one_line(e)}"
    return acked, None


def report(path, who, acked, error):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"who": who, "acked": acked, "error": error}))


def leave(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def grandchild(db, rows, inherited, parent):
    who = "grandchild"
    die_with_parent(parent)
    try:
        for c in inherited:
            c.close()
        conn = connect(db)
        acked, err = insert_rows(conn, who, 0, rows)
        conn.close()
    except Exception as e:  # noqa: BLE001 - a child reports everything and exits
        acked, err = 0, f"{who}: {type(e).__name__}: {one_line(e)}"
    report(os.path.join(os.path.dirname(db), "grandchild.result"), who, acked, err)
    leave(0 if err is None else 1)


def child(idx, db, rows, inherited, parent):
    who = f"child{idx}"
    die_with_parent(parent)
    acked, err, gpid = 0, None, None
    try:
        if idx % 2 == 1:
            for c in inherited:
                c.close()
        conn = connect(db)
        half = rows // 2 if idx == 1 else rows
        acked, err = insert_rows(conn, who, 0, half)
        if idx == 1 and err is None:
            me = os.getpid()
            gpid = os.fork()
            if gpid == 0:
                grandchild(db, rows, [conn], me)
            more, err = insert_rows(conn, who, half, rows - half)
            acked += more
        conn.close()
    except Exception as e:  # noqa: BLE001
        err = f"{who}: {type(e).__name__}: {one_line(e)}"
    if gpid is not None:
        _, status = os.waitpid(gpid, 0)
        if status != 0 and err is None:
            err = f"{who}: grandchild exit status {status}"
    report(os.path.join(os.path.dirname(db), f"{who}.result"), who, acked, err)
    leave(0 if err is None else 1)


def deleted_sidecars(db):
    """Descriptors of this process naming a deleted -wal or -shm of db."""
    names = {os.path.realpath(db) + s + " (deleted)" for s in ("-wal", "-shm")}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target in names:
            found.append(f"fd {fd} -> {target}")
    return found


def integrity(conn):
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return "ok" if rows == ["ok"] else one_line("; ".join(rows))[:300]


def rep(n, mode, children, rows):
    d = f"rep{n}"
    os.mkdir(d)
    db = os.path.abspath(os.path.join(d, "app.db"))
    main = connect(db)
    jm = main.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if jm != "wal":
        raise SystemExit(f"{db}: journal_mode is {jm!r} after PRAGMA journal_mode=WAL")
    main.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER NOT NULL)")
    main.close()
    idle = connect(db)
    reader = connect(db)
    reader.execute("SELECT count(*) FROM t").fetchone()
    if mode == "walguard":
        opened = json.loads(reader.execute("SELECT walguard_stats()").fetchone()[0])["db_opened"]
        if opened < 1:
            raise SystemExit(f"walguard_stats() says db_opened={opened}: not through walguard")

    pids = {}
    me = os.getpid()
    for i in range(children):
        pid = os.fork()
        if pid == 0:
            child(i, db, rows, [idle, reader], me)
        pids[pid] = i
    failed, errors = 0, []
    for pid, i in pids.items():
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed += 1
    acked = 0
    who_all = [f"child{i}" for i in range(children)] + (["grandchild"] if children > 1 else [])
    for who in who_all:
        path = os.path.join(d, f"{who}.result")
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            errors.append(f"{who}: no result ({one_line(e)})")
            continue
        acked += r["acked"]
        if r["error"]:
            errors.append(r["error"])

    parent_acked = 0
    for c, label in ((idle, "idle"), (reader, "reader")):
        a, err = insert_rows(c, f"parent-{label}", 0, 1)
        parent_acked += a
        if err:
            errors.append(err)
    try:
        count = reader.execute("SELECT count(*) FROM t").fetchone()[0]
        check = integrity(reader)
    except sqlite3.Error as e:
        count, check = -1, f"{type(e).__name__}: {one_line(e)}"
    try:
        fresh = connect(db)
        check_fresh = integrity(fresh)
        fresh.close()
    except sqlite3.Error as e:
        check_fresh = f"{type(e).__name__}: {one_line(e)}"
    if check_fresh != "ok" and check == "ok":
        check = f"fresh connection: {check_fresh}"
    deleted = deleted_sidecars(db)
    expected = acked + parent_acked
    intended = rows * len(who_all) + 2
    idle.close()
    reader.close()
    clean = (
        failed == 0
        and not errors
        and expected == intended
        and count == expected
        and check == "ok"
        and not deleted
    )
    errs = " | ".join(errors[:4] + deleted[:2]) or "-"
    lost = max(expected - count, 0) if count >= 0 else expected
    print(
        f"rep={n} clean={int(clean)} rows={count} expected={expected} intended={intended} "
        f"lost={lost} integrity={check.replace(' ', '_')} deleted={len(deleted)} failed={failed} "
        f"errors={errs}",
        flush=True,
    )
    return clean


def main():
    if len(sys.argv) != 6:
        sys.exit(f"usage: {sys.argv[0]} unix|walguard EXTENSION CHILDREN ROWS REPS")
    mode, ext = sys.argv[1], sys.argv[2]
    children, rows, reps = (int(a) for a in sys.argv[3:6])
    if mode not in ("unix", "walguard"):
        sys.exit(f"MODE must be unix or walguard, not {mode!r}")
    if mode == "walguard":
        boot = connect(":memory:")
        if not hasattr(boot, "enable_load_extension"):
            sys.exit(f"{sys.executable} cannot load extensions; use Debian's /usr/bin/python3")
        boot.enable_load_extension(True)
        boot.load_extension(ext)
        boot.close()
    print(f"mode={mode} sqlite={sqlite3.sqlite_version} pid={os.getpid()}", flush=True)
    clean = sum(1 for n in range(reps) if rep(n, mode, children, rows))
    print(f"clean_reps={clean}", flush=True)
    print(f"reps={reps}", flush=True)


main()
