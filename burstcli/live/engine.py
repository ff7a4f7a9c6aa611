"""The async pipeline: dispatch in priority order under the limits, retry, fall back, record.

One dispatcher walks the source and starts a task per request once the gate has a slot (and
the budget allows it); that task owns the request until its one record is written: every
attempt waits for the pacers, failures are classified by client.py, retried with full-jitter
backoff, then handed to the fallback models. Records are batched per event-loop tick into one
write. No Typer or Rich here: the CLI builds the parts and renders what `run()` returns.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import FatalProviderError, OutputError
from ..files import fingerprint
from ..files.answers import (
    PER_TOKEN_WARNING,
    clean_usage,
    finish_reason,
    per_token_vectors,
)
from ..files.journal import Journal
from ..files.schema import OutputProblem, Validators
from ..models import (
    AnswerCache,
    InvalidLine,
    Request,
    Result,
    RunOutcome,
    StopReason,
    Tally,
    invalid_result,
    now_iso,
    unwritable,
)
from ..money.budget import Budget
from ..redact import redact_name
from .adaptive import work_of
from .client import CallError
from .outcomes import read_answer, too_long_wait
from .probe import open_when_reachable
from .router import Endpoint, NoEndpoint, Router
from .shared import LimiterUnavailable

PriceFn = Callable[[str, dict[str, Any] | None], float | None]


@dataclass(slots=True)
class EngineConfig:
    fallback_models: list[str] = field(default_factory=list)
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_output_chars: int = 50_000
    grace: float = 10.0
    max_cost: float | None = None
    max_rate_limited: int = 50  # 429 retries per request: they don't spend --max-retries
    # Structured answers (a response_format) are parsed and checked where they are accepted.
    validators: Validators | None = field(default_factory=Validators)
    max_wait: float = 900.0  # a pause the provider asks for beyond this stops the run
    silent_timeouts: int = 3  # consecutive timeouts, before any answer, that stop the run
    # The first request goes alone; if it has not answered after this long (or at once when
    # it times out), a models-list probe tells whether the endpoint is up and takes the key,
    # and then the window opens.
    probe_after: float = 5.0


class _Fatal(Exception):
    def __init__(self, err: CallError) -> None:
        super().__init__(err.message)
        self.err = err


class Engine:
    def __init__(
        self,
        *,
        router: Router,
        journal: Journal,
        config: EngineConfig,
        price: PriceFn,
        budget: Budget | None = None,
        tally: Tally | None = None,
        rng: random.Random | None = None,
        formatter: Callable[[Result], dict[str, Any]] | None = None,
        cache: AnswerCache | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.router = router
        self.journal = journal
        self.config = config
        self.price = price
        self.budget = budget
        self.tally = tally or Tally()
        self.cache = cache
        self.listeners: list[Callable[[Result], None]] = []
        self._format = formatter or Result.record
        self._rng = rng or random.Random()
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: StopReason | None = None
        self._signal: int | None = None
        self._fatal: CallError | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._write_error: OSError | None = None
        self._answered = False  # any 200 yet? (tells a dead endpoint from a flaky one)
        self._heard = False  # any HTTP answer at all yet (even an error)?
        self._silent = 0  # consecutive timeouts while nothing has answered
        self._warn = warn or (lambda msg: None)
        self._warned = False  # per-token embeddings: said once
        self._probe_now = asyncio.Event()  # the first request timed out: probe at once
        self._now: Callable[[], float] = time.monotonic  # the loop's clock, once run() starts

    # -- control ----------------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """Ctrl-C / SIGTERM: stop dispatching; in-flight requests get the grace period."""
        if self._stop == "interrupted":
            # A second Ctrl-C: no more grace. Unrecorded requests are simply redone on resume.
            for t in self._tasks:
                t.cancel()
        if self._stop is None:
            self._stop = "interrupted"
            self._signal = signum
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()

    async def run(self, items: AsyncIterator[Request | InvalidLine]) -> RunOutcome:
        self.tally.started = time.time()
        self._now = asyncio.get_running_loop().time
        self._dispatcher = asyncio.create_task(self._dispatch(items))
        probes = [
            asyncio.create_task(
                open_when_reachable(
                    ep.client,
                    ep.limits,
                    after=self.config.probe_after,
                    now=self._probe_now,
                    stopped=lambda: self._stop is not None,
                )
            )
            for ep in self.router.endpoints
        ]
        try:
            await self._dispatcher
        except asyncio.CancelledError:
            if self._stop is None:
                raise
        except BaseException:
            for probe in probes:
                probe.cancel()
            await self._drain(at_once=True)  # a config error mid-run: keep what finished
            self._flush()
            raise
        await self._drain()
        for probe in probes:
            probe.cancel()
        self._flush()
        if self._write_error is not None:
            where = self.journal.path or "stdout"
            why = self._write_error.strerror or self._write_error
            raise OutputError(f"cannot write {where}: {why}")
        reason: StopReason = self._stop or "done"
        error = None
        if self._fatal is not None:
            reason = "fatal"
            error = FatalProviderError(self._fatal.type, self._fatal.message)
        return RunOutcome(reason, self.tally, self._signal, error)

    async def _drain(self, *, at_once: bool = False) -> None:
        """Wait for in-flight work; once interrupted, for `grace` seconds at most (even if the
        signal arrives while draining); then cancel what is left, unrecorded, for the rerun."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() if at_once else None
        while self._tasks:
            if self._stop == "fatal":
                deadline = loop.time()
            elif self._stop == "interrupted" and deadline is None:
                deadline = loop.time() + self.config.grace
            if deadline is not None and loop.time() >= deadline:
                for t in self._tasks:
                    t.cancel()
                await asyncio.wait(set(self._tasks))
                return
            step = 0.25 if deadline is None else max(0.0, min(0.25, deadline - loop.time()))
            await asyncio.wait(set(self._tasks), timeout=step)

    async def _dispatch(self, items: AsyncIterator[Request | InvalidLine]) -> None:
        it = aiter(items)
        router = self.router
        while self._stop is None:
            # The slot first, then the item: what is sent next is chosen as late as possible,
            # so a high-priority line that arrived meanwhile (stdin) goes first.
            try:
                # A free slot is taken without a coroutine round trip (the common case).
                ep = router.try_slot() or await router.slot()
            except NoEndpoint as exc:  # every endpoint retired
                self._fail_run(exc.err)
                return
            if self._stop is not None:
                router.release(ep)
                return
            try:
                item = await anext(it)
            except StopAsyncIteration:
                router.release(ep)
                return
            if isinstance(item, InvalidLine):
                router.release(ep)
                self._record(invalid_result(item))
                continue
            if self.cache is not None and (hit := self.cache.lookup(item)) is not None:
                router.release(ep)  # answered without a call: no budget, no rate limit
                self._record(hit)
                continue
            held = 0.0
            if self.budget is not None:
                amount = self.budget.reserve(item)
                while amount is None and self._tasks:
                    # In-flight reservations settle below their worst case: wait and retry
                    # before calling the budget spent.
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                    amount = self.budget.reserve(item)
                if amount is None:
                    router.release(ep)
                    self._stop = "budget"
                    return
                held = amount
            task = asyncio.create_task(self._own(item, held, ep))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one request, start to record -------------------------------------------------------
    async def _own(self, req: Request, held: float, ep: Endpoint) -> None:
        cost: float | None = None
        lease: list[Endpoint | None] = [ep]  # the endpoint whose slot this request holds
        try:
            try:
                result = await self._process(req, lease)
            except (_Fatal, asyncio.CancelledError):
                raise
            except Exception as exc:
                # Whatever went wrong is this request's failure, recorded and counted like any
                # other; the other requests and the run go on.
                result = self._failed(
                    req,
                    CallError("internal_error", f"{type(exc).__name__}: {exc}"),
                    0,
                    0,
                    self._now(),
                )
            cost = result.cost_usd
            self._record(result)
            if self.cache is not None:
                self.cache.store(req, result)
        except _Fatal as exc:
            self._fail_run(exc.err)
        finally:
            if lease[0] is not None:
                self.router.release(lease[0])
            if self.budget is not None:
                self.budget.settle(held, cost)

    def _fail_run(self, err: CallError) -> None:
        if self._fatal is None:
            self._fatal = err
            self._stop = "fatal"
            if self._dispatcher is not None and self._dispatcher is not asyncio.current_task():
                self._dispatcher.cancel()
            for t in self._tasks:
                if t is not asyncio.current_task():
                    t.cancel()

    async def _process(self, req: Request, lease: list[Endpoint | None]) -> Result:
        cfg, tally, router = self.config, self.tally, self.router
        multi = router.multi
        ep = lease[0]
        assert ep is not None
        models = [req.model] + [m for m in cfg.fallback_models if m != req.model]
        attempts = unanswered = free_moves = 0
        reroute = False
        avoid: Endpoint | None = None  # where the request last failed for the endpoint's fault
        now = self._now
        started = now()
        last: CallError | None = None
        validator = cfg.validators.for_body(req.body) if cfg.validators is not None else None
        parsed: Any = None
        # Answers refused as invalid were still billed: their usage and cost are carried.
        billed: list[tuple[str, dict[str, Any]]] = []
        ceiling = ep.limits.tpm_ceiling
        est = req.est_tokens  # a property: computed once per request, not per use
        if ceiling and est > ceiling:
            # It can never fit in a minute's allowance: sending it would only earn a 429.
            return self._failed(
                req,
                CallError(
                    "request_too_large",
                    f"request needs ~{est} tokens (prompt chars/4 "
                    f"+ max_tokens) but the TPM ceiling is {ceiling:g}; shorten it or lower "
                    "max_tokens",
                ),
                0,
                0,
                started,
            )
        for model in models:
            retries = limited = 0
            while True:
                if multi and (reroute or router.should_move(ep, model)):
                    reroute = False
                    try:
                        ep = await router.move(lease, model, avoid)
                    except NoEndpoint as exc:  # the model's last endpoint is gone: exit 2
                        raise _Fatal(exc.err) from None
                    except CallError as err:
                        last = err
                        held = lease[0]  # _move took a slot again (any endpoint's)
                        assert held is not None
                        ep = held
                        break
                limits = ep.limits
                try:
                    if not limits.try_pace(est):
                        await limits.pace(est)
                except LimiterUnavailable as exc:
                    # The shared budget is out of reach: sending anyway could overrun it.
                    # Stop the run; this request stays unrecorded for the rerun.
                    raise _Fatal(CallError("limiter_unavailable", str(exc))) from exc
                if self._stop in ("interrupted", "fatal"):
                    # Not sent yet: leave it unrecorded, a resume sends it.
                    raise asyncio.CancelledError
                sent_at = now()
                if attempts == 0:
                    started = sent_at  # latency excludes our queue
                attempts += 1
                ep.attempts += 1
                tally.attempts += 1
                tally.in_flight += 1
                # What this endpoint has out (adaptive.py): the run's count when it is alone.
                in_flight = limits.gate.active if multi else tally.in_flight
                try:
                    deployments = ep.spec.deployments
                    sent = deployments.get(model, model) if deployments else model
                    reply = await ep.client.call(req.endpoint, sent, req.body)
                    self._heard, self._silent = True, 0
                    output, vectors = read_answer(req.endpoint, reply.data)
                    if req.endpoint == "chat":
                        output = (output or "").strip()
                        if not output:
                            raise CallError(
                                "empty_response",
                                "the completion was empty",
                                status_code=200,
                                retryable=True,
                                maybe_billed=True,
                            )
                        if validator is not None:
                            try:
                                parsed = validator.parse(
                                    output, finish_reason(reply.data), req.max_tokens
                                )
                            except OutputProblem as bad:
                                raise CallError(
                                    bad.kind,
                                    bad.message,
                                    status_code=200,
                                    retryable=bad.retryable,
                                    body=reply.data,
                                ) from None
                except CallError as err:
                    tally.in_flight -= 1
                    last = err
                    if err.type in ("invalid_output", "output_truncated"):
                        usage = err.body.get("usage") if isinstance(err.body, dict) else None
                        if isinstance(usage, dict):
                            billed.append((model, usage))
                    if limits.on_error(err.status_code, err.type, err.unreachable):
                        self._probe_now.set()  # a timeout before any answer: probe now
                    if err.maybe_billed:
                        unanswered += 1
                        tally.unanswered += 1
                    if err.fatal:
                        if not multi:
                            raise _Fatal(err) from err
                        # A wrong key or spent quota is the endpoint's, not the request's:
                        # retire it and move on (free), or stop if the model has none left.
                        router.retire(ep, err)
                        continue
                    if not multi:
                        self._check_silence(err, ep)
                    if err.retry_after is not None and err.retry_after > cfg.max_wait:
                        raise _Fatal(too_long_wait(err, cfg.max_wait)) from err
                    if err.type == "rate_limited":
                        tally.rate_limited += 1
                        limits.on_rate_limited(err.headers, err.retry_after)
                        limited += 1
                        if limited <= cfg.max_rate_limited:
                            tally.retries += 1
                            reroute = multi  # another endpoint may have room now
                            continue  # the endpoint's pause is the backoff
                    elif err.retryable:
                        # The fairness rule: a connection error, timeout or 5xx is the
                        # endpoint's fault, so the request moves to another endpoint that
                        # can take it without spending its --max-retries, at most once per
                        # other endpoint; failing again there, or with nowhere to go, is
                        # charged as an ordinary retry with backoff.
                        if (
                            multi
                            and router.failed(ep, err)
                            and free_moves < len(router.endpoints) - 1
                            and router.other_usable(ep, model)
                        ):
                            free_moves += 1
                            tally.retries += 1
                            avoid = ep
                            reroute = True
                            continue
                        if retries < cfg.max_retries:
                            delay = self._backoff(retries, err.retry_after)
                            if err.retry_after:
                                limits.note_wait(
                                    delay, f"{err.status_code or err.type} retry-after"
                                )
                            await asyncio.sleep(delay)
                            retries += 1
                            tally.retries += 1
                            continue
                    break
                except BaseException:
                    tally.in_flight -= 1
                    raise
                tally.in_flight -= 1
                self._answered = True
                usage = clean_usage(reply.data.get("usage"))
                limits.on_success(
                    reply.headers,
                    est,
                    int(usage.get("total_tokens") or 0) if usage else None,
                    latency=now() - sent_at,
                    work=work_of(usage),
                    in_flight=in_flight,
                )
                if multi:
                    router.answered(ep)
                result = self._completed(
                    req,
                    model,
                    output,
                    vectors,
                    usage,
                    attempts,
                    unanswered,
                    started,
                    reply.data,
                    reply.headers,
                    ep,
                )
                result.parsed = parsed
                if billed:
                    self._carry(result, billed)
                return result
            if last is not None and not (last.fallback or last.retryable):
                break  # a bad request is bad for every model
        assert last is not None
        if (
            last.unreachable
            and not self._answered
            and not (multi and router.other_usable(ep, req.model))
        ):
            # Nothing has ever answered: a wrong --base-url or a server that is down. Stop
            # rather than fail every line; the request stays unrecorded for the rerun.
            raise _Fatal(
                CallError(
                    "connection",
                    f"{last.message} (no request has been "
                    "answered yet: check --base-url / OPENAI_BASE_URL)",
                )
            )
        failed = self._failed(req, last, attempts, unanswered, started, ep)
        if billed:
            self._carry(failed, billed)
        return failed

    def _carry(self, result: Result, billed: list[tuple[str, dict[str, Any]]]) -> None:
        """Add the usage and cost of refused answers to the record: they were billed."""
        usage = dict(result.usage or {})
        cost = result.cost_usd if result.status == "completed" else 0.0
        for model, u in billed:
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                value = u.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = int(usage.get(key) or 0) + value
            c = self.price(model, u)
            cost = None if c is None or cost is None else cost + c
        result.usage = usage
        result.cost_usd = cost

    def _check_silence(self, err: CallError, ep: Endpoint) -> None:
        """An endpoint that takes connections and never answers: stop after a few timeouts
        rather than try it one request at a time for ever (once it has answered, timeouts are
        ordinary retryable failures)."""
        if err.status_code is not None:
            self._heard, self._silent = True, 0
            return
        if self._heard:
            return
        if err.type != "timeout":
            self._silent = 0
            return
        self._silent += 1
        if self._silent >= self.config.silent_timeouts:
            raise _Fatal(
                CallError(
                    "timeout",
                    f"no answer within --timeout ({ep.client.timeout.total:g}s) from "
                    f"{ep.client.base_url} ({self._silent} attempts in a row, none answered "
                    "yet): check --base-url, or raise --timeout",
                )
            )

    def _backoff(self, retry: int, server_hint: float | None) -> float:
        cfg = self.config
        delay = self._rng.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2**retry))
        return max(delay, server_hint or 0.0)

    def _completed(
        self,
        req: Request,
        model: str,
        output: str | None,
        vectors: list[Any] | None,
        usage: dict[str, Any] | None,
        attempts: int,
        unanswered: int,
        started: float,
        data: dict[str, Any],
        headers: Mapping[str, str],
        ep: Endpoint,
    ) -> Result:
        truncated = False
        if output is not None and len(output) > self.config.max_output_chars:
            output, truncated = output[: self.config.max_output_chars].rstrip(), True
        embedding = None
        if vectors is not None and not self._warned and per_token_vectors(vectors):
            self._warned = True
            self._warn(PER_TOKEN_WARNING.format(model=model))
        if vectors is not None:
            embedding = vectors if isinstance(req.body.get("input"), list) else vectors[0]
        cost = self.price(model, usage)
        return Result(
            request_id=req.id,
            line=req.line,
            status="completed",
            model=req.model,
            # The provider's word (e.g. a snapshot), and provider text: redacted like a message.
            model_used=redact_name(str(data.get("model") or model)),
            output=output,
            embedding=embedding,
            latency_ms=round((self._now() - started) * 1000, 1),
            attempts=attempts,
            usage=usage,
            cost_usd=cost,
            metadata=req.metadata,
            finished_at=now_iso(),
            truncated=truncated,
            unanswered_attempts=unanswered,
            finish_reason=finish_reason(data) if req.endpoint == "chat" else None,
            fingerprint=fingerprint.of(req),
            line_digest=req.line_digest,
            response_body=data,
            response_status=200,
            response_request_id=headers.get("x-request-id"),
            endpoint=ep.spec.name,
        )

    def _failed(
        self,
        req: Request,
        err: CallError,
        attempts: int,
        unanswered: int,
        started: float,
        ep: Endpoint | None = None,
    ) -> Result:
        return Result(
            request_id=req.id,
            line=req.line,
            status="failed",
            model=req.model,
            model_used=None,
            output=None,
            attempts=attempts,
            error=err.as_dict(),
            latency_ms=round((self._now() - started) * 1000, 1),
            metadata=req.metadata,
            finished_at=now_iso(),
            unanswered_attempts=unanswered,
            fingerprint=fingerprint.of(req),
            line_digest=req.line_digest,
            response_body=err.body,
            response_status=err.status_code or 0,
            response_request_id=err.headers.get("x-request-id"),
            endpoint=ep.spec.name if ep is not None and attempts else None,
        )

    # -- output -----------------------------------------------------------------------------
    def _record(self, result: Result) -> None:
        # Serialized here, one record at a time: a record that cannot be written (a value
        # JSON cannot hold) becomes that request's failed record, and never takes the rest
        # of a write batch down with it.
        try:
            line = orjson.dumps(self._format(result))
        except (TypeError, ValueError) as exc:
            result = unwritable(result, exc)
            line = orjson.dumps(self._format(result))
        self.tally.count(result)
        for listener in self.listeners:
            listener(result)
        self._pending.append(line)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and self._write_error is None:
            batch, self._pending = self._pending, []
            try:
                self.journal.write_lines(batch)
            except OSError as exc:
                # Disk full, closed pipe: nothing more can be recorded, so nothing more is sent.
                self._write_error = exc
                self._stop = "fatal"
                if self._dispatcher is not None:
                    self._dispatcher.cancel()
                for t in self._tasks:
                    t.cancel()
