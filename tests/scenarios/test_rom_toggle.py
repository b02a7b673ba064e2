"""rom-toggle at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

import itertools

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
    check_timeline(outcome, nvcpus=1)
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


def check_timeline(outcome, nvcpus: int, passes: int = 5) -> dict:
    """The last measured iteration's timeline is consistent with its own samples and
    clock: returns it."""
    t = outcome.effective["timeline"]
    ends, lengths, owners = t["pass_end_s"], t["pass_ms"], t["pass_vcpu"]
    assert len(ends) == len(lengths) == len(owners) == nvcpus * passes
    assert sorted(owners) == sorted(v for v in range(nvcpus) for _ in range(passes))
    # The same passes as the last iteration's samples (the timeline is that iteration's).
    assert sorted(lengths) == pytest.approx(sorted(outcome.samples["pass"][-len(lengths):]),
                                            abs=1e-4)
    assert ends == sorted(ends)
    slack = t["clock_error_s"] + 2e-6  # the TSC-to-host mapping, plus rounding
    # Placing a pass inside the iteration also allows for the host clock's rate against
    # the TSC (NTP slew, a nested host's emulated TSC): 0.2% of the span.
    span_slack = slack + 2e-3 * t["end_s"]
    for v in range(nvcpus):
        mine = [(e, ms) for e, ms, o in zip(ends, lengths, owners) if o == v]
        # A vCPU's passes follow each other: the guest TSC orders them, and so must the
        # mapping onto the host clock; all of them inside the iteration.
        assert mine[0][0] - mine[0][1] / 1000 >= -span_slack
        assert mine[-1][0] <= t["end_s"] + span_slack
        for (prev_end, _), (end, ms) in itertools.pairwise(mine):
            assert end - ms / 1000 >= prev_end - slack
    deletes = t["delete_s"]
    assert deletes == sorted(deletes) and all(0 <= d <= t["end_s"] for d in deletes)
    # toggles counts the deletes begun while the vCPUs ran, the ones the timeline shows.
    toggles = int(outcome.samples["toggles"][-1])
    assert toggles == len(deletes)
    return t


@pytest.mark.usefixtures("kvm")
def test_timeline_places_passes_and_deletes_on_one_clock(run_quick, tmp_path):
    run = run_quick(rom_toggle.SPEC, {"zap": "all"}, iterations=2, warmup=1, vcpus="2")
    t = check_timeline(run.ok(), nvcpus=2)
    assert t["vcpus"] == 2 and t["delete_s"]
    run.check_leaks()
    draw_timeline(run.ok(), tmp_path / "timeline.svg")


def draw_timeline(outcome, out):
    """kvmharness plot draws a real timeline: one line per vCPU, every delete marked."""
    pytest.importorskip("matplotlib")
    from kvmharness.plot import plot_files
    from kvmharness.plot.figures import _pyplot, draw
    from kvmharness.results.model import ResultFile, RunRecord

    record = RunRecord.from_outcome(outcome, rom_toggle.SPEC, index=0, repeat=0,
                                    variant={"zap": "all"})
    result = ResultFile(scenario={"name": "rom-toggle", "summary": "", "parameters": [],
                                  "metrics": [], "variant_axes": []},
                        parameters={}, quick=True, label="k", variants=[{"zap": "all"}],
                        repeat=1, iterations=2, warmup=1, environment={}, status="complete",
                        runs=[record], source="")
    assert plot_files([result], out) == out and out.stat().st_size > 0
    plt = _pyplot()
    fig = draw(plt, [result], rom_toggle.SPEC.figure)  # the figure rom-toggle declares
    try:
        lines = fig.axes[0].get_lines()
        t = outcome.effective["timeline"]
        # Each vCPU's passes one line with markers; each delete one vertical line.
        passes = [line for line in lines if line.get_marker() == "."]
        assert len(passes) == t["vcpus"]
        assert sum(len(line.get_xdata()) for line in passes) == len(t["pass_end_s"])
        assert len(lines) - len(passes) == len(t["delete_s"])
    finally:
        plt.close(fig)


@pytest.mark.usefixtures("kvm")
def test_timeline_is_bounded(run_quick, monkeypatch):
    # Whole vCPUs, lowest first, while they fit: 7 points hold vCPU 0's 5 passes only.
    monkeypatch.setattr(rom_toggle, "TIMELINE_MAX_POINTS", 7)
    run = run_quick(rom_toggle.SPEC, {"zap": "slot"}, iterations=1, warmup=0, vcpus="2",
                    toggle_ms="1")
    t = run.ok().effective["timeline"]
    assert t["vcpus"] == 1 and t["pass_vcpu"] == [0] * 5
    assert len(t["delete_s"]) <= 7


@pytest.mark.usefixtures("kvm")
def test_an_iteration_without_a_delete_is_a_warning_not_a_silent_gap(run_quick):
    # toggle_ms far beyond the passes' length: the toggler never gets to delete.
    run = run_quick(rom_toggle.SPEC, {"zap": "all"}, iterations=1, warmup=0,
                    passes="1", mem_per_vcpu="1", toggle_ms="60000")
    outcome = run.ok()
    assert "slot_delete" not in outcome.samples and outcome.samples["toggles"] == [0]
    (warning,) = [w for w in outcome.warnings if "no ROM delete" in w]
    assert warning.startswith("iteration 1: no ROM delete happened")
    assert "toggle_ms=60000" in warning and "raise passes or mem_per_vcpu" in warning
