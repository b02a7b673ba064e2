"""What each KVM exit of a Machine's vCPU means: a ucall (guests/ABI.md), a foreign guest's
exception-stub report, PIO or MMIO for the scenario's handlers, a HLT, or a crash to report
with the registers.  ``ExitDispatcher.dispatch`` runs on the vCPU's thread and returns None
(enter the guest again), a final state, or raises the vCPU's failure."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from kvmharness.guest import foreign, longmode
from kvmharness.guest.errors import GuestCrash, GuestError, GuestTimeout
from kvmharness.guest.ucall import (
    KH_UCALL_PORT,
    Assert,
    Done,
    GuestException,
    Print,
    Sync,
    decode_ucall,
)
from kvmharness.guest.vcpu_threads import VcpuRunner, VcpuState
from kvmharness.kvm import (
    FailEntry,
    Hlt,
    InternalError,
    Io,
    Mmio,
    Shutdown,
    Stopped,
    SystemEvent,
    Vcpu,
)
from kvmharness.kvm.exits import Exit

if TYPE_CHECKING:
    from kvmharness.guest.machine import Machine

SyncHandler = Callable[["Machine", int, tuple[int, ...]], None]
MmioHandler = Callable[["Machine", int, Mmio], "bytes | None"]
IoHandler = Callable[["Machine", int, Io], "bytes | None"]
PrintHandler = Callable[["Machine", int, str], None]
HltAction = Literal["done", "crash"]
ReadFn = Callable[[int, int], bytes]


def regs_dict(vcpu: Vcpu) -> dict[str, int]:
    regs = vcpu.get_regs()
    return {field[0]: getattr(regs, field[0]) for field in regs._fields_}


def _hex_list(values: Sequence[int]) -> str:
    return "data=" + ", ".join(f"{v:#x}" for v in values)


class ExitDispatcher:
    """The exit handling of one Machine (``owner``, handed to the scenario's handlers);
    keeps every SYNC and PRINT ucall in ``syncs``/``prints`` (vCPU index, payload)."""

    def __init__(self, owner: Machine, read: ReadFn, *, runtime: bool, hlt: HltAction) -> None:
        self.owner = owner
        self.read = read
        self.runtime = runtime
        self.hlt: HltAction = hlt
        self.on_sync: SyncHandler | None = None
        self.on_print: PrintHandler | None = None
        self.on_mmio: MmioHandler | None = None
        self.on_io: IoHandler | None = None
        self.syncs: list[tuple[int, tuple[int, ...]]] = []
        self.prints: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def dispatch(self, runner: VcpuRunner, exit_: Exit) -> VcpuState | None:
        """One exit: None to enter the guest again, a final state, or raise its failure."""
        match exit_:
            case Io() as io:
                return self._pio(runner, io)
            case Mmio() as mmio if self.on_mmio is not None:
                return self._mmio(runner, mmio)
            case Mmio() as mmio:
                what = "write to" if mmio.is_write else "read of"
                raise self.crash(runner, f"unexpected MMIO {what} {mmio.phys_addr:#x} "
                                         f"(len {mmio.len}): no memslot there")
            case Stopped() if runner.timed_out:
                raise GuestTimeout(runner.index, regs_dict(runner.vcpu)["rip"],
                                   runner.timeout_limit, runner.timed_out)
            case Stopped():
                return VcpuState.STOPPED
            case Hlt() if self.hlt == "done":
                return VcpuState.DONE
            case Hlt():
                raise self.crash(runner, "HLT without a DONE ucall" if self.runtime
                                 else "HLT (this machine treats HLT as a crash)")
        raise self._fatal(runner, exit_)

    def _pio(self, runner: VcpuRunner, io: Io) -> VcpuState | None:
        if self._is_ucall(io):
            return self._ucall(runner, io)
        if self._is_stub_report(runner, io):
            raise self._stub_exception(runner)
        if self.on_io is not None:
            return self._io(runner, io)
        raise self.crash(runner, f"unexpected PIO {'OUT' if io.is_out else 'IN'} "
                                 f"port {io.port:#x} size {io.size}")

    def _fatal(self, runner: VcpuRunner, exit_: Exit) -> GuestCrash:
        match exit_:
            case Shutdown():
                return self.crash(runner, "triple fault (KVM_EXIT_SHUTDOWN)")
            case FailEntry(hardware_entry_failure_reason=reason, cpu=cpu):
                return self.crash(runner, "KVM_EXIT_FAIL_ENTRY",
                                  f"hardware_entry_failure_reason={reason:#x} cpu={cpu}")
            case InternalError() as err:
                return self.crash(runner, f"KVM_EXIT_INTERNAL_ERROR ({err.suberror_name})",
                                  _hex_list(err.data))
            case SystemEvent() as event:
                return self.crash(runner, f"KVM_EXIT_SYSTEM_EVENT ({event.type_name})",
                                  _hex_list(event.data))
        # Unknown, Exception_, Debug, MemoryFault: nothing here asks for them.
        return self.crash(runner, f"unexpected exit {exit_.name}: {exit_}")

    def _io(self, runner: VcpuRunner, io: Io) -> VcpuState | None:
        reply = self.on_io(self.owner, runner.index, io) if self.on_io is not None else None
        if not io.is_out:
            runner.vcpu.complete_io_in(reply or bytes(io.size * io.count))
        return None  # the guest goes on

    def _mmio(self, runner: VcpuRunner, mmio: Mmio) -> VcpuState | None:
        reply = (self.on_mmio(self.owner, runner.index, mmio) if self.on_mmio is not None
                 else None)
        if not mmio.is_write:
            runner.vcpu.complete_mmio_read(reply if reply is not None else bytes(mmio.len))
        return None  # the guest goes on

    def _is_ucall(self, io: Io) -> bool:
        return self.runtime and io.port == KH_UCALL_PORT and io.is_out and io.size == 4

    def _ucall(self, runner: VcpuRunner, io: Io) -> VcpuState | None:
        match decode_ucall(self.read, io.value):
            case Sync(values):
                with self._lock:
                    self.syncs.append((runner.index, values))
                if self.on_sync is not None:
                    self.on_sync(self.owner, runner.index, values)
            case Print(text):
                with self._lock:
                    self.prints.append((runner.index, text))
                if self.on_print is not None:
                    self.on_print(self.owner, runner.index, text)
            case Done():
                return VcpuState.DONE
            case Assert() | GuestException() as report:
                raise report.error(runner.index)
        return None

    def _is_stub_report(self, runner: VcpuRunner, io: Io) -> bool:
        return (not self.runtime and io.port == foreign.FOREIGN_EXCEPTION_PORT
                and foreign.is_stub_report(io.port, runner.vcpu.get_regs().rip))

    def _stub_exception(self, runner: VcpuRunner) -> GuestError:
        regs = regs_dict(runner.vcpu)
        cr2 = runner.vcpu.get_sregs().cr2
        return foreign.decode_report(runner.index, regs, cr2, self.read).error(runner.index)

    def crash(self, runner: VcpuRunner, reason: str, detail: str = "") -> GuestCrash:
        regs: dict[str, int] | None = None
        control: dict[str, int] | None = None
        try:
            regs = regs_dict(runner.vcpu)
            sregs = runner.vcpu.get_sregs()
            control = {"cr0": sregs.cr0, "cr2": sregs.cr2, "cr3": sregs.cr3,
                       "cr4": sregs.cr4, "efer": sregs.efer}
        except Exception as exc:  # the VM may be dead: report what we have
            detail = f"{detail} (registers unavailable: {exc})".strip()
        if control is not None and not control["cr0"] & longmode.CR0_PG:
            # The harness never turns paging off, so this is KVM's doing: AMD SVM re-inits
            # the vCPU on a shutdown intercept (the VMCB is undefined after one).
            detail = (f"{detail}; " if detail else "") + (
                "KVM reset the vCPU (paging is off): the registers below are its reset "
                "state, not the state that faulted")
        return GuestCrash(runner.index, reason, regs, detail, control)
