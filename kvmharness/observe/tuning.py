"""Tuning advice for stable timings: what on this host adds noise, and what to do about it
(in the spirit of pyperf's ``system show``).

``advise()`` is a pure function of the fingerprint (observe.fingerprint) and a few
readings taken now (``read_host()``: SMT siblings, irqbalance, what else is using the
CPUs); ``kvmharness info`` prints its result.  Every item says what was found and, where
something can be done, the command or option that does it.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import psutil

from kvmharness.observe.pinning import allowed_cpus, cpu_list_text, sibling_groups

Status = Literal["ok", "advice", "unknown"]

# A CPU busier than this with other work during the sample is worth a line.
BUSY_PCT = 10.0
STEAL_PCT = 2.0
SAMPLE_S = 0.5


@dataclasses.dataclass(frozen=True)
class Advice:
    topic: str
    status: Status
    text: str

    def line(self) -> str:
        return f"[{self.status}] {self.topic}: {self.text}"


@dataclasses.dataclass(frozen=True)
class HostReadings:
    """What ``read_host`` saw; tests build these by hand."""

    usable_cpus: tuple[int, ...]
    siblings: tuple[tuple[int, ...], ...] = ()
    smt_control: str | None = None
    irqbalance: bool | None = None
    sample_s: float = SAMPLE_S
    # Per CPU over the sample: percent busy (user, system, irq...) and stolen by the
    # hypervisor; None where the sample could not be taken.
    busy_pct: Mapping[int, float] | None = None
    steal_pct: Mapping[int, float] | None = None
    # (name, pid, percent of one CPU) of the busiest other processes during the sample.
    top_processes: tuple[tuple[str, int, float], ...] = ()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _irqbalance_running() -> bool | None:
    try:
        return any(p.info.get("name") == "irqbalance" for p in psutil.process_iter(["name"]))
    except (psutil.Error, OSError):
        return None


def _sample(sample_s: float) -> tuple[dict[int, float] | None, dict[int, float] | None,
                                      tuple[tuple[str, int, float], ...]]:
    """Per-CPU busy and steal percentages over ``sample_s``, and the busiest other
    processes over the same window (this process is idle while it sleeps)."""
    me = psutil.Process().pid
    procs = []
    try:
        for p in psutil.process_iter(["name"]):
            if p.pid == me:
                continue
            try:
                p.cpu_percent(None)  # primes the per-process counter
                procs.append(p)
            except psutil.Error:
                continue
        per_cpu = psutil.cpu_times_percent(interval=sample_s, percpu=True)
    except (psutil.Error, OSError):
        return None, None, ()
    busy: dict[int, float] = {}
    steal: dict[int, float] = {}
    for cpu, t in enumerate(per_cpu):
        fields = t._asdict()
        idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
        stolen = fields.get("steal", 0.0)
        steal[cpu] = stolen
        busy[cpu] = max(0.0, 100.0 - idle - stolen)
    top: list[tuple[str, int, float]] = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct >= 1.0:
            top.append((str(p.info.get("name") or "?"), p.pid, pct))
    top.sort(key=lambda t: -t[2])
    return busy, steal, tuple(top[:3])


def read_host(root: Path = Path("/"), sample_s: float = SAMPLE_S) -> HostReadings:
    """Readings for ``advise``: sysfs topology, irqbalance, and a ``sample_s`` look at
    what else runs on the CPUs."""
    busy, steal, top = _sample(sample_s) if sample_s > 0 else (None, None, ())
    return HostReadings(
        usable_cpus=allowed_cpus(),
        siblings=tuple(sibling_groups(root)),
        smt_control=_read(root / "sys/devices/system/cpu/smt/control"),
        irqbalance=_irqbalance_running() if root == Path("/") else None,
        sample_s=sample_s,
        busy_pct=busy,
        steal_pct=steal,
        top_processes=top,
    )


# --- the checks ------------------------------------------------------------------------


def _backend(fp: Mapping[str, Any]) -> list[Advice]:
    backend = fp.get("backend", {})
    out: list[Advice] = []
    kind = backend.get("kind")
    if kind == "pvm":
        out.append(Advice("backend", "advice",
                          "PVM: ioctl semantics and zap paths are real, but guest code "
                          "is emulated (~1 us per instruction), so timings and fault "
                          "counters (pf_fixed) are not those of VT-x/AMD-V; for kernel "
                          "behaviour (zap paths, counters) boot the kernels under "
                          "tools/vng-run or `kvmharness ab`, for timings use a VT-x/AMD-V "
                          "host"))
    elif kind == "none":
        out.append(Advice("backend", "unknown", "no KVM module loaded"))
    else:
        out.append(Advice("backend", "ok", f"{kind} (hardware virtualization)"))
    if backend.get("nested"):
        out.append(Advice("nested", "advice",
                          "this host is itself a virtual machine: the outer hypervisor's "
                          "exits and its other guests add noise; use a bare-metal host for "
                          "timings, or pin (--pin) and add runs (--until-ci)"))
    return out


def _frequency(fp: Mapping[str, Any]) -> list[Advice]:
    freq = fp.get("cpufreq", {})
    governor = str(freq.get("governor", "unavailable"))
    driver = str(freq.get("driver", ""))
    turbo = str(freq.get("turbo", "unavailable"))
    out: list[Advice] = []
    if governor.startswith("unavailable"):
        out.append(Advice("CPU governor", "unknown",
                          "no cpufreq here (the platform or hypervisor sets the frequency); "
                          "each run records the MHz it saw"))
    elif governor != "performance":
        out.append(Advice("CPU governor", "advice",
                          f"{governor}: the frequency follows the load, so a run's speed "
                          "depends on what ran before it; `sudo cpupower frequency-set -g "
                          "performance`"))
    else:
        out.append(Advice("CPU governor", "ok", governor))
    if turbo == "on":
        knob = ("echo 1 | sudo tee /sys/devices/system/cpu/intel_pstate/no_turbo"
                if driver.startswith("intel_pstate") or driver == "intel_cpufreq"
                else "echo 0 | sudo tee /sys/devices/system/cpu/cpufreq/boost")
        out.append(Advice("turbo/boost", "advice",
                          "on: the clock rises and falls with temperature and the number "
                          f"of busy cores; `{knob}`"))
    elif turbo == "off":
        out.append(Advice("turbo/boost", "ok", "off"))
    else:
        out.append(Advice("turbo/boost", "unknown", "cannot be read here"))
    return out


def _thp(fp: Mapping[str, Any]) -> list[Advice]:
    thp = fp.get("thp", {})
    enabled, defrag = str(thp.get("enabled", "")), str(thp.get("defrag", ""))
    out: list[Advice] = []
    if enabled == "always":
        out.append(Advice("THP", "advice",
                          "enabled=always: khugepaged collapses guest RAM into huge pages "
                          "in the background, so a run's backing depends on timing; `echo "
                          "madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled` "
                          "(scenarios that want huge pages ask for them: --param thp=1)"))
    elif enabled in ("madvise", "never"):
        out.append(Advice("THP", "ok", f"enabled={enabled}"))
    else:
        out.append(Advice("THP", "unknown", f"enabled={enabled or 'unreadable'}"))
    if defrag == "always":
        out.append(Advice("THP defrag", "advice",
                          "defrag=always: page faults may stall in direct compaction; `echo "
                          "defer+madvise | sudo tee /sys/kernel/mm/transparent_hugepage/"
                          "defrag`"))
    return out


def _load(host: HostReadings) -> list[Advice]:
    if host.busy_pct is None:
        return [Advice("other load", "unknown", "CPU use could not be sampled")]
    usable = set(host.usable_cpus)
    busy = {c: p for c, p in host.busy_pct.items() if c in usable and p > BUSY_PCT}
    out: list[Advice] = []
    if busy:
        cpus = ", ".join(f"CPU {c} {p:.0f}%" for c, p in sorted(busy.items()))
        top = ", ".join(f"{n} (pid {pid}) {pct:.0f}%" for n, pid, pct in host.top_processes)
        out.append(Advice("other load", "advice",
                          f"busy with other work during a {host.sample_s:g} s sample: {cpus}"
                          + (f"; busiest: {top}" if top else "")
                          + "; stop it, or keep the run's threads off those CPUs with --pin"))
    else:
        out.append(Advice("other load", "ok",
                          f"every usable CPU under {BUSY_PCT:.0f}% busy during a "
                          f"{host.sample_s:g} s sample"))
    stolen = {c: p for c, p in (host.steal_pct or {}).items()
              if c in usable and p > STEAL_PCT}
    if stolen:
        out.append(Advice("steal time", "advice",
                          "the hypervisor ran other work on "
                          + ", ".join(f"CPU {c} ({p:.0f}%)" for c, p in sorted(stolen.items()))
                          + " during the sample: expect noise no setting here removes; add "
                          "runs (--until-ci) and compare only interleaved runs"))
    return out


def _smt(host: HostReadings) -> list[Advice]:
    usable = set(host.usable_cpus)
    shared = [g for g in host.siblings if len(g) > 1 and len(usable & set(g)) > 1]
    if shared:
        pairs = "; ".join(cpu_list_text(g) for g in shared[:4])
        return [Advice("SMT", "advice",
                       f"CPUs sharing a core: {pairs}{' ...' if len(shared) > 4 else ''}: a "
                       "busy sibling slows its partner; put vCPUs and togglers on different "
                       "cores (--pin auto does), keep their siblings idle, or `echo off | "
                       "sudo tee /sys/devices/system/cpu/smt/control`")]
    if host.siblings or host.smt_control in ("off", "forceoff", "notsupported", "notimplemented"):
        return [Advice("SMT", "ok", "no two usable CPUs share a core")]
    return [Advice("SMT", "unknown", "CPU topology not readable")]


def _irqbalance(host: HostReadings) -> list[Advice]:
    if host.irqbalance is None:
        return []
    if host.irqbalance:
        return [Advice("irqbalance", "advice",
                       "running: it moves interrupts between CPUs at random moments, "
                       "including onto the measured ones; `sudo systemctl stop irqbalance` "
                       "while measuring")]
    return [Advice("irqbalance", "ok", "not running")]


_ISOLATION = re.compile(r"(?:^|\s)(isolcpus|nohz_full)=(\S+)")


def _isolation(fp: Mapping[str, Any], host: HostReadings) -> list[Advice]:
    cmdline = str(fp.get("kernel", {}).get("cmdline", ""))
    found = dict(_ISOLATION.findall(cmdline))
    if "isolcpus" in found:
        cpus = found["isolcpus"].split(",")[-1] if found["isolcpus"] else ""
        return [Advice("isolated CPUs", "ok",
                       f"isolcpus={found['isolcpus']}; pin the vCPUs there "
                       f"(--pin vcpus={cpus},togglers=...,main=...)")]
    if len(host.usable_cpus) < 2:
        return []
    return [Advice("isolated CPUs", "advice",
                   "none: the scheduler may run anything next to the vCPUs; for the "
                   "least noise boot with isolcpus=N nohz_full=N rcu_nocbs=N for some CPUs "
                   "N and pin the vCPUs there (--pin vcpus=N,togglers=M,main=M)")]


def advise(fp: Mapping[str, Any], host: HostReadings) -> list[Advice]:
    """Every check, in a fixed order: backend, frequency, memory, load, topology."""
    return [*_backend(fp), *_frequency(fp), *_thp(fp), *_load(host), *_smt(host),
            *_irqbalance(host), *_isolation(fp, host)]


def advice_lines(items: Sequence[Advice], width: int = 76) -> list[str]:
    """Items needing action first, then the unknown, then what is fine; each wrapped to
    ``width`` columns (continuations indented, words never split)."""
    order = {"advice": 0, "unknown": 1, "ok": 2}
    lines: list[str] = []
    for a in sorted(items, key=lambda a: order[a.status]):
        lines += textwrap.wrap(a.line(), width, subsequent_indent="    ",
                               break_long_words=False, break_on_hyphens=False)
    return lines
