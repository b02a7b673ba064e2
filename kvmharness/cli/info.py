"""``kvmharness info`` (host fingerprint: what this host can measure) and ``kvmharness
list`` (scenarios, parameters, variants, metrics)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from typing import Any, TextIO

from kvmharness.cli import common
from kvmharness.observe import fingerprint, tuning
from kvmharness.results.model import spec_metadata
from kvmharness.scenarios import registry
from kvmharness.scenarios.base import ScenarioSpec

# Human output fits a 75-column mail or terminal; --json carries everything in full.
TEXT_WIDTH = 75


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("info", help="host fingerprint and what it can measure")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=lambda args, argv, out, err: cmd_info(args, out))

    p = sub.add_parser("list", help="scenarios, their parameters, variants and metrics")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=lambda args, argv, out, err: cmd_list(args, out))


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) else str(n)


def version_text(h: dict[str, Any]) -> str:
    """``kvmharness 0.1.0 (git abcdef123456)`` from ``fingerprint.harness_identity()``."""
    commit = h.get("git_commit")
    return f"kvmharness {h['version']}" + (
        f" (git {commit[:12]}{', modified' if h.get('git_dirty') else ''})" if commit else "")


def info_text(fp: dict[str, Any], kvm_problem: str | None = None) -> str:
    """``kvm_problem``: why /dev/kvm cannot be opened, with advice that matches its actual
    owner, group and mode (``common.kvm_access_problem``); shown instead of the probe's."""
    k, cpu = fp["kernel"], fp["cpu"]
    version = version_text(fp["harness"])
    backend = fp["backend"]
    lines = [
        version,
        f"kernel:   {k['release']} {k['version']}",
        _shortened(f"cmdline:  {k['cmdline']}"),
        f"cpu:      {cpu['model']} ({cpu['vendor']}, microcode {cpu['microcode']}), "
        f"{cpu['nproc']} CPUs",
        f"memory:   {_gib(fp['memory']['total_bytes'])}",
        f"backend:  {backend['kind']}{' (nested)' if backend['nested'] else ''}",
        f"mmu:      {fingerprint.mmu_text(fingerprint.mmu_of(fp))}",
    ]
    for module, params in fp["kvm_modules"].items():
        keys = fingerprint.KEY_PARAMETERS.get(module, ())
        shown = " ".join(f"{n}={params[n]}" for n in keys if n in params)
        rest = len(params) - sum(1 for n in keys if n in params)
        if shown:
            lines.append(f"module {module}: {shown}" + (f"; {rest} more in --json" if rest else ""))
        else:
            lines.append(f"module {module}: loaded ({rest} parameters in --json)")
    kvm = fp["kvm"]
    if kvm.get("status") == "ok":
        caps = kvm.get("capabilities", {})
        lines.append(f"capabilities: {sum(1 for v in caps.values() if v)} of {len(caps)} "
                     "known KVM_CAP_* supported (--json lists them)")
        quirks = [q for q, on in kvm.get("quirks", {}).items() if on]
        lines.append(f"quirks (KVM_CAP_DISABLE_QUIRKS2): {', '.join(quirks) or 'none'}")
    else:
        lines.append(f"KVM: {kvm_problem or kvm.get('status')}")
    text = [wrapped for line in lines for wrapped in _wrapped(line, "")]
    text += ["", "What this host can measure:"]
    for statement in fingerprint.statements(fp):
        text += textwrap.wrap(statement, TEXT_WIDTH, initial_indent="  - ",
                              subsequent_indent="    ", break_on_hyphens=False,
                              break_long_words=False)
    return "\n".join(text) + "\n"


def _shortened(line: str, width: int = TEXT_WIDTH) -> str:
    """``line`` cut to ``width`` columns with "..." (--json has it whole)."""
    return line if len(line) <= width else line[:width - 3] + "..."


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    fp = common.collect_fingerprint()
    advice = tuning.advise(fp, tuning.read_host())
    problem = common.kvm_access_problem()
    if args.json:
        json.dump({"tuning": [dataclasses.asdict(a) for a in advice],
                   "fingerprint": fp, "statements": fingerprint.statements(fp),
                   "kvm_access": problem or "ok"}, out, indent=2)
        out.write("\n")
    else:
        out.write(info_text(fp, problem))
    if not args.json:
        out.write("\nTuning for stable timings:\n"
                  + "".join(f"  {line}\n"
                            for line in tuning.advice_lines(advice, width=TEXT_WIDTH - 2)))
    return 0


# --- list ------------------------------------------------------------------------------


def spec_json(spec: ScenarioSpec) -> dict[str, Any]:
    meta = spec_metadata(spec)
    for entry, p in zip(meta["parameters"], spec.parameters):
        entry.update(valid_range=p.valid_range(), minimum=p.minimum, maximum=p.maximum,
                     multiple_of=p.multiple_of,
                     choices=None if p.choices is None else list(p.choices))
    return {**meta, "default_iterations": spec.default_iterations,
            "default_warmup": spec.default_warmup}


def _wrapped(text: str, indent: str, width: int = TEXT_WIDTH) -> list[str]:
    """``text`` at ``indent``, wrapped at ``width`` with a hanging indent."""
    return textwrap.wrap(text, width, initial_indent=indent,
                         subsequent_indent=indent + "    ", break_on_hyphens=False,
                         break_long_words=False) or [indent]


def list_text(specs: dict[str, ScenarioSpec]) -> str:
    if not specs:
        return "no scenarios registered (kvmharness/scenarios/registry.py)\n"
    lines: list[str] = []
    for spec in specs.values():
        lines += _wrapped(f"{spec.name}: {spec.summary}", "")
        lines.append(f"  iterations {spec.default_iterations}, warmup {spec.default_warmup}")
        if spec.parameters:
            lines.append("  parameters (default / --quick; valid values):")
            for p in spec.parameters:
                valid = p.valid_range()
                unit = "" if p.type not in (int, float) or p.unit in valid else f" {p.unit}"
                lines += _wrapped(f"{p.name} = {p.default} / {p.quick}{unit}; {valid}: "
                                  f"{p.help}", "    ")
        if spec.variant_axes:
            lines.append("  variants:")
            for a in spec.variant_axes:
                lines += _wrapped(f"{a.name} = {','.join(a.values)}: {a.help}", "    ")
        lines.append("  metrics:")
        for m in spec.metrics:
            lines += _wrapped(f"{m.name} [{m.unit}], {m.direction} is better: {m.help}",
                              "    ")
        lines.append("")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    specs = registry.all_scenarios()
    if args.json:
        json.dump({"scenarios": [spec_json(s) for s in specs.values()]}, out, indent=2)
        out.write("\n")
    else:
        out.write(list_text(specs))
    return 0
