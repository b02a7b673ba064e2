"""The memslot ioctl shim's log parser and its classification of each ioctl by the slot's
state before it (create, delete, move, flags change), without the kernel build."""

from __future__ import annotations

import pytest

from kvmharness.bench import selftests
from kvmharness.bench.selftest_shim import (
    LoggedIoctl,
    ShimError,
    classify,
    parse_log,
    shim_source,
)
from kvmharness.uapi import ioctls

LOG = """\
slot 5 v2 0 0 0 1048576 9000 0 -1 -1
slot 5 v2 1 0 1073741824 4096 3000 0 -1 -1
slot 5 v2 2 0 1073745920 8192 3100 0 -1 -1
slot 5 v2 2 0 2147483648 8192 5000 0 1 2500
slot 5 v2 2 1 2147483648 8192 4000 0 0 0
slot 5 v2 2 1 2147483648 8192 4100 0 -1 -1
slot 5 v2 1 0 1073741824 0 7000 0 -1 -1
slot 5 v2 9 0 0 0 100 -1 -1 -1
slot 7 v1 0 0 0 4096 2000 0 -1 -1
slot 5 v2 2 0 0 0 6000 0 -1 -1
slot 5 v2 0 0 0 0 6500 0 -1 -1
slot 5 v2 0 0 0 65536 8000 0 -1 -1
"""


def test_parse_reads_every_field():
    first, second = parse_log(LOG)[:2]
    assert first == LoggedIoctl(fd=5, version="v2", slot=0, flags=0, gpa=0, size=1 << 20,
                                ns=9000, ret=0, vcpu_on=-1, vcpu_ns=-1)
    assert second.slot == 1 and second.gpa == 1 << 30 and second.ns == 3000


@pytest.mark.parametrize("line", ["slot 5 v3 0 0 0 4096 1 0 0 0", "slot 5 v2 0 0 0 4096 1 0 0",
                                  "slot x v2 0 0 0 4096 1 0 0 0", "slot 5 v2 0 0 0 4096 1 0 0 x",
                                  "noise"])
def test_parse_refuses_a_line_the_shim_never_writes(line):
    with pytest.raises(ShimError, match="shim log line 1"):
        parse_log(line)


def test_classify_replays_each_vms_slots():
    ops = classify(parse_log(LOG))
    assert [(o.kind, o.others, o.size) for o in ops] == [
        ("create", 0, 1 << 20),      # slot 0 into an empty VM
        ("create", 1, 4096),
        ("create", 2, 8192),
        ("move", 2, 8192),           # slot 2 to a new GPA: two other slots present
        ("flags", 2, 8192),          # same GPA, new flags
        ("same", 2, 8192),           # nothing changed
        ("delete", 2, 4096),         # slot 1 deleted: the size it had
        ("failed", 2, 0),            # a failed ioctl changes nothing
        ("create", 0, 4096),         # fd 7 is another VM
        ("delete", 1, 8192),
        ("delete", 0, 1 << 20),
        ("create", 0, 65536),        # a deleted slot id is created afresh
    ]
    assert [o.ns for o in ops][:3] == [9000, 3000, 3100]
    assert [(o.vcpu_on, o.vcpu_ns) for o in ops][3:5] == [(1, 2500), (0, 0)]
    assert [o.seq for o in ops] == list(range(len(ops)))


def test_shim_source_names_both_memslot_requests_and_kvm_run():
    source = shim_source()
    assert f"{int(ioctls.KVM_SET_USER_MEMORY_REGION):#x}UL" in source
    assert f"{int(ioctls.KVM_SET_USER_MEMORY_REGION2):#x}UL" in source
    assert f"{int(ioctls.KVM_RUN):#x}UL" in source  # where vCPU threads are registered


def test_selftest_moves_are_split_by_what_its_vcpu_did():
    log = "\n".join([
        "slot 5 v2 0 0 0 4096 1000 0 -1 -1",        # create, others 0 (no vCPU yet)
        "slot 5 v2 1 0 4096 4096 2000 0 -1 -1",     # create, others 1
        "slot 5 v2 1 0 8192 4096 30000 0 0 0",      # move, vCPU got no CPU time
        "slot 5 v2 1 0 4096 4096 900000 0 1 5000",  # move, vCPU on a CPU as it began
        "slot 5 v2 1 0 8192 4096 31000 0 0 0",      # move, vCPU got no CPU time
        "slot 5 v2 1 0 4096 4096 60000 0 0 7000",   # move, vCPU got a CPU only during it
        "slot 5 v2 1 0 0 0 4000 0 -1 -1",           # delete, others 1 (vCPU ended)
    ]) + "\n"
    samples = selftests.selftest_samples(classify(parse_log(log)), 1)
    assert samples == {("create", "not-in-guest"): [1.0, 2.0],  # window: others -1 .. 1
                       ("move", "not-in-guest"): [30.0, 31.0],
                       ("move", "in-guest"): [900.0],
                       ("delete", "not-in-guest"): [4.0]}


def test_ratio_table_rows_name_the_harness_state_each_compares():
    """One row per (op, vCPU state, harness op_state) and count: the selftest's samples of
    a row are shared by both not-in-guest rows, each with its own harness samples."""
    create = ("create", selftests.NOT_IN_GUEST)
    harness = {(create, "back_to_back", 4): [10.0, 12.0, 14.0],
               (create, "outside", 4): [50.0, 60.0, 70.0]}
    selftest = {(create, 4): [11.0, 12.0, 13.0]}
    per_round = {(create, "back_to_back", 4): [1.0], (create, "outside", 4): [5.0]}
    table = selftests.ratio_table(harness, selftest, per_round, [4])
    rows = {tuple(line.split()[:3]): line.split() for line in table.splitlines()[2:]}
    assert list(rows) == [(op, vcpu, state) for (op, vcpu), state in selftests.ROWS]
    assert rows[("create", "not-in-guest", "back_to_back")][3:6] == ["4", "3", "3"]
    assert rows[("create", "not-in-guest", "back_to_back")][10] == "1.00"  # 12 / 12
    assert rows[("create", "not-in-guest", "outside")][10] == "5.00"  # 60 / 12
    # A row without samples on one side prints dashes, never a ratio.
    assert rows[("move", "in-guest", "parked")][4:] == ["0", "0"] + ["-"] * 6
