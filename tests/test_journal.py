"""journal.py: the output file as the record of what is done, torn tails, fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.errors import OutputError, ResumeMismatch
from burstcli.files.journal import (
    Journal,
    iter_records,
    open_for_resume,
    sidecar_path,
    write_sidecar,
)

FP: dict[str, Any] = {
    "input": "in.jsonl",
    "input_sha256": "a" * 64,
    "shaping": {"model": "gpt-4o-mini"},
}


def rec(line: int, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": f"r{line}",
        "line": line,
        "status": status,
        "output": "ok" if status == "completed" else None,
        "error": None if status == "completed" else {"type": "server_error"},
        **extra,
    }


def write(path: Path, *records: dict[str, Any], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def done_lines(state: Any, upto: int = 50) -> list[int]:
    return [n for n in range(upto) if n in state.done]


# -- writer --------------------------------------------------------------------------------


def test_journal_appends_whole_lines_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    j = Journal(out)
    j.write([rec(1), rec(2)])
    j.write([])
    j.close()
    j = Journal(out)  # reopened: appends, never truncates
    j.write([rec(3, "failed")])
    assert j.written == 1
    j.close()
    assert [r["line"] for r in lines_of(out)] == [1, 2, 3]
    assert out.read_bytes().endswith(b"\n")


def test_journal_to_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    j = Journal(None)
    j.write([rec(1)])
    j.close()
    assert orjson.loads(capsysbinary.readouterr().out) == rec(1)


def test_iter_records_skips_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(1), rec(2), tail=b'{"request_id": "r3", "li')
    assert [r["line"] for r in iter_records(out)] == [1, 2]


# -- resume scan ---------------------------------------------------------------------------


def test_fresh_output_writes_the_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    state = open_for_resume(out, FP)
    assert (state.records, state.repaired_bytes, done_lines(state)) == (0, 0, [])
    side = orjson.loads(sidecar_path(out).read_bytes())
    assert side == {"version": 1, **FP}
    assert sidecar_path(out).name == "out.jsonl.burstq.json"


def test_done_set_by_line_with_counts(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(3), rec(1, "failed"), rec(7), rec(12))
    state = open_for_resume(out, FP)
    assert done_lines(state) == [1, 3, 7, 12]
    assert (state.completed, state.failed, state.records) == (3, 1, 4)
    assert state.repaired_bytes == 0


def test_torn_last_line_without_newline_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    torn = b'{"request_id": "r3", "line": 3, "status": "compl'
    write(out, rec(1), rec(2), tail=torn)
    before = out.read_bytes()
    state = open_for_resume(out, FP)
    assert state.repaired_bytes == len(torn)
    assert out.read_bytes() == before[: -len(torn)]
    assert done_lines(state) == [1, 2]


def test_torn_complete_line_with_invalid_json_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    bad = b'{"request_id": "r3", "line": 3, "sta\x00\x00\n'
    write(out, rec(1), rec(2), tail=bad)
    # Without a sidecar nothing proves the garbage line is ours: refused, untouched.
    before = out.read_bytes()
    with pytest.raises(OutputError):
        open_for_resume(out, FP)
    assert out.read_bytes() == before
    write_sidecar(out, FP)  # with it (after a power loss), the line is cut
    state = open_for_resume(out, FP)
    assert state.repaired_bytes == len(bad)
    assert [r["line"] for r in lines_of(out)] == [1, 2]
    assert done_lines(state) == [1, 2]


def test_only_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"request_id": "r1", "li')
    with pytest.raises(OutputError):  # no sidecar, no complete record: not provably ours
        open_for_resume(out, FP)
    assert out.read_bytes() == b'{"request_id": "r1", "li'
    write_sidecar(out, FP)
    state = open_for_resume(out, FP)
    assert state.repaired_bytes == 24 and out.read_bytes() == b"" and state.records == 0


def test_torn_line_longer_than_the_read_window(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    torn = b'{"request_id": "r2", "line": 2, "output": "' + b"x" * 300_000
    write(out, rec(1), tail=torn)
    state = open_for_resume(out, FP)
    assert state.repaired_bytes == len(torn)
    assert lines_of(out) == [rec(1)]


def test_valid_last_record_longer_than_the_read_window_is_kept(tmp_path: Path) -> None:
    # A 16,000-character CJK output (within the 50,000-char cap) is 48 KB as UTF-8; a
    # 3,072-dimension embedding is about 60 KB. Records over 64 KiB are ordinary.
    out = tmp_path / "out.jsonl"
    big = rec(2, output="界" * 30_000)  # 90 KB as UTF-8
    write(out, rec(1), big)
    before = out.read_bytes()
    state = open_for_resume(out, FP)
    assert state.repaired_bytes == 0
    assert out.read_bytes() == before
    assert done_lines(state) == [1, 2]


def test_blank_lines_in_output_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps(rec(1)) + b"\n\n" + orjson.dumps(rec(2)) + b"\n")
    assert done_lines(open_for_resume(out, FP)) == [1, 2]


def test_foreign_lines_are_refused_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps(rec(1)) + b'\n{"hello": "world"}\n' + orjson.dumps(rec(3)) + b"\n")
    before = out.read_bytes()
    with pytest.raises(OutputError) as info:
        open_for_resume(out, FP)
    assert str(info.value).startswith(f"{out}:2: not a burstq record")
    assert "--restart" in str(info.value)
    assert out.read_bytes() == before


# -- --retry-failed ------------------------------------------------------------------------


def test_retry_failed_drops_failed_records_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(1), rec(2, "failed"), rec(3), rec(4, "failed"), rec(5))
    inode = out.stat().st_ino
    state = open_for_resume(out, FP, retry_failed=True)
    assert [r["line"] for r in lines_of(out)] == [1, 3, 5]
    assert all(r["status"] == "completed" for r in lines_of(out))
    assert done_lines(state) == [1, 3, 5]
    assert (state.completed, state.failed, state.dropped_failed) == (3, 0, 2)
    assert out.stat().st_ino != inode  # a new file renamed over the old: never half-rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.burstq.json"]


def test_retry_failed_without_failures_leaves_the_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(1), rec(2))
    inode, before = out.stat().st_ino, out.read_bytes()
    state = open_for_resume(out, FP, retry_failed=True)
    assert (out.stat().st_ino, out.read_bytes()) == (inode, before)
    assert state.dropped_failed == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.burstq.json"]


def test_retry_failed_also_repairs_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(1, "failed"), rec(2), tail=b'{"request_id": "r3"')
    state = open_for_resume(out, FP, retry_failed=True)
    assert lines_of(out) == [rec(2)]
    assert done_lines(state) == [2] and state.repaired_bytes == 19


# -- fingerprints and --restart ------------------------------------------------------------


def test_same_job_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    open_for_resume(out, FP)
    write(out, rec(1))
    assert open_for_resume(out, dict(FP)).records == 1


def test_other_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    open_for_resume(out, FP)
    write(out, rec(1))
    other = {**FP, "input_sha256": "b" * 64}
    with pytest.raises(ResumeMismatch) as info:
        open_for_resume(out, other)
    assert str(info.value) == (
        f"{out} was written from a different input (in.jsonl, since changed or replaced). "
        "Use --restart to start over, or another -o OUTPUT."
    )
    assert info.value.exit_code == 2
    assert lines_of(out) == [rec(1)]
    assert orjson.loads(sidecar_path(out).read_bytes())["input_sha256"] == "a" * 64


def test_other_shaping_is_refused_naming_the_change(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    open_for_resume(out, FP)
    write(out, rec(1))
    other = {**FP, "shaping": {"model": "gpt-4o"}}
    with pytest.raises(ResumeMismatch) as info:
        open_for_resume(out, other)
    assert str(info.value) == (
        f"{out} was written with other request options (model: 'gpt-4o-mini' -> 'gpt-4o'). "
        "Rerun with the original options to resume, or use --restart to start over."
    )


def test_restart_wipes_output_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    open_for_resume(out, FP)
    write(out, rec(1), rec(2, "failed"))
    other = {**FP, "input_sha256": "c" * 64}
    state = open_for_resume(out, other, restart=True)
    assert state.records == 0 and done_lines(state) == []
    assert not out.exists() or out.read_bytes() == b""
    assert orjson.loads(sidecar_path(out).read_bytes())["input_sha256"] == "c" * 64


def test_damaged_sidecar_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, rec(1))
    sidecar_path(out).write_bytes(b"{not json")
    state = open_for_resume(out, FP)
    assert state.records == 1
    assert orjson.loads(sidecar_path(out).read_bytes()) == {"version": 1, **FP}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
