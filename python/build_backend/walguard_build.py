"""The in-tree PEP 517 build backend of the walguard Python package (standard library only).

It compiles three artifacts with cargo (or takes prebuilt ones): the loadable extension
``libwalguard.so``, the preload library ``libwalguard_preload.so`` (``walguard exec``) and
the ``walguard`` binary (``doctor``, ``exec``); checks them, strips them (``strip``, from
binutils: the release build's line tables would make the extension ten times larger) and
writes a platform wheel with :mod:`zipfile`:

- the version and licence are the walguard crate's, read from the repository's
  ``Cargo.toml`` (the Python metadata never repeats them); the version is also written
  into ``walguard/__init__.py`` (``__version__``), so importing the package needs no
  ``importlib.metadata``;
- the platform tag is derived from the files themselves: their ELF machine gives the
  architecture, the highest ``GLIBC_x.y`` symbol version any of them requires (what
  ``objdump -T`` lists) gives ``manylinux_x_y``;
- the build refuses an extension that defines or imports SQLite's own functions (a second
  SQLite in the process is the split walguard exists to prevent) or lacks the two entry
  points, a preload library that defines any ``sqlite3_*`` symbol but the three
  ``sqlite3_open*`` it interposes or imports one, a binary that touches SQLite, and any
  file that needs a shared library outside the manylinux allow-list;
- ``walguard_auto.pth`` goes to site-packages (``WALGUARD_AUTO=1``, see
  ``walguard/_auto.py``), and ``entry_points.txt`` makes pip install the ``walguard``
  command (``walguard.__main__:main``, which runs the bundled binary).

Nothing is fetched: ``requires = []``. As a script it is the backend of
``scripts/build-wheel``::

    python3 python/build_backend/walguard_build.py [--so PATH] [--preload PATH]
        [--cli PATH] [--target TRIPLE] [--out DIR]

Through a PEP 517 frontend the same options are config settings, e.g.
``pip wheel --no-deps -w target/wheels -C so=PATH -C preload=PATH -C cli=PATH ./python``.

Needs Python >= 3.11 to build (``tomllib``); the wheel itself works on Python >= 3.8.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PYTHON_DIR.parent
PACKAGE = "walguard"
LIBRARY = "libwalguard.so"
PRELOAD = "libwalguard_preload.so"
BINARY = "walguard"
ENTRY_POINTS = ("sqlite3_walguard_init", "sqlite3_walguard_nodefault_init")
# The auto-extension variants (they answer SQLITE_OK): exported too, not required (a
# library of an earlier build lacks them).
AUTO_ENTRY_POINTS = ("sqlite3_walguard_auto_init", "sqlite3_walguard_nodefault_auto_init")
# The only SQLite symbols the preload library may define: the functions it interposes.
INTERPOSED = ("sqlite3_open", "sqlite3_open_v2", "sqlite3_open16")
# The .pth hook (one line, run by site at every start-up of the environment's Pythons):
# one environment lookup, and only when WALGUARD_AUTO is set (and not 0) an import of
# the hook.
PTH_NAME = "walguard_auto.pth"
PTH_LINE = (
    'import os; os.environ.get("WALGUARD_AUTO", "0") not in ("0", "") '
    'and __import__("walguard._auto")\n'
)
# The line of walguard/__init__.py that the build gives the crate's version.
VERSION_LINE = '__version__: str = "0+unknown"'
CARGO_ARGS = [
    "rustc",
    "--release",
    "-p",
    "walguard",
    "--lib",
    "--no-default-features",
    "--features",
    "loadable_extension",
    "--crate-type",
    "cdylib",
]
PRELOAD_CARGO_ARGS = ["build", "--release", "-p", "walguard-preload", "--lib"]
CLI_CARGO_ARGS = ["build", "--release", "-p", "walguard-cli", "--bin", "walguard"]
# The libraries a manylinux wheel may link against without bundling them (PEP 600 defers
# to the manylinux policies; these are the ones a Rust cdylib can need).
ALLOWED_LIBRARIES = (
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
)
# The [project] keys this backend writes into METADATA; anything else is refused rather
# than silently dropped.
PROJECT_KEYS = {
    "name",
    "dynamic",
    "description",
    "readme",
    "requires-python",
    "keywords",
    "classifiers",
}
DYNAMIC = {"version", "license"}


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"walguard-build: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Metadata


def _tomllib() -> Any:
    try:
        import tomllib
    except ImportError:
        raise BuildError(
            f"building the walguard wheel needs Python >= 3.11 (for tomllib); "
            f"{sys.executable} is {sys.version.split()[0]}. Run scripts/build-wheel, "
            f"which uses /usr/bin/python3 (Debian 12: 3.11), or set PYTHON=..."
        ) from None
    return tomllib


def read_toml(path: Path) -> Dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc: Dict[str, Any] = _tomllib().load(f)
            return doc
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e}") from e
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise BuildError(f"{path} is not valid TOML: {e}") from e


def crate_metadata() -> Tuple[str, str]:
    """(version, licence) of the walguard crate, from the repository's Cargo.toml."""
    path = REPO_ROOT / "Cargo.toml"
    cargo = read_toml(path)
    package = cargo.get("package", {})
    if package.get("name") != "walguard":
        raise BuildError(
            f"{path} is not the walguard crate's manifest (package.name = "
            f"{package.get('name')!r}); the python/ folder must sit in the walguard "
            f"repository root"
        )
    workspace = cargo.get("workspace", {}).get("package", {})

    def field_of(name: str) -> str:
        value = package.get(name)
        if isinstance(value, dict) and value.get("workspace") is True:
            value = workspace.get(name)
        if not isinstance(value, str) or not value:
            raise BuildError(f"{path}: no package.{name} (nor workspace.package.{name})")
        return value

    return python_version(field_of("version"), path), field_of("license")


def python_version(cargo_version: str, path: Path) -> str:
    """The PEP 440 spelling of a Cargo (semver) version: `1.2.3` stays, `1.2.3-rc.1` is
    `1.2.3rc1`; build metadata and other pre-release labels are refused."""
    m = re.fullmatch(r"(\d+\.\d+\.\d+)(?:-(alpha|beta|rc)\.?(\d+))?", cargo_version)
    if not m:
        raise BuildError(
            f"{path}: version {cargo_version!r} has no PEP 440 equivalent this backend "
            f"knows (use X.Y.Z or X.Y.Z-alpha.N / -beta.N / -rc.N)"
        )
    release, label, number = m.groups()
    if label is None:
        return release
    short = {"alpha": "a", "beta": "b", "rc": "rc"}[label]
    return f"{release}{short}{number}"


@dataclass
class Project:
    name: str
    version: str
    license: str
    summary: str
    requires_python: str
    keywords: List[str]
    classifiers: List[str]
    readme: str


def project_metadata() -> Project:
    path = PYTHON_DIR / "pyproject.toml"
    project = read_toml(path).get("project")
    if not isinstance(project, dict):
        raise BuildError(f"{path} has no [project] table")
    unknown = sorted(set(project) - PROJECT_KEYS)
    if unknown:
        raise BuildError(
            f"{path}: [project] keys {unknown} are not written by walguard_build.py; "
            f"add them to the backend (PROJECT_KEYS and metadata_text) or remove them"
        )
    if set(project.get("dynamic", [])) != DYNAMIC:
        raise BuildError(
            f"{path}: [project] dynamic must be {sorted(DYNAMIC)}: they come from " f"Cargo.toml"
        )
    if project.get("name") != PACKAGE:
        raise BuildError(f"{path}: [project] name must be {PACKAGE!r}")
    readme_path = PYTHON_DIR / project.get("readme", "README.md")
    try:
        readme = readme_path.read_text(encoding="utf-8")
    except OSError as e:
        raise BuildError(f"cannot read the long description {readme_path}: {e}") from e
    version, licence = crate_metadata()
    return Project(
        name=PACKAGE,
        version=version,
        license=licence,
        summary=project.get("description", ""),
        requires_python=project.get("requires-python", ""),
        keywords=list(project.get("keywords", [])),
        classifiers=list(project.get("classifiers", [])),
        readme=readme,
    )


def metadata_text(p: Project) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p.name}",
        f"Version: {p.version}",
        f"Summary: {p.summary}",
        f"License: {p.license}",
    ]
    if p.keywords:
        lines.append(f"Keywords: {','.join(p.keywords)}")
    lines += [f"Classifier: {c}" for c in p.classifiers]
    if p.requires_python:
        lines.append(f"Requires-Python: {p.requires_python}")
    lines.append("Description-Content-Type: text/markdown; charset=UTF-8")
    return "\n".join(lines) + "\n\n" + p.readme


def wheel_text(tag: str) -> str:
    return (
        "Wheel-Version: 1.0\n"
        "Generator: walguard_build (in-tree)\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n"
    )


# ---------------------------------------------------------------------------------------
# Building the extension


def cargo_build(args: List[str], target: Optional[str], crate: str, suffix: str) -> Path:
    """Runs `cargo ARGS` and returns the artifact of target `crate` whose file name ends
    with `suffix` (the `.so`, or the binary's name)."""
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [cargo, *args, "--message-format=json-render-diagnostics"]
    if target:
        cmd += ["--target", target]
    shown = " ".join(cmd)
    log(f"compiling: {shown}")
    try:
        # Diagnostics and progress go to our stderr; stdout carries JSON messages.
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BuildError(
            f"cannot run `{shown}`: {e}. Install Rust (https://rustup.rs) or pass "
            f"prebuilt files with --so, --preload and --cli"
        ) from e
    if proc.returncode != 0:
        raise BuildError(f"`{shown}` failed with status {proc.returncode} (see above)")
    found: List[Path] = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        if msg.get("target", {}).get("name") != crate:
            continue
        found += [Path(f) for f in msg.get("filenames", []) if Path(f).name.endswith(suffix)]
        if msg.get("executable"):
            found.append(Path(msg["executable"]))
    found = [f for f in found if f.name.endswith(suffix)]
    if not found or not found[-1].is_file():
        raise BuildError(f"`{shown}` succeeded but reported no {suffix}")
    return found[-1]


# ---------------------------------------------------------------------------------------
# Reading the ELF file (dynamic section, dynamic symbols, version needs)

SHT_DYNAMIC = 6
SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1
STT_FUNC = 2
EF_ARM_ABI_FLOAT_HARD = 0x400
# e_machine -> (manylinux architecture, ELF class it must have)
MACHINES = {
    62: ("x86_64", 64),
    3: ("i686", 32),
    183: ("aarch64", 64),
    40: ("armv7l", 32),
    21: ("ppc64", 64),
    22: ("s390x", 64),
    243: ("riscv64", 64),
}


@dataclass
class ElfInfo:
    arch: str
    needed: List[str] = field(default_factory=list)
    # symbol name -> is a function
    defined: Dict[str, bool] = field(default_factory=dict)
    undefined: List[str] = field(default_factory=list)
    # library -> version names it requires (GLIBC_2.34, GCC_3.0, ...)
    version_needs: Dict[str, List[str]] = field(default_factory=dict)

    def glibc(self) -> Tuple[int, int]:
        """The highest GLIBC_x.y version required from any library."""
        best = (0, 0)
        for lib, names in self.version_needs.items():
            for name in names:
                if name == "GLIBC_PRIVATE":
                    raise BuildError(
                        f"the library uses GLIBC_PRIVATE symbols of {lib}: no manylinux "
                        f"tag can describe it"
                    )
                m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", name)
                if m:
                    best = max(best, (int(m[1]), int(m[2])))
        if best == (0, 0):
            raise BuildError("the library requires no GLIBC symbol version: not a glibc build")
        return best


def read_elf(path: Path) -> ElfInfo:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e}") from e

    def bad(why: str) -> BuildError:
        return BuildError(f"{path} is not a usable ELF shared library: {why}")

    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise bad("no ELF header")
    elf_class = {1: 32, 2: 64}.get(data[4])
    end = {1: "<", 2: ">"}.get(data[5])
    if elf_class is None or end is None:
        raise bad("unknown ELF class or byte order")
    wide = elf_class == 64
    try:
        if wide:
            _, machine, _, _, _, shoff, flags, _, _, _, shentsize, shnum, _ = struct.unpack_from(
                end + "HHIQQQIHHHHHH", data, 16
            )
        else:
            _, machine, _, _, _, shoff, flags, _, _, _, shentsize, shnum, _ = struct.unpack_from(
                end + "HHIIIIIHHHHHH", data, 16
            )
        if machine not in MACHINES:
            raise bad(f"e_machine {machine} is not an architecture manylinux has a tag for")
        arch, want_class = MACHINES[machine]
        if want_class != elf_class:
            raise bad(f"{arch} with ELF class {elf_class}")
        if arch == "ppc64" and end == "<":
            arch = "ppc64le"
        if arch == "armv7l" and not flags & EF_ARM_ABI_FLOAT_HARD:
            raise bad("32-bit ARM without the hard-float ABI (manylinux armv7l is hard-float)")
        if shoff == 0 or shnum == 0:
            raise bad("no section headers")
        sh_fmt = end + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
        sections = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]

        def strtab(index: int) -> bytes:
            s = sections[index]
            return data[s[4] : s[4] + s[5]]

        def cstr(table: bytes, offset: int) -> str:
            stop = table.find(b"\0", offset)
            return table[offset : stop if stop >= 0 else len(table)].decode("utf-8", "replace")

        info = ElfInfo(arch=arch)
        for _, sh_type, _, _, off, size, link, sh_info, _, entsize in sections:
            if sh_type == SHT_DYNAMIC:
                names = strtab(link)
                ent = 16 if wide else 8
                for i in range(size // ent):
                    tag, val = struct.unpack_from(
                        end + ("qQ" if wide else "iI"), data, off + i * ent
                    )
                    if tag == DT_NEEDED:
                        info.needed.append(cstr(names, val))
            elif sh_type == SHT_DYNSYM:
                names = strtab(link)
                ent = entsize or (24 if wide else 16)
                for i in range(1, size // ent):
                    if wide:
                        st_name, st_info, _, shndx, _, _ = struct.unpack_from(
                            end + "IBBHQQ", data, off + i * ent
                        )
                    else:
                        st_name, _, _, st_info, _, shndx = struct.unpack_from(
                            end + "IIIBBH", data, off + i * ent
                        )
                    name = cstr(names, st_name)
                    if not name:
                        continue
                    if shndx == 0:
                        info.undefined.append(name)
                    else:
                        info.defined[name] = (st_info & 0xF) == STT_FUNC
            elif sh_type == SHT_GNU_VERNEED:
                names = strtab(link)
                pos = off
                for _ in range(sh_info):
                    _, cnt, file_off, aux, nxt = struct.unpack_from(end + "HHIII", data, pos)
                    lib = cstr(names, file_off)
                    apos = pos + aux
                    for _ in range(cnt):
                        _, _, _, name_off, anext = struct.unpack_from(end + "IHHII", data, apos)
                        info.version_needs.setdefault(lib, []).append(cstr(names, name_off))
                        if anext == 0:
                            break
                        apos += anext
                    if nxt == 0:
                        break
                    pos += nxt
    except (struct.error, IndexError) as e:
        raise bad(f"truncated or corrupt ({e})") from e
    return info


def is_sqlite_symbol(name: str) -> bool:
    """SQLite's public API (sqlite3_open_v2) and internal functions (sqlite3BtreeOpen)."""
    return name.startswith("sqlite3_") or (
        name.startswith("sqlite3") and len(name) > 7 and name[7].isupper()
    )


def check_needed(path: Path, info: ElfInfo) -> None:
    for lib in info.needed:
        if lib not in ALLOWED_LIBRARIES and not lib.startswith("ld-linux"):
            raise BuildError(
                f"{path} needs {lib}, which a manylinux wheel may not assume on the "
                f"target machine (allowed: {', '.join(ALLOWED_LIBRARIES)}, ld-linux*)"
            )


def check_preload(path: Path) -> ElfInfo:
    """The preload library interposes SQLite's three open functions and nothing else of
    SQLite's: it carries no SQLite and finds the program's at run time (dlsym)."""
    info = read_elf(path)
    missing = [n for n in INTERPOSED if not info.defined.get(n)]
    if missing:
        raise BuildError(
            f"{path} does not export {missing}: not walguard's preload library (build it "
            f"with `cargo {' '.join(PRELOAD_CARGO_ARGS)}`)"
        )
    stray = sorted(n for n in info.defined if is_sqlite_symbol(n) and n not in INTERPOSED)
    if stray:
        raise BuildError(
            f"{path} defines SQLite symbols besides {', '.join(INTERPOSED)}: "
            f"{', '.join(stray[:5])}; it must carry no SQLite of its own"
        )
    imported = sorted(n for n in info.undefined if is_sqlite_symbol(n))
    if imported:
        raise BuildError(
            f"{path} imports SQLite symbols ({', '.join(imported[:5])}): it must find the "
            f"program's SQLite at run time, never bind to one at load"
        )
    check_needed(path, info)
    return info


def check_binary(path: Path) -> ElfInfo:
    """The `walguard` binary reads files and runs programs; it touches no SQLite."""
    info = read_elf(path)
    touched = sorted(n for n in list(info.defined) + info.undefined if is_sqlite_symbol(n))
    if touched:
        raise BuildError(f"{path} defines or imports SQLite symbols ({', '.join(touched[:5])})")
    check_needed(path, info)
    return info


def check_library(path: Path) -> Tuple[ElfInfo, str]:
    """Checks the `.so` and returns what was read and its platform tag."""
    info = read_elf(path)
    missing = [e for e in ENTRY_POINTS if not info.defined.get(e)]
    if missing:
        raise BuildError(
            f"{path} does not export the entry point(s) {missing}: not a walguard "
            f"loadable extension (build it with `cargo {' '.join(CARGO_ARGS)}`)"
        )
    stray = sorted(
        n
        for n in info.defined
        if is_sqlite_symbol(n) and n not in ENTRY_POINTS and n not in AUTO_ENTRY_POINTS
    )
    if stray:
        raise BuildError(
            f"{path} defines SQLite functions ({', '.join(stray[:5])}, ...): it carries "
            f"its own SQLite. Build with --no-default-features --features "
            f"loadable_extension, never with `bundled`"
        )
    imported = sorted(n for n in info.undefined if is_sqlite_symbol(n))
    if imported:
        raise BuildError(
            f"{path} imports SQLite symbols ({', '.join(imported[:5])}): it must reach "
            f"SQLite only through the host's sqlite3_api_routines"
        )
    check_needed(path, info)
    major, minor = info.glibc()
    return info, f"manylinux_{major}_{minor}_{info.arch}"


# ---------------------------------------------------------------------------------------
# Writing the wheel


def _zip_time() -> Tuple[int, int, int, int, int, int]:
    """SOURCE_DATE_EPOCH if set (reproducible builds), else 1980-01-01."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        t = time.gmtime(max(int(epoch), 315532800))
        return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
    return (1980, 1, 1, 0, 0, 0)


def package_files(version: str) -> List[Tuple[str, bytes]]:
    """(archive path, contents) of the Python sources and py.typed, with the version
    written into ``__init__.py``."""
    src = PYTHON_DIR / PACKAGE
    out = []
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.suffix in (".py", ".pyi") or p.name == "py.typed"):
            data = p.read_bytes()
            if p.name == "__init__.py":
                data = _with_version(p, data, version)
            out.append((f"{PACKAGE}/{p.name}", data))
    names = {n for n, _ in out}
    for required in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/py.typed"):
        if required not in names:
            raise BuildError(f"{src} has no {required.split('/')[1]}")
    return out


def _with_version(path: Path, data: bytes, version: str) -> bytes:
    text = data.decode("utf-8")
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line == VERSION_LINE]
    if len(hits) != 1:
        raise BuildError(
            f"{path} must hold the line {VERSION_LINE!r} exactly once (the build writes "
            f"the crate's version there); found it {len(hits)} times"
        )
    lines[hits[0]] = f'__version__: str = "{version}"'
    return "\n".join(lines).encode("utf-8")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def _strip_tool(target: Optional[str]) -> str:
    """$STRIP, else the target's `ARCH-linux-gnu-strip` when cross-building, else strip."""
    tool = os.environ.get("STRIP")
    if tool:
        return tool
    if target:
        parts = target.split("-")
        prefixed = f"{parts[0]}-linux-{'-'.join(parts[3:]) or 'gnu'}-strip"
        for d in os.environ.get("PATH", "").split(os.pathsep):
            if d and os.access(os.path.join(d, prefixed), os.X_OK):
                return prefixed
    return "strip"


def stripped(path: Path, executable: bool, target: Optional[str]) -> bytes:
    """The contents of `path` without its symbol table and debug information (the dynamic
    symbols stay: they are what the loader and the checks use)."""
    tool = _strip_tool(target)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"walguard-strip-{os.getpid()}-{path.name}"
    mode = "--strip-all" if executable else "--strip-unneeded"
    cmd = [tool, mode, "-o", str(out), str(path)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as e:
        raise BuildError(
            f"cannot run `{' '.join(cmd)}`: {e}. Install binutils (apt-get install -y "
            f"binutils), or name a strip for the target in $STRIP"
        ) from e
    try:
        if proc.returncode != 0:
            raise BuildError(
                f"`{' '.join(cmd)}` failed: {proc.stderr.decode('utf-8', 'replace').strip()}"
            )
        return out.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read {out}: {e}") from e
    finally:
        try:
            out.unlink()
        except OSError:
            pass


@dataclass
class Artifacts:
    """The three compiled files, as built (not yet stripped)."""

    extension: Path
    preload: Path
    binary: Path


def _checked(name: str, data: bytes, check: Any) -> ElfInfo:
    """Runs `check` on `data` written to a temporary file (the checks read files)."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"walguard-check-{os.getpid()}-{name}"
    try:
        tmp.write_bytes(data)
        result = check(tmp)
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    return result[0] if isinstance(result, tuple) else result


def write_wheel(out_dir: Path, files: Artifacts, target: Optional[str] = None) -> Path:
    """Strips and checks the artifacts, packs the wheel into `out_dir`, returns its path."""
    shipped = {
        LIBRARY: stripped(files.extension, False, target),
        PRELOAD: stripped(files.preload, False, target),
        BINARY: stripped(files.binary, True, target),
    }
    infos = [
        _checked(LIBRARY, shipped[LIBRARY], check_library),
        _checked(PRELOAD, shipped[PRELOAD], check_preload),
        _checked(BINARY, shipped[BINARY], check_binary),
    ]
    archs = {i.arch for i in infos}
    if len(archs) != 1:
        raise BuildError(f"the three files are built for different architectures: {sorted(archs)}")
    major, minor = max(i.glibc() for i in infos)
    platform = f"manylinux_{major}_{minor}_{infos[0].arch}"
    project = project_metadata()
    tag = f"py3-none-{platform}"
    dist_info = f"{project.name}-{project.version}.dist-info"
    entries: List[Tuple[str, bytes, int]] = [
        (name, data, 0o644) for name, data in package_files(project.version)
    ]
    for name, data in shipped.items():
        entries.append((f"{PACKAGE}/{name}", data, 0o755))
    entries.append((PTH_NAME, PTH_LINE.encode("utf-8"), 0o644))
    entries.append((f"{dist_info}/METADATA", metadata_text(project).encode("utf-8"), 0o644))
    entries.append((f"{dist_info}/WHEEL", wheel_text(tag).encode("utf-8"), 0o644))
    entries.append((f"{dist_info}/entry_points.txt", ENTRY_POINTS_TXT.encode("utf-8"), 0o644))
    record = io.StringIO()
    for name, data, _ in entries:
        record.write(f"{name},{_record_hash(data)},{len(data)}\n")
    record.write(f"{dist_info}/RECORD,,\n")
    entries.append((f"{dist_info}/RECORD", record.getvalue().encode("utf-8"), 0o644))

    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{project.name}-{project.version}-{tag}.whl"
    tmp = wheel.with_name(wheel.name + ".part")
    stamp = _zip_time()
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name, date_time=stamp)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = (0o100000 | mode) << 16
            zf.writestr(zi, data)
    os.replace(tmp, wheel)
    return wheel


# pip writes a `walguard` launcher that runs walguard.__main__:main (the bundled binary).
ENTRY_POINTS_TXT = "[console_scripts]\nwalguard = walguard.__main__:main\n"


def _given(option: str, value: Optional[str], target: Optional[str]) -> Optional[Path]:
    if not value:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise BuildError(f"--{option} {value}: no such file")
    if target:
        raise BuildError(f"--{option} and --target exclude each other: --{option} takes a built file")
    return path


def build(
    out_dir: Path,
    so: Optional[str],
    target: Optional[str],
    preload: Optional[str] = None,
    cli: Optional[str] = None,
) -> Path:
    files = Artifacts(
        extension=_given("so", so, target)
        or cargo_build(CARGO_ARGS, target, "walguard", LIBRARY),
        preload=_given("preload", preload, target)
        or cargo_build(PRELOAD_CARGO_ARGS, target, "walguard_preload", PRELOAD),
        binary=_given("cli", cli, target) or cargo_build(CLI_CARGO_ARGS, target, "walguard", BINARY),
    )
    wheel = write_wheel(out_dir, files, target)
    log(f"packed {files.extension}, {files.preload} and {files.binary} into {wheel}")
    return wheel


# ---------------------------------------------------------------------------------------
# PEP 517 hooks


SETTINGS = ("so", "preload", "cli", "target")


def _settings(config_settings: Optional[Mapping[str, Any]]) -> Dict[str, Optional[str]]:
    cs = dict(config_settings or {})

    def one(key: str) -> Optional[str]:
        v = cs.pop(key, None)
        if v is None:
            v = cs.pop("--" + key, None)
        if isinstance(v, list):
            v = v[-1] if v else None
        if v is not None and not isinstance(v, str):
            raise BuildError(f"config setting {key}={v!r} is not a string")
        return v

    values = {key: one(key) for key in SETTINGS}
    if cs:
        raise BuildError(f"unknown config settings {sorted(cs)} (known: {', '.join(SETTINGS)})")
    return values


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Mapping[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """PEP 517: compiles what is not given as a config setting (so=, preload=, cli=
    PATH) and packs the wheel."""
    v = _settings(config_settings)
    return build(Path(wheel_directory), v["so"], v["target"], v["preload"], v["cli"]).name


def get_requires_for_build_wheel(config_settings: Optional[Mapping[str, Any]] = None) -> List[str]:
    """PEP 517: nothing; the backend uses only the standard library (and cargo)."""
    return []


def build_sdist(sdist_directory: str, config_settings: Optional[Mapping[str, Any]] = None) -> str:
    """PEP 517: refused. The wheel is built from the whole walguard repository."""
    raise BuildError(
        "walguard's Python package has no source distribution: it is built from the "
        "walguard repository (the Rust crate is the source). Build a wheel with "
        "scripts/build-wheel, or `pip wheel ./python` from a checkout"
    )


# ---------------------------------------------------------------------------------------
# Command line (scripts/build-wheel)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/build-wheel",
        description="Compile walguard's loadable extension, preload library and binary "
        "with cargo and pack the Python wheel (platform tag derived from their glibc needs).",
    )
    parser.add_argument("--so", help="pack this prebuilt libwalguard.so instead of compiling")
    parser.add_argument(
        "--preload", help="pack this prebuilt libwalguard_preload.so instead of compiling"
    )
    parser.add_argument("--cli", help="pack this prebuilt walguard binary instead of compiling")
    parser.add_argument(
        "--target", help="cargo target triple to compile for (a *-linux-gnu target)"
    )
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / "target" / "wheels"),
        help="directory for the wheel (default: target/wheels)",
    )
    args = parser.parse_args(argv)
    try:
        wheel = build(Path(args.out), args.so, args.target, args.preload, args.cli)
    except BuildError as e:
        print(f"walguard-build: error: {e}", file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
