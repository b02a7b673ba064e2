"""What the host offers for booting a kernel under QEMU: acceleration and prerequisites.

Acceleration (tools/README.md): with a real VT-x/AMD-V /dev/kvm and nested virtualization
enabled, the kernel under test runs as a nested hypervisor (``-cpu host``) at near-native
speed.  Otherwise QEMU's TCG with ``-cpu max`` still exposes SVM + NPT, so ``kvm_amd`` loads
and KVM behaves as on hardware (zap paths, pf_fixed, tracepoints) -- but every instruction
is translated, so timings are not representative.  More than one vCPU under TCG needs
single-threaded TCG (``-accel tcg,thread=single``): with the default one-thread-per-vCPU
TCG the guest kernel intermittently oopses (int3 in the scheduler) while it patches its
own text, which every KVM VM create/destroy and tracepoint toggle does.  One thread runs
all vCPUs in turn, so N vCPUs cost N times the CPU of one, not less.

PVM hosts (kvm_pvm, like the machines this project runs on) have a /dev/kvm that QEMU
could use, but PVM cannot run a guest hypervisor: they get TCG.

Standard library only (tools/vng-run runs this under a bare /usr/bin/python3).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

AccelMode = Literal["kvm", "tcg"]
AccelRequest = Literal["auto", "kvm", "tcg"]

TCG_WARNING = ("TCG (QEMU instruction translation, -cpu max, {cpus}): KVM's behaviour and "
               "counters are real, but timings are not representative of hardware; use "
               "them to compare A with B on this machine only")
# One TCG thread runs every vCPU in turn: beyond a few, each vCPU gets too little of it
# for a guest kernel's timers and watchdogs.
TCG_MAX_CPUS = 8
# Multi-threaded TCG oopses a multi-vCPU guest kernel while it patches its text (module
# doc); one TCG thread for all vCPUs does not.
TCG_SINGLE_THREAD = "-accel tcg,thread=single"


class AccelError(RuntimeError):
    """Hardware acceleration was asked for and is not possible (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Accel:
    mode: AccelMode
    module: str            # kvm_amd / kvm_intel: what to modprobe inside
    cpus: int
    reason: str            # why this mode was chosen (printed, and recorded)

    @property
    def qemu_cpu(self) -> str:
        return "host" if self.mode == "kvm" else "max"

    @property
    def qemu_accel(self) -> str:
        """QEMU options choosing the accelerator's flavour ("" = vng's default)."""
        return TCG_SINGLE_THREAD if self.mode == "tcg" and self.cpus > 1 else ""

    @property
    def warning(self) -> str | None:
        if self.mode != "tcg":
            return None
        what = "1 vCPU" if self.cpus == 1 else f"{self.cpus} vCPUs on one TCG thread"
        return TCG_WARNING.format(cpus=what)


@dataclasses.dataclass(frozen=True)
class HostView:
    """The few host facts the decision needs, read from ``root`` (tests pass a fake tree)."""

    cpu_flags: frozenset[str]
    modules: frozenset[str]        # loaded kvm modules (/sys/module/kvm*)
    nested: dict[str, str]         # kvm_intel/kvm_amd -> their `nested` parameter
    dev_kvm_usable: bool
    nproc: int

    @classmethod
    def read(cls, root: Path = Path("/")) -> HostView:
        flags: set[str] = set()
        try:
            for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
        sys_module = root / "sys/module"
        modules = {m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
                   if (sys_module / m).is_dir()}
        nested = {}
        for m in ("kvm_intel", "kvm_amd"):
            try:
                nested[m] = (sys_module / m / "parameters/nested").read_text().strip()
            except OSError:
                pass
        dev = root / "dev/kvm"
        usable = dev.exists() and os.access(dev, os.R_OK | os.W_OK)
        return cls(frozenset(flags), frozenset(modules), nested, usable, os.cpu_count() or 1)


def decide_accel(request: AccelRequest = "auto", cpus: int | None = None,
                 host: HostView | None = None) -> Accel:
    """KVM acceleration when the host can nest a hypervisor, else TCG (see module doc).

    ``cpus``: vCPUs for the boot (default: up to 8 with KVM, 1 under TCG; more than one
    under TCG runs single-threaded TCG, see the module doc).  Raises AccelError for an
    impossible request.
    """
    host = host or HostView.read()
    vendor_module = "kvm_intel" if "vmx" in host.cpu_flags else "kvm_amd"
    why_not: str | None = None
    if "kvm_pvm" in host.modules:
        why_not = "this host's /dev/kvm is PVM (kvm_pvm), which cannot run a nested hypervisor"
    elif not host.cpu_flags & {"vmx", "svm"}:
        why_not = "the host CPU has no vmx/svm flag"
    elif not host.dev_kvm_usable:
        why_not = "/dev/kvm is missing or not readable and writable by this user"
    elif host.nested.get(vendor_module, "N") not in ("Y", "y", "1"):
        why_not = (f"nested virtualization is off ({vendor_module}.nested="
                   f"{host.nested.get(vendor_module, 'unknown')}; enable it with "
                   f"modprobe {vendor_module} nested=1)")
    if request == "kvm" and why_not:
        raise AccelError(f"--accel kvm: {why_not}")
    if request == "kvm" or (request == "auto" and not why_not):
        n = cpus or min(host.nproc, 8)
        return Accel("kvm", vendor_module, n,
                     f"hardware virtualization ({vendor_module}, nested, -cpu host)")
    if cpus is not None and not 1 <= cpus <= TCG_MAX_CPUS:
        raise AccelError(f"--cpus {cpus}: under TCG 1 to {TCG_MAX_CPUS} vCPUs")
    n = cpus or 1
    reason = "asked for --accel tcg" if request == "tcg" else why_not or ""
    flavour = "" if n == 1 else f", {n} vCPUs on one TCG thread (thread=single)"
    # TCG implements SVM, not VMX: whatever the host CPU, the guest gets kvm_amd.
    return Accel("tcg", "kvm_amd", n, f"TCG -cpu max{flavour}: {reason}")


# --- prerequisites ------------------------------------------------------------------------

UDEVD_PATHS = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd",
               "/usr/bin/udevadm")


@dataclasses.dataclass(frozen=True)
class Missing:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}"


Which = Callable[[str], str | None]


def find_vng(which: Which = shutil.which, beside: Path | None = None) -> str | None:
    """vng on PATH, or beside this interpreter (pip install virtme-ng into an unactivated
    venv puts it there)."""
    found = which("vng")
    if found:
        return found
    candidate = (beside or Path(sys.executable).parent) / "vng"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def check_prerequisites(which: Which = shutil.which,
                        exists: Callable[[str], bool] = os.path.exists,
                        vng: str | None = None, beside: Path | None = None) -> list[Missing]:
    """Host tools that booting with virtme-ng needs, each with the package that has it."""
    missing: list[Missing] = []
    if not which("qemu-system-x86_64"):
        missing.append(Missing("qemu-system-x86_64 (QEMU)", "apt-get install qemu-system-x86"))
    if not (vng or find_vng(which, beside)):
        missing.append(Missing(
            "vng (virtme-ng)",
            "pip install virtme-ng (into this kvmharness venv; on Debian's system Python: "
            "python3 -m venv /opt/virtme-ng && /opt/virtme-ng/bin/pip install virtme-ng && "
            "ln -s /opt/virtme-ng/bin/vng /usr/local/bin/vng)"))
    if not which("busybox"):
        missing.append(Missing("busybox (virtme-ng's initramfs)", "apt-get install busybox-static"))
    if not any(exists(p) for p in UDEVD_PATHS):
        missing.append(Missing(
            "udev on the host (without it the guest prints nothing and exits 255)",
            "apt-get install udev (it may reset /dev/kvm to root:kvm 0660: note the owner and "
            "mode before and restore them after)"))
    if not (which("modprobe") and which("depmod")):
        missing.append(Missing("modprobe/depmod", "apt-get install kmod"))
    return missing
