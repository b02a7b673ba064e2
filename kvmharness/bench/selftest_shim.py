"""An LD_PRELOAD shim that times every KVM_SET_USER_MEMORY_REGION{,2} ioctl a program makes
(the kernel's memslot_perf_test, for ``python -m kvmharness.bench.selftests``), and the
parser that turns its log into classified memslot operations.

The shim wraps ``ioctl()``: for the two memslot requests it reads CLOCK_MONOTONIC just
before and just after the real call, then (outside the timed span) appends one line to
the file named by $KVMHARNESS_SHIM_LOG::

    slot <fd> <v1|v2> <slot> <flags> <gpa> <size> <ns> <ret>

Both request structs begin with the same fields (slot, flags, guest_phys_addr,
memory_size, userspace_addr), so one read serves both.  Which operation a line is
(create, delete, move, a flags change) depends on the slot's state before it, which the
parser replays per VM fd: ``classify``."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from kvmharness.uapi import ioctls

LOG_ENV = "KVMHARNESS_SHIM_LOG"

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SET_REGION  %(v1)#lxUL
#define SET_REGION2 %(v2)#lxUL

struct region_head {  /* the common start of kvm_userspace_memory_region{,2} */
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
};

static int (*real_ioctl)(int, unsigned long, void *);
static int log_fd = -1;

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int ioctl(int fd, unsigned long request, ...)
{
	struct region_head head;
	long long t0, t1;
	va_list ap;
	void *arg;
	char line[192];
	int ret, len;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!real_ioctl)
		real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	if (request != SET_REGION && request != SET_REGION2)
		return real_ioctl(fd, request, arg);
	head = *(const struct region_head *)arg;  /* before: the call may not change it */
	t0 = now_ns();
	ret = real_ioctl(fd, request, arg);
	t1 = now_ns();
	if (log_fd < 0) {
		const char *path = getenv("%(env)s");

		if (!path)
			return ret;
		log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log_fd < 0)
			return ret;
	}
	len = snprintf(line, sizeof(line), "slot %%d %%s %%u %%u %%llu %%llu %%lld %%d\n", fd,
		request == SET_REGION ? "v1" : "v2", head.slot, head.flags,
		(unsigned long long)head.guest_phys_addr,
		(unsigned long long)head.memory_size, t1 - t0, ret);
	if (write(log_fd, line, len) != len)
		abort();  /* a lost line would silently bias the figures */
	return ret;
}
"""


def shim_source() -> str:
    return SHIM_SOURCE % {"v1": ioctls.KVM_SET_USER_MEMORY_REGION,
                          "v2": ioctls.KVM_SET_USER_MEMORY_REGION2, "env": LOG_ENV}


class ShimError(RuntimeError):
    """The shim could not be built, or its log is not what it writes."""


def build_shim(folder: Path) -> Path:
    """Compile the shim into ``folder`` (once per source version); returns the .so."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimError("the memslot ioctl shim needs gcc on PATH (apt-get install gcc)")
    source = shim_source()
    lib = folder / f"kvmharness-memslot-shim-{hashlib.sha256(source.encode()).hexdigest()[:12]}.so"
    if lib.exists():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "memslot-shim.c"
    src.write_text(source)
    tmp = lib.with_suffix(".tmp")
    result = subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(src),
                             "-ldl"], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise ShimError(f"gcc failed to build the memslot ioctl shim:\n{result.stderr}")
    tmp.replace(lib)
    return lib


@dataclasses.dataclass(frozen=True)
class LoggedIoctl:
    """One line of the shim's log."""

    fd: int
    version: str  # v1: KVM_SET_USER_MEMORY_REGION, v2: ...REGION2
    slot: int
    flags: int
    gpa: int
    size: int
    ns: int
    ret: int


def parse_log(text: str) -> list[LoggedIoctl]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) != 9 or fields[0] != "slot" or fields[2] not in ("v1", "v2"):
            raise ShimError(f"shim log line {number}: {line!r} is not "
                            "'slot <fd> <v1|v2> <slot> <flags> <gpa> <size> <ns> <ret>'")
        try:
            fd, slot, flags, gpa, size, ns, ret = (int(fields[i]) for i in (1, 3, 4, 5, 6, 7, 8))
        except ValueError:
            raise ShimError(f"shim log line {number}: {line!r} has a non-number") from None
        out.append(LoggedIoctl(fd, fields[2], slot, flags, gpa, size, ns, ret))
    return out


@dataclasses.dataclass(frozen=True)
class MemslotOp:
    """A logged ioctl with what it did: ``kind`` create | delete | move | flags | same |
    failed; ``others`` the memslots present in that VM besides this one (the count axis of
    slot-scale: filler and guest slots during the op); ``size`` the slot's size (for a
    delete, the size it had)."""

    kind: str
    others: int
    size: int
    ns: int
    seq: int  # position in the log


def classify(ioctls_: Iterable[LoggedIoctl]) -> list[MemslotOp]:
    """Replay the slots of each VM fd.  A failed ioctl changes nothing (kind ``failed``).
    A deleted slot is forgotten, so a VM fd number reused by a later VM starts clean once
    the first VM deleted its slots (memslot_perf_test's kvm_vm_free does)."""
    slots: dict[int, dict[int, tuple[int, int, int]]] = {}  # fd -> slot -> (gpa, size, flags)
    out = []
    for seq, op in enumerate(ioctls_):
        vm = slots.setdefault(op.fd, {})
        old = vm.get(op.slot)
        others = len(vm) - (1 if old is not None else 0)
        if op.ret != 0:
            kind, size = "failed", op.size
        elif op.size == 0:
            kind, size = ("delete" if old is not None else "failed"), old[1] if old else 0
            vm.pop(op.slot, None)
        elif old is None:
            kind, size = "create", op.size
            vm[op.slot] = (op.gpa, op.size, op.flags)
        else:
            kind = ("move" if op.gpa != old[0] else "flags" if op.flags != old[2] else "same")
            size = op.size
            vm[op.slot] = (op.gpa, op.size, op.flags)
        out.append(MemslotOp(kind, others, size, op.ns, seq))
    return out
