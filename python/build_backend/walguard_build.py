"""The in-tree PEP 517 build backend of the walguard Python package (standard library only).

It compiles the loadable extension with cargo (or takes a prebuilt ``libwalguard.so``),
checks it, and writes a platform wheel with :mod:`zipfile`:

- the version and licence are the walguard crate's, read from the repository's
  ``Cargo.toml`` (the Python metadata never repeats them);
- the platform tag is derived from the ``.so`` itself: its ELF machine gives the
  architecture, the highest ``GLIBC_x.y`` symbol version it requires (what ``objdump -T``
  lists) gives ``manylinux_x_y``;
- the build refuses a ``.so`` that defines or imports SQLite's own functions (a second
  SQLite in the process is the split walguard exists to prevent), that lacks the two
  entry points, or that needs a shared library outside the manylinux allow-list.

Nothing is fetched: ``requires = []``. As a script it is the backend of
``scripts/build-wheel``::

    python3 python/build_backend/walguard_build.py [--so PATH] [--target TRIPLE] [--out DIR]

Through a PEP 517 frontend the same options are config settings, e.g.
``pip wheel --no-deps -w target/wheels -C so=PATH ./python``.

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
ENTRY_POINTS = ("sqlite3_walguard_init", "sqlite3_walguard_nodefault_init")
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


def cargo_build(target: Optional[str]) -> Path:
    """Runs the cargo build of the loadable extension and returns the `.so` it made."""
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [cargo, *CARGO_ARGS, "--message-format=json-render-diagnostics"]
    if target:
        cmd += ["--target", target]
    shown = " ".join(cmd)
    log(f"compiling the extension: {shown}")
    try:
        # Diagnostics and progress go to our stderr; stdout carries JSON messages.
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BuildError(
            f"cannot run `{shown}`: {e}. Install Rust (https://rustup.rs) or pass a "
            f"prebuilt library with --so PATH"
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
        if msg.get("target", {}).get("name") != "walguard":
            continue
        found += [Path(f) for f in msg.get("filenames", []) if f.endswith(LIBRARY)]
    if not found or not found[-1].is_file():
        raise BuildError(f"`{shown}` succeeded but reported no {LIBRARY}")
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


def check_library(path: Path) -> Tuple[ElfInfo, str]:
    """Checks the `.so` and returns what was read and its platform tag."""
    info = read_elf(path)
    missing = [e for e in ENTRY_POINTS if not info.defined.get(e)]
    if missing:
        raise BuildError(
            f"{path} does not export the entry point(s) {missing}: not a walguard "
            f"loadable extension (build it with `cargo {' '.join(CARGO_ARGS)}`)"
        )
    stray = sorted(n for n in info.defined if is_sqlite_symbol(n) and n not in ENTRY_POINTS)
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
    for lib in info.needed:
        if lib not in ALLOWED_LIBRARIES and not lib.startswith("ld-linux"):
            raise BuildError(
                f"{path} needs {lib}, which a manylinux wheel may not assume on the "
                f"target machine (allowed: {', '.join(ALLOWED_LIBRARIES)}, ld-linux*)"
            )
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


def package_files() -> List[Tuple[str, bytes]]:
    """(archive path, contents) of the Python sources and py.typed."""
    src = PYTHON_DIR / PACKAGE
    out = []
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.suffix in (".py", ".pyi") or p.name == "py.typed"):
            out.append((f"{PACKAGE}/{p.name}", p.read_bytes()))
    names = {n for n, _ in out}
    for required in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/py.typed"):
        if required not in names:
            raise BuildError(f"{src} has no {required.split('/')[1]}")
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def write_wheel(out_dir: Path, so: Path) -> Path:
    """Checks `so`, packs the wheel into `out_dir` and returns its path."""
    _, platform = check_library(so)
    project = project_metadata()
    tag = f"py3-none-{platform}"
    dist_info = f"{project.name}-{project.version}.dist-info"
    try:
        so_bytes = so.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read {so}: {e}") from e
    entries: List[Tuple[str, bytes, int]] = [(name, data, 0o644) for name, data in package_files()]
    entries.append((f"{PACKAGE}/{LIBRARY}", so_bytes, 0o755))
    entries.append((f"{dist_info}/METADATA", metadata_text(project).encode("utf-8"), 0o644))
    entries.append((f"{dist_info}/WHEEL", wheel_text(tag).encode("utf-8"), 0o644))
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


def build(out_dir: Path, so: Optional[str], target: Optional[str]) -> Path:
    if so:
        lib = Path(so).resolve()
        if not lib.is_file():
            raise BuildError(f"--so {so}: no such file")
        if target:
            raise BuildError("--so and --target exclude each other: --so takes a built library")
    else:
        lib = cargo_build(target)
    wheel = write_wheel(out_dir, lib)
    log(f"packed {lib} into {wheel}")
    return wheel


# ---------------------------------------------------------------------------------------
# PEP 517 hooks


def _settings(config_settings: Optional[Mapping[str, Any]]) -> Tuple[Optional[str], Optional[str]]:
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

    so, target = one("so"), one("target")
    if cs:
        raise BuildError(f"unknown config settings {sorted(cs)} (known: so, target)")
    return so, target


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Mapping[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """PEP 517: compiles the extension (unless config setting so=PATH) and packs the wheel."""
    so, target = _settings(config_settings)
    return build(Path(wheel_directory), so, target).name


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
        description="Compile walguard's loadable extension with cargo and pack the "
        "Python wheel (platform tag derived from the library's glibc needs).",
    )
    parser.add_argument("--so", help="pack this prebuilt libwalguard.so instead of compiling")
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
        wheel = build(Path(args.out), args.so, args.target)
    except BuildError as e:
        print(f"walguard-build: error: {e}", file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
