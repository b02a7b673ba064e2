"""Deciding what to compare with what, and computing every row.

Files are grouped by scenario (one section each).  Within a scenario the compared axis is,
unless asked:
  - label, when the files carry more than one label (kernel A vs kernel B), per variant;
  - variant, when one label holds several variants (zap=all vs zap=slot), per label;
  - file, when neither differs but there are several files (two runs of one setup).
``label+variant`` makes each (label, variant) pair a side (6.1 zap=all vs 6.12 zap=slot);
``host`` makes each fleet host a side (the name ``run --host`` recorded, per variant) and
``host+variant`` each (host, variant) pair;
``build_sides_report`` takes the two sides as explicit file lists.  The first side seen is
A (the baseline); every other one is a B.

A side pools the runs of its files only when the files agree on what decides KVM's
behaviour (kernel, command line, module parameters, MMU mode, scenario parameters);
otherwise the build is refused with the differing key named, unless ``Settings.pool``.
The same run given twice (the same file twice, or a copy) counts once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kvmharness.compare import stats
from kvmharness.compare import warnings as warn
from kvmharness.results.model import ResultFile, RunRecord, variant_text
from kvmharness.results.validate import TIME_UNITS
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import Direction
from kvmharness.scenarios.metrics import expand, is_family

Axis = Literal["label", "variant", "file", "label+variant", "host", "host+variant", "sides"]
AxisChoice = Literal["auto", "label", "variant", "file", "label+variant", "host", "host+variant"]
AXIS_CHOICES: tuple[str, ...] = ("auto", "label", "variant", "file", "label+variant", "host",
                                 "host+variant")
CORRECTION = "Holm"
EXPLORATORY_MARK = "?"  # after a metric's name: not a headline metric, not a verdict


class CompareError(ValueError):
    """The files cannot be compared as asked (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    alpha: float = stats.DEFAULT_ALPHA
    min_change: float = 0.01
    confidence: float = stats.DEFAULT_CONFIDENCE
    seed: int = stats.DEFAULT_SEED
    resamples: int = stats.DEFAULT_BOOTSTRAP_RESAMPLES
    # Every metric is a row (and a test); default: the scenario's headline metrics only.
    all_metrics: bool = False
    # Pool files that differ in kernel, command line, module parameters, MMU mode or
    # scenario parameters into one side (refused otherwise).
    pool: bool = False


@dataclasses.dataclass(frozen=True)
class Side:
    name: str
    files: tuple[ResultFile, ...]
    runs: tuple[RunRecord, ...]  # every record of this side, whatever its status
    boots: tuple[str, ...] = ()  # the boot each of ``runs`` ran in (``boot_of``)

    @property
    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "ok"]

    def boot_values(self, metric: str) -> dict[str, list[float]]:
        """The metric's run values grouped by boot (boots without a value left out)."""
        out: dict[str, list[float]] = {}
        for run, boot in zip(self.runs, self.boots or ("",) * len(self.runs), strict=True):
            if run.status == "ok" and (v := run.value(metric)) is not None:
                out.setdefault(boot, []).append(v)
        return out

    def boot_values_any(self) -> list[str]:
        """The boot of every completed run."""
        boots = self.boots or ("",) * len(self.runs)
        return [b for r, b in zip(self.runs, boots, strict=True) if r.status == "ok"]

    @property
    def boot_count(self) -> int:
        return len(set(self.boot_values_any()))


def boot_of(f: ResultFile) -> str:
    """The boot a file's runs ran in: the kernel's boot id where the file records it; a
    file without one (written before boot ids were recorded) counts as a boot of its own,
    which is what a file of ``ab`` is (one ``run`` per boot)."""
    boot_id = f.environment.get("kernel", {}).get("boot_id")
    if isinstance(boot_id, str) and boot_id and not boot_id.startswith("unavailable"):
        return boot_id
    return f"file {f.source or f.created}"


@dataclasses.dataclass(frozen=True)
class BootSpread:
    """One side's spread of a metric at each level (Kalibera and Jones, ISMM 2013):
    between boots, the CoV of the per-boot medians; within a boot, the median over boots
    of the CoV of that boot's runs."""

    boots: int
    between: float | None
    within: float | None


@dataclasses.dataclass(frozen=True)
class MetricRow:
    metric: str
    unit: str
    direction: Direction
    a: stats.Summary
    b: stats.Summary
    test: stats.MannWhitney | None
    change: stats.Change
    significant: bool
    # The p-value after the multiple-comparison correction over the row's family.
    p_adj: float | None = None
    # Not a headline metric (--all-metrics): corrected in a family of its own and read as
    # exploratory, never as a verdict.
    exploratory: bool = False
    # The runs per side cannot give p < alpha in this row's family, whatever the data:
    # the change is shown as untested, never as "no change".
    untestable: bool = False
    # Boots per side when the test ran on per-boot medians (a kernel comparison with two
    # or more boots per side), and each side's spread between and within boots.
    boots: tuple[int, int] | None = None
    spread: tuple[BootSpread, BootSpread] | None = None

    @property
    def tested_n(self) -> tuple[int, int]:
        """What the test's n counts: boots at the boot level, else runs."""
        return self.boots if self.boots is not None else (self.a.n, self.b.n)

    @property
    def p(self) -> float | None:
        return self.test.p if self.test else None


@dataclasses.dataclass(frozen=True)
class ZapSummary:
    """Which zap path a side's runs took (``RunRecord.zap``) and the evidence summed
    over them: zap-all events against memslot deletes/moves."""

    paths: tuple[tuple[str, int], ...]  # (path, runs) most frequent first
    fast: int
    deletes: int

    @property
    def path(self) -> str:
        if len(self.paths) == 1:
            return self.paths[0][0]
        return "mixed " + ",".join(f"{p}x{n}" for p, n in self.paths)

    def text(self, long: bool = True) -> str:
        if not self.deletes:
            return self.path
        tail = " deletes zapped all" if long else ""
        return f"{self.path} ({self.fast}/{self.deletes}{tail})"


def zap_summary(runs: Sequence[RunRecord]) -> ZapSummary | None:
    counts: dict[str, int] = {}
    fast = deletes = 0
    for r in runs:
        zap = r.zap
        if zap is None:
            continue
        counts[zap.path] = counts.get(zap.path, 0) + 1
        if zap.zap_all_events is not None and zap.deletes is not None:
            fast += zap.zap_all_events
            deletes += zap.deletes
    if not counts:
        return None
    paths = tuple(sorted(counts.items(), key=lambda kv: -kv[1]))
    return ZapSummary(paths, fast, deletes)


@dataclasses.dataclass(frozen=True)
class Comparison:
    scenario: str
    axis: Axis
    context: str  # what both sides share, e.g. "zap=all" when comparing labels
    a: Side
    b: Side
    rows: tuple[MetricRow, ...]
    differences: tuple[str, ...]  # setup differences other than the compared axis
    warnings: tuple[str, ...]
    headline: tuple[str, ...] = ()  # the concrete metric names that are headline
    zap: tuple[ZapSummary | None, ZapSummary | None] = (None, None)
    # Metrics this backend does not count (all zero on a PVM side): not rows.
    uncounted: tuple[str, ...] = ()

    @property
    def tested_n(self) -> tuple[int, int, str]:
        """What the headline tests' n counts: (A, B, "boots") at the boot level, else runs."""
        boots = next((r.boots for r in self.rows if r.boots is not None), None)
        if boots is not None:
            return boots[0], boots[1], "boots"
        return len(self.a.ok_runs), len(self.b.ok_runs), "runs"

    @property
    def family(self) -> int:
        """Tests in this comparison's correction family: its tested headline rows."""
        return sum(1 for r in self.rows if r.test is not None and not r.exploratory)

    @property
    def exploratory_family(self) -> int:
        return sum(1 for r in self.rows if r.test is not None and r.exploratory)


@dataclasses.dataclass(frozen=True)
class Report:
    """Comparisons, each already corrected within its own families (``correct``): putting
    comparisons together (another scenario, another variant, ``ab``'s kernel and variant
    reports) never changes a row's p or mark."""

    comparisons: tuple[Comparison, ...]
    settings: Settings
    notes: tuple[str, ...] = ()  # about the input as a whole (runs given twice, pooling)
    command: str = ""  # the command line that produced it, for the cover letter

    @property
    def tests(self) -> int:
        return sum(1 for c in self.comparisons for r in c.rows if r.test is not None)

    def untestable(self) -> list[tuple[Comparison, int]]:
        """Comparisons whose headline family cannot reach significance at their runs per
        side, with the runs per side (equal sides) that could."""
        out = []
        for c in self.comparisons:
            if any(r.untestable for r in c.rows if not r.exploratory and r.test is not None):
                needed = stats.runs_needed(c.family, self.settings.alpha) or 0
                out.append((c, needed))
        return out

    def families(self) -> list[tuple[int, int, int, str]]:
        """(n of A, n of B, tests, what n counts: "runs" or "boots") of each comparison's
        headline family."""
        out = []
        for c in self.comparisons:
            if c.family:
                na, nb, unit = c.tested_n
                out.append((na, nb, c.family, unit))
        return out

    def family_text(self) -> str:
        """What a correction family is in this report, for a footnote."""
        sizes = sorted({c.family for c in self.comparisons if c.family})
        count = (f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}") if sizes else "0"
        text = (f"{CORRECTION}'s correction within a family of {count} "
                f"test{'s' if sizes != [1] else ''}: the headline metrics of one scenario's "
                "comparison of two sides")
        if any(c.exploratory_family for c in self.comparisons):
            text += (f"; other metrics ({EXPLORATORY_MARK!r} after the name) are exploratory, "
                     "corrected as a family of their own")
        return text


# --- metrics -----------------------------------------------------------------------------


def _current_direction(scenario: str, metric: str) -> Direction | None:
    spec = registry.find(scenario)
    if spec is None:
        return None
    try:
        return spec.metric(metric).direction
    except KeyError:
        return None


def _metric_order(files: Sequence[ResultFile]) -> list[tuple[str, str, Direction]]:
    """Declared metrics first (declaration order), then any extra ones that runs carry.
    Directions come from the current scenario spec when it knows the metric (a file
    written before a direction was corrected must not be read the old way)."""
    seen: dict[str, tuple[str, Direction]] = {}
    for f in files:
        for m in f.scenario.get("metrics", []):
            if not is_family(m["name"]):
                seen.setdefault(m["name"], (m["unit"], m["direction"]))
    for f in files:
        for r in f.runs:
            for name, s in r.samples.items():
                seen.setdefault(name, (s.unit, s.direction))
    scenario = files[0].scenario_name if files else ""
    return [(name, unit, _current_direction(scenario, name) or d)
            for name, (unit, d) in seen.items()]


def headline_names(files: Sequence[ResultFile]) -> tuple[str, ...] | None:
    """The scenario's headline metrics: as the files declare them, else as the current
    spec of that name declares them, else None (every metric)."""
    for f in files:
        declared = f.scenario.get("headline")
        if declared:
            return tuple(declared)
    spec = registry.find(files[0].scenario_name) if files else None
    if spec is not None and spec.headline:
        return tuple(spec.headline)
    return None


def expand_headline(names: Sequence[str] | None,
                    metrics: Sequence[tuple[str, str, Direction]]) -> list[str]:
    """Concrete metric names in headline order; a family (``op@<size>``, ``op@<count>``)
    names every point present."""
    all_names = [m for m, _, _ in metrics]
    return expand(names, all_names) if names else all_names


# --- rows ----------------------------------------------------------------------------------


def _row(metric: str, unit: str, direction: Direction, a: Side, b: Side,
         settings: Settings, boot_level: bool = False) -> MetricRow:
    va, vb = _values(a, metric), _values(b, metric)
    # At the boot level the unit of the experiment is a boot: the test and the change's
    # CI see one value per boot (its runs' median), so runs of one boot never pose as
    # independent kernels' worth of evidence.
    ta, tb = (_boot_medians(a, metric), _boot_medians(b, metric)) if boot_level else (va, vb)
    test = stats.mann_whitney(ta, tb) if ta and tb else None
    change = stats.bootstrap_change(ta, tb, confidence=settings.confidence,
                                    resamples=settings.resamples, seed=settings.seed)
    if boot_level and va and vb:
        # The change printed is that of the medians printed (all runs); its CI, which the
        # verdict uses, resamples boots.
        runs_change = stats.bootstrap_change(va, vb, resamples=0)
        change = dataclasses.replace(change, ratio=runs_change.ratio)
    significant = stats.is_significant(test.p if test else None, change,
                                       alpha=settings.alpha, min_change=settings.min_change)
    row = MetricRow(metric, unit, direction, stats.summarize(va, settings.confidence),
                    stats.summarize(vb, settings.confidence), test, change, significant)
    if not boot_level:
        return row
    return dataclasses.replace(row, boots=(len(ta), len(tb)),
                               spread=(boot_spread(a, metric), boot_spread(b, metric)))


def _boot_medians(side: Side, metric: str) -> list[float]:
    return [stats.safe_median(v) for v in side.boot_values(metric).values()]


def boot_spread(side: Side, metric: str) -> BootSpread:
    groups = side.boot_values(metric)
    medians = [stats.safe_median(v) for v in groups.values()]
    between = stats.summarize(medians).cov if len(medians) > 1 else None
    within = [c for v in groups.values() if len(v) > 1
              and (c := stats.summarize(v).cov) is not None]
    return BootSpread(len(groups), between, stats.safe_median(within) if within else None)


def _values(side: Side, metric: str) -> list[float]:
    return [v for r in side.ok_runs if (v := r.value(metric)) is not None]


def _is_pvm(side: Side) -> bool:
    return on_pvm(side.files)


def on_pvm(files: Sequence[ResultFile]) -> bool:
    return any(str(f.environment.get("backend", {}).get("kind", "")).lower() == "pvm"
               for f in files)


def not_counted(files: Sequence[ResultFile], values: Sequence[float], unit: str) -> bool:
    """A counter the backend does not count: every run reads 0, and a file comes from
    PVM (which counts no pf_fixed); elsewhere a 0 is data (zap=slot refaults).  A time
    is never "not counted": all-zero times are a broken clock or file, shown as data."""
    return (unit not in TIME_UNITS and on_pvm(files) and bool(values)
            and all(v == 0 for v in values))


def _uncounted(metric: str, unit: str, a: Side, b: Side) -> bool:
    return not_counted([*a.files, *b.files], _values(a, metric) + _values(b, metric), unit)


def correct(rows: Sequence[MetricRow], settings: Settings) -> list[MetricRow]:
    """Holm's correction over each declared family of one comparison (one scenario, one
    pair of sides): its headline rows, and apart from them its exploratory rows.  The
    family never reaches beyond the comparison, so a row's p and mark do not depend on what
    else a report holds."""
    out = list(rows)
    for exploratory in (False, True):
        family = [i for i, r in enumerate(rows)
                  if r.test is not None and r.exploratory == exploratory]
        adjusted = stats.holm([rows[i].test.p for i in family])  # type: ignore[union-attr]
        for i, p in zip(family, adjusted, strict=True):
            r = rows[i]
            out[i] = dataclasses.replace(
                r, p_adj=p,
                significant=stats.is_significant(p, r.change, alpha=settings.alpha,
                                                 min_change=settings.min_change),
                untestable=stats.smallest_p(*r.tested_n) * len(family) >= settings.alpha)
    return out


def boot_level(a: Side, b: Side) -> Literal["boots", "one boot", "runs"]:
    """How a comparison's evidence is counted.  Sides from different boots of different
    kernels compare kernels, so the boot is the unit: "boots" with two or more boots per
    side (the test runs on per-boot medians), "one boot" when a side has only one (no
    kernel-level claim is possible).  Sides that share boots (variants within the same
    boots) or run one kernel: "runs"."""
    boots_a, boots_b = set(a.boot_values_any()), set(b.boot_values_any())
    if not boots_a or not boots_b or boots_a & boots_b:
        return "runs"
    if len(boots_a) >= 2 and len(boots_b) >= 2:
        return "boots"
    return "one boot" if _kernel_of(a) != _kernel_of(b) else "runs"


def _kernel_of(side: Side) -> set[str]:
    return {json.dumps(f.environment.get("kernel", {}).get(k), sort_keys=True)
            for f in side.files for k in ("release", "version", "cmdline")}


def compare_sides(scenario: str, axis: Axis, context: str, a: Side, b: Side,
                  metrics: Sequence[tuple[str, str, Direction]],
                  settings: Settings, headline: Sequence[str] | None = None) -> Comparison:
    shown_names = expand_headline(headline, metrics)
    names = [m for m, _, _ in metrics] if settings.all_metrics else shown_names
    by_name = {m: (u, d) for m, u, d in metrics}
    rows: list[MetricRow] = []
    uncounted: list[str] = []
    level = boot_level(a, b)
    for m in names:
        unit, direction = by_name[m]
        if not _values(a, m) and not _values(b, m):
            continue  # no runs on either side: never a row
        if _uncounted(m, unit, a, b):
            uncounted.append(m)
            continue
        row = _row(m, unit, direction, a, b, settings, level == "boots")
        rows.append(dataclasses.replace(row, exploratory=m not in shown_names))
    rows = correct(rows, settings)
    diffs: list[str] = []
    if a.files and b.files and a.files[0] is not b.files[0]:
        diffs = warn.setup_differences(a.files[0], b.files[0])
    notes: list[str] = []
    shown = {r.metric for r in rows}
    for label, side in (("A", a), ("B", b)):
        notes += warn.file_status_warnings(label, side.files)
        notes += warn.run_record_warnings(label, side.runs)
        if not side.ok_runs:
            notes.append(f"{label} ({side.name}): no completed runs")
        values = {m: _values(side, m) for m in shown}
        summaries = {row.metric: (row.a if label == "A" else row.b) for row in rows}
        notes += warn.side_warnings(label, values, summaries)
        notes += warn.noise_warnings(label, side.ok_runs)
    notes += warn.frequency_between_sides(a.ok_runs, b.ok_runs)
    if level == "one boot":
        notes.append(f"one boot per side ({a.boot_count}/{b.boot_count}): the runs show this "
                     "pair of boots, not the kernels: no kernel-level claim is possible "
                     "(boot-to-boot variance is unknown; run ab with >= 2 rounds, "
                     "enough to reach significance: see ab --dry-run)")
    if level != "boots":
        notes += warn.power_warning(len(a.ok_runs), len(b.ok_runs), settings.alpha)
    return Comparison(scenario, axis, context, a, b, tuple(rows), tuple(diffs), tuple(notes),
                      headline=tuple(shown_names),
                      zap=(zap_summary(a.ok_runs), zap_summary(b.ok_runs)),
                      uncounted=tuple(uncounted))


# --- input: identity, pooling -------------------------------------------------------------


def run_identity(run: RunRecord) -> str:
    """A run is the same run when its record is the same (start time, samples, counters,
    noise): a copied or twice-given file yields the same identities."""
    text = json.dumps(run.to_json(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _SeenRun:
    """A run ``dedupe`` has kept, with its identity hashed on first need."""

    def __init__(self, run: RunRecord, source: str, identity: str | None) -> None:
        self.run, self.source, self._identity = run, source, identity

    def identity(self) -> str:
        if self._identity is None:
            self._identity = run_identity(self.run)
        return self._identity


def dedupe(files: Sequence[ResultFile]) -> tuple[list[ResultFile | None], list[str]]:
    """Each run counted once: a file whose runs were all seen is dropped (None in its
    place), repeated runs of a partly overlapping file are left out; one warning each."""
    # Runs seen so far, bucketed by a cheap key that equal records share (scenario, run
    # number, start and end time); the full identity, a hash of the whole record, is taken
    # only within a bucket of two or more, so distinct runs cost no serialisation.
    seen: dict[tuple[object, ...], list[_SeenRun]] = {}
    out: list[ResultFile | None] = []
    notes: list[str] = []
    for i, f in enumerate(files):
        name = f.source or f"file {i + 1}"
        keep: list[RunRecord] = []
        repeated_from: list[str] = []
        for r in f.runs:
            bucket = seen.setdefault(
                (f.scenario_name, r.index, r.repeat, r.start_time, r.end_time), [])
            identity = run_identity(r) if bucket else None
            first = next((s for s in bucket if s.identity() == identity), None)
            if first is not None:
                repeated_from.append(first.source)
            else:
                bucket.append(_SeenRun(r, name, identity))
                keep.append(r)
        if not repeated_from:
            out.append(f)
            continue
        origin = ", ".join(dict.fromkeys(repeated_from))
        if not keep:
            notes.append(f"{name}: the same runs as {origin} (the same file given twice, "
                         "or a copy): counted once")
            out.append(None)
            continue
        notes.append(f"{name}: {len(repeated_from)} runs also in {origin}: counted once")
        out.append(dataclasses.replace(f, runs=keep))
    return out, notes


def _identity_keys(f: ResultFile) -> dict[str, str]:
    env = f.environment
    keys = {
        "kernel.release": env.get("kernel", {}).get("release"),
        "kernel.version": env.get("kernel", {}).get("version"),
        "kernel.cmdline": env.get("kernel", {}).get("cmdline"),
        "kvm_mmu.mode": env.get("kvm_mmu", {}).get("mode") if isinstance(
            env.get("kvm_mmu"), Mapping) else None,
    }
    out = {k: json.dumps(v, sort_keys=True) for k, v in keys.items() if v is not None}
    out.update(warn.flatten(env.get("kvm_modules", {}), "kvm_modules"))
    # Which KVM binaries ran: a rebuilt kvm.ko is another kernel as far as pooling goes.
    builds = env.get("kvm_build", {}).get("modules") if isinstance(
        env.get("kvm_build"), Mapping) else None
    if isinstance(builds, Mapping):
        out.update({f"kvm_build.{name}.build_id": json.dumps(m.get("build_id"))
                    for name, m in builds.items() if isinstance(m, Mapping)})
    out.update(warn.flatten(f.parameters, "parameters"))
    out["quick"] = json.dumps(f.quick)
    return out


def pool_conflicts(files: Sequence[ResultFile]) -> list[str]:
    """'KEY: A_FILE has X, B_FILE has Y' for every identity key the files disagree on."""
    if len(files) < 2:
        return []
    first = _identity_keys(files[0])
    out: list[str] = []
    for f in files[1:]:
        other = _identity_keys(f)
        for key in sorted(first.keys() | other.keys()):
            va, vb = first.get(key, "(absent)"), other.get(key, "(absent)")
            if va != vb:
                sa, sb = warn._short_pair(va, vb)
                out.append(f"{key}: {files[0].source or files[0].label} has {sa}, "
                           f"{f.source or f.label} has {sb}")
    return out


def _check_pool(tag: str, name: str, files: Sequence[ResultFile], settings: Settings,
                notes: list[str]) -> None:
    conflicts = pool_conflicts(files)
    if not conflicts:
        return
    if not settings.pool:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise CompareError(
            f"side {tag} ({name}) pools files that differ in {conflicts[0]}{more}; "
            "compare them as separate sides (--a/--b, or different labels), or give "
            "--pool to pool them anyway")
    notes.append(f"{tag} ({name}) pools files that differ ({len(conflicts)} keys, "
                 f"--pool): {conflicts[0]}")


def _check_units(scenario: str, files: Sequence[ResultFile]) -> None:
    """One metric, one unit across every file compared (a ms run next to a us run would
    compare numbers of different things)."""
    units: dict[str, tuple[str, str]] = {}
    for f in files:
        for r in f.runs:
            for name, s in r.samples.items():
                prev = units.setdefault(name, (s.unit, f.source))
                if prev[0] != s.unit:
                    raise CompareError(
                        f"{scenario}: metric {name!r} is in {prev[0]!r} in {prev[1]} but "
                        f"in {s.unit!r} in {f.source} (run {r.index + 1})")


# --- building -----------------------------------------------------------------------------


def _variants_in(files: Sequence[ResultFile]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for f in files:
        for v in [*f.variants, *(r.variant for r in f.runs)]:
            seen.setdefault(variant_text(v), dict(v))
    return list(seen.values())


def _side(name: str, files: Sequence[ResultFile],
          variant: Mapping[str, str] | None) -> Side:
    wanted = None if variant is None else dict(variant)
    chosen = [(r, boot) for f in files for boot in (boot_of(f),) for r in f.runs
              if wanted is None or r.variant == wanted]
    return Side(name, tuple(files), tuple(r for r, _ in chosen), tuple(b for _, b in chosen))


def _pick_axis(files: Sequence[ResultFile], variants: Sequence[Mapping[str, str]]) -> Axis:
    if len({f.label for f in files}) > 1:
        return "label"
    if len(variants) > 1:
        return "variant"
    if len(files) > 1:
        return "file"
    raise CompareError(
        f"{files[0].source or files[0].scenario_name}: one label, one variant and one file: "
        "nothing to compare (give files with different labels, or a file with variants)")


def recorded_host(f: ResultFile) -> str | None:
    """The fleet host name ``run --host`` recorded in the file, if any."""
    fleet = f.environment.get("fleet")
    host = fleet.get("host") if isinstance(fleet, Mapping) else None
    return host if isinstance(host, str) and host else None


def host_of(f: ResultFile) -> str:
    """The fleet host a file was written on (``kvmharness run --host``, which the fleet
    playbook passes as the inventory name); CompareError when it was not recorded."""
    host = recorded_host(f)
    if host is None:
        raise CompareError(f"{f.source or f.scenario_name}: no host name recorded (written "
                           "without `run --host NAME`, which `kvmharness fleet` passes): "
                           "cannot compare by host")
    return host


def _host_comparisons(scenario: str, group: Sequence[ResultFile], axis: Axis,
                      variants: Sequence[dict[str, str]], settings: Settings,
                      notes: list[str], add: Any) -> None:
    hosts = list(dict.fromkeys(host_of(f) for f in group))
    by_host = {h: [f for f in group if host_of(f) == h] for h in hosts}
    for h in hosts:
        _check_pool("host", h, by_host[h], settings, notes)
    if axis == "host":
        if len(hosts) < 2:
            raise CompareError(f"{scenario}: every file comes from host {hosts[0]!r}")
        _first_against_rest(hosts, by_host, variants, add)
    else:
        _pairs_against_first(scenario, "host", hosts, by_host, variants, add)


def _first_against_rest(keys: Sequence[str], by_key: Mapping[str, Sequence[ResultFile]],
                        variants: Sequence[dict[str, str]], add: Any) -> None:
    """Per variant, the first key's files (the baseline) against each other key's."""
    for v in variants:
        a = _side(keys[0], by_key[keys[0]], v)
        for k in keys[1:]:
            add(variant_text(v), a, _side(k, by_key[k], v))


def _pairs_against_first(scenario: str, kind: str, keys: Sequence[str],
                         by_key: Mapping[str, Sequence[ResultFile]],
                         variants: Sequence[dict[str, str]], add: Any) -> None:
    """Every (key, variant) pair that has runs is a side; the first is the baseline."""
    pairs = [(k, v) for k in keys for v in variants
             if any(r.variant == v for f in by_key[k] for r in f.ok_runs())]
    if len(pairs) < 2:
        raise CompareError(f"{scenario}: only one {kind} and variant: nothing to compare")
    sides = [_side(f"{k} {variant_text(v)}", by_key[k], v) for k, v in pairs]
    for b in sides[1:]:
        add(f"{kind} and variant", sides[0], b)


def _file_names(files: Sequence[ResultFile]) -> list[str]:
    names = [f.source or f"file{i + 1}" for i, f in enumerate(files)]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def _scenario_comparisons(scenario: str, group: Sequence[ResultFile], by: AxisChoice,
                          settings: Settings, notes: list[str],
                          variants: list[dict[str, str]] | None = None) -> list[Comparison]:
    _check_units(scenario, group)
    variants = variants or _variants_in(group) or [{}]
    axis: Axis = _pick_axis(group, variants) if by == "auto" else by
    metrics = _metric_order(group)
    headline = headline_names(group)
    out: list[Comparison] = []

    def add(context: str, a: Side, b: Side) -> None:
        out.append(compare_sides(scenario, axis, context, a, b, metrics, settings, headline))

    if axis in ("host", "host+variant"):
        _host_comparisons(scenario, group, axis, variants, settings, notes, add)
        return out
    labels = list(dict.fromkeys(f.label for f in group))
    by_label = {lb: [f for f in group if f.label == lb] for lb in labels}
    if axis in ("label", "variant", "label+variant"):
        for lb in labels:
            _check_pool("side", lb, by_label[lb], settings, notes)
    if axis == "label":
        if len(labels) < 2:
            raise CompareError(f"{scenario}: all files have label {labels[0]!r}")
        _first_against_rest(labels, by_label, variants, add)
    elif axis == "variant":
        if len(variants) < 2:
            raise CompareError(f"{scenario}: only variant {variant_text(variants[0])} "
                               "was run")
        for lb in labels:
            a = _side(variant_text(variants[0]), by_label[lb], variants[0])
            for v in variants[1:]:
                add(f"label {lb}", a, _side(variant_text(v), by_label[lb], v))
    elif axis == "label+variant":
        _pairs_against_first(scenario, "label", labels, by_label, variants, add)
    else:
        if len(group) < 2:
            raise CompareError(f"{scenario}: comparing files needs at least two")
        names = _file_names(group)
        for v in variants:
            a = _side(names[0], group[:1], v)
            for name, f in zip(names[1:], group[1:], strict=True):
                add(variant_text(v), a, _side(name, [f], v))
    return out


def _by_scenario(files: Sequence[ResultFile]) -> dict[str, list[ResultFile]]:
    scenarios: dict[str, list[ResultFile]] = {}
    for f in files:
        scenarios.setdefault(f.scenario_name, []).append(f)
    return scenarios


def _baseline_first(name: str, group: list[ResultFile],
                    variants: list[dict[str, str]]) -> bool:
    """Puts the files or the variant called ``name`` (a label, a variant such as
    ``zap=all``, a file's path or base name) first, so that it is side A; in place.
    Whether anything matched."""
    def is_named(f: ResultFile) -> bool:
        return name in (f.label, f.source, f.source.rsplit("/", 1)[-1], recorded_host(f))

    matched = False
    if any(is_named(f) for f in group):
        group.sort(key=lambda f: not is_named(f))  # stable: the rest keep their order
        matched = True
    if any(variant_text(v) == name for v in variants):
        variants.sort(key=lambda v: variant_text(v) != name)
        matched = True
    return matched


def build_report(files: Sequence[ResultFile], *, by: AxisChoice = "auto",
                 settings: Settings = Settings(), command: str = "",
                 baseline: str | None = None) -> Report:
    """``baseline``: the label, variant or file that is side A (default: the first)."""
    if not files:
        raise CompareError("no result files given")
    kept, notes = dedupe(files)
    comparisons: list[Comparison] = []
    found = baseline is None
    for scenario, group in _by_scenario([f for f in kept if f is not None]).items():
        order = list(group)
        variants = _variants_in(order) or [{}]
        if baseline is not None:
            found = _baseline_first(baseline, order, variants) or found
        comparisons += _scenario_comparisons(scenario, order, by, settings, notes,
                                             variants)
    if not found:
        names = sorted({f.label for f in kept if f is not None})
        raise CompareError(f"--baseline {baseline}: no label, variant or file of that name "
                           f"(labels: {', '.join(names)})")
    return Report(tuple(comparisons), settings, tuple(notes), command)


def _side_name(files: Sequence[ResultFile], other: Sequence[ResultFile], tag: str) -> str:
    labels = list(dict.fromkeys(f.label for f in files))
    other_labels = {f.label for f in other}
    if len(labels) == 1 and labels[0] not in other_labels:
        return labels[0]
    return tag


def build_sides_report(a_files: Sequence[ResultFile], b_files: Sequence[ResultFile], *,
                       settings: Settings = Settings(), command: str = "") -> Report:
    """A is every run of ``a_files``, B every run of ``b_files`` (per scenario).  Sides with
    the same variants are compared per variant; a side of one variant against a side of
    another (6.1 zap=all vs 6.12 zap=slot) is one comparison."""
    if not a_files or not b_files:
        raise CompareError("--a and --b each need at least one result file")
    kept, notes = dedupe([*a_files, *b_files])
    a_kept = [f for f in kept[:len(a_files)] if f is not None]
    b_kept = [f for f in kept[len(a_files):] if f is not None]
    if not b_kept:
        # Every run of B is one of A's (the same file, or a copy): counted once, B is empty.
        na, nb = (", ".join(dict.fromkeys(f.source or "?" for f in fs))
                  for fs in (a_files, b_files))
        names = na if na == nb else f"A: {na}; B: {nb}"
        raise CompareError(f"--a and --b name the same runs ({names}): nothing to compare")
    comparisons: list[Comparison] = []
    sa, sb = _by_scenario(a_kept), _by_scenario(b_kept)
    for scenario in dict.fromkeys([*sa, *sb]):
        fa, fb = sa.get(scenario, []), sb.get(scenario, [])
        if not fa or not fb:
            notes.append(f"{scenario}: only on side {'A' if fa else 'B'}: not compared")
            continue
        _check_units(scenario, [*fa, *fb])
        name_a, name_b = _side_name(fa, fb, "A"), _side_name(fb, fa, "B")
        _check_pool("A", name_a, fa, settings, notes)
        _check_pool("B", name_b, fb, settings, notes)
        metrics = _metric_order([*fa, *fb])
        headline = headline_names([*fa, *fb])
        va, vb = _variants_in(fa) or [{}], _variants_in(fb) or [{}]
        if len(va) == 1 and len(vb) == 1 and va != vb:
            pairs = [(va[0], vb[0], f"{variant_text(va[0])} vs {variant_text(vb[0])}")]
        else:
            pairs = [(v, v, variant_text(v)) for v in _variants_in([*fa, *fb])]
        for v_a, v_b, context in pairs:
            comparisons.append(compare_sides(
                scenario, "sides", context, _side(name_a, fa, v_a), _side(name_b, fb, v_b),
                metrics, settings, headline))
    if not comparisons:
        raise CompareError("no scenario has files on both sides")
    return Report(tuple(comparisons), settings, tuple(notes), command)
