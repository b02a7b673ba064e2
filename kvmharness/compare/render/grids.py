"""Parametrized metrics (``op@size``, ``create@count``, mmio's ``kind_cycles``) as grids:
a row per family and side, a column per key, split into several grids when the keys do
not fit the width.  Every other side's cell is its median and its change against A."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from kvmharness.compare.render.model import PivotGrid
from kvmharness.compare.render.text import TAGS, layout

T = TypeVar("T")


def grid_lines(grid: PivotGrid, width: int) -> list[str]:
    """The grid in as few pieces as fit ``width``: two spaces between key columns, one if
    that keeps every key in one grid."""
    change_w = {c: max(len(grid.cells[f, c][i][1]) for f in grid.families
                       for i in range(grid.sides)) for c in grid.columns}
    value_w = {c: max([len(c), *(len(grid.cells[f, c][i][0]) for f in grid.families
                                 for i in range(grid.sides))]) for c in grid.columns}
    col_w = {c: value_w[c] + (1 + change_w[c] if change_w[c] else 0) for c in grid.columns}
    label_w = max(len(v) for v in grid.labels.values()) if grid.labels else 6

    def total(gap: int) -> int:
        return label_w + 3 + sum(gap + col_w[c] for c in grid.columns) - gap

    gap = 1 if total(2) > width >= total(1) else 2
    out: list[str] = []
    for cols in _chunks(grid.columns, col_w, label_w + 3 - gap, gap, width):
        if out:
            out.append("")
        out += _piece(grid, cols, [bool(change_w[c]) for c in cols], gap)
    return out


def _chunks(columns: Sequence[str], col_w: dict[str, int], start: int, gap: int,
            width: int) -> list[list[str]]:
    chunks: list[list[str]] = []
    chunk: list[str] = []
    used = start
    for col in columns:
        if chunk and used + gap + col_w[col] > width:
            chunks.append(chunk)
            chunk, used = [], start
        chunk.append(col)
        used += gap + col_w[col]
    if chunk:
        chunks.append(chunk)
    return chunks


def _piece(grid: PivotGrid, cols: Sequence[str], changes: Sequence[bool],
           gap: int) -> list[str]:
    """Label, side tag, then per key its value and (where any side has one) its change;
    an empty column between keys makes the two-space gap (tabulate's separator is one)."""
    def cells(per_key: Sequence[Sequence[T]], between: T) -> list[T]:
        row: list[T] = []
        for i, key_cells in enumerate(per_key):
            row += ([between] if i and gap == 2 else []) + list(key_cells)
        return row

    head = ["", "", *cells([[c, ""] if ch else [c] for c, ch in zip(cols, changes)], "")]
    right = [False, False, *cells([[True, False] if ch else [True] for ch in changes],
                                  False)]
    rows = [head]
    for fam in grid.families:
        for i in range(grid.sides):
            per_key = [list(grid.cells[fam, c][i]) if ch else [grid.cells[fam, c][i][0]]
                       for c, ch in zip(cols, changes)]
            rows.append([grid.labels[fam] if i == 0 else "", TAGS[i], *cells(per_key, "")])
    lines = layout(rows, right, " ")
    return [lines[0], "-" * max(map(len, lines)), *lines[1:]]
