"""A running guest: a VM with a layout's memory, a loaded ELF image, long-mode vCPUs on
their own host threads, and the ucall protocol between guest and host (guests/ABI.md).

Lifetime: ``Machine(...)`` builds everything (or, on any error, closes what it built and
raises); ``start()`` runs every vCPU on a thread; ``wait()`` returns when all reported DONE
(or raises the first failure, naming every vCPU that failed, after stopping the rest);
``close()`` stops threads and closes the VM before unmapping guest memory.

``Machine.foreign(kvm, path)`` runs a freestanding ELF that does not link the kvmharness
runtime: the harness supplies the IDT's stubs, and HLT ends the vCPU (ABI.md, "Foreign
guests")."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from kvmharness.guest import foreign, longmode, pagetables
from kvmharness.guest.build import guest_path
from kvmharness.guest.elf import GuestImage
from kvmharness.guest.errors import GuestCrash, GuestError, GuestImageError, GuestTimeout
from kvmharness.guest.layout import (
    EXCEPTION_STUBS_GPA,
    GDT_GPA,
    HARNESS_END,
    IDT_GPA,
    IMAGE_GPA,
    LOW_RAM_END,
    MAX_VCPUS,
    PAGE_TABLES_GPA,
    STACK_SIZE,
    STACKS_GPA,
    TSS_GPA,
    Layout,
    LayoutError,
    Region,
)
from kvmharness.guest.memory import GuestMemory, check_host_memory
from kvmharness.guest.ucall import (
    KH_UCALL_PORT,
    Assert,
    Done,
    GuestException,
    Print,
    Sync,
    decode_ucall,
)
from kvmharness.kvm import (
    FailEntry,
    Hlt,
    InternalError,
    Io,
    Kvm,
    Mmio,
    Shutdown,
    Stopped,
    SystemEvent,
    Vcpu,
    Vm,
)
from kvmharness.kvm.exits import Exit
from kvmharness.uapi.kvm import KVM_MEM_READONLY
from kvmharness.uapi.x86 import kvm_cpuid_entry2

SyncHandler = Callable[["Machine", int, tuple[int, ...]], None]
MmioHandler = Callable[["Machine", int, Mmio], "bytes | None"]
IoHandler = Callable[["Machine", int, Io], "bytes | None"]
PrintHandler = Callable[["Machine", int, str], None]
HltAction = Literal["done", "crash"]

# Layout is frozen: one shared default is safe.
DEFAULT_LAYOUT = Layout()

DEFAULT_WATCHDOG_S = 30.0
# After one vCPU fails, how long its peers may run on before they are stopped: long enough
# for a peer that faulted at the same moment to deliver its own report (every faulting vCPU
# is named), short enough that a peer spinning on a barrier is not waited for long.
PEER_REPORT_GRACE_S = 0.5
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
    cpu: int | None = None  # host CPU its thread is pinned to


def regs_dict(vcpu: Vcpu) -> dict[str, int]:
    regs = vcpu.get_regs()
    return {field[0]: getattr(regs, field[0]) for field in regs._fields_}


def _hex_list(values: Sequence[int]) -> str:
    return "data=" + ", ".join(f"{v:#x}" for v in values)


def _checked_cpus(vcpu_cpus: Sequence[int] | None) -> tuple[int, ...]:
    cpus = tuple(vcpu_cpus or ())
    ncpu = os.cpu_count() or 1
    for cpu in cpus:
        if not isinstance(cpu, int) or not 0 <= cpu < ncpu:
            raise ValueError(f"vcpu_cpus: CPU {cpu!r} is not a host CPU (0..{ncpu - 1})")
    return cpus


class Machine:
    """Build a VM running guest ``guest`` (a name under guests/, a path, or a GuestImage).

    ``vcpu_cpus``: pin vCPU thread i to host CPU ``vcpu_cpus[i % len(vcpu_cpus)]`` (empty or
    None: no pinning).  ``runtime=False`` (see ``foreign()``) runs an ELF without the
    kvmharness runtime.  ``hlt``: what a HLT exit means, "crash" (default for runtime guests,
    which end with a DONE ucall) or "done" (default for foreign guests)."""

    def __init__(self, kvm: Kvm, guest: str | Path | GuestImage, layout: Layout = DEFAULT_LAYOUT,
                 *, vcpus: int = 1, vcpu_args: Sequence[int] | None = None,
                 vcpu_cpus: Sequence[int] | None = None,
                 disable_quirks: int = 0, touched_bytes: int | None = None,
                 watchdog_s: float = DEFAULT_WATCHDOG_S, runtime: bool = True,
                 hlt: HltAction | None = None,
                 on_sync: SyncHandler | None = None, on_print: PrintHandler | None = None,
                 on_mmio: MmioHandler | None = None, on_io: IoHandler | None = None) -> None:
        if not 1 <= vcpus <= MAX_VCPUS:
            raise LayoutError(f"vcpus={vcpus}: the guest runtime supports 1..{MAX_VCPUS}")
        if hlt not in (None, "done", "crash"):
            raise ValueError(f"hlt={hlt!r}: must be 'done' or 'crash'")
        args = list(vcpu_args) if vcpu_args is not None else [0] * vcpus
        if len(args) != vcpus:
            raise ValueError(f"vcpu_args has {len(args)} values for {vcpus} vCPU(s)")
        self.vcpu_cpus = _checked_cpus(vcpu_cpus)
        self.kvm = kvm
        self.layout = layout
        self.runtime = runtime
        self.hlt: HltAction = hlt or ("crash" if runtime else "done")
        self.watchdog_s = watchdog_s
        self.on_sync, self.on_print, self.on_mmio, self.on_io = on_sync, on_print, on_mmio, on_io
        self.syncs: list[tuple[int, tuple[int, ...]]] = []
        self.prints: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._runners: list[_Runner] = []
        self.slots: dict[str, int] = {}
        self.image = guest if isinstance(guest, GuestImage) else GuestImage.load(
            self._guest_file(guest), require_symbols=runtime)

        cpuid = kvm.supported_cpuid()
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
        check_host_memory(touched + pt_size, f"guest {self.image.name!r} with {vcpus} vCPU(s)")
        self.image.validate(
            [(IMAGE_GPA, LOW_RAM_END, "the image area")],
            [(0, HARNESS_END, "the harness's GDT/IDT/TSS and stacks")])

        # Everything that holds a kernel or host resource is built in locals under one
        # ExitStack: on any error below, what was built so far is closed (VM before the
        # memory it maps) and no half-built Machine escapes.
        with contextlib.ExitStack() as stack:
            memory = GuestMemory(mapped + [pt_region])
            stack.callback(memory.close)
            vm = kvm.create_vm()
            stack.callback(vm.close)
            self.memory: GuestMemory = memory
            self.vm: Vm = vm
            self._build(cpuid, mapped, vcpus, args, disable_quirks)
            self._resources = stack.pop_all()

    @classmethod
    def foreign(cls, kvm: Kvm, guest: str | Path | GuestImage, layout: Layout = DEFAULT_LAYOUT,
                *, hlt: HltAction = "done", **kwargs: Any) -> Machine:
        """Run any freestanding x86-64 ELF (static ET_EXEC, loaded in [4 MiB, 16 MiB)) that
        does not use the kvmharness runtime: entered at e_entry in 64-bit mode with the
        harness's page tables, GDT and IDT (RDI = vCPU index, RSI = its vcpu_args value, RSP
        = a harness stack).  HLT ends the vCPU as ``hlt`` says ("done" or "crash"); a CPU
        exception raises GuestExceptionError with the registers, a triple fault GuestCrash;
        symbols stay readable with ``read_var`` after ``run()``.  ``kwargs`` as for
        ``Machine``."""
        image = guest if isinstance(guest, GuestImage) else Path(guest)  # a path, never a name
        return cls(kvm, image, layout, runtime=False, hlt=hlt, **kwargs)

    @staticmethod
    def _guest_file(guest: str | Path) -> Path:
        if isinstance(guest, Path) or "/" in guest or guest.endswith(".elf"):
            return Path(guest)
        return guest_path(guest)

    # --- construction ----------------------------------------------------------------------
    def _build(self, cpuid: list[kvm_cpuid_entry2], mapped: list[Region], nvcpus: int,
               vcpu_args: Sequence[int], disable_quirks: int) -> None:
        if disable_quirks:
            self.vm.disable_quirks(disable_quirks)
        self.vm.set_tss_addr(VMX_TSS_ADDR)
        self.vm.set_identity_map_addr(VMX_IDENTITY_MAP_ADDR)
        for region in self.memory.regions:
            self.plug(region.name)

        self.page_tables = pagetables.build(mapped, PAGE_TABLES_GPA, self.memory.write)
        self.image.write_into(self.memory.write)
        if self.runtime:
            stubs = list(self._runtime_symbol("kh_exception_stubs", ctypes.c_uint64 * 256))
        else:
            self.memory.write(EXCEPTION_STUBS_GPA, foreign.stubs_bytes())
            stubs = foreign.stub_addresses()
        self.memory.write(GDT_GPA, longmode.gdt_bytes())
        self.memory.write(IDT_GPA, longmode.idt_bytes(stubs))
        self.memory.write(TSS_GPA, longmode.tss_bytes())
        if self.runtime:
            self.write_var("kh_nr_vcpus", nvcpus, ctypes.c_uint32)

        for index in range(nvcpus):
            vcpu = self.vm.create_vcpu(index)
            stack_top = STACKS_GPA + (index + 1) * STACK_SIZE
            longmode.setup_long_mode(vcpu, longmode.per_vcpu_cpuid(cpuid, index),
                                     cr3=self.page_tables.cr3, entry=self.image.entry,
                                     stack_top=stack_top, args=(index, vcpu_args[index]))
            cpu = self.vcpu_cpus[index % len(self.vcpu_cpus)] if self.vcpu_cpus else None
            self._runners.append(_Runner(index, vcpu, stack_top=stack_top,
                                         arg=vcpu_args[index], cpu=cpu))
        self.tsc_khz = self._runners[0].vcpu.get_tsc_khz()
        if self.runtime:
            self.write_var("kh_tsc_khz", self.tsc_khz, ctypes.c_uint64)

    def _runtime_symbol(self, name: str, ctype: Any) -> Any:
        try:
            return self.read_var(name, ctype)
        except GuestImageError as exc:
            if name in self.image.symbols:
                raise
            raise GuestImageError(f"{exc}: {self.image.name} does not link the kvmharness "
                                  "runtime (guests/runtime); run it with Machine.foreign()"
                                  ) from None

    # --- memory, slots and variables ---------------------------------------------------------
    def region(self, name: str) -> Region:
        return self.layout.region(name)

    def _backed_region(self, name: str) -> Region:
        region = next((r for r in self.memory.regions if r.name == name), None)
        if region is None:
            raise LayoutError(f"region {name!r} has no memslot backing (an MMIO hole?); "
                              f"regions with memory: {[r.name for r in self.memory.regions]}")
        return region

    def plug(self, name: str) -> int:
        """Create the memslot for region ``name`` (read-only for ROM), with the slot id it
        had before if any (``self.slots[name]``); returns the nanoseconds spent in the
        KVM_SET_USER_MEMORY_REGION syscall."""
        region = self._backed_region(name)
        backing = self.memory.backing[name]
        flags = KVM_MEM_READONLY if region.kind == "rom" else 0
        slot = self.vm.add_memslot(region.gpa, region.size, backing.addr, flags,
                                   slot=self.slots.get(name))
        self.slots[name] = slot.slot
        return self.vm.last_memslot_ns

    def unplug(self, name: str) -> int:
        """Delete region ``name``'s memslot (its memory is kept for a later ``plug``);
        returns the nanoseconds spent in the syscall."""
        self._backed_region(name)
        return self.vm.delete_memslot(self.slots[name])

    def read(self, gpa: int, size: int) -> bytes:
        return self.memory.read(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        self.memory.write(gpa, data)

    def _checked_symbol(self, name: str, ctype: Any) -> int:
        return self.image.checked_address(name, ctypes.sizeof(ctype),
                                          getattr(ctype, "__name__", str(ctype)))

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
        if self.runtime:
            self.write_var("kh_stop", 0)

    def run(self, timeout_s: float | None = None) -> None:
        """start() and wait()."""
        self.start()
        self.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until every vCPU is done.  A vCPU silent (no ucall, no exit) for
        ``watchdog_s`` is stopped and reported as GuestTimeout; ``timeout_s`` bounds the
        whole wait.  On a failure the other vCPUs get PEER_REPORT_GRACE_S to report a
        failure of their own, are stopped, and the first failure (lowest vCPU index) is
        raised naming every other vCPU that failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                alive = [r for r in self._runners if r.running]
                # A failed vCPU's thread ends after its peers' grace (_stop_peers).
                if not alive or any(r.error is not None and r.finished.is_set()
                                    for r in self._runners):
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
                # sleep, not Event.wait(): a Ctrl-C raised just after wait() took the
                # Event's lock leaves it held, and stop() and the thread's set() deadlock.
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        failed = [(r.index, r.error) for r in self._runners if r.error is not None]
        if failed:
            self.stop()
            first = failed[0][1]
            for index, error in failed[1:]:
                if isinstance(first, GuestError):
                    first.add_peer_failure(index, error)
                else:
                    first.add_note(f"also vCPU {index}: {error}")  # type: ignore[attr-defined,unused-ignore]
            raise first

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Kick every vCPU out of KVM_RUN and wait for its thread to finish."""
        for r in self._runners:
            if r.running:
                r.vcpu.request_stop()
        deadline = time.monotonic() + join_timeout_s
        for r in self._runners:
            if r.thread is None:
                continue
            kicked = time.monotonic()
            while not r.finished.is_set():  # lock-free, unlike wait(): see wait()
                time.sleep(0.001)
                now = time.monotonic()
                if now > deadline:
                    raise GuestError(f"vCPU {r.index} thread did not stop within "
                                     f"{join_timeout_s} s")
                if now - kicked > 0.05:
                    r.vcpu.request_stop()  # a kick that raced with the thread's start
                    kicked = now
            r.thread.join()

    def request_guest_stop(self) -> None:
        """Ask the guest to finish at its next check of ``kh_stop`` (cooperative)."""
        self.write_var("kh_stop", 1)

    def _vcpu_thread(self, runner: _Runner) -> None:
        # Ctrl-C must reach the main thread, not interrupt a vCPU's KVM_RUN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            if runner.cpu is not None:
                self._pin(runner.index, runner.cpu)
            runner.state = self._run_vcpu(runner)
        except BaseException as exc:
            runner.error = exc
            runner.state = VcpuState.FAILED
            self._stop_peers(runner)
        finally:
            runner.finished.set()

    @staticmethod
    def _pin(index: int, cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # 0: this thread
        except OSError as exc:
            raise GuestError(f"vCPU {index}: cannot pin its thread to host CPU {cpu} "
                             f"(vcpu_cpus): {exc.strerror or exc}") from exc

    def _stop_peers(self, runner: _Runner) -> None:
        """Fail fast, so nobody waits on a dead peer's barrier; but first give a peer that
        faulted at the same moment a short grace to deliver its own report."""
        peers = [r for r in self._runners if r is not runner]
        grace_end = time.monotonic() + PEER_REPORT_GRACE_S
        for other in peers:
            if other.error is None:  # a failed peer is not waited for: it is waiting too
                other.finished.wait(max(0.0, grace_end - time.monotonic()))
        for other in peers:
            other.vcpu.request_stop()

    def _run_vcpu(self, runner: _Runner) -> VcpuState:
        vcpu = runner.vcpu
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
            state = self._dispatch(runner, exit_)
            if state is not None:
                return state

    def _dispatch(self, runner: _Runner, exit_: Exit) -> VcpuState | None:
        """One exit: None to enter the guest again, a final state, or raise its failure."""
        match exit_:
            case Io() as io if self._is_ucall(io):
                return self._ucall(runner, io)
            case Io() as io if self._is_stub_report(runner, io):
                raise self._stub_exception(runner)
            case Io() as io if self.on_io is not None:
                return self._io(runner, io)
            case Io() as io:
                raise self._crash(runner, f"unexpected PIO {'OUT' if io.is_out else 'IN'} "
                                          f"port {io.port:#x} size {io.size}")
            case Mmio() as mmio if self.on_mmio is not None:
                return self._mmio(runner, mmio)
            case Mmio() as mmio:
                what = "write to" if mmio.is_write else "read of"
                raise self._crash(runner, f"unexpected MMIO {what} {mmio.phys_addr:#x} "
                                          f"(len {mmio.len}): no memslot there")
            case Stopped() if runner.timed_out:
                raise GuestTimeout(runner.index, regs_dict(runner.vcpu)["rip"],
                                   runner.timeout_limit, runner.timed_out)
            case Stopped():
                return VcpuState.STOPPED
            case Hlt() if self.hlt == "done":
                return VcpuState.DONE
            case Hlt():
                raise self._crash(runner, "HLT without a DONE ucall" if self.runtime
                                  else "HLT (this machine treats HLT as a crash)")
            case Shutdown():
                raise self._crash(runner, "triple fault (KVM_EXIT_SHUTDOWN)")
            case FailEntry(hardware_entry_failure_reason=reason, cpu=cpu):
                raise self._crash(runner, "KVM_EXIT_FAIL_ENTRY",
                                  f"hardware_entry_failure_reason={reason:#x} cpu={cpu}")
            case InternalError() as err:
                raise self._crash(runner, f"KVM_EXIT_INTERNAL_ERROR ({err.suberror_name})",
                                  _hex_list(err.data))
            case SystemEvent() as event:
                raise self._crash(runner, f"KVM_EXIT_SYSTEM_EVENT ({event.type_name})",
                                  _hex_list(event.data))
            case _:  # Unknown, Exception_, Debug, MemoryFault: nothing here asks for them
                raise self._crash(runner, f"unexpected exit {exit_.name}: {exit_}")

    def _io(self, runner: _Runner, io: Io) -> VcpuState | None:
        reply = self.on_io(self, runner.index, io) if self.on_io is not None else None
        if not io.is_out:
            runner.vcpu.complete_io_in(reply or bytes(io.size * io.count))
        return None  # the guest goes on

    def _mmio(self, runner: _Runner, mmio: Mmio) -> VcpuState | None:
        reply = self.on_mmio(self, runner.index, mmio) if self.on_mmio is not None else None
        if not mmio.is_write:
            runner.vcpu.complete_mmio_read(reply if reply is not None else bytes(mmio.len))
        return None  # the guest goes on

    def _is_ucall(self, io: Io) -> bool:
        return self.runtime and io.port == KH_UCALL_PORT and io.is_out and io.size == 4

    def _ucall(self, runner: _Runner, io: Io) -> VcpuState | None:
        match decode_ucall(self.read, io.value):
            case Sync(values):
                with self._lock:
                    self.syncs.append((runner.index, values))
                if self.on_sync is not None:
                    self.on_sync(self, runner.index, values)
            case Print(text):
                with self._lock:
                    self.prints.append((runner.index, text))
                if self.on_print is not None:
                    self.on_print(self, runner.index, text)
            case Done():
                return VcpuState.DONE
            case Assert() | GuestException() as report:
                raise report.error(runner.index)
        return None

    def _is_stub_report(self, runner: _Runner, io: Io) -> bool:
        return (not self.runtime and io.port == foreign.FOREIGN_EXCEPTION_PORT
                and foreign.is_stub_report(io.port, runner.vcpu.get_regs().rip))

    def _stub_exception(self, runner: _Runner) -> GuestError:
        regs = regs_dict(runner.vcpu)
        cr2 = runner.vcpu.get_sregs().cr2
        return foreign.decode_report(runner.index, regs, cr2, self.read).error(runner.index)

    def _crash(self, runner: _Runner, reason: str, detail: str = "") -> GuestCrash:
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
        self._resources.close()  # the VM, then the guest memory; a second close is a no-op

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
