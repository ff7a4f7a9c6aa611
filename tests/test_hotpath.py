"""The hot path's shortcuts (issue 19) give exactly what the long way gives.

Each shortcut is checked against the code it bypasses: the scan's fast path for plain native
lines against full pydantic validation, the once-a-second timestamp against datetime, the
memoised model-name redaction against a secret registered later, the cost memo against a
fresh price book, and the slot/pace shortcuts against the waits they skip.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli import redact
from burstcli.files import reader, schema
from burstcli.live.limits import Gate, Limits
from burstcli.models import InvalidLine, Request, Result, now_iso
from burstcli.money.pricing import ModelPrice, PriceBook

LINES: list[Any] = [
    {"id": "r1", "input": "say 1"},
    {"id": 7, "input": "hi", "model": "gpt-4o", "priority": 10, "metadata": {"k": [1, 2]}},
    {"input": "no id"},
    {"id": "", "input": "empty id"},
    {"id": None, "input": "null id", "model": None, "metadata": None},
    {"id": "r2", "input": "p1", "priority": 1},
    # Each of these must leave the fast path: full validation decides, with its message.
    {"id": True, "input": "bool id"},
    {"id": 1.5, "input": "float id"},
    {"id": "r3", "input": "x", "priority": 0},
    {"id": "r3", "input": "x", "priority": 11},
    {"id": "r3", "input": "x", "priority": 5.0},
    {"id": "r3", "input": "x", "priority": True},
    {"id": "r3", "input": "x", "priority": None},
    {"id": "r3", "input": "x", "model": ""},
    {"id": "r3", "input": "x", "model": 3},
    {"id": "r3", "input": "   "},
    {"id": "r3", "input": ""},
    {"id": "r3", "input": ["a", "b"]},
    {"id": "r3", "input": "x", "metadata": [1]},
    {"id": "r3", "input": "x", "params": {"temperature": 0}},
    {"id": "r3", "input": "x", "endpoint": "embeddings"},
    {"id": "r3", "input": "x", "unknown": 1},
    {"id": "r3", "messages": [{"role": "user", "content": "m"}]},
    {"id": "line-9", "input": "reserved id on another line"},
]


def _outcome(item: Request | InvalidLine | None) -> Any:
    if isinstance(item, InvalidLine):
        return ("invalid", item.line, item.id, item.message)
    return item


@pytest.mark.parametrize("obj", LINES, ids=lambda o: orjson.dumps(o).decode()[:40])
def test_fast_path_matches_full_validation(obj: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = orjson.dumps(obj)
    fast = reader.parse_line(raw, 3, "gpt-4o-mini")
    with monkeypatch.context() as m:
        m.setattr(reader, "_simple_native", lambda *a: None)
        full = reader.parse_line(raw, 3, "gpt-4o-mini")
    assert _outcome(fast) == _outcome(full)
    # And the dispatch pass, which trusts the scan, builds the same request again.
    if isinstance(full, Request):
        assert reader.parse_line(raw, 3, "gpt-4o-mini", trusted=True) == full


def test_fast_path_takes_the_plain_lines_only() -> None:
    assert reader._simple_native({"id": "a", "input": "x"}, 1, "m") is not None
    assert reader._simple_native({"id": True, "input": "x"}, 1, "m") is None
    assert reader._simple_native({"input": "x", "params": {}}, 1, "m") is None


def test_now_iso_is_utc_milliseconds_like_datetime() -> None:
    before = datetime.now(UTC)
    stamp = now_iso()
    after = datetime.now(UTC)
    assert len(stamp) == 24 and stamp.endswith("Z") and stamp[19] == "."
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after
    # Two calls in one second share the formatted second, not a stale millisecond.
    assert now_iso()[:19] >= stamp[:19]


def test_redact_name_forgets_results_once_a_secret_is_registered() -> None:
    redact.forget_all()
    try:
        name = "model-sk-live-abcdefghijklmnop"
        assert redact.redact_name(name) == name  # no secret yet: memoised as is
        redact.register("sk-live-abcdefghijklmnop")
        assert redact.redact_name(name) == "model-[REDACTED]"
        assert redact.redact_name("x" * 300) == "x" * 200 + "..."  # capped like redact_cut
    finally:
        redact.forget_all()


def test_cost_memo_gives_the_computed_cost() -> None:
    price = ModelPrice(1.0, 2.0, 0.5, "override:test")
    book = PriceBook(None, warn=lambda _m: None)
    book._overrides["m"] = price
    usage = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}
    first = book.cost("m", usage)
    assert first == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6)
    assert book.cost("m", dict(usage)) == first  # from the memo
    other = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020}
    assert book.cost("m", other) == pytest.approx((1000 + 40) / 1e6)  # other counts: not it
    assert book.cost("m", usage, batch=True) == pytest.approx(first / 2)
    assert book.cost("m", None) is None


async def test_try_slot_and_try_pace_only_when_nothing_would_wait() -> None:
    gate = Gate(1)
    assert gate.try_acquire() and gate.active == 1
    assert not gate.try_acquire()  # full: acquire() would wait
    gate.release()

    now = [100.0]
    free = Limits(concurrency=4, clock=lambda: now[0], slow_start=False)
    assert free.try_pace(10)
    free.on_rate_limited({}, 2.0)  # a 429 pauses the run: pace() must wait it out
    assert not free.try_pace(10)
    now[0] += 2.5
    assert free.try_pace(10)
    paced = Limits(concurrency=4, rpm=600, clock=lambda: now[0], slow_start=False)
    assert not paced.try_pace(10)  # pacing on: pace() books
    await asyncio.wait_for(paced.pace(10), 1)


# -- structured answers: the flat-schema check against jsonschema -----------------------------

SCHEMAS: list[Any] = [
    strict_schema := schema.response_format(
        schema.parse_dsl("label: one of pos/neg, score float, n? int, ok bool, note?")
    )["json_schema"]["schema"],
    schema.parse_dsl("label: one of a/b, score float"),  # not strict: extra keys allowed
    {"type": "object", "properties": {"x": {}}, "required": []},  # a field of any type
    {"type": "object", "properties": {"x": {"type": ["integer", "string"]}}},
    {"type": "object", "properties": {"x": {"enum": ["a", None]}}, "required": ["x"]},
    {"type": "object", "properties": {"x": {"type": "string", "enum": []}}},
]
# Out of its reach: the quick check must step aside (None) and leave them to jsonschema.
NOT_FLAT: list[Any] = [
    {"type": "object", "properties": {"x": {"type": "string", "minLength": 2}}},
    {"type": "object", "properties": {"x": {"type": "object"}}, "additionalProperties": {}},
    {"type": "object", "properties": {"x": {"enum": [1, 2]}}},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
    {"type": "array"},
    {"type": "object", "properties": {"x": {"type": "date"}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}]}}},
]
SCALARS: list[Any] = ["pos", "neg", "a", "", "x", 0, 1, -3, 2**40, 0.5, 1.0, -0.0, True, False]
SCALARS += [None, [], ["pos"], {}, {"a": 1}]


def _values(rng: random.Random, names: list[str]) -> list[Any]:
    out: list[Any] = [None, [], "pos", 1, {}]
    for _ in range(500):
        keys = [n for n in names if rng.random() < 0.85] + (["extra"] if rng.random() < 0.1 else [])
        out.append({k: rng.choice(SCALARS) for k in keys})
    return out


@pytest.mark.parametrize("sch", SCHEMAS, ids=lambda s: orjson.dumps(s).decode()[:50])
def test_quick_schema_check_never_accepts_what_jsonschema_refuses(sch: Any) -> None:
    from jsonschema import validators

    full = validators.validator_for(sch)(sch)
    quick = schema.quick_check(sch)
    assert quick is not None
    rng = random.Random(19)
    values = _values(rng, [*sch.get("properties", {}), "other"])
    taken = 0
    v = schema.Validator(sch)
    for value in values:
        if quick(value):
            taken += 1
            assert full.is_valid(value), value
        # And through the Validator (quick first, then jsonschema): jsonschema's verdict.
        try:
            v.parse(orjson.dumps(value).decode(), "stop", None)
            ok = True
        except schema.OutputProblem:
            ok = False
        assert ok == full.is_valid(value), value
    accepted = sum(1 for value in values if full.is_valid(value))
    # The shortcut is the common case: it takes nearly every value jsonschema accepts (it
    # leaves only integral floats for integer fields to jsonschema).
    assert taken >= 0.8 * accepted


def test_quick_schema_check_accepts_a_typical_answer() -> None:
    quick = schema.quick_check(strict_schema)
    assert quick is not None
    assert quick({"label": "pos", "score": 0.5, "n": None, "ok": True, "note": None})
    assert not quick({"label": "pos", "score": 0.5, "n": None, "ok": 1, "note": None})
    assert not quick({"label": "maybe", "score": 0.5, "n": 3, "ok": True, "note": "x"})


@pytest.mark.parametrize("sch", NOT_FLAT, ids=lambda s: orjson.dumps(s).decode()[:50])
def test_quick_schema_check_leaves_other_schemas_to_jsonschema(sch: Any) -> None:
    assert schema.quick_check(sch) is None


# -- the answer cache: commits from the loop go to a writer thread ----------------------------


def _answers(tmp: Path, n: int, hits: int) -> tuple[Path, list[tuple[Any, ...]]]:
    """n answers stored and `hits` of them looked up again, the way the engine does."""
    from burstcli.money.cache import AnswerCache

    path = tmp / "answers.db"
    cache = AnswerCache(path, "http://p/v1")
    reqs = [
        Request(i, f"r{i}", "chat", "m", {"messages": [{"content": f"p{i}"}]}) for i in range(n)
    ]
    for req in reqs:
        assert cache.lookup(req) is None
        cache.store(req, Result(req.id, req.line, "completed", "m", "m", output=f"a{req.line}"))
    cache.close()
    cache = AnswerCache(path, "http://p/v1")
    for req in reqs[:hits]:
        hit = cache.lookup(req)
        assert hit is not None and hit.output == f"a{req.line}" and hit.cached
    cache.close()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT fingerprint, answer, hits FROM answers ORDER BY 1").fetchall()
    conn.close()
    return path, rows


def test_cache_writer_thread_stores_what_a_synchronous_commit_stores(tmp_path: Path) -> None:
    n, hits = 700, 300  # past FLUSH_ROWS twice, and a remainder that close() commits
    (tmp_path / "sync").mkdir()
    (tmp_path / "loop").mkdir()
    _, direct = _answers(tmp_path / "sync", n, hits)  # no loop: every commit in close()

    async def in_loop() -> list[tuple[Any, ...]]:
        _, rows = _answers(tmp_path / "loop", n, hits)  # batches go to the writer thread
        return rows

    threaded = asyncio.run(in_loop())
    assert len(direct) == n and threaded == direct
    assert sum(r[2] for r in threaded) == hits


# -- templates: plain `{{ column }}` prompts filled without Jinja ------------------------------

PLAIN_TEMPLATES = [
    "Review: {{ text }}",
    "{{text}}",
    "{{ a }}{{ b }} - {{a}}\n",
    "Classify:\n\n{{ text }}\n\nAnswer with one word.",
    "no placeholders at all",
    "{{ range }}",  # a Jinja global when no column has the name: Jinja must render it
    "{{ row }}",
]
OTHER_TEMPLATES = [  # each must be left to Jinja
    "{{ text|upper }}",
    "{{ text.x }}",
    "{% if a %}{{ a }}{% endif %}",
    "{# note #}{{ a }}",
    "{{ none }}",
    "{{ True }}",
    "{{\ta }}",
    "a}}b {{ a }}",
    "{{ a }}\r\n",
]
CONTEXTS: list[dict[str, Any]] = [
    {"text": "great", "a": "x", "b": ""},
    {"text": "", "a": "  padded  ", "b": "{{ not a template }}"},
    {"text": 3, "a": None, "b": 1.5},
    {"text": "only text"},
    {},
]


@pytest.mark.parametrize("source", PLAIN_TEMPLATES + OTHER_TEMPLATES)
def test_plain_template_fill_matches_jinja(source: str) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from burstcli.files import template

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    jinja = env.from_string(source)
    parts = template.plain_parts(source)
    assert (parts is not None) == (source in PLAIN_TEMPLATES)
    for row in CONTEXTS:
        context = {**row, "row": row}
        got = template.fill(parts, context) if parts is not None else None
        if got is not None:
            assert got.strip() == jinja.render(context).strip()
        elif parts is not None:
            # Left to Jinja only where a placeholder is not a string column.
            assert any(type(context.get(n)) is not str for n in parts[1::2])
