"""teardown at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

import dataclasses
import os

import pytest

from kvmharness.guest.layout import LayoutError
from kvmharness.scenarios import teardown
from kvmharness.scenarios.base import RunOutcome, RunRequest
from kvmharness.scenarios.common import MiBList
from kvmharness.scenarios.metrics import size_label

SPEC = teardown.SPEC
ITERATIONS, WARMUP = 2, 1


@dataclasses.dataclass
class QuickRun:
    run: object  # conftest.QuickRun
    affinity: tuple[set[int], set[int]]

    @property
    def outcome(self) -> RunOutcome:
        return self.run.ok()

    @property
    def params(self) -> dict[str, object]:
        return self.run.params

    @property
    def progress(self) -> list[str]:
        return self.run.progress


@pytest.fixture(scope="module")
def quick(kvm_session: object, run_quick) -> QuickRun:
    affinity = os.sched_getaffinity(0)
    run = run_quick(SPEC, iterations=ITERATIONS, warmup=WARMUP)
    return QuickRun(run, (affinity, os.sched_getaffinity(0)))


def test_every_declared_metric_has_samples_and_a_unit(quick):
    sizes = MiBList(quick.params["populated_sizes"]).sizes  # type: ignore[arg-type]
    expected = SPEC.metric_names([size_label(s) for s in sizes])
    assert set(expected) == set(quick.outcome.samples)
    for name in expected:
        metric = SPEC.metric(name)
        assert metric.unit and metric.direction == "lower"
        assert len(quick.outcome.samples[name]) == ITERATIONS
        assert all(v >= 0 for v in quick.outcome.samples[name])
    for name in ("destroy", "probe_max_delay", "probe_baseline"):
        assert len(quick.outcome.warmups[f"{name}@{size_label(sizes[0])}"]) == WARMUP
    # One progress line per iteration naming every size; one fresh VM per size and
    # iteration, each populated by a guest that really ran.
    assert len(quick.progress) == ITERATIONS + WARMUP
    assert all(line.count("destroy") == len(sizes) for line in quick.progress)
    for size in sizes:
        stats = quick.outcome.kvm_stats[f"populate@{size_label(size)}"]
        assert stats["vcpu.exits"] > 0


def test_no_fd_thread_or_affinity_leaks(quick):
    quick.run.check_leaks()
    assert quick.affinity[1] == quick.affinity[0]  # pin=true must restore the main thread


def test_probe_picks_the_sleeps_overlapping_the_window():
    probe = teardown.DelayProbe(None)
    sleep = teardown.PROBE_SLEEP_NS
    # Wake-to-wake intervals tile time: a thread held off the CPU between two sleeps shows
    # up as a late interval just like a sleep that overran.
    a = sleep + 50_000
    b = a + sleep + 900_000
    c = b + sleep + 10_000
    probe.sleeps = [(0, a), (a, b), (b, c)]
    assert probe.worst_delay_us(a + 10, a + 20) == 900.0
    assert probe.worst_delay_us(0, 10) == 50.0
    assert probe.worst_delay_us(b + 1, c - 1) == 10.0
    assert probe.worst_delay_us(a - 1, b + 1) == 900.0


def test_parameter_errors_are_clear():
    with pytest.raises(ValueError, match="parameter 'populated_sizes' expects a comma list of MiB"):
        SPEC.resolve_params({"populated_sizes": "4,lots"}, quick=True)
    with pytest.raises(ValueError, match="parameter 'vcpus' expects 1..64"):
        SPEC.resolve_params({"vcpus": "two"}, quick=True)
    with pytest.raises(KeyError, match="no parameter 'sizes'"):
        SPEC.resolve_params({"sizes": "4"}, quick=True)
    assert SPEC.resolve_params({"populated_sizes": "4, 1024"}, quick=True)[
        "populated_sizes"] == "4M,1G"
    with pytest.raises(ValueError, match="parameter 'vcpus' must be 1..64 vCPUs, got 0"):
        SPEC.resolve_params({"vcpus": "0"}, quick=True)
    # A typed value from the Python API that skipped parsing is refused before any VM.
    bad_vcpus = dict(SPEC.resolve_params({}, quick=True), vcpus=0)
    with pytest.raises(ValueError, match="vcpus=0"):
        SPEC.run(RunRequest(bad_vcpus, {}, 1, 0))
    huge = SPEC.resolve_params({"populated_sizes": "4,1024T"}, quick=True)
    with pytest.raises(LayoutError, match="available"):
        SPEC.run(RunRequest(huge, {}, 1, 0))
