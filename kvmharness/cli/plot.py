"""``kvmharness plot FILE... --out F.png|F.svg``: a figure of result files (matplotlib)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("plot", help="draw result files: the figure their scenario "
                       "declares, e.g. latency versus slot size or memslot count, pass "
                       "times over a run (needs 'kvmharness[plot]')")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--out", type=Path, required=True, metavar="F.png|F.svg",
                   help="the figure to write (format from the suffix)")
    common.add_max_size(p)
    p.set_defaults(handler=cmd_plot)


def cmd_plot(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from kvmharness.plot import PlotError, plot_files

    try:
        files = [load_result(p, args.max_size) for p in args.files]
        written = plot_files(files, args.out)
    except (ResultFormatError, PlotError, OSError) as e:
        err.write(f"kvmharness plot: {e}\n" if not str(e).startswith("kvmharness plot")
                  else f"{e}\n")
        return common.EXIT_FAILED
    out.write(f"{written}\n")
    return 0
