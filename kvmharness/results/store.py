"""Reading and writing result files.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target: a reader (or a Ctrl-C, or a crash) sees the previous complete file or the new
complete file, never half of one.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from kvmharness.results.model import ResultFile
from kvmharness.results.validate import ResultFormatError, parse_result

DEFAULT_DIR = Path("results")


def atomic_write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: NaN/Infinity are not JSON and other tools would reject the file.
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # mkstemp makes the file 0600; results are meant to be shared and compared.
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a Ctrl-C during the write must not leave the temp file behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_result(path: Path, result: ResultFile) -> None:
    atomic_write_json(path, result.to_json())


def load_result(path: Path | str) -> ResultFile:
    """Load and validate; raises ``ResultFormatError`` with the file name in the message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ResultFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ResultFormatError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not text.strip():
        raise ResultFormatError(f"{path}: empty file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        # Every complete result document ends with its closing brace; an interrupted copy
        # or a full disk usually leaves a file that does not.
        hint = "" if text.rstrip().endswith("}") else " (truncated?)"
        raise ResultFormatError(
            f"{path}: not valid JSON{hint}: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        # Valid JSON that Python will not load: an integer of over 4300 digits, nesting
        # deeper than the recursion limit.
        raise ResultFormatError(f"{path}: not a usable JSON document: {e}") from None
    return parse_result(raw, str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def default_result_path(out_dir: Path, scenario: str, label: str,
                        when: datetime.datetime | None = None) -> Path:
    """results/<scenario>-<label>-<UTC timestamp>.json, never an existing file's name."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    stem = f"{_slug(scenario)}-{_slug(label)}-{when.strftime('%Y%m%dT%H%M%SZ')}"
    candidate = out_dir / f"{stem}.json"
    n = 1
    while candidate.exists():
        n += 1
        candidate = out_dir / f"{stem}-{n}.json"
    return candidate
