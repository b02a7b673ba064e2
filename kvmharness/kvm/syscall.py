"""The one ioctl primitive and the few other syscalls the KVM layer needs, via ctypes.

ctypes' CDLL drops the GIL around foreign calls, so a vCPU thread blocked in KVM_RUN does
not stall the rest of the harness.  ``use_errno=True`` gives each thread its own errno copy.

Hot paths (memslot changes, KVM_CHECK_EXTENSION, KVM_RUN) use the cheapest calls measured
on CPython 3.11 (``python -m kvmharness.bench.ioctl`` prints the figures):

- ``ioctl_struct``: ``fcntl.ioctl`` with a ctypes struct.  The struct is passed through the
  buffer protocol, the GIL is dropped, a failure is an ``OSError`` with an exact errno; it
  costs ~0.2 us more than the syscall, against ~0.6 us for a ctypes foreign call.
- ``ioctl_small``: libc's ioctl through a ctypes function with no argtypes, for an argument
  passed by value that fits in 31 bits (0 for KVM_RUN, a capability number).  ``fcntl.ioctl``
  with an int argument first tries, and fails, to read it as a buffer twice, which costs
  ~1 us; argtypes conversion costs ~0.3 us.  Without argtypes ctypes passes an int as a C
  int, which the x86-64 ABI sign-extends: exact for 0 <= value < 2**31, and the kernel
  reads ``cmd`` as a 32-bit unsigned int whatever the upper bits.
- ``ioctl_noarg``: ``fcntl.ioctl(fd, request)`` with the argument left out passes 0 and
  skips the buffer attempts: ~0.2 us cheaper than ``ioctl_small``, for KVM_RUN.

All of them drop the GIL around the syscall."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os

from kvmharness.kvm.errors import KvmError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_ioctl_ptr = _libc.ioctl
_ioctl_ptr.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl_ptr.restype = ctypes.c_int
_ioctl_int = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                              use_errno=True)(("ioctl", _libc))

# A separate function object (``_libc[...]`` is not cached) so its argtypes stay unset.
_ioctl_noconv = _libc["ioctl"]
_ioctl_noconv.restype = ctypes.c_int

SMALL_ARG_LIMIT = 1 << 31

ioctl_struct = fcntl.ioctl
"""``ioctl_struct(fd, request, ctypes_struct) -> int``: raises ``OSError`` (or ``ValueError``
for fd -1); the struct is copied in and, for requests that write it, back out."""

ioctl_small = _ioctl_noconv
"""``ioctl_small(fd, request, value) -> int``: -1 on failure with errno in
``ctypes.get_errno()``.  Only for ``0 <= value < SMALL_ARG_LIMIT`` (see the module doc)."""

get_errno = ctypes.get_errno

ioctl_noarg = fcntl.ioctl
"""``ioctl_noarg(fd, request) -> int``: argument 0; raises ``OSError`` with the errno."""

_mmap = _libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int

MAP_FAILED = ctypes.c_void_p(-1).value
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
MAP_HUGE_2MB = 21 << 26  # log2(2 MiB) << MAP_HUGE_SHIFT
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15


def ioctl(fd: int, request: int, arg: object = 0) -> int:
    """ioctl(2) returning its non-negative result; raises KvmError naming the request.

    ``arg`` is an int (passed by value) or a ctypes object (passed by reference)."""
    if isinstance(arg, int):
        ret = (_ioctl_noconv(fd, request, arg) if 0 <= arg < SMALL_ARG_LIMIT
               else _ioctl_int(fd, request, arg))
    else:
        ret = _ioctl_ptr(fd, request, ctypes.byref(arg))  # type: ignore[arg-type]
    if ret < 0:
        raise KvmError(ctypes.get_errno(), getattr(request, "name", hex(request)))
    return int(ret)


def ioctl_errno(fd: int, request: int, arg: object = 0) -> tuple[int, int]:
    """Like ``ioctl`` but returns (ret, errno) instead of raising: for hot loops such as
    KVM_RUN that must look at EINTR without the cost of building an exception."""
    if isinstance(arg, int):
        ret = (_ioctl_noconv(fd, request, arg) if 0 <= arg < SMALL_ARG_LIMIT
               else _ioctl_int(fd, request, arg))
    else:
        ret = _ioctl_ptr(fd, request, ctypes.byref(arg))  # type: ignore[arg-type]
    return ret, (ctypes.get_errno() if ret < 0 else 0)


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, *,
         what: str = "mmap") -> int:
    """mmap(2) returning the address; raises OSError naming ``what`` on failure."""
    addr = _mmap(None, length, prot, flags, fd, offset)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: mmap of {length} bytes failed: {os.strerror(err)}")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"munmap({addr:#x}, {length}) failed: {os.strerror(err)}")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({advice}) failed: {os.strerror(err)}")
