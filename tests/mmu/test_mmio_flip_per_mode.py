"""The mmio-flip invariant (no stale RAM or MMIO mapping survives a memslot update) in the
MMU mode this KVM runs in: CI boots 6.12 once per mode (TDP MMU, legacy TDP MMU, shadow
paging), and the MMIO-SPTE generation checks these flips exercise differ between them."""

from __future__ import annotations

import pytest

from kvmharness import api
from kvmharness.observe.fingerprint import mmu_text
from kvmharness.scenarios.base import VariantUnsupported

from .support import live_mmu


@pytest.mark.parametrize("zap", ["all", "slot"])
def test_mmio_flip_sees_no_stale_mapping(kvm, zap):
    mode = mmu_text(live_mmu())
    try:
        # A violation raises FlipViolation (time, vCPU, GPA, value, sequence): a failure.
        outcome = api.run_once("mmio-flip", quick=True, variant={"zap": zap}, iterations=2,
                               warmup=1)
    except VariantUnsupported as e:
        pytest.skip(f"{e} (MMU: {mode})")
    assert outcome.samples["violations"] == [0.0, 0.0], mode
    eff = outcome.effective
    # Both states were really seen, so the check had something to catch.
    assert eff["seen_ram_total"] > 0 and eff["seen_mmio_total"] > 0, mode
