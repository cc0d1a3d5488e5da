"""walguard for Python: the walguard SQLite VFS in ``sqlite3`` and ``apsw``.

walguard keeps a WAL database shared by many processes from being corrupted. This
package carries its loadable extension (``libwalguard.so``, which uses the host's SQLite
and has none of its own), the ``walguard`` command (``doctor``, ``exec``) and its preload
library, and these functions:

- :func:`install` registers walguard in the process's ``sqlite3`` runtime (call it once,
  before opening any shared database). It works in any CPython on Linux: through
  ``enable_load_extension`` where the ``sqlite3`` module has it, otherwise through the
  SQLite library the module itself uses (``sqlite3_auto_extension``);
- :func:`load` loads it through a given ``sqlite3.Connection`` or ``apsw.Connection``;
- :func:`stats` returns walguard's counters;
- :func:`loadable_path` is the path of the ``.so`` for any other host.

Without a line of code: ``WALGUARD_AUTO=1`` in the environment installs walguard into
``sqlite3`` and ``apsw`` when a process first imports them (a ``.pth`` hook), and
``walguard exec -- CMD`` guards any program that links a shared ``libsqlite3``.

Once loaded, walguard stays registered in that SQLite runtime for the life of the
process (the extension answers ``SQLITE_OK_LOAD_PERMANENTLY``), whatever happens to the
connection that loaded it. Connections opened *before* it was loaded keep the VFS they
were opened with.

Importing this module is cheap (no ``sqlite3``, ``json``, ``typing`` or
``importlib.metadata``): the ``.pth`` hook imports it in processes that may never use
SQLite.
"""

import _thread
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # only for type checkers: importing typing costs milliseconds
    import sqlite3
    from typing import Any, Dict, Optional, Union

    import apsw  # type: ignore

    Connection = Union[sqlite3.Connection, apsw.Connection]

__all__ = [
    "ENTRY_DEFAULT",
    "ENTRY_NODEFAULT",
    "EXTENSION_ENV",
    "ExtensionLoadingUnavailable",
    "ExtensionNotFound",
    "WalguardError",
    "__version__",
    "install",
    "load",
    "loadable_path",
    "stats",
]

#: The installed distribution's version (the walguard crate's), written by the wheel build.
__version__: str = "0+unknown"

#: The entry point that registers walguard as the default VFS of the SQLite runtime.
ENTRY_DEFAULT = "sqlite3_walguard_init"
#: The entry point that registers walguard without making it the default: only
#: connections opened with ``?vfs=walguard`` (``uri=True``) go through it.
ENTRY_NODEFAULT = "sqlite3_walguard_nodefault_init"
#: The environment variable that names another ``libwalguard.so`` to use (``walguard
#: exec`` sets it, so that a process loads one copy of walguard, whoever loads it).
EXTENSION_ENV = "WALGUARD_EXTENSION"

_LIBRARY = "libwalguard.so"
_HERE = os.path.dirname(os.path.abspath(__file__))
# Serialises registrations: the auto-extension path arms an entry point for one private
# connection and must not interleave with another thread's.
_LOCK = _thread.allocate_lock()
# What this module registered in the sqlite3 runtime: None, ENTRY_DEFAULT or
# ENTRY_NODEFAULT.
_sqlite3_entry = None


class WalguardError(Exception):
    """walguard could not be loaded or queried; the message says why and what to do."""


class ExtensionNotFound(WalguardError, FileNotFoundError):
    """The bundled ``libwalguard.so`` is not where this package expects it."""


class ExtensionLoadingUnavailable(WalguardError):
    """The SQLite runtime can neither load extensions nor be reached from outside (a
    statically linked SQLite that hides its API)."""


def _no_loading_message(what: str) -> str:
    return (
        f"{what} was built without SQLite extension loading, so walguard cannot be "
        f"loaded into it. This is the case of some apsw builds. Use an apsw built with "
        f"extension loading (the PyPI wheels are), or the standard library's sqlite3 "
        f"module with walguard.install()."
    )


def loadable_path() -> str:
    """Return the absolute path of the loadable extension ``libwalguard.so``.

    That is ``$WALGUARD_EXTENSION`` when set (``walguard exec`` sets it: one copy of
    walguard per process), else the library bundled in this package. Give it to any
    SQLite host that loads extensions (``.load`` in the ``sqlite3`` shell,
    ``load_extension()`` elsewhere); SQLite derives the entry point
    ``sqlite3_walguard_init`` from the file name.

    Raises:
        ExtensionNotFound: the file is missing (the message names the path looked for).
    """
    override = os.environ.get(EXTENSION_ENV)
    path = os.path.abspath(override) if override else os.path.join(_HERE, _LIBRARY)
    if not os.path.isfile(path):
        if override:
            how = f"{EXTENSION_ENV}={override} names no file: unset it or correct it"
        else:
            how = (
                "this package ships it inside its platform wheel (manylinux); reinstall "
                "that wheel (pip install --force-reinstall walguard), or build one from a "
                "checkout with scripts/build-wheel and install target/wheels/walguard-*.whl"
            )
        err = ExtensionNotFound(f"walguard's loadable extension is missing: looked for {path}. {how}.")
        err.filename = path
        raise err
    return path


def _entry(default: bool) -> str:
    return ENTRY_DEFAULT if default else ENTRY_NODEFAULT


def _apsw_module(conn: object) -> "Optional[Any]":
    """The ``apsw`` module if ``conn`` is one of its connections (never imports it)."""
    apsw_mod = sys.modules.get("apsw")
    connection_type = getattr(apsw_mod, "Connection", None)
    if isinstance(connection_type, type) and isinstance(conn, connection_type):
        return apsw_mod
    return None


def _has_stats_function(conn: "Any") -> bool:
    """Whether ``conn`` has ``walguard_stats()``: walguard is registered in its runtime
    (it adds the function to every connection opened after it was)."""
    try:
        conn.execute("SELECT walguard_stats()").fetchall()
    except Exception:  # sqlite3.OperationalError: no such function
        return False
    return True


def _load_into_sqlite3(conn: "sqlite3.Connection", entry: str) -> None:
    """Through ``conn.enable_load_extension`` (the caller checked it exists)."""
    import sqlite3

    path = loadable_path()
    # Python >= 3.12 can report the current setting; older ones cannot, and leave it
    # off afterwards (it is off by default).
    was_enabled = False
    getconfig = getattr(conn, "getconfig", None)
    op = getattr(sqlite3, "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION", None)
    if getconfig is not None and op is not None:
        was_enabled = bool(getconfig(op))
    conn.enable_load_extension(True)
    try:
        # The SQL function takes the entry point on every Python version
        # (Connection.load_extension(entrypoint=...) needs 3.12).
        conn.execute("SELECT load_extension(?, ?)", (path, entry)).fetchall()
    except sqlite3.Error as e:
        raise WalguardError(
            f"loading {path} (entry point {entry}) into the sqlite3 module's SQLite "
            f"{sqlite3.sqlite_version} failed: {e}"
        ) from e
    finally:
        if not was_enabled:
            conn.enable_load_extension(False)


def _into_sqlite3(conn: "Optional[sqlite3.Connection]", default: bool) -> None:
    """Registers walguard in the ``sqlite3`` module's runtime, through ``conn`` when it
    can load extensions, else through a private connection of its own."""
    global _sqlite3_entry
    import sqlite3

    entry = _entry(default)
    with _LOCK:
        if _sqlite3_entry == ENTRY_DEFAULT or _sqlite3_entry == entry:
            return  # done by an earlier call (install() again is free)
        boot = sqlite3.connect(":memory:")
        try:
            if _sqlite3_entry is None and _has_stats_function(boot):
                # Registered already, by `walguard exec` (its preload library registers
                # at the process's first open: this one) or another copy: one walguard
                # per runtime, so nothing to load.
                _sqlite3_entry = ENTRY_DEFAULT
                return
            for target in (conn, boot):
                if target is not None and hasattr(target, "enable_load_extension"):
                    _load_into_sqlite3(target, entry)
                    _sqlite3_entry = entry
                    return
        finally:
            boot.close()
        # No enable_load_extension (pyenv's and many source builds' default): through
        # the SQLite library the module itself uses.
        from . import _autoext

        _autoext.register(sqlite3, loadable_path(), entry)
        _sqlite3_entry = entry


def _load_into_apsw(conn: "Any", apsw_mod: "Any", entry: str) -> None:
    if not hasattr(conn, "enable_load_extension"):
        raise ExtensionLoadingUnavailable(_no_loading_message("This apsw build"))
    path = loadable_path()
    was_enabled = False
    op = getattr(apsw_mod, "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION", None)
    if op is not None:
        try:
            was_enabled = bool(conn.config(op, -1))
        except apsw_mod.Error:
            was_enabled = False
    conn.enable_load_extension(True)
    try:
        conn.load_extension(path, entry)
    except apsw_mod.Error as e:
        raise WalguardError(
            f"loading {path} (entry point {entry}) into apsw's SQLite "
            f"{apsw_mod.sqlite_lib_version()} failed: {e}"
        ) from e
    finally:
        conn.enable_load_extension(was_enabled)


def load(conn: "Connection", default: bool = True) -> None:
    """Load walguard into the SQLite runtime of ``conn``.

    ``conn`` is a ``sqlite3.Connection`` or an ``apsw.Connection``. Extension loading is
    enabled on it for the call only and then restored (on Python < 3.12, whose
    ``sqlite3`` cannot report the setting, it is left disabled, its default). A
    ``sqlite3`` module without ``enable_load_extension`` is reached as :func:`install`
    reaches it.

    With ``default=True`` (entry point ``sqlite3_walguard_init``) walguard becomes the
    default VFS of that runtime: every connection opened afterwards goes through it.
    With ``default=False`` (``sqlite3_walguard_nodefault_init``) it is only registered:
    open with ``file:app.db?vfs=walguard`` (``uri=True`` for ``sqlite3``; ``vfs=
    "walguard"`` for apsw). ``conn`` itself stays on the VFS it was opened with.

    walguard stays registered for the life of the process. ``apsw`` bundles its own
    SQLite: loading through an apsw connection registers walguard in apsw's runtime,
    not in the ``sqlite3`` module's; both share one walguard state in this process.

    Raises:
        ExtensionLoadingUnavailable: the runtime can neither load extensions nor be
            reached through its library (the message says what to use instead).
        ExtensionNotFound: the ``.so`` is missing.
        WalguardError: SQLite refused to load it (its message is included).
        TypeError: ``conn`` is neither kind of connection.
    """
    sqlite3_mod = sys.modules.get("sqlite3")
    if sqlite3_mod is not None and isinstance(conn, sqlite3_mod.Connection):
        _into_sqlite3(conn, default)
        return
    apsw_mod = _apsw_module(conn)
    if apsw_mod is not None:
        _load_into_apsw(conn, apsw_mod, _entry(default))
        return
    kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
    raise TypeError(f"walguard.load() takes a sqlite3.Connection or an apsw.Connection, not {kind}")


def install(default: bool = True) -> None:
    """Register walguard in the process's ``sqlite3`` runtime.

    Works in any CPython on Linux: where the ``sqlite3`` module has
    ``enable_load_extension`` the extension is loaded through a private ``:memory:``
    connection; where it does not (pyenv's default build, many source builds), it is
    registered through the SQLite library the module itself uses, found in the process
    (``sqlite3_auto_extension``, one private connection, ``sqlite3_cancel_auto_extension``;
    never a second copy of SQLite). The caller makes no connection. Call it once, before
    opening any database shared with other processes: connections opened earlier are not
    guarded. Calling it again is free, and so is calling it where walguard is registered
    already (``walguard exec``, ``WALGUARD_AUTO=1``). With ``default=False`` walguard is
    registered but not made the default VFS (open with
    ``sqlite3.connect("file:app.db?vfs=walguard", uri=True)``).

    walguard stays registered for the life of the process (the extension answers
    ``SQLITE_OK_LOAD_PERMANENTLY``).

    Raises:
        ExtensionLoadingUnavailable: the ``sqlite3`` module's SQLite is linked into it
            statically with its API hidden (the message says what to use instead).
        ExtensionNotFound: the ``.so`` is missing.
        WalguardError: SQLite refused to load it.
    """
    _into_sqlite3(None, default)


def _query_stats(conn: "Any", runtime: str) -> "Dict[str, int]":
    import json

    cursor = conn.cursor()
    try:
        row = cursor.execute("SELECT walguard_stats()").fetchone()
    except Exception as e:  # sqlite3.OperationalError or apsw.SQLError
        if "no such function" in str(e):
            raise WalguardError(
                f"walguard is not loaded into {runtime} (no walguard_stats() function "
                f"on this connection): call walguard.install() or walguard.load(conn) "
                f"first; connections opened before walguard was loaded do not have it"
            ) from e
        raise
    finally:
        cursor.close()
    if row is None or not isinstance(row[0], str):
        raise WalguardError(f"walguard_stats() returned {row!r}, not a JSON text")
    counters = json.loads(row[0])
    if not isinstance(counters, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in counters.items()
    ):
        raise WalguardError(f"walguard_stats() returned {row[0]!r}, not a counter map")
    return counters


def stats(conn: "Optional[Connection]" = None) -> "Dict[str, int]":
    """Return walguard's counters as a dict, e.g. ``{"db_opened": 2, ...}``.

    The counters are per process, shared by every SQLite runtime that loaded walguard
    (``db_opened``: main databases opened through walguard, ``wal_opened``,
    ``shm_mapped``, ``exclusive_blocked``, ``sidecar_replaced``, ...; see the walguard
    README). With ``conn=None`` a private ``:memory:`` connection of the ``sqlite3``
    module is used (after :func:`install`); otherwise ``conn``, a ``sqlite3`` or apsw
    connection opened after walguard was loaded into its runtime.

    Raises:
        WalguardError: walguard is not loaded into that connection's runtime.
    """
    if conn is None:
        import sqlite3

        probe = sqlite3.connect(":memory:")
        try:
            return _query_stats(probe, "the sqlite3 module's SQLite")
        finally:
            probe.close()
    return _query_stats(conn, "this connection's SQLite")
