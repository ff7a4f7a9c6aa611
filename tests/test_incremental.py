"""Issue 15: incremental reruns after INPUT or the request options changed, end to end.

Every run talks HTTP to the mock server on loopback; its per-prompt counters prove which
requests were sent, and how often.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.files.fingerprint import digest
from burstcli.files.journal import sidecar_path
from burstcli.mock.server import ThreadedMockServer

from .conftest import read_jsonl, run_args, run_cli, write_jsonl
from .test_resume import subprocess_env

pytestmark = pytest.mark.e2e


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "input": f"question {i}"} for i in range(n)]


def check_one_per_line(out: Path, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OUTPUT holds exactly one record per current line, each answering that line."""
    recs = read_jsonl(out)
    by_line = {r["line"]: r for r in recs}
    assert len(recs) == len(by_line) == len(current), [r["line"] for r in recs]
    for n, row in enumerate(current, start=1):
        rec = by_line[n]
        assert rec["request_id"] == row.get("id", f"line-{n}")
        assert rec["status"] == "completed"
        assert rec["output"] == "echo: " + row["input"]
        assert (
            rec["fingerprint"]
            == digest(
                "chat", row.get("model", "gpt-4o-mini"), {"messages": [row_message(row)]}
            ).hex()
        )
    return recs


def row_message(row: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": row["input"]}


def sent(srv: ThreadedMockServer) -> dict[str, int]:
    stats = srv.stats()
    return dict(stats["completed_by_prompt"])


def test_edited_appended_deleted_reordered_sends_only_new_and_changed(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    first = rows(30)
    write_jsonl(inp, first)
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    before = {r["request_id"]: r for r in read_jsonl(out)}
    srv.reset_stats()

    current = [dict(r) for r in first]
    current[4]["input"] = "question 4, edited"  # edited
    current[9]["input"] = "question 9, edited"
    del current[20:23]  # deleted: r20, r21, r22
    del current[0]  # deleted at the top: every later line moves up one
    current.reverse()  # reordered
    current.insert(7, {"id": "new1", "input": "brand new 1"})  # inserted
    current.append({"id": "new2", "input": "brand new 2"})  # appended
    write_jsonl(inp, current)

    res = run_cli(run_args(srv, inp, out, "--progress", "plain"))
    assert res.exit_code == 0, res.output
    # 30 - 4 deleted - 2 edited = 24 kept; 4 deleted + 2 edited dropped; 2 edited + 2 new sent.
    assert "kept 24, dropped 6, to send 4" in res.output
    assert sent(srv) == {
        "question 4, edited": 1,
        "question 9, edited": 1,
        "brand new 1": 1,
        "brand new 2": 1,
    }
    recs = check_one_per_line(out, current)
    for rec in recs:  # kept records keep their answers, cost and timings
        old = before.get(rec["request_id"])
        if old is not None and old["output"] == rec["output"]:
            for key in ("finished_at", "latency_ms", "cost_usd", "usage", "attempts"):
                assert rec[key] == old[key]
    # The rewrite put the kept records in input order, then the new answers.
    kept_lines = [r["line"] for r in recs[:24]]
    assert kept_lines == sorted(kept_lines)

    # Done: a rerun is a plain resume that sends nothing and keeps the file as it is.
    srv.reset_stats()
    data = out.read_bytes()
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 0
    assert srv.stats()["requests_total"] == 0
    assert out.read_bytes() == data


def test_identical_requests_on_several_lines_need_a_record_each(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # No ids: they are derived from line numbers, so moving lines changes every id.
    same = {"input": "same question"}
    write_jsonl(inp, [same, {"input": "other"}, same])
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    assert sent(srv) == {"same question": 2, "other": 1}
    srv.reset_stats()

    current = [{"input": "top"}, same, same, same, {"input": "other"}]
    write_jsonl(inp, current)
    res = run_cli(run_args(srv, inp, out, "--progress", "plain"))
    assert res.exit_code == 0, res.output
    assert "kept 3, dropped 0, to send 2" in res.output
    assert sent(srv) == {"same question": 1, "top": 1}  # two records serve two of three
    check_one_per_line(out, current)
    srv.reset_stats()

    current = [same, {"input": "other"}]  # two of the three identical lines deleted
    write_jsonl(inp, current)
    res = run_cli(run_args(srv, inp, out, "--progress", "plain"))
    assert "kept 2, dropped 3, to send 0" in res.output
    assert srv.stats()["requests_total"] == 0
    check_one_per_line(out, current)


def test_dry_run_prints_the_plan_and_changes_nothing(server: Any, tmp_path: Path) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(10))
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    srv.reset_stats()
    write_jsonl(inp, [*rows(8), {"id": "x", "input": "added"}])
    data, side = out.read_bytes(), sidecar_path(out).read_bytes()
    res = run_cli(run_args(srv, inp, out, "--dry-run"))
    assert res.exit_code == 0
    assert "kept 8, dropped 2, to send 1" in res.output
    assert srv.stats()["requests_total"] == 0
    assert out.read_bytes() == data and sidecar_path(out).read_bytes() == side
    # Without any API key at all: it calls nothing.
    res = run_cli(["run", str(inp), "-o", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "to send 1" in res.output


def test_changed_model_resends_only_the_lines_it_shapes(server: Any, tmp_path: Path) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {"id": "a", "input": "uses the default"},
        {"id": "b", "input": "names its model", "model": "gpt-4o"},
    ]
    write_jsonl(inp, lines)
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    srv.reset_stats()
    res = run_cli(run_args(srv, inp, out, "--model", "gpt-4.1-mini", "--progress", "plain"))
    assert res.exit_code == 0, res.output
    assert "kept 1, dropped 1, to send 1" in res.output
    assert sent(srv) == {"uses the default": 1}
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert recs["a"]["model"] == "gpt-4.1-mini" and recs["b"]["model"] == "gpt-4o"


def test_retry_failed_and_invalid_lines_in_an_incremental_rerun(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # The mock directive fails this prompt with a 400 (no retry): a failed record.
    write_jsonl(inp, [*rows(3), {"id": "bad", "input": "[[mock:400]] nope"}, "not json"])
    assert run_cli(run_args(srv, inp, out)).exit_code == 1
    srv.reset_stats()
    write_jsonl(inp, [*rows(4), {"id": "bad", "input": "[[mock:400]] nope"}, "not json"])
    res = run_cli(run_args(srv, inp, out, "--progress", "plain"))
    # The failed record is kept (rerun does not redo failures), the invalid line recorded again.
    assert "kept 4, dropped 1, to send 1 (1 invalid lines recorded, not sent)" in res.output
    assert sent(srv) == {"question 3": 1}
    srv.reset_stats()
    write_jsonl(inp, [*rows(5), {"id": "bad", "input": "[[mock:400]] nope"}, "not json"])
    res = run_cli(run_args(srv, inp, out, "--retry-failed", "--progress", "plain"))
    assert "kept 4, dropped 2, to send 2" in res.output
    stats = srv.stats()
    assert stats["attempts_by_prompt"] == {"question 4": 1, "[[mock:400]] nope": 1}
    recs = read_jsonl(out)
    assert sorted(r["line"] for r in recs) == list(range(1, 8))


# -- kill -9 during the rewrite ---------------------------------------------------------------


def _cli(srv: ThreadedMockServer, inp: Path, out: Path, kill_at: str | None) -> int:
    env = subprocess_env()
    if kill_at:
        env["_BURSTQ_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "burstcli.cli", *run_args(srv, inp, out)]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode


@pytest.mark.parametrize(
    "kill_at", ["rewrite-mid", "rewrite-before-rename", "rewrite-after-rename"]
)
def test_kill_9_during_the_rewrite_then_rerun_is_exact(
    server: Any, tmp_path: Path, kill_at: str
) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(40))
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    old = out.read_bytes()
    srv.reset_stats()

    current = rows(40)[5:] + [{"id": "n", "input": "new line"}]
    current[10]["input"] = "changed"
    write_jsonl(inp, current)
    assert _cli(srv, inp, out, kill_at) == -9
    assert srv.stats()["requests_total"] == 0  # killed before anything was sent
    data = out.read_bytes()
    if kill_at == "rewrite-after-rename":
        # The new OUTPUT, whole: 34 kept records, renumbered, and nothing else.
        recs = read_jsonl(out)
        assert len(recs) == 34 and len(data.splitlines()) == 34
        assert sorted(r["line"] for r in recs) == [n for n in range(1, 36) if n != 11]
    else:
        assert data == old  # the old OUTPUT, untouched

    assert _cli(srv, inp, out, None) == 0
    assert sent(srv) == {"changed": 1, "new line": 1}
    check_one_per_line(out, current)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) or kill_at != (
        "rewrite-after-rename"
    )


def finished_output(inp: Path, out: Path) -> None:
    """OUTPUT and sidecar as a finished `burstq run inp -o out` leaves them (records built by
    the same code the engine uses), without paying for thousands of mock round trips."""
    from burstcli.config import RunConfig
    from burstcli.files import fingerprint
    from burstcli.files.journal import write_sidecar
    from burstcli.files.reader import file_digest, parse_line
    from burstcli.models import Request, Result
    from burstcli.run import shaping

    cfg = RunConfig(str(inp), str(out))
    salt = fingerprint.salt(shaping(cfg))
    with inp.open("rb") as f, out.open("wb") as o:
        for n, raw in enumerate(f, start=1):
            req = parse_line(raw, n, "gpt-4o-mini")
            assert isinstance(req, Request)
            text = req.body["messages"][0]["content"]
            rec = Result(
                req.id,
                n,
                "completed",
                req.model,
                "gpt-4o-mini",
                "echo: " + text,
                latency_ms=12.5,
                attempts=1,
                cost_usd=1e-6,
                finished_at="2026-11-27T10:00:00Z",
                fingerprint=fingerprint.of(req),
                line_digest=f"{fingerprint.line_digest(salt, raw):016x}",
            ).record()
            o.write(orjson.dumps(rec) + b"\n")
    write_sidecar(
        out, {"input": str(inp), "shaping": shaping(cfg), "input_sha256": file_digest(inp)}
    )


def test_kill_9_at_random_instants_of_a_large_rewrite(server: Any, tmp_path: Path) -> None:
    """SIGKILL at arbitrary moments while a 50,000-record OUTPUT is paired and rewritten:
    every state left is the old or the new file, and the final rerun is exact."""
    import random
    import time

    srv = server()
    n = 50_000
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    first = rows(n)
    write_jsonl(inp, first)
    finished_output(inp, out)
    old = out.read_bytes()
    current = first[1:]  # every line moves: every kept record is patched
    current[100]["input"] = "changed"
    write_jsonl(inp, current)
    env = subprocess_env()
    cmd = [sys.executable, "-m", "burstcli.cli", *run_args(srv, inp, out)]
    rng = random.Random(15)
    states = {"old": 0, "new": 0}
    for _ in range(5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.6))
        proc.kill()
        proc.wait(timeout=30)
        data = out.read_bytes()
        if data == old:
            states["old"] += 1
            continue
        states["new"] += 1  # then the new file: whole records, one per kept line at most
        got = [orjson.loads(x)["line"] for x in data.splitlines()]
        assert len(set(got)) == len(got) and set(got) <= set(range(1, n))
        assert len(got) >= n - 2
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    # No kept answer was ever bought again; the one changed request may have been sent more
    # than once only if a kill caught it in flight (its answer unrecorded: the documented loss).
    counts = sent(srv)
    assert set(counts) == {"changed"}, (counts, states)
    recs = read_jsonl(out)
    assert len(recs) == n - 1 and {r["line"] for r in recs} == set(range(1, n))
    by_line = {r["line"]: r for r in recs}
    assert by_line[1]["request_id"] == "r1" and by_line[101]["output"] == "echo: changed"
    assert by_line[n - 1]["output"] == f"echo: question {n - 1}"


def test_data_rows_edited_and_added_send_only_those(server: Any, tmp_path: Path) -> None:
    # Issue 14's rows become ordinary Requests: their fingerprint is the rendered request.
    srv = server()
    inp, out = tmp_path / "rows.csv", tmp_path / "out.jsonl"
    inp.write_text("id,text\nr1,good\nr2,bad\nr3,fine\n")
    args = run_args(srv, inp, out, "--prompt", "Label: {{ text }}", "--progress", "plain")
    assert run_cli(args).exit_code == 0
    srv.reset_stats()
    inp.write_text("id,text\nr1,good\nr2,worse\nr3,fine\nr4,new\n")
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    assert "kept 2, dropped 1, to send 2" in res.output
    assert sent(srv) == {"Label: worse": 1, "Label: new": 1}
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert sorted(recs) == ["r1", "r2", "r3", "r4"]
    assert [recs[k]["line"] for k in ("r1", "r2", "r3", "r4")] == [2, 3, 4, 5]


def test_an_output_with_a_foreign_line_is_not_rewritten(server: Any, tmp_path: Path) -> None:
    srv = server()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(3))
    assert run_cli(run_args(srv, inp, out)).exit_code == 0
    with out.open("ab") as f:
        f.write(b'{"hello": "not a record"}\n')
    data = out.read_bytes()
    write_jsonl(inp, rows(4))
    res = run_cli(run_args(srv, inp, out))
    assert res.exit_code == 2 and "not a burstq record" in res.output
    assert out.read_bytes() == data
