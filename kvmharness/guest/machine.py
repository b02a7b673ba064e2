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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmharness.guest import foreign, longmode, pagetables
from kvmharness.guest.build import guest_path
from kvmharness.guest.elf import GuestImage
from kvmharness.guest.errors import GuestError, GuestImageError
from kvmharness.guest.exit_dispatch import (
    ExitDispatcher,
    HltAction,
    IoHandler,
    MmioHandler,
    PrintHandler,
    SyncHandler,
    regs_dict,
)
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
from kvmharness.guest.vcpu_threads import (
    DEFAULT_WATCHDOG_S,
    PEER_REPORT_GRACE_S,
    VcpuRunner,
    VcpuState,
    VcpuThreads,
    checked_cpus,
)
from kvmharness.kvm import Kvm, Vcpu, Vm
from kvmharness.uapi.kvm import KVM_MEM_READONLY
from kvmharness.uapi.x86 import kvm_cpuid_entry2

__all__ = [
    "DEFAULT_LAYOUT",
    "DEFAULT_WATCHDOG_S",
    "PEER_REPORT_GRACE_S",
    "VMX_IDENTITY_MAP_ADDR",
    "VMX_TSS_ADDR",
    "HltAction",
    "IoHandler",
    "Machine",
    "MmioHandler",
    "PrintHandler",
    "SyncHandler",
    "VcpuState",
    "regs_dict",
]

# Layout is frozen: one shared default is safe.
DEFAULT_LAYOUT = Layout()

# Pages VMX keeps as private memslots (real-mode TSS: 3 pages; EPT identity map: 1 page),
# placed at the top of the harness's [16 MiB, 1 GiB) window so no scenario region meets them.
VMX_IDENTITY_MAP_ADDR = 0x3FFFB000
VMX_TSS_ADDR = 0x3FFFC000


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
        self.vcpu_cpus = checked_cpus(vcpu_cpus)
        self.kvm = kvm
        self.layout = layout
        self.runtime = runtime
        self.hlt: HltAction = hlt or ("crash" if runtime else "done")
        self.exits = ExitDispatcher(self, self.read, runtime=runtime, hlt=self.hlt)
        self.exits.on_sync, self.exits.on_print = on_sync, on_print
        self.exits.on_mmio, self.exits.on_io = on_mmio, on_io
        self.threads = VcpuThreads(self.exits.dispatch, watchdog_s)
        self._runners: list[VcpuRunner] = self.threads.runners
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
            self._runners.append(VcpuRunner(index, vcpu, stack_top=stack_top,
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

    # --- running (vCPU threads: guest/vcpu_threads.py; exits: guest/exit_dispatch.py) ---
    @property
    def vcpus(self) -> list[Vcpu]:
        return [r.vcpu for r in self._runners]

    @property
    def watchdog_s(self) -> float:
        return self.threads.watchdog_s

    @property
    def syncs(self) -> list[tuple[int, tuple[int, ...]]]:
        """Every SYNC ucall so far: (vCPU index, values)."""
        return self.exits.syncs

    @property
    def prints(self) -> list[tuple[int, str]]:
        """Every PRINT ucall so far: (vCPU index, text)."""
        return self.exits.prints

    def states(self) -> list[VcpuState]:
        return [r.state for r in self._runners]

    def start(self) -> None:
        self.threads.start()

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
        """Wait until every vCPU is done (VcpuThreads.wait: the watchdog, ``timeout_s``
        for the whole wait, and the first failure raised naming every vCPU that failed).
        It returns up to a poll interval late: time a run with ``run_span_ns()``."""
        self.threads.wait(timeout_s)

    def run_span_ns(self) -> tuple[int, int]:
        """(first vCPU's entry into the guest, last vCPU's finishing exit) of the last run,
        perf_counter_ns, each stamped on the vCPU's own thread."""
        return self.threads.span_ns()

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Kick every vCPU out of KVM_RUN and wait for its thread to finish."""
        self.threads.stop(join_timeout_s)

    def note_guest_progress(self) -> None:
        """The host saw the guest make progress without an exit (a counter it stores in
        guest memory moved): restart the watchdog's clock for every vCPU in the guest."""
        self.threads.note_progress()

    def request_guest_stop(self) -> None:
        """Ask the guest to finish at its next check of ``kh_stop`` (cooperative)."""
        self.write_var("kh_stop", 1)

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
