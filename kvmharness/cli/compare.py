"""``kvmharness compare``: statistics and tables over result files."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.compare.build import (
    AXIS_CHOICES,
    CompareError,
    Settings,
    build_report,
    build_sides_report,
)
from kvmharness.compare.gate import regressions, untestable
from kvmharness.compare.render import FORMATS, View, format_report
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError

# With --fail-on-regression, input that cannot be compared is neither good nor bad: the
# status `git bisect run` reads as "skip this commit".
EXIT_CANNOT_TELL = 125


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare result files (labels, variants, or explicit "
                       "sides --a/--b)")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE")
    p.add_argument("--a", nargs="+", type=Path, default=[], metavar="FILE",
                   help="the baseline side: every run of these files")
    p.add_argument("--b", nargs="+", type=Path, default=[], metavar="FILE",
                   help="the other side (with --a)")
    p.add_argument("--format", choices=FORMATS, default="plain")
    p.add_argument("--alpha", type=common.alpha, default=0.05)
    p.add_argument("--min-change", type=common.percent("--min-change"), default=0.01,
                   metavar="PCT", help="smallest |change| reported as significant, in "
                   "percent: 1 or 1%% (default 1%%)")
    p.add_argument("--by", choices=AXIS_CHOICES, default="auto",
                   help="what differs between the sides (default: labels if the files have "
                   "several, else variants, else files; label+variant: each pair a side)")
    p.add_argument("--baseline", metavar="NAME",
                   help="the side A every other is compared with: a label, a variant "
                   "(zap=all) or a file (default: the first given)")
    p.add_argument("--pool", action="store_true",
                   help="pool files into one side even when they differ in kernel, command "
                   "line, module parameters, MMU mode or scenario parameters")
    p.add_argument("--all-metrics", action="store_true",
                   help="every metric (default: the scenario's headline metrics)")
    p.add_argument("--detail", action="store_true",
                   help="per-side statistics, the CI of each change, every file name")
    p.add_argument("--show-setup", action="store_true",
                   help="list every setup difference instead of grouped counts")
    p.add_argument("--fail-on-regression", type=common.percent("--fail-on-regression",
                                                              upper=10000), metavar="PCT",
                   help="exit 1 when a headline metric of B is significantly worse than A "
                   "by more than PCT (e.g. 5%%), else 0; 125 when the files cannot be "
                   "compared (git bisect run: skip)")
    p.add_argument("--seed", type=int, default=Settings().seed,
                   help="bootstrap seed (same files + seed = same output)")
    common.add_max_size(p)
    p.set_defaults(handler=cmd_compare)


def gate(report: Any, threshold: float | None, err: TextIO, prog: str) -> int:
    """1 with one stderr line per regression; else 125 with one line per comparison that
    could not have found one (too few runs); else 0."""
    if threshold is None:
        return 0
    found = regressions(report, threshold)
    for line in found:
        err.write(f"{prog}: regression: {line}\n")
    if found:
        return common.EXIT_FAILED
    blind = untestable(report)
    for line in blind:
        err.write(f"{prog}: cannot judge: {line}\n")
    return EXIT_CANNOT_TELL if blind else 0


def cmd_compare(args: argparse.Namespace, argv: Sequence[str], out: TextIO,
                err: TextIO) -> int:
    if bool(args.a) != bool(args.b) or (args.a and args.files):
        err.write("kvmharness compare: give FILE... or both --a FILE... and --b FILE...\n")
        return common.EXIT_USAGE
    if args.baseline is not None and args.a:
        err.write("kvmharness compare: --baseline applies to FILE...; with --a/--b, --a is "
                  "the baseline\n")
        return common.EXIT_USAGE
    if not args.a and not args.files:
        err.write("kvmharness compare: no result files given\n")
        return common.EXIT_USAGE
    settings = Settings(alpha=args.alpha, min_change=args.min_change, seed=args.seed,
                        all_metrics=args.all_metrics, pool=args.pool)
    command = shlex.join(["kvmharness", *argv])
    try:
        if args.a:
            report = build_sides_report([load_result(p, args.max_size) for p in args.a],
                                        [load_result(p, args.max_size) for p in args.b],
                                        settings=settings, command=command)
        else:
            report = build_report([load_result(p, args.max_size) for p in args.files], by=args.by,
                                  settings=settings, command=command,
                                  baseline=args.baseline)
    except (ResultFormatError, CompareError, OSError) as e:
        err.write(f"kvmharness compare: {e}\n")
        return EXIT_CANNOT_TELL if args.fail_on_regression is not None else common.EXIT_FAILED
    out.write(format_report(report, args.format,
                            View(detail=args.detail, show_setup=args.show_setup)))
    for note in report.notes:
        err.write(f"warning: {note}\n")
    if args.format == "csv":
        # CSV stays machine-readable; the caveats still reach the person running it.
        for c in report.comparisons:
            for line in (*c.differences, *c.warnings):
                err.write(f"warning: {c.scenario} ({c.context}) {c.a.name} vs {c.b.name}: "
                          f"{line}\n")
    if args.fail_on_regression is not None and not report.tests:
        err.write("kvmharness compare: no metric has runs on both sides: cannot tell\n")
        return EXIT_CANNOT_TELL
    return gate(report, args.fail_on_regression, err, "kvmharness compare")
