"""Loads the kvmharness pytest plugin when its pytest11 entry point is not visible — a bare
checkout on PYTHONPATH, as inside a tools/vng-run guest — without registering it twice.

Also the helpers tests share: counting open fds (fixture ``open_fds``) and threads around
something (``Leaks``, fixture ``leaks``), and running a registered scenario at its quick
size (``run_quick``)."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from kvmharness import pytest_plugin
from kvmharness.scenarios.base import RunOutcome, RunRequest, ScenarioSpec, VariantUnsupported


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "kvmharness")


def count_open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="session")
def open_fds() -> Callable[[], int]:
    """``open_fds()``: how many file descriptors this process has open now."""
    return count_open_fds


@dataclasses.dataclass
class Leaks:
    """Open fds and live threads when it was made, compared with now by ``check()``."""

    fds: int = dataclasses.field(default_factory=count_open_fds)
    threads: int = dataclasses.field(default_factory=threading.active_count)

    def now(self) -> tuple[int, int]:
        return count_open_fds(), threading.active_count()

    def check(self) -> None:
        fds, threads = self.now()
        assert fds == self.fds, f"{fds - self.fds} fd(s) leaked"
        assert threads == self.threads, f"{threads - self.threads} thread(s) leaked"


@pytest.fixture
def leaks() -> Iterator[Leaks]:
    """Fails the test if it leaves an fd open or a thread running."""
    before = Leaks()
    yield before
    before.check()


@dataclasses.dataclass
class QuickRun:
    """One scenario run at quick size: its outcome (None if the variant was unsupported,
    ``skipped`` says why), the parameters, progress lines and the fds/threads after it."""

    spec: ScenarioSpec
    params: dict[str, Any]
    variant: dict[str, str]
    outcome: RunOutcome | None
    skipped: str | None
    progress: list[str]
    before: Leaks
    after: tuple[int, int]

    def ok(self) -> RunOutcome:
        """The outcome, or skip the test with the reason the variant could not run."""
        if self.outcome is None:
            pytest.skip(self.skipped or "no outcome")
        return self.outcome

    def check_leaks(self) -> None:
        assert self.after == (self.before.fds, self.before.threads), (
            f"fds/threads before {(self.before.fds, self.before.threads)}, after {self.after}")


RunQuick = Callable[..., QuickRun]


def run_quick_impl(spec: ScenarioSpec, variant: Mapping[str, str] | None = None, *,
                   iterations: int = 1, warmup: int = 1,
                   pinning: Mapping[str, tuple[int, ...]] | None = None,
                   **overrides: str) -> QuickRun:
    params = spec.resolve_params(overrides, quick=True)
    messages: list[str] = []
    chosen = {a.name: (variant or {}).get(a.name, a.values[0]) for a in spec.variant_axes}
    before = Leaks()
    outcome, skipped = None, None
    try:
        outcome = spec.run(RunRequest(params, chosen, iterations, warmup, messages.append,
                                      pinning=dict(pinning or {})))
    except VariantUnsupported as exc:
        skipped = str(exc)
    return QuickRun(spec, params, chosen, outcome, skipped, messages, before, before.now())


@pytest.fixture(scope="session")
def run_quick() -> RunQuick:
    """``run_quick(spec, {"zap": "slot"}, iterations=1, warmup=1, **param_overrides)``."""
    return run_quick_impl
