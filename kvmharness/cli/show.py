"""``kvmharness show FILE``: one result file in a page."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.compare.render.show import format_show
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("show", help="what a result file holds: setup, runs, zap path, "
                       "headline metrics")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    common.add_max_size(p)
    p.set_defaults(handler=cmd_show)


def cmd_show(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    status = 0
    for i, path in enumerate(args.files):
        try:
            text = format_show(load_result(path, args.max_size))
        except (ResultFormatError, OSError) as e:
            err.write(f"kvmharness show: {e}\n")
            status = common.EXIT_FAILED
            continue
        out.write(("\n" if i else "") + text)
    return status
