"""After an ``ab`` run's boots: its manifest (ab.json), the comparisons of the files the
boots left (kernels against the first, variants within each kernel) and their tables."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kvmharness.compare.build import CompareError, Comparison, Report, Settings, build_report
from kvmharness.results.model import ResultFile, variant_text
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError
from kvmharness.runner.kernels import Kernel

if TYPE_CHECKING:
    from kvmharness.runner.ab import AbPlan, BootRecord


def manifest(plan: AbPlan, records: Sequence[BootRecord], argv: Sequence[str],
             started: datetime.datetime, interrupted: bool) -> dict[str, Any]:
    """What ab.json records: enough to know how the files in the folder were produced."""
    opts = plan.options
    return {
        "command": ["kvmharness", *argv],
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "accel": {"mode": plan.accel.mode, "cpus": plan.accel.cpus, "module": plan.accel.module,
                  "reason": plan.accel.reason, "warning": plan.accel.warning},
        "memory": opts.memory,
        "guest_python": plan.python.interpreter,
        "kernels": [{"name": k.name, "version": k.version, "kind": k.kind,
                     "source": str(k.source), "image": str(k.image),
                     "modules": str(k.modules) if k.modules else None,
                     "append": k.append}
                    for k in opts.kernels],
        "scenarios": [{"scenario": c.scenario, "options": list(c.options)} for c in opts.calls],
        "rounds": opts.rounds,
        "boots": [{
            "round": r.round, "kernel": r.kernel,
            "status": r.result.status if r.result else ("skipped" if r.skipped else
                                                        "interrupted"),
            "rc": r.result.rc if r.result else None,
            "elapsed_s": round(r.result.elapsed_s, 1) if r.result else None,
            "reason": r.skipped or (r.result.summary() if r.result and not r.result.ok
                                    else None),
            "scenario_status": r.scenario_status,
            "mmu": r.mmu,
            "files": [str(f.relative_to(opts.out_dir)) for f in r.files],
        } for r in records],
    }


def ordered_files(records: Sequence[BootRecord], kernels: Sequence[Kernel]) -> list[Path]:
    # Kernel order first, so that the first --kernel is A (compare takes the first label
    # seen as the baseline).
    order = {k.name: i for i, k in enumerate(kernels)}
    recs = sorted(records, key=lambda r: (order.get(r.kernel, 99), r.round))
    return [f for r in recs for f in r.files]


def build_comparisons(files: Sequence[Path], kernels: Sequence[Kernel],
                      settings: Settings, relative_to: Path | None = None
                      ) -> tuple[list[tuple[str, Report]], list[str]]:
    """(name, report) pairs: "kernels" (labels compared, per variant) and "variants-NAME"
    (variants compared within one kernel); plus notes on what could not be compared.
    ``relative_to``: the tables name files relative to this folder (where they are
    written), not by absolute paths that do not fit a 78-column table."""
    loaded, notes = _load(files, relative_to)
    scenarios = list(dict.fromkeys(f.scenario_name for f in loaded))
    out: list[tuple[str, Report]] = []
    by_kernel: list[Comparison] = []
    for sc in scenarios:
        group = [f for f in loaded if f.scenario_name == sc]
        labels = list(dict.fromkeys(f.label for f in group))
        if len(labels) >= 2:
            by_kernel += _compare(group, "label", settings, notes,
                                  f"{sc}: kernels not compared")
        elif len(kernels) > 1:
            notes.append(f"{sc}: only {', '.join(labels)} produced results: no kernel "
                         "comparison")
    if by_kernel:
        out.append(("kernels", Report(tuple(by_kernel), settings)))
    for k in kernels:
        mine = _variants_within(k.name, loaded, scenarios, settings, notes)
        if mine:
            out.append((f"variants-{k.name}", Report(tuple(mine), settings)))
    return out, notes


def _variants_within(label: str, loaded: Sequence[ResultFile], scenarios: Sequence[str],
                     settings: Settings, notes: list[str]) -> list[Comparison]:
    """Per scenario, the variants one kernel ran compared with each other."""
    mine: list[Comparison] = []
    for sc in scenarios:
        group = [f for f in loaded if f.scenario_name == sc and f.label == label]
        if len({variant_text(r.variant) for f in group for r in f.ok_runs()}) >= 2:
            mine += _compare(group, "variant", settings, notes,
                             f"{sc} in {label}: variants not compared")
    return mine


def _load(files: Sequence[Path], relative_to: Path | None
          ) -> tuple[list[ResultFile], list[str]]:
    """The result files that load, and a note for each that does not."""
    loaded: list[ResultFile] = []
    notes: list[str] = []
    for f in files:
        try:
            result = load_result(f)
        except ResultFormatError as e:
            notes.append(f"not used: {e}")
            continue
        if relative_to is not None and Path(f).is_relative_to(relative_to):
            result.source = str(Path(f).relative_to(relative_to))
        loaded.append(result)
    return loaded, notes


def _compare(group: list[ResultFile], by: Literal["label", "variant"], settings: Settings, notes: list[str],
             refused: str) -> tuple[Comparison, ...]:
    """The comparisons of ``group``, or none and a note when compare refuses them."""
    try:
        return build_report(group, by=by, settings=settings).comparisons
    except CompareError as e:
        notes.append(f"{refused}: {e}")
        return ()


def write_tables(out_dir: Path, reports: Sequence[tuple[str, Report]]) -> list[Path]:
    """compare-NAME.txt (plain) and compare-NAME.md per report; returns the paths."""
    from kvmharness.compare.render import format_report

    written = []
    for name, report in reports:
        for suffix, fmt in ((".txt", "plain"), (".md", "markdown")):
            path = out_dir / f"compare-{name}{suffix}"
            path.write_text(format_report(report, fmt))
            written.append(path)
    return written
