"""The guest-physical layout a machine is built from: RAM, ROM and MMIO regions.

The harness owns GPA [0, 16 MiB): GDT/IDT/TSS and vCPU stacks below 4 MiB, the guest
image at 4 MiB (guests/ABI.md).  Page tables live in their own slot right after it.
Scenario regions go at or above 1 GiB; each chooses its guest page size (4 KiB leaves make shadow
paging build one SPTE per page, which is what zap costs scale with)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Literal

from kvmharness.guest.errors import GuestError
from kvmharness.guest.ucall import KH_MAX_VCPUS

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_4K = 4 * KiB
PAGE_2M = 2 * MiB
PAGE_1G = 1 * GiB

GDT_GPA = 0x1000
IDT_GPA = 0x2000
TSS_GPA = 0x3000
EXCEPTION_STUBS_GPA = 0x4000  # harness IDT stubs for foreign guests (guest/foreign.py)
STACKS_GPA = 0x10000
STACK_SIZE = 32 * KiB
MAX_VCPUS = KH_MAX_VCPUS  # guests/runtime/kh.h, checked by tests/unit/test_ucall.py
HARNESS_END = 4 * MiB
IMAGE_GPA = 4 * MiB
LOW_RAM_END = 16 * MiB
PAGE_TABLES_GPA = LOW_RAM_END
# Page tables get [16 MiB, 1 GiB): room for 4 KiB leaves over ~500 GiB of guest memory.
PAGE_TABLES_LIMIT = 1 * GiB
USER_REGIONS_GPA = PAGE_TABLES_LIMIT

RegionKind = Literal["ram", "rom", "mmio"]


class LayoutError(GuestError):
    """A layout that cannot be built: overlapping or misaligned regions, unsupported pages,
    or more memory than the host can give."""


@dataclasses.dataclass(frozen=True)
class Region:
    """``kind``: ram (read-write memslot), rom (KVM_MEM_READONLY memslot) or mmio (mapped in
    the guest page tables but with no memslot: every access exits to the host).
    ``page_size``: guest page-table leaf size, 4 KiB or 2 MiB (1 GiB only if CPUID has it).
    ``hugepages``: host THP advice for the backing memory (None = system default);
    ``hugetlb``: back it with reserved 2 MiB hugetlbfs pages instead."""

    name: str
    gpa: int
    size: int
    kind: RegionKind = "ram"
    page_size: int = PAGE_4K
    hugepages: bool | None = None
    hugetlb: bool = False

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def has_memslot(self) -> bool:
        return self.kind != "mmio"

    def overlaps(self, other: Region) -> bool:
        return self.gpa < other.end and other.gpa < self.end

    def __str__(self) -> str:
        return f"{self.kind} region {self.name!r} [{self.gpa:#x}-{self.end:#x})"


LOW_RAM = Region("low", 0, LOW_RAM_END, "ram", PAGE_4K)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Scenario regions (the harness adds ``LOW_RAM`` and the page-table slot itself)."""

    regions: tuple[Region, ...] = ()

    @classmethod
    def of(cls, regions: Iterable[Region]) -> Layout:
        layout = cls(tuple(regions))
        layout.validate()
        return layout

    def with_region(self, region: Region) -> Layout:
        return Layout.of(self.regions + (region,))

    @property
    def all_regions(self) -> tuple[Region, ...]:
        return (LOW_RAM,) + self.regions

    def region(self, name: str) -> Region:
        for r in self.all_regions:
            if r.name == name:
                return r
        raise KeyError(f"no region {name!r} (have {[r.name for r in self.all_regions]})")

    def validate(self, *, max_gpa: int = 1 << 46, allow_1g: bool = False) -> None:
        names = set()
        for r in self.all_regions:
            if r.name in names:
                raise LayoutError(f"two regions are named {r.name!r}")
            names.add(r.name)
            if r.page_size not in (PAGE_4K, PAGE_2M, PAGE_1G):
                raise LayoutError(f"{r}: page_size {r.page_size:#x} is not 4 KiB, 2 MiB or 1 GiB")
            if r.page_size == PAGE_1G and not allow_1g:
                raise LayoutError(f"{r}: 1 GiB guest pages are not supported by this vCPU "
                                  "(CPUID 0x80000001.EDX[26] is clear)")
            if r.size <= 0 or r.gpa % r.page_size or r.size % r.page_size:
                raise LayoutError(f"{r}: start and size must be positive multiples of its "
                                  f"page size {r.page_size:#x}")
            if r.end > max_gpa:
                raise LayoutError(f"{r} ends above the guest's physical address limit "
                                  f"{max_gpa:#x}")
            if r is not LOW_RAM and r.gpa < USER_REGIONS_GPA:
                raise LayoutError(f"{r} overlaps the harness's low memory and page tables "
                                  f"[0-{USER_REGIONS_GPA:#x}): place regions at or above 1 GiB")
        ordered = sorted(self.all_regions, key=lambda r: r.gpa)
        for a, b in itertools.pairwise(ordered):
            if a.overlaps(b):
                raise LayoutError(f"{a} overlaps {b}")
        # Regions with 2 MiB leaves are 2 MiB aligned, so no 4 KiB region can share one
        # of their page-directory entries without overlapping them, which was refused above.

    def memslot_bytes(self) -> int:
        return sum(r.size for r in self.all_regions if r.has_memslot)
