"""Loading a result file one run at a time (results/decode.py) and the bulk check of a
well-formed run (results/fast_run.py) are optimisations: they must give what the plain
path gives.  Checked against the plain path itself: ``json.loads`` for every example
file and for every cut and every one-character deletion of a small document (same value,
or the same error at the same place), and ``validate._run`` for every example run and for
each field of a run broken in turn (the fast path refuses whatever ``_run`` refuses and
builds the same record for the rest)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmharness.bench.scale import synthetic_result
from kvmharness.results import validate
from kvmharness.results.decode import loads_streaming
from kvmharness.results.fast_run import fast_run, text_is_plain
from kvmharness.results.model import FORMAT, RUN_KEYS
from kvmharness.results.store import load_result
from kvmharness.results.validate import ResultFormatError

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))


def _keep(fields: dict[str, Any]) -> Callable[[Any, int], Any]:
    return lambda element, position: element


def _outcome(parse: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", parse()
    except json.JSONDecodeError as e:
        return "error", (e.msg, e.pos)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_streaming_decode_gives_json_loads_value(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert loads_streaming(text, "runs", _keep) == json.loads(text)


SMALL = json.dumps({"format": FORMAT, "runs": [{"a": [1, 2.5]}, {}, "x"], "n": None,
                    "s": "\u00b5s"}, indent=1)


@pytest.mark.parametrize("mutate", ["cut", "delete"])
def test_streaming_decode_errs_like_json_loads_at_every_position(mutate: str) -> None:
    texts = ([SMALL[:n] for n in range(len(SMALL))] if mutate == "cut"
             else [SMALL[:n] + SMALL[n + 1:] for n in range(len(SMALL))])
    differing = [t for t in texts
                 if _outcome(lambda t=t: loads_streaming(t, "runs", _keep))
                 != _outcome(lambda t=t: json.loads(t))]
    assert differing == []
    assert sum(_outcome(lambda t=t: json.loads(t))[0] == "error" for t in texts) > len(texts) // 4


def test_runs_are_converted_one_at_a_time_as_they_are_parsed() -> None:
    seen: list[tuple[int, Any]] = []

    def converter(fields: dict[str, Any]) -> Callable[[Any, int], Any]:
        assert fields == {"format": FORMAT}  # chosen from the fields before the runs

        def convert(element: Any, position: int) -> Any:
            seen.append((position, element))
            return ("converted", position)
        return convert

    document = loads_streaming(SMALL, "runs", converter)
    assert document["runs"] == [("converted", 0), ("converted", 1), ("converted", 2)]
    assert seen == list(enumerate(json.loads(SMALL)["runs"]))
    # A converter that declines keeps the raw elements.
    assert loads_streaming(SMALL, "runs", lambda fields: None) == json.loads(SMALL)


def _raw_runs() -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for path in EXAMPLE_FILES:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") == FORMAT:
            runs += [(f"{path.relative_to(EXAMPLES)}[{i}]", r)
                     for i, r in enumerate(raw["runs"])]
    return runs


def _checked(raw: Any) -> Any:
    try:
        return validate.check_run("t", copy.deepcopy(raw), "runs[0]")
    except ResultFormatError:
        return None


def test_fast_path_builds_the_checked_record_for_every_example_run() -> None:
    runs = _raw_runs()
    fast = [(where, fast_run(copy.deepcopy(raw)), _checked(raw)) for where, raw in runs]
    assert [where for where, f, c in fast if f is not None and f != c] == []
    # Most example runs take the fast path: otherwise this test would check nothing.
    assert sum(f is not None for _, f, _ in fast) >= 0.9 * len(runs) > 50


_BAD_VALUES = (None, True, -1, 1.5, 10**400, "x", "\x1b", [], {}, [None], [True],
               {"k": None}, {"k": -1}, {"k": "x"}, {"k": [1, "x"]}, {"k": 1e308},
               [1e308, 1e308])
_PATHS = [(key,) for key in RUN_KEYS] + [
    ("samples", "total"), ("samples", "total", "values"), ("samples", "total", "unit"),
    ("samples", "total", "direction"), ("warmups", "total"), ("kvm_stats", "hammer"),
    ("kvm_stats", "hammer", "vcpu.exits"), ("tracepoints", "hammer", "mark_mmio_spte"),
    ("effective", "zap_path"), ("effective", "timeline"), ("effective", "timeline", "pass_ms"),
    ("variant", "zap"), ("noise", "wall_s"), ("kvm_stat_types", "vcpu.exits")]


def _set(run: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    run = copy.deepcopy(run)
    target = run
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = copy.deepcopy(value)
    return run


def test_fast_path_refuses_what_the_checked_path_refuses_field_by_field() -> None:
    run = synthetic_result(2)["runs"][0]
    run["kvm_stat_types"] = {"vcpu.exits": "cumulative"}
    assert fast_run(copy.deepcopy(run)) == _checked(run) is not None
    disagreements, refused = [], 0
    for path in _PATHS:
        for bad in (*_BAD_VALUES, "delete"):
            broken = _set(run, path, bad)
            if bad == "delete":
                target = broken
                for key in path[:-1]:
                    target = target[key]
                del target[path[-1]]
            # As the loader does: the fast path only for a text with nothing to escape.
            plain = text_is_plain(json.dumps(broken))
            checked, fast = _checked(broken), fast_run(copy.deepcopy(broken)) if plain else None
            refused += checked is None
            if fast is not None and fast != checked:
                disagreements.append((path, bad))
    assert disagreements == []
    assert refused > 200  # the cases do break runs


@pytest.mark.parametrize("char", [chr(c) for c in (*range(0x20), *range(0x7f, 0xa0))])
def test_any_control_character_takes_the_escaping_path(char: str) -> None:
    for ascii_only in (True, False):
        text = json.dumps({"label": f"a{char}b"}, ensure_ascii=ascii_only)
        assert not text_is_plain(text), (repr(char), ascii_only, text)


def test_plain_text_with_non_ascii_and_escaped_quotes_takes_the_fast_path() -> None:
    for value in ("\u00b5s", "caf\u00e9", 'a "quoted" b', "back\\slash", "\u2028"):
        for ascii_only in (True, False):
            assert text_is_plain(json.dumps({"label": value}, ensure_ascii=ascii_only))


def test_a_file_with_its_runs_before_its_format_loads_the_same(tmp_path: Path) -> None:
    doc = synthetic_result(4)
    usual, reordered = tmp_path / "usual.json", tmp_path / "reordered.json"
    usual.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    reordered.write_text(json.dumps({"runs": doc["runs"], **doc}, indent=2), encoding="utf-8")
    first, second = load_result(usual), load_result(reordered)
    assert first.runs == second.runs and len(first.runs) == 4


def test_a_label_with_an_escape_sequence_is_escaped_in_every_run(tmp_path: Path) -> None:
    doc = synthetic_result(2)
    doc["runs"][1]["warnings"] = ["bad \x1b[2J screen"]
    path = tmp_path / "escape.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_result(path).runs[1].warnings == ["bad \\x1b[2J screen"]
