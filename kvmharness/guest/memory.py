"""Host memory behind a layout's regions, GPA-addressed reads and writes, and the guard that
refuses layouts the host cannot hold."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import psutil

from kvmharness.guest.layout import GiB, LayoutError, MiB, Region
from kvmharness.kvm import HostMemory

# Left for the host itself when deciding whether guest memory fits.
HOST_RESERVE = 512 * MiB


def check_host_memory(needed: int, what: str) -> None:
    """Raise LayoutError if ``needed`` bytes of touched guest memory would not fit in what
    psutil says is available (minus a reserve for the host)."""
    available = psutil.virtual_memory().available
    if needed > available - HOST_RESERVE:
        raise LayoutError(
            f"{what} would touch {needed / GiB:.2f} GiB of guest memory but the host has "
            f"{available / GiB:.2f} GiB available (keeping {HOST_RESERVE // MiB} MiB for the "
            "host): use a smaller size or fewer vCPUs")


class GuestMemory:
    """One HostMemory per region that has a memslot, looked up by GPA."""

    def __init__(self, regions: Iterable[Region]) -> None:
        self.regions: list[Region] = []
        self.backing: dict[str, HostMemory] = {}
        self._starts: list[int] = []
        try:
            for r in sorted((r for r in regions if r.has_memslot), key=lambda r: r.gpa):
                self.backing[r.name] = HostMemory(r.size, hugepages=r.hugepages,
                                                  hugetlb=r.hugetlb,
                                                  name=f"{r.kind} region {r.name!r}")
                self.regions.append(r)
                self._starts.append(r.gpa)
        except BaseException:
            self.close()
            raise

    def locate(self, gpa: int, size: int) -> tuple[HostMemory, int]:
        """(backing, offset) for [gpa, gpa+size), which must lie inside one region."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            r = self.regions[i]
            if gpa + size <= r.end:
                return self.backing[r.name], gpa - r.gpa
        raise LayoutError(f"GPA range [{gpa:#x}-{gpa + size:#x}) is not inside one memory "
                          "region of this machine")

    def read(self, gpa: int, size: int) -> bytes:
        mem, offset = self.locate(gpa, size)
        return mem.read(offset, size)

    def write(self, gpa: int, data: bytes) -> None:
        mem, offset = self.locate(gpa, len(data))
        mem.write(offset, data)

    def host_address(self, gpa: int, size: int = 1) -> int:
        mem, offset = self.locate(gpa, size)
        return mem.addr + offset

    def report(self) -> dict[str, dict[str, object]]:
        """Per region: where it is, its guest page size and how the host backs it — what a
        result must record, since huge pages change every fault count."""
        return {r.name: {"kind": r.kind, "gpa": r.gpa, "size": r.size,
                         "guest_page_size": r.page_size,
                         "host_backing": self.backing[r.name].backing}
                for r in self.regions}

    def close(self) -> None:
        for mem in self.backing.values():
            mem.close()
        self.backing.clear()
