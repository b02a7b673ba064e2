"""Loading guest ELF images (guests/ABI.md, "Image") with pyelftools.

``GuestImage.load(path)`` accepts only what the harness can run: ELF64, x86-64, ET_EXEC,
static (no PT_INTERP / PT_DYNAMIC), identity-mapped PT_LOAD segments that do not overlap,
an entry point inside an executable segment.  ``validate()`` then checks the segments
against the machine's RAM and reserved ranges.  Every problem, including whatever
pyelftools raises on a corrupt file, becomes a ``GuestImageError`` that names the file and
the problem.
"""

from __future__ import annotations

import difflib
import io
import itertools
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from elftools.elf.elffile import ELFFile

from kvmharness.guest.errors import GuestImageError

# ABI.md: the image is linked at 0x400000 and must end below 16 MiB.
GUEST_IMAGE_BASE = 0x400000
GUEST_IMAGE_LIMIT = 0x1000000

PF_X, PF_W, PF_R = 1, 2, 4

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_EM_X86_64 = 62
_ET_NAMES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
_ZERO_CHUNK = 1 << 20


class Segment(NamedTuple):
    """A PT_LOAD segment: ``data`` (p_filesz bytes) goes at ``gpa``; the rest of ``memsz``
    is zero (.bss).  ``flags`` is p_flags (PF_R | PF_W | PF_X)."""

    gpa: int
    data: bytes
    memsz: int
    flags: int

    @property
    def end(self) -> int:
        """First GPA after the segment."""
        return self.gpa + self.memsz

    def describe(self, number: int) -> str:
        """``segment N [start-end)``; N counts PT_LOAD headers from 0 (``image.segments[N]``)."""
        return f"segment {number} [{self.gpa:#x}-{self.end:#x})"


class Symbol(NamedTuple):
    """A symbol's address (GPA, identity mapped) and size in bytes."""

    address: int
    size: int


class GpaRange(NamedTuple):
    """``[start, end)`` in guest physical memory, with a name for messages."""

    start: int
    end: int
    name: str = ""

    def __str__(self) -> str:
        return f"[{self.start:#x}-{self.end:#x})"


RangeLike = GpaRange | tuple[int, int] | tuple[int, int, str]


def _as_range(r: RangeLike, default_name: str) -> GpaRange:
    g = GpaRange(*r)
    return g if g.name else g._replace(name=default_name)


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def _merge(ranges: Iterable[GpaRange]) -> list[GpaRange]:
    """Coalesce touching/overlapping RAM ranges so a segment may span two memslots."""
    merged: list[GpaRange] = []
    for r in sorted(ranges):
        if merged and r.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = last._replace(end=max(last.end, r.end))
        else:
            merged.append(r)
    return merged


class GuestImage:
    """A validated guest ELF: entry point, loadable segments and symbols."""

    def __init__(self, path: Path, entry: int, segments: list[Segment],
                 symbols: dict[str, Symbol]) -> None:
        self.path = path
        self.name = path.name
        self.entry = entry
        self.segments = segments
        self.symbols = symbols

    def __repr__(self) -> str:
        return (f"GuestImage({self.name!r}, entry={self.entry:#x}, "
                f"segments={[str(s) for s in self.segments]})")

    # ---- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> GuestImage:
        """Read and check ``path``.  Raises ``GuestImageError`` naming the problem."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise GuestImageError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
        return cls._parse(path, raw)

    @classmethod
    def _parse(cls, path: Path, raw: bytes) -> GuestImage:
        name = path.name

        def fail(problem: str) -> GuestImageError:
            return GuestImageError(f"{name}: {problem}")

        cls._check_header(raw, fail)
        try:
            elf = ELFFile(io.BytesIO(raw))
            entry, segments = cls._read_segments(elf, raw, fail)
            symbols = cls._read_symbols(elf, fail)
        except GuestImageError:
            raise
        except Exception as exc:
            # pyelftools raises ELFError, construct errors, struct.error, ValueError, ... on
            # corrupt input; none of those may escape as anything but "bad image".
            raise fail(f"malformed ELF ({type(exc).__name__}: {exc})") from exc
        return cls(path, entry, segments, symbols)

    @staticmethod
    def _check_header(raw: bytes, fail: Callable[[str], GuestImageError]) -> None:
        # Checked by hand first: the messages are clearer than pyelftools' and truncation is
        # caught before pyelftools reads past the end.
        if raw[:4] != b"\x7fELF":
            raise fail(f"not an ELF file (starts with {raw[:4]!r})")
        if len(raw) < 5 or raw[4] != 2:
            cls_byte = raw[4] if len(raw) > 4 else None
            what = {1: "32-bit ELF (ELFCLASS32)"}.get(cls_byte or -1, f"ELF class {cls_byte}")
            if cls_byte is None:
                raise fail(f"truncated: {len(raw)} bytes, no ELF header")
            raise fail(f"{what}; guests must be ELF64 x86-64")
        if len(raw) < 6 or raw[5] != 1:
            raise fail("truncated: no ELF header" if len(raw) < 6 else
                       f"not little-endian (EI_DATA {raw[5]}); guests must be x86-64")
        if len(raw) < _EHDR.size:
            raise fail(f"truncated: {len(raw)} bytes, the ELF64 header needs {_EHDR.size}")
        (_ident, e_type, e_machine, _ver, _entry, e_phoff, e_shoff, _flags, _ehsize,
         e_phentsize, e_phnum, e_shentsize, e_shnum, _shstrndx) = _EHDR.unpack_from(raw)
        if e_machine != _EM_X86_64:
            raise fail(f"e_machine {e_machine} is not EM_X86_64 ({_EM_X86_64})")
        if e_type != 2:
            kind = _ET_NAMES.get(e_type, str(e_type))
            hint = " (a PIE or shared object)" if e_type == 3 else ""
            raise fail(f"type {kind}{hint}; guests must be static ET_EXEC linked at "
                       f"{GUEST_IMAGE_BASE:#x} (guests/runtime/guest.ld)")
        if e_phnum == 0:
            raise fail("no program headers")
        if e_phentsize != 56:
            raise fail(f"e_phentsize {e_phentsize}, expected 56")
        if e_phoff + e_phnum * e_phentsize > len(raw):
            raise fail(f"truncated: program headers end at {e_phoff + e_phnum * e_phentsize:#x}"
                       f", file has {len(raw):#x} bytes")
        if e_shnum and (e_shentsize != 64 or e_shoff + e_shnum * e_shentsize > len(raw)):
            raise fail(f"truncated: section headers end at {e_shoff + e_shnum * e_shentsize:#x}"
                       f", file has {len(raw):#x} bytes")

    @staticmethod
    def _read_segments(elf: ELFFile, raw: bytes, fail: Callable[[str], GuestImageError]
                       ) -> tuple[int, list[Segment]]:
        segments: list[Segment] = []
        for ph in elf.iter_segments():
            p_type = ph["p_type"]
            if p_type == "PT_INTERP":
                interp = getattr(ph, "get_interp_name", lambda: "?")()
                raise fail(f"has PT_INTERP ({interp}): dynamically linked; "
                           "guests must be static (-static -nostdlib)")
            if p_type == "PT_DYNAMIC":
                raise fail("has PT_DYNAMIC: dynamically linked; guests must be static")
            if p_type != "PT_LOAD":
                continue
            off, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
            gpa = ph["p_paddr"]
            seg = Segment(gpa, b"", memsz, ph["p_flags"]).describe(len(segments))
            if ph["p_vaddr"] != gpa:
                raise fail(f"{seg}: p_vaddr {ph['p_vaddr']:#x} != p_paddr {gpa:#x}; "
                           "guest memory is identity mapped")
            if filesz > memsz:
                raise fail(f"{seg}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
            if off + filesz > len(raw):
                raise fail(f"truncated: {seg} needs file bytes up to {off + filesz:#x}, "
                           f"file has {len(raw):#x}")
            if gpa + memsz > 1 << 52:
                raise fail(f"{seg}: beyond the 52-bit physical address space")
            # Empty segments stay in the list so "segment N" always means segments[N].
            segments.append(Segment(gpa, raw[off:off + filesz], memsz, ph["p_flags"]))
        if not any(s.memsz for s in segments):
            raise fail("no PT_LOAD segments")

        ordered = sorted((s.gpa, s.end, n) for n, s in enumerate(segments) if s.memsz)
        for (a_start, a_end, a), (b_start, b_end, b) in itertools.pairwise(ordered):
            if _overlaps(a_start, a_end, b_start, b_end):
                raise fail(f"{segments[a].describe(a)} overlaps {segments[b].describe(b)}")

        entry: int = elf["e_entry"]
        if not any(s.gpa <= entry < s.end and s.flags & PF_X for s in segments):
            raise fail(f"entry point {entry:#x} is not inside an executable segment")
        for section in elf.iter_sections():
            if section.name == ".dynamic" or section["sh_type"] == "SHT_DYNAMIC":
                raise fail("has a .dynamic section: dynamically linked; guests must be static")
            if section["sh_type"] != "SHT_NOBITS" and \
                    section["sh_offset"] + section["sh_size"] > len(raw):
                raise fail(f"truncated: section {section.name or '?'} ends at "
                           f"{section['sh_offset'] + section['sh_size']:#x}, "
                           f"file has {len(raw):#x} bytes")
        return entry, segments

    @staticmethod
    def _read_symbols(elf: ELFFile, fail: Callable[[str], GuestImageError]
                      ) -> dict[str, Symbol]:
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None or not hasattr(symtab, "iter_symbols"):
            raise fail("no .symtab: the host finds guest variables by name (do not strip)")
        symbols: dict[str, Symbol] = {}
        globals_seen: set[str] = set()
        for sym in symtab.iter_symbols():
            if not sym.name or sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            if sym["st_shndx"] == "SHN_UNDEF":
                continue
            is_global = sym["st_info"]["bind"] != "STB_LOCAL"
            # A global wins over a same-named static from another file.
            if sym.name in symbols and (sym.name in globals_seen or not is_global):
                continue
            symbols[sym.name] = Symbol(sym["st_value"], sym["st_size"])
            if is_global:
                globals_seen.add(sym.name)
        return symbols

    # ---- use ---------------------------------------------------------------------------

    def validate(self, ram_ranges: Iterable[RangeLike],
                 reserved: Iterable[RangeLike] = ()) -> None:
        """Check every segment lies inside guest RAM and clear of the reserved ranges
        (harness page tables, GDT/IDT, stacks, data regions).  Ranges are ``[start, end)``,
        optionally with a name used in the message."""
        ram = _merge(_as_range(r, "RAM") for r in ram_ranges)
        reserved_list = [_as_range(r, "reserved range") for r in reserved]
        for number, seg in enumerate(self.segments):
            if not seg.memsz:
                continue
            if not any(r.start <= seg.gpa and seg.end <= r.end for r in ram):
                where = ", ".join(str(r) for r in ram) or "none"
                raise GuestImageError(f"{self.name}: {seg.describe(number)} is not inside "
                                      f"guest RAM ({where})")
            for r in reserved_list:
                if _overlaps(seg.gpa, seg.end, r.start, r.end):
                    raise GuestImageError(f"{self.name}: {seg.describe(number)} overlaps "
                                          f"{r.name} {r}")

    def write_into(self, write_fn: Callable[[int, bytes], object]) -> None:
        """Copy the image into guest memory with ``write_fn(gpa, data)``, zeroing .bss
        (memsz - filesz) explicitly so a reused memory region holds no stale data."""
        for seg in self.segments:
            if seg.data:
                write_fn(seg.gpa, seg.data)
            gpa, end = seg.gpa + len(seg.data), seg.end
            while gpa < end:
                n = min(_ZERO_CHUNK, end - gpa)
                write_fn(gpa, bytes(n))
                gpa += n

    def symbol(self, name: str) -> Symbol:
        """Address and size of ``name``; a missing name raises ``GuestImageError`` with the
        closest existing names as a suggestion."""
        try:
            return self.symbols[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.symbols.keys(), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise GuestImageError(f"{self.name}: no symbol {name!r}{hint}") from None

    def address(self, name: str) -> int:
        """Shorthand for ``symbol(name).address``."""
        return self.symbol(name).address

    @property
    def end(self) -> int:
        """First GPA after the highest segment."""
        return max(s.end for s in self.segments if s.memsz)
