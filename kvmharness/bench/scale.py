"""How long do ``show`` and ``compare`` take on a big result file?
``python -m kvmharness.bench.scale [--runs 1000,10000,20000,22500]``.

Writes, per run count, synthetic rom-toggle-shaped result files (two variants; the
samples, warmups, KVM stats, tracepoints, noise and timeline of a real run: about 9 KiB
a run, indented as ``run`` writes them), then times ``kvmharness show FILE`` and
``kvmharness compare FILE OTHER`` (another file of as many runs: twice the runs loaded),
each in a fresh child process, with its CPU time and peak RSS
(``getrusage(RUSAGE_CHILDREN)``).  The reports go to /dev/null; only the times are
printed.

A benchmark, not a test: it prints times and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

# 22500: the run count the reliability review could not show in 600 s.
DEFAULT_RUNS = (1000, 10000, 20000, 22500)
# name: (unit, values a run, typical value): the sizes of a real rom-toggle run.
_METRICS = {"total": ("us", 3, 900.0), "pass": ("us", 30, 150.0),
            "max_stall": ("us", 3, 20000.0), "slot_delete": ("ns", 90, 20000.0),
            "slot_create": ("ns", 90, 8000.0), "toggles": ("toggles", 3, 24.0)}
_STATS = ("vm.remote_tlb_flush", "vm.mmu_shadow_zapped", "vm.pages_4k", "vm.pages_2m",
          "vcpu.pf_taken", "vcpu.pf_fixed", "vcpu.exits", "vcpu.mmio_exits")
_EVENTS = ("kvm_mmu_zap_all_fast", "kvm_mmu_prepare_zap_page", "mark_mmio_spte",
           "handle_mmio_page_fault")


def _run(index: int, variant: dict[str, str], rng: random.Random, start: float
         ) -> dict[str, Any]:
    def draw(centre: float, count: int) -> list[float]:
        return [round(centre * rng.uniform(0.8, 1.25), 3) for _ in range(count)]

    timeline = {"pass_end_s": draw(0.5, 10), "pass_ms": draw(150, 10),
                "pass_vcpu": [i % 2 for i in range(10)], "delete_s": draw(0.5, 24),
                "end_s": 0.94, "vcpus": 2, "clock_error_s": 0.0003, "clock": "synthetic"}
    return {
        "index": index, "repeat": index // 2, "variant": variant, "status": "ok",
        "reason": None, "start_time": start + index, "end_time": start + index + 0.5,
        "samples": {name: {"unit": unit, "direction": "lower", "values": draw(c, k)}
                    for name, (unit, k, c) in _METRICS.items()},
        "warmups": {name: draw(c, 1) for name, (_, _, c) in _METRICS.items()},
        "kvm_stats": {phase: {s: rng.randrange(0, 40000) for s in _STATS}
                      for phase in ("warmup", "hammer")},
        "tracepoints": {phase: {e: rng.randrange(0, 800) for e in _EVENTS}
                        for phase in ("warmup", "hammer")},
        "noise": {"wall_s": 6.07, "loadavg_1m_before": 0.64, "loadavg_1m_after": 0.70,
                  "steal_pct": 0.0, "others_busy_cpus": 0.0, "self_cpu_s": 8.09,
                  "cpu_mhz_before": 2596.13, "cpu_mhz_after": 2596.13, "nproc": 2},
        "effective": {"tracefs": "usable", "timeline": timeline, "thp": False,
                      "zap_requested": variant["zap"], "zap_path": variant["zap"],
                      "zap_evidence": "synthetic"},
        "warnings": [],
    }


def synthetic_result(runs: int, seed: int = 1) -> dict[str, Any]:
    """A schema-valid result document with ``runs`` runs alternating zap=all/zap=slot."""
    rng = random.Random(seed)
    start = 1.8e9 + seed * 1e7
    variants = [{"zap": "all"}, {"zap": "slot"}]
    return {
        "format": "kvmharness-result", "schema_version": 1,
        "created": "2026-12-01T00:00:00+00:00", "status": "complete",
        "scenario": {"name": "rom-toggle", "summary": "synthetic (bench.scale)",
                     "parameters": [],
                     "metrics": [{"name": n, "unit": u, "direction": "lower", "help": ""}
                                 for n, (u, _, _) in _METRICS.items()],
                     "variant_axes": [{"name": "zap", "values": ["all", "slot"],
                                       "help": ""}],
                     "headline": ["total", "max_stall"]},
        "parameters": {}, "quick": True, "label": "scale", "variants": variants,
        "repeat": runs // 2, "iterations": 1, "warmup": 1,
        "runs": [_run(i, variants[i % 2], rng, start) for i in range(runs)],
        "warnings": [], "environment": {},
    }


# The files here are bigger than the default loading limit.
SIZE_OPTION = ("--max-size", "0")


def _timed(argv: Sequence[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit status) of ``argv`` in a fresh
    child.  CPU time is the figure to read on a shared machine: wall time there includes
    waiting for a core."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.monotonic()\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "dt = time.monotonic() - t\n"
            "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(dt, u.ru_utime + u.ru_stime, u.ru_maxrss / 1024, p.returncode)\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), int(out[3])


def measure(runs: int, workdir: Path) -> list[Any]:
    """show of one file of ``runs`` runs; compare of it against another of as many."""
    paths = [workdir / f"scale-{runs}-{seed}.json" for seed in (1, 2)]
    for seed, path in enumerate(paths, 1):
        path.write_text(json.dumps(synthetic_result(runs, seed), indent=2), encoding="utf-8")
    size_mb = paths[0].stat().st_size / 1e6
    cli = [sys.executable, "-m", "kvmharness"]
    show = _timed([*cli, "show", *SIZE_OPTION, str(paths[0])])
    comp = _timed([*cli, "compare", *SIZE_OPTION, *map(str, paths)])
    for path in paths:
        path.unlink()
    return [runs, f"{size_mb:.0f}", *(f"{x:.2f}" for x in show[:2]), f"{show[2]:.0f}",
            show[3], *(f"{x:.2f}" for x in comp[:2]), f"{comp[2]:.0f}", comp[3]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvmharness.bench.scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(map(str, DEFAULT_RUNS)),
                        help="comma-separated run counts (default %(default)s)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.runs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvmharness-scale-") as tmp:
        for runs in counts:
            started = time.monotonic()
            rows.append(measure(runs, Path(tmp)))
            print(f"{runs} runs measured in {time.monotonic() - started:.1f} s",
                  file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(wall time includes waiting for one)")
    print(tabulate(rows, headers=["runs a file", "file MB", "show s", "show CPU s",
                                  "show MiB", "exit", "compare 2 files s", "compare CPU s",
                                  "compare MiB", "exit"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
