"""The README's Python and pytest examples run exactly as written (extracted from the
README's "From Python and from pytest" section, not copied here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### From Python and from pytest"


def examples() -> list[str]:
    """The indented code blocks of the section, dedented."""
    text = README.read_text()
    start = text.index(SECTION)
    following = re.search(r"\n#{2,3} ", text[start + len(SECTION):])
    end = start + len(SECTION) + following.start() if following else -1
    blocks: list[str] = []
    current: list[str] = []
    for line in text[start:end if end >= 0 else None].splitlines():
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
            current = []
    if current:
        blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
    return blocks


def example(kind: str) -> str:
    found = [b for b in examples() if ("def test_" in b) == (kind == "pytest")]
    assert len(found) == 1, f"expected one {kind} example in the README, found {len(found)}"
    return found[0]


def need_kvm() -> None:
    if not os.path.exists("/dev/kvm") and os.environ.get("KVMHARNESS_REQUIRE_KVM") != "1":
        pytest.skip("/dev/kvm missing: the README examples run guests")


def test_the_section_has_both_examples() -> None:
    assert "api.run_once(" in example("python")
    assert "import pytest" in example("pytest")


def test_python_example_runs(tmp_path: Path) -> None:
    need_kvm()
    script = tmp_path / "example.py"
    script.write_text(example("python"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example prints the samples and the zap path"


def test_pytest_example_runs(tmp_path: Path) -> None:
    need_kvm()
    test_file = tmp_path / "test_example.py"
    test_file.write_text(example("pytest"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs", str(test_file)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "1 passed" in out or "1 skipped" in out, out[-3000:]
