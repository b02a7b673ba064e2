"""rom-toggle at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

import os
import threading

import pytest

from kvmharness.scenarios import rom_toggle
from kvmharness.scenarios.base import RunRequest, VariantUnsupported


def run_quick(variant: dict[str, str], **overrides: str):
    spec = rom_toggle.SPEC
    params = spec.resolve_params(overrides, quick=True)
    return spec.run(RunRequest(params, variant, iterations=2, warmup=1))


@pytest.mark.usefixtures("kvm")
@pytest.mark.parametrize("zap", ["all", "slot"])
def test_rom_toggle_reads_rom_and_records_every_metric(zap):
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    try:
        outcome = run_quick({"zap": zap})
    except VariantUnsupported as exc:
        pytest.skip(str(exc))
    declared = {m.name for m in rom_toggle.SPEC.metrics}
    assert declared <= set(outcome.samples), f"missing {declared - set(outcome.samples)}"
    assert len(outcome.samples["total"]) == 2 and len(outcome.warmups["total"]) == 1
    assert len(outcome.samples["pass"]) == 2 * 5  # 2 iterations x 5 passes x 1 vCPU
    # The guest asserts every ROM word is the pattern or all-ones; both must have occurred
    # for the toggling to have been observed at all.
    assert outcome.effective["rom_words_present"] > 0
    deletes = len(outcome.samples["slot_delete"])
    assert deletes == sum(outcome.samples["toggles"]) > 0
    assert outcome.kvm_stats["hammer"]["vcpu.exits"] > 0
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
    if outcome.effective["tracefs"] == "usable":
        fast = outcome.tracepoints["hammer"]["kvm_mmu_zap_all_fast"]
        if zap == "slot":
            assert fast == 0 and outcome.effective["zap_path"] == "slot"
        else:
            assert fast >= deletes and outcome.effective["zap_path"] == "all"
        assert not outcome.warnings


def test_rom_toggle_parameter_errors_are_clear():
    with pytest.raises(ValueError, match="parameter 'vcpus' expects int"):
        rom_toggle.SPEC.resolve_params({"vcpus": "many"}, quick=True)
    with pytest.raises(KeyError, match="no parameter 'cpus'"):
        rom_toggle.SPEC.resolve_params({"cpus": "2"}, quick=True)
