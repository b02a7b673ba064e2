"""Anonymous host memory to back memslots: mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)
through libc, so the harness controls munmap (Python's mmap object refuses to close while
ctypes views exist) and can give THP advice per region."""

from __future__ import annotations

import ctypes

from kvmharness.kvm import syscall
from kvmharness.kvm.closeable import Closeable
from kvmharness.uapi.kvm import PAGE_SIZE

HUGETLB_PAGE = 2 << 20


class HostMemory(Closeable):
    """``size`` bytes of zeroed anonymous memory at ``addr``.  ``hugepages``: None leaves the
    system's THP policy, True asks for THP (MADV_HUGEPAGE), False forbids it.  ``hugetlb``
    takes 2 MiB pages from the hugetlbfs pool instead (they must be reserved beforehand)."""

    def __init__(self, size: int, *, hugepages: bool | None = None, hugetlb: bool = False,
                 name: str = "guest RAM"):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"{name}: size {size:#x} is not a positive multiple of 4 KiB")
        if hugetlb and size % HUGETLB_PAGE:
            raise ValueError(f"{name}: size {size:#x} is not a multiple of the 2 MiB hugetlb page")
        self.size = size
        self.name = name
        self.addr = 0
        flags = syscall.MAP_PRIVATE | syscall.MAP_ANONYMOUS
        flags |= (syscall.MAP_HUGETLB | syscall.MAP_HUGE_2MB) if hugetlb else syscall.MAP_NORESERVE
        try:
            self.addr = syscall.mmap(size, syscall.PROT_READ | syscall.PROT_WRITE, flags,
                                     what=name)
        except OSError as exc:
            if hugetlb:
                raise OSError(exc.errno, f"{exc.strerror}; hugetlb needs {size // HUGETLB_PAGE} "
                              "free 2 MiB pages (see /proc/sys/vm/nr_hugepages)") from None
            raise
        self.hugepages = hugepages
        self.hugetlb = hugetlb
        try:
            if hugetlb:
                pass  # THP advice means nothing for hugetlbfs pages
            elif hugepages is True:
                syscall.madvise(self.addr, size, syscall.MADV_HUGEPAGE)
            elif hugepages is False:
                syscall.madvise(self.addr, size, syscall.MADV_NOHUGEPAGE)
        except BaseException:
            self.close()
            raise

    def _check(self, offset: int, length: int) -> None:
        if self.addr == 0:
            raise ValueError(f"{self.name} is unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IndexError(f"{self.name}: [{offset:#x}+{length:#x}) outside {self.size:#x} bytes")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return ctypes.string_at(self.addr + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        ctypes.memmove(self.addr + offset, data, len(data))

    def fill(self, offset: int, length: int, byte: int = 0) -> None:
        self._check(offset, length)
        ctypes.memset(self.addr + offset, byte, length)

    def view(self) -> memoryview:
        """A writable memoryview; valid only until close()."""
        self._check(0, 0)
        return memoryview((ctypes.c_ubyte * self.size).from_address(self.addr)).cast("B")

    def discard(self) -> None:
        """Give the pages back to the host (MADV_DONTNEED: they read as zero again)."""
        syscall.madvise(self.addr, self.size, syscall.MADV_DONTNEED)

    @property
    def backing(self) -> str:
        """How the host backs this memory, for results: hugetlb, thp, nothp or default."""
        if self.hugetlb:
            return "hugetlb-2M"
        return {True: "thp", False: "nothp", None: "default"}[self.hugepages]

    def close(self) -> None:
        if self.addr:
            addr, self.addr = self.addr, 0
            syscall.munmap(addr, self.size)
