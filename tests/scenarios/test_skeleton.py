"""The scenario skeleton (scenarios/skeleton.py) on the real /dev/kvm with the hello guest:
it owns warmups and iterations (one progress line each, vCPUs reset between them), the
variant axes, pinning, cleanups on error and the times."""

from __future__ import annotations

import os

import pytest

from kvmharness.guest.layout import Layout
from kvmharness.guest.machine import Machine
from kvmharness.scenarios.base import ZAP_AXIS, RunOutcome, RunRequest
from kvmharness.scenarios.common import PhaseRecorder
from kvmharness.scenarios.skeleton import BareScenario, Context, GuestScenario, execute

CPU = min(os.sched_getaffinity(0))


class Hello(GuestScenario):
    name = "hello-test"
    guest = "hello"
    variant_axes = (ZAP_AXIS,)
    zap_phase = "run"
    fail_at: int | None = None

    def __init__(self, req: RunRequest) -> None:
        super().__init__(req)
        self.seen: list[tuple[int, bool, set[int]]] = []
        self.vcpu_cpus: tuple[int, ...] = ()
        self.cleaned = False

    def layout(self) -> Layout:
        return Layout()

    def prepare(self, ctx: Context, m: Machine, recorder: PhaseRecorder) -> None:
        self.vcpu_cpus = m.vcpu_cpus
        self.toggler_cpus = ctx.toggler_cpus
        ctx.cleanups.callback(setattr, self, "cleaned", True)

    def iteration(self, ctx: Context, m: Machine, recorder: PhaseRecorder, i: int,
                  warm: bool) -> str:
        if i == self.fail_at:
            raise RuntimeError("iteration body failed")
        with recorder.phase("run"):
            m.run(timeout_s=60)
        self.seen.append((i, warm, os.sched_getaffinity(0)))
        ctx.outcome.add("syncs", len(m.syncs), warmup=warm)
        return f"{len(m.syncs)} syncs"


def run(scenario: type[Hello], pinning: dict[str, tuple[int, ...]] | None = None,
        ) -> tuple[Hello, list[str], RunOutcome]:
    messages: list[str] = []
    req = RunRequest({}, {"zap": "all"}, iterations=2, warmup=1, progress=messages.append,
                     pinning=pinning or {})
    instance = scenario(req)
    return instance, messages, execute(instance)


@pytest.mark.usefixtures("kvm", "leaks")
def test_iterations_progress_axes_and_times():
    hello, messages, outcome = run(Hello)
    assert [line.split(":")[0] for line in messages] == [
        "hello-test warmup 1/3", "hello-test iteration 2/3", "hello-test iteration 3/3"]
    # The guest ran to DONE three times in one VM: the harness reset the vCPUs.
    assert [(i, warm) for i, warm, _ in hello.seen] == [(0, True), (1, False), (2, False)]
    assert outcome.warmups["syncs"] == [2.0] and outcome.samples["syncs"] == [4.0, 6.0]
    assert outcome.kvm_stats["run"]["vcpu.exits"] > 0  # three entries of one phase summed
    assert outcome.effective["zap_requested"] == "all"
    assert outcome.effective["zap_path"] == "unverified"  # nothing deleted: nothing proven
    assert outcome.end_time is not None and outcome.end_time >= outcome.start_time
    assert hello.cleaned and hello.vcpu_cpus == () and hello.toggler_cpus == ()


@pytest.mark.usefixtures("kvm", "leaks")
def test_pinning_reaches_every_role_and_the_main_thread_gets_its_cpus_back():
    before = os.sched_getaffinity(0)
    hello, _, _ = run(Hello, {"main": (CPU,), "vcpus": (CPU,), "togglers": (CPU,)})
    assert all(cpus == {CPU} for _, _, cpus in hello.seen)
    assert hello.vcpu_cpus == (CPU,) and hello.toggler_cpus == (CPU,)
    assert os.sched_getaffinity(0) == before


class FailsInSecondIteration(Hello):
    fail_at = 1


@pytest.mark.usefixtures("kvm", "leaks")
def test_a_failing_body_still_runs_the_cleanups_and_closes_the_vm():
    before = os.sched_getaffinity(0)
    scenario = FailsInSecondIteration(RunRequest({}, {"zap": "all"}, 2, 1,
                                                 pinning={"main": (CPU,)}))
    with pytest.raises(RuntimeError, match="iteration body failed"):
        execute(scenario)
    assert scenario.cleaned and os.sched_getaffinity(0) == before


class Counter(BareScenario):
    name = "bare-test"

    def iteration(self, ctx: Context, i: int, warm: bool) -> str:
        ctx.outcome.add("n", i, warmup=warm)
        return f"body {i}"


@pytest.mark.usefixtures("kvm", "leaks")
def test_bare_scenarios_get_the_loop_without_a_vm():
    messages: list[str] = []
    outcome = Counter.run(RunRequest({}, {}, 2, 1, messages.append))
    assert messages == ["bare-test warmup 1/3: body 0", "bare-test iteration 2/3: body 1",
                        "bare-test iteration 3/3: body 2"]
    assert outcome.warmups == {"n": [0.0]} and outcome.samples == {"n": [1.0, 2.0]}
    assert "zap_path" not in outcome.effective
