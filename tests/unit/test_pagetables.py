"""Identity page tables: walk them like the MMU does, for 4 KiB, 2 MiB and mixed layouts."""

from __future__ import annotations

import struct
import time

import pytest

from kvmharness.guest import pagetables
from kvmharness.guest.layout import LOW_RAM, PAGE_2M, PAGE_4K, GiB, MiB, Region

BASE = 16 * MiB


class TableMemory:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - BASE
        assert off >= 0 and off + len(data) <= len(self.buf), "write outside the table area"
        self.buf[off:off + len(data)] = data

    def entry(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.buf, gpa - BASE)[0]


def walk(mem: TableMemory, cr3: int, va: int) -> int | None:
    """Translate like a 4-level x86-64 walk; None where a level is not present."""
    table = cr3
    for _level, shift in enumerate((39, 30, 21, 12)):
        e = mem.entry(table + ((va >> shift) & 511) * 8)
        if not e & pagetables.PTE_P:
            return None
        assert e & pagetables.PTE_RW
        frame = e & 0x000FFFFFFFFFF000
        if shift == 12 or e & pagetables.PTE_PS:
            assert shift in (12, 21), "1 GiB leaf where none was asked for"
            return (frame & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = frame
    return None


def build(regions):
    mem = TableMemory(pagetables.plan_size(regions))
    tables = pagetables.build(regions, BASE, mem.write)
    assert tables.size == len(mem.buf), "plan_size must equal what build uses"
    return mem, tables


def test_identity_map_4k_2m_and_holes():
    regions = [LOW_RAM, Region("a", 1 * GiB + 4096, 3 * MiB - 8192),
               Region("b", 4 * GiB, 6 * MiB, page_size=PAGE_2M),
               Region("far", 600 * GiB, 2 * MiB)]
    mem, tables = build(regions)
    for va in (0x1000, 0x400123, 16 * MiB - 8, 1 * GiB + 4096, 1 * GiB + 3 * MiB - 4097,
               4 * GiB, 4 * GiB + 5 * MiB + 77, 600 * GiB + 12345):
        assert walk(mem, tables.cr3, va) == va, hex(va)
    for hole in (16 * MiB, 1 * GiB, 1 * GiB + 3 * MiB - 4096, 4 * GiB - 1, 4 * GiB + 6 * MiB,
                 599 * GiB):
        assert walk(mem, tables.cr3, hole) is None, hex(hole)
    assert tables.pages_2m == 3
    assert tables.pages_4k == (16 * MiB + 3 * MiB - 8192 + 2 * MiB) // PAGE_4K


def test_16_gib_of_4k_pages_builds_in_bulk(capsys):
    regions = [LOW_RAM, Region("big", 1 * GiB, 16 * GiB)]
    start = time.perf_counter()
    mem, tables = build(regions)
    elapsed = time.perf_counter() - start
    assert tables.pages_4k == (16 * GiB + 16 * MiB) // PAGE_4K
    for va in (1 * GiB, 9 * GiB + 4096 * 7 + 5, 17 * GiB - 8):
        assert walk(mem, tables.cr3, va) == va
    with capsys.disabled():
        print(f"\n16 GiB of 4 KiB identity mappings built in {elapsed * 1000:.0f} ms "
              f"({tables.size // MiB} MiB of tables)")


def test_too_high_addresses_are_refused():
    with pytest.raises(Exception, match="5-level"):
        pagetables.build([Region(f"r{i}", i * 512 * GiB, 2 * MiB) for i in range(513)],
                         BASE, lambda gpa, data: None)
