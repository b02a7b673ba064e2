"""The house rules CI enforces: ruff (rules in pyproject.toml) finds nothing, mypy --strict
finds nothing in kvmharness/, and the import-layer contract (pyproject.toml
[tool.importlinter], docs/ARCHITECTURE.md §1) holds: no layer imports one above it.

The tools come with the ``test`` extra. Where they are missing (a tools/vng-run boot's
Python has the runtime dependencies only) these skip; with KVMHARNESS_REQUIRE_KVM=1 on the
host, as CI sets, a missing tool is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found:
        return found
    if os.environ.get("KVMHARNESS_REQUIRE_KVM") == "1" and not os.environ.get("KVMHARNESS_VNG_KERNEL"):
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    # Caches go to a temporary folder: the checkout may be read-only.
    with tempfile.TemporaryDirectory(prefix="kvmharness-checks.") as tmp:
        env = dict(os.environ, MYPY_CACHE_DIR=str(Path(tmp) / "mypy"),
                   RUFF_CACHE_DIR=str(Path(tmp) / "ruff"))
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600, check=False)


def test_ruff_finds_nothing() -> None:
    proc = _run([_tool("ruff"), "check", "--no-cache", "--output-format", "concise",
                 "kvmharness", "tests"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_finds_nothing() -> None:
    proc = _run([_tool("mypy"), "--no-incremental"])  # files and --strict: pyproject.toml
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_no_layer_imports_a_layer_above_it() -> None:
    proc = _run([_tool("lint-imports"), "--no-cache"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
