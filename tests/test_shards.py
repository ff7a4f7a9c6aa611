"""--shard I/N and auto/N, and `burstq merge` (input order, exactly once checked)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from burstcli.config import Shard
from burstcli.errors import UsageError
from burstcli.files.journal import sidecar_of
from burstcli.files.reader import FileSource

from .conftest import read_jsonl, run_args, run_cli, write_jsonl


def test_shard_parse() -> None:
    assert Shard.parse("2/4") == Shard(2, 4)
    assert Shard.parse("auto/4", {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    assert str(Shard(0, 3)) == "0/3"
    for bad in ("4/4", "-1/4", "1", "a/4", "1/0", "1/x"):
        with pytest.raises(UsageError):
            Shard.parse(bad, {})
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        Shard.parse("auto/4", {})
    with pytest.raises(UsageError, match="0 to 3"):
        Shard.parse("auto/4", {"JOB_COMPLETION_INDEX": "4"})


def test_shards_split_by_line_and_catch_duplicates_across_shards(tmp_path: Path) -> None:
    lines: list[dict[str, object] | str] = [
        {"id": "a", "input": "x"},  # 1 -> shard 0
        {"id": "b", "input": "x"},  # 2 -> shard 1
        "",  # 3 blank: nobody's record
        {"id": "a", "input": "dup"},  # 4 -> shard 1, duplicate of line 1 (shard 0's)
        "{not json",  # 5 -> shard 0, invalid
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    seen: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(2):
        src = FileSource(inp, "m", shard=Shard(i, 2))
        invalid: list[int] = []
        src.scan(None, lambda bad, invalid=invalid: invalid.append(bad.line))
        seen[i] = ([r.line for r in src.requests()], invalid)
    assert seen[0] == ([1], [5])
    assert seen[1] == ([2], [4])  # the duplicate is caught though line 1 is not this shard's


@pytest.mark.e2e
def test_shards_run_merge_stats_and_retry_failed(tmp_path: Path, server) -> None:
    n = 30
    srv = server(latency=0.005)
    rows: list[dict[str, object] | str] = [
        {"id": f"r{i}", "input": f"say {i}" + (" [[mock:400*1]]" if i in (4, 17) else "")}
        for i in range(n)
    ]
    rows.insert(10, "")  # a blank line keeps its number and gets no record
    rows.insert(20, "{broken")  # an invalid line still gets exactly one record
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    outs = [tmp_path / f"out-{i}.jsonl" for i in range(3)]
    for i, out in enumerate(outs):
        env = {"JOB_COMPLETION_INDEX": str(i)}
        res = run_cli(run_args(srv, inp, out, "--shard", "auto/3"), env=env)
        assert res.exit_code == 1, res.output  # the 400s fail once
        assert {(r["line"] - 1) % 3 for r in read_jsonl(out)} == {i}
        assert sidecar_of(out)["shaping"]["shard"] == f"{i}/3"
    # Each shard resumes on its own: rerunning one sends nothing.
    before = srv.stats()["requests_total"]
    assert run_cli(run_args(srv, inp, outs[1], "--shard", "1/3")).exit_code in (0, 1)
    assert srv.stats()["requests_total"] == before
    # A shard's output is refused for another shard.
    res = run_cli(run_args(srv, inp, outs[1], "--shard", "2/3"))
    assert res.exit_code == 2 and "shard" in res.output

    # stats reads the shard outputs together.
    res = run_cli(["stats", *map(str, outs), "--json"])
    figures = orjson.loads(res.stdout)
    assert figures["records"] == n + 1 and figures["status"]["failed"] == 3

    merged = tmp_path / "out.jsonl"
    res = run_cli(["merge", *map(str, reversed(outs)), "-o", str(merged)])
    assert res.exit_code == 1, res.output  # failed records inside: exit 1, as run would
    recs = read_jsonl(merged)
    assert [r["line"] for r in recs] == sorted(r["line"] for r in recs)  # input order
    assert len(recs) == n + 1 and len({r["line"] for r in recs}) == n + 1
    assert "merged 3 outputs" in res.output and "3 failed" in res.output

    # The merged file is an unsharded run's output: a rerun sends nothing, --retry-failed
    # sends only the failed ones (the invalid line fails again without a call).
    before = srv.stats()["requests_total"]
    assert run_cli(run_args(srv, inp, merged)).exit_code == 1
    assert srv.stats()["requests_total"] == before
    res = run_cli(run_args(srv, inp, merged, "--retry-failed"))
    assert res.exit_code == 1, res.output
    assert srv.stats()["requests_total"] == before + 2
    recs = read_jsonl(merged)
    assert len(recs) == n + 1
    assert [r["line"] for r in recs if r["status"] == "failed"] == [21]  # "{broken"


def test_merge_refuses_missing_and_duplicate_records(tmp_path: Path, server) -> None:
    srv = server(latency=0.0)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": "x"} for i in range(9)])
    outs = [tmp_path / f"o{i}.jsonl" for i in range(3)]
    for i, out in enumerate(outs):
        assert run_cli(run_args(srv, inp, out, "--shard", f"{i}/3")).exit_code == 0
    dest = tmp_path / "m.jsonl"

    res = run_cli(["merge", str(outs[0]), str(outs[2]), "-o", str(dest)])
    assert res.exit_code == 2 and "3 lines" in res.output and "1/3" in res.output
    assert not dest.exists()

    with outs[2].open("ab") as f:  # a record of shard 2 repeated
        f.write(outs[2].read_bytes().splitlines(keepends=True)[0])
    res = run_cli(["merge", *map(str, outs), "-o", str(dest)])
    assert res.exit_code == 2 and "more than one record" in res.output

    foreign = tmp_path / "x.jsonl"
    foreign.write_text("mine\n")
    res = run_cli(["merge", str(outs[0]), "-o", str(foreign)])
    assert res.exit_code == 2 and foreign.read_text() == "mine\n"

    moved = tmp_path / "elsewhere.jsonl"
    inp.rename(moved)
    res = run_cli(["merge", str(outs[0]), str(outs[1]), "-o", str(dest)])
    assert res.exit_code == 2 and "--input" in res.output
