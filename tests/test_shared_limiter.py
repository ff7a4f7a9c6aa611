"""--limiter redis://: one rpm/tpm budget for many processes, against a REAL redis-server.

The end-to-end tests spawn real `burstq run` processes against the project's mock server
(rates enforced in 1 s quanta, as providers do) and one redis-server on loopback; the unit
tests drive two SharedPacers (two clients, as two processes would be) on one key.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from burstcli.live.limits import Limits
from burstcli.live.shared import (
    KEY_PREFIX,
    LimiterUnavailable,
    SharedPacer,
    connect,
    default_limit_key,
    display_url,
)

from .conftest import TEST_KEY, RedisServer, read_jsonl, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def rows(n: int, tag: str = "say") -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "input": f"{tag} {i}"} for i in range(n)]


def spawn(srv: Any, inp: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BURSTQ_"))}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "burstcli.cli",
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            srv.base_url,
            "--api-key",
            TEST_KEY,
            "--backoff-base",
            "0.01",
            "--progress",
            "plain",
            "--status-every",
            "0.2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def finish(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> list[tuple[int, str]]:
    done = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        done.append((p.returncode, err.decode()))
    return done


def one_record_per_line(out: Path, n: int) -> list[dict[str, Any]]:
    recs = read_jsonl(out)
    assert sorted(r["request_id"] for r in recs) == sorted(f"r{i}" for i in range(n))
    return recs


# -- three processes, one budget -----------------------------------------------------------


def test_three_processes_share_one_rpm_without_429s(tmp_path: Path, server, redis_server) -> None:
    rpm, n = 9000, 150  # 150 a second shared; each process alone could send all of it
    srv = server(rpm=rpm, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    outs = [tmp_path / f"out{k}.jsonl" for k in range(3)]
    procs = [
        spawn(srv, inp, o, "--rpm", str(rpm), "--concurrency", "50", "--limiter", redis_server.url)
        for o in outs
    ]
    results = finish(procs)
    assert [code for code, _ in results] == [0, 0, 0], results
    for o in outs:
        one_record_per_line(o, n)
    stats = srv.stats()
    per_second = stats["arrivals_per_second"]
    full = per_second[1:-1]  # whole seconds after the server's initial full bucket
    achieved = sum(full) / len(full) / (rpm / 60)
    print(f"shared rpm {rpm}: per second {per_second}, {achieved:.1%} of the ceiling")
    assert stats["by_status"].get("429", 0) == 0
    assert stats["requests_total"] == 3 * n
    assert max(per_second) <= rpm / 60 * 1.05
    assert achieved >= 0.95
    assert all("limiter shared" in err for _, err in results)


def test_the_same_three_without_the_limiter_earn_429s(tmp_path: Path, server) -> None:
    rpm, n = 3000, 60  # 50 a second; together they send three times that
    srv = server(rpm=rpm, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    procs = [
        spawn(srv, inp, tmp_path / f"out{k}.jsonl", "--rpm", str(rpm), "--concurrency", "50")
        for k in range(3)
    ]
    deadline = time.monotonic() + 30
    while not srv.stats(settle=0)["by_status"].get("429") and time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.02)
    limited = srv.stats(settle=0)["by_status"].get("429", 0)
    for p in procs:
        if p.poll() is None:
            p.terminate()  # the proof is in; the rest would only wait out retry-after
    finish(procs)
    assert limited > 0  # each process paced itself to the whole limit


# -- the shared state itself, two pacers on one key ----------------------------------------


async def _pair(url: str, key: str, **kw: Any) -> tuple[SharedPacer, SharedPacer, list[Any]]:
    loop = asyncio.get_running_loop()
    clients = [connect(url), connect(url)]
    a, b = (SharedPacer(c, key, clock=loop.time, url=url, **kw) for c in clients)
    return a, b, clients


async def _close(pacers: list[SharedPacer], clients: list[Any]) -> None:
    for p in pacers:
        await p.aclose()
    for c in clients:
        await c.aclose()


async def test_a_429_seen_by_one_process_pauses_the_other(redis_server: RedisServer) -> None:
    a, b, clients = await _pair(redis_server.url, "k429", rpm=60_000, tpm=None)
    loop = asyncio.get_running_loop()
    try:
        assert await b.reserve(10) <= loop.time() + 0.01
        a.rate_limited(0.5)
        await a.reserve(1)  # the 429 has reached Redis once a's next booking is back
        start = await b.reserve(10)
        assert start - loop.time() == pytest.approx(0.5, abs=0.05)
        assert b.rpm is not None and b.rpm == pytest.approx(60_000 * 0.85)  # slowed, once
        assert redis_server.client().hget(KEY_PREFIX + "k429", "limited") == b"1"
    finally:
        await _close([a, b], clients)


async def test_learned_ceilings_and_token_debt_are_shared(redis_server: RedisServer) -> None:
    a, b, clients = await _pair(redis_server.url, "klearn", rpm=None, tpm=None)
    loop = asyncio.get_running_loop()
    try:
        a.learn(None, 6000.0, (0.0, 0.0))  # x-ratelimit-limit-tokens: 6000 (100 a second)
        await a.reserve(1)
        await b.reserve(1)
        assert b.tpm_ceiling == 6000 and b.tpm == pytest.approx(6000 * 0.97)
        assert b.rpm_ceiling is None  # nothing learned or told about requests
        a.charge(97)  # real usage 97 tokens over the estimate: about a second of the budget
        await a.reserve(1)
        start = await b.reserve(1)
        assert start - loop.time() == pytest.approx(1.0, abs=0.1)
    finally:
        await _close([a, b], clients)


async def test_told_ceiling_is_the_lowest_and_tokens_are_spread(redis_server: RedisServer) -> None:
    a, b, clients = await _pair(redis_server.url, "ktold", rpm=None, tpm=None)
    loop = asyncio.get_running_loop()
    await _close([a, b], clients)
    clients = [connect(redis_server.url), connect(redis_server.url)]
    a = SharedPacer(clients[0], "ktold", rpm=1200, tpm=60_000, clock=loop.time)
    b = SharedPacer(clients[1], "ktold", rpm=6000, tpm=None, clock=loop.time)
    try:
        await a.reserve(0)
        starts = await asyncio.gather(*(b.reserve(500) for _ in range(5)))
        # b was told 6000 rpm, a 1200: the budget follows the lower; tokens 1000 a second,
        # so 500-token requests go every half second (after the 50 ms burst credit).
        assert b.rpm_ceiling == 1200 and b.tpm_ceiling == 60_000
        gaps = [y - x for x, y in zip(sorted(starts), sorted(starts)[1:], strict=False)]
        assert all(g == pytest.approx(0.5, abs=0.02) for g in gaps[1:]), gaps
    finally:
        await _close([a, b], clients)


async def test_limits_with_a_shared_pacer_paces_and_pauses(redis_server: RedisServer) -> None:
    loop = asyncio.get_running_loop()
    client = connect(redis_server.url)
    shared = SharedPacer(client, "klimits", rpm=600, tpm=None, clock=loop.time)
    limits = Limits(concurrency=5, rpm=600, clock=loop.time, shared=shared)
    try:
        t0 = loop.time()
        for _ in range(4):
            await limits.pace(10)
        assert loop.time() - t0 == pytest.approx(0.3 - 0.05, abs=0.05)  # 10 a second
        limits.on_rate_limited({}, 0.3)
        snap = limits.snapshot()
        assert snap.paused_for > 0.25 and snap.limiter == "shared" and snap.rpm_ceiling == 600
        t1 = loop.time()
        await limits.pace(10)
        assert loop.time() - t1 >= 0.28
    finally:
        await shared.aclose()
        await client.aclose()


async def test_unreachable_redis_parks_waiters_then_stops(redis_server: RedisServer) -> None:
    loop = asyncio.get_running_loop()
    warnings: list[str] = []
    client = connect(redis_server.url)
    shared = SharedPacer(
        client, "kdown", rpm=6000, tpm=None, clock=loop.time, max_wait=0.6, warn=warnings.append
    )
    try:
        await shared.reserve(1)
        redis_server.stop()
        t0 = loop.time()
        with pytest.raises(LimiterUnavailable, match="unreachable"):
            await shared.reserve(1)
        assert loop.time() - t0 >= 0.6
        assert "unreachable" in warnings[0] and "--max-wait" in warnings[0]
        with pytest.raises(LimiterUnavailable):
            await shared.reserve(1)  # stays stopped: the run ends, a rerun resumes
    finally:
        await shared.aclose()
        await client.aclose()


def test_limit_key_never_holds_the_api_key() -> None:
    key = default_limit_key("https://user:pw@api.example.com/v1/", TEST_KEY)
    assert key.startswith("https://api.example.com/v1#") and TEST_KEY not in key
    assert "pw" not in key and "user" not in key
    assert key == default_limit_key("https://api.example.com/v1", TEST_KEY)  # same key, same budget
    assert key != default_limit_key("https://api.example.com/v1", TEST_KEY + "x")
    assert default_limit_key("http://127.0.0.1:8000/v1", None).endswith("#nokey")
    assert display_url("redis://:s3cretpass@host:6379/0") == "redis://:***@host:6379/0"
    assert display_url("rediss://u:s3cretpass@host/1") == "rediss://u:***@host/1"


# -- end to end: outages, kills, passwords, status ------------------------------------------


def test_redis_stopped_mid_run_pauses_sending_and_resumes(
    tmp_path: Path, server, redis_server
) -> None:
    rpm, n = 2400, 60  # 40 a second: 1.5 s of work
    srv = server(rpm=rpm, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.jsonl"
    # At most 5 in flight: what is booked before the outage (and may go) is a quarter second.
    args = ("--rpm", str(rpm), "--concurrency", "5", "--limiter", redis_server.url)
    proc = spawn(srv, inp, out, *args)
    deadline = time.monotonic() + 20
    while srv.stats(settle=0)["requests_total"] < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    redis_server.stop()
    time.sleep(0.4)  # what was booked before the outage goes out
    sent_at_outage = srv.stats(settle=0)["requests_total"]
    time.sleep(1.2)
    assert srv.stats(settle=0)["requests_total"] == sent_at_outage  # nothing sent meanwhile
    assert sent_at_outage < n
    redis_server.start()
    ((code, err),) = finish([proc])
    assert code == 0, err
    assert "unreachable" in err and "reachable again" in err
    assert "limiter redis unreachable" in err  # on the status line
    one_record_per_line(out, n)
    assert srv.stats()["by_status"].get("429", 0) == 0


def test_outage_past_max_wait_stops_resumably(tmp_path: Path, server, redis_server) -> None:
    n = 40
    srv = server(rpm=2400, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.jsonl"
    args = ("--rpm", "2400", "--concurrency", "3", "--limiter", redis_server.url)
    args += ("--max-wait", "0.5")
    proc = spawn(srv, inp, out, *args)
    while srv.stats(settle=0)["requests_total"] < 10:
        time.sleep(0.02)
    redis_server.stop()
    ((code, err),) = finish([proc])
    assert code == 2, err
    assert "limiter_unavailable" in err and "rerun the same command to resume" in err
    done = len(read_jsonl(out))
    assert 0 < done < n
    redis_server.start()
    ((code, err),) = finish([spawn(srv, inp, out, *args)])
    assert code == 0, err
    one_record_per_line(out, n)
    assert srv.stats()["requests_total"] == n  # nothing sent twice


def test_killed_process_rerun_finishes_exactly_once(tmp_path: Path, server, redis_server) -> None:
    n = 100
    srv = server(rpm=6000, latency=0.01)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.jsonl"
    args = ("--rpm", "6000", "--limiter", redis_server.url)
    proc = spawn(srv, inp, out, *args)
    while not out.exists() or len(out.read_bytes().splitlines()) < 10:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    ((code, err),) = finish([spawn(srv, inp, out, *args)])
    assert code == 0, err
    one_record_per_line(out, n)
    stats = srv.stats()
    assert stats["by_status"].get("429", 0) == 0
    assert stats["requests_total"] <= n + 50  # at most what was in flight is redone


def test_password_from_env_works_and_is_never_printed(tmp_path: Path, server) -> None:
    from .conftest import redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    password = "redis-s3cret-passw0rd"
    srv_redis = RedisServer(binary, tmp_path)
    srv_redis.start()
    try:
        srv_redis.client().config_set("requirepass", password)
        srv = server(latency=0.01)
        inp = write_jsonl(tmp_path / "in.jsonl", rows(5))
        out = tmp_path / "out.jsonl"
        env = {"REDIS_PASSWORD": password}
        res = run_cli([*_args(srv, inp, out), "--limiter", srv_redis.url, "--rpm", "600"], env=env)
        assert res.exit_code == 0, res.output
        url = f"redis://:{password}@127.0.0.1:{srv_redis.port}/0"
        res = run_cli(["limiter", "status", url, "--json"])
        assert res.exit_code == 0, res.output
        status = orjson.loads(res.stdout)
        (row,) = status
        assert row["rpm_ceiling"] == 600 and row["requests_total"] == 5
        assert TEST_KEY not in row["key"]
        res = run_cli(["limiter", "status", url])
        assert password not in res.output and "redis://:***@" in res.output
        bad = run_cli(
            ["limiter", "status", f"redis://:wrong-{password}@127.0.0.1:{srv_redis.port}"]
        )
        assert bad.exit_code == 2 and password not in bad.output
        # Nothing in Redis holds the API key.
        r = srv_redis.client(password)
        for name in r.keys("*"):
            assert TEST_KEY.encode() not in name
            kind = r.type(name)
            values = r.hgetall(name) if kind == b"hash" else dict.fromkeys(r.zrange(name, 0, -1))
            assert all(TEST_KEY.encode() not in k + (v or b"") for k, v in values.items())
    finally:
        srv_redis.stop()


def _args(srv: Any, inp: Path, out: Path) -> list[str]:
    from .conftest import run_args

    return run_args(srv, inp, out)


async def test_close_is_bounded_when_the_client_swallows_the_cancellation() -> None:
    """A Redis client that turns the cancellation of a call in flight into an error of its
    own (as a connection error) must not keep the pacer's task alive: the run's end waits at
    most one call's timeout, and the task ends."""
    from redis import exceptions as rx

    started = asyncio.Event()

    class Swallowing:
        def register_script(self, _source: str) -> Any:
            async def script(*, keys: list[str], args: list[Any]) -> list[Any]:
                started.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    raise rx.ConnectionError("connection closed while reading") from None
                return []

            return script

    loop = asyncio.get_running_loop()
    pacer = SharedPacer(Swallowing(), "kswallow", rpm=600, tpm=None, clock=loop.time)
    booking = asyncio.ensure_future(pacer.reserve(1))
    await asyncio.wait_for(started.wait(), 5)
    task = pacer._task
    assert task is not None
    t0 = loop.time()
    closing = asyncio.ensure_future(pacer.aclose())
    await asyncio.wait({closing}, timeout=10)  # not wait_for: its cancel could hang as well
    assert closing.done(), "aclose() hung on a task that swallowed its cancellation"
    assert loop.time() - t0 < 1.0
    await asyncio.sleep(0)
    assert task.done()
    assert booking.cancelled() or booking.done()
