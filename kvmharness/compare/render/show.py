"""One result file in a page: what ran, where, which runs completed (and why the others did
not), the zap path each variant took, the headline metrics, the fingerprint in brief."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from kvmharness.compare.build import (
    expand_headline,
    headline_names,
    zap_summary,
)
from kvmharness.compare.render.model import pivot_key
from kvmharness.compare.render.setup import MMU_NAMES, backend_text, mmu_mode, uncounted_text
from kvmharness.compare.render.summary import uncounted_metrics, variant_table
from kvmharness.compare.render.text import (
    WIDTH,
    ascii_text,
    fit,
    grid,
    num,
)
from kvmharness.compare.stats import DEFAULT_CONFIDENCE, summarize
from kvmharness.results.model import ResultFile, RunRecord, variant_text

KEY_PARAMETERS = {"kvm": ("tdp_mmu", "mmio_caching", "nx_huge_pages", "eager_page_split"),
                  "kvm_intel": ("ept", "nested"), "kvm_amd": ("npt", "nested")}


def _get(d: Any, *keys: str, default: str = "?") -> str:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return str(d)


def fingerprint_lines(env: dict[str, Any]) -> list[str]:
    out = [f"Kernel:   {_get(env, 'kernel', 'release')} {_get(env, 'kernel', 'version', default='')}"
           .rstrip()]
    out.append(f"Backend:  {backend_text(env)}, "
               f"{MMU_NAMES.get(mmu_mode(env), mmu_mode(env))}, "
               f"{_get(env, 'cpu', 'model')} ({_get(env, 'cpu', 'nproc')} CPUs)")
    params = []
    mods = env.get("kvm_modules", {})
    for module, keys in KEY_PARAMETERS.items():
        for k in keys:
            v = mods.get(module, {}).get(k) if isinstance(mods, dict) else None
            if v is not None:
                params.append(f"{module}.{k}={v}")
    if params:
        out.append("KVM:      " + " ".join(params))
    out.append(f"Modules:  {_get(env, 'kvm_build', 'summary', default='not recorded')}")
    quirks = env.get("kvm", {}).get("quirks", {}) if isinstance(env.get("kvm"), dict) else {}
    if isinstance(quirks, dict) and "SLOT_ZAP_ALL" in quirks:
        out.append("Quirk:    KVM_X86_QUIRK_SLOT_ZAP_ALL "
                   + ("can be disabled (zap=slot possible)" if quirks["SLOT_ZAP_ALL"]
                      else "absent (every delete zaps all)"))
    out.append(f"tracefs:  {_get(env, 'tracefs', 'status')}")
    out.append(f"Harness:  kvmharness {_get(env, 'harness', 'version')} "
               f"(git {_get(env, 'harness', 'git_commit')[:12]}"
               f"{', dirty' if _get(env, 'harness', 'git_dirty') == 'True' else ''})")
    return out


INDENT = " " * 10  # under the values of "Scenario: ", "Plan:     ", ...


def format_show(f: ResultFile, width: int = WIDTH) -> str:
    variants = f.variants or [{}]
    out = [*_header_lines(f, width), "", *_variant_lines(f, variants, width), ""]
    out += _metric_lines(f, variants, width)
    reasons = {f"{variant_text(r.variant)}: {r.status}: {r.reason}" for r in f.runs}
    warnings = [w for w in dict.fromkeys([*f.warnings, *(w for r in f.runs for w in r.warnings)])
                if w not in reasons]
    if warnings:
        out += ["", "Warnings:"]
        out += [x for w in warnings for x in fit(f"  - {w}", width, "    ")]
    return ascii_text("\n".join(out)) + "\n"


def _header_lines(f: ResultFile, width: int) -> list[str]:
    params = " ".join(f"{k}={v}" for k, v in f.parameters.items())
    lines = [f"Scenario: {f.scenario_name}, label '{f.label}', {f.status}, created "
             f"{f.created}",
             f"Plan:     {f.repeat} runs per variant x ({f.warmup} warmup + "
             f"{f.iterations} iterations){', quick' if f.quick else ''}",
             f"Params:   {params or '-'}", *fingerprint_lines(f.environment)]
    return [f.source or "result", *(x for line in lines for x in fit(line, width, INDENT))]


def _variant_lines(f: ResultFile, variants: Sequence[Mapping[str, str]],
                   width: int) -> list[str]:
    """Per variant: its runs by status, the zap path the completed ones took, and why the
    others did not complete (each reason once, with its count)."""
    out: list[str] = []
    for v in variants:
        runs = [r for r in f.runs if r.variant == dict(v)]
        counts = Counter(r.status for r in runs)
        line = f"{variant_text(v)}: " + ", ".join(f"{counts[s]} {s}" for s in
                                                  ("ok", "failed", "skipped") if counts[s])
        zap = zap_summary([r for r in runs if r.status == "ok"])
        if zap:
            line += f"; zap path {zap.text()}"
        out += fit(line or "-", width, "    ")
        why = Counter(f"{r.status}: {r.reason}" for r in runs if r.status != "ok")
        for reason, n in why.items():
            out += fit(f"  {reason}" + (f" ({n} runs)" if n > 1 else ""), width, "    ")
    return out


def _metric_lines(f: ResultFile, variants: Sequence[Mapping[str, str]],
                  width: int) -> list[str]:
    """The headline metrics per variant; parametrized ones in a grid of medians."""
    units: dict[str, str] = {}
    for r in f.runs:
        for name, s in r.samples.items():
            units.setdefault(name, s.unit)
    names = expand_headline(headline_names([f]), [(m, u, "lower") for m, u in units.items()])
    uncounted = uncounted_metrics(f, names)
    names = [m for m in names if m not in uncounted]
    flat = {m: units[m] for m in names if pivot_key(f.scenario_name, m) is None}
    sized = [m for m in names if pivot_key(f.scenario_name, m) is not None]
    out = variant_table(f, variants, flat, "headline metric", width, DEFAULT_CONFIDENCE)
    if sized:
        out += [""] * bool(out) + _sized_grid(f, variants, sized, units, width)
    if not out and not uncounted:
        out.append("(no completed runs)")
    if uncounted:
        out += fit(uncounted_text(uncounted), width, "  ")
    return out


def _sized_grid(f: ResultFile, variants: Sequence[Mapping[str, str]], names: list[str],
                metrics: dict[str, str], width: int) -> list[str]:
    """Medians of ``op@size`` metrics: a row per operation and variant, a column per size."""
    keys = {m: k for m in names if (k := pivot_key(f.scenario_name, m))}
    families = list(dict.fromkeys(k[0] for k in keys.values()))
    columns = list(dict.fromkeys(k[1] for k in keys.values()))
    by_key = {k: m for m, k in keys.items()}
    rows = []
    for fam in families:
        unit = next((metrics[m] for m, k in keys.items() if k[0] == fam), "")
        for i, v in enumerate(variants):
            runs = f.ok_runs(v)
            cells = [num(_median(runs, by_key.get((fam, col)))) for col in columns]
            rows.append([f"{fam} [{unit}]" if i == 0 else "", variant_text(v), *cells])
    return grid(["median", "variant", *columns], rows,
                [False, False, *([True] * len(columns))], width)


def _median(runs: Sequence[RunRecord], metric: str | None) -> float | None:
    if metric is None:
        return None
    return summarize([x for r in runs if (x := r.value(metric)) is not None]).median
