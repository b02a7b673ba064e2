"""``--pin``: which CPUs the vCPU threads, the memslot togglers and the main thread run on.

A thread that migrates between CPUs, or shares one with the thread it races against,
adds noise that has nothing to do with the kernel under test.  Pinning makes that
placement a recorded, repeatable part of the setup.

Spec syntax (``--pin SPEC``):

- ``auto``: the main thread and the togglers on the lowest CPU this process may use, the
  vCPUs on the others (leaving out that CPU's SMT siblings where others remain); with
  one usable CPU, everything on it.
- ``CPUS``: every role on these CPUs, e.g. ``1``, ``0-3``, ``0,2``.
- ``ROLE=CPUS[,ROLE=CPUS...]`` with roles ``vcpus``, ``togglers``, ``main``, e.g.
  ``vcpus=1,togglers=0,main=0`` or ``vcpus=2-3,togglers=0,1``: a CPU list runs until the
  next ``ROLE=``.  A role left out is not pinned by itself, but threads inherit the
  affinity of the thread that starts them, so with ``main`` pinned the unnamed roles run
  on main's CPUs.

The result is a plain mapping ``{"vcpus": (1,), "togglers": (0,), "main": (0,)}``
(``RunRequest.pinning``; empty = no pinning).  vCPU thread i goes to
``vcpus[i % len(vcpus)]``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

ROLES = ("vcpus", "togglers", "main")
# The largest CONFIG_NR_CPUS x86-64 Linux allows: no CPU number can be at or above it.
MAX_CPUS = 8192
Pinning = Mapping[str, tuple[int, ...]]


class PinError(ValueError):
    """A ``--pin`` spec that is malformed or names CPUs this process may not use."""


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask, e.g. narrowed by taskset or
    a cgroup cpuset), not merely the CPUs the machine has."""
    return tuple(sorted(os.sched_getaffinity(0)))


def cpu_list_text(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``'0-2,5'`` (the kernel's cpulist format)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _cpu_number(text: str) -> int | None:
    """A CPU number in ASCII digits (no sign, no ``1_0``), else None."""
    t = text.strip()
    return int(t) if t.isascii() and t.isdigit() and len(t) <= 10 else None


def _cpu_item(token: str, spec: str) -> list[int]:
    lo, dash, hi = token.partition("-")
    first = _cpu_number(lo)
    last = _cpu_number(hi) if dash else first
    if first is None or last is None:
        raise PinError(f"--pin {spec!r}: {token!r} is not a CPU number or range "
                       "like 3 or 0-3")
    if last < first:
        raise PinError(f"--pin {spec!r}: {token!r} is not a CPU range (low-high, "
                       "low <= high)")
    # Checked before the range is made: 0-1000000000 would otherwise be a list of a
    # billion ints (23 GB) before any CPU was checked.
    if last >= MAX_CPUS:
        raise PinError(f"--pin {spec!r}: CPU {last} is beyond the {MAX_CPUS} CPUs Linux "
                       "supports (CONFIG_NR_CPUS); the CPUs here: "
                       f"{cpu_list_text(allowed_cpus()) or 'none'}")
    return list(range(first, last + 1))


def _parse(spec: str) -> dict[str, tuple[int, ...]] | None:
    """The spec's roles and CPUs, unchecked against any machine; None for ``auto``."""
    text = spec.strip()
    if text == "auto":
        return None
    if not text:
        raise PinError("--pin: empty spec (give auto, CPUS or ROLE=CPUS,...)")
    roles: dict[str, list[int]] = {}
    current: str | None = None
    everything: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            raise PinError(f"--pin {spec!r}: empty item between commas")
        if "=" in token:
            role, _, token = token.partition("=")
            role = role.strip()
            if role not in ROLES:
                raise PinError(f"--pin {spec!r}: unknown role {role!r} "
                               f"(roles: {', '.join(ROLES)})")
            if role in roles:
                raise PinError(f"--pin {spec!r}: role {role!r} given twice")
            if everything:
                raise PinError(f"--pin {spec!r}: a bare CPU list applies to every role; "
                               "name a role for each list instead")
            current = role
            roles[role] = []
            if not token.strip():
                raise PinError(f"--pin {spec!r}: role {role!r} has no CPUs")
        (roles[current] if current is not None else everything).extend(
            _cpu_item(token.strip(), spec))
    if current is None:
        return {role: tuple(sorted(set(everything))) for role in ROLES}
    return {role: tuple(sorted(set(cpus))) for role, cpus in roles.items()}


def check_syntax(spec: str) -> None:
    """Raise PinError if ``spec`` is malformed, without checking its CPUs against this
    machine (``ab``: the CPUs that count are those inside the boot)."""
    _parse(spec)


def sibling_groups(root: Path = Path("/")) -> list[tuple[int, ...]]:
    """SMT sibling sets (CPUs sharing a core), from sysfs; empty where unreadable."""
    groups: set[tuple[int, ...]] = set()
    cpu_dir = root / "sys/devices/system/cpu"
    try:
        entries = list(cpu_dir.glob("cpu[0-9]*/topology/thread_siblings_list"))
    except OSError:
        return []
    for path in entries:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        cpus: list[int] = []
        try:
            for item in text.split(","):
                cpus.extend(_cpu_item(item, text))
        except PinError:
            continue
        groups.add(tuple(sorted(cpus)))
    return sorted(groups)


def auto(allowed: Sequence[int],
         siblings: Sequence[Sequence[int]] = ()) -> dict[str, tuple[int, ...]]:
    """``--pin auto`` on these usable CPUs: main and togglers share the lowest one, vCPUs
    get the rest, minus its SMT siblings (a sibling shares the core's execution units with
    the togglers) unless nothing else remains."""
    cpus = sorted(set(allowed))
    if not cpus:
        raise PinError("--pin auto: this process may not run on any CPU")
    housekeeping = cpus[0]
    if len(cpus) == 1:
        return dict.fromkeys(ROLES, (housekeeping,))
    rest = cpus[1:]
    shared = {c for group in siblings if housekeeping in group for c in group}
    apart = [c for c in rest if c not in shared]
    return {"vcpus": tuple(apart or rest), "togglers": (housekeeping,), "main": (housekeeping,)}


def check(pinning: Pinning, allowed: Collection[int]) -> dict[str, tuple[int, ...]]:
    """``pinning`` as a plain dict if every role is known and every CPU usable; else
    PinError naming the role or CPU and the usable CPUs."""
    usable = set(allowed)
    out: dict[str, tuple[int, ...]] = {}
    for role, cpus in pinning.items():
        if role not in ROLES:
            raise PinError(f"pinning: unknown role {role!r} (roles: {', '.join(ROLES)})")
        cpus = tuple(cpus)
        if not cpus:
            raise PinError(f"pinning: role {role!r} has no CPUs")
        bad = sorted(c for c in cpus if c not in usable)
        if bad:
            raise PinError(f"pinning: {role} on CPU {cpu_list_text(bad)}, which this process "
                           f"may not use (usable: {cpu_list_text(usable) or 'none'})")
        out[role] = tuple(sorted(set(cpus)))
    return out


def parse(spec: str, allowed: Collection[int] | None = None,
          siblings: Sequence[Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """Resolve a ``--pin`` spec against the CPUs this process may use (default: its
    affinity mask).  Raises PinError naming what is wrong."""
    usable = allowed_cpus() if allowed is None else tuple(sorted(set(allowed)))
    parsed = _parse(spec)
    if parsed is None:
        return auto(usable, sibling_groups() if siblings is None else siblings)
    try:
        return check(parsed, usable)
    except PinError as e:
        raise PinError(f"--pin {spec!r}: {str(e).removeprefix('pinning: ')}") from None


def describe(pinning: Pinning) -> str:
    """``'vcpus=1 togglers=0 main=0'``, or ``'none'``."""
    return " ".join(f"{r}={cpu_list_text(pinning[r])}" for r in ROLES if r in pinning) or "none"


def record(pinning: Pinning) -> dict[str, list[int]]:
    """JSON-ready form for a run's ``effective["pinning"]``."""
    return {r: list(pinning[r]) for r in ROLES if r in pinning}


def pin_current_thread(cpus: Collection[int]) -> frozenset[int]:
    """Restrict the calling thread (not the whole process: on Linux pid 0 names the
    calling thread) to ``cpus``; returns its previous affinity."""
    before = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus))
    return before


@contextlib.contextmanager
def pinned(cpus: Collection[int] | None) -> Iterator[None]:
    """Run the block with the calling thread on ``cpus`` (None or empty: unchanged), and
    give it back its previous affinity afterwards."""
    if not cpus:
        yield
        return
    before = pin_current_thread(cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def current_cpu(tid: int | None = None) -> int:
    """The CPU the thread ``tid`` (default: the caller) last ran on: field 39
    (``processor``) of /proc/thread-self/stat, counted after the command name, which may
    itself contain spaces and parentheses."""
    path = Path("/proc/thread-self/stat") if tid is None else Path(f"/proc/self/task/{tid}/stat")
    text = path.read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[39 - 3])


def thread_affinity() -> frozenset[int]:
    """The calling thread's own affinity mask."""
    return frozenset(os.sched_getaffinity(0))


def resolve(spec: str | Mapping[str, Collection[int]] | None) -> dict[str, tuple[int, ...]]:
    """A ``--pin`` string or a role -> CPUs mapping (the Python API), checked against the
    CPUs this process may use; None or an empty mapping: no pinning."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        return parse(spec)  # "" is an error there: an empty --pin is a typo, not "none"
    if not spec:
        return {}
    return check({role: tuple(cpus) for role, cpus in spec.items()}, allowed_cpus())
