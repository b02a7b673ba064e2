"""x86-64 long-mode vCPU state that VT-x and AMD-V both accept (docs/ARCHITECTURE.md §5).

Order matters on real hardware: KVM_SET_CPUID2 (from KVM_GET_SUPPORTED_CPUID) before
KVM_SET_SREGS, because KVM validates CR4 and EFER bits against the guest's CPUID."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from kvmharness.guest.layout import GDT_GPA, IDT_GPA, TSS_GPA, LayoutError
from kvmharness.kvm import Vcpu
from kvmharness.uapi.x86 import kvm_cpuid_entry2, kvm_segment

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NX = 1 << 11

CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
TSS_SELECTOR = 0x18
TSS_SIZE = 104
GDT_LIMIT = 5 * 8 - 1  # null, code, data, 16-byte TSS
IDT_ENTRIES = 256
IDT_LIMIT = IDT_ENTRIES * 16 - 1

# Descriptor type fields.
TYPE_CODE_EXEC_READ_ACCESSED = 0xB
TYPE_DATA_READ_WRITE_ACCESSED = 0x3
TYPE_TSS64_BUSY = 0xB
TYPE_INTERRUPT_GATE = 0xE


def _segment_descriptor(type_: int, *, s: int, dpl: int = 0, present: int = 1, avl: int = 0,
                        l_bit: int = 0, db: int = 0, g: int = 1, base: int = 0,
                        limit: int = 0xFFFFF) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (type_ << 40) | (s << 44)
            | (dpl << 45) | (present << 47) | (((limit >> 16) & 0xF) << 48) | (avl << 52)
            | (l_bit << 53) | (db << 54) | (g << 55) | (((base >> 24) & 0xFF) << 56))


def gdt_bytes() -> bytes:
    code = _segment_descriptor(TYPE_CODE_EXEC_READ_ACCESSED, s=1, l_bit=1)
    data = _segment_descriptor(TYPE_DATA_READ_WRITE_ACCESSED, s=1, db=1)
    tss_low = _segment_descriptor(TYPE_TSS64_BUSY, s=0, g=0, base=TSS_GPA, limit=TSS_SIZE - 1)
    tss_high = TSS_GPA >> 32
    return struct.pack("<6Q", 0, code, data, tss_low, tss_high, 0)[: GDT_LIMIT + 1]


def idt_bytes(handlers: Iterable[int]) -> bytes:
    """256 interrupt gates (type 14, selector 0x08, DPL 0) to the guest's stubs."""
    handlers = list(handlers)
    if len(handlers) != IDT_ENTRIES:
        raise LayoutError(f"kh_exception_stubs has {len(handlers)} entries, need {IDT_ENTRIES}")
    out = bytearray()
    for h in handlers:
        out += struct.pack("<HHBBHII", h & 0xFFFF, CODE_SELECTOR, 0,
                           0x80 | TYPE_INTERRUPT_GATE, (h >> 16) & 0xFFFF, h >> 32, 0)
    return bytes(out)


def tss_bytes() -> bytes:
    """A zeroed 64-bit TSS whose I/O map base points past its end (no I/O bitmap)."""
    tss = bytearray(TSS_SIZE)
    struct.pack_into("<H", tss, 102, TSS_SIZE)
    return bytes(tss)


def _set_segment(seg: kvm_segment, selector: int, type_: int, *, s: int = 1, l_bit: int = 0,
                 db: int = 0, g: int = 1, base: int = 0, limit: int = 0xFFFFFFFF) -> None:
    seg.base, seg.limit, seg.selector, seg.type = base, limit, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl = 1, 0, db, s, l_bit, g, 0
    seg.unusable, seg.padding = 0, 0


def cpuid_lookup(entries: Iterable[kvm_cpuid_entry2], function: int,
                 index: int = 0) -> kvm_cpuid_entry2 | None:
    for e in entries:
        if e.function == function and e.index == index:
            return e
    return None


def has_1g_pages(entries: Iterable[kvm_cpuid_entry2]) -> bool:
    ext = cpuid_lookup(entries, 0x80000001)
    return bool(ext and ext.edx & (1 << 26))


def has_nx(entries: Iterable[kvm_cpuid_entry2]) -> bool:
    ext = cpuid_lookup(entries, 0x80000001)
    return bool(ext and ext.edx & (1 << 20))


def max_phys_addr(entries: Iterable[kvm_cpuid_entry2]) -> int:
    leaf = cpuid_lookup(entries, 0x80000008)
    return 1 << (leaf.eax & 0xFF) if leaf else 1 << 36


def per_vcpu_cpuid(supported: list[kvm_cpuid_entry2], index: int) -> list[kvm_cpuid_entry2]:
    """The supported CPUID with this vCPU's APIC ID filled in (leaf 1 EBX[31:24] and the
    x2APIC ID of leaves 0xB/0x1F), as KVM expects for distinct vCPUs."""
    out = [kvm_cpuid_entry2.from_buffer_copy(e) for e in supported]
    for e in out:
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((index & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = index
    return out


def setup_long_mode(vcpu: Vcpu, cpuid: list[kvm_cpuid_entry2], *, cr3: int, entry: int,
                    stack_top: int, args: Iterable[int] = ()) -> None:
    """CPUID, then sregs (64-bit code, flat data, busy TSS, GDT/IDT in guest memory, paging
    on), then regs (entry, stack, RDI/RSI/RDX/RCX arguments)."""
    vcpu.set_cpuid2(cpuid)
    sregs = vcpu.get_sregs()
    _set_segment(sregs.cs, CODE_SELECTOR, TYPE_CODE_EXEC_READ_ACCESSED, l_bit=1)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _set_segment(seg, DATA_SELECTOR, TYPE_DATA_READ_WRITE_ACCESSED, db=1)
    _set_segment(sregs.tr, TSS_SELECTOR, TYPE_TSS64_BUSY, s=0, g=0, base=TSS_GPA,
                 limit=TSS_SIZE - 1)
    sregs.ldt.selector, sregs.ldt.present, sregs.ldt.unusable = 0, 0, 1
    sregs.gdt.base, sregs.gdt.limit = GDT_GPA, GDT_LIMIT
    sregs.idt.base, sregs.idt.limit = IDT_GPA, IDT_LIMIT
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr3 = cr3
    sregs.cr4 = CR4_PAE | CR4_OSFXSR
    sregs.efer = EFER_LME | EFER_LMA | (EFER_NX if has_nx(cpuid) else 0)
    vcpu.set_sregs(sregs)
    set_entry_regs(vcpu, entry=entry, stack_top=stack_top, args=args)


def set_entry_regs(vcpu: Vcpu, *, entry: int, stack_top: int, args: Iterable[int] = ()) -> None:
    """General registers for a fresh call of ``entry`` (also used to re-run a guest)."""
    regs = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rip = entry
    regs.rsp = stack_top - 8  # as if reached by a call: 16-byte aligned minus the return slot
    regs.rflags = 0x2
    for name, value in zip(("rdi", "rsi", "rdx", "rcx"), args):
        setattr(regs, name, value)
    vcpu.set_regs(regs)
