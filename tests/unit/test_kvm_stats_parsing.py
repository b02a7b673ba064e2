"""Binary stats parsing from bytes, and exit decoding from a synthetic kvm_run: no /dev/kvm."""

from __future__ import annotations

import ctypes
import struct

import pytest

from kvmharness.kvm.exits import ExitDecoder, Hlt, InternalError, Io, Mmio, Unknown, decode_exit
from kvmharness.kvm.stats import StatBase, StatsFormatError, StatsLayout, StatsSnapshot, StatType, StatUnit
from kvmharness.uapi import kvm as k

NAME_SIZE = 48


def build_stats_blob(stats: list[tuple[str, int, int, int, list[int]]]) -> bytes:
    """(name, flags, exponent, bucket_size, values) -> header | id | descriptors | data."""
    header_size = 24
    id_offset = header_size
    desc_offset = id_offset + NAME_SIZE
    desc_size = 16 + NAME_SIZE
    data_offset = desc_offset + desc_size * len(stats)
    descs, data = b"", b""
    for name, flags, exponent, bucket, values in stats:
        descs += struct.pack("<IhHII", flags, exponent, len(values), len(data), bucket)
        descs += name.encode().ljust(NAME_SIZE, b"\0")
        data += struct.pack(f"<{len(values)}Q", *values)
    header = struct.pack("<6I", 0, NAME_SIZE, len(stats), id_offset, desc_offset, data_offset)
    return header + b"kvm-1234/vcpu-0".ljust(NAME_SIZE, b"\0") + descs + data


def layout_of(blob: bytes) -> StatsLayout:
    return StatsLayout.parse(lambda off, size: blob[off:off + size])


ALL_TYPES = [
    ("exits", k.KVM_STATS_TYPE_CUMULATIVE, 0, 0, [10]),
    ("pages_4k", k.KVM_STATS_TYPE_INSTANT, 0, 0, [7]),
    ("max_rmap", k.KVM_STATS_TYPE_PEAK, 0, 0, [3]),
    ("halt_wait_ns", k.KVM_STATS_TYPE_CUMULATIVE | k.KVM_STATS_UNIT_SECONDS, -9, 0, [500]),
    ("lin_hist", k.KVM_STATS_TYPE_LINEAR_HIST | k.KVM_STATS_UNIT_SECONDS, -9, 100, [1, 2, 3]),
    ("log_hist", k.KVM_STATS_TYPE_LOG_HIST | k.KVM_STATS_UNIT_BYTES | k.KVM_STATS_BASE_POW2,
     10, 0, [4, 5]),
    ("dirty", k.KVM_STATS_TYPE_INSTANT | k.KVM_STATS_UNIT_BOOLEAN, 0, 0, [1]),
    ("cycles", k.KVM_STATS_TYPE_CUMULATIVE | k.KVM_STATS_UNIT_CYCLES, 0, 0, [99]),
]


def test_parse_all_five_types_units_and_exponents():
    layout = layout_of(build_stats_blob(ALL_TYPES))
    assert layout.id == "kvm-1234/vcpu-0"
    by_name = {d.name: d for d in layout.descriptors}
    assert [d.type for d in layout.descriptors[:3]] == [
        StatType.CUMULATIVE, StatType.INSTANT, StatType.PEAK]
    assert by_name["halt_wait_ns"].unit is StatUnit.SECONDS
    assert by_name["halt_wait_ns"].unit_label == "ns"
    assert by_name["lin_hist"].type is StatType.LINEAR_HIST and by_name["lin_hist"].bucket_size == 100
    assert by_name["log_hist"].base is StatBase.POW2 and by_name["log_hist"].unit_label == "KiB"
    assert by_name["dirty"].unit is StatUnit.BOOLEAN
    assert by_name["cycles"].unit_label == "cycles"


def test_snapshot_values_and_delta_semantics():
    before_blob = build_stats_blob(ALL_TYPES)
    after = [(n, f, e, b, [v + 5 for v in vals]) for n, f, e, b, vals in ALL_TYPES]
    after_blob = build_stats_blob(after)
    layout = layout_of(before_blob)
    data_off = layout.data_offset
    before = StatsSnapshot.from_bytes(layout, before_blob[data_off:])
    later = StatsSnapshot.from_bytes(layout, after_blob[data_off:])
    assert before["exits"] == 10 and before["lin_hist"] == (1, 2, 3)
    delta = later.delta(before)
    assert delta["exits"] == 5                 # cumulative: difference
    assert delta["pages_4k"] == 12             # instant: current level
    assert delta["max_rmap"] == 8              # peak: current level
    assert delta["lin_hist"] == (5, 5, 5)      # histogram: per-bucket difference


def test_snapshot_of_named_subset_and_missing_name():
    blob = build_stats_blob(ALL_TYPES)
    layout = layout_of(blob)
    snap = StatsSnapshot.from_bytes(layout, blob[layout.data_offset:], ["exits"])
    assert dict(snap.values) == {"exits": 10}
    with pytest.raises(KeyError, match="nope"):
        StatsSnapshot.from_bytes(layout, blob[layout.data_offset:], ["exits", "nope"])


def test_truncated_and_malformed_stats_are_rejected():
    blob = build_stats_blob(ALL_TYPES)
    with pytest.raises(StatsFormatError, match="header truncated"):
        layout_of(blob[:10])
    with pytest.raises(StatsFormatError, match="descriptors truncated"):
        layout_of(blob[:100])
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 24 + NAME_SIZE, 0xF)  # type 15 does not exist
    with pytest.raises(StatsFormatError, match="unknown stats flags"):
        layout_of(bytes(bad))


def synthetic_run() -> tuple[k.kvm_run, ctypes.Array]:
    buf = (ctypes.c_char * 8192)()
    return k.kvm_run.from_buffer(buf), buf


def test_decode_io_out_reads_data_page():
    run, buf = synthetic_run()
    run.exit_reason = k.KvmExitReason.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port, run.io.count = k.KVM_EXIT_IO_OUT, 2, 0x6000, 2
    run.io.data_offset = 4096
    ctypes.memmove(ctypes.addressof(buf) + 4096, b"\x01\x02\x03\x04", 4)
    exit_ = decode_exit(run, ctypes.addressof(buf))
    assert exit_ == Io(is_out=True, port=0x6000, size=2, count=2, data=b"\x01\x02\x03\x04")
    assert exit_.value == 0x0201


def test_decode_mmio_internal_system_event_unknown():
    run, buf = synthetic_run()
    addr = ctypes.addressof(buf)
    run.exit_reason = k.KvmExitReason.KVM_EXIT_MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xFEE00000, 4, 1
    run.mmio.data[:4] = [1, 0, 0, 0]
    assert decode_exit(run, addr) == Mmio(0xFEE00000, 4, True, b"\x01\x00\x00\x00")
    run.exit_reason = k.KvmExitReason.KVM_EXIT_INTERNAL_ERROR
    run.internal.suberror, run.internal.ndata = k.KVM_INTERNAL_ERROR_EMULATION, 2
    run.internal.data[0], run.internal.data[1] = 7, 8
    internal = decode_exit(run, addr)
    assert internal == InternalError(1, (7, 8))
    assert internal.suberror_name == "KVM_INTERNAL_ERROR_EMULATION"
    run.exit_reason = k.KvmExitReason.KVM_EXIT_SYSTEM_EVENT
    run.system_event.type, run.system_event.ndata = k.KVM_SYSTEM_EVENT_CRASH, 1
    assert decode_exit(run, addr).type_name == "KVM_SYSTEM_EVENT_CRASH"
    run.exit_reason = k.KvmExitReason.KVM_EXIT_HLT
    assert decode_exit(run, addr) == Hlt()
    run.exit_reason = k.KvmExitReason.KVM_EXIT_NMI
    unknown = decode_exit(run, addr)
    assert isinstance(unknown, Unknown) and unknown.name == "KVM_EXIT_NMI"
    run.exit_reason = 999
    assert decode_exit(run, addr).name == "KVM_EXIT_999"


def test_fast_decoder_agrees_with_decode_exit_and_sees_every_change():
    run, buf = synthetic_run()
    addr = ctypes.addressof(buf)
    decoder = ExitDecoder(addr, ctypes.sizeof(buf))
    cases = []
    run.exit_reason = k.KvmExitReason.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port, run.io.count = k.KVM_EXIT_IO_OUT, 1, 0x10, 1
    run.io.data_offset = 4096
    for byte in (b"\x01", b"\x01", b"\x02"):
        ctypes.memmove(addr + 4096, byte, 1)
        cases.append(decoder.decode())
        assert cases[-1] == decode_exit(run, addr)
    assert [e.data for e in cases] == [b"\x01", b"\x01", b"\x02"]
    run.io.direction = 0  # IN: no data to copy, the caller answers
    assert decoder.decode() == decode_exit(run, addr) == Io(False, 0x10, 1, 1, b"")
    run.exit_reason = k.KvmExitReason.KVM_EXIT_MMIO
    for is_write, length, data in ((1, 4, [1, 2, 3, 4]), (0, 2, [9, 9, 0, 0]),
                                   (1, 8, list(range(8)))):
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xFEE00000, length, is_write
        run.mmio.data[:4] = data[:4]
        if length == 8:
            run.mmio.data[:8] = data
        got = decoder.decode()
        assert got == decode_exit(run, addr)
        assert isinstance(got, Mmio) and len(got.data) == length
        assert got.is_write is bool(is_write)
    run.exit_reason = k.KvmExitReason.KVM_EXIT_HLT
    assert decoder.decode() == Hlt()
    run.exit_reason = 999
    assert decoder.decode().name == "KVM_EXIT_999"


@pytest.mark.parametrize("kind", [k.kvm_userspace_memory_region, k.kvm_userspace_memory_region2])
def test_memslot_pack_fills_the_fields_both_region_layouts_share(kind):
    from kvmharness.kvm.vm import _pack_region

    region = kind()
    _pack_region(region, 0, (1 << 16) | 7, k.KVM_MEM_READONLY, 0x1_0000_0000, 0x20_0000,
                 0x7F00_1234_5000)
    assert (region.slot, region.flags, region.guest_phys_addr, region.memory_size,
            region.userspace_addr) == ((1 << 16) | 7, k.KVM_MEM_READONLY, 0x1_0000_0000,
                                       0x20_0000, 0x7F00_1234_5000)
    if kind is k.kvm_userspace_memory_region2:
        assert region.guest_memfd == 0 and region.guest_memfd_offset == 0


def _snap(values: dict[str, int]) -> StatsSnapshot:
    """A VM-or-vCPU snapshot of exits (cumulative), pages_4k (instant), max_rmap (peak)."""
    stats = [("exits", k.KVM_STATS_TYPE_CUMULATIVE, 0, 0, [values["exits"]]),
             ("pages_4k", k.KVM_STATS_TYPE_INSTANT, 0, 0, [values["pages_4k"]]),
             ("max_rmap", k.KVM_STATS_TYPE_PEAK, 0, 0, [values["max_rmap"]])]
    blob = build_stats_blob(stats)
    layout = layout_of(blob)
    return StatsSnapshot.from_bytes(layout, blob[layout.data_offset:])


def test_a_phase_keeps_each_stat_by_its_type():
    """slot-ops enters cycles@4K 24 times with about 1033 pages mapped: pages_4k is that
    level, not 24 x 1033; exits add up; a peak is the highest seen (vCPU peaks: the highest
    vCPU's, not their sum)."""
    from kvmharness.observe.counters import KvmCounters
    from kvmharness.scenarios.base import RunOutcome
    from kvmharness.scenarios.common import record_stats

    outcome = RunOutcome()
    exits = 0
    level_before = {"exits": 0, "pages_4k": 1033, "max_rmap": 2}
    for i in range(24):
        level_after = {"exits": exits + 10, "pages_4k": 1033 + (i == 23), "max_rmap": 2 + i % 5}
        before = (_snap(level_before), [_snap(level_before), _snap(level_before)])
        after = (_snap(level_after), [_snap(level_after), _snap(level_after)])
        record_stats(outcome, "cycles@4K", KvmCounters.delta(before, after),
                     KvmCounters.kinds_of(after))
        exits, level_before = exits + 10, level_after
    stats = outcome.kvm_stats["cycles@4K"]
    assert stats["vm.pages_4k"] == 1034          # the level when the phase last ended
    assert stats["vm.exits"] == 240               # 24 intervals of 10
    assert stats["vm.max_rmap"] == 6              # the highest peak
    assert stats["vcpu.exits"] == 480             # two vCPUs' counters add up
    assert stats["vcpu.max_rmap"] == 6            # the highest vCPU's peak
    assert outcome.kvm_stat_types == {
        "vm.exits": "cumulative", "vm.pages_4k": "instant", "vm.max_rmap": "peak",
        "vcpu.exits": "cumulative", "vcpu.pages_4k": "instant", "vcpu.max_rmap": "peak"}
