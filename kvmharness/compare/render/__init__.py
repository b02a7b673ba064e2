"""Rendering a ``Report``: one module per output format over the shared row model.

plain (ASCII, <= 75 columns), Markdown, CSV, cover letter (<= 72); ``show`` renders one
result file and ``summary`` the table printed after ``run``.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmharness.compare.build import Report
from kvmharness.compare.render.cover_letter import format_cover_letter
from kvmharness.compare.render.csv import format_csv
from kvmharness.compare.render.markdown import format_markdown
from kvmharness.compare.render.model import DEFAULT_VIEW, View
from kvmharness.compare.render.plain import format_plain

__all__ = ["FORMATS", "View", "format_report"]

FORMATTERS: dict[str, Callable[[Report, View], str]] = {
    "plain": format_plain,
    "markdown": format_markdown,
    "csv": format_csv,
    "cover-letter": format_cover_letter,
}
FORMATS: tuple[str, ...] = tuple(FORMATTERS)


def format_report(report: Report, fmt: str = "plain", view: View = DEFAULT_VIEW) -> str:
    try:
        formatter = FORMATTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})") from None
    return formatter(report, view)
