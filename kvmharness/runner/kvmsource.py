"""The pure half of ``kvmharness build-kvm``: versions, the out-of-tree edits, the cache key.

Building arch/x86/kvm and virt/kvm outside their kernel tree, against a distribution's
headers package, needs the sources of the target kernel's exact version and two edits
(docs/ARCHITECTURE.md, "Rebuilding KVM modules"):

* arch/x86/kvm/Makefile adds ``-I $(srctree)/arch/x86/kvm`` and includes
  ``$(srctree)/virt/kvm/Makefile.kvm``; out of tree, $(srctree) is the headers folder,
  which has neither: both must name the copied sources;
* arch/x86/kvm/trace.h sets ``TRACE_INCLUDE_PATH ../../arch/x86/kvm``, found relative to
  the kernel's include/trace/ folder in a full tree: it must name the copy as well.

Nothing here runs a program or writes a file, so all of it is unit-tested.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

# What a module build needs from a kernel source tree (the top Makefile: its version).
SOURCE_PARTS = ("Makefile", "arch/x86/kvm", "virt/kvm")
KVM_DIR = "arch/x86/kvm"
VENDORS = ("amd", "intel")
# Predefined by GCC in the GNU C modes the kernel uses: a path component spelled like one
# of these would be replaced by __stringify() in TRACE_INCLUDE_PATH.
_PREDEFINED_WORDS = {"linux", "unix", "i386"}


class SourceError(ValueError):
    """The sources given cannot build modules for the target (the message says what to do)."""


def makefile_version(text: str) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL plus EXTRAVERSION of a kernel's top Makefile."""
    fields: dict[str, str] = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
        m = re.search(rf"^{key}\s*=[ \t]*(\S*)[ \t]*$", text, re.MULTILINE)
        fields[key] = m.group(1) if m else ""
    if not fields["VERSION"] or not fields["PATCHLEVEL"]:
        raise SourceError("the top Makefile has no VERSION/PATCHLEVEL (not a kernel tree?)")
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields["SUBLEVEL"]:
        version += f".{fields['SUBLEVEL']}"
    return version + fields["EXTRAVERSION"]


def release_version(release: str) -> str:
    """The upstream version at the start of a kernel release: 6.12.117+deb12-amd64 ->
    6.12.117, 6.1.0-56-amd64 -> 6.1.0 (Debian's 6.1 ABI name; see check_version)."""
    m = re.match(r"(\d+\.\d+(?:\.\d+)?(?:-rc\d+)?)", release)
    if not m:
        raise SourceError(f"kernel release {release!r}: no version at its start")
    return m.group(1)


def series(version: str) -> str:
    """6.12.117 -> 6.12 (Debian names linux-source-SERIES after it)."""
    return ".".join(version.split(".")[:2])


def upstream_of_package(debian_version: str) -> str:
    """6.12.117-1~deb12u1 -> 6.12.117; 6.1.192-2 -> 6.1.192."""
    return debian_version.split(":")[-1].split("-")[0].split("+")[0]


def source_hint(target_version: str, debian_version: str | None) -> str:
    """How to get the sources of exactly this kernel."""
    if debian_version:
        return (f"apt-get download linux-source-{series(target_version)}={debian_version}, "
                "then dpkg-deb -x linux-source-*.deb DIR and give --source "
                f"DIR/usr/src/linux-source-{series(target_version)}.tar.xz")
    return (f"check out the v{target_version} tag of the kernel tree the kernel was built "
            "from (git checkout v" + target_version + ")")


def check_version(source: str, release: str, debian_version: str | None) -> str:
    """The target's upstream version; raises SourceError when the sources are another one.

    Debian's ABI-named releases (6.1.0-56-amd64) hide the point release in the release
    string: the package version (6.1.192-2) says it, so it is compared when known.
    """
    target = upstream_of_package(debian_version) if debian_version else release_version(release)
    if source != target:
        raise SourceError(f"the sources are version {source} but kernel {release} is "
                          f"{target}: modules built from them would not match it. Get the "
                          f"matching sources: {source_hint(target, debian_version)}")
    return target


def _check_path_words(path: Path) -> None:
    words = set(re.split(r"[^A-Za-z0-9_]+", str(path)))
    bad = sorted(words & _PREDEFINED_WORDS)
    if bad:
        raise SourceError(f"build folder {path}: its path holds {', '.join(bad)}, which the "
                          "C preprocessor replaces inside TRACE_INCLUDE_PATH; use a cache "
                          "folder whose path avoids those words (KVMHARNESS_CACHE)")


def edit_kvm_makefile(text: str, root: Path) -> str:
    """arch/x86/kvm/Makefile with its two $(srctree) references pointing into ROOT (the
    folder holding the copied arch/ and virt/)."""
    include_flag = "-I $(srctree)/arch/x86/kvm"
    include_line = "include $(srctree)/virt/kvm/Makefile.kvm"
    missing = [t for t in (include_flag, include_line) if t not in text]
    if missing:
        raise SourceError(f"{KVM_DIR}/Makefile: expected {' and '.join(map(repr, missing))} "
                          "(the out-of-tree edit knows this kernel's layout only)")
    text = text.replace(include_flag, f"-I {root / KVM_DIR}")
    return text.replace(include_line, f"include {root / 'virt/kvm/Makefile.kvm'}")


def edit_trace_h(text: str, root: Path) -> str:
    """arch/x86/kvm/trace.h with TRACE_INCLUDE_PATH naming the copied folder."""
    _check_path_words(root)
    pattern = re.compile(r"^(#define\s+TRACE_INCLUDE_PATH\s+)\S+\s*$", re.MULTILINE)
    if not pattern.search(text):
        raise SourceError(f"{KVM_DIR}/trace.h: no '#define TRACE_INCLUDE_PATH' to point at "
                          "the copied sources")
    return pattern.sub(lambda m: m.group(1) + str(root / KVM_DIR), text, count=1)


def out_of_tree_edits(files: Mapping[str, bytes], root: Path) -> dict[str, bytes]:
    """The files (relative path -> bytes) that change for a build in ROOT."""
    edits: dict[str, bytes] = {}
    for rel, edit in ((f"{KVM_DIR}/Makefile", edit_kvm_makefile),
                      (f"{KVM_DIR}/trace.h", edit_trace_h)):
        if rel not in files:
            raise SourceError(f"the sources have no {rel}")
        edits[rel] = edit(files[rel].decode("utf-8", "surrogateescape"), root).encode(
            "utf-8", "surrogateescape")
    return edits


def content_key(files: Mapping[str, bytes], facts: Iterable[str]) -> str:
    """One hash of the sources as built (patches applied, before the path edits) and the
    facts that change the output (target release, vendors, compiler): equal keys, equal
    modules."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    for fact in facts:
        h.update(f"fact\0{fact}\0".encode())
    return h.hexdigest()


def module_names(vendors: Iterable[str]) -> list[str]:
    """kvm plus the vendor modules asked for, as kbuild names the files (kvm-amd)."""
    names = ["kvm"]
    for vendor in vendors:
        if vendor not in VENDORS:
            raise SourceError(f"vendor {vendor!r}: choose from {', '.join(VENDORS)}")
        names.append(f"kvm-{vendor}")
    return names


def make_variables(vendors: Iterable[str]) -> list[str]:
    """CONFIG_KVM_<VENDOR>=n for each vendor module not asked for (halves the build)."""
    chosen = set(vendors)
    return [f"CONFIG_KVM_{v.upper()}=n" for v in VENDORS if v not in chosen]


def symbol_mismatches(expected: Mapping[str, int],
                      exported: Mapping[str, tuple[int, str]],
                      rebuilt: Iterable[str]) -> list[str]:
    """Imported symbols whose CRC differs from the target's Module.symvers, leaving out
    the ones exported by a module rebuilt with it (those change together)."""
    skip = {m.replace("-", "_") for m in rebuilt}
    out = []
    for symbol, crc in sorted(expected.items()):
        known = exported.get(symbol)
        if known is None or known[1].split("/")[-1].replace("-", "_") in skip:
            continue
        if known[0] != crc:
            out.append(f"{symbol} (module 0x{crc:08x}, {known[1]} 0x{known[0]:08x})")
    return out


def changed_exports(built: Mapping[str, tuple[int, str]],
                    target: Mapping[str, tuple[int, str]], module: str) -> list[str]:
    """Symbols MODULE exports whose CRC differs from the target's (or that are new or gone):
    a stock module importing them would refuse to load beside the rebuilt one."""
    def of(table: Mapping[str, tuple[int, str]]) -> dict[str, int]:
        return {s: crc for s, (crc, mod) in table.items()
                if mod.split("/")[-1].replace("-", "_") == module.replace("-", "_")}

    mine, theirs = of(built), of(target)
    return sorted(s for s in mine.keys() | theirs.keys() if mine.get(s) != theirs.get(s))
