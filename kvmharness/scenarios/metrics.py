"""What a scenario measures: single metrics, and metric families whose points are known
only once the parameters are (``create@<size>`` -> ``create@4K``, ``create@1G``;
``create@<count>`` -> ``create@1``, ``create@4096``).

A family is declared once, by the scenario, with the kind of key that labels its points.
Everything that reads metric names back (the until-ci stopping rule, compare's rows and
tables, plots, the contract test) asks this module which concrete names a declared name
stands for: result files store the declared name (``create@<count>``), so the key kind
is read back from that text alone, without the scenario that wrote it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

Direction = Literal["lower", "higher"]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: Direction
    help: str


# --- key kinds ---------------------------------------------------------------------------
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
PAGE = 4096  # memslots and guest pages are 4 KiB granular


def size_label(size: int) -> str:
    """``4096`` -> ``4K``, ``1 << 30`` -> ``1G``: the largest unit that divides exactly, so a
    label round-trips through ``parse_size`` and names one size only."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SIZE_UNITS[suffix]
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def parse_size(text: str, default_unit: int = 1) -> int:
    """``4K``/``64k``/``1G`` (binary units) or a bare number times ``default_unit``."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = default_unit
    if t and t[-1] in _SIZE_UNITS:
        t, unit = t[:-1], _SIZE_UNITS[t[-1]]
    # ASCII digits only (str.isdigit takes fullwidth and Arabic-Indic digits too), and
    # few enough of them that the size is a size, not a typo.
    if not (t.isascii() and t.isdigit()) or len(t) > 20 or int(t) <= 0:
        raise ValueError(f"{text!r} is not a positive size like 4K, 16M or 1G")
    return int(t) * unit


def _size_value(label: str) -> int | None:
    try:
        size = parse_size(label)
    except ValueError:
        return None
    return size if size_label(size) == label and size % PAGE == 0 else None


def _count_value(label: str) -> int | None:
    return (int(label) if label.isascii() and label.isdigit() and str(int(label)) == label
            else None)


@dataclasses.dataclass(frozen=True)
class KeyKind:
    """What labels a family's points: ``slot`` is the placeholder in the declared name
    (``<size>``), ``value`` the number a label stands for (None: not a label of this kind;
    each label has one spelling, so ``4K`` is a size and ``4096`` a count), ``axis`` what
    the key measures, for a table header or a figure's x axis."""

    name: str
    slot: str
    axis: str
    value: Callable[[str], int | None]
    label: Callable[[int], str]

    def of(self, declared: str) -> str | None:
        """The stem of ``declared`` if it names a family of this kind (``create@<size>``
        -> ``create``)."""
        stem, sep, slot = declared.partition("@")
        return stem if sep and slot == self.slot else None


SIZE = KeyKind("size", "<size>", "size", _size_value, size_label)
COUNT = KeyKind("count", "<count>", "count", _count_value, str)
KEY_KINDS: tuple[KeyKind, ...] = (SIZE, COUNT)


@dataclasses.dataclass(frozen=True)
class MetricFamily(Metric):
    """A metric per key: ``name`` is the declared ``stem@<slot>``, every point
    ``stem@<label>`` shares its unit and direction."""

    key: KeyKind

    @classmethod
    def of(cls, stem: str, key: KeyKind, unit: str, direction: Direction,
           help: str) -> MetricFamily:
        return cls(f"{stem}@{key.slot}", unit, direction, help, key)

    @property
    def stem(self) -> str:
        return self.name.partition("@")[0]

    def label_of(self, metric: str) -> str | None:
        """The key label if ``metric`` is a point of this family (``create@4K`` -> ``4K``)."""
        stem, sep, label = metric.partition("@")
        return label if sep and stem == self.stem and self.key.value(label) is not None else None

    def point(self, label: str) -> Metric:
        return Metric(f"{self.stem}@{label}", self.unit, self.direction,
                      f"{self.help} [{label}]")


def declared_family(declared: str) -> tuple[str, KeyKind] | None:
    """(stem, key kind) of a family's declared name as result files store it, else None."""
    for kind in KEY_KINDS:
        stem = kind.of(declared)
        if stem is not None:
            return stem, kind
    return None


def is_family(declared: str) -> bool:
    return declared_family(declared) is not None


def point_of(metric: str, declared: Iterable[str]) -> tuple[str, KeyKind, str] | None:
    """(declared family name, key kind, label) of the family in ``declared`` that
    ``metric`` is a point of (``create@4K`` in ``create@<size>``), else None."""
    stem, sep, label = metric.partition("@")
    if not sep:
        return None
    for name in declared:
        family = declared_family(name)
        if family is not None and family[0] == stem and family[1].value(label) is not None:
            return name, family[1], label
    return None


def expand(declared: Iterable[str], present: Iterable[str]) -> list[str]:
    """The concrete names among ``present`` that ``declared`` stands for, in declared order:
    a plain name if present, a family (``create@<count>``) for each of its points present
    (in ``present``'s order).  No name twice."""
    names = list(dict.fromkeys(present))
    out: list[str] = []
    for d in declared:
        family = declared_family(d)
        if family is None:
            out += [d] if d in names else []
            continue
        stem, kind = family
        for n in names:
            s, sep, label = n.partition("@")
            if sep and s == stem and kind.value(label) is not None:
                out.append(n)
    return list(dict.fromkeys(out))


def keys_present(declared: str, present: Iterable[str]) -> list[tuple[int, str]]:
    """(value, label) of every point of family ``declared`` among ``present``, by value."""
    family = declared_family(declared)
    if family is None:
        return []
    stem, kind = family
    found: dict[str, int] = {}
    for n in present:
        s, sep, label = n.partition("@")
        if sep and s == stem and (v := kind.value(label)) is not None:
            found[label] = v
    return sorted((v, label) for label, v in found.items())


def resolve(metrics: Sequence[Metric], name: str) -> Metric | None:
    """``name`` as declared in ``metrics`` or as a point of a declared family."""
    for m in metrics:
        if m.name == name:
            return m
    for m in metrics:
        if isinstance(m, MetricFamily) and (label := m.label_of(name)) is not None:
            return m.point(label)
    return None


def concrete_names(metrics: Sequence[Metric], labels: Iterable[str]) -> list[str]:
    """Every concrete metric name a run over key ``labels`` can report: each family at each
    label of its kind, each plain metric once."""
    labels = list(labels)
    out: list[str] = []
    for m in metrics:
        if isinstance(m, MetricFamily):
            out += [f"{m.stem}@{label}" for label in labels if m.key.value(label) is not None]
        else:
            out.append(m.name)
    return out
