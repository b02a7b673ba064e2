"""--pin end to end on /dev/kvm: during a real rom-toggle run, the vCPU thread runs on the
chosen CPU, the ROM toggler and the main thread on theirs; the main thread gets its
affinity back afterwards and every run records the placement."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kvmharness.observe import pinning
from kvmharness.scenarios import registry
from kvmharness.session import SessionPlan, run_session

ENV = {"kernel": {"release": "test"}, "backend": {"kind": "test", "nested": False}}


class Sampler:
    """Every few ms, the affinity mask and last CPU of the harness's named threads and of
    the main thread (while any harness thread is alive)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[frozenset[int], int]]] = {}
        self.main_masks: set[frozenset[int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-sampler", daemon=True)
        self._main_tid = threading.main_thread().native_id

    def _loop(self) -> None:
        while not self._stop.wait(0.002):
            found = False
            for t in threading.enumerate():
                if not t.name.startswith("kvmharness-") or t.native_id is None:
                    continue
                kind = "vcpu" if t.name.startswith("kvmharness-vcpu") else "toggler"
                try:
                    sample = (frozenset(os.sched_getaffinity(t.native_id)),
                              pinning.current_cpu(t.native_id))
                except OSError:  # the thread ended between enumerate() and the read
                    continue
                self.seen.setdefault(kind, []).append(sample)
                found = True
            if found and self._main_tid is not None:
                self.main_masks.add(frozenset(os.sched_getaffinity(self._main_tid)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_vcpu_toggler_and_main_threads_run_where_pinned(kvm: object, tmp_path: Path) -> None:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip(f"needs two usable CPUs to tell placements apart (usable: {usable})")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the main-thread check needs the test on the main thread")
    home, vcpu_cpu = usable[0], usable[-1]
    spec = registry.all_scenarios()["rom-toggle"]
    plan = SessionPlan.resolve(spec, quick=True, repeat=1, variants={"zap": ["all"]},
                               label="pin", params={"passes": 20},
                               pinning=f"vcpus={vcpu_cpu},togglers={home},main={home}")
    before = frozenset(os.sched_getaffinity(0))
    with Sampler() as sampler:
        session = run_session(plan, tmp_path / "r.json", ENV)
    assert session.failed_runs == 0 and session.path is not None
    (run,) = session.result.ok_runs()
    assert run.effective["pinning"] == {"vcpus": [vcpu_cpu], "togglers": [home],
                                        "main": [home]}
    # A vCPU thread starts with its creator's mask and pins itself first thing, so early
    # samples may show main's CPU; it must be seen pinned and running on its own.
    assert (frozenset({vcpu_cpu}), vcpu_cpu) in sampler.seen.get("vcpu", [])
    assert any(mask == {home} for mask, _ in sampler.seen.get("toggler", []))
    assert all(mask == {home} for mask, _ in sampler.seen["toggler"])
    assert sampler.main_masks == {frozenset({home})}
    assert frozenset(os.sched_getaffinity(0)) == before
