"""Host-noise readings taken around each run: load, steal time, other processes' CPU use
and CPU frequency.

Medians move several-fold between identical runs on shared hosts (docs/ARCHITECTURE.md
§6).  We cannot remove that noise, but each run records enough for ``compare`` to say
when a side ran on a busy or throttled machine.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import psutil


@dataclasses.dataclass(frozen=True)
class NoiseSnapshot:
    monotonic: float
    loadavg_1m: float
    # Seconds summed over all CPUs, guest/guest_nice left out because the kernel already
    # counts them inside user/nice.
    cpu_total_s: float
    cpu_idle_s: float
    cpu_steal_s: float
    self_cpu_s: float
    cpu_mhz: float | None


def _cpu_mhz() -> float | None:
    """Mean current frequency over CPUs; None where neither cpufreq nor /proc says."""
    try:
        freqs = psutil.cpu_freq(percpu=True)
    except (OSError, NotImplementedError, AttributeError):
        return None
    current = [f.current for f in freqs or () if f.current and f.current > 0]
    return sum(current) / len(current) if current else None


def snapshot() -> NoiseSnapshot:
    times = psutil.cpu_times()
    fields = times._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    own = psutil.Process().cpu_times()
    return NoiseSnapshot(
        monotonic=time.monotonic(),
        loadavg_1m=os.getloadavg()[0],
        cpu_total_s=total,
        cpu_idle_s=idle,
        cpu_steal_s=fields.get("steal", 0.0),
        self_cpu_s=own.user + own.system,
        cpu_mhz=_cpu_mhz(),
    )


# CPU times come in clock ticks (10 ms); over shorter windows the ratios below are
# quantisation noise, so they are left out (None) rather than reported as 0% or 7000%.
MIN_WINDOW_S = 0.5


def delta(before: NoiseSnapshot, after: NoiseSnapshot) -> dict[str, Any]:
    """The readings stored in a run's ``noise`` (keys documented in results/README.md)."""
    wall = max(after.monotonic - before.monotonic, 0.0)
    total = after.cpu_total_s - before.cpu_total_s
    steal = after.cpu_steal_s - before.cpu_steal_s
    busy = total - (after.cpu_idle_s - before.cpu_idle_s) - steal
    own = after.self_cpu_s - before.self_cpu_s
    nproc = os.cpu_count() or 1
    long_enough = wall >= MIN_WINDOW_S and total > 0
    return {
        "wall_s": wall,
        "loadavg_1m_before": before.loadavg_1m,
        "loadavg_1m_after": after.loadavg_1m,
        "steal_pct": 100.0 * steal / total if long_enough else None,
        # CPUs' worth of work done by everything except this process: the competing load
        # that actually overlapped the run, unlike loadavg's minute-long memory.
        "others_busy_cpus": min(max(busy - own, 0.0) / wall, float(nproc))
        if long_enough else None,
        "self_cpu_s": own,
        "cpu_mhz_before": before.cpu_mhz,
        "cpu_mhz_after": after.cpu_mhz,
        "nproc": nproc,
    }
