"""Acceleration choice and prerequisite checks for booting kernels (no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmharness.runner.host import (
    TCG_MAX_CPUS,
    AccelError,
    HostView,
    check_prerequisites,
    decide_accel,
)


def host(flags: str = "", modules: tuple[str, ...] = (), nested: dict[str, str] | None = None,
         usable: bool = True, nproc: int = 16) -> HostView:
    return HostView(frozenset(flags.split()), frozenset(modules), nested or {}, usable, nproc)


def test_real_vmx_host_with_nested_kvm_uses_cpu_host() -> None:
    a = decide_accel("auto", host=host("fpu vmx ept", ("kvm", "kvm_intel"), {"kvm_intel": "Y"}))
    assert (a.mode, a.module, a.qemu_cpu, a.cpus, a.warning) == ("kvm", "kvm_intel", "host", 8,
                                                                  None)


def test_real_svm_host_takes_the_cpus_asked_for() -> None:
    a = decide_accel("auto", cpus=4, host=host("svm npt", ("kvm", "kvm_amd"), {"kvm_amd": "1"}))
    assert (a.mode, a.module, a.cpus) == ("kvm", "kvm_amd", 4)


@pytest.mark.parametrize("view, why", [
    (host("svm", ("kvm", "kvm_pvm")), "PVM"),
    (host("sse2", ("kvm",)), "no vmx/svm"),
    (host("vmx", ("kvm", "kvm_intel"), {"kvm_intel": "Y"}, usable=False), "/dev/kvm"),
    (host("vmx", ("kvm", "kvm_intel"), {"kvm_intel": "N"}), "nested virtualization is off"),
])
def test_falls_back_to_tcg_and_says_why(view: HostView, why: str) -> None:
    a = decide_accel("auto", host=view)
    assert (a.mode, a.module, a.qemu_cpu, a.cpus) == ("tcg", "kvm_amd", "max", 1)
    assert why in a.reason
    assert a.warning and "not representative" in a.warning
    with pytest.raises(AccelError, match=why.replace("/", ".")):
        decide_accel("kvm", host=view)


def test_tcg_runs_several_vcpus_on_one_thread() -> None:
    pvm = host("svm", ("kvm", "kvm_pvm"))
    one = decide_accel("tcg", cpus=1, host=pvm)
    assert one.cpus == 1 and one.qemu_accel == "" and "1 vCPU" in str(one.warning)
    two = decide_accel("auto", cpus=2, host=pvm)
    assert (two.mode, two.cpus, two.qemu_accel) == ("tcg", 2, "-accel tcg,thread=single")
    assert "thread=single" in two.reason and "2 vCPUs on one TCG thread" in str(two.warning)
    assert decide_accel("auto", cpus=TCG_MAX_CPUS, host=pvm).cpus == TCG_MAX_CPUS
    with pytest.raises(AccelError, match=f"--cpus {TCG_MAX_CPUS + 1}: under TCG 1 to"):
        decide_accel("auto", cpus=TCG_MAX_CPUS + 1, host=pvm)
    # Hardware acceleration never needs it.
    kvm = decide_accel("auto", cpus=4, host=host("svm", ("kvm", "kvm_amd"), {"kvm_amd": "1"}))
    assert kvm.qemu_accel == ""
    # Asked for TCG on a host that could do better: honoured, with the reason.
    a = decide_accel("tcg", host=host("svm", ("kvm", "kvm_amd"), {"kvm_amd": "Y"}))
    assert a.mode == "tcg" and "asked" in a.reason


def test_host_view_reads_a_tree(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu svm npt\n")
    (tmp_path / "sys/module/kvm_amd/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/kvm_amd/parameters/nested").write_text("1\n")
    (tmp_path / "sys/module/kvm").mkdir()
    view = HostView.read(tmp_path)
    assert "svm" in view.cpu_flags and view.modules == {"kvm", "kvm_amd"}
    assert view.nested == {"kvm_amd": "1"} and not view.dev_kvm_usable


def test_prerequisites_name_the_package_for_each_missing_tool(tmp_path: Path) -> None:
    missing = check_prerequisites(which=lambda name: None, exists=lambda path: False,
                                  beside=tmp_path)
    text = "\n".join(map(str, missing))
    for needle in ("apt-get install qemu-system-x86", "pip install virtme-ng",
                   "apt-get install busybox-static", "apt-get install udev",
                   "apt-get install kmod"):
        assert needle in text
    assert len(missing) == 5


def test_prerequisites_all_there() -> None:
    assert check_prerequisites(which=lambda name: f"/usr/bin/{name}",
                               exists=lambda path: path.endswith("systemd-udevd")) == []
