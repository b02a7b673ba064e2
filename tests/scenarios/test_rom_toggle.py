"""rom-toggle at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

import pytest

from kvmharness.scenarios import rom_toggle


@pytest.mark.usefixtures("kvm")
@pytest.mark.parametrize("zap", ["all", "slot"])
def test_rom_toggle_reads_rom_and_records_every_metric(run_quick, zap):
    run = run_quick(rom_toggle.SPEC, {"zap": zap}, iterations=2, warmup=1)
    outcome = run.ok()
    declared = {m.name for m in rom_toggle.SPEC.metrics}
    assert declared <= set(outcome.samples), f"missing {declared - set(outcome.samples)}"
    assert len(outcome.samples["total"]) == 2 and len(outcome.warmups["total"]) == 1
    assert len(outcome.samples["pass"]) == 2 * 5  # 2 iterations x 5 passes x 1 vCPU
    # One max_stall per iteration; a pass writes pages, so there was a gap to measure.
    assert len(outcome.samples["max_stall"]) == 2
    assert all(v > 0 for v in outcome.samples["max_stall"])
    # The guest asserts every ROM word is the pattern or all-ones; both must have occurred
    # for the toggling to have been observed at all.
    assert outcome.effective["rom_words_present"] > 0
    deletes = len(outcome.samples["slot_delete"])
    assert deletes == sum(outcome.samples["toggles"]) > 0
    assert outcome.kvm_stats["hammer"]["vcpu.exits"] > 0
    run.check_leaks()
    if outcome.effective["tracefs"] == "usable":
        fast = outcome.tracepoints["hammer"]["kvm_mmu_zap_all_fast"]
        if zap == "slot":
            assert fast == 0 and outcome.effective["zap_path"] == "slot"
        else:
            assert fast >= deletes and outcome.effective["zap_path"] == "all"
        assert not outcome.warnings


def test_rom_toggle_parameter_errors_are_clear():
    with pytest.raises(ValueError, match="parameter 'vcpus' expects 1..64"):
        rom_toggle.SPEC.resolve_params({"vcpus": "many"}, quick=True)
    with pytest.raises(KeyError, match="no parameter 'cpus'"):
        rom_toggle.SPEC.resolve_params({"cpus": "2"}, quick=True)


def test_toggles_shares_the_direction_of_total():
    # toggles ~ iteration length / toggle_ms: it grows exactly when total gets worse.
    spec = rom_toggle.SPEC
    assert spec.metric("toggles").direction == spec.metric("total").direction == "lower"


def test_rom_image_holds_the_guest_pattern():
    image = rom_toggle.rom_image(3 * 4096)
    for offset in (0, 4096, 8192):
        word = int.from_bytes(image[offset:offset + 8], "little")
        assert word == rom_toggle.hammer_rom_word(offset)
