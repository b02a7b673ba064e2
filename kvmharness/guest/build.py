"""Building the freestanding guests (guests/Makefile) on demand, with a cache.

``guest_path("hello")`` returns the path of ``hello.elf``, running ``make`` first when the
ELF is missing or older than any guest source.  Where the sources are found:

* ``$KVMHARNESS_GUESTS_DIR`` if set;
* ``kvmharness/guests`` inside the package: a regular wheel ships the sources there (see
  pyproject.toml); in a source checkout it is a symlink to ``guests/``;
* ``guests/`` next to the package (a checkout without the symlink).

Where they are built (the first one holding an up-to-date ELF is used; otherwise the first
one that can be written is built into):

* ``$KVMHARNESS_GUESTS_BUILD_DIR`` if set (e.g. a --rwdir when the tree is read-only);
* ``guests/build/`` in a source checkout, like a plain ``make -C guests``;
* ``$XDG_CACHE_HOME/kvmharness/guests/<hash of the sources>/`` (default ``~/.cache``):
  site-packages may be read-only or shared, and the hash keeps two installed versions
  from sharing stale objects.

Two processes building at once serialise on an ``flock`` of ``<build dir>/.lock``, and the
Makefile links to a temporary name and renames, so a reader never sees a partial ELF.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from kvmharness.guest.errors import GuestBuildError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SOURCE_SUFFIXES = {".c", ".h", ".S", ".ld"}
_TOOLS = {"make": "make", "gcc": "gcc", "as": "binutils", "ld": "binutils"}
_BUILD_TIMEOUT_S = 300


def guests_source_dir() -> Path:
    """The folder holding guests/Makefile (see the module docstring for the search order)."""
    override = os.environ.get("KVMHARNESS_GUESTS_DIR")
    candidates = [Path(override)] if override else [_PACKAGE_DIR / "guests",
                                                     _PACKAGE_DIR.parent / "guests"]
    for candidate in candidates:
        if (candidate / "Makefile").is_file():
            return candidate.resolve()
    raise GuestBuildError("guest sources not found (looked in "
                          + ", ".join(str(c) for c in candidates)
                          + "); set KVMHARNESS_GUESTS_DIR to the guests/ folder")


def _source_files(source_dir: Path) -> list[Path]:
    # Everything make reads: the .c/.h/.S/.ld files and the Makefile, not build outputs.
    files = [source_dir / "Makefile"]
    for path in sorted(source_dir.rglob("*")):
        rel = path.relative_to(source_dir)
        if rel.parts[0] == "build" or not path.is_file():
            continue
        if path.suffix in _SOURCE_SUFFIXES:
            files.append(path)
    return files


def _is_checkout(source_dir: Path) -> bool:
    # A checkout has the project's pyproject.toml beside guests/; an installed wheel does not.
    return (source_dir.parent / "pyproject.toml").is_file() and not _inside_site_packages(
        source_dir)


def _inside_site_packages(path: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


def _cache_dir(source_dir: Path) -> Path:
    digest = hashlib.sha256()
    for path in _source_files(source_dir):
        digest.update(str(path.relative_to(source_dir)).encode() + b"\0")
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kvmharness" / "guests" / digest.hexdigest()[:16]


def build_dir_candidates(source_dir: Path) -> list[Path]:
    """Where guest_path looks for, and builds, ELFs, in order (see the module docstring)."""
    override = os.environ.get("KVMHARNESS_GUESTS_BUILD_DIR")
    if override:
        return [Path(override)]
    candidates = [source_dir / "build"] if _is_checkout(source_dir) else []
    return candidates + [_cache_dir(source_dir)]


def default_build_dir(source_dir: Path) -> Path:
    """The folder guest_path builds into: the first candidate that is or can be writable."""
    candidates = build_dir_candidates(source_dir)
    for candidate in candidates:
        existing = next(p for p in [candidate, *candidate.parents] if p.exists())
        if os.access(existing, os.W_OK):
            return candidate
    return candidates[-1]


def available_guests(source_dir: Path | None = None) -> list[str]:
    """Names of the guests the Makefile builds (one per top-level ``*.c``)."""
    source_dir = source_dir or guests_source_dir()
    return sorted(p.stem for p in source_dir.glob("*.c"))


def _stamp(elf: Path) -> Path:
    return elf.with_name(elf.name + ".checked")


def _is_stale(elf: Path, sources: list[Path]) -> bool:
    # Compared against a stamp touched after every successful make rather than the ELF:
    # editing hammer.c makes every guest "maybe stale", and make (which knows the real
    # dependencies) leaves hello.elf alone; without the stamp each later call would run
    # make again.  No stamp (built by a plain make): fall back to the ELF's own mtime.
    try:
        built = elf.stat().st_mtime_ns
    except FileNotFoundError:
        return True
    try:
        checked = max(built, _stamp(elf).stat().st_mtime_ns)
    except FileNotFoundError:
        checked = built
    return any(src.stat().st_mtime_ns > checked for src in sources)


def _mark_checked(elf: Path, sources: list[Path]) -> None:
    # At least as new as the newest source, so a source with a future mtime (clock skew,
    # unpacked archive) does not make every later call run make again.
    newest = max(src.stat().st_mtime_ns for src in sources)
    stamp = _stamp(elf)
    stamp.touch()
    when = max(newest, stamp.stat().st_mtime_ns)
    os.utime(stamp, ns=(when, when))


def _check_toolchain() -> None:
    missing = sorted({tool for tool in _TOOLS if shutil.which(tool) is None})
    if missing:
        packages = " ".join(sorted(set(_TOOLS.values())))
        raise GuestBuildError(
            f"cannot build the guests: {', '.join(missing)} not found on PATH; "
            f"install them (Debian/Ubuntu: apt-get install {packages})")


def _run_make(source_dir: Path, build_dir: Path, target: Path) -> None:
    _check_toolchain()
    cmd = ["make", "-C", str(source_dir), f"BUILD={build_dir}", str(target)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestBuildError(f"{' '.join(cmd)} failed: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(output[-40:])
        raise GuestBuildError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")


def _build_locked(source_dir: Path, build_dir: Path, elf: Path, sources: list[Path]) -> None:
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        lock = open(build_dir / ".lock", "a")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise GuestBuildError(f"cannot create the guest build folder {build_dir}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have built it while we waited for the lock.
        if _is_stale(elf, sources):
            _run_make(source_dir, build_dir, elf)
            _mark_checked(elf, sources)
    if not elf.is_file():
        raise GuestBuildError(f"make succeeded but {elf} does not exist")


def guest_path(name: str, *, source_dir: Path | None = None,
               build_dir: Path | None = None) -> Path:
    """Path of ``<name>.elf``, built first if missing or older than any guest source.

    ``source_dir`` defaults to ``guests_source_dir()``; ``build_dir`` to the candidates of
    ``build_dir_candidates()``.  Raises ``GuestBuildError`` for an unknown guest, a missing
    toolchain (naming the Debian packages) or a failed build (with make's output).
    """
    source_dir = (source_dir or guests_source_dir()).resolve()
    if not (source_dir / f"{name}.c").is_file():
        raise GuestBuildError(f"unknown guest {name!r}; available: "
                              f"{', '.join(available_guests(source_dir)) or 'none'}")
    sources = _source_files(source_dir)
    candidates = [build_dir] if build_dir else build_dir_candidates(source_dir)
    candidates = [c.resolve() for c in candidates]
    for candidate in candidates:
        elf = candidate / f"{name}.elf"
        if not _is_stale(elf, sources):
            return elf

    target = build_dir.resolve() if build_dir else default_build_dir(source_dir).resolve()
    elf = target / f"{name}.elf"
    _build_locked(source_dir, target, elf, sources)
    return elf
