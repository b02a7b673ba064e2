"""Host toggler threads (the HostToggler base, rom-toggle's RomToggler, mmio-flip's
Flipper): they finish before the VM and guest RAM go away, Ctrl-C included, and leave the
slot present.  No /dev/kvm needed."""

from __future__ import annotations

import _thread
import os
import threading
import time

import pytest

from kvmharness.scenarios import rom_toggle
from kvmharness.scenarios.mmio_flip import Flipper
from kvmharness.scenarios.skeleton import HostToggler, wait_finished

pytestmark = pytest.mark.usefixtures("sigint_default")


def interrupt_main_after(delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, _thread.interrupt_main)
    timer.start()
    return timer


def test_wait_finished_holds_ctrl_c_until_the_thread_is_done():
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

    def unplug(self, name: str) -> int:
        self.calls.append("unplug")
        time.sleep(self.ioctl_s)
        self.present = False
        return 1000

    def plug(self, name: str) -> int:
        self.calls.append("plug")
        if self.ctrl_c_in_plug:
            _thread.interrupt_main()
        time.sleep(self.ioctl_s)
        self.present = True
        return 2000


def test_rom_toggler_stop_survives_ctrl_c_and_leaves_the_rom_present():
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
    assert not toggler.is_alive()
    assert toggler.delete_ns == [1000]  # the syscall time the machine reported


def test_unstarted_togglers_stop_at_once():
    toggler = rom_toggle.RomToggler(SlowMachine(0), "rom", 0.01)  # type: ignore[arg-type]
    toggler.stop()
    flipper = Flipper(SlowMachine(0), "flip", None, 1, 0.0, None, 0)  # type: ignore[arg-type]
    flipper.stop()


class Failing(HostToggler):
    def __init__(self) -> None:
        super().__init__()
        self.restored = False

    def loop(self) -> None:
        raise OSError("memslot ioctl failed")

    def restore(self) -> None:
        self.restored = True


def test_the_loop_error_is_raised_by_stop_after_restore(leaks):
    t = Failing()
    t.start()
    assert t.join(5.0)
    with pytest.raises(OSError, match="memslot ioctl failed"):
        t.stop()
    assert t.restored


class Counting(HostToggler):
    thread_name = "kvmharness-test-toggler"

    def __init__(self, cpus: tuple[int, ...] = ()) -> None:
        super().__init__(cpus)
        self.ticks = 0
        self.affinity: set[int] = set()

    def loop(self) -> None:
        self.affinity = os.sched_getaffinity(0)
        while not self.stopping(0.001):
            self.ticks += 1


def test_toggler_runs_until_stopped_on_its_cpus(leaks):
    cpu = min(os.sched_getaffinity(0))
    t = Counting(cpus=(cpu,))
    t.start()
    while t.ticks < 3:
        time.sleep(0.001)
    assert t.is_alive()
    t.stop()
    assert not t.is_alive() and t.affinity == {cpu}
    assert os.sched_getaffinity(0) != {cpu} or len(os.sched_getaffinity(0)) == 1
