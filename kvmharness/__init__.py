"""kvmharness: drive Linux KVM through /dev/kvm with ctypes to measure memslot and MMU zap behaviour."""

__version__ = "0.1.0"
