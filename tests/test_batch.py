"""Batch API mode end to end: run_batch -> openai SDK -> HTTP on loopback -> the mock's
/v1/files and /v1/batches, with kills at the awkward instants and resumes after them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import AsyncOpenAI

from burstcli.batch.driver import BatchRun
from burstcli.batch.jobs import describe_batches
from burstcli.batch.provider import Provider
from burstcli.batch.state import batch_state_path
from burstcli.config import RunConfig
from burstcli.files.formats import to_openai_batch_line
from burstcli.mock.server import ThreadedMockServer
from burstcli.models import RunOutcome, Tally
from burstcli.money.pricing import PriceBook
from burstcli.run import run_batch

from .conftest import TEST_KEY, read_jsonl, write_jsonl

pytestmark = pytest.mark.e2e

# The settings the lead adds to RunConfig; a subclass supplies whichever are not there yet.
_BATCH_FIELDS = {"batch_size": 50_000, "completion_window": "24h", "output_format": "burstq"}
_have = {f.name for f in dataclasses.fields(RunConfig)}
BatchConfig = dataclasses.make_dataclass(
    "BatchConfig",
    [
        (k, type(v), dataclasses.field(default=v))
        for k, v in _BATCH_FIELDS.items()
        if k not in _have
    ],
    bases=(RunConfig,),
)

POLL = 0.05


class Killed(Exception):
    """Stands for kill -9 at a chosen instant: nothing after it runs."""


def cfg_for(srv: ThreadedMockServer, inp: Path, out: Path, **kw: Any) -> RunConfig:
    cfg: RunConfig = BatchConfig(
        input=str(inp),
        output=str(out),
        base_url=srv.base_url,
        api_key=TEST_KEY,
        backoff_base=0.01,
        **kw,
    )
    return cfg


async def run(cfg: RunConfig, **kw: Any) -> tuple[RunOutcome, Tally, list[str]]:
    tally = Tally()
    warnings: list[str] = []
    outcome = await run_batch(cfg, tally=tally, warn=warnings.append, poll_interval=POLL, **kw)
    return outcome, tally, warnings


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def mixed_rows() -> list[dict[str, Any]]:
    """25 requests over two models; 4 of them expire or fail in their first batch."""
    special = {
        3: " [[mock:expire*1]]",
        17: " [[mock:expire*1]]",
        5: " [[mock:batchfail*1]]",
        20: " [[mock:batchfail*1]]",
    }
    return [
        {
            "id": f"r{i}",
            "input": f"question {i}{special.get(i, '')}",
            "model": "gpt-4o" if i % 2 else "gpt-4o-mini",
        }
        for i in range(25)
    ]


def check_exactly_once(out: Path, expected_ids: set[str]) -> dict[str, dict[str, Any]]:
    recs = read_jsonl(out)
    by_id = {r["request_id"]: r for r in recs}
    assert len(recs) == len(by_id) == len(expected_ids)
    assert set(by_id) == expected_ids
    assert len({r["line"] for r in recs}) == len(recs)
    return by_id


def state_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(batch_state_path(out).read_bytes())
    return data


async def test_sharded_job_interrupted_and_resumed(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.4)
    rows: list[dict[str, Any] | str] = [*mixed_rows(), '{"id": "bad", "input": 3}']
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out, batch_size=10, max_retries=3)

    # Shards: gpt-4o-mini 13 -> 10 + 3, gpt-4o 12 -> 10 + 2. Interrupt once all four exist.
    task = asyncio.create_task(run(cfg))
    await wait_for(lambda: srv.stats()["batches_created"] == 4)
    await wait_for(lambda: sum(s["state"] == "submitted" for s in state_of(out)["shards"]) == 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r["request_id"] for r in read_jsonl(out)] == ["bad"]  # invalid lines come first
    shards = state_of(out)["shards"]
    assert sorted((s["model"], s["requests"]) for s in shards) == [
        ("gpt-4o", 2),
        ("gpt-4o", 10),
        ("gpt-4o-mini", 3),
        ("gpt-4o-mini", 10),
    ]
    assert all(s["batch_id"] and s["file_id"] for s in shards)

    outcome, tally, _ = await run(cfg)
    assert outcome.reason == "done"
    by_id = check_exactly_once(out, {f"r{i}" for i in range(25)} | {"bad"})
    assert by_id["bad"]["status"] == "failed"
    assert by_id["bad"]["error"]["type"] == "invalid_request"
    for i in range(25):
        rec = by_id[f"r{i}"]
        assert rec["status"] == "completed", rec
        assert rec["output"].startswith(f"echo: question {i}")
        assert rec["model"] == rec["model_used"] == ("gpt-4o" if i % 2 else "gpt-4o-mini")
        # Expired and failed lines were resubmitted, once, in a second round; only those.
        assert rec["attempts"] == (2 if i in (3, 5, 17, 20) else 1)
        assert rec["latency_ms"] >= 0 and rec["cost_usd"] > 0
    stats = srv.stats()
    # 4 first-round batches, then one retry batch per model: 3, 5, 17 (gpt-4o) and 20.
    assert stats["batches_created"] == 6
    assert stats["batch_lines_submitted"] == 25 + 4
    assert stats["completed_by_prompt"] == {
        f"question {i}"
        + {
            3: " [[mock:expire*1]]",
            17: " [[mock:expire*1]]",
            5: " [[mock:batchfail*1]]",
            20: " [[mock:batchfail*1]]",
        }.get(i, ""): 1
        for i in range(25)
    }
    assert tally.completed == 25 and tally.skipped == 1 and tally.in_flight == 0

    # Rerunning a finished job sends nothing.
    outcome, tally, _ = await run(cfg)
    assert outcome.reason == "done" and tally.skipped == 26 and tally.finished == 0
    assert srv.stats()["batches_created"] == 6
    assert len(read_jsonl(out)) == 26


async def test_kill_mid_poll_and_mid_collection(
    tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = server(batch_seconds=0.3)
    inp = write_jsonl(tmp_path / "in.jsonl", mixed_rows())
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out, batch_size=10)

    # A crash while polling: batches exist, nothing is recorded.
    polls = 0
    real_retrieve = Provider.retrieve

    async def retrieve_then_die(self: Provider, batch_id: str) -> dict[str, Any]:
        nonlocal polls
        polls += 1
        if polls > 4:
            raise Killed
        return await real_retrieve(self, batch_id)

    monkeypatch.setattr(Provider, "retrieve", retrieve_then_die)
    with pytest.raises(Killed):
        await run(cfg)
    monkeypatch.undo()
    assert srv.stats()["batches_created"] == 4
    assert not out.exists() or read_jsonl(out) == []

    # A crash in the middle of collecting: after the first shard, the next collection whose
    # requests go to another round writes its records and dies before the state file learns
    # of it (as with kill -9, nothing that comes later runs). At that instant another shard's
    # task saves the state (a poll's status change can): the retries of a shard that still
    # looks submitted must not be in it, or the rerun sends them twice.
    real_close = BatchRun._close
    closes = 0

    def close_then_die(self: BatchRun, shard: Any, carried: Any = ()) -> None:
        nonlocal closes
        closes += 1
        carried = list(carried)
        if closes >= 2 and carried:
            self.save()
            raise Killed
        real_close(self, shard, carried)

    monkeypatch.setattr(BatchRun, "_close", close_then_die)
    with pytest.raises(Killed):
        await run(cfg)
    monkeypatch.undo()
    partial = read_jsonl(out)
    assert 0 < len(partial) < 25
    assert 1 <= sum(s["state"] == "done" for s in state_of(out)["shards"]) <= 3

    outcome, _, _ = await run(cfg)
    assert outcome.reason == "done"
    by_id = check_exactly_once(out, {f"r{i}" for i in range(25)})
    assert all(r["status"] == "completed" for r in by_id.values())
    # Collected again from the same batches, not resubmitted: only the 2 retry batches are new.
    assert srv.stats()["batches_created"] == 6
    assert srv.stats()["batch_lines_submitted"] == 29


@pytest.mark.parametrize("sent", [False, True], ids=["before-create", "create-answer-lost"])
async def test_kill_between_upload_and_create(
    tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch, sent: bool
) -> None:
    srv = server(batch_seconds=0.2)
    rows = [{"id": f"q{i}", "input": f"prompt {i}"} for i in range(25)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out, batch_size=10)
    real_create = Provider.create

    async def create_and_die(self: Provider, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if sent:  # the provider made the batch; its answer never got recorded
            await real_create(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(Provider, "create", create_and_die)
    with pytest.raises(Killed):
        await run(cfg)
    monkeypatch.undo()
    shards = state_of(out)["shards"]
    assert len(shards) == 3
    killed = [s for s in shards if s["state"] == "creating"]
    assert killed and all(s["file_id"] and s["batch_id"] is None for s in killed)
    # Shards cut off mid-upload have no file id and upload again (an orphan file is free).
    not_uploaded = sum(s["file_id"] is None for s in shards)
    files_before = srv.stats()["files_uploaded"]
    made_before = srv.stats()["batches_created"]
    if sent:
        # At least the batch whose answer was lost exists; others may have been cut off
        # before or after the provider made them: every one must be adopted, none doubled.
        assert 1 <= made_before <= len(killed)
    else:
        assert made_before == 0

    outcome, _, _ = await run(cfg)
    assert outcome.reason == "done"
    check_exactly_once(out, {f"q{i}" for i in range(25)})
    stats = srv.stats()
    # One batch per shard whatever the kill: the lost one was found by its input_file_id.
    assert stats["batches_created"] == 3
    assert stats["batch_lines_submitted"] == 25
    assert stats["files_uploaded"] == files_before + not_uploaded  # recorded files reused
    assert all(s["state"] == "done" for s in state_of(out)["shards"])


async def test_openai_batch_output_format(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.2)
    rows: list[dict[str, Any] | str] = [
        {"id": "ok", "input": "hello"},
        {"id": "bad400", "input": "refused [[mock:400]]"},
        {
            "custom_id": "emb",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "vector please"},
        },
        "not json",
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out, output_format="openai-batch")
    outcome, tally, _ = await run(cfg)
    assert outcome.reason == "done"
    lines = {r["custom_id"]: r for r in read_jsonl(out)}
    assert set(lines) == {"ok", "bad400", "emb", "line-4"}
    for r in lines.values():
        assert set(r) == {"id", "custom_id", "response", "error"}
    ok = lines["ok"]
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"]["status_code"] == 200
    assert ok["response"]["request_id"].startswith("req_")
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello"
    assert len(lines["emb"]["response"]["body"]["data"][0]["embedding"]) == 8
    # An HTTP error inside a line is a failure (not retried: a 400 would fail again), kept in
    # `response` with error null, as OpenAI writes it.
    bad = lines["bad400"]
    assert bad["response"]["status_code"] == 400 and bad["error"] is None
    assert lines["line-4"]["response"] is None
    assert lines["line-4"]["error"]["code"] == "invalid_request"
    assert tally.completed == 2 and tally.failed == 2 and tally.errors["bad_request"] == 1
    assert srv.stats()["batch_lines_submitted"] == 3  # the 400 was not resubmitted

    # Resumable in this shape too: a rerun finds everything done and sends nothing.
    before = out.read_bytes()
    outcome, tally, _ = await run(cfg)
    assert outcome.reason == "done" and tally.skipped == 4 and tally.finished == 0
    assert out.read_bytes() == before
    assert srv.stats()["batches_created"] == 2


def test_to_openai_batch_line_shapes() -> None:
    done = {"request_id": "a", "status": "completed", "error": None}
    body = {"choices": []}
    line = to_openai_batch_line(done, body, 200, "req_1")
    assert line["custom_id"] == "a" and line["error"] is None
    assert line["response"] == {"status_code": 200, "request_id": "req_1", "body": body}
    assert line["id"] == to_openai_batch_line(done, body, 200, "req_1")["id"]  # stable
    assert to_openai_batch_line(done, body, 200, None, line_id="batch_req_x")["id"] == "batch_req_x"
    timeout = {
        "request_id": "b",
        "status": "failed",
        "error": {"type": "timeout", "message": "no answer within 60s"},
    }
    line = to_openai_batch_line(timeout, None, 0, None)
    assert line["response"] is None
    assert line["error"] == {"code": "timeout", "message": "no answer within 60s"}
    http = {"request_id": "c", "status": "failed", "error": {"type": "bad_request"}}
    err_body = {"error": {"message": "nope"}}
    line = to_openai_batch_line(http, err_body, 400, "req_2")
    assert line["response"]["status_code"] == 400 and line["error"] is None


async def test_cost_at_batch_prices_and_latency(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.2)
    rows = [
        {"id": "c1", "input": "price me please", "model": "gpt-4o-mini"},
        {
            "id": "e1",
            "endpoint": "embeddings",
            "input": ["a", "b"],
            "model": "text-embedding-3-small",
            "metadata": {"k": 1},
        },
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    outcome, tally, _ = await run(cfg_for(srv, inp, out))
    assert outcome.reason == "done"
    by_id = check_exactly_once(out, {"c1", "e1"})
    book = PriceBook()
    chat = by_id["c1"]
    batch_cost = book.cost("gpt-4o-mini", chat["usage"], batch=True)
    direct_cost = book.cost("gpt-4o-mini", chat["usage"])
    assert batch_cost is not None and direct_cost is not None
    assert chat["cost_usd"] == batch_cost
    assert batch_cost == pytest.approx(direct_cost / 2)
    assert chat["tokens_used"] == chat["usage"]["total_tokens"] > 0
    emb = by_id["e1"]
    assert len(emb["embedding"]) == 2 and emb["output"] is None  # list input, list out
    assert emb["metadata"] == {"k": 1}
    assert tally.cost_usd == pytest.approx(sum(r["cost_usd"] or 0 for r in by_id.values()))
    # latency_ms is the batch's own completion time (its timestamps are whole seconds).
    assert chat["latency_ms"] % 1000 == 0 and chat["latency_ms"] >= 0


async def test_rounds_run_out_then_failed_record(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.1)
    rows = [
        {"id": "never", "input": "always late [[mock:expire]]"},
        {"id": "fine", "input": "on time"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    outcome, tally, _ = await run(cfg_for(srv, inp, out, max_retries=1))
    assert outcome.reason == "done"
    by_id = check_exactly_once(out, {"never", "fine"})
    never = by_id["never"]
    assert never["status"] == "failed" and never["attempts"] == 2
    assert never["error"]["type"] == "batch_expired"
    assert by_id["fine"]["attempts"] == 1 and by_id["fine"]["status"] == "completed"
    assert tally.attempts == 3 and tally.retries == 1
    assert srv.stats()["batches_created"] == 2


async def test_enqueued_token_limit_splits_and_waits(tmp_path: Path, server) -> None:
    # Each prompt is ~10 tokens; 40 enqueued tokens fit 4 requests, not a shard of 10.
    srv = server(batch_seconds=0.2, batch_max_enqueued_tokens=40)
    rows = [{"id": f"t{i}", "input": f"token limited prompt {i:02d}"} for i in range(12)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    outcome, _, warnings = await run(cfg_for(srv, inp, out, batch_size=10, max_retries=0))
    assert outcome.reason == "done"
    by_id = check_exactly_once(out, {f"t{i}" for i in range(12)})
    # No round was spent on refusals: with max_retries=0 everything still completed.
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in by_id.values())
    assert any("enqueued-token limit" in w for w in warnings)
    assert srv.stats()["completed_by_prompt"] == {
        f"token limited prompt {i:02d}": 1 for i in range(12)
    }


async def test_request_stop_then_restart_cancels(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=30)  # still running when we stop
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"s{i}", "input": f"x{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out)
    runs: list[BatchRun] = []
    task = asyncio.create_task(run(cfg, on_ready=runs.append))
    await wait_for(lambda: bool(runs) and srv.stats()["batches_created"] == 1)
    runs[0].request_stop(2)
    outcome, _, _ = await task
    assert outcome.reason == "interrupted" and outcome.signal == 2
    info = describe_batches(out)
    assert info is not None and info["active"] == 1
    batch_id = info["shards"][0]["batch_id"]

    # --restart discards the old job, cancelling its running batch rather than paying for it.
    srv.server.config.batch_seconds = 0.1
    restart = dataclasses.replace(cfg, restart=True)
    outcome, _, warnings = await run(restart)
    assert outcome.reason == "done"
    assert any(batch_id in w and "cancelled" in w for w in warnings)
    check_exactly_once(out, {f"s{i}" for i in range(5)})
    async with AsyncOpenAI(base_url=srv.base_url, api_key="k") as client:
        assert (await client.batches.retrieve(batch_id)).status == "cancelled"


async def test_simulate(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "offline"}])
    out = tmp_path / "out.jsonl"
    cfg: RunConfig = BatchConfig(input=str(inp), output=str(out), simulate=True)
    tally = Tally()
    outcome = await run_batch(cfg, tally=tally, warn=lambda m: None, poll_interval=0.1)
    assert outcome.reason == "done"
    assert read_jsonl(out)[0]["output"] == "echo: offline"
    assert state_of(out)["base_url"] == "simulate"


async def test_usage_errors(tmp_path: Path, server) -> None:
    from burstcli.errors import UsageError

    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input": "x"}])
    for bad, msg in [
        ({"output": "-"}, "OUTPUT"),
        ({"input": "-"}, "stdin"),
        ({"batch_size": 50_001}, "--batch-size"),
        ({"output_format": "csv"}, "--output-format"),
    ]:
        cfg = cfg_for(srv, inp, tmp_path / "o.jsonl")
        cfg = dataclasses.replace(cfg, **bad)
        with pytest.raises(UsageError, match=msg):
            await run(cfg)


# -- the mock's Batch API, through the openai SDK ----------------------------------------------


def batch_file(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def chat_line(cid: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


async def test_mock_batch_lifecycle_and_validation(server) -> None:
    import openai

    srv = server(batch_seconds=0.3)
    async with AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as client:
        f = await client.files.create(
            file=(
                "in.jsonl",
                batch_file([chat_line("a", "one"), chat_line("b", "two [[mock:502]]")]),
            ),
            purpose="batch",
        )
        assert f.purpose == "batch" and f.bytes > 0
        assert (await client.files.retrieve(f.id)).filename == "in.jsonl"
        b = await client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"k": "v"},
        )
        assert b.status == "validating" and b.metadata == {"k": "v"}
        seen = {b.status}
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.02)
            b = await client.batches.retrieve(b.id)
            seen.add(b.status)
        assert {"in_progress", "finalizing", "completed"} <= seen
        assert b.request_counts is not None
        assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
            2,
            1,
            1,
        )
        assert b.completed_at is not None and b.completed_at >= b.created_at
        assert b.output_file_id and b.error_file_id
        out = [
            orjson.loads(x)
            for x in (await client.files.content(b.output_file_id)).content.splitlines()
        ]
        assert out[0]["custom_id"] == "a" and out[0]["response"]["status_code"] == 200
        err = [
            orjson.loads(x)
            for x in (await client.files.content(b.error_file_id)).content.splitlines()
        ]
        assert err[0]["custom_id"] == "b" and err[0]["response"]["status_code"] == 502

        # One model per file, unique custom ids: otherwise the batch fails validation.
        mixed = await client.files.create(
            file=(
                "m.jsonl",
                batch_file(
                    [chat_line("a", "x"), chat_line("a", "y"), chat_line("c", "z", "gpt-4o")]
                ),
            ),
            purpose="batch",
        )
        b2 = await client.batches.create(
            input_file_id=mixed.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(0.05)
        b2 = await client.batches.retrieve(b2.id)
        assert b2.status == "failed" and b2.errors is not None and b2.errors.data
        assert [(e.code, e.line) for e in b2.errors.data] == [
            ("duplicate_custom_id", 2),
            ("mismatched_model", 3),
        ]

        # List (newest first, paginated with `after`), cancel, and the 4xx answers.
        ids = [x.id async for x in client.batches.list(limit=1)]
        assert ids == [b2.id, b.id]
        b3 = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await client.batches.cancel(b3.id)).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            await client.batches.cancel(b3.id)
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")
        with pytest.raises(openai.NotFoundError):
            await client.files.content("file-nope")
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="48h"
            )  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("in.txt", b"x"), purpose="batch")
    stats = srv.stats()
    assert stats["batches_created"] == 3 and stats["files_uploaded"] == 2
    assert stats["batch_lines_submitted"] == 2 + 1 + 2  # mixed file: 1 valid line of 3


async def test_mock_auth_on_batch_endpoints(server) -> None:
    import openai

    srv = server(api_keys=frozenset({"right"}))
    async with AsyncOpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await client.batches.retrieve("batch_x")


async def test_every_batch_route_checks_the_key_first(server) -> None:
    # Even a request that is wrong in other ways (no body, unknown ids) gets the 401, with
    # its own request id, from every /v1/files and /v1/batches route.
    import aiohttp

    srv = server(api_keys=frozenset({"right"}))
    routes = [
        ("POST", "/files"),
        ("GET", "/files"),
        ("GET", "/files/file-x"),
        ("GET", "/files/file-x/content"),
        ("POST", "/batches"),
        ("GET", "/batches?limit=0"),
        ("GET", "/batches/batch_x"),
        ("POST", "/batches/batch_x/cancel"),
    ]
    ids = set()
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as http:
        for method, path in routes:
            async with http.request(method, srv.base_url + path) as resp:
                assert resp.status == 401, (method, path)
                assert (await resp.json())["error"]["code"] == "invalid_api_key"
                ids.add(resp.headers["x-request-id"])
        async with http.get(
            srv.base_url + "/files", headers={"Authorization": "Bearer right"}
        ) as resp:
            assert resp.status == 200 and resp.headers["x-request-id"] not in ids
    assert len(ids) == len(routes) and all(i.startswith("req_") for i in ids)


async def test_fatal_auth_stops_the_run(tmp_path: Path, server) -> None:
    srv = server(api_keys=frozenset({"other"}))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "x"}])
    out = tmp_path / "out.jsonl"
    outcome, _, _ = await run(cfg_for(srv, inp, out))
    assert outcome.reason == "fatal" and outcome.error is not None
    assert outcome.error.kind == "auth"
    assert TEST_KEY not in str(outcome.error)
    assert TEST_KEY not in batch_state_path(out).read_text()
    with contextlib.suppress(FileNotFoundError):
        assert read_jsonl(out) == []


async def test_retry_failed_replaces_failed_records(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.1)
    rows = [{"id": "ok", "input": "fine"}, {"id": "flaky", "input": "once [[mock:400*1]]"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cfg = cfg_for(srv, inp, out)
    outcome, tally, _ = await run(cfg)
    assert (
        tally.failed == 1
        and check_exactly_once(out, {"ok", "flaky"})["flaky"]["status"] == "failed"
    )
    outcome, tally, _ = await run(dataclasses.replace(cfg, retry_failed=True))
    assert outcome.reason == "done" and tally.completed == 1 and tally.skipped == 1
    by_id = check_exactly_once(out, {"ok", "flaky"})
    assert by_id["flaky"]["status"] == "completed"
    assert srv.stats()["batch_lines_submitted"] == 3


@pytest.mark.parametrize("output_format", ["burstq", "openai-batch"])
def test_unserializable_answer_is_one_failed_record_counted_as_failed(output_format: str) -> None:
    """A provider's batch answer JSON can read but not write back (nested past orjson's
    limit): that line's record is an internal_error failure, and the tally says failed."""
    from burstcli.batch.lines import LineOutcome
    from burstcli.batch.plan import BatchSettings

    run = object.__new__(BatchRun)  # only what _emit uses
    run.tally, run.budget, run.held = Tally(), None, {}
    run.settings = BatchSettings(10, "24h", output_format, 3, 0.1, 1.0)
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    body = {"id": "x", "choices": [{"message": {"content": "hi"}}], "extra": deep}
    out = LineOutcome("completed", body=body, status_code=200, request_id="req_1")
    result = dataclasses.replace(
        line_result_for_test(), output={"deep": deep} if output_format == "burstq" else "hi"
    )
    line = run._emit(result, out)
    rec = orjson.loads(line)
    if output_format == "openai-batch":
        assert rec["custom_id"] == "r1" and rec["response"] is None
        assert rec["error"]["code"] == "internal_error"
    else:
        assert rec["request_id"] == "r1" and rec["line"] == 7 and rec["status"] == "failed"
        assert rec["error"]["type"] == "internal_error"
        assert rec["attempts"] == 1
    assert (run.tally.completed, run.tally.failed) == (0, 1)
    assert run.tally.errors == {"internal_error": 1}


def line_result_for_test() -> Any:
    from burstcli.models import Result

    return Result(
        request_id="r1",
        line=7,
        status="completed",
        model="gpt-4o-mini",
        attempts=1,
        output="hi",
        finished_at="2026-12-01T00:00:00.000Z",
    )
