"""Issue 15: the opt-in SQLite answer cache, end to end against the mock server on loopback.

The mock's per-prompt counters prove which requests reached it; the cache is a real SQLite file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.money.cache import parse_age, provider_key

from .conftest import read_jsonl, run_args, run_cli, write_jsonl
from .test_resume import subprocess_env

pytestmark = pytest.mark.e2e


def sent(srv: Any) -> dict[str, int]:
    return dict(srv.stats()["completed_by_prompt"])


def test_cache_is_shared_by_two_input_files(server: Any, tmp_path: Path) -> None:
    srv = server()
    db = tmp_path / "answers.db"
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "input": f"q {i}"} for i in range(6)])
    out_a = tmp_path / "a.out.jsonl"
    assert run_cli(run_args(srv, a, out_a, "--cache", str(db))).exit_code == 0
    paid = {r["request_id"]: r for r in read_jsonl(out_a)}
    assert all(r["cost_usd"] > 0 and "cached" not in r for r in paid.values())
    srv.reset_stats()

    # Another file, other ids and metadata: four of its requests were answered before.
    b_rows = [{"id": f"b{i}", "input": f"q {i}", "metadata": {"i": i}} for i in range(2, 8)]
    b = write_jsonl(tmp_path / "b.jsonl", b_rows)
    out_b = tmp_path / "b.out.jsonl"
    res = run_cli(run_args(srv, b, out_b, "--cache", str(db), "--progress", "plain"))
    assert res.exit_code == 0, res.output
    assert "4 from the cache" in res.output
    assert sent(srv) == {"q 6": 1, "q 7": 1}
    recs = {r["request_id"]: r for r in read_jsonl(out_b)}
    for i in range(2, 6):
        hit, orig = recs[f"b{i}"], paid[f"a{i}"]
        assert hit["cached"] is True and hit["status"] == "completed"
        assert hit["output"] == orig["output"] and hit["usage"] == orig["usage"]
        assert hit["cost_usd"] == 0 and hit["saved_usd"] == orig["cost_usd"]
        assert hit["attempts"] == 0 and hit["metadata"] == {"i": i}
        assert hit["fingerprint"] == orig["fingerprint"]
    assert "cached" not in recs["b6"]

    # stats shows what the cache saved; cache stats shows hits and money.
    res = run_cli(["stats", str(out_b), "--json"])
    stats = orjson.loads(res.stdout)
    assert stats["cache"]["cached"] == 4
    assert stats["cache"]["saved_usd"] == pytest.approx(
        sum(paid[f"a{i}"]["cost_usd"] for i in range(2, 6))
    )
    res = run_cli(["cache", "stats", str(db), "--json"])
    info = orjson.loads(res.stdout)
    assert info["answers"] == 8 and info["hits"] == 4
    assert info["providers"] == {provider_key(srv.base_url, False): 8}


def test_changed_model_or_params_is_a_miss_and_failures_are_never_cached(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    db = tmp_path / "answers.db"
    base = [
        {"id": "x", "input": "same words"},
        {"id": "bad", "input": "[[mock:400]] refused"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", base)
    assert run_cli(run_args(srv, inp, tmp_path / "o1.jsonl", "--cache", str(db))).exit_code == 1
    srv.reset_stats()
    variants = [
        {"id": "same", "input": "same words"},  # a hit
        {"id": "model", "input": "same words", "model": "gpt-4o"},
        {"id": "temp", "input": "same words", "params": {"temperature": 0.5}},
        {"id": "max", "input": "same words", "params": {"max_tokens": 7}},
        {"id": "bad", "input": "[[mock:400]] refused"},  # failed before: asked again
    ]
    inp2 = write_jsonl(tmp_path / "in2.jsonl", variants)
    out = tmp_path / "o2.jsonl"
    assert run_cli(run_args(srv, inp2, out, "--cache", str(db))).exit_code == 1
    st = srv.stats()
    assert st["attempts_by_prompt"] == {"same words": 3, "[[mock:400]] refused": 1}
    cached = {r["request_id"] for r in read_jsonl(out) if r.get("cached")}
    assert cached == {"same"}


def test_deterministic_only_caches_embeddings_and_temperature_zero(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    db = tmp_path / "answers.db"
    lines = [
        {"id": "t0", "input": "cold", "params": {"temperature": 0}},
        {"id": "t7", "input": "warm", "params": {"temperature": 0.7}},
        {"id": "dflt", "input": "no temperature"},
        {"id": "e", "endpoint": "embeddings", "model": "text-embedding-3-small", "input": "vec"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    flags = ("--cache", str(db), "--cache-deterministic-only")
    for n in (1, 2):
        out = tmp_path / f"o{n}.jsonl"
        assert run_cli(run_args(srv, inp, out, *flags)).exit_code == 0
    assert sent(srv) == {"cold": 1, "warm": 2, "no temperature": 2, "vec": 1}
    # Without the flag (the default), the sampled answers are cached too.
    srv.reset_stats()
    for n in (3, 4):
        assert (
            run_cli(run_args(srv, inp, tmp_path / f"o{n}.jsonl", "--cache", str(db))).exit_code == 0
        )
    assert sent(srv) == {"warm": 1, "no temperature": 1}


def test_another_provider_is_a_miss(server: Any, tmp_path: Path) -> None:
    one, two = server(), server()
    db = tmp_path / "answers.db"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input": "hello"}])
    assert run_cli(run_args(one, inp, tmp_path / "o1.jsonl", "--cache", str(db))).exit_code == 0
    assert run_cli(run_args(two, inp, tmp_path / "o2.jsonl", "--cache", str(db))).exit_code == 0
    assert sent(one) == {"hello": 1} and sent(two) == {"hello": 1}
    assert provider_key("https://user:pw@example.com:8443/v1/", False) == (
        "https://example.com:8443/v1"
    )


def test_hits_cost_no_rate_limit_budget(server: Any, tmp_path: Path) -> None:
    srv = server()
    db = tmp_path / "answers.db"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input": f"r {i}"} for i in range(30)])
    assert run_cli(run_args(srv, inp, tmp_path / "o1.jsonl", "--cache", str(db))).exit_code == 0
    srv.reset_stats()
    # At one request a minute, 30 requests would take half an hour; 30 hits take no budget.
    cmd = [
        sys.executable,
        "-m",
        "burstcli.cli",
        *run_args(srv, inp, tmp_path / "o2.jsonl", "--cache", str(db), "--rpm", "1"),
    ]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert srv.stats()["requests_total"] == 0
    assert all(r["cached"] for r in read_jsonl(tmp_path / "o2.jsonl"))


def test_two_concurrent_processes_share_one_cache_file(server: Any, tmp_path: Path) -> None:
    srv = server(latency=0.01, latency_jitter=0.02, seed=3)
    db = tmp_path / "answers.db"
    common = [{"input": f"shared {i}"} for i in range(40)]
    files = []
    for name in ("p", "q"):
        own = [{"input": f"{name} only {i}"} for i in range(40)]
        files.append(write_jsonl(tmp_path / f"{name}.jsonl", common + own))
    env = subprocess_env()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "burstcli.cli",
                *run_args(srv, f, f.with_suffix(".out"), "--cache", str(db), "--concurrency", "8"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for f in files:
        assert len(read_jsonl(f.with_suffix(".out"))) == 80
    # Every answer either process bought is in the file, whole: a third run sends nothing.
    srv.reset_stats()
    union = write_jsonl(
        tmp_path / "union.jsonl",
        common + [{"input": f"{n} only {i}"} for n in ("p", "q") for i in range(40)],
    )
    out = tmp_path / "union.out"
    assert run_cli(run_args(srv, union, out, "--cache", str(db))).exit_code == 0
    assert srv.stats()["requests_total"] == 0
    assert len(read_jsonl(out)) == 120
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 120
    finally:
        conn.close()


def test_cache_prune_by_age_and_stats(server: Any, tmp_path: Path) -> None:
    srv = server()
    db = tmp_path / "answers.db"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input": f"p {i}"} for i in range(5)])
    assert run_cli(run_args(srv, inp, tmp_path / "o.jsonl", "--cache", str(db))).exit_code == 0
    conn = sqlite3.connect(db)
    old = time.time() - 40 * 86400
    with conn:
        conn.execute(
            "UPDATE answers SET created_at = ? WHERE fingerprint IN "
            "(SELECT fingerprint FROM answers ORDER BY fingerprint LIMIT 2)",
            (old,),
        )
    conn.close()
    res = run_cli(["cache", "prune", str(db), "--older-than", "30d"])
    assert res.exit_code == 0 and "pruned 2 answers" in res.output
    res = run_cli(["cache", "stats", str(db)])
    assert res.exit_code == 0 and "Answers" in res.output
    assert orjson.loads(run_cli(["cache", "stats", str(db), "--json"]).stdout)["answers"] == 3
    # The pruned two are bought again, the other three are hits.
    srv.reset_stats()
    assert run_cli(run_args(srv, inp, tmp_path / "o2.jsonl", "--cache", str(db))).exit_code == 0
    assert srv.stats()["requests_total"] == 2
    assert run_cli(["cache", "stats", str(tmp_path / "missing.db")]).exit_code == 2
    assert run_cli(["cache", "prune", str(db), "--older-than", "soon"]).exit_code == 2
    assert parse_age("12h") == 43200 and parse_age("2w") == 14 * 86400
