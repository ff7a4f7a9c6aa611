"""Tests for burstcli.observe.metrics: the file is parsed back with prometheus_client's own parser.

Pushes go to a real HTTP server on loopback (and to a closed port), never to the network.
"""

from __future__ import annotations

import asyncio
import math
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from burstcli.live.limits import LimitsSnapshot
from burstcli.models import Result, Tally
from burstcli.observe.metrics import Metrics

SECRET = "sk-test-0123456789abcdefSECRET"
PROMPT = "PROMPT-TEXT-never-in-metrics"

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(got: dict[Key, float], name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def read(path: Path) -> dict[Key, float]:
    return samples(path.read_text())


def result(
    rid: str,
    status: str,
    model: str | None,
    *,
    model_used: str | None = None,
    latency_ms: float | None = None,
    usage: dict[str, int] | None = None,
    cost: float | None = None,
    error: str | None = None,
    attempts: int = 1,
) -> Result:
    return Result(
        request_id=rid,
        line=1,
        status=status,  # type: ignore[arg-type]
        model=model,
        model_used=model_used,
        latency_ms=latency_ms,
        attempts=attempts,
        usage=usage,
        cost_usd=cost,
        output=PROMPT if status == "completed" else None,
        error={"type": error, "message": SECRET, "status_code": 500} if error else None,
        metadata={"prompt": PROMPT, "key": SECRET},
        finished_at="2026-11-27T10:00:00Z",
    )


def snap(**kw: Any) -> LimitsSnapshot:
    base: dict[str, Any] = dict(
        concurrency=8,
        in_flight=3,
        rpm=450.0,
        tpm=None,
        rpm_ceiling=500.0,
        tpm_ceiling=None,
        rate_limited=2,
        paused_for=0.0,
    )
    base.update(kw)
    return LimitsSnapshot(**base)


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.observe(
        result(
            "a",
            "completed",
            "gpt-4o-mini",
            model_used="gpt-4o-mini",
            latency_ms=400.0,
            usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            cost=0.001,
        )
    )
    m.observe(
        result(
            "b",
            "completed",
            "gpt-4o-mini",
            model_used="gpt-4o-mini",
            latency_ms=3000.0,
            usage={"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
            cost=0.002,
        )
    )
    # A fallback answered by gpt-4o: it counts under the model that answered.
    m.observe(
        result(
            "c",
            "completed",
            "gpt-4o-mini",
            model_used="gpt-4o",
            latency_ms=150_000.0,
            usage={"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
            cost=0.05,
        )
    )
    m.observe(
        result(
            "d",
            "completed",
            "llama-local",
            model_used="llama-local",
            latency_ms=90.0,
            usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            cost=None,
        )
    )
    m.observe(result("e", "failed", "gpt-4o", latency_ms=60_000.0, error="timeout", attempts=6))
    m.observe(result("f", "failed", None, error="invalid_request", attempts=0))
    return m


def test_request_counters_tokens_cost(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "burstq.prom"
    metrics.write(path)
    got = read(path)
    assert val(got, "ai_requests_total", model="gpt-4o-mini", status="completed") == 2
    assert val(got, "ai_requests_total", model="gpt-4o", status="completed") == 1
    assert val(got, "ai_requests_total", model="gpt-4o", status="failed") == 1
    assert val(got, "ai_requests_total", model="llama-local", status="completed") == 1
    assert val(got, "ai_requests_total", model="unknown", status="failed") == 1
    assert val(got, "ai_tokens_total", model="gpt-4o-mini", kind="prompt") == 30
    assert val(got, "ai_tokens_total", model="gpt-4o-mini", kind="completion") == 12
    assert val(got, "ai_tokens_total", model="gpt-4o", kind="prompt") == 100
    assert val(got, "ai_cost_usd_total", model="gpt-4o-mini") == pytest.approx(0.003)
    assert val(got, "ai_cost_usd_total", model="gpt-4o") == pytest.approx(0.05)
    assert ("ai_cost_usd_total", frozenset({("model", "llama-local")})) not in got
    assert val(got, "ai_unpriced_requests_total", model="llama-local") == 1
    assert val(got, "ai_request_errors_total", model="gpt-4o", type="timeout") == 1
    assert val(got, "ai_request_errors_total", model="unknown", type="invalid_request") == 1


def test_duration_histogram(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "burstq.prom"
    metrics.write(path)
    got = read(path)
    name = "ai_request_duration_seconds"
    # gpt-4o-mini: 0.4 s and 3.0 s (completed only; the failed 60 s timeout is not a latency)
    assert val(got, name + "_count", model="gpt-4o-mini") == 2
    assert val(got, name + "_sum", model="gpt-4o-mini") == pytest.approx(3.4)
    assert val(got, name + "_bucket", model="gpt-4o-mini", le="0.25") == 0
    assert val(got, name + "_bucket", model="gpt-4o-mini", le="0.5") == 1
    assert val(got, name + "_bucket", model="gpt-4o-mini", le="3.0") == 2  # le is inclusive
    assert val(got, name + "_bucket", model="gpt-4o-mini", le="120.0") == 2
    # 150 s is beyond the last finite bucket: only +Inf holds it
    assert val(got, name + "_bucket", model="gpt-4o", le="120.0") == 0
    assert val(got, name + "_bucket", model="gpt-4o", le="+Inf") == 1
    assert ("ai_request_duration_seconds_count", frozenset({("model", "unknown")})) not in got
    bounds = sorted(
        float(dict(k[1])["le"])
        for k in got
        if k[0] == name + "_bucket" and dict(k[1])["model"] == "gpt-4o"
    )
    assert bounds[0] == 0.1 and bounds[-2] == 120.0 and math.isinf(bounds[-1])


def test_update_gauges_and_run_counters(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "burstq.prom"
    tally = Tally(
        total=100,
        skipped=10,
        completed=20,
        failed=5,
        in_flight=3,
        retries=4,
        rate_limited=2,
        unanswered=1,
    )
    metrics.update(tally, snap())
    metrics.write(path)
    got = read(path)
    assert val(got, "ai_active_requests") == 3
    assert val(got, "ai_retries_total") == 4
    assert val(got, "ai_rate_limited_total") == 2
    assert val(got, "ai_possibly_billed_attempts_total") == 1
    assert val(got, "burstq_requests_pending") == 62  # 100 - 10 skipped - 25 done - 3 active
    assert val(got, "burstq_rpm_limit") == 500
    assert math.isnan(val(got, "burstq_tpm_limit"))  # unknown, not 0
    assert val(got, "burstq_rpm_pace") == 450
    assert math.isnan(val(got, "burstq_tpm_pace"))
    assert val(got, "burstq_concurrency_limit") == 8

    # The tally keeps growing: the counters follow it, by the difference.
    tally.retries, tally.rate_limited, tally.unanswered, tally.in_flight = 9, 5, 1, 0
    tally.completed = 95
    metrics.update(tally, snap(tpm_ceiling=200_000.0))
    metrics.write(path)
    got = read(path)
    assert val(got, "ai_retries_total") == 9
    assert val(got, "ai_rate_limited_total") == 5
    assert val(got, "ai_possibly_billed_attempts_total") == 1
    assert val(got, "ai_active_requests") == 0
    assert val(got, "burstq_requests_pending") == 0  # never negative
    assert val(got, "burstq_tpm_limit") == 200_000


def test_unknown_before_first_update_and_from_stdin(tmp_path: Path) -> None:
    m = Metrics()
    path = tmp_path / "m.prom"
    m.write(path)
    got = read(path)
    for name in ("burstq_requests_pending", "burstq_rpm_limit", "burstq_tpm_limit"):
        assert math.isnan(val(got, name)), name
    m.update(Tally(total=None, completed=3), snap())  # stdin: the size is not known yet
    m.write(path)
    assert math.isnan(val(read(path), "burstq_requests_pending"))


def test_private_registry(metrics: Metrics) -> None:
    Metrics()  # a second instance must not collide with the first
    assert (
        prometheus_client.REGISTRY.get_sample_value(
            "ai_requests_total", {"model": "gpt-4o-mini", "status": "completed"}
        )
        is None
    )
    text = metrics.text().decode()
    assert "process_cpu_seconds_total" not in text  # the default collectors stay out


def test_no_key_prompt_or_output_in_metrics(metrics: Metrics) -> None:
    text = metrics.text().decode()
    for leak in (SECRET, PROMPT, "request_id"):
        assert leak not in text
    labels = {
        name
        for family in text_string_to_metric_families(text)
        for s in family.samples
        for name in s.labels
    }
    assert labels <= {"model", "status", "kind", "type", "le"}


def test_write_is_atomic_and_readable(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "burstq.prom"
    for _ in range(3):
        metrics.write(path)
    assert [p.name for p in tmp_path.iterdir()] == ["burstq.prom"]  # no temp file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user


def test_failed_write_leaves_no_temp_file(metrics: Metrics, tmp_path: Path) -> None:
    target = tmp_path / "burstq.prom"
    target.mkdir()  # os.replace onto a directory fails after the temp file is written
    with pytest.raises(OSError):
        metrics.write(target)
    assert [p.name for p in tmp_path.iterdir()] == ["burstq.prom"]


# -- periodic writer ------------------------------------------------------------------------


async def test_run_periodic_rewrites_until_cancelled_then_writes_once_more(tmp_path: Path) -> None:
    m = Metrics()
    path = tmp_path / "burstq.prom"
    tally = Tally(total=10, in_flight=2)
    calls = 0

    def snapshot() -> LimitsSnapshot:
        nonlocal calls
        calls += 1
        return snap()

    task = asyncio.create_task(m.run_periodic(path, tally, snapshot, interval=0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls >= 2  # interval 0: it rewrote at every turn of the loop
    assert val(read(path), "ai_active_requests") == 2
    tally.in_flight = 7
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert val(read(path), "ai_active_requests") == 7  # the final state, written on the way out
    assert [p.name for p in tmp_path.iterdir()] == ["burstq.prom"]


async def test_run_periodic_reports_write_errors_and_keeps_going(tmp_path: Path) -> None:
    m = Metrics()
    path = tmp_path / "missing-dir" / "burstq.prom"
    warnings: list[str] = []
    task = asyncio.create_task(
        m.run_periodic(path, Tally(), snap, interval=0, warn=warnings.append)
    )
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert warnings and all(w.startswith(f"cannot write metrics to {path}") for w in warnings)


# -- pushgateway ----------------------------------------------------------------------------


class Gateway:
    """A Pushgateway stand-in on loopback that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gateway.requests.append((self.command, self.path, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    yield gw
    gw.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_push_sends_the_registry(metrics: Metrics, gateway: Gateway) -> None:
    assert metrics.push(gateway.url) is None
    assert metrics.push(gateway.url, job="nightly") is None
    (method, path, body), (_, path2, _) = gateway.requests
    assert method == "PUT"  # replaces the job's group: counters of a rerun are not summed
    assert path == "/metrics/job/burstq" and path2 == "/metrics/job/nightly"
    got = samples(body.decode())
    assert val(got, "ai_requests_total", model="gpt-4o-mini", status="completed") == 2


def test_push_to_unreachable_gateway_returns_a_message(metrics: Metrics) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    msg = metrics.push(url)
    assert msg is not None and msg.startswith(f"cannot push metrics to {url}: ")


def test_push_error_status_returns_a_message(metrics: Metrics) -> None:
    gw = Gateway(status=500)
    try:
        msg = metrics.push(gw.url)
    finally:
        gw.close()
    assert msg is not None and "cannot push metrics" in msg and "500" in msg


def test_push_message_hides_gateway_credentials(metrics: Metrics) -> None:
    msg = metrics.push(f"http://user:hunter2@127.0.0.1:{closed_port()}")
    assert msg is not None and "hunter2" not in msg and "***@127.0.0.1" in msg
