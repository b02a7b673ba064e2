"""Reading and writing result files.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target: a reader (or a Ctrl-C, or a crash) sees the previous complete file or the new
complete file, never half of one.

A result file is created exclusively (``create_result``): the complete first version is
hard-linked to its name, which fails if the name exists, so two runs started in the same
second with the same label never share a file; the later one gets ``-2``, ``-3``, ...
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from kvmharness.results import decode
from kvmharness.results.fast_run import run_converter
from kvmharness.results.model import ResultFile
from kvmharness.results.validate import ResultFormatError, parse_result

DEFAULT_DIR = Path("results")
# "<scenario>-<label>-<UTC timestamp>-N": the name default_result_path or a collision gave.
_NUMBERED = re.compile(r"(.*\d{8}T\d{6}Z)-(\d+)\Z")


def _write_temp(path: Path, data: Any) -> str:
    """A complete, fsynced copy of ``data`` in a temp file next to ``path``; its name."""
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
    except BaseException:
        # BaseException: a Ctrl-C during the write must not leave the temp file behind.
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def atomic_write_json(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path)


def create_json_exclusive(path: Path, data: Any, *, max_tries: int = 1000) -> Path:
    """Write ``data`` to ``path`` if no file has that name, else to ``<stem>-2<suffix>``,
    ``-3``, ...: never over an existing file, even one another process creates at the same
    moment.  Returns the name used.  Later versions go through ``atomic_write_json``.
    A ``path`` that already ends in ``-N`` (a ``default_result_path`` guess) counts on."""
    path = Path(path)
    numbered = _NUMBERED.match(path.stem)
    stem, first = (numbered.group(1), int(numbered.group(2))) if numbered else (path.stem, 1)
    tmp = _write_temp(path, data)
    try:
        for n in range(first, first + max_tries):
            candidate = path if n == first else path.with_name(f"{stem}-{n}{path.suffix}")
            try:
                os.link(tmp, candidate)  # atomic, fails if the name exists; content complete
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # A file system without hard links: claim the name with O_EXCL, then
                # rename the complete copy over it.
                try:
                    os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    continue
                os.replace(tmp, candidate)
            _fsync_dir(candidate)
            return candidate
        raise FileExistsError(errno.EEXIST, f"{max_tries} result files named like this "
                              "already exist", str(path))
    finally:
        _unlink_quietly(tmp)


def _fsync_dir(path: Path) -> None:
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
    """Replace ``path`` (a file ``create_result`` made) with the new version of ``result``."""
    atomic_write_json(path, result.to_json())


def create_result(path: Path, result: ResultFile) -> Path:
    """Create a new result file at ``path`` or, if that name is taken, at ``path`` with
    ``-2``, ``-3``... added; returns the name used."""
    return create_json_exclusive(path, result.to_json())


# Larger files are refused unless the caller raises the limit (``--max-size``): a loaded
# file costs about twice its size in memory (its text while it is read, then its records:
# a 180 MB file of 20k runs held 360 MiB).
DEFAULT_MAX_BYTES = 256 << 20
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is, for the message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def size_text(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_result_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The text of a result file: a regular file (a FIFO, device or socket is refused
    by type before it is opened, and again by the opened descriptor, so neither a pipe
    with no writer nor /dev/zero can hang or fill memory), at most ``max_bytes``
    (0: no limit).  Raises ``ResultFormatError``."""
    limit_hint = ("give --max-size with a larger size (like 1G), or 0 for no limit")
    try:
        kind = _not_regular(os.stat(path).st_mode)
        if kind is not None:
            raise ResultFormatError(f"{path}: is {kind}, not a result file")
        # O_NONBLOCK: should the name be swapped for a FIFO after the stat, the open does
        # not wait for a writer; the fstat below then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ResultFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        kind = _not_regular(info.st_mode)
        if kind is not None:
            raise ResultFormatError(f"{path}: is {kind}, not a result file")
        if max_bytes and info.st_size > max_bytes:
            raise ResultFormatError(
                f"{path}: {size_text(info.st_size)}, more than the {size_text(max_bytes)} "
                f"limit for a result file: {limit_hint}")
        try:
            data = f.read(max_bytes + 1) if max_bytes else f.read()
        except OSError as e:
            raise ResultFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    if max_bytes and len(data) > max_bytes:  # grew while being read
        raise ResultFormatError(f"{path}: more than the {size_text(max_bytes)} limit for a "
                                f"result file: {limit_hint}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultFormatError(f"{path}: not UTF-8 text ({e.reason})") from None


def load_result(path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> ResultFile:
    """Load and validate; raises ``ResultFormatError`` with the file name in the message.
    ``max_bytes``: the size limit (``read_result_text``; 0: none)."""
    path = Path(path)
    text = read_result_text(path, max_bytes)
    if not text.strip():
        raise ResultFormatError(f"{path}: empty file")
    try:
        with decode.collection_paused():
            return parse_result(decode.loads_streaming(text, "runs", run_converter(str(path), text)),
                                str(path))
    except ResultFormatError:
        raise  # a ValueError too, already naming the file and the field
    except json.JSONDecodeError as e:
        # A parser that runs out of text mid-document (an interrupted copy, a full disk)
        # fails at the very end, even when the cut happens to leave a closing brace last.
        cut = e.pos >= len(text.rstrip()) or not text.rstrip().endswith("}")
        hint = " (truncated?)" if cut else ""
        raise ResultFormatError(
            f"{path}: not valid JSON{hint}: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        # Valid JSON that Python will not load: an integer of over 4300 digits, nesting
        # deeper than the recursion limit.
        raise ResultFormatError(f"{path}: not a usable JSON document: {e}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def result_file_name(scenario: str, label: str,
                     when: datetime.datetime | None = None) -> str:
    """``<scenario>-<label>-<UTC timestamp>.json``: the name, without looking at a folder
    (a name too long for the file system is reported before any run, not raised here)."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return f"{_slug(scenario)}-{_slug(label)}-{when.strftime('%Y%m%dT%H%M%SZ')}.json"


def default_result_path(out_dir: Path, scenario: str, label: str,
                        when: datetime.datetime | None = None) -> Path:
    """results/<scenario>-<label>-<UTC timestamp>.json, never an existing file's name."""
    name = result_file_name(scenario, label, when)
    stem = name.removesuffix(".json")
    candidate = out_dir / name
    n = 1
    while candidate.exists():
        n += 1
        candidate = out_dir / f"{stem}-{n}.json"
    return candidate
