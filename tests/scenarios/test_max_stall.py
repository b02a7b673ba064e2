"""max_stall: the hammer's longest gap between two consecutive page writes sees a hold we
make on the host.  The hammer's range runs into an MMIO page (no memslot), so one write per
pass exits to userspace, and the exit handler holds the vCPU for HOLD_S before answering.
The metric must report at least that hold: an injected fact, not a timing threshold."""

from __future__ import annotations

import time

import pytest

from kvmharness.guest.layout import GiB, Layout, Region
from kvmharness.guest.machine import Machine
from kvmharness.kvm import Mmio
from kvmharness.scenarios.common import HammerConfig, hammer_max_gap_ns, hammer_pass_ns

BASE = 4 * GiB
RAM_PAGES = 16
HOLD_S = 0.05
PASSES = 3


@pytest.mark.usefixtures("leaks")
@pytest.mark.parametrize("write", [True, False])
def test_max_gap_reports_at_least_a_host_hold(kvm, write):
    held: list[int] = []

    def hold(m: Machine, vcpu: int, exit_: Mmio) -> bytes | None:
        assert exit_.phys_addr == BASE + RAM_PAGES * 4096, exit_
        t0 = time.monotonic_ns()
        time.sleep(HOLD_S)
        held.append(time.monotonic_ns() - t0)
        return None if exit_.is_write else bytes(exit_.len)

    layout = Layout.of([Region("hammer", BASE, RAM_PAGES * 4096, "ram"),
                        Region("hole", BASE + RAM_PAGES * 4096, 4096, "mmio")])
    with Machine(kvm, "hammer", layout, on_mmio=hold, watchdog_s=60) as m:
        # The last page of every pass is the MMIO hole.
        HammerConfig(base=BASE, pages=RAM_PAGES + 1, passes=PASSES, stride_per_vcpu=0,
                     write=write).apply(m)
        m.run(timeout_s=120)
        gaps = hammer_max_gap_ns(m, 1)[0]
        passes = hammer_pass_ns(m, 1)[0]
    assert len(held) == PASSES and len(gaps) == PASSES
    for gap, pass_ns, hold_ns in zip(gaps, passes, held):
        assert gap >= hold_ns, f"max gap {gap / 1e6:.3f} ms < the {hold_ns / 1e6:.3f} ms hold"
        assert gap <= pass_ns  # one gap is part of its pass


@pytest.mark.usefixtures("leaks")
def test_max_gap_without_a_hold_is_below_the_pass(kvm):
    layout = Layout.of([Region("hammer", BASE, RAM_PAGES * 4096, "ram")])
    with Machine(kvm, "hammer", layout, watchdog_s=60) as m:
        HammerConfig(base=BASE, pages=RAM_PAGES, passes=PASSES, stride_per_vcpu=0).apply(m)
        m.run(timeout_s=120)
        gaps = hammer_max_gap_ns(m, 1)[0]
        passes = hammer_pass_ns(m, 1)[0]
    assert len(gaps) == PASSES
    assert all(0 < gap <= pass_ns for gap, pass_ns in zip(gaps, passes))
