"""reader.py: line validation messages, derived ids, IdSet, and dispatch order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.files.reader import (
    Done,
    FileSource,
    IdSet,
    count_lines,
    parse_line,
    validate_file,
)
from burstcli.files.stream import StreamSource
from burstcli.models import InvalidLine, Request

from .conftest import write_jsonl


def parse(obj: dict[str, Any] | list[Any] | str | bytes, line: int = 4) -> Any:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parse_line(raw, line, "gpt-4o-mini")


def invalid(obj: Any, line: int = 4) -> InvalidLine:
    item = parse(obj, line)
    assert isinstance(item, InvalidLine), item
    assert item.line == line
    return item


MSG = [{"role": "user", "content": "y"}]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            b"{not json",
            "invalid JSON at column 2: unexpected character, expected a string key",
        ),
        ([1], "expected a JSON object, got list"),
        ("just text", "expected a JSON object, got str"),
        ({"id": "a"}, "missing prompt: give 'input' (text) or 'messages'"),
        (
            {"id": "a", "input": "x", "params": {"temperature": "hot"}},
            "params.temperature: Input should be a valid number",
        ),
        (
            {"input": "x", "params": {"max_tokens": 0}},
            "params.max_tokens: Input should be greater than 0",
        ),
        ({"input": "x", "metadata": [1]}, "metadata: Input should be a valid dictionary"),
        (
            {"messages": [{"role": "robot", "content": "y"}]},
            "messages.0.role: Input should be 'system', 'user', 'assistant', 'tool', "
            "'developer' or 'function'",
        ),
        ({"input": "x", "priority": 11}, "priority: Input should be less than or equal to 10"),
        ({"input": "x", "priority": 0}, "priority: Input should be greater than or equal to 1"),
        ({"input": "x", "priority": "high"}, "priority: Input should be a valid integer"),
        ({"input": "x", "colour": 1}, "colour: unknown field"),
        ({"input": ""}, "input: must be a non-empty string for chat"),
        ({"input": "x", "messages": MSG}, "give either 'input' or 'messages', not both"),
        (
            {"endpoint": "embeddings", "messages": MSG},
            "messages: not allowed for endpoint 'embeddings'",
        ),
        ({"endpoint": "embeddings"}, "input: missing (embeddings need 'input')"),
        (
            {"custom_id": "u1", "url": "/v1/unknown", "body": {"model": "m"}},
            "url: unknown endpoint '/v1/unknown' (expected /v1/chat/completions or /v1/embeddings)",
        ),
        (
            {"custom_id": "b", "url": "/v1/chat/completions", "body": {}},
            "body.messages: missing (chat completions need messages)",
        ),
        (
            {"custom_id": "b", "url": "/v1/embeddings", "body": {}},
            "body.input: missing (embeddings need input)",
        ),
        (
            {
                "custom_id": "b",
                "url": "/v1/chat/completions",
                "body": {"messages": MSG},
                "extra": 1,
            },
            "extra: unknown field",
        ),
        (
            {
                "custom_id": "b",
                "method": "GET",
                "url": "/v1/chat/completions",
                "body": {"messages": MSG},
            },
            "method: Input should be 'POST'",
        ),
    ],
)
def test_invalid_line_messages(obj: Any, message: str) -> None:
    assert invalid(obj).message == message


def test_invalid_line_keeps_the_id_it_could_read() -> None:
    assert invalid({"id": "a"}).id == "a"
    assert invalid({"id": 7, "input": "x", "priority": 99}).id == "7"
    assert invalid({"custom_id": "u1", "url": "/v1/x", "body": {}}).id == "u1"
    assert invalid(b"{not json").id is None


def test_blank_lines_are_not_requests() -> None:
    assert parse(b"") is None and parse(b"   \r\n") is None


def test_native_and_batch_shapes() -> None:
    req = parse(
        {
            "id": "r1",
            "input": "hello world",
            "model": "gpt-4o",
            "priority": 9,
            "metadata": {"k": 1},
            "params": {"temperature": 0, "max_tokens": 64, "logprobs": True},
        }
    )
    assert isinstance(req, Request)
    assert (req.id, req.line, req.endpoint, req.model, req.priority, req.metadata) == (
        "r1",
        4,
        "chat",
        "gpt-4o",
        9,
        {"k": 1},
    )
    assert req.body == {
        "messages": [{"role": "user", "content": "hello world"}],
        "temperature": 0,
        "max_tokens": 64,
        "logprobs": True,
    }
    assert req.est_tokens == 11 // 4 + 1 + 64
    batch = parse(
        {
            "custom_id": "b1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": ["a", "b"]},
        }
    )
    assert isinstance(batch, Request)
    assert (batch.id, batch.endpoint, batch.model, batch.priority) == (
        "b1",
        "embeddings",
        "text-embedding-3-small",
        5,
    )
    assert batch.body == {"input": ["a", "b"]}
    default = parse({"input": "x"})
    assert default.model == "gpt-4o-mini" and default.priority == 5


def test_derived_ids_are_line_numbers_and_deterministic(tmp_path: Path) -> None:
    rows = [{"input": "a"}, "", {"id": "x", "input": "b"}, {"input": "c"}, {"id": 42, "input": "d"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)

    def ids() -> list[tuple[int, str]]:
        src = FileSource(inp, "m")
        src.scan(None, lambda bad: pytest.fail(str(bad)))
        return [(r.line, r.id) for r in src.requests()]

    first = ids()
    assert first == [(1, "line-1"), (3, "x"), (4, "line-4"), (5, "42")]
    assert ids() == first


def test_duplicate_ids_are_invalid_after_the_first(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "input": "1"},
        {"id": "b", "input": "2"},
        {"id": "a", "input": "3"},
        {"custom_id": "b", "url": "/v1/chat/completions", "body": {"messages": MSG}},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    bad: list[InvalidLine] = []
    src = FileSource(inp, "m")
    src.scan(None, bad.append)
    assert [(b.line, b.id, b.message) for b in bad] == [
        (3, "a", "id: duplicate id 'a'"),
        (4, "b", "id: duplicate id 'b'"),
    ]
    assert [r.line for r in src.requests()] == [1, 2]
    assert (src.total, src.pending, src.invalid, src.done) == (4, 2, 2, 0)


def test_validate_file_lists_every_problem(tmp_path: Path) -> None:
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [{"input": "ok"}, {"id": 3}, "[1]", "", {"input": "x", "priority": 11}],
    )
    total, problems = validate_file(inp)
    assert total == 4
    assert [(p.line, p.message) for p in problems] == [
        (2, "missing prompt: give 'input' (text) or 'messages'"),
        (3, "expected a JSON object, got list"),
        (5, "priority: Input should be less than or equal to 10"),
    ]


# -- IdSet and Done ------------------------------------------------------------------------


def test_idset_many_ids_with_growth() -> None:
    ids = IdSet(capacity=4)
    n = 50_000
    assert all(ids.add(f"id-{i}") for i in range(n))
    assert len(ids) == n
    assert not any(ids.add(f"id-{i}") for i in range(0, n, 7))
    assert len(ids) == n
    assert ids.add("id-50000") and len(ids) == n + 1


def test_idset_duplicates_and_odd_ids() -> None:
    ids = IdSet()
    for rid in ("", "a", "A", "é", "a " * 1000, "line-1", "1"):
        assert ids.add(rid) is True
        assert ids.add(rid) is False
    assert len(ids) == 7


def test_done_bitmap() -> None:
    done = Done()
    for n in (1, 8, 9, 1_000_003):
        done.add(n)
    assert [n for n in range(20) if n in done] == [1, 8, 9]
    assert 1_000_003 in done and 1_000_002 not in done and 5_000_000 not in done


def test_count_lines(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"a\nb\nc")
    assert count_lines(p) == 3


# -- dispatch order ------------------------------------------------------------------------


def test_file_priority_orders_the_whole_file(tmp_path: Path) -> None:
    prios = [5, 1, 5, 7, 10, 3, 5, 10, 1, 7] + [5] * 500 + [10]
    rows = [{"id": f"p{i}", "input": f"x{i}", "priority": p} for i, p in enumerate(prios)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    src = FileSource(inp, "m")
    src.scan(None, lambda bad: pytest.fail(str(bad)))
    order = [int(r.id[1:]) for r in src.requests()]
    expected = sorted(range(len(prios)), key=lambda i: (-prios[i], i))
    assert order == expected
    assert order[:3] == [4, 7, 510]  # the last line, priority 10, goes third of 511
    assert (src.total, src.pending) == (511, 511)


def test_file_source_skips_done_lines_without_parsing_them(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "input": "1"},
        "{broken",
        {"id": "c", "input": "3", "priority": 9},
        {"id": "d", "input": "4"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    done = Done()
    done.add(2)  # already has a failed record: not reported again
    done.add(3)
    bad: list[InvalidLine] = []
    src = FileSource(inp, "m")
    src.scan(done, bad.append)
    assert bad == []
    assert [r.id for r in src.requests()] == ["a", "d"]
    assert (src.total, src.done, src.pending, src.invalid) == (4, 2, 2, 0)


def stream_of(prios: list[int]) -> list[bytes]:
    return [
        orjson.dumps({"id": f"s{i}", "input": "x", "priority": p}) + b"\n"
        for i, p in enumerate(prios)
    ]


def test_stream_source_yields_in_stream_order() -> None:
    prios = [1, 5, 10, 5, 1, 10]
    src = StreamSource(stream_of(prios), "m")
    assert [item.id for item in src.items(None)] == [f"s{i}" for i in range(6)]
    assert (src.total, src.pending) == (6, 6)


def test_stream_source_yields_invalid_lines_at_once_and_skips_done() -> None:
    lines = stream_of([1, 9]) + [b"{bad\n", b"\n", b'{"id": "s5", "input": "x"}\n']
    done = Done()
    done.add(1)
    src = StreamSource(lines, "m")
    items = list(src.items(done))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Request", 2),
        ("InvalidLine", 3),
        ("Request", 5),
    ]
    assert (src.total, src.done, src.invalid, src.pending) == (4, 1, 1, 2)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"a","input":"hi"}',
        b'{"id":7,"messages":[{"role":"system","content":"s","name":null},{"role":"user",'
        b'"content":[{"type":"text","text":"x"}]}],"params":{"temperature":0,"max_tokens":5,'
        b'"seed":null,"foo":"bar"},"priority":9,"metadata":{"a":1}}',
        b'{"endpoint":"embeddings","input":["a","b"],"model":"text-embedding-3-small",'
        b'"params":{"dimensions":4}}',
        b'{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"messages":[{"role":"user","content":"x"}],"max_tokens":3,"temperature":null}}',
        b'{"custom_id":"d","url":"/v1/embeddings","body":{"input":"x"}}',
        b'{"input":"no id","model":null}',
    ],
)
def test_trusted_parse_builds_the_same_request_as_validation(raw: bytes) -> None:
    validated = parse_line(raw, 3, "gpt-4o-mini")
    assert isinstance(validated, Request)
    assert parse_line(raw, 3, "gpt-4o-mini", trusted=True) == validated


def test_numbers_in_strings_are_refused_not_coerced() -> None:
    item = parse_line(b'{"input":"x","params":{"temperature":"0.5"}}', 1, "m")
    assert isinstance(item, InvalidLine)
    assert item.message.startswith("params.temperature: Input should be a valid number")
    item = parse_line(b'{"input":"x","priority":"9"}', 1, "m")
    assert isinstance(item, InvalidLine) and "priority" in item.message
