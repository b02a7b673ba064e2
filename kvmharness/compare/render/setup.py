"""The report's header: what was compared (per setup: kernel, backend, MMU mode, CPU,
runs, host noise), the result files, and how the setups differ, grouped and counted.
Sentences wrapped to the width (text.fit, text.pack), not table cells: no tabulate here."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from kvmharness.compare import warnings as warn
from kvmharness.compare.build import (
    Report,
)
from kvmharness.compare.render.model import View
from kvmharness.compare.render.text import WIDTH, cut, fit, pack, wrapped
from kvmharness.results.model import ResultFile, RunRecord


@dataclasses.dataclass
class Setup:
    name: str
    files: list[ResultFile]

    @property
    def env(self) -> dict[str, object]:
        return self.files[0].environment


def _setup_key(f: ResultFile) -> tuple[str, str, str]:
    """A setup per label and kernel; per fleet host too when the file names one (its
    name then names the setup)."""
    k = f.environment.get("kernel", {})
    fleet = f.environment.get("fleet")
    host = fleet.get("host") if isinstance(fleet, dict) else None
    name = f"{host}" if isinstance(host, str) and host else f.label
    return (name, str(k.get("release", "")), str(k.get("version", "")))


def setups(report: Report) -> list[Setup]:
    seen: dict[tuple[str, str, str], Setup] = {}
    ids: set[int] = set()
    for c in report.comparisons:
        for side in (c.a, c.b):
            for f in side.files:
                if id(f) in ids:
                    continue
                ids.add(id(f))
                key = _setup_key(f)
                if key not in seen:
                    seen[key] = Setup(key[0], [])
                seen[key].files.append(f)
    out = list(seen.values())
    names = [s.name for s in out]
    for i, s in enumerate(out):
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{names[:i + 1].count(s.name)}"
    return out


def backend_text(env: dict[str, object]) -> str:
    b = env.get("backend")
    if not isinstance(b, dict) or not b.get("kind"):
        return "backend unknown"
    text = str(b["kind"]).upper()
    return f"{text} (nested)" if b.get("nested") else text


MMU_NAMES = {"tdp_mmu": "TDP MMU", "legacy_tdp": "legacy TDP", "shadow": "shadow MMU",
             "unknown": "MMU unknown"}


def mmu_mode(env: dict[str, object]) -> str:
    """``kvm_mmu.mode`` when the file has it; else from the module parameters: ept/npt
    off is shadow paging, tdp_mmu says which TDP MMU; PVM always shadows."""
    recorded = env.get("kvm_mmu")
    if isinstance(recorded, dict) and recorded.get("mode"):
        return str(recorded["mode"])
    backend = env.get("backend")
    if isinstance(backend, dict) and str(backend.get("kind", "")).lower() == "pvm":
        return "shadow"
    mods = env.get("kvm_modules")
    if not isinstance(mods, dict):
        return "unknown"
    vendor = mods.get("kvm_intel") or mods.get("kvm_amd")
    tdp = None
    if isinstance(vendor, dict):
        tdp = vendor.get("ept", vendor.get("npt"))
    if tdp in ("N", "0"):
        return "shadow"
    tdp_mmu = mods.get("kvm", {}).get("tdp_mmu") if isinstance(mods.get("kvm"), dict) else None
    if tdp in ("Y", "1") and tdp_mmu is not None:
        return "tdp_mmu" if tdp_mmu in ("Y", "1") else "legacy_tdp"
    return "unknown"


def cpu_model(env: dict[str, object]) -> str:
    cpu = env.get("cpu")
    return str(cpu.get("model", "CPU unknown")) if isinstance(cpu, dict) else "CPU unknown"


def _noise(runs: Sequence[RunRecord]) -> str:
    def vals(key: str) -> list[float]:
        return [float(v) for r in runs if isinstance(v := r.noise.get(key), (int, float))
                and not isinstance(v, bool)]

    steal, busy = vals("steal_pct"), vals("others_busy_cpus")
    parts = []
    if steal:
        parts.append(f"steal {statistics.median(steal):.1f}% (max {max(steal):.1f}%)")
    if busy:
        parts.append(f"others busy {statistics.median(busy):.2f} CPUs "
                     f"(max {max(busy):.2f})")
    return "noise: " + ", ".join(parts) if parts else "noise: not recorded"


def setup_lines(s: Setup, width: int) -> list[str]:
    k = s.env.get("kernel", {})
    k = k if isinstance(k, dict) else {}
    cpu = cpu_model(s.env)
    runs = [r for f in s.files for r in f.runs]
    ok = sum(1 for r in runs if r.status == "ok")
    other = len(runs) - ok
    runs_text = f"{ok} runs ok" + (f", {other} not" if other else "")
    mmu = MMU_NAMES.get(mmu_mode(s.env), mmu_mode(s.env))
    release = str(k.get("release", "kernel unknown"))
    name = "" if s.name == release else f"{s.name}: "
    first = f"{name}{release} {k.get('version', '')}".rstrip()
    out = [cut(first, width)]
    out += fit(f"  {backend_text(s.env)}, {mmu}, {cpu}, {runs_text}; "
                f"{_noise(runs)}", width, "    ")
    return out


_GROUPS = (("kvm.capabilities.", "capabilities"), ("kvm_modules.", "module parameters"),
           ("cpu.", "CPU"), ("memory.", "memory"), ("harness.", "harness"),
           ("tracefs.", "tracefs"), ("thp.", "THP"), ("cpufreq.", "cpufreq"),
           ("kvm.disable_quirks2_mask", "capabilities"), ("kernel.", "kernel"),
           ("kvm_build.", "KVM modules"))


def group_differences(diffs: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(differences shown one by one, {group: keys}): quirks, parameters, MMU mode and
    backend matter one by one; capabilities and module parameters are counted."""
    single: list[str] = []
    counted: dict[str, list[str]] = {}
    for d in diffs:
        key = d.split(": ", 1)[0]
        for prefix, name in _GROUPS:
            if key.startswith(prefix):
                counted.setdefault(name, []).append(key[len(prefix):] or key)
                break
        else:
            single.append(d)
    return single, counted


def difference_lines(report: Report, sets: Sequence[Setup], view: View,
                     width: int) -> list[str]:
    out: list[str] = []
    if len(sets) < 2:
        return out
    for other in sets[1:]:
        diffs = warn.setup_differences(sets[0].files[0], other.files[0])
        if not diffs:
            continue
        head = f"Setup differences, {sets[0].name} -> {other.name} ({len(diffs)}"
        if view.show_setup:
            out += fit(head + "):", width)
            out += wrapped(diffs, width)
            continue
        out += fit(head + "; all with --show-setup):", width)
        single, counted = group_differences(diffs)
        out += wrapped(single, width)
        parts = []
        for name, keys in counted.items():
            if name == "KVM modules":
                # Which kvm*.ko ran, in full: the one-line summaries carry the build ids.
                before, after = (str(f.environment.get("kvm_build", {}).get("summary"))
                                 for f in (sets[0].files[0], other.files[0]))
                out += fit(f"  - KVM modules: {before} -> {after} ({len(keys)} fields "
                           "differ)", width, "    ")
            elif name == "kernel":
                parts.append("kernel " + ", ".join(keys))
            elif len(keys) <= 2:
                parts.append(f"{name} " + ", ".join(keys))
            else:
                parts.append(f"{name}: {len(keys)} differ")
        if parts:
            out += fit("  - " + "; ".join(parts), width, "    ")
    return out


def uncounted_line(report: Report, width: int) -> list[str]:
    names: dict[str, None] = {}
    for c in report.comparisons:
        for m in c.uncounted:
            family, sep, _ = m.partition("@")
            names.setdefault(f"{family}@*" if sep else m)
    if not names:
        return []
    return fit(uncounted_text(list(names)), width, "  ")


def uncounted_text(names: Sequence[str]) -> str:
    return "Not counted here (PVM counts none, all zero): " + ", ".join(names)


FILE_LINES = 6  # a longer file list is one line unless --detail


def file_lines(sets: Sequence[Setup], width: int, detail: bool = False) -> list[str]:
    """Each setup's result files, once per report (tables name sides, not files); a list
    longer than FILE_LINES lines only with --detail, so that it does not outgrow the
    tables it is about."""
    named = [(s.name, list(dict.fromkeys(f.source for f in s.files if f.source)))
             for s in sets]
    named = [(name, files) for name, files in named if files]
    if not named:
        return []
    one_line = "Files: " + "; ".join(f"{name}: {', '.join(files)}" for name, files in named)
    if len(named) == 1:
        out = pack("Files: ", named[0][1], width)
    elif len(one_line) <= width:
        out = [one_line]
    else:
        out = ["Files:"]
        for name, files in named:
            out += pack(f"  {name}: ", files, width)
    if len(out) <= FILE_LINES or detail:
        return out
    count = sum(len(files) for _, files in named)
    return [f"Files: {count} (named with --detail)"]


def timing_caveat(report: Report) -> str | None:
    """One line when a side's times come from an emulating backend (PVM) or a software
    CPU (QEMU TCG): its timings say little about hardware KVM; its counts still hold."""
    kinds: dict[str, None] = {}
    for c in report.comparisons:
        for f in (*c.a.files, *c.b.files):
            backend = f.environment.get("backend", {})
            cpu = f.environment.get("cpu", {})
            if isinstance(backend, dict) and (backend.get("emulated")
                                              or str(backend.get("kind")).lower() == "pvm"):
                kinds.setdefault("PVM (instruction emulation)")
            if isinstance(cpu, dict) and "TCG" in str(cpu.get("model", "")):
                kinds.setdefault("QEMU TCG (a software CPU)")
    if not kinds:
        return None
    return (f"Timings not representative: measured on {' and '.join(kinds)}; times and "
            "their ratios are not what hardware KVM would show (counts of faults, exits and "
            "zaps still are).")


def parameter_lines(report: Report, width: int = WIDTH) -> list[str]:
    """Per scenario, its parameters as run; those that differ between files named with
    every value (a comparison across parameters compares more than the kernel)."""
    out: list[str] = []
    by_scenario: dict[str, list[ResultFile]] = {}
    for c in report.comparisons:
        for f in (*c.a.files, *c.b.files):
            if all(f is not g for g in by_scenario.setdefault(c.scenario, [])):
                by_scenario[c.scenario].append(f)
    for scenario, files in by_scenario.items():
        keys = list(dict.fromkeys(k for f in files for k in f.parameters))
        same, differ = [], []
        for k in keys:
            values = list(dict.fromkeys(str(f.parameters.get(k, "-")) for f in files))
            if len(values) == 1:
                same.append(f"{k}={values[0]}")
            else:
                differ.append(f"{k}={'/'.join(values)}")
        quick = {f.quick for f in files}
        text = ", ".join(same) or "(none)"
        if quick == {True}:
            text += " (--quick)"
        out += fit(f"Parameters ({scenario}): {text}", width, "    ")
        if differ:
            out += fit(f"  differ: {', '.join(differ)}", width, "    ")
    return out


def report_header(report: Report, view: View, width: int = WIDTH) -> list[str]:
    sets = setups(report)
    out = ["Setups compared:" if len(sets) > 1 else "Setup:"]
    for s in sets:
        out += setup_lines(s, width)
    caveat = timing_caveat(report)
    if caveat:
        out += fit(caveat, width, "  ")
    out += parameter_lines(report, width)
    out += file_lines(sets, width, view.detail)
    out += difference_lines(report, sets, view, width)
    for n in report.notes:
        out += wrapped([n], width, "note: ")
    return out


def setup_short(s: Setup) -> str:
    k = s.env.get("kernel", {})
    release = k.get("release", "?") if isinstance(k, dict) else "?"
    return f"{s.name} = {release}" if s.name != release else str(release)
