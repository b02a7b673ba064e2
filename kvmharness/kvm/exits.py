"""Typed vCPU exits: what KVM_RUN returned, as frozen dataclasses with names, not numbers."""

from __future__ import annotations

import ctypes
import dataclasses
import struct
from typing import Any

from kvmharness.uapi.kvm import (
    KVM_EXIT_IO_OUT,
    KVM_INTERNAL_ERROR_DELIVERY_EV,
    KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
    KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SEV_TERM,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_SYSTEM_EVENT_SUSPEND,
    KVM_SYSTEM_EVENT_WAKEUP,
    KvmExitReason,
    kvm_run,
)


class Exit:
    """Base of all exits; ``name`` is the kernel's KVM_EXIT_* name."""

    name = "KVM_EXIT_UNKNOWN"


@dataclasses.dataclass(frozen=True)
class Io(Exit):
    """KVM_EXIT_IO.  For OUT, ``data`` holds size*count bytes; for IN, answer with
    ``Vcpu.complete_io_in(data)`` before the next run."""

    name = "KVM_EXIT_IO"
    is_out: bool
    port: int
    size: int
    count: int
    data: bytes

    @property
    def value(self) -> int:
        """The first element as an integer (OUT only)."""
        return int.from_bytes(self.data[: self.size], "little")


@dataclasses.dataclass(frozen=True)
class Mmio(Exit):
    """KVM_EXIT_MMIO: an access to a GPA with no memslot, or a write to a read-only slot.
    Answer reads with ``Vcpu.complete_mmio_read(data)``."""

    name = "KVM_EXIT_MMIO"
    phys_addr: int
    len: int
    is_write: bool
    data: bytes

    @property
    def value(self) -> int:
        return int.from_bytes(self.data[: self.len], "little")


@dataclasses.dataclass(frozen=True)
class Hlt(Exit):
    name = "KVM_EXIT_HLT"


@dataclasses.dataclass(frozen=True)
class Shutdown(Exit):
    """Triple fault (or another shutdown condition) in the guest."""

    name = "KVM_EXIT_SHUTDOWN"


@dataclasses.dataclass(frozen=True)
class FailEntry(Exit):
    name = "KVM_EXIT_FAIL_ENTRY"
    hardware_entry_failure_reason: int
    cpu: int


_INTERNAL_SUBERRORS = {
    KVM_INTERNAL_ERROR_EMULATION: "KVM_INTERNAL_ERROR_EMULATION",
    KVM_INTERNAL_ERROR_SIMUL_EX: "KVM_INTERNAL_ERROR_SIMUL_EX",
    KVM_INTERNAL_ERROR_DELIVERY_EV: "KVM_INTERNAL_ERROR_DELIVERY_EV",
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
}


@dataclasses.dataclass(frozen=True)
class InternalError(Exit):
    name = "KVM_EXIT_INTERNAL_ERROR"
    suberror: int
    data: tuple[int, ...]

    @property
    def suberror_name(self) -> str:
        return _INTERNAL_SUBERRORS.get(self.suberror, f"suberror {self.suberror}")


_SYSTEM_EVENTS = {
    KVM_SYSTEM_EVENT_SHUTDOWN: "KVM_SYSTEM_EVENT_SHUTDOWN",
    KVM_SYSTEM_EVENT_RESET: "KVM_SYSTEM_EVENT_RESET",
    KVM_SYSTEM_EVENT_CRASH: "KVM_SYSTEM_EVENT_CRASH",
    KVM_SYSTEM_EVENT_WAKEUP: "KVM_SYSTEM_EVENT_WAKEUP",
    KVM_SYSTEM_EVENT_SUSPEND: "KVM_SYSTEM_EVENT_SUSPEND",
    KVM_SYSTEM_EVENT_SEV_TERM: "KVM_SYSTEM_EVENT_SEV_TERM",
}


@dataclasses.dataclass(frozen=True)
class SystemEvent(Exit):
    name = "KVM_EXIT_SYSTEM_EVENT"
    type: int
    data: tuple[int, ...]

    @property
    def type_name(self) -> str:
        return _SYSTEM_EVENTS.get(self.type, f"type {self.type}")


@dataclasses.dataclass(frozen=True)
class Exception_(Exit):
    name = "KVM_EXIT_EXCEPTION"
    exception: int
    error_code: int


@dataclasses.dataclass(frozen=True)
class Debug(Exit):
    name = "KVM_EXIT_DEBUG"
    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclasses.dataclass(frozen=True)
class MemoryFault(Exit):
    name = "KVM_EXIT_MEMORY_FAULT"
    flags: int
    gpa: int
    size: int


@dataclasses.dataclass(frozen=True)
class Stopped(Exit):
    """Not a kernel exit: KVM_RUN was interrupted because ``Vcpu.request_stop()`` was called."""

    name = "STOPPED"


@dataclasses.dataclass(frozen=True)
class Unknown(Exit):
    """Any exit this harness does not decode; ``reason`` is the raw exit_reason."""

    reason: int
    hardware_exit_reason: int

    @property
    def name(self) -> str:  # type: ignore[override]
        try:
            return KvmExitReason(self.reason).name
        except ValueError:
            return f"KVM_EXIT_{self.reason}"


_HLT = Hlt()
_SHUTDOWN = Shutdown()


_STOPPED = Stopped()
# exit_reason at offset 8, then the exit union at 32 read as struct kvm_run.io
# {direction, size, port, count, data_offset}; as .mmio {phys_addr, data[8], len, is_write}.
_unpack_head = struct.Struct("=I20xBBHIQ").unpack_from
_unpack_mmio = struct.Struct("=Q8sIB").unpack_from
_EXIT_IO = int(KvmExitReason.KVM_EXIT_IO)
_EXIT_MMIO = int(KvmExitReason.KVM_EXIT_MMIO)
_CACHE_MAX = 1024


class ExitDecoder:
    """Decodes one vCPU's kvm_run after KVM_RUN.  IO and MMIO exits, the ones a guest loop
    makes by the thousand, take a fast path: one ``struct`` unpack of the mmap'd bytes
    instead of several ctypes field reads, and the typed exit is reused when the same exit
    repeats (exits are frozen, so sharing one is safe) instead of building a dataclass
    (~1 us) each time.  Everything else goes through ``decode_exit``."""

    def __init__(self, run_addr: int, size: int) -> None:
        # Any: a c_char array's slice is bytes, which ctypes' stubs do not know.
        self._bytes: Any = (ctypes.c_char * size).from_address(run_addr)
        self._run = kvm_run.from_address(run_addr)
        self._addr = run_addr
        self._io: dict[tuple[int, int, int, int, bytes], Io] = {}
        self._mmio: dict[tuple[int, int, int, bytes], Mmio] = {}

    def decode(self) -> Exit:
        raw = self._bytes
        reason, direction, size, port, count, data_offset = _unpack_head(raw, 8)
        if reason == _EXIT_IO:
            # A c_char array slice is bytes: the OUT data straight from the mmap.
            data = raw[data_offset:data_offset + size * count] \
                if direction == KVM_EXIT_IO_OUT else b""
            key = (direction, port, size, count, data)
            io = self._io.get(key)
            if io is None:
                io = Io(direction == KVM_EXIT_IO_OUT, port, size, count, data)
                if len(self._io) >= _CACHE_MAX:
                    self._io.clear()
                self._io[key] = io
            return io
        if reason == _EXIT_MMIO:
            phys_addr, data8, length, is_write = _unpack_mmio(raw, 32)
            mkey = (phys_addr, length, is_write, data8[:length])
            mmio = self._mmio.get(mkey)
            if mmio is None:
                mmio = Mmio(phys_addr, length, bool(is_write), data8[:length])
                if len(self._mmio) >= _CACHE_MAX:
                    self._mmio.clear()
                self._mmio[mkey] = mmio
            return mmio
        return decode_exit(self._run, self._addr)


def decode_exit(run: kvm_run, run_addr: int) -> Exit:
    """Build the typed exit from the mmap'd kvm_run at ``run_addr``."""
    reason = run.exit_reason
    if reason == KvmExitReason.KVM_EXIT_IO:
        io = run.io
        size = io.size * io.count
        is_out = io.direction == KVM_EXIT_IO_OUT
        data = ctypes.string_at(run_addr + io.data_offset, size) if is_out else b""
        return Io(is_out, io.port, io.size, io.count, data)
    if reason == KvmExitReason.KVM_EXIT_MMIO:
        m = run.mmio
        return Mmio(m.phys_addr, m.len, bool(m.is_write), bytes(m.data)[: m.len])
    if reason == KvmExitReason.KVM_EXIT_HLT:
        return _HLT
    if reason == KvmExitReason.KVM_EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == KvmExitReason.KVM_EXIT_FAIL_ENTRY:
        f = run.fail_entry
        return FailEntry(f.hardware_entry_failure_reason, f.cpu)
    if reason == KvmExitReason.KVM_EXIT_INTERNAL_ERROR:
        i = run.internal
        return InternalError(i.suberror, tuple(i.data[: min(i.ndata, 16)]))
    if reason == KvmExitReason.KVM_EXIT_SYSTEM_EVENT:
        e = run.system_event
        return SystemEvent(e.type, tuple(e.data[: min(e.ndata, 16)]))
    if reason == KvmExitReason.KVM_EXIT_EXCEPTION:
        return Exception_(run.ex.exception, run.ex.error_code)
    if reason == KvmExitReason.KVM_EXIT_DEBUG:
        d = run.debug.arch
        return Debug(d.exception, d.pc, d.dr6, d.dr7)
    if reason == KvmExitReason.KVM_EXIT_MEMORY_FAULT:
        mf = run.memory_fault
        return MemoryFault(mf.flags, mf.gpa, mf.size)
    return Unknown(reason, run.hw.hardware_exit_reason)
