"""A hand-assembled real-mode guest: enough to exercise the /dev/kvm layer without the
long-mode bring-up of the guest toolkit.  Code runs at CS:IP 0000:1000 from a 64 KiB RAM
slot at GPA 0; data segments start at base 0 and programs load DS themselves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kvmharness.kvm import HostMemory, Vcpu, Vm

CODE_GPA = 0x1000
RAM_SIZE = 0x10000
# Where QEMU puts the VMX real-mode TSS: unused by us, harmless elsewhere.
TSS_ADDR = 0xFFFBD000


def asm(*chunks: bytes) -> bytes:
    return b"".join(chunks)


# Instruction encodings used by the tests (16-bit real mode).
def mov_al(imm: int) -> bytes:          # mov al, imm8
    return bytes([0xB0, imm])


def out_al(port: int) -> bytes:         # out imm8, al
    return bytes([0xE6, port])


def in_al(port: int) -> bytes:          # in al, imm8
    return bytes([0xE4, port])


def mov_ds(segment: int) -> bytes:      # mov ax, imm16 ; mov ds, ax
    return bytes([0xB8, segment & 0xFF, segment >> 8, 0x8E, 0xD8])


def load_al(offset: int) -> bytes:      # mov al, [moffs16]
    return bytes([0xA0, offset & 0xFF, offset >> 8])


def store_al(offset: int) -> bytes:     # mov [moffs16], al
    return bytes([0xA2, offset & 0xFF, offset >> 8])


def jmp_to(start: int, here: int) -> bytes:  # jmp short rel8 back to ``start``
    rel = start - (here + 2)
    assert -128 <= rel < 128
    return bytes([0xEB, rel & 0xFF])


HLT = b"\xF4"
SPIN = b"\xEB\xFE"  # jmp $


@contextlib.contextmanager
def realmode_vm(kvm, code: bytes) -> Iterator[tuple[Vm, Vcpu, HostMemory]]:
    """A VM with a RAM slot [0, 64 KiB) holding ``code`` at 0x1000 and one vCPU about to
    run it.  Closes everything on exit."""
    with kvm.create_vm() as vm, HostMemory(RAM_SIZE, name="real-mode RAM") as ram:
        vm.set_tss_addr(TSS_ADDR)
        ram.write(CODE_GPA, code)
        vm.add_memslot(0, RAM_SIZE, ram.addr)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid2(kvm.supported_cpuid())
        sregs = vcpu.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs):
            seg.base = 0
            seg.selector = 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip = CODE_GPA
        regs.rflags = 0x2
        regs.rsp = 0x8000
        vcpu.set_regs(regs)
        yield vm, vcpu, ram
        vm.close()  # before the RAM is unmapped: KVM must not keep a slot over freed memory
