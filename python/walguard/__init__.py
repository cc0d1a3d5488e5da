"""walguard for Python: load the walguard SQLite VFS into ``sqlite3`` and ``apsw``.

walguard keeps a WAL database shared by many processes from being corrupted. This
package carries its loadable extension (``libwalguard.so``, which uses the host's SQLite
and has none of its own) and four functions:

- :func:`install` registers walguard in the process's ``sqlite3`` runtime (call it once,
  before opening any shared database);
- :func:`load` loads it through a given ``sqlite3.Connection`` or ``apsw.Connection``;
- :func:`stats` returns walguard's counters;
- :func:`loadable_path` is the path of the bundled ``.so`` for any other host.

Once loaded, walguard stays registered in that SQLite runtime for the life of the
process (the extension answers ``SQLITE_OK_LOAD_PERMANENTLY``), whatever happens to the
connection that loaded it. Connections opened *before* it was loaded keep the VFS they
were opened with.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

if TYPE_CHECKING:  # apsw is optional: only its type is needed here.
    import apsw  # type: ignore

    Connection = Union[sqlite3.Connection, apsw.Connection]
else:
    Connection = Any

__all__ = [
    "ENTRY_DEFAULT",
    "ENTRY_NODEFAULT",
    "ExtensionLoadingUnavailable",
    "ExtensionNotFound",
    "WalguardError",
    "__version__",
    "install",
    "load",
    "loadable_path",
    "stats",
]

#: The entry point that registers walguard as the default VFS of the SQLite runtime.
ENTRY_DEFAULT = "sqlite3_walguard_init"
#: The entry point that registers walguard without making it the default: only
#: connections opened with ``?vfs=walguard`` (``uri=True``) go through it.
ENTRY_NODEFAULT = "sqlite3_walguard_nodefault_init"

_LIBRARY = "libwalguard.so"


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "0+unknown"
    try:
        return version("walguard")
    except PackageNotFoundError:
        return "0+unknown"


#: The installed distribution's version (the walguard crate's version).
__version__: str = _package_version()


class WalguardError(Exception):
    """walguard could not be loaded or queried; the message says why and what to do."""


class ExtensionNotFound(WalguardError, FileNotFoundError):
    """The bundled ``libwalguard.so`` is not where this package expects it."""


class ExtensionLoadingUnavailable(WalguardError):
    """The SQLite binding was built without extension loading."""


def _no_loading_message(what: str) -> str:
    return (
        f"{what} was built without SQLite extension loading, so walguard cannot be "
        f"loaded into it. This is the case of macOS's system Python and of Pythons "
        f"(pyenv, asdf, some source builds) configured without "
        f"--enable-loadable-sqlite-extensions. Use a Python built with it (Debian and "
        f"Ubuntu's /usr/bin/python3, the python.org installers, conda, or pyenv with "
        f'PYTHON_CONFIGURE_OPTS="--enable-loadable-sqlite-extensions" pyenv install '
        f"VERSION), or use apsw (pip install apsw), which has its own SQLite: "
        f"walguard.load(apsw.Connection(':memory:')) before opening the database with "
        f"apsw.Connection."
    )


def loadable_path() -> str:
    """Return the absolute path of the bundled loadable extension ``libwalguard.so``.

    Give it to any SQLite host that loads extensions (``.load`` in the ``sqlite3`` shell,
    ``load_extension()`` elsewhere); SQLite derives the entry point
    ``sqlite3_walguard_init`` from the file name.

    Raises:
        ExtensionNotFound: the file is missing (the message names the path looked for).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY)
    if not os.path.isfile(path):
        err = ExtensionNotFound(
            f"walguard's loadable extension is missing: looked for {path}. This package "
            f"ships it inside its platform wheel (manylinux); reinstall that wheel "
            f"(pip install --force-reinstall walguard), or build one from a checkout "
            f"with scripts/build-wheel and install target/wheels/walguard-*.whl."
        )
        err.filename = path
        raise err
    return path


def _entry(default: bool) -> str:
    return ENTRY_DEFAULT if default else ENTRY_NODEFAULT


def _apsw_module(conn: object) -> Optional[Any]:
    """The ``apsw`` module if ``conn`` is one of its connections (never imports it)."""
    apsw_mod = sys.modules.get("apsw")
    connection_type = getattr(apsw_mod, "Connection", None)
    if isinstance(connection_type, type) and isinstance(conn, connection_type):
        return apsw_mod
    return None


def _load_into_sqlite3(conn: sqlite3.Connection, entry: str) -> None:
    if not hasattr(conn, "enable_load_extension"):
        raise ExtensionLoadingUnavailable(
            _no_loading_message(f"The sqlite3 module of {sys.executable}")
        )
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


def _load_into_apsw(conn: Any, apsw_mod: Any, entry: str) -> None:
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


def load(conn: Connection, default: bool = True) -> None:
    """Load walguard into the SQLite runtime of ``conn``.

    ``conn`` is a ``sqlite3.Connection`` or an ``apsw.Connection``. Extension loading is
    enabled on it for the call only and then restored (on Python < 3.12, whose
    ``sqlite3`` cannot report the setting, it is left disabled, its default).

    With ``default=True`` (entry point ``sqlite3_walguard_init``) walguard becomes the
    default VFS of that runtime: every connection opened afterwards goes through it.
    With ``default=False`` (``sqlite3_walguard_nodefault_init``) it is only registered:
    open with ``file:app.db?vfs=walguard`` (``uri=True`` for ``sqlite3``; ``vfs=
    "walguard"`` for apsw). ``conn`` itself stays on the VFS it was opened with.

    walguard stays registered for the life of the process. ``apsw`` bundles its own
    SQLite: loading through an apsw connection registers walguard in apsw's runtime,
    not in the ``sqlite3`` module's; both share one walguard state in this process.

    Raises:
        ExtensionLoadingUnavailable: the binding was built without extension loading.
        ExtensionNotFound: the bundled ``.so`` is missing.
        WalguardError: SQLite refused to load it (its message is included).
        TypeError: ``conn`` is neither kind of connection.
    """
    entry = _entry(default)
    if isinstance(conn, sqlite3.Connection):
        _load_into_sqlite3(conn, entry)
        return
    apsw_mod = _apsw_module(conn)
    if apsw_mod is not None:
        _load_into_apsw(conn, apsw_mod, entry)
        return
    kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
    raise TypeError(f"walguard.load() takes a sqlite3.Connection or an apsw.Connection, not {kind}")


def install(default: bool = True) -> None:
    """Register walguard in the process's ``sqlite3`` runtime.

    Loads the extension through a private ``:memory:`` connection, which is closed
    again; the caller makes no connection. Call it once, before opening any database
    shared with other processes: connections opened earlier are not guarded. Calling
    it again is harmless. With ``default=False`` walguard is registered but not made the
    default VFS (open with ``sqlite3.connect("file:app.db?vfs=walguard", uri=True)``).

    walguard stays registered for the life of the process (the extension answers
    ``SQLITE_OK_LOAD_PERMANENTLY``).

    Raises:
        ExtensionLoadingUnavailable: this Python's ``sqlite3`` cannot load extensions
            (the message says what to use instead).
        ExtensionNotFound: the bundled ``.so`` is missing.
        WalguardError: SQLite refused to load it.
    """
    boot = sqlite3.connect(":memory:")
    try:
        load(boot, default=default)
    finally:
        boot.close()


def _query_stats(conn: Any, runtime: str) -> Dict[str, int]:
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


def stats(conn: Optional[Connection] = None) -> Dict[str, int]:
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
        probe = sqlite3.connect(":memory:")
        try:
            return _query_stats(probe, "the sqlite3 module's SQLite")
        finally:
            probe.close()
    return _query_stats(conn, "this connection's SQLite")
