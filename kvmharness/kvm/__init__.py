"""One Python object per KVM fd: ``Kvm`` (/dev/kvm) → ``Vm`` → ``Vcpu``."""

from kvmharness.kvm.errors import (
    KvmCapabilityError,
    KvmClosedError,
    KvmError,
    KvmUnavailableError,
    VmDeadError,
)
from kvmharness.kvm.exits import (
    Debug,
    Exception_,
    Exit,
    FailEntry,
    Hlt,
    InternalError,
    Io,
    MemoryFault,
    Mmio,
    Shutdown,
    Stopped,
    SystemEvent,
    Unknown,
)
from kvmharness.kvm.hostmem import HostMemory
from kvmharness.kvm.memslots import Memslot
from kvmharness.kvm.stats import StatsReader, StatsSnapshot
from kvmharness.kvm.system import Kvm
from kvmharness.kvm.vcpu import Vcpu
from kvmharness.kvm.vm import IoEventFd, Vm

__all__ = [
    "Debug",
    "Exception_",
    "Exit",
    "FailEntry",
    "Hlt",
    "HostMemory",
    "InternalError",
    "Io",
    "IoEventFd",
    "Kvm",
    "KvmCapabilityError",
    "KvmClosedError",
    "KvmError",
    "KvmUnavailableError",
    "MemoryFault",
    "Memslot",
    "Mmio",
    "Shutdown",
    "StatsReader",
    "StatsSnapshot",
    "Stopped",
    "SystemEvent",
    "Unknown",
    "Vcpu",
    "Vm",
    "VmDeadError",
]
