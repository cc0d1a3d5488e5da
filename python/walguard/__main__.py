"""``python -m walguard`` and the ``walguard`` command of the wheel.

Both run the ``walguard`` binary shipped in this package (``doctor``, ``exec``; see
``walguard --help``) in place of this process. It finds its preload library and
``libwalguard.so`` next to itself, here.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(_HERE, "walguard")


def main() -> None:
    """Replaces this process with the bundled ``walguard`` binary and the same arguments."""
    if not os.access(BINARY, os.X_OK):
        sys.stderr.write(
            f"walguard: the walguard binary is missing or not executable: looked for "
            f"{BINARY}. It ships inside the platform wheel; reinstall it (pip install "
            f"--force-reinstall walguard), or build one from a checkout with "
            f"scripts/build-wheel.\n"
        )
        sys.exit(125)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(BINARY, [BINARY] + sys.argv[1:])
    except OSError as e:
        sys.stderr.write(f"walguard: cannot run {BINARY}: {e}\n")
        sys.exit(125)


if __name__ == "__main__":
    main()
