"""Loading guest ELF images (guests/ABI.md, "Image") with pyelftools.

``GuestImage.load(path)`` accepts only what the harness can run: ELF64, x86-64, ET_EXEC,
freestanding (no PT_INTERP / PT_DYNAMIC), identity-mapped PT_LOAD segments that do not
overlap, other program headers only of the types in ``ACCEPTED_PT_TYPES`` (a type the loader
does not know could hold data the guest needs), an entry point inside an executable
segment, every allocated section and every symbol inside a loaded segment.
``validate()`` then checks the segments against the machine's RAM and reserved ranges.
Every problem, including whatever pyelftools raises on a corrupt file, becomes a
``GuestImageError`` that names the file, the problem and the header, section or symbol.
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
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz,
#                                     memsz, align

PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_SHLIB, PT_PHDR, PT_TLS = range(8)
PT_GNU_EH_FRAME = 0x6474E550
PT_GNU_STACK = 0x6474E551
PT_GNU_RELRO = 0x6474E552
PT_GNU_PROPERTY = 0x6474E553
PT_GNU_SFRAME = 0x6474E554
# Program headers that carry nothing to load (their bytes, if any, are inside a PT_LOAD or
# are metadata): accepted and ignored.  Anything else that is not PT_LOAD is refused.
ACCEPTED_PT_TYPES = {
    PT_NULL: "PT_NULL", PT_NOTE: "PT_NOTE", PT_PHDR: "PT_PHDR",
    PT_GNU_EH_FRAME: "PT_GNU_EH_FRAME", PT_GNU_STACK: "PT_GNU_STACK",
    PT_GNU_RELRO: "PT_GNU_RELRO", PT_GNU_PROPERTY: "PT_GNU_PROPERTY",
    PT_GNU_SFRAME: "PT_GNU_SFRAME",
}
_REFUSED_PT_TYPES = {
    PT_DYNAMIC: "PT_DYNAMIC", PT_INTERP: "PT_INTERP", PT_SHLIB: "PT_SHLIB", PT_TLS: "PT_TLS",
}
_ACCEPTED_LIST = ", ".join(["PT_LOAD", *ACCEPTED_PT_TYPES.values()])
_MAX_INTERP = 256
SHF_ALLOC = 0x2
SHF_TLS = 0x400
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


def _inside_segments(segments: Iterable[Segment], address: int, size: int) -> bool:
    """[address, address + size) lies in one segment."""
    return any(s.gpa <= address and address + size <= s.end for s in segments if s.memsz)


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
    def load(cls, path: str | Path, *, require_symbols: bool = True) -> GuestImage:
        """Read and check ``path``.  Raises ``GuestImageError`` naming the problem.
        ``require_symbols=False`` accepts a stripped image (a foreign guest whose variables
        the host never reads)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise GuestImageError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
        return cls._parse(path, raw, require_symbols)

    @classmethod
    def _parse(cls, path: Path, raw: bytes, require_symbols: bool = True) -> GuestImage:
        name = path.name

        def fail(problem: str) -> GuestImageError:
            return GuestImageError(f"{name}: {problem}")

        cls._check_header(raw, fail)
        try:
            segments = cls._read_program_headers(raw, fail)
            elf = ELFFile(io.BytesIO(raw))
            entry = cls._check_entry(elf, segments, fail)
            cls._check_sections(elf, raw, segments, fail)
            symbols = cls._read_symbols(elf, segments, fail, require_symbols)
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
    def _read_program_headers(raw: bytes, fail: Callable[[str], GuestImageError]
                              ) -> list[Segment]:
        # Read by hand, not through pyelftools: every p_type must be seen, including values
        # no library has a name for, and PT_INTERP's bytes may be anything.
        e_phoff, = struct.unpack_from("<Q", raw, 32)
        e_phnum, = struct.unpack_from("<H", raw, 56)
        segments: list[Segment] = []
        for index in range(e_phnum):
            (p_type, p_flags, off, vaddr, gpa, filesz, memsz,
             _align) = _PHDR.unpack_from(raw, e_phoff + index * _PHDR.size)
            header = f"program header {index}"
            if p_type == PT_INTERP:
                interp = raw[off:off + min(filesz, _MAX_INTERP)].split(b"\0", 1)[0]
                shown = interp.decode("ascii", errors="backslashreplace") or "empty"
                raise fail(f"{header} is PT_INTERP ({shown}): a dynamically linked program, "
                           "not a freestanding image; link guests with -static -nostdlib")
            if p_type == PT_DYNAMIC:
                raise fail(f"{header} is PT_DYNAMIC: a dynamically linked program, not a "
                           "freestanding image; link guests with -static -nostdlib")
            if p_type in _REFUSED_PT_TYPES:
                what = {PT_TLS: "thread-local storage, which the harness does not set up",
                        PT_SHLIB: "a reserved type with unspecified meaning"}[p_type]
                raise fail(f"{header} is {_REFUSED_PT_TYPES[p_type]}: {what}")
            if p_type in ACCEPTED_PT_TYPES:
                continue
            if p_type != PT_LOAD:
                raise fail(f"{header} has type {p_type:#x}, which this loader does not know "
                           f"(it may hold data the guest needs); accepted: {_ACCEPTED_LIST}")
            seg = Segment(gpa, b"", memsz, p_flags).describe(len(segments))
            seg = f"{seg} (program header {index})"
            if vaddr != gpa:
                raise fail(f"{seg}: p_vaddr {vaddr:#x} != p_paddr {gpa:#x}; "
                           "guest memory is identity mapped")
            if filesz > memsz:
                raise fail(f"{seg}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
            if off + filesz > len(raw):
                raise fail(f"truncated: {seg} needs file bytes up to {off + filesz:#x}, "
                           f"file has {len(raw):#x}")
            if gpa + memsz > 1 << 52:
                raise fail(f"{seg}: beyond the 52-bit physical address space")
            # Empty segments stay in the list so "segment N" always means segments[N].
            segments.append(Segment(gpa, raw[off:off + filesz], memsz, p_flags))
        if not any(s.memsz for s in segments):
            raise fail("no PT_LOAD segments")

        ordered = sorted((s.gpa, s.end, n) for n, s in enumerate(segments) if s.memsz)
        for (a_start, a_end, a), (b_start, b_end, b) in itertools.pairwise(ordered):
            if _overlaps(a_start, a_end, b_start, b_end):
                raise fail(f"{segments[a].describe(a)} overlaps {segments[b].describe(b)}")
        return segments

    @staticmethod
    def _check_entry(elf: ELFFile, segments: list[Segment],
                     fail: Callable[[str], GuestImageError]) -> int:
        entry: int = elf["e_entry"]
        if not any(s.gpa <= entry < s.end and s.flags & PF_X for s in segments):
            raise fail(f"entry point {entry:#x} is not inside an executable segment")
        return entry

    @staticmethod
    def _check_sections(elf: ELFFile, raw: bytes, segments: list[Segment],
                        fail: Callable[[str], GuestImageError]) -> None:
        for section in elf.iter_sections():
            name = section.name or f"#{section.header['sh_name']}"
            sh_type, flags = section["sh_type"], section["sh_flags"]
            addr, size = section["sh_addr"], section["sh_size"]
            if name == ".dynamic" or sh_type == "SHT_DYNAMIC":
                raise fail("has a .dynamic section: a dynamically linked program, not a "
                           "freestanding image; link guests with -static -nostdlib")
            nobits = sh_type == "SHT_NOBITS"
            if not nobits and section["sh_offset"] + size > len(raw):
                raise fail(f"truncated: section {name} ends at "
                           f"{section['sh_offset'] + size:#x}, file has {len(raw):#x} bytes")
            # .tbss takes no room in its segment; other allocated sections must be loaded,
            # with their file bytes when they have some, or the guest runs without them.
            if not flags & SHF_ALLOC or not size or (nobits and flags & SHF_TLS):
                continue
            home = next((n for n, s in enumerate(segments)
                         if s.gpa <= addr and addr + size <= s.end), None)
            where = f"section {name} [{addr:#x}-{addr + size:#x})"
            if home is None:
                raise fail(f"{where} is allocated but not inside any loaded segment "
                           "(its contents would be missing from guest memory)")
            seg = segments[home]
            if not nobits and addr + size > seg.gpa + len(seg.data):
                raise fail(f"{where} has file contents but lies in the zero-filled part of "
                           f"{seg.describe(home)} (p_filesz {len(seg.data):#x})")

    @staticmethod
    def _read_symbols(elf: ELFFile, segments: list[Segment],
                      fail: Callable[[str], GuestImageError], require: bool = True
                      ) -> dict[str, Symbol]:
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None or not hasattr(symtab, "iter_symbols"):
            if not require:
                return {}
            raise fail("no .symtab: the host finds guest variables by name (do not strip)")
        symbols: dict[str, Symbol] = {}
        globals_seen: set[str] = set()
        for sym in symtab.iter_symbols():
            if not sym.name or sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            shndx = sym["st_shndx"]
            if shndx == "SHN_UNDEF":
                continue
            address, size = sym["st_value"], sym["st_size"]
            # A sized symbol defined in a section is memory the host may read or write by
            # name: it must be loaded.  Absolute symbols (linker-script values) are not
            # addresses, and size-0 labels (_end) may mark an end; checked_address() checks
            # those when they are used.
            if shndx != "SHN_ABS" and size and not _inside_segments(segments, address, size):
                raise fail(f"symbol {sym.name!r} [{address:#x}-{address + size:#x}) is not "
                           "inside any loaded segment")
            is_global = sym["st_info"]["bind"] != "STB_LOCAL"
            # A global wins over a same-named static from another file.
            if sym.name in symbols and (sym.name in globals_seen or not is_global):
                continue
            symbols[sym.name] = Symbol(address, size)
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

    def checked_address(self, name: str, size: int, type_name: str = "") -> int:
        """Address of ``name`` for an access of ``size`` bytes: the symbol's size must match
        (a symbol of size 0, e.g. an assembly label without ``.size``, takes any size) and
        the bytes must lie inside one loaded segment."""
        sym = self.symbol(name)
        if sym.size and sym.size != size:
            raise GuestImageError(f"{self.name}: symbol {name!r} is {sym.size} bytes but "
                                  f"{type_name or 'the access'} is {size} bytes")
        if not _inside_segments(self.segments, sym.address, size):
            raise GuestImageError(f"{self.name}: symbol {name!r}: [{sym.address:#x}-"
                                  f"{sym.address + size:#x}) is not inside one loaded segment")
        return sym.address

    @property
    def end(self) -> int:
        """First GPA after the highest segment."""
        return max(s.end for s in self.segments if s.memsz)
