"""``kvmharness compare``: statistics and tables over result files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.compare.build import CompareError, Settings, build_report
from kvmharness.compare.tables import FORMATS, format_report
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare result files (labels or variants)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="plain")
    p.add_argument("--alpha", type=common.alpha, default=0.05)
    p.add_argument("--min-change", type=common.fraction, default=0.01, metavar="PCT",
                   help="smallest |change| reported as significant (default 1%%)")
    p.add_argument("--by", choices=("auto", "label", "variant", "file"), default="auto",
                   help="what differs between A and B (default: labels if the files have "
                   "several, else variants, else files)")
    p.add_argument("--seed", type=int, default=Settings().seed,
                   help="bootstrap seed (same files + seed = same output)")
    p.set_defaults(handler=lambda args, argv, out, err: cmd_compare(args, out, err))


def cmd_compare(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        files = [load_result(p) for p in args.files]
        report = build_report(files, by=args.by,
                              settings=Settings(alpha=args.alpha, min_change=args.min_change,
                                                seed=args.seed))
    except (ResultFormatError, CompareError) as e:
        err.write(f"kvmharness compare: {e}\n")
        return common.EXIT_FAILED
    out.write(format_report(report, args.format))
    if args.format == "csv":
        # CSV stays machine-readable; the caveats still reach the person running it.
        for c in report.comparisons:
            for line in (*c.differences, *c.warnings):
                err.write(f"warning: {c.scenario} ({c.context}) {c.a.name} vs {c.b.name}: "
                          f"{line}\n")
    return 0
