"""An LD_PRELOAD shim that times every KVM_SET_USER_MEMORY_REGION{,2} ioctl a program makes
(the kernel's memslot_perf_test, for ``python -m kvmharness.bench.selftests``), and the
parser that turns its log into classified memslot operations.

The shim wraps ``ioctl()``: for the two memslot requests it reads CLOCK_MONOTONIC just
before and just after the real call, then (outside the timed span) appends one line to
the file named by $KVMHARNESS_SHIM_LOG::

    slot <fd> <v1|v2> <slot> <flags> <gpa> <size> <ns> <ret> <vcpu_on> <vcpu_ns>

The program's vCPU threads (those that called KVM_RUN, each registered at its first call)
are watched through their thread CPU-time clocks: ``vcpu_on`` is 1 if that time advanced
between two reads just before t0 (a vCPU thread was on a CPU as the op began), else 0;
``vcpu_ns`` is the CPU time they got from then until just after t1 (0: none was on a CPU
at any point of the op).  Both are -1 when no vCPU thread is known or alive (before the
first KVM_RUN, after the vCPU threads ended).

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
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SET_REGION  %(v1)#lxUL
#define SET_REGION2 %(v2)#lxUL
#define KVM_RUN_REQ %(run)#lxUL
#define MAX_VCPUS 64

struct region_head {  /* the common start of kvm_userspace_memory_region{,2} */
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
};

static int (*real_ioctl)(int, unsigned long, void *);
static int log_fd = -1;

static clockid_t vcpu_clocks[MAX_VCPUS];
static int vcpus_reserved, vcpus_published;
static __thread int vcpu_registered;

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A thread's first KVM_RUN: remember its CPU-time clock. */
static void register_vcpu_thread(void)
{
	clockid_t clock;
	int i;

	vcpu_registered = 1;
	if (pthread_getcpuclockid(pthread_self(), &clock))
		return;
	i = __atomic_fetch_add(&vcpus_reserved, 1, __ATOMIC_RELAXED);
	if (i >= MAX_VCPUS)
		return;
	vcpu_clocks[i] = clock;
	while (__atomic_load_n(&vcpus_published, __ATOMIC_ACQUIRE) != i)
		;  /* publish in order */
	__atomic_store_n(&vcpus_published, i + 1, __ATOMIC_RELEASE);
}

/* The vCPU threads' CPU time so far; -1 if none is known or one has ended. */
static long long vcpu_cpu_ns(void)
{
	int n = __atomic_load_n(&vcpus_published, __ATOMIC_ACQUIRE), i;
	long long sum = 0;
	struct timespec ts;

	if (!n)
		return -1;
	for (i = 0; i < n; i++) {
		if (clock_gettime(vcpu_clocks[i], &ts))
			return -1;
		sum += ts.tv_sec * 1000000000LL + ts.tv_nsec;
	}
	return sum;
}

int ioctl(int fd, unsigned long request, ...)
{
	struct region_head head;
	long long t0, t1, v0, v1, probe;
	va_list ap;
	void *arg;
	char line[192];
	int ret, len;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!real_ioctl)
		real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	if (request == KVM_RUN_REQ && !vcpu_registered)
		register_vcpu_thread();
	if (request != SET_REGION && request != SET_REGION2)
		return real_ioctl(fd, request, arg);
	head = *(const struct region_head *)arg;  /* before: the call may not change it */
	probe = vcpu_cpu_ns();
	v0 = vcpu_cpu_ns();
	t0 = now_ns();
	ret = real_ioctl(fd, request, arg);
	t1 = now_ns();
	v1 = vcpu_cpu_ns();
	if (log_fd < 0) {
		const char *path = getenv("%(env)s");

		if (!path)
			return ret;
		log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log_fd < 0)
			return ret;
	}
	len = snprintf(line, sizeof(line),
		"slot %%d %%s %%u %%u %%llu %%llu %%lld %%d %%d %%lld\n",
		fd, request == SET_REGION ? "v1" : "v2", head.slot, head.flags,
		(unsigned long long)head.guest_phys_addr,
		(unsigned long long)head.memory_size, t1 - t0, ret,
		probe < 0 || v0 < 0 ? -1 : v0 > probe, v0 < 0 || v1 < 0 ? -1LL : v1 - v0);
	if (write(log_fd, line, len) != len)
		abort();  /* a lost line would silently bias the figures */
	return ret;
}
"""


def shim_source() -> str:
    return SHIM_SOURCE % {"v1": ioctls.KVM_SET_USER_MEMORY_REGION,
                          "v2": ioctls.KVM_SET_USER_MEMORY_REGION2, "run": ioctls.KVM_RUN,
                          "env": LOG_ENV}


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
    result = subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-pthread", "-o", str(tmp),
                             str(src), "-ldl"], check=False, capture_output=True, text=True)
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
    vcpu_on: int = -1  # 1: a vCPU thread was on a CPU as the op began; -1: none known
    vcpu_ns: int = -1  # vCPU threads' CPU time during the op; -1: none known or alive


def parse_log(text: str) -> list[LoggedIoctl]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) != 11 or fields[0] != "slot" or fields[2] not in ("v1", "v2"):
            raise ShimError(f"shim log line {number}: {line!r} is not 'slot <fd> <v1|v2> "
                            "<slot> <flags> <gpa> <size> <ns> <ret> <vcpu_on> <vcpu_ns>'")
        try:
            fd, slot, flags, gpa, size, ns, ret, vcpu_on, vcpu_ns = (
                int(fields[i]) for i in (1, 3, 4, 5, 6, 7, 8, 9, 10))
        except ValueError:
            raise ShimError(f"shim log line {number}: {line!r} has a non-number") from None
        out.append(LoggedIoctl(fd, fields[2], slot, flags, gpa, size, ns, ret, vcpu_on,
                               vcpu_ns))
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
    vcpu_on: int = -1  # LoggedIoctl.vcpu_on: 1 = a vCPU thread on a CPU as the op began
    vcpu_ns: int = -1  # LoggedIoctl.vcpu_ns: 0 = no vCPU thread on a CPU during the op


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
        out.append(MemslotOp(kind, others, size, op.ns, seq, op.vcpu_on, op.vcpu_ns))
    return out
