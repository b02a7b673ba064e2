"""Fakes the unit tests share: a scenario that needs no /dev/kvm."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from kvmharness.scenarios.base import (
    ZAP_AXIS,
    Metric,
    Parameter,
    RunOutcome,
    RunRequest,
    ScenarioSpec,
)

FakeSpec = Callable[..., ScenarioSpec]


def make_fake_spec(run: Callable[[RunRequest], RunOutcome] | None = None,
                   **fields: Any) -> ScenarioSpec:
    """Scenario ``fake-toggle``: parameter ``pages``, metric ``total`` (ms, lower), the zap
    axis.  Its default run measures about 100 ms per iteration with zap=all and 90 ms with
    zap=slot (seeded noise), 2x that per warmup, says "measured", and records a KVM stat
    and a tracepoint count.  ``fields`` replace ScenarioSpec fields."""
    rng = random.Random(0)

    def default_run(req: RunRequest) -> RunOutcome:
        o = RunOutcome()
        base = 100.0 if req.variant.get("zap", "all") == "all" else 90.0
        for _ in range(req.warmup):
            o.add("total", base * 2, warmup=True)
        for _ in range(req.iterations):
            o.add("total", rng.gauss(base, 1.0))
        o.kvm_stats["vm"] = {"remote_tlb_flush": 2}
        o.tracepoints["kvmmmu"] = {"kvm_mmu_zap_all_fast": 1}
        o.end_time = o.start_time + 0.1
        req.progress("measured")
        return o

    spec: dict[str, Any] = {
        "name": "fake-toggle",
        "summary": "toggle a fake slot",
        "parameters": (Parameter("pages", "pages", 2000, 16, "pages touched"),),
        "metrics": (Metric("total", "ms", "lower", "time per pass"),),
        "variant_axes": (ZAP_AXIS,),
        "run": run or default_run,
        "default_iterations": 3,
        "default_warmup": 1,
    }
    spec.update(fields)
    return ScenarioSpec(**spec)


@pytest.fixture
def fake_spec() -> FakeSpec:
    """``fake_spec(run=None, **spec_fields)``: see ``make_fake_spec``."""
    return make_fake_spec
