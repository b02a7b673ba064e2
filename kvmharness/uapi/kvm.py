"""Mirror of include/uapi/linux/kvm.h (the architecture-neutral structs and constants that an
x86-64 VMM uses).  Class and field names are the kernel's; anonymous unions keep their
members reachable by the kernel's names through ``_anonymous_``."""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_char, c_int16, c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from kvmharness.uapi.x86 import kvm_debug_exit_arch

KVMIO = 0xAE
KVM_API_VERSION = 12

# Memslot flags (struct kvm_userspace_memory_region{,2}.flags).
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2  # v6.8+

PAGE_SIZE = 4096


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_userspace_memory_region2(ctypes.Structure):
    """v6.8+ (KVM_CAP_USER_MEMORY2)."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
        ("guest_memfd_offset", c_uint64),
        ("guest_memfd", c_uint32),
        ("pad1", c_uint32),
        ("pad2", c_uint64 * 14),
    ]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4),
                ("pad", c_uint8 * 64)]


class kvm_mp_state(ctypes.Structure):
    _fields_ = [("mp_state", c_uint32)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10


# --- ioeventfd -------------------------------------------------------------------------
kvm_ioeventfd_flag_nr_datamatch = 0
kvm_ioeventfd_flag_nr_pio = 1
kvm_ioeventfd_flag_nr_deassign = 2
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << kvm_ioeventfd_flag_nr_datamatch
KVM_IOEVENTFD_FLAG_PIO = 1 << kvm_ioeventfd_flag_nr_pio
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << kvm_ioeventfd_flag_nr_deassign


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


# --- coalesced MMIO --------------------------------------------------------------------
class _kvm_coalesced_mmio_pad_pio(ctypes.Union):
    _fields_ = [("pad", c_uint32), ("pio", c_uint32)]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("addr", c_uint64), ("size", c_uint32), ("_u", _kvm_coalesced_mmio_pad_pio)]


class kvm_coalesced_mmio(ctypes.Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("phys_addr", c_uint64), ("len", c_uint32), ("_u", _kvm_coalesced_mmio_pad_pio),
                ("data", c_uint8 * 8)]


class kvm_coalesced_mmio_ring(ctypes.Structure):
    """Header only; entries follow (``KVM_COALESCED_MMIO_MAX`` of them in one page).

    ``coalesced_mmio`` is zero-length, like C's flexible array: it gives C's alignment (8)."""

    _fields_ = [("first", c_uint32), ("last", c_uint32),
                ("coalesced_mmio", kvm_coalesced_mmio * 0)]


KVM_COALESCED_MMIO_MAX = (PAGE_SIZE - ctypes.sizeof(kvm_coalesced_mmio_ring)) // ctypes.sizeof(
    kvm_coalesced_mmio
)


# --- dirty log -------------------------------------------------------------------------
class _kvm_dirty_log_bitmap(ctypes.Union):
    _fields_ = [("dirty_bitmap", ctypes.c_void_p), ("padding2", c_uint64)]


class kvm_dirty_log(ctypes.Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("_u", _kvm_dirty_log_bitmap)]


# --- binary stats ----------------------------------------------------------------------
class kvm_stats_header(ctypes.Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("name_size", c_uint32),
        ("num_desc", c_uint32),
        ("id_offset", c_uint32),
        ("desc_offset", c_uint32),
        ("data_offset", c_uint32),
    ]


class kvm_stats_desc(ctypes.Structure):
    """Fixed part; ``name[name_size]`` follows each descriptor."""

    _fields_ = [
        ("flags", c_uint32),
        ("exponent", c_int16),
        ("size", c_uint16),
        ("offset", c_uint32),
        ("bucket_size", c_uint32),
    ]


KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_TYPE_MASK = 0xF << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_CUMULATIVE = 0x0 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_INSTANT = 0x1 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_PEAK = 0x2 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LOG_HIST = 0x4 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_MAX = KVM_STATS_TYPE_LOG_HIST
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_NONE = 0x0 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BYTES = 0x1 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_SECONDS = 0x2 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_CYCLES = 0x3 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BOOLEAN = 0x4 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_MAX = KVM_STATS_UNIT_BOOLEAN
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_BASE_MASK = 0xF << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW10 = 0x0 << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW2 = 0x1 << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_MAX = KVM_STATS_BASE_POW2


# --- struct kvm_run ----------------------------------------------------------------------
class KvmExitReason(enum.IntEnum):
    KVM_EXIT_UNKNOWN = 0
    KVM_EXIT_EXCEPTION = 1
    KVM_EXIT_IO = 2
    KVM_EXIT_HYPERCALL = 3
    KVM_EXIT_DEBUG = 4
    KVM_EXIT_HLT = 5
    KVM_EXIT_MMIO = 6
    KVM_EXIT_IRQ_WINDOW_OPEN = 7
    KVM_EXIT_SHUTDOWN = 8
    KVM_EXIT_FAIL_ENTRY = 9
    KVM_EXIT_INTR = 10
    KVM_EXIT_SET_TPR = 11
    KVM_EXIT_TPR_ACCESS = 12
    KVM_EXIT_S390_SIEIC = 13
    KVM_EXIT_S390_RESET = 14
    KVM_EXIT_DCR = 15
    KVM_EXIT_NMI = 16
    KVM_EXIT_INTERNAL_ERROR = 17
    KVM_EXIT_OSI = 18
    KVM_EXIT_PAPR_HCALL = 19
    KVM_EXIT_S390_UCONTROL = 20
    KVM_EXIT_WATCHDOG = 21
    KVM_EXIT_S390_TSCH = 22
    KVM_EXIT_EPR = 23
    KVM_EXIT_SYSTEM_EVENT = 24
    KVM_EXIT_S390_STSI = 25
    KVM_EXIT_IOAPIC_EOI = 26
    KVM_EXIT_HYPERV = 27
    KVM_EXIT_ARM_NISV = 28
    KVM_EXIT_X86_RDMSR = 29
    KVM_EXIT_X86_WRMSR = 30
    KVM_EXIT_DIRTY_RING_FULL = 31
    KVM_EXIT_AP_RESET_HOLD = 32
    KVM_EXIT_X86_BUS_LOCK = 33
    KVM_EXIT_XEN = 34
    KVM_EXIT_RISCV_SBI = 35
    KVM_EXIT_RISCV_CSR = 36
    KVM_EXIT_NOTIFY = 37
    KVM_EXIT_LOONGARCH_IOCSR = 38  # v6.7+
    KVM_EXIT_MEMORY_FAULT = 39  # v6.8+


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6


class _kvm_run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class _kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class _kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16),
                ("count", c_uint32), ("data_offset", c_uint64)]


class _kvm_run_debug(ctypes.Structure):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32),
                ("is_write", c_uint8)]


class _kvm_run_hypercall(ctypes.Structure):
    _fields_ = [("nr", c_uint64), ("args", c_uint64 * 6), ("ret", c_uint64),
                ("longmode", c_uint32), ("pad", c_uint32)]


class _kvm_run_tpr_access(ctypes.Structure):
    _fields_ = [("rip", c_uint64), ("is_write", c_uint32), ("pad", c_uint32)]


class _kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _kvm_run_emulation_failure(ctypes.Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("flags", c_uint64),
                ("insn_size", c_uint8), ("insn_bytes", c_uint8 * 15)]


class _kvm_run_system_event_u(ctypes.Union):
    _fields_ = [("flags", c_uint64), ("data", c_uint64 * 16)]


class _kvm_run_system_event(ctypes.Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("_u", _kvm_run_system_event_u)]


class _kvm_run_msr(ctypes.Structure):
    _fields_ = [("error", c_uint8), ("pad", c_uint8 * 7), ("reason", c_uint32),
                ("index", c_uint32), ("data", c_uint64)]


class _kvm_run_notify(ctypes.Structure):
    _fields_ = [("flags", c_uint32)]


class _kvm_run_memory_fault(ctypes.Structure):
    _fields_ = [("flags", c_uint64), ("gpa", c_uint64), ("size", c_uint64)]


class _kvm_run_exit(ctypes.Union):
    """The exit union of struct kvm_run (x86 members; others are covered by ``padding``)."""

    _fields_ = [
        ("hw", _kvm_run_hw),
        ("fail_entry", _kvm_run_fail_entry),
        ("ex", _kvm_run_ex),
        ("io", _kvm_run_io),
        ("debug", _kvm_run_debug),
        ("mmio", _kvm_run_mmio),
        ("hypercall", _kvm_run_hypercall),
        ("tpr_access", _kvm_run_tpr_access),
        ("internal", _kvm_run_internal),
        ("emulation_failure", _kvm_run_emulation_failure),
        ("system_event", _kvm_run_system_event),
        ("msr", _kvm_run_msr),
        ("notify", _kvm_run_notify),
        ("memory_fault", _kvm_run_memory_fault),
        ("padding", c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class _kvm_run_s(ctypes.Union):
    _fields_ = [("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("_exit",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("_exit", _kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", _kvm_run_s),
    ]
