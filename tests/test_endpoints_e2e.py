"""--endpoints end to end: several mock servers on loopback, the real client, the real engine."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.mock.server import ThreadedMockServer

from .conftest import read_jsonl, run_cli, write_jsonl

pytestmark = pytest.mark.e2e

KEYS = {"KEY_A": "sk-Qz7aXw-Lm3Pq8Rt2Vd", "KEY_B": "sk-Vb4kJy-Hc6Tg1Ws9Nf"}
Server = Callable[..., ThreadedMockServer]


def _file(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    lines = []
    for e in entries:
        lines.append("[[endpoint]]")
        for k, v in e.items():
            if isinstance(v, dict):
                inner = ", ".join(
                    f"{orjson.dumps(a).decode()} = {orjson.dumps(b).decode()}" for a, b in v.items()
                )
                lines.append(f"{k} = {{ {inner} }}")
            else:
                lines.append(f"{k} = {orjson.dumps(v).decode()}")
    path = tmp_path / "endpoints.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _requests(tmp_path: Path, n: int, **extra: Any) -> Path:
    return write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "input": f"q{i}", **extra} for i in range(n)]
    )


def _run(inp: Path, out: Path, eps: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    args = ["run", str(inp), "-o", str(out), "--endpoints", str(eps), "--backoff-base", "0.01"]
    return run_cli([*args, "--progress", "quiet", *extra], env={**KEYS, **(env or {})})


def _span(*servers: ThreadedMockServer) -> float:
    stats = [s.stats() for s in servers]
    first = min(st["first_request_at"] for st in stats if st["first_request_at"] is not None)
    last = max(st["last_response_at"] for st in stats if st["last_response_at"] is not None)
    return float(last - first)


@pytest.mark.parametrize("told", [True, False], ids=["told", "learned"])
def test_two_endpoints_reach_the_sum_of_their_limits(
    server: Server, tmp_path: Path, told: bool
) -> None:
    a = server(rpm=1200, latency=0.01)
    b = server(rpm=600, latency=0.01)
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, **({"rpm": 1200} if told else {})},
        {"name": "b", "base_url": b.base_url, **({"rpm": 600} if told else {})},
    )
    n = 150
    inp, out = _requests(tmp_path, n), tmp_path / "out.jsonl"
    res = _run(inp, out, eps, "--concurrency", "20")
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == n and all(r["status"] == "completed" for r in recs)
    by = Counter(r["endpoint"] for r in recs)
    limited = a.stats()["rate_limited"] + b.stats()["rate_limited"]
    # Together they admit 30 requests a second (the mocks' full first second aside).
    rate_ratio = (n / 30) / _span(a, b)
    if told:
        assert limited == 0
        assert rate_ratio > 0.9, rate_ratio
    else:
        assert limited <= n * 0.03, limited  # almost none while the ceilings are learned
        assert rate_ratio > 0.75, rate_ratio
    # Shares follow the ceilings (2:1), within what the first second's free burst skews.
    assert 0.5 <= by["a"] / n <= 0.8, by


def test_a_dead_endpoint_gets_a_bounded_number_of_attempts(server: Server, tmp_path: Path) -> None:
    good = server(latency=0.005)
    bad = server(fault_rate=1.0, fault_kinds=("500",))
    eps = _file(
        tmp_path,
        {"name": "good", "base_url": good.base_url, "concurrency": 8},
        {"name": "bad", "base_url": bad.base_url, "concurrency": 8, "breaker_cooldown": 60},
        # Nothing listens here: connection refused, which opens the breaker at once.
        {"name": "gone", "base_url": "http://127.0.0.1:9/v1", "concurrency": 8},
    )
    n = 120
    inp, out = _requests(tmp_path, n), tmp_path / "out.jsonl"
    res = _run(inp, out, eps, "--max-retries", "1")
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == n and {r["status"] for r in recs} == {"completed"}
    assert {r["endpoint"] for r in recs} == {"good"}
    # Three failures in a row open the breaker; then only what was already in flight (its
    # window of 8) and no probe within the 60 s cool-down: a bound, not a share of n.
    assert bad.stats()["requests_total"] <= 3 + 8, bad.stats()["requests_total"]
    # Moving off a dead endpoint did not spend the requests' one retry: none failed.
    assert "out of rotation" in res.output


def test_an_endpoint_stopped_mid_run_loses_nothing(server: Server, tmp_path: Path) -> None:
    a = server(rpm=1200, latency=0.01)
    b = server(rpm=1200, latency=0.01)
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "rpm": 1200},
        {"name": "b", "base_url": b.base_url, "rpm": 1200},
    )
    n = 120
    inp, out = _requests(tmp_path, n), tmp_path / "out.jsonl"
    timer = threading.Timer(1.0, b.close)  # ~half-way through (40 req/s for 3 s)
    timer.start()
    try:
        res = _run(inp, out, eps, "--max-retries", "2")
    finally:
        timer.cancel()
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == n and {r["status"] for r in recs} == {"completed"}
    by = Counter(r["endpoint"] for r in recs)
    assert by["a"] > n / 2 and by["b"] > 0, by
    assert len({r["request_id"] for r in recs}) == n
    # No request paid more than a couple of attempts for the stop.
    assert max(r["attempts"] for r in recs) <= 3


def test_a_wrong_key_retires_one_endpoint_and_the_run_goes_on(
    server: Server, tmp_path: Path
) -> None:
    a = server(api_keys=frozenset({KEYS["KEY_A"]}))
    b = server(api_keys=frozenset({"sk-Rt9mNp-Ey2Ku5Zo7Bx"}))
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "api_key_env": "KEY_A"},
        {"name": "b", "base_url": b.base_url, "api_key_env": "KEY_B"},
    )
    inp, out = _requests(tmp_path, 40), tmp_path / "out.jsonl"
    res = _run(inp, out, eps)
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert {r["status"] for r in recs} == {"completed"} and len(recs) == 40
    assert "endpoint b retired (auth:" in res.output
    assert b.stats()["requests_total"] <= 2  # the first answer retires it
    text = res.output + out.read_text()
    assert KEYS["KEY_A"] not in text and KEYS["KEY_B"] not in text
    assert KEYS["KEY_B"][5:15] not in text


def test_no_endpoint_left_for_a_model_stops_the_run_exit_2(server: Server, tmp_path: Path) -> None:
    a = server()
    b = server(api_keys=frozenset({"sk-Rt9mNp-Ey2Ku5Zo7Bx"}))
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "models": ["gpt-4o-mini"]},
        {"name": "b", "base_url": b.base_url, "api_key_env": "KEY_B", "models": ["gpt-4o"]},
    )
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": f"r{i}", "input": "x", "model": "gpt-4o" if i % 2 else "gpt-4o-mini"}
            for i in range(20)
        ],
    )
    out = tmp_path / "out.jsonl"
    res = _run(inp, out, eps)
    assert res.exit_code == 2, res.output
    assert "no endpoint left for model gpt-4o" in res.output and "b: auth" in res.output
    assert KEYS["KEY_B"] not in res.output
    # What finished before the stop is kept, and a gpt-4o request was never recorded failed.
    assert all(r["status"] == "completed" for r in read_jsonl(out))


def test_deployments_headers_and_azure_key_header(server: Server, tmp_path: Path) -> None:
    azure = server(
        api_keys=frozenset({KEYS["KEY_B"]}),
        models=frozenset({"mini-eu"}),
        record_headers=("x-team", "x-token", "authorization", "api-key"),
    )
    eps = _file(
        tmp_path,
        {
            "name": "azure",
            "base_url": azure.base_url,
            "api_key_env": "KEY_B",
            "api_key_header": "api-key",
            "deployments": {"gpt-4o-mini": "mini-eu"},
            "headers": {"x-team": "ml", "x-token": "${TEAM_TOKEN}"},
            "query": {"api-version": "2024-10-21"},
        },
    )
    inp, out = _requests(tmp_path, 5), tmp_path / "out.jsonl"
    res = _run(inp, out, eps, env={"TEAM_TOKEN": "team-token-123456"})
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert {(r["status"], r["model"], r["endpoint"]) for r in recs} == {
        ("completed", "gpt-4o-mini", "azure")
    }
    st = azure.stats()
    assert st["models_seen"] == {"mini-eu": 5}  # the deployment name is what arrived
    assert st["headers_seen"] == {
        "x-team: ml": 5,
        "x-token: team-token-123456": 5,
        f"api-key: {KEYS['KEY_B']}": 5,
    }  # and no Authorization header at all


def test_fallback_models_apply_across_endpoints(server: Server, tmp_path: Path) -> None:
    a = server()
    b = server()
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "models": ["gpt-4o"]},
        {"name": "b", "base_url": b.base_url, "models": ["gpt-4o-mini"]},
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "r", "input": "x", "model": "no-such"}])
    out = tmp_path / "out.jsonl"
    res = _run(inp, out, eps, "--fallback-model", "gpt-4o-mini")
    assert res.exit_code == 0, res.output
    (rec,) = read_jsonl(out)
    assert (rec["status"], rec["model_used"], rec["endpoint"]) == ("completed", "gpt-4o-mini", "b")


def test_stats_and_metrics_break_down_by_endpoint(server: Server, tmp_path: Path) -> None:
    a = server()
    b = server()
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "concurrency": 2},
        {"name": "b", "base_url": b.base_url, "concurrency": 2},
    )
    inp, out = _requests(tmp_path, 30), tmp_path / "out.jsonl"
    prom = tmp_path / "m.prom"
    res = _run(inp, out, eps, "--metrics-file", str(prom))
    assert res.exit_code == 0, res.output
    stats = orjson.loads(run_cli(["stats", str(out), "--json"]).stdout)
    by = stats["endpoints"]
    assert set(by) == {"a", "b"} and by["a"]["count"] + by["b"]["count"] == 30
    assert by["a"]["completed"] == by["a"]["count"] and by["a"]["latency_p50_ms"] is not None
    text = prom.read_text()
    for name in ("a", "b"):
        n = by[name]["count"]
        assert (
            f'burstq_endpoint_requests_total{{endpoint="{name}",status="completed"}} {n}.0' in text
        )
        assert f'burstq_endpoint_up{{endpoint="{name}"}} 1.0' in text
    table = run_cli(["stats", str(out)])
    assert "Per endpoint" in table.output


def test_plain_status_lines_show_each_endpoint(server: Server, tmp_path: Path) -> None:
    a = server(latency=0.05)
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "rpm": 600},
        {"name": "dead", "base_url": "http://127.0.0.1:9/v1"},
    )
    inp, out = _requests(tmp_path, 20), tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--endpoints", str(eps), "--backoff-base", "0.01"]
    res = run_cli([*args, "--progress", "plain", "--status-every", "0.3"], env=KEYS)
    assert res.exit_code == 0, res.output
    assert "endpoints: a ok" in res.output and "rpm≤600" in res.output
    assert "dead open" in res.output


def test_endpoints_check(server: Server, tmp_path: Path) -> None:
    a = server(rpm=600, api_keys=frozenset({KEYS["KEY_A"]}))
    b = server(api_keys=frozenset({"sk-Rt9mNp-Ey2Ku5Zo7Bx"}))
    eps = _file(
        tmp_path,
        {"name": "a", "base_url": a.base_url, "api_key_env": "KEY_A", "models": ["gpt-4o-mini"]},
        {"name": "b", "base_url": b.base_url, "api_key_env": "KEY_B"},
        {"name": "c", "base_url": "http://127.0.0.1:9/v1"},
        {"name": "d", "base_url": a.base_url, "api_key_env": "KEY_A", "models": ["gpt-9"]},
    )
    res = run_cli(["endpoints", "check", str(eps), "--tiny-request", "--json"], env=KEYS)
    assert res.exit_code == 1, res.output
    got = {r["name"]: r for r in orjson.loads(res.stdout)}
    assert got["a"]["ok"] and got["a"]["key_ok"] and got["a"]["reachable"]
    assert (got["a"]["rpm"], got["a"]["limits_from"]) == (600, "headers")
    assert got["b"]["reachable"] and got["b"]["key_ok"] is False and not got["b"]["ok"]
    assert not got["c"]["reachable"]
    assert got["d"]["missing_models"] == ["gpt-9"]
    assert KEYS["KEY_B"] not in res.output
    one = _file(tmp_path, {"name": "a", "base_url": a.base_url, "api_key_env": "KEY_A"})
    table = run_cli(["endpoints", "check", str(one)], env=KEYS)
    assert table.exit_code == 0 and "valid" in table.output, table.output
