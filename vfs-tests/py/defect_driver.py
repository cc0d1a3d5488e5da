"""A line-driven SQLite process for the defect regression tests (issue 10).

Usage: defect_driver.py   (Debian python3; standard library only)

Drives the system SQLite (libsqlite3.so.0, the library Python's own sqlite3 module
uses) through ctypes, so that a test can do what the sqlite3 module cannot:
sqlite3_file_control, several named connections in one process, exiting without
closing. One command per line on stdin, exactly one reply line on stdout:
`ok [payload]` or `err <extended result code> <message>` (code -1: not SQLite's).

Commands:
  load EXT               load the walguard extension (default VFS) into this process
  open NAME PATH [VFS]   sqlite3_open_v2 (read-write, create), extended result codes,
                         busy timeout 5000 ms
  busy NAME MS           sqlite3_busy_timeout
  exec NAME SQL...       sqlite3_exec; payload: rows joined by ";", columns by ","
  persist NAME VALUE     sqlite3_file_control(SQLITE_FCNTL_PERSIST_WAL, VALUE);
                         payload: the value afterwards
  close NAME             sqlite3_close
  peek PATH              os.open/os.read(100)/os.close of PATH (a header peek)
  deleted                payload: N, then the targets of this process's descriptors
                         on deleted -wal/-shm files, joined by "|"
  pid                    payload: this process's pid
  hardexit               reply ok, then os._exit(0): no close, no checkpoint
  exit                   close every connection, exit 0
"""

import ctypes
import os
import sys

SQLITE_OK = 0
SQLITE_OK_LOAD_PERMANENTLY = 256
SQLITE_OPEN_READWRITE = 0x2
SQLITE_OPEN_CREATE = 0x4
SQLITE_FCNTL_PERSIST_WAL = 10

lib = ctypes.CDLL("libsqlite3.so.0")
lib.sqlite3_open_v2.argtypes = [
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_int,
    ctypes.c_char_p,
]
lib.sqlite3_errmsg.restype = ctypes.c_char_p
lib.sqlite3_errmsg.argtypes = [ctypes.c_void_p]
lib.sqlite3_extended_result_codes.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.sqlite3_busy_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.sqlite3_close.argtypes = [ctypes.c_void_p]
lib.sqlite3_enable_load_extension.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.sqlite3_load_extension.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
]
lib.sqlite3_file_control.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_void_p,
]
CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_char_p),
)
lib.sqlite3_exec.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    CALLBACK,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_char_p),
]

conns = {}


class Fail(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg


def sqlite_fail(db, rc):
    # With extended result codes on, `rc` is the extended code already.
    msg = lib.sqlite3_errmsg(db).decode(errors="replace") if db else "no connection"
    raise Fail(rc, msg)


def conn(name):
    if name not in conns:
        raise Fail(-1, f"no connection named {name}")
    return conns[name]


def cmd_load(path):
    db = ctypes.c_void_p()
    rc = lib.sqlite3_open_v2(b":memory:", ctypes.byref(db), SQLITE_OPEN_READWRITE, None)
    if rc != SQLITE_OK:
        sqlite_fail(db, rc)
    lib.sqlite3_enable_load_extension(db, 1)
    err = ctypes.c_char_p()
    rc = lib.sqlite3_load_extension(db, path.encode(), None, ctypes.byref(err))
    if rc not in (SQLITE_OK, SQLITE_OK_LOAD_PERMANENTLY):
        msg = err.value.decode(errors="replace") if err.value else "load failed"
        lib.sqlite3_close(db)
        raise Fail(rc, msg)
    lib.sqlite3_close(db)
    return ""


def cmd_open(name, path, vfs=None):
    db = ctypes.c_void_p()
    rc = lib.sqlite3_open_v2(
        path.encode(),
        ctypes.byref(db),
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
        vfs.encode() if vfs else None,
    )
    if rc != SQLITE_OK:
        try:
            sqlite_fail(db, rc)
        finally:
            lib.sqlite3_close(db)
    lib.sqlite3_extended_result_codes(db, 1)
    lib.sqlite3_busy_timeout(db, 5000)
    conns[name] = db
    return ""


def cmd_exec(name, sql):
    db = conn(name)
    rows = []

    def collect(_arg, ncols, values, _names):
        rows.append(
            ",".join(
                "NULL" if values[i] is None else values[i].decode(errors="replace")
                for i in range(ncols)
            )
        )
        return 0

    err = ctypes.c_char_p()
    rc = lib.sqlite3_exec(db, sql.encode(), CALLBACK(collect), None, ctypes.byref(err))
    if rc != SQLITE_OK:
        sqlite_fail(db, rc)
    return ";".join(rows)


def cmd_persist(name, value):
    db = conn(name)
    v = ctypes.c_int(int(value))
    rc = lib.sqlite3_file_control(db, b"main", SQLITE_FCNTL_PERSIST_WAL, ctypes.byref(v))
    if rc != SQLITE_OK:
        raise Fail(rc, "sqlite3_file_control(SQLITE_FCNTL_PERSIST_WAL) failed")
    return str(v.value)


def cmd_close(name):
    db = conn(name)
    rc = lib.sqlite3_close(db)
    if rc != SQLITE_OK:
        sqlite_fail(db, rc)
    del conns[name]
    return ""


def cmd_peek(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return str(len(os.read(fd, 100)))
    finally:
        os.close(fd)


def cmd_deleted():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)") and ("-wal" in target or "-shm" in target):
            found.append(target)
    return " ".join([str(len(found))] + (["|".join(sorted(found))] if found else []))


def handle(line):
    words = line.split()
    if not words:
        raise Fail(-1, "empty command")
    op, args = words[0], words[1:]
    if op == "load" and len(args) == 1:
        return cmd_load(args[0])
    if op == "open" and len(args) in (2, 3):
        return cmd_open(*args)
    if op == "busy" and len(args) == 2:
        lib.sqlite3_busy_timeout(conn(args[0]), int(args[1]))
        return ""
    if op == "exec" and len(args) >= 2:
        return cmd_exec(args[0], line.split(None, 2)[2])
    if op == "persist" and len(args) == 2:
        return cmd_persist(*args)
    if op == "close" and len(args) == 1:
        return cmd_close(args[0])
    if op == "peek" and len(args) == 1:
        return cmd_peek(args[0])
    if op == "deleted" and not args:
        return cmd_deleted()
    if op == "pid" and not args:
        return str(os.getpid())
    raise Fail(-1, f"unknown command {line!r}")


def main():
    for raw in sys.stdin:
        line = raw.strip()
        if line == "exit":
            for db in conns.values():
                lib.sqlite3_close(db)
            print("ok", flush=True)
            return
        if line == "hardexit":
            print("ok", flush=True)
            os._exit(0)
        try:
            payload = handle(line)
            print(f"ok {payload}".rstrip(), flush=True)
        except Fail as e:
            print(f"err {e.code} {e.msg}", flush=True)
        except (OSError, ValueError) as e:
            print(f"err -1 {e}", flush=True)


main()
