"""Mirror of arch/x86/include/uapi/asm/kvm.h: x86-64 register, segment, MSR and CPUID structs
and the x86 quirk bits.  Class and field names are the kernel's."""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from typing import Any, cast

KVM_NR_INTERRUPTS = 256

# Pages of the vCPU mmap after struct kvm_run: PIO data, the coalesced MMIO ring, the dirty ring.
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_DIRTY_LOG_PAGE_OFFSET = 64


class kvm_regs(ctypes.Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64),
        ("cr8", c_uint64), ("efer", c_uint64), ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.Structure):
    """Header only (the kernel's flexible array); use ``make_kvm_msrs(n)`` for a usable buffer.

    ``entries`` is zero-length, like C's ``entries[]``: it gives the struct C's alignment (8)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * 0)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", c_uint32), ("index", c_uint32), ("flags", c_uint32),
        ("eax", c_uint32), ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """Header only (the kernel's flexible array); use ``make_kvm_cpuid2(n)``."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * 0)]


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("pad", c_uint32), ("pc", c_uint64),
                ("dr6", c_uint64), ("dr7", c_uint64)]


_flex_cache: dict[tuple[str, int], type] = {}


def _flex(header: Any, array_field: str, entry: Any, n: int) -> type:
    key = (header.__name__, n)
    cls = _flex_cache.get(key)
    if cls is None:
        cls = type(
            f"{header.__name__}_{n}",
            (ctypes.Structure,),
            # The header's zero-length flexible array is replaced by an n-entry one.
            {"_fields_": [f for f in header._fields_ if f[0] != array_field]
             + [(array_field, entry * n)]},
        )
        _flex_cache[key] = cls
    return cls


def make_kvm_cpuid2(nent: int) -> ctypes.Structure:
    """A kvm_cpuid2 with room for ``nent`` entries and ``nent`` already set."""
    buf = _flex(kvm_cpuid2, "entries", kvm_cpuid_entry2, nent)()
    buf.nent = nent
    return cast(ctypes.Structure, buf)


def make_kvm_msrs(nmsrs: int) -> ctypes.Structure:
    buf = _flex(kvm_msrs, "entries", kvm_msr_entry, nmsrs)()
    buf.nmsrs = nmsrs
    return cast(ctypes.Structure, buf)


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic: the kernel's spelling
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2


class KvmX86Quirk(enum.IntFlag):
    """KVM_X86_QUIRK_* bits for KVM_CAP_DISABLE_QUIRKS2."""

    KVM_X86_QUIRK_LINT0_REENABLED = 1 << 0
    KVM_X86_QUIRK_CD_NW_CLEARED = 1 << 1
    KVM_X86_QUIRK_LAPIC_MMIO_HOLE = 1 << 2
    KVM_X86_QUIRK_OUT_7E_INC_RIP = 1 << 3
    KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT = 1 << 4
    KVM_X86_QUIRK_FIX_HYPERCALL_INSN = 1 << 5
    KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS = 1 << 6
    # v6.12+: memslot DELETE/MOVE zaps every SPTE (kvm_mmu_zap_all_fast) while set.
    KVM_X86_QUIRK_SLOT_ZAP_ALL = 1 << 7


KVM_X86_QUIRK_SLOT_ZAP_ALL = KvmX86Quirk.KVM_X86_QUIRK_SLOT_ZAP_ALL
