"""The environment fingerprint stored in every result file, and what it implies.

Two result files must explain their own difference (as pyperf does): everything here
is static for the life of a boot (no timestamps, no free memory), so any difference
between two fingerprints is a real difference between the machines or kernels.

Every reader degrades to a string ``"unavailable: <reason>"`` instead of raising: a
fingerprint with holes is still worth recording, a crash before the run is not.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

import kvmharness

KvmProbe = Callable[[], Mapping[str, Any]]

KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
# The module parameters that change MMU/zap behaviour; `info` shows these, the result
# file records every readable parameter.
KEY_PARAMETERS = {
    "kvm": ("tdp_mmu", "mmio_caching", "nx_huge_pages", "eager_page_split"),
    "kvm_intel": ("ept", "unrestricted_guest", "nested"),
    "kvm_amd": ("npt", "nested", "nrips"),
    "kvm_pvm": (),
}
# docs/ARCHITECTURE.md §5; used directly so a short enum cannot hide it.
KVM_CAP_DISABLE_QUIRKS2 = 213
SLOT_ZAP_ALL_BIT = 1 << 7


def _read(path: Path) -> str:
    return path.read_text(errors="replace").strip()


def _read_or_reason(path: Path) -> str:
    try:
        return _read(path)
    except FileNotFoundError:
        return "unavailable: not present"
    except PermissionError:
        return "unavailable: no permission"
    except OSError as e:
        return f"unavailable: {e.strerror or e}"


def _bracketed(text: str) -> str:
    """'always [madvise] never' -> 'madvise' (sysfs marks the active choice)."""
    if "[" in text and "]" in text:
        return text[text.index("[") + 1 : text.index("]")]
    return text


def cpuinfo(root: Path) -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (they agree on what we record)."""
    info: dict[str, str] = {}
    try:
        text = _read(root / "proc/cpuinfo")
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def module_parameters(root: Path) -> dict[str, dict[str, str]]:
    """Readable parameters of loaded KVM modules (write-only ones are skipped)."""
    modules: dict[str, dict[str, str]] = {}
    for name in KVM_MODULES:
        params_dir = root / "sys/module" / name / "parameters"
        if not (root / "sys/module" / name).is_dir():
            continue
        params: dict[str, str] = {}
        if params_dir.is_dir():
            for p in sorted(params_dir.iterdir()):
                try:
                    params[p.name] = _read(p)
                except OSError:
                    continue
        modules[name] = params
    return modules


def detect_backend(root: Path, flags: set[str], modules: Mapping[str, Any]) -> dict[str, Any]:
    """Which KVM implementation runs the guests, and whether the host is itself a guest.

    PVM (kvm_pvm) executes guest code by instruction emulation (docs/ARCHITECTURE.md §6),
    so it is checked first: the CPU may still advertise vmx/svm to a PVM host.
    """
    nested = "hypervisor" in flags
    if "kvm_pvm" in modules or (not flags & {"vmx", "svm"} and "kvm" in modules):
        kind, emulated = "pvm", True
    elif "kvm_intel" in modules or "vmx" in flags:
        kind, emulated = "vmx", False
    elif "kvm_amd" in modules or "svm" in flags:
        kind, emulated = "svm", False
    else:
        kind, emulated = "none", False
    return {
        "kind": kind,
        "emulated": emulated,
        "nested": nested,
        "dev_kvm": (root / "dev/kvm").exists(),
    }


# --- which MMU builds the guest's mappings ---------------------------------------------

MmuMode = str  # "tdp_mmu" | "legacy_tdp" | "shadow" | "unknown"
MMU_MODES = ("tdp_mmu", "legacy_tdp", "shadow", "unknown")
_ON, _OFF = ("Y", "y", "1"), ("N", "n", "0")


def _flag(value: Any) -> bool | None:
    if value in _ON:
        return True
    if value in _OFF:
        return False
    return None


def mmu_mode(modules: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The x86 MMU that maps guest memory, from the module parameters of a loaded KVM.

    * ``tdp_mmu``: two-dimensional paging (NPT/EPT) through the TDP MMU (kvm.tdp_mmu=Y);
    * ``legacy_tdp``: NPT/EPT through the older shadow-page code (kvm.tdp_mmu=N): zap-all
      and memslot zaps walk kvm_mmu_page structures, counted by mmu_shadow_zapped;
    * ``shadow``: no NPT/EPT (kvm_amd.npt=N / kvm_intel.ept=N): KVM shadows the guest's
      own page tables.
    kvm.tdp_mmu reads back the effective value once the vendor module has loaded (KVM
    clears it when NPT/EPT is off), so it is trusted over what was asked for.

    PVM (kvm_pvm) has no NPT/EPT and runs with kvm.tdp_mmu=N: its guest page tables are
    shadowed by KVM's shadow MMU (a delete with zap=all zaps its shadow pages:
    mmu_shadow_zapped and kvm_mmu_prepare_zap_page count, and guest page-table writes
    count in mmu_pte_write), so it is ``shadow`` -- but it executes guest instructions by
    emulation and reaches guest RAM through memslots, so data pages get no SPTEs and
    pf_fixed stays 0; ``note`` says so.

    ``mmio_caching``: kvm.mmio_caching (MMIO SPTEs: an MMIO access faults once, then
    exits without a page-table walk); None when the parameter is not there.
    """
    kvm = modules.get("kvm")
    mmio = _flag(kvm.get("mmio_caching")) if kvm is not None else None
    out: dict[str, Any] = {"mode": "unknown", "mmio_caching": mmio, "basis": "", "note": None}
    if kvm is None:
        out["basis"] = "kvm module not loaded"
        return out
    tdp_text = kvm.get("tdp_mmu")
    tdp_mmu = _flag(tdp_text)
    basis = [f"kvm.tdp_mmu={tdp_text if tdp_text is not None else 'absent'}"]
    hw: bool | None = None
    vendor = next((m for m in ("kvm_amd", "kvm_intel") if m in modules), None)
    if vendor is not None:
        param = "npt" if vendor == "kvm_amd" else "ept"
        text = modules[vendor].get(param)
        hw = _flag(text)
        basis.append(f"{vendor}.{param}={text if text is not None else 'absent'}")
    out["basis"] = ", ".join(basis)
    if vendor is None and "kvm_pvm" in modules:
        if tdp_mmu is False:
            out["mode"] = "shadow"
            out["note"] = ("PVM: shadow paging of the guest's page tables; guest code is "
                           "emulated, so data pages get no SPTEs (pf_fixed stays 0)")
        else:
            out["note"] = "PVM with kvm.tdp_mmu not N: no known MMU mode"
        out["basis"] += ", kvm_pvm loaded"
        return out
    if vendor is None:
        out["note"] = "no kvm_amd, kvm_intel or kvm_pvm loaded"
    elif hw is False:
        out["mode"] = "shadow"
    elif hw is True and tdp_mmu is True:
        out["mode"] = "tdp_mmu"
    elif hw is True and tdp_mmu is False:
        out["mode"] = "legacy_tdp"
    elif hw is True and tdp_text is None:
        # Kernels before 5.10 have no TDP MMU (and no parameter).
        out["mode"] = "legacy_tdp"
    return out


def mmu_of(fp: Mapping[str, Any]) -> dict[str, Any]:
    """``fp["kvm_mmu"]``, or derived from the recorded module parameters for a
    fingerprint written before that key existed."""
    recorded = fp.get("kvm_mmu")
    if isinstance(recorded, Mapping) and recorded.get("mode") in MMU_MODES:
        return dict(recorded)
    modules = fp.get("kvm_modules")
    return mmu_mode(modules if isinstance(modules, Mapping) else {})


def mmu_text(mmu: Mapping[str, Any]) -> str:
    """One line: ``legacy_tdp (kvm.tdp_mmu=N, kvm_amd.npt=Y), MMIO SPTE caching on``."""
    caching = {True: "on", False: "off", None: "unknown"}[mmu.get("mmio_caching")]
    text = f"{mmu.get('mode', 'unknown')} ({mmu.get('basis') or 'no basis recorded'}), " \
           f"MMIO SPTE caching {caching}"
    return text + (f"; {mmu['note']}" if mmu.get("note") else "")


def tracefs_status(root: Path) -> dict[str, Any]:
    if root == Path("/"):
        # The live host: ask the module that will do the counting (it mounts tracefs when
        # it can), so `info` says what a run will really get.
        from kvmharness.observe import tracefs

        live = tracefs.tracefs_status()
        return {"status": "usable" if live.usable else live.reason, "path": live.path,
                "kvmmmu_events": live.usable or None}
    for rel in ("sys/kernel/tracing", "sys/kernel/debug/tracing"):
        path = root / rel
        try:
            mounted = (path / "events").is_dir()
        except PermissionError:
            return {"status": "no permission", "path": "/" + rel, "kvmmmu_events": None}
        if not mounted:
            continue
        writable = os.access(path / "events" / "enable", os.W_OK) and os.access(
            path / "trace", os.R_OK
        )
        return {
            "status": "usable" if writable else "no permission",
            "path": "/" + rel,
            "kvmmmu_events": (path / "events" / "kvmmmu").is_dir(),
        }
    return {"status": "not mounted", "path": None, "kvmmmu_events": None}


def cpufreq(root: Path) -> dict[str, str]:
    cpu = root / "sys/devices/system/cpu"
    governor = _read_or_reason(cpu / "cpu0/cpufreq/scaling_governor")
    driver = _read_or_reason(cpu / "cpu0/cpufreq/scaling_driver")
    if (cpu / "intel_pstate/no_turbo").exists():
        no_turbo = _read_or_reason(cpu / "intel_pstate/no_turbo")
        turbo = {"0": "on", "1": "off"}.get(no_turbo, no_turbo)
    elif (cpu / "cpufreq/boost").exists():
        boost = _read_or_reason(cpu / "cpufreq/boost")
        turbo = {"1": "on", "0": "off"}.get(boost, boost)
    else:
        turbo = "unavailable: no intel_pstate/no_turbo or cpufreq/boost"
    return {"governor": governor, "driver": driver, "turbo": turbo}


# "COMMIT [dirty]" of the checkout, set by `kvmharness ab` for the boots it runs.
HARNESS_COMMIT_ENV = "KVMHARNESS_HARNESS_COMMIT"


def harness_identity(checkout: Path | None = None) -> dict[str, Any]:
    """Version, and the git commit when kvmharness runs from a checkout."""
    checkout = checkout or Path(kvmharness.__file__).resolve().parent.parent
    commit: str | None = None
    dirty: bool | None = None
    passed = os.environ.get(HARNESS_COMMIT_ENV, "").split()
    if (checkout / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(checkout), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip() or None
            status = subprocess.run(
                ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    if commit is None and passed:
        # Inside a boot git may not read the checkout (a read-only share, another owner):
        # `ab` passes the host's answer for the same files.
        commit, dirty = passed[0], passed[1:] == ["dirty"]
    return {
        "version": kvmharness.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
    }


# --- which KVM modules ran: stock, or rebuilt by build-kvm ------------------------------

# The overlay's manifest, copied into lib/modules/RELEASE (runner/kvmbuild.py).
OVERLAY_MANIFEST = "kvmharness-kvm.json"
# /proc/sys/kernel/tainted bits (Documentation/admin-guide/tainted-kernels.rst).
TAINT_BITS = {12: "O (out-of-tree module)", 13: "E (unsigned module)",
              0: "P (proprietary module)", 15: "K (live patch)"}


def _note_build_id(raw: bytes) -> str | None:
    """The GNU build id in a module's /sys/module/NAME/notes/.note.gnu.build-id."""
    import struct

    offset = 0
    while offset + 12 <= len(raw):
        namesz, descsz, ntype = struct.unpack_from("<III", raw, offset)
        name_end = offset + 12 + ((namesz + 3) & ~3)
        desc = raw[name_end:name_end + descsz]
        if ntype == 3 and raw[offset + 12:offset + 12 + namesz].rstrip(b"\0") == b"GNU":
            return desc.hex()
        offset = name_end + ((descsz + 3) & ~3)
    return None


def _module_file(root: Path, release: str, name: str) -> Path | None:
    base = root / "lib/modules" / release
    stem = name.replace("_", "-")
    if root == Path("/"):
        try:
            found = subprocess.run(["modinfo", "-n", name], capture_output=True, text=True,
                                   timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found.startswith("/") and Path(found).is_file():
            return Path(found)
    for path in sorted((base / "kernel/arch/x86/kvm").glob("*.ko*")):
        if path.name.split(".ko")[0] in (stem, name):
            return path
    return None


def kvm_build(root: Path, release: str) -> dict[str, Any]:
    """Which KVM modules are loaded: per module the build id the kernel reports for it
    (/sys/module/NAME/notes), its taint letters, the file it came from (sha256, signed,
    in-tree), plus the kernel's taint mask and, when the modules tree came from
    ``kvmharness build-kvm``, that build's manifest (source, version, patches)."""
    from kvmharness.observe import kmod

    tainted = _read_or_reason(root / "proc/sys/kernel/tainted")
    modules: dict[str, Any] = {}
    for name in KVM_MODULES:
        sysdir = root / "sys/module" / name
        if not sysdir.is_dir():
            continue
        if not (sysdir / "initstate").exists():
            # Only loadable modules have initstate (and taint, notes): this one is built in.
            modules[name] = {"built_in": True, "build_id": None}
            continue
        entry: dict[str, Any] = {"taint": _read_or_reason(sysdir / "taint")}
        try:
            entry["build_id"] = _note_build_id(
                (sysdir / "notes/.note.gnu.build-id").read_bytes())
        except OSError:
            entry["build_id"] = None
        path = _module_file(root, release, name)
        if path is None:
            entry["file"] = "unavailable: no module file found"
        else:
            ident = kmod.identity_or_reason(path)
            entry["file"] = str(path)
            for key in ("sha256", "intree", "signed", "status"):
                if key in ident:
                    entry[key] = ident[key]
            if entry["build_id"] is None:
                entry["build_id"] = ident.get("build_id")
            elif ident.get("build_id") not in (None, entry["build_id"]):
                entry["file_differs"] = (f"the file's build id {ident.get('build_id')} is not "
                                         "the loaded module's")
        modules[name] = entry
    manifest: dict[str, Any] | None = None
    try:
        import json

        loaded = json.loads((root / "lib/modules" / release / OVERLAY_MANIFEST).read_text())
        manifest = {k: loaded.get(k) for k in ("source", "patches", "content_key", "vendors")}
        manifest["built"] = loaded.get("created")
    except (OSError, ValueError, AttributeError):
        manifest = None
    return {"tainted": tainted, "modules": modules, "build_kvm": manifest,
            "summary": kvm_build_text(modules, manifest, tainted)}


def kvm_build_text(modules: Mapping[str, Any], manifest: Mapping[str, Any] | None,
                   tainted: str) -> str:
    """One line: where the KVM modules came from and their build ids."""
    ids = ", ".join(f"{n} {str(m.get('build_id') or '?')[:12]}" for n, m in modules.items()
                    if not m.get("built_in"))
    if not modules:
        return "no KVM module loaded"
    if manifest:
        src = manifest.get("source") or {}
        origin = f"build-kvm of {src.get('version', '?')}"
        if src.get("git_commit"):
            origin += f" (git {str(src['git_commit'])[:12]}{', dirty' if src.get('git_dirty') else ''})"
        patches = manifest.get("patches") or []
        origin += (" + " + ", ".join(str(p.get("name")) for p in patches)) if patches \
            else ", no patches"
    elif all(m.get("built_in") for m in modules.values()):
        origin = "built into the kernel"
    elif all(m.get("intree") and m.get("signed") for m in modules.values()):
        origin = "stock (in-tree, signed)"
    elif all(m.get("intree") for m in modules.values()):
        origin = "in-tree"
    else:
        origin = "out-of-tree"
    taint = ""
    if tainted.isdigit() and int(tainted):
        letters = [v.split(" ")[0] for bit, v in TAINT_BITS.items() if int(tainted) >> bit & 1]
        taint = f"; kernel tainted {tainted}" + (f" ({''.join(letters)})" if letters else "")
    return f"{origin}{': ' + ids if ids else ''}{taint}"


def probe_kvm() -> dict[str, Any]:
    """KVM capabilities and quirks from /dev/kvm, or a status saying why not.

    Imported lazily: the kvm layer is optional for everything that only reads results.
    """
    try:
        from kvmharness import uapi
        from kvmharness.kvm import Kvm
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot probe"
        return {"status": f"unavailable: {type(e).__name__}: {e}"}
    caps_enum = getattr(uapi, "KvmCap", None) or getattr(uapi, "KVM_CAP", None)
    quirk_enum = getattr(uapi, "KvmX86Quirk", None)
    try:
        with Kvm() as kvm:
            caps: dict[str, int] = {}
            for cap in caps_enum or ():
                caps[cap.name] = int(kvm.check_extension(int(cap)))
            quirks_mask = int(kvm.check_extension(KVM_CAP_DISABLE_QUIRKS2))
    except Exception as e:  # noqa: BLE001 - /dev/kvm missing, EACCES, a half-written layer
        return {"status": f"unavailable: {type(e).__name__}: {e}"}
    quirks: dict[str, bool] = {}
    for q in quirk_enum or ():
        quirks[q.name.removeprefix("KVM_X86_QUIRK_")] = bool(quirks_mask & int(q))
    quirks.setdefault("SLOT_ZAP_ALL", bool(quirks_mask & SLOT_ZAP_ALL_BIT))
    return {
        "status": "ok",
        "capabilities": caps,
        "disable_quirks2_mask": quirks_mask,
        "quirks": quirks,
    }


def _kvm_section(kvm_probe: KvmProbe | Mapping[str, Any] | None) -> dict[str, Any]:
    if kvm_probe is None:
        return probe_kvm()
    if callable(kvm_probe):
        try:
            return dict(kvm_probe())
        except Exception as e:  # noqa: BLE001 - a failing probe must not lose the fingerprint
            return {"status": f"unavailable: {type(e).__name__}: {e}"}
    return dict(kvm_probe)


def collect(
    kvm_probe: KvmProbe | Mapping[str, Any] | None = None,
    *,
    root: Path | str = "/",
    checkout: Path | None = None,
) -> dict[str, Any]:
    """The fingerprint (JSON-ready).  ``kvm_probe``: a mapping, or a callable returning one,
    shaped like ``probe_kvm()``'s result; None probes /dev/kvm itself.  ``root`` lets tests
    point /proc and /sys at a fake tree."""
    root = Path(root)
    uname = platform.uname()
    info = cpuinfo(root)
    flags = set(info.get("flags", "").split())
    modules = module_parameters(root)
    thp = root / "sys/kernel/mm/transparent_hugepage"
    return {
        "kernel": {
            "release": uname.release,
            "version": uname.version,
            "machine": uname.machine,
            "cmdline": _read_or_reason(root / "proc/cmdline"),
            # Which boot ran the file's runs: compare treats the boot as a level of the
            # experiment (runs of one boot are not independent kernels' worth of evidence).
            "boot_id": _read_or_reason(root / "proc/sys/kernel/random/boot_id"),
        },
        "cpu": {
            "vendor": info.get("vendor_id", "unavailable: not in /proc/cpuinfo"),
            "model": info.get("model name", "unavailable: not in /proc/cpuinfo"),
            "family": info.get("cpu family"),
            "model_number": info.get("model"),
            "stepping": info.get("stepping"),
            "microcode": info.get("microcode", "unavailable: not in /proc/cpuinfo"),
            "virt_flags": sorted(flags & {"vmx", "svm", "hypervisor"}),
            "nproc": os.cpu_count(),
        },
        "memory": {"total_bytes": psutil.virtual_memory().total},
        "thp": {
            "enabled": _bracketed(_read_or_reason(thp / "enabled")),
            "defrag": _bracketed(_read_or_reason(thp / "defrag")),
        },
        "cpufreq": cpufreq(root),
        "kvm_modules": modules,
        "kvm_mmu": mmu_mode(modules),
        "kvm_build": kvm_build(root, uname.release),
        "kvm": _kvm_section(kvm_probe),
        "backend": detect_backend(root, flags, modules),
        "tracefs": tracefs_status(root),
        "harness": harness_identity(checkout),
    }


def _param(fp: Mapping[str, Any], module: str, name: str) -> str | None:
    value = fp.get("kvm_modules", {}).get(module, {}).get(name)
    return value if isinstance(value, str) else None


def statements(fp: Mapping[str, Any]) -> list[str]:
    """Plain sentences about what this host can and cannot measure."""
    out: list[str] = []
    backend = fp.get("backend", {})
    kind = backend.get("kind")
    if kind == "pvm":
        out.append("PVM: guest code is emulated; zap costs are not those of VT-x/AMD-V")
    elif kind == "vmx":
        out.append(f"VMX (Intel VT-x): EPT={_param(fp, 'kvm_intel', 'ept') or 'unknown'}")
    elif kind == "svm":
        out.append(f"SVM (AMD-V): NPT={_param(fp, 'kvm_amd', 'npt') or 'unknown'}")
    else:
        out.append("KVM: no kvm module loaded; nothing can be measured here")
    if backend.get("nested"):
        out.append("nested: this host is itself a guest (cpu flag 'hypervisor'); "
                   "timings include the outer hypervisor's exits")
    if kind != "none" and not backend.get("dev_kvm"):
        out.append("/dev/kvm: missing")
    if kind != "none":
        out.append(f"MMU: {mmu_text(mmu_of(fp))}")
    tdp = _param(fp, "kvm", "tdp_mmu")
    if tdp is not None:
        out.append(f"TDP MMU (kvm.tdp_mmu): {'on' if tdp == 'Y' else 'off'}")
    mmio = _param(fp, "kvm", "mmio_caching")
    if mmio is not None:
        out.append(f"MMIO SPTE caching (kvm.mmio_caching): {'on' if mmio == 'Y' else 'off'}")
    kvm = fp.get("kvm", {})
    if kvm.get("status") == "ok":
        zap = kvm.get("quirks", {}).get("SLOT_ZAP_ALL")
        out.append("SLOT_ZAP_ALL quirk: " + (
            "supported (zap=all and zap=slot can both run)" if zap
            else "not supported (zap=slot cannot run)"))
        stats = kvm.get("capabilities", {}).get("KVM_CAP_BINARY_STATS_FD")
        if stats is not None:
            out.append(f"KVM binary stats: {'available' if stats else 'not available'}")
    else:
        out.append(f"SLOT_ZAP_ALL quirk: unknown (KVM {kvm.get('status', 'unavailable')})")
    tracefs = fp.get("tracefs", {})
    status = tracefs.get("status", "unknown")
    line = f"tracefs: {status}"
    if status == "usable" and tracefs.get("kvmmmu_events") is False:
        line += " (but no kvmmmu events: zap tracepoints cannot be counted)"
    elif status == "not mounted":
        line += " (mount -t tracefs nodev /sys/kernel/tracing to count zap tracepoints)"
    out.append(line)
    freq = fp.get("cpufreq", {})
    governor, turbo = str(freq.get("governor")), str(freq.get("turbo"))
    if governor.startswith("unavailable") and turbo.startswith("unavailable"):
        out.append("CPU frequency: no cpufreq here; governor and turbo unknown "
                   "(per-run MHz readings still come from /proc/cpuinfo)")
    else:
        out.append(f"CPU frequency: governor {governor}, turbo {turbo}")
    thp = fp.get("thp", {}).get("enabled")
    out.append(f"THP: {thp}")
    return out
