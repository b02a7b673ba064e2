"""One VM fd (KVM_CREATE_VM): memslots, capabilities and quirks, vCPUs, binary stats,
ioeventfd, coalesced MMIO, dirty log (api.rst section 4)."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import struct
import time
from typing import TYPE_CHECKING

from kvmharness.kvm.errors import KvmCapabilityError, KvmClosedError, KvmError
from kvmharness.kvm.fdobject import Children, ExtensionQueries
from kvmharness.kvm.memslots import Memslot, explain_failure
from kvmharness.kvm.stats import StatsReader
from kvmharness.kvm.syscall import ioctl_struct
from kvmharness.kvm.vcpu import Vcpu
from kvmharness.uapi import ioctls
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import (
    KVM_IOEVENTFD_FLAG_DATAMATCH,
    KVM_IOEVENTFD_FLAG_DEASSIGN,
    KVM_IOEVENTFD_FLAG_PIO,
    KVM_MEM_LOG_DIRTY_PAGES,
    kvm_coalesced_mmio_zone,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_ioeventfd,
    kvm_userspace_memory_region,
    kvm_userspace_memory_region2,
)
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL, KvmX86Quirk

if TYPE_CHECKING:
    from kvmharness.kvm.system import Kvm

# slot, flags, guest_phys_addr, memory_size, userspace_addr: the prefix that
# kvm_userspace_memory_region and kvm_userspace_memory_region2 share.
_pack_region = struct.Struct("=IIQQQ").pack_into
_ioctl_struct = ioctl_struct
_clock = time.perf_counter_ns  # CLOCK_MONOTONIC through the vDSO: the cheapest monotonic clock
_MEMSLOT_CACHE_MAX = 1024


def _bad_region(flags: int, guest_phys_addr: int, memory_size: int,
                userspace_addr: int) -> ValueError:
    for name, value, bits in (("flags", flags, 32), ("guest_phys_addr", guest_phys_addr, 64),
                              ("memory_size", memory_size, 64),
                              ("userspace_addr", userspace_addr, 64)):
        if not isinstance(value, int) or not 0 <= value < (1 << bits):
            return ValueError(f"memslot {name}={value!r} is outside 0..2**{bits}-1")
    return ValueError("memslot arguments do not fit struct kvm_userspace_memory_region")


@dataclasses.dataclass
class IoEventFd:
    """An assigned KVM_IOEVENTFD: guest writes matching it signal ``fd`` with no exit."""

    vm: Vm
    fd: int
    addr: int
    length: int
    pio: bool
    datamatch: int | None

    def count(self) -> int:
        """Signals since the last call (non-blocking read of the eventfd counter)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if not self.vm.closed:
                self.vm.ioctl(ioctls.KVM_IOEVENTFD, self.vm._ioeventfd_struct(
                    self, KVM_IOEVENTFD_FLAG_DEASSIGN), detail=self.describe())
        finally:
            os.close(self.fd)
            self.fd = -1
            if self in self.vm._ioeventfds:
                self.vm._ioeventfds.remove(self)

    def describe(self) -> str:
        space = "PIO port" if self.pio else "MMIO"
        match = f" datamatch={self.datamatch:#x}" if self.datamatch is not None else ""
        return f"ioeventfd {space} {self.addr:#x} len {self.length}{match}"


class Vm(ExtensionQueries):
    kind = "VM"

    def __init__(self, kvm: Kvm, fd: int, vm_type: int = 0) -> None:
        super().__init__(fd)
        self.kvm = kvm
        self.vm_type = vm_type
        self._vcpus: Children[Vcpu] = Children()
        self._vcpus_created = 0
        self.memslots: dict[int, Memslot] = {}
        self._regions: dict[tuple[int, int, int, int, int, int],
                            tuple[bytearray, Memslot | None]] = {}
        self.last_memslot_ns = 0
        self._ioeventfds: list[IoEventFd] = []
        self._stats: StatsReader | None = None
        try:
            self.has_memory2 = self.check_extension(KvmCap.KVM_CAP_USER_MEMORY2) > 0
            self.max_memslots = self.check_extension(KvmCap.KVM_CAP_NR_MEMSLOTS) or 32
        except BaseException:
            self.close()
            raise
        self._region_size = ctypes.sizeof(kvm_userspace_memory_region2 if self.has_memory2
                                          else kvm_userspace_memory_region)
        self._region_request = (ioctls.KVM_SET_USER_MEMORY_REGION2 if self.has_memory2
                                else ioctls.KVM_SET_USER_MEMORY_REGION)
        self._region_number = int(self._region_request)  # a plain int converts fastest

    def _vm_fd(self) -> int:
        return self.fd

    @property
    def vcpus(self) -> list[Vcpu]:
        """The vCPUs of this VM that are still open and referenced (weakly held)."""
        return self._vcpus.live()

    # --- capabilities and quirks ----------------------------------------------------------
    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        if len(args) > 4:
            raise ValueError("kvm_enable_cap takes at most 4 args")
        arg = kvm_enable_cap(cap=int(cap), flags=flags)
        for i, value in enumerate(args):
            arg.args[i] = value
        name = KvmCap(cap).name if cap in KvmCap._value2member_map_ else str(cap)
        self.ioctl(ioctls.KVM_ENABLE_CAP, arg, detail=f"{name} args={list(args)}")

    def supported_quirks(self) -> KvmX86Quirk:
        """Quirks this kernel lets userspace disable (KVM_CAP_DISABLE_QUIRKS2's mask)."""
        return KvmX86Quirk(self.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2)
                           & sum(KvmX86Quirk))

    def disable_quirks(self, mask: int) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2, mask); must precede vCPU creation for
        some quirks.  Raises KvmCapabilityError naming the quirks the kernel lacks."""
        missing = KvmX86Quirk(mask) & ~self.supported_quirks()
        if missing:
            raise KvmCapabilityError(f"{missing!r}",
                                     "this kernel cannot disable these quirks "
                                     "(KVM_CAP_DISABLE_QUIRKS2 mask lacks them)")
        self.enable_cap(KvmCap.KVM_CAP_DISABLE_QUIRKS2, mask)

    @property
    def slot_zap_all_supported(self) -> bool:
        return bool(self.supported_quirks() & KVM_X86_QUIRK_SLOT_ZAP_ALL)

    # --- memslots --------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int, as_id: int = 0) -> int:
        """KVM_SET_USER_MEMORY_REGION(2) — create, move, change flags, or delete (size 0).
        Keeps ``self.memslots`` in step with the kernel; errors name the slot and range.

        Returns the nanoseconds spent in the ioctl syscall alone (also left in
        ``last_memslot_ns``): the clock is read immediately around the call, and packing
        the argument and updating the memslot table happen outside that window."""
        key = (slot, guest_phys_addr, memory_size, userspace_addr, flags, as_id)
        prepared = self._regions.get(key)
        if prepared is None:
            prepared = self._prepare_region(key)
        arg, memslot = prepared
        ioctl, fd, request, clock = _ioctl_struct, self.fd, self._region_number, _clock
        t0 = clock()
        try:
            ioctl(fd, request, arg)
            t1 = clock()
        except (OSError, ValueError) as exc:  # ValueError: fd -1 (closed)
            raise self._memslot_error(exc, Memslot(*key)) from None
        ns = t1 - t0
        self.last_memslot_ns = ns
        if memslot is None:
            self.memslots.pop(slot, None)
        else:
            self.memslots[slot] = memslot
        return ns

    def _prepare_region(self, key: tuple[int, int, int, int, int, int]
                        ) -> tuple[bytearray, Memslot | None]:
        """The ioctl argument and table entry for one memslot request, checked and packed
        once: toggling or moving a slot between a few states then costs one dict lookup
        instead of a pack and a frozen dataclass (~1 us) per call.  Each request has its own
        bytearray (the cheapest buffer for fcntl.ioctl); memslot changes of a VM are
        serialised by the caller."""
        slot, guest_phys_addr, memory_size, userspace_addr, flags, as_id = key
        for name, value in (("memslot", slot), ("address space", as_id)):
            if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                raise ValueError(f"{name} {value!r} is outside 0..65535")
        arg = bytearray(self._region_size)
        try:
            _pack_region(arg, 0, (as_id << 16) | slot, flags, guest_phys_addr, memory_size,
                         userspace_addr)
        except struct.error:
            raise _bad_region(flags, guest_phys_addr, memory_size, userspace_addr) from None
        if len(self._regions) >= _MEMSLOT_CACHE_MAX:
            self._regions.clear()
        prepared = self._regions[key] = (arg, Memslot(*key) if memory_size else None)
        return prepared

    def _memslot_error(self, exc: OSError | ValueError, request: Memslot) -> KvmError:
        name = self._region_request.name
        if self.fd < 0:
            return KvmClosedError(self.kind, name)
        err = (exc.errno if isinstance(exc, OSError) else None) or errno.EIO
        error = self._typed_error(err, name)
        if type(error) is KvmError:
            return KvmError(err, name, explain_failure(err, request, self.memslots))
        return error

    def free_slot(self) -> int:
        for slot in range(self.max_memslots):
            if slot not in self.memslots:
                return slot
        raise KvmError(errno.ENOSPC, self._region_request.name,
                       f"all {self.max_memslots} memslots are in use")

    def add_memslot(self, guest_phys_addr: int, memory_size: int, userspace_addr: int,
                    flags: int = 0, slot: int | None = None) -> Memslot:
        """Create a memslot (lowest free slot id unless ``slot`` is given); the syscall's
        nanoseconds are left in ``last_memslot_ns``."""
        if slot is None:
            slot = self.free_slot()
        elif slot in self.memslots:
            raise KvmError(errno.EEXIST, self._region_request.name,
                           f"slot {slot} already exists: {self.memslots[slot]}")
        self.set_user_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        return self.memslots[slot]

    def _no_such_slot(self, slot: int) -> KvmError:
        return KvmError(errno.ENOENT, self._region_request.name,
                        f"slot {slot} does not exist (have {sorted(self.memslots)})")

    def _existing(self, slot: int) -> Memslot:
        memslot = self.memslots.get(slot)
        if memslot is None:
            raise self._no_such_slot(slot)
        return memslot

    def delete_memslot(self, slot: int) -> int:
        """Delete a memslot; returns the ioctl syscall's nanoseconds (as
        ``set_user_memory_region``)."""
        old = self.memslots.get(slot)
        if old is None:
            raise self._no_such_slot(slot)
        return self.set_user_memory_region(slot, old.flags, old.guest_phys_addr, 0, 0, old.as_id)

    def move_memslot(self, slot: int, guest_phys_addr: int) -> Memslot:
        """Move a memslot to ``guest_phys_addr``; the syscall's nanoseconds are left in
        ``last_memslot_ns``."""
        old = self.memslots.get(slot)
        if old is None:
            raise self._no_such_slot(slot)
        self.set_user_memory_region(slot, old.flags, guest_phys_addr, old.memory_size,
                                    old.userspace_addr, old.as_id)
        return self.memslots[slot]

    def set_memslot_flags(self, slot: int, flags: int) -> Memslot:
        """Change flags (dirty logging on/off).  KVM rejects toggling KVM_MEM_READONLY.
        The syscall's nanoseconds are left in ``last_memslot_ns``."""
        old = self._existing(slot)
        self.set_user_memory_region(slot, flags, old.guest_phys_addr, old.memory_size,
                                    old.userspace_addr, old.as_id)
        return self.memslots[slot]

    def memslot_at(self, gpa: int) -> Memslot | None:
        for s in self.memslots.values():
            if s.contains(gpa):
                return s
        return None

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: one bit per page of the slot (and clears it, without manual
        protect).  The slot must have KVM_MEM_LOG_DIRTY_PAGES."""
        s = self._existing(slot)
        if not s.flags & KVM_MEM_LOG_DIRTY_PAGES:
            raise KvmError(errno.ENOENT, "KVM_GET_DIRTY_LOG",
                           f"{s} does not have KVM_MEM_LOG_DIRTY_PAGES")
        nbytes = ((s.npages + 63) // 64) * 8
        bitmap = ctypes.create_string_buffer(nbytes)
        log = kvm_dirty_log(slot=(s.as_id << 16) | slot)
        log.dirty_bitmap = ctypes.addressof(bitmap)
        self.ioctl(ioctls.KVM_GET_DIRTY_LOG, log, detail=str(s))
        return bitmap.raw

    # --- x86 VM setup ------------------------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: 3 pages VMX needs for real-mode emulation (below 4 GiB, unused)."""
        self.ioctl(ioctls.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page VMX uses for the EPT identity map."""
        value = ctypes.c_uint64(addr)
        self.ioctl(ioctls.KVM_SET_IDENTITY_MAP_ADDR, value)

    def create_irqchip(self) -> None:
        self.ioctl(ioctls.KVM_CREATE_IRQCHIP)

    # --- vCPUs -------------------------------------------------------------------------------
    def create_vcpu(self, index: int | None = None) -> Vcpu:
        if index is None:
            index = self._vcpus_created
        fd = self.ioctl(ioctls.KVM_CREATE_VCPU, index, detail=f"vCPU id {index}")
        self._vcpus_created += 1
        vcpu = Vcpu(self, fd, index, self.kvm.vcpu_mmap_size)
        self._vcpus.add(vcpu)
        return vcpu

    # --- stats -------------------------------------------------------------------------------
    def stats(self) -> StatsReader:
        if self._stats is None:
            self._stats = StatsReader(self.ioctl(ioctls.KVM_GET_STATS_FD))
        return self._stats

    # --- ioeventfd and coalesced MMIO ---------------------------------------------------------
    def _ioeventfd_struct(self, ev: IoEventFd, extra_flags: int = 0) -> kvm_ioeventfd:
        flags = extra_flags
        if ev.pio:
            flags |= KVM_IOEVENTFD_FLAG_PIO
        if ev.datamatch is not None:
            flags |= KVM_IOEVENTFD_FLAG_DATAMATCH
        return kvm_ioeventfd(datamatch=ev.datamatch or 0, addr=ev.addr, len=ev.length,
                             fd=ev.fd, flags=flags)

    def add_ioeventfd(self, addr: int, length: int, *, pio: bool = False,
                      datamatch: int | None = None) -> IoEventFd:
        """KVM_IOEVENTFD: guest writes to ``addr`` (MMIO GPA or PIO port) of ``length`` bytes
        (0 = any length, MMIO only) signal an eventfd instead of exiting to userspace."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ev = IoEventFd(self, fd, addr, length, pio, datamatch)
        try:
            self.ioctl(ioctls.KVM_IOEVENTFD, self._ioeventfd_struct(ev), detail=ev.describe())
        except BaseException:
            os.close(fd)
            raise
        self._ioeventfds.append(ev)
        return ev

    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to the zone are queued in the ring, no exit."""
        zone = kvm_coalesced_mmio_zone(addr=addr, size=size)
        zone.pio = int(pio)
        self.ioctl(ioctls.KVM_REGISTER_COALESCED_MMIO, zone,
                   detail=f"zone {addr:#x}+{size:#x}{' (PIO)' if pio else ''}")

    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        zone = kvm_coalesced_mmio_zone(addr=addr, size=size)
        zone.pio = int(pio)
        self.ioctl(ioctls.KVM_UNREGISTER_COALESCED_MMIO, zone,
                   detail=f"zone {addr:#x}+{size:#x}")

    def read_coalesced_mmio(self) -> list[tuple[int, int, bytes]]:
        """Drain the ring (mapped through any vCPU; needs one)."""
        if not self.vcpus:
            raise KvmError(errno.ENODEV, "KVM_REGISTER_COALESCED_MMIO",
                           "the ring is mapped through a vCPU fd: create a vCPU first")
        return self.vcpus[0].read_coalesced_mmio()

    # --- lifetime ------------------------------------------------------------------------------
    def _close_children(self) -> None:
        errors: list[BaseException] = []
        for vcpu in self._vcpus.live():
            try:
                vcpu.close()
            except BaseException as exc:  # keep closing the rest; report the first
                errors.append(exc)
        self._vcpus.clear()
        for ev in list(self._ioeventfds):
            try:
                os.close(ev.fd)  # the VM's own teardown deassigns
            except OSError as exc:
                errors.append(exc)
            ev.fd = -1
        self._ioeventfds.clear()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        self.kvm._vms.discard(self)
        if errors:
            raise errors[0]
