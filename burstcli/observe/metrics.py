"""Prometheus metrics of a run: a textfile for node_exporter, or a push to a Pushgateway.

Everything lives in a private `CollectorRegistry`, so two runs in one process (tests, a library
user) never share or collide over series, and the default registry's process/GC collectors stay
out of the file. Two feeds fill it:

- `observe(result)`, appended to `Engine.listeners`, counts each finished request:
  `ai_requests_total{model,status}`, `ai_request_duration_seconds{model}` (completed requests
  only, like the latency figures of `burstq stats`), `ai_tokens_total{model,kind}`,
  `ai_cost_usd_total{model}`, `ai_unpriced_requests_total{model}` (completed without a known
  price: the cost counter understates by these) and `ai_request_errors_total{model,type}`.
- `update(tally, snapshot)` copies the run's live figures: `ai_active_requests`,
  `ai_retries_total`, `ai_rate_limited_total`, `ai_possibly_billed_attempts_total` (attempts
  sent whose answer was lost), `burstq_requests_pending` (neither finished nor on the wire:
  queued, pacing or backing off; NaN while the input size is unknown, as from stdin),
  `burstq_rpm_limit` / `burstq_tpm_limit` (the ceilings, given or learned from headers; NaN
  while unknown), `burstq_rpm_pace` / `burstq_tpm_pace` (the pace in use, below a ceiling
  after 429s) and `burstq_concurrency_limit`.
- With --endpoints (and only then, so a one-endpoint file keeps its shape), by endpoint name:
  `burstq_endpoint_requests_total{endpoint,status}`,
  `burstq_endpoint_request_duration_seconds{endpoint}`, `burstq_endpoint_tokens_total{endpoint,
  kind}`, `burstq_endpoint_cost_usd_total{endpoint}`, `burstq_endpoint_errors_total{endpoint,
  type}`, and the gauges `burstq_endpoint_up{endpoint}` (1 in rotation, 0 breaker open or
  probing or retired), `burstq_endpoint_in_flight`, `burstq_endpoint_rpm_limit` and
  `burstq_endpoint_attempts` (attempts sent there, retries included).

Labels are only model names, statuses, token kinds and burstq's own error taxonomy: never an
API key, a prompt, an output or a request id, which would leak data and explode cardinality.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import push_to_gateway

from ..live.limits import LimitsSnapshot
from ..live.router import EndpointState
from ..models import Result, Tally

Snapshot = Callable[[], LimitsSnapshot]
States = Callable[[], list[EndpointState]]
Warn = Callable[[str], None]

# LLM answers range from ~100 ms (embeddings, short completions) to minutes (long generations,
# reasoning models); the default buckets (5 ms .. 10 s) would put most of them in +Inf.
DURATION_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
)
PUSH_TIMEOUT = 10.0
UNKNOWN_MODEL = "unknown"
NAN = math.nan


def _model(result: Result) -> str:
    return result.model_used or result.model or UNKNOWN_MODEL


def _redact_url(url: str) -> str:
    # A gateway URL may carry basic-auth credentials (https://user:token@host): keep them out
    # of messages, which end up in logs.
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class Metrics:
    """The metrics of one run in a private registry; see the module docstring for the names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ai_requests", "Finished requests by model and status.", ["model", "status"], registry=r
        )
        self.duration = Histogram(
            "ai_request_duration_seconds",
            "Latency of completed requests, retries included.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active = Gauge("ai_active_requests", "Requests in flight.", registry=r)
        self.tokens = Counter(
            "ai_tokens",
            "Tokens used, by model and kind (prompt|completion).",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter("ai_cost_usd", "Cost in USD of priced requests.", ["model"], registry=r)
        self.unpriced = Counter(
            "ai_unpriced_requests",
            "Completed requests whose model has no known price.",
            ["model"],
            registry=r,
        )
        self.errors = Counter(
            "ai_request_errors",
            "Failed requests by model and error type.",
            ["model", "type"],
            registry=r,
        )
        self.retries = Counter(
            "ai_retries", "Attempts after the first, 429 waits included.", registry=r
        )
        self.rate_limited = Counter("ai_rate_limited", "429 rate-limit answers.", registry=r)
        self.possibly_billed = Counter(
            "ai_possibly_billed_attempts",
            "Attempts sent whose answer was lost (timeout, reset): maybe billed.",
            registry=r,
        )
        self.pending = Gauge(
            "burstq_requests_pending",
            "Requests neither finished nor on the wire (NaN: input size unknown).",
            registry=r,
        )
        self.rpm_limit = Gauge(
            "burstq_rpm_limit", "Requests/minute ceiling (NaN: unknown).", registry=r
        )
        self.tpm_limit = Gauge(
            "burstq_tpm_limit", "Tokens/minute ceiling (NaN: unknown).", registry=r
        )
        self.rpm_pace = Gauge(
            "burstq_rpm_pace", "Requests/minute pace in use (NaN: unpaced).", registry=r
        )
        self.tpm_pace = Gauge(
            "burstq_tpm_pace", "Tokens/minute pace in use (NaN: unpaced).", registry=r
        )
        self.concurrency = Gauge(
            "burstq_concurrency_limit", "Requests allowed in flight.", registry=r
        )
        for g in (self.pending, self.rpm_limit, self.tpm_limit, self.rpm_pace, self.tpm_pace):
            g.set(NAN)  # unknown until the first update(), not a misleading 0
        # Tally fields are running totals; counters only go up, so feed them the growth.
        self._seen = {"retries": 0, "rate_limited": 0, "unanswered": 0}
        self._by_endpoint: _EndpointMetrics | None = None

    def _endpoint_metrics(self) -> _EndpointMetrics:
        if self._by_endpoint is None:
            self._by_endpoint = _EndpointMetrics(self.registry)
        return self._by_endpoint

    # -- feeds ------------------------------------------------------------------------------
    def observe(self, result: Result) -> None:
        """Count one finished request (an `Engine.listeners` callback: cheap, never raises)."""
        model = _model(result)
        self.requests.labels(model=model, status=result.status).inc()
        if result.status == "completed":
            if result.latency_ms is not None:
                self.duration.labels(model=model).observe(result.latency_ms / 1000)
            if result.cost_usd is None:
                self.unpriced.labels(model=model).inc()
        else:
            etype = str((result.error or {}).get("type") or "unknown")
            self.errors.labels(model=model, type=etype).inc()
        if result.usage:
            for kind in ("prompt", "completion"):
                n = result.usage.get(f"{kind}_tokens")
                if isinstance(n, int) and n > 0:
                    self.tokens.labels(model=model, kind=kind).inc(n)
        if result.cost_usd is not None and result.cost_usd > 0:
            self.cost.labels(model=model).inc(result.cost_usd)
        if result.endpoint is not None:
            self._endpoint_metrics().observe(result.endpoint, result)

    def update(
        self, tally: Tally, snap: LimitsSnapshot, endpoints: list[EndpointState] | None = None
    ) -> None:
        """Copy the run's live figures from the engine's tally and the limits' snapshot."""
        self.active.set(tally.in_flight)
        for name, counter in (
            ("retries", self.retries),
            ("rate_limited", self.rate_limited),
            ("unanswered", self.possibly_billed),
        ):
            value: int = getattr(tally, name)
            if value > self._seen[name]:
                counter.inc(value - self._seen[name])
                self._seen[name] = value
        if tally.total is None:
            self.pending.set(NAN)
        else:
            self.pending.set(max(0, tally.total - tally.skipped - tally.finished - tally.in_flight))
        self.rpm_limit.set(NAN if snap.rpm_ceiling is None else snap.rpm_ceiling)
        self.tpm_limit.set(NAN if snap.tpm_ceiling is None else snap.tpm_ceiling)
        self.rpm_pace.set(NAN if snap.rpm is None else snap.rpm)
        self.tpm_pace.set(NAN if snap.tpm is None else snap.tpm)
        self.concurrency.set(snap.concurrency)
        if endpoints:
            self._endpoint_metrics().update(endpoints)

    # -- outputs ----------------------------------------------------------------------------
    def text(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def write(self, path: Path) -> None:
        """Replace `path` atomically, so node_exporter never scrapes a half-written file."""
        data = self.text()
        # Same directory, so os.replace is a rename on one filesystem; a name not ending in
        # .prom, so the textfile collector ignores the temp file if it glimpses it.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # mkstemp makes 0600; node_exporter usually runs as another user and must read it.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def push(self, url: str, job: str = "burstq") -> str | None:
        """PUT the registry to a Pushgateway; None on success, else a message (never raises).

        Blocking (urllib): from a running event loop, call it via `asyncio.to_thread`.
        """
        try:
            push_to_gateway(url, job=job, registry=self.registry, timeout=PUSH_TIMEOUT)
        except HTTPError as exc:
            return f"cannot push metrics to {_redact_url(url)}: HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:  # URLError (refused, DNS, timeout), a bad URL
            reason = getattr(exc, "reason", None) or exc
            return f"cannot push metrics to {_redact_url(url)}: {reason}"
        return None

    async def run_periodic(
        self,
        path: Path,
        tally: Tally,
        snapshot: Snapshot,
        interval: float = 5.0,
        *,
        warn: Warn | None = None,
        endpoints: States | None = None,
    ) -> None:
        """Rewrite `path` every `interval` seconds until cancelled, then once more, final.

        A failed write is reported through `warn` and retried next time: metrics must never
        stop a run that is otherwise doing fine.
        """
        try:
            while True:
                self._refresh(path, tally, snapshot, warn, endpoints)
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            self._refresh(path, tally, snapshot, warn, endpoints)
            raise

    def _refresh(
        self,
        path: Path,
        tally: Tally,
        snapshot: Snapshot,
        warn: Warn | None,
        endpoints: States | None = None,
    ) -> None:
        self.update(tally, snapshot(), endpoints() if endpoints is not None else None)
        try:
            self.write(path)
        except OSError as exc:
            if warn is not None:
                warn(f"cannot write metrics to {path}: {exc.strerror or exc}")


class _EndpointMetrics:
    """The by-endpoint series, registered only once a run has named endpoints."""

    def __init__(self, r: CollectorRegistry) -> None:
        label = ["endpoint"]
        self.requests = Counter(
            "burstq_endpoint_requests",
            "Finished requests by the endpoint that last handled them, and status.",
            [*label, "status"],
            registry=r,
        )
        self.duration = Histogram(
            "burstq_endpoint_request_duration_seconds",
            "Latency of completed requests by endpoint.",
            label,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "burstq_endpoint_tokens", "Tokens by endpoint and kind.", [*label, "kind"], registry=r
        )
        self.cost = Counter("burstq_endpoint_cost_usd", "Cost by endpoint.", label, registry=r)
        self.errors = Counter(
            "burstq_endpoint_errors",
            "Failed requests by endpoint and error type.",
            [*label, "type"],
            registry=r,
        )
        self.up = Gauge(
            "burstq_endpoint_up", "1 in rotation, 0 open, probing or retired.", label, registry=r
        )
        self.in_flight = Gauge(
            "burstq_endpoint_in_flight", "Requests holding a slot there.", label, registry=r
        )
        self.rpm_limit = Gauge(
            "burstq_endpoint_rpm_limit",
            "Its requests/minute ceiling (NaN: unknown).",
            label,
            registry=r,
        )
        self.attempts = Gauge(
            "burstq_endpoint_attempts", "Attempts sent there, retries included.", label, registry=r
        )

    def observe(self, name: str, result: Result) -> None:
        self.requests.labels(endpoint=name, status=result.status).inc()
        if result.status == "completed":
            if result.latency_ms is not None:
                self.duration.labels(endpoint=name).observe(result.latency_ms / 1000)
        else:
            etype = str((result.error or {}).get("type") or "unknown")
            self.errors.labels(endpoint=name, type=etype).inc()
        if result.usage:
            for kind in ("prompt", "completion"):
                n = result.usage.get(f"{kind}_tokens")
                if isinstance(n, int) and n > 0:
                    self.tokens.labels(endpoint=name, kind=kind).inc(n)
        if result.cost_usd is not None and result.cost_usd > 0:
            self.cost.labels(endpoint=name).inc(result.cost_usd)

    def update(self, states: list[EndpointState]) -> None:
        for st in states:
            self.up.labels(endpoint=st.name).set(1 if st.state == "closed" else 0)
            self.in_flight.labels(endpoint=st.name).set(st.in_flight)
            self.rpm_limit.labels(endpoint=st.name).set(
                NAN if st.rpm_ceiling is None else st.rpm_ceiling
            )
            self.attempts.labels(endpoint=st.name).set(st.attempts)
