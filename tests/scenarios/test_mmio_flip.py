"""mmio-flip at its quick size on the real /dev/kvm: the RAM/MMIO invariant holds, and a
broken host is caught.  Behaviour only, never timings."""

from __future__ import annotations

import pytest

from kvmharness.scenarios import mmio_flip
from kvmharness.scenarios.base import RunOutcome, RunRequest, VariantUnsupported
from kvmharness.scenarios.mmio_flip import (
    ABSENT,
    FLIP_GPA,
    PAGE,
    FlipViolation,
    WrapPlan,
    mmio_word,
    ram_word,
    run_flip,
)

SPEC = mmio_flip.SPEC


def request(zap: str, iterations: int = 2, warmup: int = 1, **overrides: str) -> RunRequest:
    return RunRequest(SPEC.resolve_params(overrides, quick=True), {"zap": zap}, iterations,
                      warmup)


def run_or_skip(req: RunRequest, **kwargs: object) -> RunOutcome:
    try:
        return run_flip(req, **kwargs)  # type: ignore[arg-type]
    except VariantUnsupported as exc:
        pytest.skip(str(exc))


def flips_answer_while_absent(gpa: int, length: int, seq: int) -> bytes:
    """Test double: a host that answers with the RAM word P while the slot is absent."""
    word = ram_word(gpa) if seq % 4 == ABSENT else mmio_word(gpa)
    return word.to_bytes(8, "little")[:length]


def answers_garbage(gpa: int, length: int, seq: int) -> bytes:
    return (0xDEAD0000DEAD0000 | gpa).to_bytes(8, "little")[:length]


@pytest.mark.usefixtures("kvm", "leaks")
@pytest.mark.parametrize("zap", ["all", "slot"])
def test_no_violation_on_this_kernel(zap):
    outcome = run_or_skip(request(zap))  # a violation raises FlipViolation: the test fails
    assert outcome.samples["violations"] == [0.0, 0.0]
    declared = {m.name for m in SPEC.metrics if not m.name.startswith(("wrap", "violations_"))}
    assert declared == set(outcome.samples)
    assert all(SPEC.metric(name).unit for name in outcome.samples)
    # Both states were really observed, and strictly checked, in every iteration.
    assert all(n > 0 for n in outcome.samples["reads_checked"])
    eff = outcome.effective
    assert eff["seen_ram_total"] > 0 and eff["seen_mmio_total"] > 0
    assert eff["reads_total"] == eff["seen_ram_total"] + eff["seen_mmio_total"]
    assert eff["zap_requested"] == zap
    assert eff["final_seq"] % 4 == 0  # the slot is left present
    toggles = int(SPEC.resolve_params({}, quick=True)["toggles"])
    assert len(outcome.samples["slot_delete"]) == 2 * toggles


@pytest.mark.usefixtures("kvm", "leaks")
def test_broken_checker_double_is_caught():
    req = request("all", iterations=1, warmup=0)
    with pytest.raises(FlipViolation) as info:
        run_or_skip(req, answer=flips_answer_while_absent)
    exc = info.value
    assert exc.count > 0 and exc.violations
    assert exc.outcome.samples["violations"] == [float(exc.count)]
    nvcpus, pages = int(req.params["vcpus"]), int(req.params["pages"])
    for v in exc.violations:
        assert 0 <= v.vcpu < nvcpus
        assert FLIP_GPA <= v.gpa < FLIP_GPA + pages * PAGE and v.gpa % PAGE == 0
        assert v.value == ram_word(v.gpa)
        assert v.seq_before == v.seq_after and v.seq_before % 4 == ABSENT
        assert v.guest_ns >= 0 and v.host_ns is not None
    first = exc.violations[0]
    text = str(exc)
    assert text.startswith(f"mmio-flip FAIL: {exc.count} violation(s)")
    for needle in (f"vCPU {first.vcpu}", f"GPA {first.gpa:#x}", f"{first.value:#018x}",
                   f"seq {first.seq_before}", "expected Q", "absent", " ms"):
        assert needle in text, needle
    # The run ended early, but the result still says which zap path it saw.
    assert exc.outcome.effective["zap_requested"] == "all" and "zap_path" in exc.outcome.effective


@pytest.mark.usefixtures("kvm")
def test_value_that_is_neither_word_is_a_violation():
    with pytest.raises(FlipViolation, match="neither P nor Q") as info:
        run_or_skip(request("all", iterations=1, warmup=0), answer=answers_garbage)
    assert all(v.expected in ("P", "Q", "P or Q") for v in info.value.violations)


def test_wrap_plan_counts_generation_steps():
    # One address space: generations step by 1 and the 19 MMIO bits wrap every 2^19 steps;
    # with SMM (two) they step by 2 and wrap every 2^18.  A toggle is 3 steps.
    one, two = WrapPlan.for_address_spaces(1), WrapPlan.for_address_spaces(2)
    assert (one.steps_per_wrap, one.toggles) == (1 << 19, 174763)
    assert (two.steps_per_wrap, two.toggles) == (1 << 18, 87382)
    assert one.toggles * 3 >= one.steps_per_wrap and two.toggles * 3 >= two.steps_per_wrap


def test_quick_preset_has_wrap_off():
    assert SPEC.resolve_params({}, quick=True)["wrap"] is False
    assert SPEC.resolve_params({"wrap": "on"}, quick=True)["wrap"] is True


@pytest.mark.slow
@pytest.mark.usefixtures("kvm", "leaks")
def test_wrap_passes_a_generation_wraparound_without_violation():
    req = request("slot", iterations=1, warmup=0, wrap="1", vcpus="1")
    outcome = run_or_skip(req)
    wrap = outcome.effective["wrap"]
    assert wrap["generation_steps"] >= wrap["steps_per_wrap"] and wrap["wraps_guaranteed"] >= 1
    assert outcome.samples["violations_wrap"] == [0.0]
    assert outcome.samples["wrap_steps"] == [float(wrap["generation_steps"])]
    assert outcome.samples["wrap_time"][0] > 0 and outcome.samples["wrap_steps_per_s"][0] > 0
    assert wrap["reads_checked"] > 0
    if "zap_all_fast_hostwide" in wrap:
        # zap=slot: nothing but the wrap zaps all (other VMs on the host can add more).
        assert wrap["zap_all_fast_hostwide"] >= 1
