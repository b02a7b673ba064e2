"""The C side of ``python -m kvmharness.bench.ioctl --peer``: a small C program doing the
same KVM operations as the harness, built with gcc on first use into a cache directory
outside the source tree (which may be read-only).

Its protocol: it sets up its VMs, prints ``ready`` and the operations it offers, then
answers each ``<operation> <count>`` line on stdin with ``<operation>`` and count
nanosecond samples, each timed with clock_gettime(CLOCK_MONOTONIC) immediately around the
ioctl (for ``pio``, around KVM_RUN plus reading the exit).  Staying up between batches
lets the harness alternate with it in small batches.  Its VMs, guest and operations match
``kvmharness.bench.ioctl.HarnessSide``."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

C_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Mirrored here so the program builds against pre-6.8 headers too. */
struct region2 {
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset;
	uint32_t guest_memfd, pad1;
	uint64_t pad2[14];
};
#define SET_REGION2 _IOW(KVMIO, 0x49, struct region2)
#define CAP_USER_MEMORY2 231
#define CAP_DISABLE_QUIRKS2 213
#define QUIRK_SLOT_ZAP_ALL (1ULL << 7)

#define MiB (1ULL << 20)
#define RAM_SIZE 0x10000ULL
#define PAGE_GPA (1ULL << 32)
#define BIG_GPA (2ULL << 32)
#define BIG_SIZE (64 * MiB)

static long long now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "kvmharness-ioctl-peer: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *anon(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

struct vm {
	int fd, vcpu, use2;
	unsigned long region_ioctl;
	struct kvm_run *run;
	unsigned char *ram;
};

/* The region argument, filled before the clock starts: either struct layout. */
static void *region(struct vm *vm, uint32_t slot, uint64_t gpa, uint64_t size, void *uaddr)
{
	static struct region2 r2;
	static struct kvm_userspace_memory_region r1;
	if (vm->use2) {
		memset(&r2, 0, sizeof(r2));
		r2.slot = slot; r2.guest_phys_addr = gpa; r2.memory_size = size;
		r2.userspace_addr = (uint64_t)(uintptr_t)uaddr;
		return &r2;
	}
	r1.slot = slot; r1.flags = 0; r1.guest_phys_addr = gpa; r1.memory_size = size;
	r1.userspace_addr = (uint64_t)(uintptr_t)uaddr;
	return &r1;
}

static void set_region(struct vm *vm, void *arg, const char *what)
{
	if (ioctl(vm->fd, vm->region_ioctl, arg) < 0)
		die(what);
}

/* A real-mode vCPU looping on "out 0x10, al", as kvmharness.bench.ioctl sets it up. */
static void make_vm(int kvm, struct vm *vm, int zap_all)
{
	static const unsigned char loop[] = { 0xB0, 0x01, 0xE6, 0x10, 0xEB, 0xFC };
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int nent = 256, mmap_size, i;
	struct kvm_cpuid2 *cpuid;

	vm->fd = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm->fd < 0)
		die("KVM_CREATE_VM");
	vm->use2 = ioctl(vm->fd, KVM_CHECK_EXTENSION, CAP_USER_MEMORY2) > 0;
	vm->region_ioctl = vm->use2 ? SET_REGION2 : KVM_SET_USER_MEMORY_REGION;
	if (!zap_all) {
		struct kvm_enable_cap cap = { .cap = CAP_DISABLE_QUIRKS2 };
		cap.args[0] = QUIRK_SLOT_ZAP_ALL;
		if (ioctl(vm->fd, KVM_ENABLE_CAP, &cap) < 0)
			die("KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2)");
	}
	if (ioctl(vm->fd, KVM_SET_TSS_ADDR, 0xFFFBD000UL) < 0)
		die("KVM_SET_TSS_ADDR");
	vm->ram = anon(RAM_SIZE);
	memcpy(vm->ram + 0x1000, loop, sizeof(loop));
	set_region(vm, region(vm, 0, 0, RAM_SIZE, vm->ram), "RAM slot");
	vm->vcpu = ioctl(vm->fd, KVM_CREATE_VCPU, 0);
	if (vm->vcpu < 0)
		die("KVM_CREATE_VCPU");
	mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, 0);
	if (vm->run == MAP_FAILED)
		die("mmap kvm_run");
	cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(cpuid->entries[0]));
	cpuid->nent = nent;
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(vm->vcpu, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2");
	free(cpuid);
	if (ioctl(vm->vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = sregs.ds.base = sregs.es.base = sregs.ss.base = 0;
	sregs.cs.selector = sregs.ds.selector = sregs.es.selector = sregs.ss.selector = 0;
	if (ioctl(vm->vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	if (ioctl(vm->vcpu, KVM_GET_REGS, &regs) < 0)
		die("KVM_GET_REGS");
	regs.rip = 0x1000;
	regs.rflags = 0x2;
	if (ioctl(vm->vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
	for (i = 0; i < 10; i++)  /* MMU roots exist for a zap to act on */
		if (ioctl(vm->vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
}

static void print_samples(const char *name, long long *s, int n)
{
	int i;
	printf("%s", name);
	for (i = 0; i < n; i++)
		printf(" %lld", s[i]);
	printf("\n");
	fflush(stdout);
}

/* Moves slot 2 (64 MiB) away and back, one position per sample, as the harness does. */
static void moves(struct vm *vm, int *away, long long *s, int n, void *big)
{
	int i;
	for (i = 0; i < n; i++) {
		struct region2 arg;
		long long t0, t1;
		*away = !*away;
		memcpy(&arg, region(vm, 2, BIG_GPA + (*away ? BIG_SIZE : 0), BIG_SIZE, big),
			sizeof(arg));
		t0 = now();
		if (ioctl(vm->fd, vm->region_ioctl, &arg) < 0)
			die("move");
		t1 = now();
		s[i] = t1 - t0;
	}
}

/* Reads "<operation> <count>" lines and answers each with "<operation> <ns>...", so the
 * harness can alternate with it in small batches while both keep their VMs. */
int main(void)
{
	int kvm, i, k, cap = 0, have_quirk, away_all = 0, away_slot = 0;
	long long *s = NULL, t0, t1;
	struct region2 create, delete;
	struct vm vm, slotvm;
	void *page, *big;
	char op[32];

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	page = anon(4096);
	big = anon(BIG_SIZE);
	make_vm(kvm, &vm, 1);
	set_region(&vm, region(&vm, 2, BIG_GPA, BIG_SIZE, big), "64 MiB slot");
	have_quirk = ioctl(vm.fd, KVM_CHECK_EXTENSION, CAP_DISABLE_QUIRKS2);
	have_quirk = have_quirk > 0 && (have_quirk & QUIRK_SLOT_ZAP_ALL);
	if (have_quirk) {
		make_vm(kvm, &slotvm, 0);
		set_region(&slotvm, region(&slotvm, 2, BIG_GPA, BIG_SIZE, big), "64 MiB slot");
	}
	memcpy(&create, region(&vm, 1, PAGE_GPA, 4096, page), sizeof(create));
	memcpy(&delete, region(&vm, 1, PAGE_GPA, 0, NULL), sizeof(delete));
	printf("ready null create delete move-all%s pio\n", have_quirk ? " move-slot" : "");
	fflush(stdout);

	while (scanf("%31s %d", op, &k) == 2) {
		if (k < 1)
			k = 1;
		if (k > cap) {
			cap = k;
			s = realloc(s, cap * sizeof(*s));
			if (!s)
				die("realloc");
		}
		if (!strcmp(op, "null")) {
			for (i = 0; i < k; i++) {
				t0 = now();
				if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) < 0)
					die("KVM_CHECK_EXTENSION");
				t1 = now();
				s[i] = t1 - t0;
			}
		} else if (!strcmp(op, "create")) {
			for (i = 0; i < k; i++) {
				t0 = now();
				if (ioctl(vm.fd, vm.region_ioctl, &create) < 0)
					die("create");
				t1 = now();
				s[i] = t1 - t0;
				if (ioctl(vm.fd, vm.region_ioctl, &delete) < 0)
					die("delete");
			}
		} else if (!strcmp(op, "delete")) {
			for (i = 0; i < k; i++) {
				if (ioctl(vm.fd, vm.region_ioctl, &create) < 0)
					die("create");
				t0 = now();
				if (ioctl(vm.fd, vm.region_ioctl, &delete) < 0)
					die("delete");
				t1 = now();
				s[i] = t1 - t0;
			}
		} else if (!strcmp(op, "move-all")) {
			moves(&vm, &away_all, s, k, big);
		} else if (!strcmp(op, "move-slot") && have_quirk) {
			moves(&slotvm, &away_slot, s, k, big);
		} else if (!strcmp(op, "pio")) {
			for (i = 0; i < k; i++) {
				t0 = now();
				if (ioctl(vm.vcpu, KVM_RUN, 0) < 0)
					die("KVM_RUN");
				if (vm.run->exit_reason != KVM_EXIT_IO || vm.run->io.port != 0x10
					|| vm.run->io.direction != KVM_EXIT_IO_OUT)
					die("unexpected exit");
				t1 = now();
				s[i] = t1 - t0;
			}
		} else {
			fprintf(stderr, "kvmharness-ioctl-peer: unknown operation %s\n", op);
			return 2;
		}
		print_samples(op, s, k);
	}
	return 0;
}
"""


class PeerBuildError(RuntimeError):
    """The C peer could not be built (no gcc, no writable cache, a compile error)."""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmharness" / "bench"


def build_peer(cache: Path | None = None) -> Path:
    """The peer's executable, compiled once per source version.  Uses ``cache`` (default
    ~/.cache/kvmharness/bench), or a fresh temporary directory when that is not writable."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise PeerBuildError("the C comparison needs gcc on PATH (apt-get install gcc)")
    digest = hashlib.sha256(C_SOURCE.encode()).hexdigest()[:16]
    for root in ([cache] if cache is not None else [_cache_root(), None]):
        try:
            if root is None:
                folder = Path(tempfile.mkdtemp(prefix="kvmharness-peer-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
            else:
                folder = root / digest
            exe = folder / "kvmharness-ioctl-peer"
            if exe.exists():
                return exe
            folder.mkdir(parents=True, exist_ok=True)
            src = folder / f"peer-{os.getpid()}.c"
            src.write_text(C_SOURCE)
            tmp = folder / f".peer-{os.getpid()}"
            result = subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(src)],
                                    check=False, capture_output=True, text=True)
            src.unlink()
            if result.returncode != 0:
                raise PeerBuildError(f"gcc failed to build the C peer:\n{result.stderr}")
            os.replace(tmp, exe)  # atomic: a concurrent build never sees half a file
            return exe
        except OSError:
            if root is None or cache is not None:
                raise
    raise AssertionError("unreachable")


class CPeer:
    """The running C peer: ``batch(operation, count)`` returns its samples in ns."""

    def __init__(self, exe: Path) -> None:
        self._proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        ready = self._line()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the C peer did not start: {ready!r}")
        self.operations = tuple(ready.split()[1:])

    def _line(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=10)
            assert self._proc.stderr is not None
            raise RuntimeError(f"the C peer failed: {self._proc.stderr.read().strip()}")
        return line

    def batch(self, operation: str, count: int) -> list[int]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{operation} {count}\n")
        self._proc.stdin.flush()
        name, *values = self._line().split()
        if name != operation or len(values) != count:
            raise RuntimeError(f"the C peer answered {name} with {len(values)} samples")
        return [int(v) for v in values]

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> CPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
