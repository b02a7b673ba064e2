"""`kvmharness ab` and the boot runner against real QEMU and real kernels.

These boot Debian kernels under QEMU (tens of seconds each), so they only run where asked:
``KVMHARNESS_VNG_TESTS=1`` (CI stage 2 sets it after tools/vng-run --setup).  There a
missing prerequisite is a failure, not a skip.  Kernels come from the tools/vng-run cache
(``$KVMHARNESS_CACHE/kernels``); override with ``KVMHARNESS_AB_KERNEL_A`` / ``_B``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmharness.runner.boot import BootSpec, boot, cache_dir, kernel_binds, prepare_kernel
from kvmharness.runner.host import check_prerequisites, decide_accel, find_vng
from kvmharness.runner.kernels import resolve_kernel

ENABLED = os.environ.get("KVMHARNESS_VNG_TESTS", "") not in ("", "0")
# tools/vng-run and `ab` set it inside their boots.
INSIDE_BOOT = os.environ.get("KVMHARNESS_VNG_KERNEL")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_A, DEFAULT_B = "6.1.0-56-amd64", "6.12.117+deb12-amd64"

pytestmark = [
    pytest.mark.skipif(not ENABLED, reason="boots kernels under QEMU: set "
                       "KVMHARNESS_VNG_TESTS=1 (CI stage 2 does)"),
    pytest.mark.skipif(bool(INSIDE_BOOT), reason=f"running inside a vng boot of "
                       f"{INSIDE_BOOT}: no QEMU is booted from in here"),
]


def kernel_dir(which: str, default: str) -> Path:
    path = Path(os.environ.get(f"KVMHARNESS_AB_KERNEL_{which}") or
                cache_dir() / "kernels" / default)
    assert path.is_dir(), f"{path} missing: run tools/vng-run --setup"
    return path


def qemu_pids() -> set[int]:
    """Live QEMUs.  A killed QEMU stays a zombie until init reaps it (a second or two
    here); its cmdline is empty then, and it is not running anything."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"qemu-system-x86" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def vng() -> str:
    missing = check_prerequisites(vng=find_vng())
    assert not missing, "; ".join(map(str, missing))
    found = find_vng()
    assert found
    return found


def test_nonexistent_kernel_is_refused_before_anything_starts(tmp_path: Path) -> None:
    before = qemu_pids()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmharness", "ab", "rom-toggle", "--quick",
         "--kernel", f"A={tmp_path / 'no-such-vmlinuz'}",
         "--kernel", f"B={kernel_dir('B', DEFAULT_B)}", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"kernel A: {tmp_path / 'no-such-vmlinuz'} does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert qemu_pids() <= before


def test_a_boot_that_times_out_is_killed_with_its_console_tail(vng: str, tmp_path: Path) -> None:
    kernel = resolve_kernel("A", kernel_dir("A", DEFAULT_A))
    accel = decide_accel("auto")
    target = prepare_kernel(kernel, accel.module, tmp_path / "stage")
    # Long enough for the kernel to print something, far too short to reach the script.
    spec = BootSpec(target, accel, rodirs=tuple(kernel_binds(kernel)), timeout_s=6)
    before = qemu_pids()
    start = time.monotonic()
    r = boot(vng, spec, name="A", version=kernel.version, body="sleep 600", cwd=tmp_path,
             env={}, modprobe="", out=lambda line: None, err=lambda line: None,
             console_log=tmp_path / "console.log")
    assert time.monotonic() - start < 6 + 5 + 15
    assert r.status == "timeout" and r.rc == 124, r.summary()
    assert "timed out" in r.failure_report()
    assert r.leftover_pids == []
    assert qemu_pids() <= before, "a QEMU survived the timeout"
    # The console was captured up to the kill (virtio console: 6.1 logs from ~4 s on).
    assert (tmp_path / "console.log").exists()


def test_ab_one_round_of_rom_toggle(tmp_path: Path, vng: str) -> None:
    """The whole command, once per kernel: 6.1 vs 6.12 at the smallest size."""
    out = tmp_path / "ab"
    before = qemu_pids()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmharness", "ab", "rom-toggle", "--quick", "--repeat", "1",
         "--rounds", "1", "--quiet", "--timeout", "600",
         "--kernel", f"6.1={kernel_dir('A', DEFAULT_A)}",
         "--kernel", f"6.12={kernel_dir('B', DEFAULT_B)}", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1500)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "ab.json").read_text())
    assert [(b["kernel"], b["status"]) for b in doc["boots"]] == [("6.1", "ok"), ("6.12", "ok")]
    assert "rom-toggle (zap=all): A = 6.1, B = 6.12" in (out / "compare-kernels.txt").read_text()
    # 6.12 has the quirk: its variants are compared; 6.1 skipped zap=slot with the reason.
    assert (out / "compare-variants-6.12.txt").exists()
    assert not (out / "compare-variants-6.1.txt").exists()
    r61 = json.loads(next((out / "r1-6.1").glob("rom-toggle-*.json")).read_text())
    assert any("quirk not supported" in w for w in r61["warnings"])
    assert qemu_pids() <= before


def test_ab_one_image_in_two_mmu_modes(tmp_path: Path, vng: str) -> None:
    """One 6.12 image as two configurations (TDP MMU, and legacy TDP MMU through
    --append), two vCPUs per boot and two hammer vCPUs: each result names its MMU mode."""
    out = tmp_path / "ab"
    before = qemu_pids()
    image = kernel_dir("B", DEFAULT_B)
    proc = subprocess.run(
        [sys.executable, "-m", "kvmharness", "ab", "rom-toggle", "--quick", "--repeat", "1",
         "--rounds", "1", "--quiet", "--timeout", "600", "--variant", "zap=all",
         "--param", "vcpus=2", "--cpus", "2",
         "--kernel", f"tdp={image}", "--kernel", f"legacy={image}",
         "--append", "legacy=kvm.tdp_mmu=0", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1500)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "ab.json").read_text())
    assert [(b["kernel"], b["status"]) for b in doc["boots"]] == [("tdp", "ok"),
                                                                   ("legacy", "ok")]
    assert doc["accel"]["cpus"] == 2
    modes = {}
    for name in ("tdp", "legacy"):
        result = json.loads(next((out / f"r1-{name}").glob("rom-toggle-*.json")).read_text())
        fp = result["environment"]
        modes[name] = fp["kvm_mmu"]["mode"]
        assert "kvm.tdp_mmu=0" in fp["kernel"]["cmdline"] or name == "tdp"
    assert modes == {"tdp": "tdp_mmu", "legacy": "legacy_tdp"}
    assert "A = tdp, B = legacy" in (out / "compare-kernels.txt").read_text()
    assert qemu_pids() <= before
