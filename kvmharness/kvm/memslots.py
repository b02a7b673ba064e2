"""The VM's table of memslots, and the error messages that name slots and GPA ranges."""

from __future__ import annotations

import dataclasses

from kvmharness.uapi.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, PAGE_SIZE


def describe_flags(flags: int) -> str:
    names = []
    if flags & KVM_MEM_LOG_DIRTY_PAGES:
        names.append("LOG_DIRTY_PAGES")
    if flags & KVM_MEM_READONLY:
        names.append("READONLY")
    rest = flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


@dataclasses.dataclass(frozen=True)
class Memslot:
    """One KVM memslot as this process last set it (``as_id`` 0 unless SMM)."""

    slot: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    flags: int = 0
    as_id: int = 0

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.memory_size

    @property
    def npages(self) -> int:
        return self.memory_size // PAGE_SIZE

    def overlaps(self, gpa: int, size: int) -> bool:
        return gpa < self.end and self.guest_phys_addr < gpa + size

    def contains(self, gpa: int) -> bool:
        return self.guest_phys_addr <= gpa < self.end

    def __str__(self) -> str:
        return (f"slot {self.slot} [{self.guest_phys_addr:#x}-{self.end:#x}) "
                f"flags={describe_flags(self.flags)}")


def explain_failure(errno_: int, request: Memslot, table: dict[int, Memslot]) -> str:
    """Why KVM probably refused ``request``: names the slot, its range and the culprit."""
    import errno as e

    what = f"{request}" if request.memory_size else f"deleting slot {request.slot}"
    if errno_ == e.EEXIST:
        others = [str(s) for s in table.values()
                  if s.slot != request.slot and s.as_id == request.as_id
                  and s.overlaps(request.guest_phys_addr, request.memory_size)]
        culprit = "; overlaps " + ", ".join(others) if others else ""
        return f"{what}{culprit}"
    if errno_ == e.EINVAL:
        problems = []
        for field, value in (("guest_phys_addr", request.guest_phys_addr),
                             ("memory_size", request.memory_size),
                             ("userspace_addr", request.userspace_addr)):
            if value % PAGE_SIZE:
                problems.append(f"{field}={value:#x} is not 4 KiB aligned")
        old = table.get(request.slot)
        if old is not None and request.memory_size and old.memory_size != request.memory_size:
            problems.append(f"slot {request.slot} exists with size {old.memory_size:#x}: "
                            "a slot's size cannot change (delete it first)")
        if old is not None and old.flags & KVM_MEM_READONLY != request.flags & KVM_MEM_READONLY:
            problems.append("KVM_MEM_READONLY cannot be toggled on an existing slot")
        return f"{what}" + (": " + "; ".join(problems) if problems else "")
    return what
