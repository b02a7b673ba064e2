"""Benchmark of the /dev/kvm layer's own cost: ``python -m kvmharness.bench.ioctl``.

Operations: a null ioctl (KVM_CHECK_EXTENSION), 1-page memslot create and delete, a
64 MiB memslot move with KVM_X86_QUIRK_SLOT_ZAP_ALL on (and off, if the kernel can turn
it off), and a PIO exit round trip (KVM_RUN of a real-mode guest looping on ``out``).

- Always: the binding against a raw ``fcntl.ioctl`` of the same struct (KVM_RUN: with the
  argument left out; the by-value null ioctl: libc's ioctl through argtype-free ctypes;
  each the cheapest raw call), in one process, alternated op by op on the same VM so host
  noise hits both alike.
  ``timed`` is what the binding itself reports: the syscall alone
  (``Vm.set_user_memory_region``'s return value, ``Vm.last_memslot_ns``,
  ``Vcpu.last_run_ns``).
- ``--peer``: side by side with a C program doing the same operations (built with gcc into
  ~/.cache/kvmharness), both up at once and taking turns in small batches; the ratio of the
  harness's timed value to C's says whether the harness measures what C would.

A benchmark, not a test: it prints medians in microseconds and asserts nothing."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from kvmharness.bench.ioctl_peer import CPeer, PeerBuildError, build_peer
from kvmharness.kvm import HostMemory, Io, Kvm, KvmError, Vcpu, Vm
from kvmharness.uapi import ioctls
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.kvm import kvm_userspace_memory_region, kvm_userspace_memory_region2
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

MiB = 1 << 20
PIO_LOOP = bytes([0xB0, 0x01, 0xE6, 0x10, 0xEB, 0xFC])  # mov al,1; loop: out 0x10,al; jmp loop
RAM_SIZE = 0x10000
PAGE_GPA = 1 << 32
BIG_GPA = 2 << 32
BIG_SIZE = 64 * MiB
PAGE_SLOT, BIG_SLOT = 1, 2
TSS_ADDR = 0xFFFBD000  # where QEMU puts it: 3 unused pages below 4 GiB
NULL_CAP = int(KvmCap.KVM_CAP_USER_MEMORY)

LABELS = {
    "null": "null ioctl",
    "create": "1-page slot create",
    "delete": "1-page slot delete",
    "move-all": "64 MiB move, zap all",
    "move-slot": "64 MiB move, zap slot",
    "pio": "PIO exit round trip",
}

_clock = time.perf_counter_ns


@dataclass
class Samples:
    """Per operation: the API call's wall time, the binding's own timed value (syscall
    only; empty where the binding reports none) and the raw ioctl's wall time, in ns.
    ``batches`` holds, per C/Python batch pair, (C, timed, API) batch medians."""

    api: list[int] = field(default_factory=list)
    timed: list[int] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    batches: list[tuple[float, float | None, float]] = field(default_factory=list)


def median_us(samples: list[int]) -> float | None:
    return statistics.median(samples) / 1000 if samples else None


def paired_added_us(s: Samples) -> float | None:
    """Median of binding minus raw over samples taken side by side: noise that hits both
    of a pair cancels, which a difference of two medians does not do."""
    pairs = [a - r for a, r in zip(s.api, s.raw)]
    return statistics.median(pairs) / 1000 if pairs else None


def batch_ratio(s: Samples, which: int) -> str:
    """Median over C/Python batch pairs of (harness batch median / C batch median)."""
    ratios = [value / b[0] for b in s.batches if (value := b[which]) is not None and b[0]]
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def realmode_vm(kvm: Kvm, *, zap_all: bool = True) -> tuple[Vm, Vcpu, HostMemory]:
    """A VM whose vCPU loops on ``out 0x10, al`` in real mode and has run 10 exits, so MMU
    roots exist for a memslot zap to act on.  The C peer builds the same one."""
    vm = kvm.create_vm()
    ram = HostMemory(RAM_SIZE, name="real-mode RAM")
    try:
        if not zap_all:
            vm.disable_quirks(KVM_X86_QUIRK_SLOT_ZAP_ALL)
        vm.set_tss_addr(TSS_ADDR)  # VMX without unrestricted guest emulates real mode with it
        ram.write(0x1000, PIO_LOOP)
        vm.add_memslot(0, RAM_SIZE, ram.addr)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid2(kvm.supported_cpuid())
        sregs = vcpu.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
            seg.base, seg.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = 0x1000, 0x2
        vcpu.set_regs(regs)
        for _ in range(10):
            exit_ = vcpu.run()
            if exit_.name != Io.name:
                raise RuntimeError(f"the PIO loop guest exited with {exit_.name}")
    except BaseException:
        vm.close()
        ram.close()
        raise
    return vm, vcpu, ram


def _raw_region(vm: Vm, slot: int, gpa: int, size: int, addr: int
                ) -> kvm_userspace_memory_region | kvm_userspace_memory_region2:
    kind = kvm_userspace_memory_region2 if vm.has_memory2 else kvm_userspace_memory_region
    return kind(slot=slot, guest_phys_addr=gpa, memory_size=size, userspace_addr=addr)


def _region_request(vm: Vm) -> int:
    return int(ioctls.KVM_SET_USER_MEMORY_REGION2 if vm.has_memory2
               else ioctls.KVM_SET_USER_MEMORY_REGION)


def _alternate(n: int, binding: Callable[[], None], raw: Callable[[], None]) -> None:
    """Binding and raw op by op, swapping which goes first every iteration."""
    for i in range(n):
        if i & 1:
            raw()
            binding()
        else:
            binding()
            raw()


# --- in-process: the binding against the raw call --------------------------------------------
# The null ioctl goes raw through libc's ioctl with no argtypes: fcntl.ioctl with an int
# argument first tries, and fails, to read it as a buffer twice (~1 us), which would flatter
# the binding.
_raw_by_value = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)["ioctl"]
_raw_by_value.restype = ctypes.c_int


def compare_null(kvm: Kvm, n: int) -> Samples:
    s = Samples()
    fd, request = kvm.fd, int(ioctls.KVM_CHECK_EXTENSION)

    def binding() -> None:
        t0 = _clock()
        kvm.check_extension(NULL_CAP)
        s.api.append(_clock() - t0)

    def raw() -> None:
        t0 = _clock()
        _raw_by_value(fd, request, NULL_CAP)
        s.raw.append(_clock() - t0)

    _alternate(n, binding, raw)
    return s


def compare_create_delete(vm: Vm, page: HostMemory, n: int) -> tuple[Samples, Samples]:
    create, delete = Samples(), Samples()
    fd, request = vm.fd, _region_request(vm)
    raw_create = _raw_region(vm, PAGE_SLOT, PAGE_GPA, 4096, page.addr)
    raw_delete = _raw_region(vm, PAGE_SLOT, PAGE_GPA, 0, 0)
    addr = page.addr

    def binding() -> None:
        t0 = _clock()
        ns_create = vm.set_user_memory_region(PAGE_SLOT, 0, PAGE_GPA, 4096, addr)
        t1 = _clock()
        ns_delete = vm.delete_memslot(PAGE_SLOT)
        t2 = _clock()
        create.api.append(t1 - t0)
        delete.api.append(t2 - t1)
        create.timed.append(ns_create)
        delete.timed.append(ns_delete)

    def raw() -> None:
        t0 = _clock()
        fcntl.ioctl(fd, request, raw_create)
        t1 = _clock()
        fcntl.ioctl(fd, request, raw_delete)
        t2 = _clock()
        create.raw.append(t1 - t0)
        delete.raw.append(t2 - t1)

    _alternate(n, binding, raw)
    return create, delete


def compare_move(vm: Vm, big: HostMemory, n: int) -> Samples:
    s = Samples()
    slot = vm.add_memslot(BIG_GPA, BIG_SIZE, big.addr, slot=BIG_SLOT).slot
    fd, request = vm.fd, _region_request(vm)
    raw_away = _raw_region(vm, slot, BIG_GPA + BIG_SIZE, BIG_SIZE, big.addr)
    raw_back = _raw_region(vm, slot, BIG_GPA, BIG_SIZE, big.addr)

    def binding() -> None:  # away and back: the slot table stays right for the raw pair
        for gpa in (BIG_GPA + BIG_SIZE, BIG_GPA):
            t0 = _clock()
            vm.move_memslot(slot, gpa)
            s.api.append(_clock() - t0)
            s.timed.append(vm.last_memslot_ns)

    def raw() -> None:
        for arg in (raw_away, raw_back):
            t0 = _clock()
            fcntl.ioctl(fd, request, arg)
            s.raw.append(_clock() - t0)

    _alternate(n, binding, raw)
    vm.delete_memslot(slot)
    return s


def compare_pio(vcpu: Vcpu, n: int) -> Samples:
    s = Samples()
    fd, request = vcpu.fd, int(ioctls.KVM_RUN)

    def binding() -> None:
        t0 = _clock()
        vcpu.run()
        s.api.append(_clock() - t0)
        s.timed.append(vcpu.last_run_ns)

    def raw() -> None:
        t0 = _clock()
        fcntl.ioctl(fd, request)  # argument left out: 0, without the buffer attempts
        s.raw.append(_clock() - t0)

    _alternate(n, binding, raw)
    return s


def in_process(kvm: Kvm, n: int, have_quirk: bool) -> dict[str, Samples]:
    out = {"null": compare_null(kvm, n)}
    vm, vcpu, ram = realmode_vm(kvm)
    with vm, ram, HostMemory(4096) as page, HostMemory(BIG_SIZE) as big:
        out["create"], out["delete"] = compare_create_delete(vm, page, n)
        out["move-all"] = compare_move(vm, big, n)
        out["pio"] = compare_pio(vcpu, n)
        vm.close()  # before the memory it maps is unmapped
    if have_quirk:
        vm, vcpu, ram = realmode_vm(kvm, zap_all=False)
        with vm, ram, vcpu, HostMemory(BIG_SIZE) as big:
            out["move-slot"] = compare_move(vm, big, n)
            vm.close()
    return {op: out[op] for op in LABELS if op in out}


# --- side by side with C ---------------------------------------------------------------------
class HarnessSide:
    """The C peer's VMs and operations through the harness API, kept up between batches:
    ``api`` is the call's wall time, ``timed`` the syscall time the binding reports."""

    def __init__(self, kvm: Kvm, have_quirk: bool) -> None:
        self.kvm = kvm
        self._stack = contextlib.ExitStack()
        try:
            self.page = self._stack.enter_context(HostMemory(4096))
            self.big = self._stack.enter_context(HostMemory(BIG_SIZE))
            self.vm, self.vcpu = self._machine(zap_all=True)
            # The zap-slot VM keeps its vCPU open, as the C peer does.
            self.slot_vm: Vm | None = None
            self.slot_vcpu: Vcpu | None = None
            if have_quirk:
                self.slot_vm, self.slot_vcpu = self._machine(zap_all=False)
        except BaseException:
            self._stack.close()
            raise
        self._away = {id(self.vm): False, id(self.slot_vm): False}

    def _machine(self, zap_all: bool) -> tuple[Vm, Vcpu]:
        vm, vcpu, ram = realmode_vm(self.kvm, zap_all=zap_all)
        self._stack.enter_context(ram)
        self._stack.callback(vm.close)  # runs before the memory it maps is unmapped
        vm.add_memslot(BIG_GPA, BIG_SIZE, self.big.addr, slot=BIG_SLOT)
        return vm, vcpu

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(op for op in LABELS if op != "move-slot" or self.slot_vm is not None)

    def batch(self, op: str, k: int) -> Samples:
        s, clock, vm = Samples(), _clock, self.vm
        if op == "null":
            check = self.kvm.check_extension
            for _ in range(k):
                t0 = clock()
                check(NULL_CAP)
                s.api.append(clock() - t0)
        elif op == "create":
            for _ in range(k):
                t0 = clock()
                ns = vm.set_user_memory_region(PAGE_SLOT, 0, PAGE_GPA, 4096, self.page.addr)
                s.api.append(clock() - t0)
                s.timed.append(ns)
                vm.delete_memslot(PAGE_SLOT)
        elif op == "delete":
            for _ in range(k):
                vm.set_user_memory_region(PAGE_SLOT, 0, PAGE_GPA, 4096, self.page.addr)
                t0 = clock()
                ns = vm.delete_memslot(PAGE_SLOT)
                s.api.append(clock() - t0)
                s.timed.append(ns)
        elif op in ("move-all", "move-slot"):
            target = vm if op == "move-all" else self.slot_vm
            assert target is not None
            away = self._away[id(target)]
            for _ in range(k):
                away = not away
                gpa = BIG_GPA + BIG_SIZE if away else BIG_GPA
                t0 = clock()
                target.move_memslot(BIG_SLOT, gpa)
                s.api.append(clock() - t0)
                s.timed.append(target.last_memslot_ns)
            self._away[id(target)] = away
        elif op == "pio":
            vcpu = self.vcpu
            for _ in range(k):
                t0 = clock()
                vcpu.run()
                s.api.append(clock() - t0)
                s.timed.append(vcpu.last_run_ns)
        else:
            raise ValueError(f"unknown operation {op!r}")
        return s

    def close(self) -> None:
        self._stack.close()


def side_by_side(kvm: Kvm, exe: Path, n: int, batch: int, have_quirk: bool
                 ) -> tuple[dict[str, list[int]], dict[str, Samples]]:
    """C and Python in alternating batches of ``batch`` samples per operation (which side
    goes first alternates too), until each side has ``n`` samples per operation."""
    c: dict[str, list[int]] = {}
    py: dict[str, Samples] = {}
    with CPeer(exe) as peer:
        harness = HarnessSide(kvm, have_quirk)
        try:
            ops = [op for op in harness.operations if op in peer.operations]
            done = 0
            while done < n:
                k = min(batch, n - done)
                for op in ops:
                    if (done // batch) % 2 == 0:
                        theirs, got = peer.batch(op, k), harness.batch(op, k)
                    else:
                        got = harness.batch(op, k)
                        theirs = peer.batch(op, k)
                    c.setdefault(op, []).extend(theirs)
                    mine = py.setdefault(op, Samples())
                    mine.api.extend(got.api)
                    mine.timed.extend(got.timed)
                    mine.batches.append((statistics.median(theirs),
                                         statistics.median(got.timed) if got.timed else None,
                                         statistics.median(got.api)))
                done += k
        finally:
            harness.close()
    return c, py


# --- tables ------------------------------------------------------------------------------------
def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def in_process_table(results: dict[str, Samples]) -> str:
    rows = []
    for op, s in results.items():
        rows.append((LABELS[op], _fmt(median_us(s.api)), _fmt(median_us(s.raw)),
                     _fmt(paired_added_us(s), sign=True), _fmt(median_us(s.timed))))
    return tabulate(rows, headers=["operation", "binding", "raw", "added", "timed"],
                    tablefmt="simple", disable_numparse=True, colalign=("left",) + ("right",) * 4)


def peer_table(c: dict[str, list[int]], py: dict[str, Samples]) -> str:
    rows = []
    for op, label in LABELS.items():
        if op not in py or op not in c:
            continue
        s = py[op]
        rows.append((label, _fmt(median_us(c[op])), _fmt(median_us(s.timed)),
                     batch_ratio(s, 1), _fmt(median_us(s.api)), batch_ratio(s, 2)))
    return tabulate(rows, headers=["operation", "C", "timed", "timed/C", "API", "API/C"],
                    tablefmt="simple", disable_numparse=True, colalign=("left",) + ("right",) * 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvmharness.bench.ioctl",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, metavar="N",
                        help="samples per operation and side (default 2000)")
    parser.add_argument("--peer", action="store_true",
                        help="also compare with a C program doing the same (needs gcc)")
    parser.add_argument("--batch", type=int, default=20, metavar="K",
                        help="with --peer: C and Python take turns every K samples of an "
                             "operation (default 20)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1:
        parser.error("-n and --batch must be at least 1")
    try:
        return _run(args)
    except (KvmError, PeerBuildError, RuntimeError) as exc:
        print(f"python -m kvmharness.bench.ioctl: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    exe = build_peer() if args.peer else None  # fail before minutes of measuring, not after
    with Kvm() as kvm:
        with kvm.create_vm() as probe:
            have_quirk = probe.slot_zap_all_supported
        results = in_process(kvm, args.n, have_quirk)
        print(f"Binding vs raw ioctl of the same struct, same VM, alternated op by op\n"
              f"(median us, n={args.n} each; added = median of the paired differences;\n"
              "timed = the syscall time the binding reports)\n")
        print(in_process_table(results))
        print("\nraw = fcntl.ioctl (KVM_RUN: argument left out); null ioctl: libc's ioctl"
              "\nthrough ctypes without argtypes (fcntl.ioctl adds ~1 us for an int).")
        if exe is not None:
            c, py = side_by_side(kvm, exe, args.n, args.batch, have_quirk)
            print(f"\nHarness vs C, C and Python taking turns every {args.batch} samples "
                  f"(median us,\nn={args.n} each; C times the ioctl, for PIO the ioctl and "
                  "reading the exit;\ntimed = what the harness reports, API = its call's "
                  "wall time; ratios are\nmedians over turn pairs of the ratio of their "
                  "medians)\n")
            print(peer_table(c, py))
    if not have_quirk:
        print("zap slot not measured: kernel lacks KVM_X86_QUIRK_SLOT_ZAP_ALL", file=sys.stderr)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
