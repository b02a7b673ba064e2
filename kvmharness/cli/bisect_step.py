"""``kvmharness bisect-step``: one step of ``git bisect run`` over KVM sources
(runner/bisect.py): build the checkout's kvm*.ko, boot them, compare with a known-good
commit.  Exit 0 good, 1 bad, 125 skip (cannot build, boot or judge), 128 stop."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.compare.build import Settings
from kvmharness.scenarios import registry


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "bisect-step", parents=[common.scenario_options(per_boot=True)],
        help="for git bisect run: build the checkout's KVM modules, boot them, compare "
        "with a known-good commit; exit 0 good, 1 bad, 125 skip, 128 stop",
        description="Run it once by hand before `git bisect run`: a usage error exits 2, "
        "which git bisect would take for 'bad'.")
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    p.add_argument("--good", required=True, metavar="REV",
                   help="a commit known to be good (measured once, at the first step)")
    p.add_argument("--for", dest="target", required=True, metavar="KERNEL",
                   help="the kernel to boot with the built modules (as build-kvm --for)")
    p.add_argument("--source", type=Path, default=Path("."), metavar="DIR",
                   help="the git checkout git bisect moves (default: .)")
    p.add_argument("--patch", type=Path, action="append", default=[], metavar="FILE",
                   help="a patch applied on top of every commit (repeatable)")
    p.add_argument("--vendor", action="append", choices=("amd", "intel"),
                   help="vendor module(s) to build (default amd)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="judge on this metric only (repeatable; default: the headline "
                   "metrics)")
    p.add_argument("--threshold", type=common.percent("--threshold", allow_zero=False,
                                                      upper=100000),
                   default=0.10, metavar="PCT",
                   help="a change worse than this is a regression (default 10%%; under TCG "
                   "noise a hunt for an order-of-magnitude regression wants several hundred)")
    p.add_argument("--alpha", type=common.alpha, default=0.05)
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="baseline, overlays, results and bisect-steps.log (default "
                   "CACHE/bisect)")
    p.add_argument("--boots", type=common.positive, default=1, metavar="N",
                   help="boots per side (default 1: the runs of one boot are compared, "
                   "boot-to-boot variance unseen; from 2 on, per-boot medians are, as in "
                   "compare: 4 per side reach p < 0.05)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--memory", default="4G")
    p.add_argument("--timeout", type=common.positive, default=1800, metavar="S")
    p.set_defaults(handler=cmd_bisect_step)


def cmd_bisect_step(args: argparse.Namespace, argv: Sequence[str], out: TextIO,
                    err: TextIO) -> int:
    from kvmharness.cli.ab import scenario_calls
    from kvmharness.runner import bisect, kvmbuild

    args.rounds = args.boots  # scenario_calls splits --quick's runs over the boots
    try:
        calls = scenario_calls(args, registry.all_scenarios())
    except (ValueError, KeyError) as e:
        err.write(f"kvmharness bisect-step: {e.args[0] if e.args else e}\n")
        return bisect.ABORT
    out_dir = (args.out or kvmbuild.writable_cache() / "bisect").resolve()
    req = bisect.StepRequest(
        source=args.source.resolve(), good=args.good, target=args.target,
        calls=tuple(calls), out=out_dir, threshold=args.threshold,
        metrics=tuple(args.metric), patches=tuple(p.resolve() for p in args.patch),
        vendors=tuple(dict.fromkeys(args.vendor or ["amd"])),
        settings=Settings(alpha=args.alpha), accel=args.accel, memory=args.memory,
        timeout_s=args.timeout, boots=args.boots)

    def log(line: str) -> None:
        err.write(f"bisect-step: {line}\n")
        err.flush()

    result = bisect.step(req, log)
    bisect.record(out_dir, result)
    out.write(bisect.log_line(result) + "\n")
    return result.status
