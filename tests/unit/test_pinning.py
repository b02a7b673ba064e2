"""--pin specs: syntax, validation against the usable CPUs, auto placement, and the thread
helpers (pinning the calling thread only, restoring it, reading where a thread ran)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kvmharness.observe import pinning
from kvmharness.observe.pinning import PinError

FOUR = (0, 1, 2, 3)


@pytest.mark.parametrize(("spec", "expected"), [
    ("1", {"vcpus": (1,), "togglers": (1,), "main": (1,)}),
    ("0-2", {"vcpus": (0, 1, 2), "togglers": (0, 1, 2), "main": (0, 1, 2)}),
    ("3,1", {"vcpus": (1, 3), "togglers": (1, 3), "main": (1, 3)}),
    ("vcpus=0,togglers=1,main=1", {"vcpus": (0,), "togglers": (1,), "main": (1,)}),
    ("vcpus=2-3,togglers=0,1", {"vcpus": (2, 3), "togglers": (0, 1)}),
    ("vcpus=1,3,main=0", {"vcpus": (1, 3), "main": (0,)}),
    (" togglers = 2 ", {"togglers": (2,)}),
])
def test_spec_syntax(spec: str, expected: dict[str, tuple[int, ...]]) -> None:
    assert pinning.parse(spec, allowed=FOUR) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty spec"),
    ("vcpu=1", "unknown role 'vcpu' (roles: vcpus, togglers, main)"),
    ("vcpus=1,vcpus=2", "role 'vcpus' given twice"),
    ("vcpus=", "role 'vcpus' has no CPUs"),
    ("1,,2", "empty item between commas"),
    ("x", "'x' is not a CPU number or range"),
    ("3-1", "'3-1' is not a CPU range"),
    ("-1", "not a CPU"),
    ("1,main=0", "a bare CPU list applies to every role"),
    ("vcpus=7", "vcpus on CPU 7, which this process may not use (usable: 0-3)"),
    ("togglers=2-5", "togglers on CPU 4-5, which this process may not use (usable: 0-3)"),
])
def test_bad_specs_name_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(PinError) as exc:
        pinning.parse(spec, allowed=FOUR)
    assert message in str(exc.value)
    assert str(exc.value).startswith("--pin")


def test_check_syntax_ignores_this_machines_cpus() -> None:
    pinning.check_syntax("vcpus=63,main=0")  # valid inside a bigger boot
    pinning.check_syntax("auto")
    with pytest.raises(PinError, match="unknown role"):
        pinning.check_syntax("cpus=1")


def test_default_allowed_is_this_process_affinity() -> None:
    usable = sorted(os.sched_getaffinity(0))
    assert pinning.parse(str(usable[-1])) == dict.fromkeys(pinning.ROLES, (usable[-1],))
    with pytest.raises(PinError, match="may not use"):
        pinning.parse(str(max(usable) + 1))


def test_auto_separates_housekeeping_from_vcpus() -> None:
    assert pinning.parse("auto", allowed=(2, 3), siblings=()) == {
        "vcpus": (3,), "togglers": (2,), "main": (2,)}
    # CPU 4 is CPU 0's SMT sibling: vCPUs keep off the togglers' core...
    assert pinning.auto((0, 1, 4, 5), siblings=[(0, 4), (1, 5)]) == {
        "vcpus": (1, 5), "togglers": (0,), "main": (0,)}
    # ...unless nothing else is left.
    assert pinning.auto((0, 4), siblings=[(0, 4)])["vcpus"] == (4,)
    assert pinning.auto((5,)) == dict.fromkeys(pinning.ROLES, (5,))
    with pytest.raises(PinError, match="any CPU"):
        pinning.auto(())


def test_check_validates_mappings_from_the_python_api() -> None:
    assert pinning.check({"vcpus": [1, 1, 0]}, FOUR) == {"vcpus": (0, 1)}
    with pytest.raises(PinError, match="unknown role 'cpu'"):
        pinning.check({"cpu": (1,)}, FOUR)
    with pytest.raises(PinError, match="has no CPUs"):
        pinning.check({"main": ()}, FOUR)


def test_text_forms() -> None:
    assert pinning.cpu_list_text([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert pinning.cpu_list_text([]) == ""
    p = {"main": (0,), "vcpus": (1, 2, 3)}
    assert pinning.describe(p) == "vcpus=1-3 main=0"
    assert pinning.describe({}) == "none"
    assert pinning.record(p) == {"vcpus": [1, 2, 3], "main": [0]}


def test_sibling_groups_from_sysfs(tmp_path: Path) -> None:
    for cpu, text in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1-1,3")):
        d = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(text + "\n")
    assert pinning.sibling_groups(tmp_path) == [(0, 2), (1, 3)]
    assert pinning.sibling_groups(tmp_path / "nothing") == []


def test_pinned_affects_only_the_calling_thread_and_restores() -> None:
    usable = sorted(os.sched_getaffinity(0))
    target = usable[-1]
    before = pinning.thread_affinity()
    seen: dict[str, frozenset[int]] = {}
    with pinning.pinned([target]):
        assert pinning.thread_affinity() == {target}
        assert pinning.current_cpu() == target  # the kernel moved us before returning

        def other() -> None:
            seen["child"] = pinning.thread_affinity()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        # A thread started under the pin inherits it (why unnamed roles follow main).
        assert seen["child"] == {target}

        def unrelated() -> None:
            seen["late"] = pinning.thread_affinity()
    assert pinning.thread_affinity() == before
    t = threading.Thread(target=unrelated)
    t.start()
    t.join()
    assert seen["late"] == before
    with pinning.pinned(None):
        assert pinning.thread_affinity() == before


def test_current_cpu_reads_another_threads_processor_field() -> None:
    usable = sorted(os.sched_getaffinity(0))
    target = usable[0]
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def worker() -> None:
        pinning.pin_current_thread([target])
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(10)
        assert pinning.current_cpu(tid[0]) == target
    finally:
        done.set()
        t.join()
