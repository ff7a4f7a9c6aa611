"""Data rows in: CSV/TSV edge cases, JSONL objects, Parquet, templates, ids, validate and
estimate on rows, --via batch on rows, and resume of a labeling run after kill -9."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from .conftest import read_jsonl, run_args, run_cli, write_jsonl
from .test_resume import complete_lines, settled, subprocess_env

# Every awkward case at once: BOM, CRLF, quoted commas, doubled quotes, a newline inside a
# field (the row starts on line 5 and ends on line 6), an empty field, a blank line.
AWKWARD = (
    "\ufeffid,text,note\r\n"
    'a1,"Good, solid, cheap",plain\r\n'
    'a2,"He said ""meh"" twice",\r\n'
    "a3,no quotes,x\r\n"
    'a4,"two\r\nlines",y\r\n'
    "\r\n"
    "a5,,empty text\r\n"
)


def test_csv_edge_cases_render_exactly_and_keep_file_lines(tmp_path: Path, server) -> None:
    srv = server()
    inp = tmp_path / "reviews.csv"
    inp.write_bytes(AWKWARD.encode())
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--prompt", "[{{ text }}] ({{ note }}) #{{ row.id }}"))
    assert res.exit_code == 0, res.output
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert sorted(recs) == ["a1", "a2", "a3", "a4", "a5"]
    assert recs["a1"]["output"] == "echo: [Good, solid, cheap] (plain) #a1"
    assert recs["a2"]["output"] == 'echo: [He said "meh" twice] () #a2'
    assert recs["a4"]["output"] == "echo: [two\r\nlines] (y) #a4"
    assert recs["a5"]["output"] == "echo: [] (empty text) #a5"
    # `line` is the file line where the row starts (the BOM/header is line 1).
    assert [recs[k]["line"] for k in ("a1", "a2", "a3", "a4", "a5")] == [2, 3, 4, 5, 8]
    # A rerun of the finished job sends nothing.
    before = settled(srv)["requests_total"]
    assert run_cli(run_args(srv, inp, out, "--prompt", "[{{ text }}] ({{ note }}) #{{ row.id }}"))
    assert settled(srv)["requests_total"] == before
    # Another template renders other requests: an incremental rerun (issue 15) sends them all.
    before = settled(srv)["requests_total"]
    res = run_cli(run_args(srv, inp, out, "--prompt", "{{ text }}", "--progress", "plain"))
    assert "kept 0, dropped 5, to send 4 (1 invalid lines recorded, not sent)" in res.output
    assert settled(srv)["requests_total"] == before + 4
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert sorted(recs) == ["a1", "a2", "a3", "a4", "a5"]
    assert recs["a1"]["output"] == "echo: Good, solid, cheap"
    assert recs["a5"]["error"]["type"] == "invalid_request"  # rendered empty: no call


def test_tsv_and_row_number_ids(tmp_path: Path, server) -> None:
    srv = server()
    inp = tmp_path / "data.tsv"
    inp.write_text("text\tlang\nhello, world\ten\nbonjour\tfr\n")
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--prompt", "{{ lang }}: {{ text }}"))
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert {r["request_id"]: r["output"] for r in recs} == {
        "1": "echo: en: hello, world",
        "2": "echo: fr: bonjour",
    }


def test_missing_columns_fail_their_row_only_and_validate_names_the_line(
    tmp_path: Path, server
) -> None:
    srv = server()
    inp = tmp_path / "r.csv"
    inp.write_text('id,text,extra\nk1,fine,x\nk2,"multi\nline"\nk3,short\n')
    out = tmp_path / "out.jsonl"
    prompt = "{{ text }} / {{ extra }}"
    res = run_cli(["validate", str(inp), "--prompt", prompt])
    assert res.exit_code == 2
    assert f"{inp}:3: row 2: column 'extra' is missing" in res.output
    assert f"{inp}:5: row 3: column 'extra' is missing" in res.output
    assert "3 requests, 2 invalid" in res.output
    res = run_cli(run_args(srv, inp, out, "--prompt", prompt))
    assert res.exit_code == 1
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert recs["k1"]["status"] == "completed"
    for key in ("k2", "k3"):
        assert recs[key]["status"] == "failed" and recs[key]["attempts"] == 0
        assert recs[key]["error"]["type"] == "invalid_request"
        assert "column 'extra' is missing" in recs[key]["error"]["message"]
    assert settled(srv)["requests_total"] == 1  # the bad rows were never sent
    # A row wider than the header and a missing id column are that row's errors too.
    inp.write_text("id,text\nk1,a,b\n,empty id\n")
    res = run_cli(["validate", str(inp), "--prompt", "{{ text }}", "--id-column", "id"])
    assert "r.csv:2: row 1: 3 fields, but the header has 2" in res.output
    assert "r.csv:3: row 2: id column 'id' is empty" in res.output


def test_jsonl_rows_tojson_row_and_duplicates(tmp_path: Path, server) -> None:
    srv = server()
    inp = write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"sku": "s1", "title": "Lamp", "tags": ["home", "light"]},
            "",
            {"sku": "s2", "title": "Ünïcode", "tags": []},
            '["not", "an", "object"]',
            {"sku": "s1", "title": "dupe", "tags": []},
        ],
    )
    out = tmp_path / "out.jsonl"
    prompt = "{{ title }} {{ tags | tojson }} {{ row | length }}"
    res = run_cli(run_args(srv, inp, out, "--prompt", prompt, "--id-column", "sku"))
    assert res.exit_code == 1
    recs = read_jsonl(out)
    by_line = {r["line"]: r for r in recs}
    assert by_line[1]["output"] == 'echo: Lamp ["home", "light"] 3'
    assert by_line[3]["output"] == "echo: Ünïcode [] 3"
    assert by_line[4]["error"]["type"] == "invalid_request"
    assert "expected a JSON object" in by_line[4]["error"]["message"]
    assert "duplicate id 's1'" in by_line[5]["error"]["message"]
    assert len(recs) == 4


def test_stdin_rows_need_a_format(tmp_path: Path, server) -> None:
    srv = server()
    res = run_cli(["run", "-", "--prompt", "{{ text }}", "--simulate"], input="text\nhi\n")
    assert res.exit_code == 2 and "--input-format" in res.output
    args = run_args(srv, Path("-"), Path("-"), "--prompt", "{{ text }}", "--input-format", "csv")
    res = run_cli(args, input="text\nhi there\n")
    assert res.exit_code == 0, res.output
    rec = orjson.loads(res.stdout.strip().splitlines()[-1])
    assert rec["output"] == "echo: hi there" and rec["line"] == 2


def test_template_file_and_sandbox(tmp_path: Path, server) -> None:
    srv = server()
    inp = tmp_path / "r.csv"
    inp.write_text("id,text\nr1,nice\n")
    tpl = tmp_path / "task.toml"
    tpl.write_text(
        'model = "gpt-4o"\nsystem = "You label {{ id }}."\n'
        'prompt = """\nReview: {{ text }}\n"""\n[params]\ntemperature = 0\nmax_tokens = 50\n'
    )
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--template", str(tpl)))
    assert res.exit_code == 0, res.output
    rec = read_jsonl(out)[0]
    assert rec["model"] == "gpt-4o" and rec["output"] == "echo: Review: nice"
    # --model on the command line wins over the file's.
    out2 = tmp_path / "out2.jsonl"
    assert run_cli(run_args(srv, inp, out2, "--template", str(tpl), "--model", "gpt-4o-mini"))
    assert read_jsonl(out2)[0]["model"] == "gpt-4o-mini"
    # The sandbox refuses attribute games; it is that row's failure, not a crash.
    out3 = tmp_path / "out3.jsonl"
    evil = "{{ text.__class__.__mro__[1].__subclasses__() }}"
    res = run_cli(run_args(srv, inp, out3, "--prompt", evil))
    assert res.exit_code == 1
    assert "sandbox" in read_jsonl(out3)[0]["error"]["message"]
    # A syntax error is a usage error before anything runs; unknown keys are refused.
    res = run_cli(run_args(srv, inp, tmp_path / "o4.jsonl", "--prompt", "{{ text"))
    assert res.exit_code == 2 and "prompt template, line 1" in res.output
    tpl.write_text('prompt = "x"\nmodle = "typo"\n')
    res = run_cli(run_args(srv, inp, tmp_path / "o5.jsonl", "--template", str(tpl)))
    assert res.exit_code == 2 and "unknown key(s) modle" in res.output


def test_estimate_and_batch_on_rows(tmp_path: Path, server) -> None:
    srv = server(batch_seconds=0.2)
    inp = tmp_path / "r.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},review number {i}\n" for i in range(5)))
    res = run_cli(["estimate", str(inp), "--prompt", "Label: {{ text }}", "--json"])
    assert res.exit_code == 0, res.output
    est = orjson.loads(res.stdout)
    assert est["requests"] == 5 and est["invalid"] == 0
    out = tmp_path / "out.jsonl"
    schema = "label: one of good/bad"
    args = run_args(
        srv,
        inp,
        out,
        "--prompt",
        "{{ text }}",
        "--schema",
        schema,
        "--via",
        "batch",
        "--batch-poll",
        "0.05",
    )
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == [f"r{i}" for i in range(5)]
    assert all(r["parsed"]["label"] in ("good", "bad") for r in recs)


def test_parquet_rows_and_export(tmp_path: Path, server) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    srv = server()
    inp = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12], "text": ["a", "b", None]}), inp)
    out = tmp_path / "out.jsonl"
    res = run_cli(run_args(srv, inp, out, "--prompt", "t={{ text }}", "--schema", "ok bool"))
    assert res.exit_code == 0, res.output
    recs = sorted(read_jsonl(out), key=lambda r: r["line"])
    assert [r["request_id"] for r in recs] == ["10", "11", "12"]
    assert recs[2]["output"] and isinstance(recs[0]["parsed"]["ok"], bool)
    dest = tmp_path / "labels.parquet"
    res = run_cli(["export", str(out), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    table = pq.read_table(dest)
    assert table.column_names == ["id", "text", "ok", "status", "error"]
    assert table.column("ok").type == pa.bool_()
    assert table.column("status").to_pylist() == ["completed"] * 3


def test_labeling_run_resumes_after_kill_9(tmp_path: Path, server) -> None:
    srv = server(latency=0.02, latency_jitter=0.03, seed=3)
    n = 120
    inp = tmp_path / "reviews.csv"
    inp.write_text(
        "id,text\n"
        + "".join(f'k{i},"review {i}, with ""quotes""\nand a second line"\n' for i in range(n))
    )
    out = tmp_path / "labels.jsonl"
    args = run_args(
        srv,
        inp,
        out,
        "--prompt",
        "{{ text }}",
        "--schema",
        "label: one of a/b, score float",
        "--concurrency",
        "8",
    )[:]
    args.remove("--api-key")
    args.remove(args[args.index("--base-url") + 2])
    cmd = [sys.executable, "-m", "burstcli.cli", *args]
    env = subprocess_env()
    for _ in range(2):
        target = complete_lines(out) + 25
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while complete_lines(out) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert proc.poll() is None, "finished before the kill point"
        proc.kill()
        proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == sorted(f"k{i}" for i in range(n))
    assert all(r["status"] == "completed" and r["parsed"]["label"] in "ab" for r in recs)
    completed = settled(srv)["completed_by_prompt"]
    assert len(completed) == n
    assert sum(c - 1 for c in completed.values()) <= 2 * 8  # at most what was in flight
