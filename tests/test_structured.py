"""Structured outputs (DSL, JSON Schema, strict form, local validation, retries, fallbacks,
cut-off answers) and `burstq export` (order, joins, failed rows, shards, formats)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest

from burstcli.errors import UsageError
from burstcli.files.schema import OutputProblem, Validator, load_schema, parse_dsl, strict

from .conftest import read_jsonl, run_args, run_cli, write_jsonl
from .test_resume import settled

DSL = "sentiment: one of positive/negative/neutral, confidence float, reason: one short sentence"


def test_dsl_means_this_json_schema() -> None:
    assert parse_dsl(DSL) == {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number"},
            "reason": {"type": "string", "description": "one short sentence"},
        },
        "required": ["sentiment", "confidence", "reason"],
    }
    multi = parse_dsl("name\nage int: years, rounded down\nok bool\nnick?: if any")
    assert multi["properties"]["age"] == {"type": "integer", "description": "years, rounded down"}
    assert multi["required"] == ["name", "age", "ok"]
    for bad, msg in (("age integerish", "unknown type"), ("a, a", "twice"), (" , ", "no fields")):
        with pytest.raises(UsageError, match=msg):
            parse_dsl(bad)


def test_strict_transform_closes_objects_and_nulls_optionals() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "integer", "enum": [1, 2]},
            "c": {"type": "array", "items": {"type": "object", "properties": {"x": {}}}},
            "d": {"$ref": "#/$defs/D"},
        },
        "required": ["a"],
        "$defs": {"D": {"type": "object", "properties": {"y": {"type": "number"}}}},
    }
    s = strict(schema)
    assert s["required"] == ["a", "b", "c", "d"] and s["additionalProperties"] is False
    assert s["properties"]["b"] == {"type": ["integer", "null"], "enum": [1, 2, None]}
    assert s["properties"]["d"] == {"anyOf": [{"$ref": "#/$defs/D"}, {"type": "null"}]}
    item = s["properties"]["c"]["items"]
    assert item["additionalProperties"] is False and item["required"] == ["x"]
    assert s["$defs"]["D"]["required"] == ["y"]
    assert "additionalProperties" not in schema  # the user's schema is left alone
    with pytest.raises(UsageError, match="top level must be an object"):
        strict({"type": "array"})


def test_validator_messages() -> None:
    v = Validator(strict(parse_dsl("label: one of a/b, score float")))
    assert v.parse('{"label": "a", "score": 0.5}', "stop", None) == {"label": "a", "score": 0.5}
    with pytest.raises(OutputProblem, match=r"at label: 'c' is not one of") as bad:
        v.parse('{"label": "c", "score": 1}', "stop", None)
    assert bad.value.kind == "invalid_output" and bad.value.retryable
    with pytest.raises(OutputProblem, match="not JSON"):
        v.parse("Sure! Here it is", "stop", None)
    with pytest.raises(OutputProblem, match="max_tokens=5") as cut:
        v.parse('{"label": "a", "sc', "length", 5)
    assert cut.value.kind == "output_truncated" and not cut.value.retryable


def test_schema_command_and_schema_sources(tmp_path: Path) -> None:
    res = run_cli(["schema", DSL])
    assert res.exit_code == 0
    assert orjson.loads(res.stdout) == parse_dsl(DSL)
    res = run_cli(["schema", "a, b int", "--strict"])
    assert orjson.loads(res.stdout)["additionalProperties"] is False
    f = tmp_path / "s.json"
    f.write_text('{"type": "object", "properties": {"k": {"type": "string"}}}')
    assert load_schema(str(f))["properties"] == {"k": {"type": "string"}}
    assert load_schema('{"type": "object"}') == {"type": "object"}
    res = run_cli(["schema", '{"type": "object", "properties": 3}'])
    assert res.exit_code == 2 and "not a valid JSON Schema" in res.output


def _reviews(tmp_path: Path, texts: list[str]) -> Path:
    inp = tmp_path / "reviews.csv"
    with inp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "status"])  # a column named like one of export's
        for i, t in enumerate(texts):
            w.writerow([f"r{i}", t, "raw"])
    return inp


def test_structured_answers_validated_retried_fallen_back_and_cut_off(
    tmp_path: Path, server
) -> None:
    srv = server()
    inp = _reviews(
        tmp_path,
        [
            "fine",
            "[[mock:badjson*2]] flaky json",  # not JSON twice, then valid: retried
            "[[mock:badshape]] always wrong",  # wrong shape on every model: failed
        ],
    )
    out = tmp_path / "labels.jsonl"
    tpl = tmp_path / "t.toml"
    tpl.write_text(f'prompt = "{{{{ text }}}}"\nschema = "{DSL}"\n[params]\nmax_tokens = 40\n')
    args = run_args(
        srv,
        inp,
        out,
        "--template",
        str(tpl),
        "--max-retries",
        "2",
        "--fallback-model",
        "gpt-4o",
    )
    res = run_cli(args)
    assert res.exit_code == 1, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    ok = recs["r0"]
    assert ok["status"] == "completed" and ok["attempts"] == 1
    assert orjson.loads(ok["output"]) == ok["parsed"]
    assert ok["parsed"]["sentiment"] in ("positive", "negative", "neutral")
    assert recs["r1"]["status"] == "completed" and recs["r1"]["attempts"] == 3
    # The two refused answers were billed: their tokens are in the record.
    assert recs["r1"]["usage"]["completion_tokens"] > ok["usage"]["completion_tokens"]
    shape = recs["r2"]
    assert shape["status"] == "failed" and shape["error"]["type"] == "invalid_output"
    assert shape["attempts"] == 6  # 3 on the model, 3 on the fallback
    assert "does not match the schema" in shape["error"]["message"]
    assert settled(srv)["requests_total"] == 1 + 3 + 6
    # Cut off by max_tokens (finish_reason "length"): not resent with the same limit.
    tpl.write_text(f'prompt = "{{{{ text }}}}"\nschema = "{DSL}"\n[params]\nmax_tokens = 5\n')
    out2 = tmp_path / "cut.jsonl"
    res = run_cli(run_args(srv, inp, out2, "--template", str(tpl), "--fallback-model", "gpt-4o"))
    assert res.exit_code == 1
    cut = {r["request_id"]: r for r in read_jsonl(out2)}["r0"]
    assert cut["status"] == "failed" and cut["error"]["type"] == "output_truncated"
    assert cut["attempts"] == 1 and "max_tokens=5" in cut["error"]["message"]


def test_request_lines_own_response_format_is_validated(tmp_path: Path, server) -> None:
    srv = server()
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "x", "strict": True, "schema": strict(parse_dsl("n int"))},
    }
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "s1", "input": "structured", "params": {"response_format": rf}},
            {"id": "s2", "input": "[[mock:badjson]] x", "params": {"response_format": rf}},
            {
                "id": "j1",
                "input": "any json",
                "params": {"response_format": {"type": "json_object"}},
            },
            {
                "id": "bad",
                "input": "x",
                "params": {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"type": 5}},
                    }
                },
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--max-retries", "1"))
    assert res.exit_code == 1
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert isinstance(recs["s1"]["parsed"]["n"], int)
    assert recs["s2"]["error"]["type"] == "invalid_output" and recs["s2"]["attempts"] == 2
    assert recs["j1"]["parsed"] == {"echo": "any json"}
    assert recs["bad"]["error"]["type"] == "invalid_request"
    assert "not a valid JSON Schema" in recs["bad"]["error"]["message"]
    res = run_cli(["validate", str(inp)])
    assert f"{inp}:4: params.response_format.json_schema.schema" in res.output


def test_export_input_order_joins_failed_rows_and_clashes(tmp_path: Path, server) -> None:
    # Jittered latency and concurrency: records land in another order than the rows.
    srv = server(latency=0.005, latency_jitter=0.03, seed=11)
    texts = [f"text {i}, with a comma" for i in range(40)]
    texts[7] = "[[mock:400]] rejected"
    inp = _reviews(tmp_path, texts)
    out = tmp_path / "labels.jsonl"
    res = run_cli(
        run_args(srv, inp, out, "--prompt", "{{ text }}", "--schema", DSL, "--concurrency", "16")
    )
    assert res.exit_code == 1
    lines = [r["line"] for r in read_jsonl(out)]
    assert lines != sorted(lines)
    dest = tmp_path / "labels.csv"
    res = run_cli(["export", str(out), "-o", str(dest), "--with", "latency_ms,model_used"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(dest.read_text())))
    assert list(rows[0]) == [
        "id",
        "text",
        "status",
        "sentiment",
        "confidence",
        "reason",
        "burstq_status",
        "error",
        "latency_ms",
        "model_used",
    ]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(40)]
    assert [r["text"] for r in rows] == texts
    assert all(r["status"] == "raw" for r in rows)  # the input's column, unchanged
    bad = rows[7]
    assert bad["burstq_status"] == "failed" and bad["sentiment"] == ""
    assert bad["error"].startswith("bad_request: ")
    good = rows[0]
    rec0 = next(r for r in read_jsonl(out) if r["request_id"] == "r0")
    assert good["sentiment"] == rec0["parsed"]["sentiment"]
    assert float(good["confidence"]) == rec0["parsed"]["confidence"]
    assert good["burstq_status"] == "completed" and good["error"] == ""

    # Shards of one input: records split across two OUTPUTs give the same export.
    recs = out.read_bytes().splitlines(keepends=True)
    side = (tmp_path / "labels.jsonl.burstq.json").read_bytes()
    for k in (0, 1):
        shard = tmp_path / f"shard{k}.jsonl"
        shard.write_bytes(b"".join(recs[k::2]))
        (tmp_path / f"shard{k}.jsonl.burstq.json").write_bytes(side)
    dest2 = tmp_path / "shards.csv"
    res = run_cli(
        [
            "export",
            str(tmp_path / "shard1.jsonl"),
            str(tmp_path / "shard0.jsonl"),
            "-o",
            str(dest2),
            "--with",
            "latency_ms,model_used",
        ]
    )
    assert res.exit_code == 0, res.output
    assert dest2.read_text() == dest.read_text()
    # The same line in two OUTPUTs is refused, not guessed at.
    res = run_cli(["export", str(out), str(tmp_path / "shard0.jsonl"), "-o", str(dest2)])
    assert res.exit_code == 2 and "has a record in" in res.output

    # JSONL to stdout; an unfinished run keeps its rows without a record.
    out.write_bytes(b"".join(recs[:10]))
    res = run_cli(["export", str(out), "-o", "-", "--format", "jsonl"])
    assert res.exit_code == 0
    exported = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert len(exported) == 40
    assert sum(1 for e in exported if e["burstq_status"] == "missing") == 30


def test_export_of_plain_request_outputs_and_changed_input(tmp_path: Path, server) -> None:
    srv = server(latency_jitter=0.02, seed=2)
    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "input": f"q {i}"} for i in range(12)]
    )
    out = tmp_path / "out.jsonl"
    assert run_cli(run_args(srv, inp, out, "--concurrency", "6")).exit_code == 0
    dest = tmp_path / "out.tsv"
    assert run_cli(["export", str(out), "-o", str(dest)]).exit_code == 0
    rows = [line.split("\t") for line in dest.read_text().splitlines()]
    assert rows[0] == ["request_id", "output", "status", "error"]
    assert [r[0] for r in rows[1:]] == [f"q{i}" for i in range(12)]
    assert rows[1][1] == "echo: q 0"
    # A labeling run's INPUT that changed since: refused (its lines no longer match).
    rows_in = _reviews(tmp_path, ["a", "b"])
    lab = tmp_path / "lab.jsonl"
    assert run_cli(run_args(srv, rows_in, lab, "--prompt", "{{ text }}")).exit_code == 0
    rows_in.write_text("id,text,status\nr9,z,raw\n")
    res = run_cli(["export", str(lab), "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "changed since the run" in res.output
    assert not (tmp_path / "x.csv").exists()


def test_simulate_labels_the_sample_dataset(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "labels.jsonl"
    res = run_cli(
        [
            "run",
            str(root / "samples/reviews.csv"),
            "-o",
            str(out),
            "--template",
            str(root / "samples/reviews.toml"),
            "--simulate",
            "--progress",
            "quiet",
            "--backoff-base",
            "0.01",
            "--concurrency",
            "64",
        ]
    )
    assert res.exit_code in (0, 1), res.output
    recs = read_jsonl(out)
    assert len(recs) >= 200
    done = [r for r in recs if r["status"] == "completed"]
    assert len(done) >= 0.95 * len(recs)
    assert all(r["parsed"]["sentiment"] in ("positive", "negative", "neutral") for r in done)
    dest = tmp_path / "labels.csv"
    assert run_cli(["export", str(out), "-o", str(dest)]).exit_code == 0
    exported = list(csv.DictReader(io.StringIO(dest.read_text(), newline="")))
    sample = (root / "samples/reviews.csv").read_text(encoding="utf-8-sig")
    source = list(csv.DictReader(io.StringIO(sample, newline="")))
    assert [r["id"] for r in exported] == [r["id"] for r in source]
    assert [r["text"] for r in exported] == [r["text"] for r in source]
