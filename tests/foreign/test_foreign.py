"""Foreign guests: a freestanding ELF without the kvmharness runtime (tests/foreign/guest.S,
assembled and linked here with plain as/ld) runs through Machine.foreign(): HLT ends it,
exceptions and triple faults are reported with registers, symbols are readable afterwards."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from kvmharness.guest.errors import GuestCrash, GuestExceptionError, GuestImageError
from kvmharness.guest.foreign import FOREIGN_EXCEPTION_PORT
from kvmharness.guest.layout import GiB

SOURCE = Path(__file__).with_name("guest.S")
MODE_OK, MODE_GP, MODE_PF, MODE_TRIPLE_FAULT, MODE_OWN_PORT = range(5)
MAGIC = 0x600DC0DE00000000
MARKER_R12 = 0x5EED
FAULT_ADDR = 5 * GiB
u32, u64 = ctypes.c_uint32, ctypes.c_uint64


def _link(tmp: Path, name: str, *extra: str) -> Path:
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed: cannot build the foreign guest")
    obj, elf = tmp / "guest.o", tmp / name
    subprocess.run(["gcc", "-c", "-o", str(obj), str(SOURCE)], check=True)
    # Plain ld with a text segment at 4 MiB: no kvmharness linker script, no runtime.
    subprocess.run(["ld", "-static", "-nostdlib", "-Ttext-segment=0x400000", *extra,
                    "-o", str(elf), str(obj)], check=True)
    return elf


@pytest.fixture(scope="module")
def guest_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _link(tmp_path_factory.mktemp("foreign"), "foreign.elf")


@pytest.fixture
def foreign(kvm, guest_elf):
    from kvmharness.guest.machine import Machine

    built = []

    def factory(**kwargs):
        m = Machine.foreign(kvm, guest_elf, **kwargs)
        built.append(m)
        return m

    yield factory
    for m in built:
        m.close()


def test_writes_a_symbol_and_halts_as_success(foreign):
    m = foreign(vcpus=2)
    assert "kh_exception_stubs" not in m.image.symbols
    m.run(timeout_s=60)
    assert [s.value for s in m.states()] == ["done", "done"]
    assert list(m.read_var("result", u64 * 2)) == [MAGIC, MAGIC + 1]


def test_runs_again_after_reset(foreign):
    m = foreign()
    m.run(timeout_s=60)
    m.write_var("result", (u64 * 2)(), u64 * 2)
    m.reset()
    m.run(timeout_s=60)
    assert m.read_var("result", u64 * 2)[0] == MAGIC


def test_hlt_configured_as_crash(foreign):
    m = foreign(hlt="crash")
    with pytest.raises(GuestCrash) as info:
        m.run(timeout_s=60)
    assert info.value.reason == "HLT (this machine treats HLT as a crash)"
    assert info.value.regs["rip"] in range(m.image.segments[1].gpa, m.image.segments[1].end)
    assert m.read_var("result", u64 * 2)[0] == MAGIC  # it ran up to the HLT


def test_general_protection_reported_with_registers_and_no_cr2(foreign):
    m = foreign()
    m.write_var("mode", MODE_GP, u32)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    exc = info.value.exception
    assert (exc.vector, exc.error_code) == (13, 0)
    assert exc.regs["r12"] == MARKER_R12 and exc.regs["rbx"] == 1 << 63
    assert exc.rip in range(m.image.segments[1].gpa, m.image.segments[1].end)
    text = str(info.value)
    assert text.startswith(f"guest exception #GP general protection on vCPU 0 at RIP {exc.rip:#x}")
    assert "r12=0x0000000000005eed" in text and "cr2" not in text.lower()


def test_page_fault_reported_with_cr2(foreign):
    m = foreign()
    m.write_var("mode", MODE_PF, u32)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    exc = info.value.exception
    assert exc.vector == 14 and exc.cr2 == FAULT_ADDR and exc.error_code & 1 == 0
    assert exc.regs["r12"] == MARKER_R12
    assert f"CR2 {FAULT_ADDR:#x}" in str(info.value)


def test_every_faulting_vcpu_is_reported(foreign):
    m = foreign(vcpus=2)
    m.write_var("mode", MODE_PF, u32)
    with pytest.raises(GuestExceptionError) as info:
        m.run(timeout_s=60)
    assert info.value.vcpu == 0
    assert [(vcpu, type(err)) for vcpu, err in info.value.peers] == [(1, GuestExceptionError)]
    assert "\nalso vCPU 1: guest exception #PF page fault on vCPU 1" in str(info.value)


def test_triple_fault_reported_with_registers_and_cr2(foreign):
    m = foreign()
    m.write_var("mode", MODE_TRIPLE_FAULT, u32)
    with pytest.raises(GuestCrash) as info:
        m.run(timeout_s=60)
    assert "KVM_EXIT_SHUTDOWN" in info.value.reason and "cr2=" in str(info.value)
    if info.value.control["cr0"] & 1 << 31:  # paging still on: the state that faulted
        assert info.value.cr2 == FAULT_ADDR and info.value.regs["rbx"] == FAULT_ADDR
        assert f"cr2={FAULT_ADDR:#018x}" in str(info.value)
    else:  # AMD SVM re-inits a vCPU on shutdown: the report must say so
        assert "KVM reset the vCPU (paging is off)" in str(info.value)


def test_guest_use_of_the_stub_port_is_not_an_exception(foreign):
    m = foreign()
    m.write_var("mode", MODE_OWN_PORT, u32)
    with pytest.raises(GuestCrash, match=f"unexpected PIO OUT port {FOREIGN_EXCEPTION_PORT:#x}"):
        m.run(timeout_s=60)

    seen = []
    m2 = foreign(on_io=lambda machine, vcpu, io: seen.append((vcpu, io.port)))
    m2.write_var("mode", MODE_OWN_PORT, u32)
    m2.run(timeout_s=60)
    assert seen == [(0, FOREIGN_EXCEPTION_PORT)]


def test_stripped_guest_runs_without_symbols(kvm, tmp_path, guest_elf):
    from kvmharness.guest.elf import GuestImage
    from kvmharness.guest.machine import Machine

    result = GuestImage.load(guest_elf).address("result")  # same link, with symbols
    elf = _link(tmp_path, "stripped.elf", "--strip-all")
    with Machine.foreign(kvm, elf) as m:
        m.run(timeout_s=60)
        assert m.image.symbols == {}
        assert m.read(result, 8) == MAGIC.to_bytes(8, "little")
        with pytest.raises(GuestImageError, match="no symbol 'result'"):
            m.read_var("result")


def test_runtime_machine_refuses_a_foreign_guest_and_leaks_nothing(kvm, guest_elf, open_fds):
    from kvmharness.guest.machine import Machine

    fds, threads = open_fds(), threading.active_count()
    with pytest.raises(GuestImageError, match=r"no symbol 'kh_exception_stubs'.*Machine\.foreign"):
        Machine(kvm, guest_elf)
    assert open_fds() == fds and threading.active_count() == threads
    assert kvm.vms == []
