"""What runs inside an ``ab`` boot: the guest's script, environment and interpreter, and
the MMU mode its result files recorded."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kvmharness.runner.boot import cache_dir, package_root, passthrough_env, shq
from kvmharness.runner.kernels import Kernel

if TYPE_CHECKING:
    from kvmharness.runner.ab import AbPlan


SYSTEM_PYTHON = Path("/usr/bin/python3")


# Where each boot's result folder appears inside the guest.  One fixed path for every
# boot: it is on the guest kernel command line, which result files record, and boots of
# one kernel should not look like different setups to `compare`.  (/tmp is a writable
# overlay inside, so vng can create the mount point.)
GUEST_OUT = Path("/tmp/kvmharness-ab-out")


GUEST_DEPS = ("psutil", "elftools", "tabulate")


@dataclasses.dataclass(frozen=True)
class GuestPython:
    interpreter: str
    pythonpath: tuple[Path, ...]
    note: str | None = None


def guest_body(plan: AbPlan, kernel: Kernel, rwdir: Path = GUEST_OUT) -> str:
    """The shell lines the guest runs: check KVM is there, then each scenario, recording
    each exit status in RWDIR/status (the boot's own status is the worst of them).
    ``rwdir`` is the guest's view of the boot's result folder."""
    py = shq(plan.python.interpreter)
    no_kvm = shq(f"kvmharness ab: no /dev/kvm in {kernel.name} after modprobe "
                 f"{plan.accel.module}")
    lines = ["rc=0", f"[ -c /dev/kvm ] || {{ echo {no_kvm} >&2; exit 3; }}"]
    for call in plan.options.calls:
        argv = [*call.options, "--label", kernel.name, "--out", str(rwdir)]
        lines.append(f"{py} -m kvmharness run {shq(call.scenario)} "
                     + " ".join(shq(a) for a in argv))
        lines.append(f"s=$?; echo {shq(call.scenario)} $s >> {shq(str(rwdir / 'status'))}; "
                     "[ $s -eq 0 ] || rc=$s")
    lines.append("exit $rc")
    return "\n".join(lines)


def guest_env(plan: AbPlan, kernel: Kernel) -> dict[str, str]:
    return {
        **passthrough_env(),  # KVMHARNESS_* and CI, as tools/vng-run passes them
        "PYTHONPATH": ":".join(str(p) for p in plan.python.pythonpath),
        "KVMHARNESS_VNG_KERNEL": kernel.version,
        **host_commit(),
        **plan.guest_env,
    }


def host_commit() -> dict[str, str]:
    """The checkout's commit as the host's git sees it: git inside a boot may not read
    the shared checkout, and the result files must still say which harness ran."""
    from kvmharness.observe.fingerprint import HARNESS_COMMIT_ENV, harness_identity

    ident = harness_identity()
    if not ident["git_commit"]:
        return {}
    return {HARNESS_COMMIT_ENV: ident["git_commit"] + (" dirty" if ident["git_dirty"] else "")}


def pick_guest_python(cache: Path | None = None,
                      run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
                      ) -> GuestPython:
    """Debian's /usr/bin/python3 with the pip --target folder of tools/vng-run --setup
    when it has the dependencies: it starts in ~1 s under TCG, where a pyenv or venv
    interpreter over 9p takes 6-17 s (tools/README.md).  Otherwise this very interpreter,
    which has them (it is running kvmharness)."""
    pydeps = (cache or cache_dir()) / "pydeps"
    root = package_root()
    if SYSTEM_PYTHON.exists() and pydeps.is_dir():
        probe = ("import sys; assert sys.version_info >= (3, 10); import "
                 + ", ".join(GUEST_DEPS))
        env = {**os.environ, "PYTHONPATH": str(pydeps)}
        try:
            ok = run([str(SYSTEM_PYTHON), "-c", probe], env=env, capture_output=True,
                     timeout=60, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return GuestPython(str(SYSTEM_PYTHON), (pydeps, root))
    note = (f"inside the guest kvmharness runs under {sys.executable}; under TCG a "
            f"non-system interpreter can take 10+ s to start. Faster: {SYSTEM_PYTHON} -m pip "
            f"install --target {pydeps} psutil pyelftools tabulate (or tools/vng-run --setup)")
    return GuestPython(sys.executable, (root,), note)


def recorded_mmu(path: Path) -> str | None:
    """The MMU mode line of a result file's fingerprint; None when it cannot be read."""
    import json

    from kvmharness.observe.fingerprint import mmu_of, mmu_text

    try:
        env = json.loads(path.read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return None
    return mmu_text(mmu_of(env)) if isinstance(env, dict) else None
