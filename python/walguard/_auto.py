"""``WALGUARD_AUTO=1``: walguard in every Python process of an environment, no code changed.

The wheel ships ``walguard_auto.pth`` into site-packages. Python's ``site`` module runs its
one line at start-up: it looks up ``WALGUARD_AUTO`` and, only when it is set to something
other than ``0``, imports this module (unset or ``0``, that lookup is all it costs). This module puts a finder at the front of
``sys.meta_path`` that waits for the first import of ``sqlite3`` and of ``apsw``: when
one of them has finished executing, walguard is installed into that runtime
(:func:`walguard.install`, or :func:`walguard.load` of a private ``apsw`` connection),
before the importing code gets the module back and so before its first connection. A
process that never imports either never loads walguard's library. Once both have fired
the finder removes itself.

A failure to install is reported once per runtime as a :class:`WalguardAutoWarning`
through :mod:`warnings` (route it to logging with ``logging.captureWarnings(True)``) and
never stops the program: the import returns the module as usual, unguarded.

Values: ``1``, ``true``, ``yes``, ``on`` enable it; ``0``, ``false``, ``no``, ``off`` and
the empty string do not; any other value is reported once and ignored.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Optional, Sequence

ENV = "WALGUARD_AUTO"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


class WalguardAutoWarning(RuntimeWarning):
    """WALGUARD_AUTO could not install walguard into a runtime (the program goes on)."""


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, WalguardAutoWarning, stacklevel=2)


def _install_sqlite3(module: "ModuleType") -> None:
    import walguard

    walguard.install()


def _install_apsw(module: "ModuleType") -> None:
    import walguard

    boot = module.Connection(":memory:")
    try:
        walguard.load(boot)
    finally:
        boot.close()


_ACTIONS = {"sqlite3": _install_sqlite3, "apsw": _install_apsw}


def _fire(name: str, module: "ModuleType") -> None:
    try:
        _ACTIONS[name](module)
    except Exception as e:  # reported, never raised into the importing program
        _warn(
            f"WALGUARD_AUTO: walguard was not installed into {name} in "
            f"{sys.executable} (pid {os.getpid()}): {type(e).__name__}: {e}. This "
            f"process's {name} connections are not guarded."
        )


class _Loader:
    """Wraps the real loader of `sqlite3`/`apsw` to install walguard after the module
    executed; the real loader is put back on the module and its spec."""

    def __init__(self, loader: "Any", finder: "_Finder", name: str) -> None:
        self._loader = loader
        self._finder = finder
        self._name = name

    def create_module(self, spec: "Any") -> "Any":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        self._loader.exec_module(module)
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if self._finder.take(self._name):
            _fire(self._name, module)

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._loader, name)


class _Finder:
    """The `sys.meta_path` entry: answers only for the names still pending."""

    def __init__(self, names: "Sequence[str]") -> None:
        self._pending = set(names)

    def take(self, name: str) -> bool:
        """Marks `name` done; True the first time. Removes the finder when none is left."""
        if name not in self._pending:
            return False
        self._pending.discard(name)
        if not self._pending:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        return True

    def find_spec(self, name: str, path: "Any" = None, target: "Any" = None) -> "Optional[Any]":
        if name not in self._pending:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self, name)
        return spec


def enable() -> None:
    """Installs the finder (once per process), or fires at once for a runtime that is
    imported already."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    finder = _Finder(_ACTIONS)
    sys.meta_path.insert(0, finder)
    for name in list(_ACTIONS):
        module = sys.modules.get(name)
        if module is not None and finder.take(name):
            _fire(name, module)


def _from_environment() -> None:
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ON:
        enable()
    elif value not in _OFF:
        _warn(f"{ENV}={os.environ.get(ENV)!r} is not understood (use 1 or 0): ignored")


_from_environment()
