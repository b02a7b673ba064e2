"""4-level identity-mapped x86-64 page tables built in bulk (no per-page Python loop): the
leaf entries of a region are one ``array('Q', range(...))`` written at once, because table
pages are allocated in address order so a region's PTEs are contiguous."""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable, Iterable

from kvmharness.guest.layout import PAGE_1G, PAGE_2M, PAGE_4K, LayoutError, Region

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7
TABLE_FLAGS = PTE_P | PTE_RW
ENTRIES = 512


@dataclasses.dataclass(frozen=True)
class PageTables:
    """Where the tables went: ``cr3`` (the PML4's GPA) and how many bytes they use."""

    cr3: int
    size: int
    pages_4k: int
    pages_2m: int
    pages_1g: int


def _span(r: Region, unit: int) -> range:
    return range(r.gpa // unit, (r.end - 1) // unit + 1)


def _union_length(spans: Iterable[range]) -> int:
    """How many distinct integers the ranges cover, by merging them: arithmetic, so a
    typo of 100 TiB is sized in microseconds instead of materialising its table set."""
    total, reached = 0, None
    for span in sorted((s for s in spans if s), key=lambda s: s.start):
        start = span.start if reached is None else max(span.start, reached)
        if span.stop > start:
            total += span.stop - start
        reached = span.stop if reached is None else max(reached, span.stop)
    return total


def plan_size(regions: Iterable[Region]) -> int:
    """Bytes of table memory ``build`` will need for ``regions``."""
    regions = list(regions)
    pts = _union_length(_span(r, PAGE_2M) for r in regions if r.page_size == PAGE_4K)
    pds = _union_length(_span(r, PAGE_1G) for r in regions if r.page_size <= PAGE_2M)
    pdpts = _union_length(_span(r, 512 * PAGE_1G) for r in regions)
    return (1 + pdpts + pds + pts) * PAGE_4K


def build(regions: Iterable[Region], base_gpa: int,
          write: Callable[[int, bytes], None]) -> PageTables:
    """Write tables mapping every region (GVA == GPA) at ``base_gpa`` via ``write(gpa, data)``
    into zeroed memory."""
    regions = sorted(regions, key=lambda r: r.gpa)
    pts = sorted({b for r in regions if r.page_size == PAGE_4K for b in _span(r, PAGE_2M)})
    pds = sorted({g for r in regions if r.page_size <= PAGE_2M for g in _span(r, PAGE_1G)})
    pdpts = sorted({t for r in regions for t in _span(r, 512 * PAGE_1G)})
    if len(pdpts) > ENTRIES:
        raise LayoutError("guest physical addresses beyond 256 TiB need 5-level paging")

    next_page = base_gpa
    def alloc(keys: list[int]) -> dict[int, int]:
        nonlocal next_page
        out = {}
        for key in keys:
            out[key] = next_page
            next_page += PAGE_4K
        return out

    pml4 = alloc([0])[0]
    pdpt_at = alloc(pdpts)
    pd_at = alloc(pds)
    pt_at = alloc(pts)

    def put(table: int, index: int, value: int) -> None:
        write(table + index * 8, value.to_bytes(8, "little"))

    for t, addr in pdpt_at.items():
        put(pml4, t, addr | TABLE_FLAGS)
    for g, addr in pd_at.items():
        put(pdpt_at[g // ENTRIES], g % ENTRIES, addr | TABLE_FLAGS)
    for b, addr in pt_at.items():
        put(pd_at[b // ENTRIES], b % ENTRIES, addr | TABLE_FLAGS)

    counts = {PAGE_4K: 0, PAGE_2M: 0, PAGE_1G: 0}
    # Which table holds a leaf size's entries, and the span one table page covers.
    leaf_tables = {PAGE_4K: (pt_at, PAGE_2M), PAGE_2M: (pd_at, PAGE_1G)}
    for r in regions:
        leaves = array.array("Q", range(r.gpa | TABLE_FLAGS | (PTE_PS if r.page_size > PAGE_4K
                                                                  else 0),
                                        r.end, r.page_size))
        counts[r.page_size] += len(leaves)
        if r.page_size in leaf_tables:
            tables, unit = leaf_tables[r.page_size]
            # Contiguous spans have contiguous table pages, so the run of entries is linear.
            keys = list(_span(r, unit))
            if any(tables[k] - tables[keys[0]] != (k - keys[0]) * PAGE_4K for k in keys):
                raise AssertionError("page-table pages of a region are not contiguous")
            write(tables[keys[0]] + (r.gpa // r.page_size % ENTRIES) * 8, leaves.tobytes())
        else:
            for i, value in enumerate(leaves):
                g = r.gpa // PAGE_1G + i
                put(pdpt_at[g // ENTRIES], g % ENTRIES, value)
    return PageTables(pml4, next_page - base_gpa, counts[PAGE_4K], counts[PAGE_2M],
                      counts[PAGE_1G])
