"""The guest ABI, checked by the compiler: every constant, macro, struct and symbol a
scenario mirrors from guests/*.h (its ``GuestAbi`` declarations) is compared with what gcc
computes from the header itself, the way tests/unit/test_ucall.py checks kh.h."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmharness.scenarios import registry
from kvmharness.scenarios.abi import GuestAbi
from kvmharness.scenarios.skeleton import GuestScenario

GUESTS = Path(__file__).resolve().parents[2] / "guests"


def declarations() -> list[tuple[str, GuestAbi]]:
    """Every GuestAbi declared at module level by the registered scenarios' modules and
    the modules they import from kvmharness.scenarios."""
    registry.all_scenarios()
    found = []
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("kvmharness.scenarios.") or module is None:
            continue
        for name, value in vars(module).items():
            if isinstance(value, GuestAbi) and value not in [abi for _, abi in found]:
                found.append((f"{module_name}.{name}", value))
    return found


def probe_source(abi: GuestAbi) -> tuple[str, dict[str, str]]:
    """C source printing ``key value`` lines, and the values the Python mirror expects."""
    lines, expected = [], {}

    def out(key: str, fmt: str, expr: str, value: int) -> None:
        lines.append(f'    printf("%s {fmt}\\n", "{key}", {expr});')
        expected[key] = str(value)

    for name, value in abi.constants.items():
        out(f"constant {name}", "%llu", f"(unsigned long long)({name})", value & (2**64 - 1))
    for name, (function, cases) in abi.macros.items():
        for args in cases:
            c_args = ", ".join(f"{a}ULL" for a in args)
            out(f"macro {name}({', '.join(map(str, args))})", "%llu",
                f"(unsigned long long)({name}({c_args}))", function(*args) & (2**64 - 1))
    for tag, struct in abi.structs.items():
        out(f"sizeof struct {tag}", "%zu", f"sizeof(struct {tag})", ctypes.sizeof(struct))
        for field, _ in struct._fields_:
            desc = getattr(struct, field)
            out(f"offsetof {tag}.{field}", "%zu", f"offsetof(struct {tag}, {field})",
                desc.offset)
            out(f"sizeof {tag}.{field}", "%zu", f"sizeof(((struct {tag} *)0)->{field})",
                desc.size)
    for symbol, ctype in abi.symbols.items():
        out(f"sizeof {symbol}", "%zu", f"sizeof({symbol})", ctypes.sizeof(ctype))
    source = "\n".join([
        "#include <stddef.h>", "#include <stdio.h>", f'#include "{abi.header}"',
        "int main(void)", "{", *lines, "    return 0;", "}", ""])
    return source, expected


def compile_and_run(source: str, tmp_path: Path) -> dict[str, str]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: the guest ABI cannot be checked")
    src, exe = tmp_path / "probe.c", tmp_path / "probe"
    src.write_text(source)
    proc = subprocess.run(["gcc", "-Wall", "-Werror", "-I", str(GUESTS), "-I",
                           str(GUESTS / "runtime"), "-o", str(exe), str(src)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"the probe does not build:\n{proc.stderr}\n{source}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return dict(line.rsplit(" ", 1) for line in run.stdout.splitlines())


DECLARED = declarations()


def test_scenarios_declare_what_they_mirror():
    headers = {abi.header for _, abi in DECLARED}
    assert {"hammer.h", "mmio.h", "flip.h"} <= headers
    for spec in registry.all_scenarios().values():
        scenario = getattr(spec.run, "__self__", None)
        if isinstance(scenario, type) and issubclass(scenario, GuestScenario):
            assert f"{scenario.guest}.h" in headers, (
                f"{spec.name} runs guests/{scenario.guest}.c but declares no GuestAbi for "
                f"guests/{scenario.guest}.h")
    for where, abi in DECLARED:
        assert (GUESTS / abi.header).is_file(), f"{where}: no guests/{abi.header}"


@pytest.mark.parametrize("where,abi", DECLARED, ids=[w for w, _ in DECLARED])
def test_mirror_matches_the_header(where, abi, tmp_path):
    source, expected = probe_source(abi)
    actual = compile_and_run(source, tmp_path)
    wrong = [f"{key}: Python {value}, C {actual.get(key)}"
             for key, value in expected.items() if actual.get(key) != value]
    assert not wrong, f"{where} differs from guests/{abi.header}:\n  " + "\n  ".join(wrong)


def test_a_wrong_mirror_is_caught(tmp_path):
    # The probe itself must be able to fail: a constant off by one is reported by name.
    abi = GuestAbi(header="hammer.h", constants={"HAMMER_MAX_PASSES": 4095},
                   symbols={"hammer_passes_done": ctypes.c_uint32 * 3})
    source, expected = probe_source(abi)
    actual = compile_and_run(source, tmp_path)
    assert actual["constant HAMMER_MAX_PASSES"] == "4096" != expected["constant HAMMER_MAX_PASSES"]
    assert actual["sizeof hammer_passes_done"] != expected["sizeof hammer_passes_done"]
