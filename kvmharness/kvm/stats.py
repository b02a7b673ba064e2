"""KVM binary statistics (KVM_GET_STATS_FD; api.rst "KVM_GET_STATS_FD").

The header and descriptors are parsed once per fd; values are then read with one pread of
the data block, so a snapshot costs one syscall however many stats there are."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import os
import struct
from collections.abc import Callable, Iterable, Mapping

from kvmharness.kvm.closeable import Closeable
from kvmharness.uapi.kvm import (
    KVM_STATS_BASE_MASK,
    KVM_STATS_BASE_SHIFT,
    KVM_STATS_TYPE_MASK,
    KVM_STATS_TYPE_SHIFT,
    KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_SHIFT,
    kvm_stats_desc,
    kvm_stats_header,
)


class StatType(enum.IntEnum):
    CUMULATIVE = 0
    INSTANT = 1
    PEAK = 2
    LINEAR_HIST = 3
    LOG_HIST = 4


# How a scalar stat is kept over an interval (KVM_GET_STATS_FD's type field): a counter
# by how much it grew, a level by where it ended, a high-water mark by its highest value.
CUMULATIVE, INSTANT, PEAK = "cumulative", "instant", "peak"
StatKind = str  # one of CUMULATIVE, INSTANT, PEAK


def kind_of(stat_type: StatType) -> StatKind:
    """CUMULATIVE for counters (and histograms, whose buckets count), INSTANT, PEAK."""
    return {StatType.INSTANT: INSTANT, StatType.PEAK: PEAK}.get(stat_type, CUMULATIVE)


def combine(kind: StatKind, earlier: int, later: int) -> int:
    """Two consecutive intervals' values of one stat as one interval's: counters add up,
    a level is the later one (its value at the end), a peak the larger."""
    if kind == INSTANT:
        return later
    if kind == PEAK:
        return max(earlier, later)
    return earlier + later


class StatUnit(enum.IntEnum):
    NONE = 0
    BYTES = 1
    SECONDS = 2
    CYCLES = 3
    BOOLEAN = 4


class StatBase(enum.IntEnum):
    POW10 = 0
    POW2 = 1


class StatsFormatError(ValueError):
    """The stats fd's bytes do not parse as the documented format."""


@dataclasses.dataclass(frozen=True)
class StatDescriptor:
    name: str
    type: StatType
    unit: StatUnit
    base: StatBase
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def is_histogram(self) -> bool:
        return self.type in (StatType.LINEAR_HIST, StatType.LOG_HIST)

    @property
    def unit_label(self) -> str:
        """Human unit, e.g. ``ns`` for SECONDS with exponent -9, ``pages`` never guessed."""
        if self.unit is StatUnit.NONE:
            return ""
        if self.unit is StatUnit.SECONDS and self.base is StatBase.POW10:
            return {0: "s", -3: "ms", -6: "us", -9: "ns"}.get(self.exponent, f"1e{self.exponent} s")
        if self.unit is StatUnit.BYTES and self.base is StatBase.POW2:
            return {0: "B", 10: "KiB", 12: "4KiB", 20: "MiB", 30: "GiB"}.get(
                self.exponent, f"2^{self.exponent} B")
        return self.unit.name.lower()


def _decode_flags(flags: int) -> tuple[StatType, StatUnit, StatBase]:
    try:
        return (
            StatType((flags & KVM_STATS_TYPE_MASK) >> KVM_STATS_TYPE_SHIFT),
            StatUnit((flags & KVM_STATS_UNIT_MASK) >> KVM_STATS_UNIT_SHIFT),
            StatBase((flags & KVM_STATS_BASE_MASK) >> KVM_STATS_BASE_SHIFT),
        )
    except ValueError as exc:
        raise StatsFormatError(f"unknown stats flags {flags:#x}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class StatsLayout:
    """Parsed header + descriptors of one stats fd."""

    id: str
    data_offset: int
    data_size: int
    descriptors: tuple[StatDescriptor, ...]

    @classmethod
    def parse(cls, read_at: Callable[[int, int], bytes]) -> StatsLayout:
        """Parse from a ``read_at(offset, size)`` reader (a pread wrapper or a bytes slice)."""
        hsize = ctypes.sizeof(kvm_stats_header)
        raw = read_at(0, hsize)
        if len(raw) < hsize:
            raise StatsFormatError(f"stats header truncated: {len(raw)} of {hsize} bytes")
        header = kvm_stats_header.from_buffer_copy(raw)
        ident = read_at(header.id_offset, header.name_size).split(b"\0", 1)[0].decode(
            "ascii", "replace")
        dsize = ctypes.sizeof(kvm_stats_desc) + header.name_size
        blob = read_at(header.desc_offset, dsize * header.num_desc)
        if len(blob) < dsize * header.num_desc:
            raise StatsFormatError(
                f"stats descriptors truncated: {len(blob)} of {dsize * header.num_desc} bytes")
        descriptors = []
        end = 0
        fixed = ctypes.sizeof(kvm_stats_desc)
        for i in range(header.num_desc):
            chunk = blob[i * dsize:(i + 1) * dsize]
            desc = kvm_stats_desc.from_buffer_copy(chunk[:fixed])
            name = chunk[fixed:].split(b"\0", 1)[0].decode("ascii", "replace")
            stype, unit, base = _decode_flags(desc.flags)
            if desc.size == 0:
                raise StatsFormatError(f"stat {name!r} has size 0")
            descriptors.append(StatDescriptor(name, stype, unit, base, desc.exponent, desc.size,
                                              desc.offset, desc.bucket_size))
            end = max(end, desc.offset + 8 * desc.size)
        return cls(ident, header.data_offset, end, tuple(descriptors))


class StatsReader(Closeable):
    """Reads one stats fd (VM or vCPU).  Owns the fd; close() or use as a context manager."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self.layout = StatsLayout.parse(lambda off, size: os.pread(fd, size, off))
        except BaseException:
            os.close(fd)
            raise
        self._by_name = {d.name: d for d in self.layout.descriptors}

    @property
    def descriptors(self) -> tuple[StatDescriptor, ...]:
        return self.layout.descriptors

    def descriptor(self, name: str) -> StatDescriptor:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no KVM stat {name!r} in {self.layout.id!r} "
                           f"(have: {', '.join(sorted(self._by_name))})") from None

    def read_raw(self) -> bytes:
        return os.pread(self.fd, self.layout.data_size, self.layout.data_offset)

    def snapshot(self, names: Iterable[str] | None = None) -> StatsSnapshot:
        return StatsSnapshot.from_bytes(self.layout, self.read_raw(), names)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """Values at one instant: scalars as int, histograms as tuples of bucket counts."""

    values: Mapping[str, int | tuple[int, ...]]
    descriptors: Mapping[str, StatDescriptor]

    @classmethod
    def from_bytes(cls, layout: StatsLayout, data: bytes,
                   names: Iterable[str] | None = None) -> StatsSnapshot:
        wanted = set(names) if names is not None else None
        values: dict[str, int | tuple[int, ...]] = {}
        descs: dict[str, StatDescriptor] = {}
        for d in layout.descriptors:
            if wanted is not None and d.name not in wanted:
                continue
            words = struct.unpack_from(f"<{d.size}Q", data, d.offset)
            values[d.name] = words if d.is_histogram or d.size > 1 else words[0]
            descs[d.name] = d
        if wanted is not None and len(values) != len(wanted):
            missing = sorted(wanted - set(values))
            raise KeyError(f"no KVM stat(s) {', '.join(missing)} in {layout.id!r}")
        return cls(values, descs)

    def __getitem__(self, name: str) -> int | tuple[int, ...]:
        return self.values[name]

    def delta(self, earlier: StatsSnapshot) -> dict[str, int | tuple[int, ...]]:
        """self − earlier for cumulative stats and histograms; instant and peak stats report
        their current value, since a difference of levels means nothing."""
        out: dict[str, int | tuple[int, ...]] = {}
        for name, value in self.values.items():
            d = self.descriptors[name]
            before = earlier.values.get(name)
            if before is None or d.type in (StatType.INSTANT, StatType.PEAK):
                out[name] = value
            elif isinstance(value, tuple):
                out[name] = tuple(a - b for a, b in zip(value, before))  # type: ignore[arg-type]
            else:
                out[name] = value - before  # type: ignore[operator]
        return out


def sum_deltas(deltas: Iterable[Mapping[str, int | tuple[int, ...]]],
               kinds: Mapping[str, StatKind] | None = None) -> dict[str, int]:
    """Scalar deltas across vCPUs as one VM-wide value (histograms are skipped): counters
    and levels add up (each vCPU's share), peaks take the highest vCPU's."""
    total: dict[str, int] = {}
    for delta in deltas:
        for name, value in delta.items():
            if isinstance(value, int):
                peak = kinds is not None and kinds.get(name) == PEAK
                total[name] = (max(total[name], value) if peak and name in total
                               else total.get(name, 0) + value)
    return total
