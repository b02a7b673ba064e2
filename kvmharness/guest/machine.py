"""A running guest: a VM with a layout's memory, a loaded ELF image, long-mode vCPUs on
their own host threads, and the ucall protocol between guest and host (guests/ABI.md).

Lifetime: ``Machine(...)`` builds everything; ``start()`` runs every vCPU on a thread;
``wait()`` returns when all reported DONE (or raises the first failure after stopping the
rest); ``close()`` stops threads and closes the VM before unmapping guest memory."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from kvmharness.guest import longmode, pagetables
from kvmharness.guest.build import guest_path
from kvmharness.guest.elf import GuestImage
from kvmharness.guest.errors import GuestCrash, GuestError, GuestImageError, GuestTimeout
from kvmharness.guest.layout import (
    GDT_GPA, HARNESS_END, IDT_GPA, IMAGE_GPA, LOW_RAM_END, MAX_VCPUS, PAGE_TABLES_GPA,
    STACK_SIZE, STACKS_GPA, TSS_GPA, Layout, LayoutError, Region,
)
from kvmharness.guest.memory import GuestMemory, check_host_memory
from kvmharness.guest.ucall import KH_UCALL_PORT, Assert, Done, GuestException, Print, Sync, decode_ucall
from kvmharness.kvm import (
    FailEntry, Hlt, InternalError, Io, Kvm, Mmio, Shutdown, Stopped, Vcpu, Vm,
)
from kvmharness.uapi.kvm import KVM_MEM_READONLY

SyncHandler = Callable[["Machine", int, tuple[int, ...]], None]
MmioHandler = Callable[["Machine", int, Mmio], "bytes | None"]
IoHandler = Callable[["Machine", int, Io], "bytes | None"]
PrintHandler = Callable[["Machine", int, str], None]

DEFAULT_WATCHDOG_S = 30.0
# Pages VMX keeps as private memslots (real-mode TSS: 3 pages; EPT identity map: 1 page),
# placed at the top of the harness's [16 MiB, 1 GiB) window so no scenario region meets them.
VMX_IDENTITY_MAP_ADDR = 0x3FFFB000
VMX_TSS_ADDR = 0x3FFFC000


class VcpuState(enum.Enum):
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclasses.dataclass
class _Runner:
    index: int
    vcpu: Vcpu
    thread: threading.Thread | None = None
    # Set by the vCPU thread as its very last act.  Used instead of Thread.is_alive():
    # CPython 3.11's Thread.join() interrupted by Ctrl-C marks a still-running thread as
    # stopped, and unmapping kvm_run under a running vCPU thread would crash the process.
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.thread is not None and not self.finished.is_set()
    state: VcpuState = VcpuState.READY
    error: BaseException | None = None
    last_activity: float = 0.0
    timed_out: str = ""  # why the host stopped it: the watchdog or the wait's deadline
    timeout_limit: float = 0.0
    in_guest: bool = False  # inside KVM_RUN, as opposed to in a host handler
    stack_top: int = 0
    arg: int = 0


def regs_dict(vcpu: Vcpu) -> dict[str, int]:
    regs = vcpu.get_regs()
    return {field[0]: getattr(regs, field[0]) for field in regs._fields_}


class Machine:
    """Build a VM running guest ``guest`` (a name under guests/, a path, or a GuestImage)."""

    def __init__(self, kvm: Kvm, guest: str | Path | GuestImage, layout: Layout = Layout(),
                 *, vcpus: int = 1, vcpu_args: Sequence[int] | None = None,
                 disable_quirks: int = 0, touched_bytes: int | None = None,
                 watchdog_s: float = DEFAULT_WATCHDOG_S,
                 on_sync: SyncHandler | None = None, on_print: PrintHandler | None = None,
                 on_mmio: MmioHandler | None = None, on_io: IoHandler | None = None) -> None:
        if not 1 <= vcpus <= MAX_VCPUS:
            raise LayoutError(f"vcpus={vcpus}: the guest runtime supports 1..{MAX_VCPUS}")
        self.kvm = kvm
        self.layout = layout
        self.watchdog_s = watchdog_s
        self.on_sync, self.on_print, self.on_mmio, self.on_io = on_sync, on_print, on_mmio, on_io
        self.syncs: list[tuple[int, tuple[int, ...]]] = []
        self.prints: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._runners: list[_Runner] = []
        self.memory: GuestMemory | None = None
        self.vm: Vm | None = None
        self.image = guest if isinstance(guest, GuestImage) else GuestImage.load(
            guest if isinstance(guest, Path) or "/" in str(guest) else guest_path(str(guest)))
        try:
            self._build(layout, vcpus, vcpu_args or [0] * vcpus, disable_quirks, touched_bytes)
        except BaseException:
            self.close()
            raise

    # --- construction ----------------------------------------------------------------------
    def _build(self, layout: Layout, nvcpus: int, vcpu_args: Sequence[int], disable_quirks: int,
               touched_bytes: int | None) -> None:
        cpuid = self.kvm.supported_cpuid()
        layout.validate(max_gpa=longmode.max_phys_addr(cpuid),
                        allow_1g=longmode.has_1g_pages(cpuid))
        mapped = list(layout.all_regions)
        pt_size = pagetables.plan_size(mapped)
        if PAGE_TABLES_GPA + pt_size > VMX_IDENTITY_MAP_ADDR:
            raise LayoutError(f"page tables need {pt_size:#x} bytes, more than the "
                              f"[{PAGE_TABLES_GPA:#x}-{VMX_IDENTITY_MAP_ADDR:#x}) reserved for "
                              "them: map big regions with 2 MiB pages")
        pt_region = Region("pagetables", PAGE_TABLES_GPA, pt_size, "ram")
        touched = (touched_bytes if touched_bytes is not None else layout.memslot_bytes())
        check_host_memory(touched + pt_size, f"guest {self.image.name!r} with {nvcpus} vCPU(s)")

        self.image.validate(
            [(IMAGE_GPA, LOW_RAM_END, "the image area")],
            [(0, HARNESS_END, "the harness's GDT/IDT/TSS and stacks")])
        self.memory = GuestMemory(mapped + [pt_region])
        self.vm = self.kvm.create_vm()
        if disable_quirks:
            self.vm.disable_quirks(disable_quirks)
        self.vm.set_tss_addr(VMX_TSS_ADDR)
        self.vm.set_identity_map_addr(VMX_IDENTITY_MAP_ADDR)
        self.slots: dict[str, int] = {}
        for region in self.memory.regions:
            self.plug(region.name)

        self.page_tables = pagetables.build(mapped, PAGE_TABLES_GPA, self.memory.write)
        self.image.write_into(self.memory.write)
        stubs = self.read_var("kh_exception_stubs", ctypes.c_uint64 * 256)
        self.memory.write(GDT_GPA, longmode.gdt_bytes())
        self.memory.write(IDT_GPA, longmode.idt_bytes(stubs))
        self.memory.write(TSS_GPA, longmode.tss_bytes())
        self.write_var("kh_nr_vcpus", nvcpus, ctypes.c_uint32)

        for index in range(nvcpus):
            vcpu = self.vm.create_vcpu(index)
            stack_top = STACKS_GPA + (index + 1) * STACK_SIZE
            longmode.setup_long_mode(vcpu, longmode.per_vcpu_cpuid(cpuid, index),
                                     cr3=self.page_tables.cr3, entry=self.image.entry,
                                     stack_top=stack_top, args=(index, vcpu_args[index]))
            self._runners.append(_Runner(index, vcpu, stack_top=stack_top,
                                         arg=vcpu_args[index]))
        self.tsc_khz = self._runners[0].vcpu.get_tsc_khz()
        self.write_var("kh_tsc_khz", self.tsc_khz, ctypes.c_uint64)

    # --- memory, slots and variables ---------------------------------------------------------
    def region(self, name: str) -> Region:
        return self.layout.region(name)

    def plug(self, name: str) -> int:
        """Create the memslot for region ``name`` (read-only for ROM); returns the slot id."""
        region = next((r for r in self.memory.regions if r.name == name), None)  # type: ignore[union-attr]
        if region is None:
            raise LayoutError(f"region {name!r} has no memslot backing (an MMIO hole?)")
        backing = self.memory.backing[name]  # type: ignore[union-attr]
        flags = KVM_MEM_READONLY if region.kind == "rom" else 0
        slot = self.vm.add_memslot(region.gpa, region.size, backing.addr, flags,  # type: ignore[union-attr]
                                   slot=self.slots.get(name))
        self.slots[name] = slot.slot
        return slot.slot

    def unplug(self, name: str) -> None:
        """Delete region ``name``'s memslot (its memory is kept for a later ``plug``)."""
        self.vm.delete_memslot(self.slots[name])  # type: ignore[union-attr]

    def read(self, gpa: int, size: int) -> bytes:
        return self.memory.read(gpa, size)  # type: ignore[union-attr]

    def write(self, gpa: int, data: bytes) -> None:
        self.memory.write(gpa, data)  # type: ignore[union-attr]

    def _checked_symbol(self, name: str, ctype: Any) -> int:
        sym = self.image.symbol(name)
        if ctypes.sizeof(ctype) != sym.size:
            raise GuestImageError(f"{self.image.name}: symbol {name!r} is {sym.size} bytes but "
                                  f"{getattr(ctype, '__name__', ctype)} is "
                                  f"{ctypes.sizeof(ctype)} bytes")
        return sym.address

    def read_var(self, name: str, ctype: Any = ctypes.c_uint64) -> Any:
        """A guest global by name: scalars as int, arrays/structs as a ctypes copy."""
        addr = self._checked_symbol(name, ctype)
        value = ctype.from_buffer_copy(self.read(addr, ctypes.sizeof(ctype)))
        return value.value if hasattr(value, "value") else value

    def write_var(self, name: str, value: Any, ctype: Any = ctypes.c_uint64) -> None:
        addr = self._checked_symbol(name, ctype)
        obj = value if isinstance(value, (ctypes.Array, ctypes.Structure, ctypes.Union)) \
            else ctype(value)
        self.write(addr, bytes(obj))

    # --- running -------------------------------------------------------------------------------
    @property
    def vcpus(self) -> list[Vcpu]:
        return [r.vcpu for r in self._runners]

    def states(self) -> list[VcpuState]:
        return [r.state for r in self._runners]

    def start(self) -> None:
        for runner in self._runners:
            if runner.thread is not None:
                raise GuestError(f"vCPU {runner.index} was already started")
            runner.state = VcpuState.RUNNING
            runner.finished.clear()
            runner.last_activity = time.monotonic()
            runner.thread = threading.Thread(target=self._vcpu_thread, args=(runner,),
                                             name=f"kvmharness-vcpu{runner.index}", daemon=True)
            runner.thread.start()

    def reset(self) -> None:
        """Put every finished vCPU back at the image's entry, in the same VM and memory, so
        the guest can run again (iterations of a measurement reuse one VM)."""
        for r in self._runners:
            if r.running:
                raise GuestError(f"vCPU {r.index} is still running: stop() or wait() first")
            longmode.set_entry_regs(r.vcpu, entry=self.image.entry, stack_top=r.stack_top,
                                    args=(r.index, r.arg))
            r.vcpu.clear_stop()
            r.thread, r.state, r.error, r.timed_out = None, VcpuState.READY, None, ""
        self.write_var("kh_stop", 0)

    def run(self, timeout_s: float | None = None) -> None:
        """start() and wait()."""
        self.start()
        self.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until every vCPU is done.  A vCPU silent (no ucall, no exit) for
        ``watchdog_s`` is stopped and reported as GuestTimeout; ``timeout_s`` bounds the
        whole wait.  On the first failure every other vCPU is stopped, then it is raised."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                alive = [r for r in self._runners if r.running]
                if not alive or any(r.error is not None for r in self._runners):
                    break
                now = time.monotonic()
                for r in alive:
                    if r.timed_out:
                        continue
                    if r.in_guest and now - r.last_activity > self.watchdog_s:
                        r.timed_out = "no ucall or exit within the watchdog's limit"
                        r.timeout_limit = self.watchdog_s
                    elif deadline is not None and timeout_s is not None and now > deadline:
                        r.timed_out = "still running when wait()'s timeout ran out"
                        r.timeout_limit = timeout_s
                    else:
                        continue
                    r.vcpu.request_stop()
                alive[0].finished.wait(0.02)
        except BaseException:
            self.stop()
            raise
        failed = [r for r in self._runners if r.error is not None]
        if failed:
            self.stop()
            first = failed[0].error
            for other in failed[1:]:
                first.add_note(f"also vCPU {other.index}: {other.error}")  # type: ignore[union-attr]
            raise first  # type: ignore[misc]

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Kick every vCPU out of KVM_RUN and wait for its thread to finish."""
        for r in self._runners:
            if r.running:
                r.vcpu.request_stop()
        deadline = time.monotonic() + join_timeout_s
        for r in self._runners:
            if r.thread is None:
                continue
            while not r.finished.wait(0.05):
                if time.monotonic() > deadline:
                    raise GuestError(f"vCPU {r.index} thread did not stop within "
                                     f"{join_timeout_s} s")
                r.vcpu.request_stop()  # a kick that raced with the thread's start
            r.thread.join()

    def request_guest_stop(self) -> None:
        """Ask the guest to finish at its next check of ``kh_stop`` (cooperative)."""
        self.write_var("kh_stop", 1)

    def _vcpu_thread(self, runner: _Runner) -> None:
        # Ctrl-C must reach the main thread, not interrupt a vCPU's KVM_RUN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            runner.state = self._run_vcpu(runner)
        except BaseException as exc:
            runner.error = exc
            runner.state = VcpuState.FAILED
            for other in self._runners:  # fail fast: nobody waits on a dead peer's barrier
                if other is not runner:
                    other.vcpu.request_stop()
        finally:
            runner.finished.set()

    def _run_vcpu(self, runner: _Runner) -> VcpuState:
        vcpu, index = runner.vcpu, runner.index
        while True:
            # The watchdog times the guest only: time the host spends in a handler (a slot
            # operation in on_sync, say) is never charged to it.
            runner.last_activity = time.monotonic()
            runner.in_guest = True
            try:
                exit_ = vcpu.run()
            finally:
                runner.in_guest = False
            runner.last_activity = time.monotonic()
            if isinstance(exit_, Io):
                if exit_.port == KH_UCALL_PORT and exit_.is_out and exit_.size == 4:
                    call = decode_ucall(self.read, exit_.value)
                    if isinstance(call, Sync):
                        with self._lock:
                            self.syncs.append((index, call.values))
                        if self.on_sync is not None:
                            self.on_sync(self, index, call.values)
                    elif isinstance(call, Print):
                        with self._lock:
                            self.prints.append((index, call.text))
                        if self.on_print is not None:
                            self.on_print(self, index, call.text)
                    elif isinstance(call, Done):
                        return VcpuState.DONE
                    elif isinstance(call, (Assert, GuestException)):
                        raise call.error(index)
                    continue
                if self.on_io is not None:
                    reply = self.on_io(self, index, exit_)
                    if not exit_.is_out:
                        vcpu.complete_io_in(reply or bytes(exit_.size * exit_.count))
                    continue
                raise self._crash(runner, f"unexpected PIO {'OUT' if exit_.is_out else 'IN'} "
                                          f"port {exit_.port:#x} size {exit_.size}")
            if isinstance(exit_, Mmio):
                if self.on_mmio is None:
                    what = "write to" if exit_.is_write else "read of"
                    raise self._crash(runner, f"unexpected MMIO {what} {exit_.phys_addr:#x} "
                                              f"(len {exit_.len}): no memslot there")
                reply = self.on_mmio(self, index, exit_)
                if not exit_.is_write:
                    vcpu.complete_mmio_read(reply if reply is not None else bytes(exit_.len))
                continue
            if isinstance(exit_, Stopped):
                if runner.timed_out:
                    rip = regs_dict(vcpu)["rip"]
                    raise GuestTimeout(index, rip, runner.timeout_limit, runner.timed_out)
                return VcpuState.STOPPED
            if isinstance(exit_, Shutdown):
                raise self._crash(runner, "triple fault (KVM_EXIT_SHUTDOWN)")
            if isinstance(exit_, FailEntry):
                raise self._crash(runner, "KVM_EXIT_FAIL_ENTRY", f"hardware_entry_failure_reason="
                                  f"{exit_.hardware_entry_failure_reason:#x} cpu={exit_.cpu}")
            if isinstance(exit_, InternalError):
                raise self._crash(runner, f"KVM_EXIT_INTERNAL_ERROR ({exit_.suberror_name})",
                                  "data=" + ", ".join(f"{d:#x}" for d in exit_.data))
            if isinstance(exit_, Hlt):
                raise self._crash(runner, "HLT without a DONE ucall")
            raise self._crash(runner, f"unexpected exit {exit_.name}: {exit_}")

    def _crash(self, runner: _Runner, reason: str, detail: str = "") -> GuestCrash:
        try:
            regs: dict[str, int] | None = regs_dict(runner.vcpu)
            sregs = runner.vcpu.get_sregs()
            detail = (detail + " " if detail else "") + (
                f"cr0={sregs.cr0:#x} cr3={sregs.cr3:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x}")
        except Exception as exc:  # the VM may be dead: report what we have
            regs = None
            detail = f"{detail} (registers unavailable: {exc})"
        return GuestCrash(runner.index, reason, regs, detail)

    # --- results -------------------------------------------------------------------------------
    def tsc_to_ns(self, cycles: int) -> float:
        if not self.tsc_khz:
            raise GuestError("KVM_GET_TSC_KHZ returned 0: guest TSC deltas cannot be converted")
        return cycles * 1e6 / self.tsc_khz

    # --- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        # If a vCPU thread cannot be stopped, stop() raises and nothing is unmapped: a
        # leak is recoverable, a vCPU thread touching unmapped kvm_run is not.
        if self._runners:
            self.stop()
        try:
            if self.vm is not None:
                self.vm.close()
        finally:
            if self.memory is not None:
                self.memory.close()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
