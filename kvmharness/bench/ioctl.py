"""Benchmark of the /dev/kvm layer's own overhead: ``python -m kvmharness.bench.ioctl``.

Prints p50/p90 in microseconds for a null ioctl, 1-page memslot create and delete, a
64 MiB memslot move with KVM_X86_QUIRK_SLOT_ZAP_ALL on and off, and a PIO-exit round trip
through ``Vcpu.run()``.  A benchmark, not a test: it prints figures and asserts nothing."""

from __future__ import annotations

import argparse
import fcntl
import statistics
import sys
import time
from typing import Callable

from tabulate import tabulate

from kvmharness.kvm import HostMemory, Io, Kvm, Vm
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.ioctls import KVM_CHECK_EXTENSION
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL

MiB = 1 << 20
PIO_LOOP = bytes([0xB0, 0x01, 0xE6, 0x10, 0xEB, 0xFC])  # mov al,1; loop: out 0x10,al; jmp loop


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    q = statistics.quantiles(samples_ns, n=10, method="inclusive")
    return statistics.median(samples_ns) / 1000, q[8] / 1000


def time_each(n: int, op: Callable[[], object], setup: Callable[[], object] | None = None
              ) -> list[int]:
    """perf_counter_ns around ``op`` only; ``setup`` runs untimed before each call."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        if setup is not None:
            setup()
        t0 = clock()
        op()
        out.append(clock() - t0)
    return out


def bench_null_ioctl(kvm: Kvm, n: int) -> dict[str, list[int]]:
    cap = int(KvmCap.KVM_CAP_USER_MEMORY)
    fd = kvm.fd
    return {
        "null ioctl (Kvm.check_extension)": time_each(n, lambda: kvm.check_extension(cap)),
        "null ioctl (raw fcntl.ioctl)": time_each(n, lambda: fcntl.ioctl(fd, KVM_CHECK_EXTENSION,
                                                                           cap)),
    }


def bench_slot_create_delete(kvm: Kvm, n: int) -> dict[str, list[int]]:
    with kvm.create_vm() as vm, HostMemory(4096) as page:
        slot = 1

        def ensure_deleted() -> None:
            if slot in vm.memslots:
                vm.delete_memslot(slot)

        create = time_each(n, lambda: vm.set_user_memory_region(slot, 0, 0x100000000, 4096,
                                                                page.addr),
                           setup=ensure_deleted)
        delete = time_each(n, lambda: vm.delete_memslot(slot),
                           setup=lambda: vm.set_user_memory_region(slot, 0, 0x100000000, 4096,
                                                                   page.addr))
        vm.close()
    return {"1-page slot create": create, "1-page slot delete": delete}


def _real_mode_vcpu(kvm: Kvm, vm: Vm, ram: HostMemory, code: bytes):  # type: ignore[no-untyped-def]
    ram.write(0x1000, code)
    vm.add_memslot(0, ram.size, ram.addr)
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid2(kvm.supported_cpuid())
    sregs = vcpu.get_sregs()
    for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
        seg.base, seg.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = 0x1000, 0x2
    vcpu.set_regs(regs)
    return vcpu


def bench_move(kvm: Kvm, n: int, zap_all: bool) -> list[int]:
    with kvm.create_vm() as vm, HostMemory(64 * MiB) as big, HostMemory(0x10000) as ram:
        if not zap_all:
            vm.disable_quirks(KVM_X86_QUIRK_SLOT_ZAP_ALL)
        vcpu = _real_mode_vcpu(kvm, vm, ram, PIO_LOOP)
        for _ in range(10):  # the vCPU has run: MMU roots exist for a zap to act on
            vcpu.run()
        slot = vm.add_memslot(1 << 32, 64 * MiB, big.addr).slot
        positions = [1 << 32, (1 << 32) + 64 * MiB]
        state = {"i": 0}

        def move() -> None:
            state["i"] ^= 1
            vm.move_memslot(slot, positions[state["i"]])

        samples = time_each(n, move)
        vm.close()
    return samples


def bench_pio_round_trip(kvm: Kvm, n: int) -> list[int]:
    with kvm.create_vm() as vm, HostMemory(0x10000) as ram:
        vcpu = _real_mode_vcpu(kvm, vm, ram, PIO_LOOP)
        assert isinstance(vcpu.run(), Io)
        samples = time_each(n, vcpu.run)
        vm.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="iterations per operation")
    args = parser.parse_args(argv)
    results: dict[str, list[int]] = {}
    with Kvm() as kvm:
        results.update(bench_null_ioctl(kvm, args.n * 10))
        results.update(bench_slot_create_delete(kvm, args.n))
        with kvm.create_vm() as probe:
            have_quirk = probe.slot_zap_all_supported
        results["64 MiB slot move, zap=all (quirk on)"] = bench_move(kvm, args.n, True)
        if have_quirk:
            results["64 MiB slot move, zap=slot (quirk off)"] = bench_move(kvm, args.n, False)
        results["PIO exit round trip (Vcpu.run)"] = bench_pio_round_trip(kvm, args.n)
    rows = [(name, len(s), *(f"{v:.2f}" for v in percentiles(s))) for name, s in results.items()]
    print(tabulate(rows, headers=["operation", "n", "p50 us", "p90 us"], tablefmt="simple"))
    if not have_quirk:
        print("zap=slot not measured: kernel lacks KVM_X86_QUIRK_SLOT_ZAP_ALL", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
