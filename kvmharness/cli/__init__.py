"""``kvmharness info | list | run | compare | ab``: one module per subcommand, each adding
its own parser and handler; the scenario options of ``run`` and ``ab`` are one shared
argparse parent (``common.scenario_options``).

Exit status: 0 success; 1 a run failed or a file could not be used; 2 usage error;
128 + the signal when interrupted: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (completed
runs are kept in the result file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from kvmharness.cli import (
    ab,
    bisect_step,
    build_kvm,
    common,
    compare,
    fleet,
    info,
    plot,
    run,
    show,
)
from kvmharness.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from kvmharness.observe import fingerprint, signals

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main"]

# Commands that print what result files hold: their output passes a control-character
# guard (strings are escaped when loaded; this catches any that reach a report otherwise).
READS_FILES = ("show", "compare", "plot")
SUBCOMMANDS = (info, run, compare, show, plot, ab, build_kvm, bisect_step, fleet)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one message (the usage summary is one --help away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, run.wrapped(f"{self.prog}: {message} (see {self.prog} --help)"))


class _Version(argparse.Action):
    """Like ``info``'s first line: the git commit too when run from a checkout (asked of
    git only when --version is given)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        sys.stdout.write(info.version_text(fingerprint.harness_identity()) + "\n")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kvmharness",
                     description="Drive KVM through /dev/kvm; run and compare "
                                 "memslot/MMU zap scenarios.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version (and git commit in a checkout) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: return the status, don't exit
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    if args.command in READS_FILES:
        out, err = common.EscapingStream(out), common.EscapingStream(err)
    full_argv = sys.argv[1:] if argv is None else list(argv)
    args.as_program = argv is None  # the process ends with this command
    try:
        # SIGTERM and SIGHUP end every command like Ctrl-C (exit 128 + the signal, one
        # line), not as a silent kill; ``run`` and ``ab`` nest their own handling inside.
        with signals.interrupts_raise(ignore_once_interrupted=argv is None):
            return int(args.handler(args, full_argv, out, err))
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return signals.exit_status(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `kvmharness compare ... | head`: the reader left; not an error of ours.
        return 0
    finally:
        if argv is None:
            # The command has ended and its files are final: a signal during interpreter
            # shutdown (a second Ctrl-C) must not turn the exit status into a kill.
            signals.ignore_from_now()
