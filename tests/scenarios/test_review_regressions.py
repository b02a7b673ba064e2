"""Regressions for the scenario review: zap-path evidence, host threads that must finish
before the VM and guest RAM go away (Ctrl-C included), metric directions, warmup-only runs.
No /dev/kvm needed except where marked."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from kvmharness.scenarios import mmio, rom_toggle
from kvmharness.scenarios.base import RunOutcome, RunRequest
from kvmharness.scenarios.common import LOST_EVENTS_KEY, record_zap_path, wait_finished
from kvmharness.scenarios.mmio_flip import Flipper


def outcome_with(fast: int, lost: int = 0) -> RunOutcome:
    o = RunOutcome()
    o.tracepoints["hammer"] = {"kvm_mmu_zap_all_fast": fast}
    if lost:
        o.effective[LOST_EVENTS_KEY] = {"hammer": lost}
    return o


def test_zap_path_needs_deletes_to_claim_slot():
    o = outcome_with(0)
    record_zap_path(o, {"zap": "all"}, 0, "hammer")
    assert o.effective["zap_path"] == "unverified"  # not "slot": nothing was deleted
    assert not o.warnings


def test_zap_path_with_lost_events_is_not_proof_of_slot():
    o = outcome_with(0, lost=123)
    record_zap_path(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "unverified"
    assert "lost 123" in o.effective["zap_evidence"]


def test_zap_path_still_decides_with_evidence():
    o = outcome_with(0)
    record_zap_path(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "slot" and not o.warnings
    o = outcome_with(10, lost=5)  # zap-all events seen: a loss cannot turn them into none
    record_zap_path(o, {"zap": "slot"}, 10, "hammer")
    assert o.effective["zap_path"] == "all" and o.warnings


def interrupt_main_after(delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, _thread.interrupt_main)
    timer.start()
    return timer


def test_wait_finished_holds_ctrl_c_until_the_thread_is_done(sigint_default):
    finished = threading.Event()
    setter = threading.Timer(0.4, finished.set)
    setter.start()
    interrupt_main_after(0.05)
    with pytest.raises(KeyboardInterrupt):
        wait_finished(finished)
    assert finished.is_set()  # re-raised only once the thread had finished
    setter.join()


class SlowMachine:
    """Stands in for a Machine: unplug/plug take ``ioctl_s`` each.  With ``ctrl_c_in_plug``
    a plug first sends the main thread a Ctrl-C: the re-plug a stopping toggler makes runs
    while the main thread waits in stop(), so the interrupt lands there, deterministically."""

    def __init__(self, ioctl_s: float, ctrl_c_in_plug: bool = False) -> None:
        self.ioctl_s = ioctl_s
        self.ctrl_c_in_plug = ctrl_c_in_plug
        self.present = True
        self.calls: list[str] = []

    def unplug(self, name: str) -> None:
        self.calls.append("unplug")
        time.sleep(self.ioctl_s)
        self.present = False

    def plug(self, name: str) -> None:
        self.calls.append("plug")
        if self.ctrl_c_in_plug:
            _thread.interrupt_main()
        time.sleep(self.ioctl_s)
        self.present = True


def test_rom_toggler_stop_survives_ctrl_c_and_leaves_the_rom_present(sigint_default):
    m = SlowMachine(ioctl_s=0.3, ctrl_c_in_plug=True)
    toggler = rom_toggle.RomToggler(m, "rom", interval_s=0.01)  # type: ignore[arg-type]
    toggler.start()
    while "unplug" not in m.calls:
        time.sleep(0.001)
    # stop() during the delete: the toggler then re-plugs (sending the Ctrl-C) and only
    # after that may stop() return, so a caller that closes the VM next does not close it
    # under a memslot ioctl.
    with pytest.raises(KeyboardInterrupt):
        toggler.stop()
    assert m.calls == ["unplug", "plug"] and m.present
    assert toggler._finished.is_set()


def test_unstarted_togglers_stop_at_once():
    toggler = rom_toggle.RomToggler(SlowMachine(0), "rom", 0.01)  # type: ignore[arg-type]
    toggler.stop()
    flipper = Flipper(SlowMachine(0), "flip", None, 1, 0.0, None, 0)  # type: ignore[arg-type]
    flipper.stop()


def test_toggles_shares_the_direction_of_total():
    # toggles ~ iteration length / toggle_ms: it grows exactly when total gets worse.
    spec = rom_toggle.SPEC
    assert spec.metric("toggles").direction == spec.metric("total").direction == "lower"


@pytest.mark.usefixtures("kvm")
def test_mmio_warmup_only_run_reports_progress():
    params = mmio.SPEC.resolve_params({"kinds": "pio"}, quick=True)
    messages: list[str] = []
    outcome = mmio.SPEC.run(RunRequest(params, {}, 0, 1, messages.append))
    assert not outcome.samples and len(outcome.warmups["pio_cycles"]) == 1
    assert messages and "cycles/access" in messages[0]
