"""GuestImage: loading real guests built by guests/Makefile, and rejecting malformed ELFs
with a GuestImageError that names the problem (never a pyelftools exception)."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmharness.guest.build import guest_path
from kvmharness.guest.elf import (
    GUEST_IMAGE_BASE,
    GUEST_IMAGE_LIMIT,
    PF_R,
    PF_W,
    PF_X,
    GpaRange,
    GuestImage,
)
from kvmharness.guest.errors import GuestError, GuestImageError
from kvmharness.guest.ucall import ERROR_CODE_VECTORS

RAM = [(0, 64 << 20)]
HARNESS = GpaRange(0, GUEST_IMAGE_BASE, "harness area")

# Elf64_Phdr field offsets
PH_VADDR, PH_PADDR, PH_FILESZ, PH_MEMSZ = 16, 24, 32, 40


@pytest.fixture(scope="module")
def hello_elf() -> Path:
    return guest_path("hello")


@pytest.fixture(scope="module")
def hello_bytes(hello_elf: Path) -> bytes:
    return hello_elf.read_bytes()


@pytest.fixture(scope="module")
def hello(hello_elf: Path) -> GuestImage:
    return GuestImage.load(hello_elf)


def load_bytes(tmp_path: Path, data: bytes, name: str = "hello.elf") -> GuestImage:
    path = tmp_path / name
    path.write_bytes(data)
    return GuestImage.load(path)


def phdr_offset(raw: bytes, index: int) -> int:
    e_phoff, = struct.unpack_from("<Q", raw, 32)
    e_phentsize, = struct.unpack_from("<H", raw, 54)
    return int(e_phoff + index * e_phentsize)


def patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def reject(tmp_path: Path, data: bytes, *needles: str) -> str:
    with pytest.raises(GuestImageError) as info:
        load_bytes(tmp_path, data)
    message = str(info.value)
    assert message.startswith("hello.elf: "), message
    for needle in needles:
        assert needle in message, message
    return message


# ---- the real guests -------------------------------------------------------------------

def test_hello_entry_segments_symbols(hello: GuestImage) -> None:
    assert hello.entry == GUEST_IMAGE_BASE == hello.address("_start")
    text = hello.segments[0]
    assert (text.gpa, text.flags) == (GUEST_IMAGE_BASE, PF_R | PF_X)
    assert all(s.gpa >= GUEST_IMAGE_BASE and s.end <= GUEST_IMAGE_LIMIT for s in hello.segments)
    assert all(s.gpa % 4096 == 0 for s in hello.segments)
    assert [s.flags for s in hello.segments] == [PF_R | PF_X, PF_R, PF_R | PF_W]
    _gpa, data, memsz, _flags = hello.segments[2]  # unpacks like the documented tuple
    assert memsz > len(data)  # .bss
    for name, size in [("kh_exception_stubs", 256 * 8), ("kh_nr_vcpus", 4), ("kh_stop", 8),
                       ("kh_tsc_khz", 8), ("hello_mode", 4), ("hello_result", 64 * 8),
                       ("hello_read_gpas", 16 * 8), ("hello_read_values", 16 * 8),
                       ("hello_read_count", 4), ("hello_fault_addr", 8)]:
        assert hello.symbol(name).size == size, name
    assert hello.symbol("guest_main").address in range(text.gpa, text.end)


def read_image(image: GuestImage, address: int, size: int) -> bytes:
    for seg in image.segments:
        if seg.gpa <= address and address + size <= seg.end:
            padded = seg.data + bytes(seg.memsz - len(seg.data))
            return padded[address - seg.gpa:address - seg.gpa + size]
    raise AssertionError(f"{address:#x} not in image")


def test_exception_stubs_push_error_code_only_where_cpu_does_not(hello: GuestImage) -> None:
    """Cross-check entry.S against ucall.ERROR_CODE_VECTORS: a stub for a vector without a
    CPU error code starts with ``push $0`` (6a 00), the others with ``push $vector``."""
    table = struct.unpack("<256Q", read_image(hello, hello.address("kh_exception_stubs"), 2048))
    text = hello.segments[0]
    assert len(set(table)) == 256
    for vector, stub in enumerate(table):
        assert text.gpa <= stub < text.end
        code = read_image(hello, stub, 4)
        if vector in ERROR_CODE_VECTORS:
            assert code[:2] == bytes([0x6A, vector]), vector  # push $vector, no dummy
        else:
            assert code[:2] == b"\x6a\x00", vector


def test_validate_and_write_into(hello: GuestImage) -> None:
    hello.validate(RAM, [HARNESS, (GUEST_IMAGE_LIMIT, GUEST_IMAGE_LIMIT + 4096, "page tables")])
    memory = bytearray(b"\xaa" * (GUEST_IMAGE_LIMIT))
    writes: list[tuple[int, int]] = []

    def write(gpa: int, data: bytes) -> None:
        writes.append((gpa, len(data)))
        memory[gpa:gpa + len(data)] = data

    hello.write_into(write)
    assert all(gpa >= GUEST_IMAGE_BASE for gpa, _ in writes)
    for seg in hello.segments:
        assert memory[seg.gpa:seg.gpa + len(seg.data)] == seg.data
        assert not any(memory[seg.gpa + len(seg.data):seg.end])  # .bss zeroed
    nr = hello.symbol("kh_nr_vcpus")
    assert int.from_bytes(memory[nr.address:nr.address + 4], "little") == 1
    seven = hello.symbol("hello_seven")
    assert int.from_bytes(memory[seven.address:seven.address + 4], "little") == 7


def test_hammer_symbols() -> None:
    image = GuestImage.load(guest_path("hammer"))
    assert image.symbol("hammer_pass_tsc").size == 64 * 4096 * 8
    assert image.symbol("hammer_passes_done").size == 64 * 4
    assert image.end <= GUEST_IMAGE_LIMIT
    image.validate(RAM, [HARNESS])


def test_missing_symbol_suggests_near_miss(hello: GuestImage) -> None:
    with pytest.raises(GuestImageError, match=r"hello\.elf: no symbol 'hello_mod'; "
                                              r"did you mean 'hello_mode'"):
        hello.symbol("hello_mod")
    with pytest.raises(GuestImageError, match=r"no symbol 'zzzzqqq'$"):
        hello.symbol("zzzzqqq")


# ---- validate() against the machine's layout ------------------------------------------

def test_segment_outside_ram(hello: GuestImage) -> None:
    with pytest.raises(GuestImageError,
                       match=r"hello\.elf: segment 0 \[0x400000-0x[0-9a-f]+\) is not inside "
                             r"guest RAM \(\[0x0-0x402000\)\)"):
        hello.validate([(0, 0x402000)])


def test_segment_spanning_adjacent_ram_ranges_is_fine(hello: GuestImage) -> None:
    hello.validate([(0, 0x401000), (0x401000, 0x800000), (0x800000, 64 << 20)])


def test_segment_overlapping_reserved(hello: GuestImage) -> None:
    rodata = hello.segments[1]
    message = f"hello.elf: segment 1 [{rodata.gpa:#x}-{rodata.end:#x}) overlaps harness page " \
              f"tables [{rodata.gpa:#x}-{rodata.gpa + 0x1000:#x})"
    with pytest.raises(GuestImageError) as info:
        hello.validate(RAM, [HARNESS, (rodata.gpa, rodata.gpa + 0x1000, "harness page tables")])
    assert str(info.value) == message


def test_touching_reserved_range_is_not_overlap(hello: GuestImage) -> None:
    hello.validate(RAM, [(0, hello.segments[0].gpa), (hello.end, hello.end + 4096)])


# ---- malformed files ------------------------------------------------------------------

def test_not_an_elf(tmp_path: Path) -> None:
    reject(tmp_path, b"#!/bin/sh\necho hi\n", "not an ELF file")
    reject(tmp_path, b"", "not an ELF file")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="nope.elf: cannot read"):
        GuestImage.load(tmp_path / "nope.elf")


@pytest.mark.parametrize("cut", [4, 5, 6, 40, 63, 64, 64 + 56, 0x1000 + 10, "half", "end-1"])
def test_truncated(tmp_path: Path, hello_bytes: bytes, cut: int | str) -> None:
    n = {"half": len(hello_bytes) // 2, "end-1": len(hello_bytes) - 1}.get(str(cut), cut)
    assert isinstance(n, int)
    reject(tmp_path, hello_bytes[:n], "truncated")


def test_truncated_everywhere_is_a_guest_image_error(tmp_path: Path, hello_bytes: bytes) -> None:
    for n in list(range(300)) + list(range(300, len(hello_bytes), 97)):
        with pytest.raises(GuestImageError):
            load_bytes(tmp_path, hello_bytes[:n])


def test_32bit_elf(tmp_path: Path) -> None:
    # Elf32_Ehdr of an i386 ET_EXEC, crafted by hand (no gcc-multilib needed).
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header = struct.pack("<16sHHIIIIIHHHHHH", ident, 2, 3, 1, 0x8048000, 52, 0, 0, 52, 32, 1,
                         40, 0, 0)
    phdr = struct.pack("<8I", 1, 0, 0x8048000, 0x8048000, 84, 84, 5, 0x1000)
    reject(tmp_path, header + phdr, "32-bit ELF (ELFCLASS32)")


def test_big_endian(tmp_path: Path, hello_bytes: bytes) -> None:
    reject(tmp_path, patch(hello_bytes, 5, "<B", 2), "not little-endian")


def test_wrong_machine(tmp_path: Path, hello_bytes: bytes) -> None:
    reject(tmp_path, patch(hello_bytes, 18, "<H", 183), "e_machine 183 is not EM_X86_64")


def test_et_dyn_patched(tmp_path: Path, hello_bytes: bytes) -> None:
    reject(tmp_path, patch(hello_bytes, 16, "<H", 3), "type ET_DYN (a PIE or shared object)")


def test_relocatable_object(tmp_path: Path) -> None:
    obj = guest_path("hello").parent / "hello.o"
    reject(tmp_path, obj.read_bytes(), "type ET_REL")


def _compile_hosted(tmp_path: Path, *flags: str) -> bytes:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src = tmp_path / "hosted.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    out = tmp_path / "hosted"
    proc = subprocess.run(["gcc", *flags, "-o", str(out), str(src)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot link a hosted program: {proc.stderr.strip()[:200]}")
    return out.read_bytes()


def test_dynamic_executable_with_interp(tmp_path: Path) -> None:
    reject(tmp_path, _compile_hosted(tmp_path, "-no-pie"), "is PT_INTERP (/lib",
           "not a freestanding image")


def test_pie_executable(tmp_path: Path) -> None:
    reject(tmp_path, _compile_hosted(tmp_path, "-pie", "-fpie"), "ET_DYN")


def test_overlapping_segments(tmp_path: Path, hello_bytes: bytes) -> None:
    ph = phdr_offset(hello_bytes, 1)
    bad = patch(patch(hello_bytes, ph + PH_VADDR, "<Q", 0x400010), ph + PH_PADDR, "<Q", 0x400010)
    reject(tmp_path, bad, "segment 0 [0x400000-", "overlaps segment 1 [0x400010-")


def test_vaddr_differs_from_paddr(tmp_path: Path, hello_bytes: bytes) -> None:
    bad = patch(hello_bytes, phdr_offset(hello_bytes, 0) + PH_PADDR, "<Q", 0x800000)
    reject(tmp_path, bad, "segment 0", "identity mapped")


def test_filesz_larger_than_memsz(tmp_path: Path, hello_bytes: bytes) -> None:
    bad = patch(hello_bytes, phdr_offset(hello_bytes, 0) + PH_MEMSZ, "<Q", 16)
    reject(tmp_path, bad, "segment 0", "p_filesz", "> p_memsz 0x10")


def test_segment_data_beyond_file(tmp_path: Path, hello_bytes: bytes) -> None:
    bad = patch(hello_bytes, phdr_offset(hello_bytes, 0) + PH_FILESZ, "<Q", 1 << 30)
    bad = patch(bad, phdr_offset(hello_bytes, 0) + PH_MEMSZ, "<Q", 1 << 30)
    reject(tmp_path, bad, "truncated", "segment 0")


def test_entry_outside_text(tmp_path: Path, hello_bytes: bytes, hello: GuestImage) -> None:
    reject(tmp_path, patch(hello_bytes, 24, "<Q", hello.segments[1].gpa),
           "entry point", "not inside an executable segment")


def test_stripped(tmp_path: Path, hello_elf: Path) -> None:
    if shutil.which("strip") is None:
        pytest.skip("binutils strip not installed")
    out = tmp_path / "hello.elf"
    subprocess.run(["strip", "-o", str(out), str(hello_elf)], check=True)
    with pytest.raises(GuestImageError, match="no .symtab"):
        GuestImage.load(out)


def test_random_corruption_never_escapes(tmp_path: Path, hello_bytes: bytes) -> None:
    """Flip bytes in the headers, program headers and section header table: the result is
    either a valid image or a GuestImageError, never a pyelftools/struct exception."""
    rng = random.Random(1234)
    e_shoff, = struct.unpack_from("<Q", hello_bytes, 40)
    regions = [(0, 64), (64, 64 + 3 * 56), (e_shoff, len(hello_bytes))]
    for _ in range(400):
        data = bytearray(hello_bytes)
        for _ in range(rng.randint(1, 4)):
            start, end = rng.choice(regions)
            data[rng.randrange(start, end)] = rng.randrange(256)
        try:
            load_bytes(tmp_path, bytes(data))
        except GuestImageError:
            pass
        except GuestError as exc:  # pragma: no cover - would be a bug
            pytest.fail(f"wrong error type {type(exc).__name__}: {exc}")


# ---- generated malformed variants: each kind refused with its own message -------------

PH_TYPE = 0
SH_ADDR = 16  # Elf64_Shdr field offset
ST_VALUE = 8  # Elf64_Sym field offset
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_TLS = 1, 2, 3, 4, 7
NON_LOAD_TYPES = [0, 2, 3, 4, 5, 6, 7, 8, 0x6474E550, 0x6474E551, 0x6474E552, 0x6474E553,
                  0x6474E554, 0x6474E555, 0x60000000, 0x6FFFFFFF, 0x70000000, 0x7FFFFFFF,
                  0xFFFFFFFF]


def _sections(raw: bytes) -> dict[str, int]:
    """Section name -> offset of its section header."""
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(raw))
    e_shoff = elf["e_shoff"]
    return {s.name: e_shoff + i * 64 for i, s in enumerate(elf.iter_sections())}


def _sized_symbols(raw: bytes) -> dict[str, int]:
    """Name -> offset of the Elf64_Sym of every symbol with a size, defined in a section."""
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(raw))
    symtab = elf.get_section_by_name(".symtab")
    out = {}
    for i, sym in enumerate(symtab.iter_symbols()):
        if sym.name and sym["st_size"] and isinstance(sym["st_shndx"], int):
            out.setdefault(sym.name, symtab["sh_offset"] + i * 24)
    return out


def _ptype(raw: bytes, index: int, p_type: int) -> bytes:
    return patch(raw, phdr_offset(raw, index) + PH_TYPE, "<I", p_type)


def _malformed_kinds(raw: bytes) -> dict[str, tuple[bytes, str]]:
    """kind -> (variant of the hello image, the phrase its message must contain)."""
    data_ph = phdr_offset(raw, 2)
    sym = _sized_symbols(raw)["hello_result"]
    return {
        "unknown p_type": (_ptype(raw, 2, 0x60000001),
                           "program header 2 has type 0x60000001, which this loader does not "
                           "know (it may hold data the guest needs); accepted: PT_LOAD, PT_NULL"),
        "PT_INTERP": (_ptype(raw, 2, PT_INTERP),
                      "program header 2 is PT_INTERP ("),
        "PT_DYNAMIC": (_ptype(raw, 1, PT_DYNAMIC), "program header 1 is PT_DYNAMIC: a "
                       "dynamically linked program, not a freestanding image"),
        "PT_TLS": (_ptype(raw, 2, PT_TLS), "program header 2 is PT_TLS: thread-local storage"),
        "load turned into a note": (_ptype(raw, 2, PT_NOTE),
                                    "is allocated but not inside any loaded segment"),
        "symbol outside segments": (patch(raw, sym + ST_VALUE, "<Q", 0x2000000),
                                    "symbol 'hello_result' [0x2000000-0x2000200) is not "
                                    "inside any loaded segment"),
        "section bytes in .bss": (patch(raw, data_ph + PH_FILESZ, "<Q", 0),
                                  "section .data [0x"),
        "overlapping segments": (patch(patch(raw, phdr_offset(raw, 1) + PH_VADDR, "<Q",
                                             0x400010), phdr_offset(raw, 1) + PH_PADDR,
                                       "<Q", 0x400010), "overlaps segment 1 [0x400010-"),
        "filesz > memsz": (patch(raw, phdr_offset(raw, 0) + PH_MEMSZ, "<Q", 16),
                           "segment 0 [0x400000-0x400010) (program header 0): p_filesz"),
        "vaddr != paddr": (patch(raw, phdr_offset(raw, 0) + PH_PADDR, "<Q", 0x800000),
                           "guest memory is identity mapped"),
        "segment beyond file": (patch(patch(raw, phdr_offset(raw, 0) + PH_FILESZ, "<Q",
                                            1 << 30), phdr_offset(raw, 0) + PH_MEMSZ, "<Q",
                                      1 << 30), "truncated: segment 0"),
        "truncated file": (raw[:len(raw) // 2], "truncated: "),
        "no PT_LOAD": (_ptype(_ptype(_ptype(raw, 0, 0), 1, 0), 2, 0), "no PT_LOAD segments"),
        "entry outside text": (patch(raw, 24, "<Q", 0x10), "entry point 0x10 is not inside"),
    }


def test_each_malformed_kind_has_its_own_message(tmp_path: Path, hello_bytes: bytes) -> None:
    messages = {}
    for kind, (variant, phrase) in _malformed_kinds(hello_bytes).items():
        with pytest.raises(GuestImageError) as info:
            load_bytes(tmp_path, variant)
        message = str(info.value)
        assert message.startswith("hello.elf: ") and phrase in message, (kind, message)
        assert "Error" not in message, (kind, message)  # no library exception leaks through
        messages[kind] = message
    assert len(set(messages.values())) == len(messages)
    assert "zero-filled part of segment 2" in messages["section bytes in .bss"]


def test_interp_with_binary_bytes_is_named_not_decoded(tmp_path: Path,
                                                       hello_bytes: bytes) -> None:
    """A PT_INTERP pointing at non-text bytes (here the data segment) gives the loader's
    message, not a UnicodeDecodeError."""
    message = reject(tmp_path, _ptype(hello_bytes, 0, PT_INTERP), "program header 0 is PT_INTERP (",
                     "not a freestanding image")
    assert "Unicode" not in message


def test_no_generated_variant_loads_silently(tmp_path: Path, hello_bytes: bytes) -> None:
    """Every PT_LOAD turned into every other program header type, every sized symbol and
    every allocated section moved out of the image: all refused, none loads with data
    dropped."""
    variants = []
    for index in range(3):
        variants += [_ptype(hello_bytes, index, t) for t in NON_LOAD_TYPES]
    for offset in _sized_symbols(hello_bytes).values():
        variants.append(patch(hello_bytes, offset + ST_VALUE, "<Q", 0x2000000))
    image = GuestImage.load(guest_path("hello"))
    for offset in _sections(hello_bytes).values():
        addr, = struct.unpack_from("<Q", hello_bytes, offset + SH_ADDR)
        if addr:  # allocated sections only
            variants.append(patch(hello_bytes, offset + SH_ADDR, "<Q", image.end + 0x100000))
    assert len(variants) > 57 + 30
    for variant in variants:
        with pytest.raises(GuestImageError):
            load_bytes(tmp_path, variant)
