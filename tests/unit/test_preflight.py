"""The preflight's work bound: on an instruction-emulating KVM (PVM) an iteration whose
guest work cannot finish within its limit is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmharness import cli
from kvmharness.cli import common as cli_common
from kvmharness.scenarios import preflight, registry, slot_ops

ROM = registry.all_scenarios()["rom-toggle"]


def fake_root(tmp_path: Path, module: str, flags: str) -> Path:
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    (tmp_path / "sys/module" / module / "parameters").mkdir(parents=True)
    return tmp_path


def test_pvm_is_an_emulating_backend_and_svm_is_not(tmp_path: Path) -> None:
    assert preflight.emulating_backend(fake_root(tmp_path / "a", "kvm_pvm", "fpu")) == "PVM"
    assert preflight.emulating_backend(fake_root(tmp_path / "b", "kvm_amd", "fpu svm")) is None


def test_work_beyond_the_limit_names_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "emulating_backend", lambda: "PVM")
    params = ROM.resolve_params({"passes": "4096", "mem_per_vcpu": "1024"}, quick=True)
    (problem,) = ROM.preflight(params)
    # 4096 passes x 262144 pages x 10 instructions, at ~1 us each on one vCPU.
    assert problem.startswith("rom-toggle: one iteration is ~10737 million guest "
                              "instructions, ~10737 s on this instruction-emulating KVM (PVM")
    assert "more than its 120 s limit: lower passes, mem_per_vcpu or vcpus" in problem
    assert ROM.preflight(ROM.resolve_params({}, quick=True)) == []
    monkeypatch.setattr(preflight, "emulating_backend", lambda: None)
    assert ROM.preflight(params) == []  # VT-x/AMD-V: not estimated


def test_run_refuses_it_before_anything_is_written(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(preflight, "emulating_backend", lambda: "PVM")
    monkeypatch.setattr(cli_common, "kvm_access_problem", lambda: None)
    out = tmp_path / "out"
    assert cli.main(["run", "rom-toggle", "--quick", "--param", "passes=4096", "--param",
                     "mem_per_vcpu=1024", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvmharness run: rom-toggle: one iteration is ~10737 million")
    assert max(map(len, err.splitlines())) <= 75 and "Traceback" not in err
    assert not out.exists()


def test_slot_ops_work_counts_a_pass_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.all_scenarios()["slot-ops"]
    monkeypatch.setattr(preflight, "emulating_backend", lambda: "PVM")
    # 4 GiB of guest RAM must not trip the RAM check first on a small host (a 4G vng boot).
    monkeypatch.setattr(preflight, "ram_problems", lambda ram, knobs: [])
    monkeypatch.setattr(slot_ops, "check_host_memory", lambda *args, **kwargs: None)
    assert spec.preflight(spec.resolve_params({}, quick=True)) == []
    big = spec.resolve_params({"populated_mib": "4096"}, quick=True)
    (problem,) = spec.preflight(big)
    assert problem.startswith("slot-ops: one iteration is ~")
    assert "lower populated_mib, the number of sizes or ops_per_size" in problem
    idle = spec.resolve_params({"populated_mib": "4096", "populated": "false"}, quick=True)
    assert spec.preflight(idle) == []  # the guest never runs
