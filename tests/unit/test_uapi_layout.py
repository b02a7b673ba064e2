"""The uapi mirror against real headers, and the ioctl encoding (neither needs /dev/kvm).

* Encoding: ``_IOC``/``_IO*``/``decode`` and ``IoctlNumber``, checked against literal values
  from the kernel's own encoding (no compiler needed).
* Layout: every mirrored struct, field, constant, enum member and ioctl number compared with
  what ``cc`` computes from ``<linux/kvm.h>``: the system's headers and the uapi headers of a
  newer kernel (built once from Debian's linux-source-6.12 into ~/.cache/kvmharness; see
  ``layout_support.py``).  An item that no header set could check is a failure.  Without the
  newer headers (or a C compiler) the layout tests skip with the reason, except under
  ``KVMHARNESS_REQUIRE_KVM=1`` (CI), where they fail.
"""

from __future__ import annotations

import copy
import ctypes
import os
import pickle
import tempfile
from pathlib import Path

# A plain import: pytest puts tests/unit (no __init__.py) on sys.path for its modules.
import layout_support as L
import pytest

from kvmharness.uapi import ioctl as ioc
from kvmharness.uapi.ioctl import IoctlNumber
from kvmharness.uapi.ioctls import all_ioctls


def _required() -> bool:
    return os.environ.get("KVMHARNESS_REQUIRE_KVM", "") not in ("", "0")


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"KVMHARNESS_REQUIRE_KVM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------
# ioctl encoding (asm-generic/ioctl.h)
# ------------------------------------------------------------------------------------------
class _Sized(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint64), ("b", ctypes.c_uint32)]  # sizeof 16


def test_ioc_bit_layout() -> None:
    # dir:2 | size:14 | type:8 | nr:8, from the top bit down.
    assert ioc._IOC(0, 0, 0, 0) == 0
    assert ioc._IOC(ioc._IOC_NONE, 0xAE, 0x80, 0) == 0xAE80
    assert ioc._IOC(ioc._IOC_WRITE, 0, 0, 0) == 1 << 30
    assert ioc._IOC(ioc._IOC_READ, 0, 0, 0) == 2 << 30
    assert ioc._IOC(ioc._IOC_READ | ioc._IOC_WRITE, 0xAE, 0x05, 8) == 0xC008AE05
    assert ioc._IOC(0, 0, 0, (1 << 14) - 1) == 0x3FFF << 16
    assert ioc._IOC(0, 0xFF, 0xFF, 0) == 0xFFFF


def test_io_helpers_take_struct_or_size() -> None:
    assert ioc._IO(0xAE, 0x01) == 0xAE01
    assert ioc._IOR(0xAE, 0x81, _Sized) == ioc._IOR(0xAE, 0x81, 16) == 0x8010AE81
    assert ioc._IOW(0xAE, 0x82, _Sized) == 0x4010AE82
    assert ioc._IOWR(0xAE, 0x05, ctypes.c_uint64) == 0xC008AE05


@pytest.mark.parametrize("size", [-1, 1 << 14, 1 << 20])
def test_ioc_rejects_sizes_that_do_not_fit(size: int) -> None:
    with pytest.raises(ValueError, match="14 bits"):
        ioc._IOC(ioc._IOC_READ, 0xAE, 0x00, size)


def test_decode_is_the_inverse_of_ioc() -> None:
    for direction in (ioc._IOC_NONE, ioc._IOC_WRITE, ioc._IOC_READ, 3):
        for type_, nr, size in ((0xAE, 0x00, 0), (0xAE, 0xFF, 0x3FFF), (0x00, 0x46, 32)):
            assert ioc.decode(ioc._IOC(direction, type_, nr, size)) == (direction, type_, nr, size)
    assert ioc.decode(0x4020AE46) == (ioc._IOC_WRITE, 0xAE, 0x46, 32)


# Values as the kernel encodes them (Documentation/virt/kvm/api.rst, strace), independent of
# any header on this machine.
KNOWN_IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_ENABLE_CAP": 0x4068AEA3,
}


@pytest.mark.parametrize("name", sorted(KNOWN_IOCTLS))
def test_known_ioctl_values(name: str) -> None:
    assert int(all_ioctls()[name]) == KNOWN_IOCTLS[name]


def test_every_ioctl_is_a_named_kvm_ioctl() -> None:
    from kvmharness.uapi.kvm import KVMIO

    table = all_ioctls()
    assert table, "all_ioctls() is empty"
    for name, number in table.items():
        assert isinstance(number, IoctlNumber) and number.name == name
        direction, type_, _nr, size = ioc.decode(number)
        assert type_ == KVMIO, name
        assert (direction == ioc._IOC_NONE) == (size == 0), name
    # all_ioctls() is a copy: callers cannot corrupt the table.
    table.clear()
    assert all_ioctls()


def test_ioctl_number_keeps_name_and_int_value() -> None:
    number = IoctlNumber("KVM_RUN", 0xAE80)
    assert isinstance(number, int)
    assert number == 0xAE80 and int(number) == 0xAE80 and type(int(number)) is int
    assert hash(number) == hash(0xAE80) and {0xAE80: "x"}[number] == "x"
    assert number.name == "KVM_RUN"
    assert repr(number) == "KVM_RUN(0xae80)"
    assert f"{number:#x}" == "0xae80"
    assert type(number + 0) is int  # arithmetic yields plain ints
    for clone in (pickle.loads(pickle.dumps(number)), copy.copy(number), copy.deepcopy(number)):
        assert type(clone) is IoctlNumber and clone == number and clone.name == "KVM_RUN"


# ------------------------------------------------------------------------------------------
# Layout against the headers
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report():
    try:
        return L.run_layout_check()
    except RuntimeError as exc:  # no compiler, or a header set that does not compile
        _unavailable(f"layout check could not run: {exc}")


def test_mirror_enumeration_has_no_problems() -> None:
    items, problems = L.mirror_items()
    assert not problems, "\n".join(problems)
    names = {i.name for i in items}
    # The introspection found what it must (guards against it silently finding nothing).
    from kvmharness.uapi import kvm as kvm_mod
    from kvmharness.uapi import x86 as x86_mod
    from kvmharness.uapi.caps import KvmCap

    for mod in (kvm_mod, x86_mod):
        for name, obj in vars(mod).items():
            if name.startswith("kvm_") and isinstance(obj, type) and issubclass(
                    obj, (ctypes.Structure, ctypes.Union)):
                kw = "union" if issubclass(obj, ctypes.Union) else "struct"
                assert f"sizeof({kw} {name})" in names
    assert "offsetof(struct kvm_run, mmio.phys_addr)" in names
    assert "offsetof(struct kvm_run, exit_reason)" in names
    assert all(f"KvmCap.{c.name}" in names for c in KvmCap)
    assert set(all_ioctls()) <= names


def test_no_layout_mismatches(report) -> None:
    mismatches = report.mismatches()
    assert not mismatches, (f"{len(mismatches)} mirrored items differ from the headers:\n  "
                            + "\n  ".join(mismatches) + "\n" + report.summary())


def test_every_mirrored_item_is_checked(report) -> None:
    unchecked = report.unchecked_details()
    if not unchecked:
        return
    message = (f"{len(unchecked)} mirrored items could not be checked against any header set:"
               "\n  " + "\n  ".join(unchecked) + "\n" + report.summary())
    if report.unavailable and not _required():
        pytest.skip("UNCHECKED (header set unavailable): " + message)
    pytest.fail(message, pytrace=False)


def test_newer_headers_available(report) -> None:
    if report.unavailable:
        _unavailable("; ".join(f"{hs.label}: {hs.error}" for hs in report.unavailable))
    assert all(r.values for r in report.results), report.summary()


def test_checker_detects_a_mismatch_and_an_absent_item() -> None:
    """The machinery itself: a wrong value is a mismatch, an unknown name is unchecked."""
    items = [
        L.Item("sizeof", "sizeof(struct kvm_regs)", 1, ("sizeof(struct kvm_regs)",)),
        L.Item("constant", "KVM_NO_SUCH_MACRO", 1, ("KVM_NO_SUCH_MACRO",)),
        L.Item("constant", "KVMIO", 0xAE, ("KVMIO",)),
        L.Item("offsetof", "offsetof(struct kvm_run, no_such)", 0,
               ("__builtin_offsetof(struct kvm_run, no_such)",
                "__builtin_offsetof(struct kvm_run, exit_reason)")),  # alias fallback
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = L.probe(items, L.HeaderSet("system", []), Path(tmp))
    except RuntimeError as exc:
        _unavailable(f"no working C compiler/system headers: {exc}")
    rep = L.Report(items, [], [result], [], 0.0)
    assert [m.split(":")[0] for m in rep.mismatches()] == ["sizeof(struct kvm_regs)",
                                                           "offsetof(struct kvm_run, no_such)"]
    assert [i.name for i in rep.unchecked()] == ["KVM_NO_SUCH_MACRO"]
    assert result.values[2] == 0xAE
    assert result.used_expr[3].endswith("exit_reason)")
