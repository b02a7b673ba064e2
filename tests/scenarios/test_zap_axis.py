"""The zap variant axis: the quirk bits a value disables, and the zap path a result may
claim from the tracepoint evidence.  Only the quirk test needs /dev/kvm."""

from __future__ import annotations

import pytest

from kvmharness.scenarios.base import (
    LOST_EVENTS_KEY,
    ZAP_AXIS,
    RunOutcome,
    VariantUnsupported,
    ZapAxis,
)
from kvmharness.uapi.caps import KvmCap
from kvmharness.uapi.x86 import KVM_X86_QUIRK_SLOT_ZAP_ALL


def outcome_with(fast: int, lost: int = 0) -> RunOutcome:
    o = RunOutcome()
    o.tracepoints["hammer"] = {"kvm_mmu_zap_all_fast": fast}
    if lost:
        o.effective[LOST_EVENTS_KEY] = {"hammer": lost}
    return o


def test_zap_path_needs_deletes_to_claim_slot():
    o = outcome_with(0)
    ZAP_AXIS.record(o, {"zap": "all"}, 0, "hammer")
    assert o.effective["zap_path"] == "unverified"  # not "slot": nothing was deleted
    assert o.effective["zap_requested"] == "all"
    assert not o.warnings


def test_zap_path_with_lost_events_is_not_proof_of_slot():
    o = outcome_with(0, lost=123)
    ZAP_AXIS.record(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "unverified"
    assert "lost 123" in o.effective["zap_evidence"]


def test_zap_path_still_decides_with_evidence():
    o = outcome_with(0)
    ZAP_AXIS.record(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "slot" and not o.warnings
    o = outcome_with(10, lost=5)  # zap-all events seen: a loss cannot turn them into none
    ZAP_AXIS.record(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "all" and o.warnings


def test_zap_path_without_tracefs_is_unverified():
    o = RunOutcome()
    ZAP_AXIS.record(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "unverified"
    assert "tracefs unavailable" in o.effective["zap_evidence"]


def test_unknown_zap_value_is_refused():
    with pytest.raises(ValueError, match="zap='some'"):
        ZAP_AXIS.value({"zap": "some"})
    assert ZAP_AXIS.value({}) == "all"  # a request without the axis gets the first value
    assert isinstance(ZAP_AXIS, ZapAxis) and ZAP_AXIS.values == ("all", "slot")


def test_quirk_mask_follows_the_kernel(kvm):
    assert ZAP_AXIS.quirk_mask(kvm, {"zap": "all"}) == 0
    supported = kvm.check_extension(KvmCap.KVM_CAP_DISABLE_QUIRKS2) & KVM_X86_QUIRK_SLOT_ZAP_ALL
    if supported:
        assert ZAP_AXIS.quirk_mask(kvm, {"zap": "slot"}) == KVM_X86_QUIRK_SLOT_ZAP_ALL
    else:
        with pytest.raises(VariantUnsupported, match="KVM_X86_QUIRK_SLOT_ZAP_ALL"):
            ZAP_AXIS.quirk_mask(kvm, {"zap": "slot"})
