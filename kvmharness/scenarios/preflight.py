"""Host limits checked before the first run (``ScenarioSpec.check_host``): a scenario's own
parameter checks (its ``__init__``, which builds no VM), the guest page tables its RAM
needs against the room the harness reserves for them, that RAM against what the host
has available, and, on an instruction-emulating KVM (PVM), one iteration's guest work
against its time limit.  Each message names the parameters to change, so the user can act on it
from the command line."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from kvmharness.guest import pagetables
from kvmharness.guest.errors import GuestError
from kvmharness.guest.layout import PAGE_TABLES_GPA, GiB, MiB, Region
from kvmharness.guest.machine import VMX_IDENTITY_MAP_ADDR
from kvmharness.guest.memory import HOST_RESERVE
from kvmharness.observe import fingerprint
from kvmharness.scenarios.base import RunRequest

PAGE_TABLE_ROOM = VMX_IDENTITY_MAP_ADDR - PAGE_TABLES_GPA
# Guest RAM mapped with 4 KiB guest pages that fits the room: one 4 KiB table page per
# 2 MiB, plus a directory per GiB and the top levels.
MAX_4K_MAPPED = PAGE_TABLE_ROOM // (4096 + 4096 // 512 + 64) * 2 * MiB

HostCheck = Callable[[Mapping[str, Any]], list[str]]
# An instruction-emulating KVM (PVM) runs about one guest instruction per microsecond.
EMULATED_NS_PER_INSTRUCTION = 1000


@dataclasses.dataclass(frozen=True)
class Work:
    """One iteration's guest work, for the estimate on an emulating KVM: ``instructions``
    in all, spread over ``vcpus`` vCPUs (run in parallel on up to that many host CPUs),
    bounded by ``limit_s``; ``knobs`` names the parameters that size it."""

    instructions: int
    vcpus: int
    limit_s: float
    knobs: str


def emulating_backend(root: Path = Path("/")) -> str | None:
    """The backend's kind if it runs guest code by instruction emulation (PVM), else None."""
    flags = set(fingerprint.cpuinfo(root).get("flags", "").split())
    backend = fingerprint.detect_backend(root, flags, fingerprint.module_parameters(root))
    return str(backend["kind"]).upper() if backend["emulated"] else None


def work_problems(work: Work, backend: str | None) -> list[str]:
    """A problem if ``work`` cannot finish within its limit on an emulating ``backend``
    (real VT-x/AMD-V runs it thousands of times faster: not estimated)."""
    if backend is None:
        return []
    cpus = max(1, min(work.vcpus, len(os.sched_getaffinity(0))))
    seconds = work.instructions * EMULATED_NS_PER_INSTRUCTION / 1e9 / cpus
    if seconds <= work.limit_s:
        return []
    return [f"one iteration is ~{work.instructions / 1e6:.0f} million guest instructions, "
            f"~{seconds:.0f} s on this instruction-emulating KVM ({backend}, ~1 us per "
            f"instruction, {cpus} host CPU{'s' if cpus > 1 else ''}), more than its "
            f"{work.limit_s:.0f} s limit: lower "
            f"{work.knobs} (--quick sizes fit)"]


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def ram_problems(ram: int, knobs: str) -> list[str]:
    """Problems with guest RAM of ``ram`` bytes, mapped with 4 KiB guest pages and touched
    (``knobs``: the parameters that size it, for the advice)."""
    problems = []
    tables = pagetables.plan_size([Region("ram", 4 * GiB, ram, "ram")])
    if tables > PAGE_TABLE_ROOM:
        problems.append(
            f"{_gib(ram)} of guest RAM in 4 KiB guest pages needs {_gib(tables)} of guest "
            f"page tables, more than the {_gib(PAGE_TABLE_ROOM)} reserved for them: lower "
            f"{knobs} to at most {_gib(MAX_4K_MAPPED)} of guest RAM")
    available = psutil.virtual_memory().available - HOST_RESERVE
    if ram + tables > available:
        problems.append(
            f"{_gib(ram)} of guest RAM would be touched but the host has "
            f"{_gib(max(available, 0))} available (keeping {HOST_RESERVE // MiB} MiB for "
            f"the host): lower {knobs}")
    return problems


def host_check(scenario: Callable[[RunRequest], Any], knobs: str,
               ram: Callable[[Any], int],
               work: Callable[[Any], Work] | None = None) -> HostCheck:
    """A ``check_host`` for a scenario class: builds it (its own parameter checks, no VM)
    and checks ``ram(instance)`` bytes of guest RAM; ``knobs`` names the parameters that
    size it.  ``work(instance)``: one iteration's guest work, refused when an emulating
    KVM could not finish it within its limit."""
    def check(params: Mapping[str, Any]) -> list[str]:
        name = getattr(scenario, "name", "scenario")
        try:
            instance = scenario(RunRequest(params=dict(params), variant={}, iterations=1,
                                           warmup=0))
            problems = ram_problems(ram(instance), knobs)
            if work is not None and not problems:  # RAM first: its fix may fix both
                problems += work_problems(work(instance), emulating_backend())
            return [f"{name}: {p}" for p in problems]
        except (ValueError, GuestError) as e:
            text = str(e)
            if isinstance(e, GuestError) and knobs not in text:
                # The guest layer's generic advice does not know which parameters size RAM.
                generic = ": use a smaller size or fewer vCPUs"
                text = (text.replace(generic, f": lower {knobs}") if generic in text
                        else f"{text} (lower {knobs})")
            return [text if text.startswith(f"{name}:") else f"{name}: {text}"]

    return check
