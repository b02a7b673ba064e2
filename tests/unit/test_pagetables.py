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


def test_plan_size_is_arithmetic_and_matches_the_table_sets() -> None:
    import random

    from kvmharness.guest import pagetables as pt
    from kvmharness.guest.layout import PAGE_1G, PAGE_2M, PAGE_4K, Region

    def by_sets(regions: list[Region]) -> int:
        pts = {b for r in regions if r.page_size == PAGE_4K for b in pt._span(r, PAGE_2M)}
        pds = {g for r in regions if r.page_size <= PAGE_2M for g in pt._span(r, PAGE_1G)}
        pdpts = {t for r in regions for t in pt._span(r, 512 * PAGE_1G)}
        return (1 + len(pdpts) + len(pds) + len(pts)) * PAGE_4K

    rng = random.Random(3)
    for _ in range(200):
        regions = [Region(f"r{i}", rng.randrange(0, 1 << 36) // 4096 * 4096,
                          rng.randrange(1, 1 << 33) // 4096 * 4096 + 4096, "ram",
                          hugepages=rng.random() < 0.3) for i in range(rng.randrange(1, 5))]
        assert pt.plan_size(regions) == by_sets(regions)
    # 100 TiB of 4 KiB pages: sized without a set of 50 million table pages.
    huge = Region("ram", 1 << 32, 100 << 40, "ram")
    # A PML4, 201 PDPTs (GiB 4..102404 over 512 GiB each), a PD per GiB, a PT per 2 MiB.
    assert pt.plan_size([huge]) == (1 + 201 + 100 * 1024 + 100 * 1024 * 512) * PAGE_4K
