"""A run is timed at its events, not when a poller notices: Machine.run_span_ns() (what
rom-toggle's ``total`` and mmio's ``run_ns`` are) against a guest of known duration that
reads its own TSC (hello mode HELLO_TSC_SPIN), and rom-toggle's ``total`` against the
hammer's own pass ends."""

from __future__ import annotations

import ctypes
import statistics
from pathlib import Path

import pytest

from kvmharness.guest.vcpu_threads import POLL_S
from kvmharness.scenarios import registry


def _under_tcg() -> bool:
    try:
        return "TCG" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Under QEMU TCG (tools/vng-run without hardware virtualization) the L1 host's clock and
# the nested guest's TSC are both emulated and drift apart by milliseconds: a 1 ms claim
# about their agreement cannot be checked there. Hardware KVM and PVM keep one TSC.
pytestmark = pytest.mark.skipif(_under_tcg(), reason="QEMU TCG: the guest TSC and the host "
                                "clock are emulated and do not keep one time")

HELLO_TSC_SPIN = 11  # guests/hello.h
u32, u64 = ctypes.c_uint32, ctypes.c_uint64
# The guest's own time and the harness's may differ by the vCPU threads' entry and the
# DONE exit only; the 1 ms bound is the issue's, far below wait()'s poll interval.
TOLERANCE_MS = 1.0
REPEATS = 5


def guest_span_ms(m, nvcpus: int) -> float:
    start = m.read_var("hello_spin_start_tsc", u64 * 64)[:nvcpus]
    end = m.read_var("hello_spin_end_tsc", u64 * 64)[:nvcpus]
    return m.tsc_to_ns(max(end) - min(start)) / 1e6


@pytest.mark.parametrize("spin_ms", [(2.3, 5.9), (13.1, 7.7), (31.7, 17.3)])
def test_run_span_is_the_guests_own_time(machine, spin_ms):
    m = machine("hello", vcpus=len(spin_ms))
    if not m.tsc_khz:
        pytest.skip("KVM_GET_TSC_KHZ is 0: guest TSC deltas cannot be converted")
    cycles = (u64 * 64)(*(int(ms * m.tsc_khz) for ms in spin_ms))
    m.write_var("hello_spin_cycles", cycles, u64 * 64)
    m.write_var("hello_mode", HELLO_TSC_SPIN, u32)
    m.run(timeout_s=60)  # a first run faults the image in: not measured
    gaps, harness = [], []
    for _ in range(REPEATS):
        m.reset()
        m.run(timeout_s=60)
        entered, finished = m.run_span_ns()
        guest = guest_span_ms(m, len(spin_ms))
        assert guest >= max(spin_ms)  # the guest really spun what it was told
        harness.append((finished - entered) / 1e6)
        gaps.append(harness[-1] - guest)
    # The host stamps bracket the guest's reads (one TSC, converted at KVM's rate: allow
    # a few us of rounding), and sit within TOLERANCE_MS of them; a poll's lattice would
    # put the median gap near POLL_S / 2.
    assert min(gaps) > -0.05, (gaps, harness)
    assert statistics.median(gaps) < TOLERANCE_MS < POLL_S * 1e3 / 2, (gaps, harness)


def test_rom_toggle_total_ends_at_the_last_pass(run_quick):
    """``total`` runs to the last vCPU's DONE exit, right after its last pass (guest TSC,
    on the host clock through the timeline): within TOLERANCE_MS, not a poll later.  No
    ROM delete (toggle_ms longer than the run): an absent ROM makes the reads after the
    last pass MMIO exits, guest work that ``total`` rightly counts but the pass ends do
    not show."""
    gaps = []
    for _ in range(REPEATS):  # the timeline keeps the last iteration: one run per gap
        outcome = run_quick(registry.all_scenarios()["rom-toggle"], iterations=1, warmup=1,
                            passes="3", toggle_ms="60000").ok()
        timeline = outcome.effective["timeline"]
        total_ms = outcome.samples["total"][-1]
        assert total_ms == pytest.approx(timeline["end_s"] * 1e3, abs=1e-3)
        gaps.append(total_ms - max(timeline["pass_end_s"]) * 1e3)
    # A loaded host may hold one vCPU off the CPU between its last pass and its DONE exit
    # (real time the guest took), and a single run's TSC-to-host anchor can be off by a few
    # ms under load (seen: -3.6 ms): the median of the runs is the claim, on both sides.
    assert -TOLERANCE_MS < statistics.median(gaps) < TOLERANCE_MS, gaps
