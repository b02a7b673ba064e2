"""``kvmharness build-kvm``: kvm.ko and kvm-amd.ko (kvm-intel.ko) from source, patched, as a
modules overlay for a kernel that is already built (runner/kvmbuild.py does the work)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmharness.cli import common


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("build-kvm", help="rebuild the KVM modules of a built kernel from "
                       "source (with patches) into a modules overlay that ab --kvm boots")
    p.add_argument("--source", type=Path, required=True, metavar="DIR|TARBALL",
                   help="a kernel source tree or git checkout (at the revision to build), or "
                   "a source tarball (linux-source-X.Y.tar.xz); its version must be the "
                   "target's")
    p.add_argument("--for", dest="target", required=True, metavar="KERNEL",
                   help="the kernel the modules are for: an unpacked linux-image package "
                   "folder, or a release under the cache's kernels/ (tools/vng-run --list)")
    p.add_argument("--patch", type=Path, action="append", default=[], metavar="FILE",
                   help="a patch to apply with patch -p1 (repeatable, applied in order)")
    p.add_argument("--vendor", action="append", choices=("amd", "intel"), metavar="VENDOR",
                   help="vendor module(s) to build besides kvm: amd (default), intel; "
                   "repeatable")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the overlay folder to write (replaced if build-kvm wrote it before)")
    p.add_argument("-j", "--jobs", type=common.positive, metavar="N",
                   help="make -j (default: the number of CPUs)")
    p.set_defaults(handler=cmd_build_kvm)


def cmd_build_kvm(args: argparse.Namespace, argv: Sequence[str], out: TextIO,
                  err: TextIO) -> int:
    from kvmharness.runner import kvmbuild
    from kvmharness.runner.kvmsource import SourceError

    req = kvmbuild.BuildRequest(
        source=args.source, target=args.target, patches=tuple(args.patch), out=args.out,
        vendors=tuple(dict.fromkeys(args.vendor or ["amd"])), jobs=args.jobs)

    def log(line: str) -> None:
        err.write(f"build-kvm: {line}\n")
        err.flush()

    try:
        outcome = kvmbuild.build(req, log)
    except (kvmbuild.BuildError, SourceError) as e:
        err.write(f"kvmharness build-kvm: {e}\n")
        return common.EXIT_FAILED
    except OSError as e:
        err.write(f"kvmharness build-kvm: {e}\n")
        return common.EXIT_FAILED
    m = outcome.manifest
    for warning in m["warnings"]:
        err.write(f"build-kvm: warning: {warning}\n")
    how = "cached build reused" if outcome.cached else (
        "incremental build" if m["build"].get("incremental") else "full build")
    out.write(f"{outcome.overlay}: {', '.join(m['modules'])} for {m['target']['release']} "
              f"from {m['source']['version']} + {len(m['patches'])} patch(es); "
              f"{how}, {outcome.seconds:.1f} s\n")
    for name, mod in m["modules"].items():
        out.write(f"  {name}: build id {mod['build_id']}, sha256 {mod['sha256'][:16]}\n")
    return 0
