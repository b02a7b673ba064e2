"""The figures behind ``kvmharness plot``.  matplotlib is imported only here, only when a
figure is drawn, with the Agg backend (no display needed)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from kvmharness.compare.stats import summarize
from kvmharness.results.model import ResultFile, RunRecord, variant_text
from kvmharness.scenarios import registry
from kvmharness.scenarios.metrics import keys_present
from kvmharness.scenarios.presentation import Curves, Figure, PassTimeline

INSTALL_HINT = "kvmharness plot needs matplotlib: pip install 'kvmharness[plot]'"
FORMATS = (".png", ".svg")


class PlotError(ValueError):
    """The files cannot be drawn as asked (the message says why)."""


class PlotUnavailable(PlotError):
    """matplotlib is not installed."""


def plot_kinds() -> tuple[str, ...]:
    """The scenarios that declare a figure."""
    return tuple(name for name, spec in registry.all_scenarios().items()
                 if spec.figure is not None)


Side = tuple[str, list[RunRecord]]


def sides(files: Sequence[ResultFile]) -> list[Side]:
    """Completed runs grouped by label and variant, named by what differs."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for f in files:
        for r in f.ok_runs():
            groups.setdefault((f.label, variant_text(r.variant)), []).append(r)
    # The label (the kernel, say) always: a figure shown alone must say what it measured.
    return [(" ".join(x for x in k if x) or "runs", runs) for k, runs in groups.items()]


def timeline_run(runs: Sequence[RunRecord], total_metric: str = "total"
                 ) -> tuple[RunRecord, str] | None:
    """The run whose timeline stands for a side: of the runs that kept one, the one whose
    median ``total`` is closest to the median over those runs, and how to say so."""
    kept = [(i, r) for i, r in enumerate(runs, 1)
            if isinstance(r.effective.get("timeline"), dict)]
    if not kept:
        return None
    known = [(i, r, total) for i, r in kept if (total := r.value(total_metric)) is not None]
    if not known:
        i, r = kept[0]
        return r, f"run {i} of {len(runs)}, last iteration"
    middle = statistics.median(t[2] for t in known)
    i, r, total = min(known, key=lambda t: (abs(t[2] - middle), t[0]))
    unit = r.samples[total_metric].unit
    where = (f"the median over {len(known)} runs" if f"{total:.1f}" == f"{middle:.1f}" else
             f"closest to the median {middle:.1f} {unit} over {len(known)} runs")
    return r, f"run {i} of {len(runs)}, last iteration; its total {total:.1f} {unit} is {where}"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _sized(runs: Sequence[RunRecord], family: str) -> list[tuple[int, str]]:
    """(key value, label) of the points of the declared ``family`` (``create@<size>``) the
    runs hold, by value."""
    return keys_present(family, (name for r in runs for name in r.samples))


def _unit(runs: Sequence[RunRecord], prefix: str) -> str:
    for r in runs:
        for name, s in r.samples.items():
            if name.startswith(prefix):
                return s.unit
    return ""


def draw_curves(plt: Any, files: Sequence[ResultFile], figure: Curves) -> Any:
    """One panel per declared family (``create@<size>``): median per key with its CI as a
    band (95%, or the level the number of runs allows, said in the title), log-log."""
    all_sides, families = sides(files), figure.families
    present = [f for f in families
               if any(_sized(runs, f) for _, runs in all_sides)]
    if not present:
        raise PlotError(f"no {'/'.join(families)} metrics in these files")
    cols = min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    levels: list[float] = []
    for ax, family in zip([a for row in axes for a in row], present):
        for name, runs in all_sides:
            xs, med, lo, hi = [], [], [], []
            stem = family.partition("@")[0]
            for b, label in _sized(runs, family):
                s = summarize([v for r in runs if (v := r.value(f"{stem}@{label}"))
                               is not None])
                if s.median is None:
                    continue
                if s.ci_level is not None:
                    levels.append(s.ci_level)
                xs.append(b)
                med.append(s.median)
                lo.append(s.ci_low)
                hi.append(s.ci_high)
            if not xs:
                continue
            (line,) = ax.plot(xs, med, marker="o", label=f"{name} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({b: label for _, runs in all_sides
                        for b, label in _sized(runs, family)}.items())
        ax.set_xticks([b for b, _ in ticks], [label for _, label in ticks])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        stem = family.partition("@")[0]
        unit = _unit([r for _, runs in all_sides for r in runs], f"{stem}@")
        ax.set_title(stem)
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(f"median [{unit}]" if unit else "median")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in [a for row in axes for a in row][len(present):]:
        ax.set_visible(False)
    # With few runs the order-statistic interval is min..max and covers less than 95%.
    lowest = min(levels, default=0.95)
    band = ("95% CI of the median" if lowest >= 0.95 else
            f"CI of the median, {lowest * 100:.4g}% at the fewest runs")
    fig.suptitle(f"{figure.title} (bands: {band})")
    fig.tight_layout()
    return fig


def draw_pass_timeline(plt: Any, files: Sequence[ResultFile], figure: PassTimeline) -> Any:
    """Pass times over a run.  With a per-run timeline (``effective["timeline"]``: lists
    ``pass_end_s``/``pass_ms`` and ``delete_s``, optionally ``pass_vcpu``) one run of each
    side (``timeline_run``: the one closest to the median total, named in the legend) is
    drawn over time, one line per vCPU, with every event marked; without one, the passes
    of every run in order (median over runs) with each iteration's events marked at its
    start."""
    all_sides = sides(files)
    passes, events, what = figure.passes, figure.events, figure.event_name
    if not any(passes in r.samples for _, runs in all_sides for r in runs):
        raise PlotError(f"no per-pass samples ({passes!r}) in these files")
    fig, ax = plt.subplots(figsize=(9, 4))
    timeline = [(f"{name}: {why}", run.effective["timeline"]) for name, runs in all_sides
                if (chosen := timeline_run(runs, figure.total)) is not None
                for run, why in [chosen]]
    if timeline:
        for name, t in timeline:
            ends, lengths = t.get("pass_end_s", []), t.get("pass_ms", [])
            owners = t.get("pass_vcpu") or [0] * len(ends)
            color = None
            for v in dict.fromkeys(owners):  # one line per vCPU, one colour per side
                xs = [e for e, o in zip(ends, owners) if o == v]
                ys = [ms for ms, o in zip(lengths, owners) if o == v]
                (line,) = ax.plot(xs, ys, marker=".", linewidth=0.8, color=color,
                                  label=None if color else name)
                color = line.get_color()
                # Each pass as a bar over the time it took: which deletes it spanned.
                ax.hlines(ys, [x - ms / 1000 for x, ms in zip(xs, ys)], xs, color=color,
                          alpha=0.5, linewidth=2)
            for x in t.get("delete_s", []):
                ax.axvline(x, color=color, alpha=0.25, linewidth=0.8)
        ax.set_xlabel("time in run [s] (bars: each pass from start to end; vertical "
                      f"lines: {what})")
    else:
        for name, runs in all_sides:
            per_run = [r.samples[passes].values for r in runs if passes in r.samples]
            if not per_run:
                continue
            length = min(len(v) for v in per_run)
            xs = list(range(1, length + 1))
            med = [summarize([v[i] for v in per_run]).median for i in range(length)]
            (line,) = ax.plot(xs, med, marker=".", label=f"{name} (median of {len(per_run)} "
                              "runs)")
            for v in per_run:
                ax.plot(xs, v[:length], color=line.get_color(), alpha=0.15, linewidth=0.8)
            iterations = len(runs[0].samples.get(events, _Empty()).values) or 1
            step = max(1, length // iterations)
            deletes = [r.samples[events].values for r in runs if events in r.samples]
            for it in range(iterations):
                x = it * step + 0.5
                ax.axvline(x, color=line.get_color(), alpha=0.3, linestyle=":")
                if deletes:
                    n = summarize([d[it] for d in deletes if len(d) > it]).median
                    ax.annotate(f"{n:.0f} {what}", (x, 1), xycoords=("data", "axes fraction"),
                                fontsize="x-small", color=line.get_color(), rotation=90,
                                va="top", ha="right")
        ax.set_xlabel(f"pass in run, in order (dotted: iteration starts, with the {what} "
                      "made during it)")
    ax.set_ylabel(f"pass time [{_unit([r for _, rs in all_sides for r in rs], passes)}]")
    ax.set_title(figure.title + ("\n(the last iteration of one run per side: see the legend)"
                                 if timeline else ""))
    ax.grid(True, alpha=0.3)
    if timeline:  # long names: under the axes, clear of the passes
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.2))
    else:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


class _Empty:
    values: ClassVar[list[float]] = []


def draw(plt: Any, files: Sequence[ResultFile], figure: Figure) -> Any:
    """The figure a scenario declares, drawn by the drawer of its kind."""
    if isinstance(figure, Curves):
        return draw_curves(plt, files, figure)
    if isinstance(figure, PassTimeline):
        return draw_pass_timeline(plt, files, figure)
    raise PlotError(f"no drawer for a {type(figure).__name__} figure")


def plot_files(files: Sequence[ResultFile], out: Path) -> Path:
    """Draw the figure for the files' scenario into ``out`` (.png or .svg)."""
    if out.suffix.lower() not in FORMATS:
        raise PlotError(f"{out}: the output must end in .png or .svg")
    scenarios = list(dict.fromkeys(f.scenario_name for f in files))
    if len(scenarios) != 1:
        raise PlotError(f"one scenario per figure, got {', '.join(scenarios) or 'none'}")
    spec = registry.find(scenarios[0])
    figure = spec.figure if spec is not None else None
    if figure is None:
        raise PlotError(f"no figure for scenario {scenarios[0]!r} (figures: "
                        f"{', '.join(plot_kinds())})")
    if not any(f.ok_runs() for f in files):
        raise PlotError("no completed runs in these files")
    plt = _pyplot()
    fig = draw(plt, files, figure)
    # Drawn beside the target and renamed over it: never a half-written figure.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=out.suffix.lower().lstrip("."))
        os.replace(tmp, out)
    except OSError as e:
        # Named by the file asked for: the temporary name beside it is ours, not the user's.
        raise PlotError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
