"""The MMU mode a fingerprint names, from fake /sys/module parameter trees: every way the
kvm, kvm_amd/kvm_intel and kvm_pvm parameters combine, and old fingerprints without the
key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmharness.observe import fingerprint


def fake_sys(tmp_path: Path, modules: dict[str, dict[str, str]]) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu svm\n")
    for name, params in modules.items():
        d = root / "sys/module" / name / "parameters"
        d.mkdir(parents=True)
        for k, v in params.items():
            (d / k).write_text(v + "\n")
    return root


@pytest.mark.parametrize(("modules", "mode", "caching"), [
    ({"kvm": {"tdp_mmu": "Y", "mmio_caching": "Y"}, "kvm_amd": {"npt": "Y"}}, "tdp_mmu", True),
    ({"kvm": {"tdp_mmu": "N", "mmio_caching": "Y"}, "kvm_amd": {"npt": "Y"}}, "legacy_tdp",
     True),
    ({"kvm": {"tdp_mmu": "N", "mmio_caching": "N"}, "kvm_amd": {"npt": "N"}}, "shadow", False),
    # kvm_amd's npt was an int parameter on older kernels.
    ({"kvm": {"tdp_mmu": "N"}, "kvm_amd": {"npt": "0"}}, "shadow", None),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y"}}, "tdp_mmu", None),
    ({"kvm": {"tdp_mmu": "N"}, "kvm_intel": {"ept": "Y"}}, "legacy_tdp", None),
    ({"kvm": {"tdp_mmu": "N"}, "kvm_intel": {"ept": "N"}}, "shadow", None),
    # Before 5.10 there is no TDP MMU and no tdp_mmu parameter.
    ({"kvm": {}, "kvm_intel": {"ept": "Y"}}, "legacy_tdp", None),
    ({"kvm": {"tdp_mmu": "N", "mmio_caching": "N"}, "kvm_pvm": {}}, "shadow", False),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_pvm": {}}, "unknown", None),
    ({"kvm": {"tdp_mmu": "Y"}}, "unknown", None),
    ({}, "unknown", None),
])
def test_mode_from_module_parameters(tmp_path: Path, modules: dict[str, dict[str, str]],
                                     mode: str, caching: bool | None) -> None:
    fp = fingerprint.collect({"status": "unavailable: test"}, root=fake_sys(tmp_path, modules))
    json.dumps(fp)
    assert fp["kvm_mmu"]["mode"] == mode
    assert fp["kvm_mmu"]["mmio_caching"] is caching
    assert fingerprint.mmu_of(fp) == fp["kvm_mmu"]


def test_basis_names_the_parameters_read() -> None:
    mmu = fingerprint.mmu_mode({"kvm": {"tdp_mmu": "N", "mmio_caching": "Y"},
                                "kvm_amd": {"npt": "Y"}})
    assert mmu["basis"] == "kvm.tdp_mmu=N, kvm_amd.npt=Y"
    assert fingerprint.mmu_text(mmu) == ("legacy_tdp (kvm.tdp_mmu=N, kvm_amd.npt=Y), "
                                         "MMIO SPTE caching on")


def test_pvm_is_shadow_with_a_note() -> None:
    mmu = fingerprint.mmu_mode({"kvm": {"tdp_mmu": "N"}, "kvm_pvm": {}})
    assert mmu["mode"] == "shadow"
    assert "PVM" in mmu["note"] and "pf_fixed" in mmu["note"]
    assert fingerprint.mmu_text(mmu).endswith(mmu["note"])


def test_statements_show_the_mode(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, {"kvm": {"tdp_mmu": "N", "mmio_caching": "Y"},
                               "kvm_amd": {"npt": "N"}})
    fp = fingerprint.collect({"status": "unavailable: test"}, root=root)
    assert "MMU: shadow (kvm.tdp_mmu=N, kvm_amd.npt=N), MMIO SPTE caching on" in \
        fingerprint.statements(fp)


def test_old_fingerprint_without_the_key_is_derived() -> None:
    old = {"kvm_modules": {"kvm": {"tdp_mmu": "Y"}, "kvm_amd": {"npt": "Y"}}}
    assert fingerprint.mmu_of(old)["mode"] == "tdp_mmu"
    assert fingerprint.mmu_of({})["mode"] == "unknown"
    # A recorded mode wins over the parameters (they are the same boot's anyway).
    assert fingerprint.mmu_of({**old, "kvm_mmu": {"mode": "shadow", "mmio_caching": None}}
                              )["mode"] == "shadow"
    assert fingerprint.mmu_of({**old, "kvm_mmu": {"mode": "bogus"}})["mode"] == "tdp_mmu"
