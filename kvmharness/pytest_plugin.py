"""pytest plugin (entry point ``pytest11``): fixtures and markers for kernel-behaviour tests.

- ``kvm``: an open ``Kvm``; skips with the reason when /dev/kvm is unusable, unless
  ``KVMHARNESS_REQUIRE_KVM=1`` (CI), where that is a failure.
- ``vm``: a fresh ``Vm`` closed after the test.
- ``@pytest.mark.requires_cap(KvmCap.X, ...)``, ``@pytest.mark.requires_quirk(mask)``,
  ``@pytest.mark.requires_tracefs``: skip with the reason where the host lacks it.
- ``sigint_default``: Python's Ctrl-C handler for the test, for tests that send SIGINT
  (a shell script starts ``cmd &`` with SIGINT ignored, and Python then never installs it).

At the start of a session, tracefs instances left by ended harness processes are removed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

REQUIRE_ENV = "KVMHARNESS_REQUIRE_KVM"


def kvm_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _unavailable(reason: str) -> None:
    if kvm_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_cap(*caps): skip unless KVM_CHECK_EXTENSION "
                            "reports every capability")
    config.addinivalue_line("markers", "requires_quirk(mask): skip unless "
                            "KVM_CAP_DISABLE_QUIRKS2 can disable the quirk bits")
    config.addinivalue_line("markers", "requires_tracefs: skip unless kvm tracepoints are usable")


def pytest_sessionstart(session: pytest.Session) -> None:
    # A killed earlier run's instance would keep recording KVM events into 8 MiB per CPU
    # and skew tracepoint counts; only root can see or remove one.
    from kvmharness.observe.tracefs import remove_stale_instances

    remove_stale_instances()


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt during the test, however pytest was started: a
    background job of a script (``pytest &``) starts with SIGINT ignored, and then neither
    ``_thread.interrupt_main()`` nor a SIGINT reaches Python code, and child processes
    inherit the ignored signal.  Restored afterwards."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="session")
def kvm_session() -> Iterator[object]:
    from kvmharness.kvm import Kvm, KvmError

    try:
        handle = Kvm()
    except KvmError as exc:
        _unavailable(f"/dev/kvm unusable: {exc}")
    with handle:
        yield handle


@pytest.fixture
def kvm(kvm_session: object, request: pytest.FixtureRequest) -> object:
    _apply_requirement_markers(kvm_session, request)
    return kvm_session


@pytest.fixture
def vm(kvm: object) -> Iterator[object]:
    with kvm.create_vm() as handle:  # type: ignore[attr-defined]
        yield handle


def _apply_requirement_markers(kvm: object, request: pytest.FixtureRequest) -> None:
    from kvmharness.uapi.caps import KvmCap
    from kvmharness.uapi.x86 import KvmX86Quirk

    for marker in request.node.iter_markers("requires_cap"):
        for cap in marker.args:
            if not kvm.check_extension(cap):  # type: ignore[attr-defined]
                pytest.skip(f"kernel lacks {KvmCap(cap).name}")
    for marker in request.node.iter_markers("requires_quirk"):
        mask = int(marker.args[0])
        supported = kvm.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2)  # type: ignore[attr-defined]
        missing = mask & ~supported
        if missing:
            pytest.skip(f"quirk not supported: {KvmX86Quirk(missing)!r} is not in this kernel's "
                        f"KVM_CAP_DISABLE_QUIRKS2 mask {supported:#x}")
    if request.node.get_closest_marker("requires_tracefs"):
        from kvmharness.observe.tracefs import tracefs_status

        status = tracefs_status()
        if not status.usable:
            pytest.skip(f"tracefs not usable: {status.reason}")


@pytest.fixture
def machine(kvm: object) -> Iterator[object]:
    """Factory: ``machine("hello", layout, vcpus=2, ...)`` builds a guest Machine; every
    machine it built is closed (vCPU threads stopped, fds closed) after the test."""
    from kvmharness.guest.machine import Machine

    built: list[Machine] = []

    def factory(guest: str, layout: object = None, **kwargs: object) -> Machine:
        from kvmharness.guest.layout import Layout

        m = Machine(kvm, guest, layout if layout is not None else Layout(), **kwargs)  # type: ignore[arg-type]
        built.append(m)
        return m

    yield factory
    for m in built:
        m.close()


@pytest.fixture
def kvm_counters() -> object:
    """``with kvm_counters(vm, vcpus, events=("kvmmmu/kvm_mmu_zap_all_fast",)) as c:`` then
    ``c.stats["vcpu.pf_fixed"]`` and ``c.tracepoints["kvm_mmu_zap_all_fast"]``.  Asking for
    events skips the test (with the reason) where tracefs is unusable."""
    from kvmharness.observe.counters import KvmCounters
    from kvmharness.observe.tracefs import tracefs_status

    def factory(vm: object, vcpus: object = (), *, events: tuple[str, ...] = (),
                **kwargs: object) -> KvmCounters:
        if events:
            status = tracefs_status(events)
            if not status.usable:
                pytest.skip(f"tracefs not usable: {status.reason}")
        return KvmCounters(vm, vcpus, events=events, **kwargs)  # type: ignore[arg-type]

    return factory
