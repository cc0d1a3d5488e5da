"""Registering walguard in the ``sqlite3`` module's SQLite without ``enable_load_extension``.

Pythons configured without ``--enable-loadable-sqlite-extensions`` (pyenv's default, many
source builds) leave out the binding's ``enable_load_extension``, not SQLite's ability to
take an extension: the SQLite library the ``_sqlite3`` module uses still has
``sqlite3_auto_extension``. An auto extension's entry point receives the library's
``sqlite3_api_routines`` exactly as a loaded extension does, so walguard's own
``sqlite3_walguard_init`` can be armed with it, run by one private ``:memory:`` connection
opened through the standard library, and disarmed with ``sqlite3_cancel_auto_extension``.

The library is found from the process itself, never loaded a second time: ``dlopen`` of
the already loaded ``_sqlite3`` module with ``RTLD_NOLOAD`` returns its handle, and
``dlsym`` on it searches the module and its dependencies, which is where the module's own
SQLite functions come from (the shared ``libsqlite3.so.0``, or SQLite linked into the
module with its symbols visible). A module that links SQLite statically with its symbols
hidden exposes nothing: that is the one case refused, with what to do instead.

Imported only on that path. It calls C through ``_ctypes`` directly (the three calls it
makes need a function-pointer type and two simple types): the ``ctypes`` package around
it costs a millisecond and a half at import, ``_ctypes`` alone a few tenths.
"""

import os
import sys

import _ctypes

from . import ExtensionLoadingUnavailable, WalguardError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Optional


class _Int(_ctypes._SimpleCData):  # type: ignore[misc,name-defined]
    """C ``int`` (ctypes.c_int)."""

    _type_ = "i"


class _Pointer(_ctypes._SimpleCData):  # type: ignore[misc,name-defined]
    """C ``void *`` (ctypes.c_void_p)."""

    _type_ = "P"


class _IntOfPointer(_ctypes.CFuncPtr):  # type: ignore[misc,name-defined]
    """``int (*)(void *)``: sqlite3_auto_extension, sqlite3_cancel_auto_extension."""

    _flags_ = _ctypes.FUNCFLAG_CDECL
    _restype_ = _Int
    _argtypes_ = (_Pointer,)


class _IntOfVoid(_ctypes.CFuncPtr):  # type: ignore[misc,name-defined]
    """``int (*)(void)``: sqlite3_libversion_number."""

    _flags_ = _ctypes.FUNCFLAG_CDECL
    _restype_ = _Int
    _argtypes_ = ()


def _symbol(handle: int, name: str) -> "Optional[int]":
    """``dlsym``: the address of `name` in the lookup scope of `handle`, or None."""
    try:
        address: int = _ctypes.dlsym(handle, name)
    except OSError:
        return None
    return address


def _hidden_api_message(where: str, missing: str) -> str:
    return (
        f"walguard cannot be registered in the sqlite3 module of {sys.executable}: the "
        f"module has no enable_load_extension, and its SQLite ({where}) does not export "
        f"{missing} (a SQLite linked statically with its API hidden). Use a Python whose "
        f"sqlite3 module can load extensions or links the shared libsqlite3 (Debian and "
        f"Ubuntu's /usr/bin/python3, pyenv builds, the python.org installers, conda), or "
        f'build this one with PYTHON_CONFIGURE_OPTS="--enable-loadable-sqlite-extensions"; '
        f"or use apsw (pip install apsw), which has its own SQLite: "
        f"walguard.load(apsw.Connection(':memory:')) before opening the database with "
        f"apsw.Connection. Programs that link a shared libsqlite3 can be guarded from "
        f"outside with `walguard exec -- PROGRAM`."
    )


def _sqlite_library() -> tuple:
    """(dlopen handle whose lookups reach the module's SQLite, description)."""
    module = sys.modules.get("_sqlite3")
    path = getattr(module, "__file__", None)
    if path:
        mode = getattr(os, "RTLD_NOLOAD", 4) | getattr(os, "RTLD_LAZY", 1)
        try:
            return _ctypes.dlopen(path, mode), f"the one {path} uses"
        except OSError as e:
            raise WalguardError(
                f"cannot reach the sqlite3 module's SQLite through {path} ({e}); "
                f"import sqlite3 before walguard.install()"
            ) from e
    # A _sqlite3 built into the interpreter: its SQLite is in the program's global scope.
    return _ctypes.dlopen(None, getattr(os, "RTLD_LAZY", 1)), f"the one linked into {sys.executable}"


def _version_number(info: tuple) -> int:
    major, minor, patch = (tuple(info) + (0, 0, 0))[:3]
    return int(major * 1_000_000 + minor * 1_000 + patch)


def register(sqlite3_mod: "ModuleType", path: str, entry: str) -> None:
    """Registers walguard (entry point `entry` of the library at `path`) in the SQLite
    library the `sqlite3` module uses. The caller holds the package's lock."""
    handle, where = _sqlite_library()
    addresses = {}
    for name in (
        "sqlite3_auto_extension",
        "sqlite3_cancel_auto_extension",
        "sqlite3_libversion_number",
    ):
        address = _symbol(handle, name)
        if address is None:
            raise ExtensionLoadingUnavailable(_hidden_api_message(where, name))
        addresses[name] = address
    arm = _IntOfPointer(addresses["sqlite3_auto_extension"])
    disarm = _IntOfPointer(addresses["sqlite3_cancel_auto_extension"])
    found = _IntOfVoid(addresses["sqlite3_libversion_number"])()
    expected = _version_number(sqlite3_mod.sqlite_version_info)
    if found != expected:
        raise WalguardError(
            f"the SQLite found for the sqlite3 module of {sys.executable} ({where}) is "
            f"version {found}, but the module reports {sqlite3_mod.sqlite_version}: it is "
            f"not the module's own library, so walguard is not registered through it"
        )
    try:
        # RTLD_LOCAL: walguard's symbols stay out of the process's scope. SQLite's own
        # load_extension of the same file would return this same copy.
        walguard_handle = _ctypes.dlopen(path, getattr(os, "RTLD_NOW", 2))
    except OSError as e:
        raise WalguardError(f"cannot load {path}: {e}") from e
    # The auto-extension variant answers SQLITE_OK (the plain entry point's
    # SQLITE_OK_LOAD_PERMANENTLY is an error to an auto extension); older libraries
    # have only the plain one.
    init = _symbol(walguard_handle, entry.replace("_init", "_auto_init")) or _symbol(
        walguard_handle, entry
    )
    if init is None:
        raise WalguardError(f"{path} has no entry point {entry}: not walguard's extension")
    rc = arm(init)
    if rc != 0:
        raise WalguardError(
            f"sqlite3_auto_extension of the sqlite3 module's SQLite ({where}) failed "
            f"with code {rc}"
        )
    try:
        # The private connection: SQLite runs walguard's entry point inside this open.
        probe = sqlite3_mod.connect(":memory:")
    except sqlite3_mod.Error as e:
        raise WalguardError(
            f"registering {path} (entry point {entry}) in the sqlite3 module's SQLite "
            f"{sqlite3_mod.sqlite_version} failed: {e}"
        ) from e
    finally:
        disarm(init)
    try:
        probe.execute("SELECT walguard_stats()").fetchall()
    except sqlite3_mod.Error as e:
        raise WalguardError(
            f"walguard was registered in {where}, but the sqlite3 module's connections do "
            f"not see it ({e})"
        ) from e
    finally:
        probe.close()
