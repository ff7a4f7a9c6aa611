"""files/skim.py: the resume shortcuts give exactly what the per-line paths they bypass give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.files import journal, reader, skim
from burstcli.files.journal import ResumeState, _burstq_shape, _scan
from burstcli.files.reader import Done, FileSource
from burstcli.models import InvalidLine


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skim, "BLOCK", 300)  # many blocks from a few lines


def record(line: int, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": f"r{line}",
        "line": line,
        "status": "completed",
        "output": "ok",
        "model": "m",
        "tokens_used": 3,
        "cost_usd": 0.1 * line,
        "error": None,
        "metadata": None,
        "finished_at": "2026-11-27T10:00:00.123Z",
    }
    rec.update(kw)
    return rec


def scan_output(path: Path, use_skim: bool) -> tuple[list[int], int, int, float]:
    state = ResumeState()
    _scan(path, state, False, _burstq_shape(state), path.stat().st_size, skim=use_skim)
    lines = [n for n in range(0, 200) if n in state.done]
    assert state.done.count == len(lines)
    return lines, state.completed, state.failed, state.cost_usd


def test_records_skim_matches_the_json_parse(tmp_path: Path) -> None:
    recs = [record(n) for n in range(1, 60)]
    recs[3] = record(4, status="failed", cost_usd=None, error={"type": "x", "message": "m"})
    recs[7] = record(8, request_id='quo"te')  # an escaped id: that block per line
    recs[9] = record(10, metadata={"cost_usd": 5})  # a nested cost_usd: per line
    recs[12] = record(13, request_id=None, status="failed", cost_usd=None)
    recs[20] = record(21, output="界 \n }\n", cost_usd=1e-7)
    recs[30] = record(31, cost_usd=0)
    recs[33] = record(34, status="cancelled")  # not failed, to both paths
    recs.append(record(5))  # the same line twice (counted once as done)
    lines = [orjson.dumps(r) for r in recs]
    lines.insert(40, b"")  # a blank line
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"\n".join(lines) + b"\n")
    calls = 0
    real = skim.records

    def counting(*a: Any) -> Any:
        nonlocal calls
        got = real(*a)
        calls += got is not None
        return got

    journal.records = counting  # type: ignore[assignment]
    try:
        fast = scan_output(out, True)
    finally:
        journal.records = real  # type: ignore[assignment]
    assert calls > 3  # the shortcut took most blocks
    assert fast == scan_output(out, False)  # the same lines, counts and float cost
    assert fast[2] == 2


def test_a_foreign_line_is_refused_whichever_path(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    body = [orjson.dumps(record(n)) for n in range(1, 30)]
    body[20] = b'{"request_id":"r21","line":21,"status":"completed","output":'  # no end
    out.write_bytes(b"\n".join(body) + b"\n")
    for use in (True, False):
        with pytest.raises(journal.OutputError, match=f"{out}:21: not a burstq record"):
            scan_output(out, use)


def scan_input(path: Path, done: set[int], use_skim: bool) -> tuple[Any, ...]:
    d = Done()
    for n in done:
        d.add(n)
    invalid: list[InvalidLine] = []
    with FileSource(path, "m") as src:
        src.scan(d, invalid.append, skim=use_skim)
        sent = [(r.line, r.id) for r in src.requests()]
        return (
            src.total,
            src.pending,
            src.done,
            src.invalid,
            bytes(src._prio),
            [(i.line, i.id, i.message) for i in invalid],
            sent,
        )


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def native(n: int, rid: Any = None) -> bytes:
    return orjson.dumps({"id": f"r{n}" if rid is None else rid, "input": f"say {n}"})


CASES = {
    # a done line's id reused by a later pending line: that one is the duplicate
    "done before pending": ({10: native(10, "dup"), 95: native(95, "dup")}, set(range(1, 90))),
    # the pending one first: it is valid, the done one is not checked
    "pending before done": ({5: native(5, "dup"), 60: native(60, "dup")}, set(range(6, 100))),
    "int ids": ({30: native(30, 7), 97: native(97, "7")}, set(range(1, 95))),
    "escaped key": (
        {20: b'{"id": "r20", "\\u0069d": "dup", "input": "x"}', 98: native(98, "dup")},
        set(range(1, 96)),
    ),
    "metadata id": (
        {25: orjson.dumps({"id": "a", "input": "x", "metadata": {"id": "b"}}), 99: native(99, "a")},
        set(range(1, 96)),
    ),
    "batch lines": (
        {
            40: orjson.dumps(
                {
                    "custom_id": "dup",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "x"}]},
                }
            ),
            96: native(96, "dup"),
        },
        set(range(1, 95)),
    ),
    "no duplicates": ({}, set(range(1, 90)) - {33, 57}),
    "blank and bom": ({1: b"\xef\xbb\xbf" + native(1), 50: b"", 70: b"   "}, set(range(1, 98))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_input_skim_matches_the_exact_scan(tmp_path: Path, name: str, monkeypatch) -> None:
    special, done = CASES[name]
    lines = [special.get(n, native(n)) for n in range(1, 101)]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    calls = 0
    real = reader.line_id

    def counting(raw: bytes, line: int) -> str | None:
        nonlocal calls
        calls += 1
        return real(raw, line)

    monkeypatch.setattr(reader, "line_id", counting)
    fast = scan_input(inp, done, True)
    skimmed = calls
    calls = 0
    exact = scan_input(inp, done, False)
    assert fast == exact
    if name in ("no duplicates", "blank and bom"):
        assert skimmed < calls / 2  # the blocks of done lines were skipped, not parsed
    if name == "done before pending":
        assert exact[5] == [(95, "dup", "id: duplicate id 'dup'")]
