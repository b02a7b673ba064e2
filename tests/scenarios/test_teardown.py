"""teardown at its quick size on the real /dev/kvm: behaviour, never timings."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from kvmharness.guest.layout import LayoutError
from kvmharness.scenarios import teardown
from kvmharness.scenarios.base import RunOutcome, RunRequest
from kvmharness.scenarios.common import MiBList, size_label

SPEC = teardown.SPEC
ITERATIONS, WARMUP = 2, 1


@dataclasses.dataclass
class QuickRun:
    outcome: RunOutcome
    params: dict[str, object]
    fds: tuple[int, int]
    threads: tuple[int, int]
    affinity: tuple[set[int], set[int]]
    progress: list[str]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def quick(kvm_session: object) -> QuickRun:
    params = SPEC.resolve_params({}, quick=True)
    messages: list[str] = []
    fds, threads, affinity = open_fds(), threading.active_count(), os.sched_getaffinity(0)
    outcome = SPEC.run(RunRequest(params, {}, ITERATIONS, WARMUP, messages.append))
    return QuickRun(outcome, params, (fds, open_fds()), (threads, threading.active_count()),
                    (affinity, os.sched_getaffinity(0)), messages)


def test_every_declared_metric_has_samples_and_a_unit(quick):
    sizes = MiBList(quick.params["populated_sizes"]).sizes  # type: ignore[arg-type]
    expected = SPEC.sized_metrics(sizes)
    assert set(expected) == set(quick.outcome.samples)
    for name in expected:
        metric = SPEC.metric(name)
        assert metric.unit and metric.direction == "lower"
        assert len(quick.outcome.samples[name]) == ITERATIONS
        assert all(v >= 0 for v in quick.outcome.samples[name])
    for name in ("destroy", "probe_max_delay", "probe_baseline"):
        assert len(quick.outcome.warmups[f"{name}@{size_label(sizes[0])}"]) == WARMUP
    # One fresh VM per size and iteration, each populated by a guest that really ran.
    assert len(quick.progress) == (ITERATIONS + WARMUP) * len(sizes)
    for size in sizes:
        stats = quick.outcome.kvm_stats[f"populate@{size_label(size)}"]
        assert stats["vcpu.exits"] > 0


def test_no_fd_thread_or_affinity_leaks(quick):
    assert quick.fds[1] == quick.fds[0]
    assert quick.threads[1] == quick.threads[0]
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
    with pytest.raises(ValueError, match="parameter 'populated_sizes' expects MiBList"):
        SPEC.resolve_params({"populated_sizes": "4,lots"}, quick=True)
    with pytest.raises(ValueError, match="parameter 'vcpus' expects int"):
        SPEC.resolve_params({"vcpus": "two"}, quick=True)
    with pytest.raises(KeyError, match="no parameter 'sizes'"):
        SPEC.resolve_params({"sizes": "4"}, quick=True)
    assert SPEC.resolve_params({"populated_sizes": "4, 1024"}, quick=True)[
        "populated_sizes"] == "4M,1G"
    bad_vcpus = SPEC.resolve_params({"vcpus": "0"}, quick=True)
    with pytest.raises(ValueError, match="vcpus=0"):
        SPEC.run(RunRequest(bad_vcpus, {}, 1, 0))
    huge = SPEC.resolve_params({"populated_sizes": "4,1024T"}, quick=True)
    with pytest.raises(LayoutError, match="available"):
        SPEC.run(RunRequest(huge, {}, 1, 0))
