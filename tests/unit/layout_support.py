"""Check the ctypes mirror in ``kvmharness.uapi`` against real ``<linux/kvm.h>`` headers.

Everything mirrored is enumerated by introspection (no hand-written list):

* every ``ctypes.Structure``/``ctypes.Union`` named ``kvm_*`` in ``kvmharness.uapi.x86`` and
  ``kvmharness.uapi.kvm``: sizeof, alignof, and for every field (recursing into nested structs,
  anonymous unions and arrays of structs) offsetof, sizeof and, for integer scalars, signedness.
  ctypes ``_anonymous_`` members are C anonymous members, so they add no path component:
  ``kvm_run._exit.mmio.phys_addr`` is C's ``kvm_run.mmio.phys_addr``.  Private helper structs
  (``_kvm_run_mmio`` ...) are checked through those kernel paths; one that no ``kvm_*`` struct
  reaches is itself reported as unchecked.
* the flexible-array buffers built by the ``make_kvm_*`` helpers (offsets of their entries and
  their total size, against ``offsetof(struct S, entries[n])``);
* every integer module constant (``KVM_*``, ``KVMIO``, ``SYNC_REGS_SIZE_BYTES``, ``_IOC_*`` of
  the encoder, ``kvm_ioeventfd_flag_nr_*`` enumerators, ...);
* every member of ``KvmCap``, ``KvmExitReason`` and ``KvmX86Quirk``;
* every ioctl number in ``all_ioctls()`` (and every ``IoctlNumber`` in ``uapi.ioctls``).

For each header set a C file is generated with one probe function per item (on its own line);
a first ``cc -fsyntax-only`` pass tells from the diagnostics which items this header does not
have (a struct, field or macro newer than it), a second pass compiles and runs a program that
prints ``index value`` for every item the header does have.  An item must be verified by at
least one header set; the system's headers are usually older than the mirror (Debian 12 ships
6.1), so the uapi headers of a newer kernel are built once with ``make headers_install`` from
Debian's ``linux-source-6.12`` tarball and cached.

Command line (for CI, to build the cache ahead of the test run)::

    python3 tests/unit/layout_support.py --prepare     # build/verify the cached headers
    python3 tests/unit/layout_support.py --report      # print the full comparison
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Extra header trees, ``dir1:dir2``; each dir holds ``linux/kvm.h`` (or ``include/linux/kvm.h``).
ENV_EXTRA_HEADERS = "KVMHARNESS_UAPI_HEADERS"
#: The kernel source tarball to build newer headers from (default: Debian's linux-source-6.12).
ENV_LINUX_SOURCE = "KVMHARNESS_LINUX_SOURCE"
#: Where the built headers are cached (default $XDG_CACHE_HOME/kvmharness or ~/.cache/kvmharness).
ENV_CACHE_DIR = "KVMHARNESS_CACHE_DIR"

#: Debian package that provides the newer source; the test names it when it is missing.
NEWER_SOURCE_PACKAGE = "linux-source-6.12"
DEFAULT_LINUX_SOURCE_GLOB = "/usr/src/linux-source-6.12.tar.xz"

#: Our field path -> other C spellings a header may use for it (tried, in order, only when
#: the kernel's name is absent).  Offsets and sizes must still match.
#: 6.12 wraps kvm_run.immediate_exit in HINT_UNSAFE_IN_KVM(), which is ``immediate_exit`` for
#: userspace but ``immediate_exit__unsafe`` inside the kernel; accept either spelling.
FIELD_ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("kvm_run", "immediate_exit"): ("immediate_exit__unsafe",),
}

#: Mirrored constants that are not uapi macros, and the C expression they are checked against.
NON_UAPI_CONSTANTS: dict[str, str] = {
    # Page size of the running system; the uapi header needs it (KVM_COALESCED_MMIO_MAX) but
    # does not define it.
    "PAGE_SIZE": "sysconf(_SC_PAGESIZE)",
}

#: Mirrored constants that only the kernel's internal headers define: checked against the
#: ``#define`` in the kernel source the newer headers are built from (the file is cached with
#: them).  They are not ABI; userspace should not need them.
KERNEL_INTERNAL_CONSTANTS: dict[str, str] = {
    "KVM_STATS_NAME_SIZE": "include/linux/kvm_types.h",  # uapi: kvm_stats_header.name_size
}

# Signed / unsigned ctypes integer type codes.
_SIGNED_CODES = set("bhilq")
_UNSIGNED_CODES = set("BHILQ")


# ------------------------------------------------------------------------------------------
# Items
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
    """One mirrored value and the C expression(s) that give the header's value for it."""

    kind: str  # sizeof, alignof, offsetof, fieldsize, signed, flexsize, constant, enum, ioctl
    name: str  # human-readable, unique
    ours: int
    exprs: tuple[str, ...]  # C expression, then aliases tried only if the first is absent
    source: str | None = None  # kernel source file, for KERNEL_INTERNAL_CONSTANTS

    def __post_init__(self) -> None:
        self.ours = int(self.ours)


def _uapi_modules() -> dict[str, ModuleType]:
    import kvmharness.uapi.ioctl as ioctl_mod
    import kvmharness.uapi.ioctls as ioctls_mod
    import kvmharness.uapi.kvm as kvm_mod
    import kvmharness.uapi.x86 as x86_mod

    return {"ioctl": ioctl_mod, "x86": x86_mod, "kvm": kvm_mod, "ioctls": ioctls_mod}


def _is_record(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union))


def _keyword(cls: type) -> str:
    return "union" if issubclass(cls, ctypes.Union) else "struct"


def _fields(cls: type) -> Iterator[tuple[str, type]]:
    for entry in cls._fields_:
        if len(entry) != 2:
            raise TypeError(f"{cls.__name__}.{entry[0]}: bit-fields are not supported by the "
                            "layout test; extend tests/unit/layout_support.py")
        yield entry[0], entry[1]


def _walk(cls: type, prefix: str, base: int, reached: set[type],
          ) -> Iterator[tuple[str, type, int, bool]]:
    """Yield (C path, ctypes type, absolute offset, alias-able) for every named member."""
    reached.add(cls)
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for fname, ftype in _fields(cls):
        offset = base + getattr(cls, fname).offset
        if fname in anonymous:  # C anonymous struct/union: its members belong to the parent
            yield from _walk(ftype, prefix, offset, reached)
            continue
        path = f"{prefix}.{fname}" if prefix else fname
        yield path, ftype, offset, True
        yield from _walk_type(ftype, path, offset, reached)


def _walk_type(ftype: type, path: str, offset: int, reached: set[type],
               ) -> Iterator[tuple[str, type, int, bool]]:
    if _is_record(ftype):
        yield from _walk(ftype, path, offset, reached)
    elif issubclass(ftype, ctypes.Array):
        elem = ftype._type_
        if (_is_record(elem) or issubclass(elem, ctypes.Array)) and ftype._length_:
            size = ctypes.sizeof(elem)
            for i in sorted({0, ftype._length_ - 1}):
                epath = f"{path}[{i}]"
                yield epath, elem, offset + i * size, False
                yield from _walk_type(elem, epath, offset + i * size, reached)


def _int_code(ftype: type) -> str | None:
    code = getattr(ftype, "_type_", None)
    if isinstance(code, str) and issubclass(ftype, ctypes._SimpleCData):
        return code
    return None


def _alias_paths(struct: str, path: str) -> tuple[str, ...]:
    """The C spellings of ``path``: the kernel's first, then FIELD_ALIASES substitutions."""
    out = [path]
    for (s, ours), alts in FIELD_ALIASES.items():
        if s != struct:
            continue
        for alt in alts:
            if path == ours or path.startswith((ours + ".", ours + "[")):
                out.append(alt + path[len(ours):])
    return tuple(out)


def _struct_items(cls: type, cname: str, reached: set[type], flex: bool = False,
                  ) -> Iterator[Item]:
    kw = _keyword(cls)
    ctype = f"{kw} {cname}"
    if not flex:
        yield Item("sizeof", f"sizeof({ctype})", ctypes.sizeof(cls), (f"sizeof({ctype})",))
        yield Item("alignof", f"_Alignof({ctype})", ctypes.alignment(cls),
                   (f"_Alignof({ctype})",))
    for path, ftype, offset, _ in _walk(cls, "", 0, reached):
        paths = _alias_paths(cname, path)
        yield Item("offsetof", f"offsetof({ctype}, {path})", offset,
                   tuple(f"__builtin_offsetof({ctype}, {p})" for p in paths))
        if flex and "[" not in path and issubclass(ftype, ctypes.Array) and path == \
                cls._fields_[-1][0]:
            continue  # the flexible array itself has no sizeof in C
        if issubclass(ftype, ctypes.Array) and ftype._length_ == 0:
            continue  # zero-length mirror of a flexible array: incomplete type in C
        yield Item("fieldsize", f"sizeof(({ctype} *)0)->{path}", ctypes.sizeof(ftype),
                   tuple(f"sizeof((({ctype} *)0)->{p})" for p in paths))
        code = _int_code(ftype)
        if code is not None and (code in _SIGNED_CODES or code in _UNSIGNED_CODES):
            yield Item("signed", f"signed(({ctype} *)0)->{path}", code in _SIGNED_CODES,
                       tuple(f"((__typeof__((({ctype} *)0)->{p}))-1 < 0)" for p in paths))


def _flex_items(mods: dict[str, ModuleType], reached: set[type]) -> Iterator[Item]:
    """Buffers from make_kvm_*(n): entry offsets and total size, as C's offsetof(S, arr[n])."""
    n = 3
    for modname in ("x86", "kvm"):
        mod = mods[modname]
        for fname, fn in sorted(vars(mod).items()):
            if not (fname.startswith("make_kvm_") and callable(fn)):
                continue
            buf = fn(n)
            cls = type(buf)
            cname = fname[len("make_"):]
            array_field, array_type = cls._fields_[-1]
            if not issubclass(array_type, ctypes.Array) or array_type._length_ != n:
                raise TypeError(f"{fname}({n}) does not end in a {n}-entry array")
            items = list(_struct_items(cls, cname, reached, flex=True))
            for item in items:
                item.name += f"  [{fname}({n})]"
            yield from items
            yield Item("flexsize", f"sizeof({fname}({n}))", ctypes.sizeof(cls),
                       (f"__builtin_offsetof(struct {cname}, {array_field}[{n}])",))


def _is_constant_name(name: str) -> bool:
    return bool(re.fullmatch(r"_?[A-Z][A-Z0-9_]*", name)) or name.startswith(
        "kvm_ioeventfd_flag_nr_")


def mirror_items() -> tuple[list[Item], list[str]]:
    """Every mirrored item, and a list of problems that make an item uncheckable."""
    from kvmharness.uapi.caps import KvmCap
    from kvmharness.uapi.ioctl import IoctlNumber
    from kvmharness.uapi.ioctls import all_ioctls
    from kvmharness.uapi.kvm import KvmExitReason
    from kvmharness.uapi.x86 import KvmX86Quirk

    mods = _uapi_modules()
    items: list[Item] = []
    problems: list[str] = []
    reached: set[type] = set()

    # Structs and unions.
    records: dict[type, str] = {}
    for modname in ("x86", "kvm"):
        for name, obj in vars(mods[modname]).items():
            if _is_record(obj) and obj.__module__ == mods[modname].__name__:
                records[obj] = name  # noqa: PERF403 - two nested loops
    for cls, name in sorted(records.items(), key=lambda kv: kv[1]):
        if name.startswith("kvm_"):
            items.extend(_struct_items(cls, name, reached))
    items.extend(_flex_items(mods, reached))
    for cls, name in sorted(records.items(), key=lambda kv: kv[1]):
        if cls not in reached:
            problems.append(f"{name}: private struct/union not reachable from any kvm_* struct "
                            "(no kernel path to check it by)")

    # Module constants.
    ioctls = all_ioctls()
    seen: dict[str, int] = {}
    for modname, mod in mods.items():
        for name, value in sorted(vars(mod).items()):
            if isinstance(value, IoctlNumber):
                if name not in ioctls or ioctls[name] != value or value.name != name:
                    problems.append(f"ioctls.{name}: IoctlNumber {value!r} is not registered "
                                    "under its own name in all_ioctls()")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if not _is_constant_name(name):
                continue
            if name in seen and seen[name] == int(value):
                continue
            label = name if name not in seen else f"{name} ({modname})"
            seen[name] = int(value)
            if name in KERNEL_INTERNAL_CONSTANTS:
                items.append(Item("kernel-constant", label, value, (),
                                  source=KERNEL_INTERNAL_CONSTANTS[name]))
                continue
            expr = NON_UAPI_CONSTANTS.get(name, name)
            items.append(Item("constant", label, value, (expr,)))

    for enum_cls in (KvmCap, KvmExitReason, KvmX86Quirk):
        for member in enum_cls:
            items.append(Item("enum", f"{enum_cls.__name__}.{member.name}", member.value,
                              (member.name,)))
        # Aliases (same value under two names) are invisible to iteration; check them too.
        for alias, member in enum_cls.__members__.items():
            if alias != member.name:
                items.append(Item("enum", f"{enum_cls.__name__}.{alias}", member.value,
                                  (alias,)))

    for name, number in sorted(ioctls.items()):
        if number.name != name:
            problems.append(f"all_ioctls()[{name!r}] is named {number.name!r}")
        items.append(Item("ioctl", name, int(number), (name,)))

    names = [i.name for i in items]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        problems.append(f"duplicate item names (generator bug): {sorted(dupes)}")
    return items, problems


# ------------------------------------------------------------------------------------------
# Header sets
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HeaderSet:
    label: str
    include_dirs: list[str]  # searched before the system's include dirs
    kernel_src: str | None = None  # kernel source files (KERNEL_INTERNAL_CONSTANTS), if any
    error: str | None = None  # why this set is unavailable

    @property
    def available(self) -> bool:
        return self.error is None


def cache_root() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "kvmharness"


def linux_source_tarball() -> Path | None:
    if os.environ.get(ENV_LINUX_SOURCE):
        return Path(os.environ[ENV_LINUX_SOURCE])
    found = sorted(glob.glob(DEFAULT_LINUX_SOURCE_GLOB))
    return Path(found[-1]) if found else None


def _tarball_topdir(tarball: Path) -> str:
    name = tarball.name
    for suffix in (".tar.xz", ".tar.gz", ".tar.bz2", ".tar.zst", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def prepare_newer_headers(tarball: Path | None = None, *, force: bool = False,
                          log=None) -> Path:
    """``make headers_install`` from a kernel source tarball into the cache (once); returns the
    include dir.  Raises RuntimeError (with the reason) when that is impossible."""
    tarball = tarball or linux_source_tarball()
    if tarball is None or not tarball.is_file():
        raise RuntimeError(
            f"no kernel source tarball ({tarball or DEFAULT_LINUX_SOURCE_GLOB} missing): "
            f"`apt-get install {NEWER_SOURCE_PACKAGE}` (Debian 12: bookworm-security), "
            f"set {ENV_LINUX_SOURCE}=/path/linux-x.y.tar.xz, or set "
            f"{ENV_EXTRA_HEADERS}=<dir with linux/kvm.h>")
    topdir = _tarball_topdir(tarball)
    st = tarball.stat()
    internal = sorted(set(KERNEL_INTERNAL_CONSTANTS.values()))
    stamp = f"{tarball.resolve()} {st.st_size} {st.st_mtime_ns} {' '.join(internal)}\n"
    root = cache_root() / "headers"
    dest = root / topdir.replace("linux-source-", "")
    include = dest / "include"

    def fresh() -> bool:
        try:
            return ((dest / ".stamp").read_text() == stamp
                    and (include / "linux" / "kvm.h").is_file())
        except OSError:
            return False

    if fresh() and not force:
        return include
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (xdist, parallel CI jobs)
        if fresh() and not force:
            return include
        for tool in ("tar", "make", "cc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"cannot build headers from {tarball}: `{tool}` not found")
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".build-{dest.name}-", dir=root))
        try:
            members = [
                "Makefile", "Kbuild", "Kconfig", "scripts/*", "include/uapi/*",
                "include/asm-generic/Kbuild", "arch/x86/Makefile*", "arch/x86/include/uapi/*",
                "arch/x86/include/asm/Kbuild", "arch/x86/entry/syscalls/*", "arch/x86/tools/*",
                "tools/include/*", "usr/*",
            ] + internal
            subprocess.run(
                ["tar", "-xaf", str(tarball), "-C", str(work), "--wildcards"]
                + [f"{topdir}/{m}" for m in members],
                check=True, capture_output=True, text=True)
            out = work / "out"
            subprocess.run(
                ["make", "-s", "-C", str(work / topdir), f"-j{os.cpu_count() or 1}", "ARCH=x86",
                 f"INSTALL_HDR_PATH={out}", "headers_install"],
                check=True, capture_output=True, text=True)
            if not (out / "include" / "linux" / "kvm.h").is_file():
                raise RuntimeError(f"headers_install from {tarball} produced no linux/kvm.h")
            for rel in internal:  # kernel-internal headers, for KERNEL_INTERNAL_CONSTANTS
                (out / "kernel-src" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / topdir / rel, out / "kernel-src" / rel)
            if dest.exists():
                shutil.rmtree(dest)
            (out / ".stamp").write_text(stamp)
            os.rename(out, dest)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"building headers from {tarball} failed: {e.cmd[:3]}...: "
                               f"{(e.stderr or '')[-2000:]}") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if log:
            log(f"built {include} from {tarball} in {time.monotonic() - t0:.1f}s")
    return include


def _header_dir(d: str) -> str | None:
    for cand in (Path(d), Path(d) / "include", Path(d) / "usr" / "include"):
        if (cand / "linux" / "kvm.h").is_file():
            return str(cand)
    return None


def header_sets(*, build: bool = True) -> list[HeaderSet]:
    """The system headers, the cached newer headers, and any KVMHARNESS_UAPI_HEADERS trees."""
    sets = [HeaderSet("system", [])]
    tarball = linux_source_tarball()
    label = f"{_tarball_topdir(tarball) if tarball else NEWER_SOURCE_PACKAGE} headers_install"
    try:
        if not build:
            raise RuntimeError("not built (build=False)")
        include = prepare_newer_headers(tarball)
        sets.append(HeaderSet(label, [str(include)], kernel_src=str(include.parent / "kernel-src")))
    except RuntimeError as e:
        sets.append(HeaderSet(label, [], error=str(e)))
    for d in filter(None, os.environ.get(ENV_EXTRA_HEADERS, "").split(":")):
        hd = _header_dir(d)
        sets.append(HeaderSet(f"{ENV_EXTRA_HEADERS}:{d}", [hd] if hd else [],
                              error=None if hd else f"no linux/kvm.h under {d}"))
    return sets


# ------------------------------------------------------------------------------------------
# Probing one header set
# ------------------------------------------------------------------------------------------
_PRELUDE = """\
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <linux/version.h>
#include <linux/kvm.h>
#ifndef PAGE_SIZE
#define PAGE_SIZE 4096 /* x86 base page; uapi's KVM_COALESCED_MMIO_MAX uses it undefined */
#endif
"""

_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:\d+:)? (?P<sev>error|fatal error): "
                   r"(?P<msg>.*)$", re.MULTILINE)


@dataclasses.dataclass
class SetResult:
    header_set: HeaderSet
    version: str = "?"
    values: dict[int, int] = dataclasses.field(default_factory=dict)  # item index -> value
    used_expr: dict[int, str] = dataclasses.field(default_factory=dict)
    absent: dict[int, str] = dataclasses.field(default_factory=dict)  # item index -> reason


def _cc() -> list[str]:
    cc = os.environ.get("CC", "cc").split()
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"no C compiler ({cc[0]!r}) to build the layout probe")
    return cc


def probe(items: list[Item], hs: HeaderSet, workdir: Path) -> SetResult:
    """Which items the header set has, and their values there."""
    result = SetResult(hs)
    cc = _cc()
    flags = ["-std=gnu11", "-ftrack-macro-expansion=0", "-fmax-errors=0", "-w"]
    flags += [f"-I{d}" for d in hs.include_dirs]
    tag = re.sub(r"[^A-Za-z0-9]+", "_", hs.label)[:40]

    # Pass 1: one function per (item, spelling) on its own line; errors name the lines.
    candidates: list[tuple[int, str]] = [(i, e) for i, it in enumerate(items) for e in it.exprs]
    _kernel_internal(items, hs, result)
    src = workdir / f"probe_{tag}.c"
    lines = _PRELUDE.splitlines()
    first = len(lines) + 1
    for n, (_, expr) in enumerate(candidates):
        lines.append(f"unsigned long long p{n}(void) {{ return (unsigned long long)({expr}); }}")
    src.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(cc + flags + ["-fsyntax-only", str(src)], capture_output=True,
                          text=True, check=False)
    failed: dict[int, str] = {}
    outside: list[str] = []
    for m in _DIAG.finditer(proc.stderr):
        if Path(m["file"]).name != src.name or not first <= int(m["line"]) < first + len(
                candidates):
            outside.append(m[0])
        else:
            failed.setdefault(int(m["line"]) - first, m["msg"])
    if outside:
        raise RuntimeError(f"layout probe for {hs.label}: compiler error outside the probes "
                           "(broken header set?): " + " | ".join(outside[:3]))
    if proc.returncode != 0 and not failed:
        raise RuntimeError(f"layout probe for {hs.label} failed:\n{proc.stderr[-4000:]}")

    chosen: dict[int, str] = {}
    for n, (i, expr) in enumerate(candidates):
        if n in failed:
            result.absent.setdefault(i, failed[n])
        elif i not in chosen:
            chosen[i] = expr
    for i in chosen:
        result.absent.pop(i, None)
    result.used_expr.update(chosen)

    # Pass 2: print every value the header has.
    body = [_PRELUDE, "int main(void) {",
            ('  printf("version %d.%d.%d\\n", LINUX_VERSION_CODE >> 16, '
             "(LINUX_VERSION_CODE >> 8) & 0xff, LINUX_VERSION_CODE & 0xff);")]
    for i, expr in sorted(chosen.items()):
        body.append(f'  printf("{i} %llu\\n", (unsigned long long)({expr}));')
    body += ["  return 0;", "}", ""]
    main_src = workdir / f"values_{tag}.c"
    exe = workdir / f"values_{tag}"
    main_src.write_text("\n".join(body))
    proc = subprocess.run(cc + flags + ["-o", str(exe), str(main_src)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"layout program for {hs.label} does not build:\n"
                           f"{proc.stderr[-4000:]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        key, value = line.split()
        if key == "version":
            result.version = value
        else:
            result.values[int(key)] = int(value)
    missing = set(chosen) - set(result.values)
    if missing:
        raise RuntimeError(f"layout program for {hs.label} printed no value for "
                           f"{sorted(items[i].name for i in missing)}")
    return result


def _kernel_internal(items: list[Item], hs: HeaderSet, result: SetResult) -> None:
    """KERNEL_INTERNAL_CONSTANTS: read the plain integer ``#define`` from the kernel source."""
    for i, item in enumerate(items):
        if item.source is None:
            continue
        name = item.name.split()[0]
        path = Path(hs.kernel_src) / item.source if hs.kernel_src else None
        if path is None or not path.is_file():
            result.absent[i] = f"kernel-internal ({item.source}); this set has no kernel source"
            continue
        m = re.search(rf"^#\s*define\s+{re.escape(name)}\s+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*"
                      r"(?:/[*/].*)?$", path.read_text(errors="replace"), re.MULTILINE)
        if m is None:
            result.absent[i] = f"no plain integer #define {name} in {item.source}"
            continue
        result.values[i] = int(m[1], 0)
        result.used_expr[i] = f"#define in {item.source}"


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    items: list[Item]
    problems: list[str]
    results: list[SetResult]
    unavailable: list[HeaderSet]
    seconds: float

    def mismatches(self) -> list[str]:
        out = []
        for r in self.results:
            for i, value in sorted(r.values.items()):
                item = self.items[i]
                if value != item.ours % (1 << 64):
                    via = r.used_expr[i]
                    note = "" if via == item.exprs[0] else f" (as {via})"
                    out.append(f"{item.name}: ours {item.ours:#x} ({item.ours}), header "
                               f"{value:#x} ({value}) [{self._set_name(r)}]{note}")
        return out

    def unchecked(self) -> list[Item]:
        checked = {i for r in self.results for i in r.values}
        return [it for i, it in enumerate(self.items) if i not in checked]

    def unchecked_details(self) -> list[str]:
        out = []
        for it in self.unchecked():
            idx = self.items.index(it)
            why = "; ".join(f"{self._set_name(r)}: {r.absent.get(idx, '?')}"
                            for r in self.results)
            out.append(f"{it.name} (ours {it.ours}) -- {why or 'no header set available'}")
        return out

    def _set_name(self, r: SetResult) -> str:
        return f"{r.header_set.label} {r.version}"

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for it in self.items:
            kinds[it.kind] = kinds.get(it.kind, 0) + 1
        lines = [f"{len(self.items)} mirrored items ("
                 + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")"]
        only: dict[str, int] = {}
        for r in self.results:
            others = set().union(*(o.values for o in self.results if o is not r))
            only[self._set_name(r)] = len(set(r.values) - others)
            inc = r.header_set.include_dirs[0] if r.header_set.include_dirs else "default"
            lines.append(f"  {self._set_name(r):45} -I {inc}: checked {len(r.values)}, "
                         f"absent {len(r.absent)}, only here {only[self._set_name(r)]}")
        for hs in self.unavailable:
            lines.append(f"  {hs.label:45} UNAVAILABLE: {hs.error}")
        lines.append(f"  unchecked by every header set: {len(self.unchecked())}; "
                     f"mismatches: {len(self.mismatches())}; {self.seconds:.1f}s")
        return "\n".join(lines)


def run_layout_check(*, build: bool = True) -> Report:
    t0 = time.monotonic()
    items, problems = mirror_items()
    sets = header_sets(build=build)
    results: list[SetResult] = []
    with tempfile.TemporaryDirectory(prefix="kvmharness-layout-") as tmp:
        for hs in sets:
            if hs.available:
                try:
                    results.append(probe(items, hs, Path(tmp)))
                except RuntimeError as e:  # e.g. no linux-libc-dev: that set is unavailable
                    hs.error = str(e)
    return Report(items, problems, results, [hs for hs in sets if not hs.available],
                  time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true",
                    help="build the newer uapi headers into the cache (idempotent)")
    ap.add_argument("--force", action="store_true", help="rebuild the cache even if fresh")
    ap.add_argument("--report", action="store_true", help="run the full comparison")
    args = ap.parse_args(argv)
    if not (args.prepare or args.report):
        args.report = True
    if args.prepare:
        try:
            inc = prepare_newer_headers(force=args.force, log=print)
        except RuntimeError as e:
            print(f"layout_support: {e}", file=sys.stderr)
            return 1
        print(f"newer uapi headers: {inc}")
    if args.report:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        report = run_layout_check()
        print(report.summary())
        for p in report.problems:
            print("PROBLEM", p)
        for m in report.mismatches():
            print("MISMATCH", m)
        for u in report.unchecked_details():
            print("UNCHECKED", u)
        return 1 if report.problems or report.mismatches() or report.unchecked() else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
